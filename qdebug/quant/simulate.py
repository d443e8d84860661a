"""Built-in quantization simulator: rewrite a float ONNX graph into a fake-quantized one run by onnxruntime.

Activations are quantize-dequantized inside the graph with the arithmetic equivalent of a
QuantizeLinear/DequantizeLinear pair, y = clip(round(x * (1/s)), qmin - zp, qmax - zp) * s, which works at
any opset and any bit width (int8, int16) without bumping the model's opset. Weights are fake-quantized
offline with the same formula and stored as float initializers. float16 is a Cast round trip.
Where the quantizers go is decided by the vendor profile; see docs/simulator.md.
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qdebug.graph.fusion import QuantOp, group_of, weight_input
from qdebug.graph.model import (
    SHARED_LOCATION,
    SHARED_MIN_BYTES,
    ModelGraph,
    copy_fields,
    node_reads,
    toposort,
)
from qdebug.quant.profiles import Profile
from qdebug.quant.scheme import (
    Precision,
    QParams,
    QuantConfig,
    fake_quant,
    params_from_range,
    unit_range_params,
)

ISO = "iso::"


@dataclass
class SimPlan:
    """The resolved decision for every QuantOp: precision, float16 compute, activation/weight params."""

    precision: dict[str, Precision] = field(default_factory=dict)  # op key -> precision
    fp16_compute: set[str] = field(default_factory=set)  # op keys computed in float16
    act: dict[str, QParams] = field(default_factory=dict)  # point key -> params (int ops only)
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # node name -> fake-quantized weight
    const_inputs: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)  # node -> slot -> value
    unsupported: list[str] = field(default_factory=list)  # op types left in float

    def to_json(self, ops: list[QuantOp]) -> list[dict]:
        rows = []
        for op in ops:
            if op.kind in ("const",):
                continue
            rows.append({**op.to_json(), "precision": self.precision.get(op.key, Precision.FP32).value,
                         "fp16_compute": op.key in self.fp16_compute})
        return rows


def _weight_axis(node: onnx.NodeProto, w: np.ndarray) -> int:
    """The output-channel axis of a weight (ConvTranspose: axis 1 of [C_in, C_out/group, k...])."""
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type in ("Gather", "BatchNormalization"):
        return 0  # an embedding table's rows; BatchNorm's per-channel scale
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return w.ndim - 1
    return 0


def op_precision(op: QuantOp, cfg: QuantConfig) -> Precision:
    """Effective precision of a group: the most faithful override given to any member, else the default."""
    asked = [cfg.overrides[n] for n in [op.key, *op.nodes] if n in cfg.overrides]
    if asked:
        return max(asked, key=lambda p: p.rank)
    return cfg.scheme.activation


def point_key(op: QuantOp, k: int | None = None, tensor: str | None = None) -> str:
    """Key of one activation quantization point: the tensor (output side) or 'op:k' (input side)."""
    return tensor if k is None else f"{op.key}:{k}"


def plan(g: ModelGraph, ops: list[QuantOp], profile: Profile, cfg: QuantConfig,
         ranges: dict[str, tuple[float, float]]) -> SimPlan:
    """Decide precision and parameters for every quant point from the config, vendor params and ranges."""
    sp = SimPlan()
    sym = cfg.scheme.symmetric_activations
    ranges = clip_sigmoid_inputs(g, ops, ranges, profile.sigmoid_input_clip, profile.hardsigmoid_input_clip)
    wide = _softmax_feeds(g, ops) if profile.softmax_input_bits > 8 else set()
    for op in ops:
        if op.kind in ("passthrough", "const"):
            continue
        if op.kind == "float":
            if op.family != "mask":  # mask arithmetic is float by rule, not unsupported
                sp.unsupported.append(f"{op.key} ({op.op_type})")
            sp.precision[op.key] = Precision.FP32
            continue
        p = op_precision(op, cfg)
        sp.precision[op.key] = p
        anchor_type = op.base_type
        vendor_fp16 = cfg.source is not None and profile.quantize_at == "input"
        if op.key in cfg.compute_fp16 or (not vendor_fp16 and anchor_type in profile.float16_ops
                                          and op.kind == "compute"):
            sp.fp16_compute.add(op.key)
        if not p.is_int:
            continue
        bits = p.bits or 8
        points: list[tuple[str, str]] = []  # (point key, tensor)
        if op.kind == "input" or profile.quantize_at == "output":
            points = [(t, t) for t in op.outputs]
        else:
            points = [(point_key(op, j), t) for j, (_, _, t) in enumerate(op.inputs)]
        softmax_in = op.base_type == "Softmax" and profile.quantize_at == "input"
        for key, tensor in points:
            pbits = max(bits, profile.softmax_input_bits) if (tensor in wide or softmax_in) else bits
            pinned = cfg.act_params.get(key)
            if pinned is None and op.kind == "input":
                pinned = cfg.act_params.get(f"{op.key}:0")
            if pinned is not None:
                sp.act[key] = pinned if pinned.bits == pbits else pinned.with_bits(pbits)
            elif op.base_type == "Softmax" and profile.softmax_output != "calib" and tensor in op.outputs:
                # probabilities in [0, 1]: a fixed grid, not a calibrated one (docs/simulator.md)
                sp.act[key] = unit_range_params(pbits, profile.softmax_output)
            else:
                lo, hi = ranges.get(tensor, (0.0, 0.0))
                sp.act[key] = params_from_range(lo, hi, pbits, symmetric=sym)
        wbits = 8 if p == Precision.INT8 else profile.int16_weight_bits
        for m in op.weighted:
            _plan_weight(g, g.node_by_name[m], cfg, profile, wbits, sp)
    if profile.requantized_passthrough and profile.quantize_at == "output":
        _plan_requantized(g, ops, sp, profile, ranges, sym)
    return sp


def _plan_requantized(g: ModelGraph, ops: list[QuantOp], sp: SimPlan, profile: Profile,
                      ranges: dict[str, tuple[float, float]], sym: bool) -> None:
    """Own grids for the outputs of the profile's requantized passthrough ops (rknn: Split parts), at the bits
    of the quantized op they read from; nothing when that op is float."""
    groups = group_of(ops)
    for op in ops:
        if op.kind != "passthrough" or op.base_type not in profile.requantized_passthrough:
            continue
        src, seen = op, 0
        while src is not None and src.kind == "passthrough" and seen < 64:  # up to the op that set the grid
            node = g.node_by_name[src.nodes[0]]
            data = [i for i in node.input if i and not g.is_constant(i)]
            prod = g.producer.get(data[0]) if data else None
            src = groups.get(prod.name) if prod is not None else next(
                (o for o in ops if o.kind == "input" and data and o.key == data[0]), None)
            seen += 1
        p = sp.precision.get(src.key) if src is not None else None
        if p is None or not p.is_int:
            continue
        for t in op.outputs:
            if t in ranges:
                sp.act[t] = params_from_range(*ranges[t], p.bits or 8, symmetric=sym)


def clip_sigmoid_inputs(g: ModelGraph, ops: list[QuantOp], ranges: dict[str, tuple[float, float]],
                        clip: float, hard: bool = False) -> dict[str, tuple[float, float]]:
    """Ranges with a standalone Sigmoid's input clamped to [-clip, clip] (the profile's sigmoid_input_clip) and,
    with `hard`, a HardSigmoid's input to its linear region [-beta/alpha, (1-beta)/alpha]; the clamp carried
    upward as rknn-toolkit2 does: a passthrough's input gets the union of its outputs' ranges, a Concat's inputs
    are narrowed to the Concat's range. A copy; `ranges` is left as it is."""
    if clip <= 0 and not hard:
        return ranges
    out = dict(ranges)
    groups = group_of(ops)

    def narrow(t: str, lo: float, hi: float, depth: int) -> None:
        if t not in out or depth > 64:
            return
        old = out[t]
        new = (max(old[0], lo), max(max(old[0], lo), min(old[1], hi)))
        if new == old:
            return
        out[t] = new
        prod = g.producer.get(t)
        op = groups.get(prod.name) if prod is not None else None
        data = [i for i in prod.input if i and not g.is_constant(i)] if prod is not None else []
        if op is None or not data:
            return
        if op.kind == "passthrough":
            outs = [o for o in prod.output if o]
            if all(o in out for o in outs):  # a sliced tensor: its other parts keep their own range
                narrow(data[0], min(out[o][0] for o in outs), max(out[o][1] for o in outs), depth + 1)
        elif op.kind == "compute" and op.op_type == "Concat":
            for i in data:
                narrow(i, *new, depth + 1)

    for op in ops:
        if op.kind != "compute" or op.op_type not in ("Sigmoid", "HardSigmoid"):
            continue
        lo, hi = -clip, clip
        if op.op_type == "HardSigmoid":
            if not hard:
                continue
            attrs = {a.name: a.f for a in g.node_by_name[op.nodes[0]].attribute}
            alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
            if alpha <= 0:
                continue
            lo, hi = -beta / alpha, (1.0 - beta) / alpha  # its linear region: flat outside
        elif clip <= 0:
            continue
        for _, _, t in op.inputs:
            narrow(t, lo, hi, 0)
    return out


