"""`write_report`: a compare or bisect result -> report.md + report.html + *.png in one folder.

The Markdown is for pasting into a GitHub/GitLab issue (images next to it), the HTML is one
self-contained file to attach. Every file is written atomically; the input JSON is never overwritten.
"""

from __future__ import annotations

import os
from pathlib import Path

from qdebug.errors import QDebugError
from qdebug.fileio import atomic_write
from qdebug.report import markdown as md
from qdebug.report.html import to_html
from qdebug.report.schema import load_result, validate_result

WHY_SAMPLES = 2  # inputs re-run for the why-plots


def write_report(doc_or_path: dict | str | Path, out_dir: str | Path, model: str | None = None,
                 data: str | None = None, top: int = 15, why: bool = True) -> dict[str, str]:
    """Write report.md, report.html and the plots into `out_dir`; return {"md", "html", "<png name>": path}."""
    src: Path | None = None
    if isinstance(doc_or_path, dict):
        doc = doc_or_path
        validate_result(doc, "<result>")
    else:
        src = Path(doc_or_path)
        doc = load_result(src)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise QDebugError("the report output must be a folder, but a file has that name", file=str(out),
                          fix="pass -o NEW_FOLDER (report.md, report.html and the plots go inside)")
    if top < 1:
        raise QDebugError("--top must be at least 1", where="--top", fix="pass --top 15")
    ctx = md.Ctx(doc=doc, top=top)
    images = _plots(ctx, model, data, src.parent if src else None, why)
    blocks = md.build_blocks(ctx)
    text = md.to_markdown(blocks)
    warn = md.size_note(text)
    if warn:
        blocks.insert(1, md.Para(md.il(md.b("Note: "), warn)))
        text = md.to_markdown(blocks)
    protect = tuple(str(p) for p in (src, model, data) if p)
    paths: dict[str, str] = {}
    for name, png in images.items():
        paths[name] = _write(out / name, png, protect)
    paths["md"] = _write(out / "report.md", text, protect)
    title = f"qdebug report: {Path(doc['model'].get('path') or 'model').name}"
    paths["html"] = _write(out / "report.html", to_html(blocks, images, title), protect)
    return paths


def _write(path: Path, data: str | bytes, protect: tuple[str, ...]) -> str:
    """Atomic write, then the usual file mode (reports are meant to be shared; temp files are 0600)."""
    p = atomic_write(path, data, protect=protect)
    mask = os.umask(0)
    os.umask(mask)
    try:
        os.chmod(p, 0o666 & ~mask)
    except OSError:  # pragma: no cover - e.g. a filesystem without modes
        pass
    return str(p)


def _plots(ctx: md.Ctx, model: str | None, data: str | None, base: Path | None, why: bool) -> dict[str, bytes]:
    """Draw the plots (when matplotlib is there) into ctx.images/ctx.notes; return {file name: PNG bytes}."""
    from qdebug.report import plots

    if not plots.available():
        ctx.notes.append(md.il("matplotlib is not installed, so this report has tables only (install the plot "
                               "extra: ", md.c("pip install 'qdebug[plot]'"), ")."))
        return {}
    doc, before, after = ctx.doc, ctx.before, ctx.after
    images: dict[str, bytes] = {}
    promote = doc.get("promote_precision", "int16")
    after_label = f"after promoting {len(doc['result']['set'])} op(s) to {promote}" if after else ""
    marks = plots.Marks(after_label=after_label or "after promotion")
    for key, _typ, _why in md.sensitive_ops(ctx, 5):
        xi = md._op_index(before, key)
        if xi is not None:
            marks.sensitive.append((key, xi))
    if ctx.kind == "bisect":
        for key in doc["result"]["set"]:
            xi = md._op_index(before, key)
            if xi is not None:
                marks.promoted.append((key, xi))
        cut = doc["first_bad_cut"]
        if cut["tensor"] and cut["index"] is not None:
            marks.cut = (cut["tensor"] + (f".{cut['part']}" if cut.get("part") else ""), int(cut["index"]))
        if cut.get("metric") in ("snr_db", "cosine"):
            marks.bound = (cut["metric"], float(cut["bound"]))
    name = Path(doc["model"].get("path") or "model").name
    images["snr.png"] = plots.snr_plot(before, after, marks, f"Error along the graph: {name}")
    ctx.images.append(("snr", "snr.png", "SNR and cosine along the topological order",
                       "Cumulative SNR (line) and isolated SNR (dots) of every quantized tensor in execution "
                       "order; numbered dashed lines: the most sensitive ops; red triangles: output parts"
                       + ("; green: after the promotion" if after else "")
                       + ("; dash-dot red line: the first bad cut" if marks.cut else "") + "."))
    bounds = {}
    if ctx.kind == "bisect":
        bounds = {cl["ref"]: cl["bound"] for cl in doc["target"]["clauses"] if cl["metric"] == "snr_db"}
    if ctx.kind == "bisect":
        res = doc["result"]["before"]
        failing = {cl["ref"] for cl in doc["target"]["clauses"] if not md._passes(cl, res.get(md._clause_key(cl)))}
    else:
        failing = {ref for ref, _ in md.default_failures(before)}
    images["parts.png"] = plots.parts_plot(before, after, bounds, after_label or "after promotion", failing)
    ctx.images.append(("parts", "parts.png", "SNR of each output and output part",
                       "Cumulative SNR per graph output and Concat part (cosine in brackets; red: fails the "
                       "target)"
                       + ("; black ticks: the target's SNR bounds" if bounds else "") + "."))
    if not why:
        ctx.notes.append("why-plots not drawn (--no-why).")
        return images
    ops = md.why_ops(ctx, 3)
    data_list, notes = plots.collect_why(doc, ops, model, data, base, WHY_SAMPLES)
    ctx.notes.extend(notes)
    for k, w in enumerate(data_list, start=1):
        fname = f"why-{k}.png"
        images[fname] = plots.why_plot(w)
        ctx.images.append(("why", fname, f"Why {w.op} loses accuracy",
                           f"{w.op} ({w.reason}): left, the float values at {w.point_desc} against the represented "
                           "int range (red dashed lines; values outside are clipped) and the step; middle, float vs "
                           "quantized output; right, a zoom where half of the values lie (a staircase coarser than "
                           "the spread means the step is too coarse)."))
    return images
