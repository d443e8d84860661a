"""The built-in simulator backend: float calibration, then fake-quantized graphs run by onnxruntime."""

from __future__ import annotations

import math
import mmap
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence

import numpy as np
import onnx

from qdebug.graph.families import mask_apply
from qdebug.graph.fusion import QuantOp, build_quant_ops
from qdebug.graph.hazards import norm_inputs
from qdebug.graph.model import SHARED_MIN_BYTES, ModelGraph
from qdebug.quant.calibrate import Calibrator, make_calibrator
from qdebug.quant.profiles import Profile, get_profile
from qdebug.quant.scheme import QuantConfig
from qdebug.quant.simulate import SimPlan, build_analysis, build_quantized, plan, plan_weight
from qdebug.runners.base import Backend, register_backend
from qdebug.runners.session import OrtSession, WeightFile, Weights
from qdebug.workers import WORKERS, ordered_map


def check_finite(graph: ModelGraph, values: dict[str, np.ndarray], order: Sequence[str], sample: str) -> None:
    """Raise on the first (topologically) tensor holding NaN/Inf in a float run."""
    for t in order:
        v = values.get(t)
        if v is None or v.size == 0 or not np.issubdtype(v.dtype, np.floating):
            continue
        if not np.isfinite(v).all():
            raise graph.nonfinite_error(t, "NaN" if np.isnan(v).any() else "Inf", sample)


