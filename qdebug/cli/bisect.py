"""`qdebug bisect`: CLI wiring for the search layer (parsing, printing, writing files)."""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from qdebug.cli.options import add_data_args, add_quant_args, add_task_args, check_target_task, setup_run
from qdebug.cli.terminal import err_console, render_bisect, render_detection
from qdebug.errors import QDebugError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `bisect` subcommand."""
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
    add_task_args(b, draw=False)
    b.set_defaults(func=cmd_bisect)


def cmd_bisect(args: argparse.Namespace) -> int:
    """Run `qdebug bisect`: rank the ops, search the smallest promotion set, write the vendor file and exports."""
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
    from qdebug.results.runspec import RunSpec
    from qdebug.tasks.evaluator import DetectionEvaluator, run_detection

    check_target_task(args)  # a task metric in --target needs --task
    st = setup_run(args)
    graph, ds, calib, cfg = st.graph, st.dataset, st.calib, st.config
    backend, decoder, judge = st.backend, st.decoder, st.vendor
    target = args.target
    if decoder is not None and not target:
        from qdebug.tasks import DEFAULT_TASK_TARGET

        target = DEFAULT_TASK_TARGET
    log = None if args.quiet else (lambda s: err_console.print(f"[dim]· {s}[/]"))
    evaluator = DetectionEvaluator(graph, ds, judge or backend, decoder, labels=args.labels) if decoder else None
    try:
        doc = run_bisect(graph, ds, cfg, backend, target, prec, args.cut_search, calib, log=log,
                         cut_threshold=args.cut_threshold, eval_backend=judge, evaluator=evaluator).to_json()
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
    doc["spec"] = RunSpec.from_options("bisect", args, model=args.model, profile=st.profile,
                                       target=target).to_json()
    if (args.calib or args.format) and args.backend != "rknn":
        _vendor_outputs(args, graph, doc, prec)
    _exports(graph, doc, prec)
    if not args.quiet:
        render_bisect(doc, console)
        if "detection" in doc:
            render_detection(doc["detection"], console)
    if args.json:
        atomic_write(args.json, json.dumps(doc, indent=1, allow_nan=False) + "\n", protect=(args.model,))
        console.print(f"wrote {args.json}")
    if args.report:
        from qdebug.compare.explain import explain
        from qdebug.report.build import check_output, why_ops, write_report

        check_output(args.report)
        paths = write_report(doc, args.report, explain(doc, why_ops(doc)))
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

