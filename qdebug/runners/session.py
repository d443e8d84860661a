"""Thin onnxruntime session wrapper shared by every ORT-based run (float, simulated, truncated)."""

from __future__ import annotations

import itertools
import mmap
import os
import tempfile
import weakref
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort

from qdebug.errors import ModelError
from qdebug.graph.model import PROTO_LIMIT, copy_model_fields, is_placeholder
from qdebug.workers import SESSION_THREADS

_ARENA: list[bool] = []


def _shared_arena() -> bool:
    """Register one CPU memory arena for every qdebug session (once per process).

    Memory a finished session (calibration) gives back is reused by the next sessions instead of being
    returned to the system and faulted in again (-100 k page faults, -0.3 s per compare of the
    benchmark model: docs/benchmarks.md). The arena grows as requested, never by doubling.
    """
    if not _ARENA:
        try:
            mem = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            # max_mem 0 = no cap; arena_extend_strategy 1 = kSameAsRequested
            ort.create_and_register_allocator(mem, ort.OrtArenaCfg(0, 1, -1, -1))
            _ARENA.append(True)
        except Exception:  # a build without shared allocators: every session keeps its own arena
            _ARENA.append(False)
    return _ARENA[0]


Weights = Callable[[str], "np.ndarray | None"]  # initializer name -> its array (placeholders' data)


