"""All terminal output of the CLI: compare, vendor, bisect and detection summaries, and the progress bar.

Tables keep their full layout when it fits the console; on a narrow console they switch to a compact
layout and shorten op/tensor names, keeping the distinguishing parts (cli/names.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qdebug.cli.names import SHORT_NOTE, distinct_elide, elide, fit_names, strip_name  # noqa: F401 (re-exported)
from qdebug.graph.hazards import HANDLED
from qdebug.report.format import f_cos, f_det, f_g, f_jump, f_snr
from qdebug.results.task import METRIC_LABELS, TaskResult, describe_row, format_metric
from qdebug.results.values import Metrics

if TYPE_CHECKING:
    from rich.progress import Progress

    from qdebug.results.bisect import BisectResult
    from qdebug.results.compare import CompareResult, TensorRow
    from qdebug.results.detection import DetectionResult, DetectionRun
    from qdebug.results.task import TaskRun
    from qdebug.results.vendor import VendorComparison



class SafeStream:
    """sys.stdout/sys.stderr (looked up on each write) that goes quiet once writing fails.

    `qdebug ... | head` closes the pipe early and stdout may sit on a full device: the run still writes the
    files it was asked for; `failed` keeps the first error for one line at the end (EPIPE stays silent).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.failed: OSError | None = None

    @property
    def stream(self):  # noqa: ANN201 - a text stream
        return getattr(sys, self.name)

    def write(self, text: str) -> int:
        if self.failed is None:
            try:
                return self.stream.write(text)
            except OSError as exc:
                self.failed = exc
        return len(text)

    def flush(self) -> None:
        if self.failed is None:
            try:
                self.stream.flush()
            except OSError as exc:
                self.failed = exc

    def __getattr__(self, key: str):  # noqa: ANN204 - isatty, encoding, fileno of the real stream
        return getattr(self.stream, key)


STDOUT = SafeStream("stdout")
STDERR = SafeStream("stderr")
err_console = Console(file=STDERR, highlight=False, emoji=False)


def out_console(**options: object) -> Console:
    """The console for a command's standard output (a closed pipe or a full device never stops the run)."""
    return Console(file=STDOUT, highlight=False, emoji=False, **options)  # type: ignore[arg-type]


def mk(template: str, *values: object) -> str:
    """The one escaping point of the CLI: `template` is qdebug's own rich markup, every value is shown literally.

    Names of files, nodes, tensors and layers come from the user; printed as markup, `[/]` would crash and
    `[v2]` would vanish. Every print of user text goes through here (tests/test_architecture.py checks).
    """
    return template.format(*(escape(str(v)) for v in values))

_NO_METRICS = Metrics(None, None, None, None)  # a part without metrics prints as missing


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


