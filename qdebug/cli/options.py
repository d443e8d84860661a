"""Option groups of compare and bisect: each adds its argparse group and builds its objects from the parsed args.

data → Preprocess, data set, calibration set; quantization → QuantConfig (overrides, --calib mapping) and
the profile (`decide_profile`, once); backend → built-in SimBackend / vendor backend; task → decoder.
`setup_run` is the start both commands share.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from qdebug.cli.terminal import err_console, mk
from qdebug.errors import QDebugError
from qdebug.results.vendor import CalibMapping
from qdebug.tasks import DECODERS, LABEL_METRICS, SCORERS, get_decoder, metric_task, task_metrics_in

if TYPE_CHECKING:
    from qdebug.formats.base import MappingReport, VendorFile
    from qdebug.graph.model import ModelGraph
    from qdebug.inputs.dataset import Dataset, Preprocess
    from qdebug.quant.scheme import QuantConfig
    from qdebug.runners.base import Backend
    from qdebug.runners.sim import SimBackend
    from qdebug.tasks.base import Decoder
    from qdebug.tasks.scoring import TaskScorer

G = TypeVar("G")


def _pick(cls: type[G], args: argparse.Namespace) -> G:
    """An option-group dataclass filled from the args (fields are argparse `dest` names; absent ones keep defaults)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})  # type: ignore[arg-type]


