"""Group ONNX nodes into the ops an NPU actually quantizes (fuse first, then quantize).

A QuantOp is one quantized unit: a Conv/MatMul with its bias Add, BatchNorm, constant Mul/Div and
activation (SiLU as Sigmoid+Mul included), a decomposed LayerNorm/RMSNorm/GELU (graph/families.py), or a
single op. Range-preserving ops (Reshape, Split, MaxPool...) are "passthrough": they carry their input's
quantization and add none of their own. Attention-mask branches stay in float. See docs/simulator.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from qdebug.graph.families import find_families, mask_tensors
from qdebug.graph.model import ModelGraph

WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
FUSABLE_ACT = {"Relu", "LeakyRelu", "Clip", "HardSwish", "PRelu", "Elu", "Relu6"}
PASSTHROUGH = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Split", "Slice", "Gather",
               "Identity", "MaxPool", "Pad", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "Dropout",
               "GlobalMaxPool", "ReduceMax", "ReduceMin", "Cast"}
COMPUTE = WEIGHTED | FUSABLE_ACT | {
    "Add", "Sub", "Mul", "Div", "Sigmoid", "Softmax", "LogSoftmax", "Concat", "AveragePool",
    "GlobalAveragePool", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Exp", "Log", "Tanh", "HardSigmoid",
    "BatchNormalization", "InstanceNormalization", "LayerNormalization", "Erf", "Gelu", "Resize", "Neg",
    "Abs", "Min", "Max", "Where", "Sum", "Mean", "Reciprocal", "Softplus", "Mish", "Selu", "Einsum",
    "Upsample", "Celu", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "CumSum", "Mod",
    "ReduceL2", "ReduceL1", "ReduceSumSquare", "LpNormalization", "RMSNormalization",
}


@dataclass
class QuantOp:
    """One quantized unit of the graph (a fused group of ONNX nodes or a single node)."""

    key: str  # the precision-map key: the first (anchor) node name, or the graph input name
    nodes: list[str]
    op_type: str  # anchor op type, with the fused pattern, e.g. "Conv+SiLU"
    kind: str  # "compute" | "passthrough" | "float" (unsupported, left in float) | "input" | "const"
    outputs: list[str]  # float output tensors of the group (quantized at "output" profiles)
    inputs: list[tuple[str, int, str]] = field(default_factory=list)  # (member node, input idx, tensor)
    weighted: list[str] = field(default_factory=list)  # member nodes with a constant weight input
    index: int = 0  # topological position of the anchor
    family: str = ""  # the op type a profile sees when not the anchor's: "LayerNormalization", "mask"...

    @property
    def base_type(self) -> str:
        """The op type profiles and rules look up: the family of a fused unit, else the anchor op type."""
        return self.family or self.op_type.split("+")[0]

    @property
    def quantizable(self) -> bool:
        """True for the ops that own a quantization point (computing ops and graph inputs); the one home of
        this rule for the simulator, search, vendor formats and compare."""
        return self.kind in ("compute", "input")

    def to_json(self) -> dict:
        return {"key": self.key, "nodes": self.nodes, "op_type": self.op_type, "kind": self.kind,
                "outputs": self.outputs, "inputs": [t for _, _, t in self.inputs]}


def _single_consumer(g: ModelGraph, tensor: str) -> onnx.NodeProto | None:
    cons = g.consumers.get(tensor, [])
    graph_outs = {o.name for o in g.outputs}
    if len(cons) == 1 and tensor not in graph_outs:
        return cons[0]
    return None


def _is_const_scale(g: ModelGraph, node: onnx.NodeProto, data: str) -> bool:
    if node.op_type not in ("Mul", "Div") or len(node.input) != 2:
        return False
    other = node.input[1] if node.input[0] == data else node.input[0]
    if node.op_type == "Div" and node.input[0] != data:
        return False
    v = g.const_value(other)
    return v is not None and v.size <= 4096


def _is_bias_add(g: ModelGraph, node: onnx.NodeProto, data: str) -> bool:
    """Add of a constant with at most one non-1 dim, the last: a MatMul's bias (not a [S, S] causal mask)."""
    if node.op_type != "Add" or len(node.input) != 2 or data not in node.input:
        return False
    v = g.const_value(node.input[1] if node.input[0] == data else node.input[0])
    return v is not None and all(d == 1 for d in v.shape[:-1])


