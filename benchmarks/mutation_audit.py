"""Mutation audit: hand-made bugs applied one at a time to a private copy of the package; a bug no test
notices ("survived") marks a hole in the test suite (issue 14, "tests that catch bugs").

Each mutant is (id, file, exact original snippet, replacement, description, test files). For every mutant
the script copies qdebug/, tests/, fixtures/ and pyproject.toml into a fresh temporary folder, replaces the
first occurrence of the snippet there, and runs `python -m pytest TESTS -x -q -p no:cacheprovider` in that
folder with PYTHONPATH pointing at it, so the copy's package is imported (checked before the audit by an
import probe and a sanity mutant that must be caught). The checkout itself is never modified. A mutant whose
snippet is not in the file is "stale" and left out of the score. Usage (docs/benchmarks.md, "Mutation audit"):

    .venv/bin/python benchmarks/mutation_audit.py [--jobs N] [--only PATTERN] [--list] [--full] [--min-score F]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPY = ("qdebug", "tests", "fixtures", "pyproject.toml")
PYTEST = ("-x", "-q", "-p", "no:cacheprovider")

# test files per topic: the kill tests first (they fail fast), then the module's own tests
SIM = ("tests/test_kill_simulator.py", "tests/test_simulator.py")
CAL = ("tests/test_kill_calibrate.py", "tests/test_scheme_calibrate.py")
SCHEME = ("tests/test_kill_simulator.py", "tests/test_scheme_calibrate.py", "tests/test_simulator.py")
HAZ = ("tests/test_kill_simulator.py", "tests/test_compare_yolo.py")
HISI = ("tests/test_kill_formats.py", "tests/test_format_hisi.py")
RKNN = ("tests/test_kill_formats.py", "tests/test_format_rknn2.py")
EXPORTS = ("tests/test_kill_formats.py", "tests/test_format_rknn1_exports.py")
SEARCH = ("tests/test_kill_search.py", "tests/test_bisect.py")
TASKS = ("tests/test_kill_tasks.py", "tests/test_tasks_decoders.py", "tests/test_tasks_agreement.py")
INPUTS = ("tests/test_kill_tasks.py", "tests/test_inputs.py")
METRICS = ("tests/test_kill_metrics.py", "tests/test_metrics.py")
FILEIO = ("tests/test_kill_fileio.py", "tests/test_fileio.py")


@dataclass(frozen=True)
class Mutant:
    """One hand-made bug: replace `original` by `replacement` in `file`; `tests` should catch it."""

    id: str
    file: str
    original: str
    replacement: str
    description: str
    tests: tuple[str, ...]


def M(id: str, file: str, original: str, replacement: str, description: str, tests: tuple[str, ...]) -> Mutant:
    return Mutant(id, file, original, replacement, description, tests)


S, C, F, T = "qdebug/quant/simulate.py", "qdebug/quant/calibrate.py", "qdebug/fileio.py", "qdebug/search/target.py"
SC, B, NMS, BASE = "qdebug/quant/scheme.py", "qdebug/search/bisect.py", "qdebug/tasks/nms.py", "qdebug/tasks/base.py"
HI, R2, R2R, EX = "qdebug/formats/hisi.py", "qdebug/formats/rknn2.py", "qdebug/formats/rknn2_read.py", \
    "qdebug/formats/exports.py"
ST, FU, HZ = "qdebug/metrics/stats.py", "qdebug/graph/fusion.py", "qdebug/graph/hazards.py"

# the sanity mutant breaks the import of the copy's package: if it survives, the tests import another copy
SANITY = M("sanity-import", "qdebug/errors.py", "from __future__ import annotations",
           "from __future__ import annotations\nraise ImportError('mutation audit sanity mutant')",
           "the copy's package cannot be imported (must be caught)", ("tests/test_kill_fileio.py",))

MUTANTS: list[Mutant] = [
    # ------------------------------------------------------------------ simulator
    M("sim-gemm-transb-ignored", S, "return 0 if trans_b else 1", "return 1",
      "Gemm per-channel weight axis ignores transB", SIM),
    M("sim-gemm-transb-inverted", S, "return 0 if trans_b else 1", "return 1 if trans_b else 0",
      "Gemm weight axis inverted", SIM),
    M("sim-matmul-axis", S, "return w.ndim - 1", "return 0", "MatMul weight quantized per input row", SIM),
    M("sim-conv-axis", S, "        return w.ndim - 1\n    return 0", "        return w.ndim - 1\n    return 1",
      "Conv weight quantized per input channel", SIM),
    M("sim-per-tensor", S, "per_channel = cfg.scheme.per_channel_weights and", "per_channel = False and",
      "per-channel weights quantized per tensor", SIM),
    M("sim-override-min", S, "return max(asked, key=lambda p: p.rank)", "return min(asked, key=lambda p: p.rank)",
      "group precision takes the least faithful override", SIM),
    M("sim-int16-weight-bits", S, "wbits = 8 if p == Precision.INT8 else profile.int16_weight_bits", "wbits = 8",
      "int16 ops keep 8-bit weights on every profile", SIM + ("tests/test_format_rknn2.py",)),
    M("sim-pinned-bits", S, "sp.act[key] = pinned if pinned.bits == pbits else pinned.with_bits(pbits)",
      "sp.act[key] = pinned", "an 8-bit vendor record is not widened when the op is promoted",
      SIM + ("tests/test_format_hisi.py", "tests/test_format_rknn2.py")),
    M("scheme-asym-zero-point", SC, "np.round(qmin - lo / np.where", "np.round(qmax - lo / np.where",
      "asymmetric zero point from the wrong end", SCHEME),
    M("scheme-fake-quant-no-clip", SC, "q = np.clip(np.round(x.astype(np.float64) / s) + z, p.qmin, p.qmax)",
      "q = np.round(x.astype(np.float64) / s) + z", "fake_quant does not clip to the integer range", SCHEME),
    M("scheme-sym-scale", SC, "scale = amax / qmax if signed else amax / qmax",
      "scale = amax / (qmax + 1) if signed else amax / qmax", "symmetric scale one level off", SCHEME),
    M("fusion-maxpool-not-passthrough", FU, '"Identity", "MaxPool", "Pad"', '"Identity", "Pad"',
      "MaxPool no longer range-preserving", SIM),
    M("fusion-no-bn", FU, 'nxt.op_type == "BatchNormalization" and', 'nxt.op_type == "BatchNorm" and',
      "Conv+BatchNorm no longer fused", SIM),
    M("fusion-no-swish", FU, "    if len(cons) != 2:\n        return None", "    if len(cons) != 3:\n        return None",
      "x*sigmoid(x) no longer fused into SiLU", SIM),
    M("profile-hisi-output-side", "qdebug/quant/profiles.py", '"hisi", quantize_at="input"',
      '"hisi", quantize_at="output"', "HiSilicon profile quantizes outputs instead of inputs",
      ("tests/test_format_hisi.py", "tests/test_simulator.py")),
    M("hazards-ratio-5x", HZ, "ratio: float = 16.0", "ratio: float = 80.0", "Concat range-mix threshold 5x higher",
      HAZ),
    M("hazards-scale-5x", HZ, "if factor < 4.0 or bits > 8:", "if factor < 20.0 or bits > 8:", "scale-amplify threshold 5x higher", HAZ),
    # ------------------------------------------------------------------ calibrators
    M("cal-percentile-hi-one-bin-low", C, "edges[min(i_hi + 1, BINS)]", "edges[min(i_hi, BINS)]",
      "percentile upper edge one bin low", CAL),
    M("cal-percentile-lo-one-bin-low", C, "(float(edges[i_lo]),", "(float(edges[max(i_lo - 1, 0)]),",
      "percentile lower edge one bin low", CAL),
    M("cal-percentile-tail", C, "tail = (100.0 - self.percentile) / 200.0", "tail = (100.0 - self.percentile) / 100.0",
      "percentile clips each tail twice as much", CAL),
    M("cal-mse-is-minmax", C, "            out[t] = best\n", "            out[t] = (self.lo[t], self.hi[t])\n",
      "MSE calibrator reduced to min/max", CAL),
    M("cal-mse-no-rounding-term", C, "(centers - clipped) ** 2 + step * step / 12.0", "(centers - clipped) ** 2",
      "MSE ignores the rounding error (never shrinks)", CAL),
    M("cal-minmax-last-sample", C, "self.lo[tensor] = min(self.lo.get(tensor, math.inf), mn)",
      "self.lo[tensor] = mn", "min/max keeps the last sample's minimum", CAL),
    # ------------------------------------------------------------------ metrics
    M("metrics-snr-20log", ST, "10.0 * math.log10(sxx / sdd)", "20.0 * math.log10(sxx / sdd)",
      "SNR in 20 log10 of a power ratio", METRICS),
    M("metrics-rel-l2-squared", ST, "rel = math.sqrt(sdd / sxx)", "rel = sdd / sxx", "rel_l2 not square-rooted",
      METRICS),
    M("metrics-max-abs-one-sided", ST, "max(float(d.max()), -float(d.min()))", "float(d.max())",
      "max_abs ignores negative differences", METRICS),
    M("metrics-zero-vectors-cos", ST, "if sxx == 0.0 and syy == 0.0:\n        cos = 1.0",
      "if sxx == 0.0 and syy == 0.0:\n        cos = 0.0", "two zero tensors get cosine 0", METRICS),
    M("metrics-sxy-sign", ST, "(self.sxx + self.syy - self.sdd) / 2.0", "(self.sxx + self.syy + self.sdd) / 2.0",
      "<x,y> derived with the wrong sign", METRICS),
    M("metrics-identical-syy", ST, "self.add_sums(x.size, xs.sxx, xs.sxx, 0.0, None, xs.xmin, xs.xmax)",
      "self.add_sums(x.size, xs.sxx, 0.0, 0.0, None, xs.xmin, xs.xmax)", "identical samples add no |y|^2",
      METRICS),
    M("metrics-nonfinite-sdd", ST, "math.isfinite(syy) and math.isfinite(sdd)):", "math.isfinite(syy)):",
      "an infinite error sum is not reported as undefined", METRICS),
    M("metrics-snr-inf", ST, "    if sdd == 0.0:\n        snr = SNR_INF", "    if sdd == 0.0:\n        snr = None",
      "exact match reported as undefined SNR", METRICS),
    # ------------------------------------------------------------------ formats
    M("hisi-u8-offset", HI, "offset * (hi16 + 1) // (hi + 1)", "offset * r", "U8->U16 offset scaled by 257", HISI),
    M("hisi-s8-offset", HI, "r * (offset - lo) + lo16", "r * offset", "S8->S16 offset not re-centred", HISI),
    M("hisi-fp16-lowers-f32-calc", HI, 'new_calc = "F32" if calc == "F32" else _float_type(dtype)',
      "new_calc = _float_type(dtype)", "fp16 promotion lowers an F32 layer to F16", HISI),
    M("hisi-fp16-lowers-f32-input", HI, 'if f.data_type != ft and f.data_type != "F32":', "if f.data_type != ft:",
      "fp16 promotion lowers an F32 input record", HISI),
    M("hisi-u8-zero-point", HI, 'if f.data_type.startswith("U"):\n        zp = np.zeros',
      'if f.data_type.startswith("X"):\n        zp = np.zeros', "U8 image record simulated with its -128 shift",
      HISI),
    M("hisi-scale-not-inverted", HI, "return QParams(1.0 / scale, zp,", "return QParams(scale, zp,",
      "HiSilicon scale used as the step", HISI),
    M("rknn2-plain-before-rs", R2, 'for s in (*TOOLKIT_SUFFIXES, "", *TWIN_SUFFIXES)]',
      'for s in ("", *TOOLKIT_SUFFIXES, *TWIN_SUFFIXES)]', "promotion keys X instead of the computed X-rs", RKNN),
    M("rknn2-keys-plain-before-rs", R2, "(*(t + s for s in TOOLKIT_SUFFIXES), t, *(t + s for s in TWIN_SUFFIXES))",
      "(t, *(t + s for s in TOOLKIT_SUFFIXES), *(t + s for s in TWIN_SUFFIXES))",
      "fused-op promotion keys X instead of the computed X-rs", RKNN),
    M("rknn2-no-output-entry", R2, "                entries.append((base, value))\n", "",
      "graph output promoted without its output conversion entry", RKNN),
    M("rknn2-rs-not-mapped", R2, "for s in (*TWIN_SUFFIXES, *TOOLKIT_SUFFIXES):", "for s in TWIN_SUFFIXES:",
      "X-rs entries match no tensor", RKNN),
    M("rknn2-custom-lowers-record", R2, "cfg.overrides[key] = prec if old is None or prec.rank > old.rank else old",
      "cfg.overrides[key] = prec", "a custom int16 entry lowers a float16 record", RKNN),
    M("rknn2-twin-int8", R2, 'TWIN_SUFFIXES = ("_int8", "_int16", "_uint8")', 'TWIN_SUFFIXES = ("_int16", "_uint8")',
      "the _int8 twin of a float tensor is not recognized", RKNN),
    M("rknn2-channel-axis", R2R, "axis = 1 if s.size > 1 else None", "axis = 0 if s.size > 1 else None",
      "per-channel activation params on the batch axis", RKNN),
    M("exports-trt-float32", EX, 'return "float16", "fp16", note', 'return "float32", "fp32", note',
      "TensorRT exports say fp32 for int16/fp16", EXPORTS),
    M("exports-rknn-words", EX, 'value = "int16" if precision.is_int else "float16"', 'value = "int16"',
      "rknn export writes int16 for fp16", EXPORTS),
    M("exports-qtable-f32", EX, '{Precision.FP32: "F32", Precision.INT8: "INT8"}', '{Precision.INT8: "INT8"}',
      "qtable writes F16 for fp32", EXPORTS),
    M("exports-horizon-int8", EX, "t = precision.value", 't = "int8"', "Horizon export always int8", EXPORTS),
    M("exports-atc-separator", EX, 'return "--high_precision_layer=" + ";".join(',
      'return "--high_precision_layer=" + ",".join(', "ATC layer list joined with commas", EXPORTS),
    # ------------------------------------------------------------------ search
    M("target-lt-as-gt", T, '"<": operator.lt', '"<": operator.gt', "a `<` clause is checked as `>`", SEARCH),
    M("target-margin-sign", T, 'return value - self.bound if self.op in (">=", ">") else self.bound - value',
      "return value - self.bound", "margin of `<`/`<=` clauses has the wrong sign", SEARCH),
    M("target-cut-tightest", T, '("snr_db", ">=", min(snr))', '("snr_db", ">=", max(snr))',
      "cut threshold takes the tightest SNR bound", SEARCH),
    M("target-default-cut", T, "DEFAULT_CUT_SNR_DB = 20.0", "DEFAULT_CUT_SNR_DB = 30.0",
      "default cut threshold 30 dB", SEARCH),
    M("target-default-cosine", T, 'clauses.append(Clause(o, None, "cosine", ">=", 0.999))',
      'clauses.append(Clause(o, None, "cosine", ">=", 0.99))', "default target cosine 0.99", SEARCH),
    M("bisect-no-pruning", B, 'if self.evaluate(trial, "prune").score.passed:\n                chosen = trial',
      'if self.evaluate(trial, "prune").score.passed:\n                pass', "greedy pruning loop deleted", SEARCH),
    M("bisect-prefix-stops-early", B, '        while hi - lo > 1:\n            mid = (lo + hi) // 2\n            if self',
      '        while hi - lo > 2:\n            mid = (lo + hi) // 2\n            if self',
      "prefix bisection stops one step early", SEARCH),
    M("bisect-no-hazard-try", B, "if hz.score.passed:\n                full, hi = hz, priority",
      "if False:\n                full, hi = hz, priority", "hazard ops never tried on their own", SEARCH),
    M("bisect-first-cut-includes-inputs", B, "if t.index < 0:  # graph inputs", "if t.index < -1:  # graph inputs",
      "first bad cut may name a graph input", SEARCH),
    M("evaluate-any-clause", "qdebug/search/evaluate.py", "passed = all(c.check(", "passed = any(c.check(",
      "a target passes when any clause passes", SEARCH),
    M("evaluate-best-margin", "qdebug/search/evaluate.py", "min(margins) if margins else 0.0",
      "max(margins) if margins else 0.0", "score margin is the best clause, not the worst", SEARCH),
    # ------------------------------------------------------------------ tasks and inputs
    M("nms-conf-tie", BASE, "sel = np.flatnonzero(scores > self.conf)", "sel = np.flatnonzero(scores >= self.conf)",
      "a score equal to --conf is kept", TASKS),
    M("nms-iou-tie-in-block", NMS, "over = (box_iou(b, b) > iou_thr)", "over = (box_iou(b, b) >= iou_thr)",
      "IoU equal to the threshold suppresses (same block)", TASKS),
    M("nms-iou-tie-kept-boxes", NMS, "hit = (box_iou(b, kept_boxes) > iou_thr)",
      "hit = (box_iou(b, kept_boxes) >= iou_thr)", "IoU equal to the threshold suppresses (earlier block)", TASKS),
    M("nms-class-agnostic", NMS, "over = (box_iou(b, b) > iou_thr) & (c[:, None] == c[None, :])",
      "over = (box_iou(b, b) > iou_thr)", "boxes of other classes suppress each other", TASKS),
    M("nms-max-keep", NMS, "if count + len(take) >= limit:", "if count + len(take) > limit:",
      "one box more than max_det", TASKS),
    M("nms-union-plus", NMS, "union = area_a[:, None] + area_b[None, :] - inter",
      "union = area_a[:, None] + area_b[None, :]", "IoU divides by the sum of areas", TASKS),
    M("decode-argmin-class", BASE, "classes = cls_scores.argmax(axis=1)", "classes = cls_scores.argmin(axis=1)",
      "class = least likely class", TASKS),
    M("decode-padding-boxes-kept", BASE, "inside = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])",
      "inside = np.ones(len(out), dtype=bool)", "boxes wholly in the letterbox padding are kept", TASKS),
    M("letterbox-undo-hpad", BASE, "if lb.pad_x == 0 and lb.pad_y == 0:", "if lb.pad_y == 0:",
      "horizontal padding undone as a plain resize", TASKS),
    M("letterbox-clip-swapped", BASE, "out[:, [1, 3]].clip(0, lb.orig_h)", "out[:, [1, 3]].clip(0, lb.orig_w)",
      "y clipped to the image width", TASKS),
    M("letterbox-xywh", BASE, "return np.concatenate([xy - wh / 2, xy + wh / 2], axis=-1)",
      "return np.concatenate([xy - wh, xy + wh], axis=-1)", "centre boxes twice as large", TASKS),
    M("dataset-letterbox-pad-swapped", "qdebug/inputs/dataset.py", "px, py = (w - nw) // 2, (h - nh) // 2",
      "py, px = (w - nw) // 2, (h - nh) // 2", "letterbox pads the wrong side", INPUTS),
    # ------------------------------------------------------------------ fileio and CLI outputs
    M("fileio-not-atomic", F, "    p.parent.mkdir(parents=True, exist_ok=True)\n",
      "    p.parent.mkdir(parents=True, exist_ok=True)\n"
      '    with open(p, mode, **({} if mode == "wb" else {"encoding": "utf-8", "newline": ""})) as f:\n'
      "        f.write(data)\n    return p\n", "outputs written in place (not atomic)", FILEIO),
    M("fileio-temp-left", F, "            os.unlink(tmp)\n", "            pass\n",
      "a failed write leaves its temp file", FILEIO),
    M("fileio-replaced-mode-dropped", F, "os.chmod(tmp, p.stat().st_mode & 0o7777)", "pass",
      "a replaced file gets mkstemp's 0600", FILEIO),
    M("fileio-replaced-mode-umask", F, "if p.exists():  # a replaced file", "if False:  # a replaced file",
      "a replaced 0600 file becomes 0666&~umask", FILEIO),
    M("fileio-new-mode", F, "os.chmod(tmp, 0o666 & ~umask)", "pass", "a new file stays 0600", FILEIO),
    M("fileio-protect-by-name", F, "return os.path.samefile(a, b)", "return a == b",
      "input protection by name only (a hard link slips through)", FILEIO),
    M("fileio-protect-folder", F, "(src.is_dir() and p.resolve().is_relative_to(src.resolve()))", "False",
      "outputs inside a protected input folder allowed", FILEIO),
    M("guard-json-not-output", "qdebug/cli/guard.py", 'OUTPUT_DESTS = ("output", "json", ',
      'OUTPUT_DESTS = ("output", ', "bisect --json onto the model file not refused up front",
      ("tests/test_kill_fileio.py", "tests/test_cli_reliability.py")),
]


@dataclass
class Outcome:
    """What happened to one mutant."""

    mutant: Mutant
    status: str  # caught | survived | stale | timeout (counted as caught)
    seconds: float
    detail: str = ""


def make_copy(dest: Path) -> None:
    """Copy the package, tests, fixtures and pyproject into `dest` (no caches)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, dest / name)


