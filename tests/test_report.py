"""`qdebug report` / `bisect --report`: golden structure of report.md, report.html and the plots."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from qdebug.cli import main
from qdebug.compare.explain import explain
from qdebug.errors import QDebugError
from qdebug.report import plots
from qdebug.report.build import why_ops, write_report
from qdebug.results.schema import load_result, validate_result

PNG_SIG = b"\x89PNG\r\n\x1a\n"
TOP = 15


@pytest.fixture(scope="module")
def runs(fx, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A compare and a bisect run of the YOLOv8 fixture, with reports (bisect via --report in one go)."""
    d = tmp_path_factory.mktemp("report")
    model, images = str(fx["yolov8"]), str(fx["images"])
    assert main(["compare", model, "--data", images, "--json", str(d / "run.json"), "-q"]) == 0
    assert main(["bisect", model, "--data", images, "--json", str(d / "bisect.json"), "--report",
                 str(d / "rep_bisect"), "-q"]) == 0
    assert main(["report", str(d / "run.json"), "-o", str(d / "rep_compare")]) == 0
    return {"dir": d, "compare_json": d / "run.json", "bisect_json": d / "bisect.json",
            "compare": d / "rep_compare", "bisect": d / "rep_bisect"}


def _report(src: dict | Path, out: Path, model: str | None = None, data: str | None = None, why: bool = True,
            top: int = TOP) -> dict[str, str]:
    """What `qdebug report` does: the re-run (qdebug.compare.explain), then the rendering (write_report)."""
    doc = src if isinstance(src, dict) else load_result(src)
    base = None if isinstance(src, dict) else Path(src).parent
    explained = explain(doc, why_ops(doc, wanted=why), model=model, data=data, base_dir=base)
    return write_report(src, out, explained, top=top)


def _headings(md: str) -> list[str]:
    return re.findall(r"(?m)^#{1,3} (.+)$", md)


# ------------------------------------------------------------------ structure
def test_bisect_report_headline_and_sections(runs: dict[str, Path]) -> None:
    doc = json.loads(runs["bisect_json"].read_text())
    md = (runs["bisect"] / "report.md").read_text()
    heads = _headings(md)
    for h in ("Outputs", "Plots", "Recommended promotion set", "Sensitive ops", "Worst ops by error jump",
              "Hazards", "First bad cut", "Bisect evaluation log", "Export lists", "Environment",
              "Appendix: full tables"):
        assert h in heads, h
    assert heads[0].startswith("Quantization report: ")
    head = md.split("## Outputs")[0]  # the five-second part
    assert "**Verdict: FAIL** as quantized → **PASS**" in head
    for key in ("**Model:**", "**Input set:**", "**Quantization:**", "**Target:**", "**Sensitive ops:**",
                "**First bad cut:**", "**Recommended promotion:**", "SNR = 10·log10", "higher is better"):
        assert key in head, key
    assert doc["result"]["set"] == ["/model.22/Concat_5"]
    assert "`/model.22/Concat_5` → int16" in head
    assert "`output0.score` cosine 0.00000 → 0.9" in head  # before → after of the failing part
    assert f"```sh\n{doc['command']}\n```" in head  # the exact reproduce command
    assert "--report" in doc["command"]
    # promotion set section: table row and a copy-paste list; a simulator check with --override
    promo = md.split("## Recommended promotion set")[1].split("\n## ")[0]
    assert "| `/model.22/Concat_5` | Concat | 1 |" in promo
    assert "--override=/model.22/Concat_5=int16" in promo and "qdebug compare" in promo
    # evaluation log has one row per evaluation, with pass/fail and the chosen one starred
    log = md.split("## Bisect evaluation log")[1].split("\n## ")[0]
    assert len(re.findall(r"(?m)^\| \d+", log)) == len(doc["evaluations"])
    assert "★" in log and "**fail**" in log and "**pass**" in log
    # export lists (ATC etc.) and environment versions
    assert "--high_precision_layer=/model.22/Concat_5" in md
    env = md.split("## Environment")[1].split("\n## ")[0]
    for k in ("qdebug", "onnx", "onnxruntime", "numpy", "python", "os"):
        assert f"| {k} | `{doc['environment'][k]}` |" in env
    # numbers: SNR one decimal, cosine 5 decimals, max_abs 3 significant digits
    assert re.search(r"\| `output0\.score` \| 0\.0 \| 0\.00000 \| 1 \|", md)


