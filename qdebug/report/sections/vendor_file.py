"""The Patched vendor file section (bisect with --calib): what was changed in the toolkit's file."""

from __future__ import annotations

import re

from qdebug.report.blocks import Block, Bullets, Code, Details, Heading, Para, b, c, il, join
from qdebug.report.context import Ctx


def vendor_file(ctx: Ctx) -> list[Block]:
    """The patched vendor calibration file: format, paths, changed records, and the diff (long ones collapsed)."""
    if ctx.kind != "bisect":
        return []
    pf = ctx.bis.patched_file
    if not pf:
        return []
    out: list[Block] = [Heading(2, "Patched vendor file")]
    items = [il(b("Format: "), c(pf.format)),
             il(b("Original → patched: "), c(pf.source or "?"), " → ",
                c(pf.path) if pf.path else "not written (pass -o FILE to bisect)"),
             il(b(f"Changed records ({len(pf.changed)}): "), join([il(c(x)) for x in pf.changed[:20]]),
                f" +{len(pf.changed) - 20} more" if len(pf.changed) > 20 else "")]
    for k, v in (pf.extra_options or {}).items():
        items.append(il(b(f"{k}: "), c(v)))
    for n in pf.notes or []:
        items.append(il(b("note: "), n))
    out.append(Bullets(items))
    diff = (pf.diff or "").rstrip("\n")
    if diff:
        nlines = diff.count("\n") + 1
        code = Code(diff, "diff")
        if nlines > 60:
            hunks = re.split(r"(?m)^(?=@@ )", diff)
            head = "".join(hunks[:3]).rstrip("\n")  # the file header and the first two changed records
            out.append(Para(il(f"Diff of the changed records (first 2 of {len(hunks) - 1} hunks):")))
            out.append(Code(head, "diff"))
            out.append(Details(f"Full diff of the changed records ({nlines} lines)", [code]))
        else:
            out.append(Para(il("Diff of the changed records:")))
            out.append(code)
    return out
