"""Concat parts: the input slices of a Concat output (a detector's box and score parts), found in the graph.

A per-tensor metric over a Concat hides a crushed small part (sigmoid scores) behind a healthy large one
(pixel boxes), so compare, search and the vendor comparison all measure each part on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qdebug.graph.hazards import SCORE_OPS, trace_source
from qdebug.graph.model import ModelGraph


@dataclass
class PartSpec:
    """One input part of a Concat output: tensor[..., start:stop along axis]."""

    tensor: str
    name: str
    source: str
    source_op: str
    axis: int
    inputs_idx: int
    start: int = -1
    stop: int = -1

    def slice(self, a: np.ndarray) -> np.ndarray:
        idx = [slice(None)] * a.ndim
        idx[self.axis] = slice(self.start, self.stop)
        return a[tuple(idx)]

    def to_json(self) -> dict:
        return {"tensor": self.tensor, "part": self.name, "source": self.source, "source_op": self.source_op,
                "axis": self.axis, "start": self.start, "stop": self.stop}


def concat_parts(g: ModelGraph, tensors: Sequence[str]) -> dict[str, list[PartSpec]]:
    """Part specs for every Concat among `tensors` (sizes resolved on the first sample)."""
    wanted = set(tensors)
    out: dict[str, list[PartSpec]] = {}
    for node in g.nodes:
        if node.op_type != "Concat" or node.output[0] not in wanted:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        specs = []
        for k, t in enumerate(node.input):
            src, src_op = trace_source(g, t)
            specs.append(PartSpec(node.output[0], "", t, src_op, axis, k))
        scores = [s for s in specs if s.source_op in SCORE_OPS]
        for s in specs:
            if s.source_op in SCORE_OPS:
                s.name = "score" if len(scores) == 1 else f"score{scores.index(s)}"
            elif len(specs) == 2 and len(scores) == 1:
                s.name = "box"
            else:
                s.name = f"part{s.inputs_idx}"
        out[node.output[0]] = specs
    return out


def resolve_parts(g: ModelGraph, parts: dict[str, list[PartSpec]], values: dict[str, np.ndarray]) -> None:
    """Fill each part's axis/start/stop from one sample's values of the Concat inputs (or constants)."""
    for t, specs in parts.items():
        out = values.get(t)
        if out is None:
            continue
        ax = specs[0].axis % out.ndim
        pos = 0
        for s in specs:
            v = values.get(s.source)
            if v is None:
                v = g.const_value(s.source)
            n = int(v.shape[ax]) if v is not None and v.ndim == out.ndim else 0
            s.axis, s.start, s.stop = ax, pos, pos + n
            pos += n


def part_names(parts: dict[str, list[PartSpec]]) -> dict[str, list[str]]:
    """Concat output -> its part names (what target expressions may address)."""
    return {t: [s.name for s in ss] for t, ss in parts.items()}
