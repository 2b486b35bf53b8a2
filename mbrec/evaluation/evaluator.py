"""The one evaluator: full ranking over all items, the protocol's four tasks, per-user ranks.

A model only supplies scores (``full_sort_predict`` -> ``[B, n_items]``; optionally
``full_sort_predict_behavior_item`` -> ``[B, n_behaviors, n_items]`` with behavior id 0 =
padding). Everything else happens here, identically for every model:

* the padding item (id 0) and padding behavior can never be recommended;
* with ``mask_history`` the items of the input window (the ``MAX_ITEM_LIST_LENGTH`` rows before
  the target) are removed from the ranking; items the user met only before the window are not;
* ties are broken pessimistically: an item whose score equals the target's counts as ranked
  above it, so a model that outputs constant scores gets no hits;
* scale: users are scored in batches and each batch's ranks are computed on the device in
  column chunks of ``eval_item_chunk`` items (default: one chunk), so the comparison
  temporaries stay ``[batch, chunk]`` and no users x items matrix ever reaches host memory.
  On CUDA the batch is lowered to what fits ``eval_memory_fraction`` of the free memory; on
  CPU a batch that cannot fit the available memory stops the run with the value to set.
* per-user 0-based ranks are kept, keyed by user token; every metric is a function of them;
* per user, a *repeat* flag says whether the target item occurs in the model's own input
  window (any behavior); tables report repeat and new-item targets apart (``--split-repeat``).

Tasks (protocol.md): ``behavior_specific`` (told the target's behavior, all users),
``target_behavior`` (told the dataset's target behavior, only users whose target has it),
``behavior_item`` (told nothing, rank (behavior, item) pairs), ``next_item`` (told nothing).
"""

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from mbrec.data.dataset import SequenceLoader
from mbrec.data.targets import target_kinds
from mbrec.evaluation.metrics import METRICS, TASKS, metric_vectors, summarize  # noqa: F401

logger = logging.getLogger("mbrec")
# Bytes one scored column costs per user while a batch is ranked: the model's float32 output,
# its float32 copy (``.float()`` on other dtypes), the masked copy, and the [B, chunk] bool
# comparison of the current chunk (counted at full width: a safe upper bound).
SCORE_BYTES_PER_COLUMN = 4 * 3 + 1
DEFAULT_EVAL_MEMORY_FRACTION = 0.5  # share of the free memory one evaluation batch may use


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


def chunked_rank(scores, target_index, item_chunk=None, topk=0):
    """:func:`pessimistic_rank` computed over column chunks, plus the top-K columns, on the device.

    Exactly equal to the dense rank (counts of ``>=`` the target's score, the target itself
    excluded): integer counts do not depend on how the columns are chunked.

    Args:
        scores: ``[B, C]`` float tensor (``-inf`` = excluded).
        target_index: ``[B]`` long tensor of target columns.
        item_chunk: columns compared at a time (None or 0: all at once).
        topk: also return the ``[B, topk]`` highest-scoring columns (0: skip).

    Returns:
        ``ranks`` ``[B]`` long, or ``(ranks, top_values, top_columns)`` when ``topk``.
    """
    n_columns = scores.size(1)
    chunk = int(item_chunk) if item_chunk else n_columns
    if chunk < 1:
        raise ValueError(f"eval_item_chunk must be a positive number of items, got {item_chunk}")
    target_score = scores.gather(1, target_index.unsqueeze(1))  # [B, 1]
    at_least = torch.zeros(scores.size(0), dtype=torch.long, device=scores.device)
    top_values = top_columns = None
    for start in range(0, n_columns, chunk):
        part = scores[:, start:start + chunk]  # a view: no copy of the scores
        # int32 partial counts (a chunk is far below 2**31 columns): ~2x faster than int64 on CPU
        at_least += (part >= target_score).sum(dim=1, dtype=torch.int32)
        if topk:
            values, columns = part.topk(min(topk, part.size(1)), dim=1)
            columns = columns + start
            if top_values is not None:
                values, picked = torch.cat([top_values, values], 1).topk(min(topk, top_values.size(1) + values.size(1)),
                                                                         dim=1)
                columns = torch.cat([top_columns, columns], 1).gather(1, picked)
            top_values, top_columns = values, columns
    rank = at_least - 1  # the target's own score counts once in ">="
    # An excluded target (-inf, e.g. masked history) is never a hit.
    excluded = torch.isneginf(target_score.squeeze(1))
    rank = torch.where(excluded, torch.full_like(rank, n_columns), rank)
    return (rank, top_values, top_columns) if topk else rank