# --------------------------------------------------------------------- data
def _floats(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.replace(";", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None
    return vals


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        vals = [int(p) for p in parts if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W (e.g. 640,640), got '{text}'") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) <= 0:
        raise argparse.ArgumentTypeError(f"expected H,W (e.g. 640,640), got '{text}'")
    return vals[0], vals[1]


def add_data_args(p: argparse.ArgumentParser) -> None:
    """Inputs and preprocessing shared by compare and bisect."""
    g = p.add_argument_group("inputs")
    g.add_argument("--data", required=True, help="folder of images (jpg/png) or .npy/.npz tensors, or one file")
    g.add_argument("--samples", type=int, default=None, help="use at most N samples")
    g.add_argument("--calib-data", default=None, help="separate calibration set (default: --data)")
    g.add_argument("--size", type=_size, default=None, help="H,W network input size (for dynamic models)")
    g.add_argument("--resize", choices=["letterbox", "resize"], default="letterbox",
                   help="images: letterbox (keep the aspect ratio, pad) or resize (stretch) (default letterbox)")
    g.add_argument("--color", choices=["rgb", "bgr"], default="rgb",
                   help="images: channel order the model expects (default rgb)")
    g.add_argument("--mean", type=_floats, default=(0.0, 0.0, 0.0), help="per-channel mean in 0..255 units")
    g.add_argument("--std", type=_floats, default=(255.0, 255.0, 255.0),
                   help="per-channel std in 0..255 units (default 255: scale to 0..1)")
    g.add_argument("--layout", choices=["nchw", "nhwc"], default=None,
                   help="images: input layout (default: guessed from the model input shape)")
    g.add_argument("--input-dtype", choices=["float32", "uint8"], default=None,
                   help="images: element type fed to the model (default: the model input type)")


@dataclass(frozen=True)
class DataOptions:
    """The inputs group: where the samples are and how an image becomes the network's input."""

    data: str
    samples: int | None = None
    calib_data: str | None = None
    size: tuple[int, int] | None = None
    resize: str = "letterbox"
    color: str = "rgb"
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (255.0, 255.0, 255.0)
    layout: str | None = None
    input_dtype: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DataOptions:
        """The group's values from parsed args."""
        return _pick(cls, args)

    def preprocess(self) -> Preprocess:
        """Image preprocessing (resize, colour order, normalization, layout) for the data sets."""
        from qdebug.inputs.dataset import Preprocess

        return Preprocess(size=self.size, resize=self.resize, color=self.color, mean=tuple(self.mean),
                          std=tuple(self.std), layout=self.layout, dtype=self.input_dtype)

    def load(self, graph: ModelGraph) -> tuple[Dataset, Dataset | None]:
        """The data set (at most --samples) and the separate calibration set (None without --calib-data)."""
        from qdebug.inputs.dataset import load_dataset

        prep = self.preprocess()
        if self.samples is not None and self.samples <= 0:
            raise QDebugError("--samples must be positive", where="--samples", fix="pass --samples 8 or more")
        ds = load_dataset(self.data, graph, prep, self.samples, self.size)
        calib = load_dataset(self.calib_data, graph, prep, None, self.size) if self.calib_data else None
        return ds, calib


QUIET_HELP = "print nothing on the terminal but errors and the files written"


def add_quiet(p: argparse.ArgumentParser, help: str = QUIET_HELP) -> None:  # noqa: A002 - argparse's name
    """The --quiet/-q option of a subcommand (the same help text unless the command prints otherwise)."""
    p.add_argument("--quiet", "-q", action="store_true", help=help)


# --------------------------------------------------------------------- quantization
def add_quant_args(p: argparse.ArgumentParser) -> None:
    """Quantization scheme options shared by compare and bisect (the backend options are in this group too)."""
    g = p.add_argument_group("quantization")
    g.add_argument("--backend", default="sim", help="sim (built-in simulator) | rknn (rknn-toolkit2 simulator)")
    g.add_argument("--platform", default="rk3588", help="rknn target platform (rk3588, rk3568, rk3576, ...)")
    g.add_argument("--rknn-python", default=None, metavar="PATH",
                   help="python of the rknn-toolkit2 environment (or QDEBUG_RKNN_PYTHON; see qdebug doctor)")
    g.add_argument("--rknn-analysis-samples", type=int, default=1,
                   help="samples for the toolkit's per-tensor accuracy_analysis (default 1; slow: ~1 min each at 640)")
    g.add_argument("--keep-work", action="store_true", help="keep the vendor backend's run folder")
    g.add_argument("--quantized", default=None, metavar="Q.ONNX",
                   help="your own QDQ model of the float model (any quantizer) instead of the simulator")
    g.add_argument("--quantized-dumps", default=None, metavar="DIR",
                   help="per-tensor .npy dumps of the quantized run (DIR/0000/<tensor>.npy; docs/quantized.md)")
    g.add_argument("--dump-map", default=None, metavar="FILE", help="JSON {tensor: file} or CSV tensor,file")
    g.add_argument("--dump-layout", choices=["nchw", "nhwc"], default=None,
                   help="layout of dumps whose shape differs from the float tensor's (same element count)")
    g.add_argument("--profile", default="generic", help="generic | rknn | hisi | ort (where the NPU quantizes)")
    g.add_argument("--dtype", default="int8", help="default activation precision: int8 | int16")
    g.add_argument("--calibrator", default="minmax", help="minmax | percentile | mse | entropy (KL threshold)")
    g.add_argument("--percentile", type=float, default=99.99,
                   help="percentile calibrator: share of values kept, in percent (default 99.99)")
    g.add_argument("--per-tensor-weights", action="store_true", help="one weight scale per tensor, not per channel")
    g.add_argument("--asymmetric-weights", action="store_true",
                   help="weights with a zero point (default: symmetric, zero point 0)")
    g.add_argument("--symmetric-activations", action="store_true",
                   help="activations without a zero point (default: asymmetric, range [min, max])")
    g.add_argument("--override", action="append", default=[], metavar="NODE=PREC",
                   help="per-op precision override, e.g. /model.22/Mul_2=int16 (repeatable)")
    g.add_argument("--overrides", default=None, metavar="JSON", help="file with {node: precision}")
    g.add_argument("--calib", default=None, metavar="FORMAT:PATH",
                   help="simulate with a vendor calibration file, e.g. hisi:calibration_param.txt")


@dataclass(frozen=True)
class QuantOptions:
    """The quantization scheme as given on the command line (`profile` is --profile, before `decide_profile`)."""

    profile: str = "generic"
    dtype: str = "int8"
    calibrator: str = "minmax"
    percentile: float = 99.99
    per_tensor_weights: bool = False
    asymmetric_weights: bool = False
    symmetric_activations: bool = False
    override: tuple[str, ...] = ()
    overrides: str | None = None
    calib: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> QuantOptions:
        """The group's values from parsed args."""
        opts = _pick(cls, args)
        return cls(**{**opts.__dict__, "override": tuple(opts.override)})


@dataclass(frozen=True)
class QuantSetup:
    """What the quantization group builds: the config, the --calib mapping report and the decided profile."""

    config: QuantConfig
    mapping: MappingReport | None
    profile: str


def decide_profile(profile: str, backend: str, vendor_file: VendorFile | None = None) -> str:
    """Where the NPU quantizes: --profile when given, else rknn for --backend rknn, else the --calib file's profile.

    The one place the profile is decided; "generic" (the --profile default) counts as not given.
    """
    if profile != "generic":
        return profile
    if backend == "rknn":
        return "rknn"
    if vendor_file is not None:  # the vendor file decides where quantization happens
        return vendor_file.profile
    return "generic"


def _why(exc: BaseException) -> str:
    """A short reason for a file that does not load (no multi-line decoder messages)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 at byte {exc.start}"
    if isinstance(exc, json.JSONDecodeError):
        return f"bad JSON at line {exc.lineno} col {exc.colno}: {exc.msg}"
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    if isinstance(exc, OSError):
        return exc.strerror or exc.__class__.__name__
    return exc.__class__.__name__


def _overrides(q: QuantOptions, graph: ModelGraph) -> dict[str, Any]:
    """--overrides file and --override NODE=PREC, validated against the graph (node name -> Precision)."""
    from qdebug.quant.scheme import Precision

    overrides: dict[str, Precision] = {}
    items: list[tuple[str, str, str]] = []
    if q.overrides:
        try:
            data = json.loads(Path(q.overrides).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or not UTF-8
            raise QDebugError(f"cannot read overrides ({_why(exc)})", file=q.overrides,
                              fix='write a UTF-8 JSON object {"node": "int16"}') from None
        if not isinstance(data, dict):
            raise QDebugError("overrides must be a JSON object", file=q.overrides,
                              fix='write {"node": "int16"}')
        items += [(k, v if isinstance(v, str) else repr(v), q.overrides) for k, v in data.items()]
    for ov in q.override:
        node, sep, prec = ov.rpartition("=")
        if not sep or not node:
            raise QDebugError(f"bad --override '{ov}'", where="--override", fix="write NODE=int16")
        items.append((node, prec, "--override"))
    known = set(graph.node_by_name) | {i.name for i in graph.inputs}
    for node, prec, where in items:
        if node not in known:
            node = graph.resolve_node(node, where=where, error=QDebugError)
        try:
            overrides[node] = Precision.parse(prec)
        except ValueError as exc:
            raise QDebugError(f"{exc} for node '{node}'", where=where, fix="use int8, int16, fp16 or fp32") from None
    return overrides


def build_config(q: QuantOptions, graph: ModelGraph, backend: str = "sim") -> QuantSetup:
    """QuantConfig from the CLI: scheme, overrides (validated against the graph), vendor file, and the profile."""
    from qdebug.quant.scheme import Precision, QuantConfig, QuantScheme

    try:
        act = Precision.parse(q.dtype)
    except ValueError as exc:
        raise QDebugError(str(exc), where="--dtype", fix="use int8 or int16") from None
    if not act.is_int:
        raise QDebugError(f"--dtype {q.dtype} is not an integer precision", where="--dtype",
                          fix="use int8 or int16; use --override for fp16 ops")
    overrides = _overrides(q, graph)
    vf = None
    if q.calib:
        from qdebug.formats.base import load_vendor_file

        vf = load_vendor_file(q.calib)
    profile = decide_profile(q.profile, backend, vf)
    from qdebug.quant.profiles import get_profile

    # a profile whose vendor always gives weights a zero point (rknn) is asymmetric whatever the flag says:
    # the JSON and the report then describe what is simulated
    asym = q.asymmetric_weights or get_profile(profile).asymmetric_weights
    scheme = QuantScheme(activation=act, per_channel_weights=not q.per_tensor_weights,
                         symmetric_weights=not asym, symmetric_activations=q.symmetric_activations,
                         calibrator=q.calibrator, percentile=q.percentile, profile=profile)
    cfg = QuantConfig(scheme=scheme, overrides=overrides)
    if vf is None:
        return QuantSetup(cfg, None, profile)
    vcfg, report = vf.to_config(graph, cfg)
    vcfg.overrides.update(overrides)
    for note in CalibMapping.from_json(report.to_json()).notes_for_user():
        err_console.print(mk("[yellow]calib:[/] {}", note))
    return QuantSetup(vcfg, report, profile)


# --------------------------------------------------------------------- backend
@dataclass(frozen=True)
class BackendOptions:
    """Which simulator judges the run: the built-in one (sim) or a vendor's (rknn) beside it."""

    backend: str = "sim"
    platform: str = "rk3588"
    rknn_python: str | None = None
    rknn_analysis_samples: int = 1
    keep_work: bool = False
    quantized: str | None = None
    quantized_dumps: str | None = None
    dump_map: str | None = None
    dump_layout: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BackendOptions:
        """The group's values from parsed args."""
        return _pick(cls, args)

    def check(self, calib: str | None) -> None:
        """Refuse option mixes, before any I/O: an imported quantized run replaces --calib and --backend rknn."""
        given = "--quantized" if self.quantized else "--quantized-dumps" if self.quantized_dumps else None
        if self.quantized and self.quantized_dumps:
            raise QDebugError("--quantized and --quantized-dumps exclude each other", where="--quantized",
                              fix="pass one quantized run")
        if given and (calib or self.backend != "sim"):
            other = "--calib" if calib else f"--backend {self.backend}"
            raise QDebugError(f"{given} replaces the simulator, so {other} cannot be used with it", where=given,
                              fix=f"drop {other}, or drop {given}")
        for opt in ("dump_map", "dump_layout"):
            if getattr(self, opt) and not self.quantized_dumps:
                raise QDebugError(f"--{opt.replace('_', '-')} needs --quantized-dumps", where=f"--{opt.replace('_', '-')}",
                                  fix="add --quantized-dumps DIR")

    def builtin(self, profile: str, graph: ModelGraph | None = None, dataset: Dataset | None = None) -> SimBackend:
        """The built-in simulator for the decided profile (always built: it runs the per-tensor compare), or
        the imported quantized run (--quantized QDQ model, --quantized-dumps) in its place."""
        from qdebug.runners.sim import SimBackend

        if self.quantized and graph is not None:
            from qdebug.runners.qdq import QdqBackend

            return QdqBackend(self.quantized, graph)
        if self.quantized_dumps and graph is not None and dataset is not None:
            from qdebug.runners.dumps import DumpsBackend

            return DumpsBackend(self.quantized_dumps, graph, len(dataset), self.dump_map, self.dump_layout)
        return SimBackend(profile)

    def vendor(self, dataset: Dataset | None = None) -> Backend | None:
        """The vendor backend configured from the options (rknn gets the images' mean/std); None for sim."""
        from qdebug.runners.base import get_backend

        if self.backend == "sim":
            return None
        if self.backend in ("qdq", "dumps"):
            raise QDebugError(f"--backend {self.backend} is chosen by its own option", where="--backend",
                              fix="pass --quantized Q.ONNX or --quantized-dumps DIR instead")
        if self.backend == "rknn":
            from qdebug.runners.rockchip import RknnBackend

            images = dataset is not None and dataset.kind == "images" and dataset.preprocess is not None
            prep = dataset.preprocess if images else None
            return RknnBackend(python=self.rknn_python, platform=self.platform, keep_work=self.keep_work,
                               mean=prep.mean if prep else None, std=prep.std if prep else None)
        return get_backend(self.backend)


# --------------------------------------------------------------------- task
def add_task_args(p: argparse.ArgumentParser, draw: bool = True) -> None:
    """Add the task option group (detection, classify, embedding, ctc verdicts) to a subcommand parser."""
    g = p.add_argument_group("task verdict (detection, classify, embedding, ctc)")
    g.add_argument("--task", default=None, metavar="NAME",
                   help=f"decode detector outputs and score detections: {', '.join(sorted(DECODERS))} "
                        f"(yolo11 = yolov8, yolov7 = yolov5); other tasks: {', '.join(sorted(SCORERS))} "
                        "(docs/tasks.md)")
    g.add_argument("--anchors", default=None, metavar="SPEC|FILE",
                   help='YOLOv5 raw heads: anchors in pixels per level, "10,13,16,30,33,23;30,61,...;..." or a '
                        "file with one level per line (default: the YOLOv5 COCO anchors, with a warning)")
    g.add_argument("--labels", default=None, metavar="PATH",
                   help="ground truth for true mAP: COCO JSON or a folder of YOLO .txt (needs qdebug[coco])")
    g.add_argument("--conf", type=float, default=0.25, help="confidence threshold (default 0.25; 0.001 to match "
                   "`yolo val` mAP)")
    g.add_argument("--iou", type=float, default=None, help="NMS IoU threshold (default: yolov8 0.7, yolov5 0.45)")
    g.add_argument("--max-det", type=int, default=300, help="detections kept per image after NMS (default 300)")
    g.add_argument("--nc", type=int, default=None, help="number of classes when the output carries extra channels")
    g.add_argument("--kpt-shape", default=None, metavar="K,D",
                   help="pose heads: keypoints per instance and values per keypoint, e.g. 17,3 (default: the model "
                        "metadata, else from --nc)")
    g.add_argument("--task-output", default=None, metavar="NAME",
                   help="classify/embedding/ctc: the graph output to score (default: the only output)")
    g.add_argument("--blank", type=int, default=None, metavar="N", help="ctc: index of the blank class (default 0)")
    g.add_argument("--ctc-layout", choices=["ntc", "tnc"], default=None,
                   help="ctc: output layout [N,T,C] or [T,N,C] (default: detected from a batch axis of 1)")
    if draw:
        g.add_argument("--draw", default=None, metavar="DIR",
                       help="write pictures of the 3 images with the most lost/added detections into DIR")


@dataclass(frozen=True)
class TaskOptions:
    """The detection-task group: which decoder scores the detections, and where its ground truth is."""

    task: str | None = None
    anchors: str | None = None
    labels: str | None = None
    conf: float = 0.25
    iou: float | None = None
    max_det: int = 300
    nc: int | None = None
    kpt_shape: str | None = None
    draw: str | None = None
    task_output: str | None = None
    blank: int | None = None
    ctc_layout: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TaskOptions:
        """The group's values from parsed args."""
        return _pick(cls, args)

    def decoder(self) -> Decoder | None:
        """The decoder selected by --task (None without --task); rejects task-only options without it."""
        if self.task and self.task.lower() in SCORERS:
            return None  # classify / embedding / ctc: see scorer()
        if not self.task:
            for opt in ("anchors", "labels", "kpt_shape"):
                if getattr(self, opt):
                    raise QDebugError(f"--{opt.replace('_', '-')} needs --task", where=f"--{opt.replace('_', '-')}",
                                      fix="add --task yolov8 or --task yolov5")
            return None
        if self.max_det < 1:
            raise QDebugError("--max-det must be at least 1", where="--max-det", fix="pass --max-det 300")
        if not 0.0 <= self.conf <= 1.0:
            raise QDebugError(f"--conf {self.conf:g} is not a score in [0, 1]", where="--conf", fix="pass --conf 0.25")
        if self.labels:
            from qdebug.tasks.labels import require_pycocotools

            require_pycocotools()  # fail before the long runs when the extra is missing
        return get_decoder(self.task, conf=self.conf, iou=self.iou, max_det=self.max_det, nc=self.nc,
                           **({"anchors": self.anchors} if self.anchors is not None else {}),
                           **({"kpt_shape": self.kpt_shape} if self.kpt_shape is not None else {}))


    def scorer(self) -> TaskScorer | None:
        """The task scorer selected by --task classify|embedding|ctc (None otherwise); refuses options of the
        other kind of task."""
        name = (self.task or "").lower()
        mine = {"task_output": self.task_output, "blank": self.blank, "ctc_layout": self.ctc_layout}
        if name not in SCORERS:
            for opt, v in mine.items():
                if v is not None:
                    flag = f"--{opt.replace('_', '-')}"
                    raise QDebugError(f"{flag} applies to --task {', '.join(sorted(SCORERS))}", where=flag,
                                      fix=f"drop {flag}, or pass --task classify, embedding or ctc")
            return None
        for opt in ("anchors", "labels", "kpt_shape", "draw"):
            if getattr(self, opt):
                flag = f"--{opt.replace('_', '-')}"
                raise QDebugError(f"{flag} applies to detection tasks, not --task {name}", where=flag,
                                  fix=f"drop {flag}")
        if name != "ctc" and (self.blank is not None or self.ctc_layout is not None):
            flag = "--blank" if self.blank is not None else "--ctc-layout"
            raise QDebugError(f"{flag} applies to --task ctc, not --task {name}", where=flag, fix=f"drop {flag}")
        if name == "ctc":
            from qdebug.tasks.ctc import CtcScorer

            return CtcScorer(self.task_output, blank=self.blank or 0, layout=self.ctc_layout)
        return SCORERS[name](self.task_output)


def decoder_from_args(args: argparse.Namespace) -> Decoder | None:
    """The decoder selected by --task (None without --task); rejects task-only options without it."""
    return TaskOptions.from_args(args).decoder()


def check_target_task(args: argparse.Namespace) -> None:
    """Refuse a target with task metrics without --task (or true-mAP metrics without --labels), before any run."""
    used = task_metrics_in(getattr(args, "target", None))
    task = (getattr(args, "task", None) or "").lower()
    kind = task if task in SCORERS else "detection" if task else ""
    for m in used:  # a metric of another task: name the --task that provides it
        owner = metric_task(m)
        if owner != kind:
            want = "yolov8 (or yolov5)" if owner == "detection" else owner
            given = f"--task {task} does not provide it" if task else "no --task was given"
            raise QDebugError(f"target metric {m} belongs to the {owner} task but {given}", where="--target",
                              fix=f"pass --task {want}, or use a {kind or 'tensor'} metric in --target")
    need = [m for m in used if m in LABEL_METRICS]
    if need and not getattr(args, "labels", None):
        raise QDebugError(f"target uses {', '.join(need)} (true mAP against labels) but no --labels were given",
                          where="--target", fix="pass --labels, or use map50_95_vs_float (agreement with float)")


# --------------------------------------------------------------------- shared setup
@dataclass
class Setup:
    """What compare and bisect build before their first run, from the option groups."""

    graph: ModelGraph
    dataset: Dataset
    calib: Dataset | None
    config: QuantConfig
    mapping: MappingReport | None
    profile: str
    decoder: Decoder | None
    backend: SimBackend
    vendor: Backend | None
    scorer: TaskScorer | None = None  # --task classify|embedding|ctc


QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
                 "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QGemm")


def _warn_prequantized(graph: ModelGraph) -> None:
    """Say so when the "float" model already holds quantized ops: it would be quantized a second time."""
    from collections import Counter

    found = Counter(n.op_type for n in graph.nodes if n.op_type in QUANTIZED_OPS)
    if found:
        kinds = ", ".join(f"{k} x{v}" for k, v in found.most_common(3))
        err_console.print(mk("[yellow]warning:[/] the model already holds quantized ops ({}): its quantized ops run "
                             "as they are and the rest is quantized again; to debug an existing quantized model, "
                             "give the float model and --quantized Q.onnx", kinds), soft_wrap=True)


def setup_run(args: argparse.Namespace) -> Setup:
    """Decoder, graph and data sets, quantization config and profile, then the backends, in that order.

    The order is the order of the user errors: options checked without I/O first, the vendor backend last.
    Nothing is written back to `args`.
    """
    from qdebug.graph.model import ModelGraph

    decoder = TaskOptions.from_args(args).decoder()  # checks --anchors/--labels/pycocotools up front
    scorer = TaskOptions.from_args(args).scorer()  # --task classify|embedding|ctc and its options
    be = BackendOptions.from_args(args)
    be.check(getattr(args, "calib", None))
    graph = ModelGraph.load(args.model)
    if not be.quantized:
        _warn_prequantized(graph)
    ds, calib = DataOptions.from_args(args).load(graph)
    quant = build_config(QuantOptions.from_args(args), graph, be.backend)
    backend = be.builtin(quant.profile, graph, ds)  # before the vendor backend, which makes a work folder
    return Setup(graph=graph, dataset=ds, calib=calib, config=quant.config, mapping=quant.mapping,
                 profile=quant.profile, decoder=decoder, backend=backend, vendor=be.vendor(ds), scorer=scorer)
