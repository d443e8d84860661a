"""The Worst ops by error jump section: the top tensors by the SNR lost at their op."""

from __future__ import annotations

from qdebug.report.blocks import Block, Heading, Para, Table, il
from qdebug.report.context import Ctx
from qdebug.report.sections.rows import TENSOR_HEADER, tensor_row


def worst_ops(ctx: Ctx) -> list[Block]:
    """The tensors that lose the most SNR at their own op, cumulative and isolated side by side."""
    cmp, after = ctx.cmp, ctx.cmp_after
    arows = after.by_tensor() if after else None
    header = TENSOR_HEADER + (["SNR after"] if arows is not None else [])
    ranked = sorted([t for t in cmp.tensors if t.jump_db is not None and t.index >= 0],
                    key=lambda t: -(t.jump_db or 0.0))
    body = ranked[:ctx.top]
    return [Heading(2, "Worst ops by error jump"),
            Para(il(f"Top {len(body)} of {len(cmp.tensors)} tensors by the SNR lost at their op (cumulative and "
                    "isolated side by side: a large isolated loss means the op itself quantizes badly; a large "
                    "cumulative loss with a fine isolated SNR means it amplifies upstream error). "
                    "Every tensor in execution order is in the appendix.")),
            Table(header, [tensor_row(t, arows) for t in body], "rll" + "r" * (len(header) - 3))]
