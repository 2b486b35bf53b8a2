"""Significance tests: scipy agreement, user alignment, across-seed pairing."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from mbrec.benchmark.stats import (
    AlignmentError, align_users, paired_ttest, per_user_values, pooled_user_ttest, seed_ttest,
)

TASK = "behavior_specific"
# Hand-made paired sample; values checked against scipy 1.17 ttest_rel.
SAMPLE_A = [1.0, 2.0, 3.0, 4.0, 5.0]
SAMPLE_B = [1.0, 1.0, 2.0, 2.0, 3.0]
KNOWN_STATISTIC = 3.2071349029490923
KNOWN_TWO_SIDED_P = 0.03267792333680301
KNOWN_GREATER_P = 0.016338961668401503
KNOWN_MEAN_DIFFERENCE = 1.2
TOLERANCE = 1e-9


def make_record(users, ranks, model="M", dataset="d", seed=0, task=TASK, heldout="append"):
    """A minimal record with per-user ranks for one task (enough for the stats helpers)."""
    return {"model": model, "dataset": dataset, "seed": seed, "heldout": heldout,
            "results": {task: {"metrics": {}, "n_users": len(users), "note": "",
                               "per_user": {"user": list(users), "rank": list(ranks)}}}}


def test_paired_ttest_matches_scipy_and_known_values():
    result = paired_ttest(SAMPLE_A, SAMPLE_B)
    reference = scipy_stats.ttest_rel(SAMPLE_A, SAMPLE_B)
    assert result.statistic == pytest.approx(float(reference.statistic), abs=TOLERANCE)
    assert result.pvalue == pytest.approx(float(reference.pvalue), abs=TOLERANCE)
    assert result.statistic == pytest.approx(KNOWN_STATISTIC, abs=TOLERANCE)
    assert result.pvalue == pytest.approx(KNOWN_TWO_SIDED_P, abs=TOLERANCE)
    assert result.mean_difference == pytest.approx(KNOWN_MEAN_DIFFERENCE)
    assert result.n == len(SAMPLE_A)
    assert result.significant(0.05) and not result.significant(0.01)


def test_paired_ttest_alternative_and_direction():
    greater = paired_ttest(SAMPLE_A, SAMPLE_B, alternative="greater")
    assert greater.pvalue == pytest.approx(KNOWN_GREATER_P, abs=TOLERANCE)
    reversed_test = paired_ttest(SAMPLE_B, SAMPLE_A)
    assert reversed_test.statistic == pytest.approx(-KNOWN_STATISTIC, abs=TOLERANCE)
    assert reversed_test.mean_difference == pytest.approx(-KNOWN_MEAN_DIFFERENCE)
    with pytest.raises(ValueError):
        paired_ttest(SAMPLE_A, SAMPLE_B, alternative="bigger")
    with pytest.raises(ValueError):
        paired_ttest(SAMPLE_A, SAMPLE_B[:-1])


def test_paired_ttest_degenerate_inputs():
    identical = paired_ttest(SAMPLE_A, SAMPLE_A)
    assert identical.pvalue == 1.0 and identical.statistic == 0.0
    single = paired_ttest([1.0], [0.0])
    assert math.isnan(single.pvalue) and not single.significant()


def test_per_user_values_follow_the_rank_formulas():
    ranks = [0, 1, 9, 10]
    assert per_user_values(ranks, "recall@10").tolist() == [1.0, 1.0, 1.0, 0.0]
    ndcg = per_user_values(ranks, "ndcg@10")
    assert ndcg == pytest.approx([1.0, 1.0 / math.log2(3), 1.0 / math.log2(11), 0.0])
    assert per_user_values(ranks, "MRR@10") == pytest.approx([1.0, 0.5, 0.1, 0.0])
    with pytest.raises(ValueError):
        per_user_values(ranks, "ndcg")


def test_align_users_pairs_by_token_not_position():
    record_a = make_record(["u1", "u2", "u3"], [0, 5, 9])
    record_b = make_record(["u3", "u1", "u2"], [30, 10, 20])
    aligned = align_users(record_a, record_b, TASK)
    assert aligned.users == ["u1", "u2", "u3"]
    assert aligned.ranks_a.tolist() == [0, 5, 9]
    assert aligned.ranks_b.tolist() == [10, 20, 30]


def test_align_users_rejects_different_user_sets():
    record_a = make_record(["u1", "u2", "u3", "u4"], [0, 1, 2, 3])
    record_b = make_record(["u1", "u2", "u3", "u9"], [0, 1, 2, 3])
    with pytest.raises(AlignmentError, match="different test users"):
        align_users(record_a, record_b, TASK)
    # 2 of 5 users unshared = 40%: accepted only under a looser tolerance, on the shared users.
    aligned = align_users(record_a, record_b, TASK, tolerance=0.5)
    assert aligned.users == ["u1", "u2", "u3"] and aligned.only_in_a == 1 and aligned.only_in_b == 1
    with pytest.raises(AlignmentError, match="share no test users"):
        align_users(record_a, make_record(["x", "y"], [0, 1]), TASK, tolerance=1.0)


def test_align_users_rejects_other_datasets_and_missing_tasks():
    record_a = make_record(["u1", "u2"], [0, 1])
    with pytest.raises(AlignmentError, match="different dataset"):
        align_users(record_a, make_record(["u1", "u2"], [0, 1], dataset="other"), TASK)
    with pytest.raises(AlignmentError, match="different heldout"):
        align_users(record_a, make_record(["u1", "u2"], [0, 1], heldout="ignore"), TASK)
    not_applicable = make_record(["u1", "u2"], [0, 1])
    not_applicable["results"][TASK] = None
    with pytest.raises(AlignmentError, match="N/A"):
        align_users(record_a, not_applicable, TASK)
    with pytest.raises(AlignmentError, match="no result"):
        align_users(record_a, record_a, "next_item")


def test_pooled_user_ttest_pairs_same_seed_and_user():
    users = [f"u{index}" for index in range(6)]
    ranks_a = {0: [0, 1, 2, 3, 30, 4], 1: [1, 0, 2, 40, 3, 0]}
    ranks_b = {0: [5, 2, 20, 3, 30, 40], 1: [9, 0, 30, 40, 12, 1]}
    records_a = {seed: make_record(users, ranks, seed=seed) for seed, ranks in ranks_a.items()}
    # Model b stores its users in reverse order: the pooling must still pair by user token.
    records_b = {seed: make_record(users[::-1], ranks[::-1], seed=seed) for seed, ranks in ranks_b.items()}
    result = pooled_user_ttest(records_a, records_b, TASK, "ndcg@10")
    expected = scipy_stats.ttest_rel(
        np.concatenate([per_user_values(ranks_a[seed], "ndcg@10") for seed in (0, 1)]),
        np.concatenate([per_user_values(ranks_b[seed], "ndcg@10") for seed in (0, 1)]))
    assert result.n == 2 * len(users)
    assert result.pvalue == pytest.approx(float(expected.pvalue), abs=TOLERANCE)
    assert pooled_user_ttest(records_a, {7: records_b[0]}, TASK, "ndcg@10") is None


def test_seed_ttest_needs_three_common_seeds():
    assert seed_ttest({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5}) is None
    assert seed_ttest({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.5, 5: 0.1}) is None
    values_a = {0: 0.50, 1: 0.61, 2: 0.72, 3: 0.55}
    values_b = {0: 0.40, 1: 0.52, 2: 0.60, 4: 0.99}
    result = seed_ttest(values_a, values_b)
    expected = scipy_stats.ttest_rel([0.50, 0.61, 0.72], [0.40, 0.52, 0.60])
    assert result.n == 3
    assert result.pvalue == pytest.approx(float(expected.pvalue), abs=TOLERANCE)