def weight_input(g: ModelGraph, node: onnx.NodeProto) -> int | None:
    """Index of the input quantized as a weight: a Conv/Gemm/MatMul constant B, an embedding table
    (Gather on constant float data), a BatchNormalization's scale; None when the op has no weight."""
    if node.op_type in WEIGHTED and len(node.input) > 1 and g.const_value(node.input[1]) is not None:
        return 1
    if node.op_type == "Gather" and _is_embedding(g, node):
        return 0
    if node.op_type == "BatchNormalization" and all(g.const_value(i) is not None for i in node.input[1:5]):
        return 1
    return None


def _is_embedding(g: ModelGraph, node: onnx.NodeProto) -> bool:
    v = g.const_value(node.input[0])
    return (v is not None and np.issubdtype(v.dtype, np.floating) and len(node.input) > 1
            and not g.is_constant(node.input[1]) and not g.is_float(node.input[1]))


def _fuse_chain(g: ModelGraph, anchor: onnx.NodeProto, taken: set[str]) -> tuple[list[str], str]:
    """Nodes absorbed after a weighted anchor and the fused pattern label."""
    members = [anchor.name]
    label = anchor.op_type
    cur = anchor.output[0]
    nxt = _single_consumer(g, cur)
    if nxt is not None and nxt.name not in taken and _is_bias_add(g, nxt, cur):
        members.append(nxt.name)
        label += "+Add(bias)"
        cur = nxt.output[0]
        nxt = _single_consumer(g, cur)
    if nxt is not None and nxt.op_type == "BatchNormalization" and nxt.name not in taken:
        members.append(nxt.name)
        label += "+BN"
        cur = nxt.output[0]
        nxt = _single_consumer(g, cur)
    if nxt is not None and nxt.name not in taken and _is_const_scale(g, nxt, cur):
        members.append(nxt.name)
        label += f"+{nxt.op_type}(const)"
        cur = nxt.output[0]
        nxt = _single_consumer(g, cur)
        if nxt is not None and nxt.name not in taken and _is_bias_add(g, nxt, cur):  # x*a + b folds into the op
            members.append(nxt.name)
            label += "+Add(const)"
            cur = nxt.output[0]
            nxt = _single_consumer(g, cur)
    if nxt is not None and nxt.op_type in FUSABLE_ACT and nxt.name not in taken:
        members.append(nxt.name)
        label += f"+{nxt.op_type}"
        return members, label
    swish = _swish_after(g, cur, taken) or _hardswish_after(g, cur, taken)
    if swish:
        members.extend(swish[0])
        label += swish[1]
    return members, label


def _swish_after(g: ModelGraph, x: str, taken: set[str]) -> tuple[list[str], str] | None:
    """x -> Sigmoid/HardSigmoid -> Mul(x, sig): the exported SiLU/HardSwish pattern."""
    if x in {o.name for o in g.outputs}:
        return None
    cons = g.consumers.get(x, [])
    if len(cons) != 2:
        return None
    sig = next((c for c in cons if c.op_type in ("Sigmoid", "HardSigmoid")), None)
    mul = next((c for c in cons if c.op_type == "Mul"), None)
    if sig is None or mul is None or sig.name in taken or mul.name in taken:
        return None
    if set(mul.input) != {x, sig.output[0]} or len(g.consumers.get(sig.output[0], [])) != 1:
        return None
    return [sig.name, mul.name], ("+SiLU" if sig.op_type == "Sigmoid" else "+HardSwish")


def _const_is(g: ModelGraph, node: onnx.NodeProto, data: str, value: float) -> bool:
    other = [i for i in node.input if i and i != data]
    v = g.const_value(other[0]) if len(other) == 1 else None
    return v is not None and v.size == 1 and abs(float(v.ravel()[0]) - value) < 1e-6


