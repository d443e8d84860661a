"""The qdebug/cli/ package: every subcommand registers, the profile is decided once, tables fit 80 columns."""

from __future__ import annotations

import ast
import importlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.cells import cell_len
from rich.console import Console

import qdebug.cli as cli
from fixtures.vendor import make_hisi_calibration, yolov8_bundle
from qdebug.cli import build_parser, main
from qdebug.cli.options import decide_profile, setup_run
from qdebug.cli.terminal import elide, render_bisect, render_compare, strip_name
from qdebug.report.format import f_cos, f_det, f_g, f_jump, f_snr
from qdebug.results.bisect import BisectResult
from qdebug.results.compare import CompareResult

MINIMAL_ARGV = {
    "compare": ["compare", "m.onnx", "--data", "d"],
    "promote": ["promote", "hisi:c.txt", "--layers", "a", "-o", "out.txt"],
    "bisect": ["bisect", "m.onnx", "--data", "d"],
    "report": ["report", "r.json", "-o", "out"],
    "doctor": ["doctor"],
}


# ------------------------------------------------------------------ registration
@pytest.mark.parametrize("name", sorted(MINIMAL_ARGV))
def test_every_subcommand_module_imports_and_registers(name: str) -> None:
    module = importlib.import_module(f"qdebug.cli.{name}")
    assert cli.COMMANDS[name] is module
    args = build_parser().parse_args(MINIMAL_ARGV[name])
    assert args.cmd == name and args.func.__module__ == module.__name__


