"""Result tables from hand-made records: collecting, marks, tests, Improve, N/A vs missing, renderers."""

import csv
import hashlib
import io
import json
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from mbrec.results import record_path, save_record
from mbrec.reporting.compare import compare_runs, resolve_run
from mbrec.reporting.stats import per_user_values
from mbrec.reporting.tables import (
    EMPTY, MISSING, MISSING_MARK, NA_MARK, NOT_APPLICABLE, SELECTION_NOTE, UNKNOWN, UNKNOWN_MARK, VALUE, PartCount,
    build_split_tables, build_table, collect_records, efficiency_table, efficiency_to_csv, efficiency_to_markdown,
    repeat_counts, split_repeat_to_markdown, table_main, to_csv, to_latex, to_markdown, write_tables,
)
from mbrec.evaluation import summarize

TASK = "behavior_specific"
ITEM_ONLY_NOTE = "model ignores the behavior hint"
# A rank far outside every cutoff: a miss for all metrics.
MISS = 99
CREATED = "2024-05-01T00:00:00+00:00"
TOLERANCE = 1e-9
KEY_LENGTH = 12


def users_for(count):
    return [f"u{index}" for index in range(count)]


def make_record(model, ranks_by_task, dataset="ds", seed=0, users=None, created=CREATED, heldout="append",
                note="", efficiency=None, repeat=None, test_lock=None):
    """A valid run record: ``ranks_by_task[task]`` = per-user ranks, or None for an N/A task.

    Tasks not in ``ranks_by_task`` are absent from the record (not evaluated). ``repeat``:
    per-user repeat flags stored with every task (None: a record made before flags existed).
    """
    results = {}
    for task, ranks in ranks_by_task.items():
        if ranks is None:
            results[task] = None
            continue
        task_users = users or users_for(len(ranks))
        results[task] = {"metrics": summarize(ranks), "n_users": len(ranks), "note": note,
                         "per_user": {"user": list(task_users), "rank": list(ranks)}}
        if repeat is not None:
            results[task]["per_user"]["repeat"] = list(repeat)
    return {
        "run_key": hashlib.sha1(f"{model}|{dataset}|{seed}|{created}".encode()).hexdigest()[:KEY_LENGTH],
        "model": model, "dataset": dataset,
        "dataset_canonical": dataset, "seed": seed, "heldout": heldout, "config": {"seed": seed},
        "results": results, "created": created,
        "efficiency": efficiency or {"parameters": 1000, "train_seconds": 10.0, "train_seconds_per_epoch": 2.0,
                                     "eval_seconds": 1.0, "peak_cpu_rss_mb": 300.0, "peak_gpu_mb": None,
                                     "device": "cpu"},
        **({"test_lock": test_lock} if test_lock else {}),
    }


def store(results_dir, record):
    """Save ``record`` where the runner would, through the results store."""
    path = record_path(results_dir, record["model"], record["dataset"], record["seed"], record["run_key"])
    return save_record(path, record)


def recall_at_10_ranks(hits, misses):
    """Ranks giving ``hits`` users a top-10 hit (rank 0) and ``misses`` users a miss."""
    return [0] * hits + [MISS] * misses


def cell(table, model, metric="recall@10", dataset="ds"):
    return table.cells[(model, dataset, metric)]


def test_ties_bold_all_best_and_underline_next_distinct_value():
    records = [
        make_record("A", {TASK: recall_at_10_ranks(3, 1)}),  # 0.75
        make_record("B", {TASK: recall_at_10_ranks(3, 1)}),  # 0.75
        make_record("C", {TASK: recall_at_10_ranks(2, 2)}),  # 0.50
        make_record("D", {TASK: recall_at_10_ranks(2, 2)}),  # 0.50
        make_record("E", {TASK: recall_at_10_ranks(1, 3)}),  # 0.25
    ]
    table = build_table(records, metrics=("recall@10",))
    assert [model for model in "ABCDE" if cell(table, model).best] == ["A", "B"]
    assert [model for model in "ABCDE" if cell(table, model).second] == ["C", "D"]
    assert not any(cell(table, model).star for model in "ABCDE")  # tied best beats nobody
    assert cell(table, "A").mean == pytest.approx(0.75)


def test_ties_are_decided_at_display_precision():
    users = users_for(10_000)
    # 0.50000 vs 0.50010: equal when shown with 3 decimals, different with 4.
    high = make_record("High", {TASK: recall_at_10_ranks(5001, 4999)}, users=users)
    low = make_record("Low", {TASK: recall_at_10_ranks(5000, 5000)}, users=users)
    coarse = build_table([high, low], metrics=("recall@10",), decimals=3)
    assert cell(coarse, "High").best and cell(coarse, "Low").best
    fine = build_table([high, low], metrics=("recall@10",), decimals=4)
    assert cell(fine, "High").best and cell(fine, "Low").second


