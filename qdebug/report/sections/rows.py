"""Table rows shared by several sections: a tensor of the comparison, an op of the bisect ranking."""

from __future__ import annotations

from qdebug.report.blocks import Inline, c, good, il
from qdebug.report.format import f_cos, f_g, f_jump, f_snr
from qdebug.results.bisect import RankedOp
from qdebug.results.compare import TensorRow

TENSOR_HEADER = ["#", "tensor", "op", "cum SNR", "iso SNR", "jump dB", "cum cos", "iso cos", "max abs"]


def tensor_row(t: TensorRow, arows: dict[str, TensorRow] | None) -> list[Inline]:
    """One tensor row (SNR after the promotion appended when `arows` is given)."""
    cm, im = t.cumulative, t.isolated
    row = [il(str(t.index)), il(c(t.tensor)), il(t.op_type), il(f_snr(cm.snr_db)),
           il(f_snr(im.snr_db)), il(f_jump(t.jump_db)), il(f_cos(cm.cosine)), il(f_cos(im.cosine)),
           il(f_g(cm.max_abs))]
    if arows is not None:
        a = arows.get(t.tensor)
        row.append(il(f_snr(a.cumulative.snr_db) if a else "–"))
    return row


RANKING_HEADER = ["rank", "op", "type", "score", "jump dB", "iso SNR", "cum SNR", "hazards", "promoted"]
RANKING_ALIGN = "rllrrrrll"


def ranking_row(r: RankedOp, promoted: set[str]) -> list[Inline]:
    """One row of the sensitivity ranking; `promoted` marks the ops of the promotion set."""
    e = r.evidence
    return [il(str(r.rank)), il(c(r.op)), il(r.op_type), il(f"{r.score:.1f}"),
            il(f_jump(e.jump_db)), il(f_snr(e.isolated_snr_db)), il(f_snr(e.cumulative_snr_db)),
            il(", ".join(e.hazards) or "–"), il(good("yes") if r.op in promoted else "–")]
