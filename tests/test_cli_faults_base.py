"""Harness of the CLI fault tables (issue #14): one `Case` per bad input, run in-process through `qdebug.cli.main`.

Every case checks the contract of a refused (or odd but valid) run: the exit code, exactly one stderr line
starting `qdebug: error:` that names the file/place and the fix (warning lines only when whitelisted), no
traceback, every input file byte-identical with the same mtime, and no file written when the run is refused.
This module holds no tests; the tables are in tests/test_cli_faults*.py.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import subprocess
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fixtures.data import make_images
from fixtures.models import make_benign, make_yolov8
from fixtures.vendor import make_hisi_calibration, make_hisi_calibration16, make_rknn_cfg, model_ranges
from qdebug.cli import main
from qdebug.cli.terminal import err_console

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ERR = "qdebug: error:"
Files = dict[str, "bytes | str | Callable[[dict[str, Path]], bytes | str]"]


@dataclass(frozen=True)
class Case:
    """One row of a fault table: argv with <tokens>, the expected exit code and what the error line must name."""

    id: str
    argv: tuple[str, ...]
    rc: int = 2  # non-zero: a refusal; 0: valid but odd input
    names: tuple[str, ...] = ()  # substrings the error line must contain (file, option, line...)
    files: Files = field(default_factory=dict)  # case files (relative to the case folder) written before the run
    setup: Callable[[Path, dict[str, Path]], Callable[[], None] | None] | None = None  # may return a cleanup
    warn: tuple[str, ...] = ()  # whitelisted prefixes of warning lines on stderr ("*text": the line contains text)
    outputs: tuple[str, ...] = ()  # files the run must write (rc 0), relative to the case folder; globs may be written
    out_text: tuple[str, ...] = ()  # text that must appear literally in stdout+stderr (markup in names)
    xfail: str | None = None  # why this case fails today (strict: a fix turns it into a loud XPASS)
    skip: str | None = None


def params(cases: Iterable[Case]) -> list:
    """pytest.param per case, with its id and its strict xfail/skip mark."""
    ids = set()
    out = []
    for c in cases:
        assert c.id not in ids, f"duplicate case id {c.id}"
        ids.add(c.id)
        marks = []
        if c.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=c.xfail))
        if c.skip:
            marks.append(pytest.mark.skip(reason=c.skip))
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


# --------------------------------------------------------------------- generated inputs (session)
def tiny_model(path: Path, dtype: int = TensorProto.FLOAT, out_name: str = "y", node_name: str = "act",
               shape: tuple[int, ...] = (1, 3, 16, 16)) -> Path:
    """Relu model (one input 'x' of `dtype`), with free output and node names (for markup cases)."""
    op = "Relu" if dtype == TensorProto.FLOAT else "Identity"
    g = helper.make_graph([helper.make_node(op, ["x"], [out_name], name=node_name)], "t",
                          [helper.make_tensor_value_info("x", dtype, list(shape))],
                          [helper.make_tensor_value_info(out_name, dtype, list(shape))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _npy_dir(d: Path, shape: tuple[int, ...], n: int, seed: int = 0) -> Path:
    d.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        np.save(d / f"s{i}.npy", rng.random(shape, dtype=np.float32))
    return d


@pytest.fixture(scope="session")
def fenv(tmp_path_factory) -> dict[str, Path]:
    """The shared, read-only inputs of every case: small models, data folders, vendor files, result JSONs."""
    d = tmp_path_factory.mktemp("faults")
    env: dict[str, Path] = {"base": d}
    benign = make_benign()
    onnx.save(benign, str(d / "benign.onnx"))
    env["benign"] = d / "benign.onnx"
    y8 = make_yolov8(input_size=32, width=8)
    onnx.save(y8, str(d / "y8.onnx"))
    env["y8"] = d / "y8.onnx"
    env["npy"] = _npy_dir(d / "npy", (1, 3, 16, 16), 2)
    env["npy2"] = _npy_dir(d / "npy2", (1, 3, 16, 16), 2, seed=1)
    env["y8npy"] = _npy_dir(d / "y8npy", (1, 3, 32, 32), 2)
    env["img"] = d / "img"
    make_images(env["img"], n=2, size=(24, 20))
    ranges = model_ranges(benign)
    for key, name, text in (("hisi", "h.txt", make_hisi_calibration(benign, ranges)),
                            ("hisi16", "h16.txt", make_hisi_calibration16(benign, ranges)),
                            ("rknn", "r.quantization.cfg", make_rknn_cfg(benign, ranges))):
        (d / name).write_text(text)
        env[key] = d / name
    (d / "ov.json").write_text(json.dumps({"/conv1/Conv": "int16"}))
    env["ov"] = d / "ov.json"
    env["uint8"] = tiny_model(d / "u8.onnx", TensorProto.UINT8)
    env["int8"] = tiny_model(d / "i8.onnx", TensorProto.INT8)
    env["cmpjson"] = d / "compare.json"
    rc = main(["compare", str(env["benign"]), "--data", str(env["npy"]), "--json", str(env["cmpjson"]), "-q"])
    assert rc == 0, "fixture: compare --json failed"
    return env


def expand(argv: Iterable[str], env: dict[str, Path], case_dir: Path) -> list[str]:
    """Replace <key> tokens by the session paths and <t> by the case folder."""
    out = []
    for a in argv:
        a = a.replace("<t>", str(case_dir))
        for k, v in env.items():
            a = a.replace(f"<{k}>", str(v))
        out.append(a)
    return out


# --------------------------------------------------------------------- snapshot of the inputs
def snapshot(roots: Iterable[Path]) -> dict[str, tuple]:
    """Every entry under `roots`: kind, then for files sha256 + size + mtime_ns (symlinks: their target text)."""
    snap: dict[str, tuple] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                if os.path.islink(p):
                    snap[p] = ("link", os.readlink(p))
                elif os.path.isdir(p):
                    snap[p] = ("dir",)
                else:
                    try:
                        with open(p, "rb") as f:
                            digest = hashlib.sha256(f.read()).hexdigest()
                    except OSError:
                        digest = "unreadable"
                    snap[p] = ("file", digest, st.st_size, st.st_mtime_ns)
    return snap


# --------------------------------------------------------------------- running and checking
@dataclass
class Run:
    """What one in-process run produced."""

    rc: int
    out: str
    err: str
    crash: str = ""  # formatted traceback of an exception that escaped main()


def _warning_lines(caught: list) -> list[str]:
    """Python warnings as the console script would print them (first line of each)."""
    return [warnings.formatwarning(w.message, w.category, w.filename, w.lineno).splitlines()[0] for w in caught]


def run_main(argv: list[str], capsys) -> Run:
    """main(argv) in-process; argparse's SystemExit is an exit code, any other escaping exception a crash."""
    crash = ""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # noqa: BLE001 - an escaping exception is what the test reports
            crash = traceback.format_exc()
            rc = 1
    cap = capsys.readouterr()
    err = cap.err + "".join(line + "\n" for line in _warning_lines(caught)) + crash
    return Run(rc=rc, out=cap.out, err=err, crash=crash)


