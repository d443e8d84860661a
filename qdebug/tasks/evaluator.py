"""Task-level scoring of quantized runs: bisect's `DetectionEvaluator` and compare's `detection` section.

- `DetectionEvaluator(graph, dataset, backend, decoder)` plugs into `run_bisect(..., evaluator=...)`:
  float detections are computed once; each candidate precision map is run through the backend,
  decoded and scored (task clauses; tensor clauses of a mixed target are scored on the same run).
- `DetectionCollector` decodes float/quantized outputs sample by sample inside an existing compare loop
  (no extra inference); `run_detection` runs the passes itself (float, quantized, optionally promoted).
- `DetectionRun.to_json()` is the `detection` section of the compare JSON; `.draw()` writes pictures.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qdebug.errors import QDebugError
from qdebug.graph.model import ModelGraph
from qdebug.inputs.dataset import Dataset
from qdebug.metrics.stats import TensorStats
from qdebug.quant.scheme import QuantConfig
from qdebug.runners.base import Backend
from qdebug.runners.session import OrtSession
from qdebug.search.evaluate import MixedTargetEvaluator, Score
from qdebug.search.target import Target
from qdebug.tasks import INSTANCE_METRICS, LABEL_METRICS, TASK_METRICS
from qdebug.tasks.agreement import IOU_THRS, Agreement, agreement
from qdebug.tasks.base import Decoder, Detections, ImageMeta, image_metas, network_hw, plausibility_warning
from qdebug.tasks.labels import Labels, true_map
from qdebug.workers import ordered_map

DETECTION_SCHEMA = "qdebug.detection/1"


def decoder_outputs(graph: ModelGraph, decoder: Decoder) -> list[str]:
    """Graph outputs the decoder reads (the decoder first sees the model's metadata, e.g. ultralytics' task)."""
    decoder.configure({p.key: p.value for p in graph.model.metadata_props})
    return decoder.output_names([o.name for o in graph.outputs])


def float_detections(graph: ModelGraph, samples: Sequence[dict[str, np.ndarray]], decoder: Decoder,
                     metas: Sequence[ImageMeta], input_hw: tuple[int, int]) -> list[Detections]:
    """Decode the float model's outputs for every sample."""
    names = decoder_outputs(graph, decoder)
    sess = OrtSession(graph.with_outputs(names), source=graph.path)
    return [decoder.decode({k: v for k, v in out.items() if k in names}, input_hw, m.letterbox)
            for out, m in zip(ordered_map(sess.run, samples), metas, strict=True)]


def quant_detections(graph: ModelGraph, samples: Sequence[dict[str, np.ndarray]], backend: Backend,
                     config: QuantConfig, decoder: Decoder, metas: Sequence[ImageMeta],
                     input_hw: tuple[int, int]) -> list[Detections]:
    """Run the quantized model per `config` through the backend and decode every sample."""
    names = decoder_outputs(graph, decoder)
    outs = backend.run(graph, config, samples, names)
    return [decoder.decode({k: o[k] for k in names}, input_hw, m.letterbox) for o, m in zip(outs, metas, strict=True)]


def resolve_labels(labels: Labels | str | Path | None, metas: Sequence[ImageMeta],
                   input_hw: tuple[int, int]) -> Labels | None:
    """Labels object from a path (COCO JSON / YOLO txt folder); call after the samples were loaded."""
    if labels is None or isinstance(labels, Labels):
        return labels
    from qdebug.tasks.labels import load_labels, require_pycocotools

    require_pycocotools()  # fail before any inference when the extra is missing
    return load_labels(labels, metas, input_hw)


def prepare_backend(graph: ModelGraph, backend: Backend, config: QuantConfig, samples: list) -> None:
    """Calibrate the built-in simulator on `samples` unless it already is (vendor backends prepare themselves)."""
    if hasattr(backend, "ranges") and not backend.ranges:  # the simulator calibrates once per graph
        backend.prepare(graph, config, samples)


