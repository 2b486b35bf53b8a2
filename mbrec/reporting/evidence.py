"""The unit of evidence is the user: how runs under several seeds become one paired test.

The same test user re-run under another seed is the same user, not new evidence: pooling
(seed, user) pairs into one test counts each user once per seed and makes p-values and
bootstrap intervals too narrow (``benchmarks/stats_calibration.py`` measures by how much).
So, for two models, each test user's per-user metric value is averaged over the seeds both
models ran (users matched by token), and the paired test and the bootstrap run over those
users: n = users. The across-seed t-test on the per-seed means (n = shared seeds) is a
separate result, labelled as such.

Tables and ``compare`` both call :func:`pair_evidence`, so the same pair gets the same p.
"""

from dataclasses import dataclass

import numpy as np

from mbrec.reporting.stats import (
    DEFAULT_BOOTSTRAP_RESAMPLES, DEFAULT_BOOTSTRAP_SEED, DEFAULT_CONFIDENCE, DEFAULT_MIN_USERS, DEFAULT_TEST,
    DEFAULT_USER_MISMATCH_TOLERANCE, MIN_SEEDS_FOR_SEED_TEST, TEST_NAMES, align_users, effect_size, paired_test,
    per_user_values, seed_ttest,
)

# Footnote wording shared by tables and ``compare``, so both describe the one rule alike.
USER_LEVEL_RULE = ("on per-user values, each user's value averaged over the seeds both models ran "
                   "(users matched by token); n = users (seed-averaged)")
BOOTSTRAP_RULE = "percentile bootstrap resampling users (seeded)"
SEED_TEST_RULE = (f"across-seed paired t-test on the per-seed means, paired by seed; n = shared seeds "
                  f"(run only with at least {MIN_SEEDS_FOR_SEED_TEST})")
UNTESTED_RULE = ("no p-value (and no mark) when there are too few users or the differences have zero variance "
                 "(every user differs by the same amount); the reason is printed instead")


def user_level_description(test):
    """One sentence naming ``test`` (one of ``stats.TESTS``) and the user-level rule."""
    return f"{TEST_NAMES[test]} {USER_LEVEL_RULE}"


@dataclass(frozen=True)
class UserLevelValues:
    """Two models' per-user values on the users they share, each averaged over the shared seeds.

    ``values_a[i]`` / ``values_b[i]`` belong to ``users[i]``. ``seed_means_a[j]`` is model a's
    mean over those users under ``seeds[j]``. ``dropped_users`` counts users paired under some
    shared seeds but not all (possible only with a user-mismatch tolerance or a repeat/new
    part); they are left out so every user is averaged over the same seeds.
    """

    users: list
    values_a: np.ndarray
    values_b: np.ndarray
    seeds: tuple
    seed_means_a: tuple
    seed_means_b: tuple
    dropped_users: int = 0


def _paired_by_user(record_a, record_b, task, metric, part, tolerance):
    """``{user: (value_a, value_b)}`` of one seed, optionally restricted to a repeat/new part."""
    aligned = align_users(record_a, record_b, task, tolerance)
    ranks_a, ranks_b, users = aligned.ranks_a, aligned.ranks_b, aligned.users
    if part is not None:
        mask = aligned.part_mask(part)
        ranks_a, ranks_b = ranks_a[mask], ranks_b[mask]
        users = [user for user, kept in zip(users, mask) if kept]
    return dict(zip(users, zip(per_user_values(ranks_a, metric).tolist(), per_user_values(ranks_b, metric).tolist())))


def user_level_values(records_a_by_seed, records_b_by_seed, task, metric, part=None,
                      tolerance=DEFAULT_USER_MISMATCH_TOLERANCE):
    """Per-user ``metric`` values of two models, paired by user token and averaged over the shared seeds.

    Args:
        records_a_by_seed, records_b_by_seed: ``{seed: record}`` of the two models.
        part: None (all users), ``"repeat"`` or ``"new"`` (see ``AlignedRanks.part_mask``).
        tolerance: see ``stats.align_users``.

    Returns:
        :class:`UserLevelValues`, or None when the models share no seed.

    Raises:
        AlignmentError: see ``stats.align_users``; RepeatFlagsMissing when ``part`` is asked of
        a record without repeat flags.
    """
    seeds = tuple(sorted(set(records_a_by_seed) & set(records_b_by_seed)))
    if not seeds:
        return None
    by_seed = [_paired_by_user(records_a_by_seed[seed], records_b_by_seed[seed], task, metric, part, tolerance)
               for seed in seeds]
    users = [user for user in by_seed[0] if all(user in paired for paired in by_seed[1:])]
    every_user = set().union(*by_seed)
    # [seeds, users, 2]: model a then model b
    stacked = np.asarray([[paired[user] for user in users] for paired in by_seed], dtype=np.float64)
    stacked = stacked.reshape(len(seeds), len(users), 2)
    seed_means = stacked.mean(axis=1) if users else np.full((len(seeds), 2), np.nan)
    user_means = stacked.mean(axis=0)
    return UserLevelValues(users, user_means[:, 0], user_means[:, 1], seeds, tuple(seed_means[:, 0].tolist()),
                           tuple(seed_means[:, 1].tolist()), len(every_user) - len(users))


def user_level_test(records_a_by_seed, records_b_by_seed, task, metric, test=DEFAULT_TEST, alternative="two-sided",
                    part=None, tolerance=DEFAULT_USER_MISMATCH_TOLERANCE, min_users=DEFAULT_MIN_USERS):
    """Paired test (``test`` of ``stats.TESTS``) of a vs b over users, values averaged over shared seeds.

    Returns:
        ``stats.PairedTestResult`` with ``n`` = users, or None when the models share no seed.
    """
    values = user_level_values(records_a_by_seed, records_b_by_seed, task, metric, part, tolerance)
    if values is None:
        return None
    return paired_test(values.values_a, values.values_b, test=test, alternative=alternative, min_users=min_users)


@dataclass(frozen=True)
class PairEvidence:
    """Everything a table cell or a ``compare`` row says about model a vs model b.

    ``user_test``: the paired test over users (n = users, seed-averaged); ``effect``: mean
    difference over users with a bootstrap CI resampling users; ``seed_test``: the across-seed
    t-test on per-seed means (None with fewer than ``MIN_SEEDS_FOR_SEED_TEST`` shared seeds).
    """

    user_test: object
    effect: object
    seed_test: object
    values: UserLevelValues


def pair_evidence(records_a_by_seed, records_b_by_seed, task, metric, part=None, test=DEFAULT_TEST,
                  min_users=DEFAULT_MIN_USERS, confidence=DEFAULT_CONFIDENCE, n_resamples=DEFAULT_BOOTSTRAP_RESAMPLES,
                  bootstrap_seed=DEFAULT_BOOTSTRAP_SEED, tolerance=DEFAULT_USER_MISMATCH_TOLERANCE):
    """:class:`PairEvidence` of a vs b, or None when the models share no seed.

    Raises:
        AlignmentError: see :func:`user_level_values`.
    """
    values = user_level_values(records_a_by_seed, records_b_by_seed, task, metric, part, tolerance)
    if values is None:
        return None
    return PairEvidence(
        user_test=paired_test(values.values_a, values.values_b, test=test, min_users=min_users),
        effect=effect_size(values.values_a, values.values_b, confidence, n_resamples, bootstrap_seed),
        seed_test=seed_ttest(dict(zip(values.seeds, values.seed_means_a)),
                             dict(zip(values.seeds, values.seed_means_b))),
        values=values)