def _hardswish_after(g: ModelGraph, x: str, taken: set[str]) -> tuple[list[str], str] | None:
    """x -> Add(3) -> Clip(0, 6) -> Mul(x, .) -> Div(6) or Mul(1/6): HardSwish as paddle2onnx writes it, one
    activation on the NPU (rknn-toolkit2 lists it as one HardSwish op after the conv)."""
    cons = g.consumers.get(x, [])
    if x in {o.name for o in g.outputs} or len(cons) != 2:
        return None
    add = next((c for c in cons if c.op_type == "Add" and _const_is(g, c, x, 3.0)), None)
    mul = next((c for c in cons if c.op_type == "Mul"), None)
    clip = _single_consumer(g, add.output[0]) if add is not None else None
    if add is None or mul is None or clip is None or clip.op_type != "Clip":
        return None
    bounds = [g.const_value(i) for i in clip.input[1:3] if i]
    if len(bounds) != 2 or any(b is None for b in bounds) or [float(b.ravel()[0]) for b in bounds] != [0.0, 6.0]:
        return None
    if set(mul.input) != {x, clip.output[0]}:
        return None
    div = _single_consumer(g, mul.output[0])
    if div is None or not ((div.op_type == "Div" and div.input[0] == mul.output[0]
                            and _const_is(g, div, mul.output[0], 6.0))
                           or (div.op_type == "Mul" and _const_is(g, div, mul.output[0], 1.0 / 6.0))):
        return None
    names = [add.name, clip.name, mul.name, div.name]
    return (names, "+HardSwish") if not taken.intersection(names) else None


def build_quant_ops(g: ModelGraph, fuse: bool = True) -> list[QuantOp]:
    """Partition the graph into QuantOps in topological order (graph inputs first)."""
    ops: list[QuantOp] = []
    masks = mask_tensors(g)
    for inp in g.inputs:
        if inp.elem_type in (1, 10, 11, 16) and inp.name not in masks:
            ops.append(QuantOp(inp.name, [], "Input", "input", [inp.name], index=-1))
    families = {f.members[0]: f for f in find_families(g)} if fuse else {}
    taken: set[str] = {m for f in families.values() for m in f.members}  # no chain may absorb a member
    for idx, node in enumerate(g.nodes):
        fam = families.get(node.name)
        if fam is None and node.name in taken:
            continue
        float_outs = [o for o in node.output if o and not g.is_constant(o) and g.is_float(o)]
        if not float_outs:
            taken.add(node.name)
            continue
        members, label, family = [node.name], node.op_type, ""
        if fam is not None:
            members, label, family = fam.members, fam.label, fam.family
        elif all(o in masks for o in float_outs):  # attention-mask arithmetic: float by rule
            family = "mask"
        elif node.op_type in ("LayerNormalization", "Gelu", "RMSNormalization"):
            family = node.op_type  # the fused op and its decomposed form are the same unit
        elif fuse and node.op_type in WEIGHTED:
            members, label = _fuse_chain(g, node, taken)
        elif fuse and node.op_type in ("Sigmoid", "HardSigmoid"):
            x = node.input[0]
            sw = _swish_after(g, x, taken)
            if sw and sw[0][0] == node.name:
                members, label = sw[0], sw[1].lstrip("+")
        taken.update(members)
        if family == "mask":
            kind = "float"
        elif fam is not None:
            kind = "compute"
        elif node.op_type == "Gather" and _is_embedding(g, node):
            kind, label = "compute", "Gather(embedding)"  # the table is a weight; the output is quantized
        elif node.op_type in PASSTHROUGH:
            kind = "passthrough"
        elif node.op_type in COMPUTE:
            kind = "compute"
            if node.op_type in ("Resize", "Upsample") and _resize_nearest(node):
                kind = "passthrough"
        else:
            kind = "float"
        last = g.node_by_name[members[-1]]
        outputs = [o for o in last.output if o and g.is_float(o) and not g.is_constant(o)]
        member_outs = {o for m in members for o in g.node_by_name[m].output}
        inputs = []
        weighted = []
        for m in members:
            mn = g.node_by_name[m]
            for k, t in g.non_const_inputs(mn):
                # a mask is never quantized; a fused unit reading x twice (LayerNorm) has ONE input x
                if t not in member_outs and g.is_float(t) and t not in masks and \
                        not (fam is not None and any(t == u for _, _, u in inputs)):
                    inputs.append((m, k, t))
            standalone_bn = mn.op_type == "BatchNormalization" and m == members[0]
            if weight_input(g, mn) is not None and (mn.op_type != "BatchNormalization" or standalone_bn):
                weighted.append(m)
        ops.append(QuantOp(members[0], members, label, kind, outputs, inputs, weighted, idx, family))
    return ops


def _resize_nearest(node: onnx.NodeProto) -> bool:
    for a in node.attribute:
        if a.name == "mode":
            return a.s in (b"nearest",)
    return True  # default mode is nearest


def group_of(ops: list[QuantOp]) -> dict[str, QuantOp]:
    """Map every member node name (and graph input name) to its QuantOp."""
    out: dict[str, QuantOp] = {}
    for op in ops:
        out[op.key] = op
        for n in op.nodes:
            out[n] = op
    return out