def test_compare_report_headline(runs: dict[str, Path]) -> None:
    doc = json.loads(runs["compare_json"].read_text())
    md = (runs["compare"] / "report.md").read_text()
    head = md.split("## Outputs")[0]
    assert "**Verdict: FAIL** — `output0.score` SNR 0.0 dB" in head
    assert "`/model.22/Concat_5` (Concat; score_concat)" in head
    assert "**Next step:** `qdebug bisect " in head and "--json" not in head.split("**Next step:**")[1].split("\n")[0]
    assert f"```sh\n{doc['command']}\n```" in head
    assert "Bisect evaluation log" not in md
    hz = md.split("## Hazards")[1].split("\n## ")[0]
    assert "score_concat" in hz and "scale_amplify" in hz and "keep /model.22/Concat_5 at int16/fp16" in hz


@pytest.mark.parametrize("which", ["compare", "bisect"])
def test_plots_are_valid_small_pngs(runs: dict[str, Path], which: str) -> None:
    from PIL import Image

    d = runs[which]
    md = (d / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"snr.png", "parts.png", "why-1.png", "why-2.png", "why-3.png"} <= set(linked)
    for name in linked:
        p = d / name
        data = p.read_bytes()
        assert data[:8] == PNG_SIG, name
        assert len(data) < 200_000, (name, len(data))
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width >= 800 and im.height >= 300
            dpi = im.info.get("dpi", (110, 110))[0]
            assert 100 <= dpi <= 120
    assert "why-plots re-ran the model on 2 of the 8 input(s)" in md


def _table_rows(md: str, lines: list[str], start: int, end: int) -> list[list[str]]:
    rows = []
    for line in lines[start:end]:
        s = line.strip()
        assert s.startswith("|") and s.endswith("|"), line
        cells = re.split(r"(?<!\\)\|", s[1:-1])
        rows.append(cells)
    return rows


@pytest.mark.parametrize("which", ["compare", "bisect"])
def test_markdown_is_well_formed_for_github(runs: dict[str, Path], which: str) -> None:
    md = (runs[which] / "report.md").read_text()
    tokens = MarkdownIt("commonmark").enable("table").parse(md)
    lines = md.split("\n")
    tables = [t for t in tokens if t.type == "table_open"]
    separators = [ln for ln in lines if re.fullmatch(r"\|(:?-{3,}:?\|)+", ln)]
    assert len(tables) == len(separators) >= 5  # every intended table is parsed as a table
    for t in tables:
        rows = _table_rows(md, lines, t.map[0], t.map[1])
        n = len(rows[0])
        assert all(len(r) == n for r in rows), f"ragged table at line {t.map[0] + 1}"
    # the table tokens agree: same cell count in every row
    cells, widths = 0, []
    for t in tokens:
        if t.type == "tr_open":
            cells = 0
        elif t.type in ("th_open", "td_open"):
            cells += 1
        elif t.type == "tr_close":
            widths.append(cells)
        elif t.type == "table_close":
            assert len(set(widths)) == 1
            widths = []
    # no raw HTML beyond <details>/<summary>
    for t in tokens:
        if t.type == "html_block":
            tags = re.findall(r"</?([a-zA-Z]+)", t.content)
            assert set(tags) <= {"details", "summary"}, t.content
        for child in t.children or []:
            assert child.type != "html_inline", child.content
    # <details> blocks: a blank line after </summary> so GitHub renders the Markdown inside
    assert md.count("</summary>") == md.count("</summary>\n\n") >= 1
    assert md.count("<details>") == md.count("</details>") >= 1


