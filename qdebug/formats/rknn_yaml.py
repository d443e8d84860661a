"""YAML text helpers for the Rockchip formats: a tag-free composer, a line scanner and line-ending-safe edits.

Files are never re-dumped: they are read for values and line marks and edited as text. The composer is
PyYAML's safe composer without implicit timestamps, refusing tags, anchors and aliases (the toolkits never
write them), and without the constructor. `split_sections` cuts a file into its top-level `key: value`
sections and `entry_end` finds where an entry of a block mapping ends, so a big file is read piece by piece
in one linear pass (PyYAML's node tree of a whole big file costs far more time and memory than the file);
each piece composes to the same nodes as it does inside the whole document. Text that the line scanner
cannot cut safely is composed whole, up to `EXACT_LIMIT` characters.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import yaml

from qdebug.errors import FormatError

EXACT_LIMIT = 4_000_000  # characters of YAML composed in one piece at most (PyYAML's time and memory)
MAX_KEY_CHARS = 1000  # PyYAML's limit for a plain key is 1024 characters


class Refused(yaml.scanner.ScannerError):
    """A YAML feature the toolkits never write (tags, anchors, aliases)."""


class Loader(yaml.SafeLoader):
    """SafeLoader without implicit timestamps that refuses tags, anchors and aliases (used to compose only)."""

    yaml_implicit_resolvers = {
        k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def _refuse(self, what: str) -> None:
        raise Refused(None, None, f"{what} are not used in this file format", self.get_mark())

    def fetch_tag(self) -> None:
        self._refuse("YAML tags (!tag, !!timestamp...)")

    def fetch_anchor(self) -> None:
        self._refuse("YAML anchors (&name)")

    def fetch_alias(self) -> None:
        self._refuse("YAML aliases (*name)")


_RESOLVER = Loader("")


def resolve_plain(value: str) -> str:
    """The tag PyYAML (with this module's resolvers) gives a plain scalar."""
    return _RESOLVER.resolve(yaml.ScalarNode, value, (True, False))


class NeedsWholeText(Exception):
    """A piece failed in a way that may come from where it was cut: compose the whole text instead."""

    def __init__(self, line: int) -> None:
        super().__init__(f"line {line}")
        self.line = line


def compose(text: str, path: str | None, start: int = 0, end: int | None = None, line0: int = 0) -> yaml.Node | None:
    """Compose `text[start:end]` (line `line0 + 1` onwards); marks are shifted to positions in `text`.

    An error that ends the piece (an unclosed bracket or quote) raises NeedsWholeText when the piece is not the
    whole text; any other error is a FormatError on the right line."""
    whole = start == 0 and (end is None or end == len(text))
    piece = text if whole else text[start:end]
    refuse_if_too_big(len(piece), line0 + 1, path)
    loader = Loader(piece)
    try:
        node = loader.get_single_node()
    except Refused as exc:
        raise FormatError(f"invalid YAML: {exc.problem}", file=path, where=f"line {exc.problem_mark.line + 1 + line0}",
                          fix="remove it: the toolkit writes plain values (dates and other text stay strings)") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if not whole and (mark is None or not piece[mark.index:].strip()):
            raise NeedsWholeText(line0 + 1) from None
        where = f"line {mark.line + 1 + line0}" if mark is not None else None
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        if exc.context and exc.context_mark is not None and exc.problem_mark is not None \
                and exc.context_mark.line != exc.problem_mark.line:
            problem += f" ({exc.context.strip()} on line {exc.context_mark.line + 1 + line0})"
        raise FormatError(f"invalid YAML: {problem}", file=path, where=where,
                          fix="restore the file the toolkit wrote and edit only the entries you mean to") from None
    except yaml.reader.ReaderError as exc:
        line = line0 + 1 + piece.count("\n", 0, exc.position)
        raise FormatError(f"invalid YAML: character {exc.character!r} is not allowed", file=path,
                          where=f"line {line}", fix="remove the control character") from None
    except (yaml.YAMLError, RecursionError, ValueError, TypeError, OverflowError) as exc:
        if not whole:
            raise NeedsWholeText(line0 + 1) from None
        what = "nested too deeply" if isinstance(exc, RecursionError) else type(exc).__name__
        raise FormatError(f"invalid YAML ({what})", file=path, where=f"line {loader.get_mark().line + 1 + line0}",
                          fix="restore the file the toolkit wrote") from None
    finally:
        loader.dispose()
    if node is not None and not whole:
        shift_marks(node, start, line0)
    return node


def refuse_if_too_big(size: int, line: int, path: str | None) -> None:
    """FormatError when `size` characters (not in the toolkit's layout from `line` on) are too many to compose."""
    if size <= EXACT_LIMIT:
        return
    raise FormatError(f"the YAML from this line on is not in the layout the toolkit writes, and {size:,} "
                      f"characters are too many to read as general YAML", file=path, where=f"line {line}",
                      fix="restore the layout the toolkit wrote (block mappings, 4-space indent, one value a line)")


def shift_marks(root: yaml.Node, index: int, line: int) -> None:
    """Move the marks of a composed piece to its place in the whole text (pieces start at a line start)."""
    stack = [root]
    while stack:
        n = stack.pop()
        for attr in ("start_mark", "end_mark"):
            m = getattr(n, attr)
            setattr(n, attr, yaml.Mark(m.name, m.index + index, m.line + line, m.column, None, None))
        if isinstance(n, yaml.MappingNode):
            stack.extend(x for kv in n.value for x in kv)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)