def hanging(label: str, text: str) -> Table:
    """`label` then `text` (both markup), `text` wrapped with a hanging indent under its own first column."""
    t = Table.grid(padding=0)
    t.add_column(no_wrap=True)
    t.add_column(overflow="fold")
    t.add_row(label, text)
    return t


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
    imported = q.backend in ("qdq", "dumps")  # a quantized run made elsewhere: no scheme or calibrator of ours
    src = (getattr(res.spec, "quantized", None) or getattr(res.spec, "quantized_dumps", None)) if res.spec else None
    cm = getattr(q, "calib_mapping", None)
    uncovered = len(cm.nodes_without_record) if cm is not None else 0
    # a vendor file (--calib) decides the ranges; the calibrator only those of ops it has no record for
    ranges = (mk("ranges from {}", q.calib) + (mk(" ({} op(s) without a record: calibrator {})", uncovered,
                                                  q.scheme.calibrator) if uncovered else "")) if q.calib else \
        mk("calibrator {}", q.scheme.calibrator)
    console.print((mk("[bold]qdebug compare[/] {}  ·  {} samples  ·  quantized run imported from {}",
                      res.model.path, res.samples.count, src or q.backend) if imported else
                   mk("[bold]qdebug compare[/] {}  ·  {} samples  ·  profile [cyan]{}[/] {} ", res.model.path,
                      res.samples.count, q.profile, q.scheme.activation) + ranges)
                  + (mk("  ·  overrides {}", len(q.overrides)) if q.overrides else ""))
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
            tbl.add_row(str(t.index), *([] if names is None else [names[k]]), escape(t.op_type),
                        f_cos(c.cosine, ascii=True), f"[{snr_style(c.snr_db)}]{f_snr(c.snr_db, ascii=True)}[/]",
                        f"[{snr_style(i.snr_db)}]{f_snr(i.snr_db, ascii=True)}[/]",
                        f_jump(t.jump_db, ascii=True), f_g(c.max_abs, ascii=True))
        return tbl

    tbl, shortened = fit_names(console, [t.tensor for t in rows], build,
                               ["[bold red]▶ [/]" if t.tensor in worst_keys else "" for t in rows])
    console.print(tbl)
    if shortened:
        console.print(SHORT_NOTE)
    handled = [w for w in res.warnings if w.startswith(HANDLED)]
    if res.hazards:
        console.print(mk("[bold yellow]Hazards ({})[/]", len(res.hazards)))
        for h in res.hazards:
            console.print(hanging("  [yellow]⚠[/] ", mk("[yellow]{}[/] [bold]{}[/]: {}", h.kind, h.node, h.message)))
            console.print(hanging("    ", mk("[dim]fix:[/] {}", h.fix)))
    for w in handled:  # hazards this run's precision removes (an override, a vendor file, an imported model)
        console.print(hanging("  [green]✓[/] ", mk("[dim]{}[/]", w)))
    for w in res.warnings:
        if not w.startswith(HANDLED):
            console.print(hanging("[yellow]warning:[/] ", mk("{}", w)))
    console.print("[bold]Outputs[/]")
    for o in res.outputs:
        c = _shown(o.cumulative)
        line = mk("  {}: cosine {}  SNR [" + snr_style(c.snr_db) + "]{} dB[/]  max_abs {}", o.tensor,
                  f_cos(c.cosine, ascii=True), f_snr(c.snr_db, ascii=True), f_g(c.max_abs, ascii=True))
        for p in o.parts:
            pc = _shown(p.cumulative)
            line += mk("\n    .{} [{}:{}] ({}): cosine {}  SNR [" + snr_style(pc.snr_db) + "]{} dB[/]  max_abs {}",
                       p.part, p.start, p.stop, p.source_op, f_cos(pc.cosine, ascii=True),
                       f_snr(pc.snr_db, ascii=True), f_g(pc.max_abs, ascii=True))
        console.print(line)


