"""``run_benchmark.py compare``: two stored runs, user by user."""

import pytest
from scipy import stats as scipy_stats

from mbrec.reporting.compare import compare_main, compare_runs, resolve_run
from mbrec.results import ResultsError
from mbrec.cli import main
from mbrec.reporting.stats import adjust_pvalues, per_user_values
from tests.test_tables import MISS, TASK, _recorded_protocol, make_record, store

TOLERANCE = 1e-9
# Six users; u0..u2 are repeat targets. A hits four, B two of the same users.
FLAGS = [1, 1, 1, 0, 0, 0]
RANKS_A = [0, 1, 4, 3, MISS, MISS]
RANKS_B = [0, MISS, 12, 30, MISS, 2]


def _records(seeds=(0,), repeat=FLAGS):
    return ([make_record("A", {TASK: RANKS_A, "next_item": RANKS_A}, seed=seed, repeat=repeat) for seed in seeds],
            [make_record("B", {TASK: RANKS_B, "next_item": RANKS_B}, seed=seed, repeat=repeat) for seed in seeds])


def test_rows_hold_values_difference_raw_and_corrected_p():
    (record_a,), (record_b,) = _records()
    metrics = ("recall@10", "ndcg@10")
    rows, notes = compare_runs({0: record_a}, {7: record_b}, metrics=metrics)  # single runs pair across seeds
    assert notes == [] and [(row.task, row.metric) for row in rows] == [
        (task, metric) for task in (TASK, "next_item") for metric in metrics]
    for row in rows:
        values_a, values_b = per_user_values(RANKS_A, row.metric), per_user_values(RANKS_B, row.metric)
        assert row.mean_a == pytest.approx(values_a.mean()) and row.mean_b == pytest.approx(values_b.mean())
        assert row.effect.mean_difference == pytest.approx((values_a - values_b).mean())
        assert row.test.pvalue == pytest.approx(float(scipy_stats.ttest_rel(values_a, values_b).pvalue),
                                                abs=TOLERANCE)
        assert row.n_users == len(RANKS_A) and row.seed_test is None
    assert [row.p_adjusted for row in rows] == pytest.approx(adjust_pvalues([row.test.pvalue for row in rows]))


def test_split_repeat_rows_count_each_part():
    (record_a,), (record_b,) = _records()
    rows, _ = compare_runs({0: record_a}, {0: record_b}, tasks=[TASK], metrics=("recall@10",), split_repeat=True)
    assert [(row.part, row.n_users) for row in rows] == [("all", 6), ("repeat", 3), ("new", 3)]
    assert rows[1].mean_a == pytest.approx(1.0) and rows[1].mean_b == pytest.approx(1 / 3)
    (old_a,), (old_b,) = _records(repeat=None)
    rows, notes = compare_runs({0: old_a}, {0: old_b}, tasks=[TASK], metrics=("recall@10",), split_repeat=True)
    assert [row.part for row in rows] == ["all"] and "no repeat flags" in notes[0]


def test_compare_main_with_files_and_specs(tmp_path, capsys):
    records_a, records_b = _records(seeds=(0, 1, 2))
    paths = [store(tmp_path, record) for record in records_a + records_b]
    assert main(["compare", str(paths[0]), str(paths[3]), "--metrics", "recall@10"]) == 0
    output = capsys.readouterr().out
    assert "A: A on ds (seeds 0)" in output and "B: B on ds (seeds 0)" in output
    assert f"| {TASK} | recall@10 | all | 0.6667 | 0.3333 | +0.3333 |" in output
    assert "Holm, over the family of all 2 tested rows" in output and "Warning: only 1 common seed" in output

    code = compare_main(["A/ds", "B/ds", "--results-dir", str(tmp_path), "--tasks", TASK, "--test", "wilcoxon",
                         "--correction", "bh", "--split-repeat"])
    output = capsys.readouterr().out
    assert code == 0 and "p (seeds)" in output and "Wilcoxon" in output and "Benjamini-Hochberg" in output
    assert "Warning" not in output  # three common seeds
    assert "| 0.6667 ± 0.0000 |" in output
    assert sorted(resolve_run("A/ds/1", tmp_path)) == [1]


