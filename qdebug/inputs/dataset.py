"""Input data sets: image folders with vendor-style preprocessing, or .npy/.npz files of ready tensors.

Samples are loaded lazily, one at a time, so a large folder never sits in memory at once; a second pass
(comparison after calibration) reuses decoded samples up to a fixed byte budget.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from qdebug.errors import DataError
from qdebug.graph.model import ModelGraph

CACHE_BYTES = 128 * 2**20
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
ARRAY_EXT = {".npy", ".npz"}


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
    entries: list[tuple[Path, str | None, int | None]]  # (file, npz key, index within key)
    input_shapes: dict[str, tuple[int, ...]]
    input_dtypes: dict[str, np.dtype]
    preprocess: Preprocess | None = None
    letterbox: dict[str, Letterbox] = field(default_factory=dict)
    # decoded samples kept for the next pass (calibration, then comparison) up to this many bytes; the
    # budget bounds memory whatever the data set size (docs/benchmarks.md)
    cache_bytes: int = field(default=CACHE_BYTES, repr=False)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)
    _cached_bytes: int = field(default=0, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> list[str]:
        return [f"{p.name}" + (f"[{k}:{i}]" if k is not None else "") for p, k, i in self.entries]

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
        if self.kind == "images":
            name = next(iter(self.input_shapes))
            arr = _load_image(path, self.input_shapes[name], self.input_dtypes[name], self.preprocess or Preprocess(),
                              self.letterbox)
            return {name: arr}
        if self.kind == "npy":
            name = next(iter(self.input_shapes))
            try:
                arr = np.load(path, allow_pickle=False)
            except Exception as exc:
                raise DataError(f"cannot read .npy ({type(exc).__name__})", file=str(path),
                                fix="save tensors with numpy.save") from None
            return {name: self._check(arr, name, path)}
        # npz
        try:
            with np.load(path, allow_pickle=False) as z:
                if key is not None and key in self.input_shapes:
                    sample = {}
                    for name in self.input_shapes:
                        if name not in z.files:
                            raise DataError(f"no array for input '{name}'", file=str(path),
                                            fix=f"store one array per model input: {list(self.input_shapes)}")
                        a = z[name]
                        a = a[idx:idx + 1] if idx is not None else a
                        sample[name] = self._check(a, name, path)
                    return sample
                name = next(iter(self.input_shapes))
                a = z[key]
                a = a[idx:idx + 1] if idx is not None else a
                return {name: self._check(a, name, path)}
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"cannot read .npz ({type(exc).__name__})", file=str(path),
                            fix="save tensors with numpy.savez") from None

    def _check(self, arr: np.ndarray, name: str, path: Path) -> np.ndarray:
        want = self.input_shapes[name]
        if arr.ndim == len(want) - 1:
            arr = arr[None]
        if tuple(arr.shape) != tuple(want):
            raise DataError(f"array shape {tuple(arr.shape)} does not match model input '{name}' {tuple(want)}",
                            file=str(path), fix="save arrays in the model's input layout (or pass --size)")
        if arr.size == 0:
            raise DataError("zero-size array", file=str(path), fix="remove the file from the data set")
        dt = self.input_dtypes[name]
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise DataError("input contains NaN or Inf", file=str(path), fix="fix the preprocessing that wrote it")
        return arr.astype(dt, copy=False)


def _guess_layout(shape: tuple[int, ...]) -> str:
    if len(shape) == 4 and shape[1] in (1, 3, 4):
        return "nchw"
    if len(shape) == 4 and shape[3] in (1, 3, 4):
        return "nhwc"
    return "nchw"


def _load_image(path: Path, shape: tuple[int, ...], dtype: np.dtype, prep: Preprocess,
                letterbox: dict[str, Letterbox]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    layout = prep.layout or _guess_layout(shape)
    if len(shape) != 4:
        raise DataError(f"images need a 4-D model input, got shape {shape}", file=str(path),
                        fix="give .npy/.npz tensors instead of images")
    h, w = (shape[2], shape[3]) if layout == "nchw" else (shape[1], shape[2])
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            ow, oh = im.size
            if prep.resize == "letterbox":
                r = min(w / ow, h / oh)
                nw, nh = max(1, round(ow * r)), max(1, round(oh * r))
                im2 = im.resize((nw, nh), Image.BILINEAR)
                canvas = Image.new("RGB", (w, h), (prep.pad_value,) * 3)
                px, py = (w - nw) // 2, (h - nh) // 2
                canvas.paste(im2, (px, py))
                letterbox[path.name] = Letterbox(r, px, py, ow, oh)
                im = canvas
            else:
                letterbox[path.name] = Letterbox(w / ow, 0, 0, ow, oh)
                im = im.resize((w, h), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot decode image ({exc.__class__.__name__})", file=str(path),
                        fix="remove or re-save the file") from None
    if prep.color == "bgr":
        arr = arr[..., ::-1]
    # reorder the bytes first (4x less to move than floats), then convert once and normalize in place
    cshape = (1, 1, -1)
    if layout == "nchw":
        arr, cshape = arr.transpose(2, 0, 1), (-1, 1, 1)
    arr = np.ascontiguousarray(arr)
    out_dtype = np.dtype(prep.dtype) if prep.dtype else dtype
    if np.issubdtype(out_dtype, np.integer):
        return arr.astype(out_dtype)[None]
    x = arr.astype(np.float32)
    x -= np.asarray(prep.mean, dtype=np.float32).reshape(cshape)
    x /= np.asarray(prep.std, dtype=np.float32).reshape(cshape)
    return x.astype(out_dtype, copy=False)[None]


def load_dataset(path: str | Path, graph: ModelGraph, prep: Preprocess | None = None,
                 samples: int | None = None, size: Sequence[int] | None = None) -> Dataset:
    """Open a folder of images or tensors (or a single .npy/.npz) for the model's inputs."""
    p = Path(path)
    if not p.exists():
        raise DataError("data path not found", file=str(p), fix="pass --data FOLDER with images or .npy/.npz files")
    prep = prep or Preprocess()
    shapes = graph.static_input_shapes(size or prep.size)
    dtypes = {i.name: i.dtype for i in graph.inputs}
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    images = [f for f in files if f.suffix.lower() in IMAGE_EXT]
    arrays = [f for f in files if f.suffix.lower() in ARRAY_EXT]
    if not images and not arrays:
        raise DataError("no images (.jpg/.png/.bmp) or tensors (.npy/.npz) found", file=str(p),
                        fix="point --data at a folder holding the calibration/test inputs")
    entries: list[tuple[Path, str | None, int | None]] = []
    if arrays:
        kind = "npz" if arrays[0].suffix.lower() == ".npz" else "npy"
        for f in arrays:
            if f.suffix.lower() == ".npy":
                entries.append((f, None, None))
                continue
            try:
                with np.load(f, allow_pickle=False) as z:
                    keys = list(z.files)
                    if not keys:
                        raise DataError("empty .npz", file=str(f), fix="remove the file")
                    first = z[keys[0]]
                    if all(n in keys for n in shapes):
                        key0 = next(iter(shapes))
                        n = z[key0].shape[0] if z[key0].ndim == len(shapes[key0]) else 1
                        entries += [(f, key0, i if z[key0].ndim == len(shapes[key0]) else None) for i in range(n)]
                    else:
                        for k in keys:
                            a = z[k] if k != keys[0] else first
                            name = next(iter(shapes))
                            if a.ndim == len(shapes[name]) and a.shape[0] > 1:
                                entries += [(f, k, i) for i in range(a.shape[0])]
                            else:
                                entries.append((f, k, None))
            except DataError:
                raise
            except Exception as exc:
                raise DataError(f"cannot read .npz ({type(exc).__name__})", file=str(f),
                                fix="save tensors with numpy.savez") from None
        kind = "npz" if any(k is not None for _, k, _ in entries) else "npy"
        if any(k is None for _, k, _ in entries) and kind == "npz":
            kind = "mixed"
    else:
        kind = "images"
        if len(shapes) != 1:
            raise DataError(f"images given but the model has {len(shapes)} inputs", file=str(p),
                            fix="give one .npz per sample with an array per input")
        entries = [(f, None, None) for f in images]
    if samples is not None:
        entries = entries[:samples]
    if not entries:
        raise DataError("data set is empty", file=str(p), fix="add inputs or raise --samples")
    ds = Dataset(str(p), kind if kind != "mixed" else "npz", entries, shapes, dtypes,
                 prep if kind == "images" else None)
    if kind == "mixed":
        ds = _MixedDataset(ds.source, "npz", entries, shapes, dtypes, None)
    return ds


class _MixedDataset(Dataset):
    """A folder holding both .npy and .npz files."""

    def load(self, entry: tuple[Path, str | None, int | None]) -> dict[str, np.ndarray]:
        if entry[0].suffix.lower() == ".npy":
            saved, self.kind = self.kind, "npy"
            try:
                return super().load(entry)
            finally:
                self.kind = saved
        return super().load(entry)