def render_vendor(v: VendorComparison, console: Console, top: int | None = 5) -> None:
    """The toolkit's simulator beside the built-in one: outputs and parts, then the tensors where they disagree
    most, ranked by SNR difference (`top` rows; None = every tensor the toolkit reported)."""
    def gap(a: float | None, b: float | None) -> str:
        return f"{a - b:+.1f} dB" if a is not None and b is not None else "-"

    console.print(mk("[bold]{} toolkit simulator[/] ({}, rknn-toolkit2 {}): {} samples, per-tensor analysis on {}, "
                     "{} build(s)", v.backend, v.platform, v.toolkit, v.samples, v.analysis_samples, v.builds))
    for o in v.outputs:
        c, b = o["cumulative"], o.get("builtin") or {}
        console.print(mk("  {}: toolkit cosine {} SNR {} dB  |  built-in cosine {} SNR {} dB  |  gap {}", o["tensor"],
                         f_cos(c["cosine"], ascii=True), f_snr(c["snr_db"], ascii=True),
                         f_cos(b.get("cosine"), ascii=True), f_snr(b.get("snr_db"), ascii=True),
                         gap(c["snr_db"], b.get("snr_db"))))
        for p in o["parts"]:
            pc, pb = p["cumulative"], p.get("builtin") or {}
            console.print(mk("    .{}: toolkit SNR [" + snr_style(pc["snr_db"]) + "]{} dB[/]  |  built-in SNR {} dB"
                             "  |  gap {}", p["part"], f_snr(pc["snr_db"], ascii=True),
                             f_snr(pb.get("snr_db"), ascii=True), gap(pc["snr_db"], pb.get("snr_db"))))
    rows = v.disagreements if top is None else v.disagreements[:top]
    if rows:
        med = getattr(v, "median_snr_gap_db", None)
        console.print(mk("  largest toolkit/built-in disagreements (SNR, toolkit - built-in){}:",
                         f"; median |gap| {med:.2f} dB" if med is not None else ""))
        for d in rows:
            if d.get("snr_gap_db") is not None:
                console.print(mk("    {}: toolkit {} dB  |  built-in {} dB  |  gap {}", d["tensor"],
                                 f_snr(d["vendor_snr_db"], ascii=True), f_snr(d["builtin_snr_db"], ascii=True),
                                 f"{d['snr_gap_db']:+.1f} dB"))
            else:  # older files: cosine only
                console.print(mk("    {}: cosine {} vs {}", d["tensor"], f_cos(d.get("vendor_cosine"), ascii=True),
                                 f_cos(d.get("builtin_cosine"), ascii=True)))
    dev = getattr(v, "float_deviation", None)
    if dev:
        console.print(mk("  [yellow]the toolkit's own float run differs from the ONNX model from {} on (SNR {} dB, "
                         "{} tensor(s)): that part of its error is not quantization[/]", dev[0]["tensor"],
                         f_snr(dev[0]["snr_db"], ascii=True), len(dev)))
    if v.fused_away:
        console.print(mk("  [dim]{} ONNX tensor(s) fused away by the toolkit (no per-tensor result), e.g. {}[/]",
                         len(v.fused_away), ", ".join(v.fused_away[:3])))

