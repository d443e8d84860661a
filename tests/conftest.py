"""Shared fixtures: small models and inputs generated deterministically by code in fixtures/."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from fixtures.data import make_images
from fixtures.models import make_benign, make_yolov5, make_yolov8


@pytest.fixture(scope="session")
def fx(tmp_path_factory) -> dict[str, Path]:
    """Paths of generated models and an image folder, shared by the whole session."""
    d = tmp_path_factory.mktemp("fx")
    paths = {}
    for name, fn in (("yolov8", make_yolov8), ("yolov5", make_yolov5), ("benign", make_benign)):
        p = d / f"{name}.onnx"
        onnx.save(fn(), str(p))
        paths[name] = p
    paths["images"] = d / "images"
    make_images(paths["images"], n=8)
    return paths
