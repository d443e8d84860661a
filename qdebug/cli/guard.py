"""The output guard of every command: outputs never land on an input of the run, nor on each other.

`run_inputs(args)` collects every path the user gave that is not an output (model, data folders, calibration
and vendor files — a `format:path` spec counts by its path — overrides, labels, result files), so a new
option is protected without being listed here. `check_outputs(args)` refuses colliding outputs before any
work starts; `atomic_write(..., protect=run_inputs(args))` checks again at write time.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from qdebug.errors import QDebugError
from qdebug.fileio import same_path, touches

OUTPUT_DESTS = ("output", "json", "report", "draw", "setup_rknn", "calib_table")  # argparse dests that name outputs
_NOT_PATHS = ("func", "command_line", "cmd", "target", "cut_threshold", "override", "run_inputs")


def run_inputs(args: argparse.Namespace) -> tuple[str, ...]:
    """Every existing path among the run's non-output options (a `format:path` value counts by its path)."""
    found: list[str] = []
    for key, value in vars(args).items():
        if key in OUTPUT_DESTS or key in _NOT_PATHS:
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            if not isinstance(item, str) or not item:
                continue
            for cand in (item, item.split(":", 1)[1] if ":" in item else ""):
                if cand and _exists(cand):
                    found.append(cand)
    return tuple(dict.fromkeys(found))


def _exists(p: str) -> bool:
    try:
        return os.path.exists(p)
    except (OSError, ValueError):  # a name too long for the OS or with a NUL byte is no input
        return False


def check_outputs(args: argparse.Namespace, inputs: tuple[str, ...]) -> None:
    """Refuse, before any work, an output that is an input, lies inside an input folder, or repeats another output."""
    given = [(f"--{k.replace('_', '-')}" if k != "output" else "-o", v) for k in OUTPUT_DESTS
             if k != "setup_rknn" and isinstance(v := getattr(args, k, None), str)]
    for opt, v in given:
        if not v.strip():
            raise QDebugError("empty output path", where=opt, fix=f"give {opt} a file or folder name")
        name = Path(v).name
        if len(os.fsencode(name)) > 255:
            raise QDebugError(f"output file name is {len(os.fsencode(name))} bytes long (the limit is 255)",
                              file=v, where=opt, fix="use a shorter file name")
    outs = [(opt, Path(v)) for opt, v in given]
    for opt, p in outs:
        for src in inputs:
            q = Path(src)
            if touches(p, q):
                raise QDebugError(f"refusing to overwrite an input of this run ({src}) with {opt}", file=str(p),
                                  fix="give an output path outside the model, data and vendor files")
    for i, (opt, p) in enumerate(outs):
        for opt2, p2 in outs[i + 1:]:
            if same_path(p, p2):
                raise QDebugError(f"{opt} and {opt2} name the same file", file=str(p),
                                  fix=f"give {opt2} a different path")


def write_json(path: str, doc: object, protect: tuple[str, ...]) -> None:
    """Write a result document atomically; a NaN/Inf that slipped into it becomes null with one warning line."""
    import json

    from qdebug.cli.terminal import err_console, mk
    from qdebug.fileio import atomic_write
    from qdebug.results.values import finite_json

    clean, n = finite_json(doc)
    if n:
        err_console.print(mk("qdebug: warning: {} non-finite number(s) written as null in {}", n, path),
                          soft_wrap=True)
    atomic_write(path, json.dumps(clean, indent=1, allow_nan=False) + "\n", protect=protect)
