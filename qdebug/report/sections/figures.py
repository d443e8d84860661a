"""The Plots section: the pictures drawn for the report (detection pictures go to their own section)
and the notes about what could not be drawn."""

from __future__ import annotations

from qdebug.report.blocks import Block, Heading, Image, Para, b, il
from qdebug.report.context import DETECTION_GROUP, Ctx


def figures(ctx: Ctx) -> list[Block]:
    """The "Plots" heading, every non-detection picture in ctx.images, then ctx.notes."""
    blocks: list[Block] = [Heading(2, "Plots")]
    for group, file, alt, caption in ctx.images:
        if group != DETECTION_GROUP:
            blocks.append(Image(file, alt, caption))
    for n in ctx.notes:
        blocks.append(Para(il(b("Note: "), n)))
    return blocks