def test_the_command_list_is_explicit() -> None:
    assert list(cli.COMMANDS) == ["compare", "promote", "bisect", "report", "doctor"]
    tree = ast.parse(Path(cli.__file__).read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert "__import__" not in names and "importlib" not in imported
    handlers = [h for h in ast.walk(tree) if isinstance(h, ast.ExceptHandler)]
    assert not any(isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in handlers)


# ------------------------------------------------------------------ profile
def test_decide_profile_order() -> None:
    hisi = SimpleNamespace(profile="hisi")
    assert decide_profile("generic", "sim") == "generic"
    assert decide_profile("generic", "sim", hisi) == "hisi"  # type: ignore[arg-type]
    assert decide_profile("generic", "rknn", hisi) == "rknn"  # type: ignore[arg-type]
    assert decide_profile("ort", "rknn", hisi) == "ort"  # type: ignore[arg-type]


def test_setup_decides_the_profile_without_touching_args(fx, tmp_path: Path) -> None:
    model, _, ranges = yolov8_bundle()
    calib = tmp_path / "calibration_param.txt"
    calib.write_text(make_hisi_calibration(model, ranges))
    base = ["compare", str(fx["yolov8"]), "--data", str(fx["images"]), "--samples", "1",
            "--calib", f"hisi:{calib}"]
    for extra, want in (([], "hisi"), (["--profile", "ort"], "ort")):
        args = build_parser().parse_args(base + extra)
        before = vars(args).copy()
        s = setup_run(args)
        assert s.profile == want and s.config.scheme.profile == want and s.backend.profile.name == want
        assert vars(args) == before  # nothing written back to the namespace
        assert s.mapping is not None and s.vendor is None and s.decoder is None


# ------------------------------------------------------------------ formatting
def test_ascii_formatters() -> None:
    assert (f_snr(None, ascii=True), f_snr(999.0, ascii=True), f_snr(31.04, ascii=True)) == ("-", "inf", "31.0")
    assert (f_snr(None), f_snr(999.0)) == ("–", "∞")
    assert (f_cos(None, ascii=True), f_g(None, ascii=True), f_jump(None, ascii=True)) == ("-", "-", "-")
    assert (f_det(None, ascii=True), f_jump(2.04, ascii=True), f_g(0.0284, ascii=True)) == ("-", "+2.0", "0.0284")


def test_name_shortening() -> None:
    assert strip_name("/model.22/cv3.0/cv3.0.1/act/Mul_output_0") == "22/cv3.0/cv3.0.1/act/Mul"
    assert strip_name("output0") == "output0" and strip_name("/stem/Conv") == "stem/Conv"
    assert elide("22/cv3.0/cv3.0.1/act/Mul", 24) == "22/cv3.0/cv3.0.1/act/Mul"
    assert elide("22/cv3.0/cv3.0.1/act/Mul", 20) == "22/…/cv3.0.1/act/Mul"
    assert elide("22/cv3.1/cv3.1.1/conv/Conv", 21) == "…/cv3.1.1/conv/Conv"
    assert elide("a_very_long_name_without_parts", 10) == "…out_parts"


# ------------------------------------------------------------------ rendering at 80 columns
@pytest.fixture(scope="module")
def results(fx, tmp_path_factory) -> tuple[dict, dict]:
    d = tmp_path_factory.mktemp("cli80")
    common = [str(fx["yolov8"]), "--data", str(fx["images"]), "--samples", "2", "-q"]
    assert main(["compare", *common, "--json", str(d / "c.json")]) == 0
    assert main(["bisect", *common, "--json", str(d / "b.json")]) == 0
    return json.loads((d / "c.json").read_text()), json.loads((d / "b.json").read_text())


def _render(fn, doc: dict, width: int) -> list[str]:
    con = Console(width=width, record=True, highlight=False, file=io.StringIO())
    rec = CompareResult if fn is render_compare else BisectResult
    fn(rec.from_json(doc), con)
    return con.export_text().splitlines()


def _row(lines: list[str], first: str) -> str:
    """The table line whose first cell is `first`."""
    rows = [ln for ln in lines if ln.split() and ln.split()[0] == first]
    assert rows, first
    return rows[0]


def test_compare_table_at_80_columns(results) -> None:
    res = results[0]
    lines = _render(render_compare, res, 80)
    assert max(cell_len(ln) for ln in lines) <= 80
    top = sorted([t for t in res["tensors"] if t["jump_db"] is not None], key=lambda t: -t["jump_db"])[:15]
    assert any(len(t["tensor"]) > 30 for t in top)  # the fixture has names that must be shortened
    for t in top:
        line = _row(lines, str(t["index"]))
        parts = strip_name(t["tensor"]).split("/")
        assert parts[-1] in line, (t["tensor"], line)  # the op that makes the tensor
        if len(parts) > 2:
            assert "/".join(parts[-2:]) in line, (t["tensor"], line)  # and the block it sits in
    assert any("names shortened" in ln for ln in lines)


def test_bisect_table_at_80_columns(results) -> None:
    doc = results[1]
    lines = _render(render_bisect, doc, 80)
    assert max(cell_len(ln) for ln in lines) <= 80
    for r in doc["ranking"][:8]:
        line = _row(lines, str(r["rank"]))
        parts = strip_name(r["op"]).split("/")
        assert parts[-1] in line and (len(parts) < 3 or "/".join(parts[-2:]) in line), (r["op"], line)


def test_wide_console_keeps_full_names(results) -> None:
    res, doc = results
    text = "\n".join(_render(render_compare, res, 160) + _render(render_bisect, doc, 160))
    assert "/model.22/cv3.0/cv3.0.1/act/Mul_output_0" in text and "/model.22/Concat_5" in text
    assert "names shortened" not in text


def test_narrow_console_stacks_full_names(results) -> None:
    res, doc = results
    top = sorted([t for t in res["tensors"] if t["jump_db"] is not None], key=lambda t: -t["jump_db"])[:15]
    for fn, d, names in ((render_compare, res, [t["tensor"] for t in top]),
                         (render_bisect, doc, [r["op"] for r in doc["ranking"][:8]])):
        lines = _render(fn, d, 56)
        copy = tuple(f"  {k}: " for k in d.get("exports") or {})  # one-line exports: whole, for copying
        assert max(cell_len(ln) for ln in lines if not (copy and ln.startswith(copy))) <= 56
        shown = {ln.strip().removeprefix("▶ ") for ln in lines}  # each row under its own full-name line
        assert all(n in shown for n in names), [n for n in names if n not in shown]


def test_first_bad_cut_names_the_fused_op(results) -> None:
    """A cut at a node inside a fused op names the op a user can promote, then the node."""
    doc = json.loads(json.dumps(results[1]))
    fused = next(r for r in doc["ranking"] if len(r["nodes"]) > 1)
    inner = next(n for n in fused["nodes"] if n != fused["op"])
    doc["first_bad_cut"].update(tensor="t_in", node=inner, op_type="Sigmoid", index=3)
    text = " ".join(_render(render_bisect, doc, 400))
    assert f"at {fused['op']} ({fused['op_type']}; node {inner}, Sigmoid, #3)" in text
    doc["first_bad_cut"].update(node=fused["op"], op_type="Conv")  # the op itself: named once
    text = " ".join(_render(render_bisect, doc, 400))
    assert f"at {fused['op']} (Conv, #3)" in text and "; node" not in text


@pytest.mark.parametrize("width", [80, 160])
def test_exports_one_line_each(results, width) -> None:
    doc = json.loads(json.dumps(results[1]))
    option = "--high_precision_layer=" + ";".join(f"/model.{i}/cv2/conv/Conv" for i in range(12))
    doc["exports"] = {"long": "x" * 300 + "\nmore", "atc": option, "short": "one line"}
    lines = _render(render_bisect, doc, width)
    k = next(i for i, ln in enumerate(lines) if ln.startswith("the set for other stacks"))
    assert lines[k + 1].startswith("  long: xxx") and lines[k + 1].endswith("… ... (2 lines)")
    assert cell_len(lines[k + 1]) <= width
    assert lines[k + 2] == "  atc: " + option  # one line to copy, however long
    assert lines[k + 3] == "  short: one line"


def test_patched_file_line_lists_each_change_once(results) -> None:
    """Precision and range changes of one layer name it once; a long list is cut with a pointer to the JSON."""
    doc = json.loads(json.dumps(results[1]))
    names = [f"/model.{i}/conv/Conv" for i in range(10)]
    doc["patched_file"] = {"path": "out.txt", "source": "in.txt", "format": "hisi", "changed": names + names[:3]}
    text = " ".join(_render(render_bisect, doc, 400))
    assert "(10 changed: " + ", ".join(names[:8]) + " ... (+2, all in the JSON's patched_file.changed))" in text
    doc["patched_file"]["changed"] = names[:2] * 2
    assert f"(2 changed: {names[0]}, {names[1]})" in " ".join(_render(render_bisect, doc, 400))
