"""The quantization scheme and the per-op precision override map: the data every backend, format and search reads."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np


class Precision(str, Enum):
    """Precision of one quantized op. Ordered: int8 < int16 < fp16 < fp32 (higher = more faithful)."""

    INT8 = "int8"
    INT16 = "int16"
    FP16 = "fp16"
    FP32 = "fp32"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def bits(self) -> int | None:
        return {"int8": 8, "int16": 16}.get(self.value)

    @property
    def is_int(self) -> bool:
        return self in (Precision.INT8, Precision.INT16)

    @classmethod
    def parse(cls, text: str) -> Precision:
        """Accept the spellings vendors use (int16, i16, s16, float16, f16, fp32...)."""
        t = text.strip().lower()
        aliases = {"i8": "int8", "s8": "int8", "u8": "int8", "int8": "int8",
                   "i16": "int16", "s16": "int16", "u16": "int16", "int16": "int16",
                   "f16": "fp16", "fp16": "fp16", "float16": "fp16", "half": "fp16",
                   "f32": "fp32", "fp32": "fp32", "float32": "fp32", "float": "fp32"}
        if t not in aliases:
            raise ValueError(f"unknown precision '{text}' (use int8, int16, fp16 or fp32)")
        return cls(aliases[t])


_RANK = {Precision.INT8: 0, Precision.INT16: 1, Precision.FP16: 2, Precision.FP32: 3}


def max_precision(*ps: Precision) -> Precision:
    """The most faithful of several precisions (an op promoted by any member of its group is promoted)."""
    return max(ps, key=lambda p: p.rank)


@dataclass(frozen=True)
class QParams:
    """Affine quantization parameters: x_hat = (clip(round(x/scale) + zp, qmin, qmax) - zp) * scale.

    `scale` and `zero_point` have one element (per tensor) or one per channel along `axis`.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    qmin: int
    qmax: int
    axis: int | None = None

    @property
    def bits(self) -> int:
        return int(np.ceil(np.log2(self.qmax - self.qmin + 1)))

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        """The represented float range [lo, hi] (per channel)."""
        return ((self.qmin - self.zero_point) * self.scale, (self.qmax - self.zero_point) * self.scale)

    def with_bits(self, bits: int) -> QParams:
        """Same represented range at another bit width (how an 8-bit record is widened to 16-bit)."""
        lo, hi = self.range()
        symmetric = bool(np.all(self.zero_point == 0)) and self.qmin == -self.qmax - 1
        return params_from_range(lo, hi, bits, symmetric=symmetric, axis=self.axis)

    def to_json(self) -> dict:
        return {"scale": [float(s) for s in np.ravel(self.scale)],
                "zero_point": [int(z) for z in np.ravel(self.zero_point)],
                "qmin": self.qmin, "qmax": self.qmax, "axis": self.axis}


def params_from_range(lo: np.ndarray | float, hi: np.ndarray | float, bits: int, *, symmetric: bool,
                      axis: int | None = None, signed: bool = True) -> QParams:
    """Quantization parameters covering [lo, hi] (0 always representable), per tensor or per channel."""
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    if signed:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        qmin, qmax = 0, 2 ** bits - 1
    if symmetric:
        amax = np.maximum(np.abs(lo), np.abs(hi))
        scale = amax / qmax if signed else amax / qmax
        zp = np.zeros_like(scale, dtype=np.int64)
        if signed:
            qmin = -qmax  # symmetric signed range drops -2^(b-1), like most NPUs' weights
    else:
        scale = (hi - lo) / (qmax - qmin)
        with np.errstate(divide="ignore", invalid="ignore"):
            zp = np.where(scale > 0, np.round(qmin - lo / np.where(scale > 0, scale, 1.0)), 0).astype(np.int64)
        zp = np.clip(zp, qmin, qmax)
    scale = np.where(scale > 0, scale, 1.0)  # all-zero tensor: any step represents it exactly
    return QParams(np.atleast_1d(scale).astype(np.float64), np.atleast_1d(zp).astype(np.int64), qmin, qmax, axis)


