"""Input data sets: image folders with vendor-style preprocessing, or .npy/.npz files of ready tensors.

What --data may be (anything else is one DataError naming the file and the fix; guards.py has the
per-file and per-value rules):
- a folder of one kind: images (.jpg/.jpeg/.png/.bmp/.webp), .npy files or .npz files; a folder that
  mixes kinds is refused with the count of each. Other extensions are skipped with a count in
  Dataset.notes and a DataWarning; hidden files are skipped; sub-folders are not searched.
- images: single-input models with a 4-D input of 1 (grey) or 3 (RGB) channels; 8-bit images of at most
  MAX_IMAGE_PIXELS pixels (checked from the header, before decoding). --mean/--std take one value each
  (broadcast), one per channel, or equal values (so the 3-value defaults fit grey models); std must be
  finite and > 0. A float input gets (pixel - mean) / std. An integer input gets exact integers: the raw
  pixels when mean/std stay at 0/255, else pixel - mean with std 1; a mapping outside its range is refused.
- .npy: one sample per file, with or without the batch dim, for single-input models.
- .npz: if no key names a model input (single-input models only), each key is a sample, or a batch of
  samples along dim 0 for a batch-1 input. Otherwise (always for multi-input models) each file holds one
  array per input, keyed by input name; missing or extra keys are refused.
- --size must agree with the model's static H, W (it fills dynamic dims only). --mean/--std, --resize,
  --color and --layout apply to images; tensors are fed as stored (after the value checks).

Samples are loaded lazily, one at a time, so a large folder never sits in memory at once; a second pass
(comparison after calibration) reuses decoded samples up to a fixed byte budget.
"""

from __future__ import annotations

import re
import stat
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

from qdebug.errors import DataError, ModelError
from qdebug.graph.model import ModelGraph
from qdebug.inputs.guards import (
    _first_line,
    check_dtype,
    check_index_range,
    check_readable,
    check_values,
    list_folder,
    npy_info,
    npz_info,
    open_file,
    samples_in,
    stat_path,
)

CACHE_BYTES = 128 * 2**20
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
ARRAY_EXT = {".npy", ".npz"}
# 8192x8192: far above any network input, far below a decompression bomb (PIL's own guard starts at 89 M)
MAX_IMAGE_PIXELS = 2**26
_DATA_FIX = "point --data at a folder of images (.jpg/.png/.bmp/.webp) or of tensors (.npy/.npz), or one such file"


class DataWarning(UserWarning):
    """Something in the data set was skipped; the run goes on."""