def test_star_follows_the_paired_per_user_test():
    rng = np.random.default_rng(0)
    n_users = 60
    strong = rng.integers(0, 8, n_users).tolist()  # mostly hits
    weak = rng.integers(0, 40, n_users).tolist()  # mostly misses
    near = list(strong)
    near[0] = MISS  # differs from 'strong' on one user only
    records = [make_record("Strong", {TASK: strong}), make_record("Weak", {TASK: weak}),
               make_record("Near", {TASK: near})]

    with_near = build_table(records, metrics=("recall@10", "ndcg@10"))
    best = cell(with_near, "Strong")
    assert best.best and best.compared_with == "Near"
    assert not best.star  # one user of difference: not significant
    assert best.user_test.pvalue > 0.05
    assert best.seed_test is None and not best.seed_star  # one seed: no across-seed test

    without_near = build_table(records[:2], metrics=("recall@10", "ndcg@10"))
    for metric in ("recall@10", "ndcg@10"):
        expected = scipy_stats.ttest_rel(per_user_values(strong, metric), per_user_values(weak, metric))
        best = cell(without_near, "Strong", metric)
        assert best.user_test.pvalue == pytest.approx(float(expected.pvalue), abs=TOLERANCE)
        assert best.star == (float(expected.pvalue) < 0.05)
        assert best.star
        assert not cell(without_near, "Weak", metric).star
    # A stricter alpha removes the star.
    strict = build_table(records[:2], metrics=("ndcg@10",), alpha=1e-300)
    assert not cell(strict, "Strong", "ndcg@10").star


def test_star_averages_users_over_seeds_and_dagger_uses_across_seed_test():
    rng = np.random.default_rng(1)
    n_users, seeds = 30, (0, 1, 2)
    strong = {seed: rng.integers(0, 6, n_users).tolist() for seed in seeds}
    weak = {seed: rng.integers(0, 30, n_users).tolist() for seed in seeds}
    records = ([make_record("Strong", {TASK: strong[seed]}, seed=seed) for seed in seeds]
               + [make_record("Weak", {TASK: weak[seed]}, seed=seed) for seed in seeds])
    table = build_table(records, metrics=("ndcg@10",), show_std=True)
    best = cell(table, "Strong", "ndcg@10")
    # n = users: each user's value averaged over the three seeds, not 3 x 30 (seed, user) pairs
    user_level = scipy_stats.ttest_rel(np.mean([per_user_values(strong[seed], "ndcg@10") for seed in seeds], axis=0),
                                       np.mean([per_user_values(weak[seed], "ndcg@10") for seed in seeds], axis=0))
    assert best.user_test.n == n_users
    assert best.user_test.pvalue == pytest.approx(float(user_level.pvalue), abs=TOLERANCE)
    seed_means_strong = [per_user_values(strong[seed], "ndcg@10").mean() for seed in seeds]
    seed_means_weak = [per_user_values(weak[seed], "ndcg@10").mean() for seed in seeds]
    across = scipy_stats.ttest_rel(seed_means_strong, seed_means_weak)
    assert best.seed_test.pvalue == pytest.approx(float(across.pvalue), abs=TOLERANCE)
    assert best.seed_star == (float(across.pvalue) < 0.05)
    assert best.mean == pytest.approx(np.mean(seed_means_strong))
    assert best.std == pytest.approx(np.std(seed_means_strong, ddof=1))
    assert " ± " in to_markdown(table)


def test_dagger_marks_a_significant_across_seed_difference():
    n_users = 20
    strong_hits, weak_hits = {0: 18, 1: 16, 2: 17}, {0: 6, 1: 7, 2: 5}
    records = ([make_record("Strong", {TASK: recall_at_10_ranks(hits, n_users - hits)}, seed=seed)
                for seed, hits in strong_hits.items()]
               + [make_record("Weak", {TASK: recall_at_10_ranks(hits, n_users - hits)}, seed=seed)
                  for seed, hits in weak_hits.items()])
    table = build_table(records, metrics=("recall@10",))
    best = cell(table, "Strong")
    expected = scipy_stats.ttest_rel([hits / n_users for hits in strong_hits.values()],
                                     [hits / n_users for hits in weak_hits.values()])
    assert best.seed_test.pvalue == pytest.approx(float(expected.pvalue), abs=TOLERANCE)
    assert best.star and best.seed_star
    assert "**0.8500**\\*†" in to_markdown(table)
    assert "\\textbf{0.8500}$^{*}$$^{\\dagger}$" in to_latex(table)
    # Only two seeds: no across-seed test, no dagger.
    two_seeds = build_table([record for record in records if record["seed"] < 2], metrics=("recall@10",))
    assert cell(two_seeds, "Strong").seed_test is None and not cell(two_seeds, "Strong").seed_star