# ------------------------------------------------------------------ bisect
def render_bisect(doc: BisectResult, console: Console) -> None:
    """Terminal summary of a bisect result."""
    t = doc.target
    console.print(mk("[bold]qdebug bisect[/] {}  ·  {} samples  ·  profile [cyan]{}[/]", doc.model.path,
                     doc.samples.count, doc.quant.profile))
    console.print(mk("target: [bold]{}[/]", t.expression) + ("  [yellow](assumed default)[/]" if t.assumed_default
                                                               else ""))
    cut = doc.first_bad_cut
    if cut.tensor:
        part = f".{cut.part}" if cut.part else ""
        # the tensor may sit inside a fused op: name the op a user can promote, then the node
        owner = next((r for r in doc.ranking if cut.node in r.nodes and r.op != cut.node), None)
        where = mk("{} ({}; node {}, {}, #{})", owner.op, owner.op_type, cut.node, cut.op_type, cut.index) \
            if owner is not None else mk("{} ({}, #{})", cut.node, cut.op_type, cut.index)
        console.print(mk("first bad cut ({}, {} evaluations): [bold red]{}{}[/] at ", cut.path, cut.evaluations,
                         cut.tensor, part) + where + mk(": {} {} fails {}>={}", cut.metric, cut.value, cut.metric,
                                                        f"{cut.bound:g}"))
    elif cut.path == "truncation":  # probes, not every tensor: say what was checked
        console.print(mk("first bad cut: none found ({} truncation probe(s): {} pass {}>={})", cut.evaluations,
                         ", ".join(str(p.get("tensor")) for p in cut.probes) or "no cut", cut.metric,
                         f"{cut.bound:g}"))
    else:
        console.print(mk("first bad cut: none (every tensor passes {}>={})", cut.metric, f"{cut.bound:g}"))
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
            tbl.add_row(str(r.rank), *([] if names is None else [names[k]]), escape(r.op_type), f"{r.score:.1f}",
                        f_jump(e.jump_db, ascii=True), f_snr(e.isolated_snr_db, ascii=True),
                        escape(", ".join(e.hazards)))
        return tbl

    tbl, shortened = fit_names(console, [r.op for r in ranking], build)
    console.print(tbl)
    if shortened:
        console.print(SHORT_NOTE)
    res = doc.result
    color = "green" if res.met else "red"
    console.print(mk("[bold " + color + "]{}[/]", res.message))
    if res.set:
        console.print("promote: " + ", ".join(mk("[bold]{}[/]", k) for k in res.set))
    for k, v in res.before.items():
        console.print(mk("  {}: {} → {}", k, v, res.after.get(k)))
    c = doc.counts
    cut_share = f"{c.search_evaluations} search + {c.cut_evaluations} first-bad-cut probe(s); " \
        if c.cut_evaluations else ""  # the truncation probes are counted, and their bound is in the bound
    console.print(mk("{} quantized evaluations ({}bound {}{}; naive one-per-op: {}), {} s", c.evaluations, cut_share,
                     c.bound, " incl. the cut search's ⌈log2 N⌉+2" if c.cut_evaluations else "",
                     c.naive_evaluations, f"{c.total_seconds:.1f}"))
    if doc.exports:
        console.print("[dim]the set for other stacks (every text in full in the JSON's exports):[/]")
    for name, text in (doc.exports or {}).items():
        lines = text.strip().splitlines()
        if len(lines) == 1:  # an option or a list to copy: whole, never cut or folded (the terminal wraps it)
            console.print(mk("  [dim]{}:[/] {}", name, lines[0]), soft_wrap=True)
            continue
        head = lines[0] if lines else ""
        tail = f" ... ({len(lines)} lines)"
        room = max(console.width - cell_len(name) - 4 - len(tail), 8)  # a file's first line: one screen line
        if cell_len(head) > room:
            head = head[:room - 1] + "…"
        console.print(mk("  [dim]{}:[/] {}{}", name, head, tail))
    tp = doc.toolkit_proposal
    if tp:
        for plan in tp.plans or []:  # each plan judged on the same target by the named simulator
            vals = ", ".join(f"{k}: {v if v is None else round(v, 4)}" for k, v in plan.values.items())
            console.print(mk("{} ({} entr(ies), judged by {}): {} ({} the target)", plan.name, plan.entries,
                             plan.judge, vals or "no values", "meets" if plan.passed else "misses"))
        if not tp.plans:  # files written before plans were recorded
            vals = ", ".join(f"{k}: {v if v is None else round(v, 4)}" for k, v in tp.values.items())
            console.print(mk("rknn-toolkit2's own proposal: {} tensor(s) -> {} ({} the target)", tp.count, vals,
                             "meets" if tp.passed else "misses"))
    nap = (doc.quant.judge or {}).get("not_applied")
    if nap:
        console.print("[yellow]requested but not built at that precision by the toolkit:[/] "
                      + "; ".join(mk("{} ({})", k, v) for k, v in nap.items()))
    unp = (doc.quant.judge or {}).get("unpromotable")
    if unp:
        console.print("[yellow]the toolkit cannot promote:[/] " + "; ".join(mk("{} ({})", k, v)
                                                                           for k, v in unp.items()))
    pf = doc.patched_file
    if pf:
        names = list(dict.fromkeys(pf.changed))
        more = f" ... (+{len(names) - 8}, all in the JSON's patched_file.changed)" if len(names) > 8 else ""
        console.print(mk("patched {} file: [bold]{}[/] ({})", pf.format, pf.path,
                         f"{len(names)} changed: {', '.join(names[:8])}{more}" if names else "nothing changed"))
        for n in pf.notes:
            console.print(mk("  [yellow]note:[/] {}", n))


