"""Report plots (matplotlib, the optional `plot` extra; imported lazily, drawn with the Agg canvas).

- `snr_plot`: cumulative and isolated SNR (and cosine) along the topological order, with the sensitive
  ops, the promoted ops and the first bad cut marked, and the after-promotion run overlaid;
- `parts_plot`: SNR of every graph output and output part, before/after promotion;
- `why_plot`: for one op, float-vs-quantized values from a re-run (`qdebug.compare.explain`): where the
  values sit against the int8 grid (range clipping) and how coarse the step is where most values live.

Every function returns PNG bytes (about 110 dpi, well under 200 KB); the caller writes them.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qdebug.results.compare import CompareResult, TensorRow
from qdebug.results.explain import WhyData
from qdebug.results.values import Metrics

DPI = 110
SNR_CAP = 80.0  # SNR above this (incl. the 999 "identical" sentinel) is drawn at the cap
MAX_POINTS = 12000  # scatter points per series
C_BEFORE, C_ISO, C_AFTER, C_BAD, C_MARK = "#1f5fa8", "#e08a1e", "#2a9d4b", "#c62828", "#6d6d6d"


def available() -> bool:
    """True when matplotlib can be imported (the `plot` extra is installed)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Marks:
    """What to mark on the along-the-graph plot: (label, node index) pairs."""

    sensitive: list[tuple[str, int]] = field(default_factory=list)
    promoted: list[tuple[str, int]] = field(default_factory=list)
    cut: tuple[str, int] | None = None
    bound: tuple[str, float] | None = None  # (metric, value) threshold line, e.g. ("snr_db", 20)
    after_label: str = "after promotion"


def _figure(w: float, h: float, rows: int = 1, cols: int = 1, **kw: Any) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    return fig, axes


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    data = buf.getvalue()
    if len(data) > 180_000:  # shrink to a palette image (same look, a third of the size)
        from PIL import Image

        im = Image.open(io.BytesIO(data)).convert("RGB").quantize(colors=255, method=Image.Quantize.MEDIANCUT)
        out = io.BytesIO()
        im.save(out, format="PNG", optimize=True)
        data = out.getvalue()
    return data


def short_name(name: str, n: int = 28) -> str:
    """A node name shortened for plot labels, keeping its tail (the informative part)."""
    return name if len(name) <= n else "…" + name[-(n - 1):]


def _snr(v: float | None) -> float:
    if v is None:
        return math.nan
    return min(float(v), SNR_CAP)


def _cos_dist(v: float | None) -> float:
    if v is None:
        return math.nan
    return max(1.0 - float(v), 1e-8)


def _cos_label(d: float, _pos: Any = None) -> str:
    if d >= 1.0:
        return f"{1 - d:g}"
    k = -math.log10(d)
    if abs(k - round(k)) < 1e-6:
        return "0." + "9" * int(round(k))
    return ""


