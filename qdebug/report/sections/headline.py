"""The headline: title, verdict, the run's facts (model, inputs, quantization, target, sensitive ops,
cut, promotion) and how to reproduce it; the first screen of the report."""

from __future__ import annotations

import shlex
from typing import Any

from qdebug.report.blocks import (
    Block,
    Bullets,
    Code,
    Heading,
    Inline,
    Para,
    Quote,
    Span,
    b,
    bad,
    c,
    good,
    il,
    join,
)
from qdebug.report.context import (
    Ctx,
    clause_key,
    clause_ref,
    cut_op,
    default_failures,
    output_metrics,
    reproduce,
    sensitive_ops,
    vendor_refs,
)
from qdebug.report.format import f_bound, f_cos, f_det, f_metric, f_snr
from qdebug.report.sections.detection import detection_headline, run_label
from qdebug.report.sections.task import task_section
from qdebug.results.compare import COMPARE_SCHEMA, CompareResult, QuantInfo, SampleInfo
from qdebug.results.detection import MASK_METRICS, POSE_METRICS, DetectionRun
from qdebug.results.runspec import RunSpec
from qdebug.results.task import METRIC_LABELS, TaskRun, format_metric

# the mask/keypoint metrics of segment/pose heads as the headline names and prints them
INSTANCE_LABELS = {"mask_map50_95_vs_float": ("mask mAP50-95 vs float", ".3f"),
                   "mask_iou_mean": ("mean mask IoU", ".3f"),
                   "oks_map_vs_float": ("OKS mAP50-95 vs float", ".3f"),
                   "kpt_err_px": ("keypoint error", ".2f")}

LEGEND = Quote(il(b("Metrics"), ": SNR = 10·log10(Σx² / Σ(x − y)²) in dB between the float value x and the "
                       "quantized value y, ", b("higher is better"), " (int8 that uses its range well: 35–45 dB; "
                       "below 20 dB a tensor is badly damaged); cosine → 1 is better. ", b("cumulative"),
                       " = whole model quantized; ", b("isolated"), " = only this op quantized, float inputs; ",
                       b("jump"), " = dB lost at this op."))


def headline(ctx: Ctx) -> list[Block]:
    """The first screen: title, verdict, the facts of the run, how to reproduce it and apply the fix,
    and the metrics legend."""
    model = ctx.res.model
    name = (model.path or "model").replace("\\", "/").rsplit("/", 1)[-1]
    return [Heading(1, f"Quantization report: {name}"), *_summary(ctx), LEGEND]


