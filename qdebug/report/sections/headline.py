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
    output_refs,
    passes,
    reproduce,
    sensitive_ops,
    vendor_refs,
)
from qdebug.report.format import f_bound, f_cos, f_metric, f_snr
from qdebug.report.sections.detection import detection_headline
from qdebug.results.runspec import RunSpec

LEGEND = Quote(il(b("Metrics"), ": SNR = 10·log10(Σx² / Σ(x − y)²) in dB between the float value x and the "
                       "quantized value y, ", b("higher is better"), " (int8 that uses its range well: 35–45 dB; "
                       "below 20 dB a tensor is badly damaged); cosine → 1 is better. ", b("cumulative"),
                       " = whole model quantized; ", b("isolated"), " = only this op quantized, float inputs; ",
                       b("jump"), " = dB lost at this op."))


def headline(ctx: Ctx) -> list[Block]:
    """The first screen: title, verdict, the facts of the run, how to reproduce it and apply the fix,
    and the metrics legend."""
    model = ctx.doc["model"]
    name = (model.get("path") or "model").replace("\\", "/").rsplit("/", 1)[-1]
    return [Heading(1, f"Quantization report: {name}"), *_summary(ctx), LEGEND]


def _summary(ctx: Ctx) -> list[Block]:
    """Verdict paragraph, the bullet list of facts, the reproduce command and how to apply the fix."""
    doc, cmp = ctx.doc, ctx.before
    out: list[Block] = []
    model = doc["model"]
    q = doc["quant"]
    items: list[Inline] = []
    if ctx.kind == "bisect":
        res = doc["result"]
        tgt = doc["target"]
        fails = [cl for cl in tgt["clauses"] if not passes(cl, res["before"].get(clause_key(cl)))]
        fail_txt = join([il(clause_ref(cl), f" {cl['metric']} {f_metric(cl['metric'], res['before'].get(clause_key(cl)))}"
                            f" (needs {f_bound(cl['op'], cl['bound'])})") for cl in fails], "; ")
        if res["met"] and res["set"]:
            n = len(res["set"])
            verdict = il(bad("FAIL"), " as quantized → ", good("PASS"), f" after keeping {n} op{'s' * (n != 1)} at "
                         f"{doc['promote_precision']}. Failing before: ", fail_txt, ".")
        elif res["met"]:
            verdict = il(good("PASS"), ": the target is met with every op at ",
                         f"{q['scheme']['activation']}; nothing to promote.")
        else:
            verdict = il(bad("FAIL"), ": ", res["message"], ". Failing: ", fail_txt, ".")
        covered = {cl["ref"] for cl in tgt["clauses"]}
        loose = [(ref, m) for ref, m in default_failures(cmp) if ref not in covered]
        if loose:
            verdict = il(verdict, " Not in the target but below cosine 0.999: ",
                         join([il(c(ref), f" (SNR {f_snr(m['snr_db'])} dB)") for ref, m in loose]), ".")
        out.append(Para(il(b("Verdict: "), verdict)))
    else:
        fails = default_failures(cmp)
        if fails:
            txt = join([il(c(ref), f" SNR {f_snr(m['snr_db'])} dB, cosine {f_cos(m['cosine'])}") for ref, m in fails],
                       "; ")
            out.append(Para(il(b("Verdict: "), bad("FAIL"), " — ", txt,
                               " (criterion: cosine ≥ 0.999 on every output part, the default target of ",
                               c("qdebug bisect"), ").")))
        else:
            worst = min(output_refs(cmp), key=lambda r: r[1]["snr_db"] if r[1]["snr_db"] is not None else -1)
            out.append(Para(il(b("Verdict: "), good("PASS"), " — every output part reaches cosine ≥ 0.999; "
                               "worst ", c(worst[0]), f" SNR {f_snr(worst[1]['snr_db'])} dB.")))
    det_line = detection_headline(ctx)
    if det_line:
        items.append(det_line)
    sha = (model.get("sha256") or "")[:12]
    items.append(il(b("Model: "), c(model.get("path") or "?"),
                    f" — {model.get('nodes', '?')} nodes, opset {model.get('opset', '?')}",
                    il(", sha256 ", c(sha)) if sha else None))
    items.append(il(b("Input set: "), _describe_inputs(doc["samples"])))
    items.append(il(b("Quantization: "), _describe_quant(q)))
    judge = q.get("judge") or {}
    if judge and judge.get("backend") not in (None, "sim"):
        items.append(il(b("Judge: "), f"every candidate set was scored by the {judge['backend']} backend",
                        f" ({judge['platform']})" if judge.get("platform") else "",
                        "; the ranking comes from the built-in simulator"))
    vendor = cmp.get("vendor") or {}
    if vendor.get("outputs"):
        vrefs = vendor_refs(vendor)
        worst = min(vrefs, key=lambda r: r[1]["snr_db"] if r[1]["snr_db"] is not None else -1e9)
        items.append(il(b("Vendor simulator: "), f"{vendor.get('backend', '?')} toolkit "
                        f"{vendor.get('toolkit') or '?'}: worst ", c(worst[0]),
                        f" SNR {f_snr(worst[1]['snr_db'])} dB, cosine {f_cos(worst[1]['cosine'])} "
                        f"(built-in simulator: {f_snr((worst[2] or {}).get('snr_db'))} dB)"))
    if q.get("calib"):
        mapping = cmp["quant"].get("calib_mapping") or {}
        extra = ""
        if mapping:
            extra = (f" — {mapping.get('matched', 0)} records matched, "
                     f"{len(mapping.get('unmatched_records', []))} unmatched, "
                     f"{len(mapping.get('nodes_without_record', []))} ops without a record")
        items.append(il(b("Calibration file: "), c(q["calib"]), extra))
    if ctx.kind == "bisect":
        tgt = doc["target"]
        items.append(il(b("Target: "), c(tgt["expression"]),
                        " (assumed default: pass --target to set yours)" if tgt.get("assumed_default") else ""))
    sens = sensitive_ops(ctx, 5)
    if sens:
        items.append(il(b("Sensitive ops: "), join([il(c(k), f" ({t}; {why})") for k, t, why in sens], ", ")))
    if ctx.kind == "bisect":
        cut = doc["first_bad_cut"]
        if cut["tensor"]:
            ref = cut["tensor"] + (f".{cut['part']}" if cut.get("part") else "")
            items.append(il(b("First bad cut: "), c(ref), " at ", c(cut["node"] or "?"),
                            f" ({cut['op_type']}, #{cut['index']}): {cut['metric']} "
                            f"{f_metric(cut['metric'], cut['value'])} fails {f_bound(cut_op(doc), cut['bound'])}"))
        else:
            items.append(il(b("First bad cut: "), f"none (every tensor passes {cut['metric']} "
                            f"{f_bound(cut_op(doc), cut['bound'])})"))
        res = doc["result"]
        if res["set"]:
            moves = []
            refs_b, refs_a = dict(output_refs(cmp)), dict(output_refs(ctx.after)) if ctx.after else {}
            for cl in doc["target"]["clauses"]:
                k = clause_key(cl)
                snr = ""
                if cl["metric"] != "snr_db" and cl["ref"] in refs_b and cl["ref"] in refs_a:
                    snr = (f" (SNR {f_snr(refs_b[cl['ref']]['snr_db'])} → {f_snr(refs_a[cl['ref']]['snr_db'])} dB)")
                moves.append(il(clause_ref(cl), f" {cl['metric']} {f_metric(cl['metric'], res['before'].get(k))} → "
                                f"{f_metric(cl['metric'], res['after'].get(k))}{snr}"))
            shown = join([il(c(k)) for k in res["set"][:6]])
            more = f" +{len(res['set']) - 6} more (full list below)" if len(res["set"]) > 6 else ""
            items.append(il(b("Recommended promotion: "), shown, more,
                            f" → {doc['promote_precision']}; ", join(moves, "; ")))
        elif res["met"]:
            items.append(il(b("Recommended promotion: "), "none needed"))
        else:
            items.append(il(b("Recommended promotion: "), "none found (see the evaluation log)"))
    else:
        nxt = next_bisect_command(doc)
        if default_failures(cmp) and nxt:
            items.append(il(b("Next step: "), c(nxt), " finds the smallest set of ops to keep at int16"))
    out.append(Bullets(items))
    cmd = reproduce(doc)
    if cmd:
        out.append(Para(il(b("Reproduce"), f" (qdebug {doc.get('qdebug_version', '?')}, run from the folder the "
                           "original command ran in; paths are relative to it):")))
        out.append(Code(cmd, "sh"))
    if ctx.kind == "bisect" and doc["result"]["set"]:
        ex = doc.get("exports") or {}
        pf = doc.get("patched_file") or {}
        line = (pf.get("extra") or {}).get("atc_option") or ex.get("atc")
        if pf.get("path"):
            out.append(Para(il(b("Apply the fix: "), "build with the patched calibration file ", c(pf["path"]),
                               " (diff below)", "; ATC option:" if line else ".")))
            if line:
                out.append(Code(line.strip(), "sh"))
        elif ex:
            out.append(Para(il(b("Apply the fix: "), "pass the promotion set to your toolchain; "
                               "the syntax for each one is under ", Span("link", "Export lists", "#export-lists"),
                               ".")))
    return out