@pytest.mark.parametrize("which", ["compare", "bisect"])
def test_html_is_self_contained(runs: dict[str, Path], which: str) -> None:
    text = (runs[which] / "report.html").read_text()

    class Refs(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.refs: list[str] = []
            self.tags: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.tags.append(tag)
            self.refs += [v or "" for k, v in attrs if k in ("src", "href", "srcset", "poster", "data", "action")]

    p = Refs()
    p.feed(text)
    assert not [r for r in p.refs if re.match(r"\s*(https?:)?//", r, re.I)]
    assert "script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags
    assert "@import" not in text and "url(" not in text
    imgs = [r for r in p.refs if r.startswith("data:")]
    assert len(imgs) == len(list(runs[which].glob("*.png"))) == 5
    assert all(r.startswith("data:image/png;base64,") for r in imgs)
    assert "<details>" in text and "Appendix: full tables" in text


def test_report_for_a_1000_op_model_stays_readable(runs: dict[str, Path], tmp_path: Path) -> None:
    doc = json.loads(runs["compare_json"].read_text())
    base = [t for t in doc["tensors"] if t["index"] >= 0]
    tensors = [t for t in doc["tensors"] if t["index"] < 0]
    for i in range(1000):
        t = copy.deepcopy(base[i % len(base)])
        t["tensor"], t["node"], t["index"] = f"/blocks.{i}/conv/Conv_output_0", f"/blocks.{i}/conv/Conv", i
        t["group"] = t["node"]
        if t["jump_db"] is not None:
            t["jump_db"] = round(t["jump_db"] + (i % 7) * 0.1, 3)
        tensors.append(t)
    tensors[-1]["tensor"] = "output0"
    doc["tensors"] = tensors
    doc["model"]["path"] = str(tmp_path / "gone.onnx")  # no model: why-plots are skipped with a note
    validate_result(doc)
    src = tmp_path / "big.json"
    src.write_text(json.dumps(doc))
    paths = _report(src, tmp_path / "rep", top=TOP)
    md = Path(paths["md"]).read_text()
    body, appendix = md.split("## Appendix: full tables")
    worst = body.split("## Worst ops by error jump")[1].split("\n## ")[0]
    assert len(re.findall(r"(?m)^\| \d+ \|", worst)) == TOP
    assert "<details>" in appendix and "All 1001 tensors in execution order" in appendix
    assert len(re.findall(r"(?m)^\| \d+ \| `/blocks", appendix)) == 999
    assert len(body) < 40_000  # the pasteable part stays small
    assert "why-plots skipped: model" in md
    if len(md) > 65_536:
        assert "GitHub accepts 65,536" in md.split("## Outputs")[0]
    html = Path(paths["html"]).read_text()
    assert html.count("<tr>") > 1000


# ------------------------------------------------------------------ validation
def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, " ".join(err.split())


def test_report_refuses_unknown_schema_version(runs: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(runs["compare_json"].read_text())
    doc["schema"] = "qdebug.compare/9"
    bad = tmp_path / "future.json"
    bad.write_text(json.dumps(doc))
    code, err = _cli(capsys, "report", str(bad), "-o", str(tmp_path / "out"))
    assert code == 2
    assert err.count("qdebug: error:") == 1 and "Traceback" not in err
    assert f"{bad}:$.schema: schema version 'qdebug.compare/9' is not supported" in err
    assert "qdebug.compare/1" in err and "(fix: re-run" in err
    assert not (tmp_path / "out").exists()
    del doc["schema"]
    bad.write_text(json.dumps(doc))
    code, err = _cli(capsys, "report", str(bad), "-o", str(tmp_path / "out"))
    assert code == 2 and "no 'schema' key" in err
    bad.write_text("{not json")
    code, err = _cli(capsys, "report", str(bad), "-o", str(tmp_path / "out"))
    assert code == 2 and "not valid JSON" in err and "line 1" in err
    code, err = _cli(capsys, "report", str(tmp_path / "missing.json"), "-o", str(tmp_path / "out"))
    assert code == 2 and "result file not found" in err


@pytest.mark.parametrize("jsonschema_present", [True, False])
def test_invalid_document_names_the_json_path(runs: dict[str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, jsonschema_present: bool) -> None:
    if not jsonschema_present:
        monkeypatch.setitem(sys.modules, "jsonschema", None)  # import fails: built-in checker
    doc = json.loads(runs["bisect_json"].read_text())
    assert validate_result(doc) == "qdebug.bisect/1"
    bad = copy.deepcopy(doc)
    bad["compare_before"]["tensors"][3]["cumulative"]["snr_db"] = "high"
    with pytest.raises(QDebugError) as exc:
        validate_result(bad, "b.json")
    assert exc.value.where == "$.compare_before.tensors[3].cumulative.snr_db"
    assert "does not match schema qdebug.compare/1" in exc.value.one_line()
    bad = copy.deepcopy(doc)
    del bad["result"]["set"]
    with pytest.raises(QDebugError) as exc:
        validate_result(bad, "b.json")
    assert exc.value.where == "$.result" and "'set' is a required property" in exc.value.problem
    cmp = json.loads(runs["compare_json"].read_text())
    cmp["quant"]["overrides"] = {"/x": "int4"}
    with pytest.raises(QDebugError) as exc:
        validate_result(cmp, "c.json")
    assert exc.value.where == '$.quant.overrides["/x"]'
    assert load_result(runs["compare_json"])["schema"] == "qdebug.compare/1"


def test_report_never_overwrites_its_input(runs: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    src = out / "report.md"  # a result that happens to carry the report's name
    shutil.copy(runs["compare_json"], src)
    before = src.read_bytes()
    code, err = _cli(capsys, "report", str(src), "-o", str(out), "--no-why")
    assert code == 2 and "refusing to overwrite an input file" in err
    assert src.read_bytes() == before
    code, err = _cli(capsys, "report", str(runs["compare_json"]), "-o", str(runs["compare_json"]))
    assert code == 2 and "refusing to overwrite an input of this run" in err


def test_report_degrades_to_tables_without_matplotlib(runs: dict[str, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plots, "available", lambda: False)
    paths = _report(runs["bisect_json"], tmp_path / "rep")
    md = Path(paths["md"]).read_text()
    assert "matplotlib is not installed" in md and "`pip install 'qdebug[plot]'`" in md
    assert "![" not in md and not list((tmp_path / "rep").glob("*.png"))
    assert "## Worst ops by error jump" in md and "## Bisect evaluation log" in md
    assert "<img" not in Path(paths["html"]).read_text()


def test_why_plots_need_the_model_of_the_run(runs: dict[str, Path], tmp_path: Path, fx) -> None:
    paths = _report(runs["compare_json"], tmp_path / "rep", model=str(fx["yolov5"]))
    md = Path(paths["md"]).read_text()
    assert "is not the model of this run (sha256 differs)" in md
    assert "why-1.png" not in md and "snr.png" in md


RENDER_ONLY = """
import io, sys
import numpy as np
from PIL import Image
from qdebug.report.build import write_report
from qdebug.results.schema import load_result
from qdebug.results.explain import ExamplePicture, Explanation, WhyData
x = np.linspace(-3, 3, 500)
w = WhyData(op="/fake/Conv", op_type="Conv", reason="test", point_tensor="t", point_desc="the op output", bits=8,
            lo=-2.0, hi=2.0, step=4 / 255, x_point=x, out_tensor="t", x_out=x, y_out=np.clip(x, -2, 2),
            out_grid=(4 / 255, 0.0, -128, 127))
buf = io.BytesIO()
Image.new("RGB", (320, 240), "white").save(buf, format="PNG")
ex = Explanation(why=[w], why_notes=["re-ran nothing"], pictures=[ExamplePicture(2, False, buf.getvalue())],
                 missing_pictures=["gone.jpg"])
write_report(load_result(sys.argv[1]), sys.argv[2], ex)
heavy = sorted(m for m in sys.modules if m.split(".")[0] == "onnxruntime" or m.startswith(
    ("qdebug.runners", "qdebug.quant", "qdebug.tasks", "qdebug.graph", "qdebug.inputs", "qdebug.compare",
     "qdebug.search", "qdebug.pipeline", "qdebug.metrics", "qdebug.formats")))
print("heavy:", heavy)
"""


def test_report_only_places_precomputed_plots_and_pictures(det_runs: dict[str, Path], tmp_path: Path) -> None:
    """write_report draws the why-plot and places the picture it is given, loading no model layer."""
    out = tmp_path / "rep"
    run = subprocess.run([sys.executable, "-c", RENDER_ONLY, str(det_runs["compare_json"]), str(out)],
                         capture_output=True, text=True, check=True)
    assert run.stdout.strip().endswith("heavy: []"), run.stdout + run.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["detections-2.png", "parts.png", "snr.png", "why-1.png"]
    md = (out / "report.md").read_text()
    assert "![Why /fake/Conv loses accuracy](why-1.png)" in md and "re-ran nothing" in md
    doc = json.loads(det_runs["compare_json"].read_text())
    name = doc["detection"]["examples"][1]["image"]
    assert f"*{name}: float (green) vs quantized (red, dashed)" in md
    assert "detection pictures skipped for 1 example image(s) (gone.jpg)" in md
    # without an explanation: no re-run, no pictures, and the report says so
    paths = write_report(doc, tmp_path / "bare")
    md = Path(paths["md"]).read_text()
    assert "why-plots not drawn" in md and "detection pictures not drawn" in md
    assert sorted(p.name for p in (tmp_path / "bare").glob("*.png")) == ["parts.png", "snr.png"]


def test_explain_without_why_runs_no_model(runs: dict[str, Path]) -> None:
    doc = load_result(runs["compare_json"])
    ex = explain(doc, None, model="/nonexistent.onnx")
    assert ex.why is None and ex.why_notes == [] and ex.pictures is None  # no detection section: nothing drawn
    ex = explain(doc, [("/model.22/Concat_5", "test")], model="/nonexistent.onnx")
    assert ex.why == [] and "why-plots skipped: model '/nonexistent.onnx' not found" in ex.why_notes[0]


# ------------------------------------------------------------------ rendering
CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_html_renders_headless_to_a_non_blank_page(runs: dict[str, Path], tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    shot = tmp_path / "out.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'prof'}",
           f"--screenshot={shot}", "--window-size=1200,2000", (runs["bisect"] / "report.html").as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.exists(), "chromium wrote no screenshot"
    with Image.open(shot) as im:
        px = np.asarray(im.convert("L"), dtype=np.float64)
    assert px.shape[0] >= 1000 and px.std() > 20  # text, tables and plots, not a blank page
    assert (px < 128).mean() > 0.01  # some dark ink (text) on the page


def test_vendor_backend_sections(runs: dict[str, Path], tmp_path: Path) -> None:
    """A bisect judged by rknn-toolkit2 (as qdebug/cli/bisect.py writes it) and a compare with the toolkit beside ours."""
    doc = json.loads(runs["bisect_json"].read_text())
    doc["quant"]["judge"] = {"backend": "rknn", "profile": "rknn", "platform": "rk3588", "python": "/env/bin/python",
                             "quantized_algorithm": "normal", "unpromotable": {"/model.22/Mul_2": "no int16 kernel"},
                             "builds": 9}
    doc["toolkit_proposal"] = {"tensors": ["output0", "/model.22/Mul_2_output_0"], "count": 2,
                               "values": {k: 0.5 for k in doc["result"]["before"]}, "passed": False}
    doc["patched_file"] = {"path": None, "source": "/work/step1.quantization.cfg", "format": "rknn",
                           "changed": ["output0"], "notes": ["verified by hybrid_quantization_step2"], "extra": {},
                           "diff": "--- original\n+++ patched\n@@ -1,2 +1,3 @@\n custom_quantize_layers:\n"
                                   "+    output0: int16\n"}
    doc["compare_before"]["vendor"] = {
        "backend": "rknn", "platform": "rk3588", "toolkit": "2.3.2", "samples": 8, "analysis_samples": 1,
        "outputs": [{"tensor": "output0", "cumulative": {"cosine": 0.9991, "snr_db": 30.2, "max_abs": 20.0,
                                                         "rel_l2": 0.03},
                     "builtin": doc["compare_before"]["outputs"][0]["cumulative"],
                     "parts": [{"part": "score", "cumulative": {"cosine": 0.1, "snr_db": 0.4, "max_abs": 1.0,
                                                               "rel_l2": 0.99}, "builtin": None}]}],
        "tensors_matched": 80, "fused_away": ["/model.0/act/Sigmoid_output_0"],
        "disagreements": [{"tensor": "output0", "vendor_cosine": 0.9991, "builtin_cosine": 0.9998, "gap": 0.0007}],
        "builds": 3}
    validate_result(doc)
    paths = _report(doc, tmp_path / "rep", why=False)
    md = Path(paths["md"]).read_text()
    head = md.split("## Outputs")[0]
    assert "**Judge:** every candidate set was scored by the rknn backend (rk3588)" in head
    assert "**Vendor simulator:** rknn toolkit 2.3.2: worst `output0.score` SNR 0.4 dB" in head
    for h in ("## Vendor simulator", "## Toolkit proposal", "## Patched vendor file"):
        assert h in md
    assert "not written (pass -o FILE to bisect)" in md and "+    output0: int16" in md
    assert "the toolkit cannot promote `/model.22/Mul_2` (no int16 kernel)" in md
    env = md.split("## Environment")[1].split("\n## ")[0]
    assert "| rknn toolkit | `2.3.2` |" in env and "| judge platform | `rk3588` |" in env
    assert "why-1.png" not in md and "why-plots not drawn (--no-why)" in md


# ------------------------------------------------------------------ detection verdict (--task)
@pytest.fixture(scope="module")
def det_runs(fx, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """compare and bisect of the YOLOv8 fixture with --task yolov8 (a `detection` section), and their reports."""
    d = tmp_path_factory.mktemp("report_det")
    model, images = str(fx["yolov8"]), str(fx["images"])
    assert main(["compare", model, "--data", images, "--task", "yolov8", "--json", str(d / "c.json"), "-q"]) == 0
    assert main(["bisect", model, "--data", images, "--task", "yolov8", "--target", "map50_95_vs_float>=0.8",
                 "--json", str(d / "b.json"), "-q"]) == 0
    assert main(["report", str(d / "c.json"), "-o", str(d / "rep_compare"), "--no-why"]) == 0
    assert main(["report", str(d / "b.json"), "-o", str(d / "rep_bisect"), "--no-why"]) == 0
    return {"compare_json": d / "c.json", "bisect_json": d / "b.json", "compare": d / "rep_compare",
            "bisect": d / "rep_bisect"}


def _section(md: str, heading: str) -> str:
    return md.split(f"\n## {heading}\n")[1].split("\n## ")[0]


def _md_tables(md: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header, body rows) of every table markdown-it parses, from its tokens."""
    tables, rows, row, cell = [], [], [], None
    for t in MarkdownIt("commonmark").enable("table").parse(md):
        if t.type == "table_open":
            rows = []
        elif t.type == "tr_open":
            row = []
        elif t.type in ("th_open", "td_open"):
            cell = ""
        elif t.type == "inline" and cell is not None:
            cell = t.content
        elif t.type in ("th_close", "td_close"):
            row.append(cell or "")
            cell = None
        elif t.type == "tr_close":
            rows.append(row)
        elif t.type == "table_close":
            tables.append((rows[0], rows[1:]))
    return tables


def _check_markdown(md: str) -> None:
    """Every table is a parsed, rectangular table; no raw HTML beyond <details>/<summary>."""
    tokens = MarkdownIt("commonmark").enable("table").parse(md)
    separators = [ln for ln in md.split("\n") if re.fullmatch(r"\|(:?-{3,}:?\|)+", ln)]
    assert len([t for t in tokens if t.type == "table_open"]) == len(separators)
    for header, body in _md_tables(md):
        assert all(len(r) == len(header) for r in body), header
    for t in tokens:
        if t.type == "html_block":
            assert set(re.findall(r"</?([a-zA-Z]+)", t.content)) <= {"details", "summary"}, t.content
        assert not [ch for ch in t.children or [] if ch.type == "html_inline"]
    assert md.count("</summary>") == md.count("</summary>\n\n")


def _external_refs(html_text: str) -> tuple[list[str], list[str]]:
    """(external URLs, data: URIs) referenced by the page's tags."""

    class Refs(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.refs: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.refs += [v or "" for k, v in attrs if k in ("src", "href", "srcset", "poster", "data", "action")]

    p = Refs()
    p.feed(html_text)
    return ([r for r in p.refs if re.match(r"\s*(https?:)?//", r, re.I)], [r for r in p.refs if r.startswith("data:")])


def _f2(v: float) -> str:
    return f"{v:.2f}"


@pytest.mark.parametrize("which", ["compare", "bisect"])
def test_detection_section_and_table(det_runs: dict[str, Path], which: str) -> None:
    doc = json.loads(det_runs[f"{which}_json"].read_text())
    det = doc["detection"]
    md = (det_runs[which] / "report.md").read_text()
    heads = _headings(md)
    assert heads[heads.index("Outputs") + 1] == "Detection verdict"  # in the first screen, before the plots
    sec = _section(md, "Detection verdict")
    assert "Decoder `yolov8` (concat layout, 4 classes, outputs `output0`); confidence ≥ 0.25, NMS IoU 0.7" in sec
    _check_markdown(md)
    tables = _md_tables(sec)
    header, body = tables[0]
    assert header == ["run", "dets", "mAP50-95", "mAP50", "recall", "lost", "added", "flips", "mean IoU", "Δscore"]
    q = det["quantized"]
    assert body[0][:3] == ["float (reference)", str(det["float"]["detections"]), "1.000"]
    assert body[1][:3] == ["quantized", str(q["detections"]), f"**{q['metrics']['map50_95_vs_float']:.3f}**"]
    assert body[1][5] == f"{q['counts']['lost']} (100%)"  # the int8 run loses every detection
    # per-class table (4 classes: inline, not collapsed), worst first
    per_class = [t for t in tables if t[0][0] == "class"]
    assert len(per_class) == 1 and len(per_class[0][1]) == 4
    head = md.split("## Outputs")[0]
    line = next(ln for ln in head.split("\n") if ln.startswith("- **Detections**"))
    if which == "bisect":
        p = det["promoted"]
        assert len(body) == 3 and body[2][0] == "promoted (1 op → int16)"
        assert body[2][2] == f"{p['metrics']['map50_95_vs_float']:.3f}"
        assert per_class[0][0][-2:] == ["promoted AP50-95", "promoted lost"]
        after = p["metrics"]["map50_95_vs_float"]
        assert f"mAP50-95 vs float **0.00** → {_f2(after)} after promotion" in line
        assert f"100% lost → {100 * p['metrics']['lost_frac']:.0f}% lost" in line
        # the task clause of the target reads with its values (not "–")
        assert "Failing before: detections map50_95_vs_float 0.000 (needs ≥ 0.8)" in head
        assert f"detections map50_95_vs_float 0.000 → {after:.3f}" in head
    else:
        assert len(body) == 2
        assert "mAP50-95 vs float **0.00** (mAP50 0.00); 100% lost of" in line
    assert "[details](#detection-verdict)" in line


@pytest.mark.parametrize("which", ["compare", "bisect"])
def test_detection_pictures_are_valid_pngs(det_runs: dict[str, Path], which: str) -> None:
    from PIL import Image

    d = det_runs[which]
    doc = json.loads(det_runs[f"{which}_json"].read_text())
    md = (d / "report.md").read_text()
    sec = _section(md, "Detection verdict")
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", sec)
    n = len(doc["detection"]["examples"])
    assert n == 3
    want = [f"detections-{k}.png" for k in range(1, n + 1)]
    if which == "bisect":  # float vs quantized, then float vs promoted, per image
        want = [x for k in range(1, n + 1) for x in (f"detections-{k}.png", f"detections-{k}-promoted.png")]
    assert linked == want
    assert sorted(p.name for p in d.glob("detections-*.png")) == sorted(want)
    ex = doc["detection"]["examples"][0]
    assert f"*{ex['image']}: float (green) vs quantized (red, dashed): " in sec
    for name in linked:
        data = (d / name).read_bytes()
        assert data[:8] == PNG_SIG and len(data) < 200_000, (name, len(data))
        with Image.open(d / name) as im:
            im.verify()
        with Image.open(d / name) as im:
            assert im.format == "PNG" and min(im.size) >= 240
    # the plots section keeps only the plots
    plots_sec = _section(md, "Plots")
    assert "detections-" not in plots_sec and "snr.png" in plots_sec


@pytest.mark.parametrize("which", ["compare", "bisect"])
def test_detection_html_is_self_contained(det_runs: dict[str, Path], which: str) -> None:
    text = (det_runs[which] / "report.html").read_text()
    external, data = _external_refs(text)
    assert not external and "<script" not in text and "url(" not in text
    assert len(data) == len(list(det_runs[which].glob("*.png")))
    assert '<h2 id="detection-verdict">Detection verdict</h2>' in text
    assert '<a href="#detection-verdict">details</a>' in text
    assert "missing)" not in text  # every Image block found its bytes


def test_report_without_detection_renders_as_before(det_runs: dict[str, Path], runs: dict[str, Path],
                                                     tmp_path: Path) -> None:
    doc = json.loads(det_runs["compare_json"].read_text())
    del doc["detection"]
    paths = _report(doc, tmp_path / "rep", why=False)
    md = Path(paths["md"]).read_text()
    assert "Detection verdict" not in md and "**Detections**" not in md and "detections-" not in md
    assert not list((tmp_path / "rep").glob("detections-*.png"))
    plain = (runs["compare"] / "report.md").read_text()
    assert _headings(md) == _headings(plain)
    _check_markdown(md)


def test_detection_pictures_degrade_when_images_are_gone(det_runs: dict[str, Path], fx, tmp_path: Path) -> None:
    doc = json.loads(det_runs["bisect_json"].read_text())
    for ex in doc["detection"]["examples"]:
        ex["path"] = str(tmp_path / "moved" / ex["image"])
    doc["samples"]["source"] = str(tmp_path / "moved")
    paths = _report(copy.deepcopy(doc), tmp_path / "rep", why=False)
    md = Path(paths["md"]).read_text()
    sec = _section(md, "Detection verdict")
    assert "detection pictures skipped for 3 example image(s)" in sec and "`--data FOLDER`" in sec
    assert _md_tables(sec)[0][0][0] == "run"  # the tables stay
    assert not list((tmp_path / "rep").glob("detections-*.png"))
    assert "missing)" not in Path(paths["html"]).read_text()
    _check_markdown(md)
    # --data points at the images again: found by name
    paths = _report(doc, tmp_path / "rep2", data=str(fx["images"]), why=False)
    assert len(list((tmp_path / "rep2").glob("detections-*.png"))) == 6
    assert "pictures skipped" not in Path(paths["md"]).read_text()


def test_detection_labels_classes_and_warnings(det_runs: dict[str, Path], tmp_path: Path) -> None:
    """True mAP rows with --labels, many classes collapsed, warnings, and an almost empty section."""
    doc = json.loads(det_runs["bisect_json"].read_text())
    det = doc["detection"]
    det["labels"] = {"source": "coco.json", "format": "coco", "images": 8, "objects": 40,
                     "map50_95": {"float": 0.443, "quantized": 0.391, "promoted": 0.43},
                     "map50": {"float": 0.61, "quantized": 0.55, "promoted": 0.6},
                     "recall": {"float": 0.5, "quantized": 0.45, "promoted": 0.49}}
    row = det["quantized"]["per_class"][0]
    det["quantized"]["per_class"] = [dict(row, **{"class": k, "name": f"cls{k}", "ap50_95": k / 10}) for k in range(8)]
    det["warnings"] = ["decoded boxes look implausible: 90 of 100 candidate boxes"]
    paths = _report(doc, tmp_path / "rep", why=False)
    md = Path(paths["md"]).read_text()
    sec = _section(md, "Detection verdict")
    _check_markdown(md)
    true = [t for t in _md_tables(sec) if t[0][0] == "metric"]
    assert true and true[0][0] == ["metric", "float", "quantized", "promoted (1 op → int16)"]
    assert true[0][1][0] == ["mAP50-95", "0.443", "0.391", "0.430"]
    assert "true mAP50-95 float 0.443, quantized 0.391, promoted 0.430" in md.split("## Outputs")[0]
    assert "<summary>Per class (8 classes with float detections, worst quantized AP50-95 first)</summary>" in sec
    assert "- **warning:** decoded boxes look implausible" in sec
    # a minimal section (no promoted run, no examples, undefined metrics) still renders
    det.update(promoted=None, examples=[], labels=None, warnings=[])
    det["quantized"]["metrics"] = {k: None for k in det["quantized"]["metrics"]}
    det["quantized"]["counts"] = {"lost": 0, "added": 0}
    paths = _report(doc, tmp_path / "rep2", why=False)
    sec = _section(Path(paths["md"]).read_text(), "Detection verdict")
    assert _md_tables(sec)[0][1][1][2] == "–" and "no example pictures" in sec
    assert not list((tmp_path / "rep2").glob("detections-*.png"))


def test_large_detection_pictures_are_reduced(tmp_path: Path) -> None:
    import io

    import numpy as np
    from PIL import Image

    from qdebug.report.build import _fit_png

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8)).save(buf, format="PNG")
    assert len(buf.getvalue()) > 1_000_000
    small = _fit_png(buf.getvalue())
    assert small[:8] == PNG_SIG and len(small) <= 200_000
    with Image.open(io.BytesIO(small)) as im:
        assert im.width >= 200 and abs(im.width / im.height - 4 / 3) < 0.02
    assert _fit_png(b"x" * 10) == b"x" * 10  # small pictures are left alone


def test_detection_pictures_without_matplotlib(det_runs: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plots, "available", lambda: False)  # the pictures need Pillow only
    _report(det_runs["compare_json"], tmp_path / "rep", why=False)
    assert sorted(p.name for p in (tmp_path / "rep").glob("*.png")) == [f"detections-{k}.png" for k in (1, 2, 3)]
