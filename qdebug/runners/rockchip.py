"""Rockchip backend: rknn-toolkit2's PC simulator driven as a worker process in its own interpreter.

qdebug never imports `rknn`: the toolkit pins old numpy/onnx/torch, so it lives in a separate virtual
environment (`qdebug doctor --setup-rknn DIR`) found via `--rknn-python`, `QDEBUG_RKNN_PYTHON` or the
default cache folder. Arrays travel as .npy files in a run folder (kept with --keep-work).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from qdebug.errors import QDebugError
from qdebug.graph.fusion import QuantOp, build_quant_ops
from qdebug.graph.model import ModelGraph
from qdebug.quant.profiles import get_profile, int16_unsupported
from qdebug.quant.scheme import Precision, QuantConfig
from qdebug.runners.base import Backend, register_backend

WORKER = Path(__file__).with_name("rknn_worker.py")
DEFAULT_ENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qdebug" / "rknn-env"
PLATFORMS = ("rk3562", "rk3566", "rk3568", "rk3576", "rk3588", "rv1103", "rv1106", "rv1103b", "rv1106b",
             "rk2118", "rv1126b")
SETUP_STEPS = [
    ["-m", "pip", "install", "-q", "torch==2.13.0"],
    ["-m", "pip", "install", "-q", "setuptools<70"],
    ["-m", "pip", "install", "-q", "--no-deps", "rknn-toolkit2==2.5.0"],
    ["-m", "pip", "install", "-q", "fast-histogram", "numpy<2", "onnx==1.18.0", "onnxruntime==1.26.0",
     "opencv-python-headless", "protobuf==4.25.4", "psutil", "ruamel.yaml", "scipy", "tqdm"],
]


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
CUSTOM_KEY = "custom_quantize_layers"
# an override key `rknn-cfg:<tensor>` is a cfg tensor key written verbatim (not an ONNX node to map)
RAW = "rknn-cfg:"
RAW_VALUES = {Precision.INT8: "int8", Precision.INT16: "int16", Precision.FP16: "float16", Precision.FP32: "float32"}
# what each toolkit build was for: an evaluation (plain or hybrid step 2 + simulator), an evaluation build that
# crashed (retried without the culprit), a crash-isolation probe, hybrid step 1 (normal / proposal=True), analysis
BUILD_KINDS = ("evaluation", "crashed", "isolation", "step1", "step1_proposal", "analysis")
UNSUPPORTED = re.compile(r"unsupported tensor dtype in (?P<op>\w+), tensor name is: (?P<tensor>\S+)")


class ToolkitError(QDebugError):
    """The toolkit (or its worker) failed; carries the first real error line of its log."""


def find_rknn_python(explicit: str | None = None) -> str | None:
    """The interpreter of the rknn-toolkit2 environment, or None when not found."""
    for cand in (explicit, os.environ.get("QDEBUG_RKNN_PYTHON"), str(DEFAULT_ENV / "bin" / "python")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


# exit 3: a python without the toolkit; find_spec does not import it (importing the toolkit takes seconds)
_PROBE = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('rknn') else 3)"


def check_rknn_python(explicit: str | None = None) -> str:
    """The toolkit's interpreter, checked before any work: it exists, runs, and can import `rknn`."""
    env = os.environ.get("QDEBUG_RKNN_PYTHON")
    where = "--rknn-python" if explicit else "QDEBUG_RKNN_PYTHON" if env else "--backend rknn"
    setup = f"run `qdebug doctor --setup-rknn {DEFAULT_ENV}` and pass its bin/python"
    for given in (explicit, env):
        if given and not (Path(given).is_file() and os.access(given, os.X_OK)):
            raise QDebugError(f"'{given}' is not an executable file", where=where,
                              fix=f"give the python of the rknn-toolkit2 environment; {setup}")
        if given:
            break
    py = find_rknn_python(explicit)
    if py is None:
        raise QDebugError("rknn-toolkit2 environment not found", where="--backend rknn",
                          fix=f"run `qdebug doctor --setup-rknn {DEFAULT_ENV}` or set QDEBUG_RKNN_PYTHON")
    try:
        r = subprocess.run([py, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise QDebugError(f"'{py}' does not run as a python interpreter ({type(exc).__name__})", where=where,
                          fix=f"give the python of the rknn-toolkit2 environment; {setup}") from None
    if r.returncode == 3:
        raise QDebugError(f"'{py}' has no rknn-toolkit2 (the module `rknn` is not installed there)", where=where,
                          fix=f"give the python of the environment where rknn-toolkit2 is installed; {setup}")
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [f"exit {r.returncode}"]
        raise QDebugError(f"'{py}' is not a working python interpreter: {tail[0][:160]}", where=where,
                          fix=f"give the python of the rknn-toolkit2 environment; {setup}")
    return py


def static_input_model(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy whose dynamic input dims (N, H, W...) are fixed from the samples' shapes: the toolkit refuses
    dynamic inputs, while qdebug fills them from --size. Returns the model itself when nothing is dynamic."""
    dyn = [i for i in model.graph.input if i.name in shapes
           and any(not d.HasField("dim_value") or d.dim_value <= 0 for d in i.type.tensor_type.shape.dim)]
    if not dyn:
        return model
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for inp in fixed.graph.input:
        shape = shapes.get(inp.name)
        if shape is None:
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            continue
        for d, n in zip(dims, shape, strict=True):
            if not d.HasField("dim_value") or d.dim_value <= 0:
                d.ClearField("dim_param")
                d.dim_value = int(n)
    return fixed


def setup_rknn_env(target: str | Path, log=print) -> str:
    """Create the toolkit's own virtual environment (about 1.5 GB, a minute or two) and return its python."""
    target = Path(target)
    py = target / "bin" / "python"
    if not py.exists():
        log(f"creating virtual environment {target}")
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
    for step in SETUP_STEPS:
        log("pip " + " ".join(step[2:]))
        r = subprocess.run([str(py), *step], capture_output=True, text=True)
        if r.returncode != 0 and "rknn-toolkit2" in " ".join(step):
            raise ToolkitError(f"installing rknn-toolkit2 failed: {r.stderr.strip().splitlines()[-1:]}",
                               fix="check network access to the package registry")
    r = subprocess.run([str(py), "-c", "from rknn.api import RKNN"], capture_output=True, text=True)
    if r.returncode != 0:
        raise ToolkitError(f"rknn-toolkit2 does not import: {r.stderr.strip().splitlines()[-1:]}",
                           file=str(target), fix="remove the folder and run the setup again")
    return str(py)


class RknnWorker:
    """Runs one worker command per process (the toolkit refuses repeated steps on one RKNN object)."""

    def __init__(self, python: str, workdir: Path, timeout: float = 1800.0, keep: bool = True) -> None:
        self.python = python
        self.workdir = workdir
        self.timeout = timeout
        self.keep = keep  # the run folder survives the run (--keep-work): messages may point into it
        self._n = 0

    def call(self, cmd: str, **req) -> dict:
        """Run `cmd` in a fresh worker process and return its response (raises ToolkitError on failure)."""
        self._n += 1
        job = self.workdir / f"job{self._n:03d}_{cmd}"
        job.mkdir(parents=True, exist_ok=True)
        req = {"cmd": cmd, "workdir": str(job), **req}
        (job / "request.json").write_text(json.dumps(req))
        try:
            # the toolkit writes scratch files (check.onnx, check.rknn) to the temp dir: keep them in the job folder
            env = {**os.environ, "TMPDIR": str(job), "TMP": str(job), "TEMP": str(job)}
            proc = subprocess.run([self.python, str(WORKER), str(job / "request.json")], capture_output=True,
                                  text=True, timeout=self.timeout, env=env)
        except subprocess.TimeoutExpired:
            raise ToolkitError(f"rknn worker timed out after {self.timeout:.0f} s in {cmd}", file=str(job),
                               fix="use fewer samples or a smaller model; rerun with --keep-work to inspect") from None
        resp_path = job / "response.json"
        if not resp_path.exists():
            log = job / "worker.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            err = [ln for ln in (ANSI.sub("", x).strip() for x in text.splitlines()) if ln.startswith("E ")]
            tail = err[:1] or (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise ToolkitError(f"rknn worker crashed in {cmd} (exit {proc.returncode}): {tail[0][:300]}",
                               file=self.log_hint(log), fix="rerun with --keep-work and read the worker log")
        resp = json.loads(resp_path.read_text())
        if not resp.get("ok"):
            problem = resp.get("toolkit_error") or resp.get("error") or ""
            fix = ("the toolkit needs static input dims: pass --size H,W" if "dynamic" in problem.lower()
                   else "rerun with --keep-work and read the worker log; check the model and --platform")
            raise ToolkitError(f"rknn-toolkit2 failed in {cmd}: {problem}",
                               file=self.log_hint(job / "worker.log"), fix=fix)
        return resp

    def log_hint(self, log: Path) -> str:
        """The worker log's path while it survives (--keep-work), else a note that it is removed with the run."""
        return str(log) if self.keep else f"{log.name} (removed with the run folder; --keep-work keeps it)"


@register_backend
class RknnBackend(Backend):
    """rknn-toolkit2 PC simulator: build (plain or hybrid with a patched cfg), then simulate."""

    name = "rknn"
    intermediates = False  # final outputs only; per-tensor results come from accuracy_analysis

    def __init__(self, python: str | None = None, platform: str = "rk3588", keep_work: bool = False,
                 work_root: str | None = None, algorithm: str = "normal", mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        if platform not in PLATFORMS:
            raise QDebugError(f"unknown platform '{platform}'", where="--platform",
                              fix=f"use one of {', '.join(PLATFORMS)}")
        self.python = check_rknn_python(python)  # before any work: a wrong python is one line, not a late crash
        self.platform = platform
        self.algorithm = algorithm
        self.keep_work = keep_work
        self.work_root = Path(work_root) if work_root else Path(tempfile.gettempdir())
        self._workdir: Path | None = None  # made on first use, so no folder exists before the toolkit runs
        self._worker: RknnWorker | None = None
        self.mean = [list(mean)] if mean is not None else None
        self.std = [list(std)] if std is not None else None
        self.calib_paths: list[str] = []
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self._models: dict[str, str] = {}
        self._hybrid: dict[str, dict] = {}
        self.builds = 0  # every toolkit build (plain, hybrid step 1, step 2, accuracy_analysis): the one count
        self.build_kinds: dict[str, int] = {}  # the same builds by kind (BUILD_KINDS); sums to `builds`
        self._ops: dict[int, list[QuantOp]] = {}
        self.unpromotable: dict[str, str] = {}  # op -> toolkit message (e.g. int16 Sub with a constant)
        self.not_applied: dict[str, str] = {}  # cfg key -> what the toolkit built instead (read back after step 2)
        self.float16_instead: dict[str, str] = {}  # op -> why its int16 promotion is written as float16
        # identical toolkit runs (same model file, cfg, outputs and input bytes) are served from the first one:
        # bisect's baseline evaluation repeats the full-graph truncation probe, build for build
        self._runs: dict[str, dict] = {}
        self.reused = 0  # runs served from an identical earlier run (no build)
        self.log = lambda msg: sys.stderr.write(f"qdebug: {msg}\n")

    @property
    def workdir(self) -> Path:
        """The run folder (created on first use; removed at close, at exit and on SIGTERM unless --keep-work)."""
        if self._workdir is None:
            self.work_root.mkdir(parents=True, exist_ok=True)
            self._workdir = Path(tempfile.mkdtemp(prefix="qdebug-rknn-", dir=str(self.work_root)))
            atexit.register(self.close)  # an unwinding Ctrl-C/SIGTERM or a crash still removes the folder
        return self._workdir

    @property
    def worker(self) -> RknnWorker:
        """The worker launcher for this run folder."""
        if self._worker is None:
            self._worker = RknnWorker(self.python, self.workdir, keep=self.keep_work)
        return self._worker

    def __del__(self) -> None:  # pragma: no cover - best effort cleanup
        self.close()

    def close(self) -> None:
        """Remove the run folder unless --keep-work; with --keep-work say where it is (once)."""
        wd = getattr(self, "_workdir", None)
        if wd is None or not wd.exists():
            return
        if not getattr(self, "keep_work", True):
            shutil.rmtree(wd, ignore_errors=True)
        elif not getattr(self, "_told", False):
            self._told = True
            self.log(f"kept the rknn-toolkit2 run folder {wd} (--keep-work)")

    def _count(self, kind: str) -> None:
        """One toolkit build of the given kind (BUILD_KINDS), counted once in `builds` and once by kind."""
        self.builds += 1
        self.build_kinds[kind] = self.build_kinds.get(kind, 0) + 1

    def _recount(self, old: str, new: str) -> None:
        """A build counted as `old` turned out to be `new` (an evaluation build that crashed)."""
        self.build_kinds[old] -= 1
        self.build_kinds[new] = self.build_kinds.get(new, 0) + 1

    def int16_blocked(self, graph: ModelGraph, key: str) -> str | None:
        """Why the toolkit cannot build this op (an override key) at int16, from the rknn profile's
        `int16_unsupported` patterns; None when nothing rules it out. Known before any build."""
        profile = get_profile("rknn")
        if not profile.int16_unsupported:
            return None
        op = next((o for o in self.quant_ops(graph) if o.key == key), None)
        for name in (op.nodes if op is not None else [key]):
            node = graph.node_by_name.get(name)
            if node is None:
                continue
            pat = int16_unsupported(profile, node.op_type, [bool(i) and graph.is_constant(i) for i in node.input])
            if pat:
                return (f"{node.op_type} {name} matches the rknn profile's int16_unsupported '{pat}' "
                        "(no int16 kernel in rknn-toolkit2): written as float16")
        return None

    # ----------------------------------------------------------------- data
    def _to_toolkit(self, x: np.ndarray) -> np.ndarray:
        """Undo qdebug's normalization so the toolkit applies config mean/std itself, like the NPU does."""
        if self.mean is None:
            return x.astype(np.float32)
        m = np.asarray(self.mean[0], dtype=np.float32).reshape(1, -1, 1, 1)
        s = np.asarray(self.std[0], dtype=np.float32).reshape(1, -1, 1, 1)
        return (x.astype(np.float32) * s + m).astype(np.float32)

    def _save_samples(self, samples: Iterable[dict[str, np.ndarray]], tag: str) -> list[str]:
        d = self.workdir / tag
        d.mkdir(exist_ok=True)
        paths = []
        for k, s in enumerate(samples):
            if len(s) != 1:
                raise QDebugError("the rknn backend supports single-input models", where="--backend rknn",
                                  fix="use the built-in simulator for multi-input models")
            p = d / f"{k:04d}.npy"
            np.save(p, self._to_toolkit(next(iter(s.values()))))
            paths.append(str(p))
        return paths

    def prepare(self, graph: ModelGraph, config: QuantConfig, calib: Iterable[dict[str, np.ndarray]]) -> None:
        samples = list(calib)
        if samples:
            self.input_shapes = {k: tuple(v.shape) for k, v in samples[0].items()}
        self.calib_paths = self._save_samples(samples, "calib")

    def quant_ops(self, graph: ModelGraph) -> list[QuantOp]:
        key = graph.uid
        if key not in self._ops:
            self._ops[key] = build_quant_ops(graph, fuse=True)
        return self._ops[key]

    def _model_path(self, graph: ModelGraph) -> str:
        """The model file the toolkit loads, dynamic input dims fixed from the samples (--size)."""
        model = static_input_model(graph.model, self.input_shapes)
        data = model.SerializeToString()
        h = hashlib.sha1(data).hexdigest()[:12]
        if h not in self._models:
            p = self.workdir / f"model_{h}.onnx"
            onnx.save(model, str(p))
            self._models[h] = str(p)
        return self._models[h]

    def _base_req(self, graph: ModelGraph, outputs: Sequence[str]) -> dict:
        return {"model": self._model_path(graph), "platform": self.platform, "mean": self.mean, "std": self.std,
                "dataset": self.calib_paths, "outputs": list(outputs), "quantized_algorithm": self.algorithm}

    # ---------------------------------------------------------------- runs
    def hybrid_cfg(self, graph: ModelGraph, outputs: Sequence[str], proposal: bool = False) -> dict:
        """hybrid_quantization_step1 once per (model, outputs); returns {'base', 'cfg'} paths."""
        key = f"{self._model_path(graph)}|{','.join(outputs)}|{proposal}"
        if key not in self._hybrid:
            self._count("step1_proposal" if proposal else "step1")
            self._hybrid[key] = self.worker.call("hybrid_step1", **self._base_req(graph, outputs), proposal=proposal)
        return self._hybrid[key]

    def patched_cfg(self, graph: ModelGraph, config: QuantConfig, outputs: Sequence[str]) -> tuple[str, str] | None:
        """Write a .quantization.cfg with the config's promotions; None when nothing is promoted.

        Node keys promote every quantization point the toolkit keeps inside the node's fused op; keys with
        the RAW prefix are cfg tensor keys written verbatim (a toolkit proposal replayed as the toolkit wrote it).
        """
        inputs = {i.name for i in graph.inputs}
        raw = {k[len(RAW):]: p for k, p in config.overrides.items() if k.startswith(RAW)}
        promoted = {k: p for k, p in config.overrides.items()
                    if p in (Precision.INT16, Precision.FP16, Precision.FP32) and k not in inputs
                    and not k.startswith(RAW)}
        if not promoted and not raw:
            return None
        from qdebug.errors import FormatError
        from qdebug.formats.rknn2 import RknnQuantCfg

        step1 = self.hybrid_cfg(graph, outputs)
        text = Path(step1["cfg"]).read_text()
        cfg = RknnQuantCfg.parse(text, step1["cfg"])
        for k in sorted(promoted):
            try:
                cfg.tensor_key(k, graph)
            except FormatError:  # fused or renamed by the toolkit: no cfg entry to promote
                self.unpromotable.setdefault(k, "no entry in the toolkit's quantization cfg (fused or renamed)")
                promoted.pop(k)
        unknown = sorted(k for k in raw if k not in cfg.params)
        if unknown:
            from qdebug.formats.rknn2_read import suggest

            raise FormatError(f"'{unknown[0]}' is not a tensor of the toolkit's quantization cfg "
                              f"({len(unknown)} unknown)", file=step1["cfg"], where=CUSTOM_KEY,
                              fix=f"use tensor names the toolkit lists{suggest(unknown[0], cfg.params)}")
        if not promoted and not raw:
            return None
        for k in sorted(promoted):  # toolkit rules known before any build: int16 -> float16 for these ops
            why = self.int16_blocked(graph, k) if promoted[k] == Precision.INT16 else None
            if why:
                promoted[k] = Precision.FP16
                self.float16_instead[k] = why
        for prec in (Precision.INT16, Precision.FP16, Precision.FP32):
            nodes = sorted(k for k, p in promoted.items() if p == prec)
            if nodes:
                dtype = Precision.FP16 if prec == Precision.FP32 else prec
                res = cfg.promote(nodes, dtype, graph=graph)
                cfg = RknnQuantCfg.parse(res.text, step1["cfg"])
        if raw:
            entries = dict(cfg.custom)
            entries.update({k: RAW_VALUES[p] for k, p in raw.items()})
            cfg = RknnQuantCfg.parse(cfg.with_custom(list(entries.items())), step1["cfg"])
        h = hashlib.sha1(cfg.text.encode()).hexdigest()[:10]
        out = Path(step1["cfg"]).with_name(f"patched_{h}.quantization.cfg")
        out.write_text(cfg.text)
        return step1["base"], str(out)

    def run(self, graph: ModelGraph, config: QuantConfig, samples: Iterable[dict[str, np.ndarray]],
            outputs: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        inputs = self._save_samples(samples, f"in_{len(os.listdir(self.workdir))}")
        digest = hashlib.sha1()
        for path in inputs:
            digest.update(Path(path).read_bytes())
        resp = self._simulate(graph, config, outputs, inputs, digest.hexdigest())
        names = [o.name for o in graph.outputs] if set(outputs) >= {o.name for o in graph.outputs} else list(outputs)
        for paths in resp["outputs"]:
            vals = {n: np.load(p) for n, p in zip(names, paths, strict=False)}
            yield {o: vals[o] for o in outputs if o in vals}

    def _simulate(self, graph: ModelGraph, config: QuantConfig, outputs: Sequence[str], inputs: list[str],
                  digest: str = "") -> dict:
        """Build + simulate; an op the toolkit cannot run at the promoted dtype is dropped and remembered.
        A request identical to an earlier one (`digest`: the input bytes) is answered by that run, without a build.

        Ops the rknn profile rules out at int16 are written as float16 before the build (patched_cfg); an
        unknown crash that names a tensor blames the promoted op of that type next to it (no extra build), one
        that names nothing is isolated by a binary search over the promoted set (ceil(log2 |set|) builds).
        """
        overrides = {k: v for k, v in config.overrides.items() if k not in self.unpromotable}
        for _ in range(8):
            req = self._build_request(graph, replace(config, overrides=overrides), outputs)
            patched = "cfg" in req
            key = hashlib.sha1(json.dumps([req, digest], sort_keys=True).encode()).hexdigest() if digest else ""
            if key in self._runs:
                self.reused += 1
                return self._runs[key]
            self._count("evaluation")
            try:
                resp = self.worker.call("simulate", **req, inputs=inputs)
                if patched:
                    self._read_back(graph, req["cfg"], resp)
                if key:
                    self._runs[key] = resp
                return resp
            except ToolkitError as exc:
                self._recount("evaluation", "crashed")
                if not patched:
                    raise
                m = UNSUPPORTED.search(exc.problem)
                culprit = self._named_culprit(graph, overrides, m.group("op"), m.group("tensor")) if m else None
                if culprit is not None:
                    self.unpromotable[culprit] = m.group(0)  # type: ignore[union-attr]
                else:
                    promoted = [k for k, v in overrides.items() if v != config.scheme.activation]
                    culprit = self._find_culprit(graph, config, outputs, inputs[:1], promoted)
                    if culprit is None:
                        raise
                    self.unpromotable[culprit] = f"the toolkit crashes when it is promoted: {exc.problem[:160]}"
                overrides.pop(culprit, None)
        raise ToolkitError("too many ops the toolkit cannot promote", fix="rerun with --keep-work")

    def _named_culprit(self, graph: ModelGraph, overrides: dict, op_type: str, tensor: str) -> str | None:
        """The promoted op of type `op_type` that reads or writes the tensor the toolkit's message names."""
        from qdebug.graph.fusion import group_of
        from qdebug.runners.rknn_results import onnx_name

        t = onnx_name(tensor)
        groups = group_of(self.quant_ops(graph))
        near = list(graph.consumers.get(t, [])) + ([graph.producer[t]] if t in graph.producer else [])
        near.sort(key=lambda n: n.op_type != op_type)  # the op type the message names first
        for node in near:
            op = groups.get(node.name)
            hit = next((k for k in overrides if k == node.name or (op is not None and k == op.key)), None)
            if hit:
                return hit
        return None

    def _read_back(self, graph: ModelGraph, cfg_path: str, resp: dict) -> None:
        """After step 2: every requested cfg entry the toolkit did not build at the requested dtype goes into
        `not_applied` (with what it built, or the closest names it knows); entries built as asked leave it."""
        from qdebug.formats.rknn2 import RknnQuantCfg
        from qdebug.runners.rknn_results import parse_build_tables, unapplied_promotions

        log = Path(resp.get("log") or "")
        tables = parse_build_tables(log.read_text(errors="replace")) if log.is_file() else None
        if tables is None:  # no verbose tables in the log: nothing to check against
            return
        requested = RknnQuantCfg.parse(Path(cfg_path).read_text(), cfg_path).custom
        producer = {t: n.name for t, n in graph.producer.items()}
        bad = unapplied_promotions(requested, tables, producer)
        for key in requested:
            if key in bad:
                self.not_applied[key] = bad[key]
            else:
                self.not_applied.pop(key, None)

    def _build_request(self, graph: ModelGraph, config: QuantConfig, outputs: Sequence[str]) -> dict:
        """Worker request for a build: plain, or hybrid with the config's promotions in a patched cfg."""
        req = self._base_req(graph, outputs)
        patched = self.patched_cfg(graph, config, outputs)
        if patched:
            req["cfg_base"], req["cfg"] = patched
        return req

    def _crashes(self, graph: ModelGraph, config: QuantConfig, outputs: Sequence[str], inputs: list[str],
                 keys: list[str]) -> bool:
        req = self._build_request(graph, replace(config, overrides={k: config.overrides[k] for k in keys}),
                                  outputs)
        if "cfg" not in req:
            return False
        self._count("isolation")
        try:
            self.worker.call("simulate", **req, inputs=inputs)
            return False
        except ToolkitError:
            return True

    def _find_culprit(self, graph: ModelGraph, config: QuantConfig, outputs: Sequence[str], inputs: list[str],
                      keys: list[str]) -> str | None:
        """Binary search for the shortest crashing prefix of the promoted ops (the whole set crashed): its last
        op is needed for the crash. ceil(log2 |keys|) builds (one more when only the whole set is left to blame);
        None when there is nothing to blame."""
        if not keys:
            return None
        lo, hi = 0, len(keys)  # keys[:lo] builds (nothing promoted builds), keys[:hi] crashes
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._crashes(graph, config, outputs, inputs, keys[:mid]):
                hi = mid
            else:
                lo = mid
        if hi == len(keys) and not self._crashes(graph, config, outputs, inputs, keys):
            return None  # no prefix crashed and the whole set no longer does: not a promotion's fault
        return keys[hi - 1]

    def accuracy_analysis(self, graph: ModelGraph, sample: dict[str, np.ndarray]) -> dict:
        """Run the toolkit's per-tensor analysis on one sample; returns the worker's file paths."""
        inputs = self._save_samples([sample], f"aa_{len(os.listdir(self.workdir))}")
        self._count("analysis")
        return self.worker.call("accuracy_analysis", **self._base_req(graph, [o.name for o in graph.outputs]),
                                inputs=inputs)

    def versions(self) -> dict:
        return self.worker.call("versions")

    def describe(self) -> dict:
        return {"backend": self.name, "profile": "rknn", "platform": self.platform, "python": self.python,
                "quantized_algorithm": self.algorithm, "unpromotable": dict(self.unpromotable),
                "not_applied": dict(self.not_applied), "float16_instead": dict(self.float16_instead),
                "builds": self.builds, "builds_by_kind": {k: self.build_kinds[k] for k in BUILD_KINDS
                                                          if self.build_kinds.get(k)},
                "reused_runs": self.reused}
