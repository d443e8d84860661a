"""End-to-end compare on the YOLOv8-style fixture: where the error jumps and what promotion fixes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import pytest

from qdebug.cli import main
from qdebug.compare.stage import run_compare
from qdebug.graph.model import ModelGraph
from qdebug.inputs.dataset import load_dataset
from qdebug.quant.scheme import Precision, QuantConfig
from qdebug.runners.sim import SimBackend

SCHEMA = Path(__file__).parent.parent / "qdebug" / "results" / "schemas" / "compare-1.json"
TAIL = {"/model.22/Mul_2", "/model.22/Concat_5", "/model.22/Concat_4", "/model.22/Sigmoid"}


@pytest.fixture(scope="module")
def y8(fx):
    g = ModelGraph.load(fx["yolov8"])
    ds = load_dataset(fx["images"], g)
    be = SimBackend("generic")
    res = run_compare(g, ds, QuantConfig(), be)
    return g, ds, be, res


def _part(res, name):
    return next(p for p in res.to_json()["outputs"][0]["parts"] if p["part"] == name)


def test_worst_jump_is_in_decode_tail(y8):
    g, _, _, res = y8
    worst = res.worst(1)[0]
    assert worst.node in TAIL, f"worst jump at {worst.node}"
    # and the crushed part is the score part of output0, hidden in the per-tensor number
    out = res.to_json()["outputs"][0]
    assert out["cumulative"]["snr_db"] > 20
    assert _part(res, "score")["cumulative"]["snr_db"] < 10


def test_promoting_tail_to_int16_raises_score_snr(y8):
    g, ds, be, res = y8
    before = _part(res, "score")["cumulative"]["snr_db"]
    cfg = QuantConfig(overrides={"/model.22/Mul_2": Precision.INT16, "/model.22/Concat_5": Precision.INT16})
    after = _part(run_compare(g, ds, cfg, be), "score")["cumulative"]["snr_db"]
    assert after > before + 15


def test_hazards_name_the_concat_and_stride_mul(y8):
    kinds = {(h.kind, h.node) for h in y8[3].hazards}
    assert ("score_concat", "/model.22/Concat_5") in kinds
    assert ("scale_amplify", "/model.22/Mul_2") in kinds


def test_isolated_error_of_passthrough_is_exact_and_cumulative_matches_reference(y8):
    g, ds, be, res = y8
    by = {t.tensor: t for t in res.tensors}
    reshape = by["/model.22/dfl/Reshape_output_0"]
    assert reshape.isolated.snr_db == 999.0
    # cumulative error of the graph output equals an independent run of the quantized model
    import numpy as np

    from qdebug.metrics.stats import compute_metrics
    from qdebug.runners.session import OrtSession
    from qdebug.workers import SESSION_THREADS

    qs = OrtSession(be.quantized_model(g, QuantConfig()))
    # the float values come from compare's fused model (metrics.fused), run on SESSION_THREADS intra-op
    # threads (some convolutions differ in the last bit with the thread count): the same count gives the
    # same floats
    fs = OrtSession(g.model, threads=SESSION_THREADS)
    xs, ys = [], []
    for s in ds:
        xs.append(fs.run(s)["output0"])
        ys.append(qs.run(s)["output0"])
    ref = compute_metrics(np.concatenate(xs), np.concatenate(ys))
    # compare sums inside onnxruntime (float32 ReduceSumSquare), the reference with numpy's float32 BLAS
    # dot: the summation order differs, so the last digits may (1e-6 dB here); a quantization difference
    # would show as >= 1e-2 dB
    assert by["output0"].cumulative.snr_db == pytest.approx(ref.snr_db, abs=1e-4)


def test_cli_json_validates_and_is_nan_free(fx, tmp_path):
    out = tmp_path / "run.json"
    rc = main(["compare", str(fx["yolov8"]), "--data", str(fx["images"]), "--samples", "4",
               "--json", str(out), "-q"])
    assert rc == 0
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    jsonschema.validate(data, json.loads(SCHEMA.read_text()))
    assert data["schema"] == "qdebug.compare/1" and data["samples"]["count"] == 4
    idx = [t["index"] for t in data["tensors"]]
    assert idx == sorted(idx)
    for t in data["tensors"]:
        for kind in ("cumulative", "isolated"):
            for v in t[kind].values():
                assert v is None or math.isfinite(v)


@pytest.mark.parametrize("profile", ["rknn", "hisi", "ort"])
def test_profiles_run(fx, profile):
    g = ModelGraph.load(fx["yolov8"])
    ds = load_dataset(fx["images"], g, samples=2)
    res = run_compare(g, ds, QuantConfig(), SimBackend(profile))
    assert res.outputs and res.outputs[0].cumulative.snr_db > 10


def test_benign_model_has_no_hazards(fx):
    import numpy as np

    g = ModelGraph.load(fx["benign"])
    d = fx["benign"].parent / "benign_in"
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        np.save(d / f"s{i}.npy", rng.uniform(0, 1, size=(1, 3, 16, 16)).astype(np.float32))
    res = run_compare(g, load_dataset(d, g), QuantConfig(), SimBackend("generic"))
    assert res.hazards == []
    assert res.to_json()["outputs"][0]["cumulative"]["cosine"] > 0.999


def test_metric_threads_give_the_same_numbers(y8, monkeypatch):
    """Tensors are spread over metric threads; every number must equal the single-thread run's exactly
    (a tensor lost or counted twice by the split would change its sums)."""
    import qdebug.metrics.engine as eng

    g, ds, be, _ = y8
    runs = {}
    for n in (1, 3):
        monkeypatch.setattr(eng, "METRIC_THREADS", n)
        d = run_compare(g, ds, QuantConfig(), be).to_json()
        runs[n] = (d["tensors"], d["parts"], d["outputs"])
    assert runs[1] == runs[3]
    assert all(t["cumulative"]["snr_db"] is not None for t in runs[1][0])


def test_in_graph_sums_equal_the_array_path(y8, monkeypatch):
    """By default the sums are taken inside the onnxruntime model (metrics.fused); the array path (numpy on
    exposed activations) must give the same metrics up to float32 summation order and the float chain's
    thread count (measured: <= 0.004 dB, cosine 1e-7), and exactly the same part positions and shapes.
    A swapped twin, a wrong part slice or a wrong element count would be off by far more."""
    g, ds, be, res = y8
    assert res.engine == "in-graph"
    arr = run_compare(g, ds, QuantConfig(), be, engine="arrays")
    assert arr.engine == "arrays"
    a, b = res.to_json(), arr.to_json()
    assert [(p["tensor"], p["part"], p["axis"], p["start"], p["stop"]) for p in a["parts"]] == \
        [(p["tensor"], p["part"], p["axis"], p["start"], p["stop"]) for p in b["parts"]]
    for ta, tb in zip(a["tensors"] + a["parts"], b["tensors"] + b["parts"], strict=True):
        assert ta["tensor"] == tb["tensor"] and ta.get("shape") == tb.get("shape")
        if ta.get("float_range"):
            assert ta["float_range"] == pytest.approx(tb["float_range"], rel=1e-4, abs=1e-6)
        for kind in ("cumulative", "isolated"):
            ma, mb = ta[kind], tb[kind]
            assert (ma["snr_db"] is None) == (mb["snr_db"] is None), (ta["tensor"], kind)
            if ma["snr_db"] is not None:
                assert ma["snr_db"] == pytest.approx(mb["snr_db"], abs=0.02), (ta["tensor"], kind)
                assert ma["cosine"] == pytest.approx(mb["cosine"], abs=1e-5)
                assert ma["max_abs"] == pytest.approx(mb["max_abs"], rel=1e-3, abs=1e-6)
    assert a["hazards"] == b["hazards"] and a["warnings"] == b["warnings"]


def _tiny_case(tmp_path, nodes, x_shape, outputs, consts, arrays, value_info=()):
    """Write a one-input float model and .npy samples (one per array); return (graph, dataset).

    `outputs` are (name, elem type, shape) triples; `consts` maps initializer names to arrays.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    gr = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                           [helper.make_tensor_value_info(*o) for o in outputs],
                           [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in consts.items()],
                           value_info=[helper.make_tensor_value_info(*v) for v in value_info])
    m = helper.make_model(gr, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "m.onnx"))
    d = tmp_path / "in"
    d.mkdir()
    for i, a in enumerate(arrays):
        np.save(d / f"{i}.npy", np.asarray(a, dtype=np.float32))
    g = ModelGraph.load(tmp_path / "m.onnx")
    size = tuple(x_shape[2:]) if any(isinstance(v, str) for v in x_shape) else None
    return g, load_dataset(d, g, size=size)


