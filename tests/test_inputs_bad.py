"""Every bad data set gets one clear line: a DataError naming the file (or option) and the fix, no traceback,
no silent wrong value, and the input files untouched."""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from fixtures.data import write_png_header
from qdebug.errors import DataError, QDebugError
from qdebug.graph.model import ModelGraph
from qdebug.inputs import dataset as dsmod
from qdebug.inputs.dataset import DataWarning, Preprocess, load_dataset

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --------------------------------------------------------------------- models
def _model(tmp: Path, shape, dtype=TensorProto.FLOAT, name: str = "m.onnx") -> Path:
    """Identity model with one input 'x' saved to tmp/name."""
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="id")], "t",
                          [helper.make_tensor_value_info("x", dtype, shape)],
                          [helper.make_tensor_value_info("y", dtype, shape)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    p = tmp / name
    onnx.save(m, str(p))
    return p


def _two_inputs(tmp: Path) -> Path:
    """y = x @ I + sum(table[ids]): a float input 'x' [1,4] and an int64 token-id input 'ids' [1,3]."""
    nodes = [helper.make_node("Gather", ["table", "ids"], ["g"], name="gather", axis=0),
             helper.make_node("ReduceSum", ["g", "axes"], ["s"], name="rs", keepdims=0),
             helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "s"], ["y"], name="add")]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                                       helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                          [numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4) / 10, "table"),
                           numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
                           numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    p = tmp / "two.onnx"
    onnx.save(m, str(p))
    return p


def _graph(path: Path) -> ModelGraph:
    return ModelGraph(onnx.load(str(path)), str(path))


# --------------------------------------------------------------------- bad files
def _dir(tmp: Path, name: str = "data") -> Path:
    d = tmp / name
    d.mkdir()
    return d


def _images(d: Path, n: int = 3, size=(8, 8), color=(200, 100, 50)) -> Path:
    for i in range(n):
        Image.new("RGB", size, color).save(d / f"img{i}.png")
    return d


def _npy(d: Path, arr: np.ndarray, name: str = "a.npy") -> Path:
    np.save(d / name, arr, allow_pickle=arr.dtype == object)
    return d / name


def _f32(*shape: int, value: float = 0.5) -> np.ndarray:
    return np.full(shape, value, dtype=np.float32)


@dataclass
class Case:
    """One bad input: `make(tmp)` -> (data path, model path, load_dataset kwargs); the message must contain
    every string of `expect` (the first names the file or option)."""

    id: str
    make: Callable[[Path], tuple[Path, Path, dict]]
    expect: tuple[str, ...]
    deny: str | None = None  # "file" / "folder": make the bad file/folder unreadable (EACCES) after hashing


def c_bomb(t):
    d = _dir(t)
    write_png_header(d / "bomb.png", 40000, 40000)
    return d, _model(t, [1, 3, 8, 8]), {}


def c_over_limit(t):
    d = _dir(t)
    write_png_header(d / "huge.png", 10000, 10000)  # below PIL's own error, above qdebug's limit
    return d, _model(t, [1, 3, 8, 8]), {}


def c_npy(arr, shape=(1, 3, 8, 8)):
    def make(t):
        d = _dir(t)
        _npy(d, arr)
        return d, _model(t, list(shape)), {}
    return make


def c_npz_complex(t):
    d = _dir(t)
    np.savez(d / "c.npz", good=_f32(1, 3, 8, 8), cplx=np.ones((1, 3, 8, 8), np.complex128))
    return d, _model(t, [1, 3, 8, 8]), {}


def c_prep(**kw):
    def make(t):
        return _images(_dir(t)), _model(t, [1, 3, 8, 8]), {"prep": Preprocess(**kw)}
    return make


def c_mixed(t):
    d = _images(_dir(t))
    _npy(d, _f32(1, 3, 8, 8), "stray.npy")
    (d / "readme.txt").write_text("x")
    return d, _model(t, [1, 3, 8, 8]), {}


