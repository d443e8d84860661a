#!/usr/bin/env python
"""Time and peak memory of `qdebug promote` on big vendor files (issue 14, streaming parsers).

    python benchmarks/bench_promote.py                 # 50 MB HiSilicon and RKNN files
    python benchmarks/bench_promote.py --size-mb 10    # smaller files
    python benchmarks/bench_promote.py --keep DIR      # keep the generated files in DIR
    python benchmarks/bench_promote.py --src /tmp/old  # measure another checkout's qdebug (e.g. `git archive`)

The big files are generated in a temporary folder by `fixtures.vendor.replicate_records`: the layer records
of a HiSilicon `calibration_param.txt` (the reference sample when present, else the fixture's) and the
tensor entries of an RKNN `.quantization.cfg` (same), each copy renamed `<name>_copy<k>`, the original
records last. Each
`qdebug promote ... --layers /model.22/Mul_2 -q` runs in its own child process; its wall time and peak RSS
(the kernel's high-water mark, from `os.wait4`) are printed next to the targets (10 s, 500 MB), with a
check that only the promoted record changed. A bare `import qdebug.cli` child gives the import baseline.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLES = ROOT.parent / "shared" / "reference" / "samples"
TARGET_S = 10.0
TARGET_MB = 500.0
LAYER = "/model.22/Mul_2"
CLI = "import sys; from qdebug.cli import main; sys.exit(main(sys.argv[1:]))"


def _base_hisi() -> str:
    p = SAMPLES / "hisi" / "yolov8n_face.calibration_param.excerpt.txt"
    if p.is_file():
        return p.read_text(encoding="utf-8")
    sys.path.insert(0, str(ROOT))
    from fixtures.vendor import make_hisi_calibration, yolov8_bundle

    model, _, ranges = yolov8_bundle()
    return make_hisi_calibration(model, ranges)


def _base_rknn() -> str:
    p = SAMPLES / "rknn2" / "fixture_yolov8.step1.quantization.cfg"
    if p.is_file():
        return p.read_text(encoding="utf-8")
    sys.path.insert(0, str(ROOT))
    from fixtures.vendor import make_rknn_cfg, yolov8_bundle

    model, _, ranges = yolov8_bundle()
    return make_rknn_cfg(model, ranges)


def make_big(path: Path, fmt: str, size_mb: float) -> None:
    """Write a `fmt` file ("hisi" or "rknn") of about `size_mb` MB grown from the base file."""
    sys.path.insert(0, str(ROOT))
    from fixtures.vendor import replicate_records

    base = _base_hisi() if fmt == "hisi" else _base_rknn()
    with open(path, "w", encoding="utf-8", newline="") as f:
        for chunk in replicate_records(base, fmt, size=int(size_mb * 1e6)):
            f.write(chunk)


def run_child(argv: list[str], src: Path = ROOT) -> tuple[float, float, int, str]:
    """Run a Python child importing qdebug from `src`; (wall s, peak RSS MB, exit code, stderr tail)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *argv], cwd=str(src), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read().decode("utf-8", "replace")
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    return wall, ru.ru_maxrss / 1024.0, proc.returncode, err.strip()[-300:]


def changed_region(a: Path, b: Path) -> tuple[int, int, int]:
    """(first differing byte, bytes changed in a, bytes in b's replacement) between two files."""
    x, y = a.read_bytes(), b.read_bytes()
    lo, hi = 0, min(len(x), len(y))
    while lo < hi:  # longest common prefix by bisection over slice equality
        mid = (lo + hi + 1) // 2
        if x[:mid] == y[:mid]:
            lo = mid
        else:
            hi = mid - 1
    pre = lo
    lo, hi = 0, min(len(x), len(y)) - pre
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if x[len(x) - mid:] == y[len(y) - mid:]:
            lo = mid
        else:
            hi = mid - 1
    return pre, len(x) - pre - lo, len(y) - pre - lo


def main(argv: list[str] | None = None) -> int:
    """Generate the big files, promote one layer in each, print time and peak RSS against the targets."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=50.0)
    ap.add_argument("--keep", default=None, help="write the generated files here and keep them")
    ap.add_argument("--src", default=str(ROOT), help="folder whose qdebug package the children import")
    ap.add_argument("--only", choices=["hisi", "rknn"], default=None, help="measure one format only")
    args = ap.parse_args(argv)
    src = Path(args.src).resolve()
    with tempfile.TemporaryDirectory(prefix="bench_promote_") as tmp:
        d = Path(args.keep) if args.keep else Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        files = {"hisi": d / "calibration_param.big.txt", "rknn": d / "big.quantization.cfg"}
        if args.only:
            files = {args.only: files[args.only]}
        for fmt, path in files.items():
            make_big(path, fmt, args.size_mb)
        print(f"qdebug from {src}")
        wall, rss, code, err = run_child(["-c", "import qdebug.cli, qdebug.formats"], src)
        print(f"baseline (python + import qdebug.cli): {wall:.2f} s, peak RSS {rss:.0f} MB")
        print()
        print("| file | size MB | wall s | peak RSS MB | time / 10 s | RSS / 500 MB | changed bytes |")
        print("|---|---|---|---|---|---|---|")
        ok = True
        for fmt, path in files.items():
            out = d / f"{path.name}.patched"
            wall, rss, code, err = run_child(["-c", CLI, "promote", f"{fmt}:{path}", "--layers", LAYER,
                                              "-o", str(out), "-q"], src)
            if code != 0:
                print(f"| {fmt} | {path.stat().st_size / 1e6:.1f} | failed (exit {code}): {err} |")
                ok = False
                continue
            at, old_n, new_n = changed_region(path, out)
            print(f"| {fmt} | {path.stat().st_size / 1e6:.1f} | {wall:.2f} | {rss:.0f} | {wall / TARGET_S:.2f} "
                  f"| {rss / TARGET_MB:.2f} | {old_n} -> {new_n} at byte {at} |")
            ok = ok and wall < TARGET_S and rss < TARGET_MB
        print()
        print("within targets" if ok else "OUTSIDE the targets (10 s, 500 MB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
