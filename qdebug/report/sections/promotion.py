"""The Recommended promotion set section (bisect): the ops to keep at higher precision, one list to
copy, and the `qdebug compare` command that checks the set."""

from __future__ import annotations

import shlex

from qdebug.report.blocks import Block, Code, Heading, Para, Span, Table, c, il
from qdebug.report.context import Ctx, reproduce
from qdebug.report.format import f_jump, f_snr
from qdebug.results.bisect import BisectResult, Evidence

_BISECT_ONLY = {"--target": 1, "--promote-dtype": 1, "--cut-search": 1, "--cut-threshold": 1, "-o": 1,
                "--output": 1, "--format": 1, "--json": 1, "--report": 1, "-q": 0, "--quiet": 0}


def verify_command(doc: BisectResult) -> str:
    """The bisect command turned into `qdebug compare` with the promotion set as --override flags."""
    try:
        argv = shlex.split(reproduce(doc))
    except ValueError:
        return ""
    if len(argv) < 2 or argv[1] != "bisect" or not doc.result.set:
        return ""
    pf = doc.patched_file
    drop = dict(_BISECT_ONLY, **({"--calib": 1} if pf and pf.path else {}))
    out, skip = ["qdebug", "compare"], 0
    for a in argv[2:]:
        if skip:
            skip -= 1
            continue
        head = a.split("=", 1)[0]
        if head in drop:
            skip = drop[head] if "=" not in a else 0
            continue
        out.append(a)
    if pf and pf.path:  # check what will be deployed: the patched vendor file
        out += ["--calib", f"{pf.format}:{pf.path}"]
    else:
        prec = doc.promote_precision
        out += [f"--override={k}={prec}" for k in doc.result.set]
    return " ".join(shlex.quote(a) for a in out)


def promotion_set(ctx: Ctx) -> list[Block]:
    """The recommended promotion set: per-op evidence, the plain list, and the command that verifies it."""
    if ctx.kind != "bisect":
        return []
    doc = ctx.bis
    res = doc.result
    if not res.set:
        return []
    rank = {r.op: r for r in doc.ranking}
    groups = {g.key: g for g in ctx.cmp.quant.groups}
    rows = []
    for k in res.set:
        r = rank.get(k)
        e = r.evidence if r else Evidence()
        g = groups.get(k)
        nodes = (r.nodes if r else (g.nodes if g else None)) or [k]
        rows.append([il(c(k)), il(r.op_type if r else (g.op_type if g else "?")),
                     il(str(r.rank) if r else "–"), il(f_jump(e.jump_db)), il(f_snr(e.isolated_snr_db)),
                     il(", ".join(e.hazards) or "–"),
                     il(str(len(nodes)) + (" (" + ", ".join(n.rsplit("/", 1)[-1] for n in nodes[1:4]) + ")"
                                           if len(nodes) > 1 else ""))])
    out: list[Block] = [Heading(2, "Recommended promotion set"),
                        Para(il(f"Keep these {len(res.set)} op(s) at {doc.promote_precision} (everything else "
                                f"stays at {doc.quant.scheme.activation}); verified by a full comparison "
                                "with the set applied:")),
                        Table(["op", "type", "rank", "jump dB", "iso SNR", "hazards", "ONNX nodes"], rows,
                              "llrrrll")]
    out.append(Para(il("The same names (the anchor ONNX node of each fused op), one per line, for tools that take "
                       "a list; per-toolchain syntax is under ", Span("link", "Export lists", "#export-lists"), ":")))
    out.append(Code("\n".join(res.set)))
    cmd = verify_command(doc)
    if cmd:
        what = "the patched vendor file" if doc.patched_file and doc.patched_file.path else "the set"
        out.append(Para(il(f"Check {what} yourself with the simulator:")))
        out.append(Code(cmd, "sh"))
    return out
