#!/usr/bin/env python
"""Speed and memory benchmark: `qdebug compare` vs onnxruntime's qdq_loss_debug flow (issue 2).

    python benchmarks/bench_compare.py            # full run (ORT flow with 4, 8 and 16 images)
    python benchmarks/bench_compare.py --quick    # ORT flow with 4 and 8 images only

Builds a YOLOv8n-scale model (640x640, 233 nodes) and 64 deterministic 640x480 images into
benchmarks/out/, then runs every measured configuration in its own subprocess so that each peak RSS
belongs to one configuration. Each child reports its own ``getrusage(RUSAGE_SELF).ru_maxrss`` as
JSON on stdout; the parent also samples the child's RSS from /proc and kills it if it passes
``--rss-limit-gb`` (default 20). Results go to benchmarks/out/results.json plus a Markdown table on
stdout. The targets are printed as ratios, never asserted. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import (
    HERE,
    IMAGE_SIZE,
    ROOT,
    cpu_busy_s,
    cpu_s,
    git_state,
    peak_rss_mb,
    prepare_inputs,
    rss_kb,
    wait_for_quiet,
)

DEFAULT_OUT = HERE / "out"
N_IMAGES = 64
RESULT_TAG = "BENCH_RESULT "

# Targets from issue 2 (printed as ratios, not asserted).
TARGET_RSS_GROWTH = 1.25  # RSS(64 images) / RSS(8 images)
TARGET_RSS_ABS_GB = 2.5  # RSS(64 images)
TARGET_TIME_RATIO = 4.0  # compare wall / (float pass + quantized pass)


# ===================================================================== children
def _code_hash() -> str:
    """Short hash of the qdebug sources this child imports (the tree may change between runs)."""
    import hashlib

    import qdebug

    root = Path(qdebug.__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _load_samples(model: Path, data: Path, n: int):
    """The first n images preprocessed exactly as `qdebug compare` does by default
    (letterbox to the model input, RGB, /255, NCHW float32), as a lazy Dataset."""
    from qdebug.graph.model import ModelGraph
    from qdebug.inputs.dataset import Preprocess, load_dataset

    graph = ModelGraph.load(str(model))
    return graph, load_dataset(str(data), graph, Preprocess(), n)


def child_qdebug(model: Path, data: Path, n: int, out: Path) -> dict:
    """`qdebug compare MODEL --data DIR --samples N --json OUT -q`, in-process via qdebug.cli.main."""
    from qdebug.cli import main

    js = out / f"qdebug_compare_{n}.json"
    argv = [str(model), "--data", str(data), "--samples", str(n), "--json", str(js), "-q"]
    t0, c0 = time.perf_counter(), cpu_s()
    rc = main(["compare", *argv])
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    if rc != 0:
        raise SystemExit(f"qdebug compare exited with {rc}")
    res = json.loads(js.read_text())
    tensors = res["tensors"]
    return {
        "wall_s": wall,
        "run_cpu_s": cpu,
        "qdebug_timing": res.get("timing", {}),
        "tensors_compared": len(tensors),
        "tensors_with_cumulative": sum(1 for t in tensors if t["cumulative"].get("snr_db") is not None),
        "tensors_with_isolated": sum(1 for t in tensors if t["isolated"].get("snr_db") is not None),
        "concat_parts": len(res.get("parts", [])),
        "samples": res["samples"]["count"],
        "json": str(js),
    }


def child_ort(model: Path, data: Path, n: int, out: Path) -> dict:
    """onnxruntime.quantization.qdq_loss_debug, as its docstring describes it:
    quantize_static (QDQ, per-channel) -> augment float and QDQ models -> collect_activations on both
    -> weight/activation matching -> compute_weight_error / compute_activation_error."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        compute_weight_error,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    _, ds = _load_samples(model, data, n)

    class Reader(CalibrationDataReader):
        """Streams the preprocessed images one at a time (never holds the whole set)."""

        def __init__(self) -> None:
            self.it = iter(ds)

        def get_next(self):
            return next(self.it, None)

    timing: dict[str, float] = {}
    t_all, c_all = time.perf_counter(), cpu_s()
    with tempfile.TemporaryDirectory(dir=out, prefix=f"ort_{n}_") as tmp:
        tmpd = Path(tmp)
        qdq = tmpd / "model.qdq.onnx"
        f_aug = tmpd / "model.float.aug.onnx"
        q_aug = tmpd / "model.qdq.aug.onnx"

        t = time.perf_counter()
        quantize_static(str(model), str(qdq), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
        timing["quantize_static_s"] = time.perf_counter() - t
        rss_after_quantize = peak_rss_mb()

        t = time.perf_counter()
        modify_model_output_intermediate_tensors(str(model), str(f_aug))
        modify_model_output_intermediate_tensors(str(qdq), str(q_aug))
        timing["augment_s"] = time.perf_counter() - t

        t = time.perf_counter()
        float_acts = collect_activations(str(f_aug), Reader())
        timing["collect_float_s"] = time.perf_counter() - t
        t = time.perf_counter()
        qdq_acts = collect_activations(str(q_aug), Reader())
        timing["collect_qdq_s"] = time.perf_counter() - t

        t = time.perf_counter()
        w_match = create_weight_matching(str(model), str(qdq))
        w_err = compute_weight_error(w_match)
        a_match = create_activation_matching(qdq_acts, float_acts)
        # compute_activation_error indexes match["float"] unconditionally; an activation of the QDQ
        # model with no float twin (none expected here) would raise, so count and skip such entries.
        no_float = [k for k, v in a_match.items() if "float" not in v]
        for k in no_float:
            del a_match[k]
        a_err = compute_activation_error(a_match)
        timing["match_and_error_s"] = time.perf_counter() - t
    timing["total_s"] = time.perf_counter() - t_all
    return {
        "wall_s": timing["total_s"],
        "run_cpu_s": cpu_s() - c_all,
        "ort_timing": timing,
        "peak_rss_after_quantize_static_mb": rss_after_quantize,
        "tensors_compared": len(a_err),
        "tensors_with_xmodel_err": sum(1 for v in a_err.values() if "xmodel_err" in v),
        "activation_matches_without_float": len(no_float),
        "float_tensors_collected": len(float_acts),
        "qdq_tensors_collected": len(qdq_acts),
        "weights_compared": len(w_err),
        "samples": n,
    }


def _time_runs(run, samples: list, rounds: int = 3) -> dict:
    """Time `rounds` passes over the samples after one untimed warm-up run (lazy kernel init); the
    fastest pass counts (the pass is ~1 s, so one hiccup from another process would skew it)."""
    run(samples[0])
    passes = []
    for _ in range(rounds):
        per = []
        c0 = cpu_s()
        for s in samples:
            t = time.perf_counter()
            run(s)
            per.append(time.perf_counter() - t)
        passes.append({"wall_s": sum(per), "per_sample_s": per, "run_cpu_s": cpu_s() - c0})
    best = min(passes, key=lambda p: p["wall_s"])
    return {**best, "all_pass_wall_s": [p["wall_s"] for p in passes]}


def child_pass(kind: str, model: Path, data: Path, n: int, out: Path) -> dict:
    """One plain pass over n images (only the runs are timed; loading, calibration and session
    creation are not). kind: float_pass | quant_pass. Timed with a default-options onnxruntime
    session (primary) and with qdebug's own session settings (ORT_ENABLE_BASIC) for reference."""
    import onnxruntime as ort

    from qdebug.runners.session import OrtSession

    graph, ds = _load_samples(model, data, n)
    samples = list(ds)
    if kind == "float_pass":
        onnx_model = graph.model
    else:
        from qdebug.quant.scheme import QuantConfig
        from qdebug.runners.sim import SimBackend

        cfg = QuantConfig()
        b = SimBackend("generic")
        b.prepare(graph, cfg, samples)  # calibration on the same images, as `compare` does
        onnx_model = b.quantized_model(graph, cfg)
    blob = onnx_model.SerializeToString()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    plain = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
    feed_name = plain.get_inputs()[0].name
    res = _time_runs(lambda s: plain.run(None, {feed_name: s[feed_name]}), samples)
    qsess = OrtSession(onnx_model)
    res_basic = _time_runs(qsess.run, samples)
    return {
        "wall_s": res["wall_s"],
        "per_sample_s": res["per_sample_s"],
        "run_cpu_s": res["run_cpu_s"],
        "all_pass_wall_s": res["all_pass_wall_s"],
        "wall_s_qdebug_session": res_basic["wall_s"],
        "nodes": len(onnx_model.graph.node),
        "samples": n,
    }


def run_child(args: argparse.Namespace) -> None:
    model = Path(args.model)
    data = Path(args.data)
    out = Path(args.out)
    if args.child == "qdebug":
        res = child_qdebug(model, data, args.n, out)
    elif args.child == "ort":
        res = child_ort(model, data, args.n, out)
    elif args.child in ("float_pass", "quant_pass"):
        res = child_pass(args.child, model, data, args.n, out)
    else:
        raise SystemExit(f"unknown child {args.child}")
    res["peak_rss_mb"] = peak_rss_mb()
    res["cpu_s"] = cpu_s()  # whole child process lifetime
    res["qdebug_code"] = _code_hash()
    sys.stdout.write(RESULT_TAG + json.dumps(res) + "\n")
    sys.stdout.flush()


# ======================================================================= parent
def launch_once(kind: str, n: int, model: Path, images: Path, out: Path, limit_gb: float) -> dict:
    """Run one configuration once in a fresh interpreter; RSS watchdog; parse the child's JSON line."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--n",
        str(n),
        "--model",
        str(model),
        "--data",
        str(images),
        "--out",
        str(out),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    # byte-code caching as on any installed copy (some CI images turn it off; that adds ~0.1 s of compiling
    # qdebug's modules to every run)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    t0 = time.perf_counter()
    busy0 = cpu_busy_s()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(out)
    )
    state = {"max_kb": 0, "killed": False}
    limit_kb = int(limit_gb * 1024 * 1024)

    def watch() -> None:
        while proc.poll() is None:
            kb = rss_kb(proc.pid)
            state["max_kb"] = max(state["max_kb"], kb)
            if kb > limit_kb and not state["killed"]:
                state["killed"] = True
                proc.kill()  # only the child we started, by its handle
            time.sleep(0.1)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    stdout, stderr = proc.communicate()
    th.join()
    wall = time.perf_counter() - t0
    busy = cpu_busy_s() - busy0
    row: dict = {
        "process_wall_s": wall,
        "sampled_peak_rss_mb": state["max_kb"] / 1024.0,
        "returncode": proc.returncode,
    }
    line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith(RESULT_TAG)), None)
    if state["killed"]:
        row["error"] = f"killed: RSS passed the {limit_gb:g} GB limit"
    elif proc.returncode != 0 or line is None:
        tail = (stderr.strip().splitlines() or ["(no stderr)"])[-1][:300]
        row["error"] = f"exit {proc.returncode}: {tail}"
    else:
        row.update(json.loads(line[len(RESULT_TAG) :]))
        # CPU used on the machine by anything but this child, averaged over its lifetime (in cores):
        # a noise indicator, since other processes share the cores and the memory bandwidth.
        if busy:
            row["other_load_cores"] = max(0.0, (busy - row["cpu_s"]) / wall)
    return row


def summarize(name: str, kind: str, n: int, runs: list[dict], max_other: float) -> dict:
    """One row per configuration: the fastest run among the undisturbed ones (other load at most
    `max_other` cores; all runs if none is), the largest peak RSS, and every run's numbers."""
    ok = [r for r in runs if "error" not in r]
    row: dict = {"name": name, "kind": kind, "samples": n, "repeats": len(runs)}
    if not ok:
        row.update(runs[-1])
        row.update({"name": name, "kind": kind, "samples": n})
        return row
    quiet = [r for r in ok if (r.get("other_load_cores") or 0.0) <= max_other]
    best = min(quiet or ok, key=lambda r: r["wall_s"])
    row.update(best)
    row["disturbed"] = not quiet
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
    row["all_wall_s"] = [r["wall_s"] for r in ok]
    row["all_peak_rss_mb"] = [r["peak_rss_mb"] for r in ok]
    row["all_other_load_cores"] = [r.get("other_load_cores") for r in ok]
    row["all_qdebug_code"] = [r.get("qdebug_code") for r in ok]
    return row


def run_all(
    configs: list[tuple[str, str, int]], model: Path, images: Path, out: Path, args: argparse.Namespace
) -> dict[str, dict]:
    """Round-robin over the configurations `--repeat` times (so each one samples the machine's load at
    different moments), then up to `--extra-rounds` more rounds for configurations with no run under
    `--max-other-load`."""
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in configs}

    def one(name: str, kind: str, n: int, label: str) -> None:
        busy = wait_for_quiet(args.quiet_wait) if args.quiet_wait > 0 else None
        print(
            f"[bench] {name} ({label}, other load before "
            f"{busy if busy is not None else float('nan'):.2f} cores): running ...",
            file=sys.stderr,
            flush=True,
        )
        r = launch_once(kind, n, model, images, out, args.rss_limit_gb)
        r["load_before_cores"] = busy
        runs[name].append(r)
        status = r.get("error") or (
            f"{r['wall_s']:.1f} s, CPU {r['run_cpu_s']:.1f} s, peak RSS "
            f"{r['peak_rss_mb']:.0f} MB, other load {r.get('other_load_cores', float('nan')):.2f}"
            " cores"
        )
        print(f"[bench] {name}: {status} (process {r['process_wall_s']:.1f} s)", file=sys.stderr, flush=True)

    def failed(name: str) -> bool:
        return any("error" in r for r in runs[name])

    def quiet(name: str) -> bool:
        return any(
            "error" not in r and (r.get("other_load_cores") or 0.0) <= args.max_other_load for r in runs[name]
        )

    repeat = max(1, args.repeat)
    for k in range(repeat):
        for name, kind, n in configs:
            if not failed(name):
                one(name, kind, n, f"run {k + 1}/{repeat}")
    for k in range(args.extra_rounds):
        todo = [c for c in configs if not failed(c[0]) and not quiet(c[0])]
        if not todo:
            break
        for name, kind, n in todo:
            one(name, kind, n, f"extra run {k + 1}/{args.extra_rounds}: earlier runs disturbed")
    return {name: summarize(name, kind, n, runs[name], args.max_other_load) for name, kind, n in configs}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _per_round(rows: dict, name: str, parts: tuple[str, ...]) -> list[float]:
    """wall(name) / sum(wall(parts)) for each round in which all of them ran (runs are round-robin)."""
    walls = [_get(rows, n, "all_wall_s") for n in (name, *parts)]
    if any(not w for w in walls):
        return []
    return [w[0] / sum(w[1:]) for w in zip(*walls, strict=False) if sum(w[1:]) > 0]


