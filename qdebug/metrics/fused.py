"""Metric sums computed inside the onnxruntime graph instead of on exposed activations.

One model holds the float chain, the isolated quantized clones and the cumulative quantized chain (its
tensors renamed `cum::...`). Its outputs are, per compared tensor and Concat part, a few scalars — sum of
squares, min and max of the float value x; for each quantized twin y, the sum of squares of y and the sum
of squares, max and min of x − y — plus the graph outputs (for the detection hook). No activation leaves
onnxruntime: a compare no longer writes ~720 MB of activations per image of the benchmark model into
output arrays and then reads them back, and touches far less memory (docs/benchmarks.md, stop 11). The
scalars feed the same TensorStats as the array path (metrics.engine), so every metric keeps its definition.

The nodes are ordered so the three chains and the reductions advance together, and the session runs them
in model order: appended at the end, the reductions would keep every activation alive until the last one.
Applies when every compared tensor is float32 with a static shape (else the array path runs).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qdebug.graph.model import ModelGraph
from qdebug.graph.parts import PartSpec
from qdebug.metrics.engine import CompareAccumulator
from qdebug.metrics.stats import TensorStats
from qdebug.quant.simulate import ISO

CUM = "cum::"
_P = "qdebug::"  # prefix of every tensor this module adds
X_OPS = ("ReduceSumSquare", "ReduceMin", "ReduceMax")  # sxx, min, max of the float value
D_OPS = ("ReduceSumSquare", "ReduceMax", "ReduceMin")  # sdd, max, min of x - y (after syy)


@dataclass
class Twin:
    """Output names of one comparison's scalars: syy, sdd, max(x − y), min(x − y)."""

    names: list[str]


@dataclass
class Entry:
    """What the fused model reports for one compared tensor or Concat part."""

    size: int  # elements per sample
    x: list[str]  # sxx, min, max (empty when the sums come from `parts`)
    cum: Twin | None = None
    iso: Twin | None = None
    parts: list[tuple[str, str]] = field(default_factory=list)  # a Concat output: the parts that tile it


@dataclass
class FusedLayout:
    """The fused model and where each tensor's and part's scalars are."""

    model: onnx.ModelProto
    tensors: dict[str, Entry] = field(default_factory=dict)
    parts: dict[tuple[str, str], Entry] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    float_outputs: dict[str, str] = field(default_factory=dict)  # graph output -> its float value
    quant_outputs: dict[str, str] = field(default_factory=dict)  # graph output -> its cumulative value
    shape_outputs: dict[str, str] = field(default_factory=dict)  # tensor -> its run-time shape

    def shape_mismatch(self, vals: dict[str, np.ndarray]) -> str | None:
        """The first tensor whose run-time shape differs from the static one the model was built with
        (part slices and element counts come from those), or None."""
        for t, name in self.shape_outputs.items():
            if tuple(int(d) for d in vals[name]) != self.shapes[t]:
                return t
        return None


