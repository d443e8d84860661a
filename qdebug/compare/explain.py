"""Re-run a compared model for what its report shows beyond the JSON: op values (why-plots), detection pictures.

The report layer only renders; this module reloads the model and inputs a result names, rebuilds its
quantization config, re-calibrates the simulator and runs onnxruntime on a few inputs, and draws the
detection examples, returning plain `qdebug.results.explain` data.
"""

from __future__ import annotations

import math
import shlex
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qdebug.errors import QDebugError
from qdebug.results.explain import ExamplePicture, Explanation, WhyData

WHY_SAMPLES = 2  # inputs re-run for the why-plots


def explain(doc: dict, why_ops: Sequence[tuple[str, str]] | None, model: str | None = None,
            data: str | None = None, base_dir: str | Path | None = None, samples: int = WHY_SAMPLES) -> Explanation:
    """Values of `why_ops` ((op key, reason) pairs; None: skip the re-run) and the detection pictures of `doc`.

    `model`/`data` replace the paths stored in the result; relative stored paths are also tried under
    `base_dir` (the result's folder). Never raises for a missing or unusable input: notes say what is missing.
    """
    base = Path(base_dir) if base_dir is not None else None
    out = Explanation()
    if why_ops is not None:
        out.why, out.why_notes = collect_why(doc, why_ops, model, data, base, samples)
    _draw_examples(out, doc, data, base)
    return out


def resolve(path: str | None, base: Path | None) -> Path | None:
    """`path` when it exists, else `base/path` for a relative path that exists there, else None."""
    if not path:
        return None
    p = Path(path)
    if p.exists():
        return p
    if base is not None and not p.is_absolute() and (base / p).exists():
        return base / p
    return None


