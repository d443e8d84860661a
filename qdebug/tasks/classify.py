"""`--task classify`: does the quantized classifier still pick the float model's class?

top1_agreement: share of samples whose quantized argmax equals the float argmax. top5_agreement: share whose
float argmax is among the quantized top-5 (top-C when there are fewer than 5 classes). kl_mean: mean
KL(float softmax || quantized softmax) in nats. Outputs that are already probabilities (>= 0, rows summing
to 1 on the first float sample) are used as they are; anything else is taken as logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from qdebug.errors import QDebugError
from qdebug.results.task import TaskRun
from qdebug.tasks import register_scorer
from qdebug.tasks.scoring import TaskScorer, log_softmax, rows_of, sample_name, sig

PROB_TOL = 1e-3  # |row sum - 1| below this counts as "already probabilities"
EPS = 1e-12  # floor of a probability before its log (a class the quantized model gives exactly 0)


def is_probabilities(x: np.ndarray) -> bool:
    """Whether every row is >= 0 and sums to 1 (within PROB_TOL)."""
    return bool(x.size) and bool((x >= 0).all()) and bool(np.all(np.abs(x.sum(axis=-1) - 1.0) < PROB_TOL))


def log_probs(x: np.ndarray, probabilities: bool) -> np.ndarray:
    """Row-wise log-probabilities: log-softmax of logits, or the log of renormalized probabilities."""
    if not probabilities:
        return log_softmax(x)
    p = np.clip(x, 0.0, None)
    s = p.sum(axis=-1, keepdims=True)
    p = np.where(s > 0, p / np.where(s > 0, s, 1.0), 1.0 / x.shape[-1])
    return np.log(np.maximum(p, EPS))


def kl_rows(f: np.ndarray, q: np.ndarray, probabilities: bool) -> np.ndarray:
    """KL(p_float || p_quant) per row, in nats (terms where the float probability is 0 contribute 0)."""
    lp, lq = log_probs(f, probabilities), log_probs(q, probabilities)
    p = np.exp(lp)
    return np.where(p > EPS, p * (lp - lq), 0.0).sum(axis=-1)


@register_scorer
class ClassifyScorer(TaskScorer):
    """Top-1/top-5 agreement with the float argmax and mean KL of the class distributions."""

    name = "classify"
    metrics = {"top1_agreement": True, "top5_agreement": True, "kl_mean": False}
    default_target = "top1_agreement>=0.99"
    ranks = (2,)

    def reset(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.top1 = self.top5 = 0
        self.kl_sum = 0.0
        self.count = 0
        self.k = 0
        if not hasattr(self, "probabilities"):
            self.probabilities: bool | None = None

    def update(self, float_outputs: Mapping[str, np.ndarray], quant_outputs: Mapping[str, np.ndarray],
               name: str | None = None) -> None:
        f, q = (rows_of(a) for a in self.pair(float_outputs, quant_outputs))
        if f.shape[1] < 2:
            raise QDebugError(f"output '{self.output}' has {f.shape[1]} class per sample, a classifier needs 2 or "
                              "more", where="--task-output", fix="pass --task-output of the [N, classes] output")
        if self.probabilities is None:  # decided once, on the float model's first sample
            self.probabilities = is_probabilities(f)
        kl = kl_rows(f, q, self.probabilities)
        ftop = f.argmax(axis=-1)
        k = min(5, f.shape[1])
        qtop5 = np.argsort(-q, axis=-1, kind="stable")[:, :k]
        for r in range(f.shape[0]):
            hit1 = int(q[r].argmax()) == int(ftop[r])
            hit5 = bool(int(ftop[r]) in qtop5[r])
            self.top1 += hit1
            self.top5 += hit5
            self.kl_sum += float(kl[r])
            self.rows.append({"sample": sample_name(name, self.k, r, f.shape[0]), "float_top1": int(ftop[r]),
                              "quant_top1": int(q[r].argmax()), "top5_hit": hit5, "kl": sig(kl[r]),
                              "severity": sig((0.0 if hit1 else 1.0) + float(kl[r]))})
        self.count += f.shape[0]
        self.k += 1

    def result(self) -> TaskRun:
        n = self.count
        return self.run_record(n, {"top1_agreement": self.top1 / n if n else None,
                                   "top5_agreement": self.top5 / n if n else None,
                                   "kl_mean": self.kl_sum / n if n else None}, self.rows)

    def settings(self) -> dict[str, Any]:
        read = None if self.probabilities is None else "probabilities" if self.probabilities else "logits"
        return {"read_as": read}
