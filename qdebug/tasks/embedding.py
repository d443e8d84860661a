"""`--task embedding`: does the quantized model still place every sample where the float model does?

embedding_cos_min / embedding_cos_mean: cosine between a sample's float and quantized embedding (the
output flattened after its batch axis), worst and mean. nn_agreement: share of samples whose nearest other
sample (by cosine) is the same under float and quantized embeddings; it needs 3 samples or more.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from qdebug.results.task import TaskRun
from qdebug.tasks import register_scorer
from qdebug.tasks.scoring import TaskScorer, rows_of, sample_name


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of matching rows; 1 when both rows are zero, 0 when only one is."""
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    dot = (a * b).sum(axis=-1)
    both0, one0 = (na == 0) & (nb == 0), (na == 0) ^ (nb == 0)
    cos = dot / np.where((na > 0) & (nb > 0), na * nb, 1.0)
    return np.clip(np.where(both0, 1.0, np.where(one0, 0.0, cos)), -1.0, 1.0)


def nearest_other(x: np.ndarray) -> np.ndarray:
    """Index of each row's nearest other row by cosine (ties: the lowest index)."""
    u = unit_rows(x)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(axis=1)


@register_scorer
class EmbeddingScorer(TaskScorer):
    """Cosine between float and quantized embeddings, and nearest-neighbour agreement."""

    name = "embedding"
    metrics = {"embedding_cos_min": True, "embedding_cos_mean": True, "nn_agreement": True}
    default_target = "embedding_cos_min>=0.99"
    ranks = (2,)
    min_samples = 3

    def reset(self) -> None:
        self.f: list[np.ndarray] = []
        self.q: list[np.ndarray] = []
        self.names: list[str] = []
        self.k = 0

    def update(self, float_outputs: Mapping[str, np.ndarray], quant_outputs: Mapping[str, np.ndarray],
               name: str | None = None) -> None:
        f, q = (rows_of(a) for a in self.pair(float_outputs, quant_outputs))
        self.f.append(f)
        self.q.append(q)
        self.names += [sample_name(name, self.k, r, f.shape[0]) for r in range(f.shape[0])]
        self.k += 1

    def result(self) -> TaskRun:
        if not self.f:
            return self.run_record(0, dict.fromkeys(self.metrics), [])
        f, q = np.concatenate(self.f), np.concatenate(self.q)
        cos = row_cosine(f, q)
        n = f.shape[0]
        if n < self.min_samples and not self.warnings:
            self.warnings.append(f"nn_agreement needs 3 samples or more ({n} scored): it is left undefined")
        nn_f = nearest_other(f) if n >= 3 else None
        nn_q = nearest_other(q) if n >= 3 else None
        rows = []
        for r in range(n):
            same = nn_f is None or nn_q is None or int(nn_f[r]) == int(nn_q[r])
            row: dict[str, Any] = {"sample": self.names[r], "cosine": round(float(cos[r]), 6)}
            if nn_f is not None and nn_q is not None:
                row.update(nn_float=self.names[int(nn_f[r])], nn_quant=self.names[int(nn_q[r])])
            row["severity"] = round((0.0 if same else 1.0) + (1.0 - float(cos[r])), 6)
            rows.append(row)
        agree = float(np.mean(nn_f == nn_q)) if nn_f is not None and nn_q is not None else None
        return self.run_record(n, {"embedding_cos_min": float(cos.min()), "embedding_cos_mean": float(cos.mean()),
                                   "nn_agreement": agree}, rows)

    def settings(self) -> dict[str, Any]:
        dim = int(self.f[0].shape[1]) if self.f else None
        return {"dim": dim}