def test_mismatched_users_are_reported_not_tested():
    records = [make_record("A", {TASK: [0, 0, 0, 1]}, users=["a", "b", "c", "d"]),
               make_record("B", {TASK: [0, MISS, MISS, MISS]}, users=["a", "b", "c", "z"])]
    table = build_table(records, metrics=("recall@10",))
    assert cell(table, "A").best and not cell(table, "A").star
    assert any("different test users" in problem for problem in table.problems)


def test_improve_row_compares_best_proposed_with_best_baseline():
    records = [
        make_record("Base1", {TASK: recall_at_10_ranks(5, 5)}),  # 0.5
        make_record("Base2", {TASK: recall_at_10_ranks(4, 6)}),  # 0.4
        make_record("Ours", {TASK: recall_at_10_ranks(6, 4)}),  # 0.6
        make_record("Ours2", {TASK: recall_at_10_ranks(3, 7)}),  # 0.3
    ]
    table = build_table(records, metrics=("recall@10",), proposed=("Ours", "Ours2"))
    assert table.baselines == ["Base1", "Base2"] and table.proposed == ["Ours", "Ours2"]
    assert table.improve[("ds", "recall@10")] == pytest.approx((0.6 - 0.5) / 0.5 * 100)
    markdown = to_markdown(table)
    assert "| Improve | +20.00% |" in markdown
    assert markdown.index("Base2") < markdown.index("| Ours ")  # baselines first
    # The proposed group losing gives a negative improvement.
    losing = build_table(records, metrics=("recall@10",), proposed=("Ours2",))
    assert losing.improve[("ds", "recall@10")] == pytest.approx((0.3 - 0.6) / 0.6 * 100)
    # No proposed group: no Improve row.
    assert "Improve" not in to_markdown(build_table(records, metrics=("recall@10",)))


def test_not_applicable_versus_missing_cells():
    records = [
        make_record("MB", {TASK: [0, 1, 2], "behavior_item": [0, 1, 2]}, dataset="ds1"),
        make_record("MB", {TASK: [0, 1, 2], "behavior_item": [0, 1, 2]}, dataset="ds2"),
        make_record("ItemOnly", {TASK: [3, 4, 5], "behavior_item": None}, dataset="ds1", note=ITEM_ONLY_NOTE),
        make_record("NoTask", {TASK: [0, 0, 0]}, dataset="ds1"),  # behavior_item not evaluated
    ]
    table = build_table(records, task="behavior_item", metrics=("recall@10",), proposed=("Ghost",))
    assert cell(table, "MB", dataset="ds1").status == VALUE
    assert cell(table, "ItemOnly", dataset="ds1").status == NOT_APPLICABLE
    assert cell(table, "ItemOnly", dataset="ds2").status == MISSING  # no run on ds2
    assert cell(table, "NoTask", dataset="ds1").status == MISSING
    assert cell(table, "Ghost", dataset="ds1").status == MISSING  # proposed, never run
    assert table.improve[("ds1", "recall@10")] is None
    markdown = to_markdown(table)
    assert NA_MARK in markdown and MISSING_MARK in markdown
    item_only_row = next(line for line in markdown.splitlines() if line.startswith("| ItemOnly"))
    assert item_only_row == f"| ItemOnly | {NA_MARK} | {MISSING_MARK} |"
    # The note of item-only models reaches the footnote (behavior_specific task).
    footnote = " ".join(build_table(records, metrics=("recall@10",)).footnote)
    assert "ignores the behavior hint: ItemOnly" in footnote
    assert "heldout setting" in footnote and "ds1: append" in footnote


def test_collect_records_reports_corrupted_partial_and_duplicate_files(tmp_path):
    good = store(tmp_path, make_record("A", {TASK: [0, 1]}))
    old = store(tmp_path, make_record("B", {TASK: [MISS, MISS]}, created="2024-01-01T00:00:00+00:00"))
    new = store(tmp_path, make_record("B", {TASK: [0, 0]}, created="2024-06-01T00:00:00+00:00"))
    corrupted = tmp_path / "runs" / "ds" / "C" / "C-seed0-corrupted.json"
    corrupted.parent.mkdir(parents=True)
    corrupted.write_text('{"model": "C", "results": {', encoding="utf-8")
    partial = tmp_path / "runs" / "ds" / "D" / "D-seed0-partial.json"
    partial.parent.mkdir(parents=True)
    partial_record = make_record("D", {TASK: [0, 1]})
    del partial_record["results"]
    partial.write_text(json.dumps(partial_record), encoding="utf-8")
    inconsistent = tmp_path / "runs" / "ds" / "E" / "E-seed0-inconsistent.json"
    inconsistent.parent.mkdir(parents=True)
    broken = {"record_version": 1, **make_record("E", {TASK: [0, 1]})}
    broken["results"][TASK]["per_user"]["rank"] = [0]
    inconsistent.write_text(json.dumps(broken), encoding="utf-8")

    records, problems = collect_records(tmp_path)
    assert sorted(record["model"] for record in records) == ["A", "B"]
    assert next(record for record in records if record["model"] == "B")["created"].startswith("2024-06")
    text = "\n".join(problems)
    assert str(corrupted) in text and "not valid JSON" in text
    assert str(partial) in text and "missing" in text
    assert str(inconsistent) in text
    assert f"using {new}" in text and str(old) in text
    assert good.exists()

    filtered, _ = collect_records(tmp_path, models=["A"], seeds=[0])
    assert [record["model"] for record in filtered] == ["A"]
    assert collect_records(tmp_path, seeds=[5])[0] == []


