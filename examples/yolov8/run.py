"""The used-by flow on the shipped YOLOv8-style example: bisect the failing int8 model, patch the vendor
calibration file with the ops it finds, and write a report (model, images and the HiSilicon calibration file
are generated on first run)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))


def ensure_example() -> tuple[Path, Path, Path]:
    """Generate model.onnx, images/ and calibration_param.txt next to this script unless they exist."""
    import onnx

    from fixtures.data import make_images
    from fixtures.models import make_yolov8
    from fixtures.vendor import make_hisi_calibration, model_ranges

    model = HERE / "model.onnx"
    images = HERE / "images"
    calib = HERE / "calibration_param.txt"
    if not model.exists():
        onnx.save(make_yolov8(), str(model))
    if not images.exists() or not any(images.iterdir()):
        make_images(images, n=16)
    if not calib.exists():
        m = onnx.load(str(model))
        calib.write_text(make_hisi_calibration(m, model_ranges(m)))
    return model, images, calib


def _rel(p: Path) -> str:
    return str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(p)


def main() -> int:
    from qdebug.cli import main as qdebug_main

    model, images, calib = ensure_example()
    out = ROOT / "examples" / "out"
    out.mkdir(exist_ok=True)
    patched, report, result = out / "calibration_param.patched.txt", out / "report", out / "bisect.json"
    args = ["bisect", _rel(model), "--data", _rel(images), "--calib", f"hisi:{_rel(calib)}",
            "--task", "yolov8", "-o", _rel(patched), "--json", _rel(result), "--report", _rel(report)] + sys.argv[1:]
    print("$ qdebug " + " ".join(args), flush=True)
    rc = qdebug_main(args)
    print(f"\npatched calibration file (feed it to ATC with --gfpq_param_file): {_rel(patched)}")
    print(f"report for the issue tracker: {_rel(report / 'report.md')} (and report.html beside it)")
    print(f"full result: {_rel(result)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
