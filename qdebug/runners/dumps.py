"""Quantized values recorded elsewhere (a board, a vendor simulator): per-tensor `.npy` dumps read as a backend.

Folder layout: one subfolder per sample (`DIR/0000/…`, taken in sorted order, matched to the `--data` samples
in their sorted order) or the files directly in DIR for a single sample. A tensor's file is its name with `/`
and `\\` replaced by `_`, plus `.npy` (`/model.0/conv/Conv_output_0` -> `_model.0_conv_Conv_output_0.npy`),
or whatever a mapping file (`--dump-map`: JSON {tensor: file} or CSV `tensor,file`) says (docs/quantized.md).
"""

from __future__ import annotations

import csv
import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from qdebug.errors import DataError, QDebugError
from qdebug.graph.fusion import QuantOp
from qdebug.graph.model import ModelGraph
from qdebug.quant.scheme import Precision, QuantConfig
from qdebug.quant.simulate import SimPlan
from qdebug.runners.base import register_backend
from qdebug.runners.sim import SimBackend

LAYOUTS = ("nchw", "nhwc")


def sanitise(tensor: str) -> str:
    """The dump file name of a tensor: `/` and `\\` become `_`, then `.npy`."""
    return tensor.replace("/", "_").replace("\\", "_") + ".npy"


def read_map(path: str) -> dict[str, str]:
    """A mapping file: JSON {tensor: file} or CSV rows `tensor,file` (a `tensor,file` header is skipped)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the dump map ({exc.__class__.__name__})", file=path, where="--dump-map",
                        fix="pass a JSON {tensor: file} or a CSV tensor,file") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DataError(f"bad JSON ({exc})", file=path, where="--dump-map",
                            fix='write {"tensor": "file.npy"}') from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise DataError("the dump map must be a JSON object of strings", file=path, where="--dump-map",
                            fix='write {"tensor": "file.npy"}')
        return dict(data)
    out: dict[str, str] = {}
    for n, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or not "".join(row).strip() or (n == 1 and [c.strip() for c in row] == ["tensor", "file"]):
            continue
        if len(row) != 2:
            raise DataError(f"line {n} has {len(row)} fields", file=path, where="--dump-map",
                            fix="write one `tensor,file` pair per line")
        out[row[0].strip()] = row[1].strip()
    return out


def sample_dirs(folder: str) -> list[Path]:
    """The per-sample folders (sorted), or the folder itself when it holds the `.npy` files of one sample."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError("dump folder not found", file=folder, where="--quantized-dumps",
                        fix="pass the folder holding the .npy dumps")
    subs = sorted(d for d in root.iterdir() if d.is_dir())
    if subs:
        return subs
    if any(root.glob("*.npy")):
        return [root]
    raise DataError("no .npy dumps found", file=folder, where="--quantized-dumps",
                    fix="put one subfolder per sample (DIR/0000/...) or the .npy files of one sample in DIR")


class DumpReplay:
    """Session-like reader: the k-th `run` returns the k-th sample's dumps, converted to the float shapes.

    The compare stage calls it once per sample in sample order; `slot` is accepted for its interface.
    """

    def __init__(self, backend: DumpsBackend) -> None:
        self.b = backend
        self._next = 0
        self._lock = threading.Lock()

    def run(self, feed: dict[str, np.ndarray], slot: int | None = None) -> dict[str, np.ndarray]:
        with self._lock:
            k = self._next
            self._next += 1
        ins = {i.name for i in self.b.graph.inputs}
        return {f"{t}::q" if t in ins else t: v for t, v in self.b.sample(k).items()}  # the stage's input names


