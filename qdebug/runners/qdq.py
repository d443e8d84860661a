"""Bring your own quantized model: a QDQ ONNX model from any quantizer, matched to the float model's tensors.

The quantized value of a float tensor T is the output of the DequantizeLinear that replaces it (found through
its QuantizeLinear/DequantizeLinear pair, also when the quantizer renamed T to `T_QuantizeLinear_Input`,
`T_QuantizeLinear_Output` or `T_DequantizeLinear_Output`), else T itself when the QDQ model kept it.
Promoting an op removes the pairs around it and gives it back its float weights (docs/quantized.md).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qdebug.errors import ModelError
from qdebug.graph.fusion import QuantOp
from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import Precision, QuantConfig
from qdebug.quant.simulate import SimPlan
from qdebug.runners.base import register_backend
from qdebug.runners.session import OrtSession
from qdebug.runners.sim import SimBackend

SUFFIXES = ("_QuantizeLinear_Input", "_QuantizeLinear_Output", "_DequantizeLinear_Output")
QOPS = ("QuantizeLinear", "DequantizeLinear")
ISO = "iso::"  # prefix of the isolated twins (as the built-in simulator names them)
MIN_MATCHED = 0.5  # below this share of matched float tensors the QDQ model is another model
INT16 = {TensorProto.INT16, TensorProto.UINT16}


def base_name(tensor: str) -> str:
    """The float tensor a quantizer-renamed tensor stands for (`T_DequantizeLinear_Output` -> `T`)."""
    for s in SUFFIXES:
        if tensor.endswith(s):
            return tensor[: -len(s)]
    return tensor


@dataclass
class Pair:
    """One activation QuantizeLinear -> DequantizeLinear pair: `pre` is quantized, `post` replaces it."""

    q: onnx.NodeProto
    dq: onnx.NodeProto

    @property
    def pre(self) -> str:
        return self.q.input[0]

    @property
    def post(self) -> str:
        return self.dq.output[0]


@dataclass
class QdqMatch:
    """How a QDQ model maps onto the float model: tensors, pairs and quantized ops (keyed by float node)."""

    qgraph: ModelGraph
    tensor: dict[str, str] = field(default_factory=dict)  # float tensor -> QDQ tensor holding its value
    pair_of: dict[str, Pair] = field(default_factory=dict)  # float tensor -> its activation pair
    unmatched: list[str] = field(default_factory=list)
    ops: dict[str, str] = field(default_factory=dict)  # float node (op key) -> QDQ node, for quantized ops
    outputs: dict[str, list[str]] = field(default_factory=dict)  # op key -> float tensor of each QDQ output
    members: dict[str, list[str]] = field(default_factory=dict)  # op key -> float nodes the QDQ node covers
    precision: dict[str, Precision] = field(default_factory=dict)  # op key -> INT8 / INT16
    weight_dq: dict[str, onnx.NodeProto] = field(default_factory=dict)  # DQ output -> DQ node of a constant


def _pairs(qg: ModelGraph) -> list[Pair]:
    out = []
    for n in qg.nodes:
        if n.op_type == "QuantizeLinear":
            out += [Pair(n, c) for c in qg.consumers.get(n.output[0], []) if c.op_type == "DequantizeLinear"]
    return out


def _bits(qg: ModelGraph, p: Pair) -> Precision:
    zp = p.q.input[2] if len(p.q.input) > 2 and p.q.input[2] else ""
    return Precision.INT16 if zp and qg.elem_types.get(zp) in INT16 else Precision.INT8


def match_qdq(graph: ModelGraph, qgraph: ModelGraph) -> QdqMatch:
    """Match every float tensor and quantized op of `qgraph` (a QDQ model) to `graph` (the float model)."""
    m = QdqMatch(qgraph)
    by_base: dict[str, Pair] = {}
    for p in _pairs(qgraph):
        for name in (p.pre, p.post, p.q.output[0]):
            by_base.setdefault(base_name(name), p)
    for n in qgraph.nodes:
        if n.op_type == "DequantizeLinear" and qgraph.is_constant(n.input[0]):
            m.weight_dq[n.output[0]] = n
    qtensors = set(qgraph.producer) | {i.name for i in qgraph.inputs}
    for t in [i.name for i in graph.inputs] + graph.activation_tensors():
        p = by_base.get(t)
        if p is not None:
            m.tensor[t], m.pair_of[t] = p.post, p
        elif t in qtensors and not (t in qgraph.producer and qgraph.producer[t].op_type == "QuantizeLinear"):
            m.tensor[t] = t
        else:
            m.unmatched.append(t)
            continue
        fs, qs = graph.shapes.get(t), qgraph.shapes.get(m.tensor[t])
        if fs and qs and None not in fs and None not in qs and tuple(fs) != tuple(qs):  # same name, other tensor
            del m.tensor[t]
            m.pair_of.pop(t, None)
            m.unmatched.append(t)
    posts = {p.post: p for p in m.pair_of.values()}
    pres = {p.pre: p for p in m.pair_of.values()}
    pre_float = {p.pre: t for t, p in m.pair_of.items()}
    for n in qgraph.nodes:
        if n.op_type in QOPS or all(qgraph.is_constant(o) for o in n.output if o):
            continue
        ins = [posts[i] for i in n.input if i in posts]
        outs = [pres[o] for o in n.output if o in pres]
        if not (ins or outs or any(i in m.weight_dq for i in n.input)):
            continue
        # the float tensor of each output: through its pair, else by name (a fused Conv+Relu writes the Relu's)
        fouts = [pre_float.get(o) or (base_name(o) if base_name(o) in graph.producer else "") for o in n.output]
        f = graph.node_by_name.get(n.name)
        if f is None or f.op_type != n.op_type:
            f = next((graph.producer[t] for t in fouts if t in graph.producer
                      and graph.producer[t].op_type == n.op_type), None)
        if f is None or len(f.output) != len(n.output):
            continue
        m.ops[f.name] = n.name
        m.outputs[f.name] = [t or f.output[k] for k, t in enumerate(fouts)]
        m.members[f.name] = _chain(graph, f, m.outputs[f.name])
        m.precision[f.name] = _bits(qgraph, (outs or ins)[0]) if outs or ins else Precision.INT8
    for i in graph.inputs:
        if i.name in m.pair_of:
            m.precision[i.name] = _bits(qgraph, m.pair_of[i.name])
    return m


def _chain(graph: ModelGraph, anchor: onnx.NodeProto, outs: list[str]) -> list[str]:
    """Float nodes from `anchor` to the producers of `outs` (the ops a quantizer fused into one node)."""
    members = [anchor.name]
    for t in outs:
        node, path = graph.producer.get(t), []
        while node is not None and node.name != anchor.name and len(path) < 8:
            path.append(node.name)
            data = [i for i in node.input if i and not graph.is_constant(i)]
            node = graph.producer.get(data[0]) if data else None
        if node is not None and node.name == anchor.name:
            members += [p for p in reversed(path) if p not in members]
    return members


def check_match(graph: ModelGraph, m: QdqMatch, path: str) -> None:
    """Refuse a QDQ model that is not a quantization of this float model (one line, nothing run)."""
    qins = {i.name for i in m.qgraph.inputs}
    missing_in = [i.name for i in graph.inputs if i.name not in qins]
    missing_out = [o.name for o in graph.outputs if o.name in m.unmatched]
    total = len(graph.inputs) + len(graph.activation_tensors())
    few = total and (total - len(m.unmatched)) < MIN_MATCHED * total
    if missing_in or missing_out or few or not m.ops:
        names = list(dict.fromkeys(missing_in + missing_out + m.unmatched))[:3]
        raise ModelError(f"the quantized model does not match the float model {graph.path}: "
                         f"{len(m.unmatched)} of {total} tensors not found or of another shape (e.g. {', '.join(names) or 'no quantized op'})",
                         file=path, where="--quantized",
                         fix="pass the QDQ model quantized from this float model (same input and tensor names)")


def _promoted(ops: Sequence[QuantOp], config: QuantConfig) -> set[str]:
    """Op keys the config promotes: any override on the op or a member node (a QDQ op is promoted to float)."""
    return {op.key for op in ops if any(n in config.overrides for n in [op.key, *op.nodes])}


def promote(graph: ModelGraph, m: QdqMatch, keys: Iterable[str]) -> onnx.ModelProto:
    """The QDQ model with the ops `keys` (float node names or graph inputs) back in float.

    The pair on an op's output (or on a promoted graph input) becomes an Identity, so every consumer sees the
    float value; the op's own input edges skip their pairs (pairs left without consumers are dropped); its
    constant inputs fed by a DequantizeLinear take the float model's constant of the same input slot.
    """
    model = copy.deepcopy(m.qgraph.model)
    gr = model.graph
    nodes = {n.name: n for n in gr.node}
    posts = {p.post: p for p in m.pair_of.values()}
    for key in keys:
        if key in m.pair_of and key in {i.name for i in graph.inputs}:
            _to_identity(nodes, m.pair_of[key])
            continue
        qn = nodes.get(m.ops.get(key, ""))
        if qn is None:
            continue
        fn = graph.node_by_name[key]
        for k, t in enumerate(qn.input):
            if t in posts:
                qn.input[k] = posts[t].pre
            elif t in m.weight_dq and k < len(fn.input) and (v := graph.const_value(fn.input[k])) is not None:
                name = f"{fn.input[k]}::float"
                if name not in {i.name for i in gr.initializer}:
                    gr.initializer.append(numpy_helper.from_array(v, name))
                qn.input[k] = name
        for o in m.outputs[key]:
            if o in m.pair_of and m.pair_of[o].pre in qn.output:
                _to_identity(nodes, m.pair_of[o])
    _drop_dead(gr)
    return model


def _to_identity(nodes: dict[str, onnx.NodeProto], p: Pair) -> None:
    """The pair's DequantizeLinear becomes Identity(pre) (its QuantizeLinear is then dropped as dead)."""
    dq = nodes.get(p.dq.name)
    if dq is not None and dq.op_type == "DequantizeLinear":
        dq.CopyFrom(helper.make_node("Identity", [p.pre], [p.post], name=dq.name + "::float"))


