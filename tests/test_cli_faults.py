"""CLI fault table, part 1 (issue #14): bad model files, bad data sets, bad options, overrides and targets.

Each case runs `qdebug.cli.main` in-process and checks the whole contract (tests/test_cli_faults_base.py):
exit code, one `qdebug: error:` line naming the file/place and the fix, no traceback, inputs untouched,
nothing written when refused. Cases that fail today are strict xfails with the reason.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cli_faults_base import ROOT, Case, check_case, fenv, frac, npy_bytes, params, read  # noqa: F401

COMPARE = ("compare", "<benign>", "--data", "<npy>", "-q")
BISECT = ("bisect", "<benign>", "--data", "<npy>", "-q")
SAMPLE = (1, 3, 16, 16)


# --------------------------------------------------------------------- model files
def _png(w: int, h: int) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _model_bytes(nodes, inputs, outputs, inits=(), opset: int = 17) -> bytes:
    g = helper.make_graph(nodes, "t", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m.SerializeToString()


_X = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SAMPLE))
_Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(SAMPLE))


def _external_data_model(env) -> bytes:
    w = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    w.external_data.add(key="location", value="weights_missing.bin")
    return _model_bytes([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], [_X], [_Y], [w])


BAD_MODELS: dict[str, object] = {
    "empty": b"",
    "garbage": bytes(range(256)) * 8,
    "text": b"this is not an ONNX model\n",
    "nul_bytes": b"\0" * 1024,
    "trunc_1b": read("benign", 0, 1),
    "trunc_10b": read("benign", 0, 10),
    "trunc_half": frac("benign", 0.5),
    "trunc_99pct": frac("benign", 0.99),
    "png_as_model": _png(4, 4),
    "json_as_model": b'{"graph": {}}',
    "zip_as_model": b"PK\x03\x04" + b"\0" * 60,
    "tensorproto": numpy_helper.from_array(np.ones(4, np.float32), "t").SerializeToString(),
    "no_graph": helper.make_model(helper.make_graph([], "t", [], [])).SerializeToString(),
    "no_inputs": _model_bytes([helper.make_node("Constant", [], ["y"], name="c",
                                                value=numpy_helper.from_array(np.ones(SAMPLE, np.float32)))],
                              [], [_Y]),
    "opset_999": _model_bytes([helper.make_node("Relu", ["x"], ["y"], name="r")], [_X], [_Y], opset=999),
    "unknown_op": _model_bytes([helper.make_node("NoSuchOp", ["x"], ["y"], name="r")], [_X], [_Y]),
    "undefined_tensor": _model_bytes([helper.make_node("Add", ["x", "ghost"], ["y"], name="add")], [_X], [_Y]),
    "cycle": _model_bytes([helper.make_node("Add", ["x", "b"], ["a"], name="n1"),
                           helper.make_node("Relu", ["a"], ["b"], name="n2"),
                           helper.make_node("Identity", ["a"], ["y"], name="n3")], [_X], [_Y]),
    "external_data_missing": _external_data_model,
}


def _dir_model(t: Path, env) -> None:
    (t / "m.onnx").mkdir()


def _loop_model(t: Path, env) -> None:
    os.symlink(t / "m.onnx", t / "m.onnx")


def _dangling_model(t: Path, env) -> None:
    os.symlink(t / "gone.onnx", t / "m.onnx")


MODEL_SETUPS = {"directory": _dir_model, "symlink_loop": _loop_model, "dangling_symlink": _dangling_model,
                "missing": None}


def _model_cases(cmd: str, argv: tuple[str, ...]) -> list[Case]:
    cases = [Case(f"{cmd}-model-{k}", argv, names=("m.onnx",), files={"m.onnx": v}) for k, v in BAD_MODELS.items()]
    cases += [Case(f"{cmd}-model-{k}", argv, names=("m.onnx",), setup=s) for k, s in MODEL_SETUPS.items()]
    return cases


MODEL_CASES = [c for c in _model_cases("compare", ("compare", "<t>/m.onnx", "--data", "<npy>", "-q"))
               + _model_cases("bisect", ("bisect", "<t>/m.onnx", "--data", "<npy>", "-q"))
               + _model_cases("promote", ("promote", "hisi:<hisi>", "--layers", "/conv1/Conv", "--model",
                                          "<t>/m.onnx", "-o", "<t>/out.txt", "-q"))
               if not c.id.endswith(("promote-model-no_inputs", "promote-model-opset_999"))]


# --------------------------------------------------------------------- data sets
def _arr(fill=0.5, shape=SAMPLE, dtype=np.float32) -> bytes:
    return npy_bytes(np.full(shape, fill, dtype=dtype))


def _nan_at(value: float) -> bytes:
    a = np.full(SAMPLE, 0.5, np.float32)
    a[0, 1, 2, 3] = value
    return npy_bytes(a)


def _object_npy() -> bytes:
    """A pickled object array; loading it with allow_pickle would run code, so it must be refused unread."""
    return npy_bytes(np.array([{"a": 1}], dtype=object))


def _npy_header_only() -> bytes:
    return _arr()[:128]


def _empty_dir(t: Path, env) -> None:
    (t / "d").mkdir()


def _subdir_only(t: Path, env) -> None:
    (t / "d" / "sub").mkdir(parents=True)
    (t / "d" / "sub" / "a.npy").write_bytes(_arr())


def _dangling_in_dir(t: Path, env) -> None:
    (t / "d").mkdir()
    os.symlink(t / "gone.npy", t / "d" / "a.npy")


def _loop_dir(t: Path, env) -> None:
    os.symlink(t / "d", t / "d")


def _unreadable_dir(t: Path, env):
    (t / "d").mkdir()
    (t / "d" / "a.npy").write_bytes(_arr())
    os.chmod(t / "d", 0)
    return lambda: os.chmod(t / "d", 0o755)


def _unreadable_file(t: Path, env):
    (t / "d").mkdir()
    (t / "d" / "a.npy").write_bytes(_arr())
    os.chmod(t / "d" / "a.npy", 0)
    return lambda: os.chmod(t / "d" / "a.npy", 0o644)


def _zip_npz(members: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, v in members.items():
            z.writestr(k, v)
    return buf.getvalue()


DATA_ARGV = ("compare", "<benign>", "--data", "<t>/d", "-q")
BAD_DATA: dict[str, dict[str, object]] = {
    "hidden_only": {"d/.a.npy": _arr()},
    "text_only": {"d/readme.txt": b"hello"},
    "mixed_images_npy": {"d/a.npy": _arr(), "d/b.png": _png(16, 16)},
    "npy_strings": {"d/a.npy": npy_bytes(np.array(["a", "b"]))},
    "npy_complex": {"d/a.npy": npy_bytes(np.full(SAMPLE, 1 + 2j, np.complex64))},
    "npy_structured": {"d/a.npy": npy_bytes(np.zeros(SAMPLE, dtype=[("a", "f4")]))},
    "npy_object_pickle": {"d/a.npy": _object_npy()},
    "npy_nan": {"d/a.npy": _nan_at(np.nan)},
    "npy_inf": {"d/a.npy": _nan_at(np.inf)},
    "npy_neg_inf": {"d/a.npy": _nan_at(-np.inf)},
    "npy_wrong_shape": {"d/a.npy": _arr(shape=(1, 3, 8, 8))},
    "npy_rank1": {"d/a.npy": _arr(shape=(768,))},
    "npy_rank5": {"d/a.npy": _arr(shape=(1, 1, 3, 16, 16))},
    "npy_zero_size": {"d/a.npy": _arr(shape=(0, 3, 16, 16))},
    "npy_datetime": {"d/a.npy": npy_bytes(np.zeros(SAMPLE, "datetime64[s]"))},
    "npy_float_huge": {"d/a.npy": _arr(fill=1e300, dtype=np.float64)},
    "npy_truncated": {"d/a.npy": lambda env: _npy_header_only()},
    "npy_empty_file": {"d/a.npy": b""},
    "npy_bad_magic": {"d/a.npy": b"NOTNUMPY" + b"\0" * 200},
    "npy_one_bad_of_two": {"d/a.npy": _arr(), "d/b.npy": _nan_at(np.nan)},
    "npz_empty": {"d/a.npz": _zip_npz({})},
    "npz_corrupt": {"d/a.npz": b"PK\x03\x04garbage"},
    "npz_nan_member": {"d/a.npz": _zip_npz({"x.npy": _nan_at(np.nan)})},
    "png_40000x40000": {"d/a.png": _png(40000, 40000)},
    "png_header_only": {"d/a.png": _png(16, 16)[:33]},
    "jpg_garbage": {"d/a.jpg": b"\xff\xd8\xff\xe0garbage"},
    "png_empty_file": {"d/a.png": b""},
}
DATA_SETUPS = {"empty_folder": _empty_dir, "subfolder_only": _subdir_only, "dangling_symlink": _dangling_in_dir,
               "symlink_loop": _loop_dir, "missing": None}
UNREADABLE = {"unreadable_folder": _unreadable_dir, "unreadable_file": _unreadable_file}


def _named(files: dict[str, object]) -> tuple[str, ...]:
    """What the error line names: the one bad file (an npz member as `a.npz:x`), else the folder."""
    if len(files) == 1:
        return (f"<t>/{next(iter(files))}",)
    return ("<t>/d",)


DATA_NAMES = {"hidden_only": ("<t>/d",), "text_only": ("<t>/d",), "npz_nan_member": ("<t>/d/a.npz:x",), "npy_one_bad_of_two": ("<t>/d/b.npy",),
              "dangling_symlink": ("<t>/d/a.npy",), "mixed_images_npy": ("<t>/d", "a.npy")}


def _data_cases(cmd: str, argv: tuple[str, ...]) -> list[Case]:
    cases = [Case(f"{cmd}-data-{k}", argv, names=DATA_NAMES.get(k, _named(v)), files=v) for k, v in BAD_DATA.items()]
    cases.append(Case(f"{cmd}-data-npy_bool_as_0_1", argv, rc=0, files={"d/a.npy": npy_bytes(np.ones(SAMPLE, bool))}))
    cases += [Case(f"{cmd}-data-{k}", argv, names=DATA_NAMES.get(k, ("<t>/d",)), setup=s)
              for k, s in DATA_SETUPS.items()]
    cases += [Case(f"{cmd}-data-{k}", argv, names=("d",), setup=s, skip="root reads anything" if ROOT else None)
              for k, s in UNREADABLE.items()]
    return cases


DATA_CASES = (_data_cases("compare", DATA_ARGV)
              + _data_cases("calibdata", ("compare", "<benign>", "--data", "<npy>", "--calib-data", "<t>/d", "-q"))
              + [Case(f"bisect-data-{k}", ("bisect", "<benign>", "--data", "<t>/d", "-q"), names=DATA_NAMES.get(k, _named(v)), files=v)
                 for k, v in list(BAD_DATA.items())[:12]])

# integer-input models: float tensors are refused, the right integer dtype runs
DTYPE_CASES = [
    Case("uint8-model-float-npy", ("compare", "<uint8>", "--data", "<npy>", "-q"), names=("s0.npy", "uint8")),
    Case("int8-model-float-npy", ("compare", "<int8>", "--data", "<npy>", "-q"), names=("s0.npy", "int8")),
    Case("uint8-model-float-npy-bisect", ("bisect", "<uint8>", "--data", "<npy>", "-q"), names=("s0.npy",)),
    Case("int8-model-int16-npy", ("compare", "<int8>", "--data", "<t>/d", "-q"), names=("a.npy",),
         files={"d/a.npy": npy_bytes(np.full(SAMPLE, 300, np.int16))}),
    Case("uint8-model-negative-ints", ("compare", "<uint8>", "--data", "<t>/d", "-q"), names=("a.npy",),
         files={"d/a.npy": npy_bytes(np.full(SAMPLE, -1, np.int32))}),
    Case("uint8-model-input-dtype-float", ("compare", "<uint8>", "--data", "<img>", "--input-dtype", "float32",
                                           "-q"), names=("--input-dtype",)),
]

# --------------------------------------------------------------------- preprocessing and scheme options
IMG = ("compare", "<benign>", "--data", "<img>", "-q")
OPTION_CASES = [
    Case("mean-2-values", IMG + ("--mean", "1,2"), names=("--mean",)),
    Case("mean-4-values", IMG + ("--mean", "1,2,3,4"), names=("--mean",)),
    Case("std-2-values", IMG + ("--std", "1,2"), names=("--std",)),
    Case("std-5-values", IMG + ("--std", "1,2,3,4,5"), names=("--std",)),
    Case("std-zero", IMG + ("--std", "0,0,0"), names=("--std",)),
    Case("std-nan", IMG + ("--std", "nan,nan,nan"), names=("--std",)),
    Case("mean-inf", IMG + ("--mean", "inf,0,0"), names=("--mean",)),
    Case("mean-text", IMG + ("--mean", "red"), names=("--mean",)),
    Case("mean-empty", IMG + ("--mean", ""), names=("--mean",)),
    Case("samples-0", COMPARE + ("--samples", "0"), names=("--samples",)),
    Case("samples-neg", COMPARE + ("--samples", "-1"), names=("--samples",)),
    Case("samples-text", COMPARE + ("--samples", "many"), names=("--samples",)),
    Case("size-0-0", IMG + ("--size", "0,0"), names=("--size",)),
    Case("size-neg", IMG + ("--size", "-1,5"), names=("--size",)),
    Case("size-3-values", IMG + ("--size", "16,16,16"), names=("--size",)),
    Case("size-text", IMG + ("--size", "big"), names=("--size",)),
    Case("size-vs-fixed-model", IMG + ("--size", "8,8"), names=("--size",)),
    Case("resize-bogus", IMG + ("--resize", "stretch"), names=("--resize",)),
    Case("color-bogus", IMG + ("--color", "cmyk"), names=("--color",)),
    Case("layout-bogus", IMG + ("--layout", "nchw4"), names=("--layout",)),
    Case("input-dtype-bogus", IMG + ("--input-dtype", "int4"), names=("--input-dtype",)),
    Case("dtype-fp16", COMPARE + ("--dtype", "fp16"), names=("--dtype",)),
    Case("dtype-int3", COMPARE + ("--dtype", "int3"), names=("--dtype",)),
    Case("calibrator-bogus", COMPARE + ("--calibrator", "magic"), names=("--calibrator",)),
    Case("percentile-200", COMPARE + ("--calibrator", "percentile", "--percentile", "200"), names=("--percentile",)),
    Case("percentile-nan", COMPARE + ("--calibrator", "percentile", "--percentile", "nan"), names=("--percentile",)),
    Case("profile-bogus", COMPARE + ("--profile", "tpu9000"), names=("--profile",)),
    Case("backend-bogus", COMPARE + ("--backend", "gpu"), names=("--backend",)),
    Case("top-text", COMPARE + ("--top", "ten"), names=("--top",)),
    Case("task-bogus", COMPARE + ("--task", "yolov99"), names=("--task",)),
    Case("task-on-classifier", COMPARE + ("--task", "yolov8"), names=("logits",)),
    Case("anchors-without-task", COMPARE + ("--anchors", "1,2"), names=("--anchors",)),
    Case("labels-without-task", COMPARE + ("--labels", "<t>/labels"), names=("--labels",)),
    Case("conf-2", ("compare", "<y8>", "--data", "<y8npy>", "-q", "--task", "yolov8", "--conf", "2"),
         names=("--conf",)),
    Case("iou-neg", ("compare", "<y8>", "--data", "<y8npy>", "-q", "--task", "yolov8", "--iou", "-1"),
         names=("--iou",)),
    Case("max-det-0", ("compare", "<y8>", "--data", "<y8npy>", "-q", "--task", "yolov8", "--max-det", "0"),
         names=("--max-det",)),
    Case("nc-0", ("compare", "<y8>", "--data", "<y8npy>", "-q", "--task", "yolov8", "--nc", "0"), names=("--nc",)),
    Case("unknown-option", COMPARE + ("--frobnicate",), names=("--frobnicate",)),
    Case("no-data-option", ("compare", "<benign>"), names=("--data",)),
    Case("promote-dtype-int8", BISECT + ("--promote-dtype", "int8"), names=("--promote-dtype",)),
    Case("promote-dtype-fp8", BISECT + ("--promote-dtype", "fp8"), names=("--promote-dtype",)),
    Case("promote-dtype-empty", BISECT + ("--promote-dtype", ""), names=("--promote-dtype",)),
    Case("bisect-o-without-calib", BISECT + ("-o", "<t>/out.txt"), names=("-o",)),
    Case("bisect-format-bogus", BISECT + ("-o", "<t>/out.txt", "--format", "bogus"), names=("--format",)),
    Case("bisect-format-without-calib", BISECT + ("-o", "<t>/out.txt", "--format", "hisi"), names=("--format", "--calib")),
    Case("cut-search-bogus", BISECT + ("--cut-search", "binary"), names=("--cut-search",)),
]

# --------------------------------------------------------------------- --override / --overrides
OVERRIDE_SYNTAX = {
    "markup-slash": "a[/]=int16", "no-node": "=int16", "int3": "x=int3", "known-node-int3": "/conv1/Conv=int3",
    "empty-prec": "/conv1/Conv=", "no-equals": "/conv1/Conv", "unknown-node": "/conv9/Conv=int16",
    "fp8": "/conv1/Conv=fp8", "empty": "", "only-equals": "=", "bold-markup": "[bold]x=int16",
    "int4": "/conv1/Conv=int4",
}
OVERRIDE_CASES = [Case(f"override-{k}", COMPARE + ("--override", v), names=("--override",))
                  for k, v in OVERRIDE_SYNTAX.items()]
OVERRIDE_CASES += [Case(f"bisect-override-{k}", BISECT + ("--override", v), names=("--override",))
                   for k, v in list(OVERRIDE_SYNTAX.items())[:6]]
OVERRIDES_FILES: dict[str, object] = {
    "latin1": '{"/conv1/Conv": "int16", "caf\u00e9": "int16"}'.encode("latin-1"),
    "utf16": '{"/conv1/Conv": "int16"}'.encode("utf-16"),
    "bad-json": b'{"/conv1/Conv": int16}',
    "truncated": b'{"/conv1/Conv": "int',
    "deep-list": b"[" * 100000 + b"]" * 100000,
    "deep-dict": b'{"a":' * 100000 + b"1" + b"}" * 100000,
    "list": b'["/conv1/Conv"]',
    "int-value": b'{"/conv1/Conv": 16}',
    "null-value": b'{"/conv1/Conv": null}',
    "dict-value": b'{"/conv1/Conv": {"dtype": "int16"}}',
    "unknown-node": b'{"/conv9/Conv": "int16"}',
    "bad-precision": b'{"/conv1/Conv": "int3"}',
    "empty-file": b"",
    "nan": b'{"/conv1/Conv": NaN}',
    "binary": bytes(range(256)),
}
OVERRIDES_CASES = [Case(f"overrides-{k}", COMPARE + ("--overrides", "<t>/ov.json"), names=("ov.json",),
                        files={"ov.json": v}) for k, v in OVERRIDES_FILES.items()]
OVERRIDES_CASES += [Case(f"bisect-overrides-{k}", BISECT + ("--overrides", "<t>/ov.json"), names=("ov.json",),
                         files={"ov.json": v}) for k, v in list(OVERRIDES_FILES.items())[:8]]
OVERRIDES_CASES += [Case("overrides-missing", COMPARE + ("--overrides", "<t>/ov.json"), names=("ov.json",)),
                    Case("overrides-directory", COMPARE + ("--overrides", "<t>"), names=("<t>",))]

# --------------------------------------------------------------------- targets
TARGETS = {
    "dangling-op": "snr>", "huge-bound": "logits:snr_db>=1e999", "bare-number": "1e999",
    "unknown-metric": "logits:psnr>=30", "task-metric-no-task": "map50_95_vs_float>=0.95",
    "unknown-tensor": "nope:snr_db>=30", "empty": "", "only-and": "and", "nan-bound": "logits:snr_db>=nan",
    "text-bound": "logits:cosine>=high", "reversed-op": "logits:snr_db=>30", "double-op": "logits:snr_db>>=30",
    "dangling-and": "logits:snr_db>=30 and", "unknown-part": "logits.score:snr_db>=30",
    "cosine-above-1": "logits:cosine>=1.5", "markup": "[bold]x:snr_db>=30",
}
TARGET_CASES = [Case(f"target-{k}", BISECT + ("--target", v), names=("--target",)) for k, v in TARGETS.items()]
TARGET_CASES += [Case(f"cut-threshold-{k}", BISECT + ("--cut-threshold", v), names=("--cut-threshold",))
                 for k, v in (("dangling-op", "snr_db>"), ("unknown-metric", "psnr>=20"), ("huge", "snr_db>=1e999"),
                              ("text", "loose"))]

ALL = MODEL_CASES + DATA_CASES + DTYPE_CASES + OPTION_CASES + OVERRIDE_CASES + OVERRIDES_CASES + TARGET_CASES
XFAIL: dict[str, str] = {}


@pytest.mark.parametrize("case", params(Case(**{**c.__dict__, "xfail": XFAIL.get(c.id, c.xfail)}) for c in ALL))
def test_fault(case: Case, fenv, tmp_path, capsys, monkeypatch):  # noqa: F811 - fenv is the fixture
    check_case(case, fenv, tmp_path, capsys, monkeypatch)


def test_table_size():
    """The three fault tables together hold at least 250 cases (issue #14)."""
    from test_cli_faults_outputs import ALL as OUT
    from test_cli_faults_vendor import ALL as VENDOR

    assert len(ALL) + len(VENDOR) + len(OUT) >= 250
