"""Scores -> ranks -> per-user metrics for the protocol's tasks; nothing model-specific."""

from mbrec.evaluation.evaluator import (  # noqa: F401
    METRICS, TASKS, EvaluationError, Evaluator, TaskResult, chunked_rank, fit_eval_batch_size, metric_vectors,
    pessimistic_rank, summarize,
)