def _softmax_feeds(g: ModelGraph, ops: list[QuantOp]) -> set[str]:
    """Quantized tensors a Softmax reads (its input, traced up through passthrough ops): the points a
    profile with softmax_input_bits > 8 widens."""
    groups = group_of(ops)
    feeds: set[str] = set()
    for op in ops:
        if op.base_type != "Softmax":
            continue
        for _, _, t in op.inputs:
            for _ in range(16):
                prod = g.producer.get(t)
                src = groups.get(prod.name) if prod is not None else None
                data = [i for i in prod.input if i and not g.is_constant(i)] if prod is not None else []
                if src is None or src.kind != "passthrough" or not data:
                    break
                t = data[0]
            feeds.add(t)
    return feeds


def _plan_weight(g: ModelGraph, node: onnx.NodeProto, cfg: QuantConfig, profile: Profile, wbits: int,
                 sp: SimPlan) -> None:
    """Fake-quantize one op's weight: per output channel on the right axis (grouped ConvTranspose per
    (group, channel)), an embedding table per row or per tensor (profile), a BatchNorm as x*a + b."""
    slot = weight_input(g, node)
    w = g.const_value(node.input[slot]) if slot is not None else None
    if w is None or not np.issubdtype(w.dtype, np.floating):
        return
    shift = None
    if node.op_type == "BatchNormalization":  # y = x*a + b; a is the weight an NPU multiplies by
        scale, bias, mean, var = (g.const_value(i).astype(np.float64) for i in node.input[1:5])
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        w = scale / np.sqrt(var + eps)
        shift = bias - mean * w
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    grouped = node.op_type == "ConvTranspose" and group > 1 and w.shape[0] % group == 0
    if grouped:  # [C_in, C_out/g, k...] -> [C_in/g, C_out, k...]: axis 1 is the true output channel
        cin, cg = w.shape[0] // group, w.shape[1]
        w_view = w.reshape(group, cin, cg, -1).transpose(1, 0, 2, 3).reshape(cin, group * cg, -1)
    else:
        w_view = w
    pinned = cfg.weight_params.get(node.name)
    per_channel = cfg.scheme.per_channel_weights and not (node.op_type == "Gather"
                                                          and profile.embedding_weights == "tensor")
    sym_w = cfg.scheme.symmetric_weights and not profile.asymmetric_weights
    if pinned is not None:
        wp = pinned if pinned.bits == wbits else pinned.with_bits(wbits)
    elif per_channel:
        axis = 1 if grouped else _weight_axis(node, w)
        red = tuple(i for i in range(w_view.ndim) if i != axis)
        wp = params_from_range(w_view.min(axis=red), w_view.max(axis=red), wbits, symmetric=sym_w, axis=axis)
    else:
        wp = params_from_range(w_view.min(), w_view.max(), wbits, symmetric=sym_w)
    wq = fake_quant(w_view, wp)
    if grouped:
        wq = wq.reshape(cin, group, cg, -1).transpose(1, 0, 2, 3).reshape(w.shape)
    sp.weights[node.name] = wq.astype(np.float32)
    if shift is not None:  # BatchNorm re-expressed with mean 0, var 1, epsilon 0 (set when emitted)
        sp.const_inputs[node.name] = {2: shift.astype(np.float32), 3: np.zeros_like(w, dtype=np.float32),
                                      4: np.ones_like(w, dtype=np.float32)}