def mapping_items(node: yaml.Node | None) -> list[tuple[yaml.Node, yaml.Node]]:
    """(key node, value node) pairs of a mapping node ([] for anything else)."""
    return list(node.value) if isinstance(node, yaml.MappingNode) else []


def line_of(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}"


def render_entry(key: str, value: str, path: str | None = None) -> str:
    """`key: value` on one line, with YAML quoting where the key needs it (e.g. names with ': ' or a leading '*')."""
    s = yaml.safe_dump({key: value}, default_flow_style=False, width=1 << 30, allow_unicode=True).rstrip("\n")
    if "\n" in s or s.startswith("? "):  # PyYAML writes keys over 128 characters as `? key`: quote instead
        s = f"{json.dumps(key, ensure_ascii=False)}: {value}"
    if len(s) > MAX_KEY_CHARS:
        raise FormatError(f"tensor name of {len(key)} characters is too long for a YAML key", file=path,
                          fix="promote a layer with a shorter tensor name")
    return s


def child_indent(node: yaml.Node | None, text: str, default: int = 4) -> int:
    """Indent used for the children of a block mapping (the toolkit uses 4)."""
    items = mapping_items(node)
    if items and not getattr(node, "flow_style", False):
        return items[0][0].start_mark.column
    return default


def line_ending(text: str, pos: int | None = None) -> str:
    """The line ending of the line holding `pos` ("\\r\\n" or "\\n"), else the file's first one."""
    eol = text.find("\n", pos or 0) if pos is not None else -1
    if eol < 0:
        eol = text.find("\n")
    return "\r\n" if eol > 0 and text[eol - 1] == "\r" else "\n"


def _line_end(text: str, eol: int) -> int:
    """Where a line ends before its line ending: `eol` is the index of its '\\n'."""
    return eol - 1 if eol > 0 and text[eol - 1] == "\r" else eol


def set_block_entries(text: str, key_node: yaml.Node, value_node: yaml.Node, indent: int,
                      entries: list[tuple[str, str]], path: str | None = None) -> str:
    """Add/replace `key: value` entries of a top-level mapping, editing only that mapping's text.

    A flow mapping (`{}`) or an empty value becomes a block mapping; existing block entries keep their
    text; a key that exists gets only its value scalar replaced. New lines use the line ending of the line
    they follow, so a CRLF file stays CRLF.
    """
    pad = " " * indent
    wanted = dict(entries)
    flow = isinstance(value_node, yaml.MappingNode) and bool(value_node.flow_style)
    null = isinstance(value_node, yaml.ScalarNode) and value_node.tag.endswith(":null")
    if flow or null:
        nl = line_ending(text, key_node.start_mark.index)
        old = [(str(k.value), str(v.value)) for k, v in mapping_items(value_node)]
        merged = [(k, wanted.get(k, v)) for k, v in old] + [(k, v) for k, v in entries if k not in dict(old)]
        block = nl.join(pad + render_entry(k, v, path) for k, v in merged)
        a, b = value_node.start_mark.index, value_node.end_mark.index
        while a > key_node.end_mark.index and text[a - 1] in " \t":
            a -= 1
        eol = text.find("\n", b)
        if eol < 0:
            return text[:a] + text[b:] + nl + block + nl
        at = _line_end(text, eol)
        return text[:a] + text[b:at] + nl + block + text[at:]
    existing = {str(k.value): v for k, v in mapping_items(value_node)}
    edits: list[tuple[int, int, str]] = []
    new_lines: list[str] = []
    for k, v in entries:
        if k in existing:
            vn = existing[k]
            if str(vn.value) != v:
                edits.append((vn.start_mark.index, vn.end_mark.index, v))
        else:
            new_lines.append(pad + render_entry(k, v, path))
    if new_lines:
        items = mapping_items(value_node)
        if not items:
            raise FormatError("cannot add entries to a non-mapping section", file=path, where=line_of(key_node),
                              fix="write `" + str(key_node.value) + ": {}`")
        last = items[-1][1]
        pos = last.end_mark.index
        if isinstance(last, yaml.ScalarNode):
            eol = text.find("\n", pos)
        else:  # a nested block ends at the start of the next line
            eol = pos - 1 if pos > 0 and text[pos - 1] == "\n" else text.find("\n", pos)
        if eol < 0:
            nl = line_ending(text)
            edits.append((len(text), len(text), nl + nl.join(new_lines) + nl))
        else:
            nl = line_ending(text, eol)
            at = _line_end(text, eol)
            edits.append((at, at, nl + nl.join(new_lines)))
    for a, b, rep in sorted(edits, reverse=True):
        text = text[:a] + rep + text[b:]
    return text