@register_backend
class SimBackend(Backend):
    """Fake-quantizes the ONNX graph per a vendor profile and runs it with onnxruntime."""

    name = "sim"
    intermediates = True
    # builds its models with weight placeholders when asked (`weightless=True`) and resolves them through
    # `weights()`: compare then keeps one copy of every weight (docs/benchmarks.md, model families)
    weightless_models = True

    def __init_subclass__(cls, **kwargs: object) -> None:
        # a subclass that builds its own models keeps the capability only if it says so itself
        super().__init_subclass__(**kwargs)
        if "weightless_models" not in cls.__dict__ and any(
                m in cls.__dict__ for m in ("analysis_model", "quantized_model", "weights")):
            cls.weightless_models = False

    def __init__(self, profile: str | Profile = "generic", threads: int = 0) -> None:
        self.profile = profile if isinstance(profile, Profile) else get_profile(profile)
        self.threads = threads
        self.ranges: dict[str, tuple[float, float]] = {}
        self.float_minmax: dict[str, tuple[float, float]] = {}
        self.channel_absmax: dict[str, np.ndarray] = {}  # LayerNorm inputs: per-channel max |x| (hazards)
        self._ops: dict[int, list[QuantOp]] = {}
        self._sessions: dict[tuple, OrtSession] = {}
        self._ranges_version = 0  # bumped whenever self.ranges changes (plan cache key)
        self._plan: tuple[ModelGraph, tuple, SimPlan] | None = None  # (graph, (config key, ranges version), plan)
        self.calibrated_samples = 0

    # ------------------------------------------------------------ calibration
    def prepare(self, graph: ModelGraph, config: QuantConfig, calib: Iterable[dict[str, np.ndarray]],
                progress: Callable[[int], None] | None = None) -> None:
        """Calibrate activation ranges on float runs (1 pass for minmax, 2 for histogram methods)."""
        tensors = self.calibration_tensors(graph)
        # a Dataset is re-iterable and loads lazily: keep it, not its samples (memory stays flat in N)
        samples = calib if hasattr(calib, "__len__") else list(calib)
        names = calib.names() if hasattr(calib, "names") else None
        cal = make_calibrator(config.scheme.calibrator, config.scheme.percentile)
        self.channel_absmax = {}
        self._observe(graph, tensors, cal, samples, names, progress, optimize_all=True,
                      absmax=self.channel_absmax, absmax_of=set(norm_inputs(graph)))
        bits = config.scheme.activation.bits or 8
        self.ranges = cal.ranges(bits)
        self._ranges_version += 1
        self.float_minmax = cal.minmax()
        self.calibrated_samples = len(samples)
        self._calib = (samples, names, config.scheme.calibrator, config.scheme.percentile, bits)

    def _observe(self, graph: ModelGraph, tensors: Sequence[str], cal: Calibrator, samples: Sequence,
                 names: list[str] | None, progress: Callable[[int], None] | None, optimize_all: bool,
                 absmax: dict[str, np.ndarray] | None = None, absmax_of: Collection[str] = ()) -> None:
        """Feed `tensors` of every float sample to `cal`, the samples run side by side on the shared workers.

        Per-sample work (min/max, or the histogram counts) happens on the workers and is summed here in
        sample order, so the result equals a sequential pass and the first bad sample in order is reported.
        Tensors in `absmax_of` also get their per-channel (last axis) max |x| over finite values into `absmax`.
        """
        # no copy of the model: its float weights go from the graph to a side file onnxruntime maps
        sess = OrtSession(graph.with_outputs([t for t in tensors if t in graph.producer], graph.light_view().model),
                          threads=self.threads, source=graph.path, optimize_all=optimize_all, weights=graph.weight)

        def values(sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            vals = sess.run(sample)
            vals.update(sample)
            return vals

        def ranges_of(item: tuple[int, dict[str, np.ndarray]]) -> tuple[dict, dict[str, np.ndarray]]:
            """Run one sample and take each tensor's min and max, and the asked channel maxima (on a worker)."""
            k, sample = item
            vals = values(sample)
            out = {}
            amax = {}
            for t in tensors:
                v = vals.get(t)
                if v is None or not np.issubdtype(v.dtype, np.floating) or v.size == 0:
                    continue
                # min/max propagate NaN and Inf, so they double as the finiteness check
                mn, mx = float(v.min()), float(v.max())
                finite = math.isfinite(mn) and math.isfinite(mx)
                if not finite:
                    # an error only when it reaches a graph output: -Inf attention masks (and the NaN a fully
                    # masked Softmax row gives before an IsNaN guard) are how exports work; the range is
                    # taken over the finite values
                    if not all(np.isfinite(vals[o.name]).all() for o in graph.outputs if o.name in vals
                               and np.issubdtype(vals[o.name].dtype, np.floating)):
                        check_finite(graph, vals, [*tensors, *(o.name for o in graph.outputs)],
                                     names[k] if names else str(k))
                    fin = v[np.isfinite(v)]
                    if fin.size == 0:
                        continue
                    mn, mx = float(fin.min()), float(fin.max())
                out[t] = (mn, mx)
                if t in absmax_of and v.ndim:
                    a = np.abs(v).reshape(-1, v.shape[-1])
                    amax[t] = a.max(0) if finite else np.where(np.isfinite(a), a, 0).max(0)
            return out, amax

        def hists_of(item: tuple[int, dict[str, np.ndarray]]) -> list[tuple[str, np.ndarray | None]]:
            """Run one sample and take each tensor's histogram over the first pass's range (on a worker)."""
            vals = values(item[1])
            return [(t, cal.histogram(t, v)) for t in tensors if (v := vals.get(t)) is not None
                    and np.issubdtype(v.dtype, np.floating) and v.size and t in cal.lo]

        for got, amax in ordered_map(ranges_of, enumerate(samples), window=WORKERS + 1):
            for t, (mn, mx) in got.items():
                cal.observe_range(t, mn, mx)
            if absmax is not None:
                for t, a in amax.items():
                    absmax[t] = np.maximum(absmax[t], a) if t in absmax else a
            if progress:
                progress(1)
        for _ in range(1, cal.passes):  # histogram pass: counts on the workers, summed here
            for hists in ordered_map(hists_of, enumerate(samples), window=WORKERS + 1):
                for t, h in hists:
                    cal.add_hist(t, h)
                if progress:
                    progress(1)

    def ensure_ranges(self, graph: ModelGraph) -> None:
        """Calibrate, on the same samples, quantization points of `graph` not seen yet (e.g. a tensor that was
        inside a fused op before the graph was truncated there)."""
        if not getattr(self, "_calib", None):
            return
        missing = [t for t in self.calibration_tensors(graph) if t not in self.ranges and t in graph.producer]
        if not missing:
            return
        samples, names, method, pct, bits = self._calib
        cal = make_calibrator(method, pct)
        # ORT_ENABLE_BASIC as before: a truncated graph's tensors keep the values its runs see
        self._observe(graph, missing, cal, samples, names, None, optimize_all=False)
        self.ranges.update(cal.ranges(bits))
        self._ranges_version += 1
        self.float_minmax.update(cal.minmax())

    def calibration_tensors(self, graph: ModelGraph) -> list[str]:
        """Tensors whose ranges matter: quantization points of this profile plus the hazard checks' inputs.

        Exposing only these (not tensors inside fused ops or after passthrough ops) keeps the calibration
        pass close to a plain float pass.
        """
        want: set[str] = {i.name for i in graph.inputs}
        for op in self.quant_ops(graph):
            if op.quantizable:
                want.update(op.outputs)
                want.update(t for _, _, t in op.inputs)
        want.update(norm_inputs(graph))  # the norm_outlier hazard's per-channel maxima
        # scores a -inf mask was applied to (float by rule): their finite range, for the hazard checks
        want.update(o for n in mask_apply(graph) for o in graph.node_by_name[n].output if o)
        for node in graph.nodes:
            scale = node.op_type in ("Mul", "Div") and any(graph.is_constant(i) for i in node.input if i)
            if node.op_type in ("Concat", "Split") or scale:  # Split parts: profile range rules (clip_sigmoid_inputs)
                want.update(t for t in [*node.input, *node.output] if t and not graph.is_constant(t))
        order = [i.name for i in graph.inputs] + graph.activation_tensors()
        return [t for t in order if t in want]

    def quant_ops(self, graph: ModelGraph) -> list[QuantOp]:
        """The fused quantization units of `graph` under this profile (cached)."""
        key = graph.uid
        if key not in self._ops:
            self._ops[key] = build_quant_ops(graph, fuse=self.profile.fuse)
        return self._ops[key]

    def plan(self, graph: ModelGraph, config: QuantConfig) -> SimPlan:
        """Resolved precisions and parameters for `config` (cached while the ranges stay the same)."""
        self.ensure_ranges(graph)
        key = (config.key(), self._ranges_version)
        cached = self._plan
        # the graph object itself is held and compared: a freed graph's id could be reused
        if cached is not None and cached[0] is graph and cached[1] == key:
            return cached[2]
        sp = plan(graph, self.quant_ops(graph), self.profile, config, self.ranges)
        self._plan = (graph, key, sp)
        return sp

    # ---------------------------------------------------------------- models
    def quantized_model(self, graph: ModelGraph, config: QuantConfig,
                        outputs: Sequence[str] | None = None, weightless: bool = False) -> onnx.ModelProto:
        """The fake-quantized ONNX model (cumulative: every op quantized per `config`). `weightless`: the
        graph's large float weights and the plan's fake-quantized ones as placeholders, for an OrtSession given
        `weights=self.weights(graph, config)`."""
        sp = self.plan(graph, config)
        return build_quantized(graph.light_view() if weightless else graph, self.quant_ops(graph), sp, self.profile,
                               list(outputs) if outputs is not None else None, placeholders=weightless)

    def analysis_model(self, graph: ModelGraph, config: QuantConfig, tensors: Sequence[str],
                       weightless: bool = False) -> tuple[onnx.ModelProto, dict[str, str]]:
        """Float graph + isolated quantized clone of each op, exposing `tensors` and their twins
        (`weightless` as in `quantized_model`)."""
        sp = self.plan(graph, config)
        return build_analysis(graph.light_view() if weightless else graph, self.quant_ops(graph), sp, self.profile,
                              list(tensors), placeholders=weightless)

    def weights(self, graph: ModelGraph, config: QuantConfig) -> Weights:
        """The arrays behind the placeholders of `weightless` models: the plan's fake-quantized weights, else
        the graph's float ones (neither copied)."""
        sp = self.plan(graph, config)

        def lookup(name: str) -> np.ndarray | None:
            a = plan_weight(sp, name)
            return a if a is not None else graph.weight(name)

        return lookup

    def spill_weights(self, graph: ModelGraph, config: QuantConfig, store: WeightFile | None = None) -> None:
        """Move the plan's large fake-quantized weights into a mapped temporary file (deleted at once; the
        mapping keeps it until the arrays go): the same bytes, read back only when a later session needs them.

        Called once the sessions hold what they need, so the weights are not kept in memory beside them.
        Best effort: with no room in the temporary folder they stay in memory. With `store` (the sessions' shared
        side file), the weights it already holds are mapped from it, not written again.
        """
        sp = self.plan(graph, config)
        big = [(k, a) for k, a in sp.weights.items() if a.nbytes >= SHARED_MIN_BYTES and a.flags.owndata]
        if store is not None:
            for k, a in big:
                m = store.mapped(a)
                if m is not None:
                    sp.weights[k] = m
            big = [(k, a) for k, a in big if sp.weights[k] is a]
        if not big:
            return
        try:
            with tempfile.TemporaryFile(prefix="qdebug-plan-") as fh:
                offsets = []
                for _, a in big:
                    fh.write(b"\0" * (-fh.tell() % 64))  # numpy-aligned
                    offsets.append(fh.tell())
                    fh.write(memoryview(np.ascontiguousarray(a)).cast("B"))
                fh.flush()
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # no space or no mmap: keep them in memory
            return
        for (k, a), off in zip(big, offsets, strict=True):
            sp.weights[k] = np.frombuffer(mm, dtype=a.dtype, count=a.size, offset=off).reshape(a.shape)

    def config_key(self, graph: ModelGraph, config: QuantConfig) -> tuple:
        """What makes two configs give the same quantized model (the session cache key)."""
        return config.key()

    def model_source(self, graph: ModelGraph) -> str | None:
        """The file named in onnxruntime's errors about the quantized model."""
        return graph.path

    def session(self, graph: ModelGraph, config: QuantConfig, outputs: Sequence[str]) -> OrtSession:
        """A cached onnxruntime session of the quantized model with the given outputs."""
        key = (graph.uid, self.config_key(graph, config), tuple(outputs))
        if key not in self._sessions:
            if len(self._sessions) > 8:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[key] = OrtSession(self.quantized_model(graph, config, outputs),
                                             threads=self.threads, source=self.model_source(graph))
        return self._sessions[key]

    def run(self, graph: ModelGraph, config: QuantConfig, samples: Iterable[dict[str, np.ndarray]],
            outputs: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        sess = self.session(graph, config, outputs)
        yield from ordered_map(sess.run, samples)  # samples side by side, results in order

    def describe(self) -> dict:
        return {"backend": self.name, "profile": self.profile.name, "quantize_at": self.profile.quantize_at,
                "fuse": self.profile.fuse}
