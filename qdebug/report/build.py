"""`write_report`: a compare or bisect result -> report.md + report.html + *.png in one folder.

The Markdown is for pasting into a GitHub/GitLab issue (images next to it), the HTML is one
self-contained file to attach. Everything that needs the model (why-plot values, detection pictures)
comes in precomputed as an `Explanation`; this module only draws plots from data and writes files.
Every file is written atomically; the input JSON is never overwritten.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from qdebug.errors import QDebugError
from qdebug.fileio import atomic_write
from qdebug.report import context as cx
from qdebug.report.blocks import Para, b, c, il
from qdebug.report.context import Ctx
from qdebug.report.html import to_html
from qdebug.report.markdown import size_note, to_markdown
from qdebug.report.sections import build_blocks
from qdebug.results.explain import Explanation
from qdebug.results.schema import load_result, validate_result

WHY_OPS = 3  # ops explained by a why-plot
PNG_LIMIT = 200_000  # bytes per picture; larger detection pictures are reduced to a palette, then downscaled


def check_output(out_dir: str | Path, top: int = 15) -> None:
    """Refuse a report folder that is a file and a --top below 1 (before any slow work)."""
    if not str(out_dir):
        raise QDebugError("empty report folder name", where="-o", fix="pass -o NEW_FOLDER")
    out = Path(out_dir)
    try:
        exists = out.exists()
    except OSError as exc:  # a name over 255 bytes, a path through a file
        raise QDebugError(f"cannot use the report folder ({exc.strerror})", file=str(out_dir),
                          fix="use a shorter path through existing folders") from None
    if exists and not out.is_dir():
        raise QDebugError("the report output must be a folder, but a file has that name", file=str(out),
                          fix="pass -o NEW_FOLDER (report.md, report.html and the plots go inside)")
    if top < 1:
        raise QDebugError("--top must be at least 1", where="--top", fix="pass --top 15")


def why_ops(doc: dict, wanted: bool = True) -> list[tuple[str, str]] | None:
    """(op key, reason) of the ops the report explains with why-plots; None when none will be drawn.

    None (nothing to re-run) when not `wanted` or without matplotlib; hand the result to
    `qdebug.compare.explain.explain`.
    """
    from qdebug.report import plots

    if not wanted or not plots.available():
        return None
    return cx.why_ops(Ctx(res=cx.typed_result(doc)), WHY_OPS)


def write_report(doc_or_path: dict | str | Path, out_dir: str | Path, explained: Explanation | None = None,
                 top: int = 15, protect: Sequence[str | Path | None] = ()) -> dict[str, str]:
    """Write report.md, report.html and the plots into `out_dir`; return {"md", "html", "<png name>": path}.

    `explained` holds the re-run's values and pictures (None: no why-plots, no detection pictures);
    `protect` lists further input files (model, input set) the report must never overwrite.
    """
    src: Path | None = None
    if isinstance(doc_or_path, dict):
        doc = doc_or_path
        validate_result(doc, "<result>")
    else:
        src = Path(doc_or_path)
        doc = load_result(src)
    check_output(out_dir, top)
    out = Path(out_dir)
    explained = explained or Explanation()
    ctx = Ctx(res=cx.typed_result(doc), top=top)
    images = _plots(ctx, explained)
    images.update(_detection_images(ctx, explained))
    blocks = build_blocks(ctx)
    text = to_markdown(blocks)
    warn = size_note(text)
    if warn:
        blocks.insert(1, Para(il(b("Note: "), warn)))
        text = to_markdown(blocks)
    keep = tuple(str(p) for p in (src, *protect) if p)
    paths: dict[str, str] = {}
    for name, png in images.items():
        paths[name] = _write(out / name, png, keep)
    paths["md"] = _write(out / "report.md", text, keep)
    title = f"qdebug report: {Path(ctx.res.model.path or 'model').name}"
    paths["html"] = _write(out / "report.html", to_html(blocks, images, title), keep)
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


def _plots(ctx: Ctx, explained: Explanation) -> dict[str, bytes]:
    """Draw the plots (when matplotlib is there) into ctx.images/ctx.notes; return {file name: PNG bytes}."""
    from qdebug.report import plots

    if not plots.available():
        ctx.notes.append(il("matplotlib is not installed, so this report has no plots (install the plot "
                            "extra: ", c("pip install 'qdebug[plot]'"), ")."))
        return {}
    res, before, after = ctx.res, ctx.cmp, ctx.cmp_after
    images: dict[str, bytes] = {}
    after_label = f"after promoting {len(ctx.bis.result.set)} op(s) to {ctx.bis.promote_precision}" if after else ""
    marks = plots.Marks(after_label=after_label or "after promotion")
    for key, _typ, _why in cx.sensitive_ops(ctx, 5):
        xi = cx.op_index(before, key)
        if xi is not None:
            marks.sensitive.append((key, xi))
    if ctx.kind == "bisect":
        for key in ctx.bis.result.set:
            xi = cx.op_index(before, key)
            if xi is not None:
                marks.promoted.append((key, xi))
        cut = ctx.bis.first_bad_cut
        if cut.tensor and cut.index is not None:
            marks.cut = (cut.tensor + (f".{cut.part}" if cut.part else ""), int(cut.index))
        if cut.metric in ("snr_db", "cosine"):
            marks.bound = (cut.metric, float(cut.bound))
    name = Path(res.model.path or "model").name
    images["snr.png"] = plots.snr_plot(before, after, marks, f"Error along the graph: {name}")
    ctx.images.append(("snr", "snr.png", "SNR and cosine along the topological order",
                       "Cumulative SNR (line) and isolated SNR (dots) of every quantized tensor in execution "
                       "order; numbered dashed lines: the most sensitive ops; red triangles: output parts"
                       + ("; green: after the promotion" if after else "")
                       + ("; dash-dot red line: the first bad cut" if marks.cut else "") + "."))
    bounds = {}
    if ctx.kind == "bisect":
        bounds = {cl.ref: cl.bound for cl in ctx.bis.target.clauses if cl.metric == "snr_db"}
    if ctx.kind == "bisect":
        vals = ctx.bis.result.before
        failing = {cl.ref for cl in ctx.bis.target.clauses if not cl.passes(vals.get(cx.clause_key(cl)))}
    else:
        failing = {ref for ref, _ in cx.default_failures(before)}
    images["parts.png"] = plots.parts_plot(before, after, bounds, after_label or "after promotion", failing)
    ctx.images.append(("parts", "parts.png", "SNR of each output and output part",
                       "Cumulative SNR per graph output and Concat part (cosine in brackets; red: fails the "
                       "target)"
                       + ("; black ticks: the target's SNR bounds" if bounds else "") + "."))
    if explained.why is None:
        ctx.notes.append("why-plots not drawn (--no-why).")
        return images
    ctx.notes.extend(explained.why_notes)
    for k, w in enumerate(explained.why, start=1):
        fname = f"why-{k}.png"
        images[fname] = plots.why_plot(w)
        ctx.images.append(("why", fname, f"Why {w.op} loses accuracy",
                           f"{w.op} ({w.reason}): left, the float values at {w.point_desc} against the represented "
                           "int range (red dashed lines; values outside are clipped) and the step; middle, float vs "
                           "quantized output; right, a zoom where half of the values lie (a staircase coarser than "
                           "the spread means the step is too coarse)."))
    return images


def _fit_png(data: bytes, limit: int = PNG_LIMIT) -> bytes:
    """Keep a picture under `limit` bytes: an adaptive 256-colour palette first, then downscaling."""
    if len(data) <= limit:
        return data
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as src:
        im = src.convert("RGB")
    scale = 1.0
    best = data
    for _ in range(8):
        cur = im if scale == 1.0 else im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                                                Image.LANCZOS)
        buf = io.BytesIO()
        cur.quantize(256, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)
        best = buf.getvalue()
        if len(best) <= limit:
            return best
        scale *= max(0.5, min(0.9, (limit / len(best)) ** 0.5 * 0.95))
    return best


def _detection_images(ctx: Ctx, explained: Explanation) -> dict[str, bytes]:
    """Place the float-vs-quantized (and float-vs-promoted) example pictures; notes for those that are missing."""
    det = cx.detection_section(ctx.res)
    if det is None:
        return {}
    examples = [ex for ex in det.examples or [] if isinstance(ex, dict)]
    if not examples:
        ctx.det_notes.append("no example pictures: the quantized run lost or added no detection on any image"
                             if not det.worst_images
                             else "no example pictures in this result.")
        return {}
    ctx.det_notes.extend(explained.picture_notes)
    if explained.pictures is None:
        if not explained.picture_notes:
            ctx.det_notes.append("detection pictures not drawn (the report was written without the input images).")
        return {}
    images: dict[str, bytes] = {}
    per_image = {r.get("image"): r for r in det.per_image or [] if isinstance(r, dict)}
    for pic in explained.pictures:
        if not 1 <= pic.example <= len(examples):
            continue
        ex = examples[pic.example - 1]
        k, promoted = pic.example, pic.promoted
        name = str(ex.get("image") or Path(str(ex.get("path") or f"image {k}")).name)
        row = per_image.get(ex.get("image")) or {}
        fname = f"detections-{k}{'-promoted' if promoted else ''}.png"
        images[fname] = _fit_png(pic.png)
        lost = row.get("promoted_lost" if promoted else "lost")
        added = row.get("promoted_added" if promoted else "added")
        counts = (f": {row.get('float', '?')} float detections, {lost} lost, {added} added"
                  if lost is not None and added is not None else "")
        what = "promoted" if promoted else "quantized"
        ctx.images.append((cx.DETECTION_GROUP, fname, f"{name}: float vs {what} detections",
                           f"{name}: float (green) vs {'the promotion set applied' if promoted else what} "
                           f"(red, dashed){counts}."))
    missing = explained.missing_pictures
    if missing:
        shown = ", ".join(missing[:3])
        ctx.det_notes.append(il(f"detection pictures skipped for {len(missing)} example image(s) ({shown}): the "
                                "file is not at the stored path nor in the input set (pass ", c("--data FOLDER"),
                                " with the images)."))
    return images
