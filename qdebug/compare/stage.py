"""The compare stage: inputs -> calibration -> float/isolated and cumulative runs -> metrics -> CompareResult.

This is the orchestration the CLI (and bisect, and reports) call; it owns no math of its own.
"""

from __future__ import annotations

import datetime as _dt
import platform
import time
from collections.abc import Callable

import numpy as np
from onnx import TensorProto, helper

from qdebug import __version__
from qdebug.errors import ModelError
from qdebug.graph.fusion import QuantOp
from qdebug.graph.hazards import Grid, Grids, judge_hazards
from qdebug.graph.model import ModelGraph, node_reads
from qdebug.graph.parts import concat_parts
from qdebug.inputs.dataset import Dataset
from qdebug.metrics.engine import CompareAccumulator
from qdebug.metrics.fused import CUM, FusedLayout, add_sample, build_fused, static_shapes
from qdebug.quant.scheme import QParams, QuantConfig
from qdebug.quant.simulate import SimPlan
from qdebug.results.compare import (
    COMPARE_SCHEMA,
    CompareResult,
    HazardRow,
    IOInfo,
    ModelInfo,
    OutputRow,
    PartRow,
    QuantInfo,
    SampleInfo,
    TensorRow,
)
from qdebug.results.values import SNR_INF, Metrics, json_float
from qdebug.runners.session import OrtSession, WeightFile, give_back_memory
from qdebug.runners.sim import SimBackend
from qdebug.workers import ANALYSIS_THREADS, ordered_map, pool

JUMP_REF_DB = 60.0  # input SNR above this counts as exact when computing an op's jump (docs/metrics.md)
HEALTHY_DB = 40.0  # cumulative SNR at or above this is not highlighted
ENGINES = ("auto", "in-graph", "arrays")  # where the metric sums are taken (docs/simulator.md)
# optimizers that cannot change a number (they merge equal computations or fold constants with the same
# kernels) but take half the fused session's creation time on its ~5,000 nodes (0.6 -> 0.36 s, bench model)
FUSED_SKIP = ("CommonSubexpressionElimination", "ConstantFolding", "ConstantSharing")
# one sample's exposed float + isolated values at least this large: the array path never holds them together
# with the quantized values (the isolated ones are summed and dropped first; a slower, sequential loop)
SPLIT_BYTES = 256 << 20

Progress = Callable[[str, int, int], None]  # (phase, advance, total)


def environment() -> dict:
    """Versions of everything that can change a number (for bug reports)."""
    import onnx
    import onnxruntime

    return {"qdebug": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "os": platform.platform()}


