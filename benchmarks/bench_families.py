#!/usr/bin/env python
"""`qdebug compare` speed and memory per model family (issue 15): time vs the plain passes, RSS vs samples.

    python benchmarks/bench_families.py                      # every fixture family at 4 and 16 samples
    python benchmarks/bench_families.py --only bert          # families whose key contains "bert"
    python benchmarks/bench_families.py --bert-base          # only the BERT-base-size encoder, 4, 8 and 32 samples

Per family fixture (fixtures/families.py, fixtures/heads.py) and, with --bert-base, a generated BERT-base-size
encoder (12 layers, hidden 768, 12 heads, intermediate 3072, vocab 30522, sequence 128, ~110 M random
parameters, deterministic, written to the output folder; ~440 MB of float32 fit inline), each sample count
runs in its own child process: `qdebug compare` in-process (wall time; peak RSS = the child's ru_maxrss read
right after it), then one plain float pass and one fake-quantized pass over the same samples (best of two
after a warm-up) in the same child; the creation time of those two plain sessions is recorded too (the fixed
cost any tool pays before its first pass). Printed per family: the ratio compare / (float + quantized pass) at
each sample count, the marginal ratio d(compare)/d(passes) (least-squares slopes over the counts: the cost of
one more sample, free of fixed costs), the peak RSS at each count and its growth. The issue's bounds: ratio
<= 4, RSS flat in the sample count, BERT-base under 2.5 GB. Details in OUT/results.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from _common import HERE, ROOT, pass_seconds, peak_rss_mb, write_results

RESULT_TAG = "FAMILY_RESULT "
BERT_BASE = dict(layers=12, hidden=768, heads=12, ffn=3072, vocab=30522, seq=128, positions=512)


# ===================================================================== models and data
def _families() -> dict[str, tuple[Callable, Callable[[Path, int], Path], tuple[str, ...], str | None]]:
    """key -> (model builder, data writer(folder, n), extra CLI options, task)."""
    sys.path.insert(0, str(ROOT))
    from fixtures.data import make_images
    from fixtures.families import (
        FAMILIES,
        write_bert_data,
        write_images,
        write_multi_io_data,
        write_npy,
    )
    from fixtures.heads import make_yolov8_pose, make_yolov8_seg

    sizes = {"yolo11_c2psa": (96, 80), "vit_block": (48, 48), "dbnet": (80, 64), "crnn": (160, 40)}
    out: dict = {}
    for key, fam in FAMILIES.items():
        if key.startswith("bert"):
            data = write_bert_data
        elif key == "embedding_net":
            def data(d: Path, n: int) -> Path:
                return write_npy(d, (1, 3, 32, 32), n)
        elif key == "multi_io":
            data = write_multi_io_data
        else:
            def data(d: Path, n: int, size: tuple[int, int] = sizes[key]) -> Path:
                return write_images(d, n, size)
        out[key] = (fam.build, data, fam.cli, fam.task)

    def images(d: Path, n: int) -> Path:
        make_images(d, n=n)
        return d

    out["yolov8_seg"] = (make_yolov8_seg, images, (), "yolov8")
    out["yolov8_pose"] = (make_yolov8_pose, images, (), "yolov8")
    return out


def make_bert_base(layers: int, hidden: int, heads: int, ffn: int, vocab: int, seq: int, positions: int,
                   seed: int = 0):
    """A BERT-base-size encoder as torch.onnx.export writes it (decomposed LayerNorm, Erf GELU, -10000 mask),
    random weights from one seeded generator: the same bytes every run."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    from onnx import TensorProto

    from fixtures.families import _TorchStyle, _vi

    b = _TorchStyle(seed)
    es, ep = "/bert/embeddings", "bert.embeddings"
    word = b.const(b.weight((vocab, hidden), 1, 0.5), name=f"{ep}.word_embeddings.weight")
    pos_table = b.const(b.weight((positions, hidden), 1, 0.2), name=f"{ep}.position_embeddings.weight")
    type_table = b.const(b.weight((2, hidden), 1, 0.2), name=f"{ep}.token_type_embeddings.weight")
    pos_ids = b.const(np.arange(positions, dtype=np.int64)[None], name=f"{ep}.position_ids")
    x = b.op("Gather", [word, "input_ids"], f"{es}/word_embeddings", axis=0)
    t = b.op("Gather", [type_table, "token_type_ids"], f"{es}/token_type_embeddings", axis=0)
    x = b.op("Add", [x, t], es)
    s_len = b.op("Unsqueeze", [b.dim("input_ids", 1, es), b.vec([0], es)], es)
    pid = b.op("Slice", [pos_ids, b.vec([0], es), s_len, b.vec([1], es), b.vec([1], es)], es)
    x = b.op("Add", [x, b.op("Gather", [pos_table, pid], f"{es}/position_embeddings", axis=0)], es)
    x = b.layernorm(x, hidden, f"{es}/LayerNorm", f"{ep}.LayerNorm", True)
    m = b.op("Unsqueeze", [b.op("Unsqueeze", ["attention_mask", b.vec([1], "/bert")], "/bert"),
                           b.vec([2], "/bert")], "/bert")
    m = b.op("Cast", [m], "/bert", to=TensorProto.FLOAT)
    m = b.op("Mul", [b.op("Sub", [b.scalar(1.0, "/bert"), m], "/bert"), b.scalar(-10000.0, "/bert")], "/bert")
    for k in range(layers):
        ls, lp = f"/bert/encoder/layer.{k}", f"bert.encoder.layer.{k}"
        a = b.attention(x, hidden, heads, f"{ls}/attention/self", f"{lp}.attention.self", mask=m)
        x = b.layernorm(b.op("Add", [a, x], f"{ls}/attention/output"), hidden,
                        f"{ls}/attention/output/LayerNorm", f"{lp}.attention.output.LayerNorm", True)
        h = b.linear(x, hidden, ffn, f"{ls}/intermediate/dense", f"{lp}.intermediate.dense")
        h = b.gelu(h, f"{ls}/intermediate/intermediate_act_fn")
        h = b.linear(h, ffn, hidden, f"{ls}/output/dense", f"{lp}.output.dense")
        x = b.layernorm(b.op("Add", [h, x], f"{ls}/output"), hidden, f"{ls}/output/LayerNorm",
                        f"{lp}.output.LayerNorm", True)
    b.op("Identity", [x], "/bert", outputs=["last_hidden_state"])
    ins = [_vi(n, TensorProto.INT64, [1, seq]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    return b.build("bert_base_random", ins, [_vi("last_hidden_state", TensorProto.FLOAT, [1, seq, hidden])],
                   f"BERT-base-size encoder ({layers} layers, hidden {hidden}), random weights")


def prepare(key: str, out: Path, n: int) -> tuple[Path, Path, tuple[str, ...], str | None]:
    """Write the model and `n` samples of family `key` into out/key (kept between runs)."""
    import onnx

    d = out / key
    d.mkdir(parents=True, exist_ok=True)
    model, data = d / "model.onnx", d / f"data{n}"
    if key == "bert_base":
        sys.path.insert(0, str(ROOT))
        from fixtures.families import write_bert_data

        if not model.exists():
            onnx.save(make_bert_base(**BERT_BASE), str(model))
        if not data.exists():
            write_bert_data(data, n, seq=BERT_BASE["seq"], vocab=BERT_BASE["vocab"])
        return model, data, (), None
    build, write, cli, task = _families()[key]
    if not model.exists():
        onnx.save(build(), str(model))
    if not data.exists():
        write(data, n)
    return model, data, cli, task


# ===================================================================== child


def child(model: Path, data: Path, n: int, cli: list[str], task: str | None, js: Path) -> dict:
    """compare (timed, peak RSS), then the float and fake-quantized passes with the same options."""
    import onnxruntime as ort

    from qdebug.cli import build_parser, main
    from qdebug.cli.options import setup_run

    base = [str(model), "--data", str(data), "--samples", str(n), *cli]
    argv = ["compare", *base, *(["--task", task] if task else []), "--json", str(js), "-q"]
    js.unlink(missing_ok=True)
    t = time.perf_counter()
    rc = main(argv)
    res: dict = {"rc": rc, "compare_s": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb(),
                 "command": "qdebug " + " ".join(argv)}
    if rc != 0 or not js.exists():
        return res
    doc = json.loads(js.read_text())
    res.update(timing=doc.get("timing"), engine=doc.get("engine"), tensors=len(doc["tensors"]),
               hazards=sorted({h["kind"] for h in doc.get("hazards", [])}),
               worst_snr_db=min((o["cumulative"]["snr_db"] for o in doc["outputs"]
                                 if o["cumulative"]["snr_db"] is not None), default=None))
    st = setup_run(build_parser().parse_args(["compare", *base]))
    samples = list(st.dataset)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    src = st.graph.model.SerializeToString()
    t = time.perf_counter()
    fsess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    res["float_session_s"] = time.perf_counter() - t
    del src
    res["float_pass_s"] = pass_seconds(fsess, samples)
    del fsess
    st.backend.prepare(st.graph, st.config, samples)
    src = st.backend.quantized_model(st.graph, st.config).SerializeToString()
    t = time.perf_counter()
    qsess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    res["quant_session_s"] = time.perf_counter() - t
    del src
    res["quant_pass_s"] = pass_seconds(qsess, samples)
    res["ratio"] = res["compare_s"] / max(res["float_pass_s"] + res["quant_pass_s"], 1e-9)
    return res


# ===================================================================== parent
def launch(key: str, out: Path, n: int, timeout: float) -> dict:
    """One family at one sample count in a fresh interpreter; its result line, or the last stderr line."""
    model, data, cli, task = prepare(key, out, n)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(
        {"model": str(model), "data": str(data), "n": n, "cli": list(cli), "task": task,
         "json": str(out / key / f"compare{n}.json")})]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"rc": -1, "error": f"timeout after {timeout:.0f} s"}
    for line in p.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()] or ["(no output)"]
    return {"rc": p.returncode, "error": lines[-1]}


