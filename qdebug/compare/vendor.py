"""Compare against a vendor simulator (rknn-toolkit2), next to the float run and the built-in simulator.

Final outputs come from the vendor simulator on every sample; per-tensor results come from the
toolkit's accuracy_analysis dumps on the first K samples (our metrics computed from the dumps, the
toolkit's own table parsed beside them). Tensors the toolkit fused away are listed. `on_sample` hands each
sample's float and toolkit outputs to the caller (the CLI scores the task verdict on them, as for the built-in run).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from qdebug.graph.model import ModelGraph
from qdebug.graph.parts import concat_parts
from qdebug.inputs.dataset import Dataset
from qdebug.metrics.stats import TensorStats
from qdebug.quant.scheme import QuantConfig
from qdebug.results.compare import CompareResult
from qdebug.results.vendor import VendorComparison, VendorTensor
from qdebug.runners.reference import float_references
from qdebug.runners.rknn_results import fused_away, load_dump, onnx_name, parse_error_analysis, parse_name_map
from qdebug.runners.rockchip import RknnBackend

# below this SNR the toolkit's float run of a tensor is not the ONNX model's (float rounding is > 100 dB): the
# toolkit computes the op differently, so part of its error at and after that tensor is not quantization
FLOAT_DEVIATION_DB = 60.0


def rknn_compare(graph: ModelGraph, dataset: Dataset, config: QuantConfig, rk: RknnBackend, compare: CompareResult,
                 calib: Dataset | None = None, analysis_samples: int = 1,
                 on_sample: Callable[[int, dict[str, np.ndarray], dict[str, np.ndarray]], None] | None = None
                 ) -> VendorComparison:
    """The `vendor` section of a compare result; also sets each compared tensor's `vendor` entry.

    `on_sample(k, float_outputs, toolkit_outputs)` is called per sample (toolkit outputs in the float shapes)."""
    samples = list(dataset)
    rk.prepare(graph, config, list(calib) if calib is not None else samples)
    outs = [o.name for o in graph.outputs]
    parts = concat_parts(graph, outs)
    refs = float_references(graph, samples, outs, parts)
    stats = {o: TensorStats() for o in outs}
    pstats: dict[tuple[str, str], TensorStats] = {}
    for k, (f, q) in enumerate(zip(refs, rk.run(graph, config, samples, outs), strict=True)):
        if on_sample is not None:
            on_sample(k, f, {o: as_float_shape(q[o], f[o]) for o in outs if o in q})
        for o in outs:
            stats[o].update(f[o], q[o])
            for p in parts.get(o, []):
                if p.stop > p.start:
                    pstats.setdefault((o, p.name), TensorStats()).update(p.slice(f[o]), p.slice(q[o]))
    sim_out = {o.tensor: o for o in compare.outputs}
    outputs = []
    for o in outs:
        row = sim_out.get(o)
        builtin_parts = {bp.part: bp.cumulative for bp in row.parts} if row is not None else {}
        outputs.append({"tensor": o, "cumulative": stats[o].result().to_json(),
                        "builtin": row.cumulative.to_json() if row is not None else None,
                        "parts": [{"part": p.name, "cumulative": pstats[(o, p.name)].result().to_json(),
                                   "builtin": bc.to_json() if (bc := builtin_parts.get(p.name)) else None}
                                  for p in parts.get(o, []) if (o, p.name) in pstats]})
    # per-tensor analysis on the first K samples
    rows_all: list = []
    tstats: dict[str, TensorStats] = {}
    table: dict[str, dict] = {}
    toolkit_names: dict[str, str] = {}
    fstats: dict[str, TensorStats] = {}  # the toolkit's own float run (golden) against the ONNX model's
    for s in samples[:max(0, analysis_samples)]:
        goldens: dict[str, object] = {}
        files = rk.accuracy_analysis(graph, s)
        rows = parse_error_analysis(Path(files["error_analysis"]).read_text(), files["error_analysis"])
        rows_all = rows
        name_map = parse_name_map(Path(files["map_name_to_file"]).read_text())
        out_dir = Path(files["output_dir"])
        for r in rows:
            t = onnx_name(r.name)
            if t not in graph.producer or t in toolkit_names and toolkit_names[t] != r.name:
                continue
            toolkit_names[t] = r.name
            table[t] = {**r.to_json(), "toolkit_name": r.name}
            fname = name_map.get(r.name)
            g, q = out_dir / "golden" / (fname or ""), out_dir / "simulator" / (fname or "")
            # a blank row: the toolkit does not measure this tensor (inside a fused op; its dump is the op's
            # internal value, e.g. a conv output already clamped to HardSwish's range), so no dump metrics
            measured = r.entire_cos is not None or r.single_cos is not None
            if fname and measured and g.is_file() and q.is_file():
                gv, qv = load_dump(g), load_dump(q)
                if gv.shape == qv.shape:
                    tstats.setdefault(t, TensorStats()).update(gv, qv)
                    goldens[t] = gv
        if goldens:
            ref = float_references(graph, [s], list(goldens), {})[0]
            for t, gv in goldens.items():
                fv = ref.get(t)
                if fv is not None and fv.size == gv.size and not _same_values_reordered(fv.ravel(), gv):
                    fstats.setdefault(t, TensorStats()).update(fv.ravel(), gv)  # type: ignore[union-attr]
    by_tensor = compare.by_tensor()
    for t, row in table.items():
        entry = VendorTensor(row["toolkit_name"], row["op_type"],
                             {k: row[k] for k in ("entire_cos", "entire_euc", "single_cos", "single_euc")},
                             tstats[t].result() if t in tstats else None)
        if t in by_tensor:
            by_tensor[t].vendor = entry
    disagreements = rank_disagreements(compare)
    order = {t: k for k, t in enumerate(graph.activation_tensors())}
    float_dev = [{"tensor": t, "snr_db": m.snr_db, "cosine": m.cosine}
                 for t, m in sorted(((t, st.result()) for t, st in fstats.items()), key=lambda tm: order.get(tm[0], 0))
                 if m.snr_db is not None and m.snr_db < FLOAT_DEVIATION_DB]
    try:
        versions = rk.versions()
    except Exception:  # noqa: BLE001 - versions are informational
        versions = {}
    return VendorComparison("rknn", rk.platform, versions.get("rknn_toolkit2"), len(samples),
                            min(analysis_samples, len(samples)), outputs, len(table),
                            fused_away(graph.activation_tensors(), rows_all) if rows_all else [],
                            disagreements[:50], rk.builds, median_gap(disagreements), float_dev[:50])


def as_float_shape(q: np.ndarray, f: np.ndarray) -> np.ndarray:
    """A toolkit output in the ONNX output's shape when only the shape differs (it may drop or add unit axes)."""
    q = np.asarray(q)
    return q.reshape(f.shape) if q.shape != f.shape and q.size == f.size else q


