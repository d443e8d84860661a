"""The Appendix: the full tensor table and the full ranking, collapsed so the report stays pasteable."""

from __future__ import annotations

from qdebug.report.blocks import Block, Details, Heading, Table
from qdebug.report.context import Ctx
from qdebug.report.sections.rows import RANKING_ALIGN, RANKING_HEADER, TENSOR_HEADER, ranking_row, tensor_row


def appendix(ctx: Ctx) -> list[Block]:
    """Every tensor in execution order and, for a bisect, every ranked op; both collapsed."""
    cmp, after = ctx.cmp, ctx.cmp_after
    arows = after.by_tensor() if after else None
    header = TENSOR_HEADER + (["SNR after"] if arows is not None else [])
    align = "rll" + "r" * (len(header) - 3)
    out: list[Block] = [Heading(2, "Appendix: full tables"),
                        Details(f"All {len(cmp.tensors)} tensors in execution order",
                                [Table(header, [tensor_row(t, arows) for t in cmp.tensors], align)])]
    if ctx.kind == "bisect" and len(ctx.bis.ranking) > min(ctx.top, 10):
        promoted = set(ctx.bis.result.set)
        rows = [ranking_row(r, promoted) for r in ctx.bis.ranking]
        out.append(Details(f"All {len(rows)} ranked ops", [Table(RANKING_HEADER, rows, RANKING_ALIGN)]))
    return out
