"""Op and tensor names on a narrow console: exporter decoration dropped, middle parts elided (kept distinct),
or every row under its own full-name line (the compare and bisect tables of cli/terminal.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.markup import escape
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

NAME_PREFIXES = ("/model.", "/")  # exporter prefixes dropped from names on a narrow console (first match)
NAME_SUFFIX = "_output_0"  # the exporter's tensor suffix: what is left is the producing node's name
MIN_NAME = 12  # narrowest name column the shortener aims for
SHORT_NOTE = "[dim]names shortened to fit: no /model. prefix or _output_0 suffix, … = omitted parts[/]"


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


def _render(parts: list[str], keep: set[int]) -> str:
    """`parts` joined by "/", each run of parts not in `keep` shown as one "…"."""
    out: list[str] = []
    for k, p in enumerate(parts):
        if k in keep:
            out.append(p)
        elif not out or out[-1] != "…":
            out.append("…")
    return "/".join(out)


def distinct_elide(names: Sequence[str], widths: Sequence[int]) -> list[str] | None:
    """`elide` of each name in its width, with parts added where two different names would read the same:
    the rightmost part that tells them apart is kept too, other parts dropped (middle ones first) while the
    name is too wide. None when some names cannot be told apart in their width."""
    out = [elide(n, w) for n, w in zip(names, widths, strict=True)]
    split = [n.split("/") for n in names]
    must: list[set[int]] = [{len(p) - 1} for p in split]  # the last part and every part that told names apart
    for _ in range(len(names)):
        groups: dict[str, list[int]] = {}
        for i, shown in enumerate(out):
            groups.setdefault(shown, []).append(i)
        dups = [ix for ix in groups.values() if len({names[i] for i in ix}) > 1]
        if not dups:
            return out
        for ix in dups:
            parts = [split[i] for i in ix]
            diff = [k for k in range(1, min(map(len, parts)) + 1) if len({p[-k] for p in parts}) > 1]
            if not diff:
                return None
            for i in ix:
                p, n = split[i], len(split[i])
                must[i].add(n - diff[0])  # counted from the end: the rightmost part where they differ
                keep = set(range(min(must[i]), n)) | {0}
                for drop in [k for k in range(1, n) if k not in must[i]] + [0]:  # middle parts first, then the first
                    if cell_len(_render(p, keep)) <= widths[i]:
                        break
                    keep.discard(drop)
                if cell_len(_render(p, keep)) > widths[i]:
                    return None
                out[i] = _render(p, keep)
    return None


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
    shown = distinct_elide(short, [avail - r for r in reserve]) if avail >= MIN_NAME else None
    if shown is not None:  # (names that cannot be told apart in the width: each on its own line below)
        return build(cells(shown), True), True
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