def run_compare(graph: ModelGraph, dataset: Dataset, config: QuantConfig, backend: SimBackend,
                calib: Dataset | None = None, progress: Progress | None = None,
                on_sample: Callable[[int, dict[str, np.ndarray], dict[str, np.ndarray]], None] | None = None,
                engine: str = "auto") -> CompareResult:
    """Calibrate (unless done), then measure cumulative and isolated error of every float tensor.

    `engine`: "auto"/"in-graph" take the metric sums inside the onnxruntime model (metrics.fused) where it
    can be built, else on exposed arrays; "arrays" always on exposed arrays (the reference path).

    `on_sample(k, float_values, quant_values)` sees each sample's graph inputs and outputs (e.g. for the
    detection decoder; the array path passes every tensor); arrays may be reused for a later sample once it
    returns, so it must copy what it keeps.
    """
    sha = graph.sha256()  # serializes the whole model: now, while nothing else is held
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    if not backend.ranges:
        cal = calib or dataset
        total = len(cal) * (2 if config.scheme.calibrator != "minmax" else 1)
        backend.prepare(graph, config, cal,
                        progress=(lambda k: progress("calibrate", k, total)) if progress else None)
    timing["calibrate_s"] = time.perf_counter() - t0
    ops: list[QuantOp] = backend.quant_ops(graph)
    sp: SimPlan = backend.plan(graph, config)
    inputs = [i.name for i in graph.inputs]
    # compared: float inputs and activations (token ids and masks are fed as given, never quantized)
    tensors = [i for i in inputs if graph.is_float(i)] + graph.activation_tensors()
    t1 = time.perf_counter()
    # every activation, plus graph outputs that are not compared (e.g. integer indices) for the sample hook
    exposed = graph.activation_tensors()
    exposed += [o.name for o in graph.outputs if o.name not in set(exposed)]
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    replay = getattr(backend, "replay", None)  # recorded quantized values (runners.dumps): no model to run
    # the in-graph sums count a tensor without a quantized value as exact: recorded or imported quantized runs
    # that lack some tensors (runners.dumps, runners.qdq) take the sums on arrays, where it stays "not available"
    partial = replay is not None or bool(getattr(backend, "unmatched", None))
    shapes = static_shapes(graph, tensors) if engine != "arrays" and not partial else None
    # the simulator's own models hold placeholders for the graph's float weights, and every session gets its
    # weights through a side file onnxruntime maps (runners.session): neither the models, their serialized
    # bytes nor the sessions hold another copy of every weight (docs/benchmarks.md, model families)
    own = getattr(backend, "weightless_models", False)
    light = {"weightless": True} if own else {}
    wp = backend.weights(graph, config) if own else graph.weight
    store = WeightFile() if own else None  # one side file for every session's weights (each written once)
    amodel, iso_map = backend.analysis_model(graph, config, exposed, **light)
    for i in inputs:
        if "iso::" + i in iso_map.values():
            amodel.graph.output.append(helper.make_tensor_value_info("iso::" + i, TensorProto.FLOAT, None))
    asess: OrtSession | None = None
    if not shapes:  # the array path for sure: its analysis session now, before the next model is built
        asess = OrtSession(amodel, threads=backend.threads or ANALYSIS_THREADS, source=graph.path, weights=wp,
                           store=store)
        amodel = None
        give_back_memory()
    # recorded quantized values replace the cumulative model: none is built
    qmodel = backend.quantized_model(graph, config, exposed, **light) if replay is None else None
    # expose the quantized graph inputs of the cumulative run
    qnodes = {n.output[0] for n in qmodel.graph.node} if qmodel is not None else set()
    qnames = {i: i + "::q" for i in inputs if i + "::q" in qnodes}  # quantized graph inputs
    for i in qnames:
        qmodel.graph.output.append(helper.make_tensor_value_info(i + "::q", TensorProto.FLOAT, None))
    parts = concat_parts(graph, tensors)
    acc = CompareAccumulator(graph, tensors, iso_map, parts)
    names = dataset.names()
    lay = build_fused(graph, amodel, qmodel, tensors, iso_map, qnames, parts, shapes) if shapes else None
    engine, fallback = "arrays", ""
    if lay is not None:
        try:
            # the cumulative chain's placeholders carry cum:: names in the fused model
            def fused_wp(n: str) -> np.ndarray | None:
                return wp(n.removeprefix(CUM))

            sess = OrtSession(lay.model, threads=backend.threads, source=graph.path, model_order=True,
                              disabled_optimizers=FUSED_SKIP, weights=fused_wp, store=store)
            engine = "in-graph"
            if own:
                backend.spill_weights(graph, config, store)
        except ModelError as exc:  # onnxruntime refuses the fused model: the array path still works
            fallback = f"metric sums taken on exposed arrays (slower): the in-graph model was refused: {exc.problem}"
    if engine == "in-graph":
        timing["build_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        bad = _fused_loop(sess, lay, dataset, acc, inputs, names, progress, on_sample)
        if bad is not None:  # shape inference was wrong somewhere: start again on the array path (nothing was
            # added to `acc` yet; it re-reads the part positions from the first sample's values)
            engine = "arrays"
            fallback = (f"metric sums taken on exposed arrays (slower): tensor '{bad}' has another shape at run "
                        "time than shape inference gives")
    lay = None  # the sessions hold what they need: the model protos (every weight, twice) can go
    if engine == "arrays":
        # one session after the other, each model dropped once its session holds what it needs; the two run
        # side by side on the shared workers (qdebug.workers)
        if asess is None:
            asess = OrtSession(amodel, threads=backend.threads or ANALYSIS_THREADS, source=graph.path, weights=wp,
                               store=store)
        del amodel
        qsess = replay() if replay is not None else OrtSession(qmodel, threads=backend.threads, source=graph.path,
                                                              weights=wp, store=store)
        del qmodel
        if own:  # the sessions hold what they need: the plan's weights go to a mapped file meanwhile
            backend.spill_weights(graph, config, store)
        give_back_memory()
        timing["build_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        _array_loop(asess, qsess, dataset, acc, inputs, names, progress, on_sample,
                    missing=set(getattr(backend, "unmatched", None) or ()))
        del asess, qsess
    else:
        del amodel, qmodel, sess
    timing["compare_s"] = time.perf_counter() - t2
    timing["total_s"] = time.perf_counter() - t0
    res = _assemble(graph, dataset, config, backend, ops, sp, acc, parts, timing, engine, sha)
    if fallback:
        res.warnings.append(fallback)
    return res


def _array_loop(asess: OrtSession, qsess: OrtSession, dataset: Dataset, acc: CompareAccumulator,
                inputs: list[str], names: list[str], progress: Progress | None, on_sample: Callable | None,
                missing: set[str] | frozenset[str] = frozenset()) -> None:
    """Run the analysis and cumulative graphs, exposing every activation, and sum the metrics with numpy.

    Per sample: the two runs side by side on the workers (the next sample is decoded meanwhile), then the
    metrics spread over the workers with the hook here. One sample in flight, each session writing into one
    set of reused output arrays: overlapping sample k's metrics with sample k+1's runs was faster per image
    but needed a second set (+0.7 GB and ~190 k more page faults, which cost more than it saved below ~20
    images: docs/benchmarks.md).

    The first sample, and every sample when its float + isolated values reach SPLIT_BYTES (a BERT-base-size
    model), goes in halves instead: the analysis run, its sums, its isolated values dropped, then the
    cumulative run and its sums (runs unbound, so dropped values go back to onnxruntime's arena): the same
    sums, about a third less memory.

    `missing`: graph inputs a recorded quantized run lacks (runners.dumps): left out, so "not available".
    """
    ex = pool()
    it = iter(dataset)
    sample = next(it, None)
    k = 0
    split = True  # decided on the first sample's size
    iso_names = set(acc.iso_map.values())
    while sample is not None:
        if split:
            fut_f = ex.submit(asess.run, sample)
            upcoming = next(it, None)
            fvals = fut_f.result()
            fvals.update(sample)
            if k == 0:
                split = sum(v.nbytes for v in fvals.values() if isinstance(v, np.ndarray)) >= SPLIT_BYTES
            acc.collect(acc.submit_float(fvals, names[k]))
            for n in iso_names:
                fvals.pop(n, None)
            qvals = qsess.run(sample)
        else:
            fut_f, fut_q = ex.submit(asess.run, sample, 0), ex.submit(qsess.run, sample, 0)
            upcoming = next(it, None)
            fvals = fut_f.result()
            fvals.update(sample)
            qvals = fut_q.result()
        for i in inputs:  # the quantized input, else a recorded one, else (never quantized) the float sample
            if i + "::q" in qvals:
                qvals[i] = qvals.pop(i + "::q")
            elif i not in qvals and i not in missing:  # a recorded run without it: "not available"
                qvals[i] = sample[i]
        pending = acc.submit_quant(fvals, qvals, names[k]) if split or k == 0 else acc.submit(fvals, qvals, names[k])
        if on_sample is not None:
            on_sample(k, fvals, qvals)
        acc.collect(pending)
        del fvals, qvals
        if progress:
            progress("compare", 1, len(dataset))
        sample, k = upcoming, k + 1


def _fused_loop(sess: OrtSession, lay: FusedLayout, dataset: Dataset, acc: CompareAccumulator, inputs: list[str],
                names: list[str], progress: Progress | None, on_sample: Callable | None) -> str | None:
    """Run the fused model (metrics.fused) over the samples, two side by side on single-threaded runs, and
    add each one's sums in sample order; the hook sees the inputs and the float and quantized graph outputs.

    Returns None, or (before anything was added) a tensor whose run-time shape is not the static one.
    """
    for k, (sample, vals) in enumerate(ordered_map(lambda s: (s, sess.run(s)), dataset)):
        if k == 0 and (bad := lay.shape_mismatch(vals)) is not None:
            return bad
        add_sample(acc, lay, vals, names[k])
        if on_sample is not None:
            on_sample(k, {**{i: sample[i] for i in inputs}, **{o: vals[n] for o, n in lay.float_outputs.items()}},
                      {o: vals[n] for o, n in lay.quant_outputs.items()})
        if progress:
            progress("compare", 1, len(dataset))
    return None


def _assemble(graph: ModelGraph, dataset: Dataset, config: QuantConfig, backend: SimBackend,
              ops: list[QuantOp], sp: SimPlan, acc: CompareAccumulator, parts: dict, timing: dict,
              engine: str, sha: str) -> CompareResult:
    from qdebug.graph.fusion import group_of

    groups = group_of(ops)
    # tensors whose isolated error an imported quantized run cannot give (runners.qdq, runners.dumps)
    no_iso = set(getattr(backend, "isolated_unavailable", ()))
    results: list[TensorRow] = []
    by_tensor: dict[str, TensorRow] = {}
    for t in acc.tensors:
        node = graph.producer.get(t)
        op = groups.get(node.name if node is not None else t)
        quantized = op is not None and op.quantizable and \
            sp.precision.get(op.key) is not None and t in op.outputs
        cum = acc.cumulative(t)
        jump = None
        if cum.snr_db is not None:
            if node is None:
                in_snr = SNR_INF
            else:
                # node_reads: an If/Loop's data comes in through its branches, not its listed inputs
                ins = [by_tensor[i].cumulative.snr_db for i in node_reads(node) if i in by_tensor]
                ins = [v for v in ins if v is not None]
                in_snr = min(ins) if ins else SNR_INF
            # an exact source (a graph input's float values, inputs above JUMP_REF_DB): the loss is measured from
            # JUMP_REF_DB and an output above it lost nothing (never a negative artefact such as 60 - 145)
            jump = min(in_snr, JUMP_REF_DB) - (min(cum.snr_db, JUMP_REF_DB) if in_snr >= JUMP_REF_DB else cum.snr_db)
            for s in parts.get(t, []):  # a Concat: the worst part counts (a crushed score part)
                src = by_tensor.get(s.source)
                ps = acc.part_cum[(t, s.name)].result().snr_db
                if src is not None and src.cumulative.snr_db is not None and ps is not None:
                    jump = max(jump, min(src.cumulative.snr_db, JUMP_REF_DB) - ps)
        shape, fr = acc.shapes.get(t), acc.float_range(t)
        r = TensorRow(
            t, node.name if node is not None else t, node.op_type if node is not None else "Input",
            graph.index_of[node.name] if node is not None else -1, op.key if op else None,
            bool(quantized), list(shape) if shape else None,
            [json_float(fr[0]), json_float(fr[1])] if fr else None, cum,
            acc.isolated(t) if t not in no_iso else Metrics(None, None, None, None), json_float(jump))
        results.append(r)
        by_tensor[t] = r
    part_rows = [PartRow(**s.to_json(), cumulative=acc.part_cum[(t, s.name)].result(),
                         isolated=acc.part_iso[(t, s.name)].result())
                 for t, specs in parts.items() for s in specs]
    outputs = [OutputRow(o.name, by_tensor[o.name].cumulative, by_tensor[o.name].isolated,
                         [p for p in part_rows if p.tensor == o.name])
               for o in graph.outputs if o.name in by_tensor]
    # judged at the precision each op runs at (overrides, vendor files, an imported model's own)
    hazards, handled = judge_hazards(graph, backend.float_minmax, _node_bits(ops, sp),
                                     bits=config.scheme.activation.bits or 8,
                                     channel_absmax=getattr(backend, "channel_absmax", None),  # LayerNorm outliers
                                     steps=_imported_steps(backend), grids=_hazard_grids(ops, sp, config, backend),
                                     # steps a vendor file does not set are the built-in estimate
                                     estimated=backend.name in ("qdq", "dumps") or config.source is not None)
    warnings = list(getattr(backend, "warnings", []))  # e.g. float tensors a --quantized model does not hold
    warnings += handled
    if sp.unsupported:
        warnings.append(f"{len(sp.unsupported)} op(s) not supported by the simulator were run in float: "
                        + ", ".join(sp.unsupported[:10]))
    for t in acc.nonfinite_quant[:5]:
        warnings.append(f"quantized run produced NaN/Inf in '{t}' (metrics for it are null)")
    for t in acc.zero_size[:5]:
        warnings.append(f"tensor '{t}' is zero-size and was skipped")
    if acc.nonfinite_float:  # e.g. -Inf attention masks, which never reach an output
        warnings.append(f"{len(acc.nonfinite_float)} float tensor(s) hold Inf/NaN on some samples (e.g. an attention "
                        "mask); those samples are left out of their metrics: " + ", ".join(acc.nonfinite_float[:5]))
    g = graph
    model = ModelInfo(g.path, sha, len(g.nodes),
                      next((o.version for o in g.model.opset_import if o.domain in ("", "ai.onnx")), None),
                      [IOInfo.from_json(i.to_json()) for i in g.inputs],
                      [IOInfo.from_json(o.to_json()) for o in g.outputs])
    samples = SampleInfo(len(dataset), dataset.source, dataset.kind, dataset.names()[:1000],
                         dataset.preprocess.to_json() if dataset.preprocess else None)
    quant = QuantInfo.from_json({**backend.describe(), "scheme": config.scheme.to_json(), "calib": config.source,
                                 "overrides": config.overrides_json(), "groups": sp.to_json(ops),
                                 "unsupported": sp.unsupported})
    return CompareResult(COMPARE_SCHEMA, __version__, now_utc(), "", model, samples, quant, results, part_rows,
                         outputs, [HazardRow.from_json(h.to_json()) for h in hazards], warnings,
                         {k: round(v, 3) for k, v in timing.items()}, engine, environment())


def _node_bits(ops: list[QuantOp], sp: SimPlan) -> dict[str, int | None]:
    """Node -> int bits its op runs at in this plan (None: float); nodes of unplanned ops are left out."""
    out: dict[str, int | None] = {}
    for op in ops:
        p = sp.precision.get(op.key)
        if p is not None:
            for n in [op.key, *op.nodes]:
                out[n] = p.bits
    return out


def _hazard_grids(ops: list[QuantOp], sp: SimPlan, config: QuantConfig, backend: SimBackend) -> Grids | None:
    """The plan's activation quantization points for the hazard checks, those a vendor file pins marked "file"
    (None when the run has no planned points, e.g. an imported quantized model)."""
    if not sp.act:
        return None
    profile = getattr(backend, "profile", None)
    pinned = config.act_params

    def grid(p: QParams, key: str) -> Grid | None:
        if p.scale.size != 1:
            return None
        lo, hi = p.range()
        return Grid(float(lo.ravel()[0]), float(hi.ravel()[0]), float(p.scale.ravel()[0]), p.bits,
                    "file" if key in pinned else "calibrated")

    out = Grids(input_side=getattr(profile, "quantize_at", "output") == "input",
                file=(config.source or "").partition(":")[2] or (config.source or ""))
    for op in ops:
        for t in op.outputs:  # output-side points, graph inputs, requantized passthrough outputs
            if t in sp.act and (gr := grid(sp.act[t], t if op.kind != "input" or t in pinned else f"{t}:0")):
                out.stored[t] = gr
        for j, (m, _, t) in enumerate(op.inputs):  # input-side points
            key = f"{op.key}:{j}"
            if key in sp.act and (gr := grid(sp.act[key], key)):
                out.read[(m, t)] = gr
    return out


def _imported_steps(backend: SimBackend) -> dict[str, float]:
    """Float tensor -> int step of an imported QDQ model (`--quantized`: its per-tensor scales); else empty."""
    m = getattr(backend, "match", None)
    out: dict[str, float] = {}
    for t, p in (getattr(m, "pair_of", None) or {}).items():
        v = m.qgraph.const_value(p.q.input[1]) if len(p.q.input) > 1 else None
        if v is not None and v.size == 1:
            out[t] = float(abs(v.reshape(())))
    return out


def now_utc() -> str:
    """The creation time stamp of a result (UTC, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
