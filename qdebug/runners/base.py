"""The backend interface: anything that can run a model at a given precision map on samples.

A backend is one module plus one `@register_backend` line. Backends that can only show final outputs
(vendor simulators) set `intermediates = False`; callers then read intermediates through graph
truncation instead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import ClassVar

import numpy as np

from qdebug.errors import QDebugError
from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import QuantConfig


class Backend(ABC):
    """Runs `graph` quantized per `config` and yields the requested outputs sample by sample."""

    name: ClassVar[str] = "?"
    intermediates: ClassVar[bool] = False  # can it expose any tensor of the graph as an output?

    @abstractmethod
    def prepare(self, graph: ModelGraph, config: QuantConfig, calib: Iterable[dict[str, np.ndarray]]) -> None:
        """Calibrate / build whatever the backend needs for this graph (called once per graph)."""

    @abstractmethod
    def run(self, graph: ModelGraph, config: QuantConfig, samples: Iterable[dict[str, np.ndarray]],
            outputs: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        """Yield {output name: array} for each sample, with the graph quantized per `config`."""

    def describe(self) -> dict:
        """Name and versions for reports."""
        return {"backend": self.name}


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator that makes a backend selectable by `--backend NAME`."""
    BACKENDS[cls.name] = cls
    return cls


def get_backend(name: str, **kwargs) -> Backend:
    """Instantiate a registered backend by name."""
    if name not in BACKENDS:
        raise QDebugError(f"unknown backend '{name}'", where="--backend",
                          fix=f"use one of: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name](**kwargs)
