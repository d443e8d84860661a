#!/usr/bin/env python
"""Cost of judging with rknn-toolkit2's simulator: per evaluation, per bisect, vs one build per op (issue 6).

    python benchmarks/bench_rknn.py                     # 16 images (~15 min on 2 cores)
    python benchmarks/bench_rknn.py --samples 8         # 8 images
    python benchmarks/bench_rknn.py --quick             # 4 images, no toolkit proposal
    python benchmarks/bench_rknn.py --target "output0.score:snr_db>=20" --no-costs
    python benchmarks/bench_rknn.py --fidelity 192 --samples 4   # built-in vs toolkit fidelity only (~1 min)
    python benchmarks/bench_rknn.py --fidelity 320 --samples 8 --fidelity-zoo nudenet-320n   # a real model (~3 min)

Needs the toolkit environment (`qdebug doctor --setup-rknn`, found as `qdebug --backend rknn` finds it);
without it the benchmark prints "skipped" and exits 0. Each phase runs in its own process:

1. costs: an RknnBackend (rk3588, mean 0 / std 255, calibration on the same images) judges through
   TensorTargetEvaluator, as bisect does. Timed: a plain evaluation (worker process start + toolkit
   import + load_onnx + build with quantization + init_runtime + one simulated inference per image),
   hybrid_quantization_step1 (once per model), a hybrid step2 evaluation with one promoted op (patched
   .quantization.cfg + step2 + simulation), a probe of the op known to crash the toolkit at int16
   (--crashing-op), more single-op step2 evaluations on a seeded subset of the candidates (the cost the
   naive sweep pays per op), and the toolkit's own proposal (hybrid_quantization_step1 proposal=True)
   plus the step2 evaluation that scores it. Every worker call is recorded: wall time, and the worker's
   own build_s / run_s. Also lists the candidate ops that have no entry in the toolkit's step-1 cfg.
2. bisect, per target: `qdebug bisect MODEL --data DIR --samples N --backend rknn --platform rk3588
   --target EXPR --json OUT -q`, called in-process (qdebug.cli.main) in a child process with
   RknnWorker.call wrapped to record every toolkit call. Reported: wall time, toolkit builds
   (RknnBackend.builds, step1 included), quantized evaluations (first-bad-cut probes included), the bound,
   the result. When that run fails, it is rerun with a workaround that does not change qdebug: the ops
   without a cfg entry and the --crashing-op ops are put into RknnBackend.unpromotable right after
   prepare() (class-level wrap in the child only), which RknnBackend._simulate already drops from every
   config. Both outcomes are reported.
3. naive (computed, not run): one build per candidate op = step1 + a baseline build + N single-op step2
   builds, each at the measured mean single-op cost; compared with bisect's builds and wall time.

Results: benchmarks/out/rknn/results.json and a Markdown summary on stdout. See
benchmarks/README_bisect_rknn.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import (
    HERE,
    ROOT,
    children_cpu_s,
    cpu_busy_s,
    prepare_inputs,
    write_results,
)

DEFAULT_OUT = HERE / "out" / "rknn"
N_IMAGES = 16
QUICK_IMAGES = 4
RESULT_TAG = "BENCH_RESULT "
# with 16 images the output Concat alone gives ~15 dB on the toolkit and all ops at int16 ~14.7 dB: 12 dB is
# reachable (a 1-op fix), 20 dB is not (bisect stops after the all-promoted evaluation)
DEFAULT_TARGETS = ["output0.score:snr_db>=12", "output0.score:snr_db>=20"]
PROMOTE_OP = "/model.22/Concat_5"  # the output Concat: boxes in pixels and scores in 0..1 share one scale
PLATFORM = "rk3588"
# rknn-toolkit2 2.5.0's simulator aborts (exit -4, "REGTASK: The bit width of field value exceeds the limit",
# value 0x20cf > 0x1fff) when this op (anchor - distance over 8400 anchors) is built at int16; found by
# promoting each decode-tail op alone. The benchmark's workaround run marks it unpromotable.
CRASHING_OPS = ["/model.22/Sub"]
CRASH_NOTE = "the toolkit's simulator aborts with this op at int16 (marked by the benchmark)"


# ===================================================================== helpers
def record_worker_calls(log: list[dict]) -> None:
    """Wrap RknnWorker.call (class level, this process only) to time every toolkit call."""
    from qdebug.runners.rockchip import RknnWorker

    orig = RknnWorker.call

    def call(self, cmd: str, **req):
        t0 = time.perf_counter()
        row: dict = {"cmd": cmd, "cfg": bool(req.get("cfg")), "proposal": bool(req.get("proposal")),
                     "inputs": len(req.get("inputs") or []), "dataset": len(req.get("dataset") or [])}
        try:
            resp = orig(self, cmd, **req)
        except Exception as exc:
            row.update({"wall_s": time.perf_counter() - t0, "error": str(exc)[:300]})
            log.append(row)
            raise
        row["wall_s"] = time.perf_counter() - t0
        for k in ("build_s", "run_s"):
            if k in resp:
                row[k] = resp[k]
        log.append(row)
        return resp

    RknnWorker.call = call  # type: ignore[method-assign]


CFG_LESS_NOTE = "no entry in the toolkit's step-1 .quantization.cfg (marked by the benchmark)"


def mark_cfg_less_ops(rk, graph, outputs) -> list[str]:
    """Candidate ops whose output tensor has no entry in the toolkit's step-1 cfg (the toolkit fused or
    renamed it), so `RknnQuantCfg.promote` cannot name them; put into `rk.unpromotable`, which
    `RknnBackend._simulate` already drops from every config. Runs step1 once (cached by the backend, so
    no extra build later). This is the benchmark's workaround, not qdebug behaviour."""
    from qdebug.errors import FormatError
    from qdebug.formats.rknn2 import RknnQuantCfg

    step1 = rk.hybrid_cfg(graph, list(outputs))
    cfg = RknnQuantCfg.parse(Path(step1["cfg"]).read_text(), step1["cfg"])
    inputs = {i.name for i in graph.inputs}
    bad = []
    for op in rk.quant_ops(graph):
        if op.kind != "compute" or op.key in inputs:
            continue
        try:
            cfg.tensor_key(op.key, graph)
        except FormatError:
            bad.append(op.key)
            rk.unpromotable.setdefault(op.key, CFG_LESS_NOTE)
    return bad