def stderr_problems(err: str, warn: tuple[str, ...], refused: bool) -> list[str]:
    """Violations of the stderr contract: one `qdebug: error:` line when refused (none otherwise), last, and
    other lines only whitelisted warnings (with their wrapped continuations), no traceback."""
    problems = []
    if "Traceback" in err:
        problems.append("traceback on stderr")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(ERR)]
    if refused and len(errors) != 1:
        problems.append(f"{len(errors)} '{ERR}' lines (want exactly 1)")
    if not refused and errors:
        problems.append("an error line on a valid run")
    in_warning = False
    for ln in lines:
        if ln.startswith(ERR):
            in_warning = False
            continue
        if any(ln.startswith(w) or (w.startswith("*") and w[1:] in ln) for w in warn):
            in_warning = True
        elif not (in_warning and not ln.startswith("qdebug")):
            problems.append(f"unexpected stderr line: {ln[:160]!r}")
    if refused and errors and lines[-1] != errors[0]:
        problems.append("the error line is not the last line")
    return problems


def check_case(case: Case, fenv: dict[str, Path], tmp_path: Path, capsys, monkeypatch) -> Run:
    """Set the case up, run it, and assert the whole contract; returns the run for extra checks."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(err_console, "_width", 80)  # a piped stderr: 80 columns, like a CI log
    case_dir = tmp_path / "c"
    case_dir.mkdir()
    for rel, content in case.files.items():
        p = case_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        data = content(fenv) if callable(content) else content
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
    monkeypatch.chdir(case_dir)  # a relative or empty output path lands here, where the checks see it
    cleanup = case.setup(case_dir, fenv) if case.setup else None
    try:
        roots = [fenv["base"], case_dir]
        before = snapshot(roots)
        run = run_main(expand(case.argv, fenv, case_dir), capsys)
        after = snapshot(roots)
    finally:
        if cleanup:
            cleanup()
    refused = case.rc != 0
    problems = stderr_problems(run.err, case.warn, refused)
    if run.rc != case.rc:
        problems.append(f"exit code {run.rc}, want {case.rc}")
    changed = sorted(p for p in before if after.get(p) != before[p])
    if changed:
        problems.append(f"inputs modified or removed: {changed}")
    new = sorted(set(after) - set(before))
    allowed = [str(case_dir / o) for o in case.outputs]  # entries may be globs (plots: rep/*.png)
    stray = [p for p in new if refused or not any(p == a or ("*" in a and fnmatch.fnmatchcase(p, a))
                                                  for a in allowed)]
    if stray:
        problems.append(f"files written: {stray}")
    if not refused:
        missing = sorted(a for a in allowed if "*" not in a and a not in after)
        if missing:
            problems.append(f"requested outputs missing: {missing}")
    if refused:
        line = next((ln for ln in run.err.splitlines() if ln.startswith(ERR)), "")
        want = expand(case.names, fenv, case_dir)
        absent = [n for n in want if n not in line]
        if line and absent:
            problems.append(f"error line does not name {absent}")
        if line and "(fix:" not in line:
            problems.append("error line has no '(fix: ...)'")
    text = run.out + run.err
    for t in expand(case.out_text, fenv, case_dir):
        if t not in text:
            problems.append(f"{t!r} not printed literally")
    assert not problems, "; ".join(problems) + f"\n--- stderr ---\n{run.err[-3000:]}"
    return run


# --------------------------------------------------------------------- helpers for the tables
def read(key: str, start: int = 0, stop: int | None = None) -> Callable[[dict[str, Path]], bytes]:
    """A case file made from a slice of a session input (a truncated copy)."""
    return lambda env: env[key].read_bytes()[start:stop]


def frac(key: str, f: float) -> Callable[[dict[str, Path]], bytes]:
    """The first fraction `f` of a session input."""
    return lambda env: env[key].read_bytes()[: int(len(env[key].read_bytes()) * f)]


def subst(key: str, old: str, new: str, count: int = 1) -> Callable[[dict[str, Path]], str]:
    """A session text input with `old` replaced by `new` (the first `count` times)."""
    def make(env: dict[str, Path]) -> str:
        text = env[key].read_text()
        assert old in text, f"{old!r} not in {key}"
        return text.replace(old, new, count)
    return make


def npy_bytes(arr: np.ndarray) -> bytes:
    """The .npy serialisation of `arr` (pickles refused: object arrays are built by hand in the tables)."""
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=arr.dtype.hasobject)
    return buf.getvalue()


def run_cli_process(argv: list[str], **kw) -> subprocess.Popen:
    """The console script as a child process (`python -m qdebug.cli`), repo on the path, wide stderr."""
    import sys

    env = dict(os.environ, COLUMNS="200", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.Popen([sys.executable, "-m", "qdebug.cli", *argv], env=env, **kw)
