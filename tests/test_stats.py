"""Significance tests: scipy agreement, user alignment, across-seed pairing."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from mbrec.reporting.evidence import pair_evidence, user_level_test, user_level_values
from mbrec.reporting.stats import (
    AlignmentError, RepeatFlagsMissing, adjust_pvalues, align_users, bootstrap_ci, effect_size, p_value_text,
    paired_test, paired_ttest, per_user_values, seed_ttest, wilcoxon_test,
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


def make_record(users, ranks, model="M", dataset="d", seed=0, task=TASK, heldout="append", repeat=None):
    """A minimal record with per-user ranks (and optional repeat flags) for one task."""
    per_user = {"user": list(users), "rank": list(ranks)}
    if repeat is not None:
        per_user["repeat"] = list(repeat)
    return {"model": model, "dataset": dataset, "seed": seed, "heldout": heldout,
            "results": {task: {"metrics": {}, "n_users": len(users), "note": "", "per_user": per_user}}}


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


def test_user_level_ttest_averages_each_user_over_the_shared_seeds():
    users = [f"u{index}" for index in range(6)]
    ranks_a = {0: [0, 1, 2, 3, 30, 4], 1: [1, 0, 2, 40, 3, 0]}
    ranks_b = {0: [5, 2, 20, 3, 30, 40], 1: [9, 0, 30, 40, 12, 1]}
    records_a = {seed: make_record(users, ranks, seed=seed) for seed, ranks in ranks_a.items()}
    # Model b stores its users in reverse order: the averaging must still pair by user token.
    records_b = {seed: make_record(users[::-1], ranks[::-1], seed=seed) for seed, ranks in ranks_b.items()}
    result = user_level_test(records_a, records_b, TASK, "ndcg@10")
    expected = scipy_stats.ttest_rel(
        np.mean([per_user_values(ranks_a[seed], "ndcg@10") for seed in (0, 1)], axis=0),
        np.mean([per_user_values(ranks_b[seed], "ndcg@10") for seed in (0, 1)], axis=0))
    assert result.n == len(users)  # users, not (seed, user) pairs
    assert result.pvalue == pytest.approx(float(expected.pvalue), abs=TOLERANCE)
    assert user_level_test(records_a, {7: records_b[0]}, TASK, "ndcg@10") is None


def test_seed_ttest_needs_three_common_seeds():
    assert seed_ttest({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5}) is None
    assert seed_ttest({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.5, 5: 0.1}) is None
    values_a = {0: 0.50, 1: 0.61, 2: 0.72, 3: 0.55}
    values_b = {0: 0.40, 1: 0.52, 2: 0.60, 4: 0.99}
    result = seed_ttest(values_a, values_b)
    expected = scipy_stats.ttest_rel([0.50, 0.61, 0.72], [0.40, 0.52, 0.60])
    assert result.n == 3
    assert result.pvalue == pytest.approx(float(expected.pvalue), abs=TOLERANCE)


# Hand-computed corrections (m = 4 tested, one NaN = untested, left out of the family).
# Sorted raw p: 0.005, 0.01, 0.03, 0.04.
# Holm: 4*0.005 = 0.02, 3*0.01 = 0.03, 2*0.03 = 0.06, 1*0.04 = 0.04 -> running max 0.02, 0.03, 0.06, 0.06.
# BH: 4*0.005/1 = 0.02, 4*0.01/2 = 0.02, 4*0.03/3 = 0.04, 4*0.04/4 = 0.04 -> running min from the top: same.
RAW_P = [0.01, math.nan, 0.04, 0.03, 0.005]
HOLM_P = [0.03, math.nan, 0.06, 0.06, 0.02]
BH_P = [0.02, math.nan, 0.04, 0.04, 0.02]
# BH's step-up lowers 3*0.012/1 = 0.036 to 3*0.02/2 = 0.03; Holm: 0.036, 0.04, max(0.04, 0.04).
STEP_RAW_P = [0.02, 0.012, 0.04]
STEP_HOLM_P = [0.04, 0.036, 0.04]
STEP_BH_P = [0.03, 0.03, 0.04]


def test_holm_and_bh_match_hand_computed_values():
    assert adjust_pvalues(RAW_P, "holm") == pytest.approx(HOLM_P, nan_ok=True)
    assert adjust_pvalues(RAW_P, "bh") == pytest.approx(BH_P, nan_ok=True)
    assert adjust_pvalues(STEP_RAW_P, "holm") == pytest.approx(STEP_HOLM_P)
    assert adjust_pvalues(STEP_RAW_P, "bh") == pytest.approx(STEP_BH_P)
    assert adjust_pvalues(RAW_P, "none") == pytest.approx(RAW_P, nan_ok=True)
    assert adjust_pvalues([0.6, 0.7], "holm").tolist() == [1.0, 1.0]  # capped at 1
    assert adjust_pvalues([], "holm").tolist() == []
    # scipy's own BH agrees on the tested entries
    tested = [p for p in RAW_P if not math.isnan(p)]
    assert adjust_pvalues(tested, "bh") == pytest.approx(scipy_stats.false_discovery_control(tested))
    with pytest.raises(ValueError):
        adjust_pvalues(RAW_P, "bonferroni")


def test_wilcoxon_matches_scipy_and_handles_degenerate_inputs():
    rng = np.random.default_rng(3)
    a, b = rng.random(40), rng.random(40) * 0.8
    result = wilcoxon_test(a, b)
    reference = scipy_stats.wilcoxon(a, b)
    assert result.pvalue == pytest.approx(float(reference.pvalue), abs=TOLERANCE)
    assert result.test == "wilcoxon" and result.n == 40
    assert paired_test(a, b, test="wilcoxon") == result
    assert paired_test(a, b) == paired_ttest(a, b)
    assert wilcoxon_test(SAMPLE_A, SAMPLE_A).pvalue == 1.0
    assert math.isnan(wilcoxon_test([1.0], [0.0]).pvalue)
    with pytest.raises(ValueError):
        paired_test(a, b, test="sign")


BOOTSTRAP_SIMULATIONS = 200
BOOTSTRAP_USERS = 80
BOOTSTRAP_RESAMPLES = 1000
TRUE_DIFFERENCE = 0.05


def test_bootstrap_ci_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(12)
    covered = 0
    for simulation in range(BOOTSTRAP_SIMULATIONS):
        baseline = rng.random(BOOTSTRAP_USERS)  # per-user metric of model b
        a = baseline + TRUE_DIFFERENCE + rng.normal(0.0, 0.2, BOOTSTRAP_USERS)
        low, high = bootstrap_ci(a - baseline, n_resamples=BOOTSTRAP_RESAMPLES, seed=simulation)
        covered += low <= TRUE_DIFFERENCE <= high
    assert 0.90 <= covered / BOOTSTRAP_SIMULATIONS <= 0.99


def test_bootstrap_is_seeded_and_effect_size_is_relative_to_b():
    differences = [0.0, 1.0, 1.0, -1.0, 0.0, 1.0]
    assert bootstrap_ci(differences, seed=1) == bootstrap_ci(differences, seed=1)
    assert bootstrap_ci([0.3], seed=1) == (0.3, 0.3)
    effect = effect_size([1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0])
    assert effect.mean_difference == pytest.approx(0.5) and effect.relative == pytest.approx(2.0)
    assert effect.ci_low <= 0.5 <= effect.ci_high and effect.n == 4
    assert effect_size([1.0, 0.0], [0.0, 0.0]).relative is None  # b scores 0: no relative change


def test_parts_pair_only_users_with_the_same_flag_in_both_runs():
    users = ["u1", "u2", "u3", "u4"]
    record_a = make_record(users, [0, 20, 0, 20], repeat=[1, 1, 0, 0])
    # b lists users u4, u3, u2, u1: u1 is new there, u2..u4 repeats; only u2 has a top-10 hit.
    record_b = make_record(users[::-1], [20, 20, 0, 20], repeat=[1, 1, 1, 0])
    # u1: repeat in a, new in b -> in no part; u2: repeat in both; u3, u4: new in a, repeat in b -> none
    repeat = user_level_values({0: record_a}, {0: record_b}, TASK, "recall@10", part="repeat")
    assert repeat.values_a.tolist() == [0.0] and repeat.values_b.tolist() == [1.0]  # u2: rank 20 in a, 0 in b
    new = user_level_values({0: record_a}, {0: record_b}, TASK, "recall@10", part="new")
    assert new.values_a.tolist() == []
    same_flags = make_record(users, [5, 5, 5, 5], repeat=[1, 1, 0, 0])
    result = user_level_test({0: record_a}, {0: same_flags}, TASK, "recall@10", part="new")
    assert result.n == 2 and result.mean_difference == pytest.approx(0.5 - 1.0)  # u3 hit, u4 miss vs both hit
    with pytest.raises(RepeatFlagsMissing):
        user_level_values({0: record_a}, {0: make_record(users, [0] * 4)}, TASK, "recall@10", part="new")


# Two rule-based models (Pop / Recent style): the same per-user ranks under every seed.
DETERMINISTIC_USERS = [f"u{index}" for index in range(40)]
DETERMINISTIC_RANKS_A = [index % 13 for index in range(40)]  # hits for ranks < 10
DETERMINISTIC_RANKS_B = [(index * 7) % 17 for index in range(40)]


def _deterministic_runs(seeds):
    return ({seed: make_record(DETERMINISTIC_USERS, DETERMINISTIC_RANKS_A, model="A", seed=seed) for seed in seeds},
            {seed: make_record(DETERMINISTIC_USERS, DETERMINISTIC_RANKS_B, model="B", seed=seed) for seed in seeds})


@pytest.mark.parametrize("test", ["ttest", "wilcoxon"])
@pytest.mark.parametrize("metric", ["recall@10", "ndcg@10"])
def test_deterministic_models_get_the_same_p_under_one_and_five_seeds(test, metric):
    one = pair_evidence(*_deterministic_runs([1]), TASK, metric, test=test)
    five = pair_evidence(*_deterministic_runs([1, 2, 3, 4, 5]), TASK, metric, test=test)
    assert one.user_test.n == five.user_test.n == len(DETERMINISTIC_USERS)
    assert five.user_test.pvalue == pytest.approx(one.user_test.pvalue, rel=1e-9)
    assert 0.0 < one.user_test.pvalue < 1.0
    # Repeating a deterministic run adds no evidence: the interval over users is unchanged too.
    assert (five.effect.ci_low, five.effect.ci_high) == pytest.approx((one.effect.ci_low, one.effect.ci_high))
    # Across seeds the difference is the same every time: zero variance, no p-value, and it says so.
    assert one.seed_test is None and math.isnan(five.seed_test.pvalue) and five.seed_test.n == 5
    assert "zero variance" in five.seed_test.reason


def test_a_constant_non_zero_difference_gets_no_p_value_and_says_why():
    for test in ("ttest", "wilcoxon"):
        for a, b in (([1.0, 1.0], [0.0, 0.0]), ([0.5, 0.7, 0.9, 0.2], [0.4, 0.6, 0.8, 0.1])):
            result = paired_test(a, b, test=test)
            assert math.isnan(result.pvalue) and not result.significant(), (test, a)
            assert result.reason.startswith("n/a: zero variance") and p_value_text(result, 3) == result.reason
            assert result.mean_difference == pytest.approx(np.mean(np.subtract(a, b)))
    # Seed averaging leaves rounding noise far below any real difference: still constant.
    noisy = np.array([1.0, 2.0, 3.0]) / 3.0
    assert "zero variance" in paired_ttest(noisy + 0.1, noisy + np.array([0.0, 1e-16, 0.0])).reason
    identical = paired_ttest(SAMPLE_A, SAMPLE_A)
    assert identical.pvalue == 1.0 and identical.reason.startswith("no difference")
    assert p_value_text(identical, 3) == f"1 ({identical.reason})"


def test_too_few_users_is_configurable_and_named():
    few = paired_ttest(SAMPLE_A, SAMPLE_B, min_users=10)
    assert math.isnan(few.pvalue) and few.reason == "n/a: 5 user(s), fewer than 10"
    assert paired_test(SAMPLE_A, SAMPLE_B, test="wilcoxon", min_users=6).reason.startswith("n/a: 5 user(s)")
    assert paired_ttest(SAMPLE_A, SAMPLE_B, min_users=5).pvalue == pytest.approx(KNOWN_TWO_SIDED_P, abs=TOLERANCE)
    assert p_value_text(paired_ttest([1.0], [0.0]), 3) == "n/a: 1 user(s), fewer than 2"
    with pytest.raises(ValueError, match="min_users"):
        paired_ttest(SAMPLE_A, SAMPLE_B, min_users=1)


def test_bootstrap_resamples_users_not_seed_user_pairs():
    rng = np.random.default_rng(5)
    users = [f"u{index}" for index in range(60)]
    ranks_a, ranks_b = rng.integers(0, 25, 60).tolist(), rng.integers(0, 25, 60).tolist()
    single = pair_evidence({0: make_record(users, ranks_a)}, {0: make_record(users, ranks_b)}, TASK, "ndcg@10")
    # The same run stored under five seeds: five copies of each user are still one user each.
    copies = pair_evidence({seed: make_record(users, ranks_a, seed=seed) for seed in range(5)},
                           {seed: make_record(users, ranks_b, seed=seed) for seed in range(5)}, TASK, "ndcg@10")
    width_single = single.effect.ci_high - single.effect.ci_low
    assert width_single > 0
    assert copies.effect.ci_high - copies.effect.ci_low == pytest.approx(width_single, rel=1e-9)
    assert copies.effect.n == single.effect.n == len(users)


def test_user_level_values_average_by_token_and_drop_users_missing_under_a_seed():
    records_a = {0: make_record(["u1", "u2", "u3"], [0, 20, 20]), 1: make_record(["u3", "u1", "u9"], [0, 20, 0])}
    records_b = {0: make_record(["u1", "u2", "u3"], [20, 20, 20]), 1: make_record(["u1", "u3", "u9"], [20, 20, 20])}
    values = user_level_values(records_a, records_b, TASK, "recall@10", tolerance=0.5)
    assert values.users == ["u1", "u3"] and values.dropped_users == 2  # u2 only under seed 0, u9 only under 1
    assert values.values_a.tolist() == [0.5, 0.5] and values.values_b.tolist() == [0.0, 0.0]
    assert values.seeds == (0, 1) and values.seed_means_a == (0.5, 0.5)
