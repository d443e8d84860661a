"""Float references: the float model's values of some tensors for every sample, computed once.

Every comparison against a backend that only shows final outputs (bisect's evaluator and cut search,
the vendor comparison) needs them, together with the positions of the Concat parts it measures.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qdebug.graph.model import ModelGraph
from qdebug.graph.parts import PartSpec, resolve_parts
from qdebug.runners.session import OrtSession
from qdebug.workers import ordered_map


def float_references(graph: ModelGraph, samples: Sequence[dict[str, np.ndarray]], tensors: Sequence[str],
                     parts: dict[str, list[PartSpec]] | None = None) -> list[dict[str, np.ndarray]]:
    """Float values of `tensors` for each sample (one session, samples side by side on the workers).

    `parts` (Concat parts of some of `tensors`) get their positions from the first sample's values.
    """
    tensors = list(tensors)
    sources = sorted({p.source for ps in (parts or {}).values() for p in ps} - set(tensors))
    sess = OrtSession(graph.with_outputs([t for t in tensors + sources if t in graph.producer]), source=graph.path)
    refs = []
    for k, (s, vals) in enumerate(zip(samples, ordered_map(sess.run, samples), strict=True)):
        vals.update(s)
        if k == 0 and parts:
            resolve_parts(graph, parts, vals)
        refs.append({t: vals[t] for t in tensors})
    return refs
