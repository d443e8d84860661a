"""Command-line interface: a thin layer that parses options and calls the pipeline/search/report layers."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from qdebug import __version__
from qdebug.errors import QDebugError

err_console = Console(stderr=True, highlight=False)


# --------------------------------------------------------------------- options
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
    g.add_argument("--resize", choices=["letterbox", "resize"], default="letterbox")
    g.add_argument("--color", choices=["rgb", "bgr"], default="rgb")
    g.add_argument("--mean", type=_floats, default=(0.0, 0.0, 0.0), help="per-channel mean in 0..255 units")
    g.add_argument("--std", type=_floats, default=(255.0, 255.0, 255.0),
                   help="per-channel std in 0..255 units (default 255: scale to 0..1)")
    g.add_argument("--layout", choices=["nchw", "nhwc"], default=None)
    g.add_argument("--input-dtype", choices=["float32", "uint8"], default=None)


def add_quant_args(p: argparse.ArgumentParser) -> None:
    """Quantization scheme options shared by compare and bisect."""
    g = p.add_argument_group("quantization")
    g.add_argument("--backend", default="sim", help="sim (built-in simulator) | rknn (rknn-toolkit2 simulator)")
    g.add_argument("--platform", default="rk3588", help="rknn target platform (rk3588, rk3568, rk3576, ...)")
    g.add_argument("--rknn-python", default=None, metavar="PATH",
                   help="python of the rknn-toolkit2 environment (or QDEBUG_RKNN_PYTHON; see qdebug doctor)")
    g.add_argument("--rknn-analysis-samples", type=int, default=1,
                   help="samples for the toolkit's per-tensor accuracy_analysis (slow: ~1 min each at 640)")
    g.add_argument("--keep-work", action="store_true", help="keep the vendor backend's run folder")
    g.add_argument("--profile", default="generic", help="generic | rknn | hisi | ort (where the NPU quantizes)")
    g.add_argument("--dtype", default="int8", help="default activation precision: int8 | int16")
    g.add_argument("--calibrator", default="minmax", help="minmax | percentile | mse")
    g.add_argument("--percentile", type=float, default=99.99)
    g.add_argument("--per-tensor-weights", action="store_true", help="one weight scale per tensor, not per channel")
    g.add_argument("--asymmetric-weights", action="store_true")
    g.add_argument("--symmetric-activations", action="store_true")
    g.add_argument("--override", action="append", default=[], metavar="NODE=PREC",
                   help="per-op precision override, e.g. /model.22/Mul_2=int16 (repeatable)")
    g.add_argument("--overrides", default=None, metavar="JSON", help="file with {node: precision}")
    g.add_argument("--calib", default=None, metavar="FORMAT:PATH",
                   help="simulate with a vendor calibration file, e.g. hisi:calibration_param.txt")


def build_preprocess(args: argparse.Namespace):
    from qdebug.inputs.dataset import Preprocess

    return Preprocess(size=args.size, resize=args.resize, color=args.color, mean=tuple(args.mean),
                      std=tuple(args.std), layout=args.layout, dtype=args.input_dtype)


def build_config(args: argparse.Namespace, graph):
    """QuantConfig from the CLI: scheme, overrides (validated against the graph), vendor file."""
    from qdebug.quant.scheme import Precision, QuantConfig, QuantScheme

    try:
        act = Precision.parse(args.dtype)
    except ValueError as exc:
        raise QDebugError(str(exc), where="--dtype") from None
    if not act.is_int:
        raise QDebugError(f"--dtype {args.dtype} is not an integer precision", where="--dtype",
                          fix="use int8 or int16; use --override for fp16 ops")
    scheme = QuantScheme(activation=act, per_channel_weights=not args.per_tensor_weights,
                         symmetric_weights=not args.asymmetric_weights,
                         symmetric_activations=args.symmetric_activations,
                         calibrator=args.calibrator, percentile=args.percentile, profile=args.profile)
    overrides: dict[str, Precision] = {}
    items: list[tuple[str, str, str]] = []
    if args.overrides:
        try:
            data = json.loads(Path(args.overrides).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise QDebugError(f"cannot read overrides ({exc.__class__.__name__})", file=args.overrides,
                              fix='write a JSON object {"node": "int16"}') from None
        if not isinstance(data, dict):
            raise QDebugError("overrides must be a JSON object", file=args.overrides,
                              fix='write {"node": "int16"}')
        items += [(k, str(v), args.overrides) for k, v in data.items()]
    for ov in args.override:
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
            raise QDebugError(str(exc), where=where) from None
    cfg = QuantConfig(scheme=scheme, overrides=overrides)
    if args.calib:
        from qdebug.formats.base import load_vendor_file

        vf = load_vendor_file(args.calib)
        if args.profile == "generic":  # the vendor file decides where quantization happens
            args.profile = vf.profile
            cfg.scheme = QuantScheme(**{**cfg.scheme.__dict__, "profile": vf.profile})
        vcfg, report = vf.to_config(graph, cfg)
        vcfg.overrides.update(overrides)
        for note in _mapping_notes(report):
            err_console.print(f"[yellow]calib:[/] {escape(note)}")
        return vcfg, report
    return cfg, None


def _mapping_notes(report) -> list[str]:
    notes = list(report.notes)
    if report.unmatched_records:
        notes.append(f"{len(report.unmatched_records)} record(s) match no ONNX node (fused/inserted by the "
                     f"vendor compiler), e.g. {', '.join(report.unmatched_records[:3])}")
    if report.nodes_without_record:
        notes.append(f"{len(report.nodes_without_record)} quantized op(s) have no record and were calibrated "
                     f"by qdebug, e.g. {', '.join(report.nodes_without_record[:3])}")
    return notes


def load_inputs(args: argparse.Namespace):
    """Graph + data set (+ calibration set) from CLI args."""
    from qdebug.graph.model import ModelGraph
    from qdebug.inputs.dataset import load_dataset

    graph = ModelGraph.load(args.model)
    prep = build_preprocess(args)
    if args.samples is not None and args.samples <= 0:
        raise QDebugError("--samples must be positive", where="--samples", fix="pass --samples 8 or more")
    ds = load_dataset(args.data, graph, prep, args.samples, args.size)
    calib = load_dataset(args.calib_data, graph, prep, None, args.size) if args.calib_data else None
    return graph, ds, calib


def make_backend(args: argparse.Namespace, dataset=None):
    """The built-in simulator, or a vendor backend configured from the CLI (rknn)."""
    from qdebug.runners.base import get_backend
    from qdebug.runners.sim import SimBackend

    if args.backend == "sim":
        return SimBackend(args.profile)
    if args.backend == "rknn":
        from qdebug.runners.rockchip import RknnBackend

        images = dataset is not None and dataset.kind == "images" and dataset.preprocess is not None
        prep = dataset.preprocess if images else None
        return RknnBackend(python=args.rknn_python, platform=args.platform, keep_work=args.keep_work,
                           mean=prep.mean if prep else None, std=prep.std if prep else None)
    return get_backend(args.backend)


def _progress_factory(console: Console, quiet: bool):
    if quiet:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)
    tasks: dict[str, int] = {}

    def cb(phase: str, adv: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = prog.add_task(phase, total=total)
        prog.update(tasks[phase], advance=adv)

    return prog, cb


# -------------------------------------------------------------------- commands
def cmd_compare(args: argparse.Namespace) -> int:
    from qdebug.fileio import atomic_write
    from qdebug.pipeline import run_compare
    from qdebug.report.terminal import render_compare
    from qdebug.tasks.cli import decoder_from_args, render_detection
    from qdebug.tasks.evaluator import DetectionCollector, run_detection

    console = Console(highlight=False)
    decoder = decoder_from_args(args)  # None without --task; checks --anchors/--labels/pycocotools up front
    graph, ds, calib = load_inputs(args)
    if args.backend == "rknn" and args.profile == "generic":
        args.profile = "rknn"
    cfg, mapping = build_config(args, graph)
    vendor = make_backend(args, ds) if args.backend != "sim" else None
    from qdebug.runners.sim import SimBackend

    backend = SimBackend(args.profile)
    collector = DetectionCollector(graph, ds, decoder) if decoder is not None else None
    hook = collector.add if collector is not None else None
    prog, cb = _progress_factory(err_console, args.quiet)
    if prog:
        with prog:
            res = run_compare(graph, ds, cfg, backend, calib, progress=cb, on_sample=hook)
    else:
        res = run_compare(graph, ds, cfg, backend, calib, on_sample=hook)
    res.command = args.command_line
    data = res.to_json()
    if mapping is not None:
        data["quant"]["calib_mapping"] = mapping.to_json()
    if decoder is not None:
        det = run_detection(graph, ds, backend, cfg, decoder, labels=args.labels, collector=collector)
        data["detection"] = det.to_json()
        for png in det.draw(args.draw) if args.draw else []:
            console.print(f"wrote {png}")
    if vendor is not None:
        from qdebug.vendor_compare import rknn_compare

        if not args.quiet:
            err_console.print(f"[dim]· running {args.backend} simulator on {len(ds)} samples and its per-tensor "
                              f"analysis on {args.rknn_analysis_samples}[/]")
        try:
            data["vendor"] = rknn_compare(graph, ds, cfg, vendor, data, calib, args.rknn_analysis_samples)
        finally:
            vendor.close()
    if not args.quiet:
        render_compare(data, console, top=args.top, show_all=args.all)
        if "vendor" in data:
            from qdebug.report.terminal import render_vendor

            render_vendor(data["vendor"], console)
        if "detection" in data:
            render_detection(data["detection"], console)
    if args.json:
        atomic_write(args.json, json.dumps(data, indent=1, allow_nan=False) + "\n",
                     protect=(args.model, args.data))
        console.print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qdebug", description="Layer-level quantization debugger for ONNX models "
                                 "deployed to edge NPUs.")
    ap.add_argument("--version", action="version", version=f"qdebug {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="float vs quantized error of every tensor (cumulative and isolated)")
    c.add_argument("model", help="float ONNX model")
    add_data_args(c)
    add_quant_args(c)
    c.add_argument("--json", default=None, help="write the full result (schema qdebug.compare/1)")
    c.add_argument("--top", type=int, default=15, help="rows in the worst-ops table")
    c.add_argument("--all", action="store_true", help="print every tensor in execution order")
    c.add_argument("--quiet", "-q", action="store_true")
    from qdebug.tasks.cli import add_task_args

    add_task_args(c)
    c.set_defaults(func=cmd_compare)
    _register_more(sub)
    return ap


def _register_more(sub) -> None:
    """Subcommands from later layers register here (promote, bisect, report, doctor)."""
    for mod in ("qdebug.cli_promote", "qdebug.cli_bisect", "qdebug.cli_report", "qdebug.cli_doctor"):
        try:
            module = __import__(mod, fromlist=["register"])
        except ImportError:
            continue
        module.register(sub)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `qdebug` console script; user errors become one line and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    args = ap.parse_args(argv)
    args.command_line = "qdebug " + " ".join(shlex.quote(a) for a in argv)
    try:
        return int(args.func(args) or 0)
    except QDebugError as exc:
        err_console.print(f"[bold red]qdebug: error:[/] {exc.one_line()}", soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("qdebug: interrupted")
        return 130
    except MemoryError:
        err_console.print("[bold red]qdebug: error:[/] out of memory (fix: use fewer --samples or a smaller --size)")
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