@dataclass
class Preprocess:
    """Image preprocessing matching vendor toolchains (RKNN config mean/std, ATC AIPP, YOLO letterbox)."""

    size: tuple[int, int] | None = None  # (H, W); default: taken from the model input
    resize: str = "letterbox"  # letterbox | resize
    color: str = "rgb"  # rgb | bgr
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)  # in 0..255 pixel units, like RKNN config
    std: tuple[float, ...] = (255.0, 255.0, 255.0)
    layout: str | None = None  # nchw | nhwc; default: guessed from the model input shape
    dtype: str | None = None  # float32 | uint8; default: the model input type
    pad_value: int = 114

    def to_json(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size) if self.size else None
        return d

    def for_input(self, name: str, shape: tuple[int, ...], dtype: np.dtype, model: str) -> Preprocess:
        """A copy with mean/std expanded to the input's channels, after checking every option against it."""
        for opt, val, allowed in (("--resize", self.resize, ("letterbox", "resize")),
                                  ("--color", self.color, ("rgb", "bgr")),
                                  ("--layout", self.layout, (None, "nchw", "nhwc"))):
            if val not in allowed:
                raise DataError(f"unknown {opt} '{val}'", where=opt,
                                fix="use one of " + ", ".join(a for a in allowed if a))
        if self.dtype and np.dtype(self.dtype) != dtype and dtype.kind in "iu":
            raise DataError(f"--input-dtype {self.dtype} but input '{name}' of {model} takes {dtype}",
                            where="--input-dtype", fix=f"drop --input-dtype (the model decides) or pass {dtype}")
        if len(shape) != 4:
            raise DataError(f"images need a 4-D model input, but input '{name}' of {model} is {shape}",
                            where="--data", fix="give .npy/.npz tensors instead of images")
        layout = self.layout or _guess_layout(shape)
        ch = shape[1] if layout == "nchw" else shape[3]
        if ch not in (1, 3):
            other = "nhwc" if layout == "nchw" else "nchw"
            raise DataError(f"input '{name}' of {model} {shape} has {ch} channels in {layout.upper()} layout; "
                            "images give 1 (grey) or 3 (RGB)", where="--layout",
                            fix=f"pass --layout {other} if the channel axis is the other one, or give .npy tensors")
        if not all(np.isfinite(m) for m in self.mean):
            raise DataError(f"{_nums(self.mean)} is not finite (input '{name}' of {model})", where="--mean",
                            fix="give numbers in 0..255 pixel units")
        if not all(np.isfinite(s) and s > 0 for s in self.std):
            raise DataError(f"{_nums(self.std)} has a zero, negative or non-finite value (the pixels are "
                            f"divided by it; input '{name}' of {model})", where="--std",
                            fix="give positive values, e.g. --std 255 to scale to 0..1")
        mean = _per_channel(self.mean, ch, "--mean", name, model)
        std = _per_channel(self.std, ch, "--std", name, model)
        try:
            out = np.dtype(self.dtype) if self.dtype else dtype
        except TypeError:
            raise DataError(f"unknown --input-dtype '{self.dtype}'", where="--input-dtype",
                            fix="use float32 or uint8") from None
        _check_int_mapping(out, mean, std, name, model)
        return replace(self, mean=mean, std=std)


def _nums(vals: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in vals)


def _per_channel(vals: Sequence[float], ch: int, opt: str, name: str, model: str) -> tuple[float, ...]:
    """One value per channel: one value or equal values broadcast; any other count must equal `ch`."""
    v = tuple(float(x) for x in vals)
    if len(v) == ch:
        return v
    if v and all(x == v[0] for x in v):
        return (v[0],) * ch
    raise DataError(f"{len(v)} value{'s' if len(v) != 1 else ''} ({_nums(v)}) for input '{name}' of {model}, "
                    f"which has {ch} channels",
                    where=opt, fix=f"give {ch} values (one per channel, in the order after --color) or 1 for all")


def _raw_pixels(mean: Sequence[float], std: Sequence[float]) -> bool:
    """mean 0 / std 255 (the defaults, scaling to 0..1) on an integer input means: feed the raw pixels."""
    return all(m == 0 for m in mean) and all(s == 255 for s in std)


def _check_int_mapping(out: np.dtype, mean: tuple[float, ...], std: tuple[float, ...], name: str, model: str) -> None:
    """Integer inputs get exact pixel integers within their range, or nothing."""
    if out.kind == "b":
        raise DataError(f"input '{name}' of {model} is bool; images cannot feed it", where="--data",
                        fix="give .npy/.npz tensors")
    if out.kind not in "iu":
        return
    if not _raw_pixels(mean, std) and (any(s != 1 for s in std) or any(m != int(m) for m in mean)):
        raise DataError(f"input '{name}' of {model} is {out}, so pixels are fed as exact integers, but --mean "
                        f"{_nums(mean)} --std {_nums(std)} give fractions", where="--mean/--std",
                        fix="leave --mean/--std at 0/255 to feed the raw pixels 0..255, or use --std 1 with an "
                            "integer --mean (pixel - mean)")
    lo, hi = (0, 255) if _raw_pixels(mean, std) else (int(-max(mean)), int(255 - min(mean)))
    info = np.iinfo(out)
    if lo < info.min or hi > info.max:
        hint = "--mean 128 --std 1 (pixel - 128)" if out == np.int8 else "--mean/--std that fit"
        raise DataError(f"input '{name}' of {model} is {out} ({info.min}..{info.max}) but the pixels map to "
                        f"{lo}..{hi}; they would wrap", where="--mean/--std",
                        fix=f"pass {hint}, or give .npy tensors with the values the model takes")


