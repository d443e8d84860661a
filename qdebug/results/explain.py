"""What a re-run of the model adds to a report: values of chosen ops (why-plots) and detection pictures.

Plain data: `qdebug.compare.explain` fills it from a result, the model and the inputs; the report only draws
and places it, so the report never runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class WhyData:
    """Values of one op from a re-run: float vs quantized, and the int grid of its quantization point."""

    op: str
    op_type: str
    reason: str  # why this op was chosen (hazard, rank...)
    point_tensor: str  # tensor at the op's worst quantization point
    point_desc: str  # "output" | "input k"
    bits: int | None  # None: no integer point (float16/float compute)
    lo: float | None  # represented range of the point
    hi: float | None
    step: float | None
    x_point: np.ndarray  # float values at the point
    out_tensor: str
    x_out: np.ndarray  # float values of the op output
    y_out: np.ndarray  # quantized (whole model) values of the op output
    y_after: np.ndarray | None = None
    after_label: str = ""
    run_label: str = "quantized"
    out_grid: tuple[float, float, int, int] | None = None  # (scale, zero point, qmin, qmax) of the output
    cum_snr: float | None = None
    iso_snr: float | None = None


@dataclass
class ExamplePicture:
    """One detection example drawn as PNG: float boxes vs the quantized (or promoted) run's boxes."""

    example: int  # 1-based position in the result's detection.examples
    promoted: bool  # False: float vs quantized; True: float vs the promotion set applied
    png: bytes


@dataclass
class Explanation:
    """Everything a report shows that the result JSON alone cannot give (values and pictures from a re-run)."""

    why: list[WhyData] | None = None  # None: not asked for (--no-why); []: asked, nothing usable (see why_notes)
    why_notes: list[str] = field(default_factory=list)  # what was re-run, or why some plots are missing
    pictures: list[ExamplePicture] | None = None  # None: not drawn at all
    picture_notes: list[str] = field(default_factory=list)  # pictures that could not be drawn, and why
    missing_pictures: list[str] = field(default_factory=list)  # example images found neither at their path nor in --data
