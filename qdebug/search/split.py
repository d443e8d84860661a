"""Head split remedy: find the decode tail int8 cannot carry, cut the model before it, prove the cut is exact.

The tail starts at the nodes the hazard analysis names (score/box Concat, stride Mul) and at DFL Softmax
nodes, grows upstream through layout/elementwise ops whose every consumer is already in the tail, then
downstream to the outputs. `model.npu.onnx` ends before it; `model.post.onnx` is the float tail (the CPU
part). Scoring the split quantized = the tail's ops forced to fp32 in the simulator (same math).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qdebug.graph.model import ModelGraph, node_reads
from qdebug.runners.session import OrtSession

TAIL_HAZARDS = ("score_concat", "scale_amplify")  # hazard kinds that mark a decode tail
# ops a decode tail is made of (layout, elementwise, activation); a weighted Conv/MatMul stops the upward walk
DECODE_OPS = {"Concat", "Reshape", "Split", "Transpose", "Slice", "Softmax", "Sigmoid", "Add", "Sub", "Mul",
              "Div", "Gather", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Cast", "Exp", "Tanh"}
MAX_TAIL_FRACTION = 0.5  # a "tail" with more than half the nodes is not a decode tail: no split offered


@dataclass
class HeadSplit:
    """Where the model is cut: the tail's nodes (moved to the CPU), the tensors that cross, what found it."""

    tail: list[str]
    boundary: list[str]
    seeds: list[str]
    reason: str
    constants: list[str] = field(default_factory=list)  # Constant nodes the tail reads (copied into post)


@dataclass
class SplitProof:
    """Float equality of npu -> post against the original on the data samples."""

    max_abs: float
    max_rel: float
    samples: int
    passed: bool


def _dfl_softmax(g: ModelGraph) -> list[str]:
    """Softmax nodes feeding a bias-free 1x1 Conv with a constant [1, R, 1, 1] weight (the DFL projection)."""
    out = []
    for n in g.nodes:
        if n.op_type != "Softmax":
            continue
        for c in g.consumers.get(n.output[0], []):
            if c.op_type == "Conv" and len(c.input) == 2:
                w = g.const_value(c.input[1])
                if w is not None and w.ndim == 4 and w.shape[0] == 1 and w.shape[2:] == (1, 1):
                    out.append(n.name)
    return out


def find_decode_tail(g: ModelGraph, hazards: Iterable[tuple[str, str]]) -> tuple[HeadSplit | None, str]:
    """The decode tail from (kind, node) hazards, or None and the reason there is none."""
    seeds = sorted({node for kind, node in hazards if kind in TAIL_HAZARDS and node in g.node_by_name})
    seeds += [s for s in _dfl_softmax(g) if s not in seeds]
    if not seeds:
        return None, ("no decode tail: the hazard analysis found no score/box Concat, stride Mul or DFL "
                      "Softmax, so the head-split remedy was skipped")
    tail: set[str] = set()
    frontier = set(seeds)
    while frontier:  # alternate: downstream closure, then upstream through decode ops fully owned by the tail
        tail |= g.descendants(frontier)
        frontier = set()
        for name in tail:
            for t in g.node_by_name[name].input:
                p = g.producer.get(t)
                if p is None or p.name in tail or g.is_constant(t) or p.op_type not in DECODE_OPS:
                    continue
                if all(c.name in tail or _shape_only(g, c) for o in p.output if o for c in g.consumers.get(o, [])) \
                        and not any(o in {x.name for x in g.outputs} for o in p.output):
                    frontier.add(p.name)
    if len(tail) > MAX_TAIL_FRACTION * len(g.nodes):
        return None, (f"no decode tail: the ops after the hazards ({len(tail)} of {len(g.nodes)}) are most of the "
                      "model, not a head; the head-split remedy was skipped")
    order = [n.name for n in g.nodes if n.name in tail]
    produced = {o for n in order for o in g.node_by_name[n].output}
    boundary, consts = [], []
    for n in order:
        for t in node_reads(g.node_by_name[n]):
            if not t or t in produced or t in boundary:
                continue
            if g.is_constant(t):
                p = g.producer.get(t)
                if p is not None and _reads_inputs(g, t):
                    if g.const_value(t) is None:  # not foldable here: the NPU part hands it over
                        boundary.append(t)
                    continue  # folded from static shapes (Shape of a feature map): written as a value by split_models
                if p is not None and p.name not in consts:
                    consts.extend(x for x in _const_ancestors(g, t) if x not in consts)
                continue
            boundary.append(t)
    kinds = ", ".join(seeds[:4]) + (" ..." if len(seeds) > 4 else "")
    return HeadSplit(order, boundary, seeds, f"decode tail from {kinds}: {len(order)} ops, "
                                             f"{len(boundary)} tensor(s) cross to the CPU", consts), ""


