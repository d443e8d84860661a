"""Issue #15 finishing work: task sections validated with their documents, the LayerNorm outlier hazard in
compare, where(mask, 0, -inf) masks kept float, the headline's task verdict bullet.

Models are tiny graphs built here or by fixtures/families.py and fixtures/heads.py; expected values are
derived in each test (hand arithmetic, or numpy on the same data).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures.data import make_images
from fixtures.heads import make_yolov8_pose
from qdebug.cli import main
from qdebug.errors import QDebugError
from qdebug.results.schema import load_result, validate_result


# --------------------------------------------------------------------------- tiny models and data
def _gemm(path: Path, w: np.ndarray, out: str = "logits", b: np.ndarray | None = None) -> Path:
    """x [1, k] -> Gemm(W, B) -> out [1, n]: a linear classifier / embedder."""
    inits = [numpy_helper.from_array(w.astype(np.float32), "W")]
    ins = ["x", "W"]
    if b is not None:
        inits.append(numpy_helper.from_array(b.astype(np.float32), "B"))
        ins.append("B")
    g = helper.make_graph([helper.make_node("Gemm", ins, [out], name="fc")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[0]])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, w.shape[1]])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _npy_rows(d: Path, rows) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(rows):
        np.save(d / f"s{i}.npy", np.asarray(r, np.float32)[None])
    return d


@pytest.fixture(scope="module")
def classify_docs(tmp_path_factory) -> dict[str, Path]:
    """compare and bisect JSON of a 2-in/3-class Gemm classifier whose sample 0 ties in int8 (see test_tasks_generic)."""
    d = tmp_path_factory.mktemp("cls")
    model = _gemm(d / "cls.onnx", np.array([[1, 0, 0], [0, 1, 0]], np.float32), b=np.array([0, 0, 0.1]))
    data = _npy_rows(d / "data", [[0.4, 0.401], [1.0, 0.0], [0.0, 1.0], [0.7, 0.2]])
    cmp_json, bis_json = d / "c.json", d / "b.json"
    assert main(["compare", str(model), "--data", str(data), "--task", "classify", "--json", str(cmp_json),
                 "-q"]) == 0
    assert main(["bisect", str(model), "--data", str(data), "--task", "classify", "--target",
                 "top1_agreement>=0.98", "--json", str(bis_json), "-q"]) == 0
    return {"dir": d, "compare": cmp_json, "bisect": bis_json}


@pytest.fixture(scope="module")
def pose_doc(tmp_path_factory) -> Path:
    """compare JSON of the fixture YOLOv8 pose head on 2 images (a `detection` section with a pose decoder)."""
    d = tmp_path_factory.mktemp("pose")
    onnx.save(make_yolov8_pose(), str(d / "pose.onnx"))
    make_images(d / "images", n=2)
    out = d / "c.json"
    assert main(["compare", str(d / "pose.onnx"), "--data", str(d / "images"), "--task", "yolov8", "--json",
                 str(out), "-q"]) == 0
    return out


def _no_jsonschema(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import jsonschema` fail so the built-in validator runs."""
    monkeypatch.setitem(sys.modules, "jsonschema", None)


# --------------------------------------------------------------------------- 1. section schemas
@pytest.mark.parametrize("builtin", [False, True], ids=["jsonschema", "builtin"])
def test_written_documents_with_task_sections_validate(classify_docs, pose_doc, builtin, monkeypatch):
    if builtin:
        _no_jsonschema(monkeypatch)
    assert load_result(classify_docs["compare"])["task"]["schema"] == "qdebug.task/1"
    assert load_result(pose_doc)["detection"]["decoder"]["head"] == "pose"
    bis = load_result(classify_docs["bisect"])
    assert bis["task"]["promoted"]["metrics"]["top1_agreement"] == 1.0