def test_dynamic_shapes_use_the_array_path(tmp_path):
    """A model whose tensor shapes are not static (input dims N, H, W) cannot have its parts sliced inside
    the graph: compare takes the array path, and its metric still equals a direct computation."""
    import numpy as np
    from onnx import TensorProto, helper

    from qdebug.metrics.stats import compute_metrics
    from qdebug.runners.session import OrtSession

    nodes = [helper.make_node("Mul", ["x", "k"], ["y"], name="mul"),
             helper.make_node("Sigmoid", ["y"], ["s"], name="sig"),
             helper.make_node("Concat", ["y", "s"], ["out"], axis=1, name="cat")]
    rng = np.random.default_rng(3)
    g, ds = _tiny_case(tmp_path, nodes, ["N", 2, 6, 6], [("out", TensorProto.FLOAT, ["N", 4, 6, 6])],
                       {"k": 40.0}, [rng.uniform(-1, 1, size=(1, 2, 6, 6)) for _ in range(3)])
    be = SimBackend("generic")
    res = run_compare(g, ds, QuantConfig(), be)
    assert res.engine == "arrays"
    qs = OrtSession(be.quantized_model(g, QuantConfig()))
    fs = OrtSession(g.model)
    x = np.concatenate([fs.run(s)["out"] for s in ds])
    y = np.concatenate([qs.run(s)["out"] for s in ds])
    out = next(t for t in res.tensors if t.tensor == "out")
    assert out.cumulative.snr_db == pytest.approx(compute_metrics(x, y).snr_db, abs=1e-4)
    assert {p.part for p in res.parts} == {"box", "score"}


