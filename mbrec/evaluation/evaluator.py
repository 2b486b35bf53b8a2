"""The one evaluator: full ranking over all items, the protocol's four tasks, per-user ranks.

A model only supplies scores (``full_sort_predict`` -> ``[B, n_items]``; optionally
``full_sort_predict_behavior_item`` -> ``[B, n_behaviors, n_items]`` with behavior id 0 =
padding). Everything else happens here, identically for every model:

* the padding item (id 0) and padding behavior can never be recommended;
* with ``mask_history`` the items of the input window are removed from the ranking;
* ties are broken pessimistically: an item whose score equals the target's counts as ranked
  above it, so a model that outputs constant scores gets no hits;
* per-user 0-based ranks are kept, keyed by user token; every metric is a function of them;
* per user, a *repeat* flag says whether the target item occurs in the model's own input
  window (any behavior); tables report repeat and new-item targets apart (``--split-repeat``).

Tasks (protocol.md): ``behavior_specific`` (told the target's behavior, all users),
``target_behavior`` (told the dataset's target behavior, only users whose target has it),
``behavior_item`` (told nothing, rank (behavior, item) pairs), ``next_item`` (told nothing).
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from mbrec.data.dataset import SequenceLoader

TASKS = ("behavior_specific", "target_behavior", "behavior_item", "next_item")
METRICS = ("Recall", "NDCG", "MRR")


class EvaluationError(RuntimeError):
    """A model returned scores the evaluator cannot rank (wrong shape, NaN)."""


def pessimistic_rank(scores, target_index):
    """0-based rank of each row's target among all columns; ties count against the target.

    Args:
        scores: ``[B, C]`` float tensor (``-inf`` = excluded).
        target_index: ``[B]`` long tensor of target columns.
    """
    target_score = scores.gather(1, target_index.unsqueeze(1))  # [B, 1]
    higher = (scores > target_score).sum(dim=1)
    tied_others = (scores == target_score).sum(dim=1) - 1
    rank = higher + tied_others
    # An excluded target (-inf, e.g. masked history) is never a hit.
    excluded = torch.isneginf(target_score.squeeze(1))
    return torch.where(excluded, torch.full_like(rank, scores.size(1)), rank)


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


@dataclass
class TaskResult:
    """One task on one split: who was counted, their ranks, and the mean metrics."""

    task: str
    users: np.ndarray  # [U] user tokens
    ranks: np.ndarray  # [U] 0-based pessimistic ranks
    metrics: dict
    note: str = ""
    repeat: np.ndarray = None  # [U] bool: the target item is in the user's input window

    def to_record(self):
        per_user = {"user": [str(u) for u in self.users], "rank": self.ranks.astype(int).tolist()}
        if self.repeat is not None:
            per_user["repeat"] = self.repeat.astype(int).tolist()  # 0/1 keeps the JSON small
        return {"metrics": self.metrics, "n_users": int(len(self.users)), "note": self.note, "per_user": per_user}


class Evaluator:
    """Ranks all items for every example of a split and scores the requested tasks."""

    def __init__(self, config):
        self.metrics = list(config["metrics"])
        self.topk = list(config["topk"])
        self.batch_size = int(config["eval_batch_size"])
        self.mask_history = bool(config["mask_history"])
        self.show_progress = bool(config["show_progress"])
        self.config = config

    def evaluate(self, model, split_dataset, tasks=TASKS, device="cpu"):
        """Return ``{task: TaskResult or None}``; None marks a task the model cannot do (N/A)."""
        unknown = [task for task in tasks if task not in TASKS]
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown}; valid tasks: {TASKS}")
        was_training = model.training
        model.eval()
        rows = split_dataset.target_rows
        target_behaviors = split_dataset.target_behaviors(rows)
        conditioned = bool(getattr(model, "behavior_conditioned", False))
        repeats = split_dataset.target_in_window(rows, self.batch_size)  # [U], same for every task
        results = {}
        with torch.no_grad():
            item_ranks_told, item_ranks_blind = None, None
            if {"behavior_specific", "target_behavior"} & set(tasks):
                # target_behavior counts users whose target has the target behavior, so telling
                # them "target behavior" equals telling them their own: one pass serves both.
                item_ranks_told = self._item_ranks(model, split_dataset, rows, "true" if conditioned else None,
                                                   device, "eval (told behavior)")
            if "next_item" in tasks:
                item_ranks_blind = (item_ranks_told if not conditioned and item_ranks_told is not None else
                                    self._item_ranks(model, split_dataset, rows, None, device, "eval (next item)"))
            note = "" if conditioned else "model ignores the behavior hint"
            if "behavior_specific" in tasks:
                results["behavior_specific"] = self._result("behavior_specific", split_dataset, rows,
                                                            item_ranks_told, repeats, note)
            if "target_behavior" in tasks:
                counted = target_behaviors == split_dataset.target_behavior_id
                results["target_behavior"] = self._result("target_behavior", split_dataset, rows[counted],
                                                          item_ranks_told[counted], repeats[counted], note)
            if "next_item" in tasks:
                results["next_item"] = self._result("next_item", split_dataset, rows, item_ranks_blind, repeats)
            if "behavior_item" in tasks:
                results["behavior_item"] = (
                    self._result("behavior_item", split_dataset, rows,
                                 self._pair_ranks(model, split_dataset, rows, device), repeats)
                    if hasattr(model, "full_sort_predict_behavior_item") else None)
        model.train(was_training)
        return results

    def _result(self, task, split_dataset, rows, ranks, repeats, note=""):
        return TaskResult(task, split_dataset.user_tokens(rows), ranks,
                          summarize(ranks, self.metrics, self.topk), note, repeats)

    def _batches(self, split_dataset, rows, behavior_hint, description):
        loader = SequenceLoader(self.config, split_dataset, self.batch_size, behavior_hint=behavior_hint,
                                target_rows=rows)
        for begin, batch in zip(range(0, len(rows), self.batch_size),
                                tqdm(loader, desc=description, leave=False, disable=not self.show_progress)):
            yield rows[begin:begin + self.batch_size], batch

    def _item_ranks(self, model, split_dataset, rows, behavior_hint, device, description):
        n_items = split_dataset.num(split_dataset.iid_field)
        item_list_field = split_dataset.iid_field + self.config["LIST_SUFFIX"]
        ranks = []
        for batch_rows, batch in self._batches(split_dataset, rows, behavior_hint, description):
            scores = model.full_sort_predict(batch.to(device)).view(len(batch_rows), -1).float()  # [B, n_items]
            self._check_scores(scores, (len(batch_rows), n_items), "full_sort_predict")
            scores[:, 0] = -torch.inf  # the padding item is never recommended
            if self.mask_history:
                scores.scatter_(1, batch[item_list_field].to(scores.device), -torch.inf)
            targets = torch.from_numpy(split_dataset.target_items(batch_rows)).to(scores.device)
            ranks.append(pessimistic_rank(scores, targets).cpu())
        return torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)

    def _pair_ranks(self, model, split_dataset, rows, device):
        n_items = split_dataset.num(split_dataset.iid_field)
        n_behaviors = split_dataset.n_behaviors
        item_list_field = split_dataset.iid_field + self.config["LIST_SUFFIX"]
        ranks = []
        for batch_rows, batch in self._batches(split_dataset, rows, None, "eval (behavior, item)"):
            scores = model.full_sort_predict_behavior_item(batch.to(device)).float()  # [B, n_behaviors, n_items]
            self._check_scores(scores, (len(batch_rows), n_behaviors, n_items), "full_sort_predict_behavior_item")
            scores[:, 0, :] = -torch.inf  # padding behavior
            scores[:, :, 0] = -torch.inf  # padding item
            if self.mask_history:
                history = batch[item_list_field].to(scores.device).unsqueeze(1).expand(-1, n_behaviors, -1)
                scores.scatter_(2, history, -torch.inf)
            targets = (torch.from_numpy(split_dataset.target_behaviors(batch_rows)) * n_items
                       + torch.from_numpy(split_dataset.target_items(batch_rows))).to(scores.device)
            ranks.append(pessimistic_rank(scores.flatten(1), targets).cpu())  # [B, n_behaviors * n_items]
        return torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)

    @staticmethod
    def _check_scores(scores, expected_shape, method):
        if tuple(scores.shape) != tuple(expected_shape):
            raise EvaluationError(f"{method} returned shape {tuple(scores.shape)}, expected {tuple(expected_shape)}")
        if torch.isnan(scores).any():
            raise EvaluationError(f"{method} returned NaN scores")