@dataclass
class Letterbox:
    """How an image was mapped into the network input (to undo it on boxes later)."""

    scale: float
    pad_x: float
    pad_y: float
    orig_w: int
    orig_h: int


@dataclass
class Dataset:
    """A lazily loaded list of samples; each sample maps model input names to arrays with a batch dim."""

    source: str
    kind: str  # images | npy | npz
    entries: list[tuple[Path, str | None, int | None]]  # (file, npz key, row within the key's array)
    input_shapes: dict[str, tuple[int, ...]]
    input_dtypes: dict[str, np.dtype]
    preprocess: Preprocess | None = None
    letterbox: dict[str, Letterbox] = field(default_factory=dict)
    dynamic: frozenset[str] = frozenset()  # inputs whose model shape has dynamic dims (for shape hints)
    notes: list[str] = field(default_factory=list)  # what was skipped, for the user
    index_limits: dict[str, tuple[int, str]] = field(default_factory=dict)  # id input -> (table rows, table)
    # decoded samples kept for the next pass (calibration, then comparison) up to this many bytes; the
    # budget bounds memory whatever the data set size (docs/benchmarks.md)
    cache_bytes: int = field(default=CACHE_BYTES, repr=False)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)
    _cached_bytes: int = field(default=0, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        """Sample names: file, then the .npz key (unless keyed by input name) and the row, e.g. a.npz[k:3]."""
        out = []
        for p, k, i in self.entries:
            parts = [str(x) for x in (None if k in self.input_shapes else k, i) if x is not None]
            out.append(p.name + (f"[{':'.join(parts)}]" if parts else ""))
        return out

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for k, entry in enumerate(self.entries):
            sample = self._cache.get(k)
            if sample is None:
                sample = self.load(entry)
                size = sum(a.nbytes for a in sample.values())
                if self._cached_bytes + size <= self.cache_bytes:
                    for a in sample.values():
                        a.flags.writeable = False  # shared between passes: nobody may edit it in place
                    self._cache[k] = sample
                    self._cached_bytes += size
            yield sample

    def load(self, entry: tuple[Path, str | None, int | None]) -> dict[str, np.ndarray]:
        """Load and check one sample."""
        path, key, idx = entry
        first = next(iter(self.input_shapes))
        if self.kind == "images":
            arr = _load_image(path, self.input_shapes[first], self.input_dtypes[first], self.preprocess or Preprocess(),
                              self.letterbox)
            return {first: arr}
        with open_file(path) as fh:
            if self.kind == "npy":
                return {first: self._check(_read(fh, path, None), first, path, None, idx)}
            try:
                z = np.load(fh, allow_pickle=False)
            except Exception as exc:  # any failure here is an unreadable archive
                raise DataError(f"cannot read .npz ({_first_line(exc)})", file=str(path),
                                fix="write the file again (numpy.savez)") from None
            with z:
                if key in self.input_shapes:  # one array per input, keyed by input name
                    return {n: self._check(_read(z, path, n), n, path, n, idx) for n in self.input_shapes}
                assert key is not None
                return {first: self._check(_read(z, path, key), first, path, key, idx)}

    def _check(self, arr: np.ndarray, name: str, path: Path, where: str | None, idx: int | None) -> np.ndarray:
        check_dtype(arr.dtype, path, where)
        want = self.input_shapes[name]
        rows = samples_in(tuple(arr.shape), name, want, path, where, name in self.dynamic, self.kind == "npz")
        if (rows is None) != (idx is None) or (rows is not None and idx is not None and idx >= rows):
            raise DataError("the file changed while qdebug was reading it", file=str(path), where=where,
                            fix="run again once the data set is complete")
        if idx is not None:
            arr = arr[idx:idx + 1]
        out = check_values(arr, name, self.input_dtypes[name], path, where, idx or 0)
        if name in self.index_limits:
            check_index_range(out, name, *self.index_limits[name], path, where, idx or 0)
        return out[None] if out.ndim == len(want) - 1 else out


def _read(src: BinaryIO | np.lib.npyio.NpzFile, path: Path, key: str | None) -> np.ndarray:
    """One array from an open .npy file or .npz archive, read errors as DataError."""
    try:
        return np.load(src, allow_pickle=False) if key is None else src[key]  # type: ignore[index]
    except KeyError:
        raise DataError(f"no array '{key}'", file=str(path), fix="the file changed: run again") from None
    except Exception as exc:  # truncated data, bad CRC, bad compression: all unreadable
        raise DataError(f"cannot read the array ({_first_line(exc)})", file=str(path), where=key,
                        fix="write the file again (numpy.save / numpy.savez)") from None


def _guess_layout(shape: tuple[int, ...]) -> str:
    if len(shape) == 4 and shape[1] in (1, 3, 4):
        return "nchw"
    if len(shape) == 4 and shape[3] in (1, 3, 4):
        return "nhwc"
    return "nchw"


def _open_image(fh: BinaryIO, path: Path):
    """PIL image from an open file, header only: size, mode and pixel limit checked before decoding."""
    from PIL import Image, UnidentifiedImageError

    fix = "re-save the file as PNG/JPEG or remove it"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with the limit
            im = Image.open(fh)
    except Image.DecompressionBombError as exc:
        m = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_big(path, f"{m.group(1) if m else 'over ' + str(2 * (Image.MAX_IMAGE_PIXELS or 0))} pixels") \
            from None
    except UnidentifiedImageError:
        raise DataError("cannot decode image: not in a known image format", file=str(path), fix=fix) from None
    except MemoryError:
        raise
    except Exception as exc:  # a broken header, whatever the format
        raise DataError(f"cannot decode image ({_first_line(exc)})", file=str(path), fix=fix) from None
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        im.close()
        raise _too_big(path, f"{w}x{h} = {w * h} pixels")
    if im.mode == "F" or im.mode.startswith("I"):
        im.close()
        raise DataError(f"{'float' if im.mode == 'F' else '16/32-bit'} image (mode {im.mode}); converting it to "
                        "8 bits would clip",
                        file=str(path), fix="save 8-bit images, or give .npy tensors with the model's values")
    return im


def _too_big(path: Path, size: str) -> DataError:
    return DataError(f"image header claims {size}, over the limit of {MAX_IMAGE_PIXELS} pixels "
                     "(qdebug.inputs.dataset.MAX_IMAGE_PIXELS; a decompression bomb or a huge scan)", file=str(path),
                     fix="downscale the image (it is resized to the network input anyway) or remove it")


def _load_image(path: Path, shape: tuple[int, ...], dtype: np.dtype, prep: Preprocess,
                letterbox: dict[str, Letterbox]) -> np.ndarray:
    from PIL import Image

    layout = prep.layout or _guess_layout(shape)
    h, w = (shape[2], shape[3]) if layout == "nchw" else (shape[1], shape[2])
    grey = (shape[1] if layout == "nchw" else shape[3]) == 1
    mode = "L" if grey else "RGB"
    with open_file(path) as fh, _open_image(fh, path) as im:
        try:
            im = im.convert(mode)
            ow, oh = im.size
            if prep.resize == "letterbox":
                r = min(w / ow, h / oh)
                nw, nh = max(1, round(ow * r)), max(1, round(oh * r))
                im2 = im.resize((nw, nh), Image.BILINEAR)
                canvas = Image.new(mode, (w, h), prep.pad_value if grey else (prep.pad_value,) * 3)
                px, py = (w - nw) // 2, (h - nh) // 2
                canvas.paste(im2, (px, py))
                lb = Letterbox(r, px, py, ow, oh)
                im = canvas
            else:
                lb = Letterbox(w / ow, 0, 0, ow, oh)
                im = im.resize((w, h), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
        except MemoryError:
            raise
        except Exception as exc:  # truncated or corrupt pixel data, whatever the format
            raise DataError(f"cannot decode image: truncated or corrupt ({_first_line(exc)})", file=str(path),
                            fix="re-save the file or remove it") from None
    letterbox[path.name] = lb
    if grey:
        arr = arr[..., None]
    elif prep.color == "bgr":
        arr = arr[..., ::-1]
    # reorder the bytes first (4x less to move than floats), then convert once and normalize in place
    cshape = (1, 1, -1)
    if layout == "nchw":
        arr, cshape = arr.transpose(2, 0, 1), (-1, 1, 1)
    arr = np.ascontiguousarray(arr)
    out_dtype = np.dtype(prep.dtype) if prep.dtype else dtype
    if np.issubdtype(out_dtype, np.integer):  # exact integers; the range was checked by Preprocess.for_input
        if _raw_pixels(prep.mean, prep.std):
            return arr.astype(out_dtype)[None]
        m = np.asarray(prep.mean, dtype=np.int16).reshape(cshape)
        return (arr.astype(np.int16) - m).astype(out_dtype)[None]
    x = arr.astype(np.float32)
    x -= np.asarray(prep.mean, dtype=np.float32).reshape(cshape)
    x /= np.asarray(prep.std, dtype=np.float32).reshape(cshape)
    return x.astype(out_dtype, copy=False)[None]


def _check_size(size: Sequence[int], graph: ModelGraph) -> None:
    """--size must not contradict a model input's static H, W (it only fills dynamic dims)."""
    if len(size) != 2 or min(size) <= 0:
        raise DataError(f"--size {_nums(size)} is not H,W", where="--size", fix="pass --size H,W, e.g. 640,640")
    model = Path(graph.path).name if graph.path else "the model"
    for inp in graph.inputs:
        dims = inp.shape
        if dims is None or len(dims) != 4:
            continue
        hw = dims[2:] if dims[1] is not None and dims[1] <= 4 else dims[1:3]
        if any(d is not None and d != s for d, s in zip(hw, size, strict=True)):
            fixed = "x".join("?" if d is None else str(d) for d in hw)
            raise DataError(f"{size[0]},{size[1]} but input '{inp.name}' of {model} is fixed at "
                            f"{fixed} (H x W)", where="--size",
                            fix="drop --size (it only sets dynamic dims) or re-export the model with dynamic H, W")


def _kind(f: Path) -> str:
    ext = f.suffix.lower()
    return "images" if ext in IMAGE_EXT else ext if ext in ARRAY_EXT else "other"


def _refuse_mixed(p: Path, groups: dict[str, list[Path]]) -> None:
    present = {k: v for k, v in groups.items() if k != "other" and v}
    if len(present) < 2:
        return
    counts = ", ".join(f"{len(v)} {'image' if k == 'images' else k} file(s)" for k, v in present.items())
    main = max(present, key=lambda k: len(present[k]))
    stray = [f.name for k, v in present.items() if k != main for f in v]
    raise DataError(f"mixed folder: {counts}; one folder holds one kind of input", file=str(p),
                    fix=f"move {', '.join(stray[:3])}{' ...' if len(stray) > 3 else ''} out of the folder "
                        "(or keep only those)")


def load_dataset(path: str | Path, graph: ModelGraph, prep: Preprocess | None = None,
                 samples: int | None = None, size: Sequence[int] | None = None) -> Dataset:
    """Open a folder of images or tensors (or a single image/.npy/.npz) for the model's inputs."""
    p = Path(path)
    st = stat_path(p)
    prep = prep or Preprocess()
    size = size or prep.size
    if size is not None:
        _check_size(size, graph)
    try:
        shapes = graph.static_input_shapes(size)
    except ModelError:
        shapes = _shapes_from_tensors(p, graph, size)  # dynamic non-image dims: the data's shape decides
    if not shapes:
        raise ModelError("the model has no graph inputs: there is nothing to feed", file=graph.path,
                         fix="export the model with its inputs (constants folded into a model without inputs "
                         "cannot be compared)")
    dtypes = {i.name: i.dtype for i in graph.inputs}
    dynamic = frozenset(i.name for i in graph.inputs if i.shape is None or None in i.shape)
    model = Path(graph.path).name if graph.path else "the model"
    notes: list[str] = []
    if stat.S_ISDIR(st.st_mode):
        files, dirs, _skipped = list_folder(p)
    else:
        files, dirs = [p], 0
        if _kind(p) == "other":
            raise DataError(f"not an image or tensor file ({p.suffix or 'no extension'})", file=str(p), fix=_DATA_FIX)
    groups: dict[str, list[Path]] = {"images": [], ".npy": [], ".npz": [], "other": []}
    for f in files:
        groups[_kind(f)].append(f)
    if not any(groups[k] for k in ("images", ".npy", ".npz")):
        if groups["other"]:
            found = f"the folder holds {_ext_counts(groups['other'])}"
        else:
            found = f"the folder holds only {dirs} sub-folder(s); they are not searched" if dirs \
                else "the folder is empty"
        raise DataError(f"no images (.jpg/.png/.bmp/.webp) or tensors (.npy/.npz) found: {found}", file=str(p),
                        fix=_DATA_FIX)
    _refuse_mixed(p, groups)
    if groups["other"]:
        notes.append(f"skipped {len(groups['other'])} file(s) in {p}: {_ext_counts(groups['other'])}")
    if dirs:
        notes.append(f"skipped {dirs} sub-folder(s) of {p} (not searched)")
    entries: list[tuple[Path, str | None, int | None]] = []
    first = next(iter(shapes))
    if groups["images"]:
        kind = "images"
        if len(shapes) != 1:
            raise DataError(f"images given but the model has {len(shapes)} inputs ({', '.join(shapes)})", file=str(p),
                            fix="give one .npz per sample with one array per input name")
        prep = prep.for_input(first, shapes[first], dtypes[first], model)
        for f in groups["images"][:samples]:  # files past --samples are never opened, so not checked
            check_readable(f)
            entries.append((f, None, None))
    elif groups[".npy"]:
        kind = "npy"
        if len(shapes) != 1:
            raise DataError(f"the model has {len(shapes)} inputs ({', '.join(shapes)}) but a .npy holds one array",
                            file=str(p), fix=f"save one .npz per sample: numpy.savez(f, {_kwargs(shapes)})")
        for f in groups[".npy"][:samples]:
            shape, _ = npy_info(f)
            samples_in(shape, first, shapes[first], f, None, first in dynamic, split=False)
            entries.append((f, None, None))
    else:
        kind = "npz"
        for f in groups[".npz"]:
            if samples is not None and len(entries) >= samples:
                break
            entries += _npz_entries(f, shapes, dynamic)
    if samples is not None:
        entries = entries[:samples]
    if not entries:
        raise DataError("data set is empty", file=str(p), fix="add inputs or raise --samples")
    if notes:
        warnings.warn("; ".join(notes), DataWarning, stacklevel=2)
    return Dataset(str(p), kind, entries, shapes, dtypes, prep if kind == "images" else None, dynamic=dynamic,
                   notes=notes, index_limits=index_limits(graph))


def _shapes_from_tensors(p: Path, graph: ModelGraph, size: Sequence[int] | None) -> dict[str, tuple[int, ...]]:
    """Input shapes of a model with dynamic non-image dims, taken from the first .npy/.npz sample.

    Audio and sequence models (a VAD's [1, N] chunk, a recurrent state) have no --size; the arrays given
    are the shapes to run. Static dims must still agree; the first sample fixes the rest for the data set.
    """
    files = sorted(list_folder(p)[0]) if p.is_dir() else [p]
    tensors = [f for f in files if _kind(f) in (".npy", ".npz")]
    if not tensors:
        graph.static_input_shapes(size)  # images need --size: re-raise its one-line error
    f = tensors[0]
    found = {graph.inputs[0].name: npy_info(f)[0]} if _kind(f) == ".npy" else \
        {k: v[0] for k, v in npz_info(f).items()}
    shapes: dict[str, tuple[int, ...]] = {}
    for inp in graph.inputs:
        want = list(inp.shape or [])
        got = found.get(inp.name)
        if got is None and len(graph.inputs) == 1 and len(found) == 1:
            got = next(iter(found.values()))
        if got is None:
            raise DataError(f"no array for input '{inp.name}' (dynamic dims {inp.shape})", file=str(f),
                            fix="store one array per model input, keyed by input name")
        if len(got) == len(want) + 1 and got[0] == 1:
            got = got[1:]
        if want and (len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got, strict=False))):
            raise DataError(f"array shape {tuple(got)} does not fit model input '{inp.name}' {inp.shape}",
                            file=str(f), fix="save arrays of the input's rank with its fixed dims")
        shapes[inp.name] = tuple(int(d) for d in got)
    return shapes


