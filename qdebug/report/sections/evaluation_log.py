"""The Bisect evaluation log section: every candidate promotion set the search scored."""

from __future__ import annotations

from qdebug.report.blocks import Block, Code, Details, Heading, Inline, Para, Table, bad, c, good, il, join
from qdebug.report.context import Ctx, clause_key
from qdebug.report.format import f_bound, f_g, f_metric, f_secs
from qdebug.results.bisect import Evaluation


def _precision_map(ev: Evaluation, prec: str, n_cand: int, order: list[str],
                   earlier: list[Evaluation] | None = None) -> tuple[Inline, bool]:
    """Compact description of a promotion set; True when the description names every op exactly.

    Ranked prefixes read "top k ranked ops"; pruning steps read "#j without X" (relative to an earlier row).
    """
    p = ev.promoted
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
        gone, new = sorted(set(e.promoted) - set(p)), sorted(set(p) - set(e.promoted))
        key = (len(gone) + len(new), bool(new), -e.id)  # fewest changes, removals first, most recent
        if e.promoted and key[0] <= 2 and (best is None or key < best[0]):
            best = (key, e.id, gone, new)
    if best is not None:
        _, j, gone, new = best
        return il(f"as #{j}", il(" without ", join([il(c(x)) for x in gone])) if gone else None,
                  il(" plus ", join([il(c(x)) for x in new])) if new else None), True
    if missing is not None and len(missing) <= 3:
        return il(f"{prec}: top {k} ranked ops except ", join([il(c(x)) for x in missing])), True
    return il(f"{prec}: ", join([il(c(x)) for x in p[:3]]), f" +{len(p) - 3} more"), False


def evaluation_log(ctx: Ctx) -> list[Block]:
    """One row per quantized evaluation of the search: the set tried, each clause's value, margin, pass/fail."""
    if ctx.kind != "bisect":
        return []
    doc = ctx.bis
    evs = doc.evaluations
    clauses = doc.target.clauses
    prec = doc.promote_precision
    n_cand = doc.counts.candidates
    header = ["#", "purpose", "precision map", *[f"{cl.ref} {cl.metric} {f_bound(cl.op, cl.bound)}"
                                                    for cl in clauses], "margin", "result"]
    best = doc.result.best.id if doc.result.best else None
    order = [r.op for r in doc.ranking]
    rows = []
    for k, ev in enumerate(evs):
        cells = [il(str(ev.id) + (" ★" if ev.id == best else "")), il(ev.purpose),
                 _precision_map(ev, prec, n_cand, order, evs[:k])[0]]
        for cl in clauses:
            v = ev.values.get(clause_key(cl))
            cells.append(il(f_metric(cl.metric, v)))
        cells.append(il(f_g(ev.margin, 3)))
        cells.append(il(good("pass") if ev.passed else bad("fail")))
        rows.append(cells)
    cnt = doc.counts
    out: list[Block] = [Heading(2, "Bisect evaluation log"),
                        Para(il(f"{cnt.evaluations} quantized evaluations (promised bound "
                                f"{cnt.bound}; one per op would need {cnt.naive_evaluations}), "
                                f"search {f_secs(cnt.search_seconds)}, total {f_secs(cnt.total_seconds)}. "
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
        lines = "\n".join(f"#{ev.id} {ev.purpose}: " + " ".join(ev.promoted) for ev in maps)
        out.append(Details("Full precision maps", [Code(lines)]))
    return out
