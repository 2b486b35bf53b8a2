"""Significance tests for the benchmark tables (protocol.md, "Significance").

* :func:`paired_ttest` wraps ``scipy.stats.ttest_rel`` (two-sided by default).
* :func:`align_users` pairs two runs' per-user ranks on the same test users, and refuses to
  pair runs whose user sets differ (a different split must never be compared silently).
* :func:`per_user_values` turns aligned ranks into per-user metric values; pooled over seeds
  (same seed, same user) by :func:`pooled_user_ttest`.
* :func:`seed_ttest` pairs per-seed means by seed, only when enough common seeds exist.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from mbrec.evaluation import metric_vectors

ALTERNATIVES = ("two-sided", "less", "greater")
DEFAULT_ALPHA = 0.05
# Fewer common seeds than this and an across-seed t-test says nothing useful: it is skipped.
MIN_SEEDS_FOR_SEED_TEST = 3
# A paired t-test needs at least two pairs to estimate the variance of the differences.
MIN_PAIRS_FOR_TTEST = 2
# Largest fraction of the union of two runs' test users that may be missing from either run
# before the runs are declared incomparable. 0 = the user sets must be identical.
DEFAULT_USER_MISMATCH_TOLERANCE = 0.0


class AlignmentError(ValueError):
    """Two runs cannot be paired user by user (different test users, datasets or tasks)."""


@dataclass(frozen=True)
class TTestResult:
    """Outcome of a paired t-test of ``a`` against ``b``.

    ``mean_difference`` is ``mean(a - b)``: positive when ``a`` is higher on average.
    ``statistic`` and ``pvalue`` are NaN when there are too few pairs to test.
    """

    statistic: float
    pvalue: float
    mean_difference: float
    n: int
    alternative: str = "two-sided"

    def significant(self, alpha=DEFAULT_ALPHA):
        """True when ``pvalue < alpha`` (False for an untestable NaN p-value)."""
        return bool(self.pvalue < alpha)


def paired_ttest(a, b, alternative="two-sided"):
    """Paired t-test of ``a`` vs ``b`` (``scipy.stats.ttest_rel``).

    Args:
        a, b: equally long sequences of paired observations (e.g. per-user NDCG@10).
        alternative: ``"two-sided"`` (default), ``"greater"`` (a > b) or ``"less"`` (a < b).

    Returns:
        :class:`TTestResult`. Edge cases scipy leaves as NaN are made explicit: fewer than
        :data:`MIN_PAIRS_FOR_TTEST` pairs -> statistic and p-value NaN; all differences zero
        (identical vectors) -> statistic 0 and p-value 1, since there is no evidence of any
        difference.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_ttest needs two 1-D vectors of equal length, got {a.shape} and {b.shape}")
    n = int(a.size)
    mean_difference = float(np.mean(a - b)) if n else math.nan
    if n < MIN_PAIRS_FOR_TTEST:
        return TTestResult(math.nan, math.nan, mean_difference, n, alternative)
    if np.all(a == b):
        return TTestResult(0.0, 1.0, 0.0, n, alternative)
    with warnings.catch_warnings():
        # Constant non-zero differences give an infinite statistic; scipy warns, the answer is right.
        warnings.simplefilter("ignore", RuntimeWarning)
        outcome = scipy_stats.ttest_rel(a, b, alternative=alternative)
    return TTestResult(float(outcome.statistic), float(outcome.pvalue), mean_difference, n, alternative)


@dataclass(frozen=True)
class AlignedRanks:
    """Per-user 0-based ranks of two runs on their common test users, in the same order."""

    users: list
    ranks_a: np.ndarray
    ranks_b: np.ndarray
    only_in_a: int  # users of run a missing from run b
    only_in_b: int  # users of run b missing from run a


def _describe(record):
    return f"{record.get('model')} on {record.get('dataset')} seed {record.get('seed')}"


def _per_user(record, task):
    """``(users, ranks)`` of ``record`` for ``task``; AlignmentError when the task has no ranks."""
    result = (record.get("results") or {}).get(task, "absent")
    if result == "absent":
        raise AlignmentError(f"{_describe(record)} has no result for task '{task}'")
    if result is None:
        raise AlignmentError(f"{_describe(record)} cannot do task '{task}' (N/A); nothing to compare")
    per_user = result.get("per_user") or {}
    users = [str(user) for user in per_user.get("user", [])]
    ranks = np.asarray(per_user.get("rank", []), dtype=np.float64)
    if len(users) != len(ranks):
        raise AlignmentError(f"{_describe(record)}, task '{task}': {len(users)} users but {len(ranks)} ranks")
    if len(set(users)) != len(users):
        raise AlignmentError(f"{_describe(record)}, task '{task}': duplicated user tokens "
                             "(one target per user is expected)")
    return users, ranks