def test_compare_reports_user_errors_without_traceback(tmp_path, capsys):
    (record_a,), _ = _records()
    store(tmp_path, record_a)
    assert compare_main(["A/ds/5", "A/ds", "--results-dir", str(tmp_path)]) == 1
    assert "stored seeds: [0]" in capsys.readouterr().err
    assert compare_main(["nothing.json", "A/ds", "--results-dir", str(tmp_path)]) == 1
    assert "neither a results record file" in capsys.readouterr().err
    other = make_record("C", {TASK: [0, 1]}, users=["x", "y"])
    store(tmp_path, other)
    assert compare_main(["A/ds", "C/ds", "--results-dir", str(tmp_path)]) == 1
    assert "share no test users" in capsys.readouterr().err
    with pytest.raises(ResultsError):
        resolve_run("Z/ds", tmp_path)


def _deterministic_records(seeds):
    """Pop / Recent style: the same per-user ranks under every seed."""
    return ({seed: make_record("A", {TASK: RANKS_A}, seed=seed) for seed in seeds},
            {seed: make_record("B", {TASK: RANKS_B}, seed=seed) for seed in seeds})


def test_rerunning_deterministic_models_under_more_seeds_changes_no_p_value():
    one, _ = compare_runs(*_deterministic_records([1]), tasks=[TASK], metrics=("recall@10", "ndcg@10"))
    five, _ = compare_runs(*_deterministic_records([1, 2, 3, 4, 5]), tasks=[TASK], metrics=("recall@10", "ndcg@10"))
    for row_one, row_five in zip(one, five):
        assert row_five.n_users == row_one.n_users == len(RANKS_A) and row_five.n_seeds == 5
        assert row_five.test.pvalue == pytest.approx(row_one.test.pvalue, rel=1e-9)
        assert row_five.p_adjusted == pytest.approx(row_one.p_adjusted, rel=1e-9)
        assert (row_five.effect.ci_low, row_five.effect.ci_high) == pytest.approx(
            (row_one.effect.ci_low, row_one.effect.ci_high))
        # the same difference under every seed: the across-seed test has nothing to estimate
        assert row_five.seed_test.n == 5 and "zero variance" in row_five.seed_test.reason


def test_compare_prints_why_a_comparison_has_no_p_value(tmp_path, capsys):
    # A beats B by exactly one hit for every user under every seed: a constant difference.
    for seed in (1, 2, 3):
        store(tmp_path, make_record("A", {TASK: [0, 0, 0, 0]}, seed=seed, users=["w", "x", "y", "z"]))
        store(tmp_path, make_record("B", {TASK: [MISS] * 4}, seed=seed, users=["w", "x", "y", "z"]))
    assert compare_main(["A/ds", "B/ds", "--results-dir", str(tmp_path), "--tasks", TASK,
                         "--metrics", "recall@10"]) == 0
    output = capsys.readouterr().out
    row = next(line for line in output.splitlines() if line.startswith(f"| {TASK} | recall@10"))
    assert row.count("n/a: zero variance (every difference is +1)") == 2  # over users, and across seeds
    assert "n = users (seed-averaged)" in output and "across-seed paired t-test" in output


def test_runs_under_different_protocols_are_refused_naming_the_keys(tmp_path, capsys):
    (record_a,), (record_b,) = _records()
    _recorded_protocol(record_a)
    _recorded_protocol(record_b, mask_history=True)
    from mbrec.protocol import ProtocolMismatch
    with pytest.raises(ProtocolMismatch, match=r"mask_history: False vs True"):
        compare_runs({0: record_a}, {0: record_b})
    store(tmp_path, record_a)
    store(tmp_path, record_b)
    assert compare_main(["A/ds", "B/ds", "--results-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "different protocols" in error and "mask_history: False vs True" in error
    _recorded_protocol(record_b)  # same protocol: compared, and the header names it
    assert compare_runs({0: record_a}, {0: record_b})[0]


def test_a_spec_with_records_under_two_protocols_needs_one_named(tmp_path, capsys):
    (record_a,), _ = _records()
    masked = _recorded_protocol(make_record("A", {TASK: RANKS_A}, created="2024-06-01T00:00:00+00:00"),
                            mask_history=True)
    store(tmp_path, _recorded_protocol(record_a))
    store(tmp_path, masked)
    with pytest.raises(ResultsError, match=r"(?s)2 protocols .* mask_history: False vs True"):
        resolve_run("A/ds", tmp_path)
    runs = resolve_run("A/ds", tmp_path, protocol=masked["protocol_fingerprint"][:6])
    assert runs[0]["run_key"] == masked["run_key"]
