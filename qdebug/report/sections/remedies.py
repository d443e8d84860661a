"""The Remedy plan section (bisect --remedies): the chosen remedies, their costs and the plans tried."""

from __future__ import annotations

from qdebug.report.blocks import Block, Bullets, Heading, Para, Table, il
from qdebug.report.context import Ctx


def _v(x: float | None) -> str:
    return "–" if x is None else f"{x:.6g}"


def remedies(ctx: Ctx) -> list[Block]:
    """The plan (cheapest kind first) with before/after target values, skipped remedies and alternatives."""
    if ctx.kind != "bisect" or ctx.bis.remedy_search is None:
        return []
    res, rs = ctx.bis.result, ctx.bis.remedy_search
    out: list[Block] = [Heading(2, "Remedy plan"),
                        Para(il("Remedies searched in cost order — calibration per tensor, head split, precision "
                                "— each candidate plan verified end to end. " + res.message))]
    rows = []
    for r in res.remedies:
        vals = "; ".join(f"{k}: {_v(r.before.get(k))} → {_v(v)}" for k, v in r.after.items())
        changed = ", ".join(r.changed[:6]) + (f" … (+{len(r.changed) - 6})" if len(r.changed) > 6 else "")
        rows.append([il(r.kind), il(f"{r.cost} {r.unit}"), il(changed), il(vals)])
    if rows:
        out.append(Table(["remedy", "cost", "changed", "target before → after"], rows, "lrll"))
    skipped = [il(f"{k} skipped: {why}") for k, why in rs.skipped.items()] + [il(n) for n in rs.notes]
    if skipped:
        out.append(Bullets(skipped))
    out.append(Para(il(f"Evaluations: calibration part {rs.calibration_evaluations} (bound "
                       f"{rs.calibration_bound}), precision part {rs.precision_evaluations} (bound "
                       f"{rs.precision_bound}).")))
    trials = [[il(str(t.evaluation)), il(t.plan), il(", ".join(f"{k} {v}" for k, v in t.cost.items() if v) or "–"),
               il("pass" if t.passed else "miss"), il(_v(t.margin))] for t in rs.trials]
    if trials:
        out += [Heading(3, "Alternatives tried"), Table(["#", "plan", "cost", "verdict", "margin"], trials, "rllcr")]
    return out
