"""`qdebug promote`: write a patched copy of a vendor calibration/config file keeping layers at 16-bit.

The input file is never modified: the output is a new file written atomically, `-o` may not name the
input, and the patched text is re-parsed before it is written.
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from qdebug.cli.options import add_quiet
from qdebug.cli.terminal import hanging, mk, out_console
from qdebug.errors import QDebugError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `promote` subcommand to the CLI's subparsers."""
    p = sub.add_parser(
        "promote", help="patch a vendor calibration/config file so chosen layers stay at 16-bit",
        description="Write a patched copy of a vendor file (hisi:calibration_param.txt, "
                    "rknn:model.quantization.cfg, rknn1:...) keeping --layers at higher precision.")
    p.add_argument("calib", metavar="FORMAT:PATH", help="vendor file, e.g. hisi:out/calibration_param.txt")
    p.add_argument("--layers", required=True, action="append", metavar="NODE[,NODE...]",
                   help="ONNX node names to promote (comma-separated, repeatable)")
    p.add_argument("--dtype", default="int16", help="int16 (default) or fp16")
    p.add_argument("--from16", default=None, metavar="FORMAT:PATH",
                   help="HiSilicon: copy the layers' records from this 16-bit (--compile_mode 1) file")
    p.add_argument("--model", default=None, help="the ONNX model (translates node names, needed by rknn1/qtable)")
    p.add_argument("-o", "--output", required=True, help="patched file to write (never the input)")
    p.add_argument("--export", default=None, metavar="LIST",
                   help="also print the set for other stacks: qtable,horizon,trt,trtexec,ort,nncf,atc,rknn or all")
    p.add_argument("--diff", action="store_true", help="print a unified diff of the changed records")
    add_quiet(p, "print nothing but errors (the patched file is still written)")
    p.set_defaults(func=cmd_promote)


def _layers(values: list[str]) -> list[str]:
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if not names:
        raise QDebugError("no layer names given", where="--layers", fix="pass --layers /model.22/Mul_2")
    return list(dict.fromkeys(names))


def line_diff(a: list[str], b: list[str], src: str, dst: str, n: int = 2) -> list[str]:
    """Unified diff of two texts; when promotion kept the line count (edits in place) it is computed in one pass.

    difflib's matcher is quadratic-ish on a 50 MB calibration file; an in-place edit only needs the lines
    that differ, with `n` lines of context, in the same unified format.
    """
    if len(a) != len(b):
        return list(difflib.unified_diff(a, b, fromfile=src, tofile=dst, n=n))
    changed = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    if not changed:
        return []
    out = [f"--- {src}\n", f"+++ {dst}\n"]
    groups: list[list[int]] = [[changed[0]]]
    for i in changed[1:]:
        if i - groups[-1][-1] - 1 <= 2 * n:  # difflib joins hunks whose context would touch
            groups[-1].append(i)
        else:
            groups.append([i])
    for g in groups:
        lo, hi = max(g[0] - n, 0), min(g[-1] + n + 1, len(a))
        span = f"{lo + 1}" if hi - lo == 1 else f"{lo + 1},{hi - lo}"  # difflib's range format
        out.append(f"@@ -{span} +{span} @@\n")
        i = lo
        while i < hi:
            if a[i] == b[i]:
                out.append(f" {a[i]}")
                i += 1
                continue
            j = i
            while j < hi and a[j] != b[j]:
                j += 1
            out += [f"-{x}" for x in a[i:j]] + [f"+{x}" for x in b[i:j]]  # a changed run: removals, then additions
            i = j
    return out


def text_diff(a: str, b: str) -> str:
    """The patched file's diff against the original, as JSON results keep it (line_diff: one pass in place)."""
    return "".join(line_diff(a.splitlines(True), b.splitlines(True), "original", "patched"))


def cmd_promote(args: argparse.Namespace) -> int:
    """Run `qdebug promote`."""
    from qdebug.fileio import atomic_write
    from qdebug.formats.base import load_vendor_file, split_spec
    from qdebug.formats.exports import export_all
    from qdebug.quant.scheme import Precision

    console = out_console(soft_wrap=True)
    try:
        dtype = Precision.parse(args.dtype)
    except ValueError as exc:
        raise QDebugError(str(exc), where="--dtype", fix="use int16 or fp16") from None
    if dtype is Precision.INT8:
        raise QDebugError("--dtype int8 promotes nothing (int8 is the default precision)", where="--dtype",
                          fix="use int16 or fp16")
    layers = _layers(args.layers)
    _, in_path = split_spec(args.calib)
    out = Path(args.output)
    if out.resolve() == Path(in_path).resolve():
        raise QDebugError("refusing to overwrite the input file", file=str(out),
                          fix="give a different output path with -o")
    vf = load_vendor_file(args.calib)
    donor = None
    donor_path = None
    if args.from16:
        donor = load_vendor_file(args.from16)
        donor_path = split_spec(args.from16)[1]
    graph = None
    if args.model:
        from qdebug.graph.model import ModelGraph

        graph = ModelGraph.load(args.model)
    exports = None
    if args.export:
        names = [e.strip() for e in args.export.split(",") if e.strip()]
        exports = export_all(graph, layers, dtype, None if names == ["all"] else names)
    res = vf.promote(layers, dtype, graph=graph, donor=donor)
    atomic_write(out, res.text, protect=(*args.run_inputs, *(p for p in (in_path, donor_path, args.model) if p)))
    if args.quiet:
        return 0
    t = Table(title=mk("promote: {} file {}", vf.format, in_path), show_lines=False)
    t.add_column("changed record / key")
    t.add_column("to")
    for name in res.changed:
        t.add_row(escape(name), dtype.value)
    if not res.changed:
        t.add_row("(nothing: already at that precision)", "")
    console.print(t)
    for note in res.notes:  # wrapped with a hanging indent (the console soft-wraps: diff lines stay whole)
        console.print(hanging("[yellow]note:[/] ", mk("{}", note)))
    for key, val in res.extra.items():
        console.print(mk("[cyan]{}:[/] {}", key, val))
    if exports:
        for name, text in exports.items():
            console.print(mk("[bold]{}[/]", name))
            console.print(mk("{}", text.rstrip("\n")))
    if args.diff:
        diff = line_diff(vf.text.splitlines(keepends=True), res.text.splitlines(keepends=True), in_path, str(out))
        for line in diff:
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else \
                "cyan" if line.startswith("@@") else None
            console.print(mk("[" + style + "]{}[/]" if style else "{}", line.rstrip("\n")))
    console.print(mk("wrote {}", out))
    return 0