def _marked_table():
    records = [
        make_record("Base", {TASK: [5, 7, 30, 40, 9, 60, 50, 3]}),
        make_record("Runner", {TASK: [1, 2, 3, 12, 30, 2, 8, 40]}),
        make_record("Ours", {TASK: [0] * 8}),
        make_record("ItemOnly", {TASK: None}, note=ITEM_ONLY_NOTE),
    ]
    return build_table(records, metrics=("recall@10", "ndcg@10"), proposed=("Ours", "Missing_model"))


def test_renderers_contain_the_marks():
    table = _marked_table()
    assert cell(table, "Ours", "ndcg@10").star
    markdown = to_markdown(table)
    assert "**1.0000**\\*" in markdown and "<u>" in markdown and NA_MARK in markdown
    assert MISSING_MARK in markdown and "| Improve |" in markdown and "p < 0.05" in markdown
    assert "- \\*: the sole best model" in markdown

    latex = to_latex(table)
    for marker in ("\\toprule", "\\midrule", "\\bottomrule", "\\textbf{1.0000}$^{*}$", "\\underline{",
                   "\\multicolumn{2}{c}{ds}", "Missing\\_model", "\\%", NA_MARK, "$^{*}$: the sole best",
                   "p $<$ 0.05", "behavior\\_specific"):
        assert marker in latex

    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    by_key = {(row["model"], row["metric"]): row for row in rows}
    assert by_key[("Ours", "ndcg@10")]["mark"] == "best" and by_key[("Ours", "ndcg@10")]["star"] == "1"
    assert by_key[("Runner", "ndcg@10")]["mark"] == "second"
    assert by_key[("ItemOnly", "ndcg@10")]["status"] == NOT_APPLICABLE
    assert by_key[("Missing_model", "ndcg@10")]["status"] == MISSING
    # Best baseline is Runner with 5 of 8 top-10 hits.
    assert float(by_key[("Improve", "recall@10")]["mean"]) == pytest.approx((1.0 - 0.625) / 0.625 * 100)
    assert float(by_key[("Ours", "ndcg@10")]["p_user"]) < 0.05


def test_write_tables_writes_three_formats(tmp_path):
    paths = write_tables(_marked_table(), tmp_path / "tables", "main")
    assert sorted(paths) == ["csv", "md", "tex"]
    assert (tmp_path / "tables" / "main.tex").read_text(encoding="utf-8").startswith("\\begin{table}")
    assert not [path for path in (tmp_path / "tables").iterdir() if path.name.startswith(".")]


def test_efficiency_table_prefers_gpu_memory():
    gpu = {"parameters": 2000, "train_seconds": 30.0, "train_seconds_per_epoch": 3.0, "eval_seconds": 2.0,
           "peak_cpu_rss_mb": 900.0, "peak_gpu_mb": 100.0, "device": "cuda:0"}
    records = [make_record("A", {TASK: [0]}, seed=0), make_record("A", {TASK: [0]}, seed=1,
                                                                  efficiency={**gpu, "peak_gpu_mb": None,
                                                                              "device": "cpu"}),
               make_record("G", {TASK: [0]}, efficiency=gpu)]
    rows = {row.model: row for row in efficiency_table(records)}
    assert rows["A"].n_seeds == 2 and rows["A"].memory_kind == "CPU RSS"
    assert rows["A"].peak_memory_mb == pytest.approx((300.0 + 900.0) / 2)
    assert rows["A"].train_seconds_per_epoch == pytest.approx((2.0 + 3.0) / 2)
    assert rows["G"].memory_kind == "GPU" and rows["G"].peak_memory_mb == pytest.approx(100.0)
    assert "| G | ds | 1 | 2,000 |" in efficiency_to_markdown(list(rows.values()))
    assert efficiency_to_csv(list(rows.values())).splitlines()[0].startswith("model,dataset,n_seeds,parameters")