def align_users(record_a, record_b, task, tolerance=DEFAULT_USER_MISMATCH_TOLERANCE):
    """Pair the per-user ranks of two runs on the users they share, in ``record_a``'s order.

    Args:
        record_a, record_b: results records (see ``mbrec.benchmark.results``).
        task: e.g. ``"behavior_specific"``.
        tolerance: largest allowed fraction of the union of both user sets that is missing
            from either run (default 0: the sets must be identical).

    Raises:
        AlignmentError: the runs are on different prepared datasets or held-out settings, a run
            has no per-user ranks for ``task``, or the user sets differ beyond ``tolerance``
            (different splits or filters must never be compared silently).
    """
    for field in ("dataset", "heldout"):
        if record_a.get(field) != record_b.get(field):
            raise AlignmentError(f"Cannot pair {_describe(record_a)} with {_describe(record_b)}: "
                                 f"different {field} ({record_a.get(field)!r} vs {record_b.get(field)!r})")
    users_a, ranks_a = _per_user(record_a, task)
    users_b, ranks_b = _per_user(record_b, task)
    position_b = {user: index for index, user in enumerate(users_b)}
    common_positions_a = [index for index, user in enumerate(users_a) if user in position_b]
    n_common = len(common_positions_a)
    only_in_a = len(users_a) - n_common
    only_in_b = len(users_b) - n_common
    n_union = n_common + only_in_a + only_in_b
    mismatch = (only_in_a + only_in_b) / n_union if n_union else 0.0
    if n_common == 0 and n_union:
        raise AlignmentError(f"{_describe(record_a)} and {_describe(record_b)} share no test users "
                             f"for task '{task}': different splits cannot be compared")
    if mismatch > tolerance:
        raise AlignmentError(
            f"{_describe(record_a)} and {_describe(record_b)} have different test users for task '{task}': "
            f"{only_in_a} only in the first, {only_in_b} only in the second, {n_common} shared "
            f"({mismatch:.2%} of the union > tolerance {tolerance:.2%}); were they run on the same split?")
    users = [users_a[index] for index in common_positions_a]
    aligned_b = np.asarray([ranks_b[position_b[user]] for user in users], dtype=np.float64)
    return AlignedRanks(users, ranks_a[common_positions_a], aligned_b, only_in_a, only_in_b)


def parse_metric(metric):
    """``"ndcg@10"`` -> ``("ndcg", 10)``."""
    name, separator, cutoff = metric.lower().partition("@")
    if not separator or not cutoff.isdigit():
        raise ValueError(f"Metric names look like 'recall@10', got {metric!r}")
    return name, int(cutoff)


def per_user_values(ranks, metric):
    """Per-user values of ``metric`` (e.g. ``"ndcg@10"``) from 0-based ranks."""
    name, cutoff = parse_metric(metric)
    return metric_vectors(ranks, metrics=(name,), topk=(cutoff,))[f"{name}@{cutoff}"]


def pooled_user_ttest(records_a_by_seed, records_b_by_seed, task, metric, alternative="two-sided",
                      tolerance=DEFAULT_USER_MISMATCH_TOLERANCE):
    """Paired t-test on per-user ``metric`` values pooled over the seeds both models have.

    Pairs are (same seed, same user); with one seed this is the plain per-user test.

    Args:
        records_a_by_seed, records_b_by_seed: ``{seed: record}`` of the two models.

    Returns:
        :class:`TTestResult` of a vs b, or None when the models share no seed.

    Raises:
        AlignmentError: see :func:`align_users`.
    """
    common_seeds = sorted(set(records_a_by_seed) & set(records_b_by_seed))
    if not common_seeds:
        return None
    values_a, values_b = [], []
    for seed in common_seeds:
        aligned = align_users(records_a_by_seed[seed], records_b_by_seed[seed], task, tolerance)
        values_a.append(per_user_values(aligned.ranks_a, metric))
        values_b.append(per_user_values(aligned.ranks_b, metric))
    return paired_ttest(np.concatenate(values_a), np.concatenate(values_b), alternative)


def seed_ttest(values_a_by_seed, values_b_by_seed, alternative="two-sided", min_seeds=MIN_SEEDS_FOR_SEED_TEST):
    """Paired t-test across seeds: ``{seed: value}`` of two models, paired by seed.

    Returns None when fewer than ``min_seeds`` seeds are common to both (default 3).
    """
    common_seeds = sorted(set(values_a_by_seed) & set(values_b_by_seed))
    if len(common_seeds) < min_seeds:
        return None
    return paired_ttest([values_a_by_seed[seed] for seed in common_seeds],
                        [values_b_by_seed[seed] for seed in common_seeds], alternative)