def _describe_quant(q: dict) -> Inline:
    """The quantization scheme in one line: activations, calibration, weights, profile, overrides."""
    s = q["scheme"]
    act = f"{s['activation']} activations ({'symmetric' if s.get('symmetric_activations') else 'asymmetric'}, "
    cal = s["calibrator"] + (f" {s['percentile']:g} %" if s.get("percentile") else "")
    weights = (f"int8 weights ({'per-channel' if s.get('per_channel_weights', True) else 'per-tensor'}, "
               f"{'symmetric' if s.get('symmetric_weights', True) else 'asymmetric'})")
    where = {"input": "each op quantizes its inputs", "output": "int at every op output"}.get(
        q.get("quantize_at", ""), "")
    prof = il("simulator profile ", c(q.get("profile") or s.get("profile", "?")),
              f" ({where}{', fused' if q.get('fuse') else ''})" if where else "")
    parts: list[Any] = [f"{act}{cal} calibration), {weights}; ", prof]
    if q.get("backend") and q["backend"] != "sim":
        parts = [il("backend ", c(q["backend"]), "; "), *parts]
    ov = q.get("overrides") or {}
    if ov:
        shown = join([il(c(f"{k}={v}")) for k, v in list(ov.items())[:5]])
        parts += [f"; overrides ({len(ov)}): ", shown, f" +{len(ov) - 5} more" if len(ov) > 5 else ""]
    return il(*parts)


def _describe_inputs(smp: dict) -> Inline:
    """The input set in one line: source, count and preprocessing."""
    kind = smp.get("kind", "")
    pre = smp.get("preprocess") or {}
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
    desc = f" — {smp['count']} {noun}"
    return il(c(smp["source"]), desc, f" ({', '.join(x for x in bits if x)})" if bits else "")


def next_bisect_command(doc: dict) -> str:
    """The compare command turned into the bisect command that finds the promotion set: from the run's
    resolved options when the result carries them (only options bisect accepts), else from the saved command."""
    if isinstance(doc.get("spec"), dict) and doc.get("schema") == "qdebug.compare/1":
        return RunSpec.from_json(doc["spec"]).command_line("bisect")
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