def test_table_main_rebuilds_from_stored_results(tmp_path, capsys):
    for seed in (0, 1):
        store(tmp_path, make_record("Base", {TASK: [5, 7, 30, 40]}, seed=seed))
        store(tmp_path, make_record("Ours", {TASK: [0, 1, 0, 2]}, seed=seed))
    bad = tmp_path / "runs" / "ds" / "Base" / "Base-seed9-bad.json"
    bad.write_text("not json", encoding="utf-8")
    out_dir = tmp_path / "out"
    code = table_main(["--results-dir", str(tmp_path), "--proposed", "Ours", "--metrics", "recall@10",
                       "--std", "--out", str(out_dir)])
    captured = capsys.readouterr()
    assert code == 0
    assert "| Improve |" in captured.out and str(bad) in captured.err
    written = sorted(path.name for path in out_dir.iterdir())
    assert written == ["behavior_specific.csv", "behavior_specific.md", "behavior_specific.tex",
                       "efficiency.csv", "efficiency.md", "efficiency.png"]
    assert (out_dir / "efficiency.png").read_bytes().startswith(b"\x89PNG")
    assert table_main(["--results-dir", str(tmp_path / "empty")]) == 1


# Recall@10 with 20 users: the runner-up hits 5, the best the same 5 and 4 more. The paired
# t-test on these differences gives p = 0.0421 (scipy ttest_rel): significant alone, not
# after Holm over two such comparisons (2 x 0.0421 > 0.05), still under BH (max(2p/1, 2p/2) step-up = p).
CORRECTION_USERS = 20
RUNNER_UP_HITS, EXTRA_HITS = 5, 4
RAW_P = 0.04208628671050175


def _two_dataset_records():
    best = recall_at_10_ranks(RUNNER_UP_HITS + EXTRA_HITS, CORRECTION_USERS - RUNNER_UP_HITS - EXTRA_HITS)
    runner_up = recall_at_10_ranks(RUNNER_UP_HITS, CORRECTION_USERS - RUNNER_UP_HITS)
    return [make_record(model, {TASK: ranks}, dataset=dataset)
            for dataset in ("ds1", "ds2") for model, ranks in (("Best", best), ("Runner", runner_up))]


@pytest.mark.parametrize("correction, starred, adjusted", [("none", True, RAW_P), ("holm", False, 2 * RAW_P),
                                                           ("bh", True, RAW_P)])
def test_correction_spans_every_comparison_of_the_table(correction, starred, adjusted):
    table = build_table(_two_dataset_records(), metrics=("recall@10",), correction=correction)
    assert table.family_size == 2
    for dataset in ("ds1", "ds2"):
        best = cell(table, "Best", dataset=dataset)
        assert best.user_test.pvalue == pytest.approx(RAW_P, abs=TOLERANCE)
        assert best.user_p_adjusted == pytest.approx(adjusted, abs=TOLERANCE)
        assert best.star == starred
    footnote = " ".join(table.footnote)
    if correction == "none":
        assert "uncorrected" in footnote
    else:
        name = {"holm": "Holm", "bh": "Benjamini-Hochberg"}[correction]
        assert f"{name}-corrected over the family of all 2 per-user comparisons" in footnote
    assert "paired t-test (scipy ttest_rel)" in footnote


def test_wilcoxon_option_and_effect_sizes():
    rng = np.random.default_rng(5)
    strong, weak = rng.integers(0, 8, 50).tolist(), rng.integers(0, 40, 50).tolist()
    table = build_table([make_record("Strong", {TASK: strong}), make_record("Weak", {TASK: weak})],
                        metrics=("ndcg@10",), test="wilcoxon")
    best = cell(table, "Strong", "ndcg@10")
    values_strong, values_weak = per_user_values(strong, "ndcg@10"), per_user_values(weak, "ndcg@10")
    assert best.user_test.pvalue == pytest.approx(float(scipy_stats.wilcoxon(values_strong, values_weak).pvalue))
    assert best.effect.mean_difference == pytest.approx(float(np.mean(values_strong - values_weak)))
    assert best.effect.ci_low < best.effect.mean_difference < best.effect.ci_high
    assert best.effect.relative == pytest.approx(values_strong.mean() / values_weak.mean() - 1)
    assert "Wilcoxon signed-rank" in " ".join(table.footnote)
    row = next(row for row in csv.DictReader(io.StringIO(to_csv(table))) if row["model"] == "Strong")
    assert float(row["difference"]) == pytest.approx(best.effect.mean_difference)
    assert row["test"] == "wilcoxon" and row["correction"] == "holm" and row["n_users"] == "50"
    markdown = to_markdown(table)
    assert "| ds | ndcg@10 | Strong | Weak |" in markdown and "p (Holm)" in markdown


def test_footnote_states_the_test_lock_and_warns_about_few_seeds():
    lock = {"checkpoint_sha256": "ab" * 32, "selected_on": "valid", "valid_task": TASK,
            "valid_metric": "ndcg@10", "valid_value": 0.3, "selected_epoch": 4, "test_evaluations": 1}
    records = [make_record("A", {TASK: [0, 1, 2]}, seed=seed, test_lock=lock) for seed in (0, 1, 2)]
    records.append(make_record("B", {TASK: [5, 6, 7]}, test_lock=None))
    table = build_table(records, metrics=("recall@10",))
    footnote = " ".join(table.footnote)
    assert SELECTION_NOTE == "Selected on valid; test evaluated once"
    assert SELECTION_NOTE in footnote and "behavior_specific ndcg@10" in footnote
    assert "1 of 4 records predate stored checkpoint hashes: B/ds/seed 0" in footnote
    assert len(table.warnings) == 1 and "fewer than 3 seeds for B (1)" in table.warnings[0]
    assert "> **Warning:** ds: fewer than 3 seeds" in to_markdown(table)
    three_each = [record for record in records if record["model"] == "A"]
    assert build_table(three_each, metrics=("recall@10",)).warnings == []


