"""Guards for input data: each bad path, file or value becomes one DataError naming the file, the place and the fix.

The rules, checked before a value reaches the model (nothing is rounded, wrapped or dropped silently):
- paths: missing, unreadable (EACCES), a path component that is a file (ENOTDIR), a name too long or a
  symbolic-link loop are refused with the reason; names starting with '.' are skipped in folders.
- array dtypes: bool, integers and real floats only; complex (the imaginary part would be dropped),
  strings, structured records, Python objects and dates are refused from the .npy header, before loading.
- values: NaN/Inf are refused with the first position; so is a value that overflows the model's float type.
  An integer model input takes exact integers within its dtype's range (a bool input takes 0/1); other
  values are refused, never rounded or wrapped. Integer data for an int64 input (token ids, masks) is fed
  as stored.
"""

from __future__ import annotations

import errno
import os
import stat
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from qdebug.errors import DataError

_READ_FIX = "make it readable (chmod a+r FILE, chmod a+rx FOLDER) or copy the data to a readable place"
_SAVE_FIX = "save a numeric array, e.g. numpy.save(path, numpy.asarray(x, dtype=numpy.float32))"


# --------------------------------------------------------------------- paths
def os_error(exc: OSError, path: Path, what: str = "file") -> DataError:
    """The DataError for an OS failure on `path` (`what`: file, data path, data folder)."""
    code = exc.errno
    if code == errno.ENOENT:
        if os.path.islink(path):
            return DataError(f"{what} not found (a broken symbolic link)", file=str(path),
                             fix="remove the link or restore the file it points to")
        return DataError(f"{what} not found", file=str(path),
                         fix="check the path; pass --data FOLDER with images or .npy/.npz files")
    if code == errno.ENOTDIR:
        comp = _file_component(path)
        if comp is not None:
            return DataError(f"path goes through '{comp}', which is a file, not a folder", file=str(path),
                             fix=f"check the path: '{comp.name}' is a file")
        return DataError(f"{what} is not a folder", file=str(path), fix="check the path")
    if code == errno.ENAMETOOLONG:
        longest = max(path.parts, key=lambda s: len(os.fsencode(s)), default="")
        return DataError(f"name too long for the file system ({len(os.fsencode(longest))} bytes in one name, "
                         f"{len(os.fsencode(str(path)))} in the path)", file=_short(path),
                         fix="shorten the file or folder names (most file systems allow 255 bytes per name)")
    if code in (errno.EACCES, errno.EPERM):
        return DataError(f"permission denied reading the {what}", file=str(path), fix=_READ_FIX)
    if code == errno.ELOOP:
        return DataError("too many levels of symbolic links", file=str(path), fix="fix the symbolic link loop")
    if code == errno.EISDIR:
        return DataError(f"{what} is a folder", file=str(path), fix="pass the folder itself as --data")
    reason = os.strerror(code) if code else type(exc).__name__
    return DataError(f"cannot read the {what} ({reason})", file=str(path), fix="check the path and the disk")


def _short(path: Path) -> str:
    """The path, shortened for a message when it is too long to read."""
    s = str(path)
    return s if len(s) <= 120 else s[:60] + "..." + s[-40:]


def _file_component(path: Path) -> Path | None:
    """The first proper prefix of `path` that is a file (why the OS said ENOTDIR)."""
    parts = path.parts
    for i in range(1, len(parts)):
        prefix = Path(*parts[:i])
        if os.path.isfile(prefix):
            return prefix
    return None


def stat_path(path: Path, what: str = "data path") -> os.stat_result:
    """os.stat with the OS error turned into a DataError."""
    try:
        return os.stat(path)
    except OSError as exc:
        raise os_error(exc, path, what) from None


def open_file(path: Path) -> BinaryIO:
    """Open a data file for reading (the only way the loader opens one)."""
    try:
        return open(path, "rb")  # the caller closes it
    except OSError as exc:
        raise os_error(exc, path) from None


def list_folder(folder: Path) -> tuple[list[Path], int, int]:
    """(files sorted by name, sub-folder count, skipped count) directly inside `folder`.

    Hidden names ('.DS_Store', macOS '._x.jpg' resource forks) and special files are skipped; a broken
    symbolic link is listed so that opening it reports the problem.
    """
    try:
        with os.scandir(folder) as it:
            found = list(it)
    except OSError as exc:
        raise os_error(exc, folder, "data folder") from None
    files, dirs, skipped = [], 0, 0
    for e in found:
        if e.name.startswith("."):
            skipped += 1
            continue
        try:
            mode = e.stat().st_mode
        except OSError:
            files.append(Path(e.path))
            continue
        if stat.S_ISDIR(mode):
            dirs += 1
        elif stat.S_ISREG(mode):
            files.append(Path(e.path))
        else:
            skipped += 1
    return sorted(files), dirs, skipped


def check_readable(path: Path) -> None:
    """Refuse a listed file that cannot be read, before any run starts."""
    stat_path(path, "file")
    if not os.access(path, os.R_OK):
        raise DataError("permission denied reading the file", file=str(path), fix=_READ_FIX)


