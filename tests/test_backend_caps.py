"""Backend capabilities the compare stage relies on: weightless model building is SimBackend's own, and a
subclass that builds its models differently loses it unless it declares it."""

from __future__ import annotations

from qdebug.runners.dumps import DumpsBackend
from qdebug.runners.qdq import QdqBackend
from qdebug.runners.sim import SimBackend


def test_weightless_capability_follows_the_model_builders():
    assert SimBackend("generic").weightless_models is True
    # both rebuild their models from another source: placeholders would never be filled
    assert DumpsBackend.weightless_models is False
    assert QdqBackend.weightless_models is False

    class Profiled(SimBackend):  # only calibration changes: the models are still SimBackend's
        def prepare(self, *a, **k):
            return None

    class Own(SimBackend):
        def analysis_model(self, *a, **k):
            return None

    class OwnDeclared(SimBackend):
        weightless_models = True

        def quantized_model(self, *a, **k):
            return None

    assert Profiled.weightless_models is True
    assert Own.weightless_models is False
    assert OwnDeclared.weightless_models is True