@pytest.mark.parametrize("fused", [True, False])
def test_inf_in_the_quantized_run_is_a_warning_not_an_error(tmp_path, monkeypatch, fused):
    """1/t (kept in float) of a t that is small but not 0: finite in the float run; int8 rounds t to 0, so
    the quantized run gives inf. Both engines must finish, give that tensor null metrics and name it in a
    warning."""
    import numpy as np
    from onnx import TensorProto, helper

    from qdebug.quant.scheme import Precision

    nodes = [helper.make_node("Sub", ["x", "h"], ["t"], name="sub"),
             helper.make_node("Reciprocal", ["t"], ["r"], name="rcp")]
    x = np.linspace(0.0, 1.0, 16, dtype=np.float32)
    x[7:9] = (0.4996, 0.5004)  # t = -/+0.0004, a tenth of an int8 step of [-0.5, 0.5]: rounds to 0
    g, ds = _tiny_case(tmp_path, nodes, [1, 1, 4, 4], [("r", TensorProto.FLOAT, [1, 1, 4, 4])], {"h": 0.5},
                       [x.reshape(1, 1, 4, 4)])
    cfg = QuantConfig(overrides={"rcp": Precision.FP32})  # a quantized output would clip inf to its range
    res = run_compare(g, ds, cfg, SimBackend("generic"), engine="auto" if fused else "arrays")
    assert res.engine == ("in-graph" if fused else "arrays")
    by = {t.tensor: t for t in res.tensors}
    assert by["r"].cumulative.snr_db is None and by["t"].cumulative.snr_db is not None
    assert any("'r'" in w and "NaN/Inf" in w for w in res.warnings)


def test_in_graph_engine_with_an_integer_graph_output(tmp_path):
    """A graph output that is not float (ArgMax indices) is not compared, but the in-graph engine must keep
    its type and hand it, float and quantized, to the sample hook (the detection decoder reads outputs)."""
    import numpy as np
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Mul", ["x", "k"], ["y"], name="mul"),
             helper.make_node("ArgMax", ["y"], ["idx"], axis=1, keepdims=0, name="arg")]
    rng = np.random.default_rng(1)
    xs = [rng.uniform(-1, 1, size=(1, 3, 4, 4)).astype(np.float32) for _ in range(2)]
    g, ds = _tiny_case(tmp_path, nodes, [1, 3, 4, 4], [("y", TensorProto.FLOAT, [1, 3, 4, 4]),
                                                        ("idx", TensorProto.INT64, [1, 4, 4])], {"k": 3.0}, xs)
    seen = []
    res = run_compare(g, ds, QuantConfig(), SimBackend("generic"),
                      on_sample=lambda k, f, q: seen.append((k, f["idx"].copy(), q["idx"].copy(), f["x"].copy())))
    assert res.engine == "in-graph"
    assert [t.tensor for t in res.tensors] == ["x", "y"]
    assert [k for k, *_ in seen] == [0, 1]
    for (_, fidx, qidx, x), want in zip(seen, xs, strict=True):
        assert fidx.dtype == np.int64 and qidx.dtype == np.int64
        np.testing.assert_array_equal(fidx, np.argmax(want * 3, axis=1))
        np.testing.assert_array_equal(x, want)