def _get(rows: dict, name: str, key: str):
    r = rows.get(name)
    return None if r is None or "error" in r else r.get(key)


def compute_ratios(rows: dict, ort_ns: list[int]) -> dict:
    q8, q64 = "qdebug_compare_8", "qdebug_compare_64"
    rss8, rss64 = _get(rows, q8, "peak_rss_mb"), _get(rows, q64, "peak_rss_mb")
    fp, qp = _get(rows, "float_pass_8", "wall_s"), _get(rows, "quant_pass_8", "wall_s")
    base = fp + qp if fp is not None and qp is not None else None
    qw8 = _get(rows, q8, "wall_s")
    qt8 = _get(rows, q8, "qdebug_timing") or {}
    r: dict = {
        "qdebug_rss64_over_rss8": _ratio(rss64, rss8),
        "qdebug_rss64_gb": rss64 / 1024.0 if rss64 is not None else None,
        "ort_rss8_over_qdebug_rss8": _ratio(_get(rows, "ort_flow_8", "peak_rss_mb"), rss8),
        "baseline_float_plus_quant_pass_8_s": base,
        "qdebug_wall8_over_baseline": _ratio(qw8, base),
        "qdebug_compare_phase8_over_baseline": _ratio(qt8.get("compare_s"), base),
        # the same ratio in CPU seconds (all threads): less sensitive to other processes on the machine
        "qdebug_cpu8_over_baseline_cpu": _ratio(
            _get(rows, q8, "run_cpu_s"),
            (_get(rows, "float_pass_8", "run_cpu_s") or 0) + (_get(rows, "quant_pass_8", "run_cpu_s") or 0),
        ),
        "ort_time_over_qdebug_time": {},
        # the time ratio within each round (qdebug and the two passes run minutes apart at most): paired,
        # so it is less sensitive to the machine's drift than fastest-over-fastest
        "qdebug_wall8_over_baseline_per_round": _per_round(rows, q8, ("float_pass_8", "quant_pass_8")),
    }
    # cost of one more image: (wall(64) - wall(8)) / 56 against the baseline's per-image cost; the fixed
    # part (start-up, loading, model building, first-run warm-up) is what 8 images do not amortize
    qw64 = _get(rows, q64, "wall_s")
    if qw8 is not None and qw64 is not None and base:
        per_image = (qw64 - qw8) / 56.0
        r["qdebug_marginal_per_image_over_baseline"] = per_image / (base / 8.0)
        r["qdebug_fixed_s"] = qw8 - 8 * per_image
    else:
        r["qdebug_marginal_per_image_over_baseline"] = r["qdebug_fixed_s"] = None
    for n in ort_ns:
        qn = _get(rows, f"qdebug_compare_{n}", "wall_s")
        r["ort_time_over_qdebug_time"][str(n)] = _ratio(_get(rows, f"ort_flow_{n}", "wall_s"), qn)
    def check(target: str, value: float | None, ok) -> dict:
        return {"target": target, "value": value, "met": None if value is None else ok(value)}

    r["targets"] = {
        "rss_growth": check(f"<= {TARGET_RSS_GROWTH}", r["qdebug_rss64_over_rss8"], lambda v: v <= TARGET_RSS_GROWTH),
        "rss_64_abs": check(f"< {TARGET_RSS_ABS_GB} GB", r["qdebug_rss64_gb"], lambda v: v < TARGET_RSS_ABS_GB),
        "time_ratio": check(f"<= {TARGET_TIME_RATIO}", r["qdebug_wall8_over_baseline"],
                            lambda v: v <= TARGET_TIME_RATIO),
    }
    return r


