"""Multi-node op families an NPU runs as ONE fused op, found in exported ONNX graphs.

LayerNorm (ReduceMean -> Sub -> Pow/Mul -> ReduceMean -> Add(eps) -> Sqrt -> Div [-> Mul(gamma) -> Add(beta)]),
RMSNorm (Pow -> ReduceMean -> Add(eps) -> Sqrt -> Div(x, .) [-> Mul(gamma)]) and GELU (Erf form
x*0.5*(1+erf(x/sqrt2)) and tanh approximation) are matched here; `graph/fusion.py` turns each match into
one QuantOp quantized at its input and output only. The attention-mask branch (float arithmetic on a
mask derived from int/bool tensors) is found here too: it stays in float. See docs/simulator.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from qdebug.graph.model import ModelGraph

# ops a mask branch is built from: elementwise arithmetic, comparisons, Where, shape moves, Cast
MASK_OPS = {"Cast", "Sub", "Mul", "Add", "Div", "Neg", "Not", "And", "Or", "Equal", "Less", "Greater",
            "LessOrEqual", "GreaterOrEqual", "Where", "Unsqueeze", "Squeeze", "Reshape", "Expand", "Tile",
            "Transpose", "Slice", "Clip", "Min", "Max", "ConstantOfShape"}
SHAPE_MOVES = {"Unsqueeze", "Squeeze", "Reshape", "Expand", "Tile", "Transpose", "Slice", "Flatten", "Identity"}
MASK_MAGNITUDE = 1e3  # a constant this large (or infinite) multiplied/selected into a branch marks a mask


@dataclass
class Family:
    """One matched multi-node unit: members in topological order, its data input and output."""

    family: str  # "LayerNormalization" | "RMSNormalization" | "Gelu"
    label: str  # e.g. "LayerNormalization(decomposed)"
    members: list[str]
    x: str
    y: str


def _cons(g: ModelGraph, t: str) -> list[onnx.NodeProto]:
    """Distinct consumer nodes of a tensor (Mul(d, d) consumes d once)."""
    seen: dict[str, onnx.NodeProto] = {}
    for n in g.consumers.get(t, []):
        seen.setdefault(n.name, n)
    return list(seen.values())


def _only(g: ModelGraph, t: str) -> onnx.NodeProto | None:
    c = _cons(g, t)
    return c[0] if len(c) == 1 and t not in {o.name for o in g.outputs} else None


def _scalar(g: ModelGraph, t: str) -> float | None:
    v = g.const_value(t)
    if v is None or v.size != 1 or not np.issubdtype(v.dtype, np.number):
        return None
    return float(v.reshape(()))


def _near(v: float | None, want: float, tol: float = 2e-3) -> bool:
    return v is not None and abs(v - want) <= tol * max(1.0, abs(want))


def _other(node: onnx.NodeProto, t: str) -> str | None:
    """The other input of a two-input node that consumes t."""
    if len(node.input) != 2 or t not in node.input:
        return None
    return node.input[1] if node.input[0] == t else node.input[0]


def _closed(g: ModelGraph, members: list[str], y: str) -> bool:
    """Every member output except y is consumed only inside the unit (no tensor escapes a fused op)."""
    names = set(members)
    graph_outs = {o.name for o in g.outputs}
    for m in members:
        for o in g.node_by_name[m].output:
            if not o or o == y:
                continue
            if o in graph_outs or any(c.name not in names for c in _cons(g, o)):
                return False
    return True


def _sqrt_chain(g: ModelGraph, t: str, members: list[str]) -> tuple[str, str] | None:
    """From the mean of squares: [Add(eps)] -> Sqrt -> [Add(eps)] [-> Reciprocal]. Returns (tensor, how)
    with how = "std" (divide by it) or "rstd" (multiply by it)."""
    n = _only(g, t)
    if n is not None and n.op_type == "Add" and _scalar(g, _other(n, t) or "") is not None:
        members.append(n.name)
        t = n.output[0]
        n = _only(g, t)
    if n is None or n.op_type != "Sqrt":
        return None
    members.append(n.name)
    t = n.output[0]
    n = _only(g, t)
    if n is not None and n.op_type == "Add" and _scalar(g, _other(n, t) or "") is not None:
        members.append(n.name)
        t = n.output[0]
        n = _only(g, t)
    if n is not None and n.op_type == "Reciprocal":
        members.append(n.name)
        return n.output[0], "rstd"
    return t, "std"


def _normalize(g: ModelGraph, d: str, s: str, how: str) -> onnx.NodeProto | None:
    """The Div(d, std) or Mul(d, rstd) node that applies the statistics to d."""
    n = _only(g, s)
    if n is None:
        return None
    if how == "std" and n.op_type == "Div" and list(n.input) == [d, s]:
        return n
    if how == "rstd" and n.op_type == "Mul" and set(n.input) == {d, s}:
        return n
    return None


def _affine_tail(g: ModelGraph, t: str, members: list[str], beta: bool) -> str:
    """Optional Mul(gamma) [-> Add(beta)] by constants after the normalization."""
    n = _only(g, t)
    if n is not None and n.op_type == "Mul" and g.const_value(_other(n, t) or "") is not None:
        members.append(n.name)
        t = n.output[0]
        n = _only(g, t)
    if beta and n is not None and n.op_type == "Add" and g.const_value(_other(n, t) or "") is not None:
        members.append(n.name)
        t = n.output[0]
    return t


def _square_of(g: ModelGraph, n: onnx.NodeProto) -> str | None:
    """The tensor squared by Pow(t, 2) or Mul(t, t)."""
    if n.op_type == "Pow" and len(n.input) == 2 and _near(_scalar(g, n.input[1]), 2.0, 1e-6):
        return n.input[0]
    if n.op_type == "Mul" and len(n.input) == 2 and n.input[0] == n.input[1]:
        return n.input[0]
    return None


def _match_layernorm(g: ModelGraph, rm1: onnx.NodeProto) -> Family | None:
    x, mean = rm1.input[0], rm1.output[0]
    sub = _only(g, mean)
    if sub is None or sub.op_type != "Sub" or list(sub.input) != [x, mean]:
        return None
    d = sub.output[0]
    cons = _cons(g, d)
    sq = next((c for c in cons if _square_of(g, c) == d), None)
    if sq is None or len(cons) != 2:
        return None
    members = [rm1.name, sub.name, sq.name]
    rm2 = _only(g, sq.output[0])
    if rm2 is None or rm2.op_type != "ReduceMean":
        return None
    members.append(rm2.name)
    chain = _sqrt_chain(g, rm2.output[0], members)
    if chain is None:
        return None
    norm = _normalize(g, d, *chain)
    if norm is None or norm.name not in {c.name for c in cons}:
        return None
    members.append(norm.name)
    y = _affine_tail(g, norm.output[0], members, beta=True)
    return _family(g, "LayerNormalization", members, x, y)


def _match_rmsnorm(g: ModelGraph, sq: onnx.NodeProto) -> Family | None:
    x = _square_of(g, sq)
    if x is None or g.is_constant(x):
        return None
    rm = _only(g, sq.output[0])
    if rm is None or rm.op_type != "ReduceMean":
        return None
    members = [sq.name, rm.name]
    chain = _sqrt_chain(g, rm.output[0], members)
    if chain is None:
        return None
    norm = _normalize(g, x, *chain)
    if norm is None:
        return None
    members.append(norm.name)
    y = _affine_tail(g, norm.output[0], members, beta=False)
    return _family(g, "RMSNormalization", members, x, y)


def _gelu_tail(g: ModelGraph, x: str, t: str, members: list[str]) -> str | None:
    """After 1 + erf(.)/tanh(.): the Muls by x and by 0.5 in either order (or by a Mul(x, 0.5))."""
    used_x = half = False
    for _ in range(2):
        n = _only(g, t)
        if n is None or n.op_type != "Mul":
            return None
        o = _other(n, t)
        if o is None:
            return None
        if o == x and not used_x:
            used_x = True
        elif _near(_scalar(g, o), 0.5, 1e-6) and not half:
            half = True
        else:
            h = g.producer.get(o)
            if (used_x or half or h is None or h.op_type != "Mul" or x not in h.input
                    or not _near(_scalar(g, _other(h, x) or ""), 0.5, 1e-6)):
                return None
            members.append(h.name)
            used_x = half = True
        members.append(n.name)
        t = n.output[0]
        if used_x and half:
            return t
    return None


def _match_gelu_erf(g: ModelGraph, erf: onnx.NodeProto) -> Family | None:
    s = g.producer.get(erf.input[0])
    if s is None or s.op_type not in ("Div", "Mul") or len(s.input) != 2:
        return None
    if s.op_type == "Div":
        x, c = s.input[0], _scalar(g, s.input[1])
        ok = _near(c, math.sqrt(2.0))
    else:
        x = next((i for i in s.input if _scalar(g, i) is None), s.input[0])
        ok = _near(_scalar(g, _other(s, x) or ""), 1.0 / math.sqrt(2.0))
    one = _only(g, erf.output[0])
    if not ok or one is None or one.op_type != "Add" or not _near(_scalar(g, _other(one, erf.output[0]) or ""), 1.0):
        return None
    members = [s.name, erf.name, one.name]
    y = _gelu_tail(g, x, one.output[0], members)
    return _family(g, "Gelu", members, x, y) if y else None


def _match_gelu_tanh(g: ModelGraph, th: onnx.NodeProto) -> Family | None:
    """0.5*x*(1 + tanh(sqrt(2/pi) * (x + 0.044715*x^3)))."""
    k = g.producer.get(th.input[0])
    if k is None or k.op_type != "Mul":
        return None
    u = next((i for i in k.input if _scalar(g, i) is None), None)
    if u is None or not _near(_scalar(g, _other(k, u) or ""), math.sqrt(2.0 / math.pi)):
        return None
    add = g.producer.get(u)
    if add is None or add.op_type != "Add" or len(add.input) != 2:
        return None
    for x in add.input:
        c3 = g.producer.get(_other(add, x) or "")
        if c3 is None or c3.op_type != "Mul":
            continue
        p_t = next((i for i in c3.input if _scalar(g, i) is None), None)
        if p_t is None or not _near(_scalar(g, _other(c3, p_t) or ""), 0.044715):
            continue
        cube = g.producer.get(p_t)
        extra: list[str] = []
        if cube is not None and cube.op_type == "Pow" and cube.input[0] == x and \
                _near(_scalar(g, cube.input[1]), 3.0, 1e-6):
            pass
        elif cube is not None and cube.op_type == "Mul" and x in cube.input:
            sq = g.producer.get(_other(cube, x) or "")
            if sq is None or _square_of(g, sq) != x:
                continue
            extra = [sq.name]
        else:
            continue
        one = _only(g, th.output[0])
        if one is None or one.op_type != "Add" or not _near(_scalar(g, _other(one, th.output[0]) or ""), 1.0):
            return None
        members = [*extra, cube.name, c3.name, add.name, k.name, th.name, one.name]
        y = _gelu_tail(g, x, one.output[0], members)
        return _family(g, "Gelu", members, x, y) if y else None
    return None


def _family(g: ModelGraph, family: str, members: list[str], x: str, y: str) -> Family | None:
    if len(set(members)) != len(members) or not _closed(g, members, y):
        return None
    members = sorted(members, key=lambda m: g.index_of[m])
    return Family(family, f"{family}(decomposed)", members, x, y)


def find_families(g: ModelGraph) -> list[Family]:
    """Every decomposed LayerNorm / RMSNorm / GELU of the graph (a node belongs to at most one)."""
    out: list[Family] = []
    used: set[str] = set()
    matchers = [("ReduceMean", _match_layernorm), ("Erf", _match_gelu_erf), ("Tanh", _match_gelu_tanh),
                ("Pow", _match_rmsnorm), ("Mul", _match_rmsnorm)]
    for op_type, match in matchers:  # LayerNorm first: its Pow(d, 2) must not start an RMSNorm
        for node in g.nodes:
            if node.op_type != op_type or node.name in used:
                continue
            fam = match(g, node)
            if fam is not None and not used.intersection(fam.members):
                out.append(fam)
                used.update(fam.members)
    return sorted(out, key=lambda f: g.index_of[f.members[0]])


def is_mask_constant(g: ModelGraph, t: str) -> bool:
    """`t` is a float constant holding a huge (|c| >= MASK_MAGNITUDE) or infinite value: a mask's."""
    v = g.const_value(t) if t else None
    return v is not None and v.size > 0 and np.issubdtype(v.dtype, np.floating) and \
        float(np.max(np.abs(v))) >= MASK_MAGNITUDE