def c_mixed_arrays(t):
    d = _dir(t)
    _npy(d, _f32(1, 3, 8, 8), "a.npy")
    _npy(d, _f32(1, 3, 8, 8), "b.npy")
    np.savez(d / "extra.npz", a=_f32(1, 3, 8, 8))
    return d, _model(t, [1, 3, 8, 8]), {}


def c_images_int(dtype, **kw):
    def make(t):
        return _images(_dir(t)), _model(t, [1, 3, 8, 8], dtype), {"prep": Preprocess(**kw)} if kw else {}
    return make


def c_arr_model(arr, dtype, shape=(1, 3, 8, 8)):
    def make(t):
        d = _dir(t)
        _npy(d, arr)
        return d, _model(t, list(shape), dtype), {}
    return make


def c_unreadable_folder(t):
    return _images(_dir(t, "locked")), _model(t, [1, 3, 8, 8]), {}


def c_unreadable_npy(t):
    d = _dir(t)
    _npy(d, _f32(1, 3, 8, 8), "a.npy")
    _npy(d, _f32(1, 3, 8, 8), "locked.npy")
    return d, _model(t, [1, 3, 8, 8]), {}


def c_unreadable_image(t):
    d = _images(_dir(t), 1)
    Image.new("RGB", (8, 8)).save(d / "locked.png")
    return d, _model(t, [1, 3, 8, 8]), {}


def c_enotdir(t):
    d = _images(_dir(t), 1)
    return d / "img0.png" / "more", _model(t, [1, 3, 8, 8]), {}


def c_too_long(t):
    return t / ("n" * 300), _model(t, [1, 3, 8, 8]), {}


def c_missing(t):
    return t / "nope", _model(t, [1, 3, 8, 8]), {}


def c_empty(t):
    return _dir(t, "empty"), _model(t, [1, 3, 8, 8]), {}


def c_subfolders(t):
    d = _dir(t, "byclass")
    _images(_dir(d, "cat"))
    return d, _model(t, [1, 3, 8, 8]), {}