# ------------------------------------------------------------------ cutting a file into pieces
_ODD_BREAKS = re.compile("[\x85\u2028\u2029]")  # line breaks for YAML, not for a line scanner
_NON_PRINTABLE = yaml.reader.Reader.NON_PRINTABLE
_TOP_LINE = re.compile(r"\n(?=[^ \r\n#])")
_TOP_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)[ ]*:(?=[ \r\n]|\Z)")
_BLANKS = re.compile(r"(?:[ ]*(?:#[^\r\n]*)?\r?\n)*")
_INDENT = re.compile(r" *")
_ENTRY_END: dict[int, re.Pattern[str]] = {}


@dataclass
class Section:
    """One top-level `key: value` of a file: `text[start:end]`, its key and (unless read entry by entry) value."""

    key: str
    start: int
    end: int
    line: int
    key_node: yaml.Node | None = None
    value_node: yaml.Node | None = None


def has_top_key(text: str, key: str) -> bool:
    """True when a line of `text` starts with `key:` (a literal search, fast on big files)."""
    first = re.compile(re.escape(key) + r"\s*:")
    return bool(first.match(text, 1 if text.startswith("\ufeff") else 0)) or bool(
        re.search("\n" + first.pattern, text))


def check_printable(text: str, path: str | None) -> None:
    """FormatError for a character YAML does not allow (PyYAML's reader refuses it too)."""
    m = _NON_PRINTABLE.search(text)
    if m is not None:
        raise FormatError(f"invalid YAML: character {m.group()!r} is not allowed", file=path,
                          where=f"line {1 + text.count(chr(10), 0, m.start())}", fix="remove the control character")


def split_sections(text: str) -> list[Section] | None:
    """The top-level sections, cut at lines that start in column 0; None when the file cannot be cut safely
    (content before the first key, a key that is not a plain name, unusual line breaks)."""
    if ("\r" in text and text.count("\r") != text.count("\r\n")) or (
            not text.isascii() and _ODD_BREAKS.search(text)):
        return None
    begin = 1 if text.startswith("\ufeff") else 0
    starts = [m.end() for m in _TOP_LINE.finditer(text, begin)]
    if begin < len(text) and text[begin] not in " \r\n#":
        starts.insert(0, begin)
    if not starts or _BLANKS.match(text, begin).end() < starts[0]:
        return None
    first = starts[0]
    out: list[Section] = []
    line = 1 + text.count("\n", 0, first)
    for k, s in enumerate(starts):
        m = _TOP_KEY.match(text, s)
        if m is None:
            return None
        end = starts[k + 1] if k + 1 < len(starts) else len(text)
        out.append(Section(m.group(1), s, end, line))
        line += text.count("\n", s, end)
    return out


def indent_at(text: str, pos: int) -> int:
    """Number of spaces at `pos` (a line start)."""
    return len(_INDENT.match(text, pos).group())


def skip_blank_lines(text: str, pos: int, end: int) -> int:
    """The start of the first line at or after `pos` (a line start) that is not blank or a comment."""
    return _BLANKS.match(text, pos, end).end()


def entry_end(text: str, pos: int, end: int, indent: int) -> int:
    """Where the block-mapping entry starting at `pos` (indented `indent`) ends: the next line indented
    `indent` or less that is not blank or a comment, else `end`."""
    nxt = _ENTRY_END.get(indent)
    if nxt is None:
        nxt = _ENTRY_END[indent] = re.compile(rf"\n(?= {{0,{indent}}}[^ \r\n#])")
    m = nxt.search(text, pos, end)
    return m.end() if m is not None else end
