#!/usr/bin/env python
"""Cost of the detection verdict (decode + agreement mAP) next to a `compare` run (issue 7).

    python benchmarks/bench_tasks.py            # 64 images (YOLOv8n-scale model, 640x640, 80 classes)
    python benchmarks/bench_tasks.py --quick    # 16 images

Target (issue 7): agreement mAP for 64 images adds under 10% to a compare run. Measured in one process:
1. `run_compare` on N images (fresh simulator backend: calibration, model building, both runs, metrics).
2. The same compare with the detection hook: every sample's float and quantized `output0` (already computed
   by compare) is decoded (threshold, NMS, letterbox undo), then agreement is scored once at the end.
   The hook is `run_compare(..., on_sample=collector.add)`, as `qdebug compare --task` uses it. Reported: the decode+agreement seconds measured inside the hook and their ratio to
   the plain compare (the target), and the wall-time difference of the two compare runs (noisier).
   Because the int8 run of this model keeps no detection, agreement is also timed on float vs float
   (every detection matched: the most matching work).
3. For information, the standalone path (`run_detection` without the hook: one extra float and one extra
   quantized inference pass per image, then decode + agreement).
Inputs are written to benchmarks/out/tasks/ (model from fixtures.models.make_yolov8_bench, images from
fixtures.data.make_images, 640x480) unless they exist. Results: benchmarks/out/tasks/results.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

from _common import HERE, IMAGE_SIZE, ROOT, prepare_inputs

sys.path.insert(0, str(ROOT))
N_IMAGES = 64
TARGET_RATIO = 0.10


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 images instead of 64")
    ap.add_argument("--n", type=int, default=None, help="number of images (default 64, 16 with --quick)")
    ap.add_argument("--out", default=str(HERE / "out" / "tasks"))
    ap.add_argument("--no-standalone", action="store_true", help="skip the standalone (extra passes) measurement")
    args = ap.parse_args(argv)
    n = args.n or (16 if args.quick else N_IMAGES)
    out = Path(args.out).resolve()
    model, images = prepare_inputs(out, n, generate=max(n, N_IMAGES))

    import qdebug.compare.stage as pipeline
    from qdebug.graph.model import ModelGraph
    from qdebug.inputs.dataset import load_dataset
    from qdebug.quant.scheme import QuantConfig
    from qdebug.runners.sim import SimBackend
    from qdebug.tasks import get_decoder
    from qdebug.tasks.evaluator import DetectionCollector, run_detection

    graph = ModelGraph.load(str(model))
    cfg = QuantConfig()

    def dataset():
        return load_dataset(str(images), graph, None, n)

    # 1. plain compare
    t0 = time.perf_counter()
    plain = pipeline.run_compare(graph, dataset(), cfg, SimBackend("generic"))
    plain.to_json()
    t_plain = time.perf_counter() - t0
    print(f"[bench] compare, {n} images: {t_plain:.1f} s (timing {json.dumps(plain.timing)})", flush=True)

    # 2. compare with the detection hook
    ds = dataset()
    decoder = get_decoder("yolov8")
    collector = DetectionCollector(graph, ds, decoder)
    t0 = time.perf_counter()
    hooked = pipeline.run_compare(graph, ds, cfg, SimBackend("generic"), on_sample=collector.add)
    data = hooked.to_json()
    t1 = time.perf_counter()
    run = run_detection(graph, ds, None, cfg, decoder, collector=collector)  # type: ignore[arg-type]
    data["detection"] = run.to_json()
    t_hooked = time.perf_counter() - t0
    t_score = time.perf_counter() - t1
    det = data["detection"]
    t_decode = collector.seconds
    overhead = t_decode + t_score
    print(f"[bench] compare + detection hook: {t_hooked:.1f} s; decode {t_decode:.2f} s "
          f"({t_decode / n * 1000:.0f} ms/image for float+quantized), agreement+summary {t_score:.2f} s", flush=True)
    print(f"[bench] float detections {det['float']['detections']}, quantized {det['quantized']['detections']}, "
          f"metrics {det['quantized']['metrics']}", flush=True)

    # agreement when every detection has a partner (the int8 run may have none, which is cheap)
    from qdebug.tasks.agreement import agreement

    t0 = time.perf_counter()
    agreement(run.float_dets, run.float_dets)
    t_agree_full = time.perf_counter() - t0
    print(f"[bench] agreement with every detection matched (float vs float): {t_agree_full:.2f} s", flush=True)

    # 3. standalone (extra inference passes)
    t_alone = None
    if not args.no_standalone:
        be = SimBackend("generic")
        ds3 = dataset()
        be.prepare(graph, cfg, list(ds3))
        t0 = time.perf_counter()
        run_detection(graph, ds3, be, cfg, get_decoder("yolov8"))
        t_alone = time.perf_counter() - t0
        print(f"[bench] standalone run_detection (extra float + quantized passes): {t_alone:.1f} s", flush=True)

    ratio = overhead / t_plain
    results = {
        "schema": "qdebug.bench_tasks/1",
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "images": n, "image_size_wh": list(IMAGE_SIZE), "model": {"path": str(model), "nodes": len(graph.nodes)},
        "compare_s": round(t_plain, 3), "compare_timing": plain.timing,
        "compare_with_hook_s": round(t_hooked, 3), "decode_s": round(t_decode, 3),
        "agreement_and_summary_s": round(t_score, 3), "overhead_s": round(overhead, 3),
        "agreement_all_matched_s": round(t_agree_full, 3),
        "overhead_ratio_all_matched": round((t_decode + max(t_score, t_agree_full)) / t_plain, 4),
        "overhead_ratio": round(ratio, 4), "wall_difference_ratio": round((t_hooked - t_plain) / t_plain, 4),
        "standalone_s": None if t_alone is None else round(t_alone, 3),
        "standalone_ratio": None if t_alone is None else round(t_alone / t_plain, 4),
        "target_ratio": TARGET_RATIO, "met": ratio < TARGET_RATIO,
        "detections": {"float": det["float"]["detections"], "quantized": det["quantized"]["detections"],
                       "metrics": det["quantized"]["metrics"]},
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print()
    print("| measurement | value |")
    print("|---|---:|")
    print(f"| compare, {n} images (s) | {t_plain:.1f} |")
    print(f"| decode float + quantized, all images (s) | {t_decode:.2f} |")
    print(f"| agreement mAP + summary (s) | {t_score:.2f} |")
    print(f"| **decode + agreement / compare** | **{100 * ratio:.1f}%** (target < {100 * TARGET_RATIO:.0f}%) |")
    print(f"| same, if every detection were matched (agreement {t_agree_full:.2f} s) | "
          f"{100 * (t_decode + max(t_score, t_agree_full)) / t_plain:.1f}% |")
    print(f"| wall difference, compare with hook vs plain | {100 * (t_hooked - t_plain) / t_plain:+.1f}% |")
    if t_alone is not None:
        print(f"| standalone run_detection (two extra passes) / compare | {100 * t_alone / t_plain:.1f}% |")
    print(f"\nwrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
