"""ModelGraph: a loaded ONNX model with the maps every later layer needs (producers, consumers, order)."""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qdebug.errors import ModelError, QDebugError

_SERIAL = itertools.count()  # ModelGraph.uid: a cache key never reused (id() of a freed graph is)

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
SHAPE_OPS = ("Shape", "Size")  # outputs depend on the input's shape only, never on its values
PROTO_LIMIT = 2**31 - 2**20  # protobuf cannot serialize a message of 2 GB or more (margin for the header)
RANDOM_OPS = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")
# the external-data location of a placeholder initializer: its data is handed to onnxruntime as an array
# (runners.session.WeightPool), never written anywhere
SHARED_LOCATION = "qdebug-shared"
SHARED_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
SHARED_MIN_BYTES = 4096  # smaller tensors stay inline: not worth an array each
CACHE_MAX_BYTES = 1 << 20  # const_value keeps smaller values only: large weights stay in the model alone


@dataclass(frozen=True)
class IOInfo:
    """Name, element type and shape (None for a dynamic dim) of a graph input or output."""

    name: str
    elem_type: int
    shape: tuple[int | None, ...] | None

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": str(self.dtype), "shape": list(self.shape) if self.shape else None}


def _shape_of(vi: onnx.ValueInfoProto) -> tuple[int | None, ...] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim)


