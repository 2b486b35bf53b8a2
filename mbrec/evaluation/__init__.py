"""Scores -> ranks -> per-user metrics for the protocol's tasks; nothing model-specific.

``metrics`` (numpy only: task names, metric vectors from ranks) may be imported anywhere,
reporting included; ``evaluator`` (torch, RecBole loaders) is loaded on first use of its names.
Imports: mbrec.data (the sequence loader), nothing above it.
"""

import importlib

from mbrec.evaluation.metrics import METRICS, TASKS, metric_vectors, summarize  # noqa: F401

_EVALUATOR_NAMES = ("EvaluationError", "Evaluator", "TaskResult", "chunked_rank", "fit_eval_batch_size",
                    "pessimistic_rank")


def __getattr__(name):
    # Lazy: ``from mbrec.evaluation import TASKS`` must not import torch (reporting reads records only).
    if name in _EVALUATOR_NAMES:
        return getattr(importlib.import_module("mbrec.evaluation.evaluator"), name)
    raise AttributeError(f"module 'mbrec.evaluation' has no attribute {name!r}")
