"""`qdebug bisect`: CLI wiring for the search layer (parsing, printing, writing files)."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qdebug.errors import QDebugError


def register(sub) -> None:
    """Add the `bisect` subcommand."""
    from qdebug.cli import add_data_args, add_quant_args

    b = sub.add_parser("bisect", help="find the sensitive ops and the smallest set to keep at 16 bits")
    b.add_argument("model", help="float ONNX model")
    add_data_args(b)
    add_quant_args(b)
    b.add_argument("--target", default=None,
                   help='e.g. "output0.score:snr_db>=30 and output0.box:cosine>=0.9999" '
                        "(default: every output part cosine>=0.999)")
    b.add_argument("--promote-dtype", default="int16", help="precision of promoted ops: int16 | fp16")
    b.add_argument("--cut-search", choices=["auto", "one-pass", "truncation"], default="auto",
                   help="first-bad-cut path (auto: one-pass when the backend exposes intermediates)")
    b.add_argument("--cut-threshold", default=None, metavar="EXPR",
                   help="bound for intermediate tensors in the first-bad-cut search (default: the target's "
                        "loosest snr_db bound, else snr_db>=20)")
    b.add_argument("-o", "--output", default=None, help="write the patched vendor file (needs --calib or --format)")
    b.add_argument("--format", default=None, help="vendor format of -o when no --calib is given (e.g. rknn)")
    b.add_argument("--json", default=None, help="write the result (schema qdebug.bisect/1)")
    b.add_argument("--report", default=None, metavar="DIR", help="also write report.md/report.html into DIR")
    b.add_argument("--rknn-proposal", action="store_true",
                   help="with --backend rknn: also run the toolkit's own hybrid proposal and score it beside ours")
    b.add_argument("--quiet", "-q", action="store_true")
    from qdebug.tasks.cli import add_task_args

    add_task_args(b, draw=False)
    b.set_defaults(func=cmd_bisect)


def cmd_bisect(args: argparse.Namespace) -> int:
    from qdebug.cli import build_config, err_console, load_inputs, make_backend
    from qdebug.fileio import atomic_write
    from qdebug.quant.scheme import Precision
    from qdebug.search.driver import run_bisect

    console = Console(highlight=False)
    try:
        prec = Precision.parse(args.promote_dtype)
    except ValueError as exc:
        raise QDebugError(str(exc), where="--promote-dtype") from None
    if args.output and not (args.calib or args.format or args.backend == "rknn"):
        raise QDebugError("-o needs a vendor file to patch", where="-o",
                          fix="pass --calib FORMAT:FILE (the file to patch) or --format rknn")
    from qdebug.tasks.cli import check_target_task, decoder_from_args
    from qdebug.tasks.evaluator import DetectionEvaluator, run_detection

    check_target_task(args)  # a task metric in --target needs --task
    decoder = decoder_from_args(args)  # None without --task
    if decoder is not None and not args.target:
        from qdebug.tasks import DEFAULT_TASK_TARGET

        args.target = DEFAULT_TASK_TARGET
    graph, ds, calib = load_inputs(args)
    if args.backend == "rknn" and args.profile == "generic":
        args.profile = "rknn"
    cfg, _mapping = build_config(args, graph)
    from qdebug.runners.sim import SimBackend

    backend = SimBackend(args.profile)
    judge = make_backend(args, ds) if args.backend != "sim" else None
    log = None if args.quiet else (lambda s: err_console.print(f"[dim]· {s}[/]"))
    evaluator = DetectionEvaluator(graph, ds, judge or backend, decoder, labels=args.labels) if decoder else None
    try:
        doc = run_bisect(graph, ds, cfg, backend, args.target, prec, args.cut_search, calib, log=log,
                         cut_threshold=args.cut_threshold, eval_backend=judge, evaluator=evaluator)
        if decoder is not None and evaluator is not None:
            nodes = doc["result"]["set"]
            promoted = cfg.with_overrides({k: prec for k in nodes}) if nodes else None
            doc["detection"] = run_detection(graph, ds, judge or backend, cfg, decoder, promoted=promoted,
                                             labels=evaluator.labels).to_json()
        if judge is not None and getattr(judge, "name", "") == "rknn":
            _rknn_outputs(args, graph, ds, cfg, judge, doc, prec, log)
    finally:
        if judge is not None and hasattr(judge, "close"):
            judge.close()
    doc["command"] = args.command_line
    if (args.calib or args.format) and args.backend != "rknn":
        _vendor_outputs(args, graph, doc, prec)
    _exports(graph, doc, prec)
    if not args.quiet:
        render_bisect(doc, console)
        if "detection" in doc:
            from qdebug.tasks.cli import render_detection

            render_detection(doc["detection"], console)
    if args.json:
        atomic_write(args.json, json.dumps(doc, indent=1, allow_nan=False) + "\n", protect=(args.model,))
        console.print(f"wrote {args.json}")
    if args.report:
        from qdebug.report.build import write_report

        paths = write_report(doc, args.report)
        console.print(f"wrote {paths['md']} and {paths['html']}")
    return 0 if doc["result"]["met"] else 1


def _rknn_outputs(args, graph, ds, cfg, rk, doc: dict, prec, log) -> None:
    """Patched .quantization.cfg from the toolkit's own step-1 file, and the toolkit's proposal beside ours."""
    import shutil

    from qdebug.fileio import atomic_write
    from qdebug.formats.rknn2 import RknnQuantCfg
    from qdebug.search.evaluate import TensorTargetEvaluator
    from qdebug.search.target import parse_target

    outs = [o.name for o in graph.outputs]
    nodes = doc["result"]["set"]
    doc["patched_file"] = None
    if nodes:
        base, patched = rk.patched_cfg(graph, cfg.with_overrides({k: prec for k in nodes}), outs)
        original = rk.hybrid_cfg(graph, outs)["cfg"]
        text = open(patched).read()
        if args.output:
            atomic_write(args.output, text)
        doc["patched_file"] = {"path": args.output, "source": original, "format": "rknn",
                               "changed": sorted(RknnQuantCfg.parse(text, patched).custom),
                               "notes": ["verified by hybrid_quantization_step2 + simulator (the final evaluation)"],
                               "extra": {}, "diff": _diff(open(original).read(), text)}
        if args.keep_work:
            shutil.copy(patched, rk.workdir / "final.quantization.cfg")
    if args.rknn_proposal:
        if log:
            log("rknn-toolkit2 proposal (hybrid_quantization_step1 proposal=True)")
        step = rk.hybrid_cfg(graph, outs, proposal=True)
        prop = RknnQuantCfg.parse(open(step["cfg"]).read(), step["cfg"])
        parts = {t: [p["part"] for p in o["parts"]] for o in doc["compare_before"]["outputs"] for t in [o["tensor"]]}
        target = parse_target(doc["target"]["expression"], graph, parts)
        ev = TensorTargetEvaluator(graph, list(ds), rk, target)
        prec_map = prop.custom_precisions(graph)
        score = ev.evaluate(cfg.with_overrides(prec_map)) if prec_map else None
        doc["toolkit_proposal"] = {"tensors": sorted(prop.custom), "count": len(prop.custom),
                                   "values": score.values if score else {}, "passed": score.passed if score else None}


def _exports(graph, doc: dict, prec) -> None:
    try:
        from qdebug.formats.exports import export_all
    except ImportError:  # pragma: no cover
        return
    nodes = doc["result"]["set"]
    doc["exports"] = export_all(graph, nodes, prec) if nodes else {}


def _vendor_outputs(args, graph, doc: dict, prec) -> None:
    from qdebug.fileio import atomic_write
    from qdebug.formats.base import FORMATS, load_vendor_file

    nodes = doc["result"]["set"]
    doc["patched_file"] = None
    if not nodes or not args.output:
        return
    if args.calib:
        vf = load_vendor_file(args.calib)
    else:
        import qdebug.formats  # noqa: F401

        if args.format not in FORMATS:
            raise QDebugError(f"unknown format '{args.format}'", where="--format",
                              fix=f"use one of {', '.join(sorted(FORMATS))}")
        raise QDebugError(f"--format {args.format} needs the vendor's file to patch", where="--format",
                          fix=f"pass --calib {args.format}:FILE")
    res = vf.promote(nodes, prec, graph=graph)
    atomic_write(args.output, res.text, protect=(vf.path or "",))
    doc["patched_file"] = {"path": args.output, "source": vf.path, "format": vf.format, "changed": res.changed,
                           "notes": res.notes, "extra": res.extra, "diff": _diff(vf.text, res.text)}


def _diff(a: str, b: str) -> str:
    import difflib

    return "".join(difflib.unified_diff(a.splitlines(True), b.splitlines(True), "original", "patched", n=2))


def render_bisect(doc: dict, console: Console) -> None:
    """Terminal summary of a bisect result."""
    from qdebug.report.terminal import fmt_snr

    t = doc["target"]
    console.print(f"[bold]qdebug bisect[/] {doc['model']['path']}  ·  {doc['samples']['count']} samples  ·  "
                  f"profile [cyan]{doc['quant'].get('profile')}[/]")
    console.print(f"target: [bold]{t['expression']}[/]" + ("  [yellow](assumed default)[/]" if t["assumed_default"]
                                                           else ""))
    cut = doc["first_bad_cut"]
    if cut["tensor"]:
        part = f".{cut['part']}" if cut["part"] else ""
        console.print(f"first bad cut ({cut['path']}, {cut['evaluations']} evaluations): [bold red]{cut['tensor']}"
                      f"{part}[/] at {cut['node']} ({cut['op_type']}, #{cut['index']}): {cut['metric']} "
                      f"{cut['value']} fails {cut['metric']}>={cut['bound']:g}")
    else:
        console.print(f"first bad cut: none (every tensor passes {cut['metric']}>={cut['bound']:g})")
    tbl = Table(title="Most sensitive ops", header_style="bold")
    for c in ("rank", "op", "type", "score", "jump dB", "iso SNR", "hazards"):
        tbl.add_column(c, overflow="fold")
    for r in doc["ranking"][:8]:
        e = r["evidence"]
        tbl.add_row(str(r["rank"]), r["op"], r["op_type"], f"{r['score']:.1f}",
                    "-" if e["jump_db"] is None else f"{e['jump_db']:+.1f}", fmt_snr(e["isolated_snr_db"]),
                    ", ".join(e["hazards"]))
    console.print(tbl)
    res = doc["result"]
    color = "green" if res["met"] else "red"
    console.print(f"[bold {color}]{escape(res['message'])}[/]")
    if res["set"]:
        console.print("promote: " + ", ".join(f"[bold]{k}[/]" for k in res["set"]))
    for k, v in res["before"].items():
        console.print(f"  {k}: {v} → {res['after'].get(k)}")
    c = doc["counts"]
    console.print(f"{c['evaluations']} quantized evaluations (bound {c['bound']}; naive one-per-op: "
                  f"{c['naive_evaluations']}), {c['total_seconds']:.1f} s")
    for name, text in (doc.get("exports") or {}).items():
        console.print(f"[dim]{name}:[/] {escape(text.strip().splitlines()[0]) if text.strip() else ''}"
                      + (" ..." if len(text.strip().splitlines()) > 1 else ""))
    tp = doc.get("toolkit_proposal")
    if tp:
        vals = ", ".join(f"{k}: {v if v is None else round(v, 4)}" for k, v in tp["values"].items())
        console.print(f"rknn-toolkit2's own proposal: {tp['count']} tensor(s) -> {vals} "
                      f"({'meets' if tp['passed'] else 'misses'} the target)")
    unp = (doc["quant"].get("judge") or {}).get("unpromotable")
    if unp:
        console.print("[yellow]the toolkit cannot promote:[/] " + "; ".join(f"{k} ({v})" for k, v in unp.items()))
    pf = doc.get("patched_file")
    if pf:
        console.print(f"patched {pf['format']} file: [bold]{pf['path']}[/] (changed: {', '.join(pf['changed'])})")
        for n in pf["notes"]:
            console.print(f"  [yellow]note:[/] {escape(n)}")