class WeightFile:
    """One side file shared by the sessions of a run: each placeholder's array is written once (the float
    weights read by both the analysis and the cumulative model, the fake-quantized ones by the isolated clones
    and the cumulative model), and can be mapped back (`mapped`) in place of the array. A placeholder name
    must mean the same values in every model given the same WeightFile (one run's weight lookup)."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="qdebug-weights-", ignore_cleanup_errors=True)
        self.folder = self._tmp.name
        self._fh = open(os.path.join(self.folder, "weights.bin"), "wb")  # noqa: SIM115 - open while sessions add
        self._where: dict[int, tuple[weakref.ref, int, int]] = {}  # id(array) -> (array, offset, length)
        self._named: dict[tuple, tuple[int, int]] = {}  # (name, dtype, shape) -> (offset, length)
        self._names = itertools.count()
        self._mm: mmap.mmap | None = None

    def __del__(self) -> None:
        # explicit cleanup (see OrtSession.__del__); mappings of the file (spilled weights) outlive its name
        try:
            self._fh.close()
            self._tmp.cleanup()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to report to
            pass

    def place(self, name: str, a: np.ndarray) -> tuple[int, int]:
        """(offset, length) of placeholder `name`'s bytes `a` in the file, written now unless this array or this
        name was written before (the graph's float weights come as a fresh array at every request)."""
        got = self._where.get(id(a))
        if got is not None and got[0]() is a:
            return got[1], got[2]
        named = self._named.get((name, a.dtype.str, a.shape))
        if named is not None:
            return named
        data = memoryview(np.ascontiguousarray(a)).cast("B")
        fh = self._fh
        fh.write(b"\0" * (-fh.tell() % 4096))  # page-aligned, so onnxruntime may map it
        off = fh.tell()
        fh.write(data)
        fh.flush()
        self._where[id(a)] = (weakref.ref(a), off, len(data))
        self._named[(name, a.dtype.str, a.shape)] = (off, len(data))
        return off, len(data)

    def model_path(self) -> str:
        """A new model file name beside the side file (onnxruntime resolves `weights.bin` from the model's folder)."""
        return os.path.join(self.folder, f"model{next(self._names)}.onnx")

    def mapped(self, a: np.ndarray) -> np.ndarray | None:
        """`a` read back from the file through a read-only mapping (the same bytes), None if it was not written."""
        got = self._where.get(id(a))
        if got is None or got[0]() is not a:
            return None
        if self._mm is None or len(self._mm) < got[1] + got[2]:  # (re)mapped once the file holds it
            with open(os.path.join(self.folder, "weights.bin"), "rb") as fh:
                self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return np.frombuffer(self._mm, dtype=a.dtype, count=a.size, offset=got[1]).reshape(a.shape)


def _save_external(model: onnx.ModelProto, folder: str, weights: Weights | None = None,
                   store: WeightFile | None = None) -> str:
    """Write `model` into `folder` with the bytes of its large initializers in one side file, leaving `model`
    untouched (onnx.save_model with external data rewrites the tensors in place); returns the model's path.
    Placeholders (graph.model.weightless) take their bytes from `weights`; with `store`, they go to its shared
    side file (written once per array) and the model beside it.

    onnxruntime maps the side file instead of holding a copy of each weight (only pre-packed MatMul weights
    get one), and protobuf never has to serialize a model of 2 GB or more in one piece.
    """
    light = onnx.ModelProto()
    copy_model_fields(model, light, {"initializer"})
    side = "weights.bin" if store is None else f"{os.path.basename(store.model_path())}.bin"
    if store is not None:
        folder = store.folder
    with open(os.path.join(folder, side), "wb") as fh:
        for t in model.graph.initializer:
            data: bytes | memoryview | None = None
            if is_placeholder(t):
                a = weights(t.name) if weights is not None else None
                want = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
                if a is None or a.dtype != want or tuple(a.shape) != tuple(t.dims):
                    raise ModelError(f"no weights for initializer '{t.name}' of a rewritten model",
                                     fix="report this as a qdebug bug (the session was built without its weights)")
                if store is not None:
                    _external(light.graph.initializer.add(), t, "weights.bin", *store.place(t.name, a))
                    continue
                data = memoryview(np.ascontiguousarray(a)).cast("B")
            elif t.HasField("raw_data") and len(t.raw_data) >= 1024:
                data = t.raw_data  # one tensor's copy at a time
            if data is None:
                light.graph.initializer.add().CopyFrom(t)
                continue
            fh.write(b"\0" * (-fh.tell() % 4096))  # page-aligned, so onnxruntime may map it
            _external(light.graph.initializer.add(), t, side, fh.tell(), len(data))
            fh.write(data)
    path = os.path.join(folder, "model.onnx") if store is None else os.path.join(folder, side[:-4])
    with open(path, "wb") as fh:
        fh.write(light.SerializeToString())
    return path


def _external(ext: onnx.TensorProto, t: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Make `ext` the external-data twin of `t`: its bytes at `offset` in `location`, beside the model."""
    ext.name, ext.data_type = t.name, t.data_type
    ext.dims.extend(t.dims)
    ext.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = ext.external_data.add()
        entry.key, entry.value = key, value


def give_back_memory() -> None:
    """Return freed heap memory to the system (glibc malloc_trim; a no-op elsewhere).

    A dropped model proto's weights are freed into the heap, where they would stay counted in the process's
    resident memory under the sessions built next.
    """
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _data_size(model: onnx.ModelProto) -> int:
    """Bytes of the initializers' raw data (the bulk of a model), without serializing it."""
    return sum(len(t.raw_data) for t in model.graph.initializer if t.HasField("raw_data"))


class OrtSession:
    """An onnxruntime CPU session over an in-memory model, returning outputs by name.

    `run` may be called from several threads at once (onnxruntime sessions are thread-safe). A model of
    `inline_limit` bytes or more, or any model given `weights` (the arrays of its placeholders), goes through a
    temporary folder with its weights in a side file that onnxruntime maps: the same numbers, and the session
    holds no copy of the weights besides the pre-packed MatMul ones. With `store`, the placeholders' arrays go
    to that WeightFile, shared with the other sessions of the run (each array written once).
    """

    def __init__(self, model: onnx.ModelProto, *, threads: int = 0, source: str | None = None,
                 optimize_all: bool = False, model_order: bool = False,
                 disabled_optimizers: tuple[str, ...] = (), inline_limit: int = PROTO_LIMIT,
                 weights: Weights | None = None, store: WeightFile | None = None) -> None:
        so = ort.SessionOptions()
        # BASIC keeps fake-quantized graphs bit-stable; float-only passes (calibration) may use every fusion
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize_all
                                       else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
        so.log_severity_level = 3
        # no busy-waiting between runs: qdebug alternates sessions and numpy work, which spinning
        # worker threads would slow down on a small machine
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # single-threaded unless asked: results do not depend on the core count, and qdebug runs sessions
        # and samples side by side instead (qdebug.workers)
        so.intra_op_num_threads = threads or SESSION_THREADS
        so.inter_op_num_threads = 1
        if model_order:
            # nodes in the model's order wherever the graph allows; the default order walks back from the
            # outputs and can keep every activation alive (qdebug.metrics.fused orders its nodes for this)
            so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        if _shared_arena():
            so.add_session_config_entry("session.use_env_allocators", "1")
        self._tmp: tempfile.TemporaryDirectory | None = None  # kept while the session may read its files
        self._store = store if weights is not None else None  # likewise
        try:
            # ByteSize serializes the whole model once more: the data size decides instead
            if weights is None and (_data_size(model) < inline_limit // 2 or model.ByteSize() < inline_limit):
                src: bytes | str = model.SerializeToString()
            elif self._store is not None:
                src = _save_external(model, self._store.folder, weights, self._store)
            else:
                self._tmp = tempfile.TemporaryDirectory(prefix="qdebug-model-")
                src = _save_external(model, self._tmp.name, weights)
            self.sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"],
                                             disabled_optimizers=list(disabled_optimizers))
        except OSError as exc:
            self._drop_tmp()
            raise ModelError(f"cannot write the temporary copy of a large model ({exc.strerror or exc})",
                             file=source, fix="free space in the temporary folder or set TMPDIR") from None
        except Exception as exc:
            tmp = self._tmp.name if self._tmp is not None else self._store.folder if self._store else None
            self._drop_tmp()
            msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            if tmp:  # the user knows their model, not our temporary copy of it
                msg = msg.replace(f"{tmp}/model.onnx", "the model").replace(tmp, "<temporary folder>")
            raise ModelError(f"onnxruntime cannot load the model: {msg}", file=source,
                             fix="check the opset/ops are supported by onnxruntime") from None
        self.output_names = [o.name for o in self.sess.get_outputs()]
        self._slots: dict[int, tuple | None] = {}
        self.input_names = [i.name for i in self.sess.get_inputs()]

    def __del__(self) -> None:
        # explicit cleanup of the side files: the TemporaryDirectory's own finalizer would print a
        # ResourceWarning when a run ends with an error while sessions are still referenced
        try:
            self._drop_tmp()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to report to
            pass

    def _drop_tmp(self) -> None:
        """Remove the side-file folder now (a failed session must not leave it to the garbage collector)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def run(self, feed: dict[str, np.ndarray], slot: int | None = None) -> dict[str, np.ndarray]:
        """Run one sample; returns every output by name.

        With `slot`, outputs are written into arrays kept for that slot and reused by the next run with the
        same slot (no allocation, no copy: the first touch of fresh memory costs as much as a node). The
        caller must be done with a slot's previous values before running it again.
        """
        feed = {k: v for k, v in feed.items() if k in self.input_names}
        if slot is not None:
            return self._run_slot(feed, slot)
        try:
            vals = self.sess.run(None, feed)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"onnxruntime failed while running: {msg}",
                             fix="check the input shapes/dtypes match the model") from None
        return dict(zip(self.output_names, vals, strict=True))

    def _run_slot(self, feed: dict[str, np.ndarray], slot: int) -> dict[str, np.ndarray]:
        """`run` into the slot's arrays; the first run of a slot (or any change of shapes) allocates them."""
        shapes = {k: v.shape for k, v in feed.items()}
        bound = self._slots.get(slot, ())
        if bound is None:  # binding failed before: this model's outputs change shape with the data
            return self.run(feed)
        if bound and bound[2] == shapes:
            io, bufs, _ = bound
            # the binding keeps a pointer: the (possibly copied) contiguous inputs must outlive the run
            held = {k: np.ascontiguousarray(v) for k, v in feed.items()}
            for k, v in held.items():
                io.bind_cpu_input(k, v)
            try:
                self.sess.run_with_iobinding(io)
                return dict(bufs)
            except Exception:  # e.g. an output whose shape depends on the data: run unbound from now on
                self._slots[slot] = None
                return self.run(feed)
        vals = self.run(feed)
        if all(isinstance(v, np.ndarray) and v.dtype != object and v.flags.c_contiguous for v in vals.values()):
            io = self.sess.io_binding()
            for name, v in vals.items():
                io.bind_output(name, "cpu", 0, v.dtype, list(v.shape), v.ctypes.data)
            self._slots[slot] = (io, vals, shapes)
            return dict(vals)
        return vals