def available_memory_bytes(device):
    """Free memory evaluation may draw on: CUDA's free memory, or the host's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None  # unknown (not Linux): no check


def fit_eval_batch_size(configured, n_columns, device, memory_fraction=DEFAULT_EVAL_MEMORY_FRACTION,
                        available=None):
    """The evaluation batch size for ``n_columns`` scored columns per user on ``device``.

    CUDA: ``configured`` lowered to what fits ``memory_fraction`` of the free memory (logged).
    CPU: ``configured`` as is, or an :class:`EvaluationError` saying which ``eval_batch_size``
    fits, so a run never silently swaps.
    """
    device = torch.device(device)
    available = available_memory_bytes(device) if available is None else available
    if available is None:
        return configured
    per_user = n_columns * SCORE_BYTES_PER_COLUMN
    fitting = int(available * memory_fraction) // per_user
    if fitting >= configured:
        return configured
    if fitting < 1:
        raise EvaluationError(
            f"one user's scores over {n_columns:,} columns need ~{per_user / 2**20:.0f} MB but only "
            f"{available * memory_fraction / 2**20:.0f} MB ({memory_fraction:.0%} of the free "
            f"{available / 2**20:.0f} MB on {device}) may be used; free memory, raise eval_memory_fraction, "
            f"or evaluate on a larger device")
    if device.type == "cuda":
        logger.info(f"eval_batch_size {configured} -> {fitting}: {n_columns:,} scored columns per user, "
                    f"{available / 2**20:.0f} MB free on {device}")
        return fitting
    raise EvaluationError(
        f"eval_batch_size={configured} needs ~{configured * per_user / 2**30:.1f} GB to rank {n_columns:,} "
        f"columns per user, but {available / 2**30:.1f} GB are available ({memory_fraction:.0%} may be used); "
        f"set eval_batch_size={fitting} (or lower)")


@dataclass
class TaskResult:
    """One task on one split: who was counted, their ranks, and the mean metrics."""

    task: str
    users: np.ndarray  # [U] user tokens
    ranks: np.ndarray  # [U] 0-based pessimistic ranks
    metrics: dict
    note: str = ""
    repeat: np.ndarray = None  # [U] bool: the target item is in the user's input window
    target_counts: dict = None  # targets in the window / cold / held-out (mbrec.data.targets.target_kinds)

    def to_record(self):
        per_user = {"user": [str(u) for u in self.users], "rank": self.ranks.astype(int).tolist()}
        if self.repeat is not None:
            per_user["repeat"] = self.repeat.astype(int).tolist()  # 0/1 keeps the JSON small
        record = {"metrics": self.metrics, "n_users": int(len(self.users)), "note": self.note, "per_user": per_user}
        if self.target_counts is not None:
            record["targets"] = self.target_counts
        return record


class Evaluator:
    """Ranks all items for every example of a split and scores the requested tasks."""

    def __init__(self, config):
        self.metrics = list(config["metrics"])
        self.topk = list(config["topk"])
        self.batch_size = int(config["eval_batch_size"])
        self.item_chunk = config["eval_item_chunk"]
        self.memory_fraction = float(config["eval_memory_fraction"] or DEFAULT_EVAL_MEMORY_FRACTION)
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
                          summarize(ranks, self.metrics, self.topk), note, repeats,
                          target_kinds(split_dataset, rows, repeats))

    def _batches(self, split_dataset, rows, behavior_hint, description, n_columns, device):
        batch_size = fit_eval_batch_size(self.batch_size, n_columns, device, self.memory_fraction)
        loader = SequenceLoader(self.config, split_dataset, batch_size, behavior_hint=behavior_hint,
                                target_rows=rows)
        for begin, batch in zip(range(0, len(rows), batch_size),
                                tqdm(loader, desc=description, leave=False, disable=not self.show_progress)):
            yield rows[begin:begin + batch_size], batch

    def _item_ranks(self, model, split_dataset, rows, behavior_hint, device, description):
        n_items = split_dataset.num(split_dataset.iid_field)
        item_list_field = split_dataset.iid_field + self.config["LIST_SUFFIX"]
        ranks = []
        for batch_rows, batch in self._batches(split_dataset, rows, behavior_hint, description, n_items, device):
            scores = model.full_sort_predict(batch.to(device)).view(len(batch_rows), -1).float()  # [B, n_items]
            self._check_scores(scores, (len(batch_rows), n_items), "full_sort_predict")
            scores[:, 0] = -torch.inf  # the padding item is never recommended
            if self.mask_history:
                scores.scatter_(1, batch[item_list_field].to(scores.device), -torch.inf)
            targets = torch.from_numpy(split_dataset.target_items(batch_rows)).to(scores.device)
            ranks.append(chunked_rank(scores, targets, self.item_chunk).cpu())
        return torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)

    def _pair_ranks(self, model, split_dataset, rows, device):
        n_items = split_dataset.num(split_dataset.iid_field)
        n_behaviors = split_dataset.n_behaviors
        item_list_field = split_dataset.iid_field + self.config["LIST_SUFFIX"]
        ranks = []
        for batch_rows, batch in self._batches(split_dataset, rows, None, "eval (behavior, item)",
                                               n_behaviors * n_items, device):
            scores = model.full_sort_predict_behavior_item(batch.to(device)).float()  # [B, n_behaviors, n_items]
            self._check_scores(scores, (len(batch_rows), n_behaviors, n_items), "full_sort_predict_behavior_item")
            scores[:, 0, :] = -torch.inf  # padding behavior
            scores[:, :, 0] = -torch.inf  # padding item
            if self.mask_history:
                history = batch[item_list_field].to(scores.device).unsqueeze(1).expand(-1, n_behaviors, -1)
                scores.scatter_(2, history, -torch.inf)
            targets = (torch.from_numpy(split_dataset.target_behaviors(batch_rows)) * n_items
                       + torch.from_numpy(split_dataset.target_items(batch_rows))).to(scores.device)
            # [B, n_behaviors * n_items]
            ranks.append(chunked_rank(scores.flatten(1), targets, self.item_chunk).cpu())
        return torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)

    @staticmethod
    def _check_scores(scores, expected_shape, method):
        if tuple(scores.shape) != tuple(expected_shape):
            raise EvaluationError(f"{method} returned shape {tuple(scores.shape)}, expected {tuple(expected_shape)}")
        if torch.isnan(scores).any():
            raise EvaluationError(f"{method} returned NaN scores")