# Five users: u0, u1 repeat targets; u2..u4 new items. "Copy" hits the repeats only, "Explore" the new ones.
SPLIT_FLAGS = [1, 1, 0, 0, 0]
COPY_RANKS = [0, 1, MISS, MISS, MISS]
EXPLORE_RANKS = [MISS, MISS, 0, 2, 3]


def _split_records():
    return [make_record("Copy", {TASK: COPY_RANKS}, repeat=SPLIT_FLAGS),
            make_record("Explore", {TASK: EXPLORE_RANKS}, repeat=SPLIT_FLAGS),
            make_record("Old", {TASK: [0, 0, 0, 0, 0]})]  # made before repeat flags were stored


def test_split_repeat_tables_values_counts_and_unknown_records():
    records = _split_records()
    tables = build_split_tables(records, metrics=("recall@10",))
    assert cell(tables["repeat"], "Copy").mean == 1.0 and cell(tables["repeat"], "Explore").mean == 0.0
    assert cell(tables["new"], "Copy").mean == 0.0 and cell(tables["new"], "Explore").mean == 1.0
    assert cell(tables["repeat"], "Old").status == UNKNOWN and cell(tables["new"], "Old").status == UNKNOWN
    # the tests run on each part's users only: 2 repeat pairs, 3 new pairs
    assert cell(tables["repeat"], "Copy").user_test.n == 2 and cell(tables["new"], "Explore").user_test.n == 3
    # Each part has one side hitting every user and the other none: a constant difference, which
    # gets no p-value (zero variance), so no comparison enters the family.
    assert tables["repeat"].family_size == tables["new"].family_size == 0
    assert cell(tables["repeat"], "Copy").user_test.reason.startswith("n/a: zero variance")
    varied = build_split_tables([make_record("Copy", {TASK: [0, 1, MISS, MISS, 0]}, repeat=SPLIT_FLAGS),
                                 make_record("Explore", {TASK: [MISS, 1, 0, 2, 3]}, repeat=SPLIT_FLAGS)],
                                metrics=("recall@10",))
    assert varied["repeat"].family_size == varied["new"].family_size == 2  # one family over both parts
    counts = repeat_counts(records, TASK)
    assert counts[("Copy", "ds")] == {0: PartCount(2, 3)} and not counts[("Old", "ds")][0].known
    markdown = split_repeat_to_markdown(tables, counts)
    assert "| Copy | 2 / 3 (40.0% repeat) |" in markdown
    assert f"| Old | {UNKNOWN_MARK} (no repeat flags) |" in markdown
    assert f"| Old | {UNKNOWN_MARK} |" in markdown and "no repeat flags (made before they were stored)" in markdown
    assert markdown.index("Repeat targets") < markdown.index("New-item targets") < markdown.index("Users per part")
    # A part without users is said to be empty, not missing.
    no_repeats = build_split_tables([make_record("Copy", {TASK: COPY_RANKS}, repeat=[0] * len(COPY_RANKS))],
                                    metrics=("recall@10",))
    assert cell(no_repeats["repeat"], "Copy").status == EMPTY and "| Copy | n=0 |" in to_markdown(no_repeats["repeat"])


def test_table_main_split_repeat_writes_both_parts(tmp_path, capsys):
    for record in _split_records():
        store(tmp_path, record)
    out_dir = tmp_path / "out"
    code = table_main(["--results-dir", str(tmp_path), "--metrics", "recall@10", "--split-repeat",
                       "--correction", "bh", "--test", "wilcoxon", "--out", str(out_dir), "--no-plot"])
    captured = capsys.readouterr()
    assert code == 0
    assert "1 run(s) have no repeat flags" in captured.err and "Users per part" in captured.out
    written = sorted(path.name for path in out_dir.iterdir())
    assert "behavior_specific-split-repeat.md" in written
    assert {"behavior_specific-repeat.csv", "behavior_specific-new.tex"} <= set(written)
    split = (out_dir / "behavior_specific-split-repeat.md").read_text(encoding="utf-8")
    assert "Benjamini-Hochberg" in split and "Wilcoxon" in split
    rows = list(csv.DictReader(io.StringIO((out_dir / "behavior_specific-new.csv").read_text(encoding="utf-8"))))
    assert {row["part"] for row in rows} == {"new"}


