"""rknn-toolkit2 worker: runs inside the toolkit's own interpreter, never imported by qdebug itself.

Protocol: `python rknn_worker.py REQUEST.json`. The request names a command and file paths (arrays as
.npy); the worker writes RESPONSE.json next to it: {"ok": bool, "error": str|null, ...results}.
Only the standard library, numpy and rknn are imported here, so the file runs in an environment that
does not have qdebug installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
import traceback

# this file's folder holds qdebug modules; keep them off the path so `import rknn` finds the toolkit
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def first_error_line(text: str) -> str:
    """The first real error line of a toolkit log (ANSI colours stripped)."""
    lines = [ANSI.sub("", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if not ln.startswith(("File ", "Traceback", "^", "~"))]
    for pat in (r"^E\s", r"Error|ERROR|error:", r"Exception|Invalid|not support|failed|Failed"):
        for ln in lines:
            if ln and re.search(pat, ln) and not ln.startswith("W "):
                return ln[:400]
    return next((ln for ln in reversed(lines) if ln), "unknown toolkit error")[:400]


def _rknn(verbose: bool = False):
    from rknn.api import RKNN

    return RKNN(verbose=verbose)


def _check(ret, what: str) -> None:
    if ret not in (0, None):
        raise RuntimeError(f"{what} returned {ret}")


def _config(r, req: dict) -> None:
    kw = {"target_platform": req["platform"],
          "quantized_dtype": req.get("quantized_dtype", "w8a8"),
          "quantized_algorithm": req.get("quantized_algorithm", "normal"),
          "quantized_method": req.get("quantized_method", "channel")}
    if req.get("mean") is not None:
        kw["mean_values"] = req["mean"]
        kw["std_values"] = req["std"]
    _check(r.config(**kw), "config")


def _load(r, req: dict) -> None:
    outs = req.get("outputs") or None
    _check(r.load_onnx(model=req["model"], outputs=outs), "load_onnx")


def _dataset_file(req: dict) -> str:
    path = os.path.join(req["workdir"], "dataset.txt")
    with open(path, "w") as f:
        for p in req["dataset"]:
            f.write(p + "\n")
    return path


def cmd_simulate(req: dict) -> dict:
    """Build (plain or hybrid with a cfg) and run the PC simulator on each input."""
    import numpy as np

    t0 = time.time()
    ds = _dataset_file(req)
    if req.get("cfg"):
        # hybrid: step1 on a fresh object, patch handled by the caller (cfg path given), step2 on another;
        # verbose so that the build prints its layer and tensor tables (the caller reads back the dtypes)
        base = req["cfg_base"]
        r = _rknn(verbose=True)
        _config(r, req)
        r2 = r
        _check(r2.hybrid_quantization_step2(model_input=base + ".model", data_input=base + ".data",
                                            model_quantization_cfg=req["cfg"]), "hybrid_quantization_step2")
    else:
        r = _rknn()
        _config(r, req)
        _load(r, req)
        _check(r.build(do_quantization=req.get("quantize", True), dataset=ds), "build")
    t_build = time.time() - t0
    _check(r.init_runtime(), "init_runtime")
    out_paths = []
    t1 = time.time()
    for k, inp in enumerate(req["inputs"]):
        x = np.load(inp)
        outs = r.inference(inputs=[x], data_format="nchw")
        paths = []
        for j, o in enumerate(outs):
            p = os.path.join(req["workdir"], f"out_{k}_{j}.npy")
            np.save(p, np.asarray(o, dtype=np.float32))
            paths.append(p)
        out_paths.append(paths)
    t_run = time.time() - t1
    r.release()
    return {"outputs": out_paths, "build_s": t_build, "run_s": t_run}


def cmd_hybrid_step1(req: dict) -> dict:
    """hybrid_quantization_step1: writes {name}.model/.data/.quantization.cfg into the workdir."""
    ds = _dataset_file(req)
    r = _rknn()
    _config(r, req)
    _load(r, req)
    cwd = os.getcwd()
    os.chdir(req["workdir"])
    try:
        kw = {"dataset": ds, "proposal": bool(req.get("proposal", False))}
        if req.get("proposal"):
            kw["proposal_dataset_size"] = int(req.get("proposal_dataset_size", 1))
        _check(r.hybrid_quantization_step1(**kw), "hybrid_quantization_step1")
    finally:
        os.chdir(cwd)
    r.release()
    name = os.path.splitext(os.path.basename(req["model"]))[0]
    base = os.path.join(req["workdir"], name)
    return {"base": base, "cfg": base + ".quantization.cfg"}


def cmd_accuracy_analysis(req: dict) -> dict:
    """Build, then accuracy_analysis on the given inputs (simulator): per-tensor dumps + error table."""
    ds = _dataset_file(req)
    r = _rknn()
    _config(r, req)
    _load(r, req)
    _check(r.build(do_quantization=True, dataset=ds), "build")
    out_dir = os.path.join(req["workdir"], "snapshot")
    _check(r.accuracy_analysis(inputs=req["inputs"], output_dir=out_dir, target=None), "accuracy_analysis")
    r.release()
    return {"output_dir": out_dir, "error_analysis": os.path.join(out_dir, "error_analysis.txt"),
            "map_name_to_file": os.path.join(out_dir, "map_name_to_file.txt")}


def cmd_versions(req: dict) -> dict:
    import numpy

    try:
        from importlib.metadata import version

        tk = version("rknn-toolkit2")
    except Exception:  # noqa: BLE001
        tk = None
    return {"rknn_toolkit2": tk, "numpy": numpy.__version__, "python": sys.version.split()[0]}


COMMANDS = {"simulate": cmd_simulate, "hybrid_step1": cmd_hybrid_step1,
            "accuracy_analysis": cmd_accuracy_analysis, "versions": cmd_versions}


def main(argv: list[str]) -> int:
    req_path = argv[1]
    with open(req_path) as f:
        req = json.load(f)
    resp_path = os.path.join(os.path.dirname(req_path), "response.json")
    log_path = os.path.join(req.get("workdir", "."), "worker.log")
    resp: dict = {"ok": False, "error": None, "log": log_path}
    with open(log_path, "a") as log:
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                fd_out, fd_err = os.dup(1), os.dup(2)
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                try:
                    result = COMMANDS[req["cmd"]](req)
                finally:
                    os.dup2(fd_out, 1)
                    os.dup2(fd_err, 2)
            resp.update(result)
            resp["ok"] = True
        except Exception as exc:  # noqa: BLE001 - everything is reported to the parent
            log.write(traceback.format_exc())
            log.flush()
            with open(log_path) as f:
                text = f.read()
            resp["error"] = f"{type(exc).__name__}: {exc}"
            resp["toolkit_error"] = first_error_line(text)
    with open(resp_path, "w") as f:
        json.dump(resp, f)
    return 0 if resp["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
