"""Atomic output files: write to a temp file in the target folder, then rename; never touch inputs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from qdebug.errors import QDebugError


def atomic_write(path: str | Path, data: str | bytes, *, protect: tuple[str | Path, ...] = ()) -> Path:
    """Write `data` to `path` atomically; refuse if `path` is one of the protected input files."""
    p = Path(path)
    for q in protect:
        if q and Path(q).exists() and p.exists() and os.path.samefile(p, q):
            raise QDebugError("refusing to overwrite an input file", file=str(p),
                              fix="give a different output path with -o")
    mode = "wb" if isinstance(data, bytes) else "w"
    if p.exists() and not p.is_file():  # /dev/null, /dev/stdout, a FIFO: write through, never replace
        if p.is_dir():
            raise QDebugError("output path is a folder", file=str(p), fix="give a file name")
        with open(p, mode) as f:
            f.write(data)
        return p
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(p.parent))
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8", "newline": ""})) as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p