@register_backend
class DumpsBackend(SimBackend):
    """Per-tensor dumps as the quantized run (`--quantized-dumps`); isolated metrics are not available.

    Calibration (inherited) only gathers the float ranges the hazard checks read.
    """

    name = "dumps"
    intermediates = True

    def __init__(self, folder: str, graph: ModelGraph, samples: int, dump_map: str | None = None,
                 layout: str | None = None, threads: int = 0) -> None:
        super().__init__("generic", threads)
        self.folder, self.graph, self.layout, self.dump_map = folder, graph, layout, dump_map
        if layout is not None and layout not in LAYOUTS:
            raise QDebugError(f"unknown dump layout '{layout}'", where="--dump-layout", fix="use nchw or nhwc")
        self.dirs = sample_dirs(folder)
        if len(self.dirs) != samples:
            raise DataError(f"{len(self.dirs)} dumped sample(s) but {samples} --data sample(s)", file=folder,
                            where="--quantized-dumps",
                            fix="dump one subfolder per --data sample (same sorted order) or pass --samples")
        wanted = [i.name for i in graph.inputs] + graph.activation_tensors()
        if dump_map:
            files = read_map(dump_map)
            bad = [t for t in files if t not in set(wanted)]
            if bad:
                raise DataError(f"tensor '{bad[0]}' of the dump map is not a float tensor of the model",
                                file=dump_map, where="--dump-map", fix="use the float model's tensor names")
        else:
            present = {p.name for p in self.dirs[0].glob("*.npy")}
            files = {t: sanitise(t) for t in wanted if sanitise(t) in present}
            if not files:
                raise DataError(f"no dump is named after a tensor of the model (e.g. {sanitise(wanted[-1])})",
                                file=str(self.dirs[0]), where="--quantized-dumps",
                                fix="name files by tensor ('/' -> '_', plus .npy) or pass --dump-map")
        self.files = files
        for d in self.dirs:  # every sample has every dump, before any run
            for t, f in files.items():
                if not (d / f).is_file():
                    raise DataError(f"dump of tensor '{t}' is missing", file=str(d / f), where="--quantized-dumps",
                                    fix="dump the same tensors for every sample, or drop it from --dump-map")
        missing = [t for t in wanted if t not in files]
        self.unmatched = missing  # float tensors without a quantized value (compare stage)
        self.isolated_unavailable = set(wanted)  # dumps hold cumulative values only
        self.warnings = [f"{len(missing)} float tensor(s) have no dump in {folder} (compared as not available): "
                         + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")] if missing else []

    def replay(self) -> DumpReplay:
        """The reader the compare stage runs instead of a quantized model."""
        return DumpReplay(self)

    def sample(self, k: int) -> dict[str, np.ndarray]:
        """Sample k's dumps by tensor name, in the float model's shapes."""
        out = {}
        for t, f in self.files.items():
            path = self.dirs[k] / f
            try:
                v = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot read the dump ({exc.__class__.__name__})", file=str(path),
                                fix="write it with numpy.save") from None
            out[t] = self.fit(t, np.asarray(v, dtype=np.float32), str(path))
        return out

    def fit(self, tensor: str, v: np.ndarray, path: str) -> np.ndarray:
        """The dump in the float tensor's static shape: as is, NHWC transposed, or reshaped; else one line."""
        shape = self.graph.shapes.get(tensor)
        if not shape or any(d is None for d in shape) or tuple(v.shape) == tuple(shape):
            return v
        if v.size == int(np.prod(shape)) and self.layout is not None:
            if self.layout == "nhwc" and v.ndim == 4 and len(shape) == 4 and \
                    (v.shape[0], v.shape[3], v.shape[1], v.shape[2]) == tuple(shape):
                return np.ascontiguousarray(v.transpose(0, 3, 1, 2))
            return v.reshape(shape)
        raise DataError(f"dump of tensor '{tensor}' has shape {tuple(v.shape)} but the float model gives "
                        f"{tuple(shape)}", file=path,
                        fix="dump the tensor in the model's shape, or pass --dump-layout nhwc|nchw when "
                            "the element count matches")

    def quant_ops(self, graph: ModelGraph) -> list[QuantOp]:
        """Ops whose outputs were dumped count as quantized ("compute"); the rest as passthrough."""
        key = graph.uid
        if key not in self._ops:
            ops = [QuantOp(i.name, [], "Input", "input" if i.name in self.files else "float", [i.name], index=-1)
                   for i in graph.inputs]
            for n in graph.nodes:
                outs = [o for o in n.output if o and not graph.is_constant(o)]
                if outs:
                    dumped = any(o in self.files for o in outs)
                    ops.append(QuantOp(n.name, [n.name], n.op_type, "compute" if dumped else "passthrough",
                                       [o for o in outs if graph.is_float(o)],
                                       [(n.name, k, t) for k, t in graph.non_const_inputs(n)],
                                       index=graph.index_of[n.name]))
            self._ops[key] = ops
        return self._ops[key]

    def plan(self, graph: ModelGraph, config: QuantConfig) -> SimPlan:
        return SimPlan(precision={op.key: Precision.INT8 for op in self.quant_ops(graph) if op.quantizable})

    def quantized_model(self, graph: ModelGraph, config: QuantConfig,
                        outputs: Sequence[str] | None = None) -> onnx.ModelProto:
        """The float model: recorded dumps have no quantized model (the compare stage reads `replay()`)."""
        return graph.with_outputs([])

    def analysis_model(self, graph: ModelGraph, config: QuantConfig,
                       tensors: Sequence[str]) -> tuple[onnx.ModelProto, dict[str, str]]:
        """The float model exposing `tensors`; no isolated twins (not available from dumps)."""
        return graph.with_outputs(tensors), {}

    def run(self, graph: ModelGraph, config: QuantConfig, samples: Iterable[dict[str, np.ndarray]],
            outputs: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        if config.overrides:
            raise QDebugError("recorded dumps cannot be re-run with promoted ops", where="--quantized-dumps",
                              fix="use --quantized q.onnx (a QDQ model) to search promotions")
        for k, _ in enumerate(samples):
            yield self.sample(k)

    def describe(self) -> dict:
        return {"backend": self.name, "profile": "dumps", "dumps": self.folder, "dump_map": self.dump_map,
                "dump_layout": self.layout, "dumped": len(self.files)}
