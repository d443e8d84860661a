"""`--task ctc`: does the quantized sequence model (OCR, speech) still read the float model's labels?

Greedy CTC decoding: argmax per time step, repeats collapsed, the blank class dropped (index 0, or
`--blank N`). ctc_agreement: share of samples whose decoded label sequence equals the float one.
ctc_edit_distance: mean Levenshtein distance between the two sequences divided by the longer length
(0 = same labels, 1 = nothing in common). The output is [N, T, C], [T, N, C] (`--ctc-layout`, else
detected from a batch axis of 1) or [T, C].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qdebug.errors import QDebugError
from qdebug.results.task import TaskRun
from qdebug.tasks import register_scorer
from qdebug.tasks.scoring import TaskScorer, sample_name

LAYOUTS = ("ntc", "tnc")


def greedy_decode(frames: np.ndarray, blank: int = 0) -> list[int]:
    """Labels of one [T, C] sequence: argmax per step, repeats collapsed, blanks dropped."""
    best = np.asarray(frames).argmax(axis=-1)
    out: list[int] = []
    prev = -1
    for c in best.tolist():
        if c != prev and c != blank:
            out.append(int(c))
        prev = c
    return out


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance (insertions, deletions, substitutions each cost 1)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def normalized_edit(a: Sequence[int], b: Sequence[int]) -> float:
    """Edit distance over the longer sequence's length (0 for two empty sequences)."""
    n = max(len(a), len(b))
    return edit_distance(a, b) / n if n else 0.0


@register_scorer
class CtcScorer(TaskScorer):
    """Greedy-decoded label sequences of float and quantized runs: exact agreement and edit distance."""

    name = "ctc"
    metrics = {"ctc_agreement": True, "ctc_edit_distance": False}
    default_target = "ctc_agreement>=0.95"
    ranks = (3,)

    def __init__(self, output: str | None = None, blank: int = 0, layout: str | None = None) -> None:
        if layout is not None and layout.lower() not in LAYOUTS:
            raise QDebugError(f"unknown --ctc-layout '{layout}'", where="--ctc-layout", fix="use ntc or tnc")
        if blank < 0:
            raise QDebugError(f"--blank {blank} is negative", where="--blank", fix="pass the blank class index, e.g. 0")
        self.blank = blank
        self.layout = layout.lower() if layout else None
        self.given = self.layout is not None
        super().__init__(output)

    def reset(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.same = 0
        self.edit_sum = 0.0
        self.count = 0
        self.k = 0

    def sequences(self, x: np.ndarray) -> np.ndarray:
        """The output of one sample as [N, T, C], deciding the layout on the first sample when not given."""
        if x.ndim == 2:
            return x[None]
        if x.ndim != 3:
            raise QDebugError(f"output '{self.output}' has shape {list(x.shape)}; CTC needs [N, T, C], [T, N, C] or "
                              "[T, C]", where="--task-output", fix="pass --task-output of the per-step class scores")
        if self.layout is None:
            if x.shape[0] == 1:
                self.layout = "ntc"
            elif x.shape[1] == 1:
                self.layout = "tnc"
            else:
                raise QDebugError(f"output '{self.output}' of shape {list(x.shape)} may be [N, T, C] or [T, N, C]",
                                  where="--task", fix="pass --ctc-layout ntc or --ctc-layout tnc")
        n_ax, t_ax = (0, 1) if self.layout == "ntc" else (1, 0)
        if self.given and x.shape[t_ax] == 1 and x.shape[n_ax] > 1:  # e.g. tnc on [1, 32, 20]: 32 one-step "samples"
            raise QDebugError(f"layout {self.layout} reads output '{self.output}' of shape {list(x.shape)} as "
                              f"{x.shape[n_ax]} sequences of 1 time step each", where="--ctc-layout",
                              fix=f"pass --ctc-layout {'tnc' if self.layout == 'ntc' else 'ntc'} or leave the option "
                              "out (the layout is then detected from the batch axis of 1)")
        return x if self.layout == "ntc" else x.transpose(1, 0, 2)

    def update(self, float_outputs: Mapping[str, np.ndarray], quant_outputs: Mapping[str, np.ndarray],
               name: str | None = None) -> None:
        f, q = self.pair(float_outputs, quant_outputs)
        fs, qs = self.sequences(f), self.sequences(q)
        if fs.shape[-1] <= self.blank:
            raise QDebugError(f"--blank {self.blank} is not a class of output '{self.output}' ({fs.shape[-1]} "
                              "classes)", where="--blank", fix=f"pass --blank between 0 and {fs.shape[-1] - 1}")
        for r in range(fs.shape[0]):
            a, b = greedy_decode(fs[r], self.blank), greedy_decode(qs[r], self.blank)
            d = normalized_edit(a, b)
            self.same += a == b
            self.edit_sum += d
            self.rows.append({"sample": sample_name(name, self.k, r, fs.shape[0]), "float": a, "quant": b,
                              "edit": round(d, 6), "severity": round(d, 6)})
        self.count += fs.shape[0]
        self.k += 1

    def result(self) -> TaskRun:
        n = self.count
        return self.run_record(n, {"ctc_agreement": self.same / n if n else None,
                                   "ctc_edit_distance": self.edit_sum / n if n else None}, self.rows)

    def settings(self) -> dict[str, Any]:
        return {"blank": self.blank, "layout": self.layout, "layout_given": self.given}