def static_shapes(g: ModelGraph, tensors: list[str]) -> dict[str, tuple[int, ...]] | None:
    """Shapes of `tensors` when all are float32 and fully known and non-empty (the fused path needs that),
    else None (zero-size tensors, too, take the array path, which skips them)."""
    opset = next((o.version for o in g.model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 11:  # Slice with input positions
        return None
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.nodes for a in n.attribute):
        return None  # subgraphs (If, Loop) refer to outer tensors by name: the renamed chain would break them
    out = {}
    for t in tensors:
        s = g.shapes.get(t)
        if g.elem_types.get(t) != TensorProto.FLOAT or s is None or any(not d for d in s):
            return None
        out[t] = tuple(int(d) for d in s)  # type: ignore[arg-type]
    return out


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.outputs: list[str] = []
        self.n = 0

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{_P}{self.n}:{hint}"

    def node(self, op: str, inputs: list[str], hint: str, **attrs) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def const(self, value: list[int]) -> str:
        nm = self.name("c")
        self.inits.append(numpy_helper.from_array(np.array(value, np.int64), nm))
        return nm

    def reduce(self, op: str, x: str) -> str:
        out = self.node(op, [x], op, keepdims=0)
        self.outputs.append(out)
        return out

    def x_stats(self, x: str) -> list[str]:
        return [self.reduce(op, x) for op in X_OPS]

    def twin(self, x: str, y: str) -> Twin:
        syy = self.reduce("ReduceSumSquare", y)
        d = self.node("Sub", [x, y], "diff")
        return Twin([syy] + [self.reduce(op, d) for op in D_OPS])


def build_fused(g: ModelGraph, amodel: onnx.ModelProto, qmodel: onnx.ModelProto, tensors: list[str],
                iso_map: dict[str, str], qnames: dict[str, str], parts: dict[str, list[PartSpec]],
                shapes: dict[str, tuple[int, ...]]) -> FusedLayout | None:
    """The fused model for `tensors` (None when a Concat part's size is not static).

    `amodel` is the analysis model (float chain + isolated clones, twins named by `iso_map`), `qmodel` the
    cumulative model; `qnames` maps a tensor to its name in `qmodel` where that differs (a quantized graph
    input). Part positions are resolved here, from the static shapes, into the PartSpecs.
    """
    inputs = {i.name for i in g.inputs}
    # initializers both models hold with the same value (the fake-quantized weights, the original
    # constants) are shared instead of copied under a cum:: name
    ainits = {i.name: i for i in amodel.graph.initializer}
    shared = {i.name for i in qmodel.graph.initializer
              if i.name in ainits and ainits[i.name].SerializeToString() == i.SerializeToString()}
    keep = inputs | shared

    def cum(t: str) -> str:
        return t if t in keep else CUM + t

    b = _Builder()
    lay = FusedLayout(onnx.ModelProto(), shapes=shapes)
    # Concat part positions first: a Concat output tiled by its parts gets its sums from theirs (sums over
    # disjoint pieces add up; min and max combine), which saves a pass over it for every twin
    tiled: dict[str, int] = {}  # Concat output -> axis
    for t, specs in parts.items():
        rank = len(shapes[t])
        axis = specs[0].axis % rank
        pos = 0
        for s in specs:
            src = shapes.get(s.source)
            if src is None:
                c = g.const_value(s.source)
                src = tuple(c.shape) if c is not None else None
            if src is None or len(src) != rank:
                return None
            s.axis, s.start, s.stop = axis, pos, pos + int(src[axis])
            pos = s.stop
        if pos != shapes[t][axis]:
            return None
        tiled[t] = axis
    for t in tensors:
        size = int(np.prod(shapes[t]))
        q = qnames.get(t, t)
        has_cum = q != t or t not in inputs  # a graph input left unquantized is the same value in both runs
        if t in tiled:
            e = Entry(size, [], Twin([]) if has_cum else None, Twin([]) if t in iso_map else None)
        else:
            e = Entry(size, b.x_stats(t))
            if has_cum:
                e.cum = b.twin(t, cum(q))
            if t in iso_map:
                e.iso = b.twin(t, iso_map[t])
        lay.tensors[t] = e
        lay.shape_outputs[t] = b.node("Shape", [t], "shape")
    for t, axis in tiled.items():
        whole = lay.tensors[t]
        for s in parts[t]:
            if s.stop <= s.start:
                continue
            where = [b.const([s.start]), b.const([s.stop]), b.const([axis])]
            size = whole.size // shapes[t][axis] * (s.stop - s.start)
            src = lay.tensors.get(s.source)
            if src is not None and src.x:  # the float part is the Concat's input itself: reuse its sums
                xs, e = s.source, Entry(size, src.x)
            else:
                xs = b.node("Slice", [t, *where], "part")
                e = Entry(size, b.x_stats(xs))
            if whole.cum is not None:
                e.cum = b.twin(xs, b.node("Slice", [cum(qnames.get(t, t)), *where], "part"))
            if whole.iso is not None:
                e.iso = b.twin(xs, b.node("Slice", [iso_map[t], *where], "part"))
            lay.parts[(t, s.name)] = e
            whole.parts.append((t, s.name))

    qnodes = []
    for n in qmodel.graph.node:
        nn = onnx.NodeProto()
        nn.CopyFrom(n)
        nn.name = CUM + n.name
        nn.input[:] = [cum(t) if t else t for t in n.input]
        nn.output[:] = [cum(t) if t else t for t in n.output]
        qnodes.append(nn)
    m = lay.model
    m.CopyFrom(amodel)
    gr = m.graph
    ordered = _lockstep(g, [*gr.node, *qnodes, *b.nodes])
    del gr.node[:]
    gr.node.extend(ordered)
    used = {i for n in qmodel.graph.node for i in n.input}
    for init in qmodel.graph.initializer:
        if init.name not in used or init.name in shared:
            continue
        ni = gr.initializer.add()
        ni.CopyFrom(init)
        ni.name = cum(init.name)
    gr.initializer.extend(b.inits)
    del gr.output[:]
    gr.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, []) for o in b.outputs)
    gr.output.extend(helper.make_tensor_value_info(o, TensorProto.INT64, None) for o in lay.shape_outputs.values())
    elem: dict[str, int] = {}
    for o in g.outputs:
        lay.float_outputs[o.name] = o.name
        lay.quant_outputs[o.name] = cum(qnames.get(o.name, o.name))
        elem[o.name] = elem[lay.quant_outputs[o.name]] = g.elem_types.get(o.name, TensorProto.FLOAT)
    for o, t in elem.items():
        gr.output.append(helper.make_tensor_value_info(o, t, None))
    return lay


