"""Helpers every benchmark script shares: the bench inputs, CPU/RSS readings, machine load, git state.

The scripts run as `python benchmarks/NAME.py`, so this folder is on sys.path and `from _common import ...`
works for them and for the child processes they start.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL_NAME = "yolov8_bench.onnx"
IMAGES_DIR = "images"
IMAGE_SIZE = (640, 480)  # (W, H) as fixtures.data.make_images takes it


def prepare_inputs(out: Path, n_images: int, generate: int | None = None,
                   rewrite_model: bool = False) -> tuple[Path, Path]:
    """The bench model and at least `n_images` deterministic images in `out` (`generate` of them are written
    when fewer exist). The model is written when missing, or every time with `rewrite_model`."""
    sys.path.insert(0, str(ROOT))
    from fixtures.data import make_images
    from fixtures.models import make_yolov8_bench

    out.mkdir(parents=True, exist_ok=True)
    model = out / MODEL_NAME
    images = out / IMAGES_DIR
    if rewrite_model or not model.exists():
        import onnx

        onnx.save(make_yolov8_bench(), str(model))
    have = sorted(images.glob("img_*")) if images.exists() else []
    if len(have) < n_images:
        make_images(images, n=generate or n_images, size=IMAGE_SIZE)
    return model, images


def peak_rss_mb() -> float:
    """This process's peak resident memory (getrusage high-water mark, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_s() -> float:
    """CPU seconds of this process so far, all threads."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def children_cpu_s() -> float:
    """CPU seconds of this process's finished children."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def rss_kb(pid: int) -> int:
    """Current resident memory of a process (VmRSS, KiB); 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_busy_s() -> float:
    """Machine-wide busy CPU seconds so far (all cores), from /proc/stat; 0 where unavailable."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait_s: float, threshold_cores: float = 0.3) -> float:
    """Other work on the machine skews timings; wait (up to max_wait_s) until less than
    `threshold_cores` cores are busy over one second. Returns the last busy-cores reading."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b0, t0 = cpu_busy_s(), time.monotonic()
        time.sleep(1.0)
        busy = (cpu_busy_s() - b0) / (time.monotonic() - t0)
        if busy < threshold_cores or time.monotonic() >= deadline:
            return busy


def machine_info() -> dict:
    """Cores, platform, Python and RAM of this machine, for a results file."""
    import platform

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def git_state() -> dict:
    """The qdebug commit measured, and whether qdebug/ had uncommitted changes (other work in progress)."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "--short", "HEAD") or None,
            "qdebug_dirty": bool(git("status", "--porcelain", "--", "qdebug"))}


def write_results(out: Path, benchmark: str, started: _dt.datetime, fields: dict) -> None:
    """out/results.json: the benchmark's name, start/finish times, machine and qdebug commit, then `fields`."""
    res = {"benchmark": benchmark, "started": started.isoformat(timespec="seconds"),
           "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine_info(), "git": git_state(), **fields}
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"\nwrote {out / 'results.json'}", file=sys.stderr)


def pass_seconds(sess, samples: list) -> float:
    """Wall time of one onnxruntime pass over the samples, best of two after a warm-up run."""
    names = [i.name for i in sess.get_inputs()]
    sess.run(None, {k: samples[0][k] for k in names})
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        for s in samples:
            sess.run(None, {k: s[k] for k in names})
        best = min(best, time.perf_counter() - t)
    return best