def test_sanity_baselines_are_the_first_rows_by_default():
    records = [make_record(model, {TASK: [0, 1]}) for model in ("Alpha", "Recent", "SASRec", "Pop", "Zeta")]
    assert build_table(records, metrics=("recall@10",)).baselines == ["Pop", "Recent", "Alpha", "SASRec", "Zeta"]
    chosen = build_table(records, metrics=("recall@10",), models=["SASRec", "Pop"], proposed=["Zeta"])
    assert chosen.baselines == ["SASRec", "Pop"] and chosen.proposed == ["Zeta"]


def test_footnote_says_which_runs_were_id_only_and_which_used_modal_features():
    id_only = make_record("M3BSR", {TASK: [0, 1, 2]}, dataset="retail")
    id_only["model_notes"] = {"id_only": True, "modalities": []}
    modal = make_record("M3BSR", {TASK: [0, 1, 2]}, dataset="taobao")
    modal["model_notes"] = {"id_only": False, "modalities": ["category"]}
    plain = make_record("SASRec", {TASK: [3, 4, 5]}, dataset="retail")  # records no model notes
    footnote = " ".join(build_table([id_only, modal, plain], metrics=("recall@10",)).footnote)
    assert "ID-only (no modal item features, modality denoising off): M3BSR on retail." in footnote
    assert "Modal item features used: M3BSR on taobao (category)." in footnote
    assert "SASRec" not in footnote.split("ID-only")[1]
    assert "ID-only" not in " ".join(build_table([plain], metrics=("recall@10",)).footnote)



def _deterministic_records(seeds, ranks_a, ranks_b):
    """Two rule-based models (Pop / Recent style): the same per-user ranks under every seed."""
    return ([make_record("Pop", {TASK: ranks_a}, seed=seed) for seed in seeds]
            + [make_record("Recent", {TASK: ranks_b}, seed=seed) for seed in seeds])


DETERMINISTIC_A = [index % 12 for index in range(50)]
DETERMINISTIC_B = [(index * 7) % 19 for index in range(50)]


def test_deterministic_models_get_the_same_p_and_star_under_one_and_five_seeds():
    metrics = ("recall@10", "ndcg@10")
    one = build_table(_deterministic_records([1], DETERMINISTIC_A, DETERMINISTIC_B), metrics=metrics)
    five = build_table(_deterministic_records([1, 2, 3, 4, 5], DETERMINISTIC_A, DETERMINISTIC_B), metrics=metrics)
    for metric in metrics:
        single, repeated = cell(one, "Pop", metric), cell(five, "Pop", metric)
        assert repeated.user_test.n == single.user_test.n == len(DETERMINISTIC_A)
        assert repeated.user_test.pvalue == pytest.approx(single.user_test.pvalue, rel=1e-9)
        assert repeated.user_p_adjusted == pytest.approx(single.user_p_adjusted, rel=1e-9)
        assert repeated.star == single.star
        # the same difference under every seed: nothing for the across-seed test to estimate
        assert not repeated.seed_star and "zero variance" in repeated.seed_test.reason
    assert "n = users (seed-averaged)" in " ".join(five.footnote)
    assert "across-seed paired t-test on the per-seed means" in " ".join(five.footnote)


def test_a_constant_difference_gets_no_star_and_the_table_says_why():
    # Pop hits every user at rank 0, Recent misses every user: the same difference for all users.
    records = _deterministic_records([1, 2, 3], [0] * 6, [MISS] * 6)
    table = build_table(records, metrics=("recall@10",))
    best = cell(table, "Pop")
    assert best.best and not best.star and not best.seed_star
    assert math.isnan(best.user_test.pvalue) and best.user_test.reason.startswith("n/a: zero variance")
    markdown = to_markdown(table)
    assert "n/a: zero variance (every difference is +1)" in markdown
    row = next(row for row in csv.DictReader(io.StringIO(to_csv(table))) if row["model"] == "Pop")
    assert row["p_user"] == "" and row["p_user_note"].startswith("n/a: zero variance") and row["star"] == "0"
    too_few = build_table(_deterministic_records([1], [0, 3, 20], [20, 0, 20]), metrics=("recall@10",), min_users=5)
    assert cell(too_few, "Pop").user_test.reason == "n/a: 3 user(s), fewer than 5"


