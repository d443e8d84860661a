"""Static checks for graph patterns per-tensor quantization cannot survive, from float value ranges.

Each hazard names the node, the numbers, and what to do about it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx

from qdebug.graph.families import MASK_MAGNITUDE, find_families, is_mask_constant, mask_apply, mask_tensors
from qdebug.graph.fusion import PASSTHROUGH
from qdebug.graph.model import ModelGraph

SCORE_OPS = {"Sigmoid", "Softmax", "LogSoftmax"}
HANDLED = "hazard handled: "  # starts the note (a CompareResult warning) of a hazard the run's precision removes
INPUT_KINDS = ("softmax_range", "norm_outlier")  # hazards of an op's input tensor, not of its output
MIN_LEVELS = 16  # fewer int levels than this across the values that matter = a hazard (docs/simulator.md)
# ops that move every element of a Concat output unchanged: a reader behind them still reads the whole grid
# (slicing ops such as Split/Slice/Gather may drop the score part, so the search stops there)
WHOLE_TENSOR = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast", "Dropout",
                "DepthToSpace", "SpaceToDepth", "Expand", "Tile"}


@dataclass(frozen=True)
class Grid:
    """The int grid one quantization point of the run puts a tensor on: represented range, step and bits,
    and where it comes from ("file": a vendor file's record, "calibrated": qdebug's own range)."""

    lo: float
    hi: float
    step: float
    bits: int
    source: str = "calibrated"

    def step_at(self, bits: int) -> float:
        """The step at `bits`: the record's own, else the same range over 2^bits - 1 levels (how the
        simulator widens a record, QParams.with_bits)."""
        return self.step if bits == self.bits else (self.hi - self.lo) / (2 ** bits - 1)


@dataclass
class Grids:
    """The run's quantization points for the hazard checks: `stored` tensor -> grid it is stored on (output-side
    points, graph inputs), `read` (node, tensor) -> grid that node quantizes its input to (input-side points,
    quantize_at="input"); `file` names the vendor file of the "file" grids."""

    stored: dict[str, Grid] = field(default_factory=dict)
    read: dict[tuple[str, str], Grid] = field(default_factory=dict)
    input_side: bool = False
    file: str = ""

    def of(self, g: ModelGraph, node: str, tensor: str) -> Grid | None:
        """The grid `node` reads `tensor` on: its own input point, else the grid the tensor (or its source
        through passthrough ops) is stored on."""
        r = self.read.get((node, tensor)) or self.stored.get(tensor)
        return r if r is not None else self.stored.get(trace_source(g, tensor)[0])


@dataclass
class Hazard:
    """One finding: a kind, where, the numbers behind it, and the fix."""

    kind: str  # concat_range_mix | score_concat | scale_amplify | softmax_range | norm_outlier | mask_add
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


def judge_hazards(g: ModelGraph, ranges: dict[str, tuple[float, float]], node_bits: dict[str, int | None],
                  bits: int = 8, channel_absmax: dict[str, np.ndarray] | None = None,
                  steps: dict[str, float] | None = None, estimated: bool = False,
                  grids: Grids | None = None) -> tuple[list[Hazard], list[str]]:
    """The hazards of the precision each node actually runs at, and one note per hazard that run handles.

    `node_bits`: node -> int bits of the run (None = float; missing = `bits`). Each node's hazards are those
    of its own width (none in float; for an input hazard the narrower of the op and the input's producer);
    one that fires at `bits` but not at that width is handled.
    `steps`: known quantization steps of tensors (an imported QDQ model's scales), used in the numbers;
    `estimated`: the run was made elsewhere, or a vendor file sets the grids, so steps not in `steps` (or not
    from the file) are labelled as the built-in estimate.
    `grids`: the run's quantization points (see find_hazards); None = output-side points at calibrated ranges.
    """
    widths = {bits} | {b for b in node_bits.values() if b is not None}
    found = {b: find_hazards(g, ranges, bits=b, channel_absmax=channel_absmax, steps=steps, estimated=estimated,
                             grids=grids)
             for b in sorted(widths)}

    def width_of(h: Hazard) -> int | None:
        # an op's input hazard (Softmax, LayerNorm): the input is quantized by its producer (output-side
        # profiles) or by the op itself (input-side ones), so the narrower of the two counts
        names = [h.node]
        if h.kind in INPUT_KINDS:
            src = g.producer.get(trace_source(g, h.tensor)[0])
            names += [src.name] if src is not None else []
        ints = [b for b in (node_bits.get(n, bits) for n in names) if b is not None]
        return min(ints) if ints else None

    live = [h for b, hs in found.items() for h in hs if width_of(h) == b]
    kept = {(h.kind, h.node, h.tensor) for h in live}
    notes: list[str] = []
    for h in found[bits]:  # a hazard of the default width whose op runs otherwise and is fine there
        b = width_of(h)
        if b != bits and (h.kind, h.node, h.tensor) not in kept:
            notes.append(f"{HANDLED}{h.kind} at {h.node}: " + ("the run keeps it in float" if b is None else
                                                               f"the run quantizes it at int{b}"))
    return live, notes


def _source(t: str | None, steps: dict[str, float], estimated: bool, grid: Grid | None) -> str:
    """Where a quoted step comes from: file (a vendor record), imported (a --quantized scale), estimate (the
    built-in estimate in a run whose grids are set elsewhere) or calibrated (qdebug's own range)."""
    if grid is not None:
        return "file"
    if t is not None and t in steps:
        return "imported"
    return "estimate" if estimated else "calibrated"


def _label(source: str, grids: Grids | None) -> str:
    """The words after a quoted step that name its source (none for qdebug's own calibration)."""
    if source == "file":
        return f" (from {grids.file})" if grids is not None and grids.file else " (from the vendor file)"
    return {"imported": " (imported scale)", "estimate": " (built-in estimate)"}.get(source, "")


def _file_grid(grid: Grid | None) -> Grid | None:
    """A point's grid when a vendor file sets it; None = the built-in estimate (calibrated range / levels)."""
    return grid if grid is not None and grid.source == "file" else None


def _concat_points(g: ModelGraph, node: onnx.NodeProto, t: str,
                   grids: Grids | None) -> list[tuple[str, str, Grid | None]]:
    """Where input `t` of Concat `node` is quantized, as (quantizing node, tensor it quantizes, file grid or None).

    Output-side points (and no `grids`): the Concat's output, one grid for every input. Input-side points
    (quantize_at="input"): the Concat's own input point for `t` — the file record's grid when the file has one,
    else the whole concatenated range, the one record ATC writes for all inputs of a Concat — and every quantized
    reader of the whole output (through WHOLE_TENSOR ops), whose input point covers the concatenated tensor.
    """
    out = node.output[0]
    if grids is None or not grids.input_side:
        return [(node.name, out, _file_grid(grids.stored.get(out)) if grids else None)]
    pts: list[tuple[str, str, Grid | None]] = []
    own = grids.read.get((node.name, t))
    if own is not None and own.source == "file":
        pts.append((node.name, t, _file_grid(own)))
    elif own is not None:  # no record of its own: ATC writes one shared record for every input of a Concat
        pts.append((node.name, out, None))  # (the reference's real files), so judge it on the whole range
    seen, todo = set(), [out]
    while todo:
        u = todo.pop()
        if u in seen:
            continue
        seen.add(u)
        for c in g.consumers.get(u, []):
            r = grids.read.get((c.name, u))
            if r is not None and all(p[0] != c.name for p in pts):
                pts.append((c.name, u, _file_grid(r)))
            elif r is None and c.op_type in WHOLE_TENSOR:
                todo += [o for o in c.output if o]
    return pts


def _concat_hazards(g: ModelGraph, node: onnx.NodeProto, ranges: dict[str, tuple[float, float]], ratio: float,
                    bits: int, steps: dict[str, float], estimated: bool, grids: Grids | None) -> list[Hazard]:
    """score_concat / concat_range_mix of one Concat: an input left with few levels on a grid it shares."""
    data = [i for i in node.input if i and i in ranges]
    if len(data) < 2 or node.output[0] not in ranges:
        return []
    levels = 2 ** bits - 1
    out: list[Hazard] = []
    for t in data:
        w = _width(ranges[t])
        for qnode, qt, grid in _concat_points(g, node, t, grids):
            if grid is not None:
                total, step = (grid.lo, grid.hi), grid.step_at(bits)
                wt = step * levels  # the grid's span at the judged width
            else:
                r = _range_of(g, ranges, qt)
                if r is None:
                    continue
                total, wt = r, _width(r)
                step = steps.get(qt, wt / levels)
            # int8: the ratio rule (16x = 255/16 levels left); wider ints: fewer than MIN_LEVELS levels left
            if wt <= 0 or w * ratio >= wt or (bits > 8 and w / step >= MIN_LEVELS):
                continue
            source = _source(qt, steps, estimated, grid)
            label = _label(source, grids)
            src, src_op = trace_source(g, t)
            lo, hi = ranges[t]
            nums = {"input_range": [lo, hi], "output_range": list(total), "ratio": round(wt / max(w, 1e-30), 1),
                    "int8_step": step, "levels_left": round(w / step, 2), "source_op": src_op,
                    "bits": bits, "step_source": source, "quantized_by": qnode}
            if qnode != node.name:  # input side: a reader quantizes the concatenated tensor
                where = f" and read by {qnode} as one int{bits} tensor: one step of that input ({step:.3g}{label})"
                fix = f"keep {qnode} at int16/fp16 (it quantizes the whole concatenated tensor)"
            elif qt != node.output[0]:  # input side: the Concat's own input record spans the other inputs
                where = f", whose input record puts it on that grid: one int{bits} step ({step:.3g}{label})"
                fix = f"keep {node.name} at int16/fp16 (or give its input '{t}' a record of its own range)"
            else:
                where = f": one int{bits} step of the concat ({step:.3g}{label})"
                fix = f"keep {node.name} at int16/fp16"
            if src_op in SCORE_OPS:
                out.append(Hazard(
                    "score_concat", qnode, t,
                    f"{src_op} output '{t}' in [{lo:.3g}, {hi:.3g}] is concatenated with data in "
                    f"[{total[0]:.4g}, {total[1]:.4g}] by {node.name}{where} is {step / max(w, 1e-30):.2f}x "
                    "the whole score range, so scores are crushed",
                    f"{fix}, or end the model before {node.name} and concatenate boxes and scores on the CPU", nums))
            else:
                out.append(Hazard(
                    "concat_range_mix", qnode, t,
                    f"{node.name} input '{t}' spans [{lo:.3g}, {hi:.3g}], {nums['ratio']}x smaller than "
                    f"the grid [{total[0]:.4g}, {total[1]:.4g}]" + (f" {qnode} reads it on" if qnode != node.name
                                                                      else "") +
                    f"; it keeps only {w / max(step, 1e-30):.1f} of {levels} int{bits} levels "
                    f"(step {step:.3g}{label})",
                    f"{fix} or split the output", nums))
    return out


def find_hazards(g: ModelGraph, ranges: dict[str, tuple[float, float]], ratio: float = 16.0,
                 bits: int = 8, channel_absmax: dict[str, np.ndarray] | None = None,
                 steps: dict[str, float] | None = None, estimated: bool = False,
                 grids: Grids | None = None) -> list[Hazard]:
    """Concat inputs of very different ranges, score tensors merged with coordinates, big constant scales,
    Softmax inputs too wide for int, attention masks added into int tensors, and (given per-channel max |x|
    of normalization inputs, see norm_inputs) LayerNorm inputs with an outlier channel. Every check is
    judged at `bits`; `steps` (tensor -> known int step) replace the width / (2^bits - 1) estimate, and
    `grids` (the run's quantization points) say where a tensor is quantized and which steps a vendor file sets."""
    steps = steps or {}
    out: list[Hazard] = []
    masked = mask_add(g, ranges, bits)
    # a masked Softmax: reported once
    out += softmax_range(g, ranges, bits, skip={h.tensor for h in masked}, grids=grids, estimated=estimated)
    out += masked
    if channel_absmax:
        out += norm_outliers(g, channel_absmax, bits)
    masks = mask_tensors(g)
    levels = 2 ** bits - 1
    for node in g.nodes:
        if node.op_type == "Concat":
            out += _concat_hazards(g, node, ranges, ratio, bits, steps, estimated, grids)
        elif node.op_type in ("Mul", "Div") and len(node.input) == 2 and node.output[0] not in masks:
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
            if factor < 4.0 or bits > 8:  # at int16 the rounding error is 257x smaller: what the fix asks for
                continue
            x = data[0]
            grid = _file_grid(grids.of(g, node.name, x)) if grids else None
            shown = (grid.lo, grid.hi) if grid is not None else ranges[x]
            step_in = grid.step_at(bits) if grid is not None else steps.get(x, _width(ranges[x]) / levels)
            err_out = step_in * factor / 2
            source = _source(x, steps, estimated, grid)
            out.append(Hazard(
                "scale_amplify", node.name, node.output[0],
                f"{node.name} multiplies '{x}' (range [{shown[0]:.3g}, {shown[1]:.3g}], int{bits} step "
                f"{step_in:.3g}{_label(source, grids)}) by up to {factor:g}: rounding error of the input grows to "
                f"+-{err_out:.3g} at the output",
                f"promote {node.name} (and the op feeding it) to int16/fp16, or move the scale to the CPU",
                {"factor": factor, "input_range": list(shown), "input_step": step_in,
                 "output_error_bound": err_out, "bits": bits, "step_source": source}))
    return out


def _range_of(g: ModelGraph, ranges: dict[str, tuple[float, float]], t: str) -> tuple[float, float] | None:
    """A tensor's calibrated range, or its computing source's through passthrough ops."""
    if t in ranges:
        return ranges[t]
    src, _ = trace_source(g, t)
    return ranges.get(src)


def softmax_range(g: ModelGraph, ranges: dict[str, tuple[float, float]], bits: int = 8,
                  skip: set[str] | frozenset[str] = frozenset(), grids: Grids | None = None,
                  estimated: bool = False) -> list[Hazard]:
    """Softmax inputs whose int step is too coarse where it matters: only the top ln(256) = 5.55 of the
    scores (after max-subtraction) give probabilities an 8-bit output can hold, and that window must keep
    MIN_LEVELS input levels. Threshold: input width > (2^bits - 1) * ln(256) / 16 (88.4 at int8); a vendor
    file's grid for the input (`grids`) gives the range and step instead."""
    out = []
    window = math.log(256.0)
    levels = 2 ** bits - 1
    for node in g.nodes:
        if node.op_type != "Softmax" or not node.input or trace_source(g, node.input[0])[0] in skip:
            continue
        grid = _file_grid(grids.of(g, node.name, node.input[0])) if grids else None
        r = (grid.lo, grid.hi) if grid is not None else _range_of(g, ranges, node.input[0])
        if r is None or not all(math.isfinite(v) for v in r):
            continue
        w = _width(r)
        step = grid.step_at(bits) if grid is not None else w / levels
        if step <= 0 or window / step >= MIN_LEVELS:
            continue
        err = math.exp(step / 2) - 1
        source = _source(None, {}, estimated, grid)
        out.append(Hazard(
            "softmax_range", node.name, node.input[0],
            f"{node.name} input spans [{r[0]:.4g}, {r[1]:.4g}] (width {w:.4g}): one int{bits} step is "
            f"{step:.3g}{_label(source, grids)}, so the top {window:.2f} of the scores (the probabilities >= 1/256) "
            f"keep only {window / step:.1f} levels" + (f" and a probability can be off by {100 * err:.0f}%"
                                                        if err < 1 else ": the probabilities are noise"),
            f"quantize the Softmax input at int16 (promote {node.name} and its producer), or clamp the scores",
            {"input_range": list(r), "width": w, "int_step": step, "levels_in_window": round(window / step, 2),
             "threshold_width": levels * window / MIN_LEVELS, "max_rel_error": err, "bits": bits,
             "step_source": source}))
    return out


def _mask_magnitude(g: ModelGraph, t: str, ranges: dict[str, tuple[float, float]]) -> float:
    """Largest |value| a mask tensor puts into scores: its calibrated range, else its branch's constants."""
    if t in ranges:
        return max(abs(ranges[t][0]), abs(ranges[t][1]))
    v = g.const_value(t)
    if v is not None:
        return float(np.max(np.abs(v))) if v.size else 0.0
    _, nodes = g.ancestors([t])
    mags = [0.0]
    for name in nodes:
        for i in g.node_by_name[name].input:
            c = g.const_value(i) if i else None
            if c is not None and c.size and np.issubdtype(c.dtype, np.floating):
                mags.append(float(np.max(np.abs(c))))
    return max(mags)


def mask_add(g: ModelGraph, ranges: dict[str, tuple[float, float]], bits: int = 8) -> list[Hazard]:
    """An attention mask (-1e4 or -inf) added/selected into scores whose sum is quantized: the range is
    the mask's, so the scores keep (2^bits - 1) * S / (S + M) levels (S score width, M mask magnitude).
    Fires under MIN_LEVELS levels, i.e. M > S * ((2^bits - 1) / 16 - 1); always for -inf."""
    masks = mask_tensors(g)
    applied = mask_apply(g)  # -inf applied to scores: float in the simulator, a hazard on an int NPU op
    out = []
    levels = 2 ** bits - 1
    for node in g.nodes:
        if node.op_type not in ("Add", "Where") or not node.output or \
                (node.output[0] in masks and node.name not in applied):
            continue
        data = [i for i in node.input[(1 if node.op_type == "Where" else 0):] if i]
        mask = [i for i in data if i in masks or is_mask_constant(g, i)]
        scores = [i for i in data if i not in mask and not g.is_constant(i)]
        if len(mask) != 1 or len(scores) != 1:
            continue
        m = _mask_magnitude(g, mask[0], ranges)
        if m < MASK_MAGNITUDE:
            continue
        r = _range_of(g, ranges, scores[0])
        s = _width(r) if r is not None and all(math.isfinite(v) for v in r) else None
        kept = 0.0 if not math.isfinite(m) else (levels * s / (s + m) if s else None)
        if kept is not None and kept >= MIN_LEVELS:
            continue
        shown = "-inf" if not math.isfinite(m) else f"{m:.3g}"
        if node.name in applied:
            out.append(Hazard(
                "mask_add", node.name, node.output[0],
                f"{node.name} applies a -inf attention mask to scores: int{bits} cannot hold -inf, so qdebug "
                "runs it in float (as an NPU that takes the mask into its fused attention/Softmax does)",
                f"check that the NPU toolkit fuses the mask into attention/Softmax; if it quantizes {node.name}, "
                "replace -inf by a finite constant (e.g. -100) and keep it at int16/fp16",
                {"mask_magnitude": None, "score_width": s, "levels_left": 0.0, "min_levels": MIN_LEVELS,
                 "simulated": "float"}))
            continue
        out.append(Hazard(
            "mask_add", node.name, node.output[0],
            f"{node.name} puts an attention mask of magnitude {shown} into scores"
            + (f" of width {s:.3g}" if s else "") + f": an int{bits} output range set by the mask leaves the "
            f"scores {kept if kept is not None else 0:.2f} of {levels} levels",
            f"keep {node.name} (and the Softmax after it) at int16/fp16, or apply the mask after the Softmax "
            "input is quantized (masked_fill on the NPU's Softmax, or a smaller mask constant such as -100)",
            {"mask_magnitude": m if math.isfinite(m) else None, "score_width": s,
             "levels_left": kept, "min_levels": MIN_LEVELS}))
    return out


def norm_inputs(g: ModelGraph) -> dict[str, str]:
    """Input tensor -> node of every LayerNorm/RMSNorm (fused op or decomposed form): the tensors whose
    per-channel max |x| (last axis) norm_outliers needs."""
    out = {n.input[0]: n.name for n in g.nodes
           if n.op_type in ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization")}
    for f in find_families(g):
        if f.family in ("LayerNormalization", "RMSNormalization"):
            out[f.x] = f.members[0]
    return out


def norm_outliers(g: ModelGraph, channel_absmax: dict[str, np.ndarray], bits: int = 8) -> list[Hazard]:
    """A LayerNorm input where one channel's max |x| dwarfs the others: the per-tensor step is set by the
    outlier, so the median channel spans (2^bits - 1) * median / max levels. Fires under MIN_LEVELS, i.e.
    max / median > (2^bits - 1) / 16 (15.9 at int8)."""
    out = []
    levels = 2 ** bits - 1
    for t, node in norm_inputs(g).items():
        a = channel_absmax.get(t)
        if a is None or np.size(a) < 2:
            continue
        a = np.abs(np.asarray(a, dtype=np.float64)).ravel()
        top, med = float(a.max()), float(np.median(a))
        if top <= 0:
            continue
        kept = levels * med / top
        if kept >= MIN_LEVELS:
            continue
        ch = int(a.argmax())
        out.append(Hazard(
            "norm_outlier", node, t,
            f"{node} input channel {ch} reaches |x| = {top:.4g}, {top / max(med, 1e-30):.1f}x the median "
            f"channel ({med:.3g}): with one int{bits} scale the typical channel keeps {kept:.1f} of {levels} levels",
            f"quantize the input of {node} at int16 (promote its producer), or per channel if the NPU allows",
            {"outlier_channel": ch, "max_abs": top, "median_abs": med, "ratio": top / max(med, 1e-30),
             "levels_left": kept, "threshold_ratio": levels / MIN_LEVELS}))
    return out