def env_for(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    return env


def apply(copy: Path, m: Mutant) -> bool:
    """Apply the mutant to the copy; False when the snippet is not in the file (stale)."""
    path = copy / m.file
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    if m.original not in text:
        return False
    path.write_text(text.replace(m.original, m.replacement, 1), encoding="utf-8")
    return True


def is_stale(m: Mutant) -> bool:
    """True when the snippet no longer occurs in the checkout's file."""
    path = ROOT / m.file
    return not path.is_file() or m.original not in path.read_text(encoding="utf-8")


def run_pytest(copy: Path, tests: tuple[str, ...] | list[str], timeout: float) -> tuple[int | None, str]:
    """Run pytest on `tests` inside the copy; (exit code or None on timeout, last output line)."""
    cmd = [sys.executable, "-m", "pytest", *tests, *PYTEST]
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env_for(copy), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timeout after {timeout:.0f} s"
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    return proc.returncode, lines[-1] if lines else ""


def run_mutant(m: Mutant, tests: tuple[str, ...], timeout: float) -> Outcome:
    """Apply one mutant in a fresh copy and run its tests."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qdebug-mut-") as d:
        copy = Path(d)
        make_copy(copy)
        if not apply(copy, m):
            return Outcome(m, "stale", 0.0, "snippet not found")
        rc, last = run_pytest(copy, tests, timeout)
    secs = time.perf_counter() - t0
    if rc is None:
        return Outcome(m, "timeout", secs, last)
    if rc == 0:
        return Outcome(m, "survived", secs, last)
    if rc in (1, 2):  # tests failed (1) or collection/import errors (2): the suite noticed
        return Outcome(m, "caught", secs, last)
    return Outcome(m, "caught", secs, f"pytest exit {rc}: {last}")


def probe_import() -> str:
    """Where the copy's interpreter imports qdebug from (must be inside the copy)."""
    with tempfile.TemporaryDirectory(prefix="qdebug-mut-") as d:
        copy = Path(d)
        make_copy(copy)
        out = subprocess.run([sys.executable, "-c", "import qdebug, fixtures; print(qdebug.__file__); "
                              "print(fixtures.__file__)"], cwd=copy, env=env_for(copy), capture_output=True,
                             text=True, timeout=120)
        files = out.stdout.split()
        if len(files) != 2 or not all(Path(f).resolve().is_relative_to(copy.resolve()) for f in files):
            return f"the copy imports qdebug/fixtures from {files or out.stderr.strip()}, not from {copy}"
    return ""


def select(pattern: str | None) -> list[Mutant]:
    if not pattern:
        return list(MUTANTS)
    pat = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
    return [m for m in MUTANTS if fnmatch.fnmatch(m.id, pat) or fnmatch.fnmatch(m.file, pat)]


def table(rows: list[Outcome]) -> str:
    w = max([len(r.mutant.id) for r in rows] + [6])
    lines = [f"{'mutant':<{w}}  {'status':<8}  {'seconds':>7}  description", "-" * (w + 40)]
    for r in rows:
        lines.append(f"{r.mutant.id:<{w}}  {r.status:<8}  {r.seconds:7.1f}  {r.mutant.description}"
                     + (f"  [{r.detail}]" if r.status in ("survived", "timeout") and r.detail else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=1, help="mutants run in parallel (default 1)")
    ap.add_argument("--only", default=None, help="run only mutants whose id or file matches (substring or glob)")
    ap.add_argument("--list", action="store_true", help="list the mutants (and stale ones) without running")
    ap.add_argument("--full", action="store_true", help="rerun survivors against the whole test suite")
    ap.add_argument("--min-score", type=float, default=0.9, help="exit 1 below this caught/total (default 0.9)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run (timeout = caught)")
    ap.add_argument("--exclude", default=None,
                    help="leave out test files matching this glob (e.g. 'tests/test_kill_*' for the score without them)")
    ap.add_argument("--json", default=None, help="also write the outcomes to this JSON file")
    ap.add_argument("--skip-checks", action="store_true", help="skip the import probe and the sanity mutant")
    args = ap.parse_args(argv)
    chosen = select(args.only)
    if args.list:
        for m in chosen:
            print(f"{m.id:<36} {'STALE ' if is_stale(m) else ''}{m.file}: {m.description}  ({', '.join(m.tests)})")
        print(f"{len(chosen)} mutant(s), {sum(is_stale(m) for m in chosen)} stale")
        return 0
    if not chosen:
        print(f"no mutant matches {args.only!r}", file=sys.stderr)
        return 2
    if not args.skip_checks:
        why = probe_import()
        if why:
            print(f"mutation audit: {why}", file=sys.stderr)
            return 2
        sanity = run_mutant(SANITY, SANITY.tests, args.timeout)
        if sanity.status != "caught":
            print(f"mutation audit: the sanity mutant was {sanity.status}: the tests do not import the copy",
                  file=sys.stderr)
            return 2
        print(f"checks: the copy's package is imported; sanity mutant caught ({sanity.seconds:.1f} s)", flush=True)
    t0 = time.perf_counter()

    def tests_of(m: Mutant) -> tuple[str, ...]:
        kept = tuple(t for t in m.tests if not (args.exclude and fnmatch.fnmatch(t, args.exclude)))
        return kept or ("tests/test_architecture.py",)  # no test left: the architecture checks alone

    def one(m: Mutant) -> Outcome:
        out = run_mutant(m, tests_of(m), args.timeout)
        print(f"  {m.id}: {out.status} ({out.seconds:.1f} s)", flush=True)
        return out

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(one, chosen))
    if args.full:
        for i, r in enumerate(rows):
            if r.status == "survived":
                full = run_mutant(r.mutant, ("tests",), args.timeout)
                full.detail = "whole suite: " + full.detail
                print(f"  {r.mutant.id} (whole suite): {full.status} ({full.seconds:.1f} s)", flush=True)
                rows[i] = full
    print(table(rows))
    counted = [r for r in rows if r.status != "stale"]
    caught = sum(r.status in ("caught", "timeout") for r in counted)
    score = caught / len(counted) if counted else 0.0
    stale = len(rows) - len(counted)
    print(f"score: {caught}/{len(counted)} = {score:.3f} caught ({stale} stale, {time.perf_counter() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"score": score, "caught": caught, "total": len(counted),
                                               "stale": stale, "mutants": [
            {"id": r.mutant.id, "file": r.mutant.file, "status": r.status, "seconds": round(r.seconds, 1),
             "description": r.mutant.description, "detail": r.detail} for r in rows]}, indent=1) + "\n")
    return 0 if score >= args.min_score else 1


if __name__ == "__main__":
    sys.exit(main())
