"""The Outputs section: SNR, cosine and max abs of every graph output and output part, with the verdict
against the bisect target (or the default target for a compare)."""

from __future__ import annotations

from qdebug.report.blocks import Block, Heading, Inline, Para, Span, Table, bad, c, good, il
from qdebug.report.context import Ctx, clause_key, meets, output_metrics
from qdebug.report.format import f_bound, f_cos, f_g, f_snr
from qdebug.results.values import Metrics


def outputs(ctx: Ctx) -> list[Block]:
    """The outputs table: every graph output and part against the target (before/after promotion for a bisect)."""
    cmp, after = ctx.cmp, ctx.cmp_after
    amap = dict(output_metrics(after)) if after else {}
    crit: dict[str, tuple[str, str, float]] = {}
    vals: dict[str, tuple[float | None, float | None]] = {}
    if ctx.kind == "bisect":
        res = ctx.bis.result
        for cl in ctx.bis.target.clauses:
            if cl.tensor:
                crit[cl.ref] = (cl.metric, cl.op, cl.bound)
                k = clause_key(cl)
                vals[cl.ref] = (res.before.get(k), res.after.get(k))
    else:
        for o in cmp.outputs:
            refs = [f"{p.tensor}.{p.part}" for p in o.parts] or [o.tensor]
            for r in refs:
                crit[r] = ("cosine", ">=", 0.999)
    header = ["output / part", "SNR dB", "cosine", "max abs"]
    has_after = after is not None
    if has_after:
        header = ["output / part", "SNR before", "cosine before", "max abs before", "SNR after", "cosine after",
                  "max abs after", "target", "before", "after"]
    else:
        header += ["criterion", "verdict"]
    rows = []
    for ref, m in output_metrics(cmp):
        vb, va = vals.get(ref, (None, None))
        rows.append(_metric_row(ref, m, amap.get(ref, Metrics(None, None, None, None))
                                if has_after else None, crit.get(ref), vb, va))
    nverdict = 3 if has_after else 2
    blocks: list[Block] = [Heading(2, "Outputs"),
                           Table(header, rows, "l" + "r" * (len(header) - 1 - nverdict) + "l" * nverdict)]
    if ctx.kind == "compare":
        blocks.append(Para(il("Criterion: the default target of ", c("qdebug bisect"),
                              " (cosine ≥ 0.999 on every output part); set your own with ", c("--target"), ".")))
    return blocks


def _metric_row(ref: str, before: Metrics, after: Metrics | None, crit: tuple[str, str, float] | None,
                value_before: float | None = None, value_after: float | None = None) -> list[Inline]:
    row: list[Inline] = [il(c(ref)), il(f_snr(before.snr_db)), il(f_cos(before.cosine)),
                         il(f_g(before.max_abs))]
    if after is not None:
        row += [il(f_snr(after.snr_db)), il(f_cos(after.cosine)), il(f_g(after.max_abs))]
    if crit is not None:
        metric, op, bound = crit
        row.append(il(f"{metric} {f_bound(op, bound)}"))

        def verdict(v: float | None) -> Span:
            return good("pass") if meets(v, op, bound) else bad("FAIL")

        vb = value_before if value_before is not None else before.get(metric)
        row.append(il(verdict(vb)))
        if after is not None:
            va = value_after if value_after is not None else after.get(metric)
            row.append(il(verdict(va)))
    else:
        row += [il("–"), il("–")] + ([il("–")] if after is not None else [])
    return row
