"""The reliability plumbing of the CLI: output guard, escaping point, stdout that may fail, diff, temp files."""

from __future__ import annotations

import argparse
import difflib
import errno
import io
import json
import math
import os
import random
from pathlib import Path

import pytest
from rich.console import Console

from qdebug.cli.guard import check_outputs, run_inputs
from qdebug.cli.promote import line_diff
from qdebug.cli.terminal import SafeStream, mk
from qdebug.errors import QDebugError
from qdebug.fileio import atomic_write
from qdebug.results.values import finite_json


def _ns(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**kw)


def test_run_inputs_finds_every_given_path_but_not_outputs(tmp_path: Path) -> None:
    files = {k: tmp_path / f"{k}.bin" for k in ("model", "calib", "ov", "out", "js")}
    for f in files.values():
        f.write_text("x")
    data = tmp_path / "data"
    data.mkdir()
    args = _ns(model=str(files["model"]), data=str(data), calib=f"hisi:{files['calib']}", overrides=str(files["ov"]),
               output=str(files["out"]), json=str(files["js"]), override=["a=int16"], samples=3, labels=None)
    found = set(run_inputs(args))
    assert found == {str(files["model"]), str(data), str(files["calib"]), str(files["ov"])}


@pytest.mark.parametrize("case", ["same", "link", "inside", "twice"])
def test_check_outputs_refuses_collisions(tmp_path: Path, case: str) -> None:
    model = tmp_path / "m.onnx"
    model.write_text("m")
    data = tmp_path / "d"
    data.mkdir()
    link = tmp_path / "alias.onnx"
    os.link(model, link)
    out = {"same": str(model), "link": str(link), "inside": str(data / "r.json"), "twice": str(tmp_path / "x")}[case]
    args = _ns(model=str(model), data=str(data), json=out, output=str(tmp_path / "x") if case == "twice" else None)
    with pytest.raises(QDebugError) as ei:
        check_outputs(args, run_inputs(args))
    assert ("same file" if case == "twice" else "refusing to overwrite") in str(ei.value)


def test_check_outputs_accepts_fresh_paths(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_text("m")
    args = _ns(model=str(model), json=str(tmp_path / "r.json"), output=str(tmp_path / "o.txt"), report=None)
    check_outputs(args, run_inputs(args))  # raises on a collision


@pytest.mark.parametrize("name", ["a[/]b", "nope[v2].onnx", "[bold]x[/bold]", "x\\[y]", "[link=http://e]z"])
def test_mk_shows_user_text_literally(name: str) -> None:
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(mk("[bold]wrote[/] {} and {}", name, name))
    assert buf.getvalue() == f"wrote {name} and {name}\n"


class _Broken(io.StringIO):
    def __init__(self, err: int) -> None:
        super().__init__()
        self.err = err

    def write(self, s: str) -> int:
        raise OSError(self.err, os.strerror(self.err))


def test_safe_stream_goes_quiet_and_keeps_the_first_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdout", _Broken(errno.EPIPE))
    s = SafeStream("stdout")
    assert s.write("abc") == 3 and s.failed is not None and s.failed.errno == errno.EPIPE
    monkeypatch.setattr("sys.stdout", io.StringIO())
    s.write("later")  # once failed, stays quiet
    assert s.failed.errno == errno.EPIPE


def test_finite_json_replaces_and_counts() -> None:
    doc = {"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": "nan", "e": 2}
    clean, n = finite_json(doc)
    assert n == 3
    assert clean == {"a": None, "b": [1.0, None, {"c": None}], "d": "nan", "e": 2}
    json.dumps(clean, allow_nan=False)


def test_line_diff_equals_difflib_on_in_place_edits() -> None:
    rng = random.Random(7)
    for _ in range(400):
        a = [f"r{i} 0x3f80\n" for i in range(rng.randint(1, 60))]
        b = list(a)
        for _ in range(rng.randint(0, 9)):
            i = rng.randrange(len(a))
            b[i] = f"r{i} 0x{rng.randrange(1 << 16):04x}\n"
        assert line_diff(a, b, "in", "out") == list(difflib.unified_diff(a, b, fromfile="in", tofile="out", n=2))
    a, b = ["x\n", "y\n"], ["x\n"]  # a changed line count falls back to difflib
    assert line_diff(a, b, "i", "o") == list(difflib.unified_diff(a, b, fromfile="i", tofile="o", n=2))


def test_temp_files_of_dead_writers_are_swept(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    stale = tmp_path / f".r.json.{dead}.abc.tmp"
    alive = tmp_path / f".r.json.{os.getpid()}.def.tmp"
    other = tmp_path / f".s.json.{dead}.abc.tmp"
    for f in (stale, alive, other):
        f.write_text("partial")
    atomic_write(target, "{}")
    assert not stale.exists() and alive.exists() and other.exists() and target.read_text() == "{}"