def _summary(ctx: Ctx) -> list[Block]:
    """Verdict paragraph, the bullet list of facts, the reproduce command and how to apply the fix."""
    doc, cmp = ctx.res, ctx.cmp
    out: list[Block] = []
    model = doc.model
    q = doc.quant
    items: list[Inline] = []
    if ctx.kind == "bisect":
        res = ctx.bis.result
        tgt = ctx.bis.target
        fails = [cl for cl in tgt.clauses if not cl.passes(res.before.get(clause_key(cl)))]
        fail_txt = join([il(clause_ref(cl), f" {cl.metric} {f_metric(cl.metric, res.before.get(clause_key(cl)))}"
                            f" (needs {f_bound(cl.op, cl.bound)})") for cl in fails], "; ")
        if res.met and res.set:
            n = len(res.set)
            verdict = il(bad("FAIL"), " as quantized → ", good("PASS"), f" after keeping {n} op{'s' * (n != 1)} at "
                         f"{ctx.bis.promote_precision}. Failing before: ", fail_txt, ".")
        elif res.met:
            verdict = il(good("PASS"), ": the target is met with every op at ",
                         f"{q.scheme.activation}; nothing to promote.")
        else:
            verdict = il(bad("FAIL"), ": ", res.message, ". Failing: ", fail_txt, ".")
        covered = {cl.ref for cl in tgt.clauses}
        loose = [(ref, m) for ref, m in default_failures(cmp) if ref not in covered]
        if loose:
            verdict = il(verdict, " Not in the target but below cosine 0.999: ",
                         join([il(c(ref), f" (SNR {f_snr(m.snr_db)} dB)") for ref, m in loose]), ".")
        out.append(Para(il(b("Verdict: "), verdict)))
    else:
        fails = default_failures(cmp)
        if fails:
            txt = join([il(c(ref), f" SNR {f_snr(m.snr_db)} dB, cosine {f_cos(m.cosine)}") for ref, m in fails],
                       "; ")
            out.append(Para(il(b("Verdict: "), bad("FAIL"), " — ", txt,
                               " (criterion: cosine ≥ 0.999 on every output part, the default target of ",
                               c("qdebug bisect"), ").")))
        else:
            worst = min(output_metrics(cmp), key=lambda r: r[1].snr_db if r[1].snr_db is not None else -1)
            out.append(Para(il(b("Verdict: "), good("PASS"), " — every output part reaches cosine ≥ 0.999; "
                               "worst ", c(worst[0]), f" SNR {f_snr(worst[1].snr_db)} dB.")))
    det_line = detection_headline(ctx)
    if det_line:
        items.append(det_line)
    task_line = task_headline(ctx)
    if task_line:
        items.append(task_line)
    sha = (model.sha256 or "")[:12]
    items.append(il(b("Model: "), c(model.path or "?"),
                    f" — {_or_q(model.nodes)} nodes, opset {_or_q(model.opset)}",
                    il(", sha256 ", c(sha)) if sha else None))
    items.append(il(b("Input set: "), _describe_inputs(doc.samples)))
    items.append(il(b("Quantization: "), _describe_quant(q)))
    judge = q.judge or {}
    if judge and judge.get("backend") not in (None, "sim"):
        items.append(il(b("Judge: "), f"every candidate set was scored by the {judge['backend']} backend",
                        f" ({judge['platform']})" if judge.get("platform") else "",
                        "; the ranking comes from the built-in simulator"))
    vendor = cmp.vendor
    if vendor and vendor.outputs:
        vrefs = vendor_refs(vendor)
        worst = min(vrefs, key=lambda r: r[1]["snr_db"] if r[1]["snr_db"] is not None else -1e9)
        items.append(il(b("Vendor simulator: "), f"{vendor.backend} toolkit "
                        f"{vendor.toolkit or '?'}: worst ", c(worst[0]),
                        f" SNR {f_snr(worst[1]['snr_db'])} dB, cosine {f_cos(worst[1]['cosine'])} "
                        f"(built-in simulator: {f_snr((worst[2] or {}).get('snr_db'))} dB)"))
    if q.calib:
        mapping = cmp.quant.calib_mapping
        extra = ""
        if mapping:
            extra = (f" — {mapping.matched} records matched, "
                     f"{len(mapping.unmatched_records)} unmatched, "
                     f"{len(mapping.nodes_without_record)} ops without a record")
        items.append(il(b("Calibration file: "), c(q.calib), extra))
    if ctx.kind == "bisect":
        tgt = ctx.bis.target
        items.append(il(b("Target: "), c(tgt.expression),
                        " (assumed default: pass --target to set yours)" if tgt.assumed_default else ""))
    sens = sensitive_ops(ctx, 5)
    if sens:
        items.append(il(b("Sensitive ops: "), join([il(c(k), f" ({t}; {why})") for k, t, why in sens], ", ")))
    if ctx.kind == "bisect":
        bis = ctx.bis
        cut = bis.first_bad_cut
        if cut.tensor:
            ref = cut.tensor + (f".{cut.part}" if cut.part else "")
            items.append(il(b("First bad cut: "), c(ref), " at ", c(cut.node or "?"),
                            f" ({cut.op_type}, #{cut.index}): {cut.metric} "
                            f"{f_metric(cut.metric, cut.value)} fails {f_bound(cut_op(bis), cut.bound)}"))
        else:
            items.append(il(b("First bad cut: "), f"none (every tensor passes {cut.metric} "
                            f"{f_bound(cut_op(bis), cut.bound)})"))
        res = bis.result
        if res.set:
            moves = []
            refs_b = dict(output_metrics(cmp))
            refs_a = dict(output_metrics(ctx.cmp_after)) if ctx.cmp_after else {}
            for cl in bis.target.clauses:
                k = clause_key(cl)
                snr = ""
                if cl.metric != "snr_db" and cl.ref in refs_b and cl.ref in refs_a:
                    snr = (f" (SNR {f_snr(refs_b[cl.ref].snr_db)} → {f_snr(refs_a[cl.ref].snr_db)} dB)")
                moves.append(il(clause_ref(cl), f" {cl.metric} {f_metric(cl.metric, res.before.get(k))} → "
                                f"{f_metric(cl.metric, res.after.get(k))}{snr}"))
            shown = join([il(c(k)) for k in res.set[:6]])
            more = f" +{len(res.set) - 6} more (full list below)" if len(res.set) > 6 else ""
            items.append(il(b("Recommended promotion: "), shown, more,
                            f" → {bis.promote_precision}; ", join(moves, "; ")))
        elif res.met:
            items.append(il(b("Recommended promotion: "), "none needed"))
        else:
            items.append(il(b("Recommended promotion: "), "none found (see the evaluation log)"))
    else:
        nxt = next_bisect_command(ctx.cmp)
        if default_failures(cmp) and nxt:
            items.append(il(b("Next step: "), c(nxt), " finds the smallest set of ops to keep at int16"))
    out.append(Bullets(items))
    cmd = reproduce(doc)
    if cmd:
        out.append(Para(il(b("Reproduce"), f" (qdebug {doc.qdebug_version}, run from the folder the "
                           "original command ran in; paths are relative to it):")))
        out.append(Code(cmd, "sh"))
    if ctx.kind == "bisect" and ctx.bis.result.set:
        ex = ctx.bis.exports or {}
        pf = ctx.bis.patched_file
        line = (pf.extra_options.get("atc_option") if pf else None) or ex.get("atc")
        if pf and pf.path:
            out.append(Para(il(b("Apply the fix: "), "build with the patched calibration file ", c(pf.path),
                               " (diff below)", "; ATC option:" if line else ".")))
            if line:
                out.append(Code(line.strip(), "sh"))
        elif ex:
            out.append(Para(il(b("Apply the fix: "), "pass the promotion set to your toolchain; "
                               "the syntax for each one is under ", Span("link", "Export lists", "#export-lists"),
                               ".")))
    return out


