"""Significance tests and effect sizes for tables and ``compare`` (protocol.md, "Significance").

* :func:`paired_ttest` wraps ``scipy.stats.ttest_rel``, :func:`wilcoxon_test` wraps
  ``scipy.stats.wilcoxon`` (both two-sided by default); :func:`paired_test` picks one by name.
  Degenerate inputs get no p-value and a ``reason`` instead (too few users, zero variance of
  the differences); identical vectors get p = 1 with a reason.
* :func:`adjust_pvalues` corrects a family of p-values (Holm, Benjamini-Hochberg, none).
* :func:`bootstrap_ci` and :func:`effect_size`: mean paired difference, its percentile
  bootstrap confidence interval (resampling the entries given, seeded) and the relative improvement.
* :func:`align_users` pairs two runs' per-user ranks on the same test users, and refuses to
  pair runs whose user sets differ (a different split must never be compared silently).
* :func:`per_user_values` turns aligned ranks into per-user metric values.
* :func:`seed_ttest` pairs per-seed means by seed, only when enough common seeds exist.

How several seeds become one test (users averaged over seeds, n = users) is
``mbrec.reporting.evidence``.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from mbrec.evaluation.metrics import metric_vectors

ALTERNATIVES = ("two-sided", "less", "greater")
DEFAULT_ALPHA = 0.05
# Paired tests on per-user vectors, by CLI name, and how footnotes name them.
TESTS = ("ttest", "wilcoxon")
DEFAULT_TEST = "ttest"
TEST_NAMES = {"ttest": "two-sided paired t-test (scipy ttest_rel)",
              "wilcoxon": "two-sided Wilcoxon signed-rank test (scipy wilcoxon, zero differences dropped)"}
# Multiple-comparison corrections, by CLI name, and how footnotes name them.
CORRECTIONS = ("holm", "bh", "none")
DEFAULT_CORRECTION = "holm"
CORRECTION_NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg", "none": "no correction"}
# Effect sizes: a 95% percentile bootstrap over users, seeded so a table is reproducible.
DEFAULT_CONFIDENCE = 0.95
DEFAULT_BOOTSTRAP_RESAMPLES = 2000
DEFAULT_BOOTSTRAP_SEED = 2024
# A multinomial draw per distinct value costs about as much as gathering 3.3 entries by index
# (measured, numpy 2.4): the bootstrap draws counts per value only when values are this few.
MULTINOMIAL_COST_PER_VALUE = 4
# Entries gathered per chunk of index resamples (32 MB of int64 indices), so memory stays flat.
BOOTSTRAP_CHUNK_ENTRIES = 1 << 22
# Parts of the test users by the repeat flag (target item in the input window or not).
REPEAT, NEW = "repeat", "new"
PARTS = (REPEAT, NEW)
# Fewer common seeds than this and an across-seed t-test says nothing useful: it is skipped.
MIN_SEEDS_FOR_SEED_TEST = 3
# A paired t-test needs at least two pairs to estimate the variance of the differences; a caller
# may ask for more users than that before a p-value is given (``min_users``).
MIN_PAIRS_FOR_TTEST = 2
DEFAULT_MIN_USERS = MIN_PAIRS_FOR_TTEST
# Differences whose spread is at most this are constant. Metric values lie in [0, 1]; averaging a
# user's value over seeds leaves rounding of ~1e-16, which must not pass for real variation.
CONSTANT_DIFFERENCE_TOLERANCE = 1e-12
# Why a paired test gave no p-value (or p = 1 without computing anything); shown in the cell.
TOO_FEW_USERS = "n/a: {n} user(s), fewer than {minimum}"
ZERO_VARIANCE = "n/a: zero variance (every difference is {difference:+.4g})"
NO_DIFFERENCE = "no difference: every user scores the same under both"
# Largest fraction of the union of two runs' test users that may be missing from either run
# before the runs are declared incomparable. 0 = the user sets must be identical.
DEFAULT_USER_MISMATCH_TOLERANCE = 0.0


class AlignmentError(ValueError):
    """Two runs cannot be paired user by user (different test users, datasets or tasks)."""


class RepeatFlagsMissing(AlignmentError):
    """A record predates repeat flags, so its users cannot be split into repeat and new targets."""


@dataclass(frozen=True)
class PairedTestResult:
    """Outcome of a paired test of ``a`` against ``b`` (``test`` is one of :data:`TESTS`).

    ``mean_difference`` is ``mean(a - b)``: positive when ``a`` is higher on average.
    ``statistic`` and ``pvalue`` are NaN when the data cannot be tested (too few pairs, zero
    variance of the differences); ``reason`` then says why, in words for a table cell. It is
    also set for identical vectors (p = 1 by convention, not computed), else empty.
    """

    statistic: float
    pvalue: float
    mean_difference: float
    n: int
    alternative: str = "two-sided"
    test: str = DEFAULT_TEST
    reason: str = ""

    def significant(self, alpha=DEFAULT_ALPHA):
        """True when ``pvalue < alpha`` (False for an untestable NaN p-value)."""
        return bool(self.pvalue < alpha)


# The name the t-test result had before Wilcoxon joined it.
TTestResult = PairedTestResult


def _paired_vectors(a, b, alternative, test):
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"{test} needs two 1-D vectors of equal length, got {a.shape} and {b.shape}")
    return a, b


def _guarded_paired_test(a, b, alternative, name, caller, scipy_test, min_users=DEFAULT_MIN_USERS):
    """Shared edge cases of the paired tests, then ``scipy_test(a, b)`` for the rest.

    Fewer than ``min_users`` pairs -> statistic and p-value NaN; all differences zero ->
    statistic 0, p-value 1 (no evidence of any difference); every difference the same non-zero
    value -> NaN: a t statistic divides by a zero standard deviation (scipy answers p = 0 even
    for two users) and no variance means no sampling error can be estimated. Each of these
    cases says why in ``reason``.
    """
    if min_users < MIN_PAIRS_FOR_TTEST:
        raise ValueError(f"min_users must be at least {MIN_PAIRS_FOR_TTEST}, got {min_users}")
    a, b = _paired_vectors(a, b, alternative, caller)
    n = int(a.size)
    differences = a - b
    mean_difference = float(np.mean(differences)) if n else math.nan
    if n < min_users:
        return PairedTestResult(math.nan, math.nan, mean_difference, n, alternative, name,
                                TOO_FEW_USERS.format(n=n, minimum=min_users))
    if np.all(np.abs(differences) <= CONSTANT_DIFFERENCE_TOLERANCE):
        return PairedTestResult(0.0, 1.0, 0.0, n, alternative, name, NO_DIFFERENCE)
    if np.ptp(differences) <= CONSTANT_DIFFERENCE_TOLERANCE:
        return PairedTestResult(math.nan, math.nan, mean_difference, n, alternative, name,
                                ZERO_VARIANCE.format(difference=mean_difference))
    outcome = scipy_test(a, b)
    return PairedTestResult(float(outcome.statistic), float(outcome.pvalue), mean_difference, n, alternative, name)


def paired_ttest(a, b, alternative="two-sided", min_users=DEFAULT_MIN_USERS):
    """Paired t-test of ``a`` vs ``b`` (``scipy.stats.ttest_rel``).

    Args:
        a, b: equally long sequences of paired observations (e.g. per-user NDCG@10).
        alternative: ``"two-sided"`` (default), ``"greater"`` (a > b) or ``"less"`` (a < b).
        min_users: fewer pairs than this get no p-value (at least 2).

    Returns:
        :class:`TTestResult`. Edge cases are made explicit (see ``reason``): fewer than
        ``min_users`` pairs or a constant non-zero difference -> statistic and p-value NaN;
        all differences zero (identical vectors) -> statistic 0 and p-value 1, since there is
        no evidence of any difference.
    """
    def ttest_rel(a, b):
        return scipy_stats.ttest_rel(a, b, alternative=alternative)

    return _guarded_paired_test(a, b, alternative, "ttest", "paired_ttest", ttest_rel, min_users)


def wilcoxon_test(a, b, alternative="two-sided", min_users=DEFAULT_MIN_USERS):
    """Wilcoxon signed-rank test of ``a`` vs ``b`` (``scipy.stats.wilcoxon``).

    Zero differences (users both runs score alike, e.g. both miss) are dropped before ranking
    (scipy's default ``zero_method="wilcox"``); ``n`` still counts every pair. Fewer than
    ``min_users`` pairs or one constant non-zero difference -> NaN (the same rule as the
    t-test, so switching tests never turns an untestable comparison into a star); all
    differences zero -> statistic 0, p-value 1.
    """
    def wilcoxon(a, b):
        with warnings.catch_warnings():
            # Few non-zero differences make scipy warn that its normal approximation is rough.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            return scipy_stats.wilcoxon(a, b, alternative=alternative)

    return _guarded_paired_test(a, b, alternative, "wilcoxon", "wilcoxon_test", wilcoxon, min_users)


_TEST_FUNCTIONS = {"ttest": paired_ttest, "wilcoxon": wilcoxon_test}


def paired_test(a, b, test=DEFAULT_TEST, alternative="two-sided", min_users=DEFAULT_MIN_USERS):
    """The paired test named ``test`` (one of :data:`TESTS`) of ``a`` vs ``b``."""
    if test not in _TEST_FUNCTIONS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    return _TEST_FUNCTIONS[test](a, b, alternative, min_users)


def p_value_text(result, digits):
    """A test's p-value as a table shows it: ``digits`` significant digits, or why there is none.

    None (no test run) -> an empty string; the caller draws its own missing mark.
    """
    if result is None:
        return ""
    if math.isnan(result.pvalue):
        return result.reason or "n/a"
    text = f"{result.pvalue:.{digits}g}"
    return f"{text} ({result.reason})" if result.reason else text


def adjust_pvalues(pvalues, method=DEFAULT_CORRECTION):
    """Adjust a family of p-values for multiple comparisons.

    Args:
        pvalues: the family, in any order; NaN entries (untested comparisons) stay NaN and do
            not count towards the family size ``m``.
        method: ``"holm"`` (step-down, controls the family-wise error rate),
            ``"bh"`` (Benjamini-Hochberg step-up, controls the false discovery rate) or
            ``"none"``.

    Returns:
        numpy array of adjusted p-values in the input order, each in [raw p, 1]. With the
        raw p-values sorted ascending, ``p(1) <= ... <= p(m)``:
        Holm ``adj(i) = max_{j <= i} min(1, (m - j + 1) p(j))``;
        BH ``adj(i) = min_{j >= i} min(1, m p(j) / j)``.
    """
    if method not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {method!r}")
    pvalues = np.asarray(pvalues, dtype=np.float64)
    adjusted = pvalues.copy()
    tested = np.flatnonzero(~np.isnan(pvalues))
    m = len(tested)
    if method == "none" or m == 0:
        return adjusted
    order = tested[np.argsort(pvalues[tested], kind="stable")]
    ranked = pvalues[order]  # ascending
    position = np.arange(1, m + 1)  # j
    if method == "holm":
        steps = np.maximum.accumulate(np.minimum(1.0, (m - position + 1) * ranked))
    else:
        steps = np.minimum.accumulate(np.minimum(1.0, m * ranked / position)[::-1])[::-1]
    adjusted[order] = steps
    return adjusted


def bootstrap_ci(differences, confidence=DEFAULT_CONFIDENCE, n_resamples=DEFAULT_BOOTSTRAP_RESAMPLES,
                 seed=DEFAULT_BOOTSTRAP_SEED):
    """Percentile bootstrap confidence interval of the mean of paired ``differences``.

    Each resample draws ``n`` entries (users) with replacement. When the differences take few
    distinct values (rank metrics of one seed), drawing how often each value occurs from a
    multinomial with the values' frequencies is the same draw and much cheaper; when they take
    many (values averaged over seeds), the entries are drawn by index, in chunks.

    Returns:
        ``(low, high)``; NaN for no differences, the value itself for one.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    differences = np.asarray(differences, dtype=np.float64)
    n = int(differences.size)
    if n == 0:
        return math.nan, math.nan
    values, counts = np.unique(differences, return_counts=True)
    if len(values) == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    if len(values) * MULTINOMIAL_COST_PER_VALUE <= n:
        drawn = rng.multinomial(n, counts / n, size=int(n_resamples))  # [n_resamples, n_values]
        means = drawn @ values / n  # [n_resamples]
    else:
        rows_per_chunk = max(1, BOOTSTRAP_CHUNK_ENTRIES // n)
        means = np.concatenate([
            differences[rng.integers(0, n, size=(min(rows_per_chunk, int(n_resamples) - start), n))].mean(axis=1)
            for start in range(0, int(n_resamples), rows_per_chunk)])
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class EffectSize:
    """How much ``a`` beats ``b`` on paired values.

    ``mean_difference`` = mean(a - b) with its bootstrap interval ``[ci_low, ci_high]`` at
    ``confidence``; ``relative`` = (mean(a) - mean(b)) / mean(b), None when mean(b) is 0.
    """

    mean_a: float
    mean_b: float
    mean_difference: float
    ci_low: float
    ci_high: float
    confidence: float
    relative: float
    n: int


def effect_size(a, b, confidence=DEFAULT_CONFIDENCE, n_resamples=DEFAULT_BOOTSTRAP_RESAMPLES,
                seed=DEFAULT_BOOTSTRAP_SEED):
    """:class:`EffectSize` of paired vectors ``a`` vs ``b``."""
    a, b = _paired_vectors(a, b, "two-sided", "effect_size")
    n = int(a.size)
    mean_a = float(a.mean()) if n else math.nan
    mean_b = float(b.mean()) if n else math.nan
    low, high = bootstrap_ci(a - b, confidence, n_resamples, seed)
    relative = (mean_a - mean_b) / mean_b if n and mean_b != 0 else None
    return EffectSize(mean_a, mean_b, float(np.mean(a - b)) if n else math.nan, low, high, confidence, relative, n)


@dataclass(frozen=True)
class AlignedRanks:
    """Per-user 0-based ranks of two runs on their common test users, in the same order."""

    users: list
    ranks_a: np.ndarray
    ranks_b: np.ndarray
    only_in_a: int  # users of run a missing from run b
    only_in_b: int  # users of run b missing from run a
    repeat_a: np.ndarray = None  # [U] bool repeat flags of run a; None when its record has none
    repeat_b: np.ndarray = None

    def part_mask(self, part):
        """``[U]`` bool: users whose target is a repeat (``"repeat"``) / new item (``"new"``) in both runs.

        Both runs' flags must agree for a user to count: runs with different window lengths
        can see the same target as a repeat in one and as new in the other.

        Raises:
            RepeatFlagsMissing: a run's record has no repeat flags.
        """
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        if self.repeat_a is None or self.repeat_b is None:
            raise RepeatFlagsMissing("a record has no repeat flags (made before they were stored); "
                                     "rerun it with --rerun to split repeat and new targets")
        wanted = part == REPEAT
        return (self.repeat_a == wanted) & (self.repeat_b == wanted)


def _describe(record):
    return f"{record.get('model')} on {record.get('dataset')} seed {record.get('seed')}"


def repeat_flags(result):
    """``[U]`` bool repeat flags of one task result of a record, or None when it predates them."""
    flags = ((result or {}).get("per_user") or {}).get("repeat")
    return None if flags is None else np.asarray(flags, dtype=bool)


def _per_user(record, task):
    """``(users, ranks, repeat)`` of ``record`` for ``task``; AlignmentError when the task has no ranks."""
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
    repeat = repeat_flags(result)
    if repeat is not None and len(repeat) != len(users):
        raise AlignmentError(f"{_describe(record)}, task '{task}': {len(users)} users but {len(repeat)} "
                             "repeat flags")
    return users, ranks, repeat


def align_users(record_a, record_b, task, tolerance=DEFAULT_USER_MISMATCH_TOLERANCE):
    """Pair the per-user ranks of two runs on the users they share, in ``record_a``'s order.

    Args:
        record_a, record_b: results records (see ``mbrec.results``).
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
    users_a, ranks_a, repeat_a = _per_user(record_a, task)
    users_b, ranks_b, repeat_b = _per_user(record_b, task)
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
    positions_b = np.asarray([position_b[user] for user in users], dtype=np.int64)
    aligned_b = ranks_b[positions_b] if len(positions_b) else np.zeros(0, dtype=np.float64)
    return AlignedRanks(users, ranks_a[common_positions_a], aligned_b, only_in_a, only_in_b,
                        None if repeat_a is None else repeat_a[common_positions_a],
                        None if repeat_b is None else repeat_b[positions_b])


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


def seed_ttest(values_a_by_seed, values_b_by_seed, alternative="two-sided", min_seeds=MIN_SEEDS_FOR_SEED_TEST):
    """Paired t-test across seeds: ``{seed: value}`` of two models, paired by seed.

    Returns None when fewer than ``min_seeds`` seeds are common to both (default 3). ``n`` is the
    number of shared seeds; a difference that is the same under every seed (deterministic
    models) is a zero-variance case and gets no p-value.
    """
    common_seeds = sorted(set(values_a_by_seed) & set(values_b_by_seed))
    if len(common_seeds) < min_seeds:
        return None
    return paired_ttest([values_a_by_seed[seed] for seed in common_seeds],
                        [values_b_by_seed[seed] for seed in common_seeds], alternative)
