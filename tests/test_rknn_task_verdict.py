"""`compare --backend rknn --task ...`: the task verdict is also computed on the vendor toolkit's own final outputs
and shown beside the built-in one (terminal, JSON `detection.toolkit` / `task.toolkit`, report headline).

The fake toolkit (fixtures/fake_rknn) is extended here, in a copy, to return outputs the test chose (env
FAKE_RKNN_OUTPUTS: an .npz with `s<k>` = the k-th sample's output), so the toolkit verdict is derived by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures.detections import yolov8_concat
from qdebug.cli import main
from qdebug.report.build import write_report
from qdebug.results.schema import load_result

ROOT = Path(__file__).parent.parent
FAKE = ROOT / "fixtures" / "fake_rknn" / "rknn" / "api.py"
FAKE_VARS = ("FAKE_RKNN_FAIL", "FAKE_RKNN_CRASH", "FAKE_RKNN_UNSUPPORTED", "FAKE_RKNN_CRASH_KEY", "FAKE_RKNN_IGNORE",
             "FAKE_RKNN_ALL_TENSORS", "FAKE_RKNN_PROPOSAL", "FAKE_GAIN", "FAKE_GAIN_PROMOTED", "FAKE_RKNN_SLEEP")
# appended to a copy of the shared fake: inference answers the k-th call of a build with the k-th stored output
KNOWN_OUTPUTS = '''

_plain_inference = RKNN.inference


def _known_inference(self, inputs, data_format=None):
    path = os.environ.get("FAKE_RKNN_OUTPUTS")
    if not path:
        return _plain_inference(self, inputs, data_format)
    k = getattr(self, "_calls", 0)
    self._calls = k + 1
    return [np.load(path)[f"s{k}"]]


RKNN.inference = _known_inference
'''


@pytest.fixture()
def fake_known(monkeypatch, tmp_path):
    pkg = tmp_path / "fake" / "rknn"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "api.py").write_text(FAKE.read_text() + KNOWN_OUTPUTS)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))
    for k in FAKE_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return tmp_path


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _constant_detector(tmp_path: Path, table: np.ndarray) -> Path:
    """output0 = table + 0 * mean(x): the float detections are the objects placed in `table`, for any image."""
    g = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0, name="mean"),
         helper.make_node("Mul", ["m", "zero"], ["z"], name="zero_mul"),
         helper.make_node("Add", ["table", "z"], ["output0"], name="add")], "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 128, 128])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(table.shape))],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "det.onnx")


OBJECTS = [(10, 0, (20.0, 20.0, 16.0, 16.0), 0.9), (60, 1, (100.0, 20.0, 16.0, 16.0), 0.8),
           (150, 2, (20.0, 100.0, 16.0, 16.0), 0.7), (200, 3, (100.0, 100.0, 16.0, 16.0), 0.6)]


def _compare_known(tmp: Path, model: Path, data: Path, task: str) -> dict:
    """`compare --backend rknn --task TASK` with the fake toolkit returning tmp/known.npz per sample."""
    import os

    os.environ["FAKE_RKNN_OUTPUTS"] = str(tmp / "known.npz")
    try:
        out = tmp / "r.json"
        rc = main(["compare", str(model), "--data", str(data), "--backend", "rknn", "--rknn-python", sys.executable,
                   "--rknn-analysis-samples", "0", "--task", task, "--json", str(out)])
    finally:
        del os.environ["FAKE_RKNN_OUTPUTS"]
    assert rc == 0
    return json.loads(out.read_text())


def test_detection_verdict_of_the_toolkit_outputs(fake_known, capsys):
    tmp = fake_known
    full, _ = yolov8_concat(OBJECTS)
    model = _constant_detector(tmp, full["output0"])
    data = tmp / "npy"
    data.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        np.save(data / f"{k}.npy", rng.uniform(0, 1, (1, 3, 128, 128)).astype(np.float32))
    # the toolkit: sample 0 loses the class-3 object, sample 1 is the float output exactly
    dropped, _ = yolov8_concat(OBJECTS[:3])
    np.savez(tmp / "known.npz", s0=dropped["output0"], s1=full["output0"])
    doc = _compare_known(tmp, model, data, "yolov8")
    out = tmp / "r.json"
    det = doc["detection"]
    tk = det["toolkit"]
    # by hand: 8 float detections (4 per image), the toolkit lost 1 (class 3 in sample 0); classes 0-2 AP 1;
    # class 3: 1 of 2 found at precision 1 -> recall 0.5 -> 51 of the 101 COCO recall points -> AP 51/101
    assert tk["counts"]["reference"] == 8 and tk["counts"]["lost"] == 1 and tk["counts"]["added"] == 0
    assert tk["metrics"]["lost_frac"] == pytest.approx(1 / 8)
    assert tk["metrics"]["map50_95_vs_float"] == pytest.approx((3 + 51 / 101) / 4, abs=1e-5)
    assert tk["metrics"]["recall_vs_float"] == pytest.approx((3 + 0.5) / 4, abs=1e-5)
    assert tk["judge"].startswith("rknn-toolkit2") and "(rk3588)" in tk["judge"]
    assert det["judge"] == "built-in simulator (rknn)" and "judge" not in det["quantized"]
    load_result(out)  # the new fields validate against the schemas
    text = capsys.readouterr().out
    assert "rows: built-in = built-in simulator (rknn)" in text and "toolkit  = rknn-toolkit2 (rk3588)" in text
    assert max(len(ln) for ln in text.splitlines()[text.splitlines().index(next(
        ln for ln in text.splitlines() if "rows: built-in" in ln)):][:8]) <= 80  # the verdict reads at 80 columns
    row = next(ln for ln in text.splitlines() if ln.lstrip().startswith("toolkit ") and "%" in ln)
    assert "0.876" in row and "1 12%" in row  # (3 + 51/101)/4 = 0.8762; 1 of 8 lost
    paths = write_report(out, tmp / "report")
    rep = Path(paths["md"]).read_text()
    head = next(ln for ln in rep.splitlines() if ln.startswith("- **Detections**"))
    assert "built-in simulator (rknn): mAP50-95 vs float" in head
    assert "toolkit: rknn-toolkit2 (rk3588): mAP50-95 vs float 0.88" in head and "12% lost, 0 added" in head
    assert "| toolkit: rknn-toolkit2 (rk3588) | 7 | 0.876 |" in rep


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def test_classify_verdict_of_the_toolkit_outputs(fake_known, capsys):
    """y = 2x (10 classes, 4 samples); the toolkit's logits: samples 0 and 2 exact, sample 1 with the float class
    pushed to the bottom (top-1 and top-5 miss), sample 3 halved (same order, a softer distribution)."""
    tmp = fake_known
    g = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"], name="mul")], "cls",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                          [numpy_helper.from_array(np.array(2.0, np.float32), "k")])
    model = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp / "cls.onnx")
    data = tmp / "npy"
    data.mkdir()
    rng = np.random.default_rng(1)
    xs = [rng.normal(0, 1, (1, 10)).astype(np.float32) for _ in range(4)]
    for k, x in enumerate(xs):
        np.save(data / f"{k}.npy", x)
    fl = [2 * x for x in xs]
    tk = [fl[0].copy(), fl[1].copy(), fl[2].copy(), fl[3] * 0.5]
    tk[1][0, int(fl[1].argmax())] = float(fl[1].min()) - 1.0
    np.savez(tmp / "known.npz", **{f"s{k}": t for k, t in enumerate(tk)})
    task = _compare_known(tmp, model, data, "classify")["task"]
    out = tmp / "r.json"
    m = task["toolkit"]["metrics"]
    kl = [float(np.sum(_softmax(f[0]) * (np.log(_softmax(f[0])) - np.log(_softmax(t[0]))))) for f, t in zip(fl, tk, strict=True)]
    assert m["top1_agreement"] == pytest.approx(3 / 4) and m["top5_agreement"] == pytest.approx(3 / 4)
    assert m["kl_mean"] == pytest.approx(np.mean(kl), rel=1e-4)
    assert task["toolkit"]["samples"] == 4 and task["toolkit"]["judge"].startswith("rknn-toolkit2")
    assert task["quantized"]["metrics"]["top1_agreement"] == pytest.approx(1.0)  # the built-in run, unchanged
    assert task["judge"] == "built-in simulator (rknn)"
    load_result(out)
    text = capsys.readouterr().out
    row = next(ln for ln in text.splitlines() if ln.lstrip().startswith("toolkit ") and "%" in ln)
    assert row.split()[1:3] == ["75.0%", "75.0%"]
    paths = write_report(out, tmp / "report")
    head = next(ln for ln in Path(paths["md"]).read_text().splitlines() if ln.startswith("- **Task verdict**"))
    assert "built-in simulator (rknn): top-1 agreement 100.0%" in head
    assert "toolkit: rknn-toolkit2 (rk3588): top-1 agreement 75.0%" in head