def _is_mask_scale(g: ModelGraph, node: onnx.NodeProto) -> bool:
    """A Mul/Where/Add/Sub putting a mask constant into a branch."""
    return node.op_type in ("Mul", "Where", "Add", "Sub") and any(is_mask_constant(g, i) for i in node.input)


def _mask_chain(g: ModelGraph, seeds: set[str]) -> set[str]:
    """Tensors of MASK_OPS chains grown from `seeds` that lead to or come from a mask-sized constant."""
    got = set(seeds)
    chain: list[onnx.NodeProto] = []
    for n in g.nodes:  # topological: grow the mask-op chains from the seeds
        data = [i for i in n.input if i and not g.is_constant(i)]
        if n.op_type in MASK_OPS and data and all(i in got for i in data):
            got.update(o for o in n.output if o)
            chain.append(n)
    down: set[str] = set()
    for n in chain:  # the scale node and everything computed from it
        if _is_mask_scale(g, n) or any(i in down for i in n.input):
            down.update(o for o in n.output if o)
    up: set[str] = set()
    for n in reversed(chain):  # everything the scale node is computed from
        if _is_mask_scale(g, n) or any(o in up for o in n.output):
            up.update(i for i in n.input if i and i in got)
    return down | up


def mask_tensors(g: ModelGraph) -> set[str]:
    """Float tensors of attention-mask branches: chains of MASK_OPS fed only by int/bool tensors (a mask
    input, a shape-derived causal mask) or by a float input, that apply a mask-sized constant
    ((1 - mask) * -10000, where(mask, 0, -inf)); the tensors before and after that constant in the chain.
    They stay in float. The Add that applies a finite mask to scores is quantized; scores an infinite mask
    was applied to (mask_apply) are mask tensors too. A normalized u8 image (Cast, Sub, Div: no mask-sized
    constant) is not a mask."""
    masks = _branch_masks(g)
    return masks | _inf_applied(g, masks)[1]