# ------------------------------------------------------------------ detection task
def _f(v: float | None, spec: str = ".3f") -> str:
    return f_det(v, spec, ascii=True)


def render_detection(det: DetectionResult, console: Console, classes: int = 10, promoted: str = "promoted") -> None:
    """Print the detection-agreement section of a compare/bisect result (`promoted`: the after run's label)."""
    d = det.decoder
    th = det.thresholds
    judge = det.judge or (getattr(det, "extra", None) or {}).get("judge")  # whose outputs were decoded
    tk = det.toolkit
    console.print(mk("[bold]Detection verdict[/]{} ({}, {} layout, conf {}, NMS IoU {}; float detections are the "
                     "reference, matched at IoU ≥ {})", f" of the {judge}" if judge and tk is None else "", det.task,
                     d.get("layout"), f"{th['conf']:g}", f"{th['nms_iou']:g}", f"{th['match_iou']:g}"))
    sides = run_sides(det.quantized, det.promoted, tk, judge, console, promoted)
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
    for name, s in sides:  # segment/pose heads: masks and keypoints against the float ones, one line per run
        im = s.instance_metrics()
        if "mask_map50_95_vs_float" in im or "mask_iou_mean" in im:
            console.print(mk("{} masks: mask mAP50-95 vs float {}, mean mask IoU {} (matched pairs)", name,
                             _f(im.get("mask_map50_95_vs_float")), _f(im.get("mask_iou_mean"))))
        if "oks_map_vs_float" in im or "kpt_err_px" in im:
            console.print(mk("{} keypoints: OKS mAP50-95 vs float {}, mean error {} px (visible, matched pairs)", name,
                             _f(im.get("oks_map_vs_float")), _f(im.get("kpt_err_px"), ".2f")))
    rows = [r for r in det.quantized.per_class if r["float"]]
    if len(rows) > 1:
        rows.sort(key=lambda r: (r["ap50_95"] if r["ap50_95"] is not None else 1.0, -r["float"]))
        console.print(mk("Per class ({}; worst {} of {} classes by AP50-95)", sides[0][0], min(classes, len(rows)),
                         len(rows)))
        ct = Table(header_style="bold", box=box.SIMPLE_HEAD)
        for col in ("class", "float", "quantized", "AP50-95", "AP50", "lost", "added"):
            ct.add_column(col, justify="left" if col == "class" else "right")
        for r in rows[:classes]:
            ct.add_row(escape(str(r["name"])), str(r["float"]), str(r["quantized"]), _f(r["ap50_95"]), _f(r["ap50"]),
                       str(r["lost"]), str(r["added"]))
        console.print(ct)
    lab = det.labels
    if lab:
        console.print(mk("[bold]True mAP[/] against {} labels ({} images, {} objects; COCO protocol, pycocotools)",
                         lab["format"], lab["images"], lab["objects"]))
        lt = Table(header_style="bold", box=box.SIMPLE_HEAD)
        runs = [k for k in ("float", "quantized", "toolkit", "promoted") if k in lab["map50_95"]]
        lt.add_column("metric")
        for k in runs:
            lt.add_column(k, justify="right")
        for m, title in (("map50_95", "mAP50-95"), ("map50", "mAP50"), ("recall", "AR@100")):
            lt.add_row(title, *(_f(lab[m][k]) for k in runs))
        console.print(lt)
    for w in det.warnings:
        console.print(mk("[yellow]warning:[/] {}", w))