def install_workaround(log: list[str], crashing: list[str]) -> None:
    """Class-level wrap of RknnBackend.prepare (this process only): after preparing, mark the cfg-less ops
    and the ops known to crash the toolkit's simulator as unpromotable."""
    from qdebug.runners.rockchip import RknnBackend

    orig = RknnBackend.prepare

    def prepare(self, graph, config, calib):
        orig(self, graph, config, calib)
        log.extend(mark_cfg_less_ops(self, graph, [o.name for o in graph.outputs]))
        for op in crashing:
            self.unpromotable.setdefault(op, CRASH_NOTE)
            log.append(op)

    RknnBackend.prepare = prepare  # type: ignore[method-assign]


def _load(model: Path, images: Path, n: int):
    from qdebug.graph.model import ModelGraph
    from qdebug.inputs.dataset import load_dataset

    graph = ModelGraph.load(str(model))
    return graph, list(load_dataset(str(images), graph, None, n))


# ================================================================ child: costs
def child_costs(model: Path, images: Path, n: int, target_expr: str, promote_op: str, extra_ops: int,
                proposal: bool, work: Path, seed: int, crashing: list[str]) -> dict:
    from qdebug.graph.parts import concat_parts
    from qdebug.quant.scheme import Precision, QuantConfig
    from qdebug.runners.rockchip import RknnBackend, ToolkitError
    from qdebug.search.bisect import ancestors_ops
    from qdebug.search.evaluate import TensorTargetEvaluator
    from qdebug.search.target import parse_target

    calls: list[dict] = []
    record_worker_calls(calls)
    graph, samples = _load(model, images, n)
    parts = {t: [s.name for s in ss] for t, ss in concat_parts(graph, [o.name for o in graph.outputs]).items()}
    target = parse_target(target_expr, graph, parts)
    outs = target.tensors()
    rk = RknnBackend(platform=PLATFORM, mean=(0, 0, 0), std=(255, 255, 255), work_root=str(work))
    steps: list[dict] = []
    try:
        rk.prepare(graph, QuantConfig(), samples)
        ev = TensorTargetEvaluator(graph, samples, rk, target)
        ops = rk.quant_ops(graph)
        cand = sorted(ancestors_ops(graph, ops, outs) - {i.name for i in graph.inputs})

        def step(name: str, fn) -> object:
            k0 = len(calls)
            t0 = time.perf_counter()
            res = fn()
            wall = time.perf_counter() - t0
            row = {"step": name, "wall_s": wall, "calls": calls[k0:]}
            if hasattr(res, "passed"):
                row.update({"values": res.values, "passed": res.passed})
            steps.append(row)
            print(f"[bench-rknn] {name}: {wall:.1f} s", file=sys.stderr, flush=True)
            return res

        base = QuantConfig()
        step("plain build + simulate (int8 baseline)", lambda: ev.evaluate(base))
        step("hybrid_quantization_step1 (once per model)", lambda: rk.hybrid_cfg(graph, outs))
        cfg_less = mark_cfg_less_ops(rk, graph, outs)  # step1 is cached: no build here
        cand_ok = [c for c in cand if c not in cfg_less]
        step(f"step2 + simulate, 1 op promoted ({promote_op})",
             lambda: ev.evaluate(base.with_overrides({promote_op: Precision.INT16})))
        for op in crashing:  # show the crash and what it costs before it happens
            t0 = time.perf_counter()
            k0 = len(calls)
            try:
                sc = ev.evaluate(base.with_overrides({op: Precision.INT16}))
                row = {"values": sc.values, "passed": sc.passed}
                if op in rk.unpromotable:  # qdebug caught the crash, found the culprit and dropped it
                    row["handled"] = rk.unpromotable[op]
            except ToolkitError as exc:
                row = {"error": exc.one_line()[:400]}
            steps.append({"step": f"step2 + simulate, 1 op promoted ({op}): crash probe",
                          "wall_s": time.perf_counter() - t0, "calls": calls[k0:], **row})
            print(f"[bench-rknn] crash probe {op}: {row}", file=sys.stderr, flush=True)
        order = [c for c in cand_ok if c != promote_op and c not in crashing]
        random.Random(seed).shuffle(order)
        for op in order[:extra_ops]:
            step(f"step2 + simulate, 1 op promoted ({op})",
                 lambda op=op: ev.evaluate(base.with_overrides({op: Precision.INT16})))
        prop = None
        if proposal:
            step("toolkit proposal (hybrid_quantization_step1 proposal=True)",
                 lambda: rk.hybrid_cfg(graph, outs, proposal=True))
            prop = _score_proposal(rk, graph, ev, base, outs, step)
        single = [s for s in steps if s["step"].startswith("step2 + simulate, 1 op") and "error" not in s
                  and "crash probe" not in s["step"]]
        return {"samples": len(samples), "candidates": len(cand), "cfg_less_ops": cfg_less,
                "platform": PLATFORM, "steps": steps,
                "plain_eval_s": steps[0]["wall_s"], "step1_s": steps[1]["wall_s"],
                "single_op_eval_s": [s["wall_s"] for s in single],
                "single_op_eval_mean_s": sum(s["wall_s"] for s in single) / len(single),
                "proposal": prop, "unpromotable": dict(rk.unpromotable), "builds": rk.builds}
    finally:
        rk.close()


