"""The real-model example builds its model and photo set from cached wheels (no network in tests: fake wheels)."""

from __future__ import annotations

import runpy
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def test_nudenet_example_builds_from_cached_wheels(tmp_path: Path) -> None:
    ex = runpy.run_path(str(ROOT / "examples" / "nudenet" / "run.py"), run_name="example")
    cache, here = tmp_path / "cache", tmp_path / "ex"
    (cache / "wheels").mkdir(parents=True)
    here.mkdir()
    model_bytes = b"not-really-onnx: the example only extracts it"
    with zipfile.ZipFile(cache / "wheels" / "nudenet-3.4.2-py3-none-any.whl", "w") as zf:
        zf.writestr(ex["MODEL_MEMBER"], model_bytes)
    rng = np.random.default_rng(0)
    sources = {}
    with zipfile.ZipFile(cache / "wheels" / "scikit_image-0.26.0-cp311-none-any.whl", "w") as zf:
        for k, name in enumerate(ex["PHOTOS"]):
            a = rng.integers(0, 256, (40 + k, 60, 3), dtype=np.uint8)
            sources[name] = a
            p = tmp_path / f"src{k}.png"
            Image.fromarray(a).save(p)
            zf.write(p, f"skimage/data/{name}")  # a .jpg name holding PNG bytes: PIL reads by content
    ex["main"].__globals__.update(CACHE=cache, HERE=here)  # the functions read these module globals
    model, images = ex["ensure_example"]()
    assert model.read_bytes() == model_bytes
    files = sorted(images.iterdir())
    assert len(files) == 2 * len(ex["PHOTOS"])
    for k, name in enumerate(ex["PHOTOS"]):
        stem = Path(name).stem
        plain = np.asarray(Image.open(images / f"{k:02d}_{stem}.png"))
        mirrored = np.asarray(Image.open(images / f"{k:02d}_{stem}_mirrored.png"))
        assert plain.shape == (320, 320, 3)
        assert np.array_equal(mirrored, plain[:, ::-1])  # the mirror view of the same resize
        want = np.asarray(Image.fromarray(sources[name]).resize((320, 320), Image.BILINEAR))
        assert np.array_equal(plain, want)