def test_refused_in_graph_model_falls_back_with_a_warning(y8, monkeypatch):
    """If onnxruntime refuses the fused model, compare still finishes on the array path and says so."""
    import qdebug.compare.stage as pl
    from qdebug.errors import ModelError
    from qdebug.runners.session import OrtSession

    def picky(model, **kw):
        if kw.get("model_order"):
            raise ModelError("onnxruntime cannot load the model: test")
        return OrtSession(model, **kw)

    g, ds, be, res = y8
    monkeypatch.setattr(pl, "OrtSession", picky)
    got = run_compare(g, ds, QuantConfig(), be)
    assert got.engine == "arrays" and any("in-graph model was refused" in w for w in got.warnings)
    assert got.outputs[0].cumulative.snr_db == pytest.approx(res.outputs[0].cumulative.snr_db, abs=0.02)


def test_wrong_static_shapes_are_caught_at_run_time(tmp_path):
    """Part slices of the in-graph engine come from static shapes; a model carrying stale shapes (here a Concat
    input declared with 3 channels instead of 2, and the output with 5 instead of 4) must not get wrong
    parts: compare runs on the array path with a warning."""
    import numpy as np
    from onnx import TensorProto, helper

    from qdebug.metrics.stats import compute_metrics
    from qdebug.runners.session import OrtSession

    nodes = [helper.make_node("Mul", ["x", "k"], ["a"], name="mul"),
             helper.make_node("Sigmoid", ["x"], ["s"], name="sig"),
             helper.make_node("Concat", ["a", "s"], ["out"], axis=1, name="cat")]
    rng = np.random.default_rng(2)
    g, ds = _tiny_case(tmp_path, nodes, [1, 2, 4, 4], [("out", TensorProto.FLOAT, [1, 5, 4, 4])], {"k": 50.0},
                       [rng.uniform(-1, 1, size=(1, 2, 4, 4)) for _ in range(2)],
                       value_info=[("a", TensorProto.FLOAT, [1, 3, 4, 4])])
    assert g.shapes["a"] == (1, 3, 4, 4)  # the stale declaration is what static inference sees
    be = SimBackend("generic")
    seen = []
    res = run_compare(g, ds, QuantConfig(), be, on_sample=lambda k, f, q: seen.append(k))
    # onnxruntime's own shape check refuses the fused model here; either way the array path runs
    assert res.engine == "arrays" and any("metric sums taken on exposed arrays" in w for w in res.warnings)
    assert seen == [0, 1]  # every sample reached the hook exactly once
    qs, fs = OrtSession(be.quantized_model(g, QuantConfig())), OrtSession(g.model)
    x = np.concatenate([fs.run(s)["out"][:, 2:] for s in ds])
    y = np.concatenate([qs.run(s)["out"][:, 2:] for s in ds])
    score = next(p for p in res.parts if p.part == "score")
    assert (score.start, score.stop) == (2, 4)
    assert score.cumulative.snr_db == pytest.approx(compute_metrics(x, y).snr_db, abs=1e-3)


def test_run_time_shapes_are_checked_before_any_sum(y8, monkeypatch):
    """If a static shape the fused model was built with is not the run-time one (shape inference trusted a
    stale declaration onnxruntime does not check), compare must notice on the first sample, before adding
    anything, and start again on the array path: same numbers as that path, every sample hooked once."""
    import qdebug.compare.stage as pl
    import qdebug.metrics.fused as fused

    g, ds, be, res = y8
    real = fused.build_fused

    def stale(*a, **kw):
        lay = real(*a, **kw)
        t = next(iter(lay.shapes))
        lay.shapes[t] = (*lay.shapes[t][:-1], lay.shapes[t][-1] + 1)
        return lay

    monkeypatch.setattr(pl, "build_fused", stale)
    seen = []
    got = run_compare(g, ds, QuantConfig(), be, on_sample=lambda k, f, q: seen.append(k))
    assert got.engine == "arrays" and any("has another shape at run time" in w for w in got.warnings)
    assert seen == list(range(len(ds)))
    ref = run_compare(g, ds, QuantConfig(), be, engine="arrays").to_json()
    assert got.to_json()["tensors"] == ref["tensors"] and got.to_json()["parts"] == ref["parts"]
