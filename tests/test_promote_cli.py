"""`qdebug promote` end to end, and the patch -> `compare --calib` loop on the YOLOv8 fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from fixtures.vendor import make_hisi_calibration, make_hisi_calibration16, make_rknn_cfg, yolov8_bundle
from qdebug.cli import main
from qdebug.formats.hisi import HisiCalibration
from qdebug.formats.rknn2 import RknnQuantCfg

MUL2 = "/model.22/Mul_2"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("promote")
    model, samples, ranges = yolov8_bundle()
    onnx.save(model, d / "yolov8.onnx")
    (d / "data").mkdir()
    for k, s in enumerate(samples):
        np.save(d / "data" / f"s{k}.npy", s["images"])
    (d / "calib8.txt").write_text(make_hisi_calibration(model, ranges))
    (d / "calib16.txt").write_text(make_hisi_calibration16(model, ranges))
    (d / "yolov8.quantization.cfg").write_text(make_rknn_cfg(model, ranges))
    return d


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_promote_hisi_derived(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = work / "calib8.txt"
    before = src.read_bytes()
    out = work / "patched.txt"
    code, text, _ = _run(capsys, "promote", f"hisi:{src}", "--layers", MUL2, "-o", str(out), "--diff",
                         "--export", "atc,ort,qtable", "--model", str(work / "yolov8.onnx"))
    assert code == 0
    assert src.read_bytes() == before
    assert "--high_precision_layer=/model.22/Mul_2" in text
    assert "derived S16" in text and "nodes_to_exclude" in text and "_Mul F16" in text
    minus = [ln for ln in text.splitlines() if ln.startswith("- ")]  # diff lines (not "--option" exports)
    plus = [ln for ln in text.splitlines() if ln.startswith("+ ")]
    assert [ln.split(":")[0].strip() for ln in minus] == ["-      data_type", "-      scale", "-      offset"]
    assert "+      data_type: S16" in plus and len(plus) == 3
    old = HisiCalibration.parse(before.decode())
    new = HisiCalibration.parse(out.read_text())
    changed = [ly.name for ly, ny in zip(old.layers, new.layers, strict=True)
               if old.record_text(ly) != new.record_text(ny)]
    assert changed == [MUL2]


def test_promote_hisi_from16_and_autodetect(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = work / "donor_patched.txt"
    code, text, _ = _run(capsys, "promote", str(work / "calib8.txt"), "--layers", f"{MUL2},/model.22/Concat_4",
                         "--from16", str(work / "calib16.txt"), "-o", str(out))
    assert code == 0 and "verbatim" in text
    donor = HisiCalibration.parse((work / "calib16.txt").read_text())
    new = HisiCalibration.parse(out.read_text())
    for name in (MUL2, "/model.22/Concat_4"):
        assert new.record_text(new.by_name(name)[0]) == donor.record_text(donor.by_name(name)[0])


def test_promote_refuses_to_overwrite_input(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = work / "calib8.txt"
    before = src.read_bytes()
    for target in (str(src), str(work / "." / "calib8.txt")):
        code, _, err = _run(capsys, "promote", f"hisi:{src}", "--layers", MUL2, "-o", target)
        assert code == 2 and "refusing to overwrite" in err
    assert src.read_bytes() == before


def test_promote_user_errors_are_one_line(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["promote", f"hisi:{work / 'calib8.txt'}", "--layers", "/model.22/Mul2", "-o", str(work / "x.txt")],
         "did you mean /model.22/Mul_2"),
        (["promote", f"rknn:{work / 'yolov8.quantization.cfg'}", "--layers", "Mul_270", "-o", str(work / "x.cfg")],
         "Invalid operands name 'Mul_270' in custom_quantize_layers!"),
        (["promote", f"hisi:{work / 'calib8.txt'}", "--layers", MUL2, "--dtype", "int4", "-o", str(work / "x.txt")],
         "unknown precision"),
        (["promote", f"hisi:{work / 'calib8.txt'}", "--layers", MUL2, "--export", "bogus", "-o", str(work / "x.txt")],
         "unknown export 'bogus'"),
        (["promote", f"hisi:{work / 'nope.txt'}", "--layers", MUL2, "-o", str(work / "x.txt")], "not found"),
        (["promote", f"hisi:{work / 'calib8.txt'}", "--layers", ",", "-o", str(work / "x.txt")], "no layer names"),
    ]
    for argv, msg in cases:
        code, _, err = _run(capsys, *argv)
        assert code == 2, argv
        assert msg in err and err.strip().count("\n") == 0, err
    assert not (work / "x.txt").exists() and not (work / "x.cfg").exists()


def test_promote_rknn(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = work / "yolov8.quantization.cfg"
    for extra in ([], ["--model", str(work / "yolov8.onnx")]):
        out = work / "patched.quantization.cfg"
        code, text, _ = _run(capsys, "promote", f"rknn:{src}", "--layers", MUL2, "--dtype", "int16",
                             "-o", str(out), *extra)
        assert code == 0 and "/model.22/Mul_2_output_0" in text
        old, new = src.read_text(), out.read_text()
        assert new == old.replace("custom_quantize_layers: {}\n",
                                  "custom_quantize_layers:\n    /model.22/Mul_2_output_0: int16\n", 1)
        assert RknnQuantCfg.parse(new).custom == {"/model.22/Mul_2_output_0": "int16"}


def _compare(work: Path, calib: str, tag: str) -> dict:
    out = work / f"compare_{tag}.json"
    assert main(["compare", str(work / "yolov8.onnx"), "--data", str(work / "data"), "--calib", calib,
                 "--json", str(out), "-q"]) == 0
    return json.loads(out.read_text())


def _tensor(res: dict, name: str) -> dict:
    return next(t for t in res["tensors"] if t["tensor"] == name)


@pytest.mark.parametrize("fmt", ["hisi", "rknn"])
def test_compare_calib_shows_the_promoted_op_error_drop(work: Path, fmt: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    src = work / ("calib8.txt" if fmt == "hisi" else "yolov8.quantization.cfg")
    patched = work / f"patched_for_compare_{fmt}"
    assert main(["promote", f"{fmt}:{src}", "--layers", MUL2, "-o", str(patched), "-q"]) == 0
    before = _compare(work, f"{fmt}:{src}", f"{fmt}_before")
    after = _compare(work, f"{fmt}:{patched}", f"{fmt}_after")
    capsys.readouterr()
    assert before["quant"]["calib"] == f"{fmt}:{src}"
    assert before["quant"]["calib_mapping"]["unmatched_records"]  # bridge record / renamed tensor reported
    assert after["quant"]["overrides"] == {MUL2: "int16"}
    t0, t1 = _tensor(before, "/model.22/Mul_2_output_0"), _tensor(after, "/model.22/Mul_2_output_0")
    # the op's own (isolated) error drops by far more than 10 dB; the accumulated error drops too
    assert t1["isolated"]["snr_db"] > t0["isolated"]["snr_db"] + 15
    assert t1["cumulative"]["snr_db"] > t0["cumulative"]["snr_db"]
    box0 = next(p for p in before["outputs"][0]["parts"] if p["part"] == "box")
    box1 = next(p for p in after["outputs"][0]["parts"] if p["part"] == "box")
    if fmt == "hisi":  # hisi: the output Concat computes in F16, so the boxes gain directly
        assert box1["cumulative"]["snr_db"] > box0["cumulative"]["snr_db"]
        return
    # rknn: the output Concat re-quantizes boxes and scores to one int8 grid (step ~1.6 px), which
    # hides the gain; promoting the Concat's tensor as well makes the boxes better
    both = work / "patched_for_compare_rknn_both"
    assert main(["promote", f"rknn:{src}", "--layers", f"{MUL2},/model.22/Concat_5", "-o", str(both), "-q",
                 "--model", str(work / "yolov8.onnx")]) == 0
    parts2 = {p["part"]: p for p in _compare(work, f"rknn:{both}", "rknn_both")["outputs"][0]["parts"]}
    score0 = next(p for p in before["outputs"][0]["parts"] if p["part"] == "score")
    assert parts2["box"]["cumulative"]["snr_db"] > box0["cumulative"]["snr_db"]
    assert parts2["score"]["cumulative"]["snr_db"] > score0["cumulative"]["snr_db"] + 20  # scores un-crushed
