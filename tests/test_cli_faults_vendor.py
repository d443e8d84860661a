"""CLI fault table, part 2 (issue #14): vendor calibration files fed to `compare --calib` and `promote`.

HiSilicon calibration_param.txt and RKNN .quantization.cfg that are truncated, binary, out of range, tagged
YAML or name unknown layers; each must end in one `qdebug: error:` line naming the file and the line.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_cli_faults_base import Case, check_case, fenv, frac, params, subst  # noqa: F401

TEXT = Path(__file__).resolve().parents[1] / "fixtures" / "text"
PREFIX = {"hisi": "hisi", "rknn": "rknn", "rknn1": "rknn1"}


def _compare(spec: str) -> tuple[str, ...]:
    return ("compare", "<benign>", "--data", "<npy>", "-q", "--calib", spec)


def _promote(spec: str, *extra: str) -> tuple[str, ...]:
    return ("promote", spec, "--layers", "/conv1/Conv", "-o", "<t>/out.txt", "-q", *extra)


def _fixture_cases() -> list[Case]:
    """Every malformed file in fixtures/text (its first line says `# expect: line N: ...`), both commands."""
    cases = []
    for path in sorted(TEXT.glob("*")):
        if not path.is_file():
            continue
        m = re.match(r"# expect: (line \d+):", path.read_text(encoding="utf-8", errors="replace"))
        if not m:
            continue
        fmt = "rknn1" if path.name.startswith("rknn1") else path.name.split("_")[0]
        names = (f"<t>/{path.name}:{m.group(1)}",)
        files = {path.name: path.read_bytes()}
        spec = f"{fmt}:<t>/{path.name}"
        cases.append(Case(f"compare-calib-{path.stem}", _compare(spec), names=names, files=files))
        cases.append(Case(f"promote-{path.stem}", _promote(spec), names=names, files=files))
    return cases


# generated from the session's valid files: (id, session key, file name, content, what the line names)
H, R = "hisi", "rknn"
HL, RL = "<t>/h.txt:line", "<t>/r.cfg:line"
GENERATED: list[tuple[str, str, object, tuple[str, ...]]] = [
    ("hisi-trunc-30pct", H, frac(H, 0.3), (HL,)),
    ("hisi-trunc-50pct", H, frac(H, 0.5), (HL,)),
    ("hisi-trunc-75pct", H, frac(H, 0.75), (HL,)),
    ("hisi-trunc-last-brace", H, lambda env: env[H].read_text().rstrip()[:-1], (HL,)),
    ("hisi-binary", H, bytes(range(256)) * 16, ("<t>/h.txt",)),
    ("hisi-empty", H, b"", ("<t>/h.txt",)),
    ("hisi-nul-bytes", H, b"\0" * 512, ("<t>/h.txt",)),
    ("hisi-utf16", H, lambda env: env[H].read_text().encode("utf-16"), ("<t>/h.txt",)),
    ("hisi-hex-scale-300", H, subst(H, "scale: 255.014273", "scale: 0x" + "f" * 300), (HL,)),
    ("hisi-offset-400-digits", H, subst(H, "offset: -128", "offset: " + "9" * 400), (HL,)),
    ("hisi-offset-beyond-int64", H, subst(H, "offset: -128", "offset: 9223372036854775808"), (HL,)),
    ("hisi-scale-1e-320", H, subst(H, "scale: 255.014273", "scale: 1e-320"), (HL,)),
    ("hisi-scale-nan", H, subst(H, "scale: 255.014273", "scale: nan"), (HL,)),
    ("hisi-scale-inf", H, subst(H, "scale: 255.014273", "scale: inf"), (HL,)),
    ("hisi-scale-1e999", H, subst(H, "scale: 255.014273", "scale: 1e999"), (HL,)),
    ("hisi-scale-1e39", H, subst(H, "scale: 255.014273", "scale: 1e39"), (HL,)),
    ("hisi-scale-negative", H, subst(H, "scale: 255.014273", "scale: -1"), (HL,)),
    ("hisi-version-2-32", H, subst(H, "version: 65536", "version: 4294967296"), (HL,)),
    ("hisi-data-type-42", H, subst(H, "data_type: U8", "data_type: 42"), (HL,)),
    ("hisi-version-twice", H, subst(H, "version: 65536", "version: 65536\nversion: 65536"), (HL,)),
    ("hisi-control-char", H, subst(H, 'name: "input"', 'name: "in\x07put"'), (HL,)),
    ("hisi-deep-braces", H, lambda env: "version: 65536\n" + "layer {\n" * 100000 + "}\n" * 100000, (HL,)),
    ("hisi-yaml-instead", H, lambda env: env[R].read_text(), ("<t>/h.txt",)),
    ("rknn-trunc-mid-key", R, lambda env: env[R].read_text().split("/conv1/Conv_output_0")[0] + "/conv1/Co",
     ("<t>/r.cfg",)),
    ("rknn-trunc-mid-list", R, lambda env: env[R].read_text().split("scale:\n        -   0.0133")[0]
     + "scale:\n        -   ", (RL,)),
    ("rknn-binary", R, bytes(range(256)) * 16, ("<t>/r.cfg",)),
    ("rknn-empty", R, b"", ("<t>/r.cfg",)),
    ("rknn-utf16", R, lambda env: env[R].read_text().encode("utf-16"), ("<t>/r.cfg",)),
    ("rknn-timestamp-tag", R, subst(R, "dtype: int8", "dtype: !!timestamp 2001-12-14"), (RL,)),
    ("rknn-python-object", R, subst(R, "dtype: int8", "dtype: !!python/object/apply:os.system ['true']"), (RL,)),
    ("rknn-python-name", R, subst(R, "qtype: asym", "qtype: !!python/name:os.system"), (RL,)),
    ("rknn-anchor-alias", R, subst(R, "qtype: asym", "qtype: &a asym", 1), (RL,)),
    ("rknn-binary-tag", R, subst(R, "qtype: asym", "qtype: !!binary aGVsbG8="), (RL,)),
    ("rknn-zp-beyond-int64", R, subst(R, "-   -128", "-   9223372036854775808"), (RL,)),
    ("rknn-zp-400-digits", R, subst(R, "-   -128", "-   " + "9" * 400), (RL,)),
    ("rknn-scale-1e-320", R, subst(R, "-   0.01331190221449908", "-   1.0e-320"), (RL,)),
    ("rknn-scale-nan", R, subst(R, "-   0.01331190221449908", "-   .nan"), (RL,)),
    ("rknn-scale-inf", R, subst(R, "-   0.01331190221449908", "-   .inf"), (RL,)),
    ("rknn-scale-hex-300", R, subst(R, "-   0.01331190221449908", "-   0x" + "f" * 300), (RL,)),
    ("rknn-min-nan", R, subst(R, "-   0.0\n", "-   .nan\n"), (RL,)),
    ("rknn-dtype-int3", R, subst(R, "dtype: int8", "dtype: int3"), (RL,)),
    ("rknn-qmethod-bogus", R, subst(R, "qmethod: layer", "qmethod: tensor"), (RL,)),
    ("rknn-unknown-custom-key", R, subst(R, "custom_quantize_layers: {}", "custom_quantize_layers:\n    ghost: int16"),
     (RL, "ghost")),
    ("rknn-top-level-list", R, lambda env: "- a\n- b\n", (RL,)),
    ("rknn-duplicate-top-key", R, lambda env: env[R].read_text() + "custom_quantize_layers: {}\n", (RL,)),
    ("rknn-tab-indent", R, subst(R, "    input:\n        qtype", "    input:\n\tqtype"), (RL,)),
    ("rknn-deep-flow", R, lambda env: "custom_quantize_layers: " + "[" * 100000 + "]" * 100000 + "\n", (RL,)),
]
FILE = {H: "h.txt", R: "r.cfg"}


def _generated_cases() -> list[Case]:
    cases = []
    for cid, key, content, names in GENERATED:
        spec = f"{key}:<t>/{FILE[key]}"
        files = {FILE[key]: content}
        cases.append(Case(f"compare-calib-{cid}", _compare(spec), names=names, files=files))
        cases.append(Case(f"promote-{cid}", _promote(spec), names=names, files=files))
    return cases


def _dir(t: Path, env) -> None:
    (t / "h.txt").mkdir()


SPEC_CASES = [
    Case("compare-calib-unknown-format", _compare("acme:<hisi>"), names=("acme:", "hisi:")),
    Case("compare-calib-empty-path", _compare("hisi:"), names=("hisi:",)),
    Case("compare-calib-missing", _compare("hisi:<t>/h.txt"), names=("<t>/h.txt",)),
    Case("compare-calib-directory", _compare("hisi:<t>/h.txt"), names=("<t>/h.txt",), setup=_dir),
    Case("compare-calib-sniff-garbage", _compare("<t>/h.txt"), names=("<t>/h.txt",),
         files={"h.txt": bytes(range(256))}),
    Case("compare-calib-wrong-format", _compare("rknn:<hisi>"), names=("<hisi>",)),
    Case("compare-calib-unmatched-layer", _compare("hisi:<t>/h.txt"), rc=0, warn=("calib:",),
         files={"h.txt": subst(H, 'name: "/conv2/Conv"', 'name: "/ghost/Conv"')}, out_text=("/ghost/Conv",)),
    Case("compare-calib-bom-crlf", _compare("hisi:<t>/h.txt"), rc=0, warn=("calib:",),
         files={"h.txt": lambda env: b"\xef\xbb\xbf" + env[H].read_bytes().replace(b"\n", b"\r\n")}),
    Case("promote-unknown-format", _promote("acme:<hisi>"), names=("acme:", "hisi:")),
    Case("promote-empty-path", _promote("hisi:"), names=("hisi:",)),
    Case("promote-missing", _promote("hisi:<t>/h.txt"), names=("<t>/h.txt",)),
    Case("promote-directory", _promote("hisi:<t>/h.txt"), names=("<t>/h.txt",), setup=_dir),
    Case("promote-wrong-format", _promote("rknn:<hisi>"), names=("<hisi>",)),
    Case("promote-hisi-unknown-layer", ("promote", "hisi:<hisi>", "--layers", "/conv9/Conv", "-o", "<t>/o.txt"),
         names=("<hisi>", "/conv9/Conv")),
    Case("promote-rknn-unknown-layer", ("promote", "rknn:<rknn>", "--layers", "/conv9/Conv", "-o", "<t>/o.txt"),
         names=("/conv9/Conv",)),
    Case("promote-hisi-markup-layer", ("promote", "hisi:<hisi>", "--layers", "[bold]x", "-o", "<t>/o.txt"),
         names=("[bold]x",)),
    Case("promote-rknn-markup-layer", ("promote", "rknn:<rknn>", "--layers", "a[/]", "-o", "<t>/o.txt"),
         names=("a[/]",)),
    Case("promote-empty-layers", ("promote", "hisi:<hisi>", "--layers", ",", "-o", "<t>/o.txt"), names=("--layers",)),
    Case("promote-dtype-int8", _promote("hisi:<hisi>", "--dtype", "int8"), names=("--dtype",)),
    Case("promote-dtype-fp8", _promote("hisi:<hisi>", "--dtype", "fp8"), names=("--dtype",)),
    Case("promote-dtype-int4", _promote("rknn:<rknn>", "--dtype", "int4"), names=("--dtype",)),
    Case("promote-from16-garbage", _promote("hisi:<hisi>", "--from16", "hisi:<t>/d.txt"), names=("<t>/d.txt",),
         files={"d.txt": bytes(range(256))}),
    Case("promote-from16-missing", _promote("hisi:<hisi>", "--from16", "hisi:<t>/d.txt"), names=("<t>/d.txt",)),
    Case("promote-from16-rknn", _promote("hisi:<hisi>", "--from16", "rknn:<rknn>"), names=("<rknn>",)),
    Case("promote-from16-lacks-layer", _promote("hisi:<hisi>", "--from16", "hisi:<t>/d.txt"),
         names=("<t>/d.txt", "/conv1/Conv"), files={"d.txt": subst("hisi16", 'name: "/conv1/Conv"', 'name: "/x"')}),
    Case("promote-export-bogus", _promote("hisi:<hisi>", "--export", "tflite"), names=("--export",)),
    Case("promote-rknn1-without-model", ("promote", "rknn1:<t>/l.yaml", "--layers", "/conv1/Conv", "-o",
                                         "<t>/o.yaml"), names=("--model",),
         files={"l.yaml": "customized_quantize_layers: {}\n"}),
    Case("promote-rknn1-unknown-layer", ("promote", "rknn1:<t>/l.yaml", "--layers", "/conv9/Conv", "--model",
                                         "<benign>", "-o", "<t>/o.yaml"), names=("/conv9/Conv",),
         files={"l.yaml": "customized_quantize_layers: {}\n"}),
    Case("promote-no-layers-option", ("promote", "hisi:<hisi>", "-o", "<t>/o.txt"), names=("--layers",)),
]
ALL = _fixture_cases() + _generated_cases() + SPEC_CASES
XFAIL: dict[str, str] = {}


@pytest.mark.parametrize("case", params(Case(**{**c.__dict__, "xfail": XFAIL.get(c.id, c.xfail)}) for c in ALL))
def test_vendor_fault(case: Case, fenv, tmp_path, capsys, monkeypatch):  # noqa: F811 - fenv is the fixture
    check_case(case, fenv, tmp_path, capsys, monkeypatch)