def run_sides(quantized: DetectionRun | TaskRun, promoted: DetectionRun | TaskRun | None,
              toolkit: DetectionRun | TaskRun | None, judge: str | None,
              console: Console, label: str = "promoted") -> list[tuple[str, DetectionRun | TaskRun]]:
    """(row label, run) of a verdict table; with a vendor toolkit's run the rows are labelled by simulator
    (short labels keep the table within 80 columns; one line says which simulator each label is)."""
    if toolkit is None:
        return [("quantized", quantized)] + ([(label, promoted)] if promoted else [])
    console.print(mk("  [dim]rows:[/] built-in = {}", judge or "built-in simulator"))
    console.print(mk("        toolkit  = {}, its own final outputs", toolkit.judge or "vendor toolkit"))
    return [("built-in", quantized), ("toolkit", toolkit)] + ([(label, promoted)] if promoted else [])


def render_task(task: TaskResult, console: Console, worst: int = 3, promoted: str = "promoted") -> None:
    """Print the classify/embedding/ctc verdict: one row per run, then the samples that moved most."""
    how = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in (task.settings or {}).items()
                    if v is not None and k != "layout_given")
    console.print(mk("[bold]Task verdict[/] ({}, output {}; {} samples vs float)", task.task, task.output,
                     task.quantized.samples))
    names = list(task.higher_is_better) or list(task.quantized.metrics)
    tbl = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    tbl.add_column("run", no_wrap=True)
    for m in names:
        tbl.add_column(METRIC_LABELS.get(m, m), justify="right", no_wrap=True)
    runs = run_sides(task.quantized, task.promoted, task.toolkit, task.judge, console, promoted)
    for label, run in runs:
        tbl.add_row(label, *(format_metric(m, run.metrics.get(m), "-") for m in names))
    console.print(tbl)
    console.print(mk("[dim]{}targets: {}[/]", f"{how}; " if how else "", ", ".join(names)))
    rows = task.quantized.worst(worst)
    if rows:  # which run these are: with a promoted or toolkit row above, not obvious
        console.print(mk("samples that moved most ({} run):", runs[0][0] if runs else "quantized"))
    for row in rows:
        console.print(mk("  {}: {}", row.get("sample", "?"), describe_row(task.task, row)))
    for w in task.warnings:
        console.print(mk("[yellow]warning:[/] {}", w))


# ------------------------------------------------------------------ remedies (bisect --remedies)
def render_remedies(doc: BisectResult, console: Console, tried: int = 12) -> None:
    """The chosen plan (each remedy, its cost and the target before -> after) and the alternatives tried."""
    rs = doc.remedy_search
    if rs is None:
        return
    console.print("[bold]plan[/] (cheapest kind first: calibration, head split, precision):")
    for r in doc.result.remedies:
        console.print(mk("  [bold]{}[/]: cost {} ({})", r.kind, r.cost, r.unit))
        shown = r.changed[:4]
        console.print(mk("    changed: {}", ", ".join(shown) + (f" ... (+{len(r.changed) - 4})"
                                                                 if len(r.changed) > 4 else "")))
        for k, v in r.after.items():
            console.print(mk("    {}: {} -> {}", k, f_g(r.before.get(k), 6), f_g(v, 6)))
    if not doc.result.remedies:
        console.print("  (no remedy)")
    for kind, why in rs.skipped.items():
        console.print(mk("  [dim]{} skipped:[/] {}", kind, why))
    console.print(mk("alternatives tried ({} evaluated plans; calibration part {} of bound {}, precision part {} "
                     "of bound {}):", len(rs.trials), rs.calibration_evaluations, rs.calibration_bound,
                     rs.precision_evaluations, rs.precision_bound))
    for t in rs.trials[:tried]:
        cost = ", ".join(f"{k} {v}" for k, v in t.cost.items() if v)
        verdict = "[green]pass[/]" if t.passed else "[red]miss[/]"
        console.print(mk("  #{} " + verdict + " ({}): {}", t.evaluation, cost or "no change", t.plan))
    if len(rs.trials) > tried:
        console.print(mk("  ... {} more in the JSON (remedy_search.trials)", len(rs.trials) - tried))
    for n in rs.notes:
        console.print(mk("  [dim]{}[/]", n))