def subgraph_reads(node: onnx.NodeProto) -> list[str]:
    """Outer-scope tensors read inside a node's subgraphs (If branches, Loop/Scan bodies): ONNX does not
    list them as the node's inputs, but the node needs them computed first."""
    out: list[str] = []
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for sg in graphs:
            local = {i.name for i in sg.input} | {t.name for t in sg.initializer}
            local |= {t.values.name for t in sg.sparse_initializer}
            local |= {o for n in sg.node for o in n.output if o}
            for n in sg.node:
                out.extend(i for i in node_reads(n) if i not in local)
            out.extend(o.name for o in sg.output if o.name not in local)
    return list(dict.fromkeys(out))


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor a node reads: its non-empty inputs, then the outer-scope tensors its subgraphs read."""
    reads = [i for i in node.input if i]
    return reads + [t for t in subgraph_reads(node) if t not in reads] if node.attribute else reads


def toposort(nodes: Sequence[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Kahn's algorithm taking the lowest original index first: the given order wherever it is valid (what
    networkx's lexicographical_topological_sort gives, without its import). Subgraph reads count as edges,
    so rewritten graphs whose nodes were emitted out of order (a fused group placed at its first member,
    before a Constant its last member reads) come out runnable."""
    import heapq

    produced = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    succ: list[set[int]] = [set() for _ in nodes]
    indeg = [0] * len(nodes)
    for k, n in enumerate(nodes):
        for i in node_reads(n):
            src = produced.get(i)
            if src is not None and src != k and k not in succ[src]:
                succ[src].add(k)
                indeg[k] += 1
    ready = [k for k, d in enumerate(indeg) if d == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for j in succ[k]:
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        raise ModelError("graph has a cycle", fix="re-export the model")
    return [nodes[k] for k in order]


def _all_tensors(graph: onnx.GraphProto) -> Iterable[TensorProto]:
    """Every TensorProto of a graph: initializers, Constant values, subgraphs' tensors."""
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield from (sp.values, sp.indices)
    for n in graph.node:
        for a in n.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("sparse_tensor"):
                yield from (a.sparse_tensor.values, a.sparse_tensor.indices)
            for sg in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _all_tensors(sg)


def _load_external(model: onnx.ModelProto, path: Path) -> None:
    """Read the weights an external-data model keeps in side files (never writing them), after checking
    each side file is there, inside the model's folder and long enough: else one ModelError naming it."""
    from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_model, uses_external_data

    folder = path.resolve().parent
    for t in _all_tensors(model.graph):
        if not uses_external_data(t):
            continue
        info = ExternalDataInfo(t)
        side = (folder / info.location).resolve()
        where = f"tensor {t.name}"
        if not info.location or Path(info.location).is_absolute() or not side.is_relative_to(folder):
            raise ModelError(f"external data location '{info.location}' is outside the model's folder",
                             file=str(path), where=where, fix="re-save the model with side files beside it")
        if not side.is_file():
            raise ModelError(f"external data file '{info.location}' not found in {folder}", file=str(path),
                             where=where, fix=f"copy '{info.location}' next to the model, or re-save the model "
                                              "with its weights inside (onnx.save_model(..., save_as_external_data=False))")
        need = (info.offset or 0) + (info.length or 0)
        if side.stat().st_size < need:
            raise ModelError(f"external data file '{info.location}' is truncated ({side.stat().st_size} bytes, "
                             f"needs {need})", file=str(path), where=where,
                             fix="copy the side file again or re-export the model")
    try:
        load_external_data_for_model(model, str(folder))
    except Exception as exc:  # unreadable side file (permissions, I/O)
        raise ModelError(f"cannot read the external data ({type(exc).__name__}: {str(exc)[:160]})",
                         file=str(path), fix="check the side files next to the model are readable") from None


def sparse_to_dense(sp: onnx.SparseTensorProto) -> np.ndarray:
    """Dense numpy value of a sparse tensor (a Constant's sparse_value or a sparse initializer)."""
    values = numpy_helper.to_array(sp.values).reshape(-1)
    dims = tuple(int(d) for d in sp.dims)
    dense = np.zeros(dims, dtype=values.dtype)
    idx = numpy_helper.to_array(sp.indices).astype(np.int64)
    if idx.ndim == 2:  # [NNZ, rank] coordinates
        dense[tuple(idx.T)] = values
    else:  # [NNZ] linear indices
        dense.reshape(-1)[idx] = values
    return dense


def copy_fields(src: onnx.ModelProto | onnx.GraphProto, dst: onnx.ModelProto | onnx.GraphProto,
                skip: set[str]) -> None:
    """Copy every set field of `src` into `dst` except those named in `skip` (no deep copy of the rest first)."""
    for fd, val in src.ListFields():
        if fd.name in skip:
            continue
        if hasattr(val, "extend"):  # a repeated field
            getattr(dst, fd.name).extend(val)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(val)
        else:
            setattr(dst, fd.name, val)


def copy_model_fields(src: onnx.ModelProto, dst: onnx.ModelProto, graph_skip: set[str]) -> None:
    """Copy every set field of `src` into the empty `dst`, except the graph fields named in `graph_skip`."""
    copy_fields(src, dst, {"graph"})
    copy_fields(src.graph, dst.graph, graph_skip)


def sharable(t: TensorProto) -> bool:
    """A large float initializer held as raw bytes of exactly its shape's size (the bulk of a model's weights)."""
    if t.data_type not in SHARED_TYPES or t.data_location == TensorProto.EXTERNAL or not t.HasField("raw_data"):
        return False
    n = int(np.prod(t.dims, dtype=np.int64)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return n >= SHARED_MIN_BYTES and len(t.raw_data) == n


def is_placeholder(t: TensorProto) -> bool:
    """An initializer written by `weightless`: name, type and shape, its data elsewhere."""
    return t.data_location == TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == SHARED_LOCATION for e in t.external_data)


def weightless(model: onnx.ModelProto, empty: bool = False) -> onnx.ModelProto:
    """A copy of `model` whose large float initializers keep name, type and shape but no data (placeholders).

    What the checker, shape inference and rewritten session models need, without serializing or copying
    every weight. `empty`: placeholders as zero-size tensors instead (what onnx.checker accepts in memory).
    """
    light = onnx.ModelProto()
    copy_model_fields(model, light, {"initializer"})
    for t in model.graph.initializer:
        if not sharable(t):
            light.graph.initializer.add().CopyFrom(t)
            continue
        e = light.graph.initializer.add()
        e.name, e.data_type = t.name, t.data_type
        if empty:
            e.dims.append(0)
            e.raw_data = b""
            continue
        e.dims.extend(t.dims)
        e.data_location = TensorProto.EXTERNAL
        for key, value in (("location", SHARED_LOCATION), ("offset", "0")):
            entry = e.external_data.add()
            entry.key, entry.value = key, value
    return light


class ModelGraph:
    """An ONNX model plus producer/consumer maps and a topological node order (node names made unique)."""

    def __init__(self, model: onnx.ModelProto, path: str | None = None) -> None:
        self.uid = next(_SERIAL)  # key for the backends' per-graph caches (truncation builds and drops many graphs)
        self.path = path
        self.model = model
        g = model.graph
        self._name_nodes()
        self.initializers: dict[str, TensorProto] = {t.name: t for t in g.initializer}
        self._sparse = {t.values.name: t for t in g.sparse_initializer}
        self.inputs: list[IOInfo] = [
            IOInfo(vi.name, vi.type.tensor_type.elem_type, _shape_of(vi))
            for vi in g.input if vi.name not in self.initializers
        ]
        self.outputs: list[IOInfo] = [
            IOInfo(vi.name, vi.type.tensor_type.elem_type, _shape_of(vi)) for vi in g.output
        ]
        self.nodes: list[onnx.NodeProto] = self._toposort(list(g.node))
        self.node_by_name = {n.name: n for n in self.nodes}
        self.index_of = {n.name: i for i, n in enumerate(self.nodes)}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for o in n.output:
                if o:
                    self.producer[o] = n
            for i in node_reads(n):  # a subgraph's outer-scope reads count as consumers too
                self.consumers.setdefault(i, []).append(n)
        self._const_cache: dict[str, np.ndarray | None] = {}
        self.constant_tensors = self._find_constants()
        self.elem_types, self.shapes = self._infer_types()

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path) -> ModelGraph:
        """Load and check an ONNX file, turning every failure into a one-line ModelError."""
        p = Path(path)
        if not p.exists():
            raise ModelError("model file not found", file=str(p), fix="check the path")
        if p.is_dir():
            raise ModelError("expected an .onnx file, got a folder", file=str(p),
                             fix="pass the model file inside the folder, e.g. DIR/model.onnx")
        try:
            model = onnx.load(str(p), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError, ValueError... on corrupt files
            raise ModelError(f"not a readable ONNX model ({type(exc).__name__})", file=str(p),
                             fix="re-export the model; the file is corrupt or not ONNX") from None
        if not model.graph.node:
            raise ModelError("model graph has no nodes", file=str(p),
                             fix="re-export the model; the file is not an ONNX model or is empty")
        _load_external(model, p)
        try:
            listed = list(model.graph.node)
            ordered = toposort(listed)
        except ModelError as exc:
            raise ModelError(exc.problem, file=str(p), fix=exc.fix) from None
        if any(a is not b for a, b in zip(ordered, listed, strict=True)):
            # nodes out of order (a Constant after its consumer): onnxruntime sorts them, so do we (in memory)
            sorted_nodes = [copy.deepcopy(n) for n in ordered]
            del model.graph.node[:]
            model.graph.node.extend(sorted_nodes)
        try:
            # on a copy without the large weights' bytes (their sizes were checked by `sharable`): serializing
            # every weight for the checker cost a second and a copy of the model; also fits protobuf's 2 GB
            onnx.checker.check_model(weightless(model, empty=True))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"ONNX checker rejects the model: {first}", file=str(p),
                             fix="re-export with a supported opset or run onnxsim") from None
        return cls(model, str(p))

    def sha256(self) -> str:
        """Hash of the serialized model, so a JSON result can be tied to its model."""
        return hashlib.sha256(self.model.SerializeToString()).hexdigest()

    def weight(self, name: str) -> np.ndarray | None:
        """An initializer's value for a session's side file: the cached array, or a fresh one left uncached."""
        if name in self._const_cache:
            return self._const_cache[name]
        t = self.initializers.get(name)
        return numpy_helper.to_array(t) if t is not None else None

    def light_view(self) -> ModelGraph:
        """This graph (every map shared) over a `weightless` copy of its model: models rewritten from it hold
        placeholders for its float weights, which an OrtSession given `weights=graph.weight` fills in."""
        view = copy.copy(self)
        view.model = weightless(self.model)
        return view

    # -------------------------------------------------------------- structure
    def _name_nodes(self) -> None:
        seen: set[str] = set()
        for i, n in enumerate(self.model.graph.node):
            name = n.name or f"{n.op_type}_{i}"
            while name in seen:
                name = f"{name}_{i}"
            n.name = name
            seen.add(name)

    @staticmethod
    def _toposort(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
        """The nodes in topological order, the file's order wherever it is valid (see `toposort`)."""
        return toposort(nodes)

    def _find_constants(self) -> set[str]:
        """Initializers, Constant outputs and everything computed only from them or from tensor shapes
        (Shape/Size outputs): shape math that an NPU folds and qdebug never quantizes nor compares."""
        const: set[str] = set(self.initializers)
        const.update(t.values.name for t in self.model.graph.sparse_initializer)
        for n in self.nodes:
            reads = node_reads(n)
            if n.op_type in SHAPE_OPS or (n.op_type not in RANDOM_OPS and all(i in const for i in reads)):
                const.update(o for o in n.output if o)
        return const

    def _infer_types(self) -> tuple[dict[str, int], dict[str, tuple[int | None, ...] | None]]:
        try:
            # float weights give inference their shapes only: their bytes stay here (weightless), which saves
            # two copies of the model and seconds of serializing on a large one; int constants keep their data
            inferred = onnx.shape_inference.infer_shapes(weightless(self.model), strict_mode=False, data_prop=True)
            vis = list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
        except Exception:
            vis = list(self.model.graph.value_info) + list(self.model.graph.output) + list(self.model.graph.input)
        types: dict[str, int] = {}
        shapes: dict[str, tuple[int | None, ...] | None] = {}
        for vi in vis:
            if vi.type.HasField("tensor_type"):
                types[vi.name] = vi.type.tensor_type.elem_type
                shapes[vi.name] = _shape_of(vi)
        for name, t in self.initializers.items():
            types[name] = t.data_type
            shapes[name] = tuple(t.dims)
        return types, shapes

    def is_constant(self, tensor: str) -> bool:
        """True when the tensor is an initializer or computed only from constants (shape math)."""
        return tensor in self.constant_tensors

    def const_value(self, tensor: str) -> np.ndarray | None:
        """Value of an initializer or Constant-node output, None when not a plain constant."""
        if tensor in self._const_cache:
            return self._const_cache[tensor]
        val = None
        if tensor in self.initializers:
            val = numpy_helper.to_array(self.initializers[tensor])
        elif tensor in self._sparse:
            val = sparse_to_dense(self._sparse[tensor])
        elif tensor in self.producer and self.producer[tensor].op_type == "Constant":
            for a in self.producer[tensor].attribute:
                if a.name == "value":
                    val = numpy_helper.to_array(a.t)
                elif a.name == "value_float":
                    val = np.array(a.f, dtype=np.float32)
                elif a.name == "value_floats":
                    val = np.array(list(a.floats), dtype=np.float32)
                elif a.name == "value_int":
                    val = np.array(a.i, dtype=np.int64)
                elif a.name == "value_ints":
                    val = np.array(list(a.ints), dtype=np.int64)
                elif a.name == "sparse_value":
                    val = sparse_to_dense(a.sparse_tensor)
        if val is None or val.nbytes < CACHE_MAX_BYTES:  # weights are re-read when asked: not held twice
            self._const_cache[tensor] = val
        return val

    def resolve_node(self, name: str, *, where: str | None = None,
                     error: type[QDebugError] = ModelError) -> str:
        """A node name as given, or a tensor name mapped to its producer; else `error` with close matches."""
        if name in self.node_by_name:
            return name
        if name in self.producer:
            return self.producer[name].name
        close = difflib.get_close_matches(name, list(self.node_by_name), n=3)
        raise error(f"unknown layer name '{name}'", file=self.path, where=where,
                    fix=("did you mean " + ", ".join(close)) if close
                    else "use an ONNX node name (listed by `qdebug compare --all`)")

    def nonfinite_error(self, tensor: str, bad: str, sample: str) -> QDebugError:
        """The one-line error for NaN/Inf ("NaN" or "Inf" in `bad`) first seen in float tensor `tensor`."""
        from qdebug.errors import NumericError

        node = self.producer.get(tensor)
        where = f"node {node.name} ({node.op_type})" if node is not None else "graph input"
        return NumericError(f"{bad} first appears in float tensor '{tensor}' from {where} on sample {sample}",
                            file=self.path, fix="check the input preprocessing and the model around that op")

    def is_float(self, tensor: str) -> bool:
        """Whether a tensor carries float data (unknown types count as float unless produced by shape ops)."""
        t = self.elem_types.get(tensor)
        if t is None:
            prod = self.producer.get(tensor)
            return not (prod is not None and prod.op_type in ("Shape", "Size", "NonZero", "ArgMax", "ArgMin"))
        return t in FLOAT_TYPES

    def activation_tensors(self) -> list[str]:
        """Float, non-constant node outputs in topological order: the tensors qdebug compares."""
        out = []
        for n in self.nodes:
            for o in n.output:
                if o and not self.is_constant(o) and self.is_float(o):
                    out.append(o)
        return out

    def non_const_inputs(self, node: onnx.NodeProto) -> list[tuple[int, str]]:
        """(input index, tensor) pairs of a node's data inputs (constants and empty slots excluded)."""
        return [(k, i) for k, i in enumerate(node.input) if i and not self.is_constant(i)]

    def static_input_shapes(self, size: Sequence[int] | None = None) -> dict[str, tuple[int, ...]]:
        """Static shape per graph input; `size` (H, W) fills dynamic spatial dims of 4-D inputs."""
        shapes: dict[str, tuple[int, ...]] = {}
        for inp in self.inputs:
            if inp.shape is None:
                raise ModelError(f"input '{inp.name}' has no shape", file=self.path,
                                 fix="pass --size H,W or re-export with a static shape")
            dims = list(inp.shape)
            if dims and dims[0] is None and all(d is not None for d in dims[1:]):
                dims[0] = 1  # only the batch is dynamic: run one sample at a time
            if any(d is None for d in dims):
                if len(dims) == 4 and size is not None:
                    if dims[0] is None:
                        dims[0] = 1
                    ch_first = dims[1] is not None and dims[1] <= 4
                    if ch_first:
                        dims[2], dims[3] = size[0], size[1]
                    else:
                        dims[1], dims[2] = size[0], size[1]
                if any(d is None for d in dims):
                    raise ModelError(f"input '{inp.name}' has dynamic dims {inp.shape}", file=self.path,
                                     fix="pass --size H,W (and a batch of 1) or re-export with static shapes")
            shapes[inp.name] = tuple(int(d) for d in dims)  # type: ignore[arg-type]
        return shapes

    # ------------------------------------------------------------- rewriting
    def with_outputs(self, names: Iterable[str], model: onnx.ModelProto | None = None) -> onnx.ModelProto:
        """Copy of the model (or of `model`) with extra float graph outputs exposed for reading."""
        m = copy.deepcopy(model if model is not None else self.model)
        existing = {o.name for o in m.graph.output}
        for name in names:
            if name in existing:
                continue
            elem = self.elem_types.get(name, TensorProto.FLOAT)
            if elem not in FLOAT_TYPES:
                elem = TensorProto.FLOAT
            m.graph.output.append(helper.make_tensor_value_info(name, elem, None))
            existing.add(name)
        return m

    def descendants(self, nodes: Iterable[str]) -> set[str]:
        """Names of `nodes` and of every node that reads, directly or not, one of their outputs."""
        out: set[str] = set()
        stack = list(nodes)
        while stack:
            n = stack.pop()
            if n in out:
                continue
            out.add(n)
            for o in self.node_by_name[n].output:
                stack.extend(c.name for c in self.consumers.get(o, []))
        return out

    def ancestors(self, tensors: Iterable[str]) -> tuple[set[str], set[str]]:
        """(tensors, node names) needed to compute `tensors` from the graph inputs."""
        needed: set[str] = set()
        nodes: set[str] = set()
        stack = list(tensors)
        while stack:
            t = stack.pop()
            if t in needed:
                continue
            needed.add(t)
            node = self.producer.get(t)
            if node is not None and node.name not in nodes:
                nodes.add(node.name)
                stack.extend(node_reads(node))
        return needed, nodes

    def truncate(self, outputs: Sequence[str]) -> ModelGraph:
        """Subgraph that computes exactly `outputs` from the graph inputs (the "cut" used by bisect)."""
        unknown = [o for o in outputs if o not in self.producer and o not in {i.name for i in self.inputs}]
        if unknown:
            raise ModelError(f"tensor '{unknown[0]}' is not produced by any node", file=self.path,
                             fix="use a tensor name listed by `qdebug compare`")
        needed, keep = self.ancestors(outputs)
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        g = m.graph
        del g.node[:]
        g.node.extend(copy.deepcopy(n) for n in self.nodes if n.name in keep)
        inits = [t for t in self.model.graph.initializer if t.name in needed]
        del g.initializer[:]
        g.initializer.extend(inits)
        sparse = [t for t in self.model.graph.sparse_initializer if t.values.name in needed]
        del g.sparse_initializer[:]
        g.sparse_initializer.extend(sparse)
        ins = [vi for vi in self.model.graph.input if vi.name in needed and vi.name not in self.initializers]
        del g.input[:]
        g.input.extend(ins)
        del g.output[:]
        outs_by_name = {vi.name: vi for vi in self.model.graph.output}
        for o in outputs:
            if o in outs_by_name:
                g.output.append(outs_by_name[o])
            else:
                elem = self.elem_types.get(o, TensorProto.FLOAT)
                g.output.append(helper.make_tensor_value_info(o, elem, None))
        return ModelGraph(m, self.path)