def mask_apply(g: ModelGraph) -> set[str]:
    """Nodes applying an infinite mask to scores (Add of where(mask, 0, -inf), masked_fill(-inf)): int
    cannot hold -inf, so they stay float as in an NPU's fused attention (the scores keep their producer's
    quantization); the mask_add hazard still names them."""
    return _inf_applied(g, _branch_masks(g))[0]


def _branch_masks(g: ModelGraph) -> set[str]:
    """The mask-branch tensors of mask_tensors (without the scores an infinite mask was applied to)."""
    graph_in = {i.name for i in g.inputs}
    ints = {t for t in [*graph_in, *g.producer] if t and not g.is_constant(t) and not g.is_float(t)}
    keep = _mask_chain(g, ints | graph_in)
    # a float input is a mask only when it lies BEFORE the mask constant (scores added after it are not)
    keep = _mask_chain(g, ints | (graph_in & keep))
    # a float mask input counts when only mask arithmetic reads it (never an image fed to a Conv)
    return {t for t in keep if g.is_float(t)
            and (t not in graph_in or all(c.op_type in MASK_OPS for c in _cons(g, t)))}


def _is_inf(g: ModelGraph, t: str) -> bool:
    v = g.const_value(t) if t else None
    return v is not None and v.size > 0 and np.issubdtype(v.dtype, np.floating) and bool(np.isinf(v).any())


