"""`bisect --remedies -o`: the plan's files — the patched vendor file (ranges + precision) and the split models.

All-or-nothing: every output is built in memory and every path checked (not an input, folder exists)
before the first byte is written; each file is then written atomically.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from qdebug.cli.promote import text_diff
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
    return ", ".join(f"{n}:" for n in names) + " (or --calib-table FILE for stacks that take a calibration table)"


def plan_ranges(res: BisectResult) -> dict[str, dict]:
    """Every range the plan sets: the calibration remedy's, then the promoted ops' 16-bit ones (they win)."""
    out: dict[str, dict] = {}
    for r in res.result.remedies:
        out.update(r.detail.get("ranges", {}) if r.kind in ("calibration", "precision") else {})
    return out


def write_plan(args: argparse.Namespace, graph: ModelGraph, ds: Dataset, res: BisectResult, prec: Precision,
               step1_cfg: tuple[str, str] | None = None) -> list[str]:
    """Write (or explain why not) the vendor file (precision + ranges), the calibration table and the split
    models of the chosen plan; returns the paths written, for one "wrote PATH" line each. `step1_cfg`: with
    --backend rknn, (path, text) of the toolkit's own step-1 cfg, patched as -o (the toolkit's run folder is
    gone by now, so its text is handed over)."""
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
        return []
    ranges = plan_ranges(res)
    vendor = args.calib or (step1_cfg[0] if step1_cfg else None)
    table = getattr(args, "calib_table", None)
    if ranges and table:
        from qdebug.formats.calib_table import range_of, range_target, render_table

        by_tensor = {range_target(k, v): range_of(v, k) for k, v in ranges.items()}
        outputs.append((Path(table), render_table(by_tensor, trt=not table.endswith(".json"))))
    if table and not ranges:
        notes.append(f"{table} (--calib-table) was not written: the plan changes no activation range")
    if ranges and not vendor and not table:
        notes.append("the re-calibrated ranges are not written anywhere: pass --calib FORMAT:FILE of a format that "
                     f"carries ranges ({range_formats()}) with -o to patch it")
    if vendor and args.output:
        from qdebug.formats.base import VendorFile, load_vendor_file
        from qdebug.formats.rknn2 import RknnQuantCfg

        vf: VendorFile = load_vendor_file(args.calib) if args.calib else RknnQuantCfg.parse(step1_cfg[1], vendor)
        protect += (vf.path or "",)
        text, changed, pnotes = vf.text, [], []
        if "precision" in kinds:  # one promotion per type (per-op types: the fp16 fallback's int16 members)
            pd = kinds["precision"].detail
            main = Precision(pd["precision"]) if "precision" in pd else prec
            per = {k: Precision(v) for k, v in pd.get("per_op", {}).items()}
            for p in sorted({per.get(k, main) for k in kinds["precision"].changed}, key=lambda p: p.rank):
                cur = type(vf).parse(text, vf.path) if text != vf.text else vf
                pr = cur.promote([k for k in kinds["precision"].changed if per.get(k, main) == p], p, graph=graph)
                text, changed, pnotes = pr.text, changed + list(pr.changed), pnotes + list(pr.notes)
        if ranges:
            writer = getattr(type(vf), "write_ranges", None)
            if writer is None:
                notes.append(f"the {vf.format} format cannot carry activation ranges, so the plan's ranges are "
                             f"not in {args.output}; formats that can: {range_formats()}")
            else:  # re-parsed first: the ranges go onto the promoted text (a 16-bit record gets 16-bit values)
                pr = type(vf).parse(text, vf.path).write_ranges(ranges, graph)
                text, changed, pnotes = pr.text, changed + list(pr.changed), pnotes + list(pr.notes)
        if text != vf.text:
            outputs.append((Path(args.output), text))
            res.patched_file = PatchedFile(path=args.output, source=vf.path, format=vf.format,
                                           changed=list(dict.fromkeys(changed)),  # precision + ranges: once each
                                           notes=pnotes, extra_options={}, diff=text_diff(vf.text, text))
    split = kinds.get("split")
    if split is not None and not args.output:
        stem = Path(args.model).stem
        notes.append(f"the split models ({stem}.npu.onnx, {stem}.post.onnx) were not written: pass -o DIR (or, "
                     "with --calib, -o FILE: they go next to it)")
    if split is not None and args.output and rs is not None and rs.split:
        folder = Path(args.output) if not vendor else Path(args.output).parent
        stem = Path(args.model).stem
        sp = HeadSplit(list(rs.split["tail"]), list(rs.split["boundary"]), [], rs.split.get("reason", ""),
                       list(rs.split.get("constants", [])))
        npu, post = split_models(graph, sp)
        outputs += [(folder / f"{stem}.npu.onnx", npu.SerializeToString()),
                    (folder / f"{stem}.post.onnx", post.SerializeToString())]
    _check_all([p for p, _ in outputs], protect, make_folder=split is not None and not vendor)
    for p, data in outputs:
        atomic_write(p, data, protect=protect)
    if rs is not None and rs.split is not None and split is not None and args.output:
        rs.split["files"] = [str(p) for p, _ in outputs if str(p).endswith(".onnx")]
    return [str(p) for p, _ in outputs]




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