# ops that hand their input's values on unchanged (only the shape or the integer type may change)
_SAME_VALUES = ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand")


def index_limits(graph: ModelGraph) -> dict[str, tuple[int, str]]:
    """Integer graph inputs that index a constant table through Gather (token ids into an embedding), with
    the smallest table's row count along the gathered axis and that table's name."""
    out: dict[str, tuple[int, str]] = {}
    for inp in graph.inputs:
        if inp.dtype.kind not in "iu":
            continue
        seen, stack = set(), [inp.name]
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            for n in graph.consumers.get(t, []):
                if n.op_type in _SAME_VALUES and n.input and n.input[0] == t:
                    stack.extend(o for o in n.output if o)
                elif n.op_type == "Gather" and len(n.input) > 1 and n.input[1] == t:
                    table = graph.const_value(n.input[0])
                    axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
                    if table is None or table.ndim == 0:
                        continue
                    rows = int(table.shape[axis])
                    if inp.name not in out or rows < out[inp.name][0]:
                        out[inp.name] = (rows, n.input[0])
    return out


def _ext_counts(files: list[Path]) -> str:
    c = Counter(f.suffix.lower() or "(no extension)" for f in files)
    return ", ".join(f"{n} {ext}" for ext, n in c.most_common())


def _kwargs(shapes: dict[str, tuple[int, ...]]) -> str:
    if all(n.isidentifier() for n in shapes):
        return ", ".join(f"{n}=..." for n in shapes)
    return "**{" + ", ".join(f"{n!r}: ..." for n in shapes) + "}"