def _fmt(v, spec: str = ".1f", none: str = "—") -> str:
    return none if v is None else format(v, spec)


def _spread(vals: list[float] | None) -> str:
    if not vals:
        return "—"
    v = sorted(vals)
    return f"{v[0]:.1f} / {v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2:.1f} / {v[-1]:.1f}"


def markdown(results: dict) -> str:
    rows = results["runs"]
    rt = results["ratios"]
    lines = [
        f"Measured {results['date']} on {results['machine']['cpus']} cores, "
        f"{results['machine']['ram_gb']:.0f} GB RAM; model {results['model']['nodes']} nodes, "
        f"input {results['model']['input']}, output {results['model']['output']}; "
        f"images {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} letterboxed to 640.",
        "",
        f"Fastest of {results.get('repeat', 1)}+ run(s) per configuration among those with other load "
        f"≤ {results.get('max_other_load_cores', 0.3)} cores († = every run was disturbed, fastest shown); "
        "peak RSS is the largest over the runs.",
        f"qdebug: commit {results['versions']['git_after']['commit']}"
        + (" (uncommitted changes in qdebug/)" if results["versions"]["git_after"]["qdebug_dirty"] else "")
        + f", source hash {', '.join(results['versions']['qdebug_code'])}"
        + (
            " — WARNING: the qdebug sources changed during the run; rows may mix versions"
            if len(results["versions"]["qdebug_code"]) > 1
            else ""
        )
        + ".",
        "",
        "| configuration | images | wall time (s) | CPU time (s) | peak RSS (MB) | tensors compared "
        "| other load (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows.values():
        if "error" in r:
            lines.append(f"| {r['name']} | {r['samples']} | — | — | — | {r['error']} | |")
            continue
        tc = r.get("tensors_compared")
        if r["kind"] == "ort":
            tc = f"{tc} activations (+{r['weights_compared']} weights)"
        elif r["kind"] in ("float_pass", "quant_pass"):
            tc = "— (runs only)"
        dag = " †" if r.get("disturbed") else ""
        lines.append(
            f"| {r['name']} | {r['samples']} | {_fmt(r['wall_s'], '.2f')}{dag} | "
            f"{_fmt(r.get('run_cpu_s'), '.2f')} | {_fmt(r['peak_rss_mb'], '.0f')} | {tc} | "
            f"{_fmt(r.get('other_load_cores'), '.2f')} |"
        )
    t = rt["targets"]

    def met(x):
        return "n/a" if x["met"] is None else ("**met**" if x["met"] else "**not met**")

    lines += [
        "",
        "| ratio | value | target | |",
        "|---|---:|---:|---|",
        f"| qdebug peak RSS, 64 / 8 images | {_fmt(rt['qdebug_rss64_over_rss8'], '.2f')} | "
        f"≤ {TARGET_RSS_GROWTH} | {met(t['rss_growth'])} |",
        f"| qdebug peak RSS, 64 images | {_fmt(rt['qdebug_rss64_gb'], '.2f')} GB | "
        f"< {TARGET_RSS_ABS_GB} GB | {met(t['rss_64_abs'])} |",
        f"| qdebug compare wall (8) / (float pass + quantized pass)(8) | "
        f"{_fmt(rt['qdebug_wall8_over_baseline'], '.1f')} | ≤ {TARGET_TIME_RATIO} | {met(t['time_ratio'])} |",
        f"| same, paired within each round: min / median / max | {_spread(rt.get('qdebug_wall8_over_baseline_per_round'))} "
        f"| | |",
        f"| same, compare phase only (no load/calibration/build) | "
        f"{_fmt(rt['qdebug_compare_phase8_over_baseline'], '.1f')} | | |",
        f"| same per extra image: (wall(64) − wall(8)) / 56 over the baseline per image | "
        f"{_fmt(rt.get('qdebug_marginal_per_image_over_baseline'), '.1f')} | | fixed part "
        f"{_fmt(rt.get('qdebug_fixed_s'), '.1f')} s |",
        f"| same in CPU seconds (whole compare vs the two passes) | "
        f"{_fmt(rt['qdebug_cpu8_over_baseline_cpu'], '.1f')} | | |",
        f"| ORT flow peak RSS (8) / qdebug peak RSS (8) | {_fmt(rt['ort_rss8_over_qdebug_rss8'], '.1f')} | | |",
    ]
    for n, v in rt["ort_time_over_qdebug_time"].items():
        lines.append(f"| ORT flow wall / qdebug wall, {n} images | {_fmt(v, '.2f')} | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="ORT flow with 4 and 8 images only (no 16)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default benchmarks/out)")
    ap.add_argument(
        "--rss-limit-gb",
        type=float,
        default=20.0,
        help="kill a configuration whose RSS passes this (default 20)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each configuration N times; report the fastest wall time and the largest peak RSS",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        metavar="S",
        help="before each run wait up to S seconds for other processes to go idle (0: don't)",
    )
    ap.add_argument(
        "--max-other-load",
        type=float,
        default=0.3,
        metavar="CORES",
        help="a run during which other processes used more than this many cores counts as disturbed "
        "(default 0.3); the fastest undisturbed run is reported",
    )
    ap.add_argument(
        "--extra-rounds",
        type=int,
        default=2,
        help="extra runs for configurations whose runs were all disturbed (default 2)",
    )
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only configurations whose name contains this (repeatable); for debugging",
    )
    # child mode (internal)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        run_child(args)
        return 0

    out = Path(args.out).resolve()
    model, images = prepare_inputs(out, N_IMAGES, rewrite_model=True)
    import onnx
    import onnxruntime

    m = onnx.load(str(model), load_external_data=False)

    def dims(vi):
        return [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]

    ort_ns = [4, 8] if args.quick else [4, 8, 16]
    # The time ratio's three runs come first and next to each other, so they meet similar machine load.
    configs = [
        ("float_pass_8", "float_pass", 8),
        ("quant_pass_8", "quant_pass", 8),
        ("qdebug_compare_8", "qdebug", 8),
        ("qdebug_compare_64", "qdebug", 64),
    ]
    for n in ort_ns:  # ORT time vs qdebug time at equal N
        if n not in (8, 64):
            configs.append((f"qdebug_compare_{n}", "qdebug", n))
        configs.append((f"ort_flow_{n}", "ort", n))
    if args.only:
        configs = [c for c in configs if any(s in c[0] for s in args.only)]
    git_before = git_state()
    rows = run_all(configs, model, images, out, args)
    git_after = git_state()
    codes = sorted({c for r in rows.values() for c in r.get("all_qdebug_code", []) if c})
    from qdebug import __version__ as qv

    results = {
        "schema": "qdebug.bench_compare/1",
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": args.quick,
        "repeat": max(1, args.repeat),
        "max_other_load_cores": args.max_other_load,
        "machine": {
            "cpus": os.cpu_count(),
            "ram_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {
            "qdebug": qv,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "git_before": git_before,
            "git_after": git_after,
            "qdebug_code": codes,
        },
        "model": {
            "path": str(model),
            "nodes": len(m.graph.node),
            "input": dims(m.graph.input[0]),
            "output": dims(m.graph.output[0]),
        },
        "images": {"path": str(images), "count": N_IMAGES, "size_wh": list(IMAGE_SIZE)},
        "runs": rows,
        "ratios": compute_ratios(rows, ort_ns),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))
    print(f"\nwrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
