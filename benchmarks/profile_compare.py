#!/usr/bin/env python
"""Profile `qdebug compare` on the bench model (cProfile), printing the top functions by own time and
by cumulative time, plus the CPU load other processes put on the machine meanwhile.

    python benchmarks/profile_compare.py [--samples 8] [--top 20]
    python benchmarks/profile_compare.py --stages      # CPU seconds per stage, on every thread

cProfile sees only the main thread, and qdebug runs the sessions and metrics on worker threads
(qdebug.workers), where the main thread mostly waits; `--stages` instead wraps each stage and adds up
the CPU time of the thread running it (session runs by graph, metric shares, image decoding), plus the
process's page faults and system time.

Run benchmarks/bench_compare.py once first (it writes the model and images into benchmarks/out/).
Writes benchmarks/out/profile_compare_<N>.prof (open with `python -m pstats` or snakeviz).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import IMAGES_DIR, MODEL_NAME, cpu_busy_s, cpu_s  # noqa: E402
from bench_compare import DEFAULT_OUT  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--stages", action="store_true", help="CPU time per stage on every thread (no cProfile)")
    args = ap.parse_args()
    out = Path(args.out)
    model, images = out / MODEL_NAME, out / IMAGES_DIR
    if not model.exists() or not images.exists():
        raise SystemExit(f"{model} or {images} missing: run benchmarks/bench_compare.py first")
    from qdebug.cli import main as qmain

    if args.stages:
        return stages(qmain, model, images, args.samples, out)
    argv = [
        "compare",
        str(model),
        "--data",
        str(images),
        "--samples",
        str(args.samples),
        "--json",
        str(out / f"profile_compare_{args.samples}.json"),
        "-q",
    ]
    prof = cProfile.Profile()
    b0, c0, t0 = cpu_busy_s(), cpu_s(), time.perf_counter()
    prof.enable()
    rc = qmain(argv)
    prof.disable()
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    other = max(0.0, (cpu_busy_s() - b0 - cpu) / wall)
    path = out / f"profile_compare_{args.samples}.prof"
    prof.dump_stats(str(path))
    total = pstats.Stats(prof).total_tt
    print(
        f"qdebug compare --samples {args.samples}: exit {rc}, wall {wall:.1f} s, CPU {cpu:.1f} s, "
        f"profiled {total:.1f} s, other load {other:.2f} cores; wrote {path}"
    )
    for key, title in (("tottime", "own time"), ("cumulative", "cumulative time")):
        st = pstats.Stats(prof, stream=io.StringIO())
        print(f"\n== top {args.top} by {title} (share of {total:.1f} s) ==")
        rows = []
        for func, (_cc, nc, tt, ct, _callers) in st.stats.items():
            rows.append((tt if key == "tottime" else ct, nc, tt, ct, func))
        rows.sort(key=lambda r: -r[0])
        print(f"{'share':>6} {'own s':>8} {'cum s':>8} {'calls':>8}  function")
        for v, nc, tt, ct, (fn, line, name) in rows[: args.top]:
            short = fn.split("site-packages/")[-1].split("/work/main/")[-1]
            print(f"{100 * v / total:5.1f}% {tt:8.2f} {ct:8.2f} {nc:8d}  {name} ({short}:{line})")
    return rc


def stages(qmain, model: Path, images: Path, samples: int, out: Path) -> int:
    """Run compare once with each stage wrapped; print CPU seconds per stage (all threads)."""
    import collections
    import os
    import resource
    import threading

    import qdebug.compare.stage as pipeline
    import qdebug.inputs.dataset as dataset_mod
    import qdebug.metrics.engine as engine
    import qdebug.runners.session as session

    cpu: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def wrap(owner, name: str, label) -> None:
        inner = getattr(owner, name)

        def timed(*a, **k):
            t = time.thread_time()
            try:
                return inner(*a, **k)
            finally:
                lab = label(a) if callable(label) else label
                with lock:
                    cpu[lab] += time.thread_time() - t
                    calls[lab] += 1

        setattr(owner, name, timed)

    def run_label(a) -> str:  # the array path runs exactly two graphs through output slots
        iso = any(n.startswith("iso::") for n in a[0].output_names)
        return "run: analysis graph (float + isolated)" if iso else "run: cumulative graph"

    def plain_label(sess) -> str:  # the in-graph path runs one model whose outputs are its sums
        if any(n.startswith("qdebug::") for n in sess.output_names):
            return "run: compare model (3 chains + in-graph sums)"
        return "run: calibration and unslotted"

    # OrtSession.run calls itself once per slot's first run: count the outer call only
    wrap(session.OrtSession, "_run_slot", run_label)
    orig_run = session.OrtSession.run

    def run(self, feed, slot=None):
        if slot is not None:
            return self._run_slot({k: v for k, v in feed.items() if k in self.input_names}, slot)
        t = time.thread_time()
        try:
            return orig_run(self, feed)
        finally:
            with lock:
                cpu[plain_label(self)] += time.thread_time() - t
                calls[plain_label(self)] += 1

    session.OrtSession.run = run
    wrap(engine.CompareAccumulator, "_update_many", "metrics (one share of one sample)")
    wrap(pipeline, "add_sample", "in-graph sums into the accumulator")
    wrap(dataset_mod, "_load_image", "image decoding")
    t0 = os.times()
    w0 = time.perf_counter()
    rc = qmain(["compare", str(model), "--data", str(images), "--samples", str(samples), "--json",
                str(out / f"profile_compare_{samples}.json"), "-q"])
    wall = time.perf_counter() - w0
    t1 = os.times()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    total = (t1.user - t0.user) + (t1.system - t0.system)
    print(f"qdebug compare --samples {samples}: exit {rc}, wall {wall:.2f} s, CPU {total:.2f} s "
          f"(system {t1.system - t0.system:.2f} s), page faults {ru.ru_minflt}, peak RSS {ru.ru_maxrss // 1024} MB")
    for lab, v in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"  {lab:44s} {v:6.2f} s CPU  ({calls[lab]} calls)")
    print(f"  {'everything else (imports, load, build, JSON)':44s} {total - sum(cpu.values()):6.2f} s CPU")
    return rc


if __name__ == "__main__":
    sys.exit(main())
