"""`bisect --remedies -o`: the plan's files — the patched vendor file (ranges + precision) and the split models.

All-or-nothing: every output is built in memory and every path checked (not an input, folder exists)
before the first byte is written; each file is then written atomically.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from qdebug.cli.terminal import err_console, mk
from qdebug.errors import QDebugError
from qdebug.fileio import atomic_write
from qdebug.graph.model import ModelGraph
from qdebug.inputs.dataset import Dataset
from qdebug.quant.scheme import Precision
from qdebug.results.bisect import BisectResult
from qdebug.results.vendor import PatchedFile


def range_formats() -> str:
    """Vendor formats whose module can write activation ranges back (a `write_ranges` method), as text."""
    import qdebug.formats  # noqa: F401  (registers the formats)
    from qdebug.formats.base import FORMATS

    names = sorted(k for k, cls in FORMATS.items() if hasattr(cls, "write_ranges"))
    return ", ".join(names) if names else ("none yet in this version: apply the ranges in remedy_search/"
                                          "result.remedies by hand")


def write_plan(args: argparse.Namespace, graph: ModelGraph, ds: Dataset, res: BisectResult, prec: Precision) -> None:
    """Write (or explain why not) the vendor file and the split models of the chosen plan."""
    from qdebug.search.split import HeadSplit, split_models

    rs = res.remedy_search
    kinds = {r.kind: r for r in res.result.remedies}
    notes = rs.notes if rs is not None else []
    outputs: list[tuple[Path, bytes | str]] = []
    protect: tuple[str, ...] = tuple(args.run_inputs)
    if not res.result.met or not kinds:
        if args.output:
            err_console.print(mk("qdebug: note: {} (-o) was not written: {}", args.output,
                                 "no plan meets the target" if not res.result.met else "nothing to change"),
                              soft_wrap=True)
        return
    calib = kinds.get("calibration")
    if calib is not None and not args.calib:
        notes.append("the re-calibrated ranges are not written anywhere: pass --calib FORMAT:FILE of a format that "
                     f"carries ranges ({range_formats()}) with -o to patch it")
    if args.calib and args.output:
        from qdebug.formats.base import load_vendor_file

        vf = load_vendor_file(args.calib)
        protect += (vf.path or "",)
        text, changed, pnotes = vf.text, [], []
        if "precision" in kinds:
            pr = vf.promote(kinds["precision"].changed, prec, graph=graph)
            text, changed, pnotes = pr.text, list(pr.changed), list(pr.notes)
        if calib is not None:
            writer = getattr(type(vf), "write_ranges", None)
            if writer is None:
                notes.append(f"the {vf.format} format cannot carry activation ranges, so the calibration remedy is "
                             f"not in {args.output}; formats that can: {range_formats()}")
            else:
                pr = type(vf).parse(text, vf.path).write_ranges(calib.detail.get("ranges", {}), graph)
                text, changed, pnotes = pr.text, changed + list(pr.changed), pnotes + list(pr.notes)
        if text != vf.text:
            outputs.append((Path(args.output), text))
            res.patched_file = PatchedFile(path=args.output, source=vf.path, format=vf.format, changed=changed,
                                           notes=pnotes, extra_options={}, diff=_diff(vf.text, text))
    split = kinds.get("split")
    if split is not None and args.output and rs is not None and rs.split:
        folder = Path(args.output) if not args.calib else Path(args.output).parent
        stem = Path(args.model).stem
        sp = HeadSplit(list(rs.split["tail"]), list(rs.split["boundary"]), [], rs.split.get("reason", ""),
                       list(rs.split.get("constants", [])))
        npu, post = split_models(graph, sp)
        outputs += [(folder / f"{stem}.npu.onnx", npu.SerializeToString()),
                    (folder / f"{stem}.post.onnx", post.SerializeToString())]
    _check_all([p for p, _ in outputs], protect, make_folder=split is not None and not args.calib)
    for p, data in outputs:
        atomic_write(p, data, protect=protect)
    if rs is not None and rs.split is not None and split is not None and args.output:
        rs.split["files"] = [str(p) for p, _ in outputs if str(p).endswith(".onnx")]


def _diff(a: str, b: str) -> str:
    import difflib

    return "".join(difflib.unified_diff(a.splitlines(True), b.splitlines(True), "original", "patched", n=2))


def _check_all(paths: list[Path], protect: tuple[str, ...], make_folder: bool) -> None:
    """Refuse before writing anything: an output that is an input, two outputs on one path, a missing folder."""
    seen: set[str] = set()
    for p in paths:
        key = os.path.abspath(p)
        if key in seen:
            raise QDebugError("two outputs of the plan would go to the same file", file=str(p),
                              fix="give -o a different name")
        seen.add(key)
        for q in protect:
            if q and Path(q).exists() and p.exists() and os.path.samefile(p, q):
                raise QDebugError("refusing to overwrite an input file of this run", file=str(p),
                                  fix="give an output path outside the model, data and vendor files")
        if not p.parent.exists():
            if make_folder:
                p.parent.mkdir(parents=True, exist_ok=True)
            else:
                raise QDebugError("the output folder does not exist", file=str(p), fix="create it or fix -o")
