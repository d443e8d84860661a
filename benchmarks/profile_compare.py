#!/usr/bin/env python
"""Profile `qdebug compare` on the bench model (cProfile), printing the top functions by own time and
by cumulative time, plus the CPU load other processes put on the machine meanwhile.

    python benchmarks/profile_compare.py [--samples 8] [--top 20]

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
    args = ap.parse_args()
    out = Path(args.out)
    model, images = out / MODEL_NAME, out / IMAGES_DIR
    if not model.exists() or not images.exists():
        raise SystemExit(f"{model} or {images} missing: run benchmarks/bench_compare.py first")
    from qdebug.cli import main as qmain

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


if __name__ == "__main__":
    sys.exit(main())
