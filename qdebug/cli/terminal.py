"""All terminal output of the CLI: compare, vendor, bisect and detection summaries, and the progress bar.

Tables keep their full layout when it fits the console; on a narrow console they switch to a compact
layout and shorten op/tensor names, keeping the distinguishing tail (see `fit_names`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.markup import escape
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from qdebug.report.format import f_cos, f_det, f_g, f_jump, f_snr
from qdebug.results.values import Metrics

if TYPE_CHECKING:
    from rich.progress import Progress

    from qdebug.results.bisect import BisectResult
    from qdebug.results.compare import CompareResult, TensorRow
    from qdebug.results.detection import DetectionResult
    from qdebug.results.vendor import VendorComparison

err_console = Console(stderr=True, highlight=False)

NAME_PREFIXES = ("/model.", "/")  # exporter prefixes dropped from names on a narrow console (first match)
NAME_SUFFIX = "_output_0"  # the exporter's tensor suffix: what is left is the producing node's name
MIN_NAME = 12  # narrowest name column the shortener aims for
_NO_METRICS = Metrics(None, None, None, None)  # a part without metrics prints as missing
SHORT_NOTE = "[dim]names shortened to fit: no /model. prefix or _output_0 suffix, … = omitted parts[/]"


def progress_factory(console: Console,
                     quiet: bool) -> tuple[Progress | None, Callable[[str, int, int], None] | None]:
    """A transient rich progress bar and its `cb(phase, advance, total)` callback; (None, None) when quiet."""
    if quiet:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)
    tasks: dict[str, int] = {}

    def cb(phase: str, adv: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = prog.add_task(phase, total=total)
        prog.update(tasks[phase], advance=adv)

    return prog, cb


# ------------------------------------------------------------------ names on a narrow console
def strip_name(name: str) -> str:
    """`name` without the exporter's decoration (a leading /model. or /, a trailing _output_0)."""
    for p in NAME_PREFIXES:
        if name.startswith(p) and len(name) > len(p):
            name = name[len(p):]
            break
    if name.endswith(NAME_SUFFIX) and len(name) > len(NAME_SUFFIX):
        name = name[:-len(NAME_SUFFIX)]
    return name


def elide(name: str, width: int) -> str:
    """`name` in at most `width` cells: its first path part and as many trailing parts as fit, … between.

    The trailing parts (block, op) tell rows apart, so they win over the first part when not both fit.
    """
    if cell_len(name) <= width:
        return name
    parts = name.split("/")
    for k in range(len(parts) - 2, 0, -1):  # trailing parts kept, most first
        tail = "/".join(parts[-k:])
        for cand in (f"{parts[0]}/…/{tail}", f"…/{tail}"):
            if cell_len(cand) <= width:
                return cand
    return "…" + name[len(name) - max(width - 1, 1):]


def fit_names(console: Console, names: Sequence[str], build: Callable[[list[str] | None, bool], Table],
              marks: Sequence[str] | None = None) -> tuple[RenderableType, bool]:
    """The table of `build(cells, compact)` that fits the console, and whether names were shortened.

    `cells` are the name cells (`marks[i]` markup, then the escaped name); None means "leave the name
    column out". Tried in order: the full layout, the compact one, compact with `strip_name`, each name
    `elide`d to the width the other columns leave, and, below MIN_NAME, every row under its own name line.
    """
    marks = list(marks or [""] * len(names))
    reserve = [cell_len(Text.from_markup(m).plain) for m in marks]

    def cells(ns: Sequence[str]) -> list[str]:
        return [m + escape(n) for m, n in zip(marks, ns, strict=True)]

    width = console.width
    unbounded = console.options.update_width(100_000)

    def fits(t: Table) -> bool:
        return console.measure(t, options=unbounded).maximum <= width

    for compact in (False, True):
        t = build(cells(names), compact)
        if fits(t):
            return t, False
    short = [strip_name(n) for n in names]
    t = build(cells(short), True)
    if fits(t):
        return t, True
    probe = 200
    others = console.measure(build(["x" * probe] * len(names), True), options=unbounded).maximum - probe
    avail = width - others
    if avail >= MIN_NAME:
        return build(cells([elide(n, avail - r) for n, r in zip(short, reserve, strict=True)]), True), True
    return _stacked(console, cells(names), build(None, True)), False


class _Lines:
    """Pre-rendered lines of segments (the stacked layout)."""

    def __init__(self, lines: list[list[Segment]]) -> None:
        self.lines = lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in self.lines:
            yield from line
            yield Segment.line()


def _stacked(console: Console, cells: list[str], table: Table) -> RenderableType:
    """`table` (built without its name column, one line per row) with each row under its own name line."""
    lines = console.render_lines(table, console.options, pad=False)
    head = len(lines) - len(cells)
    if head < 0:
        return table
    out = lines[:head]
    for cell, row in zip(cells, lines[head:], strict=True):
        out += console.render_lines(Text.from_markup(cell), console.options, pad=False)
        out.append(row)
    return _Lines(out)


