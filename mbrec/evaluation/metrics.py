"""Per-user metrics from ranks, and the protocol's task names: numpy only.

Kept apart from :mod:`mbrec.evaluation.evaluator` (torch, RecBole) so that reporting can
recompute metrics from stored ranks without importing a model stack.
"""

import math

import numpy as np

TASKS = ("behavior_specific", "target_behavior", "behavior_item", "next_item")
METRICS = ("Recall", "NDCG", "MRR")


def metric_vectors(ranks, metrics=METRICS, topk=(5, 10, 20)):
    """Per-user metric values from 0-based ranks (one target per user).

    Recall@K = [rank < K]; NDCG@K = [rank < K] / log2(rank + 2); MRR@K = [rank < K] / (rank + 1).
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    vectors = {}
    for k in topk:
        hit = ranks < k
        for metric in metrics:
            name = metric.lower()
            if name in ("recall", "hit"):
                values = hit.astype(np.float64)
            elif name == "ndcg":
                values = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
            elif name == "mrr":
                values = np.where(hit, 1.0 / (ranks + 1.0), 0.0)
            else:
                raise ValueError(f"Unsupported metric '{metric}'; use one of {METRICS}")
            vectors[f"{name}@{k}"] = values
    return vectors


def summarize(ranks, metrics=METRICS, topk=(5, 10, 20)):
    """Mean of each metric over users (0.0 for an empty user set)."""
    return {name: float(values.mean()) if len(values) else math.nan
            for name, values in metric_vectors(ranks, metrics, topk).items()}
