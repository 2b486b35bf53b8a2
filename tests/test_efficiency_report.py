"""The run command writes the efficiency chart; its panels make sense for rule-based models; peak memory is per run."""

import resource

import numpy as np

from mbrec.benchmark.memory import PeakRSS
from mbrec.benchmark.runner import run
from mbrec.cli import main
from mbrec.reporting.tables import efficiency_figure

TINY_SET = "prepare.size={n_users: 60, n_items: 50, n_categories: 5}"
# Bytes one test array holds: large against the noise of the process's other allocations.
BIG_ARRAY_BYTES = 400 * 2**20


def efficiency(model, train_seconds_per_epoch):
    return {"model": model, "dataset": "synthetic", "efficiency": {
        "parameters": 10, "train_seconds": 1.0, "train_seconds_per_epoch": train_seconds_per_epoch,
        "eval_seconds": 0.5, "peak_cpu_rss_mb": 100.0, "peak_gpu_mb": None, "device": "cpu"}}


def test_run_command_writes_the_efficiency_png(tmp_path, capsys):
    code = main(["--models", "Pop", "Recent", "--dataset", "synthetic", "--results-dir", str(tmp_path / "results"),
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress", TINY_SET])
    assert code == 0
    png = tmp_path / "results" / "tables" / "efficiency.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote efficiency png: {png}" in capsys.readouterr().out


def test_training_panel_without_any_training_model_shows_no_axis():
    figure = efficiency_figure([efficiency("Pop", None), efficiency("Recent", None)])
    training, evaluation, _ = figure.axes
    assert not training.axison and "no model here trains" in " ".join(text.get_text() for text in training.texts)
    assert evaluation.axison


def test_a_rule_based_bar_beside_trained_ones_is_labelled():
    figure = efficiency_figure([efficiency("Pop", None), efficiency("SASRec", 2.0)])
    training = figure.axes[0]
    assert training.axison and [text.get_text() for text in training.texts] == ["no training"]


def test_peak_rss_sampler_sees_a_block_peak_and_forgets_it_afterwards():
    with PeakRSS() as first:
        big = np.ones(BIG_ARRAY_BYTES // 8)
        del big
    with PeakRSS() as second:
        pass
    assert first.mb - second.mb > 0.5 * BIG_ARRAY_BYTES / 2**20


def test_record_peak_memory_is_this_runs_not_the_process_lifetime_peak(tmp_path):
    big = np.ones(BIG_ARRAY_BYTES // 8)  # an earlier peak of this process, freed before the run
    del big
    lifetime_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record = run("Pop", "synthetic", overrides={"prepare": {"size": {"n_users": 60, "n_items": 50,
                                                                     "n_categories": 5}}},
                 results_dir=tmp_path / "results", cache_dir=tmp_path / "cache")
    assert record["efficiency"]["peak_cpu_rss_mb"] < lifetime_peak_mb - 0.5 * BIG_ARRAY_BYTES / 2**20


def test_efficiency_rows_name_the_cpus_their_seconds_came_from():
    from mbrec.reporting.tables.efficiency import UNRECORDED_CPU, efficiency_table, efficiency_to_markdown

    def record(seed, cpu):
        return {"dataset": "d", "model": "SASRec", "seed": seed, "machine": {"cpu": cpu} if cpu else None,
                "efficiency": {"train_seconds_per_epoch": 1.0 + seed, "device": "cpu"}}

    row, = efficiency_table([record(1, "AMD EPYC"), record(2, None), record(3, "AMD EPYC")])
    assert row.cpus == f"AMD EPYC, {UNRECORDED_CPU}" and row.n_seeds == 3
    assert "| CPU |" in efficiency_to_markdown([row]) and "seconds from two CPUs are not comparable" in \
        efficiency_to_markdown([row])