def _score_proposal(rk, graph, ev, base, outs, step) -> dict:
    """The toolkit's proposed tensors mapped to ops and evaluated by one step2 build (as bisect --rknn-proposal)."""
    from qdebug.formats.rknn2 import RknnQuantCfg

    s1 = rk.hybrid_cfg(graph, outs, proposal=True)
    prop = RknnQuantCfg.parse(open(s1["cfg"]).read(), s1["cfg"])
    prec = prop.custom_precisions(graph)
    res: dict = {"tensors": len(prop.custom), "ops": len(prec)}
    if prec:
        sc = step("step2 + simulate, toolkit proposal", lambda: ev.evaluate(base.with_overrides(prec)))
        res.update({"values": sc.values, "passed": sc.passed})
    return res


# =============================================================== child: bisect
def child_bisect(model: Path, images: Path, n: int, target_expr: str, out: Path, workaround: bool,
                 crashing: list[str]) -> dict:
    from qdebug.cli import main

    calls: list[dict] = []
    record_worker_calls(calls)
    marked: list[str] = []
    if workaround:
        install_workaround(marked, crashing)
    slug = "".join(ch if ch.isalnum() else "_" for ch in target_expr).strip("_")
    js = out / f"bisect_rknn_{slug}_{n}{'_workaround' if workaround else ''}.json"
    if js.exists():
        js.unlink()
    argv = ["bisect", str(model), "--data", str(images), "--samples", str(n), "--backend", "rknn", "--platform",
            PLATFORM, "--target", target_expr, "--json", str(js), "-q"]
    t0 = time.perf_counter()
    rc = main(argv)
    wall = time.perf_counter() - t0
    row: dict = {"argv": argv, "returncode": rc, "wall_s": wall, "calls": calls, "workaround": workaround,
                 "marked_unpromotable": marked}
    if not js.exists():
        row["error"] = f"qdebug bisect exited with {rc} after {wall:.0f} s and {len(calls)} toolkit calls, no JSON"
        return row
    doc = json.loads(js.read_text())
    c, res = doc["counts"], doc["result"]
    judge = doc["quant"].get("judge") or {}
    by_cmd: dict[str, dict] = {}
    for k in calls:
        name = k["cmd"] + (" (hybrid step2)" if k["cfg"] else "")
        d = by_cmd.setdefault(name, {"calls": 0, "wall_s": 0.0})
        d["calls"] += 1
        d["wall_s"] += k["wall_s"]
    purposes: dict[str, int] = {}
    for e in doc["evaluations"]:
        purposes[e["purpose"]] = purposes.get(e["purpose"], 0) + 1
    row.update({
        "json": str(js), "expression": doc["target"]["expression"], "builds": judge.get("builds"),
        "search_builds": judge.get("search_builds"), "reused_runs": judge.get("reused_runs", 0),
        "unpromotable": judge.get("unpromotable"), "candidates": c["candidates"], "evaluations": c["evaluations"],
        "bound": c["bound"], "within_bound": c["evaluations"] <= c["bound"],
        "evaluations_by_purpose": purposes, "eval_seconds": [e["seconds"] for e in doc["evaluations"]],
        "search_seconds": c["search_seconds"], "total_seconds": c["total_seconds"],
        "compare_before_timing": (doc.get("compare_before") or {}).get("timing"),
        "met": res["met"], "set": res["set"], "set_size": len(res["set"]), "before": res["before"],
        "after": res["after"], "message": res["message"], "calls_by_cmd": by_cmd,
        "toolkit_seconds": sum(k["wall_s"] for k in calls),
    })
    return row