def _compact_table(title: str | None = None) -> Table:
    """The narrow-console table style: no outer edge, one rule under the header."""
    return Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                 collapse_padding=True)


# ------------------------------------------------------------------ compare
def snr_style(v: float | None) -> str:
    """Rich style of an SNR value: red below 20 dB, yellow below 30 dB, else green."""
    if v is None:
        return "red"
    if v < 20:
        return "bold red"
    if v < 30:
        return "yellow"
    return "green"


def _shown(m: Metrics | None) -> Metrics:
    """`m` at the precision the JSON file records (so the terminal prints what the file says)."""
    return _NO_METRICS if m is None else Metrics.from_json(m.to_json())


def _worst_snr(t: TensorRow, res: CompareResult) -> float:
    vals = [_shown(t.cumulative).snr_db] + [_shown(p.cumulative).snr_db for p in res.parts if p.tensor == t.tensor]
    vals = [v for v in vals if v is not None]
    return min(vals) if vals else -1.0


def render_compare(res: CompareResult, console: Console, top: int = 15, show_all: bool = False) -> None:
    """Print the worst-N table, hazards and per-output summary of a compare result."""
    q = res.quant
    console.print(f"[bold]qdebug compare[/] {res.model.path}  ·  {res.samples.count} samples  ·  "
                  f"profile [cyan]{q.profile}[/] {q.scheme.activation} "
                  f"calibrator {q.scheme.calibrator}"
                  + (f"  ·  calib {q.calib}" if q.calib else "")
                  + (f"  ·  overrides {len(q.overrides)}" if q.overrides else ""))
    console.print("[dim]SNR = 10·log10(Σx²/Σ(x−y)²), higher is better; jump = SNR lost at this op "
                  "(min input SNR − output SNR)[/]")
    tensors = res.tensors
    rows = tensors if show_all else sorted(
        [t for t in tensors if t.jump_db is not None], key=lambda t: -t.jump_db)[:top]  # type: ignore[operator]
    if not show_all:
        worst_keys = {t.tensor for t in rows[:5] if (t.jump_db or 0) > 6 and _worst_snr(t, res) < 40}
    else:
        worst_keys = set()
    title = "Every tensor in execution order" if show_all else f"Top {len(rows)} ops by error jump"

    def build(names: list[str] | None, compact: bool) -> Table:
        tbl = _compact_table(title) if compact else Table(title=title, show_lines=False, header_style="bold")
        for col, just in (("#", "right"), ("tensor", "left"), ("op", "left"), ("cum cos", "right"),
                          ("cum SNR", "right"), ("iso SNR", "right"), ("jump dB", "right"), ("max abs", "right")):
            if names is None and col == "tensor":
                continue
            if compact:  # names are shortened to fit, never folded
                tbl.add_column(col, justify=just, no_wrap=True)
            else:
                tbl.add_column(col, justify=just, no_wrap=(col != "tensor"), overflow="fold")
        for k, t in enumerate(rows):
            c, i = _shown(t.cumulative), _shown(t.isolated)
            tbl.add_row(str(t.index), *([] if names is None else [names[k]]), t.op_type,
                        f_cos(c.cosine, ascii=True), f"[{snr_style(c.snr_db)}]{f_snr(c.snr_db, ascii=True)}[/]",
                        f"[{snr_style(i.snr_db)}]{f_snr(i.snr_db, ascii=True)}[/]",
                        f_jump(t.jump_db, ascii=True), f_g(c.max_abs, ascii=True))
        return tbl

    tbl, shortened = fit_names(console, [t.tensor for t in rows], build,
                               ["[bold red]▶ [/]" if t.tensor in worst_keys else "" for t in rows])
    console.print(tbl)
    if shortened:
        console.print(SHORT_NOTE)
    if res.hazards:
        console.print(f"[bold yellow]Hazards ({len(res.hazards)})[/]")
        for h in res.hazards:
            console.print(f"  [yellow]⚠ {h.kind}[/] [bold]{h.node}[/]: {escape(h.message)}")
            console.print(f"    [dim]fix:[/] {escape(h.fix)}")
    for w in res.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")
    console.print("[bold]Outputs[/]")
    for o in res.outputs:
        c = _shown(o.cumulative)
        line = (f"  {o.tensor}: cosine {f_cos(c.cosine, ascii=True)}  SNR "
                f"[{snr_style(c.snr_db)}]{f_snr(c.snr_db, ascii=True)} dB[/]  "
                f"max_abs {f_g(c.max_abs, ascii=True)}")
        for p in o.parts:
            pc = _shown(p.cumulative)
            line += (f"\n    .{p.part} [{p.start}:{p.stop}] ({p.source_op}): cosine "
                     f"{f_cos(pc.cosine, ascii=True)}  SNR [{snr_style(pc.snr_db)}]"
                     f"{f_snr(pc.snr_db, ascii=True)} dB[/]  max_abs {f_g(pc.max_abs, ascii=True)}")
        console.print(line)