_WEIGHT_HINT = re.compile(r"w(\d*)::(.+)\Z", re.S)  # the emitter's hint of a plan weight: w::node, w<slot>::node


def plan_weight(sp: SimPlan, name: str) -> np.ndarray | None:
    """The plan's array behind an emitter constant `qdebug::c<n>::w[slot]::<node>` (None for other names):
    what an OrtSession needs for the placeholders of a model built with `placeholders=True`."""
    if not name.startswith("qdebug::c"):
        return None
    m = _WEIGHT_HINT.match(name.split("::", 2)[-1])
    if m is None:
        return None
    slot, node = m.groups()
    if not slot:
        return sp.weights.get(node)
    return sp.const_inputs.get(node, {}).get(int(slot))


class _Emitter:
    """Accumulates nodes and initializers while rewriting the graph.

    `placeholders`: fake-quantized weights of SHARED_MIN_BYTES or more become placeholders (name, type, shape)
    whose data `plan_weight` finds in the plan: the model never holds a second copy of them.
    """

    def __init__(self, placeholders: bool = False) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self._n = 0
        self._consts: dict[tuple, str] = {}
        self.placeholders = placeholders

    def const(self, value: np.ndarray, hint: str) -> str:
        arr = np.asarray(value, dtype=np.float32)
        # keyed by a digest, not the bytes: weights would otherwise be held twice while the model is built
        key = (hint.split("::")[0], arr.shape, hashlib.sha256(np.ascontiguousarray(arr).data).digest())
        if key in self._consts:
            return self._consts[key]
        self._n += 1
        name = f"qdebug::c{self._n}::{hint}"
        if self.placeholders and _WEIGHT_HINT.match(hint) and arr.nbytes >= SHARED_MIN_BYTES:
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=arr.shape,
                            data_location=TensorProto.EXTERNAL)
            for k, v in (("location", SHARED_LOCATION), ("offset", "0")):
                e = t.external_data.add()
                e.key, e.value = k, v
            self.inits.append(t)
        else:
            self.inits.append(numpy_helper.from_array(arr, name))
        self._consts[key] = name
        return name

    def qdq(self, x: str, y: str, p: QParams, rank: int | None) -> None:
        """Emit y = clip(round(x * inv_s), qmin - zp, qmax - zp) * s."""
        shape: tuple[int, ...] = ()
        if p.scale.size > 1:
            if rank is None or p.axis is None:
                raise ValueError(f"per-channel activation params for {x} need a known rank")
            shape = tuple(-1 if i == p.axis else 1 for i in range(rank))
        s = p.scale.reshape(shape) if shape else p.scale.reshape(())
        zp = p.zero_point.reshape(shape) if shape else p.zero_point.reshape(())
        inv = self.const((1.0 / s).astype(np.float32), "inv_scale")
        sc = self.const(s.astype(np.float32), "scale")
        lo = self.const((p.qmin - zp).astype(np.float32), "qlo")
        hi = self.const((p.qmax - zp).astype(np.float32), "qhi")
        self._n += 1
        t = f"{y}::qdq{self._n}"
        if shape:  # per-channel bounds broadcast: Max/Min
            clip = [helper.make_node("Max", [t + "b", lo], [t + "c"], name=t + "/max"),
                    helper.make_node("Min", [t + "c", hi], [t + "d"], name=t + "/min")]
        else:  # scalar bounds: one Clip
            clip = [helper.make_node("Clip", [t + "b", lo, hi], [t + "d"], name=t + "/clip")]
        self.nodes += [
            helper.make_node("Mul", [x, inv], [t + "a"], name=t + "/mul"),
            helper.make_node("Round", [t + "a"], [t + "b"], name=t + "/round"),
            *clip,
            helper.make_node("Mul", [t + "d", sc], [y], name=t + "/dq"),
        ]

    def cast16(self, x: str, y: str) -> None:
        self._n += 1
        t = f"{y}::f16_{self._n}"
        self.nodes += [
            helper.make_node("Cast", [x], [t], to=TensorProto.FLOAT16, name=t + "/to16"),
            helper.make_node("Cast", [t], [y], to=TensorProto.FLOAT, name=t + "/to32"),
        ]


