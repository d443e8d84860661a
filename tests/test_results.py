"""Typed results: JSON in and out without loss, and RunSpec command lines valid for the command they name."""

from __future__ import annotations

import argparse
import json

from qdebug.cli import main
from qdebug.results.bisect import BisectResult
from qdebug.results.compare import CompareResult
from qdebug.results.runspec import RunSpec


def test_compare_and_bisect_json_round_trip(fx, tmp_path):
    """from_json(to_json) of real documents gives back the same JSON, and the objects are typed."""
    c, b = tmp_path / "c.json", tmp_path / "b.json"
    args = [str(fx["yolov8"]), "--data", str(fx["images"]), "--samples", "2", "-q"]
    assert main(["compare", *args, "--json", str(c)]) == 0
    main(["bisect", *args, "--json", str(b)])
    for path, cls in ((c, CompareResult), (b, BisectResult)):
        doc = json.loads(path.read_text())
        obj = cls.from_json(doc)
        assert obj.to_json() == doc
        assert obj.spec is not None and obj.spec.model == str(fx["yolov8"])
    bis = BisectResult.from_json(json.loads(b.read_text()))
    assert bis.compare_before.tensors[0].cumulative.snr_db is not None or bis.compare_before.tensors[0].index < 0
    assert all(r.rank == i + 1 for i, r in enumerate(bis.ranking))


def test_unknown_keys_survive_a_round_trip():
    doc = {"rank": 1, "op": "a", "op_type": "Conv", "nodes": ["a"], "score": 1.0,
           "evidence": {"jump_db": 1.0, "hazards": [], "future_key": 3}, "another": [1]}
    from qdebug.results.bisect import RankedOp

    r = RankedOp.from_json(doc)
    assert r.evidence.extra == {"future_key": 3} and r.to_json()["another"] == [1]


def test_runspec_argv_keeps_only_what_the_command_accepts():
    """A compare run with --draw suggests a bisect command without --draw (bisect rejects it), keeps the data
    and quantization options, and the argv parses with the real CLI parser."""
    ns = argparse.Namespace(data="imgs", size=(320, 320), task="yolov8", draw="pics", override=["n=int16"],
                            per_tensor_weights=True, mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0))
    spec = RunSpec.from_options("compare", ns, model="m.onnx", profile="hisi")
    compare_argv = spec.to_argv()
    bisect_argv = spec.to_argv("bisect", target="lost_frac<=0.05")
    assert "--draw" in compare_argv and "--draw" not in bisect_argv
    assert bisect_argv[:3] == ["qdebug", "bisect", "m.onnx"]
    assert bisect_argv[bisect_argv.index("--target") + 1] == "lost_frac<=0.05"
    assert bisect_argv[bisect_argv.index("--size") + 1] == "320,320" and "--mean" not in bisect_argv
    from qdebug.cli import build_parser

    parsed = build_parser().parse_args(bisect_argv[1:])
    assert parsed.size == (320, 320) and parsed.profile == "hisi" and parsed.override == ["n=int16"]
    assert RunSpec.from_json(spec.to_json()) == spec