def render_vendor(v: VendorComparison, console: Console) -> None:
    """The vendor simulator's verdict next to the built-in simulator's (outputs, parts, disagreements)."""
    console.print(f"[bold]{v.backend} simulator[/] ({v.platform}, rknn-toolkit2 {v.toolkit}): "
                  f"{v.samples} samples, per-tensor analysis on {v.analysis_samples}, {v.builds} build(s)")
    for o in v.outputs:
        c, b = o["cumulative"], o.get("builtin") or {}
        console.print(f"  {o['tensor']}: vendor cosine {f_cos(c['cosine'], ascii=True)} SNR "
                      f"{f_snr(c['snr_db'], ascii=True)} dB  |  built-in cosine {f_cos(b.get('cosine'), ascii=True)}"
                      f" SNR {f_snr(b.get('snr_db'), ascii=True)} dB")
        for p in o["parts"]:
            pc, pb = p["cumulative"], p.get("builtin") or {}
            console.print(f"    .{p['part']}: vendor SNR [{snr_style(pc['snr_db'])}]"
                          f"{f_snr(pc['snr_db'], ascii=True)} dB[/]  |  built-in SNR "
                          f"{f_snr(pb.get('snr_db'), ascii=True)} dB")
    if v.disagreements:
        d = v.disagreements[0]
        console.print(f"  largest vendor/built-in gap: {d['tensor']} (cosine {d['vendor_cosine']:.5f} vs "
                      f"{d['builtin_cosine']:.5f})")
    if v.fused_away:
        console.print(f"  [dim]{len(v.fused_away)} ONNX tensor(s) fused away by the toolkit (no per-tensor "
                      f"result), e.g. {', '.join(v.fused_away[:3])}[/]")


# ------------------------------------------------------------------ bisect
def render_bisect(doc: BisectResult, console: Console) -> None:
    """Terminal summary of a bisect result."""
    t = doc.target
    console.print(f"[bold]qdebug bisect[/] {doc.model.path}  ·  {doc.samples.count} samples  ·  "
                  f"profile [cyan]{doc.quant.profile}[/]")
    console.print(f"target: [bold]{t.expression}[/]" + ("  [yellow](assumed default)[/]" if t.assumed_default
                                                         else ""))
    cut = doc.first_bad_cut
    if cut.tensor:
        part = f".{cut.part}" if cut.part else ""
        console.print(f"first bad cut ({cut.path}, {cut.evaluations} evaluations): [bold red]{cut.tensor}"
                      f"{part}[/] at {cut.node} ({cut.op_type}, #{cut.index}): {cut.metric} "
                      f"{cut.value} fails {cut.metric}>={cut.bound:g}")
    else:
        console.print(f"first bad cut: none (every tensor passes {cut.metric}>={cut.bound:g})")
    ranking = doc.ranking[:8]

    def build(names: list[str] | None, compact: bool) -> Table:
        tbl = _compact_table("Most sensitive ops") if compact else Table(title="Most sensitive ops",
                                                                          header_style="bold")
        for c in ("rank", "op", "type", "score", "jump dB", "iso SNR", "hazards"):
            if names is None:  # stacked layout: one line per row
                if c != "op":
                    tbl.add_column(c, no_wrap=True)
            elif compact:  # names are shortened to fit; hazards wrap at ", "
                tbl.add_column(c, no_wrap=c != "hazards", max_width=16 if c == "hazards" else None)
            else:
                tbl.add_column(c, overflow="fold")
        for k, r in enumerate(ranking):
            e = r.evidence
            tbl.add_row(str(r.rank), *([] if names is None else [names[k]]), r.op_type, f"{r.score:.1f}",
                        f_jump(e.jump_db, ascii=True), f_snr(e.isolated_snr_db, ascii=True),
                        ", ".join(e.hazards))
        return tbl

    tbl, shortened = fit_names(console, [r.op for r in ranking], build)
    console.print(tbl)
    if shortened:
        console.print(SHORT_NOTE)
    res = doc.result
    color = "green" if res.met else "red"
    console.print(f"[bold {color}]{escape(res.message)}[/]")
    if res.set:
        console.print("promote: " + ", ".join(f"[bold]{k}[/]" for k in res.set))
    for k, v in res.before.items():
        console.print(f"  {k}: {v} → {res.after.get(k)}")
    c = doc.counts
    console.print(f"{c.evaluations} quantized evaluations (bound {c.bound}; naive one-per-op: "
                  f"{c.naive_evaluations}), {c.total_seconds:.1f} s")
    for name, text in (doc.exports or {}).items():
        console.print(f"[dim]{name}:[/] {escape(text.strip().splitlines()[0]) if text.strip() else ''}"
                      + (" ..." if len(text.strip().splitlines()) > 1 else ""))
    tp = doc.toolkit_proposal
    if tp:
        vals = ", ".join(f"{k}: {v if v is None else round(v, 4)}" for k, v in tp.values.items())
        console.print(f"rknn-toolkit2's own proposal: {tp.count} tensor(s) -> {vals} "
                      f"({'meets' if tp.passed else 'misses'} the target)")
    unp = (doc.quant.judge or {}).get("unpromotable")
    if unp:
        console.print("[yellow]the toolkit cannot promote:[/] " + "; ".join(f"{k} ({v})" for k, v in unp.items()))
    pf = doc.patched_file
    if pf:
        console.print(f"patched {pf.format} file: [bold]{pf.path}[/] (changed: {', '.join(pf.changed)})")
        for n in pf.notes:
            console.print(f"  [yellow]note:[/] {escape(n)}")


