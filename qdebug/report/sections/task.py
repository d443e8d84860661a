"""The Task verdict section (compare/bisect --task classify|embedding|ctc): how the output was read, the
quantized (and promoted) scores against the float outputs, and the samples that moved most."""

from __future__ import annotations

from qdebug.report.blocks import Block, Bullets, Heading, Inline, Para, Table, b, c, il
from qdebug.report.context import Ctx
from qdebug.report.sections.detection import plan_label, run_label
from qdebug.results.task import METRIC_LABELS, TaskResult, TaskRun, describe_row, format_metric

# what each task's metrics mean, in one sentence (docs/tasks.md has the definitions)
LEGEND = {
    "classify": "top-1 agreement: share of samples whose quantized argmax is the float argmax; top-5 agreement: "
                "share whose float argmax is in the quantized top-5; KL mean: mean KL(float softmax ‖ quantized "
                "softmax) in nats.",
    "embedding": "cosine min/mean: cosine between each sample's float and quantized embedding; NN agreement: "
                 "share of samples whose nearest other sample (cosine) is the same in both runs.",
    "ctc": "same labels: share of samples whose greedy CTC decoding equals the float one; edit distance: mean "
           "Levenshtein distance between the two label sequences over the longer length.",
}


def task_section(ctx: Ctx) -> TaskResult | None:
    """The `task` section of the result (None when absent)."""
    t = getattr(ctx.res, "task", None)
    return t if isinstance(t, TaskResult) and isinstance(t.quantized, TaskRun) else None


def task_runs(t: TaskResult) -> list[tuple[str, TaskRun]]:
    """(row label, run): quantized, the vendor toolkit's (compare --backend rknn; rows then labelled by
    simulator) and promoted."""
    tk = t.toolkit if isinstance(t.toolkit, TaskRun) else None
    if tk is None:
        runs = [("quantized", t.quantized)]
    else:
        runs = [(run_label("quantized", t.judge, True), t.quantized), (run_label("toolkit", tk.judge, True), tk)]
    return runs + ([(_label(t), t.promoted)] if t.promoted else [])


def _label(t: TaskResult) -> str:
    ov = (t.promoted.overrides if t.promoted else None) or {}
    return f"promoted ({len(ov)} op{'s' * (len(ov) != 1)})" if ov else "promoted"


def task(ctx: Ctx) -> list[Block]:
    """The "Task verdict" section: settings, one row per run, the worst samples and warnings."""
    t = task_section(ctx)
    if t is None:
        return []
    how = "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in (t.settings or {}).items()
                    if v is not None and k != "layout_given")
    intro = il("Task ", c(t.task or "?"), " on output ", c(t.output or "?"), f" ({how})" if how else "",
               f"; {t.quantized.samples} samples. The float model's outputs are the reference. ",
               LEGEND.get(t.task, ""))
    out: list[Block] = [Heading(2, "Task verdict"), Para(intro)]
    names = list(t.higher_is_better) or list(t.quantized.metrics)
    runs = task_runs(t)
    if t.promoted is not None and plan_label(ctx):  # the after-run of a plan that is more than a promotion
        runs[-1] = (plan_label(ctx) or "", runs[-1][1])
    rows: list[list[Inline]] = [[il(label), *(il(format_metric(m, r.metrics.get(m))) for m in names)]
                                for label, r in runs]
    out.append(Table(["run", *(METRIC_LABELS.get(m, m) for m in names)], rows, "l" + "r" * len(names)))
    out.append(Para(il("Target names for ", c("qdebug bisect --target"), ": ",
                       ", ".join(f"{m} ({'higher' if hib else 'lower'} is better)"
                                 for m, hib in t.higher_is_better.items()), ".")))
    worst = t.quantized.worst(5)
    if worst:
        out.append(Para(il(b("Samples that moved most"), " (quantized run):")))
        out.append(Bullets([il(c(str(r.get("sample", "?"))), ": ", describe_row(t.task, r)) for r in worst]))
    warns = [w for w in t.warnings or [] if isinstance(w, str)]
    if warns:
        out.append(Bullets([il(b("warning: "), w) for w in warns]))
    return out