class DetectionEvaluator(MixedTargetEvaluator):
    """Scores a QuantConfig by detection agreement with the float model (and true mAP with labels)."""

    task_metrics = TASK_METRICS

    def __init__(self, graph: ModelGraph, dataset: Dataset, backend: Backend, decoder: Decoder,
                 labels: Labels | str | Path | None = None, target: Target | None = None,
                 match_iou: float = 0.5) -> None:
        self.graph = graph
        self.backend = backend
        self.decoder = decoder
        self.match_iou = match_iou
        self.samples = list(dataset)  # loading fills the letterbox records
        self.metas = image_metas(dataset)
        self.input_hw = network_hw(dataset)
        self.labels = resolve_labels(labels, self.metas, self.input_hw)
        self.outputs = decoder_outputs(graph, decoder)
        self.reference = float_detections(graph, self.samples, decoder, self.metas, self.input_hw)
        self.warnings = list(decoder.warnings)
        w = plausibility_warning(self.reference, decoder.hint)
        if w:
            self.warnings.append(w)
        if not sum(len(d) for d in self.reference):
            self.warnings.append(f"the float model has no detection above --conf {decoder.conf:g} on any sample: "
                                 "agreement metrics are undefined (lower --conf or check the preprocessing)")
        self.last: Agreement | None = None
        self.seconds = 0.0
        if target is not None:
            self.target = target

    def check_target(self, target: Target) -> None:
        """True mAP needs labels; mask/OKS metrics need a segment/pose head."""
        need = [m for m in target.task_metrics() if m in LABEL_METRICS]
        if need and self.labels is None:
            raise QDebugError(f"target uses {', '.join(need)} (true mAP against labels) but no --labels were given",
                              where="--target", fix="pass --labels, or use map50_95_vs_float (agreement with float)")
        head = self.decoder.info.get("head", "detect")
        for m in target.task_metrics():
            kind = "segment" if m.startswith("mask_") else "pose" if m in INSTANCE_METRICS else None
            if kind and head != kind:
                raise QDebugError(f"target uses {m}, which needs a {kind} head, but --task {self.decoder.name} "
                                  f"decoded a {head} head", where="--target",
                                  fix="use map50_95_vs_float, or check the model outputs / --nc / --kpt-shape")

    def evaluate(self, config: QuantConfig) -> Score:
        """Run the quantized model per `config`, decode, score task clauses (and tensor clauses on the same run)."""
        t0 = time.perf_counter()
        tev = self._tensor_ev
        stats: dict[str, TensorStats] = tev.clause_stats() if tev else {}
        names = list(dict.fromkeys(self.outputs + (tev.tensors if tev else [])))
        dets = []
        for k, out in enumerate(self.backend.run(self.graph, config, self.samples, names)):
            dets.append(self.decoder.decode({n: out[n] for n in self.outputs}, self.input_hw, self.metas[k].letterbox))
            if tev:
                tev.add_sample(stats, k, out)
        used = [m for m in self.target.task_metrics() if m in INSTANCE_METRICS]  # masks/OKS only when asked
        agr = agreement(self.reference, dets, match_iou=self.match_iou, instances=used)
        self.last = agr
        task_vals: dict[str, float | None] = dict(agr.values())
        if self.labels is not None and any(m in LABEL_METRICS for m in self.target.task_metrics()):
            tm = true_map(self.labels, dets)
            task_vals.update(map50_95=tm["map50_95"], map50=tm["map50"])
        values: dict[str, float | None] = {}
        for c in self.target.clauses:
            values[c.text()] = stats[c.text()].result().get(c.metric) if c.tensor else task_vals.get(c.metric)
        self.seconds += time.perf_counter() - t0
        return self.score(values)


class DetectionCollector:
    """Decodes float and quantized outputs sample by sample inside a compare loop (no extra inference).

    Call `add(k, float_values, quant_values)` with the k-th sample's tensors (extra tensors are ignored).
    With `reference` (another collector's float detections, e.g. compare's for the vendor toolkit's run) the
    float outputs are not decoded again.
    """

    def __init__(self, graph: ModelGraph, dataset: Dataset, decoder: Decoder,
                 reference: list[Detections] | None = None) -> None:
        self.graph = graph
        self.dataset = dataset
        self.decoder = decoder
        self.outputs = decoder_outputs(graph, decoder)
        self.input_hw = network_hw(dataset)
        self.names = dataset.names()
        self.reference = reference
        self.float_dets: list[Detections] = reference if reference is not None else []
        self.quant_dets: list[Detections] = []
        self.seconds = 0.0

    def add(self, index: int, float_values: dict[str, np.ndarray], quant_values: dict[str, np.ndarray]) -> None:
        """Decode the graph outputs of one sample (float and quantized)."""
        t0 = time.perf_counter()
        lb = self.dataset.letterbox.get(self.names[index]) if self.dataset.kind == "images" else None
        if self.reference is None:
            self.float_dets.append(self.decoder.decode({k: float_values[k] for k in self.outputs}, self.input_hw, lb))
        self.quant_dets.append(self.decoder.decode({k: quant_values[k] for k in self.outputs}, self.input_hw, lb))
        self.seconds += time.perf_counter() - t0


