"""The Sensitive ops section (bisect): the candidates ranked by sensitivity."""

from __future__ import annotations

from qdebug.report.blocks import Block, Heading, Para, Table, il
from qdebug.report.context import Ctx
from qdebug.report.sections.rows import RANKING_ALIGN, RANKING_HEADER, ranking_row


def ranking(ctx: Ctx) -> list[Block]:
    """The top of the sensitivity ranking the bisect promotes from."""
    if ctx.kind != "bisect":
        return []
    res = ctx.bis
    ranking = res.ranking
    if not ranking:
        return []
    promoted = set(res.result.set)
    n = min(ctx.top, 10)
    out: list[Block] = [Heading(2, "Sensitive ops"),
                        Para(il("Candidates ranked by sensitivity (hazard bonus + jump + isolated error; "
                                f"{res.counts.candidates} candidates). The search promotes the "
                                "shortest ranked prefix that meets the target, then prunes it.")),
                        Table(RANKING_HEADER, [ranking_row(r, promoted) for r in ranking[:n]], RANKING_ALIGN)]
    if len(ranking) > n:
        out.append(Para(il(f"All {len(ranking)} ranked ops are in the appendix.")))
    return out