def _rank(g: ModelGraph, t: str) -> int | None:
    s = g.shapes.get(t)
    return len(s) if s is not None else None


def _emit_op(g: ModelGraph, op: QuantOp, sp: SimPlan, profile: Profile, em: _Emitter,
             rename: dict[str, str], prefix: str, alias: dict[str, str]) -> None:
    """Emit one group's nodes quantized. Internal tensors get `prefix`; `alias` rewires external inputs."""
    p = sp.precision.get(op.key, Precision.FP32)
    member_outs = {o for m in op.nodes for o in g.node_by_name[m].output if o}
    input_side = profile.quantize_at == "input" and op.kind == "compute"
    quantized_in: dict[int, str] = {}  # input point j -> its quantized tensor (emitted once)
    for m in op.nodes:
        orig = g.node_by_name[m]
        node = copy.deepcopy(orig)
        if prefix:
            node.name = prefix + node.name
        for k, t in enumerate(list(node.input)):
            if not t:
                continue
            if t in member_outs:
                node.input[k] = prefix + t if prefix else t
            else:
                node.input[k] = alias.get(t, t)
        if m in sp.weights:
            node.input[weight_input(g, orig) or 0] = em.const(sp.weights[m], f"w::{m}")
        for k, value in sp.const_inputs.get(m, {}).items():
            node.input[k] = em.const(value, f"w{k}::{m}")
        if m in sp.const_inputs and node.op_type == "BatchNormalization":  # x*a + b exactly: var 1, eps 0
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("epsilon", 0.0))
        if input_side and p != Precision.FP32:
            for j, (mm, k, t) in enumerate(op.inputs):
                # a fused family (LayerNorm reads x twice) quantizes x once and feeds every reader
                slots = [kk for kk, tt in enumerate(orig.input) if tt == t] if op.family else [k]
                if op.family == "" and mm != m:
                    continue
                for kk in slots:
                    if j not in quantized_in:
                        q = f"{prefix}{t}::in::{op.key}:{j}"
                        if p.is_int:
                            em.qdq(node.input[kk], q, sp.act[point_key(op, j)], _rank(g, t))
                        else:
                            em.cast16(node.input[kk], q)
                        quantized_in[j] = q
                    node.input[kk] = quantized_in[j]
        is_last = m == op.nodes[-1]
        quant_out = is_last and not input_side and p != Precision.FP32
        fp16_out = is_last and (op.key in sp.fp16_compute or (input_side and p == Precision.FP16))
        post: list[tuple[str, str]] = []
        for k, o in enumerate(list(node.output)):
            if not o:
                continue
            final = prefix + o if prefix else o
            if is_last and o in op.outputs and (quant_out or fp16_out):
                node.output[k] = final + "::pre"
                post.append((final + "::pre", o))
            else:
                node.output[k] = final
        em.nodes.append(node)
        for src, o in post:
            final = prefix + o if prefix else o
            if fp16_out and quant_out:
                em.cast16(src, final + "::f16")
                src = final + "::f16"
            if quant_out and p.is_int:
                em.qdq(src, final, sp.act[o], _rank(g, o))
            else:
                em.cast16(src, final)
        rename.update({o: (prefix + o if prefix else o) for o in member_outs})