def task_headline(ctx: Ctx) -> Inline | None:
    """The task verdict in one bullet, before → after promotion: the metrics of --task classify/embedding/ctc,
    or the masks/keypoints of a segment/pose head (its boxes have the detection bullet)."""
    t = task_section(ctx)
    if t is not None:
        names = list(t.higher_is_better) or list(t.quantized.metrics)
        p = t.promoted.metrics if t.promoted is not None else None
        vals = [il(METRIC_LABELS.get(m, m), " ", format_metric(m, t.quantized.metrics.get(m)),
                   f" → {format_metric(m, p.get(m))}" if p is not None else "") for m in names]
        tk = t.toolkit if isinstance(t.toolkit, TaskRun) else None
        if tk is not None:  # the vendor toolkit's outputs scored the same way, each run named by its simulator
            tvals = [il(METRIC_LABELS.get(m, m), " ", format_metric(m, tk.metrics.get(m))) for m in names]
            vals = [il(run_label("quantized", t.judge, True), ": ", join(vals, ", "), "; ",
                       run_label("toolkit", tk.judge, True), ": ", join(tvals, ", "))]
        return il(b("Task verdict"), f" ({t.task or '?'} on ", c(t.output or "?"), f", {t.quantized.samples} "
                  "samples, the float model's outputs as reference): ", join(vals, ", "),
                  " after promotion" if p is not None else "", " (", Span("link", "details", "#task-verdict"), ")")
    det = getattr(ctx.res, "detection", None)
    head = getattr(det, "head", "detect")
    if det is None or head not in ("segment", "pose") or not isinstance(det.quantized, DetectionRun):
        return None
    keys = MASK_METRICS if head == "segment" else POSE_METRICS
    q = det.quantized.metrics or {}
    p = det.promoted.metrics if isinstance(det.promoted, DetectionRun) else None
    vals = [il(INSTANCE_LABELS[k][0], " ", f_det(q.get(k), INSTANCE_LABELS[k][1]),
               f" → {f_det(p.get(k), INSTANCE_LABELS[k][1])}" if p is not None else "",
               " px" if k == "kpt_err_px" else "") for k in keys]
    tk = det.toolkit if isinstance(det.toolkit, DetectionRun) else None
    if tk is not None:  # the vendor toolkit's outputs decoded the same way, each run named by its simulator
        t = tk.metrics or {}
        tvals = [il(INSTANCE_LABELS[k][0], " ", f_det(t.get(k), INSTANCE_LABELS[k][1]),
                    " px" if k == "kpt_err_px" else "") for k in keys]
        vals = [il(run_label("quantized", det.judge, True), ": ", join(vals, ", "), "; ",
                   run_label("toolkit", tk.judge, True), ": ", join(tvals, ", "))]
    what = "Masks" if head == "segment" else "Keypoints"
    return il(b(what), f" ({head} head, against the float model's): ", join(vals, ", "),
              " after promotion" if p is not None else "", " (", Span("link", "details", "#detection-verdict"), ")")