TASK_MUTATIONS = [
    (lambda t: t.update(task="segmentation"), "$.task.task"),
    (lambda t: t["quantized"]["metrics"].update(top1_agreement="high"), "$.task.quantized.metrics.top1_agreement"),
    (lambda t: t["quantized"].pop("per_sample"), "$.task.quantized"),
    (lambda t: t["quantized"]["per_sample"][0].update(severity="bad"), "$.task.quantized.per_sample[0].severity"),
    (lambda t: t.update(schema="qdebug.detection/1"), "$.task"),
]


@pytest.mark.parametrize("builtin", [False, True], ids=["jsonschema", "builtin"])
@pytest.mark.parametrize("mutate,where", TASK_MUTATIONS)
def test_a_mutated_task_section_fails_validation(classify_docs, builtin, mutate, where, monkeypatch):
    if builtin:
        _no_jsonschema(monkeypatch)
    doc = json.loads(classify_docs["compare"].read_text())
    validate_result(doc)  # the unmutated document passes
    mutate(doc["task"])
    with pytest.raises(QDebugError, match="does not match schema qdebug.(task|compare)/1") as err:
        validate_result(doc, "c.json")
    assert where in str(err.value) and "c.json" in str(err.value)


DETECTION_MUTATIONS = [
    (lambda d: d["decoder"].update(head="mask"), "$.detection.decoder.head"),
    (lambda d: d["decoder"].update(kpt_shape=[17]), "$.detection.decoder.kpt_shape"),
    (lambda d: d["quantized"]["metrics"].update(oks_map_vs_float="0.9"), "$.detection.quantized.metrics"),
    (lambda d: d["quantized"]["metrics"].pop("map50_vs_float"), "$.detection.quantized.metrics"),
    (lambda d: d.update(images=-1), "$.detection.images"),
]


@pytest.mark.parametrize("builtin", [False, True], ids=["jsonschema", "builtin"])
@pytest.mark.parametrize("mutate,where", DETECTION_MUTATIONS)
def test_a_mutated_detection_section_fails_validation(pose_doc, builtin, mutate, where, monkeypatch):
    if builtin:
        _no_jsonschema(monkeypatch)
    doc = json.loads(pose_doc.read_text())
    mutate(doc["detection"])
    with pytest.raises(QDebugError, match="does not match schema qdebug.detection/1") as err:
        validate_result(doc, "p.json")
    assert where in str(err.value)


def test_bisect_sections_and_embedded_compare_sections_are_validated(classify_docs):
    doc = json.loads(classify_docs["bisect"].read_text())
    bad = copy.deepcopy(doc)
    bad["task"]["promoted"]["samples"] = -3
    with pytest.raises(QDebugError, match=r"\$\.task\.promoted"):
        validate_result(bad, "b.json")
    bad = copy.deepcopy(doc)
    bad["compare_before"]["task"] = {**json.loads(classify_docs["compare"].read_text())["task"], "task": "nope"}
    with pytest.raises(QDebugError, match=r"\$\.compare_before\.task\.task"):
        validate_result(bad, "b.json")