def c_truncated_jpeg(t):
    d = _dir(t)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / "cut.jpg")
    data = (d / "cut.jpg").read_bytes()
    (d / "cut.jpg").write_bytes(data[: len(data) // 2])
    return d, _model(t, [1, 3, 8, 8]), {}


def c_text_as_png(t):
    d = _images(_dir(t), 2)
    (d / "notes.png").write_text("this is not an image\n")
    return d, _model(t, [1, 3, 8, 8]), {}


def c_16bit(t):
    d = _dir(t)
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(d / "depth.png")
    return d, _model(t, [1, 3, 8, 8]), {}


def c_broken_link(t):
    d = _images(_dir(t), 1)
    (d / "gone.png").symlink_to(t / "deleted.png")
    return d, _model(t, [1, 3, 8, 8]), {}


def c_nan(t):
    a = _f32(1, 3, 8, 8)
    a[0, 2, 5, 1] = np.nan
    d = _dir(t)
    _npy(d, a, "nan.npy")
    return d, _model(t, [1, 3, 8, 8]), {}


def c_inf_npz_row(t):
    a = _f32(4, 3, 8, 8)
    a[2, 1, 0, 3] = -np.inf
    d = _dir(t)
    np.savez(d / "rows.npz", batch=a)
    return d, _model(t, [1, 3, 8, 8]), {}


def c_overflow(t):
    d = _dir(t)
    a = np.zeros((1, 3, 8, 8))
    a[0, 0, 1, 1] = 1e300
    _npy(d, a, "big.npy")
    return d, _model(t, [1, 3, 8, 8]), {}


def c_nhwc(t):
    d = _dir(t)
    _npy(d, _f32(1, 8, 8, 3), "nhwc.npy")
    return d, _model(t, [1, 3, 8, 8]), {}


def c_spatial_dynamic(t):
    d = _dir(t)
    _npy(d, _f32(1, 3, 16, 16), "big.npy")
    return d, _model(t, ["N", 3, "H", "W"]), {"size": (8, 8)}


def c_spatial_static(t):
    d = _dir(t)
    _npy(d, _f32(3, 16, 16), "big.npy")
    return d, _model(t, [1, 3, 8, 8]), {}


def c_npy_batch(t):
    d = _dir(t)
    _npy(d, _f32(5, 3, 8, 8), "five.npy")
    return d, _model(t, [1, 3, 8, 8]), {}


def c_zero_size(t):
    d = _dir(t)
    np.savez(d / "z.npz", empty=np.zeros((0, 3, 8, 8), np.float32))
    return d, _model(t, [1, 3, 8, 8]), {}


def c_layout(t):
    return _images(_dir(t)), _model(t, [1, 8, 8, 3]), {"prep": Preprocess(layout="nchw")}


def c_4ch(t):
    return _images(_dir(t)), _model(t, [1, 4, 8, 8]), {}


def c_not_4d(t):
    return _images(_dir(t)), _model(t, [1, 64]), {}


def c_size_static(t):
    return _images(_dir(t)), _model(t, [1, 3, 8, 8]), {"size": (16, 16)}


def c_truncated_npy(t):
    d = _dir(t)
    p = _npy(d, _f32(1, 3, 8, 8), "cut.npy")
    p.write_bytes(p.read_bytes()[:-40])
    return d, _model(t, [1, 3, 8, 8]), {}


def c_not_zip(t):
    d = _dir(t)
    (d / "fake.npz").write_bytes(b"PK\x03\x04 not really a zip")
    return d, _model(t, [1, 3, 8, 8]), {}


def c_empty_npz(t):
    d = _dir(t)
    np.savez(d / "none.npz")
    return d, _model(t, [1, 3, 8, 8]), {}


def c_keys_missing(t):
    d = _dir(t)
    np.savez(d / "s0.npz", x=_f32(1, 4), ids=np.array([[1, 2, 3]]))
    np.savez(d / "s1.npz", x=_f32(1, 4))
    return d, _two_inputs(t), {}


def c_keys_extra(t):
    d = _dir(t)
    np.savez(d / "s0.npz", x=_f32(1, 4), ids=np.array([[1, 2, 3]]), mask=np.ones((1, 3)))
    return d, _two_inputs(t), {}


def c_keys_wrong(t):
    d = _dir(t)
    np.savez(d / "s0.npz", _f32(1, 4), np.array([[1, 2, 3]]))  # arr_0, arr_1
    return d, _two_inputs(t), {}


def c_rows_differ(t):
    d = _dir(t)
    np.savez(d / "s0.npz", x=_f32(3, 4), ids=np.zeros((2, 3), np.int64))
    return d, _two_inputs(t), {}


def c_float_ids(t):
    d = _dir(t)
    np.savez(d / "s0.npz", x=_f32(1, 4), ids=np.array([[1.0, 2.5, 3.0]]))
    return d, _two_inputs(t), {}


def c_npy_multi(t):
    d = _dir(t)
    _npy(d, _f32(1, 4), "x.npy")
    return d, _two_inputs(t), {}


def c_images_multi(t):
    return _images(_dir(t)), _two_inputs(t), {}


def c_single_other(t):
    p = t / "model.onnx.txt"
    p.write_text("x")
    return p, _model(t, [1, 3, 8, 8]), {}


def c_empty_npy(t):
    d = _dir(t)
    (d / "zero.npy").write_bytes(b"")
    return d, _model(t, [1, 3, 8, 8]), {}


def c_npz_foreign_member(t):
    import zipfile

    d = _dir(t)
    with zipfile.ZipFile(d / "odd.npz", "w") as zf:
        zf.writestr("notes.txt", "hello")
    return d, _model(t, [1, 3, 8, 8]), {}


def c_size_vs_static_hw(t):
    d = _dir(t)
    _npy(d, _f32(1, 3, 16, 16), "a.npy")
    return d, _model(t, ["N", 3, 8, 8]), {"size": (16, 16)}  # dynamic batch only: --size must not override H, W


CASES = [
    Case("png-bomb-40000x40000", c_bomb, ("bomb.png", "1600000000 pixels", str(dsmod.MAX_IMAGE_PIXELS))),
    Case("png-over-limit", c_over_limit, ("huge.png", "10000x10000", str(dsmod.MAX_IMAGE_PIXELS))),
    Case("npy-strings", c_npy(np.array(["a", "bb"])), ("a.npy", "strings")),
    Case("npy-structured", c_npy(np.zeros(3, [("a", "f4"), ("b", "i4")])), ("a.npy", "structured", "a, b")),
    Case("npy-complex", c_npy(np.ones((1, 3, 8, 8), np.complex64)), ("a.npy", "complex", "imaginary")),
    Case("npy-object", c_npy(np.array([None, 1.0], dtype=object)), ("a.npy", "objects")),
    Case("npy-datetime", c_npy(np.array(["2024-01-01"], dtype="M8[D]")), ("a.npy", "datetime64")),
    Case("npz-member-complex", c_npz_complex, ("c.npz:cplx", "complex")),
    Case("mean-2-for-3-channels", c_prep(mean=(1.0, 2.0)), ("m.onnx", "--mean", "3 channels", "give 3 values")),
    Case("std-4-for-3-channels", c_prep(std=(1.0, 2.0, 3.0, 4.0)), ("m.onnx", "--std", "4 values")),
    Case("std-zero", c_prep(std=(58.0, 0.0, 57.0)), ("m.onnx", "--std", "zero")),
    Case("std-nan", c_prep(std=(float("nan"),)), ("m.onnx", "--std", "non-finite")),
    Case("mixed-images-and-npy", c_mixed, ("data", "3 image file(s)", "1 .npy file(s)", "stray.npy")),
    Case("mixed-npy-and-npz", c_mixed_arrays, ("data", "2 .npy file(s)", "1 .npz file(s)", "extra.npz")),
    Case("int8-model-fed-images", c_images_int(TensorProto.INT8), ("m.onnx", "int8", "0..255", "--mean 128")),
    Case("uint8-model-fractional-mean", c_images_int(TensorProto.UINT8, mean=(123.7,), std=(58.4,)),
         ("m.onnx", "uint8", "fractions")),
    Case("bool-model-fed-images", c_images_int(TensorProto.BOOL), ("m.onnx", "bool", ".npy")),
    Case("uint8-model-fed-0..1-floats", c_arr_model(_f32(1, 3, 8, 8), TensorProto.UINT8),
         ("a.npy", "0.5", "not an integer", "uint8")),
    Case("int8-model-fed-200", c_arr_model(np.full((1, 3, 8, 8), 200, np.int32), TensorProto.INT8),
         ("a.npy", "200", "-128..127", "never wraps")),
    Case("uint8-model-fed-negative", c_arr_model(np.full((1, 3, 8, 8), -1.0), TensorProto.UINT8),
         ("a.npy", "-1", "0..255")),
    Case("bool-model-fed-2", c_arr_model(np.full((1, 3), 2, np.int64), TensorProto.BOOL, (1, 3)),
         ("a.npy", "not 0 or 1")),
    Case("unreadable-folder", c_unreadable_folder, ("locked", "permission denied", "chmod"), deny="folder"),
    Case("unreadable-npy", c_unreadable_npy, ("locked.npy", "permission denied", "chmod"), deny="file"),
    Case("unreadable-image", c_unreadable_image, ("locked.png", "permission denied", "chmod"), deny="file"),
    Case("path-through-a-file", c_enotdir, ("img0.png", "is a file, not a folder")),
    Case("name-too-long", c_too_long, ("nnnn", "too long", "shorten")),
    Case("missing-path", c_missing, ("nope", "not found")),
    Case("empty-folder", c_empty, ("empty", "no images", "empty")),
    Case("only-sub-folders", c_subfolders, ("byclass", "sub-folder", "not searched")),
    Case("truncated-jpeg", c_truncated_jpeg, ("cut.jpg", "cannot decode", "truncated")),
    Case("text-named-png", c_text_as_png, ("notes.png", "cannot decode", "not in a known image format")),
    Case("16-bit-png", c_16bit, ("depth.png", "16/32-bit", "clip")),
    Case("broken-symlink", c_broken_link, ("gone.png", "broken symbolic link", "restore")),
    Case("nan-in-npy", c_nan, ("nan.npy", "NaN", "(0, 2, 5, 1)")),
    Case("inf-in-npz-row-2", c_inf_npz_row, ("rows.npz:batch", "Inf", "(2, 1, 0, 3)")),
    Case("float64-overflows-float32", c_overflow, ("big.npy", "1e+300", "overflows", "float32")),
    Case("nhwc-array-for-nchw-model", c_nhwc, ("nhwc.npy", "(1, 8, 8, 3)", "(1, 3, 8, 8)", "numpy.transpose")),
    Case("array-size-vs-dynamic-model", c_spatial_dynamic, ("big.npy", "(1, 3, 16, 16)", "--size 16,16")),
    Case("array-size-vs-static-model", c_spatial_static, ("big.npy", "(3, 16, 16)", "fixed", "resize")),
    Case("npy-with-5-samples", c_npy_batch, ("five.npy", "(5, 3, 8, 8)", "one sample per .npy")),
    Case("zero-size-array", c_zero_size, ("z.npz:empty", "zero-size")),
    Case("images-wrong-layout", c_layout, ("m.onnx", "8 channels", "--layout nhwc")),
    Case("images-for-4-channels", c_4ch, ("m.onnx", "4 channels", ".npy")),
    Case("images-for-2d-input", c_not_4d, ("m.onnx", "4-D", ".npy")),
    Case("size-vs-static-model", c_size_static, ("m.onnx", "--size: 16,16", "fixed at 8x8")),
    Case("truncated-npy", c_truncated_npy, ("cut.npy", "truncated")),
    Case("empty-npy-file", c_empty_npy, ("zero.npy", "not a .npy array")),
    Case("npz-with-a-text-member", c_npz_foreign_member, ("odd.npz", "notes.txt", "not a .npy array")),
    Case("size-vs-static-hw-dynamic-batch", c_size_vs_static_hw, ("m.onnx", "--size: 16,16", "fixed at 8x8")),
    Case("npz-not-a-zip", c_not_zip, ("fake.npz", "not a .npz")),
    Case("npz-without-arrays", c_empty_npz, ("none.npz", "empty .npz")),
    Case("npz-missing-input-key", c_keys_missing, ("s1.npz", "missing ids", "ids=...")),
    Case("npz-extra-key", c_keys_extra, ("s0.npz", "extra mask")),
    Case("npz-keys-not-input-names", c_keys_wrong, ("s0.npz", "missing x, ids", "extra arr_0, arr_1")),
    Case("npz-inputs-differ-in-rows", c_rows_differ, ("s0.npz", "x 3, ids 2")),
    Case("float-token-ids", c_float_ids, ("s0.npz:ids", "2.5", "int64")),
    Case("npy-for-two-input-model", c_npy_multi, ("data", "2 inputs", "numpy.savez(f, x=..., ids=...)")),
    Case("images-for-two-input-model", c_images_multi, ("data", "2 inputs", ".npz")),
    Case("data-is-not-an-input-file", c_single_other, ("model.onnx.txt", "not an image or tensor file")),
]


def _hashes(p: Path) -> dict[str, str]:
    """sha256 of every readable file at or under p (nothing for a missing path)."""
    out = {}
    try:
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else []
    except OSError:
        return out
    for f in files:
        out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _deny(target: Path, monkeypatch) -> Callable[[], None]:
    """Make `target` unreadable (chmod 000); as root, where chmod does not stop reads, the OS calls fail."""
    mode = target.stat().st_mode
    target.chmod(0)
    if ROOT:
        err = PermissionError(errno.EACCES, "Permission denied", str(target))
        real_open, real_scandir, real_access = builtins.open, os.scandir, os.access

        def fake_open(file, *a, **k):
            if Path(str(file)) == target:
                raise err
            return real_open(file, *a, **k)

        def fake_scandir(path="."):
            if Path(str(path)) == target:
                raise err
            return real_scandir(path)

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(os, "scandir", fake_scandir)
        monkeypatch.setattr(os, "access", lambda p, m, **k: Path(str(p)) != target and real_access(p, m, **k))

    def undo() -> None:
        monkeypatch.undo()
        target.chmod(mode)
    return undo


def _load_all(data: Path, model: Path, kw: dict) -> None:
    ds = load_dataset(data, _graph(model), kw.get("prep"), kw.get("samples"), kw.get("size"))
    for _ in ds:
        pass


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line(case: Case, tmp_path, monkeypatch):
    data, model, kw = case.make(tmp_path)
    before = _hashes(data)
    undo = None
    if case.deny:
        target = data if case.deny == "folder" else next(f for f in data.iterdir() if f.stem == "locked")
        undo = _deny(target, monkeypatch)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            with pytest.raises(QDebugError) as info:
                _load_all(data, model, kw)
    finally:
        if undo:
            undo()
    exc = info.value
    msg = str(exc)
    assert isinstance(exc, DataError), f"{type(exc).__name__}: {msg}"
    assert "\n" not in msg and msg == exc.one_line()
    assert exc.fix and "(fix: " in msg, msg
    for s in case.expect:
        assert s in msg, f"{s!r} not in: {msg}"
    assert _hashes(data) == before


# --------------------------------------------------------------------- what must keep working
def test_two_input_npz_keyed_by_name_feeds_int64_ids_as_given(tmp_path):
    d = _dir(tmp_path)
    big = 2**40 + 3  # an id no float32 could hold: fed exactly
    np.savez(d / "s0.npz", x=_f32(1, 4), ids=np.array([[1, 2, big]]))
    np.savez(d / "s1.npz", ids=np.array([2, 3, 4], np.int32), x=_f32(4, value=0.25))  # no batch dim, int32 ids
    np.savez(d / "s2.npz", x=_f32(3, 4), ids=np.arange(9).reshape(3, 3))  # three samples in one file
    ds = load_dataset(d, _graph(_two_inputs(tmp_path)))
    assert ds.index_limits == {"ids": (10, "table")}
    ds.index_limits = {}  # exact loading only: the id-range guard would refuse big (tests/test_model_loading.py)
    got = list(ds)
    assert len(ds) == 5 and ds.kind == "npz"
    assert all(set(s) == {"x", "ids"} and s["ids"].dtype == np.int64 and s["x"].dtype == np.float32 for s in got)
    assert got[0]["ids"].tolist() == [[1, 2, big]] and got[1]["ids"].tolist() == [[2, 3, 4]]
    assert got[1]["x"].shape == (1, 4) and got[4]["ids"].tolist() == [[6, 7, 8]]
    assert ds.names() == ["s0.npz", "s1.npz", "s2.npz[0]", "s2.npz[1]", "s2.npz[2]"]


def test_integer_inputs_get_exact_values(tmp_path):
    d = _images(_dir(tmp_path), 1, color=(200, 100, 50))
    x = next(iter(load_dataset(d, _graph(_model(tmp_path, [1, 3, 8, 8], TensorProto.INT8)),
                               Preprocess(mean=(128,), std=(1,)))))["x"]
    assert x.dtype == np.int8 and x[0, :, 0, 0].tolist() == [72, -28, -78]
    a = _dir(tmp_path, "arr")
    np.save(a / "a.npy", np.array([[0.0, 255.0, 7.0]]))  # integral floats are fine for uint8
    u = next(iter(load_dataset(a, _graph(_model(tmp_path, [1, 3], TensorProto.UINT8, "u.onnx")))))["x"]
    assert u.dtype == np.uint8 and u.tolist() == [[0, 255, 7]]
    b = _dir(tmp_path, "bool")
    np.save(b / "m.npy", np.array([[True, False, True]]))
    f = next(iter(load_dataset(b, _graph(_model(tmp_path, [1, 3], name="f.onnx")))))["x"]
    assert f.dtype == np.float32 and f.tolist() == [[1.0, 0.0, 1.0]]


def test_grey_model_and_broadcast_mean_std(tmp_path):
    d = _images(_dir(tmp_path), 1, color=(100, 100, 100))
    g = load_dataset(d, _graph(_model(tmp_path, [1, 1, 8, 8])))  # 3-value defaults broadcast (all equal)
    assert next(iter(g))["x"].shape == (1, 1, 8, 8) and g.preprocess.mean == (0.0,)
    ds = load_dataset(d, _graph(_model(tmp_path, [1, 3, 8, 8], name="c.onnx")), Preprocess(mean=(50,), std=(2,)))
    assert ds.preprocess.mean == (50.0,) * 3 and ds.preprocess.std == (2.0,) * 3
    np.testing.assert_allclose(next(iter(ds))["x"][0, :, 0, 0], [25.0] * 3)


def test_unknown_and_hidden_files_are_skipped_with_a_count(tmp_path):
    d = _images(_dir(tmp_path), 2)
    (d / "labels.txt").write_text("x")
    (d / "meta.json").write_text("{}")
    (d / "._img0.png").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS resource fork: hidden, never decoded
    (d / "sub").mkdir()
    with pytest.warns(DataWarning, match=r"skipped 2 file\(s\).*\.txt"):
        ds = load_dataset(d, _graph(_model(tmp_path, [1, 3, 8, 8])))
    assert len(ds) == 2 and len(list(ds)) == 2
    assert any("1 .json" in n for n in ds.notes) and any("sub-folder" in n for n in ds.notes)


# --------------------------------------------------------------------- through the CLI
def _cli(args, capsys) -> tuple[int, str]:
    from qdebug.cli import main

    rc = main(args)
    return rc, " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("case_id", ["mixed-images-and-npy", "int8-model-fed-images", "nan-in-npy",
                                     "mean-2-for-3-channels", "npz-missing-input-key", "unreadable-folder",
                                     "png-bomb-40000x40000"])