@dataclass
class DetectionRun:
    """Float / quantized (/ promoted) detections of a data set and their scores."""

    decoder: Decoder
    metas: list[ImageMeta]
    input_hw: tuple[int, int]
    float_dets: list[Detections]
    quant_dets: list[Detections]
    quant: Agreement
    promoted_dets: list[Detections] | None = None
    promoted: Agreement | None = None
    promoted_overrides: dict[str, str] | None = None
    labels: Labels | None = None
    label_scores: dict[str, dict] | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def names(self) -> dict[int, str]:
        """Class names: the labels' categories, else the model's own metadata (ultralytics `names`)."""
        return self.labels.names if self.labels else self.decoder.class_names

    def to_json(self) -> dict:
        """The `detection` section of the compare JSON (schema qdebug.detection/1)."""

        def side(a: Agreement, dets: list[Detections]) -> dict:
            return {"detections": sum(len(d) for d in dets), **a.to_json()}

        lab = None
        if self.labels is not None and self.label_scores is not None:
            lab = {"source": self.labels.source, "format": self.labels.format, "images": self.labels.labelled,
                   "objects": self.labels.objects(),
                   **{m: {k: v[m] for k, v in self.label_scores.items()} for m in ("map50_95", "map50", "recall")}}
        per_image = [dict(r, promoted_lost=p["lost"], promoted_added=p["added"]) for r, p in
                     zip(self.quant.per_image, self.promoted.per_image, strict=True)] if self.promoted \
            else self.quant.per_image
        return {
            "schema": DETECTION_SCHEMA,
            "task": self.decoder.name,
            "decoder": self.decoder.describe(),
            "thresholds": {"conf": self.decoder.conf, "nms_iou": self.decoder.iou, "max_det": self.decoder.max_det,
                           "match_iou": self.quant.match_iou,
                           "ap_iou": [round(float(IOU_THRS[0]), 2), round(float(IOU_THRS[-1]), 2), 0.05],
                           "coords": "original image pixels" if all(m.letterbox for m in self.metas)
                           else "network input pixels"},
            "images": len(self.metas),
            "float": {"detections": sum(len(d) for d in self.float_dets)},
            "quantized": side(self.quant, self.quant_dets),
            "promoted": None if self.promoted is None or self.promoted_dets is None else
            {"overrides": self.promoted_overrides or {}, **side(self.promoted, self.promoted_dets)},
            "labels": lab,
            "per_image": per_image[:1000],
            "worst_images": [r["image"] for r in self.worst_images()],
            "examples": self.examples(),
            "warnings": self.warnings,
            "seconds": round(self.seconds, 3),
        }

    def examples(self, n: int = 3) -> list[dict]:
        """Detections of the `n` worst images (enough for a report to draw them from the JSON alone)."""
        idx = {m.name: k for k, m in enumerate(self.metas)}
        out = []
        for r in self.worst_images(n):
            k = idx[r["image"]]
            path = self.metas[k].path
            lb = self.metas[k].letterbox  # where the network input sits on the image (to draw masks)
            out.append({"image": r["image"], "path": str(path) if path else None,
                        "input_hw": list(self.input_hw), "letterbox": None if lb is None else
                        {"scale": lb.scale, "pad_x": lb.pad_x, "pad_y": lb.pad_y, "orig_w": lb.orig_w,
                         "orig_h": lb.orig_h},
                        "float": self.float_dets[k].to_json(), "quantized": self.quant_dets[k].to_json(),
                        "promoted": self.promoted_dets[k].to_json() if self.promoted_dets else None})
        return out

    def worst_images(self, n: int = 3) -> list[dict]:
        """Images with the most lost + added detections (ties: most float detections)."""
        rows = [r for r in self.quant.per_image if r["lost"] + r["added"] > 0]
        rows.sort(key=lambda r: (-(r["lost"] + r["added"]), -r["float"]))
        return rows[:n]

    def draw(self, out_dir: str | Path, n: int = 3, promoted: bool = False) -> list[Path]:
        """Pictures of the `n` worst images (float green, quantized red dashed; masks and keypoints of
        segment/pose heads too); needs image inputs."""
        from qdebug.tasks.draw import draw_detections
        from qdebug.tasks.draw_instances import Placement

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        test = self.promoted_dets if promoted and self.promoted_dets is not None else self.quant_dets
        idx = {m.name: k for k, m in enumerate(self.metas)}
        paths = []
        for r in self.worst_images(n) or [{"image": m.name} for m in self.metas[:n]]:
            k = idx[r["image"]]
            meta = self.metas[k]
            if meta.path is None:
                continue
            png = out / f"detections_{Path(meta.name).stem}{'_promoted' if promoted else ''}.png"
            res = (self.decoder.info.get("masks") or {}).get("resolution")  # segment heads: the mask grid
            place = Placement(self.input_hw, (int(res[0]), int(res[1])) if res else None, meta.letterbox)
            draw_detections(meta.path, self.float_dets[k], test[k], png, names=self.names,
                            match_iou=self.quant.match_iou,
                            label="promoted" if promoted else "quantized", placement=place)
            paths.append(png)
        return paths