def _npz_entries(f: Path, shapes: dict[str, tuple[int, ...]],
                 dynamic: frozenset[str]) -> list[tuple[Path, str | None, int | None]]:
    """Samples of one .npz: one per key (single input), or one array per input keyed by input name."""
    members = npz_info(f)
    first = next(iter(shapes))
    if len(shapes) > 1 or any(k in shapes for k in members):
        missing = [n for n in shapes if n not in members]
        extra = [k for k in members if k not in shapes]
        if missing or extra:
            what = "; ".join(s for s in (f"missing {', '.join(missing)}" if missing else "",
                                         f"extra {', '.join(extra)}" if extra else "") if s)
            raise DataError(f"keys do not match the model inputs ({what})", file=str(f),
                            fix=f"store exactly one array per model input: numpy.savez(f, {_kwargs(shapes)})")
        rows = {n: samples_in(members[n][0], n, shapes[n], f, n, n in dynamic) for n in shapes}
        counts = set(rows.values())
        if len(counts) > 1:
            listed = ", ".join(f"{n} {r or 1}" for n, r in rows.items())
            raise DataError(f"inputs hold different numbers of samples ({listed})", file=str(f),
                            fix="give every input the same number of rows along dim 0")
        n_rows = counts.pop()
        return [(f, first, None)] if n_rows is None else [(f, first, i) for i in range(n_rows)]
    out: list[tuple[Path, str | None, int | None]] = []
    for k, (shape, _dtype) in members.items():
        n_rows = samples_in(shape, first, shapes[first], f, k, first in dynamic)
        out += [(f, k, None)] if n_rows is None else [(f, k, i) for i in range(n_rows)]
    return out