def _finish(g: ModelGraph, em: _Emitter, outputs: list[str], base: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """The rewritten model: `em`'s nodes and initializers plus the original initializers they read (only
    those: copying every float weight into a model that reads the quantized ones would double its memory)."""
    src = base if base is not None else g.model
    m = onnx.ModelProto()
    copy_fields(src, m, {"graph"})
    gr = m.graph
    copy_fields(src.graph, gr, {"node", "initializer", "value_info", "output"})
    read = {i for n in em.nodes for i in node_reads(n)} | {i.name for i in src.graph.input}
    gr.initializer.extend(t for t in src.graph.initializer if t.name in read)
    gr.node.extend(em.nodes)
    for k, t in enumerate(em.inits):  # one tensor at a time: the emitter's copy is dropped as it is added
        gr.initializer.append(t)
        em.inits[k] = None
    outs_by_name = {vi.name: vi for vi in g.model.graph.output}
    seen = set()
    for o in outputs:
        if o in seen:
            continue
        seen.add(o)
        if o in outs_by_name:
            gr.output.append(outs_by_name[o])
        else:
            gr.output.append(helper.make_tensor_value_info(o, TensorProto.FLOAT, None))
    return m


def _input_ops(ops: list[QuantOp]) -> list[QuantOp]:
    return [op for op in ops if op.kind == "input"]


def build_quantized(g: ModelGraph, ops: list[QuantOp], sp: SimPlan, profile: Profile,
                    outputs: list[str] | None = None, placeholders: bool = False) -> onnx.ModelProto:
    """The cumulative model: every op quantized per the plan. Tensor names keep their meaning
    (the value downstream ops see), so `outputs` may name any activation of the float graph.
    `placeholders`: the plan's large weights as placeholders (`_Emitter`, `plan_weight`)."""
    em = _Emitter(placeholders)
    alias: dict[str, str] = {}
    for op in _input_ops(ops):
        p = sp.precision.get(op.key, Precision.FP32)
        if profile.quantize_graph_inputs and p != Precision.FP32:
            q = op.key + "::q"
            if p.is_int:
                em.qdq(op.key, q, sp.act[op.key], _rank(g, op.key))
            else:
                em.cast16(op.key, q)
            alias[op.key] = q
    groups = group_of(ops)
    done: set[str] = set()
    rename: dict[str, str] = {}
    for node in g.nodes:
        op = groups.get(node.name)
        if op is None:  # constant subgraphs
            nn = copy.deepcopy(node)
            for k, t in enumerate(nn.input):
                nn.input[k] = alias.get(t, t)
            em.nodes.append(nn)
            continue
        if op.key in done:
            continue
        done.add(op.key)
        if op.kind in ("passthrough", "float") or sp.precision.get(op.key) is None:
            for m in op.nodes:
                nn = copy.deepcopy(g.node_by_name[m])
                for k, t in enumerate(nn.input):
                    nn.input[k] = alias.get(t, t)
                # a requantized passthrough (the profile's, e.g. rknn Split parts): each output on its own grid
                own = [(k, o) for k, o in enumerate(nn.output) if op.kind == "passthrough" and o in sp.act]
                for k, o in own:
                    nn.output[k] = o + "::pre"
                em.nodes.append(nn)
                for _, o in own:
                    em.qdq(o + "::pre", o, sp.act[o], _rank(g, o))
            continue
        _emit_op(g, op, sp, profile, em, rename, "", alias)
    outs = outputs if outputs is not None else [o.name for o in g.outputs]
    model = _finish(g, em, outs)
    return _prune(model)


def build_analysis(g: ModelGraph, ops: list[QuantOp], sp: SimPlan, profile: Profile,
                   tensors: list[str], placeholders: bool = False) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Float graph plus an isolated quantized clone of every op fed by float tensors.

    Returns the model (exposing `tensors` and their isolated twins) and the map tensor -> isolated name.
    One run of this model gives the float value and the isolated ("single") error of every op.
    `placeholders` as in `build_quantized`.
    """
    em = _Emitter(placeholders)
    for node in g.nodes:
        em.nodes.append(copy.deepcopy(node))
    iso: dict[str, str] = {}
    for op in _input_ops(ops):
        p = sp.precision.get(op.key, Precision.FP32)
        if profile.quantize_graph_inputs and p != Precision.FP32:
            if p.is_int:
                em.qdq(op.key, ISO + op.key, sp.act[op.key], _rank(g, op.key))
            else:
                em.cast16(op.key, ISO + op.key)
            iso[op.key] = ISO + op.key
    for op in ops:
        if op.kind != "compute":
            continue
        if sp.precision.get(op.key, Precision.FP32) == Precision.FP32 and op.key not in sp.fp16_compute:
            continue
        rename: dict[str, str] = {}
        _emit_op(g, op, sp, profile, em, rename, ISO, {})
        for o, r in rename.items():
            if g.is_float(o):
                iso[o] = r
    wanted = set(tensors)
    outs = list(tensors) + [iso[t] for t in tensors if t in iso and t in wanted]
    return _finish(g, em, outs), iso


def _prune(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes that feed no graph output (e.g. parts of a truncated graph) and put the rest in topological
    order: a fused group is emitted at its first member, possibly before a Constant its last member reads."""
    gr = model.graph
    producer = {o: k for k, n in enumerate(gr.node) for o in n.output if o}
    needed = {o.name for o in gr.output}
    stack, keep = list(needed), set()
    while stack:  # walk back from the outputs by name, whatever the node order
        k = producer.get(stack.pop())
        if k is None or k in keep:
            continue
        keep.add(k)
        for i in node_reads(gr.node[k]):  # subgraphs' outer-scope reads too
            if i not in needed:
                needed.add(i)
                stack.append(i)
    nodes = toposort([n for k, n in enumerate(gr.node) if k in keep])
    del gr.node[:]
    gr.node.extend(nodes)
    declared = {i.name for i in gr.input}  # old exports list initializers as inputs: keep those (else required)
    # dropped in place, from the end: a list of kept tensors re-extended would copy every weight once more
    for k in reversed([k for k, t in enumerate(gr.initializer) if t.name not in needed and t.name not in declared]):
        del gr.initializer[k]
    return model
