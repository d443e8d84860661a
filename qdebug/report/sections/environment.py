"""The Environment section: the versions a maintainer needs to reproduce the run."""

from __future__ import annotations

from qdebug.report.blocks import Block, Heading, Table, c, il
from qdebug.report.context import Ctx
from qdebug.report.format import f_secs

STANDARD_ENV = ("qdebug", "onnx", "onnxruntime", "numpy", "python", "os")
_QUANT_STD = {"backend", "profile", "quantize_at", "fuse", "scheme", "calib", "overrides", "groups", "unsupported",
              "calib_mapping", "judge"}


def environment(ctx: Ctx) -> list[Block]:
    """Versions of qdebug, its dependencies, the backends and toolkits, and when the result was written."""
    from qdebug import __version__

    doc = ctx.res
    env = dict(doc.environment or ctx.cmp.environment or {})
    rows = [[il(k), il(c(str(env[k])))] for k in STANDARD_ENV if k in env]
    for k, v in env.items():
        if k not in STANDARD_ENV:
            rows.append([il(k), il(c(str(v)))])
    for k, v in doc.quant.extra.items():  # versions reported by non-simulator backends
        if k not in _QUANT_STD and not isinstance(v, (dict, list)):
            rows.append([il(f"backend {k}"), il(c(str(v)))])
    vendor = ctx.cmp.vendor
    if vendor:
        rows.append([il(f"{vendor.backend} toolkit"), il(c(str(vendor.toolkit or "?")))])
        if vendor.platform:
            rows.append([il("vendor platform"), il(c(str(vendor.platform)))])
    judge = doc.quant.judge or {}
    if judge and judge.get("backend") not in (None, "sim"):
        for k in ("backend", "platform", "quantized_algorithm", "toolkit", "version", "builds"):
            if judge.get(k) is not None:
                rows.append([il(f"judge {k}"), il(c(str(judge[k])))])
    pf = getattr(doc, "patched_file", None)
    if pf:
        rows.append([il("vendor file format"), il(c(pf.format))])
    rows.append([il("result written"), il(f"{doc.created} by qdebug {doc.qdebug_version}")])
    rows.append([il("report written by"), il(f"qdebug {__version__}")])
    timing = ctx.cmp.timing or {}
    if timing.get("total_s") is not None:
        rows.append([il("compare time"), il(f_secs(timing["total_s"]))])
    return [Heading(2, "Environment"), Table(["component", "version"], rows)]