def _command_option(command: str, name: str) -> str | None:
    try:
        argv = shlex.split(command or "")
    except ValueError:
        return None
    for k, a in enumerate(argv):
        if a == name and k + 1 < len(argv):
            return argv[k + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


# ------------------------------------------------------------------------- why-plots
def collect_why(doc: dict, ops: Sequence[tuple[str, str]], model: str | None = None, data: str | None = None,
                base_dir: Path | None = None, samples: int = WHY_SAMPLES) -> tuple[list[WhyData], list[str]]:
    """Re-run the model on `samples` inputs to get float/quantized values of `ops` ((op key, reason) pairs).

    Returns the data and notes explaining anything skipped; never raises for a missing input.
    """
    notes: list[str] = []
    q = doc["quant"]
    if q.get("backend") != "sim":
        return [], [f"why-plots need the built-in simulator; this run used backend '{q.get('backend')}'"]
    mpath = resolve(model or doc["model"].get("path"), base_dir)
    if mpath is None:
        return [], [f"why-plots skipped: model '{model or doc['model'].get('path')}' not found "
                    "(pass --model, or run `qdebug report` where the original command ran)"]
    dpath = resolve(data or doc["samples"].get("source"), base_dir)
    if dpath is None:
        return [], [f"why-plots skipped: input set '{data or doc['samples'].get('source')}' not found "
                    "(pass --data)"]
    try:
        return _collect(doc, ops, mpath, dpath, base_dir, samples)
    except QDebugError as exc:
        notes.append(f"why-plots skipped: {exc.one_line()}")
    except (MemoryError, RuntimeError, ValueError, KeyError) as exc:  # keep the report, explain the gap
        notes.append(f"why-plots skipped: re-run failed ({type(exc).__name__}: {str(exc)[:160]})")
    return [], notes


def _collect(doc: dict, ops: Sequence[tuple[str, str]], mpath: Path, dpath: Path, base_dir: Path | None,
             n: int) -> tuple[list[WhyData], list[str]]:
    from qdebug.graph.model import ModelGraph
    from qdebug.inputs.dataset import Preprocess, load_dataset
    from qdebug.quant.scheme import Precision, QuantConfig, QuantScheme, fake_quant
    from qdebug.runners.session import OrtSession
    from qdebug.runners.sim import SimBackend

    notes: list[str] = []
    graph = ModelGraph.load(mpath)
    if doc["model"].get("sha256") and graph.sha256() != doc["model"]["sha256"]:
        return [], [f"why-plots skipped: {mpath} is not the model of this run (sha256 differs)"]
    pre = doc["samples"].get("preprocess")
    prep = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()}) if pre else None
    size = prep.size if prep else None
    count = int(doc["samples"]["count"])
    ds = load_dataset(dpath, graph, prep, count, size)
    calib_src = resolve(_command_option(doc.get("command", ""), "--calib-data"), base_dir)
    calib = load_dataset(calib_src, graph, prep, None, size) if calib_src else ds
    s = doc["quant"]["scheme"]
    scheme = QuantScheme(activation=Precision(s["activation"]),
                         per_channel_weights=s.get("per_channel_weights", True),
                         symmetric_weights=s.get("symmetric_weights", True),
                         symmetric_activations=s.get("symmetric_activations", False),
                         calibrator=s["calibrator"], percentile=s.get("percentile") or 99.99,
                         profile=s.get("profile", "generic"))
    overrides = {k: Precision(v) for k, v in doc["quant"].get("overrides", {}).items()}
    cfg = QuantConfig(scheme=scheme, overrides=dict(overrides))
    spec = doc["quant"].get("calib")
    if spec:
        from qdebug.formats.base import load_vendor_file, split_spec

        fmt, cpath = split_spec(spec)
        found = resolve(cpath, base_dir)
        if found is None:
            return [], [f"why-plots skipped: calibration file '{cpath}' not found (run `qdebug report` "
                        "where the original command ran)"]
        vf = load_vendor_file(f"{fmt}:{found}" if fmt else str(found))
        cfg, _ = vf.to_config(graph, cfg)
        cfg.overrides.update(overrides)
    backend = SimBackend(doc["quant"].get("profile", "generic"))
    backend.prepare(graph, cfg, list(calib))
    by_key = {op.key: op for op in backend.quant_ops(graph)}
    plan = backend.plan(graph, cfg)
    chosen = [(by_key[k], why) for k, why in ops if k in by_key]
    if not chosen:
        return [], ["why-plots skipped: the chosen ops are not quantized ops of this model"]
    inputs = {i.name for i in graph.inputs}
    points: dict[str, list[tuple[str, str, str]]] = {}  # op key -> (point key, tensor, description)
    for op, _ in chosen:
        if op.kind == "input" or backend.profile.quantize_at == "output":
            pts = [(t, t, "the output" if len(op.outputs) == 1 else f"output {t}") for t in op.outputs]
        else:
            pts = [(f"{op.key}:{j}", t, f"input {j} of the op") for j, (_, _, t) in enumerate(op.inputs)]
        points[op.key] = pts
    want = sorted({t for pts in points.values() for _, t, _ in pts} | {op.outputs[0] for op, _ in chosen}
                  - inputs)
    fsess = OrtSession(graph.with_outputs(want), source=str(mpath))
    outs = [op.outputs[0] for op, _ in chosen if op.outputs[0] not in inputs]
    qsess = OrtSession(backend.quantized_model(graph, cfg, outs), source=str(mpath)) if outs else None
    after_sess, after_label = None, ""
    promoted = (doc.get("result") or {}).get("set") or []
    if promoted and outs:
        prec = Precision(doc.get("promote_precision", "int16"))
        acfg = cfg.with_overrides({k: prec for k in promoted})
        after_sess = OrtSession(backend.quantized_model(graph, acfg, outs), source=str(mpath))
        after_label = f"after promoting {len(promoted)} op(s) to {prec.value}"
    fvals: dict[str, list[np.ndarray]] = {}
    qvals: dict[str, list[np.ndarray]] = {}
    avals: dict[str, list[np.ndarray]] = {}
    for k, sample in enumerate(ds):
        if k >= n:
            break
        f = fsess.run(sample)
        f.update(sample)
        for t in set(want) | inputs:
            if t in f:
                fvals.setdefault(t, []).append(np.asarray(f[t], dtype=np.float64).ravel())
        if qsess is not None:
            for t, v in qsess.run(sample).items():
                qvals.setdefault(t, []).append(np.asarray(v, dtype=np.float64).ravel())
        if after_sess is not None:
            for t, v in after_sess.run(sample).items():
                avals.setdefault(t, []).append(np.asarray(v, dtype=np.float64).ravel())
    cat = {t: np.concatenate(v) for t, v in fvals.items()}
    rows = {t["tensor"]: t for t in doc.get("compare_before", doc).get("tensors", [])}
    result: list[WhyData] = []
    for op, why in chosen:
        best = None  # the point where rounding hurts most (lowest SNR of x vs fake_quant(x))
        for key, t, desc in points[op.key]:
            x = cat.get(t)
            if x is None or x.size == 0:
                continue
            p = plan.act.get(key)
            if p is None:
                snr = math.inf
            else:
                xq = fake_quant(x, p)
                err = float(np.sum((x - xq) ** 2))
                snr = 10 * math.log10(float(np.sum(x * x)) / err) if err > 0 and np.any(x) else math.inf
            if best is None or snr < best[0]:
                best = (snr, key, t, desc, p)
        out_t = op.outputs[0]
        x_out = cat.get(out_t)
        if best is None or x_out is None:
            notes.append(f"why-plot for {op.key} skipped: no float values at its quantization point")
            continue
        _, key, t, desc, p = best
        if out_t in inputs:
            y_out = fake_quant(x_out, p) if p is not None else x_out
        else:
            y_out = np.concatenate(qvals[out_t])
        lo = hi = step = None
        bits = None
        if p is not None:
            rlo, rhi = p.range()
            lo, hi = float(np.min(rlo)), float(np.max(rhi))
            step, bits = float(np.max(p.scale)), p.bits
        grid = None
        op_p = plan.act.get(out_t)
        if op_p is not None and op_p.scale.size == 1:
            grid = (float(op_p.scale[0]), float(op_p.zero_point[0]), op_p.qmin, op_p.qmax)
        row = rows.get(out_t, {})
        result.append(WhyData(
            op=op.key, op_type=op.op_type, reason=why, point_tensor=t,
            point_desc=desc if desc != "the output" else "the op output", bits=bits, lo=lo, hi=hi, step=step,
            x_point=cat[t], out_tensor=out_t, x_out=x_out, y_out=y_out,
            y_after=np.concatenate(avals[out_t]) if out_t in avals else None, after_label=after_label,
            run_label=f"quantized ({s['activation']} run)",
            out_grid=grid, cum_snr=(row.get("cumulative") or {}).get("snr_db"),
            iso_snr=(row.get("isolated") or {}).get("snr_db")))
    used = min(n, count)
    notes.append(f"why-plots re-ran the model on {used} of the {count} input(s) "
                 f"({', '.join(ds.names()[:used])}) after calibrating on {len(calib)} input(s)")
    return result, notes


