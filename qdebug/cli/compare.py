"""`qdebug compare`: float vs quantized error of every tensor, printed and optionally written as JSON."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import TYPE_CHECKING

from qdebug.cli.guard import write_json
from qdebug.cli.options import Setup, add_data_args, add_quant_args, add_quiet, add_task_args, setup_run
from qdebug.cli.terminal import (
    err_console,
    mk,
    out_console,
    progress_factory,
    render_compare,
    render_detection,
    render_task,
    render_vendor,
)

if TYPE_CHECKING:
    from qdebug.results.compare import CompareResult
    from qdebug.tasks.evaluator import DetectionCollector
    from qdebug.tasks.scoring import TaskScorer
    from qdebug.tasks.task_evaluator import TaskCollector


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `compare` subcommand."""
    c = sub.add_parser("compare", help="float vs quantized error of every tensor (cumulative and isolated)")
    c.add_argument("model", help="float ONNX model")
    add_data_args(c)
    add_quant_args(c)
    c.add_argument("--json", default=None, help="write the full result (schema qdebug.compare/1)")
    c.add_argument("--top", type=int, default=15, help="rows in the worst-ops table (default 15)")
    c.add_argument("--all", action="store_true", help="print every tensor in execution order")
    add_quiet(c)
    add_task_args(c)
    c.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    """Run `qdebug compare`: the built-in simulator's per-tensor compare, the vendor's beside it, the task verdict."""
    from qdebug.compare.stage import run_compare
    from qdebug.results.detection import DetectionResult
    from qdebug.results.runspec import RunSpec
    from qdebug.results.vendor import CalibMapping
    from qdebug.tasks.evaluator import DetectionCollector, run_detection
    from qdebug.tasks.task_evaluator import TaskCollector, run_task

    console = out_console()
    st = setup_run(args)
    graph, ds, calib, cfg = st.graph, st.dataset, st.calib, st.config
    backend, decoder, vendor = st.backend, st.decoder, st.vendor
    collector = DetectionCollector(graph, ds, decoder) if decoder is not None else None
    drawn: list[Path] = []
    # the vendor toolkit's final outputs get the same verdict: a scorer of their own, float decoded once
    tk_scorer = copy.deepcopy(st.scorer) if vendor is not None and st.scorer is not None else None
    tasks = TaskCollector(graph, ds, st.scorer) if st.scorer is not None else None  # classify/embedding/ctc
    hook = collector.add if collector is not None else tasks.add if tasks is not None else None
    prog, cb = progress_factory(err_console, args.quiet)
    if prog:
        with prog:
            res = run_compare(graph, ds, cfg, backend, calib, progress=cb, on_sample=hook)
    else:
        res = run_compare(graph, ds, cfg, backend, calib, on_sample=hook)
    res.command = args.command_line
    res.spec = RunSpec.from_options("compare", args, model=args.model, profile=st.profile)
    if decoder is not None:
        det = run_detection(graph, ds, backend, cfg, decoder, labels=args.labels, collector=collector)
        res.detection = DetectionResult.from_json(det.to_json())
        # the verdict's source: compare decodes the built-in simulator's outputs, also under --backend rknn
        res.detection.judge = f"built-in simulator ({st.profile})"
        drawn = det.draw(args.draw) if args.draw else []  # reported after the run's summary
    if tasks is not None and st.scorer is not None:
        res.task = run_task(graph, ds, backend, cfg, st.scorer, collector=tasks)
        res.task.judge = f"built-in simulator ({st.profile})"
    if vendor is not None:
        from qdebug.compare.vendor import rknn_compare

        if not args.quiet:
            err_console.print(mk("[dim]· running {} simulator on {} samples and its per-tensor analysis on {}[/]",
                                 args.backend, len(ds), args.rknn_analysis_samples))
        tk_det = DetectionCollector(graph, ds, decoder, reference=collector.float_dets) \
            if collector is not None and decoder is not None else None
        tk_task = TaskCollector(graph, ds, tk_scorer) if tk_scorer is not None else None

        def tk_hook(k: int, f: dict, q: dict) -> None:
            for c in (tk_det, tk_task):
                if c is not None:
                    c.add(k, f, q)

        try:
            res.vendor = rknn_compare(graph, ds, cfg, vendor, res, calib, args.rknn_analysis_samples,
                                      on_sample=tk_hook if tk_det or tk_task else None)
        finally:
            vendor.close()
        _toolkit_verdicts(res, args, st, tk_det, tk_task, tk_scorer)
    if st.mapping is not None:
        res.quant.calib_mapping = CalibMapping.from_json(st.mapping.to_json())
    if not args.quiet:
        render_compare(res, console, top=args.top, show_all=args.all)
        if res.vendor is not None:
            render_vendor(res.vendor, console, top=None if args.all else 5)
        if res.detection is not None:
            render_detection(res.detection, console)
        if res.task is not None:
            render_task(res.task, console)
    for png in drawn:
        console.print(mk("wrote {}", png))
    if args.json:
        write_json(args.json, res.to_json(), args.run_inputs)
        console.print(mk("wrote {}", args.json))
    return 0


def _toolkit_verdicts(res: CompareResult, args: argparse.Namespace, st: Setup, tk_det: DetectionCollector | None,
                      tk_task: TaskCollector | None, tk_scorer: TaskScorer | None) -> None:
    """The task verdict on the vendor toolkit's final outputs, scored by the built-in verdict's code (tasks/)
    against the same float reference, stored beside it as `toolkit` and labelled by simulator."""
    from qdebug.compare.vendor import judge_label
    from qdebug.results.detection import DetectionRun
    from qdebug.results.task import TaskRun
    from qdebug.tasks.evaluator import run_detection
    from qdebug.tasks.task_evaluator import run_task

    if res.vendor is None:
        return
    judge = judge_label(res.vendor)
    n = len(st.dataset)
    # only complete collections: run_detection would otherwise re-run the passes through the built-in backend
    if tk_det is not None and res.detection is not None and len(tk_det.quant_dets) == len(tk_det.float_dets) == n:
        run = run_detection(st.graph, st.dataset, st.backend, st.config, tk_det.decoder, labels=args.labels,
                            collector=tk_det).to_json()
        res.detection.toolkit = DetectionRun.from_json(run["quantized"])
        res.detection.toolkit.judge = judge
        lab, tk_lab = res.detection.labels, run.get("labels")
        if isinstance(lab, dict) and isinstance(tk_lab, dict):  # true mAP of the toolkit run beside the others
            for m in ("map50_95", "map50", "recall"):
                if isinstance(lab.get(m), dict) and isinstance(tk_lab.get(m), dict):
                    lab[m]["toolkit"] = tk_lab[m].get("quantized")
    if tk_task is not None and tk_scorer is not None and res.task is not None and tk_task.count == n:
        tr = run_task(st.graph, st.dataset, st.backend, st.config, tk_scorer, collector=tk_task)
        res.task.toolkit = TaskRun.from_json(tr.quantized.to_json())
        res.task.toolkit.judge = judge