# ------------------------------------------------------------------ along the graph
def snr_plot(before: CompareResult, after: CompareResult | None = None, marks: Marks | None = None, title: str = "") -> bytes:
    """Cumulative/isolated SNR and cosine of every tensor along the topological order."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    marks = marks or Marks()
    fig, axes = _figure(11.0, 6.6, 2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    ax, axc = axes[0, 0], axes[1, 0]
    rows = _line_rows(before)
    x = np.array([t.index for t in rows], dtype=float)
    cum = np.array([_snr(t.cumulative.snr_db) for t in rows])
    iso_rows = [t for t in rows if t.quantized and (t.isolated.snr_db or 0) < 999]
    ax.plot(x, cum, color=C_BEFORE, lw=1.6, label="cumulative (whole model quantized)")
    ax.scatter([t.index for t in iso_rows], [_snr(t.isolated.snr_db) for t in iso_rows], s=11,
               color=C_ISO, zorder=3, label="isolated (only this op quantized)")
    axc.plot(x, [_cos_dist(t.cumulative.cosine) for t in rows], color=C_BEFORE, lw=1.6, label="cumulative")
    idx = {t.tensor: t.index for t in before.tensors}
    parts = [p for p in before.parts if p.tensor in {o.tensor for o in before.outputs}]
    if after is not None:
        arows = _line_rows(after)
        ax.plot([t.index for t in arows], [_snr(t.cumulative.snr_db) for t in arows], color=C_AFTER,
                lw=1.5, ls=(0, (4, 2)), label=f"cumulative, {marks.after_label}")
        axc.plot([t.index for t in arows], [_cos_dist(t.cumulative.cosine) for t in arows],
                 color=C_AFTER, lw=1.5, ls=(0, (4, 2)), label=marks.after_label)
    for k, p in enumerate(parts):  # output parts (a crushed score part hides inside a healthy tensor)
        xi = idx.get(p.tensor, x.max() if len(x) else 0)
        lab = "output part (before)" if k == 0 else None
        ax.scatter([xi], [_snr(p.cumulative.snr_db)], marker="v", s=55, color=C_BAD, zorder=4, label=lab)
        axc.scatter([xi], [_cos_dist(p.cumulative.cosine)], marker="v", s=55, color=C_BAD, zorder=4)
        ax.annotate(f"{p.tensor}.{p.part}", (xi, _snr(p.cumulative.snr_db)), textcoords="offset points",
                    xytext=(-7, 0), ha="right", va="center", fontsize=8, color=C_BAD)
        if after is not None:
            ap = next((q for q in after.parts if q.tensor == p.tensor and q.part == p.part),
                      None)
            if ap is not None:
                xa = xi + 0.012 * max(float(x.max() - x.min()) if len(x) else 1.0, 1.0)
                ax.scatter([xa], [_snr(ap.cumulative.snr_db)], marker="^", s=55, color=C_AFTER, zorder=4,
                           label="output part (after)" if k == 0 else None)
                axc.scatter([xa], [_cos_dist(ap.cumulative.cosine)], marker="^", s=55, color=C_AFTER,
                            zorder=4)
    finite = [v for v in np.concatenate([cum, [_snr(p.cumulative.snr_db) for p in parts]]) if v == v]
    lo = min(finite) if finite else 0.0
    ax.set_ylim(min(0.0, lo - 3), SNR_CAP + 6)
    if marks.bound and marks.bound[0] == "snr_db":
        ax.axhline(marks.bound[1], color=C_BAD, lw=0.9, ls=":", label=f"cut threshold {marks.bound[1]:g} dB")
    if marks.bound and marks.bound[0] == "cosine":
        axc.axhline(_cos_dist(marks.bound[1]), color=C_BAD, lw=0.9, ls=":")
    span = max(float(x.max() - x.min()) if len(x) else 1.0, 1.0)
    last = -math.inf
    for k, (_lab, xi) in enumerate(sorted(marks.sensitive, key=lambda m: m[1])):
        for a in (ax, axc):
            a.axvline(xi, color=C_MARK, lw=0.8, ls="--", zorder=1)
        num = 1 + marks.sensitive.index((_lab, xi))
        y = SNR_CAP + 3 if xi - last > 0.025 * span or k % 2 == 0 else SNR_CAP - 3
        last = xi
        ax.text(xi, y, str(num), fontsize=7, ha="center", va="center", color="black", zorder=6,
                bbox={"boxstyle": "circle,pad=0.2", "fc": "#ffe9a8", "ec": C_MARK, "lw": 0.6})
    if marks.promoted:
        ax.scatter([xi for _, xi in marks.promoted], [SNR_CAP - 8] * len(marks.promoted), marker="D", s=36,
                   color=C_AFTER, edgecolor="black", lw=0.5, zorder=5, label="promoted op")
    if marks.cut is not None:
        lab, xi = marks.cut
        for a in (ax, axc):
            a.axvline(xi, color=C_BAD, lw=1.6, ls="-.", zorder=2)
        left = len(x) and xi - x.min() > 0.35 * span  # room on the left of the line?
        ax.text(xi, SNR_CAP * 0.72, f"first bad cut  \n{short_name(lab, 26)}  " if left
                else f"  first bad cut\n  {short_name(lab, 26)}", color=C_BAD, fontsize=8,
                ha="right" if left else "left", va="center")
    ax.set_ylabel("SNR (dB, higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, ncol=2, framealpha=0.9)
    ax.set_title(title or "Error along the graph", fontsize=11, loc="left")
    axc.set_yscale("log")
    axc.invert_yaxis()
    axc.yaxis.set_major_locator(LogLocator(base=10, numticks=12))
    axc.yaxis.set_major_formatter(FuncFormatter(_cos_label))
    axc.yaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
    axc.set_ylabel("cosine (log scale)")
    xlabel = "op position in topological order (#)"
    if marks.sensitive:
        names = "   ".join(f"{k + 1} = {short_name(lab, 34)}" for k, (lab, _) in enumerate(marks.sensitive[:6]))
        xlabel += f"\nsensitive ops: {names}"
    axc.set_xlabel(xlabel, fontsize=9)
    axc.grid(alpha=0.3)
    axc.legend(loc="lower left", fontsize=8, framealpha=0.9)
    return _png(fig)


def _line_rows(compare: CompareResult) -> list[TensorRow]:
    """Tensors the NPU stores (quantized op outputs) plus graph outputs: the error trajectory."""
    outs = {o.tensor for o in compare.outputs}
    rows = [t for t in compare.tensors if t.index >= 0 and (t.quantized or t.tensor in outs)]
    return rows or [t for t in compare.tensors if t.index >= 0]


# --------------------------------------------------------------------- output parts
def parts_plot(before: CompareResult, after: CompareResult | None = None, bounds: dict[str, float] | None = None,
               after_label: str = "after promotion", failing: set[str] | None = None) -> bytes:
    """Horizontal bars: SNR of each graph output and output part, before (and after) promotion."""
    rows: list[tuple[str, Metrics, Metrics | None]] = []
    amap: dict[str, Metrics | None] = {}
    if after is not None:
        for o in after.outputs:
            amap[o.tensor] = o.cumulative
            for p in o.parts:
                amap[f"{p.tensor}.{p.part}"] = p.cumulative
    for o in before.outputs:
        rows.append((o.tensor, o.cumulative, amap.get(o.tensor)))
        for p in o.parts:
            ref = f"{p.tensor}.{p.part}"
            rows.append((ref, p.cumulative, amap.get(ref)))
    n = max(len(rows), 1)
    fig, axes = _figure(9.0, 1.1 + 0.55 * n * (2 if after is not None else 1))
    ax = axes[0, 0]
    h = 0.38 if after is not None else 0.6
    ys = np.arange(len(rows))[::-1]
    seen: set[str] = set()
    for y, (ref, b, a) in zip(ys, rows, strict=True):
        bad = ref in (failing or set())
        vals = [(b, C_BAD if bad else C_BEFORE, ("fails the target (before)" if bad else
                                                ("before" if after is not None else "cumulative")),
                 +h / 2 if after is not None else 0)]
        if a is not None:
            vals.append((a, C_AFTER, after_label, -h / 2))
        for m, color, lab, off in vals:
            v = _snr(m.snr_db)
            v0 = 0.0 if v != v else v
            ax.barh(y + off, v0, height=h, color=color, label=lab if lab not in seen else None)
            seen.add(lab)
            cos = "-" if m.cosine is None else f"{m.cosine:.5f}"
            txt = ("n/a" if v != v else ("inf" if (m.snr_db or 0) >= 999 else f"{m.snr_db:.1f} dB"))
            tick = (bounds or {}).get(ref)
            xt = max(v0, tick if tick is not None and abs(tick - v0) < 4 else v0)
            ax.text(xt + 0.8, y + off, f"{txt}  (cos {cos})", va="center", fontsize=8)
        if bounds and ref in bounds:
            ax.plot([bounds[ref]] * 2, [y - 0.45, y + 0.45], color="black", lw=2)
    if bounds:
        ax.plot([], [], color="black", lw=2, label="target (snr_db)")
    ax.set_yticks(ys, [r[0] for r in rows], fontsize=9)
    top = max([_snr(r[1].snr_db) for r in rows if r[1].snr_db is not None] + [40.0])
    ax.set_xlim(0, min(SNR_CAP, top) * 1.35 + 5)
    ax.set_xlabel("cumulative SNR (dB, higher is better)")
    ax.set_title("Graph outputs and output parts", fontsize=11, loc="left")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


# ------------------------------------------------------------------------ why plots
def _subsample(x: np.ndarray, *ys: np.ndarray | None, n: int = MAX_POINTS) -> tuple[np.ndarray, ...]:
    if x.size <= n:
        return (x, *ys)
    rng = np.random.default_rng(0)
    keep = rng.choice(x.size, n, replace=False)
    keep = np.union1d(keep, [int(np.argmin(x)), int(np.argmax(x))])
    return (x[keep], *[None if y is None else y[keep] for y in ys])


def densest_window(x: np.ndarray, frac: float = 0.5) -> tuple[float, float]:
    """Shortest interval holding `frac` of the values (where most of the data lives)."""
    v = np.sort(x.ravel())
    if v.size < 4:
        return float(v.min()), float(v.max())
    k = max(1, int(v.size * frac))
    widths = v[k:] - v[:-k]
    i = int(np.argmin(widths))
    lo, hi = float(v[i]), float(v[i + k])
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):  # a spike (e.g. ReLU zeros): fall back to the 5-95 % range
        lo, hi = float(np.percentile(v, 5)), float(np.percentile(v, 95))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def why_plot(w: WhyData) -> bytes:
    """Three panels: histogram vs the int grid, float vs quantized scatter, zoom where most values are."""
    fig, axes = _figure(13.0, 4.1, 1, 3)
    ah, asc, az = axes[0]
    pname = f"{w.bits}-bit" if w.bits else "float"
    # 1: histogram of the values at the quantization point, with the represented range
    xp = w.x_point.ravel()
    span_lo = min(float(xp.min()), w.lo if w.lo is not None else float(xp.min()))
    span_hi = max(float(xp.max()), w.hi if w.hi is not None else float(xp.max()))
    bins = np.linspace(span_lo, span_hi if span_hi > span_lo else span_lo + 1, 121)
    ah.hist(xp, bins=bins, color=C_BEFORE, log=True)
    info = [f"float range [{xp.min():.4g}, {xp.max():.4g}]"]
    if w.bits and w.lo is not None and w.hi is not None and w.step:
        ah.axvspan(w.lo, w.hi, color=C_AFTER, alpha=0.08)
        for b in (w.lo, w.hi):
            ah.axvline(b, color=C_BAD, lw=1.2, ls="--")
        clipped = float(np.mean((xp < w.lo - w.step / 2) | (xp > w.hi + w.step / 2))) * 100
        wl, wh = densest_window(xp)
        info += [f"int{w.bits} range [{w.lo:.4g}, {w.hi:.4g}]", f"int{w.bits} step {w.step:.4g}",
                 f"clipped: {clipped:.2g} % of values",
                 f"half the values span {(wh - wl) / w.step:.3g} steps"]
    else:
        info.append("no integer quantization here (float compute)")
    ah.text(0.98, 0.97, "\n".join(info), transform=ah.transAxes, ha="right", va="top", fontsize=8,
            bbox={"boxstyle": "round", "fc": "white", "ec": "#999999", "alpha": 0.9})
    ah.set_title(f"values at {w.point_desc} vs the {pname} grid", fontsize=9, loc="left")
    ah.set_xlabel(f"float value of {short_name(w.point_tensor, 40)}", fontsize=8)
    ah.set_ylabel("count (log)", fontsize=8)
    # 2: float vs quantized over the whole range
    xs, ys, ya = _subsample(w.x_out.ravel(), w.y_out.ravel(), None if w.y_after is None else w.y_after.ravel())
    lo, hi = float(xs.min()), float(xs.max())
    asc.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls=":", label="y = x (exact)")
    if ya is not None:
        asc.scatter(xs, ya, s=3, color=C_AFTER, alpha=0.5, lw=0, label=w.after_label, rasterized=True)
    asc.scatter(xs, ys, s=3, color=C_BEFORE, alpha=0.5, lw=0, label=w.run_label, rasterized=True)
    snr = []
    if w.cum_snr is not None:
        snr.append(f"cumulative SNR {w.cum_snr:.1f} dB")
    if w.iso_snr is not None:
        snr.append(f"isolated SNR {w.iso_snr:.1f} dB")
    if snr:
        asc.text(0.02, 0.97, "\n".join(snr), transform=asc.transAxes, ha="left", va="top", fontsize=8,
                 bbox={"boxstyle": "round", "fc": "white", "ec": "#999999", "alpha": 0.9})
    asc.set_title(f"{short_name(w.op, 40)} ({w.op_type}): float vs quantized", fontsize=9, loc="left")
    asc.set_xlabel(f"float {short_name(w.out_tensor, 40)}", fontsize=8)
    asc.set_ylabel("quantized", fontsize=8)
    asc.legend(loc="lower right", fontsize=7, markerscale=4)
    # 3: zoom on the densest half of the values, with the output's int grid
    wl, wh = densest_window(w.x_out)
    pad = (wh - wl) * 0.15
    wl, wh = wl - pad, wh + pad
    sel = (w.x_out.ravel() >= wl) & (w.x_out.ravel() <= wh)
    xz, yz, az_ = _subsample(w.x_out.ravel()[sel], w.y_out.ravel()[sel],
                             None if w.y_after is None else w.y_after.ravel()[sel])
    az.plot([wl, wh], [wl, wh], color="black", lw=0.8, ls=":")
    if az_ is not None:
        az.scatter(xz, az_, s=4, color=C_AFTER, alpha=0.5, lw=0, rasterized=True)
    az.scatter(xz, yz, s=4, color=C_BEFORE, alpha=0.5, lw=0, rasterized=True)
    note = f"half the values lie in [{wl + pad:.3g}, {wh - pad:.3g}]"
    if w.out_grid is not None:
        scale, zp, qmin, qmax = w.out_grid
        ylo = min(wl, float(yz.min()) if yz.size else wl)
        yhi = max(wh, float(yz.max()) if yz.size else wh)
        q0, q1 = math.ceil(ylo / scale + zp), math.floor(yhi / scale + zp)
        q0, q1 = max(q0, qmin), min(q1, qmax)
        if q1 - q0 <= 40:
            for q in range(q0, q1 + 1):
                az.axhline((q - zp) * scale, color=C_BAD, lw=0.5, alpha=0.5)
        note += f"\n= {(wh - wl - 2 * pad) / scale:.3g} output steps of {scale:.3g}"
        if q1 - q0 <= 40:
            note += " (red lines: int levels)"
    az.text(0.02, 0.97, note, transform=az.transAxes, ha="left", va="top", fontsize=8,
            bbox={"boxstyle": "round", "fc": "white", "ec": "#999999", "alpha": 0.9})
    az.set_title("zoom: where half of the values are", fontsize=9, loc="left")
    az.set_xlim(wl, wh)
    az.set_xlabel("float", fontsize=8)
    az.set_ylabel("quantized", fontsize=8)
    for a in (ah, asc, az):
        a.tick_params(labelsize=7)
        a.grid(alpha=0.25)
    fig.suptitle(f"Why {w.op} loses accuracy ({w.reason})", fontsize=10, x=0.01, ha="left")
    return _png(fig)
