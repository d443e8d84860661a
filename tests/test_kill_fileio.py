"""Mutation-audit kills for output files: atomic replacement (a failed write leaves the old file whole and no
temp file behind), permissions (a replaced file keeps its mode, a new file gets 0666 & ~umask), input
protection, and `bisect --json` refused onto the model file before any work.
"""

from __future__ import annotations

import os
import stat

import onnx
import pytest

from fixtures.models import make_benign
from qdebug.cli import main
from qdebug.errors import QDebugError
from qdebug.fileio import atomic_write


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "out.json"
    p.write_text("old contents\n")
    with pytest.raises(UnicodeEncodeError):
        atomic_write(p, "new \ud800 text")  # a lone surrogate fails while encoding, mid-write
    assert p.read_text() == "old contents\n"
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_write_replaces_bytes_and_text_exactly(tmp_path):
    p = tmp_path / "sub" / "o.txt"
    atomic_write(p, "a\r\nb\n")
    assert p.read_bytes() == b"a\r\nb\n"  # no newline translation
    atomic_write(p, b"\x00\xff")
    assert p.read_bytes() == b"\x00\xff"
    assert sorted(os.listdir(p.parent)) == ["o.txt"]


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604])
def test_replaced_file_keeps_its_mode(tmp_path, mode):
    p = tmp_path / "o.txt"
    p.write_text("x")
    os.chmod(p, mode)
    atomic_write(p, "y")
    assert stat.S_IMODE(p.stat().st_mode) == mode
    assert p.read_text() == "y"


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_file_gets_0666_minus_umask(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        p = atomic_write(tmp_path / "new.txt", "z")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == expected


def test_protected_inputs_are_refused(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    link = tmp_path / "alias.onnx"
    os.link(model, link)
    for target in (model, link):
        with pytest.raises(QDebugError, match="input file"):
            atomic_write(target, "json", protect=(str(model),))
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(QDebugError):
        atomic_write(data / "out.json", "json", protect=(str(data),))
    assert model.read_bytes() == b"model" and not (data / "out.json").exists()


def test_bisect_json_onto_the_model_is_refused(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(make_benign(), str(model))
    before = model.read_bytes()
    rc = main(["bisect", str(model), "--data", str(tmp_path / "nothing"), "--json", str(model), "-q"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--json" in err and "input" in err
    assert model.read_bytes() == before