# --------------------------------------------------------------------- array headers
def read_npy_header(fh: BinaryIO, path: Path, where: str | None = None) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from a .npy header, without reading the data."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, _fortran, dtype = fmt.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _fortran, dtype = fmt.read_array_header_2_0(fh)
        else:
            shape, _fortran, dtype = fmt._read_array_header(fh, version)
    except Exception as exc:  # any header failure means the same thing to the user
        raise DataError(f"not a .npy array (bad header: {_first_line(exc)})", file=str(path), where=where,
                        fix="write tensors with numpy.save / numpy.savez") from None
    return tuple(int(d) for d in shape), np.dtype(dtype), fh.tell()


def check_dtype(dtype: np.dtype, path: Path, where: str | None = None) -> None:
    """Refuse dtypes that have no exact numeric meaning for a model input."""
    kind = dtype.kind
    if kind in "biuf":
        return
    if kind == "c":
        raise DataError(f"complex array ({dtype}): feeding it would drop the imaginary part", file=str(path),
                        where=where, fix="save the real part (a.real) or split real and imaginary parts yourself")
    if kind in "US":
        raise DataError(f"array of strings ({dtype.str})", file=str(path), where=where, fix=_SAVE_FIX)
    if kind == "V":
        what = f"fields {', '.join(dtype.names)}" if dtype.names else "raw bytes"
        raise DataError(f"structured array ({what})", file=str(path), where=where,
                        fix="save one plain numeric array per model input (numpy.savez with one key per input)")
    if kind == "O":
        raise DataError("array of Python objects (dtype=object)", file=str(path), where=where, fix=_SAVE_FIX)
    raise DataError(f"array of {dtype} values (dates or times)", file=str(path), where=where, fix=_SAVE_FIX)


def npy_info(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a .npy file, checked (numeric dtype, data not truncated) without loading it."""
    with open_file(path) as fh:
        shape, dtype, offset = read_npy_header(fh, path)
        check_dtype(dtype, path)
        size = os.fstat(fh.fileno()).st_size
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < need:
        raise DataError(f"truncated .npy: {size} bytes, the header of a {shape} {dtype} array needs {need}",
                        file=str(path), fix="write the file again (numpy.save)")
    return shape, dtype


def npz_info(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of the arrays in a .npz, checked without loading them."""
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with open_file(path) as fh:
        try:
            zf = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise DataError(f"not a .npz archive ({_first_line(exc)})", file=str(path),
                            fix="write tensors with numpy.savez") from None
        with zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                if not info.filename.endswith(".npy"):
                    raise DataError(f"member '{info.filename}' is not a .npy array", file=str(path),
                                    fix="write the archive with numpy.savez only")
                key = info.filename[:-4]
                try:
                    with zf.open(info) as m:
                        shape, dtype, _ = read_npy_header(m, path, key)  # type: ignore[arg-type]
                except DataError:
                    raise
                except Exception as exc:  # zip-level failure (compression, CRC, encryption)
                    raise DataError(f"cannot read the archive ({_first_line(exc)})", file=str(path), where=key,
                                    fix="write the file again (numpy.savez)") from None
                check_dtype(dtype, path, key)
                out[key] = (shape, dtype)
    if not out:
        raise DataError("empty .npz (no arrays)", file=str(path), fix="remove the file or save arrays into it")
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0][:160] if text else "") or type(exc).__name__


# --------------------------------------------------------------------- values
def _index(pos: tuple[int, ...], offset: int) -> tuple[int, ...]:
    return (pos[0] + offset, *pos[1:]) if pos else pos


def _first(mask: np.ndarray, offset: int) -> tuple[int, ...]:
    return _index(tuple(int(i) for i in np.argwhere(mask)[0]), offset)