def test_cli_one_line(case_id, tmp_path, capsys, monkeypatch):
    case = next(c for c in CASES if c.id == case_id)
    data, model, kw = case.make(tmp_path)
    args = ["compare", str(model), "--data", str(data), "-q"]
    prep = kw.get("prep")
    if prep is not None and prep.mean != Preprocess().mean:
        args += ["--mean", ",".join(str(v) for v in prep.mean)]
    before = _hashes(data)
    undo = _deny(data, monkeypatch) if case.deny == "folder" else None
    try:
        rc, err = _cli(args, capsys)
    finally:
        if undo:
            undo()
    assert rc == 2 and err.startswith("qdebug: error:") and "Traceback" not in err, err
    assert "(fix: " in err and all(s in err for s in case.expect), err
    assert _hashes(data) == before


def test_cli_runs_two_input_model_from_npz_folder(tmp_path, capsys):
    d = _dir(tmp_path)
    rng = np.random.default_rng(0)
    for i in range(3):
        np.savez(d / f"s{i}.npz", x=rng.random((1, 4), dtype=np.float32), ids=np.array([[i, 2, 9]]))
    out = tmp_path / "run.json"
    rc, err = _cli(["compare", str(_two_inputs(tmp_path)), "--data", str(d), "--json", str(out), "-q"], capsys)
    assert rc == 0, err
    doc = json.loads(out.read_text())
    assert doc["samples"]["names"] == ["s0.npz", "s1.npz", "s2.npz"]
    quantized = {t["tensor"]: t.get("quantized") for t in doc.get("tensors", [])}
    assert quantized.get("ids") is not True and quantized.get("x") is True  # token ids are never quantized