def _shape_only(g: ModelGraph, node: onnx.NodeProto) -> bool:
    """A consumer that reads only a tensor's shape (Shape, or anything whose outputs fold to constants)."""
    return node.op_type == "Shape" or all(g.is_constant(o) for o in node.output if o)


def _reads_inputs(g: ModelGraph, t: str) -> bool:
    """True when a constant-foldable tensor is computed from a graph input (e.g. the Shape of a feature map)."""
    needed, _ = g.ancestors([t])
    return any(i.name in needed for i in g.inputs)


def _const_ancestors(g: ModelGraph, t: str) -> list[str]:
    """Nodes (in graph order) computing a constant tensor (a Constant, or a small constant subgraph)."""
    _, nodes = g.ancestors([t])
    return [n.name for n in g.nodes if n.name in nodes]


def split_models(g: ModelGraph, sp: HeadSplit) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(model.npu.onnx, model.post.onnx): the NPU part ends at the boundary; the post part is the float tail."""
    tail = set(sp.tail)
    outs = [o.name for o in g.outputs]
    direct = [o for o in outs if g.producer.get(o) is None or g.producer[o].name not in tail]
    npu = g.truncate([*sp.boundary, *direct]).model
    m = onnx.ModelProto()
    m.CopyFrom(g.model)
    gp = m.graph
    keep = set(sp.constants) | tail
    del gp.node[:]
    gp.node.extend(copy.deepcopy(n) for n in g.nodes if n.name in keep)
    reads = {t for n in gp.node for t in node_reads(n)}
    inits = [t for t in g.model.graph.initializer if t.name in reads]
    del gp.initializer[:]
    gp.initializer.extend(inits)
    produced = {o for n in gp.node for o in n.output} | {t.name for t in inits} | set(sp.boundary)
    for t in sorted(reads - produced):  # constants folded from static shapes: their values, not their producers
        v = g.const_value(t)
        if v is not None:
            gp.initializer.append(numpy_helper.from_array(np.asarray(v), t))
    del gp.sparse_initializer[:]
    del gp.input[:]
    for t in sp.boundary:
        elem = g.elem_types.get(t, TensorProto.FLOAT)
        shape = g.shapes.get(t)
        gp.input.append(helper.make_tensor_value_info(t, elem, list(shape) if shape is not None else None))
    by_name = {vi.name: vi for vi in g.model.graph.output}
    del gp.output[:]
    gp.output.extend(by_name[o] for o in outs if o not in direct)
    del gp.value_info[:]
    return npu, m


def prove_split(g: ModelGraph, sp: HeadSplit, samples: Sequence[dict[str, np.ndarray]],
                rtol: float = 1e-5) -> SplitProof:
    """Run npu then post in float on every sample; the outputs must equal the original's within rtol
    of each output's largest magnitude."""
    npu, post = split_models(g, sp)
    s_orig = OrtSession(g.model, source=g.path)
    s_npu, s_post = OrtSession(npu, source=g.path), OrtSession(post, source=g.path)
    worst_abs = worst_rel = 0.0
    for s in samples:
        ref = s_orig.run(s)
        mid = s_npu.run(s)
        got = {**mid, **s_post.run({t: mid[t] if t in mid else s[t] for t in sp.boundary})}
        for o in g.outputs:
            a, b = np.asarray(ref[o.name], dtype=np.float64), np.asarray(got[o.name], dtype=np.float64)
            d = float(np.max(np.abs(a - b))) if a.size else 0.0
            worst_abs = max(worst_abs, d)
            worst_rel = max(worst_rel, d / max(float(np.max(np.abs(a))) if a.size else 0.0, 1e-12))
    return SplitProof(worst_abs, worst_rel, len(samples), worst_rel <= rtol)
