"""GitHub-flavoured Markdown rendering of the report blocks, for pasting into a GitHub/GitLab issue.

Only tables, fences and <details> go beyond plain Markdown; text is escaped just where it could
trigger markup, so names like `snr_db` stay readable.
"""

from __future__ import annotations

import re

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
    Span,
    Table,
)

GITHUB_LIMIT = 65_536  # characters GitHub accepts in an issue body or comment


_MD_ESC = re.compile(r"([\\`*\[\]<>|~])")


def md_text(s: str) -> str:
    """Escape plain text for Markdown (no accidental emphasis, links, HTML or table breaks).

    Only what could trigger markup is escaped, so the raw text stays readable (`snr_db`, `#105`).
    """
    s = _MD_ESC.sub(r"\\\1", s)
    s = re.sub(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])", r"\\_", s)  # intraword _ is never emphasis in GFM
    s = re.sub(r"&(?=#?\w+;)", r"\\&", s)
    s = re.sub(r"^(\s*)(#)", r"\1\\\2", s)
    s = re.sub(r"^(\s*)([-+])(\s)", r"\1\\\2\3", s)
    return re.sub(r"^(\s*\d+)([.)])(\s)", r"\1\\\2\3", s)


def md_code(s: str, in_table: bool = False) -> str:
    """A code span that survives any backticks inside (and pipes inside table cells)."""
    s = " ".join(s.split("\n"))
    run = max((len(m) for m in re.findall(r"`+", s)), default=0)
    fence = "`" * (run + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or (s.startswith(" ") and s.endswith(" ") and s.strip()) else ""
    if in_table:
        s = s.replace("|", "\\|")
    return f"{fence}{pad}{s}{pad}{fence}"


def md_inline(text: Inline, in_table: bool = False) -> str:
    """Render inline spans as Markdown (adjacent bold spans merged, spaces kept outside `**`)."""
    merged: list[Span] = []
    for sp in text:
        kind = "bold" if sp.kind in ("good", "bad") else sp.kind
        if merged and kind == "bold" and merged[-1].kind == "bold":
            merged[-1] = Span("bold", merged[-1].text + sp.text)
        else:
            merged.append(Span(kind, sp.text, sp.target))
    out = []
    for sp in merged:
        if sp.kind == "code":
            out.append(md_code(sp.text, in_table) if sp.text else "")
        elif sp.kind == "bold":
            core = sp.text.strip()
            if not core:
                out.append(md_text(sp.text))
                continue
            lead = sp.text[: len(sp.text) - len(sp.text.lstrip())]
            trail = sp.text[len(sp.text.rstrip()):]
            out.append(f"{lead}**{md_text(core)}**{trail}")
        elif sp.kind == "link":
            out.append(f"[{md_text(sp.text)}]({sp.target})")
        else:
            out.append(md_text(sp.text))
    s = "".join(out).replace("\n", " ")
    return s if s.strip() else ("–" if in_table else s)


def _md_table(t: Table) -> str:
    n = len(t.header)
    align = (t.align or "l" * n).ljust(n, "l")
    sep = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(md_text(h) or " " for h in t.header) + " |",
             "|" + "|".join(sep[a] for a in align) + "|"]
    for row in t.rows:
        cells = [md_inline(cell, in_table=True) for cell in row] + ["–"] * (n - len(row))
        lines.append("| " + " | ".join(cells[:n]) + " |")
    return "\n".join(lines)


def _md_block(blk: Block) -> str:
    if isinstance(blk, Heading):
        return "#" * blk.level + " " + md_text(blk.text)
    if isinstance(blk, Para):
        return md_inline(blk.text)
    if isinstance(blk, Quote):
        return "> " + md_inline(blk.text)
    if isinstance(blk, Bullets):
        return "\n".join("- " + md_inline(i) for i in blk.items)
    if isinstance(blk, Table):
        return _md_table(blk)
    if isinstance(blk, Code):
        run = max((len(m) for m in re.findall(r"`{3,}", blk.text)), default=2)
        fence = "`" * (run + 1)
        return f"{fence}{blk.lang}\n{blk.text.rstrip(chr(10))}\n{fence}"
    if isinstance(blk, Image):
        img = f"![{md_text(blk.alt)}]({blk.file})"
        return img + (f"\n\n*{md_text(blk.caption)}*" if blk.caption else "")
    if isinstance(blk, Details):
        inner = "\n\n".join(_md_block(x) for x in blk.blocks)
        # blank line after </summary> so GitHub renders the Markdown inside
        return f"<details>\n<summary>{_html_summary(blk.summary)}</summary>\n\n{inner}\n\n</details>"
    raise TypeError(f"unknown block {blk!r}")


def _html_summary(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_markdown(blocks: list[Block]) -> str:
    """Render blocks as GitHub-flavoured Markdown (tables, ```diff fences, <details> only as raw HTML)."""
    return "\n\n".join(_md_block(x) for x in blocks).rstrip() + "\n"


def size_note(md: str) -> str | None:
    """A warning when the Markdown is too long to paste into one GitHub issue or comment."""
    if len(md) <= GITHUB_LIMIT:
        return None
    return (f"this report is {len(md):,} characters; GitHub accepts {GITHUB_LIMIT:,} per issue or comment: "
            "paste everything above the appendix (the full tables) and attach report.html")
