"""The Toolkit proposal section (bisect judged by a vendor backend)."""

from __future__ import annotations

from qdebug.report.blocks import Block, Code, Details, Heading, Para, bad, good, il
from qdebug.report.context import Ctx
from qdebug.report.format import f_g


def toolkit_proposal(ctx: Ctx) -> list[Block]:
    """The judge toolkit's own hybrid-quantization proposal, scored on the same target."""
    if ctx.kind != "bisect":
        return []
    tp = ctx.bis.toolkit_proposal
    if not tp:
        return []
    judge = (ctx.bis.quant.judge or {}).get("backend", "vendor")
    verdict = (good("meets") if tp.passed else bad("misses")) if tp.passed is not None else il("–")
    vals = "; ".join(f"{k} = {v if v is None else f_g(v, 4)}" for k, v in tp.values.items())
    tensors = tp.tensors
    out: list[Block] = [Heading(2, "Toolkit proposal"),
                        Para(il(f"The {judge} toolkit's own hybrid-quantization proposal promotes {tp.count} "
                                f"tensor(s) (ours: {len(ctx.bis.result.set)} op(s)); scored on the same target "
                                "it ", verdict, " it", f" ({vals})." if vals else "."))]
    if tensors:
        out.append(Details(f"The {len(tensors)} tensors the toolkit proposes", [Code("\n".join(tensors))]))
    return out
