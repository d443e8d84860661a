"""The report as one self-contained HTML page: inline CSS, images as base64 data URIs, no scripts,
no fonts or anything else fetched from the network (collapsible sections are native <details>)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping

from qdebug.report.blocks import (
    Block,
    Bullets,
    Code,
    Details,
    Heading,
    Image,
    Inline,
    Para,
    Quote,
    Table,
)

CSS = """
:root { color-scheme: light; }
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "DejaVu Sans", sans-serif;
       font-size: 15px; line-height: 1.5; color: #1f2328; background: #ffffff; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 1.7em; border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #d0d7de; padding-bottom: .25em; margin-top: 1.8em; }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace;
       font-size: 85%; background: #eff1f3; padding: .1em .35em; border-radius: 4px; word-break: break-all; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 12px; overflow-x: auto;
      font-size: 13px; line-height: 1.4; }
td code { white-space: nowrap; word-break: normal; }
pre code { background: none; padding: 0; font-size: 100%; word-break: normal; white-space: pre; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; display: block; overflow-x: auto;
        max-width: 100%; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; vertical-align: top; }
th { background: #f6f8fa; text-align: left; white-space: nowrap; }
tr:nth-child(even) td { background: #fafbfc; }
td.r { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.c { text-align: center; }
blockquote { margin: 12px 0; padding: 4px 14px; color: #57606a; border-left: 4px solid #d0d7de; }
details { margin: 10px 0; border: 1px solid #d0d7de; border-radius: 6px; padding: 6px 12px; }
summary { cursor: pointer; font-weight: 600; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; border-radius: 4px; }
figcaption { color: #57606a; font-size: 13px; font-style: italic; }
.good { color: #1a7f37; }
.bad { color: #cf222e; }
.add { color: #1a7f37; background: #e6ffec; }
.del { color: #cf222e; background: #ffebe9; }
.hunk { color: #6639ba; }
.head { font-weight: 600; }
"""


def slug(text: str) -> str:
    """GitHub-style heading anchor ('Export lists' -> 'export-lists')."""
    s = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return s.replace(" ", "-")


def inline_html(text: Inline) -> str:
    """Render inline spans as escaped HTML."""
    out = []
    for sp in text:
        t = html.escape(sp.text, quote=False)
        if sp.kind == "code":
            out.append(f"<code>{t}</code>")
        elif sp.kind == "bold":
            out.append(f"<strong>{t}</strong>")
        elif sp.kind == "good":
            out.append(f'<strong class="good">{t}</strong>')
        elif sp.kind == "bad":
            out.append(f'<strong class="bad">{t}</strong>')
        elif sp.kind == "link" and sp.target.startswith("#"):
            out.append(f'<a href="{html.escape(sp.target)}">{t}</a>')
        else:
            out.append(t)
    return "".join(out)


def _code(blk: Code) -> str:
    if blk.lang != "diff":
        return f"<pre><code>{html.escape(blk.text, quote=False)}</code></pre>"
    lines = []
    for line in blk.text.split("\n"):
        e = html.escape(line, quote=False)
        kind = ("head" if line.startswith(("+++", "---")) else "add" if line.startswith("+")
                else "del" if line.startswith("-") else "hunk" if line.startswith("@@") else "")
        lines.append(f'<span class="{kind}">{e}</span>' if kind else e)
    return "<pre><code>" + "\n".join(lines) + "</code></pre>"


def _table(t: Table) -> str:
    n = len(t.header)
    align = (t.align or "l" * n).ljust(n, "l")
    cls = {"l": "", "r": ' class="r"', "c": ' class="c"'}
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = []
    for row in t.rows:
        cells = "".join(f"<td{cls[align[k]]}>{inline_html(cell) or '–'}</td>" for k, cell in enumerate(row[:n]))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _block(blk: Block, images: Mapping[str, bytes]) -> str:
    if isinstance(blk, Heading):
        return f'<h{blk.level} id="{slug(blk.text)}">{html.escape(blk.text)}</h{blk.level}>'
    if isinstance(blk, Para):
        return f"<p>{inline_html(blk.text)}</p>"
    if isinstance(blk, Quote):
        return f"<blockquote>{inline_html(blk.text)}</blockquote>"
    if isinstance(blk, Bullets):
        return "<ul>" + "".join(f"<li>{inline_html(i)}</li>" for i in blk.items) + "</ul>"
    if isinstance(blk, Table):
        return _table(blk)
    if isinstance(blk, Code):
        return _code(blk)
    if isinstance(blk, Image):
        data = images.get(blk.file)
        if data is None:
            return f"<p><em>(image {html.escape(blk.file)} missing)</em></p>"
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        cap = f"<figcaption>{html.escape(blk.caption)}</figcaption>" if blk.caption else ""
        return f'<figure><img src="{uri}" alt="{html.escape(blk.alt)}">{cap}</figure>'
    if isinstance(blk, Details):
        inner = "\n".join(_block(x, images) for x in blk.blocks)
        return f"<details><summary>{html.escape(blk.summary)}</summary>\n{inner}\n</details>"
    raise TypeError(f"unknown block {blk!r}")


def to_html(blocks: list[Block], images: Mapping[str, bytes], title: str = "qdebug report") -> str:
    """Render blocks as one standalone HTML document; `images` maps file names to PNG bytes."""
    body = "\n".join(_block(x, images) for x in blocks)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n"
            "</main>\n</body>\n</html>\n")
