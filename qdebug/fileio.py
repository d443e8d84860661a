"""Atomic output files: write to a temp file in the target folder, then rename; never touch inputs."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from qdebug.errors import QDebugError


def atomic_write(path: str | Path, data: str | bytes, *, protect: tuple[str | Path, ...] = ()) -> Path:
    """Write `data` to `path` atomically; refuse if `path` is one of the protected input files."""
    p = Path(path)
    if not str(path):
        raise QDebugError("empty output path", fix="give a file name")
    try:
        for q in protect:
            if not q or not Path(q).exists():
                continue
            if touches(p, Path(q)):
                raise QDebugError("refusing to overwrite an input file of this run", file=str(p),
                                  fix="give an output path outside the model, data and vendor files")
        return _write(p, data)
    except OSError as exc:
        raise QDebugError(f"cannot write the output ({_why(exc)})", file=str(p), fix=_FIXES.get(
            exc.errno, "choose another output path")) from None


_FIXES = {errno.ENOSPC: "free disk space or write elsewhere", errno.EROFS: "write to a writable folder",
          errno.EACCES: "write to a folder you may write to", errno.EPERM: "write to a folder you may write to",
          errno.ENAMETOOLONG: "use a shorter file name", errno.ENOTDIR: "a part of the path is a file: fix the path",
          errno.EISDIR: "give a file name, not a folder"}


def _why(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else exc.__class__.__name__


def same_path(a: Path, b: Path) -> bool:
    """`a` and `b` name the same file: by name, through a symlink, or as hard links."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except (OSError, ValueError):
        return False


def touches(p: Path, src: Path) -> bool:
    """Writing `p` would touch the input `src`: the same file, or a path inside the folder `src`."""
    try:
        return same_path(p, src) or (src.is_dir() and p.resolve().is_relative_to(src.resolve()))
    except (OSError, ValueError):
        return False


def _sweep(p: Path) -> None:
    """Remove temp files of earlier writes of `p` whose process is gone (a SIGKILL cannot clean up after itself)."""
    head = f".{p.name}."
    try:
        entries = [e for e in os.scandir(p.parent) if e.name.startswith(head) and e.name.endswith(".tmp")]
    except OSError:
        return
    for e in entries:
        pid = e.name[len(head):].split(".", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            os.unlink(e.path)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _write(p: Path, data: str | bytes) -> Path:
    mode = "wb" if isinstance(data, bytes) else "w"
    if p.exists() and not p.is_file():  # /dev/null, /dev/stdout, a FIFO: write through, never replace
        if p.is_dir():
            raise QDebugError("output path is a folder", file=str(p), fix="give a file name")
        with open(p, mode) as f:
            f.write(data)
        return p
    p.parent.mkdir(parents=True, exist_ok=True)
    _sweep(p)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.{os.getpid()}.", suffix=".tmp", dir=str(p.parent))
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8", "newline": ""})) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points to it
        if p.exists():  # a replaced file keeps its mode (a private 0600 output stays private)
            os.chmod(tmp, p.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; new outputs get the usual permissions
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p