def _or_q(v: Any) -> Any:
    """A value as the report prints it, "?" when unknown."""
    return "?" if v is None else v


def _describe_quant(q: QuantInfo) -> Inline:
    """The quantization scheme in one line: activations, calibration, weights, profile, overrides."""
    s = q.scheme
    act = f"{s.activation} activations ({'symmetric' if s.symmetric_activations else 'asymmetric'}, "
    cal = s.calibrator + (f" {s.percentile:g} %" if s.percentile else "")
    weights = (f"int8 weights ({'per-channel' if s.per_channel_weights else 'per-tensor'}, "
               f"{'symmetric' if s.symmetric_weights else 'asymmetric'})")
    where = {"input": "each op quantizes its inputs", "output": "int at every op output"}.get(
        q.quantize_at or "", "")
    prof = il("simulator profile ", c(q.profile or _or_q(s.profile)),
              f" ({where}{', fused' if q.fuse else ''})" if where else "")
    parts: list[Any] = [f"{act}{cal} calibration), {weights}; ", prof]
    if q.backend and q.backend != "sim":
        parts = [il("backend ", c(q.backend), "; "), *parts]
    ov = q.overrides or {}
    if ov:
        shown = join([il(c(f"{k}={v}")) for k, v in list(ov.items())[:5]])
        parts += [f"; overrides ({len(ov)}): ", shown, f" +{len(ov) - 5} more" if len(ov) > 5 else ""]
    return il(*parts)


def _describe_inputs(smp: SampleInfo) -> Inline:
    """The input set in one line: source, count and preprocessing."""
    kind = smp.kind or ""
    pre = smp.preprocess or {}
    bits = []
    if pre:
        if pre.get("size"):
            bits.append(f"{pre['size'][0]}×{pre['size'][1]}")
        bits.append(pre.get("resize", ""))
        bits.append(str(pre.get("color", "")).upper())

        def nums(v: Any) -> str:
            return "/".join(f"{x:g}" for x in v) if isinstance(v, list) else str(v)

        bits.append(f"mean {nums(pre.get('mean'))}, std {nums(pre.get('std'))}")
    noun = {"images": "images", "npy": ".npy tensors", "npz": ".npz samples"}.get(kind, kind or "samples")
    desc = f" — {smp.count} {noun}"
    return il(c(smp.source), desc, f" ({', '.join(x for x in bits if x)})" if bits else "")


def next_bisect_command(doc: CompareResult) -> str:
    """The compare command turned into the bisect command that finds the promotion set: from the run's
    resolved options when the result carries them (only options bisect accepts), else from the saved command."""
    if isinstance(doc.spec, RunSpec) and doc.schema == COMPARE_SCHEMA:
        return doc.spec.command_line("bisect")
    cmd = reproduce(doc)
    try:
        argv = shlex.split(cmd)
    except ValueError:
        return ""
    if len(argv) < 2 or argv[1] != "compare":
        return ""
    out, skip = ["qdebug", "bisect"], False
    for a in argv[2:]:
        if skip:
            skip = False
            continue
        if a in ("--json", "--top"):
            skip = True
            continue
        if a in ("--all", "-q", "--quiet") or a.startswith(("--json=", "--top=")):
            continue
        out.append(a)
    return " ".join(shlex.quote(a) for a in out)