def _inf_applied(g: ModelGraph, masks: set[str]) -> tuple[set[str], set[str]]:
    """(apply nodes, their outputs and shape moves of those): Add(scores, m) with m a mask holding -inf (or
    an infinite constant), Where(cond, scores, -inf) / Where(cond, -inf, scores) (masked_fill)."""
    inf_masks: set[str] = set()
    nodes: set[str] = set()
    out: set[str] = set()
    for n in g.nodes:  # topological: -inf masks first, then where they meet the scores
        outs = [o for o in n.output if o]
        if not outs:
            continue
        if all(o in masks for o in outs):
            if any(i in inf_masks or _is_inf(g, i) for i in n.input if i):
                inf_masks.update(outs)
            continue
        data = [i for i in n.input if i and not g.is_constant(i)]
        if n.op_type in SHAPE_MOVES and data and all(i in out for i in data):
            out.update(outs)  # e.g. a Reshape between the masked Add and the Softmax
            continue
        vals = list(n.input[1:]) if n.op_type == "Where" else list(n.input)
        if n.op_type not in ("Add", "Where") or len(vals) != 2:
            continue
        inf = [i for i in vals if i in inf_masks or _is_inf(g, i)]
        scores = [i for i in vals if i not in inf and i not in masks and not g.is_constant(i)]
        if len(inf) == 1 and len(scores) == 1:
            nodes.add(n.name)
            out.update(outs)
    return nodes, out

