"""The report's sections in reading order, and `build_blocks`, which walks them.

Each section is a function `(ctx) -> list[Block]` in its own module that returns [] when it does not
apply to the document; a new section is one module plus one line in SECTIONS.
"""

from __future__ import annotations

from collections.abc import Callable

from qdebug.report.blocks import Block
from qdebug.report.context import Ctx
from qdebug.report.sections import (
    appendix,
    detection,
    environment,
    evaluation_log,
    exports,
    figures,
    first_bad_cut,
    hazards,
    headline,
    outputs,
    promotion,
    ranking,
    remedies,
    run_warnings,
    task,
    toolkit_proposal,
    vendor_file,
    vendor_sim,
    worst_ops,
)

Section = Callable[[Ctx], list[Block]]

SECTIONS: list[Section] = [
    headline.headline,
    outputs.outputs,
    detection.detection,
    task.task,
    figures.figures,
    promotion.promotion_set,
    remedies.remedies,
    ranking.ranking,
    worst_ops.worst_ops,
    hazards.hazards,
    vendor_sim.vendor_sim,
    first_bad_cut.first_bad_cut,
    evaluation_log.evaluation_log,
    toolkit_proposal.toolkit_proposal,
    vendor_file.vendor_file,
    exports.exports,
    run_warnings.run_warnings,
    environment.environment,
    appendix.appendix,
]


def build_blocks(ctx: Ctx) -> list[Block]:
    """The whole report as blocks: every section of SECTIONS in order."""
    blocks: list[Block] = []
    for section in SECTIONS:
        blocks += section(ctx)
    return blocks
