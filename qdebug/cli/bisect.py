"""`qdebug bisect`: CLI wiring for the search layer (parsing, printing, writing files)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from qdebug.cli.guard import write_json
from qdebug.cli.options import (
    add_data_args,
    add_quant_args,
    add_quiet,
    add_task_args,
    check_target_task,
    setup_run,
)
from qdebug.cli.promote import text_diff
from qdebug.cli.terminal import (
    err_console,
    mk,
    out_console,
    render_bisect,
    render_detection,
    render_remedies,
    render_task,
)
from qdebug.errors import QDebugError
from qdebug.results.vendor import PatchedFile

if TYPE_CHECKING:
    from qdebug.results.bisect import BisectResult


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
    b.add_argument("--format", default=None, help="checked against the known formats only: -o patches the "
                                                  "--calib file (or the toolkit's cfg with --backend rknn)")
    b.add_argument("--json", default=None, help="write the result (schema qdebug.bisect/1)")
    b.add_argument("--report", default=None, metavar="DIR", help="also write report.md/report.html into DIR")
    b.add_argument("--remedies", action="store_true",
                   help="search the cheapest verified fix: per-tensor calibration, head split (decode tail on the "
                        "CPU) and precision, in cost order (docs/bisect.md)")
    b.add_argument("--calib-table", default=None, metavar="FILE",
                   help="with --remedies: write the plan's ranges as a calibration table (FILE.json: tensor -> "
                        "min/max/scale; any other name: TensorRT calibration cache text)")
    b.add_argument("--rknn-proposal", action="store_true",
                   help="with --backend rknn: also run the toolkit's own hybrid proposal and score it beside ours")
    add_quiet(b)
    add_task_args(b, draw=False)
    b.set_defaults(func=cmd_bisect)


def cmd_bisect(args: argparse.Namespace) -> int:
    """Run `qdebug bisect`: rank the ops, search the smallest promotion set, write the vendor file and exports."""
    from qdebug.quant.scheme import Precision
    from qdebug.search.driver import run_bisect
    from qdebug.search.remedies import config_from_remedies
    from qdebug.search.target import parse_cut, precheck_target

    console = out_console()
    try:
        prec = Precision.parse(args.promote_dtype)
    except ValueError as exc:
        raise QDebugError(str(exc), where="--promote-dtype", fix="use int16, fp16 or fp32") from None
    if prec is Precision.INT8:
        raise QDebugError("--promote-dtype int8 promotes nothing (int8 is the default precision)",
                          where="--promote-dtype", fix="use int16, fp16 or fp32")
    if getattr(args, "quantized", None):
        prec = Precision.FP32  # a QDQ model's op is promoted by removing its Q/DQ pairs: it runs in float
    precheck_target(args.target)
    if args.cut_threshold:
        parse_cut(args.cut_threshold)
    if args.format and not args.calib:
        import qdebug.formats  # noqa: F401  (registers the formats)
        from qdebug.formats.base import FORMATS

        if args.format not in FORMATS:
            raise QDebugError(f"unknown format '{args.format}'", where="--format",
                              fix=f"use one of {', '.join(sorted(FORMATS))}")
    if getattr(args, "quantized_dumps", None):
        raise QDebugError("recorded dumps cannot be re-run with promoted ops", where="--quantized-dumps",
                          fix="pass --quantized Q.ONNX (the QDQ model) to bisect")
    if args.output and not (args.calib or args.backend == "rknn" or args.quantized or args.remedies):
        # one check for -o with or without --format: a format names no file, only the toolkit writes its own
        raise QDebugError("-o needs a vendor file to patch" + (f" (--format {args.format} names a format, not a "
                                                                "file)" if args.format else ""), where="-o",
                          fix=f"pass --calib {args.format or 'FORMAT'}:FILE (the vendor file to patch), or "
                              "--backend rknn (the toolkit's own .quantization.cfg is patched)")
    from qdebug.results.detection import DetectionResult
    from qdebug.results.runspec import RunSpec
    from qdebug.tasks.evaluator import DetectionEvaluator, run_detection
    from qdebug.tasks.task_evaluator import TaskEvaluator, run_task

    check_target_task(args)  # a task metric in --target needs --task
    st = setup_run(args)
    graph, ds, calib, cfg = st.graph, st.dataset, st.calib, st.config
    backend, decoder, judge = st.backend, st.decoder, st.vendor
    target = args.target
    if decoder is not None and not target:
        from qdebug.tasks import DEFAULT_TASK_TARGET

        target = DEFAULT_TASK_TARGET
    scorer = st.scorer  # --task classify|embedding|ctc
    if scorer is not None and not target:
        target = scorer.default_target
    log = None if args.quiet else (lambda s: err_console.print(mk("[dim]· {}[/]", s)))
    evaluator = DetectionEvaluator(graph, ds, judge or backend, decoder, labels=args.labels) if decoder else None
    tev = TaskEvaluator(graph, ds, judge or backend, scorer) if scorer is not None else None
    step1_cfg = None
    try:
        pinned = {ov.split("=", 1)[0] for ov in args.override} | {
            k for k, p in cfg.overrides.items() if p != cfg.scheme.activation}
        res = run_bisect(graph, ds, cfg, backend, target, prec, args.cut_search, calib, log=log,
                         cut_threshold=args.cut_threshold, eval_backend=judge, evaluator=evaluator or tev,
                         remedies=args.remedies, pinned=pinned)
        search_builds = getattr(judge, "build_kinds", None)
        search_builds = dict(search_builds) if search_builds is not None else None  # the search's share
        search_reused = getattr(judge, "reused", 0)  # evaluations answered by an identical earlier toolkit run
        final_cfg = config_from_remedies(cfg, res.result.remedies, prec)
        changed = final_cfg.key() != cfg.key()
        if decoder is not None and evaluator is not None:
            promoted = final_cfg if changed else None
            det = run_detection(graph, ds, judge or backend, cfg, decoder, promoted=promoted,
                                labels=evaluator.labels)
            res.detection = DetectionResult.from_json(det.to_json())
            res.detection.judge = "rknn-toolkit2 simulator" if judge is not None \
                else f"built-in simulator ({st.profile})"  # the verdict names its simulator
        if scorer is not None and tev is not None:
            promoted = final_cfg if changed else None
            res.task = run_task(graph, ds, judge or backend, cfg, scorer, promoted=promoted, evaluator=tev)
        if judge is not None and getattr(judge, "name", "") == "rknn":
            _rknn_outputs(args, graph, ds, cfg, judge, res, prec, log, evaluator=evaluator or tev)
            if args.remedies and args.output:  # -o is the step-1 cfg with the plan (written by write_plan)
                step1 = judge.hybrid_cfg(graph, [o.name for o in graph.outputs])["cfg"]
                step1_cfg = (step1, open(step1).read())
            res.quant.judge = judge.describe()  # one build count: every build of the run, the proposal's too
            if search_builds is not None:  # the search's builds against the bound 2*ceil(log2 N)+|set|+2
                # strict: the first-bad-cut probes are builds too and count inside it (no cut allowance on top)
                res.quant.judge["search_builds"] = {"total": sum(search_builds.values()), **search_builds,
                                                    "bound": res.counts.bound - res.counts.cut_bound,
                                                    "reused": search_reused}
    finally:
        if judge is not None and hasattr(judge, "close"):
            judge.close()
    res.command = args.command_line
    if not args.target:  # the task's default target (set above) was assumed too, not given
        res.target.assumed_default = True
    res.spec = RunSpec.from_options("bisect", args, model=args.model, profile=st.profile, target=target)
    written: list[str] = []  # one "wrote PATH" line each, after the summary
    if args.remedies:
        from qdebug.cli.remedy_outputs import write_plan

        written = write_plan(args, graph, ds, res, prec, step1_cfg)
    elif args.calib and args.backend != "rknn":
        _vendor_outputs(args, graph, res, prec)
    if args.quantized and args.output:
        _qdq_output(args, backend, graph, cfg, res, prec)
    if not args.remedies and res.patched_file is not None and res.patched_file.path:
        written.append(res.patched_file.path)
    _exports(graph, res, prec)
    if not args.quiet:
        render_bisect(res, console)
        _render_builds(res, console)
        render_remedies(res, console)
        if res.detection is not None:
            render_detection(res.detection, console, promoted=after_label(res))
        if res.task is not None:
            render_task(res.task, console, promoted=after_label(res))
    for path in written:
        console.print(mk("wrote {}", path), soft_wrap=True)  # a path to copy: never folded
    doc = res.to_json()  # the JSON file and the report read the documented schema
    if args.json:
        write_json(args.json, doc, args.run_inputs)
        console.print(mk("wrote {}", args.json))
    if args.report:
        from qdebug.compare.explain import explain
        from qdebug.report.build import check_output, why_ops, write_report

        check_output(args.report)
        paths = write_report(doc, args.report, explain(doc, why_ops(doc)))
        console.print(mk("wrote {} and {}", paths["md"], paths["html"]))
    return 0 if res.result.met else 1


def after_label(doc: BisectResult) -> str:
    """Label of the run with the chosen plan: "promoted" when the plan only promotes ops, else "plan" (a head
    split or re-calibrated ranges are no promotion)."""
    return "promoted" if all(r.kind == "precision" for r in doc.result.remedies) else "plan"


def _render_builds(res: BisectResult, console) -> None:
    """The toolkit's build count against the search's bound (rknn judge only)."""
    sb = (res.quant.judge or {}).get("search_builds")
    if not sb:
        return
    parts = ", ".join(f"{sb[k]} {k.replace('_', ' ')}" for k in ("evaluation", "step1", "crashed", "isolation")
                      if sb.get(k))
    if sb.get("reused"):  # an evaluation identical to an earlier run (the baseline = the full-graph probe)
        parts += f"; {sb['reused']} evaluation(s) answered by an identical earlier run"
    console.print(mk("{} toolkit builds for the search ({}; bound {} = 2⌈log2 N⌉+|set|+2, cut probes included), "
                     "{} in all",
                     sb["total"], parts, sb["bound"], res.quant.judge.get("builds")))
    f16 = (res.quant.judge or {}).get("float16_instead")
    if f16:
        console.print("[yellow]no int16 kernel in the toolkit (rknn profile), written as float16 where promoted:[/] "
                      + mk("{}", "; ".join(f16)))


def _rknn_outputs(args, graph, ds, cfg, rk, res: BisectResult, prec, log, evaluator=None) -> None:
    """Patched .quantization.cfg from the toolkit's own step-1 file, and the toolkit's proposal beside ours."""
    import shutil

    from qdebug.fileio import atomic_write
    from qdebug.formats.rknn2 import RknnQuantCfg

    outs = [o.name for o in graph.outputs]
    nodes = res.result.set
    res.patched_file = None
    if nodes:
        base, patched = rk.patched_cfg(graph, cfg.with_overrides({k: prec for k in nodes}), outs)
        original = rk.hybrid_cfg(graph, outs)["cfg"]
        text = open(patched).read()
        if args.output and not args.remedies:
            atomic_write(args.output, text, protect=args.run_inputs)
        custom = RknnQuantCfg.parse(text, patched).custom
        missed = [f"not applied by the toolkit: {k} ({v})" for k, v in rk.not_applied.items() if k in custom]
        missed += [f"written as float16, not int16: {k} ({v})" for k, v in rk.float16_instead.items() if k in nodes]
        res.patched_file = PatchedFile(
            path=args.output, source=original, format="rknn", changed=sorted(custom),
            notes=["verified by hybrid_quantization_step2 + simulator (the final evaluation)", *missed],
            extra_options={}, diff=text_diff(open(original).read(), text))
        if args.keep_work:
            shutil.copy(patched, rk.workdir / "final.quantization.cfg")
    if args.rknn_proposal:
        from qdebug.cli.rknn_proposal import score_proposal

        res.toolkit_proposal = score_proposal(graph, ds, cfg, rk, res, prec, evaluator, log)


def _exports(graph, res: BisectResult, prec) -> None:
    try:
        from qdebug.formats.exports import export_all
    except ImportError:  # pragma: no cover
        return
    nodes = res.result.set
    res.exports = export_all(graph, nodes, prec) if nodes else {}


def _vendor_outputs(args, graph, res: BisectResult, prec) -> None:
    from qdebug.fileio import atomic_write
    from qdebug.formats.base import load_vendor_file

    nodes = res.result.set
    res.patched_file = None
    if args.output and not nodes:
        err_console.print(mk("qdebug: note: nothing to promote, so {} (-o) was not written", args.output),
                          soft_wrap=True)
    if not nodes or not args.output:
        return
    vf = load_vendor_file(args.calib)  # a --format without --calib was refused before the search
    pr = vf.promote(nodes, prec, graph=graph)
    atomic_write(args.output, pr.text, protect=(*args.run_inputs, vf.path or ""))
    res.patched_file = PatchedFile(path=args.output, source=vf.path, format=vf.format, changed=pr.changed,
                                   notes=pr.notes, extra_options=pr.extra, diff=text_diff(vf.text, pr.text))


def _qdq_output(args, backend, graph, cfg, res: BisectResult, prec) -> None:
    """The --quantized QDQ model with the promotion set's Q/DQ pairs removed (runners.qdq.promote)."""
    from qdebug.fileio import atomic_write

    nodes = res.result.set
    if not nodes:  # as for a vendor file: an unchanged copy of the input is no output
        err_console.print(mk("qdebug: note: nothing to promote, so {} (-o) was not written", args.output),
                          soft_wrap=True)
        return
    model = backend.patched_model(graph, cfg.with_overrides({k: prec for k in nodes}))
    atomic_write(args.output, model.SerializeToString(), protect=(*args.run_inputs, args.quantized))
    res.patched_file = PatchedFile(path=args.output, source=args.quantized, format="onnx-qdq", changed=list(nodes),
                                   notes=["promoted ops run in float: their Q/DQ pairs removed, float weights back"])



