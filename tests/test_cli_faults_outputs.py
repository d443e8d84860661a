"""CLI fault table, part 3 (issue #14): outputs that collide with inputs, unwritable outputs, bad `report`
inputs, rich markup in names; and, as child processes, a closed stdout, SIGINT and SIGTERM.

An output that aliases an input (same path, symlink, hardlink, a file inside an input folder) is refused
before anything is written; an unwritable output is one line naming the path; names print literally.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_cli_faults_base import (  # noqa: F401
    ROOT,
    Case,
    check_case,
    fenv,
    frac,
    npy_bytes,
    params,
    run_cli_process,
    subst,
    tiny_model,
)

from fixtures.data import make_images
from fixtures.models import make_yolov8

CMP = ("compare", "<t>/m.onnx", "--data", "<t>/d", "-q")
BIS = ("bisect", "<t>/m.onnx", "--data", "<t>/d", "-q", "--calib", "hisi:<t>/h.txt")
MODEL = {"m.onnx": lambda env: env["benign"].read_bytes(), "d/s0.npy": lambda env: (env["npy"] / "s0.npy").read_bytes(),
         "h.txt": lambda env: env["hisi"].read_text(), "h16.txt": lambda env: env["hisi16"].read_text(),
         "r.cfg": lambda env: env["rknn"].read_text(), "ov.json": '{"/conv1/Conv": "int16"}',
         "cal/c0.npy": lambda env: (env["npy2"] / "s0.npy").read_bytes()}


def _link(src: str, dst: str, hard: bool = False):
    def setup(t: Path, env) -> None:
        (os.link if hard else os.symlink)(t / src, t / dst)
    return setup


def _mkdir(*names: str):
    def setup(t: Path, env) -> None:
        for n in names:
            (t / n).mkdir(parents=True, exist_ok=True)
    return setup


# --------------------------------------------------------------------- outputs that are inputs
COLLISIONS = [
    Case("compare-json-is-calib", CMP + ("--calib", "hisi:<t>/h.txt", "--json", "<t>/h.txt"), names=("<t>/h.txt",)),
    Case("compare-json-is-overrides", CMP + ("--overrides", "<t>/ov.json", "--json", "<t>/ov.json"),
         names=("<t>/ov.json",)),
    Case("compare-json-in-calib-data", CMP + ("--calib-data", "<t>/cal", "--json", "<t>/cal/c0.npy"),
         names=("<t>/cal/c0.npy",)),
    Case("compare-json-new-file-in-calib-data", CMP + ("--calib-data", "<t>/cal", "--json", "<t>/cal/r.json"),
         names=("<t>/cal/r.json",)),
    Case("compare-json-is-data-file", CMP + ("--json", "<t>/d/s0.npy"), names=("<t>/d/s0.npy",)),
    Case("compare-json-new-file-in-data", CMP + ("--json", "<t>/d/r.json"), names=("<t>/d/r.json",)),
    Case("compare-json-is-model", CMP + ("--json", "<t>/m.onnx"), names=("<t>/m.onnx",)),
    Case("compare-json-symlink-to-model", CMP + ("--json", "<t>/l.json"), names=("<t>/l.json",),
         setup=_link("m.onnx", "l.json")),
    Case("compare-json-hardlink-to-model", CMP + ("--json", "<t>/l.json"), names=("<t>/l.json",),
         setup=_link("m.onnx", "l.json", hard=True)),
    Case("compare-json-symlink-to-calib", CMP + ("--calib", "hisi:<t>/h.txt", "--json", "<t>/l.json"),
         names=("<t>/l.json",), setup=_link("h.txt", "l.json")),
    Case("compare-json-hardlink-to-overrides", CMP + ("--overrides", "<t>/ov.json", "--json", "<t>/l.json"),
         names=("<t>/l.json",), setup=_link("ov.json", "l.json", hard=True)),
    Case("compare-json-symlink-into-data", CMP + ("--json", "<t>/ld/r.json"), names=("<t>/ld/r.json",),
         setup=_link("d", "ld")),
    Case("compare-json-dotdot-to-model", CMP + ("--json", "<t>/d/../m.onnx"), names=("m.onnx",)),
    Case("bisect-o-is-model", BIS + ("-o", "<t>/m.onnx"), names=("<t>/m.onnx",)),
    Case("bisect-o-is-calib", BIS + ("-o", "<t>/h.txt"), names=("<t>/h.txt",)),
    Case("bisect-o-equals-json", BIS + ("-o", "<t>/x", "--json", "<t>/x"), names=("<t>/x",)),
    Case("bisect-o-symlink-to-calib", BIS + ("-o", "<t>/l.txt"), names=("<t>/l.txt",), setup=_link("h.txt", "l.txt")),
    Case("bisect-json-is-overrides", BIS + ("--overrides", "<t>/ov.json", "--json", "<t>/ov.json"),
         names=("<t>/ov.json",)),
    Case("bisect-json-in-data", BIS + ("--json", "<t>/d/r.json"), names=("<t>/d/r.json",)),
    Case("bisect-report-is-data-folder", BIS + ("--report", "<t>/d"), names=("<t>/d",)),
    Case("bisect-report-is-calib-data", BIS + ("--calib-data", "<t>/cal", "--report", "<t>/cal"), names=("<t>/cal",)),
    Case("promote-o-is-input", ("promote", "hisi:<t>/h.txt", "--layers", "/conv1/Conv", "-o", "<t>/h.txt"),
         names=("<t>/h.txt",)),
    Case("promote-o-is-rknn-input", ("promote", "rknn:<t>/r.cfg", "--layers", "/conv1/Conv", "-o", "<t>/r.cfg"),
         names=("<t>/r.cfg",)),
    Case("promote-o-symlink-to-input", ("promote", "hisi:<t>/h.txt", "--layers", "/conv1/Conv", "-o", "<t>/l.txt"),
         names=("<t>/l.txt",), setup=_link("h.txt", "l.txt")),
    Case("promote-o-hardlink-to-input", ("promote", "hisi:<t>/h.txt", "--layers", "/conv1/Conv", "-o", "<t>/l.txt"),
         names=("<t>/l.txt",), setup=_link("h.txt", "l.txt", hard=True)),
    Case("promote-o-is-model", ("promote", "hisi:<t>/h.txt", "--layers", "/conv1/Conv", "--model", "<t>/m.onnx",
                                "-o", "<t>/m.onnx"), names=("<t>/m.onnx",)),
    Case("promote-o-is-donor", ("promote", "hisi:<t>/h.txt", "--layers", "/conv1/Conv", "--from16",
                                "hisi:<t>/h16.txt", "-o", "<t>/h16.txt"), names=("<t>/h16.txt",)),
    Case("promote-o-hardlink-to-donor", ("promote", "hisi:<t>/h.txt", "--layers", "/conv1/Conv", "--from16",
                                         "hisi:<t>/h16.txt", "-o", "<t>/l.txt"), names=("<t>/l.txt",),
         setup=_link("h16.txt", "l.txt", hard=True)),
    Case("report-o-is-result-file", ("report", "<t>/c.json", "-o", "<t>/c.json", "--no-why"), names=("<t>/c.json",)),
    Case("report-o-is-data-folder", ("report", "<t>/c.json", "-o", "<t>/d", "--data", "<t>/d"), names=("<t>/d",)),
]
for _c in COLLISIONS:
    _c.files.update(MODEL)
    if _c.argv[0] == "report":
        _c.files["c.json"] = lambda env: env["cmpjson"].read_text()


# --------------------------------------------------------------------- unwritable outputs
def _readonly(t: Path, env):
    """A folder nobody may create files in (chattr +i for root, who ignores modes)."""
    ro = t / "ro"
    ro.mkdir()
    if ROOT:
        subprocess.run(["chattr", "+i", str(ro)], check=True)
        return lambda: subprocess.run(["chattr", "-i", str(ro)], check=True)
    os.chmod(ro, 0o555)
    return lambda: os.chmod(ro, 0o755)


def _file_component(t: Path, env) -> None:
    (t / "file.txt").write_text("x")


LONG = "a" * 300
WHERE = {
    "compare": ("compare", "<benign>", "--data", "<npy>", "-q", "--json"),
    "bisect": ("bisect", "<benign>", "--data", "<npy>", "-q", "--json"),
    "promote": ("promote", "hisi:<hisi>", "--layers", "/conv1/Conv", "-q", "-o"),
    "report": ("report", "<cmpjson>", "--no-why", "-o"),
}
UNWRITABLE = []
for _cmd, _argv in WHERE.items():
    _leaf = "out" if _cmd == "report" else "out.json"
    UNWRITABLE += [
        Case(f"{_cmd}-out-readonly-folder", _argv + (f"<t>/ro/{_leaf}",), names=(f"<t>/ro/{_leaf}",), setup=_readonly),
        Case(f"{_cmd}-out-name-300-bytes", _argv + (f"<t>/{LONG}.json",), names=(LONG,)),
        Case(f"{_cmd}-out-under-a-file", _argv + (f"<t>/file.txt/{_leaf}",), names=(f"<t>/file.txt/{_leaf}",),
             setup=_file_component),
        Case(f"{_cmd}-out-dev-full", _argv + ("/dev/full",), names=("/dev/full",)),
        Case(f"{_cmd}-out-empty-string", _argv + ("",), names=("-o" if _cmd in ("promote", "report") else "--json",)),
    ]
    if _cmd != "report":
        UNWRITABLE.append(Case(f"{_cmd}-out-is-a-folder", _argv + ("<t>/dir",), names=("<t>/dir",),
                               setup=_mkdir("dir")))
UNWRITABLE += [
    Case("compare-json-new-nested-folders", WHERE["compare"] + ("<t>/a/b/c/r.json",), rc=0,
         outputs=("a", "a/b", "a/b/c", "a/b/c/r.json")),
    Case("report-o-is-a-file", WHERE["report"] + ("<t>/file.txt",), names=("<t>/file.txt",), setup=_file_component),
]

# --------------------------------------------------------------------- report inputs
REPORT = ("report", "<t>/c.json", "-o", "<t>/rep", "--no-why")
REPORT_FILES: dict[str, object] = {
    "truncated": frac("cmpjson", 0.5),
    "empty": b"",
    "not-qdebug-object": b'{"hello": "world"}',
    "list": b"[1, 2, 3]",
    "deep-100000": b"[" * 100000 + b"]" * 100000,
    "deep-dict-100000": b'{"a":' * 100000 + b"1" + b"}" * 100000,
    "schema-version-99": subst("cmpjson", '"qdebug.compare/1"', '"qdebug.compare/99"'),
    "schema-unknown-kind": subst("cmpjson", '"qdebug.compare/1"', '"qdebug.frobnicate/1"'),
    "schema-not-string": subst("cmpjson", '"qdebug.compare/1"', "1"),
    "binary": bytes(range(256)) * 4,
    "latin1": '{"schema": "qdebug.compare/1", "caf\u00e9": 1}'.encode("latin-1"),
    "nan-literal": b'{"schema": "qdebug.compare/1", "x": NaN}',
    "huge-number": b'{"schema": "qdebug.compare/1", "x": 1' + b"0" * 5000 + b"}",
}
REPORT_CASES = [Case(f"report-{k}", REPORT, names=("<t>/c.json",), files={"c.json": v})
                for k, v in REPORT_FILES.items()]
REPORT_CASES += [
    Case("report-missing", REPORT, names=("<t>/c.json",)),
    Case("report-directory", REPORT, names=("<t>/c.json",), setup=_mkdir("c.json")),
    Case("report-top-negative", REPORT + ("--top", "-3"), names=("--top",),
         files={"c.json": lambda env: env["cmpjson"].read_text()}),
    Case("report-model-missing", ("report", "<t>/c.json", "-o", "<t>/rep", "--model", "<t>/nope.onnx"),
         names=("<t>/nope.onnx",), files={"c.json": lambda env: env["cmpjson"].read_text()}),
    Case("report-valid-no-why", REPORT, rc=0, outputs=("rep", "rep/report.md", "rep/report.html", "rep/*.png"),
         files={"c.json": lambda env: env["cmpjson"].read_text()}),
]


# --------------------------------------------------------------------- rich markup in names
def _markup_model(t: Path, env) -> None:
    from onnx import TensorProto

    tiny_model(t / "mk.onnx", TensorProto.FLOAT, out_name="out[/]", node_name="[bold]act")


NPY = {"d/s0.npy": lambda env: (env["npy"] / "s0.npy").read_bytes()}
MARKUP = [
    Case("markup-model-file-v2", ("compare", "<t>/[v2].onnx", "--data", "<t>/d"), rc=0, out_text=("[v2]",),
         files={"[v2].onnx": lambda env: env["benign"].read_bytes(), **NPY}),
    Case("markup-model-file-bold", ("compare", "<t>/[bold]m.onnx", "--data", "<t>/d"), rc=0, out_text=("[bold]m",),
         files={"[bold]m.onnx": lambda env: env["benign"].read_bytes(), **NPY}),
    Case("markup-model-path-slash", ("compare", "<t>/m[/].onnx", "--data", "<t>/d"), rc=0, out_text=("].onnx",),
         files={"m[/].onnx": lambda env: env["benign"].read_bytes(), **NPY}),
    Case("markup-json-path-slash", ("compare", "<benign>", "--data", "<npy>", "--json", "<t>/r[/]x.json"), rc=0,
         outputs=("r[", "r[/]x.json"), out_text=("<t>/r[/]x.json",)),
    Case("markup-json-path-bold", ("compare", "<benign>", "--data", "<npy>", "--json", "<t>/[bold]r.json"), rc=0,
         outputs=("[bold]r.json",), out_text=("<t>/[bold]r.json",)),
    Case("markup-output-and-node-names", ("compare", "<t>/mk.onnx", "--data", "<t>/d", "--all"), rc=0,
         out_text=("out[/]",), setup=_markup_model, files=NPY),
    Case("markup-bisect-output-name", ("bisect", "<t>/mk.onnx", "--data", "<t>/d"), rc=0, out_text=("out[/]",),
         setup=_markup_model, files=NPY, warn=("·",)),
    Case("markup-target-on-output", ("bisect", "<t>/mk.onnx", "--data", "<t>/d", "-q", "--target",
                                     "out[/]:snr_db>=1"), rc=0, setup=_markup_model, files=NPY),
    Case("markup-override-on-node", ("compare", "<t>/mk.onnx", "--data", "<t>/d", "-q", "--override",
                                     "[bold]act=int16"), rc=0, setup=_markup_model, files=NPY),
    Case("markup-promote-layer", ("promote", "hisi:<t>/h.txt", "--layers", "[bold]conv1", "-o", "<t>/o.txt"), rc=0,
         outputs=("o.txt",), out_text=("[bold]conv1",),
         files={"h.txt": subst("hisi", 'name: "/conv1/Conv"', 'name: "[bold]conv1"')}),
    Case("markup-promote-layer-v2-diff", ("promote", "hisi:<t>/h.txt", "--layers", "[v2]", "--diff", "-o",
                                          "<t>/o.txt"), rc=0, outputs=("o.txt",), out_text=('"[v2]"',),
         files={"h.txt": subst("hisi", 'name: "/conv1/Conv"', 'name: "[v2]"')}),
    Case("markup-promote-rknn-key", ("promote", "rknn:<t>/r.cfg", "--layers", "c[red]x[/]", "-o", "<t>/o.cfg"),
         rc=0, outputs=("o.cfg",), out_text=("c[red]x[/]",),
         files={"r.cfg": subst("rknn", "/conv1/Conv_output_0", "c[red]x[/]_output_0", 99)}),
    Case("markup-missing-model", ("compare", "<t>/[bold]nope[/].onnx", "--data", "<npy>"),
         names=("<t>/[bold]nope[/].onnx",)),
    Case("markup-data-file-nan", ("compare", "<benign>", "--data", "<t>/d", "-q"), names=("<t>/d/[bold]a.npy",),
         files={"d/[bold]a.npy": npy_bytes(np.full((1, 3, 16, 16), np.nan, np.float32))}),
    Case("markup-data-file-v2-shape", ("compare", "<benign>", "--data", "<t>/d", "-q"), names=("<t>/d/[v2].npy",),
         files={"d/[v2].npy": npy_bytes(np.zeros((1, 3, 8, 8), np.float32))}),
    Case("markup-calib-file-error", ("compare", "<benign>", "--data", "<npy>", "-q", "--calib",
                                     "hisi:<t>/[bold]h.txt"), names=("<t>/[bold]h.txt:line",),
         files={"[bold]h.txt": subst("hisi", "scale: 255.014273", "scale: -1")}),
    Case("markup-unknown-layer-promote", ("promote", "hisi:<hisi>", "--layers", "[red]x[/red]", "-o", "<t>/o.txt"),
         names=("[red]x[/red]",)),
]
ALL = COLLISIONS + UNWRITABLE + REPORT_CASES + MARKUP
XFAIL: dict[str, str] = {}


@pytest.mark.parametrize("case", params(Case(**{**c.__dict__, "xfail": XFAIL.get(c.id, c.xfail)}) for c in ALL))
def test_output_fault(case: Case, fenv, tmp_path, capsys, monkeypatch):  # noqa: F811 - fenv is the fixture
    check_case(case, fenv, tmp_path, capsys, monkeypatch)


# --------------------------------------------------------------------- child processes
def _no_temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]


@pytest.mark.parametrize("cmd", ["compare", "promote"])
def test_closed_stdout_still_writes_and_exits_quietly(cmd, fenv, tmp_path):  # noqa: F811 - the fixture
    """`qdebug ... | head -0`: the reader is gone before the table is printed; the file is still written."""
    out = tmp_path / ("o.json" if cmd == "compare" else "o.txt")
    argv = (["compare", str(fenv["benign"]), "--data", str(fenv["npy"]), "--all", "--json", str(out)]
            if cmd == "compare" else
            ["promote", f"hisi:{fenv['hisi']}", "--layers", "/conv1/Conv", "--diff", "--export", "all",
             "--model", str(fenv["benign"]), "-o", str(out)])
    r, w = os.pipe()
    os.close(r)  # the reader closed its end: every write to stdout fails with EPIPE
    try:
        proc = run_cli_process(argv, stdout=w, stderr=subprocess.PIPE)
    finally:
        os.close(w)
    _, err = proc.communicate(timeout=120)
    err_text = err.decode(errors="replace")
    assert out.is_file(), f"requested file not written; stderr: {err_text[-2000:]}"
    assert proc.returncode in (0, 141), err_text[-2000:]
    assert "Traceback" not in err_text and "Exception ignored" not in err_text and "Broken" not in err_text, err_text
    assert not _no_temp_files(tmp_path)


@pytest.fixture(scope="module")
def slow_run(tmp_path_factory) -> dict[str, Path]:
    """A compare that takes many seconds (a 320-px detector on 200 small images) to be interrupted."""
    d = tmp_path_factory.mktemp("slow")
    onnx.save(make_yolov8(input_size=320, width=8), str(d / "y.onnx"))
    make_images(d / "img", n=200, size=(24, 20))
    return {"model": d / "y.onnx", "img": d / "img"}


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_ends_quietly_without_leftovers(sig, code, slow_run, tmp_path):
    """SIGINT/SIGTERM during a run: exit 130/143, no traceback, no temp file, no partial output."""
    out = tmp_path / "o.json"
    before = {p: p.stat().st_mtime_ns for p in slow_run["img"].iterdir()}
    proc = run_cli_process(["compare", str(slow_run["model"]), "--data", str(slow_run["img"]), "-q", "--json",
                            str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(3.0)  # past the imports, inside the calibration/compare loop
    assert proc.poll() is None, "the run ended before the signal: make the workload bigger"
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"still running 60 s after {sig.name}")
    err_text = err.decode(errors="replace")
    assert proc.returncode == code, f"exit {proc.returncode}, want {code}; stderr: {err_text[-2000:]}"
    assert "Traceback" not in err_text, err_text[-3000:]
    assert [ln for ln in err_text.splitlines() if ln.strip()] in (["qdebug: interrupted"], ["qdebug: terminated"])
    assert not out.exists() and not _no_temp_files(tmp_path)
    assert before == {p: p.stat().st_mtime_ns for p in slow_run["img"].iterdir()}
