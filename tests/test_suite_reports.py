"""Suites without training: suite files, dataset variants, compressed records, the papers' claims on
hand-made records, and the README's Results section against the committed records."""

import gzip
import json

import numpy as np
import pytest

from mbrec import results as store
from mbrec.config import ConfigError, base_dataset, merge_layers
from mbrec.evaluation import summarize
from mbrec.reporting.claims import (CONFIRMED, CONTRADICTED, NOT_RUN, NOT_SIGNIFICANT, Claim, claims_to_markdown,
                                    evaluate_claims, load_claims)
from mbrec.reporting.suite_tables import (NOT_YET_RUN, readme_section, readme_text, replace_section, suite_report,
                                          suite_section, suite_table_main)
from mbrec.suites import RECORD_KEY, SuiteError, default_suite_results_dir, load_suite, suite_names
from mbrec.utils import REPO_DIR

TASK = "behavior_specific"
MISS = 99  # a rank outside every cutoff
N_USERS = 200


def make_record(model, ranks, seed, dataset="ds", suite="s", entry=None, created="2024-05-01T00:00:00+00:00"):
    users = [f"u{index}" for index in range(len(ranks))]
    return {"run_key": f"{model}-{seed}-{entry}", "model": model, "dataset": dataset, "seed": seed,
            "config": {"seed": seed}, "created": created,
            "results": {TASK: {"metrics": summarize(ranks), "n_users": len(ranks),
                               "per_user": {"user": users, "rank": list(ranks)}}},
            "efficiency": {"parameters": 10, "train_seconds": 1.0, "eval_seconds": 1.0, "peak_cpu_rss_mb": 1.0},
            RECORD_KEY: [{"suite": suite, "entry": entry or model, "dataset_variant": dataset, "sweep": None}]}


def ranks_with_hits(hits, seed):
    """``hits`` users at rank 0, the others missed; shuffled per seed so seeds differ."""
    ranks = np.array([0] * hits + [MISS] * (N_USERS - hits))
    np.random.default_rng(seed).shuffle(ranks)
    return ranks.tolist()


# --- suite files ---------------------------------------------------------------------------

def test_shipped_suites_load_and_name_registered_datasets():
    assert {"ci", "cpu", "paper"} <= set(suite_names())
    for name in ("ci", "cpu", "paper"):
        suite = load_suite(name)
        assert len(suite.seeds) >= 2 and suite.tuning["trials"] >= 1
        for dataset in suite.datasets:
            merge_layers("SASRec", dataset)  # every variant resolves to a registered dataset
    cpu = load_suite("cpu")
    assert len(cpu.seeds) >= 3
    assert {"FatsMB[pos=ape]", "MBGen[woPR]", "M3BSR_woMD", "Pop", "Recent", "DiffuRecSysMB"} <= {
        entry.name for entry in cpu.entries}


