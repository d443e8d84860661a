#!/usr/bin/env python
"""Speed benchmark of `qdebug bisect` with the built-in simulator vs the naive one-op-at-a-time sweep (issue 4).

    python benchmarks/bench_bisect.py                  # 16 images, three targets, naive sweep (~10 min, quiet 2 cores)
    python benchmarks/bench_bisect.py --quick          # 4 images
    python benchmarks/bench_bisect.py --target "output0.score:snr_db>=20" --target default

For each target, `qdebug bisect MODEL --data DIR --samples N [--target EXPR] --json OUT -q` runs as its own
process (the real console script, interpreter start and imports included); the wall time, the quantized
evaluations and the bound 2*ceil(log2 N) + |set| + 2 come from that run and its JSON. The naive approach
(PPQ's layerwise analysis, Polygraphy's linear mode: promote each candidate op alone, one full quantized
evaluation per op, plus the baseline) runs in another process on the same candidates, images and
evaluator; one sweep is scored against every target at once (the quantized runs do not depend on the
target, only the scoring does, and scoring is negligible), so its cost applies to each target. When the
sweep does not fit in --naive-budget-s, it stops after a deterministic pseudo-random subset (seeded
shuffle, so the subset spreads over the whole graph) and the remaining evaluations are extrapolated
linearly from the measured mean; the output says so.

Targets (printed, never asserted): bisect wall time < 180 s, evaluations <= the bound. Inputs are written
to benchmarks/out/bisect/ (model from fixtures.models.make_yolov8_bench, 640x480 images from
fixtures.data.make_images) unless they exist; results go to benchmarks/out/bisect/results.json.
With remedies (default; --no-remedies skips): each target also runs `bisect --remedies`, and a second
table prints plan, cost, evaluations and time beside the promotion-only search. The model is the
synthetic make_yolov8_bench detector unless --model/--data name a real one (docs/benchmarks.md, issue #17:
a trained YOLOv8n from the nudenet wheel; benchmarks/probe_small_sets.py asks whether small plans exist).
`--single-pruning` runs plain bisect with the single-member pruning it used before grouped pruning (issue #17
round 4), for a before/after table. See benchmarks/README_bisect_rknn.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    HERE,
    ROOT,
    children_cpu_s,
    cpu_busy_s,
    prepare_inputs,
    wait_for_quiet,
    write_results,
)

DEFAULT_OUT = HERE / "out" / "bisect"
N_IMAGES = 16
QUICK_IMAGES = 4
RESULT_TAG = "BENCH_RESULT "
TARGET_WALL_S = 180.0
# A 1-op fix (the output Concat shares one scale between boxes in pixels and scores in 0..1), a target
# that needs many ops, and the default target (every output part cosine >= 0.999).
DEFAULT_TARGETS = ["output0.score:snr_db>=12", "output0.score:snr_db>=25", "default"]


# ===================================================================== helpers
def _slug(target: str) -> str:
    return "default" if target == "default" else re.sub(r"[^A-Za-z0-9]+", "_", target).strip("_")


def _bound(n: int, found: int) -> int:
    return 2 * max(1, (max(n, 1) - 1).bit_length()) + found + 2


# plain bisect as before issue #17 round 4 (single-member pruning only), for a before/after comparison
_SINGLE_PRUNING = ("import sys; from qdebug.search import bisect as b; init = b.PromotionSearch.__init__\n"
                   "def single(self, *a, **k):\n    init(self, *a, **k); self.grouped = False\n"
                   "b.PromotionSearch.__init__ = single\n"
                   "from qdebug.cli import main; sys.exit(main())")


def _qdebug_cmd(single_pruning: bool = False) -> list[str]:
    if single_pruning:
        return [sys.executable, "-c", _SINGLE_PRUNING]
    script = Path(sys.executable).with_name("qdebug")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from qdebug.cli import main; sys.exit(main())"]


def _run_measured(cmd: list[str], cwd: Path) -> dict:
    """Run a command; wall, CPU of the child (all threads) and the load of everything else meanwhile."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    c0, b0, t0 = children_cpu_s(), cpu_busy_s(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(cwd), env=env)
    wall = time.perf_counter() - t0
    cpu = children_cpu_s() - c0
    busy = cpu_busy_s() - b0
    return {"wall_s": wall, "cpu_s": cpu, "other_load_cores": max(0.0, (busy - cpu) / wall) if busy else None,
            "returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


# ====================================================================== bisect
def run_bisect_cli(model: Path, images: Path, n: int, target: str, out: Path, remedies: bool = False,
                   extra: list[str] | None = None, single_pruning: bool = False) -> dict:
    tag = "_remedies" if remedies else "_single" if single_pruning else ""
    js = out / f"bisect_{model.stem}_{_slug(target)}_{n}{tag}.json"
    if js.exists():
        js.unlink()
    cmd = [*_qdebug_cmd(single_pruning and not remedies), "bisect", str(model), "--data", str(images),
           "--samples", str(n), "--json", str(js), "-q"] + (["--remedies"] if remedies else []) + list(extra or [])
    if target != "default":
        cmd += ["--target", target]
    r = _run_measured(cmd, out)
    row: dict = {"target": target, "command": " ".join(cmd[1:]),
                 "wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "other_load_cores": r["other_load_cores"],
                 "returncode": r["returncode"]}
    if r["returncode"] not in (0, 1) or not js.exists():
        tail = (r["stderr"].strip().splitlines() or ["(no stderr)"])[-3:]
        row["error"] = f"exit {r['returncode']}: {' | '.join(tail)[:500]}"
        return row
    doc = json.loads(js.read_text())
    c, res = doc["counts"], doc["result"]
    evs = doc["evaluations"]
    purposes: dict[str, int] = {}
    for e in evs:
        purposes[e["purpose"]] = purposes.get(e["purpose"], 0) + 1
    cut = doc["first_bad_cut"]
    row.update({
        "json": str(js), "expression": doc["target"]["expression"],
        "candidates": c["candidates"], "evaluations": c["evaluations"],
        "search_evaluations": c["search_evaluations"], "cut_evaluations": c["cut_evaluations"],
        "bound": c["bound"], "within_bound": c["evaluations"] <= c["bound"],
        "naive_evaluations": c["naive_evaluations"], "evaluations_by_purpose": purposes,
        # the shortest passing ranked prefix: what the pruning phase walks through, one evaluation per member
        "prefix_length": min((len(e["promoted"]) for e in evs if e["purpose"] in ("prefix", "all-promoted")
                              and e["passed"]), default=None),
        "search_seconds": c["search_seconds"], "total_seconds": c["total_seconds"],
        "eval_seconds": [e["seconds"] for e in evs],
        "mean_eval_s": sum(e["seconds"] for e in evs) / len(evs) if evs else None,
        "compare_before_timing": (doc.get("compare_before") or {}).get("timing"),
        "compare_after_timing": (doc.get("compare_after") or {}).get("timing"),
        "met": res["met"], "set_size": len(res["set"]), "set": res["set"], "message": res["message"],
        "before": res["before"], "after": res["after"],
        "first_bad_cut": {k: cut.get(k) for k in ("tensor", "node", "op_type", "metric", "value", "bound")},
        "wall_target_met": r["wall_s"] < TARGET_WALL_S, "remedies": remedies,
        "pruning": "grouped" if remedies or not single_pruning else "single",
        "plan": [(x["kind"], x["cost"], x["unit"]) for x in res.get("remedies", [])],
        "precision_part": ({k: rs.get(k) for k in ("precision_evaluations", "precision_bound", "calibration_evaluations",
                                                   "calibration_bound")} if (rs := doc.get("remedy_search")) else None),
    })
    return row


def summarize_remedies(pairs: list[tuple[dict, dict]], n: int) -> str:
    """Promotion-only vs --remedies on the same target, model and images: plan, cost, evaluations, time."""
    lines = [f"## bisect --remedies beside the promotion-only search ({n} images, built-in simulator)", "",
             "| target | search | met | plan (kind: cost) | ops at higher precision | evals / bound "
             "| precision part evals / bound | wall s |",
             "|" + "---|" * 8]
    for a, b in pairs:
        for r in (a, b):
            if "error" in r:
                lines.append(f"| `{r['target']}` | {'remedies' if r.get('remedies') else 'promotion'} | error: "
                             f"{r['error']} | | | | | |")
                continue
            plan = ", ".join(f"{k}: {c}" for k, c, _ in r["plan"]) or "-"
            pp = r.get("precision_part") or {}
            part = (f"{pp['precision_evaluations']} / {pp['precision_bound']}" if pp.get("precision_bound") else
                    "-" if r["remedies"] else f"{r['search_evaluations']} / {r['bound']}")
            lines.append(f"| `{r['expression']}` | {'remedies' if r['remedies'] else 'promotion only'} | "
                         f"{'yes' if r['met'] else 'no'} | {plan} | {r['set_size']} | {r['evaluations']} / "
                         f"{r['bound']} | {part} | {r['wall_s']:.1f} |")
    return "\n".join(lines)


# ======================================================================= naive
def child_naive(model: Path, images: Path, n: int, targets: list[str], budget_s: float, seed: int) -> dict:
    """Promote each candidate alone (one full quantized evaluation each) plus the baseline, scored on every target."""
    from dataclasses import replace

    from qdebug.graph.model import ModelGraph
    from qdebug.graph.parts import concat_parts
    from qdebug.inputs.dataset import load_dataset
    from qdebug.quant.scheme import Precision, QuantConfig
    from qdebug.runners.session import OrtSession
    from qdebug.runners.sim import SimBackend
    from qdebug.search.bisect import ancestors_ops
    from qdebug.search.evaluate import TensorTargetEvaluator
    from qdebug.search.target import parse_target

    t_start = time.perf_counter()
    graph = ModelGraph.load(str(model))
    samples = list(load_dataset(str(images), graph, None, n))
    backend = SimBackend("generic")
    base = QuantConfig()
    parts = {t: [s.name for s in ss] for t, ss in concat_parts(graph, [o.name for o in graph.outputs]).items()}
    parsed = {t: parse_target(None if t == "default" else t, graph, parts) for t in targets}
    t = time.perf_counter()
    backend.prepare(graph, base, samples)  # calibration, as bisect's one-pass compare does
    calib_s = time.perf_counter() - t
    ops = backend.quant_ops(graph)
    cand_by_target = {k: ancestors_ops(graph, ops, tg.tensors() or [o.name for o in graph.outputs])
                      for k, tg in parsed.items()}
    cand = sorted(set().union(*cand_by_target.values()))
    clauses, seen = [], set()
    for tg in parsed.values():
        for c in tg.clauses:
            if c.text() not in seen:
                seen.add(c.text())
                clauses.append(c)
    union = replace(next(iter(parsed.values())), clauses=tuple(clauses))
    t = time.perf_counter()
    ev = TensorTargetEvaluator(graph, samples, backend, union)  # float reference, computed once
    reference_s = time.perf_counter() - t

    # breakdown of one evaluation (baseline config): model build, session creation, the runs
    outs = union.tensors()
    t = time.perf_counter()
    qm = backend.quantized_model(graph, base, outs)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    sess = OrtSession(qm)
    session_s = time.perf_counter() - t
    t = time.perf_counter()
    for s in samples:
        sess.run(s)
    runs_s = time.perf_counter() - t
    del sess, qm

    def score(values: dict, target: str) -> bool:
        return all(c.check(values.get(c.text())) for c in parsed[target].clauses)

    t = time.perf_counter()
    b = ev.evaluate(base)
    baseline = {"values": b.values, "seconds": time.perf_counter() - t}
    order = list(cand)
    random.Random(seed).shuffle(order)  # deterministic; an early stop leaves a subset spread over the graph
    rows = []
    t_sweep = time.perf_counter()
    for k in order:
        if rows and time.perf_counter() - t_sweep + sum(r["seconds"] for r in rows) / len(rows) > budget_s:
            break
        t = time.perf_counter()
        s = ev.evaluate(base.with_overrides({k: Precision.INT16}))
        rows.append({"op": k, "values": s.values, "seconds": time.perf_counter() - t})
    sweep_s = time.perf_counter() - t_sweep
    done, total = len(rows), len(order)
    mean = sum(r["seconds"] for r in rows) / done if done else None
    est_sweep_s = sweep_s + (mean or 0.0) * (total - done)
    setup_s = time.perf_counter() - t_start - sweep_s - baseline["seconds"] - build_s - session_s - runs_s
    per_target = {}
    for tg in targets:
        keys = [c.text() for c in parsed[tg].clauses]
        ok = [r["op"] for r in rows if score(r["values"], tg)]
        best = max(rows, key=lambda r: min(c.margin(r["values"].get(c.text())) for c in parsed[tg].clauses),
                   default=None)
        per_target[tg] = {"candidates": len(cand_by_target[tg]), "clauses": keys,
                          "baseline_passed": score(b.values, tg),
                          "single_ops_meeting_target": ok, "best_single_op": best["op"] if best else None,
                          "best_single_values": {k: best["values"].get(k) for k in keys} if best else None}
    return {
        "candidates": total, "evaluated": done, "complete": done == total, "budget_s": budget_s,
        "setup_s": setup_s, "calibrate_s": calib_s, "float_reference_s": reference_s,
        "baseline": baseline, "sweep_s": sweep_s, "mean_eval_s": mean,
        "estimated_sweep_s": est_sweep_s,
        # setup (load, images, calibration, float reference) + baseline + every single-op evaluation
        "estimated_total_s": setup_s + baseline["seconds"] + est_sweep_s,
        "evaluations": total + 1,
        "one_eval_breakdown": {"build_model_s": build_s, "session_s": session_s, "runs_s": runs_s,
                               "samples": len(samples)},
        "per_target": per_target, "per_op": rows, "samples": len(samples),
    }


def run_naive(model: Path, images: Path, n: int, targets: list[str], budget_s: float, out: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "naive", "--model", str(model), "--data",
           str(images), "--n", str(n), "--naive-budget-s", str(budget_s), "--out", str(out)]
    for t in targets:
        cmd += ["--target", t]
    r = _run_measured(cmd, out)
    line = next((ln for ln in reversed(r["stdout"].splitlines()) if ln.startswith(RESULT_TAG)), None)
    if r["returncode"] != 0 or line is None:
        tail = (r["stderr"].strip().splitlines() or ["(no stderr)"])[-3:]
        return {"error": f"exit {r['returncode']}: {' | '.join(tail)[:500]}", "wall_s": r["wall_s"]}
    row = json.loads(line[len(RESULT_TAG):])
    row.update({"process_wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "other_load_cores": r["other_load_cores"]})
    # the process wall includes interpreter start and imports; extrapolate only the missing evaluations
    row["estimated_process_wall_s"] = r["wall_s"] + (row["estimated_sweep_s"] - row["sweep_s"])
    return row


# ====================================================================== report
def _f(v, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def summarize(rows: list[dict], naive: dict | None, n: int) -> str:
    lines = [f"## qdebug bisect vs naive one-op-at-a-time sweep ({n} images, built-in simulator)", ""]
    if naive and "error" not in naive:
        extra = "" if naive["complete"] else (
            f" — only {naive['evaluated']} of {naive['candidates']} single-op evaluations fit in "
            f"{naive['budget_s']:.0f} s; the rest is extrapolated linearly from their mean")
        lines.append(f"naive sweep: {naive['evaluations']} evaluations (baseline + {naive['candidates']} ops), "
                     f"{_f(naive['mean_eval_s'], '.2f')} s per evaluation, process wall "
                     f"{naive['process_wall_s']:.1f} s measured, {naive['estimated_process_wall_s']:.1f} s for "
                     f"the full sweep{extra}; other load {_f(naive.get('other_load_cores'), '.2f')} cores")
        bd = naive["one_eval_breakdown"]
        lines.append(f"one evaluation = build fake-quantized model {bd['build_model_s']:.2f} s + ORT session "
                     f"{bd['session_s']:.2f} s + {bd['samples']} runs {bd['runs_s']:.2f} s")
        lines.append("")
    elif naive:
        lines += [f"naive sweep failed: {naive['error']}", ""]
    hdr = ("| target | met | set | evals (search+cut) | bound 2⌈log2 N⌉+\\|set\\|+2 | within bound | N "
           "| bisect wall s | < 180 s | naive evals | naive wall s | evals ratio naive/bisect "
           "| wall ratio naive/bisect | other load |")
    lines += [hdr, "|" + "---|" * 14]
    for r in rows:
        if "error" in r:
            lines.append(f"| `{r['target']}` | error: {r['error']} |" + " |" * 12)
            continue
        nv_e = naive["evaluations"] if naive and "error" not in naive else None
        nv_w = naive["estimated_process_wall_s"] if naive and "error" not in naive else None
        lines.append(
            f"| `{r['expression']}` | {'yes' if r['met'] else 'no'} | {r['set_size']} | {r['evaluations']} "
            f"({r['search_evaluations']}+{r['cut_evaluations']}) | {r['bound']} | "
            f"{'yes' if r['within_bound'] else '**no**'} | {r['candidates']} | {r['wall_s']:.1f} | "
            f"{'yes' if r['wall_target_met'] else '**no**'} | {_f(nv_e, 'd')} | {_f(nv_w)} | "
            f"{_f(nv_e / r['evaluations'] if nv_e and r['evaluations'] else None, '.2f')} | "
            f"{_f(nv_w / r['wall_s'] if nv_w else None, '.2f')} | {_f(r.get('other_load_cores'), '.2f')} |")
    lines.append("")
    for r in rows:
        if "error" in r:
            continue
        cb = r.get("compare_before_timing") or {}
        lines.append(f"- `{r['expression']}`: {r['message']}; before {r['before']} -> after {r['after']}; "
                     f"evaluations by purpose {r['evaluations_by_purpose']}"
                     + (f", passing prefix {r['prefix_length']} ops" if r.get("prefix_length") else "")
                     + f"; mean {_f(r['mean_eval_s'], '.2f')} s per evaluation; one-pass compare "
                     f"{_f(cb.get('total_s'))} s; search {r['search_seconds']:.1f} s; process CPU "
                     f"{r['cpu_s']:.0f} s")
        if naive and "error" not in naive and r["target"] in naive["per_target"]:
            pt = naive["per_target"][r["target"]]
            lines.append(f"  naive on this target: {len(pt['single_ops_meeting_target'])} of "
                         f"{naive['evaluated']} single-op promotions meet it"
                         + (f" ({', '.join(pt['single_ops_meeting_target'][:5])})"
                            if pt["single_ops_meeting_target"] else "")
                         + f"; best single op {pt['best_single_op']} -> {pt['best_single_values']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_IMAGES} images instead of {N_IMAGES}")
    ap.add_argument("--samples", type=int, default=None, help="number of images (overrides --quick)")
    ap.add_argument("--target", action="append", default=None,
                    help='target expression, or "default" for no --target (repeatable; default: '
                         + ", ".join(DEFAULT_TARGETS) + ")")
    ap.add_argument("--naive-budget-s", type=float, default=600.0,
                    help="time budget of the naive sweep; past it, extrapolate (default 600)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--no-remedies", action="store_true", help="skip the bisect --remedies run per target")
    ap.add_argument("--single-pruning", action="store_true",
                    help="plain bisect with single-member pruning only (the search before grouped pruning), "
                         "to compare with a run without this option")
    ap.add_argument("--quiet-wait", type=float, default=20.0,
                    help="before each run wait up to S seconds for other processes to use < 0.3 cores")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--seed", type=int, default=0, help="order of the naive sweep")
    ap.add_argument("--model", default=None, help="a real model instead of the synthetic make_yolov8_bench one")
    ap.add_argument("--data", default=None, help="its image folder (with --model)")
    ap.add_argument("--task", default=None, help="e.g. yolov8: task targets (lost_frac, map50_95_vs_float)")
    ap.add_argument("--conf", default=None, help="detection confidence threshold passed to bisect")
    ap.add_argument("--size", default=None, help="H,W for a model with dynamic input dims")
    # child mode
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    targets = args.target or list(DEFAULT_TARGETS)
    out = Path(args.out)

    if args.child == "naive":
        res = child_naive(Path(args.model), Path(args.data), args.n, targets, args.naive_budget_s, args.seed)
        sys.stdout.write(RESULT_TAG + json.dumps(res) + "\n")
        return 0

    n = args.samples or (QUICK_IMAGES if args.quick else N_IMAGES)
    extra = [x for k in ("task", "conf", "size") if getattr(args, k) for x in (f"--{k}", str(getattr(args, k)))]
    if args.model:  # a real model and its images (issue #17 round 2: a trained YOLOv8n)
        model, images = Path(args.model).resolve(), Path(args.data).resolve()
        out.mkdir(parents=True, exist_ok=True)
        if args.task and not args.skip_naive:
            print("[bench] naive sweep skipped: it scores tensor targets only, not --task metrics", file=sys.stderr)
            args.skip_naive = True
    else:
        model, images = prepare_inputs(out, n, generate=max(n, N_IMAGES))
    started = _dt.datetime.now(_dt.timezone.utc)
    rows: list[dict] = []
    pairs: list[tuple[dict, dict]] = []
    for t in targets:
        busy = wait_for_quiet(args.quiet_wait) if args.quiet_wait > 0 else None
        print(f"[bench] qdebug bisect --target {t!r} ({n} images; other load before {_f(busy, '.2f')} cores) ...",
              file=sys.stderr, flush=True)
        r = run_bisect_cli(model, images, n, t, out, extra=extra, single_pruning=args.single_pruning)
        r["load_before_cores"] = busy
        rows.append(r)
        print(f"[bench]   -> {r.get('error') or ('met' if r['met'] else 'not met')}, {r['wall_s']:.1f} s, "
              f"{r.get('evaluations')} evaluations (bound {r.get('bound')})", file=sys.stderr, flush=True)
        if not args.no_remedies:
            print(f"[bench] qdebug bisect --remedies --target {t!r} ...", file=sys.stderr, flush=True)
            rr = run_bisect_cli(model, images, n, t, out, remedies=True, extra=extra)
            pairs.append((r, rr))
            print(f"[bench]   -> {rr.get('error') or rr.get('plan')}, {rr['wall_s']:.1f} s, "
                  f"{rr.get('evaluations')} evaluations (bound {rr.get('bound')})", file=sys.stderr, flush=True)
    naive = None
    if not args.skip_naive:
        busy = wait_for_quiet(args.quiet_wait) if args.quiet_wait > 0 else None
        print(f"[bench] naive sweep (budget {args.naive_budget_s:.0f} s; other load before {_f(busy, '.2f')} "
              "cores) ...", file=sys.stderr, flush=True)
        naive = run_naive(model, images, n, targets, args.naive_budget_s, out)
        if naive is not None:
            naive["load_before_cores"] = busy
        status = naive.get("error") or f"{naive['evaluated']}/{naive['candidates']} ops evaluated"
        print(f"[bench]   -> {status}", file=sys.stderr, flush=True)
    text = summarize(rows, naive, n)
    if pairs:
        text += "\n\n" + summarize_remedies(pairs, n)
    print(text)
    write_results(out, "bisect_sim", started,
                  {"samples": n, "targets": targets, "target_wall_s": TARGET_WALL_S, "bisect": rows, "naive": naive,
                   "remedies": [b for _, b in pairs],
                   "summary_markdown": text})
    return 0


if __name__ == "__main__":
    sys.exit(main())
