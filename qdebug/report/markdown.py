"""The report's content as a small block tree, and its GitHub-flavoured Markdown rendering.

`build_blocks` turns a validated compare/bisect document into blocks (headings, paragraphs, tables,
code, images, collapsible <details>); `to_markdown` renders them for GitHub/GitLab issues and
`qdebug.report.html.to_html` renders the same blocks as one self-contained page. Inline text is a
tuple of spans so each renderer escapes for its own context (a `|` inside a table cell, `<` in HTML).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from qdebug.report.format import (  # noqa: F401  (re-exported for the sections)
    SNR_INF,
    f_bound,
    f_cos,
    f_det,
    f_g,
    f_jump,
    f_metric,
    f_pct,
    f_secs,
    f_snr,
    num,
)

GITHUB_LIMIT = 65_536  # characters GitHub accepts in an issue body or comment


# ------------------------------------------------------------------------------ model
class Span(NamedTuple):
    """One run of inline text: kind is text | code | bold | good | bad | link (a relative file link)."""

    kind: str
    text: str
    target: str = ""


Inline = tuple[Span, ...]


def il(*parts: str | Span | Inline | None) -> Inline:
    """Build inline text from plain strings, spans and other inline tuples (None is skipped)."""
    out: list[Span] = []
    for p in parts:
        if p is None:
            continue
        if isinstance(p, Span):
            out.append(p)
        elif isinstance(p, str):
            if p:
                out.append(Span("text", p))
        else:
            out.extend(p)
    return tuple(out)


def c(text: str) -> Span:
    """Inline code (op names, tensor names, commands)."""
    return Span("code", text)


def b(text: str) -> Span:
    """Bold text."""
    return Span("bold", text)


def good(text: str) -> Span:
    """A passing verdict (bold; green in HTML)."""
    return Span("good", text)


def bad(text: str) -> Span:
    """A failing verdict (bold; red in HTML)."""
    return Span("bad", text)


def join(items: list[Inline | Span | str], sep: str = ", ") -> Inline:
    """Inline items separated by `sep`."""
    out: list[Span | Inline | str] = []
    for k, item in enumerate(items):
        if k:
            out.append(sep)
        out.append(item)
    return il(*out)


@dataclass
class Heading:
    level: int
    text: str
    anchor: str = ""


@dataclass
class Para:
    text: Inline


@dataclass
class Quote:
    text: Inline


@dataclass
class Bullets:
    items: list[Inline]


@dataclass
class Table:
    header: list[str]
    rows: list[list[Inline]]
    align: str = ""  # one char per column: l | r | c


@dataclass
class Code:
    text: str
    lang: str = ""


@dataclass
class Image:
    file: str
    alt: str
    caption: str = ""


@dataclass
class Details:
    summary: str
    blocks: list[Any] = field(default_factory=list)


Block = Heading | Para | Quote | Bullets | Table | Code | Image | Details


# ------------------------------------------------------------------------- rendering
_MD_ESC = re.compile(r"([\\`*\[\]<>|~])")


def md_text(s: str) -> str:
    """Escape plain text for Markdown (no accidental emphasis, links, HTML or table breaks).

    Only what could trigger markup is escaped, so the raw text stays readable (`snr_db`, `#105`).
    """
    s = _MD_ESC.sub(r"\\\1", s)
    s = re.sub(r"(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])", r"\\_", s)  # intraword _ is never emphasis in GFM
    s = re.sub(r"&(?=#?\w+;)", r"\\&", s)
    s = re.sub(r"^(\s*)(#)", r"\1\\\2", s)
    s = re.sub(r"^(\s*)([-+])(\s)", r"\1\\\2\3", s)
    return re.sub(r"^(\s*\d+)([.)])(\s)", r"\1\\\2\3", s)


def md_code(s: str, in_table: bool = False) -> str:
    """A code span that survives any backticks inside (and pipes inside table cells)."""
    s = " ".join(s.split("\n"))
    run = max((len(m) for m in re.findall(r"`+", s)), default=0)
    fence = "`" * (run + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or (s.startswith(" ") and s.endswith(" ") and s.strip()) else ""
    if in_table:
        s = s.replace("|", "\\|")
    return f"{fence}{pad}{s}{pad}{fence}"


def md_inline(text: Inline, in_table: bool = False) -> str:
    """Render inline spans as Markdown (adjacent bold spans merged, spaces kept outside `**`)."""
    merged: list[Span] = []
    for sp in text:
        kind = "bold" if sp.kind in ("good", "bad") else sp.kind
        if merged and kind == "bold" and merged[-1].kind == "bold":
            merged[-1] = Span("bold", merged[-1].text + sp.text)
        else:
            merged.append(Span(kind, sp.text, sp.target))
    out = []
    for sp in merged:
        if sp.kind == "code":
            out.append(md_code(sp.text, in_table) if sp.text else "")
        elif sp.kind == "bold":
            core = sp.text.strip()
            if not core:
                out.append(md_text(sp.text))
                continue
            lead = sp.text[: len(sp.text) - len(sp.text.lstrip())]
            trail = sp.text[len(sp.text.rstrip()):]
            out.append(f"{lead}**{md_text(core)}**{trail}")
        elif sp.kind == "link":
            out.append(f"[{md_text(sp.text)}]({sp.target})")
        else:
            out.append(md_text(sp.text))
    s = "".join(out).replace("\n", " ")
    return s if s.strip() else ("–" if in_table else s)


def _md_table(t: Table) -> str:
    n = len(t.header)
    align = (t.align or "l" * n).ljust(n, "l")
    sep = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(md_text(h) or " " for h in t.header) + " |",
             "|" + "|".join(sep[a] for a in align) + "|"]
    for row in t.rows:
        cells = [md_inline(cell, in_table=True) for cell in row] + ["–"] * (n - len(row))
        lines.append("| " + " | ".join(cells[:n]) + " |")
    return "\n".join(lines)


def _md_block(blk: Block) -> str:
    if isinstance(blk, Heading):
        return "#" * blk.level + " " + md_text(blk.text)
    if isinstance(blk, Para):
        return md_inline(blk.text)
    if isinstance(blk, Quote):
        return "> " + md_inline(blk.text)
    if isinstance(blk, Bullets):
        return "\n".join("- " + md_inline(i) for i in blk.items)
    if isinstance(blk, Table):
        return _md_table(blk)
    if isinstance(blk, Code):
        run = max((len(m) for m in re.findall(r"`{3,}", blk.text)), default=2)
        fence = "`" * (run + 1)
        return f"{fence}{blk.lang}\n{blk.text.rstrip(chr(10))}\n{fence}"
    if isinstance(blk, Image):
        img = f"![{md_text(blk.alt)}]({blk.file})"
        return img + (f"\n\n*{md_text(blk.caption)}*" if blk.caption else "")
    if isinstance(blk, Details):
        inner = "\n\n".join(_md_block(x) for x in blk.blocks)
        # blank line after </summary> so GitHub renders the Markdown inside
        return f"<details>\n<summary>{_html_summary(blk.summary)}</summary>\n\n{inner}\n\n</details>"
    raise TypeError(f"unknown block {blk!r}")


def _html_summary(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_markdown(blocks: list[Block]) -> str:
    """Render blocks as GitHub-flavoured Markdown (tables, ```diff fences, <details> only as raw HTML)."""
    return "\n\n".join(_md_block(x) for x in blocks).rstrip() + "\n"


# --------------------------------------------------------------------------- content
@dataclass
class Ctx:
    """Everything the content builder needs besides the document."""

    doc: dict
    images: list[tuple[str, str, str, str]] = field(default_factory=list)  # (group, file, alt, caption)
    notes: list[str | Inline] = field(default_factory=list)
    det_notes: list[str | Inline] = field(default_factory=list)  # about the detection pictures
    top: int = 15

    @property
    def kind(self) -> str:
        return "bisect" if self.doc["schema"].startswith("qdebug.bisect") else "compare"

    @property
    def before(self) -> dict:
        return self.doc["compare_before"] if self.kind == "bisect" else self.doc

    @property
    def after(self) -> dict | None:
        return self.doc.get("compare_after") if self.kind == "bisect" else None


def _rows_by_tensor(cmp: dict | None) -> dict[str, dict]:
    return {t["tensor"]: t for t in cmp["tensors"]} if cmp else {}


def output_refs(cmp: dict) -> list[tuple[str, dict]]:
    """(ref, cumulative metrics) of every graph output and output part, e.g. ('output0.score', {...})."""
    out = []
    for o in cmp["outputs"]:
        out.append((o["tensor"], o["cumulative"]))
        for p in o["parts"]:
            out.append((f"{p['tensor']}.{p['part']}", p["cumulative"]))
    return out


def default_failures(cmp: dict) -> list[tuple[str, dict]]:
    """Outputs/parts failing the bisect default target (cosine ≥ 0.999 on every part, else the output)."""
    fails = []
    for o in cmp["outputs"]:
        checks = [(f"{p['tensor']}.{p['part']}", p["cumulative"]) for p in o["parts"]] or \
                 [(o["tensor"], o["cumulative"])]
        for ref, m in checks:
            if m["cosine"] is None or m["cosine"] < 0.999:
                fails.append((ref, m))
    return fails


def _op_index(cmp: dict, key: str) -> int | None:
    """Topological index of an op (QuantOp key or node name)."""
    for t in cmp["tensors"]:
        if t.get("group") == key or t["node"] == key:
            return int(t["index"])
    return None


def _groups_of(cmp: dict) -> dict[str, str]:
    """node name -> QuantOp key."""
    out = {}
    for g in cmp["quant"].get("groups", []):
        for n in g.get("nodes", []) or [g["key"]]:
            out[n] = g["key"]
    return out


def sensitive_ops(ctx: Ctx, n: int = 5) -> list[tuple[str, str, str]]:
    """(op key, op type, reason) of the most sensitive ops: bisect ranking, else hazards then jumps."""
    if ctx.kind == "bisect":
        out = []
        for r in ctx.doc["ranking"][:n]:
            e = r["evidence"]
            why = ", ".join(e["hazards"]) if e["hazards"] else f"jump {f_jump(e['jump_db'])} dB"
            out.append((r["op"], r["op_type"], why))
        return out
    cmp = ctx.before
    groups = _groups_of(cmp)
    gtype = {g["key"]: g["op_type"] for g in cmp["quant"].get("groups", [])}
    hazards: dict[str, list[str]] = {}
    for h in cmp["hazards"]:
        hazards.setdefault(groups.get(h["node"], h["node"]), []).append(h["kind"])
    # the bisect ranking formula over quantized op outputs: hazard bonus + jump + isolated error
    ops: dict[str, dict] = {}
    for t in cmp["tensors"]:
        if t["index"] < 0 or not t.get("quantized"):
            continue
        key = t.get("group") or t["node"]
        o = ops.setdefault(key, {"type": gtype.get(key, t["op_type"]), "jump": 0.0, "iso": None})
        if t["jump_db"] is not None:
            o["jump"] = max(o["jump"], t["jump_db"])
        iso = t["isolated"]["snr_db"]
        if iso is not None:
            o["iso"] = iso if o["iso"] is None else min(o["iso"], iso)
    for key in hazards:
        if key not in ops:
            row = next((t for t in cmp["tensors"] if t.get("group") == key or t["node"] == key), None)
            ops[key] = {"type": gtype.get(key, row["op_type"] if row else "?"), "jump": 0.0, "iso": None}
    for o in ops.values():
        iso = o["iso"] if o["iso"] is not None else 40.0
        o["score"] = max(0.0, o["jump"]) + 0.5 * max(0.0, 40.0 - iso)
    order = sorted(ops, key=lambda k: (not hazards.get(k), -ops[k]["score"], k))
    seen: dict[str, tuple[str, str, str]] = {}
    for key in order:
        o = ops[key]
        if not hazards.get(key) and o["score"] <= 0:
            break
        why = ", ".join(hazards[key]) if hazards.get(key) else f"jump {f_jump(o['jump'])} dB"
        seen[key] = (key, o["type"], why)
    return list(seen.values())[:n]


def why_ops(ctx: Ctx, n: int = 3) -> list[tuple[str, str]]:
    """(op key, reason) for the why-plots: the promotion set first, then the most sensitive ops."""
    chosen: list[tuple[str, str]] = []
    if ctx.kind == "bisect":
        rank = {r["op"]: r for r in ctx.doc["ranking"]}
        for k in ctx.doc["result"]["set"]:
            r = rank.get(k)
            hz = ", ".join(r["evidence"]["hazards"]) if r and r["evidence"]["hazards"] else ""
            chosen.append((k, f"promoted; {hz}" if hz else "promoted"))
    for key, _typ, why in sensitive_ops(ctx, 10):
        if len(chosen) >= n:
            break
        if key not in {k for k, _ in chosen}:
            chosen.append((key, why))
    return chosen[:n]


def _describe_quant(q: dict) -> Inline:
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


def _reproduce(doc: dict) -> str:
    return (doc.get("command") or "").strip()


def _next_bisect_command(doc: dict) -> str:
    """The compare command turned into the bisect command that finds the promotion set."""
    cmd = _reproduce(doc)
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


def _metric_row(ref: str, before: dict, after: dict | None, crit: tuple[str, str, float] | None,
                value_before: float | None = None, value_after: float | None = None) -> list[Inline]:
    row: list[Inline] = [il(c(ref)), il(f_snr(before["snr_db"])), il(f_cos(before["cosine"])),
                         il(f_g(before["max_abs"]))]
    if after is not None:
        row += [il(f_snr(after["snr_db"])), il(f_cos(after["cosine"])), il(f_g(after["max_abs"]))]
    if crit is not None:
        metric, op, bound = crit
        row.append(il(f"{metric} {f_bound(op, bound)}"))
        from qdebug.search.target import OPS

        def verdict(v: float | None) -> Span:
            return good("pass") if v is not None and OPS[op](v, bound) else bad("FAIL")

        vb = value_before if value_before is not None else before.get(metric)
        row.append(il(verdict(vb)))
        if after is not None:
            va = value_after if value_after is not None else after.get(metric)
            row.append(il(verdict(va)))
    else:
        row += [il("–"), il("–")] + ([il("–")] if after is not None else [])
    return row


def build_blocks(ctx: Ctx) -> list[Block]:
    """The whole report as blocks: headline, plots, tables, vendor file, exports, environment, appendix."""
    doc, cmp, after = ctx.doc, ctx.before, ctx.after
    blocks: list[Block] = []
    model = doc["model"]
    name = (model.get("path") or "model").replace("\\", "/").rsplit("/", 1)[-1]
    blocks.append(Heading(1, f"Quantization report: {name}"))
    blocks += _headline(ctx)
    blocks.append(Quote(il(b("Metrics"), ": SNR = 10·log10(Σx² / Σ(x − y)²) in dB between the float value x and the "
                           "quantized value y, ", b("higher is better"), " (int8 that uses its range well: 35–45 dB; "
                           "below 20 dB a tensor is badly damaged); cosine → 1 is better. ", b("cumulative"),
                           " = whole model quantized; ", b("isolated"), " = only this op quantized, float inputs; ",
                           b("jump"), " = dB lost at this op.")))
    # outputs
    blocks.append(Heading(2, "Outputs"))
    blocks += _outputs_table(ctx)
    blocks += _detection(ctx)
    # plots
    blocks.append(Heading(2, "Plots"))
    for group, file, alt, caption in ctx.images:
        if group != DETECTION_GROUP:
            blocks.append(Image(file, alt, caption))
    for n in ctx.notes:
        blocks.append(Para(il(b("Note: "), n)))
    # sensitive ops and worst ops
    if ctx.kind == "bisect":
        blocks += _promotion_set(ctx)
        blocks += _ranking(ctx)
    blocks += _worst_ops(ctx)
    blocks += _hazards(cmp)
    blocks += _vendor_sim(ctx)
    if ctx.kind == "bisect":
        blocks += _first_bad_cut(ctx)
        blocks += _evaluation_log(ctx)
        blocks += _toolkit_proposal(ctx)
        blocks += _vendor_file(ctx)
        blocks += _exports(ctx)
    blocks += _warnings(ctx)
    blocks += _environment(ctx)
    blocks += _appendix(ctx, after)
    return blocks


def _headline(ctx: Ctx) -> list[Block]:
    doc, cmp = ctx.doc, ctx.before
    out: list[Block] = []
    model = doc["model"]
    q = doc["quant"]
    items: list[Inline] = []
    if ctx.kind == "bisect":
        res = doc["result"]
        tgt = doc["target"]
        fails = [cl for cl in tgt["clauses"] if not _passes(cl, res["before"].get(_clause_key(cl)))]
        fail_txt = join([il(_clause_ref(cl), f" {cl['metric']} {f_metric(cl['metric'], res['before'].get(_clause_key(cl)))}"
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
    det_line = _detection_headline(ctx)
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
        vrefs = _vendor_refs(vendor)
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
                            f"{f_metric(cut['metric'], cut['value'])} fails {f_bound(_cut_op(doc), cut['bound'])}"))
        else:
            items.append(il(b("First bad cut: "), f"none (every tensor passes {cut['metric']} "
                            f"{f_bound(_cut_op(doc), cut['bound'])})"))
        res = doc["result"]
        if res["set"]:
            moves = []
            refs_b, refs_a = dict(output_refs(cmp)), dict(output_refs(ctx.after)) if ctx.after else {}
            for cl in doc["target"]["clauses"]:
                k = _clause_key(cl)
                snr = ""
                if cl["metric"] != "snr_db" and cl["ref"] in refs_b and cl["ref"] in refs_a:
                    snr = (f" (SNR {f_snr(refs_b[cl['ref']]['snr_db'])} → {f_snr(refs_a[cl['ref']]['snr_db'])} dB)")
                moves.append(il(_clause_ref(cl), f" {cl['metric']} {f_metric(cl['metric'], res['before'].get(k))} → "
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
        nxt = _next_bisect_command(doc)
        if default_failures(cmp) and nxt:
            items.append(il(b("Next step: "), c(nxt), " finds the smallest set of ops to keep at int16"))
    out.append(Bullets(items))
    cmd = _reproduce(doc)
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


def _cut_op(doc: dict) -> str:
    m = re.match(r"^\s*\w+\s*(>=|<=|>|<)", (doc.get("target") or {}).get("cut_threshold") or "")
    return m.group(1) if m else ">="


def _clause_key(cl: dict) -> str:
    """The key of a clause's value in `result.before/after` and `evaluations[].values` (Clause.text())."""
    head = f"{cl['ref']}:" if cl.get("tensor") or cl.get("ref") != "task" else ""
    return f"{head}{cl['metric']}{cl['op']}{cl['bound']:g}"


def _clause_ref(cl: dict) -> Inline:
    """How a clause's subject reads in prose: the tensor/part in code, or "detections" for task metrics."""
    return il("detections") if not cl.get("tensor") and cl.get("ref") == "task" else il(c(cl["ref"]))


def _passes(cl: dict, v: float | None) -> bool:
    from qdebug.search.target import OPS

    return v is not None and bool(OPS[cl["op"]](v, cl["bound"]))


def _outputs_table(ctx: Ctx) -> list[Block]:
    cmp, after = ctx.before, ctx.after
    amap = dict(output_refs(after)) if after else {}
    crit: dict[str, tuple[str, str, float]] = {}
    vals: dict[str, tuple[float | None, float | None]] = {}
    if ctx.kind == "bisect":
        res = ctx.doc["result"]
        for cl in ctx.doc["target"]["clauses"]:
            if cl.get("tensor"):
                crit[cl["ref"]] = (cl["metric"], cl["op"], cl["bound"])
                k = _clause_key(cl)
                vals[cl["ref"]] = (res["before"].get(k), res["after"].get(k))
    else:
        for o in cmp["outputs"]:
            refs = [f"{p['tensor']}.{p['part']}" for p in o["parts"]] or [o["tensor"]]
            for r in refs:
                crit[r] = ("cosine", ">=", 0.999)
    header = ["output / part", "SNR dB", "cosine", "max abs"]
    has_after = after is not None
    if has_after:
        header = ["output / part", "SNR before", "cosine before", "max abs before", "SNR after", "cosine after",
                  "max abs after", "target", "before", "after"]
    else:
        header += ["criterion", "verdict"]
    rows = []
    for ref, m in output_refs(cmp):
        vb, va = vals.get(ref, (None, None))
        rows.append(_metric_row(ref, m, amap.get(ref, {"snr_db": None, "cosine": None, "max_abs": None})
                                if has_after else None, crit.get(ref), vb, va))
    nverdict = 3 if has_after else 2
    blocks: list[Block] = [Table(header, rows, "l" + "r" * (len(header) - 1 - nverdict) + "l" * nverdict)]
    if ctx.kind == "compare":
        blocks.append(Para(il("Criterion: the default target of ", c("qdebug bisect"),
                              " (cosine ≥ 0.999 on every output part); set your own with ", c("--target"), ".")))
    return blocks


# ------------------------------------------------------------------------- detection
DETECTION_GROUP = "detection"  # ctx.images group of the float-vs-quantized pictures
DET_CLASSES_INLINE = 5  # per-class tables with more classes are collapsed


def _map_span(v: Any, spec: str = ".3f") -> Span | str:
    """mAP50-95 vs float, marked like the terminal: ≥ 0.9 good, < 0.7 bad, in between plain."""
    x = num(v)
    if x is None:
        return "–"
    text = format(x, spec)
    return good(text) if x >= 0.9 else bad(text) if x < 0.7 else text


def detection_section(doc: dict) -> dict | None:
    """The `detection` section of a compare/bisect result (None when absent or not a usable object)."""
    det = doc.get("detection")
    return det if isinstance(det, dict) and isinstance(det.get("quantized"), dict) else None


def _det_runs(det: dict) -> list[tuple[str, dict]]:
    """(label, side) of the quantized and, when present, the promoted run."""
    runs = [("quantized", det["quantized"])]
    if isinstance(det.get("promoted"), dict):
        runs.append(("promoted", det["promoted"]))
    return runs


def _promoted_label(det: dict) -> str:
    ov = (det.get("promoted") or {}).get("overrides") or {}
    if not ov:
        return "promoted"
    precs = sorted(set(map(str, ov.values())))
    return f"promoted ({len(ov)} op{'s' * (len(ov) != 1)} → {'/'.join(precs)})"


def _detection_headline(ctx: Ctx) -> Inline | None:
    """The headline bullet: mAP50-95 vs float and the share of lost detections (before → after promotion)."""
    det = detection_section(ctx.doc)
    if det is None:
        return None
    q = det["quantized"]
    p = det.get("promoted") if isinstance(det.get("promoted"), dict) else None
    qm, qc = q.get("metrics") or {}, q.get("counts") or {}
    nfloat = (det.get("float") or {}).get("detections")
    what = il(b("Detections"), f" ({det.get('task', '?')}, {det.get('images', '?')} images, the float model's "
              "detections as reference): ")
    floats = f" of {nfloat:,} float detections" if isinstance(nfloat, int) else ""
    if p is not None:
        pm, pc = p.get("metrics") or {}, p.get("counts") or {}
        body = il("mAP50-95 vs float ", _map_span(qm.get("map50_95_vs_float"), ".2f"), " → ",
                  _map_span(pm.get("map50_95_vs_float"), ".2f"), " after promotion; ",
                  f"{f_pct(qm.get('lost_frac'))} lost → {f_pct(pm.get('lost_frac'))} lost{floats}, "
                  f"added {qc.get('added', '–')} → {pc.get('added', '–')}")
    else:
        body = il("mAP50-95 vs float ", _map_span(qm.get("map50_95_vs_float"), ".2f"),
                  f" (mAP50 {f_det(qm.get('map50_vs_float'), '.2f')}); {f_pct(qm.get('lost_frac'))} lost{floats}, "
                  f"{qc.get('added', '–')} added")
    lab = det.get("labels")
    if isinstance(lab, dict) and isinstance(lab.get("map50_95"), dict):
        vals = lab["map50_95"]
        runs = [k for k in ("float", "quantized", "promoted") if k in vals]
        body = il(body, "; true mAP50-95 ", ", ".join(f"{k} {f_det(vals[k])}" for k in runs))
    return il(what, body, " (", Span("link", "details", "#detection-verdict"), ")")


def _detection(ctx: Ctx) -> list[Block]:
    """The "Detection verdict" section: decoder, agreement table, true mAP, per class, warnings, pictures."""
    det = detection_section(ctx.doc)
    if det is None:
        return []
    d = det.get("decoder") or {}
    th = det.get("thresholds") or {}

    def g(v: Any, default: str = "?") -> str:
        x = num(v)
        return default if x is None else f"{x:g}"

    outs = d.get("outputs") or []
    dec = il("Decoder ", c(str(det.get("task") or d.get("name") or "?")), f" ({d.get('layout', '?')} layout",
             f", {d['nc']} classes" if isinstance(d.get("nc"), int) else "",
             il(", outputs ", join([il(c(str(o))) for o in outs[:4]]), f" +{len(outs) - 4} more" if len(outs) > 4
                else "") if outs else None,
             f"); confidence ≥ {g(th.get('conf'))}, NMS IoU {g(th.get('nms_iou'))}, at most "
             f"{th.get('max_det', '?')} detections per image; {det.get('images', '?')} images, boxes in "
             f"{th.get('coords', 'image pixels')}. The float model's detections are the reference: quantized "
             f"detections match them at IoU ≥ {g(th.get('match_iou'), '0.5')} with the same class, and mAP is the "
             "COCO mAP over IoU 0.50:0.95 with the float detections as ground truth.")
    out: list[Block] = [Heading(2, "Detection verdict"), Para(dec)]
    header = ["run", "dets", "mAP50-95", "mAP50", "recall", "lost", "added", "flips", "mean IoU", "Δscore"]
    fl = (det.get("float") or {}).get("detections")
    rows: list[list[Inline]] = [[il("float (reference)"), il(str(fl) if fl is not None else "–"), il("1.000"),
                                 il("1.000"), il("1.000"), il("–"), il("–"), il("–"), il("–"), il("–")]]
    for name, side in _det_runs(det):
        m, cnt = side.get("metrics") or {}, side.get("counts") or {}
        lost = cnt.get("lost")
        label = _promoted_label(det) if name == "promoted" else name
        iou, shift = num(cnt.get("mean_iou")), num(cnt.get("mean_score_shift"))
        rows.append([il(label), il(str(side.get("detections", "–"))), il(_map_span(m.get("map50_95_vs_float"))),
                     il(f_det(m.get("map50_vs_float"))), il(f_det(m.get("recall_vs_float"))),
                     il(f"{lost} ({f_pct(m.get('lost_frac'))})" if lost is not None else "–"),
                     il(str(cnt.get("added", "–"))), il(str(cnt.get("class_flips", "–"))),
                     il("–" if iou is None else f"{iou:.2f}"), il("–" if shift is None else f"{shift:+.2f}")])
    out.append(Table(header, rows, "lrrrrrrrrr"))
    out.append(Para(il("mAP50-95, mAP50 and recall (COCO AR) against the float detections (",
                       good("≥ 0.9"), " fine, ", bad("< 0.7"), " broken); lost: float detections without a "
                       "match, added: quantized detections without one (IoU ≥ 0.5); flips: lost to a box of another "
                       "class; mean IoU and Δscore (quantized − float confidence) over matched pairs.")))
    lab = det.get("labels")
    if isinstance(lab, dict) and isinstance(lab.get("map50_95"), dict):
        runs = [k for k in ("float", "quantized", "promoted") if k in lab["map50_95"]]
        out.append(Para(il(b("True mAP"), f" against {lab.get('format', '?')} labels ", c(str(lab.get("source", "?"))),
                           f" ({lab.get('images', '?')} labelled images, {lab.get('objects', '?')} objects; COCO "
                           "protocol, pycocotools):")))
        lrows = [[il(title), *(il(f_det((lab.get(m) or {}).get(k))) for k in runs)]
                 for m, title in (("map50_95", "mAP50-95"), ("map50", "mAP50"), ("recall", "AR@100"))]
        out.append(Table(["metric", *[_promoted_label(det) if k == "promoted" else k for k in runs]], lrows,
                         "l" + "r" * len(runs)))
    out += _det_per_class(det)
    warns = [w for w in det.get("warnings") or [] if isinstance(w, str)]
    if warns:
        out.append(Bullets([il(b("warning: "), w) for w in warns]))
    pics = [(file, alt, cap) for group, file, alt, cap in ctx.images if group == DETECTION_GROUP]
    if pics:
        out.append(Para(il("Examples: the images with the most lost and added detections. Float boxes are green "
                           "(thick with a \"lost\" tag when the run lost them), the run's boxes red and dashed (an "
                           "\"added\" tag when float has no match).")))
        for file, alt, cap in pics:
            out.append(Image(file, alt, cap))
    for n in ctx.det_notes:
        out.append(Para(il(b("Note: "), n)))
    return out


def _det_per_class(det: dict) -> list[Block]:
    """Per-class agreement (classes with float support), worst quantized AP50-95 first."""
    q = [r for r in det["quantized"].get("per_class") or [] if isinstance(r, dict) and r.get("float")]
    if len(q) < 2:  # one class: the run table above says it all
        return []
    prom = {r.get("class"): r for r in (det.get("promoted") or {}).get("per_class") or [] if isinstance(r, dict)} \
        if isinstance(det.get("promoted"), dict) else None

    def worst(r: dict) -> tuple[float, int]:
        ap = num(r.get("ap50_95"))
        return (ap if ap is not None else 1.0, -(r.get("float") or 0))

    q.sort(key=worst)
    header = ["class", "float", "quantized", "AP50-95", "AP50", "lost", "added"]
    if prom is not None:
        header += ["promoted AP50-95", "promoted lost"]
    rows = []
    for r in q:
        row = [il(c(str(r.get("name", r.get("class", "?"))))), il(str(r.get("float", "–"))),
               il(str(r.get("quantized", "–"))), il(_map_span(r.get("ap50_95"))), il(f_det(r.get("ap50"))),
               il(str(r.get("lost", "–"))), il(str(r.get("added", "–")))]
        if prom is not None:
            pr = prom.get(r.get("class")) or {}
            row += [il(_map_span(pr.get("ap50_95"))), il(str(pr.get("lost", "–")))]
        rows.append(row)
    table = Table(header, rows, "l" + "r" * (len(header) - 1))
    title = f"Per class ({len(rows)} classes with float detections, worst quantized AP50-95 first)"
    if len(rows) > DET_CLASSES_INLINE:
        return [Details(title, [table])]
    return [Para(il(title + ":")), table]


_BISECT_ONLY = {"--target": 1, "--promote-dtype": 1, "--cut-search": 1, "--cut-threshold": 1, "-o": 1,
                "--output": 1, "--format": 1, "--json": 1, "--report": 1, "-q": 0, "--quiet": 0}


def verify_command(doc: dict) -> str:
    """The bisect command turned into `qdebug compare` with the promotion set as --override flags."""
    try:
        argv = shlex.split(_reproduce(doc))
    except ValueError:
        return ""
    if len(argv) < 2 or argv[1] != "bisect" or not doc["result"]["set"]:
        return ""
    pf = doc.get("patched_file") or {}
    drop = dict(_BISECT_ONLY, **({"--calib": 1} if pf.get("path") else {}))
    out, skip = ["qdebug", "compare"], 0
    for a in argv[2:]:
        if skip:
            skip -= 1
            continue
        head = a.split("=", 1)[0]
        if head in drop:
            skip = drop[head] if "=" not in a else 0
            continue
        out.append(a)
    if pf.get("path"):  # check what will be deployed: the patched vendor file
        out += ["--calib", f"{pf['format']}:{pf['path']}"]
    else:
        prec = doc["promote_precision"]
        out += [f"--override={k}={prec}" for k in doc["result"]["set"]]
    return " ".join(shlex.quote(a) for a in out)


def _promotion_set(ctx: Ctx) -> list[Block]:
    doc = ctx.doc
    res = doc["result"]
    if not res["set"]:
        return []
    rank = {r["op"]: r for r in doc["ranking"]}
    groups = {g["key"]: g for g in ctx.before["quant"].get("groups", [])}
    rows = []
    for k in res["set"]:
        r = rank.get(k)
        e = r["evidence"] if r else {}
        nodes = (r["nodes"] if r else groups.get(k, {}).get("nodes")) or [k]
        rows.append([il(c(k)), il(r["op_type"] if r else groups.get(k, {}).get("op_type", "?")),
                     il(str(r["rank"]) if r else "–"), il(f_jump(e.get("jump_db"))), il(f_snr(e.get("isolated_snr_db"))),
                     il(", ".join(e.get("hazards") or []) or "–"),
                     il(str(len(nodes)) + (" (" + ", ".join(n.rsplit("/", 1)[-1] for n in nodes[1:4]) + ")"
                                           if len(nodes) > 1 else ""))])
    out: list[Block] = [Heading(2, "Recommended promotion set"),
                        Para(il(f"Keep these {len(res['set'])} op(s) at {doc['promote_precision']} (everything else "
                                f"stays at {doc['quant']['scheme']['activation']}); verified by a full comparison "
                                "with the set applied:")),
                        Table(["op", "type", "rank", "jump dB", "iso SNR", "hazards", "ONNX nodes"], rows,
                              "llrrrll")]
    out.append(Para(il("The same names (the anchor ONNX node of each fused op), one per line, for tools that take "
                       "a list; per-toolchain syntax is under ", Span("link", "Export lists", "#export-lists"), ":")))
    out.append(Code("\n".join(res["set"])))
    cmd = verify_command(doc)
    if cmd:
        what = "the patched vendor file" if (doc.get("patched_file") or {}).get("path") else "the set"
        out.append(Para(il(f"Check {what} yourself with the simulator:")))
        out.append(Code(cmd, "sh"))
    return out


def _ranking(ctx: Ctx) -> list[Block]:
    doc = ctx.doc
    ranking = doc["ranking"]
    if not ranking:
        return []
    promoted = set(doc["result"]["set"])
    header = ["rank", "op", "type", "score", "jump dB", "iso SNR", "cum SNR", "hazards", "promoted"]

    def row(r: dict) -> list[Inline]:
        e = r["evidence"]
        return [il(str(r["rank"])), il(c(r["op"])), il(r["op_type"]), il(f"{r['score']:.1f}"),
                il(f_jump(e["jump_db"])), il(f_snr(e["isolated_snr_db"])), il(f_snr(e["cumulative_snr_db"])),
                il(", ".join(e["hazards"]) or "–"), il(good("yes") if r["op"] in promoted else "–")]

    n = min(ctx.top, 10)
    out: list[Block] = [Heading(2, "Sensitive ops"),
                        Para(il("Candidates ranked by sensitivity (hazard bonus + jump + isolated error; "
                                f"{doc['counts'].get('candidates', len(ranking))} candidates). The search promotes the "
                                "shortest ranked prefix that meets the target, then prunes it.")),
                        Table(header, [row(r) for r in ranking[:n]], "rllrrrrll")]
    if len(ranking) > n:
        out.append(Para(il(f"All {len(ranking)} ranked ops are in the appendix.")))
    return out


def _tensor_row(t: dict, arows: dict[str, dict] | None) -> list[Inline]:
    cm, im = t["cumulative"], t["isolated"]
    row = [il(str(t["index"])), il(c(t["tensor"])), il(t["op_type"]), il(f_snr(cm["snr_db"])),
           il(f_snr(im["snr_db"])), il(f_jump(t["jump_db"])), il(f_cos(cm["cosine"])), il(f_cos(im["cosine"])),
           il(f_g(cm["max_abs"]))]
    if arows is not None:
        a = arows.get(t["tensor"])
        row.append(il(f_snr(a["cumulative"]["snr_db"]) if a else "–"))
    return row


TENSOR_HEADER = ["#", "tensor", "op", "cum SNR", "iso SNR", "jump dB", "cum cos", "iso cos", "max abs"]


def _worst_ops(ctx: Ctx) -> list[Block]:
    cmp, after = ctx.before, ctx.after
    arows = _rows_by_tensor(after) if after else None
    header = TENSOR_HEADER + (["SNR after"] if arows is not None else [])
    ranked = sorted([t for t in cmp["tensors"] if t["jump_db"] is not None and t["index"] >= 0],
                    key=lambda t: -t["jump_db"])
    body = ranked[:ctx.top]
    return [Heading(2, "Worst ops by error jump"),
            Para(il(f"Top {len(body)} of {len(cmp['tensors'])} tensors by the SNR lost at their op (cumulative and "
                    "isolated side by side: a large isolated loss means the op itself quantizes badly; a large "
                    "cumulative loss with a fine isolated SNR means it amplifies upstream error). "
                    "Every tensor in execution order is in the appendix.")),
            Table(header, [_tensor_row(t, arows) for t in body], "rll" + "r" * (len(header) - 3))]


def _hazards(cmp: dict) -> list[Block]:
    hz = cmp["hazards"]
    out: list[Block] = [Heading(2, "Hazards")]
    if not hz:
        out.append(Para(il("No graph hazards found (score/coordinate concats, mixed-range concats, large constant "
                           "scales).")))
        return out
    rows = [[il(b(h["kind"])), il(c(h["node"])), il(h["message"]), il(h["fix"])] for h in hz]
    out.append(Table(["hazard", "op", "what happens", "fix"], rows[:15]))
    if len(rows) > 15:
        out.append(Details(f"All {len(rows)} hazards", [Table(["hazard", "op", "what happens", "fix"], rows)]))
    return out


def _first_bad_cut(ctx: Ctx) -> list[Block]:
    cut = ctx.doc["first_bad_cut"]
    out: list[Block] = [Heading(2, "First bad cut")]
    thr = f"{cut['metric']} {f_bound(_cut_op(ctx.doc), cut['bound'])}"
    how = ("read from the one-pass comparison" if cut["path"] == "one-pass"
           else f"binary search over truncated graphs, {cut.get('evaluations', 0)} backend runs")
    if cut["tensor"]:
        ref = cut["tensor"] + (f".{cut['part']}" if cut.get("part") else "")
        out.append(Para(il("The first tensor in topological order whose cumulative error fails ", c(thr), " is ",
                           b(ref), " produced by ", c(cut["node"] or "?"), f" ({cut['op_type']}, #{cut['index']}): "
                           f"{cut['metric']} = {f_metric(cut['metric'], cut['value'])} ({how}). Everything before "
                           "it is within the threshold, so the damage starts here.")))
    else:
        out.append(Para(il("No tensor fails ", c(thr), f" ({how}): the error builds up gradually rather than "
                           "breaking at one op.")))
    probes = cut.get("probes") or []
    if probes:
        rows = [[il(str(p["index"])), il(c(p["tensor"])), il(f_metric(cut["metric"], p["value"])),
                 il(p.get("part") or "–"), il(bad("fails") if p["fails"] else good("passes"))] for p in probes]
        out.append(Table(["cut #", "tensor", cut["metric"], "part", "result"], rows, "rlrll"))
    return out


def _precision_map(ev: dict, prec: str, n_cand: int, order: list[str],
                   earlier: list[dict] | None = None) -> tuple[Inline, bool]:
    """Compact description of a promotion set; True when the description names every op exactly.

    Ranked prefixes read "top k ranked ops"; pruning steps read "#j without X" (relative to an earlier row).
    """
    p = ev["promoted"]
    if not p:
        return il("none (all at the default)"), True
    if n_cand and len(p) >= n_cand:
        return il(f"{prec}: all {len(p)} candidates"), True
    if len(p) <= 3:
        return il(f"{prec}: ", join([il(c(x)) for x in p])), True
    pos = {k: i for i, k in enumerate(order)}
    missing: list[str] | None = None
    k = 0
    if all(x in pos for x in p):
        k = max(pos[x] for x in p) + 1  # the smallest ranked prefix holding the set
        missing = [x for x in order[:k] if x not in set(p)]
        if not missing:
            return il(f"{prec}: top {k} ranked ops"), True
    best = None
    for e in earlier or []:
        gone, new = sorted(set(e["promoted"]) - set(p)), sorted(set(p) - set(e["promoted"]))
        key = (len(gone) + len(new), bool(new), -e["id"])  # fewest changes, removals first, most recent
        if e["promoted"] and key[0] <= 2 and (best is None or key < best[0]):
            best = (key, e["id"], gone, new)
    if best is not None:
        _, j, gone, new = best
        return il(f"as #{j}", il(" without ", join([il(c(x)) for x in gone])) if gone else None,
                  il(" plus ", join([il(c(x)) for x in new])) if new else None), True
    if missing is not None and len(missing) <= 3:
        return il(f"{prec}: top {k} ranked ops except ", join([il(c(x)) for x in missing])), True
    return il(f"{prec}: ", join([il(c(x)) for x in p[:3]]), f" +{len(p) - 3} more"), False


def _evaluation_log(ctx: Ctx) -> list[Block]:
    doc = ctx.doc
    evs = doc["evaluations"]
    clauses = doc["target"]["clauses"]
    prec = doc["promote_precision"]
    n_cand = doc["counts"].get("candidates", 0)
    header = ["#", "purpose", "precision map", *[f"{cl['ref']} {cl['metric']} {f_bound(cl['op'], cl['bound'])}"
                                                    for cl in clauses], "margin", "result"]
    best = (doc["result"].get("best") or {}).get("id")
    order = [r["op"] for r in doc["ranking"]]
    rows = []
    for k, ev in enumerate(evs):
        cells = [il(str(ev["id"]) + (" ★" if ev["id"] == best else "")), il(ev["purpose"]),
                 _precision_map(ev, prec, n_cand, order, evs[:k])[0]]
        for cl in clauses:
            v = ev["values"].get(_clause_key(cl))
            cells.append(il(f_metric(cl["metric"], v)))
        cells.append(il(f_g(ev["margin"], 3)))
        cells.append(il(good("pass") if ev["passed"] else bad("fail")))
        rows.append(cells)
    cnt = doc["counts"]
    out: list[Block] = [Heading(2, "Bisect evaluation log"),
                        Para(il(f"{cnt.get('evaluations', len(evs))} quantized evaluations (promised bound "
                                f"{cnt.get('bound', '?')}; one per op would need {cnt.get('naive_evaluations', '?')}), "
                                f"search {f_secs(cnt.get('search_seconds'))}, total {f_secs(cnt.get('total_seconds'))}. "
                                f"Precision map = ops at {prec} (everything else at the default; \"top k\" = the first k ops "
                                "of the sensitivity ranking); margin = worst "
                                "distance to a bound in the metric's better direction (≥ 0 passes); ★ = the "
                                "chosen configuration."))]
    align = "rll" + "r" * len(clauses) + "rl"
    if len(rows) > ctx.top:
        out.append(Table(header, rows[:ctx.top], align))
        out.append(Details(f"All {len(rows)} evaluations", [Table(header, rows, align)]))
    else:
        out.append(Table(header, rows, align))
    maps = [ev for k, ev in enumerate(evs) if not _precision_map(ev, prec, n_cand, order, evs[:k])[1]]
    if maps:
        lines = "\n".join(f"#{ev['id']} {ev['purpose']}: " + " ".join(ev["promoted"]) for ev in maps)
        out.append(Details("Full precision maps", [Code(lines)]))
    return out


def _vendor_refs(vendor: dict) -> list[tuple[str, dict, dict | None]]:
    """(ref, vendor metrics, built-in metrics) for every output and part of a vendor comparison."""
    out = []
    for o in vendor.get("outputs", []):
        out.append((o["tensor"], o["cumulative"], o.get("builtin")))
        for p in o.get("parts", []):
            out.append((f"{o['tensor']}.{p['part']}", p["cumulative"], p.get("builtin")))
    return out


def _vendor_sim(ctx: Ctx) -> list[Block]:
    v = ctx.before.get("vendor")
    if not v:
        return []
    name = v.get("backend", "vendor")
    out: list[Block] = [Heading(2, "Vendor simulator"),
                        Para(il(f"The {name} toolkit's own simulator ({v.get('toolkit') or 'version unknown'}, "
                                f"platform {v.get('platform', '?')}) on {v.get('samples', '?')} sample(s), next to "
                                f"qdebug's built-in simulator; per-tensor analysis on {v.get('analysis_samples', '?')} "
                                f"sample(s), {v.get('tensors_matched', 0)} tensors matched."))]
    rows = []
    for ref, vm, bm in _vendor_refs(v):
        bm = bm or {}
        rows.append([il(c(ref)), il(f_snr(vm.get("snr_db"))), il(f_cos(vm.get("cosine"))), il(f_g(vm.get("max_abs"))),
                     il(f_snr(bm.get("snr_db"))), il(f_cos(bm.get("cosine")))])
    out.append(Table(["output / part", "vendor SNR", "vendor cosine", "vendor max abs", "built-in SNR",
                      "built-in cosine"], rows, "lrrrrr"))
    dis = v.get("disagreements") or []
    if dis:
        out.append(Para(il("Largest gaps between the two simulators (cumulative cosine):")))
        out.append(Table(["tensor", "vendor cosine", "built-in cosine", "gap"],
                         [[il(c(d["tensor"])), il(f_cos(d["vendor_cosine"])), il(f_cos(d["builtin_cosine"])),
                           il(f_g(d["gap"]))] for d in dis[:10]], "lrrr"))
    fused = v.get("fused_away") or []
    if fused:
        out.append(Para(il(f"{len(fused)} ONNX tensor(s) were fused away by the toolkit (no per-tensor result), "
                           "e.g. ", join([il(c(x)) for x in fused[:5]]), ".")))
    return out


def _toolkit_proposal(ctx: Ctx) -> list[Block]:
    tp = ctx.doc.get("toolkit_proposal")
    if not tp:
        return []
    judge = (ctx.doc["quant"].get("judge") or {}).get("backend", "vendor")
    verdict = (good("meets") if tp.get("passed") else bad("misses")) if tp.get("passed") is not None else il("–")
    vals = "; ".join(f"{k} = {v if v is None else f_g(v, 4)}" for k, v in (tp.get("values") or {}).items())
    tensors = tp.get("tensors") or []
    out: list[Block] = [Heading(2, "Toolkit proposal"),
                        Para(il(f"The {judge} toolkit's own hybrid-quantization proposal promotes {tp.get('count', 0)} "
                                f"tensor(s) (ours: {len(ctx.doc['result']['set'])} op(s)); scored on the same target "
                                "it ", verdict, " it", f" ({vals})." if vals else "."))]
    if tensors:
        out.append(Details(f"The {len(tensors)} tensors the toolkit proposes", [Code("\n".join(tensors))]))
    return out


def _vendor_file(ctx: Ctx) -> list[Block]:
    pf = ctx.doc.get("patched_file")
    if not pf:
        return []
    out: list[Block] = [Heading(2, "Patched vendor file")]
    items = [il(b("Format: "), c(pf["format"])),
             il(b("Original → patched: "), c(pf.get("source") or "?"), " → ",
                c(pf["path"]) if pf.get("path") else "not written (pass -o FILE to bisect)"),
             il(b(f"Changed records ({len(pf['changed'])}): "), join([il(c(x)) for x in pf["changed"][:20]]),
                f" +{len(pf['changed']) - 20} more" if len(pf["changed"]) > 20 else "")]
    for k, v in (pf.get("extra") or {}).items():
        items.append(il(b(f"{k}: "), c(v)))
    for n in pf.get("notes") or []:
        items.append(il(b("note: "), n))
    out.append(Bullets(items))
    diff = (pf.get("diff") or "").rstrip("\n")
    if diff:
        nlines = diff.count("\n") + 1
        code = Code(diff, "diff")
        if nlines > 60:
            hunks = re.split(r"(?m)^(?=@@ )", diff)
            head = "".join(hunks[:3]).rstrip("\n")  # the file header and the first two changed records
            out.append(Para(il(f"Diff of the changed records (first 2 of {len(hunks) - 1} hunks):")))
            out.append(Code(head, "diff"))
            out.append(Details(f"Full diff of the changed records ({nlines} lines)", [code]))
        else:
            out.append(Para(il("Diff of the changed records:")))
            out.append(code)
    return out


EXPORT_TITLES = {
    "atc": "HiSilicon ATC (--high_precision_layer)", "qtable": "TPU-MLIR quantize table",
    "horizon": "Horizon (node_info)", "trt": "TensorRT (polygraphy)", "trtexec": "TensorRT (trtexec)",
    "ort": "onnxruntime quantize_static", "nncf": "OpenVINO NNCF", "rknn": "rknn-toolkit2 custom_quantize_layers",
}


def _exports(ctx: Ctx) -> list[Block]:
    ex = ctx.doc.get("exports") or {}
    if not ex:
        return []
    out: list[Block] = [Heading(2, "Export lists"),
                        Para(il(f"The promotion set in {len(ex)} toolchains' syntax (",
                                join([il(c(k)) for k in ex]), ")."))]
    inner: list[Block] = []
    for k, text in ex.items():
        inner.append(Para(il(b(EXPORT_TITLES.get(k, k)), " ", c(k))))
        inner.append(Code(text.rstrip("\n")))
    out.append(Details("Export lists for every toolchain", inner))
    return out


def _warnings(ctx: Ctx) -> list[Block]:
    cmp = ctx.before
    items = [il(w) for w in cmp.get("warnings", [])]
    mapping = cmp["quant"].get("calib_mapping") or {}
    for n in mapping.get("notes", []):
        items.append(il("calibration file: ", n))
    un = mapping.get("unmatched_records") or []
    if un:
        items.append(il(f"calibration file: {len(un)} record(s) match no ONNX node, e.g. ",
                        join([il(c(x)) for x in un[:3]])))
    nr = mapping.get("nodes_without_record") or []
    if nr:
        items.append(il(f"calibration file: {len(nr)} quantized op(s) have no record (calibrated by qdebug), e.g. ",
                        join([il(c(x)) for x in nr[:3]])))
    unp = (ctx.doc["quant"].get("judge") or {}).get("unpromotable") or {}
    for k, why in unp.items():
        items.append(il("the toolkit cannot promote ", c(k), f" ({why})"))
    if cmp["quant"].get("unsupported"):
        items.append(il("ops the simulator ran in float: ", join([il(c(x)) for x in cmp["quant"]["unsupported"][:10]])))
    if not items:
        return []
    return [Heading(2, "Warnings"), Bullets(items)]


STANDARD_ENV = ("qdebug", "onnx", "onnxruntime", "numpy", "python", "os")
_QUANT_STD = {"backend", "profile", "quantize_at", "fuse", "scheme", "calib", "overrides", "groups", "unsupported",
              "calib_mapping", "judge"}


def _environment(ctx: Ctx) -> list[Block]:
    from qdebug import __version__

    doc = ctx.doc
    env = dict(doc.get("environment") or ctx.before.get("environment") or {})
    rows = [[il(k), il(c(str(env[k])))] for k in STANDARD_ENV if k in env]
    for k, v in env.items():
        if k not in STANDARD_ENV:
            rows.append([il(k), il(c(str(v)))])
    for k, v in doc["quant"].items():  # versions reported by non-simulator backends
        if k not in _QUANT_STD and not isinstance(v, (dict, list)):
            rows.append([il(f"backend {k}"), il(c(str(v)))])
    vendor = ctx.before.get("vendor") or {}
    if vendor:
        rows.append([il(f"{vendor.get('backend', 'vendor')} toolkit"), il(c(str(vendor.get("toolkit") or "?")))])
        if vendor.get("platform"):
            rows.append([il("vendor platform"), il(c(str(vendor["platform"])))])
    judge = doc["quant"].get("judge") or {}
    if judge and judge.get("backend") not in (None, "sim"):
        for k in ("backend", "platform", "quantized_algorithm", "toolkit", "version", "builds"):
            if judge.get(k) is not None:
                rows.append([il(f"judge {k}"), il(c(str(judge[k])))])
    pf = doc.get("patched_file")
    if pf:
        rows.append([il("vendor file format"), il(c(pf["format"]))])
    rows.append([il("result written"), il(f"{doc.get('created', '?')} by qdebug {doc.get('qdebug_version', '?')}")])
    rows.append([il("report written by"), il(f"qdebug {__version__}")])
    timing = ctx.before.get("timing") or {}
    if timing.get("total_s") is not None:
        rows.append([il("compare time"), il(f_secs(timing["total_s"]))])
    return [Heading(2, "Environment"), Table(["component", "version"], rows)]


def _appendix(ctx: Ctx, after: dict | None) -> list[Block]:
    cmp = ctx.before
    arows = _rows_by_tensor(after) if after else None
    header = TENSOR_HEADER + (["SNR after"] if arows is not None else [])
    align = "rll" + "r" * (len(header) - 3)
    out: list[Block] = [Heading(2, "Appendix: full tables"),
                        Details(f"All {len(cmp['tensors'])} tensors in execution order",
                                [Table(header, [_tensor_row(t, arows) for t in cmp["tensors"]], align)])]
    if ctx.kind == "bisect" and len(ctx.doc["ranking"]) > min(ctx.top, 10):
        promoted = set(ctx.doc["result"]["set"])
        rows = [[il(str(r["rank"])), il(c(r["op"])), il(r["op_type"]), il(f"{r['score']:.1f}"),
                 il(f_jump(r["evidence"]["jump_db"])), il(f_snr(r["evidence"]["isolated_snr_db"])),
                 il(f_snr(r["evidence"]["cumulative_snr_db"])), il(", ".join(r["evidence"]["hazards"]) or "–"),
                 il(good("yes") if r["op"] in promoted else "–")] for r in ctx.doc["ranking"]]
        out.append(Details(f"All {len(rows)} ranked ops",
                           [Table(["rank", "op", "type", "score", "jump dB", "iso SNR", "cum SNR", "hazards",
                                   "promoted"], rows, "rllrrrrll")]))
    return out


def size_note(md: str) -> str | None:
    """A warning when the Markdown is too long to paste into one GitHub issue or comment."""
    if len(md) <= GITHUB_LIMIT:
        return None
    return (f"this report is {len(md):,} characters; GitHub accepts {GITHUB_LIMIT:,} per issue or comment: "
            "paste everything above the appendix (the full tables) and attach report.html")
