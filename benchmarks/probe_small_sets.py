#!/usr/bin/env python
"""Offline probe (issue #17): does a plan with <= K promoted ops meet the target, beside split/calibration?

    python benchmarks/probe_small_sets.py --model 320n.onnx --data imgs --task yolov8 --size 320,320 \
        --conf 0.05 --target "lost_frac<=0.05" [--max-ops 5] [--pool 20] [--out probe.json]

Builds exactly what `qdebug bisect --remedies` builds (setup, one-pass compare, ranking, calibration choices,
decode tail) and scores every plan with bisect's own evaluator through `RemedySearch.evaluate` (same config,
same 16-bit ranges for promoted ops, same cache). It is not a search bisect could afford: it spends hundreds
of evaluations to answer whether a small plan exists at all.

Stages, per base (no remedy, head split, split + each calibration variant, split + calibration of the
first-layer tensors only):
1. the base alone; 2. every candidate op alone on the best base(s); 3. combinations of 2..K ops, exhaustive
over a pool: the best singles (fewest lost, then best margin), the ranking's top ops, the first layers' ops and
the hazard ops, the pool cut shorter for larger sets so the run stays within --max-evals. Lost detections
per plan are recorded by identity (image, float detection index), so the output says which detection each
plan loses. Writes a JSON with every evaluation and prints a summary.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup(args: argparse.Namespace):
    """The bisect --remedies state for the given command line: search object, ranked ops, choices, split."""
    from qdebug.cli import build_parser
    from qdebug.cli.options import setup_run
    from qdebug.compare.stage import run_compare
    from qdebug.graph.parts import concat_parts, part_names
    from qdebug.quant.scheme import Precision
    from qdebug.search import calib_remedy
    from qdebug.search.bisect import ancestors_ops, rank_ops
    from qdebug.search.remedies import RemedySearch
    from qdebug.search.split import find_decode_tail, prove_split
    from qdebug.search.target import parse_target
    from qdebug.tasks.evaluator import DetectionEvaluator

    argv = ["bisect", args.model, "--data", args.data, "--samples", str(args.samples), "--remedies",
            "--target", args.target, "-q"]
    for k in ("task", "size", "conf"):
        if getattr(args, k):
            argv += [f"--{k}", str(getattr(args, k))]
    ns = build_parser().parse_args(argv)
    st = setup_run(ns)
    graph, ds, base, backend = st.graph, st.dataset, st.config, st.backend
    ev = DetectionEvaluator(graph, ds, backend, st.decoder)
    parts = part_names(concat_parts(graph, [o.name for o in graph.outputs]))
    target = parse_target(args.target, graph, parts, ev.task_metrics)
    before = run_compare(graph, ds, base, backend, st.calib)
    ev.target = target
    ops = backend.quant_ops(graph)
    cand = ancestors_ops(graph, ops, target.tensors() or [o.name for o in graph.outputs])
    ranked = rank_ops(ops, before, cand)
    keys = [r.op for r in ranked]
    samples = list(st.calib) if st.calib is not None else list(ds)
    points = calib_remedy.quant_points(ops, backend.profile, keys)
    choices = calib_remedy.choose(graph, points, base, backend.ranges, samples)
    split, why = find_decode_tail(graph, [(h.kind, h.node) for h in before.hazards])
    if split is not None and not prove_split(graph, split, samples[:4]).passed:
        split = None
    all_ops = [op.key for op in ops if op.quantizable]
    rs = RemedySearch(ev, base, Precision.INT16, choices, split, why, None, all_ops, len(samples))
    return rs, ev, ranked, choices, split, ops


def _iou(a, b):
    import numpy as np

    x0, y0 = np.maximum(a[:2], b[:, :2]).T
    x1, y1 = np.minimum(a[2:], b[:, 2:]).T
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area - inter + 1e-9)


def rescue_scores(rs, ev, plan, lost: list[tuple[int, int]]) -> list[float]:
    """Per lost float detection (image, index): the best score of a quantized candidate of its class at IoU >= 0.5
    (decoded at a tenth of the threshold) that overlaps no other float detection of that class more — a
    continuous view of a pass/fail metric: the detection counts again once this reaches the threshold."""
    import copy

    import numpy as np

    dec = copy.copy(ev.decoder)
    dec.conf = ev.decoder.conf / 10
    imgs = sorted({i for i, _ in lost})
    outs = dict(zip(imgs, ev.backend.run(ev.graph, rs.config(plan), [ev.samples[i] for i in imgs], ev.outputs),
                    strict=True))
    res = []
    for i, j in lost:
        d = dec.decode({n: outs[i][n] for n in ev.outputs}, ev.input_hw, ev.metas[i].letterbox)
        ref = ev.reference[i]
        same = np.flatnonzero(d.classes == ref.classes[j])
        best = 0.0
        for q in same:
            ious = _iou(d.boxes[q], ref.boxes)
            ious[ref.classes != ref.classes[j]] = -1
            if ious[j] >= 0.5 and ious[j] >= ious.max():
                best = max(best, float(d.scores[q]))
        res.append(best)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--task", default="yolov8")
    ap.add_argument("--size", default=None)
    ap.add_argument("--conf", default=None)
    ap.add_argument("--target", default="lost_frac<=0.05")
    ap.add_argument("--max-ops", type=int, default=5)
    ap.add_argument("--pool", type=int, default=20, help="pool size for pairs (shrinks for larger sets)")
    ap.add_argument("--max-evals", type=int, default=1200, help="stop the combination stage past this")
    ap.add_argument("--first-layers", default="/model.0/,/model.1/,/model.2/",
                    help="node-name prefixes of the first layers (always in the pool; their tensors form the "
                         "'first-layer calibration' base)")
    ap.add_argument("--out", default="probe_small_sets.json")
    ap.add_argument("--log", default=None, help="JSON lines, one per evaluation, written as the probe runs")
    ap.add_argument("--targeted", action="store_true",
                    help="pool from the rescue score of the base's lost detections instead of full single runs")
    ap.add_argument("--bases", type=int, default=1, help="how many of the best split bases to search on")
    args = ap.parse_args()
    from qdebug.search.remedies import Plan

    t0 = time.perf_counter()
    rs, ev, ranked, choices, split, ops = setup(args)
    keys = [r.op for r in ranked]
    prefixes = tuple(p for p in args.first_layers.split(",") if p)
    first = [k for k in keys if k.startswith(prefixes)]
    hazard = [r.op for r in ranked if r.evidence.hazards]
    tail = set(split.tail) if split else set()
    cands = [k for k in keys if k not in tail]
    rows: list[dict] = []
    log = open(args.log, "w") if args.log else None

    def run(plan: Plan, stage: str, base: str) -> dict:
        n0 = len(rs.promo.records)
        rec = rs.evaluate(plan, stage)
        lost = None
        if len(rs.promo.records) > n0 and ev.last is not None:  # a new run: which float detections it loses
            lost = [f"{i}:{j}" for i, m in enumerate(ev.last.ref_matched) for j in range(len(m)) if not m[j]]
        row = {"stage": stage, "base": base, "promoted": list(plan.promoted), "passed": rec.score.passed,
               "margin": rec.score.margin, "values": rec.score.values, "lost": lost, "id": rec.id}
        rows.append(row)
        if log is not None:  # one line per evaluation, flushed: a long probe can be followed and cut short
            log.write(json.dumps(row, default=str) + "\n")
            log.flush()
        return row

    best, unclipped = choices[0], choices[1]
    first_set = {k for k in first}
    first_calib = [c for c in best if c.op in first_set] or [c for c in unclipped if c.op in first_set]
    bases: dict[str, Plan] = {"none": Plan()}
    if split:
        bases["split"] = Plan(split=True)
    for name, ch in (("calib best", best), ("calib unclipped", unclipped), ("calib first layers", first_calib)):
        if ch:
            bases[name] = Plan(tuple(ch))
            if split:
                bases[f"split + {name}"] = Plan(tuple(ch), True)
    base_rows = {name: run(p, "base", name) for name, p in bases.items()}
    # the bases to search on: the split ones (the plan's cost order puts the split before precision) ranked
    # by margin; at most two
    order = sorted((n for n in bases if split is None or n.startswith("split")),
                   key=lambda n: -base_rows[n]["margin"])
    search_bases = order[: args.bases]
    found: dict[str, list[list[str]]] = {}
    for bname in search_bases:
        bp = bases[bname]
        if args.targeted:  # pool = the ops that raise the lost detections' rescue score most (2-image runs)
            lost = [tuple(int(x) for x in d.split(":")) for d in base_rows[bname]["lost"] or []]
            r0 = rescue_scores(rs, ev, bp, lost)
            gain = {k: min(s - s0 for s, s0 in zip(rescue_scores(rs, ev, Plan(bp.calib, bp.split, (k,)), lost), r0,
                                                   strict=True)) for k in cands}
            pool = sorted(cands, key=lambda k: -gain[k])[: args.pool]
            print(f"[probe] rescue scores {lost}: base {r0}; best single gains "
                  f"{[(k, round(gain[k], 4)) for k in pool[:8]]}", file=sys.stderr, flush=True)
            hits = []
            for size in range(1, args.max_ops + 1):
                if hits:
                    break
                for combo in itertools.combinations(pool[: {1: len(pool), 2: len(pool), 3: 10, 4: 8}.get(size, 8)],
                                                    size):
                    if len(rows) >= args.max_evals:
                        break
                    r = run(Plan(bp.calib, bp.split, combo), f"targeted {size}", bname)
                    if r["passed"]:
                        hits.append(list(combo))
            found[bname] = hits
            continue
        singles = {k: run(Plan(bp.calib, bp.split, (k,)), "single", bname) for k in cands}
        good = sorted(cands, key=lambda k: (len(singles[k]["lost"] or []) if singles[k]["lost"] is not None
                                            else 99, -singles[k]["margin"]))
        pool = list(dict.fromkeys(good[: args.pool // 2] + keys[:6] + first + hazard[:3] + good))[: args.pool]
        hits = [[k] for k in cands if singles[k]["passed"]]
        sizes = {2: args.pool, 3: args.pool * 2 // 3, 4: args.pool // 2 + 1, 5: args.pool // 2}
        for size in range(2, args.max_ops + 1):
            if hits:
                break
            sub = pool[: sizes.get(size, 8)]
            for combo in itertools.combinations(sub, size):
                if len(rows) >= args.max_evals:
                    break
                r = run(Plan(bp.calib, bp.split, combo), f"combo {size}", bname)
                if r["passed"]:
                    hits.append(list(combo))
        found[bname] = hits
        print(f"[probe] base {bname}: {len(hits)} passing set(s) of <= {args.max_ops} ops; evaluations so far "
              f"{len(rows)}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    summary = {"model": args.model, "target": args.target, "conf": args.conf, "candidates": len(cands),
               "first_layer_ops": first, "ranked_top": keys[:20], "hazard_ops": hazard,
               "bases": {n: {k: base_rows[n][k] for k in ("passed", "margin", "values", "lost")} for n in bases},
               "searched_bases": search_bases, "passing_sets": found, "evaluations": len(rows), "wall_s": wall}
    Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1, default=str))
    print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