# ======================================================================= parent
def launch(child: str, args: argparse.Namespace, model: Path, images: Path, n: int, out: Path, target: str,
           timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", child, "--model", str(model), "--data",
           str(images), "--n", str(n), "--target", target, "--out", str(out), "--promote-op", args.promote_op,
           "--extra-ops", str(args.extra_ops), "--seed", str(args.seed)]
    for op in args.crashing:
        cmd += ["--crashing-op", op]
    if not args.proposal:
        cmd.append("--no-proposal")
    if child == "bisect-workaround":
        cmd[3] = "bisect"
        cmd.append("--workaround")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    c0, b0, t0 = children_cpu_s(), cpu_busy_s(), time.perf_counter()
    # own session: on timeout the whole group we started (child + its toolkit worker) is stopped by its id
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(out), start_new_session=True)
    errors: list[str] = []
    stdout: list[str] = []

    def echo() -> None:  # stream the child's progress, keep qdebug's own error lines
        for ln in proc.stderr:  # type: ignore[union-attr]
            sys.stderr.write(ln)
            if ln.startswith("qdebug: error"):
                errors.append(ln.strip())

    def collect() -> None:
        stdout.extend(proc.stdout)  # type: ignore[arg-type]

    threads = [threading.Thread(target=echo, daemon=True), threading.Thread(target=collect, daemon=True)]
    for th in threads:
        th.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        return {"error": f"timed out after {timeout:.0f} s", "process_wall_s": time.perf_counter() - t0}
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    cpu = children_cpu_s() - c0  # child and the toolkit workers it waited for
    busy = cpu_busy_s() - b0
    line = next((ln for ln in reversed(stdout) if ln.startswith(RESULT_TAG)), None)
    if proc.returncode != 0 or line is None:
        return {"error": f"exit {proc.returncode} (see stderr above)", "process_wall_s": wall}
    row = json.loads(line[len(RESULT_TAG):])
    if errors and "error" in row:
        row["error"] += ": " + errors[-1]
    row.update({"process_wall_s": wall, "cpu_s": cpu,
                "other_load_cores": max(0.0, (busy - cpu) / wall) if busy else None})
    return row


