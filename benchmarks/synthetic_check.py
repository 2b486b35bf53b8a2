"""Show that the synthetic data carries a multi-behavior signal, without any model.

Leave-one-out on the synthetic ``small`` set: the last interaction of each user
is the test target, everything before it is the history.  Two heuristics rank
all items (full ranking, top-K):

(a) item-only: the user's distinct history items by recency of their last
    occurrence, then the globally most popular items.  It only sees the item
    sequence.
(b) behavior-aware: sees the behavior of every history event and the behavior
    asked for the target.  For a ``buy`` target it ranks carted-not-bought
    items first (most recent first), then the very last history item (impulse
    buys), then faved-not-bought, then the other unbought history items by recency,
    bought items, then popularity.  For other targets it is identical to (a).

Metrics are Recall@K (= HitRate@K, one target) and NDCG@K, full ranking.
Evaluation sets:
* leave-one-out (last event of every user), all users / buy targets / others.
  Few users end on a buy (buys happen inside sessions, usually not last);
* last buy of every user that has one (history = all events before it), the
  usual MBSR protocol with ``buy`` as target behavior;
* every buy event (history = the user's events before it).

Usage:  python benchmarks/synthetic_check.py [--size small] [--seed 2024] [--k 10]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import Counter

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mbrec.data.synthetic import SIZES, generate_interactions  # noqa: E402


def _recency_order(items: list[int]) -> list[int]:
    """Distinct items, most recent last occurrence first."""
    seen: set[int] = set()
    out = []
    for it in reversed(items):
        if it not in seen:
            seen.add(it)
            out.append(it)
    return out


def _fill(ranked: list[int], popular: list[int], k: int) -> list[int]:
    out, seen = [], set()
    for it in ranked:
        if it not in seen:
            seen.add(it)
            out.append(it)
            if len(out) == k:
                return out
    for it in popular:
        if it not in seen:
            seen.add(it)
            out.append(it)
            if len(out) == k:
                break
    return out


def item_only(items, behaviors, target_behavior, popular, k):
    return _fill(_recency_order(items), popular, k)


def behavior_aware(items, behaviors, target_behavior, popular, k):
    recency = _recency_order(items)
    if target_behavior != "buy" or not items:
        return _fill(recency, popular, k)
    bought = {it for it, b in zip(items, behaviors) if b == "buy"}
    considered = _recency_order([it for it, b in zip(items, behaviors) if b in ("cart", "fav")])
    carted = {it for it, b in zip(items, behaviors) if b == "cart"}
    # carted, then the item in front of the user right now (impulse buys), then
    # faved items not bought yet, then the other unbought history, bought items last
    first = [it for it in considered if it in carted and it not in bought]
    first += [items[-1]] if items[-1] not in bought else []
    first += [it for it in considered if it not in carted and it not in bought]
    rest = [it for it in recency if it not in bought] + [it for it in recency if it in bought]
    return _fill(first + rest, popular, k)


def evaluate(cases, heuristic, popular, k):
    """cases: list of (history_items, history_behaviors, target_item, target_behavior)."""
    hits, ndcg = [], []
    for items, behaviors, target, tb in cases:
        ranked = heuristic(items, behaviors, tb, popular, k)
        if target in ranked:
            r = ranked.index(target)
            hits.append(1.0)
            ndcg.append(1.0 / math.log2(r + 2))
        else:
            hits.append(0.0)
            ndcg.append(0.0)
    return float(np.mean(hits)) if hits else float("nan"), float(np.mean(ndcg)) if ndcg else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", choices=sorted(SIZES))
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args(argv)

    t = time.time()
    df = generate_interactions(args.size, args.seed)
    print(f"synthetic {args.size!r} seed={args.seed}: {len(df):,} rows, {df.user_id.nunique():,} users, "
          f"{df.item_id.nunique():,} items ({time.time() - t:.2f}s)")
    print("behavior shares:", df.behavior.value_counts(normalize=True).round(4).to_dict())

    users = df.user_id.to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(df)]
    items = df.item_id.to_numpy().tolist()
    behs = df.behavior.to_numpy().tolist()

    is_last = np.zeros(len(df), dtype=bool)
    is_last[ends - 1] = True
    popular = [it for it, _ in Counter(df.item_id.to_numpy()[~is_last].tolist()).most_common(1000)]

    loo, last_buys, all_buys = [], [], []
    for s, e in zip(starts, ends):
        loo.append((items[s:e - 1], behs[s:e - 1], items[e - 1], behs[e - 1]))
        user_buys = [(items[s:j], behs[s:j], items[j], "buy") for j in range(s + 1, e) if behs[j] == "buy"]
        all_buys += user_buys
        if user_buys:
            last_buys.append(user_buys[-1])

    k = args.k
    groups = [
        ("leave-one-out, all users", loo),
        ("leave-one-out, buy targets", [c for c in loo if c[3] == "buy"]),
        ("leave-one-out, non-buy targets", [c for c in loo if c[3] != "buy"]),
        ("last buy per user (MBSR protocol)", last_buys),
        ("every buy event as target", all_buys),
    ]
    print(f"\n{'evaluation set':34s} {'n':>6s} | {'(a) item-only':>24s} | {'(b) behavior-aware':>24s}")
    print(f"{'':34s} {'':6s} | {f'Recall@{k}':>11s} {f'NDCG@{k}':>12s} | {f'Recall@{k}':>11s} {f'NDCG@{k}':>12s}")
    rows = []
    for name, cases in groups:
        ra, na = evaluate(cases, item_only, popular, k)
        rb, nb = evaluate(cases, behavior_aware, popular, k)
        rows.append(dict(set=name, n=len(cases), recall_a=ra, ndcg_a=na, recall_b=rb, ndcg_b=nb))
        print(f"{name:34s} {len(cases):6d} | {ra:11.4f} {na:12.4f} | {rb:11.4f} {nb:12.4f}")
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