def test_report_refuses_a_mutated_section_with_one_line(classify_docs, capsys):
    d = classify_docs["dir"]
    doc = json.loads(classify_docs["compare"].read_text())
    doc["task"]["higher_is_better"]["top1_agreement"] = "yes"
    bad = d / "bad.json"
    bad.write_text(json.dumps(doc))
    assert main(["report", str(bad), "-o", str(d / "rep_bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.json" in err and "higher_is_better" in err
    assert not (d / "rep_bad").exists()


# --------------------------------------------------------------------------- 2. LayerNorm outlier channel
def _set_init(m: onnx.ModelProto, name: str, fn) -> None:
    """Replace initializer `name` by fn(its array)."""
    for k, t in enumerate(m.graph.initializer):
        if t.name == name:
            a = numpy_helper.to_array(t).copy()
            m.graph.initializer[k].CopyFrom(numpy_helper.from_array(fn(a).astype(a.dtype), name))
            return
    raise KeyError(name)


def _channel_absmax(model: onnx.ModelProto, tensor: str, data: Path) -> np.ndarray:
    """max |x| per last-axis channel of `tensor` over every sample, by onnxruntime + numpy (no qdebug code)."""
    import onnxruntime as ort

    m = copy.deepcopy(model)
    m.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    best = None
    for f in sorted(data.iterdir()):
        feeds = dict(np.load(f)) if f.suffix == ".npz" else None
        if feeds is None:
            continue
        v = np.abs(sess.run([tensor], feeds)[0]).reshape(-1, sess.get_outputs()[-1].shape[-1] or 1)
        best = v.max(0) if best is None else np.maximum(best, v.max(0))
    return best


OUTLIER_CH = 5


def _bert(outlier: bool) -> onnx.ModelProto:
    from fixtures.families import make_bert_layer

    m = make_bert_layer()  # decomposed LayerNorm
    if outlier:  # word-embedding column 5 x 80: channel 5 of the first LayerNorm input dwarfs the others
        _set_init(m, "bert.embeddings.word_embeddings.weight", lambda a: a * np.where(np.arange(a.shape[1]) ==
                                                                                       OUTLIER_CH, 80, 1))
    return m


def _vit(outlier: bool) -> onnx.ModelProto:
    from fixtures.families import make_vit_block

    m = make_vit_block()  # LayerNormalization ops
    if outlier:  # position-embedding channel 5 + 40: every LayerNorm input carries it through the residuals
        _set_init(m, "vit.embeddings.position_embeddings",
                  lambda a: a + np.where(np.arange(a.shape[-1]) == OUTLIER_CH, 40, 0).astype(np.float32))
    return m


def _vit_data(d: Path) -> Path:
    """The ViT fixture's images as .npy tensors [1, 3, 32, 32] (what the model reads, also fed to numpy)."""
    from fixtures.families import write_npy

    out = write_npy(d, (1, 3, 32, 32), n=4)
    for f in sorted(out.glob("*.npy")):  # the reference helper reads .npz keyed by input name
        np.savez(f.with_suffix(".npz"), pixel_values=np.load(f))
        f.unlink()
    return out


@pytest.mark.parametrize("family", ["bert", "vit"])
def test_norm_outlier_hazard_fires_on_a_crafted_outlier_channel_only(family, tmp_path):
    from fixtures.families import write_bert_data
    from qdebug.graph.hazards import norm_inputs
    from qdebug.graph.model import ModelGraph

    data = write_bert_data(tmp_path / "d") if family == "bert" else _vit_data(tmp_path / "d")
    found = {}
    for outlier in (False, True):
        m = _bert(outlier) if family == "bert" else _vit(outlier)
        path = tmp_path / f"{family}_{outlier}.onnx"
        onnx.save(m, str(path))
        out = tmp_path / f"{outlier}.json"
        assert main(["compare", str(path), "--data", str(data), "--json", str(out), "-q"]) == 0
        found[outlier] = [h for h in json.loads(out.read_text())["hazards"] if h["kind"] == "norm_outlier"]
        norm_in = norm_inputs(ModelGraph.load(path))
    assert found[False] == []
    assert found[True], "the outlier channel must be reported"
    first = next(t for t in norm_in if "embeddings" in t)  # the first LayerNorm's input holds the outlier
    h = next(h for h in found[True] if h["tensor"] == first)
    a = _channel_absmax(m, first, data).astype(np.float64)
    med = float(np.median(a))
    assert h["node"] == norm_in[first] and h["numbers"]["outlier_channel"] == OUTLIER_CH == int(a.argmax())
    assert h["numbers"]["max_abs"] == pytest.approx(float(a.max()), rel=1e-5)
    assert h["numbers"]["median_abs"] == pytest.approx(med, rel=1e-5)
    assert h["numbers"]["levels_left"] == pytest.approx(255 * med / float(a.max()), rel=1e-5)
    assert h["numbers"]["levels_left"] < 16  # fewer than MIN_LEVELS int8 levels for the median channel


# --------------------------------------------------------------------------- 3. where(mask, 0, -inf)
S, D = 6, 8


def _inf_attention(form: str, reshape: bool = False) -> onnx.ModelProto:
    """x [1,S,D] -> softmax(x W x^T / sqrt D, masked by the int64 attention_mask with -inf) x -> y.

    form "add": scores + where(mask, 0, -inf); "fill": where(mask, scores, -inf) (masked_fill). `reshape` puts a
    Reshape between the masked scores and the Softmax."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((D, D)) * 2 / np.sqrt(D)).astype(np.float32), "W"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(-np.inf, np.float32), "ninf"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array(np.sqrt(D), np.float32), "sq"),
             numpy_helper.from_array(np.array([1, S, S], np.int64), "shape")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["q"], name="q_proj"),
             helper.make_node("Transpose", ["x"], ["kt"], name="kT", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s0"], name="qk"),
             helper.make_node("Div", ["s0", "sq"], ["scores"], name="scale"),
             helper.make_node("Cast", ["attention_mask"], ["mb"], name="cast", to=TensorProto.BOOL),
             helper.make_node("Unsqueeze", ["mb", "ax1"], ["mb3"], name="unsq")]
    if form == "add":
        nodes += [helper.make_node("Where", ["mb3", "zero", "ninf"], ["madd"], name="where"),
                  helper.make_node("Add", ["scores", "madd"], ["masked"], name="apply")]
    else:
        nodes += [helper.make_node("Where", ["mb3", "scores", "ninf"], ["masked"], name="apply")]
    sm_in = "masked"
    if reshape:
        nodes.append(helper.make_node("Reshape", ["masked", "shape"], ["masked_r"], name="reshape"))
        sm_in = "masked_r"
    nodes += [helper.make_node("Softmax", [sm_in], ["p"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["p", "x"], ["y"], name="ctx")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, S, D]),
                                       helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, S])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, S, D])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _mask_feeds() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((1, S, D)).astype(np.float32),
             "attention_mask": (np.arange(S) < n).astype(np.int64)[None]} for n in (6, 4, 3, 5)]


@pytest.mark.parametrize("profile", ["generic", "hisi"])
@pytest.mark.parametrize("form,reshape", [("add", False), ("fill", False), ("add", True)])
def test_inf_masked_scores_stay_float_and_masked_keys_get_zero_probability(form, reshape, profile):
    import onnxruntime as ort

    from qdebug.graph.families import mask_apply, mask_tensors
    from qdebug.graph.hazards import mask_add
    from qdebug.graph.model import ModelGraph
    from qdebug.quant.scheme import QuantConfig
    from qdebug.runners.sim import SimBackend

    g = ModelGraph(_inf_attention(form, reshape), "inf.onnx")
    assert mask_apply(g) == {"apply"}
    assert "masked" in mask_tensors(g) and (not reshape or "masked_r" in mask_tensors(g))
    be = SimBackend(profile)
    feeds = _mask_feeds()
    be.prepare(g, QuantConfig(), feeds)
    op = next(o for o in be.quant_ops(g) if o.key == "apply")
    assert op.kind == "float" and op.family == "mask"
    soft = next(o for o in be.quant_ops(g) if o.key == "softmax")
    assert [t for _, _, t in soft.inputs] == []  # the -inf scores are never a quantization point
    qm = be.quantized_model(g, QuantConfig(), ["p", "scores"])
    sess = ort.InferenceSession(qm.SerializeToString(), providers=["CPUExecutionProvider"])
    for f in feeds:
        p, scores = sess.run(["p", "scores"], f)
        keep = f["attention_mask"][0].astype(bool)
        assert (p[..., ~keep] == 0).all()  # exp(-inf) = 0: masked keys get no probability
        # the kept keys: a softmax of the (quantized) scores over the kept columns only, on the output grid
        e = np.exp(scores[..., keep] - scores[..., keep].max(-1, keepdims=True))
        ref = e / e.sum(-1, keepdims=True)
        step = 1 / 256 if profile == "generic" else 0.02  # generic: fixed 1/256 grid; hisi: F16 / calibrated
        assert np.abs(p[..., keep] - ref).max() <= step
    hz = [h for h in mask_add(g, be.float_minmax) if h.node == "apply"]
    assert len(hz) == 1 and hz[0].numbers["simulated"] == "float" and "-inf" in hz[0].message


# --------------------------------------------------------------------------- 4. the headline's task bullet
def _headline_bullets(rep: Path) -> list[str]:
    """The bullets of the report's first screen (between the verdict and the reproduce command)."""
    md = (rep / "report.md").read_text(encoding="utf-8")
    first = md.split("**Reproduce**", 1)[0]
    return [line for line in first.splitlines() if line.startswith("- ")]


def test_headline_names_the_classify_verdict_before_and_after_promotion(classify_docs):
    d = classify_docs["dir"]
    assert main(["report", str(classify_docs["compare"]), "-o", str(d / "rep_c"), "--no-why"]) == 0
    assert main(["report", str(classify_docs["bisect"]), "-o", str(d / "rep_b"), "--no-why"]) == 0
    # sample 0 ([0.4, 0.401]) ties in int8, the other 3 keep their class: top-1 3/4; the int16 promotion keeps 4/4
    lines = [x for x in _headline_bullets(d / "rep_c") if "Task verdict" in x]
    assert len(lines) == 1
    assert "(classify on `logits`, 4 samples" in lines[0] and "top-1 agreement 75.0%," in lines[0]
    assert "top-5 agreement 100.0%" in lines[0] and "→" not in lines[0]
    lines = [x for x in _headline_bullets(d / "rep_b") if "Task verdict" in x]
    assert len(lines) == 1 and "top-1 agreement 75.0% → 100.0%" in lines[0] and "after promotion" in lines[0]
    assert 'id="task-verdict"' in (d / "rep_b" / "report.html").read_text(encoding="utf-8")  # the link's target


def test_headline_names_the_pose_keypoints(pose_doc, tmp_path):
    det = json.loads(pose_doc.read_text())["detection"]["quantized"]["metrics"]
    assert main(["report", str(pose_doc), "-o", str(tmp_path / "rep"), "--no-why"]) == 0
    bullets = _headline_bullets(tmp_path / "rep")
    kp = [x for x in bullets if x.startswith("- **Keypoints**")]
    assert len(kp) == 1 and "(pose head" in kp[0]
    assert f"OKS mAP50-95 vs float {det['oks_map_vs_float']:.3f}" in kp[0]
    assert f"keypoint error {det['kpt_err_px']:.2f} px" in kp[0]
    assert not any("Masks" in x or "Task verdict" in x for x in bullets)


def test_headline_without_a_task_has_no_task_bullet(tmp_path):
    model = _gemm(tmp_path / "m.onnx", np.array([[1, 0], [0, 1]], np.float32), out="y")
    data = _npy_rows(tmp_path / "d", [[0.1, 0.9], [0.5, 0.5]])
    assert main(["compare", str(model), "--data", str(data), "--json", str(tmp_path / "c.json"), "-q"]) == 0
    assert main(["report", str(tmp_path / "c.json"), "-o", str(tmp_path / "rep"), "--no-why"]) == 0
    bullets = _headline_bullets(tmp_path / "rep")
    assert bullets and not any(x.startswith(("- **Task verdict", "- **Keypoints", "- **Masks")) for x in bullets)


# --------------------------------------------------------------------------- 5. docs list every task metric
def test_docs_tasks_lists_every_task_metric_name():
    from qdebug.tasks import SCORERS, TASK_METRICS

    text = (Path(__file__).parent.parent / "docs" / "tasks.md").read_text(encoding="utf-8")
    index = text.split("## Every task metric name", 1)[1].split("\n## ", 1)[0]
    names = set(TASK_METRICS) | {m for cls in SCORERS.values() for m in cls.metrics}
    assert len(names) == 18  # 4 box agreement + 2 true mAP + 4 mask/keypoint + 3 classify + 3 embedding + 2 ctc
    missing = sorted(n for n in names if f"`{n}`" not in index)
    assert missing == []
