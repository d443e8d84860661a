"""Run `qdebug compare` on the shipped YOLOv8-style example (model and images generated on first run)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))


def ensure_example() -> tuple[Path, Path]:
    """Generate model.onnx and images/ next to this script unless they already exist."""
    import onnx

    from fixtures.data import make_images
    from fixtures.models import make_yolov8

    model = HERE / "model.onnx"
    images = HERE / "images"
    if not model.exists():
        onnx.save(make_yolov8(), str(model))
    if not images.exists() or not any(images.iterdir()):
        make_images(images, n=16)
    return model, images


def main() -> int:
    from qdebug.cli import main as qdebug_main

    model, images = ensure_example()
    out = ROOT / "examples" / "out"
    out.mkdir(exist_ok=True)
    args = ["compare", str(model.relative_to(Path.cwd()) if model.is_relative_to(Path.cwd()) else model),
            "--data", str(images), "--json", str(out / "run.json")] + sys.argv[1:]
    print("$ qdebug " + " ".join(args), flush=True)
    return qdebug_main(args)


if __name__ == "__main__":
    sys.exit(main())