def _drop_dead(gr: onnx.GraphProto) -> None:
    """Remove Q/DQ nodes whose outputs nobody reads any more (pairs the promoted ops no longer use)."""
    while True:
        used = {i for n in gr.node for i in n.input} | {o.name for o in gr.output}
        dead = [n for n in gr.node if n.op_type in QOPS and not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            gr.node.remove(n)


def _opsets(*models: onnx.ModelProto) -> list[onnx.OperatorSetIdProto]:
    best: dict[str, int] = {}
    for mdl in models:
        for o in mdl.opset_import:
            best[o.domain] = max(best.get(o.domain, 0), o.version)
    return [helper.make_opsetid(d, v) for d, v in best.items()]


def expose(model: onnx.ModelProto, graph: ModelGraph, tensor_of: dict[str, str], outputs: Sequence[str],
           ir_from: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """`model` with float tensor names as outputs: each float tensor T reads its QDQ counterpart.

    QDQ tensors named like an exposed float tensor are renamed first (a quantizer keeps T as the value before
    its QuantizeLinear), and graph inputs quantized in the model are exposed as `input::q`.
    """
    out = copy.deepcopy(model)
    gr = out.graph
    want = [t for t in dict.fromkeys(outputs) if t in tensor_of]
    ins = {i.name for i in graph.inputs}
    clash = {t for t in want if t not in ins} | {f"{i}::q" for i in ins}
    rename = {t: f"qdq::{t}" for t in clash}
    for n in gr.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
        n.output[:] = [rename.get(o, o) for o in n.output]
    for t in gr.initializer:
        t.name = rename.get(t.name, t.name)
    del gr.value_info[:]
    del gr.output[:]
    for i in ins:
        if tensor_of.get(i, i) != i:
            gr.node.append(helper.make_node("Identity", [rename.get(tensor_of[i], tensor_of[i])], [f"{i}::q"],
                                            name=f"{i}::q"))
    for t in want:
        if t in ins:
            continue
        gr.node.append(helper.make_node("Identity", [rename.get(tensor_of[t], tensor_of[t])], [t], name=f"expose::{t}"))
        gr.output.append(helper.make_tensor_value_info(t, graph.elem_types.get(t, TensorProto.FLOAT), None))
    return out


def analysis(graph: ModelGraph, m: QdqMatch, keys: Iterable[str], tensors: Sequence[str]
             ) -> tuple[onnx.ModelProto, dict[str, str], set[str]]:
    """Float graph plus each quantized op's QDQ sub-model fed by float tensors (its isolated error).

    Also returns the tensors without a twin where one is due (isolated metrics not available): those the
    QDQ model lacks, and the outputs of a quantized op whose QDQ node has another arity than the float node.
    """
    qg = m.qgraph
    posts = {p.post: p for p in m.pair_of.values()}
    model = copy.deepcopy(graph.model)
    gr = model.graph
    del model.opset_import[:]
    model.opset_import.extend(_opsets(graph.model, qg.model))
    model.ir_version = max(graph.model.ir_version, qg.model.ir_version)
    consts: set[str] = set()

    def const(name: str) -> str:
        """A constant of the QDQ model copied in under a prefixed name ('' stays '')."""
        if not name:
            return name
        new = f"qdq::{name}"
        if new not in consts:
            consts.add(new)
            gr.initializer.append(numpy_helper.from_array(qg.const_value(name), new)
                                  if qg.const_value(name) is not None else _const_from(qg, name, new))
        return new

    def qdq(src: str, p: Pair, dst: str) -> None:
        gr.node.append(helper.make_node("QuantizeLinear", [src, *map(const, p.q.input[1:])], [dst + "::int"],
                                        name=dst + "::Q", domain=p.q.domain, **_attrs(p.q)))
        gr.node.append(helper.make_node("DequantizeLinear", [dst + "::int", *map(const, p.dq.input[1:])], [dst],
                                        name=dst + "::DQ", domain=p.dq.domain, **_attrs(p.dq)))

    iso: dict[str, str] = {}
    missing = set(m.unmatched)
    for i in graph.inputs:
        if i.name in m.pair_of and i.name in keys:
            qdq(i.name, m.pair_of[i.name], ISO + i.name)
            iso[i.name] = ISO + i.name
    for key in keys:
        qname = m.ops.get(key)
        if qname is None:
            continue
        qn, fn = qg.node_by_name[qname], graph.node_by_name[key]
        if len(qn.input) != len(fn.input) or len(qn.output) != len(fn.output):
            missing.update(m.outputs[key])
            continue
        ins = []
        for k, t in enumerate(qn.input):
            if t in posts:
                p = posts[t]
                dst = f"{ISO}{key}:{k}"
                qdq(fn.input[k], p, dst)
                ins.append(dst)
            elif t in m.weight_dq:
                w = m.weight_dq[t]
                dst = f"{ISO}{key}:w{k}"
                gr.node.append(helper.make_node("DequantizeLinear", list(map(const, w.input)), [dst],
                                                name=dst + "::DQ", domain=w.domain, **_attrs(w)))
                ins.append(dst)
            else:
                ins.append(fn.input[k])
        fouts = m.outputs[key]
        outs = [f"{ISO}{o}::op" if o else "" for o in fouts]
        clone = copy.deepcopy(qn)
        clone.name = ISO + key
        clone.input[:] = ins
        clone.output[:] = outs
        gr.node.append(clone)
        for o, raw in zip(fouts, outs, strict=True):
            if not o or not graph.is_float(o):
                continue
            p = m.pair_of.get(o)
            if p is not None and p.pre in qn.output:
                qdq(raw, p, ISO + o)
                iso[o] = ISO + o
            else:
                iso[o] = raw
    del gr.output[:]
    del gr.value_info[:]
    types = graph.elem_types
    for t in list(dict.fromkeys(tensors)) + [iso[t] for t in dict.fromkeys(tensors) if t in iso]:
        gr.output.append(helper.make_tensor_value_info(t, types.get(t, TensorProto.FLOAT), None))
    return model, iso, missing


def _attrs(n: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in n.attribute}


def _const_from(qg: ModelGraph, name: str, new: str) -> TensorProto:
    """A constant computed by nodes of the QDQ model (not a plain initializer), evaluated once."""
    m = copy.deepcopy(qg.model)  # not with_outputs: that exposes float tensors, this one may be a Q output (int8)
    m.graph.output.append(helper.make_tensor_value_info(name, qg.elem_types.get(name, TensorProto.FLOAT), None))
    sess = OrtSession(m, source=qg.path)
    feed = {i.name: np.zeros([d or 1 for d in (i.shape or ())], dtype=helper.tensor_dtype_to_np_dtype(i.elem_type))
            for i in qg.inputs}
    return numpy_helper.from_array(sess.run(feed)[name], new)


@register_backend
class QdqBackend(SimBackend):
    """A user's QDQ model (`--quantized`): its own scales, matched to the float model; promotion removes pairs.

    Calibration (inherited) only gathers the float ranges the hazard checks read; the QDQ model's scales are
    used as they are.
    """

    name = "qdq"
    intermediates = True

    def __init__(self, path: str, graph: ModelGraph, threads: int = 0) -> None:
        super().__init__("generic", threads)
        self.path = path
        self.qgraph = ModelGraph.load(path)
        self.match = match_qdq(graph, self.qgraph)
        check_match(graph, self.match, path)
        self.graph = graph
        self.unmatched = self.match.unmatched  # float tensors without a quantized value (compare stage)
        self.isolated_unavailable: set[str] = set(self.unmatched)  # and those without an isolated twin
        n = len(self.unmatched)
        self.warnings = [f"{n} float tensor(s) not found in {path} (compared as not available): "
                         + ", ".join(self.match.unmatched[:8]) + (" ..." if n > 8 else "")] if n else []

    def quant_ops(self, graph: ModelGraph) -> list[QuantOp]:
        """One QuantOp per float node: "compute" where the QDQ model quantizes it, else "passthrough"."""
        key = graph.uid
        if key in self._ops:
            return self._ops[key]
        m = self.match
        ops = [QuantOp(i.name, [], "Input", "input" if i.name in m.pair_of else "float", [i.name], index=-1)
               for i in graph.inputs]
        fused = {n for key, ms in m.members.items() for n in ms if n != key}
        for n in graph.nodes:
            outs = [o for o in n.output if o and not graph.is_constant(o)]
            if not outs or n.name in fused:
                continue
            if n.name in m.ops:
                members = m.members[n.name]
                weighted = [n.name] if any(i in m.weight_dq for i in m.qgraph.node_by_name[m.ops[n.name]].input) \
                    else []
                label = "+".join(graph.node_by_name[k].op_type for k in members)
                ops.append(QuantOp(n.name, members, label, "compute", [o for o in m.outputs[n.name] if graph.is_float(o)],
                                   [(n.name, k, t) for k, t in graph.non_const_inputs(n)], weighted,
                                   graph.index_of[n.name]))
            else:
                ops.append(QuantOp(n.name, [n.name], n.op_type, "passthrough", [o for o in outs if graph.is_float(o)],
                                   [(n.name, k, t) for k, t in graph.non_const_inputs(n)], [], graph.index_of[n.name]))
        self._ops[key] = ops
        return ops

    def plan(self, graph: ModelGraph, config: QuantConfig) -> SimPlan:
        """Precision of each op as the QDQ model has it (INT8/INT16), FP32 for promoted ones."""
        ops = self.quant_ops(graph)
        up = _promoted(ops, config)
        prec = {op.key: Precision.FP32 if op.key in up else self.match.precision[op.key]
                for op in ops if op.quantizable and op.key in self.match.precision}
        return SimPlan(precision=prec)

    def _keys(self, graph: ModelGraph, config: QuantConfig) -> tuple[set[str], set[str]]:
        ops = self.quant_ops(graph)
        up = _promoted(ops, config)
        return up, {op.key for op in ops if op.quantizable and op.key not in up}

    def patched_model(self, graph: ModelGraph, config: QuantConfig) -> onnx.ModelProto:
        """The QDQ model with the config's promoted ops back in float (what `bisect -o` writes)."""
        return promote(graph, self.match, self._keys(graph, config)[0])

    def quantized_model(self, graph: ModelGraph, config: QuantConfig,
                        outputs: Sequence[str] | None = None) -> onnx.ModelProto:
        outs = list(outputs) if outputs is not None else [o.name for o in graph.outputs]
        model = self.patched_model(graph, config)
        have = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
        # a pair dropped with a promoted op (nobody reads T quantized any more): T's value is the float one
        tensor_of = {t: q if q in have or t not in self.match.pair_of else self.match.pair_of[t].pre
                     for t, q in self.match.tensor.items()}
        return expose(model, graph, tensor_of, outs)

    def analysis_model(self, graph: ModelGraph, config: QuantConfig,
                       tensors: Sequence[str]) -> tuple[onnx.ModelProto, dict[str, str]]:
        model, iso, self.isolated_unavailable = analysis(graph, self.match, self._keys(graph, config)[1], tensors)
        return model, iso

    def config_key(self, graph: ModelGraph, config: QuantConfig) -> tuple:
        """The Q/DQ pairs a config removes decide the model."""
        return tuple(sorted(self._keys(graph, config)[0]))

    def model_source(self, graph: ModelGraph) -> str | None:
        return self.path

    def describe(self) -> dict:
        return {"backend": self.name, "profile": "qdq", "quantized_model": self.path,
                "matched": len(self.match.tensor), "unmatched": len(self.match.unmatched)}