def unit_range_params(bits: int, style: str) -> QParams:
    """Fixed parameters for a probability tensor in [0, 1] (a Softmax output): 0 at qmin and a step of
    1/2^bits ("pow2": onnxruntime/NNAPI/TFLite, top value 1 - 2^-bits) or 1/(2^bits - 1) ("full": 1.0 exact)."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    levels = 2 ** bits if style == "pow2" else 2 ** bits - 1
    return QParams(np.array([1.0 / levels]), np.array([qmin], dtype=np.int64), qmin, qmax)


def fake_quant(x: np.ndarray, p: QParams) -> np.ndarray:
    """Quantize-dequantize in numpy with the same formula the simulator graph uses."""
    shape = [1] * x.ndim
    if p.axis is not None and p.scale.size > 1:
        shape[p.axis] = -1
    s = p.scale.reshape(shape) if p.scale.size > 1 else p.scale.reshape(())
    z = p.zero_point.reshape(shape) if p.zero_point.size > 1 else p.zero_point.reshape(())
    q = np.clip(np.round(x.astype(np.float64) / s) + z, p.qmin, p.qmax)
    return ((q - z) * s).astype(x.dtype)


@dataclass(frozen=True)
class QuantScheme:
    """The global recipe: default precision, weight/activation options, calibrator and vendor profile."""

    activation: Precision = Precision.INT8
    per_channel_weights: bool = True
    symmetric_weights: bool = True
    symmetric_activations: bool = False
    calibrator: str = "minmax"  # minmax | percentile | mse
    percentile: float = 99.99
    profile: str = "generic"

    def to_json(self) -> dict:
        return {"activation": self.activation.value, "per_channel_weights": self.per_channel_weights,
                "symmetric_weights": self.symmetric_weights,
                "symmetric_activations": self.symmetric_activations,
                "calibrator": self.calibrator,
                "percentile": self.percentile if self.calibrator == "percentile" else None,
                "profile": self.profile}


@dataclass
class QuantConfig:
    """Everything a backend needs to quantize one model: scheme + per-op precision overrides + fixed params.

    `overrides` maps ONNX node names to a Precision; it is what vendor files are read into and what
    bisect searches over. `act_params` pins activation parameters (keys: tensor name for output-side
    quantization, "node:input_index" for input-side), `weight_params` pins weight parameters by node
    name, and `compute_fp16` lists nodes the vendor computes in float16. All pinned values come from a
    vendor calibration file; anything not pinned is calibrated by qdebug.
    """

    scheme: QuantScheme = field(default_factory=QuantScheme)
    overrides: dict[str, Precision] = field(default_factory=dict)
    act_params: dict[str, QParams] = field(default_factory=dict)
    weight_params: dict[str, QParams] = field(default_factory=dict)
    compute_fp16: frozenset[str] = frozenset()
    source: str | None = None  # e.g. "hisi:out/calibration_param.txt"

    def with_overrides(self, extra: dict[str, Precision]) -> QuantConfig:
        """Copy with more overrides on top (used by bisect to evaluate a candidate promotion set)."""
        merged = dict(self.overrides)
        merged.update(extra)
        return replace(self, overrides=merged)

    def key(self) -> str:
        """Stable hash of the parts that change the quantized model (evaluation cache key)."""
        payload = {
            "scheme": self.scheme.to_json(),
            "overrides": sorted((k, v.value) for k, v in self.overrides.items()),
            "act": sorted((k, v.to_json()["scale"], v.to_json()["zero_point"], v.qmin, v.qmax)
                          for k, v in self.act_params.items()),
            "w": sorted((k, v.to_json()["scale"], v.qmin, v.qmax) for k, v in self.weight_params.items()),
            "fp16": sorted(self.compute_fp16),
        }
        return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def overrides_json(self) -> dict[str, str]:
        return {k: v.value for k, v in sorted(self.overrides.items())}