def judge_label(vendor: VendorComparison) -> str:
    """How verdicts name the toolkit run, e.g. "rknn-toolkit2 2.5.0 (rk3588)"."""
    name = {"rknn": "rknn-toolkit2"}.get(vendor.backend, vendor.backend)
    return " ".join(x for x in (name, vendor.toolkit) if x) + (f" ({vendor.platform})" if vendor.platform else "")


def _same_values_reordered(f: np.ndarray, g: np.ndarray) -> bool:
    """The toolkit dumped the same values in another layout (a transposed Softmax/Reshape): not a deviation."""
    f, g = f.astype(np.float64), g.astype(np.float64)
    tol = 1e-8 * max(float(np.sum(f * f)), 1e-30)
    a, b = np.sort(f), np.sort(g)
    # same order within float rounding (a 1e-5 difference on a probability map is not a reordering)
    return bool(np.sum((a - b) ** 2) <= tol) and not bool(np.sum((f - g) ** 2) <= tol)


def rank_disagreements(compare: CompareResult) -> list[dict]:
    """Tensors where the toolkit and the built-in simulator disagree, largest SNR difference first (cosine
    saturates near 1 and hides a 20 dB gap); the toolkit's value is from its dumps, else its table's cosine."""
    out = []
    for t in compare.tensors:
        v = t.vendor
        if v is None:
            continue
        vc = v.cumulative.cosine if v.cumulative is not None else None
        vc = vc if vc is not None else v.table.get("entire_cos")
        vs = v.cumulative.snr_db if v.cumulative is not None else None
        bs, bc = t.cumulative.snr_db, t.cumulative.cosine
        gap = float(vs) - float(bs) if vs is not None and bs is not None else None
        if gap is None and (vc is None or bc is None):
            continue
        out.append({"tensor": t.tensor, "vendor_snr_db": vs, "builtin_snr_db": bs, "snr_gap_db": gap,
                    "vendor_cosine": vc, "builtin_cosine": bc,
                    "gap": abs(float(vc) - float(bc)) if vc is not None and bc is not None else None})
    out.sort(key=lambda d: (d["snr_gap_db"] is None, -abs(d["snr_gap_db"] or 0.0), -(d["gap"] or 0.0)))
    return out


def median_gap(disagreements: list[dict]) -> float | None:
    """Median |toolkit SNR - built-in SNR| over the tensors both simulators measured (the fidelity figure)."""
    gaps = [abs(d["snr_gap_db"]) for d in disagreements if d["snr_gap_db"] is not None]
    return round(statistics.median(gaps), 3) if gaps else None
