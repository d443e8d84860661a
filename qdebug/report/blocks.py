"""The report's document model: inline spans and the blocks every renderer understands.

Sections build these; `qdebug.report.markdown` and `qdebug.report.html` render them. Inline text is a
tuple of spans so each renderer escapes for its own context (a `|` inside a table cell, `<` in HTML).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Span(NamedTuple):
    """One run of inline text: kind is text | code | bold | good | bad | link (to `target`, an in-page
    anchor or a relative file)."""

    kind: str
    text: str
    target: str = ""


Inline = tuple[Span, ...]


def il(*parts: str | Span | Inline | None) -> Inline:
    """Build inline text from plain strings, spans and other inline tuples (None is skipped)."""
    out: list[Span] = []
    for p in parts:
        if p is None:
            continue
        if isinstance(p, Span):
            out.append(p)
        elif isinstance(p, str):
            if p:
                out.append(Span("text", p))
        else:
            out.extend(p)
    return tuple(out)


def c(text: str) -> Span:
    """Inline code (op names, tensor names, commands)."""
    return Span("code", text)


def b(text: str) -> Span:
    """Bold text."""
    return Span("bold", text)


def good(text: str) -> Span:
    """A passing verdict (bold; green in HTML)."""
    return Span("good", text)


def bad(text: str) -> Span:
    """A failing verdict (bold; red in HTML)."""
    return Span("bad", text)


def join(items: list[Inline | Span | str], sep: str = ", ") -> Inline:
    """Inline items separated by `sep`."""
    out: list[Span | Inline | str] = []
    for k, item in enumerate(items):
        if k:
            out.append(sep)
        out.append(item)
    return il(*out)


@dataclass
class Heading:
    """A heading; renderers derive its GitHub-style anchor from the text."""

    level: int
    text: str


@dataclass
class Para:
    """A paragraph of inline text."""

    text: Inline


@dataclass
class Quote:
    """A block quote (the metrics legend)."""

    text: Inline


@dataclass
class Bullets:
    """An unordered list, one inline item per bullet."""

    items: list[Inline]


@dataclass
class Table:
    """A table of inline cells under plain-text headers."""

    header: list[str]
    rows: list[list[Inline]]
    align: str = ""  # one char per column: l | r | c


@dataclass
class Code:
    """A fenced code block (`lang` "sh", "diff", or empty)."""

    text: str
    lang: str = ""


@dataclass
class Image:
    """A picture by file name (the HTML renderer inlines its bytes)."""

    file: str
    alt: str
    caption: str = ""


@dataclass
class Details:
    """A collapsible <details> section holding more blocks."""

    summary: str
    blocks: list[Any] = field(default_factory=list)


Block = Heading | Para | Quote | Bullets | Table | Code | Image | Details
