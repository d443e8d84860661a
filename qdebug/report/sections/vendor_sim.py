"""The Vendor simulator section: a vendor toolkit's own simulator beside the built-in one."""

from __future__ import annotations

from qdebug.report.blocks import Block, Heading, Para, Table, c, il, join
from qdebug.report.context import Ctx, vendor_refs
from qdebug.report.format import f_cos, f_g, f_snr


def vendor_sim(ctx: Ctx) -> list[Block]:
    """The vendor toolkit's simulator next to qdebug's: per-output metrics, largest gaps, fused-away tensors."""
    v = ctx.cmp.vendor
    if not v:
        return []
    name = v.backend
    out: list[Block] = [Heading(2, "Vendor simulator"),
                        Para(il(f"The {name} toolkit's own simulator ({v.toolkit or 'version unknown'}, "
                                f"platform {'?' if v.platform is None else v.platform}) on {v.samples} sample(s), next "
                                f"to qdebug's built-in simulator; per-tensor analysis on {v.analysis_samples} "
                                f"sample(s), {v.tensors_matched} tensors matched."))]
    rows = []
    for ref, vm, bm in vendor_refs(v):
        bm = bm or {}
        rows.append([il(c(ref)), il(f_snr(vm.get("snr_db"))), il(f_cos(vm.get("cosine"))), il(f_g(vm.get("max_abs"))),
                     il(f_snr(bm.get("snr_db"))), il(f_cos(bm.get("cosine")))])
    out.append(Table(["output / part", "vendor SNR", "vendor cosine", "vendor max abs", "built-in SNR",
                      "built-in cosine"], rows, "lrrrrr"))
    dis = v.disagreements
    if dis:
        out.append(Para(il("Largest gaps between the two simulators (cumulative SNR, toolkit minus built-in; "
                           "cosine saturates near 1):")))
        out.append(Table(["tensor", "vendor SNR", "built-in SNR", "SNR gap dB", "vendor cosine", "built-in cosine"],
                         [[il(c(d["tensor"])), il(f_snr(d.get("vendor_snr_db"))), il(f_snr(d.get("builtin_snr_db"))),
                           il(f_g(d.get("snr_gap_db"))), il(f_cos(d.get("vendor_cosine"))),
                           il(f_cos(d.get("builtin_cosine")))] for d in dis[:10]], "lrrrrr"))
    fused = v.fused_away
    if fused:
        out.append(Para(il(f"{len(fused)} ONNX tensor(s) were fused away by the toolkit (no per-tensor result), "
                           "e.g. ", join([il(c(x)) for x in fused[:5]]), ".")))
    return out