@pytest.mark.parametrize("content, message", [
    ("datasets: [synthetic]\nseeds: [1]\nmodels: [SASRec]\ntuning: {trials: 1}\ncolour: red\n", "unknown key"),
    ("datasets: [synthetic]\nseeds: [1]\nmodels: [SASRec, SASRec]\ntuning: {trials: 1}\n", "unique"),
    ("datasets: [synthetic]\nseeds: [1]\nmodels: [{model: SASRec, name: A, tune_from: B}]\ntuning: {trials: 1}\n",
     "tune_from"),
    ("datasets: [synthetic]\nseeds: [1]\nmodels: [SASRec]\ntuning: {trials: 0}\n", "trials"),
    ("datasets: [synthetic]\nseeds: [1, 1]\nmodels: [SASRec]\ntuning: {trials: 1}\n", "seeds"),
])
def test_bad_suite_files_are_refused_with_the_reason(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(SuiteError, match=message):
        load_suite(str(path))


def test_a_subset_keeps_the_entry_an_ablation_is_tuned_from():
    cpu = load_suite("cpu")
    part = cpu.subset(["FatsMB[pos=ape]", "Pop"], ["retailrocket_f10"])
    assert [entry.name for entry in part.entries] == ["Pop", "FatsMB", "FatsMB[pos=ape]"]
    assert part.datasets == ["retailrocket_f10"] and part.seeds == cpu.seeds
    assert part.file_models == cpu.file_models and "GRU4Rec" in part.file_models  # for the config check
    assert cpu.subset().entries == cpu.entries
    with pytest.raises(SuiteError, match="no dataset variant"):
        cpu.subset(datasets=["nowhere"])
    with pytest.raises(SuiteError, match="no entry named"):
        cpu.subset(["SASRek"])


def test_unknown_suite_lists_the_suites():
    with pytest.raises(SuiteError, match="cpu"):
        load_suite("no_such_suite")


# --- dataset variants ------------------------------------------------------------------------

def test_a_variant_states_its_protocol_once_over_its_base():
    variant = merge_layers("SASRec", "retailrocket_f10")
    base = merge_layers("SASRec", "retailrocket", overrides={"min_item_inter": 10, "MAX_ITEM_LIST_LENGTH": 20})
    assert variant == base  # same settings, so the same run key as the spelled-out command
    assert "extends" not in variant
    assert base_dataset("retailrocket_f10") == "retailrocket" and base_dataset("retailrocket") == "retailrocket"
    with pytest.raises(ConfigError, match="Unknown dataset"):
        merge_layers("SASRec", "no_such_variant")


# --- compressed records ----------------------------------------------------------------------

def test_compressed_records_are_read_found_and_deterministic(tmp_path):
    record = make_record("A", [0, MISS], seed=1)
    plain = store.record_path(tmp_path, "A", "ds", 1, "k")
    store.save_record(plain, record)
    compressed = store.compress_record(plain)
    assert not plain.exists() and compressed.name.endswith(".json.gz")
    assert store.stored_record(plain) == compressed  # the runner's skip finds the compressed record
    assert store.load_record(compressed)["results"][TASK]["per_user"]["rank"] == [0, MISS]
    assert json.loads(gzip.decompress(compressed.read_bytes()))["model"] == "A"
    first = compressed.read_bytes()
    store.save_record(compressed, store.load_record(compressed))
    assert compressed.read_bytes() == first  # no timestamp inside: rewriting leaves git clean
    assert store.record_files(tmp_path / "runs") == [compressed]
    compressed.write_bytes(b"not gzip")
    with pytest.raises(store.ResultsError, match="not valid"):
        store.load_record(compressed)


# --- the papers' claims ------------------------------------------------------------------------

def test_claims_confirmed_contradicted_not_significant_and_not_run():
    records = []
    for seed in (1, 2, 3):
        records += [make_record("Strong", ranks_with_hits(120, seed), seed),
                    make_record("Weak", ranks_with_hits(40, seed + 10), seed),
                    make_record("Twin", ranks_with_hits(120, seed), seed)]
    claims = [Claim("P", "Strong > Weak", "Strong", "Weak"), Claim("P", "Weak > Strong", "Weak", "Strong"),
              Claim("P", "Strong > Twin", "Strong", "Twin"), Claim("P", "Strong > Absent", "Strong", "Absent")]
    results = evaluate_claims(claims, records, ["ds"])
    assert [result.verdict for result in results] == [CONFIRMED, CONTRADICTED, NOT_SIGNIFICANT, NOT_RUN]
    confirmed = results[0]
    assert confirmed.mean_difference == pytest.approx((120 - 40) / N_USERS)  # recall-like: hit 1, miss 0 at NDCG
    assert confirmed.ci_low > 0 and confirmed.seeds == (1, 2, 3) and confirmed.n_users == N_USERS  # n = users
    assert confirmed.p_adjusted >= confirmed.pvalue  # Holm over the tested pairs
    text = claims_to_markdown(results)
    assert "Strong > Absent" in text and NOT_RUN in text and "holm correction over the 3 tested" in text


def test_shipped_claims_name_entries_of_the_cpu_suite():
    entries = {entry.name for entry in load_suite("cpu").entries}
    claims = load_claims()
    assert {"BaRoPE > RoPE", "RoPE > APE", "MCGLN > AdaLN", "AdaLN > MLP", "DiffuRecSys > DiffuRec"} <= {
        claim.claim for claim in claims}
    assert all(claim.better in entries and claim.worse in entries for claim in claims)


# --- README Results section --------------------------------------------------------------------

def test_readme_section_agrees_with_the_committed_records():
    """Rebuild each suite's README section from the records under results/reference/<suite>/."""
    readme = (REPO_DIR / "README.md").read_text(encoding="utf-8")
    for name in ("cpu",):
        suite = load_suite(name)
        stored = readme_section(readme, name)
        assert stored is not None, f"README has no results:{name} markers"
        section, claims, _ = suite_report(suite, default_suite_results_dir(name), write_plot=False)
        if claims is None:  # no records yet
            assert NOT_YET_RUN in stored
        # the plot is rebuilt by --write-readme; its link is the same line either way
        expected = readme_text(section, claims).strip()
        assert stored.replace(_plot_line(stored), "") == expected.replace(_plot_line(expected), "")


def _plot_line(text):
    return next((line for line in text.splitlines() if line.startswith("![efficiency")), "")


def test_write_readme_replaces_only_the_suite_section(tmp_path, capsys):
    suite = load_suite("ci")
    results_dir = tmp_path / "results"
    for seed in (1, 2):
        for entry, hits in (("Pop", 30), ("SASRec", 90)):
            record = make_record(entry, ranks_with_hits(hits, seed), seed, dataset="synthetic_ci", suite="ci")
            store.save_record(store.compressed_path(store.record_path(results_dir, entry, "synthetic", seed, entry)),
                              record)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:ci:begin -->\nOLD SECTION\n<!-- results:ci:end -->\nafter\n")
    assert suite_table_main(["--suite", "ci", "--results-dir", str(results_dir), "--write-readme",
                             "--readme", str(readme), "--claims"]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("after\n") and "OLD SECTION" not in text
    section = readme_section(text, "ci")
    assert "#### behavior_specific" in section and "SASRec" in section and "Budget:" in section
    assert "#### The papers' claims" in section
    assert (results_dir / "efficiency.png").is_file()
    with pytest.raises(SuiteError, match="no '<!-- results:cpu:begin -->'"):
        replace_section("no markers", "cpu", "x")
    assert NOT_YET_RUN in suite_section(suite, [])


def save_two_runs_of_one_seed(results_dir):
    """Two stored SASRec runs of seed 1 of suite ci under two run keys (an old and a new setting)."""
    for key in ("old", "new"):
        record = make_record("SASRec", ranks_with_hits(50, 1), 1, dataset="synthetic_ci", suite="ci")
        record["run_key"] = key
        store.save_record(store.compressed_path(store.record_path(results_dir, "SASRec", "synthetic", 1, key)),
                          record)
    return results_dir


def test_two_stored_configurations_of_one_seed_are_refused_not_averaged(tmp_path, capsys):
    """After a suite setting changes (e.g. an epoch cap), the old record of a seed stays beside the new
    one under another run key; the table must name both, not average them as if they were two seeds."""
    results_dir = save_two_runs_of_one_seed(tmp_path / "results")
    assert suite_table_main(["--suite", "ci", "--results-dir", str(results_dir)]) == 1
    error = capsys.readouterr().err
    assert "two stored runs are SASRec on synthetic_ci seed 1" in error and "old" in error and "new" in error


def test_a_protocol_mismatch_is_a_one_line_error(tmp_path, capsys):
    results_dir = tmp_path / "results"
    for seed, data in ((1, "prepared-sha256:a"), (2, "prepared-sha256:b")):
        record = make_record("SASRec", ranks_with_hits(50, seed), seed, dataset="synthetic_ci", suite="ci")
        record["protocol"], record["protocol_fingerprint"] = {"data": data}, data[-1] * 12
        store.save_record(store.compressed_path(store.record_path(results_dir, "SASRec", "synthetic", seed, data)),
                          record)
    assert suite_table_main(["--suite", "ci", "--results-dir", str(results_dir)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: runs measured under different protocols") and "Traceback" not in error


def test_budget_line_names_the_models_with_their_own_epoch_cap():
    cpu = load_suite("cpu")
    line = suite_section(cpu, [make_record("Pop", ranks_with_hits(5, 1), 1, dataset="retailrocket_f10",
                                           suite="cpu")], write_plot=False)
    assert "Epoch cap 100 (" in line
    assert "BERT4Rec 1000, no early stop before 100, validated every 10 epochs;" in line
    assert "FatsMB 300 per stage, no early stop before 100 (mbae), 30 (diffusion), 30 (finetune)" in line


def test_the_suite_runner_closing_tables_say_why_they_cannot_be_built(tmp_path, capsys):
    from mbrec.reporting.suite_tables import print_suite_report

    results_dir = save_two_runs_of_one_seed(tmp_path / "results")
    print_suite_report(load_suite("ci"), results_dir)  # no traceback: the suite's runs are stored already
    assert capsys.readouterr().err.startswith("error: no tables: two stored runs are SASRec")


def test_budget_line_names_a_model_that_changes_only_its_validation_or_precision():
    from types import SimpleNamespace

    from mbrec.reporting.suite_tables import _model_caps

    suite = SimpleNamespace(model_overrides={"MBGen": {"d_model": 64, "n_heads": 2},  # a width: not budget
                                             "SASRec": {"eval_step": 5, "precision": "bf16"},
                                             "GRU4Rec": {"stopping_min_epochs": 20}})
    assert _model_caps(suite) == (" (SASRec, validated every 5 epochs, trained in bf16; GRU4Rec, no early stop "
                                  "before 20)")
