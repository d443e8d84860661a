"""rknn-toolkit2 puts each Split part on its own grid, rounded again from the grid of the tensor it splits (issue #16
round 4): pinned by the toolkit's cfg entries and simulator dumps recorded on nudenet with letterboxed photos
(fixtures/text/rknn/nudenet_320n_split_requant.txt), and the built-in rknn profile's simulator doing the same."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qdebug.graph.model import ModelGraph
from qdebug.quant.profiles import get_profile
from qdebug.quant.scheme import QuantConfig, QuantScheme
from qdebug.runners.rockchip import RknnBackend, find_rknn_python
from qdebug.runners.sim import SimBackend

REC = Path(__file__).resolve().parents[1] / "fixtures" / "text" / "rknn" / "nudenet_320n_split_requant.txt"


def _rows() -> list[dict]:
    rows = []
    for line in REC.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        t, lo, hi, s, z, src, ss, sz, requant, direct, keep = line.split()
        rows.append({"tensor": t, "min": float(lo), "max": float(hi), "scale": float(s), "zp": int(z), "src": src,
                     "src_scale": float(ss), "src_zp": int(sz), "requant": float(requant), "direct": float(direct),
                     "keep": float(keep)})
    return rows


def _grid(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric int8 over [lo, hi] (0 included), written out: 255 steps, zero point at -128 - lo/scale."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = (hi - lo) / 255.0
    return s, int(np.round(-128 - lo / s))


def test_every_recorded_split_part_is_requantized_on_its_own_range():
    rows = _rows()
    assert len(rows) == 8  # the C2f Splits of model.2/4/6/8, two parts each
    moved = 0
    for r in rows:
        s, z = _grid(r["min"], r["max"])  # the part's own grid from its own range
        assert s == pytest.approx(r["scale"], rel=1e-6) and z == r["zp"], r["tensor"]
        # the dump is reproduced (> 60 dB; a handful of exact ties of the SiLU aside) by rounding to the SiLU grid,
        # then again to the part's grid
        assert r["requant"] > 60 and r["requant"] >= max(r["direct"], r["keep"]), r["tensor"]
        if (r["scale"], r["zp"]) != (r["src_scale"], r["src_zp"]):
            moved += 1
            assert r["keep"] < 50 and r["direct"] < 50, r["tensor"]  # keeping the input's grid is not what it does
    assert moved == 4  # every part 1 (its range is narrower than the SiLU output's)
    assert "Split" in get_profile("rknn").requantized_passthrough
    assert not get_profile("generic").requantized_passthrough


def _split_model() -> ModelGraph:
    """x [1,2,4,4] -> 1x1 Conv (exact int8 weights: y0 = x0, y1 = 0.25*x1) -> Split -> p0, p1 (graph outputs)."""
    w = np.zeros((2, 2, 1, 1), np.float32)
    w[0, 0], w[1, 1] = 1.0, 0.25  # per channel [0, w] on 255 steps: w is the top level, 0 the zero point
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
             helper.make_node("Split", ["y"], ["p0", "p1"], name="split", axis=1)]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("p0", "p1")],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return ModelGraph(m)


def _fq(x: np.ndarray, grid: tuple[float, int]) -> np.ndarray:
    s, z = grid
    return (np.clip(np.round(x / s) + z, -128, 127) - z) * s


@pytest.mark.parametrize("profile", ["rknn", "generic"])
def test_simulator_requantizes_split_parts_only_for_rknn(profile):
    g = _split_model()
    rng = np.random.default_rng(3)
    calib = [{"x": rng.uniform(-1.0, 3.0, (1, 2, 4, 4)).astype(np.float32)} for _ in range(4)]
    probe = {"x": rng.uniform(-1.0, 3.0, (1, 2, 4, 4)).astype(np.float32)}
    sim = SimBackend(profile)
    config = QuantConfig(scheme=QuantScheme(profile=profile))
    sim.prepare(g, config, calib)
    out = next(iter(sim.run(g, config, [probe], ["p0", "p1"])))
    # the same pipeline in numpy: input grid from the calibration range, the conv output's grid from its range,
    # part 1 rounded again to its own (four times narrower) range under rknn
    xs = np.stack([c["x"] for c in calib])
    gx = _grid(float(xs.min()), float(xs.max()))
    xq = _fq(probe["x"], gx)
    gy = _grid(min(float(xs[:, :, 0].min()), 0.25 * float(xs[:, :, 1].min())),
               max(float(xs[:, :, 0].max()), 0.25 * float(xs[:, :, 1].max())))
    y1 = _fq(0.25 * xq[:, 1:2], gy)
    own = _fq(y1, _grid(0.25 * float(xs[:, :, 1].min()), 0.25 * float(xs[:, :, 1].max())))
    assert not np.allclose(own, y1, rtol=0, atol=1e-6)  # the two rules give different values: the test tells them apart
    np.testing.assert_allclose(out["p1"], own if profile == "rknn" else y1, rtol=0, atol=1e-6)
    # part 0 spans the whole range: its own grid is the conv output's, so requantizing it changes nothing
    np.testing.assert_allclose(out["p0"], _fq(xq[:, 0:1], gy), rtol=0, atol=1e-6)


REAL = find_rknn_python()


@pytest.mark.rknn
@pytest.mark.skipif(REAL is None, reason="skipped: rknn-toolkit2 environment not found")
def test_real_toolkit_matches_the_builtin_rknn_profile_bit_for_bit_through_a_split(tmp_path, monkeypatch):
    """x -> Conv+SiLU -> Split -> part 1 (a narrower range) -> 1x1 Conv -> y, built by the toolkit: the built-in rknn
    profile gives the toolkit's y exactly; the same profile with parts keeping the SiLU's grid does not."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)
    w[4:] *= 0.3
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["s"], name="sig"),
             helper.make_node("Mul", ["c", "s"], ["a"], name="mul"),
             helper.make_node("Split", ["a"], ["p0", "p1"], name="split", axis=1),
             helper.make_node("Conv", ["p1", "w2"], ["y"], name="conv2")]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
                          [numpy_helper.from_array(w, "w"),
                           numpy_helper.from_array(rng.normal(0, 0.5, (4, 4, 1, 1)).astype(np.float32), "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    path = tmp_path / "split_probe.onnx"
    onnx.save(m, str(path))
    graph = ModelGraph.load(path)
    calib = [{"x": rng.uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    for c in calib:  # the input grid is the toolkit's fixed [0, 1] (scale 1/255): reach both ends
        c["x"][0, :, 0, 0], c["x"][0, :, 0, 1] = 0.0, 1.0
    be = RknnBackend(python=REAL, work_root=str(tmp_path / "work"))
    be.prepare(graph, QuantConfig(), calib)
    toolkit = [o["y"] for o in be.run(graph, QuantConfig(), calib, ["y"])]
    exact = {}
    for name, prof in (("rknn", get_profile("rknn")),
                       ("keep", dataclasses.replace(get_profile("rknn"), name="keep",
                                                    requantized_passthrough=frozenset()))):
        sim = SimBackend(prof)
        config = QuantConfig(scheme=QuantScheme(profile="rknn"))
        sim.prepare(graph, config, calib)
        built = [o["y"] for o in sim.run(graph, config, calib, ["y"])]
        exact[name] = float(np.mean([np.mean(np.abs(t - b) <= 1e-5 * np.abs(t).max()) for t, b in
                                     zip(toolkit, built, strict=True)]))
    assert exact["rknn"] == 1.0 and exact["keep"] < 0.9, exact
