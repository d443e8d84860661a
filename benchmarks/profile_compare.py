#!/usr/bin/env python
"""Profile `qdebug compare` on the bench model (cProfile), printing the top functions by own time and
by cumulative time, plus the CPU load other processes put on the machine meanwhile.

    python benchmarks/profile_compare.py [--samples 8] [--top 20]
    python benchmarks/profile_compare.py --stages      # CPU seconds per stage, on every thread
    python benchmarks/profile_compare.py --timeline --bert-base --samples 4,8,16,32   # phases (issue 15)

cProfile sees only the main thread, and qdebug runs the sessions and metrics on worker threads
(qdebug.workers), where the main thread mostly waits; `--stages` instead wraps each stage and adds up
the CPU time of the thread running it (session runs by graph, metric shares, image decoding), plus the
process's page faults and system time.

`--timeline` splits one compare per sample count into phases (load, calibration, model and session builds,
the per-sample loop, results) with wall and CPU seconds and the peak RSS of each (20 ms samples of
/proc/self/status), each count in a fresh interpreter, then fits wall = fixed + per-sample x samples; with
`--bert-base` on benchmarks/bench_families.py's BERT-base-size encoder (written to --out/bert_base once).

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

import numpy as np  # noqa: E402
from _common import IMAGES_DIR, MODEL_NAME, cpu_busy_s, cpu_s  # noqa: E402
from bench_compare import DEFAULT_OUT  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", default="8", help="sample count (--timeline: comma-separated counts)")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--stages", action="store_true", help="CPU time per stage on every thread (no cProfile)")
    ap.add_argument("--timeline", action="store_true", help="wall/CPU/peak RSS per phase, per sample count")
    ap.add_argument("--bert-base", action="store_true", help="--timeline on the BERT-base-size encoder")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return timeline_child(args.child)
    if args.timeline:
        return timeline(Path(args.out), [int(x) for x in args.samples.split(",")], args.bert_base)
    args.samples = int(args.samples)
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


# ===================================================================== --timeline
PHASE_TAG = "PHASES "


def timeline_child(spec: str) -> int:
    """One compare with phase markers (wrapped stage functions) and an RSS sampler; prints one PHASES line."""
    import json
    import os
    import threading

    import qdebug.compare.stage as stage
    import qdebug.graph.model as gmodel
    import qdebug.runners.session as session
    import qdebug.runners.sim as sim
    from qdebug.cli import main as qmain

    c = json.loads(spec)
    marks: list[tuple[str, float, float]] = []  # (phase starting now, wall, process CPU)
    rss: list[tuple[float, int]] = []
    t0 = time.perf_counter()

    def mark(name: str) -> None:
        cpu = os.times()
        marks.append((name, time.perf_counter() - t0, cpu.user + cpu.system))

    stack: list[str] = []
    background: dict[str, float] = {}  # phase -> wall s on other threads (overlapping the phases above)

    def wrap(owner, attr: str, phase: str, after: str) -> None:
        """`phase` while owner.attr runs (a session inside calibration: "calibrate: session"), then `after`."""
        inner = getattr(owner, attr)

        def timed(*a, **k):
            if threading.current_thread() is not threading.main_thread():  # e.g. the model hash beside calibration
                t = time.perf_counter()
                try:
                    return inner(*a, **k)
                finally:
                    background[phase] = background.get(phase, 0.0) + time.perf_counter() - t
            name = (f"{stack[-1]}: session" if stack else "build sessions") if phase == "session" else phase
            stack.append(name.split(":")[0])
            mark(name)
            try:
                return inner(*a, **k)
            finally:
                stack.pop()
                mark(stack[-1] if stack else after)

        setattr(owner, attr, timed)

    wrap(gmodel.ModelGraph, "load", "load", "setup")
    wrap(gmodel.ModelGraph, "sha256", "sha256", "setup")
    wrap(sim.SimBackend, "prepare", "calibrate", "plan")
    wrap(sim.SimBackend, "analysis_model", "build models", "build other")
    wrap(sim.SimBackend, "quantized_model", "build models", "build other")
    wrap(session.OrtSession, "__init__", "session", "build other")
    wrap(stage, "_array_loop", "loop", "results")
    wrap(stage, "_fused_loop", "loop", "results")
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            with open("/proc/self/status") as f:
                kb = next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
            rss.append((time.perf_counter() - t0, kb // 1024))
            stop.wait(0.02)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    b0 = cpu_busy_s()
    mark("start")
    rc = qmain(["compare", c["model"], "--data", c["data"], "--samples", str(c["n"]), "--json", c["json"], "-q"])
    mark("end")
    stop.set()
    th.join()
    wall = marks[-1][1]
    other = max(0.0, (cpu_busy_s() - b0 - (marks[-1][2] - marks[0][2])) / wall)
    phases: dict[str, list[float]] = {}  # phase -> [wall s, CPU s, peak MB]
    for (name, t, cpu), (_, t_next, cpu_next) in zip(marks, marks[1:], strict=False):
        got = phases.setdefault(name, [0.0, 0.0, 0.0])
        got[0] += t_next - t
        got[1] += cpu_next - cpu
        got[2] = max([got[2], *(mb for ts, mb in rss if t <= ts <= t_next)])
    print(PHASE_TAG + json.dumps({"rc": rc, "n": c["n"], "wall": wall, "other_cores": other, "phases": phases,
                                  "peak_mb": max(mb for _, mb in rss), "hwm_mb": peak_hwm_mb(),
                                  "background": background}))
    return rc


def peak_hwm_mb() -> float:
    """This process's resident high-water mark (ru_maxrss, KiB on Linux), in MiB: spikes the sampler misses."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timeline(out: Path, counts: list[int], bert_base: bool) -> int:
    """`timeline_child` per sample count in a fresh interpreter; a phase table and the per-sample fit."""
    import json
    import subprocess

    if bert_base:
        from bench_families import prepare

        def inputs(n: int) -> tuple[Path, Path]:
            return prepare("bert_base", out / "bert_base", n)[:2]
    else:
        def inputs(n: int) -> tuple[Path, Path]:
            return out / MODEL_NAME, out / IMAGES_DIR
    runs = []
    for n in counts:
        model, data = inputs(n)
        spec = json.dumps({"model": str(model), "data": str(data), "n": n, "json": str(out / f"timeline{n}.json")})
        p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", spec], capture_output=True,
                           text=True, cwd=str(HERE.parent))
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith(PHASE_TAG)), None)
        if line is None:
            print(f"{n} samples: failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
            return 1
        runs.append(json.loads(line[len(PHASE_TAG):]))
    names = list(dict.fromkeys(k for r in runs for k in r["phases"]))
    print(f"{'phase (wall s / CPU s / peak MB)':<28}" + "".join(f"{f'{r[chr(110)]} samples':>22}" for r in runs))
    for k in names:
        cells = [r["phases"].get(k, [0.0, 0.0, 0.0]) for r in runs]
        print(f"{k:<28}" + "".join(f"{w:>8.2f} {c:>6.2f} {m:>6.0f}" for w, c, m in cells))
    print(f"{'whole compare':<28}" + "".join(f"{r['wall']:>8.2f} {'':>6} {r['peak_mb']:>6.0f}" for r in runs))
    for k in dict.fromkeys(k for r in runs for k in r["background"]):
        print(f"{k + ' (on a thread)':<28}" + "".join(f"{r['background'].get(k, 0.0):>8.2f} {'':>13}" for r in runs))
    print(f"{'peak RSS (VmHWM)':<28}" + "".join(f"{'':>15} {r['hwm_mb']:>6.0f}" for r in runs))
    print(f"{'other load (cores)':<28}" + "".join(f"{r['other_cores']:>8.2f} {'':>13}" for r in runs))
    if len(runs) > 1:  # least squares: wall = fixed + per_sample * n, and the loop + calibration alone
        xs = np.array([r["n"] for r in runs], dtype=float)
        for what, ys in (("whole compare", [r["wall"] for r in runs]),
                         ("calibrate + loop", [r["phases"].get("calibrate", [0])[0] + r["phases"].get("loop", [0])[0]
                                               for r in runs])):
            slope, fixed = np.polyfit(xs, np.array(ys), 1)
            print(f"fit {what}: {fixed:.2f} s fixed + {slope:.3f} s per sample")
    return 0


if __name__ == "__main__":
    sys.exit(main())
