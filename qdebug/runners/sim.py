"""The built-in simulator backend: float calibration, then fake-quantized graphs run by onnxruntime."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import onnx

from qdebug.errors import NumericError
from qdebug.graph.fusion import QuantOp, build_quant_ops
from qdebug.graph.model import ModelGraph
from qdebug.quant.calibrate import make_calibrator
from qdebug.quant.profiles import Profile, get_profile
from qdebug.quant.scheme import QuantConfig
from qdebug.quant.simulate import SimPlan, build_analysis, build_quantized, plan
from qdebug.runners.base import Backend, register_backend
from qdebug.runners.session import OrtSession


def check_finite(graph: ModelGraph, values: dict[str, np.ndarray], order: Sequence[str], sample: str) -> None:
    """Raise on the first (topologically) tensor holding NaN/Inf in a float run."""
    for t in order:
        v = values.get(t)
        if v is None or v.size == 0 or not np.issubdtype(v.dtype, np.floating):
            continue
        if not np.isfinite(v).all():
            node = graph.producer.get(t)
            where = f"node {node.name} ({node.op_type})" if node is not None else "graph input"
            bad = "NaN" if np.isnan(v).any() else "Inf"
            raise NumericError(f"{bad} first appears in float tensor '{t}' from {where} on sample {sample}",
                               file=graph.path, fix="check the input preprocessing and the model around that op")


@register_backend
class SimBackend(Backend):
    """Fake-quantizes the ONNX graph per a vendor profile and runs it with onnxruntime."""

    name = "sim"
    intermediates = True

    def __init__(self, profile: str | Profile = "generic", threads: int = 0) -> None:
        self.profile = profile if isinstance(profile, Profile) else get_profile(profile)
        self.threads = threads
        self.ranges: dict[str, tuple[float, float]] = {}
        self.float_minmax: dict[str, tuple[float, float]] = {}
        self._ops: dict[int, list[QuantOp]] = {}
        self._sessions: dict[tuple, OrtSession] = {}
        self.calibrated_samples = 0

    # ------------------------------------------------------------ calibration
    def prepare(self, graph: ModelGraph, config: QuantConfig, calib: Iterable[dict[str, np.ndarray]],
                progress: Callable[[int], None] | None = None) -> None:
        """Calibrate activation ranges on float runs (1 pass for minmax, 2 for histogram methods)."""
        tensors = graph.activation_tensors() + [i.name for i in graph.inputs]
        sess = OrtSession(graph.with_outputs(graph.activation_tensors()), threads=self.threads, source=graph.path)
        cal = make_calibrator(config.scheme.calibrator, config.scheme.percentile)
        samples = list(calib) if not isinstance(calib, list) else calib
        order = [i.name for i in graph.inputs] + graph.activation_tensors()
        for pass_idx in range(cal.passes):
            for k, sample in enumerate(samples):
                vals = sess.run(sample)
                vals.update(sample)
                if pass_idx == 0:
                    check_finite(graph, vals, order, str(k))
                for t in tensors:
                    v = vals.get(t)
                    if v is not None and np.issubdtype(v.dtype, np.floating):
                        cal.observe(pass_idx, t, v)
                if progress:
                    progress(1)
        self.ranges = cal.ranges(config.scheme.activation.bits or 8)
        self.float_minmax = cal.minmax()
        self.calibrated_samples = len(samples)

    def quant_ops(self, graph: ModelGraph) -> list[QuantOp]:
        """The fused quantization units of `graph` under this profile (cached)."""
        key = id(graph)
        if key not in self._ops:
            self._ops[key] = build_quant_ops(graph, fuse=self.profile.fuse)
        return self._ops[key]

    def plan(self, graph: ModelGraph, config: QuantConfig) -> SimPlan:
        """Resolved precisions and parameters for `config`."""
        return plan(graph, self.quant_ops(graph), self.profile, config, self.ranges)

    # ---------------------------------------------------------------- models
    def quantized_model(self, graph: ModelGraph, config: QuantConfig,
                        outputs: Sequence[str] | None = None) -> onnx.ModelProto:
        """The fake-quantized ONNX model (cumulative: every op quantized per `config`)."""
        sp = self.plan(graph, config)
        return build_quantized(graph, self.quant_ops(graph), sp, self.profile,
                               list(outputs) if outputs is not None else None)

    def analysis_model(self, graph: ModelGraph, config: QuantConfig,
                       tensors: Sequence[str]) -> tuple[onnx.ModelProto, dict[str, str]]:
        """Float graph + isolated quantized clone of each op, exposing `tensors` and their twins."""
        sp = self.plan(graph, config)
        return build_analysis(graph, self.quant_ops(graph), sp, self.profile, list(tensors))

    def session(self, graph: ModelGraph, config: QuantConfig, outputs: Sequence[str]) -> OrtSession:
        """A cached onnxruntime session of the quantized model with the given outputs."""
        key = (id(graph), config.key(), tuple(outputs))
        if key not in self._sessions:
            if len(self._sessions) > 8:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[key] = OrtSession(self.quantized_model(graph, config, outputs),
                                             threads=self.threads, source=graph.path)
        return self._sessions[key]

    def run(self, graph: ModelGraph, config: QuantConfig, samples: Iterable[dict[str, np.ndarray]],
            outputs: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        sess = self.session(graph, config, outputs)
        for sample in samples:
            yield sess.run(sample)

    def describe(self) -> dict:
        return {"backend": self.name, "profile": self.profile.name, "quantize_at": self.profile.quantize_at,
                "fuse": self.profile.fuse}


def finite_or_none(v: float) -> float | None:
    """JSON-safe float."""
    return v if v is not None and math.isfinite(v) else None