def _lockstep(g: ModelGraph, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """A topological order in which the float chain, its twins and the reductions advance together.

    Each node gets an anchor: the position of the float node it stands for (its name without the `cum::` or
    isolated prefix), or else the latest anchor among its inputs' producers; among ready nodes the one with
    the smallest anchor goes first, so a tensor's readers follow it closely and it can be freed early.
    """
    index = {n.name: k for k, n in enumerate(g.nodes)}
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    readers: list[list[int]] = [[] for _ in nodes]
    waiting = []
    for k, n in enumerate(nodes):
        deps = {producer[i] for i in n.input if i in producer}
        waiting.append(len(deps))
        for d in deps:
            readers[d].append(k)
    anchor = [-1] * len(nodes)

    def anchor_of(k: int) -> int:
        name = nodes[k].name.removeprefix(CUM).removeprefix(ISO)
        if name in index:
            return index[name]
        return max((anchor[producer[i]] for i in nodes[k].input if i in producer), default=-1)

    heap = []
    for k in range(len(nodes)):
        if waiting[k] == 0:
            anchor[k] = anchor_of(k)
            heap.append((anchor[k], k))
    heapq.heapify(heap)
    out = []
    while heap:
        _, k = heapq.heappop(heap)
        out.append(nodes[k])
        for r in readers[k]:
            waiting[r] -= 1
            if waiting[r] == 0:
                anchor[r] = anchor_of(r)
                heapq.heappush(heap, (anchor[r], r))
    return out if len(out) == len(nodes) else nodes


def add_sample(acc: CompareAccumulator, lay: FusedLayout, vals: dict[str, np.ndarray], sample: str) -> None:
    """Add one run of the fused model to the accumulator (the fused twin of submit + collect).

    A float tensor whose sum of squares is not finite holds NaN or Inf: when a graph output does, the first
    one in topological order raises the graph's one-line error, as on the array path; else (an -Inf attention
    mask) the sample is left out of that tensor's sums and the tensor listed in `acc.nonfinite_float`.
    """
    def read(names: list[str]) -> tuple[float, ...]:
        return tuple(float(vals[n]) for n in names)

    if acc.samples == 0:
        acc._resolved = True  # part positions were fixed when the model was built
        acc.shapes.update(lay.shapes)
    acc.samples += 1
    px = {key: read(e.x) for key, e in lay.parts.items()}
    xs = {}
    bad: dict[str, str] = {}
    for t, e in lay.tensors.items():
        x = _combine([px[k] for k in e.parts], (sum, min, max)) if e.parts else read(e.x)
        sxx, mn, mx = x
        if not np.isfinite(sxx) and (np.isnan(sxx) or not (np.isfinite(mn) and np.isfinite(mx))):
            bad[t] = "NaN" if np.isnan(sxx) else "Inf"
        xs[t] = x
    if bad:
        if any(o.name in bad for o in acc.g.outputs):
            first = next(iter(bad))  # lay.tensors is in topological order
            raise acc.g.nonfinite_error(first, bad[first], sample)
        acc.nonfinite_float.extend(t for t in bad if t not in acc.nonfinite_float)
    for key, e in lay.parts.items():
        if key[0] in bad:
            continue
        _add(acc.part_cum[key], e.size, px[key], read(e.cum.names) if e.cum else None)
        _add(acc.part_iso[key], e.size, px[key], read(e.iso.names) if e.iso else None)
    for t, e in lay.tensors.items():
        if t in bad:
            continue
        for st, twin, kind in ((acc.cum[t], e.cum, "cum"), (acc.iso[t], e.iso, "iso")):
            if twin is None:
                q = None
            elif e.parts:  # syy and sdd add up over the parts, max(x - y) and min(x - y) combine
                q = _combine([read(getattr(lay.parts[k], kind).names) for k in e.parts], (sum, sum, max, min))
            else:
                q = read(twin.names)
            _add(st, e.size, xs[t], q)
        if e.cum is not None and not np.isfinite(acc.cum[t].sdd) and t not in acc.nonfinite_quant:
            acc.nonfinite_quant.append(t)


def _combine(rows: list[tuple[float, ...]], how: tuple) -> tuple[float, ...]:
    """Column-wise sum/min/max of per-part scalars; NaN anywhere stays NaN (Python's min/max would drop it)."""
    cols = list(zip(*rows, strict=True))
    return tuple(float("nan") if any(np.isnan(c)) else f(c) for f, c in zip(how, cols, strict=True))


def _add(st: TensorStats, size: int, x: tuple, q: tuple | None) -> None:
    """One sample's scalars into a TensorStats; no twin (q None) means the quantized value equals the float."""
    sxx, mn, mx = x
    if q is None:
        st.add_sums(size, sxx, sxx, 0.0, None, mn, mx)
        return
    syy, sdd, dmax, dmin = q
    max_abs = float("nan") if np.isnan(sdd) else max(dmax, -dmin)
    st.add_sums(size, sxx, syy, sdd, max_abs, mn, mx)
