"""The same promotion set written for other stacks' "keep these layers in higher precision" options.

Every exporter has the signature (graph, node names, precision) -> text and is registered in EXPORTERS,
so `promote` and `bisect` print the same strings. Names are ONNX node names (tensor names are mapped
to their producer). Stacks without an int16 mode get float16, and say so in a comment.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from qdebug.errors import QDebugError
from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import Precision

Exporter = Callable[[ModelGraph, list[str], Precision], str]
EXPORTERS: dict[str, Exporter] = {}


def register_exporter(name: str) -> Callable[[Exporter], Exporter]:
    """Decorator: make an exporter available as `--export NAME`."""
    def deco(fn: Exporter) -> Exporter:
        EXPORTERS[name] = fn
        return fn
    return deco


def resolve_nodes(graph: ModelGraph | None, names: list[str]) -> list[str]:
    """Node names as given (tensor names mapped to their producer); unknown names fail with suggestions."""
    if graph is None:
        return list(dict.fromkeys(names))
    out: list[str] = []
    inputs = {i.name for i in graph.inputs}
    for name in names:
        if name in inputs and name not in graph.producer:  # a promoted graph input has no layer to list
            continue
        node = graph.resolve_node(name, error=QDebugError)
        if node not in out:
            out.append(node)
    return out


def _need_graph(graph: ModelGraph | None, what: str) -> ModelGraph:
    if graph is None:
        raise QDebugError(f"the {what} export needs the model (op types and tensor names)",
                          fix="pass --model model.onnx")
    return graph


@register_exporter("qtable")
def tpu_mlir_qtable(graph: ModelGraph | None, nodes: list[str], precision: Precision) -> str:
    """Sophgo TPU-MLIR qtable: `<output tensor>_<OpType> <mode>` lines after `#` comments."""
    g = _need_graph(graph, "qtable")
    mode = {Precision.FP32: "F32", Precision.INT8: "INT8"}.get(precision, "F16")
    lines = ["# qdebug promotion set for TPU-MLIR (model_deploy.py --quantize_table this_file)",
             "# op_name   quantize_mode"]
    if precision == Precision.INT16:
        lines.insert(1, "# TPU-MLIR has no int16 layer mode: F16 instead")
    for n in resolve_nodes(g, nodes):
        node = g.node_by_name[n]
        lines.append(f"{node.output[0]}_{node.op_type} {mode}")
    return "\n".join(lines) + "\n"


@register_exporter("horizon")
def horizon_node_info(graph: ModelGraph | None, nodes: list[str], precision: Precision) -> str:
    """Horizon hb_mapper `model_parameters.node_info` (int16 on the BPU, float on the CPU)."""
    names = resolve_nodes(graph, nodes)
    if precision.is_int:
        t = precision.value
        spec = f"{{'ON': 'BPU', 'InputType': '{t}', 'OutputType': '{t}'}}"
    else:
        spec = "{'ON': 'CPU'}"
    body = ", ".join(f"{json.dumps(n)}: {spec}" for n in names)
    return f"model_parameters:\n  node_info: {{{body}}}\n"


def _trt_type(precision: Precision) -> tuple[str, str, str]:
    """(polygraphy name, trtexec name, comment) for a precision."""
    if precision == Precision.FP32:
        return "float32", "fp32", ""
    if precision == Precision.INT8:
        return "int8", "int8", ""
    note = "# TensorRT has no int16 layers: float16 instead\n" if precision == Precision.INT16 else ""
    return "float16", "fp16", note


@register_exporter("trt")
def polygraphy_layer_precisions(graph: ModelGraph | None, nodes: list[str], precision: Precision) -> str:
    """Polygraphy `--layer-precisions node:float16,...` (TensorRT layer names are the ONNX node names)."""
    p, _, note = _trt_type(precision)
    spec = ",".join(f"{n}:{p}" for n in resolve_nodes(graph, nodes))
    return f"{note}--precision-constraints obey --layer-precisions {_shell(spec)}\n"


@register_exporter("trtexec")
def trtexec_layer_precisions(graph: ModelGraph | None, nodes: list[str], precision: Precision) -> str:
    """trtexec `--layerPrecisions=node:fp16,... --precisionConstraints=obey`."""
    _, t, note = _trt_type(precision)
    spec = ",".join(f"{n}:{t}" for n in resolve_nodes(graph, nodes))
    return f"{note}{_shell('--layerPrecisions=' + spec)} --precisionConstraints=obey\n"


@register_exporter("ort")
def ort_nodes_to_exclude(graph: ModelGraph | None, nodes: list[str], precision: Precision) -> str:
    """onnxruntime `quantize_static(nodes_to_exclude=[...])` (excluded nodes stay float)."""
    return f"nodes_to_exclude = {json.dumps(resolve_nodes(graph, nodes))}\n"


@register_exporter("nncf")
def nncf_ignored_scope(graph: ModelGraph | None, nodes: list[str], precision: Precision) -> str:
    """NNCF `IgnoredScope(names=[...])` (ignored nodes stay float)."""
    return f"ignored_scope = nncf.IgnoredScope(names={json.dumps(resolve_nodes(graph, nodes))})\n"


@register_exporter("atc")
def atc_high_precision_layer(graph: ModelGraph | None, nodes: list[str], precision: Precision) -> str:
    """HiSilicon ATC `--high_precision_layer=op0;op1` (CUBE ops get A16W8, others fp16); quote it in a shell."""
    return "--high_precision_layer=" + ";".join(resolve_nodes(graph, nodes)) + "\n"


@register_exporter("rknn")
def rknn_custom_layers(graph: ModelGraph | None, nodes: list[str], precision: Precision) -> str:
    """rknn-toolkit2 `custom_quantize_layers` block (keys are the nodes' output tensors)."""
    g = _need_graph(graph, "rknn")
    value = "int16" if precision.is_int else "float16"
    lines = ["custom_quantize_layers:"]
    for n in resolve_nodes(g, nodes):
        lines.append(f"    {g.node_by_name[n].output[0]}: {value}")
    return "\n".join(lines) + "\n"


def _shell(s: str) -> str:
    """Quote for a POSIX shell only when needed (node names may contain ';', spaces, ...)."""
    import shlex

    return shlex.quote(s)


def export_all(graph: ModelGraph | None, nodes: list[str], precision: Precision,
               names: list[str] | None = None) -> dict[str, str]:
    """Run several exporters (all by default); unknown exporter names fail with the list of known ones."""
    chosen = list(EXPORTERS) if not names else names
    unknown = [n for n in chosen if n not in EXPORTERS]
    if unknown:
        raise QDebugError(f"unknown export '{unknown[0]}'", where="--export",
                          fix=f"use any of: {', '.join(EXPORTERS)} or all")
    return {n: EXPORTERS[n](graph, nodes, precision) for n in chosen}
