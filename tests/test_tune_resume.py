"""Sweeps stay truthful after crashes: a killed driver, retried failures, ASHA that stops nothing,
and the sensitivity plot's axes and marks."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from mbrec.benchmark import tune  # noqa: E402
from mbrec.benchmark.tune.summary import sensitivity_figure  # noqa: E402
from mbrec.cli import build_parser  # noqa: E402
from mbrec.utils import REPO_DIR  # noqa: E402

TINY = {"prepare": {"size": {"n_users": 60, "n_items": 50, "n_categories": 5}}, "eval_batch_size": 64,
        "show_progress": False, "n_layers": 1, "inner_size": 32}
# Pop has no layers: a sweep of Pop given n_layers is refused as an unknown key (mbrec.config_check).
TINY_POP = {key: value for key, value in TINY.items() if key not in ("n_layers", "inner_size")}
# The driver is killed at most this long after the first trial wrote its outcome (generous: a busy CPU).
KILL_WAIT_SECONDS = 600
GRID = "space:\n  learning_rate: {loguniform: [1.0e-4, 1.0e-2]}\n  hidden_size: [8, 16]\ntune:\n  num_samples: 2\n"


def sweep_kwargs(tmp_path, **extra):
    return dict(grid=str(tmp_path / "grid.yaml"), overrides=TINY, epochs=2, cache_dir=str(tmp_path / "cache"),
                results_dir=str(tmp_path / "results"), device="cpu",
                cli_options={"max_concurrent": 1, "local_num_cpus": 1, "scheduler": "fifo"}, **extra)


def test_a_killed_driver_resumes_without_rerunning_or_redrawing_trials(tmp_path, caplog):
    (tmp_path / "grid.yaml").write_text(GRID)
    script = ("import sys, json; from mbrec.benchmark import tune; "
              "tune.sweep('SASRec', 'synthetic', **json.loads(sys.argv[1]))")
    driver = subprocess.Popen([sys.executable, "-c", script, json.dumps(sweep_kwargs(tmp_path))],
                              cwd=REPO_DIR, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "driver.err", "w"))
    try:
        deadline = time.time() + KILL_WAIT_SECONDS
        while not list((tmp_path / "results").rglob(tune.OUTCOME_FILE)):
            assert driver.poll() is None, (tmp_path / "driver.err").read_text()[-3000:]
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
    sweep_dir = next((tmp_path / "results").rglob(tune.SPEC_FILE)).parent
    planned = {t["trial_id"]: t["params"] for t in json.loads((sweep_dir / tune.SPEC_FILE).read_text())["trials"]}
    finished = {}
    for outcome in (sweep_dir / "trials").rglob(tune.OUTCOME_FILE):
        data = json.loads(outcome.read_text())
        finished[outcome.parent.name[len("trial_"):]] = (data["best_valid_score"], data["epochs_run"])
    assert finished and len(planned) == 4

    with caplog.at_level(logging.INFO, logger="mbrec"):
        summary = tune.sweep("SASRec", "synthetic", resume=True, **sweep_kwargs(tmp_path))
    by_id = {trial["trial_id"]: trial for trial in summary["trials"]}
    assert sorted(by_id) == sorted(planned)
    for trial_id, (score, epochs) in finished.items():  # kept from its own outcome, never rerun
        trial = by_id[trial_id]
        assert (trial["status"], trial["best_valid"], trial["epochs_run"], trial["attempts"]) == \
            (tune.COMPLETED, score, epochs, 1)
    for trial_id, trial in by_id.items():  # the same id trains the same parameters on every start
        assert trial["params"] == planned[trial_id] and trial["status"] == tune.COMPLETED
        params_lines = [line for line in Path(trial["log"]).read_text().splitlines() if "params {" in line]
        assert len({line.split("params ", 1)[1].split(" (mbrec")[0] for line in params_lines}) == 1
    # the counter goes on from the finished trials; the columns keep the grid file's order
    assert f"[{len(finished) + 1}/4]" in caplog.text and "[1/4]" not in caplog.text
    header = next(line for line in (sweep_dir / tune.SUMMARY_MD).read_text().splitlines()
                  if line.startswith("| trial"))
    assert header.index("learning_rate") < header.index("hidden_size")


def test_retry_failed_keeps_the_trial_id_and_its_attempts(tmp_path):
    (tmp_path / "grid.yaml").write_text("space:\n  pop_behavior: [view, nosuch]\n")
    first = tune.sweep("Pop", "synthetic", **{**sweep_kwargs(tmp_path, retrain=False), "overrides": TINY_POP})
    failed_id = next(t["trial_id"] for t in first["trials"] if t["status"] == tune.FAILED)
    second = tune.sweep("Pop", "synthetic", resume=True, retry_failed=True,
                        **{**sweep_kwargs(tmp_path, retrain=False), "overrides": TINY_POP})
    failed = next(t for t in second["trials"] if t["params"]["pop_behavior"] == "nosuch")
    assert failed["trial_id"] == failed_id and len(second["trials"]) == 2
    assert failed["attempts"] == 2 and [a["status"] for a in failed["history"]] == [tune.FAILED, tune.FAILED]
    assert "pop_behavior 'nosuch'" in failed["error"]
    kept = next(t for t in second["trials"] if t["params"]["pop_behavior"] == "view")
    assert kept["attempts"] == 1  # completed: not run again


def test_asha_that_cannot_stop_anything_says_so(tmp_path, caplog):
    (tmp_path / "grid.yaml").write_text("space:\n  pop_behavior: [view, buy]\n")
    with caplog.at_level(logging.WARNING, logger="mbrec"):
        spec, _ = tune.plan_sweep("Pop", "synthetic", tmp_path / "grid.yaml", overrides=TINY_POP, epochs=2,
                                  cli_options={"grace_period": 2}, cache_dir=tmp_path / "cache",
                                  results_dir=tmp_path / "results")
    assert "ASHA cannot stop any trial: grace_period 2 >= the 2 validation(s)" in caplog.text
    caplog.clear()
    tune.plan_sweep("Pop", "synthetic", tmp_path / "grid.yaml", overrides=TINY_POP, epochs=3,
                    cli_options={"grace_period": 2}, cache_dir=tmp_path / "cache", results_dir=tmp_path / "results")
    assert "ASHA cannot stop" not in caplog.text


def test_sweep_flags_and_the_retry_default_match_the_grid():
    args = tune.build_tune_parser().parse_args(["--model", "Pop", "--dataset", "synthetic", "--grace-period", "1",
                                                "--max-failures", "2"])
    assert (args.grace_period, args.max_failures) == (1, 2)
    from mbrec.benchmark.search_space import sweep_defaults

    assert sweep_defaults()["max_failures"] == build_parser().get_default("max_retries") == 3


def plot_summary(trials, space):
    return {"trials": trials, "space": space, "columns": list(space), "valid_metric": "ndcg@10", "model": "M",
            "dataset": "d", "sweep": "s"}


def test_sensitivity_plot_log_axis_for_log_uniform_and_stopped_trials_apart():
    trials = [{"params": {"learning_rate": lr, "hidden_size": 8}, "best_valid": score, "status": status}
              for lr, score, status in ((1e-3, 0.1, tune.COMPLETED), (2e-3, 0.2, tune.STOPPED),
                                        (4e-3, 0.3, tune.COMPLETED))]
    figure = sensitivity_figure(plot_summary(trials, {"learning_rate": {"loguniform": [1e-3, 5e-3]},
                                                      "hidden_size": {"grid": [8]}}))
    rate_axis = figure.axes[0]
    assert rate_axis.get_xscale() == "log"  # a span of 4 only: log-uniform still means a log axis
    labels = {collection.get_label(): len(collection.get_offsets()) for collection in rate_axis.collections}
    assert labels == {"completed": 2, "stopped early": 1}


def test_asha_grace_counts_after_the_stopping_floor_and_names_the_sweep_anew(tmp_path):
    (tmp_path / "grid.yaml").write_text("space:\n  learning_rate: [0.001, 0.01]\n")
    kwargs = dict(epochs=40, cli_options={"grace_period": 3}, cache_dir=tmp_path / "cache",
                  results_dir=tmp_path / "results")
    plain, _ = tune.plan_sweep("SASRec", "synthetic", tmp_path / "grid.yaml", overrides=TINY, **kwargs)
    floored, _ = tune.plan_sweep("SASRec", "synthetic", tmp_path / "grid.yaml",
                                 overrides={**TINY, "stopping_min_epochs": 10, "eval_step": 2}, **kwargs)
    assert (plain["asha_grace"], plain["floor_validations"]) == (3, 0)
    assert (floored["asha_grace"], floored["floor_validations"]) == (3 + 5, 5)  # 10 epochs = 5 validations
    # a sweep without a floor is named as before the rule (its stored results stay valid)
    before_the_rule = {key: value for key, value in plain.items() if key not in ("asha_grace", "floor_validations")}
    assert tune.default_sweep_name(plain["grid_file"], before_the_rule) == plain["name"]
    assert plain["name"] != floored["name"]


def test_asha_grace_after_a_per_stage_floor_counts_the_longest_stage_floor(tmp_path):
    (tmp_path / "grid.yaml").write_text("space:\n  mask_prob: [0.1, 0.2]\n")
    overrides = {**TINY, "stopping_min_epochs": {"mbae": 10, "finetune": 4}}
    spec, _ = tune.plan_sweep("FatsMB", "synthetic", tmp_path / "grid.yaml", overrides=overrides, epochs=40,
                              cli_options={"grace_period": 3}, cache_dir=tmp_path / "cache",
                              results_dir=tmp_path / "results")
    assert (spec["asha_grace"], spec["floor_validations"]) == (13, 10)