# ------------------------------------------------------------------ detection task
def _f(v: float | None, spec: str = ".3f") -> str:
    return f_det(v, spec, ascii=True)


def render_detection(det: DetectionResult, console: Console, classes: int = 10) -> None:
    """Print the detection-agreement section of a compare/bisect result."""
    d = det.decoder
    th = det.thresholds
    console.print(f"[bold]Detection verdict[/] ({det.task}, {d.get('layout')} layout, conf {th['conf']:g}, "
                  f"NMS IoU {th['nms_iou']:g}; float detections are the reference, matched at IoU "
                  f"≥ {th['match_iou']:g})")
    sides = [("quantized", det.quantized)] + ([("promoted", det.promoted)] if det.promoted else [])
    tbl = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("run", "dets", "mAP50-95", "mAP50", "AR", "lost", "added", "flips", "IoU", "Δscore"):
        tbl.add_column(col, justify="left" if col == "run" else "right", no_wrap=True)
    tbl.add_row("float", str(det.float["detections"]), "1.000", "1.000", "1.000", "-", "-", "-", "-", "-")
    for name, s in sides:
        m, c = s.metrics, s.counts
        lost = f"{c['lost']} {100 * (m['lost_frac'] or 0):.0f}%"
        style = "green" if (m["map50_95_vs_float"] or 0) >= 0.9 else "yellow" if (m["map50_95_vs_float"] or 0) >= 0.7 \
            else "bold red"
        tbl.add_row(name, str(s.detections), f"[{style}]{_f(m['map50_95_vs_float'])}[/]",
                    _f(m["map50_vs_float"]), _f(m["recall_vs_float"]), lost, str(c["added"]),
                    str(c["class_flips"]), _f(c["mean_iou"], ".2f"), _f(c["mean_score_shift"], "+.2f"))
    console.print(tbl)
    console.print("[dim]mAP and AR (COCO recall) against the float detections; lost/added at IoU ≥ 0.5; flips: "
                  "lost to another class; IoU, Δscore: mean over matched pairs[/]")
    rows = [r for r in det.quantized.per_class if r["float"]]
    if len(rows) > 1:
        rows.sort(key=lambda r: (r["ap50_95"] if r["ap50_95"] is not None else 1.0, -r["float"]))
        console.print(f"Per class (quantized; worst {min(classes, len(rows))} of {len(rows)} classes by AP50-95)")
        ct = Table(header_style="bold", box=box.SIMPLE_HEAD)
        for col in ("class", "float", "quantized", "AP50-95", "AP50", "lost", "added"):
            ct.add_column(col, justify="left" if col == "class" else "right")
        for r in rows[:classes]:
            ct.add_row(str(r["name"]), str(r["float"]), str(r["quantized"]), _f(r["ap50_95"]), _f(r["ap50"]),
                       str(r["lost"]), str(r["added"]))
        console.print(ct)
    lab = det.labels
    if lab:
        console.print(f"[bold]True mAP[/] against {lab['format']} labels ({lab['images']} images, "
                      f"{lab['objects']} objects; COCO protocol, pycocotools)")
        lt = Table(header_style="bold", box=box.SIMPLE_HEAD)
        runs = [k for k in ("float", "quantized", "promoted") if k in lab["map50_95"]]
        lt.add_column("metric")
        for k in runs:
            lt.add_column(k, justify="right")
        for m, title in (("map50_95", "mAP50-95"), ("map50", "mAP50"), ("recall", "AR@100")):
            lt.add_row(title, *(_f(lab[m][k]) for k in runs))
        console.print(lt)
    for w in det.warnings:
        console.print(f"[yellow]warning:[/] {w}")
