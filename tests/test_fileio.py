"""The atomic writer: inputs never replaced, modes kept, OS errors as one line, no temp file left."""

from __future__ import annotations

import os
import stat

import pytest

from qdebug.errors import QDebugError
from qdebug.fileio import atomic_write


def test_refuses_a_file_inside_a_protected_folder(tmp_path):
    data = tmp_path / "images"
    data.mkdir()
    (data / "a.npy").write_bytes(b"x")
    with pytest.raises(QDebugError, match="input file of this run"):
        atomic_write(data / "run.json", "{}", protect=(data,))
    with pytest.raises(QDebugError, match="input file of this run"):
        atomic_write(data / "a.npy", "{}", protect=(data / "a.npy",))
    assert sorted(p.name for p in data.iterdir()) == ["a.npy"] and (data / "a.npy").read_bytes() == b"x"


def test_replaced_file_keeps_its_mode(tmp_path):
    out = tmp_path / "private.json"
    out.write_text("old")
    os.chmod(out, 0o600)
    atomic_write(out, "new")
    assert out.read_text() == "new" and stat.S_IMODE(out.stat().st_mode) == 0o600


def test_os_errors_are_one_line_and_leave_no_temp_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(QDebugError) as e:
        atomic_write(blocker / "sub" / "out.json", "{}")
    assert "\n" not in e.value.one_line() and "fix:" in e.value.one_line()
    with pytest.raises(QDebugError, match="shorter file name"):
        atomic_write(tmp_path / ("n" * 300), "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
