"""The Export lists section (bisect): the promotion set for each toolchain."""

from __future__ import annotations

from qdebug.report.blocks import Block, Code, Details, Heading, Para, b, c, il, join
from qdebug.report.context import Ctx

EXPORT_TITLES = {
    "atc": "HiSilicon ATC (--high_precision_layer)", "qtable": "TPU-MLIR quantize table",
    "horizon": "Horizon (node_info)", "trt": "TensorRT (polygraphy)", "trtexec": "TensorRT (trtexec)",
    "ort": "onnxruntime quantize_static", "nncf": "OpenVINO NNCF", "rknn": "rknn-toolkit2 custom_quantize_layers",
}


def exports(ctx: Ctx) -> list[Block]:
    """The promotion set in each toolchain's syntax, collapsed."""
    if ctx.kind != "bisect":
        return []
    ex = ctx.bis.exports or {}
    if not ex:
        return []
    out: list[Block] = [Heading(2, "Export lists"),
                        Para(il(f"The promotion set in {len(ex)} toolchains' syntax (",
                                join([il(c(k)) for k in ex]), ")."))]
    inner: list[Block] = []
    for k, text in ex.items():
        inner.append(Para(il(b(EXPORT_TITLES.get(k, k)), " ", c(k))))
        inner.append(Code(text.rstrip("\n")))
    out.append(Details("Export lists for every toolchain", inner))
    return out
