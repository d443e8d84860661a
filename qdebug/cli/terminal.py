"""Rich terminal rendering of a compare result: worst ops, hazards, one line per graph output."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qdebug.metrics.stats import SNR_INF


def fmt_snr(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= SNR_INF:
        return "inf"
    return f"{v:.1f}"


def fmt_cos(v: float | None) -> str:
    return "-" if v is None else f"{v:.5f}"


def fmt_g(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def snr_style(v: float | None) -> str:
    if v is None:
        return "red"
    if v < 20:
        return "bold red"
    if v < 30:
        return "yellow"
    return "green"


def _worst_snr(t: dict, res: dict) -> float:
    vals = [t["cumulative"]["snr_db"]] + [p["cumulative"]["snr_db"] for p in res.get("parts", [])
                                          if p["tensor"] == t["tensor"]]
    vals = [v for v in vals if v is not None]
    return min(vals) if vals else -1.0


def render_compare(res: dict, console: Console, top: int = 15, show_all: bool = False) -> None:
    """Print the worst-N table, hazards and per-output summary from a qdebug.compare/1 dict."""
    q = res["quant"]
    console.print(f"[bold]qdebug compare[/] {res['model']['path']}  ·  {res['samples']['count']} samples  ·  "
                  f"profile [cyan]{q.get('profile')}[/] {q['scheme']['activation']} "
                  f"calibrator {q['scheme']['calibrator']}"
                  + (f"  ·  calib {q['calib']}" if q.get("calib") else "")
                  + (f"  ·  overrides {len(q['overrides'])}" if q.get("overrides") else ""))
    console.print("[dim]SNR = 10·log10(Σx²/Σ(x−y)²), higher is better; jump = SNR lost at this op "
                  "(min input SNR − output SNR)[/]")
    tensors = res["tensors"]
    rows = tensors if show_all else sorted(
        [t for t in tensors if t["jump_db"] is not None], key=lambda t: -t["jump_db"])[:top]
    if not show_all:
        worst_keys = {t["tensor"] for t in rows[:5] if (t["jump_db"] or 0) > 6 and _worst_snr(t, res) < 40}
    else:
        worst_keys = set()
    tbl = Table(title="Every tensor in execution order" if show_all else f"Top {len(rows)} ops by error jump",
                show_lines=False, header_style="bold")
    for col, just in (("#", "right"), ("tensor", "left"), ("op", "left"), ("cum cos", "right"),
                      ("cum SNR", "right"), ("iso SNR", "right"), ("jump dB", "right"), ("max abs", "right")):
        tbl.add_column(col, justify=just, no_wrap=(col != "tensor"), overflow="fold")
    for t in rows:
        c, i = t["cumulative"], t["isolated"]
        mark = "[bold red]▶ [/]" if t["tensor"] in worst_keys else ""
        tbl.add_row(str(t["index"]), mark + escape(t["tensor"]), t["op_type"], fmt_cos(c["cosine"]),
                    f"[{snr_style(c['snr_db'])}]{fmt_snr(c['snr_db'])}[/]",
                    f"[{snr_style(i['snr_db'])}]{fmt_snr(i['snr_db'])}[/]",
                    "-" if t["jump_db"] is None else f"{t['jump_db']:+.1f}", fmt_g(c["max_abs"]))
    console.print(tbl)
    if res["hazards"]:
        console.print(f"[bold yellow]Hazards ({len(res['hazards'])})[/]")
        for h in res["hazards"]:
            console.print(f"  [yellow]⚠ {h['kind']}[/] [bold]{h['node']}[/]: {escape(h['message'])}")
            console.print(f"    [dim]fix:[/] {escape(h['fix'])}")
    for w in res.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(w)}")
    console.print("[bold]Outputs[/]")
    for o in res["outputs"]:
        c = o["cumulative"]
        line = (f"  {o['tensor']}: cosine {fmt_cos(c['cosine'])}  SNR "
                f"[{snr_style(c['snr_db'])}]{fmt_snr(c['snr_db'])} dB[/]  max_abs {fmt_g(c['max_abs'])}")
        for p in o["parts"]:
            pc = p["cumulative"]
            line += (f"\n    .{p['part']} [{p['start']}:{p['stop']}] ({p['source_op']}): cosine {fmt_cos(pc['cosine'])}"
                     f"  SNR [{snr_style(pc['snr_db'])}]{fmt_snr(pc['snr_db'])} dB[/]  max_abs {fmt_g(pc['max_abs'])}")
        console.print(line)


def render_vendor(v: dict, console: Console) -> None:
    """The vendor simulator's verdict next to the built-in simulator's (outputs, parts, disagreements)."""
    console.print(f"[bold]{v['backend']} simulator[/] ({v['platform']}, rknn-toolkit2 {v.get('toolkit')}): "
                  f"{v['samples']} samples, per-tensor analysis on {v['analysis_samples']}, {v['builds']} build(s)")
    for o in v["outputs"]:
        c, b = o["cumulative"], o.get("builtin") or {}
        console.print(f"  {o['tensor']}: vendor cosine {fmt_cos(c['cosine'])} SNR {fmt_snr(c['snr_db'])} dB"
                      f"  |  built-in cosine {fmt_cos(b.get('cosine'))} SNR {fmt_snr(b.get('snr_db'))} dB")
        for p in o["parts"]:
            pc, pb = p["cumulative"], p.get("builtin") or {}
            console.print(f"    .{p['part']}: vendor SNR [{snr_style(pc['snr_db'])}]{fmt_snr(pc['snr_db'])} dB[/]"
                          f"  |  built-in SNR {fmt_snr(pb.get('snr_db'))} dB")
    if v["disagreements"]:
        d = v["disagreements"][0]
        console.print(f"  largest vendor/built-in gap: {d['tensor']} (cosine {d['vendor_cosine']:.5f} vs "
                      f"{d['builtin_cosine']:.5f})")
    if v["fused_away"]:
        console.print(f"  [dim]{len(v['fused_away'])} ONNX tensor(s) fused away by the toolkit (no per-tensor "
                      f"result), e.g. {', '.join(v['fused_away'][:3])}[/]")