def test_table_and_compare_give_the_same_p_for_the_same_pair(tmp_path):
    rng = np.random.default_rng(8)
    seeds, n_users = (1, 2, 3), 40
    user_skill = rng.integers(0, 15, n_users)  # users stay easy or hard under every seed
    for seed in seeds:
        store(tmp_path, make_record("Strong", {TASK: (user_skill + rng.integers(0, 4, n_users)).tolist()}, seed=seed))
        store(tmp_path, make_record("Weak", {TASK: (user_skill + rng.integers(2, 9, n_users)).tolist()}, seed=seed))
    records, _ = collect_records(tmp_path)
    for test in ("ttest", "wilcoxon"):
        table = build_table(records, metrics=("ndcg@10",), test=test)
        best = cell(table, "Strong", "ndcg@10")
        rows, _ = compare_runs(resolve_run("Strong/ds", tmp_path), resolve_run("Weak/ds", tmp_path),
                               tasks=[TASK], metrics=("ndcg@10",), test=test)
        assert rows[0].test.pvalue == pytest.approx(best.user_test.pvalue, rel=1e-12)
        assert rows[0].test.n == best.user_test.n == n_users
        assert rows[0].seed_test.pvalue == pytest.approx(best.seed_test.pvalue, rel=1e-9)
        assert (rows[0].effect.ci_low, rows[0].effect.ci_high) == (best.effect.ci_low, best.effect.ci_high)


def _recorded_protocol(record, **changes):
    """Give ``record`` a protocol as the runner stores it, with ``changes`` to its settings."""
    from mbrec.protocol import protocol_fingerprint, protocol_of

    settings = {"eval_tasks": [TASK], "topk": [5, 10, 20], "valid_task": TASK, "valid_metric": "ndcg@10",
                **changes}
    record["protocol"] = protocol_of(record["dataset"], "inter-sha256:abc", record["heldout"], settings)
    record["protocol_fingerprint"] = protocol_fingerprint(record["protocol"])
    return record


def test_a_masked_and_an_unmasked_run_are_never_averaged_into_one_cell(tmp_path, capsys):
    """Issue 18: a masked and an unmasked run of one model were averaged into one starred cell."""
    from mbrec.protocol import ProtocolMismatch

    store(tmp_path, _recorded_protocol(make_record("A", {TASK: [0, 0, 1, 2]}, seed=0)))
    store(tmp_path, _recorded_protocol(make_record("A", {TASK: [0, 0, 0, 0]}, seed=1), mask_history=True))
    store(tmp_path, _recorded_protocol(make_record("B", {TASK: [5, 7, 30, 40]}, seed=0)))
    records, _ = collect_records(tmp_path)
    with pytest.raises(ProtocolMismatch, match=r"ds: protocol \w+ \(A seed 1 .*mask_history: False vs True"):
        build_table(records)
    assert table_main(["--results-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert "different protocols" in error and "mask_history: False vs True" in error and "--by-protocol" in error

    code = table_main(["--results-dir", str(tmp_path), "--out", str(tmp_path / "out"), "--by-protocol",
                       "--metrics", "recall@10"])
    output = capsys.readouterr().out
    assert code == 0 and "ds is shown under 2 protocols differing in: mask_history" in output
    masked = next(record for record in records if record["seed"] == 1)["protocol_fingerprint"]
    header = next(line for line in output.splitlines() if line.startswith("| Model"))
    assert f"ds [{masked[:8]}]" in header and header.count("ds [") == 2
    unmasked = records[0]["protocol_fingerprint"]
    assert table_main(["--results-dir", str(tmp_path), "--out", str(tmp_path / "out"), "--protocol",
                       unmasked[:6]]) == 0


def test_the_footnote_says_which_of_several_records_it_used_and_why(tmp_path):
    store(tmp_path, make_record("A", {TASK: [MISS, MISS]}, created="2024-01-01T00:00:00+00:00"))
    newest = store(tmp_path, make_record("A", {TASK: [0, 0]}, created="2024-06-01T00:00:00+00:00"))
    store(tmp_path, _recorded_protocol(make_record("A", {TASK: [1, 1]}, created="2024-07-01T00:00:00+00:00"),
                                       mask_history=True))
    records, _ = collect_records(tmp_path)
    assert len(records) == 2  # one per protocol: the masked run is not a newer copy of the unmasked one
    table = build_table([record for record in records if "protocol" not in record])
    choice = next(line for line in table.footnote if line.startswith("Record choice"))
    assert f"using {newest} (the newest, created 2024-06-01" in choice and "2 records for A on ds seed 0" in choice


def test_footnote_says_a_beam_shorter_than_a_cutoff_repeats_its_values():
    generative = make_record("MBGen", {TASK: recall_at_10_ranks(2, 2)})
    generative["config"]["beam_size"] = 10
    wide = make_record("MBGen50", {TASK: recall_at_10_ranks(2, 2)})
    wide["config"]["beam_size"] = 50
    table = build_table([generative, wide, make_record("SASRec", {TASK: recall_at_10_ranks(3, 1)})],
                        metrics=("recall@10", "ndcg@10", "recall@20", "ndcg@20"))
    beam_lines = [line for line in table.footnote if "beam search" in line]
    assert beam_lines == ["MBGen ranks only the 10 items of its beam search (beam_size 10; every other item ties "
                          "below them and is never a hit): its @20 values equal its @10 values (ds)."]
    assert not any("beam" in line for line in build_table(
        [generative], metrics=("recall@5", "recall@10")).footnote)  # no cutoff above the beam
