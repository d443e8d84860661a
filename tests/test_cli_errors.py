"""Bad input gets one clear line naming the file/place and the fix, a non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdebug.cli import main


def run_cli(args, capsys):
    rc = main(args)
    cap = capsys.readouterr()
    return rc, cap.out, " ".join(cap.err.split())


def _tiny(path, dynamic=False, nan=False):
    dims = ["N", 3, "H", "W"] if dynamic else [1, 3, 8, 8]
    nodes = [helper.make_node("Sub", ["x", "two"], ["d"], name="sub"),
             helper.make_node("Sqrt" if nan else "Relu", ["d"], ["y"], name="act")]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
                          [numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


@pytest.fixture()
def npy_dir(tmp_path):
    d = tmp_path / "npy"
    d.mkdir()
    for i in range(3):
        np.save(d / f"{i}.npy", np.full((1, 3, 8, 8), 1.0 + i, dtype=np.float32))
    return d


def test_corrupt_onnx(tmp_path, npy_dir, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage" * 10)
    rc, _, err = run_cli(["compare", str(bad), "--data", str(npy_dir)], capsys)
    assert rc == 2 and "bad.onnx" in err and "fix:" in err and "Traceback" not in err


def test_missing_model(tmp_path, npy_dir, capsys):
    rc, _, err = run_cli(["compare", str(tmp_path / "nope.onnx"), "--data", str(npy_dir)], capsys)
    assert rc == 2 and "not found" in err


def test_empty_data_folder(tmp_path, capsys):
    m = _tiny(tmp_path / "m.onnx")
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run_cli(["compare", str(m), "--data", str(empty)], capsys)
    assert rc == 2 and "empty" in err and "no images" in err


def test_undecodable_image(tmp_path, capsys):
    m = _tiny(tmp_path / "m.onnx")
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "broken.jpg").write_bytes(b"not a jpeg")
    rc, _, err = run_cli(["compare", str(m), "--data", str(d)], capsys)
    assert rc == 2 and "broken.jpg" in err and "cannot decode" in err


def test_shape_mismatch(tmp_path, capsys):
    m = _tiny(tmp_path / "m.onnx")
    d = tmp_path / "npy"
    d.mkdir()
    np.save(d / "a.npy", np.zeros((1, 3, 9, 9), dtype=np.float32))
    rc, _, err = run_cli(["compare", str(m), "--data", str(d)], capsys)
    assert rc == 2 and "a.npy" in err and "(1, 3, 8, 8)" in err


def test_nan_in_input(tmp_path, capsys):
    m = _tiny(tmp_path / "m.onnx")
    d = tmp_path / "npy"
    d.mkdir()
    a = np.zeros((1, 3, 8, 8), dtype=np.float32)
    a[0, 0, 0, 0] = np.nan
    np.save(d / "a.npy", a)
    rc, _, err = run_cli(["compare", str(m), "--data", str(d)], capsys)
    assert rc == 2 and "NaN" in err and "a.npy" in err


def test_nan_in_float_activation_named(tmp_path, npy_dir, capsys):
    m = _tiny(tmp_path / "m.onnx", nan=True)  # sqrt(x - 2) with x = 1 -> NaN at node 'act'
    rc, _, err = run_cli(["compare", str(m), "--data", str(npy_dir)], capsys)
    assert rc == 2 and "NaN first appears" in err and "act" in err


def test_nan_only_in_compare_data_named_with_sample(tmp_path, capsys):
    """Calibration on a clean set passes; the comparison's own float run finds the NaN (sqrt of -1 at
    node 'act' on the second sample) and names tensor, node and sample in one line."""
    m = _tiny(tmp_path / "m.onnx", nan=True)
    cal, data = tmp_path / "cal", tmp_path / "data"
    cal.mkdir()
    data.mkdir()
    np.save(cal / "c.npy", np.full((1, 3, 8, 8), 3.0, dtype=np.float32))
    np.save(data / "a.npy", np.full((1, 3, 8, 8), 2.5, dtype=np.float32))
    np.save(data / "b.npy", np.full((1, 3, 8, 8), 1.0, dtype=np.float32))
    rc, _, err = run_cli(["compare", str(m), "--data", str(data), "--calib-data", str(cal)], capsys)
    assert rc == 2 and "Traceback" not in err
    assert "NaN first appears in float tensor 'y' from node act (Sqrt) on sample b.npy" in err


def test_dynamic_dims_need_size_for_images_only(tmp_path, npy_dir, capsys):
    """Images have no size of their own for the network: --size decides. Tensors carry theirs."""
    from fixtures.data import make_images

    m = _tiny(tmp_path / "m.onnx", dynamic=True)
    imgs = tmp_path / "imgs"
    make_images(imgs, n=2)
    rc, _, err = run_cli(["compare", str(m), "--data", str(imgs)], capsys)
    assert rc == 2 and "--size" in err
    rc, _, _ = run_cli(["compare", str(m), "--data", str(imgs), "--size", "8,8", "-q"], capsys)
    assert rc == 0
    rc, _, err = run_cli(["compare", str(m), "--data", str(npy_dir), "-q"], capsys)
    assert rc == 0, err


def test_unknown_override_layer(tmp_path, npy_dir, capsys):
    m = _tiny(tmp_path / "m.onnx")
    rc, _, err = run_cli(["compare", str(m), "--data", str(npy_dir), "--override", "acct=int16"], capsys)
    assert rc == 2 and "unknown layer name 'acct'" in err and "act" in err


def test_unsupported_op_runs_in_float_and_is_reported(tmp_path, npy_dir, capsys):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Hardmax", ["r"], ["y"], name="hm", axis=1)]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "u.onnx"))
    rc, out, _ = run_cli(["compare", str(tmp_path / "u.onnx"), "--data", str(npy_dir)], capsys)
    assert rc == 0 and "Hardmax" in " ".join(out.split())


def test_json_never_overwrites_input(tmp_path, npy_dir, capsys):
    m = _tiny(tmp_path / "m.onnx")
    before = m.read_bytes()
    rc, _, err = run_cli(["compare", str(m), "--data", str(npy_dir), "--json", str(m), "-q"], capsys)
    assert rc == 2 and "overwrite" in err and m.read_bytes() == before


def test_console_script_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "qdebug.cli", "compare", str(tmp_path / "x.onnx"), "--data", "."],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_atomic_write_to_device_and_folder(tmp_path):
    import os
    import stat

    from qdebug.errors import QDebugError
    from qdebug.fileio import atomic_write

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    atomic_write(fifo, "x\n")
    assert os.read(fd, 10) == b"x\n" and stat.S_ISFIFO(os.stat(fifo).st_mode)  # still a FIFO, not replaced
    os.close(fd)
    with pytest.raises(QDebugError, match="folder"):
        atomic_write(tmp_path, "x")
    out = tmp_path / "a" / "b.json"
    atomic_write(out, "1")
    assert out.read_text() == "1" and not list(out.parent.glob(".b.json.*"))