def summarize(decoder: Decoder, metas: list[ImageMeta], input_hw: tuple[int, int], float_dets: list[Detections],
              quant_dets: list[Detections], promoted_dets: list[Detections] | None = None,
              promoted_overrides: dict[str, str] | None = None, labels: Labels | None = None,
              match_iou: float = 0.5) -> DetectionRun:
    """Score already decoded detections (agreement, true mAP with labels, warnings)."""
    t0 = time.perf_counter()
    names = labels.names if labels else (decoder.class_names or None)
    img = [m.name for m in metas]
    q = agreement(float_dets, quant_dets, match_iou=match_iou, names=names, image_names=img)
    p = agreement(float_dets, promoted_dets, match_iou=match_iou, names=names, image_names=img) \
        if promoted_dets is not None else None
    warns = list(decoder.warnings)
    w = plausibility_warning(float_dets, decoder.hint)
    if w:
        warns.append(w)
    if not sum(len(d) for d in float_dets):
        warns.append(f"the float model has no detection above --conf {decoder.conf:g}: agreement metrics are "
                     "undefined (lower --conf or check the preprocessing)")
    scores = None
    if labels is not None:
        warns += labels.warnings
        scores = {"float": true_map(labels, float_dets), "quantized": true_map(labels, quant_dets)}
        if promoted_dets is not None:
            scores["promoted"] = true_map(labels, promoted_dets)
    return DetectionRun(decoder, list(metas), input_hw, float_dets, quant_dets, q, promoted_dets, p,
                        promoted_overrides, labels, scores, warns, time.perf_counter() - t0)


def run_detection(graph: ModelGraph, dataset: Dataset, backend: Backend, config: QuantConfig, decoder: Decoder,
                  promoted: QuantConfig | None = None, labels: Labels | str | Path | None = None,
                  collector: DetectionCollector | None = None, match_iou: float = 0.5) -> DetectionRun:
    """Float vs quantized (vs promoted) detections and scores; reuses a compare loop's `collector` if given."""
    t0 = time.perf_counter()
    samples = list(dataset) if collector is None or promoted is not None else []
    metas = image_metas(dataset)
    hw = network_hw(dataset)
    labels = resolve_labels(labels, metas, hw)
    if collector is not None and len(collector.float_dets) == len(collector.quant_dets) == len(metas):
        fd, qd = collector.float_dets, collector.quant_dets
    else:
        samples = samples or list(dataset)
        prepare_backend(graph, backend, config, samples)
        fd = float_detections(graph, samples, decoder, metas, hw)
        qd = quant_detections(graph, samples, backend, config, decoder, metas, hw)
    pd = quant_detections(graph, samples, backend, promoted, decoder, metas, hw) if promoted is not None else None
    pov = {k: v.value for k, v in promoted.overrides.items()} if promoted is not None else None
    run = summarize(decoder, metas, hw, fd, qd, pd, pov, labels, match_iou)
    run.seconds = time.perf_counter() - t0 + (collector.seconds if collector is not None else 0.0)
    return run
