"""Static checks for graph patterns per-tensor quantization cannot survive, from float value ranges.

Each hazard names the node, the numbers, and what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qdebug.graph.fusion import PASSTHROUGH
from qdebug.graph.model import ModelGraph

SCORE_OPS = {"Sigmoid", "Softmax", "LogSoftmax"}


@dataclass
class Hazard:
    """One finding: a kind, where, the numbers behind it, and the fix."""

    kind: str  # concat_range_mix | score_concat | scale_amplify
    node: str
    tensor: str
    message: str
    fix: str
    numbers: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"kind": self.kind, "node": self.node, "tensor": self.tensor, "message": self.message,
                "fix": self.fix, "numbers": self.numbers}


def trace_source(g: ModelGraph, tensor: str, max_hops: int = 8) -> tuple[str, str]:
    """Follow passthrough ops upstream; return (tensor, op type) of the first computing producer."""
    t = tensor
    for _ in range(max_hops):
        node = g.producer.get(t)
        if node is None:
            return t, "Input"
        if node.op_type in PASSTHROUGH or node.op_type == "Cast":
            data = [i for i in node.input if i and not g.is_constant(i)]
            if not data:
                return t, node.op_type
            t = data[0]
            continue
        return t, node.op_type
    return t, "?"


def _width(r: tuple[float, float]) -> float:
    lo, hi = min(r[0], 0.0), max(r[1], 0.0)
    return hi - lo


def find_hazards(g: ModelGraph, ranges: dict[str, tuple[float, float]], ratio: float = 16.0,
                 bits: int = 8) -> list[Hazard]:
    """Concat inputs of very different ranges, score tensors merged with coordinates, big constant scales."""
    out: list[Hazard] = []
    levels = 2 ** bits - 1
    for node in g.nodes:
        if node.op_type == "Concat":
            data = [i for i in node.input if i and i in ranges]
            if len(data) < 2 or node.output[0] not in ranges:
                continue
            total = ranges[node.output[0]]
            wt = _width(total)
            if wt <= 0:
                continue
            step = wt / levels
            for t in data:
                w = _width(ranges[t])
                if w * ratio >= wt:
                    continue
                src, src_op = trace_source(g, t)
                lo, hi = ranges[t]
                nums = {"input_range": [lo, hi], "output_range": list(total), "ratio": round(wt / max(w, 1e-30), 1),
                        "int8_step": step, "levels_left": round(w / step, 2), "source_op": src_op}
                if src_op in SCORE_OPS:
                    out.append(Hazard(
                        "score_concat", node.name, t,
                        f"{src_op} output '{t}' in [{lo:.3g}, {hi:.3g}] is concatenated with data in "
                        f"[{total[0]:.4g}, {total[1]:.4g}] by {node.name}: one int{bits} step of the "
                        f"concat ({step:.3g}) is {w / max(step, 1e-30):.2f}x the whole score range, so "
                        "scores are crushed",
                        f"keep {node.name} at int16/fp16, or end the model before the Concat and "
                        "concatenate boxes and scores on the CPU", nums))
                else:
                    out.append(Hazard(
                        "concat_range_mix", node.name, t,
                        f"{node.name} input '{t}' spans [{lo:.3g}, {hi:.3g}], {nums['ratio']}x smaller than "
                        f"the concat output [{total[0]:.4g}, {total[1]:.4g}]; it keeps only "
                        f"{w / max(step, 1e-30):.1f} of {levels} int{bits} levels",
                        f"keep {node.name} at int16/fp16 or split the output", nums))
        elif node.op_type in ("Mul", "Div") and len(node.input) == 2:
            consts = [(k, g.const_value(i)) for k, i in enumerate(node.input)]
            const = [(k, v) for k, v in consts if v is not None]
            data = [i for i in node.input if i in ranges]
            if len(const) != 1 or len(data) != 1 or node.output[0] not in ranges:
                continue
            k, v = const[0]
            if v.size == 0:
                continue
            factor = float(abs(v).max())
            if node.op_type == "Div":
                if k != 1 or float(abs(v).min()) == 0:
                    continue
                factor = float(1.0 / abs(v).min())
            if factor < 4.0:
                continue
            x = data[0]
            w_in = _width(ranges[x])
            step_in = w_in / levels
            err_out = step_in * factor / 2
            out.append(Hazard(
                "scale_amplify", node.name, node.output[0],
                f"{node.name} multiplies '{x}' (range [{ranges[x][0]:.3g}, {ranges[x][1]:.3g}], "
                f"int{bits} step {step_in:.3g}) by up to {factor:g}: rounding error of the input grows to "
                f"+-{err_out:.3g} at the output",
                f"promote {node.name} (and the op feeding it) to int16/fp16, or move the scale to the CPU",
                {"factor": factor, "input_range": list(ranges[x]), "input_step": step_in,
                 "output_error_bound": err_out}))
    return out