# ------------------------------------------------------------------ detection pictures
def _detection(doc: dict) -> dict | None:
    det = doc.get("detection")
    return det if isinstance(det, dict) and isinstance(det.get("quantized"), dict) else None


def example_image(ex: dict, doc: dict, data: str | None, base: Path | None) -> Path | None:
    """An example's image file: its stored path, relative to the result's folder, or by name in `data` / the input set."""
    stored = ex.get("path")
    name = ex.get("image") or (Path(stored).name if stored else None)
    found = resolve(stored, base) if stored else None
    if found is not None and found.is_file():
        return found
    for folder in (data, doc.get("samples", {}).get("source")):
        root = resolve(folder, base)
        if root is None or not root.is_dir():
            continue
        for cand in ([root / name] if name else []) + ([root / Path(stored).name] if stored else []):
            if cand.is_file():
                return cand
    return None


def _draw_examples(out: Explanation, doc: dict, data: str | None, base: Path | None) -> None:
    """Float-vs-quantized (and float-vs-promoted) pictures of the detection examples into `out`."""
    det = _detection(doc)
    if det is None:
        return
    examples = [ex for ex in det.get("examples") or [] if isinstance(ex, dict)]
    if not examples:
        return
    try:
        from PIL import Image  # noqa: F401

        from qdebug.tasks.draw import draw_examples
    except ImportError:  # pragma: no cover - Pillow is a dependency
        out.picture_notes.append("detection pictures not drawn: Pillow is not installed.")
        return
    out.pictures = []
    has_promoted = isinstance(det.get("promoted"), dict)
    with tempfile.TemporaryDirectory(prefix="qdebug-det-") as tmp:
        for k, ex in enumerate(examples, start=1):
            name = str(ex.get("image") or Path(str(ex.get("path") or f"image {k}")).name)
            path = example_image(ex, doc, data, base)
            if path is None:
                out.missing_pictures.append(name)
                continue
            runs = [("quantized", False)] + ([("promoted", True)] if has_promoted and ex.get("promoted") is not None
                                             else [])
            for run, promoted in runs:
                section = dict(det, examples=[dict(ex, path=str(path))])
                try:
                    drawn = draw_examples(section, Path(tmp) / f"{k}-{run}", promoted=promoted)
                except (OSError, ValueError, KeyError, TypeError) as exc:  # an unreadable image, a malformed row
                    out.picture_notes.append(f"picture of {name} ({run}) not drawn: {exc.__class__.__name__}: {exc}")
                    continue
                if drawn:
                    out.pictures.append(ExamplePicture(example=k, promoted=promoted, png=drawn[0].read_bytes()))