def marginal(runs: dict, counts: list[int]) -> float | None:
    """d(compare)/d(float + quantized passes): least-squares slopes over the sample counts (None for one count)."""
    if len(counts) < 2:
        return None
    import numpy as np

    n = np.array(counts, dtype=float)
    cmp_slope = np.polyfit(n, [runs[str(c)]["compare_s"] for c in counts], 1)[0]
    pass_slope = np.polyfit(n, [runs[str(c)]["float_pass_s"] + runs[str(c)]["quant_pass_s"] for c in counts], 1)[0]
    return float(cmp_slope / pass_slope) if pass_slope > 0 else None


def table(rows: list[dict], counts: list[int]) -> str:
    """One line per family: compare time and its ratio to the two passes per sample count, the marginal ratio,
    the plain sessions' creation time, peak RSS per sample count and its growth."""
    lo, hi = counts[0], counts[-1]
    per = " ".join(f"{f'cmp@{c}':>7} {f'f+q@{c}':>7} {f'x@{c}':>5}" for c in counts)
    head = (f"{'family':<16} {per} {'marg.':>5} {'sess s':>6} " + " ".join(f"{f'RSS@{c}':>8}" for c in counts)
            + f" {'growth':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        runs = r["runs"]
        if any(x.get("rc") != 0 for x in runs.values()):
            bad = next(x for x in runs.values() if x.get("rc") != 0)
            lines.append(f"{r['key']:<16} FAILED: {str(bad.get('error') or bad.get('rc'))[:60]}")
            continue
        cells = []
        for c in counts:
            x = runs[str(c)]
            cells.append(f"{x['compare_s']:>7.2f} {x['float_pass_s'] + x['quant_pass_s']:>7.3f} {x['ratio']:>5.1f}")
        m = marginal(runs, counts)
        r["marginal_ratio"] = m
        ref = runs[str(lo)]
        rss = [runs[str(c)]["peak_rss_mb"] for c in counts]
        lines.append(f"{r['key']:<16} {' '.join(cells)} {f'{m:.2f}' if m is not None else '-':>5} "
                     f"{ref.get('float_session_s', 0) + ref.get('quant_session_s', 0):>6.2f} "
                     + " ".join(f"{v:>8.0f}" for v in rss) + f" {rss[-1] - rss[0]:>+7.0f}")
    lines.append(f"(cmp = compare s, f+q = float + quantized pass s, x = their ratio; marg. = d(cmp)/d(f+q) over "
                 f"the counts; sess s = creating the plain float and quantized sessions at {lo} samples, not in "
                 f"f+q; growth = RSS@{hi} - RSS@{lo}, MB)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=None, help="run the families whose key contains this text")
    ap.add_argument("--samples", default="4,16", help="sample counts, comma-separated")
    ap.add_argument("--bert-base", action="store_true", help="only the BERT-base-size encoder (4, 8 and 32 samples)")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "families")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per child")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        c = json.loads(args.child)
        res = child(Path(c["model"]), Path(c["data"]), c["n"], c["cli"], c["task"], Path(c["json"]))
        sys.stdout.write(RESULT_TAG + json.dumps(res) + "\n")
        return 0
    started = _dt.datetime.now(_dt.timezone.utc)
    counts = [4, 8, 32] if args.bert_base and args.samples == "4,16" else [int(x) for x in args.samples.split(",")]
    keys = ["bert_base"] if args.bert_base else [k for k in _families() if not args.only or args.only in k]
    out = args.out / ("bert_base" if args.bert_base else "fixtures")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for key in keys:
        print(f"· {key} ...", file=sys.stderr, flush=True)
        rows.append({"key": key, "runs": {str(n): launch(key, out, n, args.timeout) for n in counts}})
    print(table(rows, counts))
    write_results(out, "bench_families", started, {"samples": counts, "families": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