def _status(b: dict) -> str:
    if "error" in b:
        return b["error"]
    return f"{'met' if b['met'] else 'not met'}, {b['wall_s']:.1f} s, {b['builds']} builds"


def _f(v, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def naive_estimate(costs: dict, n_ops: int) -> dict:
    """One build per op: step1 + baseline build + n_ops single-op step2 evaluations at the measured mean."""
    total = costs["step1_s"] + costs["plain_eval_s"] + n_ops * costs["single_op_eval_mean_s"]
    return {"ops": n_ops, "builds": n_ops + 2, "evaluations": n_ops + 1, "seconds": total,
            "formula": f"step1 {costs['step1_s']:.1f} s + baseline {costs['plain_eval_s']:.1f} s + {n_ops} x "
                       f"{costs['single_op_eval_mean_s']:.1f} s (mean of {len(costs['single_op_eval_s'])} "
                       "measured single-op step2 evaluations)"}


def _bisect_lines(bis: dict, naive: dict | None) -> list[str]:
    lines = []
    if bis.get("workaround"):
        lines.append(f"with the benchmark's workaround ({', '.join(bis['marked_unpromotable'])} put into "
                     "RknnBackend.unpromotable before the search, so they are dropped from every config):")
    lines.append(f"- result: {'met' if bis['met'] else 'NOT met'} — {bis['message']}; set {bis['set']}; "
                 f"before {bis['before']} -> after {bis['after']}")
    lines.append(f"- wall {bis['wall_s']:.1f} s (in-process; child process {bis['process_wall_s']:.1f} s), "
                 f"of which toolkit calls {bis['toolkit_seconds']:.1f} s; other load "
                 f"{_f(bis.get('other_load_cores'), '.2f')} cores")
    lines.append(f"- toolkit builds {bis['builds']} (step1 included); quantized evaluations "
                 f"{bis['evaluations']} (bound {bis['bound']}: {'within' if bis['within_bound'] else 'EXCEEDED'})"
                 f"; search evaluations by purpose {bis['evaluations_by_purpose']}; N = {bis['candidates']}")
    sb = bis.get("search_builds")
    if sb:  # the bound is on the search's toolkit builds (step 1 included, reused runs not built)
        lines.append(f"- search builds {sb['total']} (bound {sb['bound']}: "
                     f"{'within' if sb['total'] <= sb['bound'] else 'EXCEEDED'}); runs answered by an identical "
                     f"earlier run: {bis.get('reused_runs', 0)} in all, {sb.get('reused', 0)} in the search")
    if bis.get("unpromotable"):
        lines.append("- marked unpromotable during the run: " + "; ".join(
            f"{k} ({v[:90]})" for k, v in bis["unpromotable"].items()))
    lines.append("- toolkit calls by kind: " + ", ".join(f"{k} x{v['calls']} ({v['wall_s']:.0f} s)"
                                                       for k, v in bis["calls_by_cmd"].items()))
    if naive:
        lines.append(f"- ratio naive/bisect: builds {naive['builds']} / {bis['builds']} = "
                     f"{naive['builds'] / bis['builds']:.1f}x, wall ~{naive['seconds']:.0f} / {bis['wall_s']:.0f} s "
                     f"= {naive['seconds'] / bis['wall_s']:.1f}x")
    return lines


def summarize(costs: dict | None, runs: list[dict], naive: dict | None, n: int) -> str:
    lines = [f"## rknn-toolkit2 as the judge ({n} images, {PLATFORM}, bench model 640x640)", ""]
    if costs and "error" not in costs:
        lines += ["| step | wall s | toolkit calls (wall s; build_s / run_s inside the worker) | result |",
                  "|---|---|---|---|"]
        for s in costs["steps"]:
            cl = "; ".join(f"{c['cmd']}{' step2' if c['cfg'] else ''} {c['wall_s']:.1f}"
                           + (f" ({c['build_s']:.1f} / {c['run_s']:.1f})" if "build_s" in c else "")
                           for c in s["calls"]) or "(cached)"
            val = ", ".join(f"{k.split(':')[0]} {_f(v, '.2f')} dB" for k, v in (s.get("values") or {}).items())
            if "error" in s:
                val = "**crash**: " + s["error"].split(": ", 1)[-1][:160].replace("|", "/")
            elif s.get("handled"):
                val += f" (op dropped by qdebug: {s['handled'][:120]})".replace("|", "/")
            lines.append(f"| {s['step']} | {s['wall_s']:.1f} | {cl} | {val} |")
        lines.append("")
        if costs.get("cfg_less_ops"):
            lines.append(f"{len(costs['cfg_less_ops'])} of {costs['candidates']} candidate ops have no entry in the "
                         f"toolkit's step-1 cfg (cannot be promoted by name): {', '.join(costs['cfg_less_ops'])}")
        other = {k: v for k, v in (costs.get("unpromotable") or {}).items() if v != CFG_LESS_NOTE}
        if other:
            lines.append(f"unpromotable with the toolkit: {other}")
        lines.append(f"costs process: {costs['process_wall_s']:.1f} s wall, other load "
                     f"{_f(costs.get('other_load_cores'), '.2f')} cores")
        if costs.get("proposal"):
            p = costs["proposal"]
            s = next((x for x in costs["steps"] if x["step"].startswith("toolkit proposal")), None)
            verdict = ("proposes no tensor, nothing to evaluate" if not p["ops"] else
                       f"-> {p.get('values')} ({'meets' if p.get('passed') else 'misses'} the target)")
            lines.append(f"toolkit's own proposal: {_f(s['wall_s'] if s else None)} s, {p['tensors']} tensors "
                         f"({p['ops']} ops) {verdict}")
        lines.append("")
    elif costs:
        lines += [f"costs phase failed: {costs['error']}", ""]
    if naive:
        lines += [f"naive one-build-per-op: {naive['builds']} builds, ~{naive['seconds']:.0f} s "
                  f"({naive['seconds'] / 60:.1f} min; {naive['formula']})", ""]
    for r in runs:
        lines.append(f"### `qdebug bisect --backend rknn --platform {PLATFORM} --target \"{r['target']}\"`")
        shipped = r["as_shipped"]
        if "error" in shipped:
            lines.append(f"- **as shipped: failed** — {shipped['error']}")
        else:
            lines += _bisect_lines(shipped, naive)
        wa = r.get("workaround")
        if wa is not None:
            lines += _bisect_lines(wa, naive) if "error" not in wa else [f"- workaround run failed: {wa['error']}"]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_IMAGES} images, no toolkit proposal")
    ap.add_argument("--samples", type=int, default=None, help=f"images (default {N_IMAGES})")
    ap.add_argument("--target", action="append", default=None,
                    help="bisect target (repeatable; default: " + ", ".join(DEFAULT_TARGETS) + ")")
    ap.add_argument("--promote-op", default=PROMOTE_OP, help="op promoted in the timed step2 evaluation")
    ap.add_argument("--extra-ops", type=int, default=2,
                    help="more single-op step2 evaluations (seeded subset of the candidates) for the naive mean")
    ap.add_argument("--no-proposal", dest="proposal", action="store_false", help="skip the toolkit's proposal")
    ap.add_argument("--no-bisect", action="store_true")
    ap.add_argument("--no-workaround", action="store_true",
                    help="do not rerun bisect with cfg-less ops marked unpromotable when the plain run fails")
    ap.add_argument("--workaround", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--crashing-op", dest="crashing", action="append", default=None,
                    help=f"op known to crash the toolkit at int16 (repeatable; default {', '.join(CRASHING_OPS)}); "
                         "probed in the costs phase, marked unpromotable in the workaround run")
    ap.add_argument("--no-costs", action="store_true")
    ap.add_argument("--fidelity", type=int, default=None, metavar="PX",
                    help="only the fidelity figures (built-in rknn/generic profiles vs the toolkit, side by side) "
                         "on the YOLOv8-style fixture at PX pixels (rknn_fidelity.py)")
    ap.add_argument("--fidelity-zoo", default=None, metavar="KEY",
                    help="with --fidelity: a real model of bench_zoo.py (nudenet-320n, ppocr4-det) on natural photos")
    ap.add_argument("--models", default=None, help="with --fidelity-zoo: folder of the extracted zoo models")
    ap.add_argument("--bisect-timeout", type=float, default=5400.0, help="seconds (default 5400)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.crashing = args.crashing if args.crashing is not None else list(CRASHING_OPS)
    targets = args.target or list(DEFAULT_TARGETS)
    out = Path(args.out)

    if args.child == "costs":
        res = child_costs(Path(args.model), Path(args.data), args.n, targets[0], args.promote_op, args.extra_ops,
                          args.proposal, out / "work", args.seed, args.crashing)
        sys.stdout.write(RESULT_TAG + json.dumps(res) + "\n")
        return 0
    if args.child == "bisect":
        res = child_bisect(Path(args.model), Path(args.data), args.n, targets[0], out, args.workaround,
                           args.crashing)
        sys.stdout.write(RESULT_TAG + json.dumps(res) + "\n")
        return 0

    from qdebug.runners.rockchip import find_rknn_python

    py = find_rknn_python()
    started = _dt.datetime.now(_dt.timezone.utc)
    if py is None:
        print("skipped: rknn-toolkit2 environment not found (run `qdebug doctor --setup-rknn DIR` or set "
              "QDEBUG_RKNN_PYTHON)")
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"benchmark": "bisect_rknn", "skipped": True,
                                                      "started": started.isoformat(timespec="seconds")}) + "\n")
        return 0
    if args.fidelity:
        from rknn_fidelity import fidelity, small_inputs, zoo_inputs

        n = args.samples or QUICK_IMAGES
        if args.fidelity_zoo:  # a real model fed natural photos, at PX x PX
            model, images, extra = zoo_inputs(args.fidelity_zoo, out / "fidelity", n, (args.fidelity, args.fidelity),
                                              Path(args.models) if args.models else None)
            fidelity(model, images, n, out / "fidelity", extra)
        else:
            fidelity(*small_inputs(out / "fidelity", args.fidelity, n), n, out / "fidelity")
        return 0
    if args.quick:
        args.proposal = False
    n = args.samples or (QUICK_IMAGES if args.quick else N_IMAGES)
    model, images = prepare_inputs(out, n, generate=max(n, N_IMAGES))
    (out / "work").mkdir(exist_ok=True)
    costs = naive = None
    runs: list[dict] = []
    if not args.no_costs:
        print(f"[bench-rknn] per-evaluation costs ({n} images) ...", file=sys.stderr, flush=True)
        costs = launch("costs", args, model, images, n, out, targets[0], 7200.0)
    if not args.no_bisect:
        for t in targets:
            print(f"[bench-rknn] qdebug bisect --backend rknn --target {t!r} ({n} images) ...",
                  file=sys.stderr, flush=True)
            run: dict = {"target": t, "as_shipped": launch("bisect", args, model, images, n, out, t,
                                                            args.bisect_timeout)}
            print(f"[bench-rknn]   -> {_status(run['as_shipped'])}", file=sys.stderr, flush=True)
            if "error" in run["as_shipped"] and not args.no_workaround:
                print("[bench-rknn] again with the ops the toolkit cannot take at int16 marked unpromotable "
                      "(benchmark workaround) ...", file=sys.stderr, flush=True)
                run["workaround"] = launch("bisect-workaround", args, model, images, n, out, t, args.bisect_timeout)
                print(f"[bench-rknn]   -> {_status(run['workaround'])}", file=sys.stderr, flush=True)
            runs.append(run)
    if costs and "error" not in costs:
        naive = naive_estimate(costs, costs["candidates"])
    text = summarize(costs, runs, naive, n)
    print(text)
    write_results(out, "bisect_rknn", started,
                  {"rknn_python": py, "samples": n, "targets": targets, "costs": costs, "bisect": runs,
                   "naive_estimate": naive, "summary_markdown": text})
    return 0


if __name__ == "__main__":
    sys.exit(main())