def check_values(arr: np.ndarray, name: str, want: np.dtype, path: Path, where: str | None = None,
                 offset: int = 0) -> np.ndarray:
    """`arr` cast to the model input's dtype, refusing NaN/Inf, overflow and inexact integers.

    Positions are indices into the array as stored (`offset`: its first row within the stored array).
    """
    src = arr.dtype
    if src.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            nan = int(np.isnan(arr).sum())
            pos = _first(bad, offset)
            raise DataError(f"input contains NaN or Inf ({nan} NaN, {int(bad.sum()) - nan} Inf; first "
                            f"{arr[tuple(np.argwhere(bad)[0])]} at index {pos})", file=str(path), where=where,
                            fix="fix the preprocessing that wrote it")
    if want.kind == "f":
        if src.kind in "iuf" and not np.can_cast(src, want, "safe"):
            big = np.abs(arr.astype(np.float64)) > float(np.finfo(want).max)
            if big.any():
                pos = _first(big, offset)
                raise DataError(f"value {arr[tuple(np.argwhere(big)[0])]} at index {pos} overflows input "
                                f"'{name}' ({want}, max {np.finfo(want).max:g})", file=str(path), where=where,
                                fix="scale the data to the range the model was trained on")
        return arr.astype(want, copy=False)
    if want.kind == "b":
        if src.kind != "b":
            bad = (arr != 0) & (arr != 1)
            if bad.any():
                pos = _first(bad, offset)
                raise DataError(f"value {arr[tuple(np.argwhere(bad)[0])]} at index {pos} is not 0 or 1, but input "
                                f"'{name}' is bool", file=str(path), where=where, fix="save a bool or 0/1 mask")
        return arr.astype(want, copy=False)
    if src.kind == "f":
        frac = arr != np.round(arr)
        if frac.any():
            pos = _first(frac, offset)
            raise DataError(f"value {arr[tuple(np.argwhere(frac)[0])]} at index {pos} is not an integer, but "
                            f"input '{name}' is {want}", file=str(path), where=where,
                            fix=f"save the integer values the model takes ({_int_hint(want)}), not scaled floats")
    if not np.can_cast(src, want, "safe"):
        info = np.iinfo(want)
        if src.kind == "f":
            lo, hi = arr < float(info.min), arr > float(info.max)
        elif src.kind == "b":
            lo = hi = np.zeros(arr.shape, dtype=bool)
        else:
            s = np.iinfo(src)
            lo = arr < np.array(max(info.min, s.min), dtype=src)
            hi = arr > np.array(min(info.max, s.max), dtype=src)
        bad = lo | hi
        if bad.any():
            pos = _first(bad, offset)
            raise DataError(f"value {arr[tuple(np.argwhere(bad)[0])]} at index {pos} is outside the range "
                            f"{info.min}..{info.max} of input '{name}' ({want})", file=str(path), where=where,
                            fix=f"save values the model takes ({_int_hint(want)}); qdebug never wraps or clips")
    return arr.astype(want, copy=False)


def check_index_range(arr: np.ndarray, name: str, rows: int, table: str, path: Path, where: str | None = None,
                      offset: int = 0) -> None:
    """Token ids (an integer input that indexes a table, e.g. an embedding) must lie in -rows..rows-1, the
    range ONNX Gather accepts; onnxruntime would stop on the first one with a message naming no file."""
    if arr.size == 0 or arr.dtype.kind not in "iu":
        return
    bad = (arr >= rows) | (arr < -rows)
    if bad.any():
        pos = _first(bad, offset)
        raise DataError(f"value {arr[tuple(np.argwhere(bad)[0])]} at index {pos} of input '{name}' is outside the "
                        f"{rows} rows of table '{table}' it indexes (max id {rows - 1})", file=str(path), where=where,
                        fix=f"save ids below {rows} (the vocabulary of the exported model), e.g. map unknown "
                            "tokens to the [UNK] id")


def _int_hint(dtype: np.dtype) -> str:
    if dtype == np.uint8:
        return "e.g. pixels 0..255"
    if dtype == np.int8:
        return "e.g. pixel - 128 in -128..127"
    return "e.g. token ids or mask values"


# --------------------------------------------------------------------- shapes
def samples_in(shape: tuple[int, ...], name: str, want: tuple[int, ...], path: Path, where: str | None = None,
               dynamic: bool = False, split: bool = True) -> int | None:
    """Rows of an array for input `name`: None for one sample (with or without the batch dim), n for n
    samples along dim 0 (`split` files of a batch-1 input); a shape that fits neither is refused."""
    if shape == want or (want and want[0] == 1 and shape == want[1:]):
        return None
    if split and want and want[0] == 1 and len(shape) == len(want) and shape[1:] == want[1:]:
        if shape[0] == 0:
            raise DataError(f"zero-size array {shape}", file=str(path), where=where,
                            fix="remove the empty array from the data set")
        return shape[0]
    if 0 in shape:
        raise DataError(f"zero-size array {shape}", file=str(path), where=where,
                        fix="remove the empty array from the data set")
    raise DataError(f"array shape {shape} does not match model input '{name}' {want}", file=str(path), where=where,
                    fix=_shape_fix(shape, want, dynamic, split))


def _shape_fix(got: tuple[int, ...], want: tuple[int, ...], dynamic: bool, split: bool) -> str:
    g = (1, *got) if len(got) == len(want) - 1 else got
    if len(g) == len(want) == 4:
        if g == (want[0], want[2], want[3], want[1]):
            return ("the array is channels-last (NHWC) and the model takes NCHW: save "
                    "numpy.transpose(a, (0, 3, 1, 2)); --layout applies to images only")
        if g == (want[0], want[3], want[1], want[2]):
            return ("the array is channels-first (NCHW) and the model takes NHWC: save "
                    "numpy.transpose(a, (0, 2, 3, 1)); --layout applies to images only")
        hw = g[2:] if g[1] == want[1] and g[2:] != want[2:] else g[1:3] if g[3] == want[3] else None
        if hw is not None and g[0] in (1, want[0]):
            if dynamic:
                return f"pass --size {hw[0]},{hw[1]} to run the model at the arrays' size"
            return (f"the model input is fixed at {want}: resize the arrays "
                    "(--size only sets dynamic dims)")
    if not split and want and want[0] == 1 and len(g) == len(want) and g[1:] == want[1:]:
        return "save one sample per .npy file, or put many samples in one .npz"
    return f"save arrays shaped {want}" + (f" or {want[1:]}" if want and want[0] == 1 else "")
