"""Ray Tune sweeps end to end on a local Ray (CPU, 2 workers): selection, failures, resume."""

import json
import os
import signal
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from ray import tune as ray_tune  # noqa: E402

from mbrec import results as store  # noqa: E402
from mbrec.benchmark import tune  # noqa: E402
from mbrec.benchmark.tune.trial import _fit_trial  # noqa: E402
from mbrec.utils import REPO_DIR  # noqa: E402

GRIDS = Path(__file__).parent / "grids"
TINY = {"prepare": {"size": {"n_users": 60, "n_items": 50, "n_categories": 5}}, "eval_batch_size": 64,
        "show_progress": False, "n_layers": 1, "inner_size": 32}
# Pop has no layers: a sweep of Pop given n_layers is refused as an unknown key (mbrec.config_check).
TINY_POP = {key: value for key, value in TINY.items() if key not in ("n_layers", "inner_size")}
LOCAL_CPUS = 2


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module: starting Ray takes seconds; sweeps join it instead."""
    ray.init(num_cpus=LOCAL_CPUS, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO_DIR)}})
    yield
    ray.shutdown()


def sweep(tmp_path, model, grid, **kwargs):
    overrides = kwargs.pop("overrides", TINY)
    return tune.sweep(model, "synthetic", grid=grid, overrides=overrides, epochs=kwargs.pop("epochs", 2),
                      cache_dir=tmp_path / "cache", results_dir=tmp_path / "results", device="cpu",
                      cli_options=kwargs.pop("cli_options", {}), **kwargs)  # ASHA: stops trials at max_t


def reported_scores(trial):
    """The valid scores a trial reported, read from Ray's own result file, not from our summary."""
    lines = (Path(trial["dir"]) / "result.json").read_text().splitlines()
    return [json.loads(line)[tune.METRIC] for line in lines if line.strip()]


def test_tiny_sweep_picks_the_best_valid_config_and_retrains_it(tmp_path, ray_session):
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGUSR1)}
    # a resume state after every validation: a trial that ASHA stops at max_t must remove its own
    summary = sweep(tmp_path, "SASRec", GRIDS / "tiny.yaml", overrides={**TINY, "resume_every_seconds": 0})
    # Ctrl+C after a sweep reaches the caller again (Tune's fit leaves its own handler installed)
    assert {number: signal.getsignal(number) for number in handlers} == handlers
    assert summary["stop_requested"] is False
    assert not list((tmp_path / "results").rglob("*.pth"))  # no trial weights or resume states stay
    trials = summary["trials"]
    assert len(trials) == 4 and {trial["status"] for trial in trials} == {tune.COMPLETED}
    assert {(t["params"]["learning_rate"], t["params"]["hidden_size"]) for t in trials} == {
        (1e-4, 8), (1e-4, 16), (1e-2, 8), (1e-2, 16)}
    best_by_reports = max(trials, key=lambda trial: max(reported_scores(trial)))
    assert summary["best"]["trial_id"] == best_by_reports["trial_id"]
    assert all(trial["epochs_run"] == 2 and trial["attempts"] == 1 for trial in trials)

    record = store.load_record(summary["final"]["record"])  # retrained by the normal runner
    assert {key: record["config"][key] for key in ("learning_rate", "hidden_size")} == summary["best"]["params"]
    assert record["selected_by"][0]["sweep"] == summary["sweep"]
    assert record["results"]["behavior_specific"]["metrics"]  # tested once, after the sweep
    # same config and seed as the trial: the retrained run selects the same valid score
    assert summary["final"]["valid"]["ndcg@10"] == pytest.approx(summary["best"]["best_valid"], abs=1e-6)

    sweep_dir = tmp_path / "results" / "sweeps" / record["dataset"] / "SASRec" / summary["sweep"]
    for name in (tune.SUMMARY_JSON, tune.SUMMARY_MD, tune.PLOT_FILE):
        assert (sweep_dir / name).stat().st_size > 0
    assert "| **" in (sweep_dir / tune.SUMMARY_MD).read_text()


class InterruptAfterFirstTrial(ray_tune.Callback):
    """Sends the driver SIGUSR1 (Ray Tune's "stop and save") once, when the first trial ends."""

    def __init__(self, flag):
        self.flag = str(flag)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if os.path.exists(self.flag):
            os.remove(self.flag)
            os.kill(os.getpid(), signal.SIGUSR1)


def test_failed_trial_is_recorded_and_resume_skips_finished_trials(tmp_path, ray_session):
    # Pop does not train (fast trials); pop_behavior 'nosuch' makes Pop raise in __init__.
    grid = tmp_path / "pop.yaml"
    grid.write_text("space:\n  pop_behavior: [view, nosuch, buy, cart]\n")
    flag = tmp_path / "interrupt-once"
    flag.touch()
    options = {"max_concurrent": 1}
    first = sweep(tmp_path, "Pop", grid, overrides=TINY_POP, cli_options=options,
                  callbacks=[InterruptAfterFirstTrial(flag)])
    assert not flag.exists()
    assert first["interrupted"] and first["trial_counts"][tune.NOT_RUN] > 0
    assert first["stop_requested"]  # Tune caught the signal: a suite would stop here (test_suite)
    assert first["final"] is None  # no best config retrained from a partial sweep
    done_before = {t["trial_id"] for t in first["trials"] if t["status"] in (tune.COMPLETED, tune.FAILED)}
    assert done_before

    second = sweep(tmp_path, "Pop", grid, overrides=TINY_POP, cli_options=options, resume=True)
    by_behavior = {trial["params"]["pop_behavior"]: trial for trial in second["trials"]}
    failed = by_behavior["nosuch"]
    assert failed["status"] == tune.FAILED and "pop_behavior 'nosuch'" in failed["error"]
    assert "pop_behavior 'nosuch'" in Path(failed["log"]).read_text()  # the traceback is in its log
    for behavior in ("view", "buy", "cart"):
        assert by_behavior[behavior]["status"] == tune.COMPLETED
    for trial in second["trials"]:
        if trial["trial_id"] in done_before:
            assert trial["attempts"] == 1  # finished before the interruption: not run again
    assert second["best"]["params"]["pop_behavior"] in ("view", "buy", "cart")
    assert second["final"] is not None and not second["stop_requested"]
    summary_md, = (tmp_path / "results" / "sweeps").rglob(tune.SUMMARY_MD)
    assert "failed: ValueError" in summary_md.read_text()


def test_command_line_runs_a_sweep(tmp_path, ray_session, capsys, caplog):
    grid = tmp_path / "pop.hyper"  # RecBole's hyper format, through the command line
    grid.write_text("pop_behavior choice ['view','buy']\n")
    argv = ["--model", "Pop", "--dataset", "synthetic", "--grid", str(grid), "--scheduler", "fifo", "--epochs", "1",
            "--cache-dir", str(tmp_path / "cache"), "--results-dir", str(tmp_path / "results"), "--device", "cpu",
            "--no-retrain", "prepare.size={n_users: 60, n_items: 50, n_categories: 5}"]
    assert tune.tune_main(argv) == 0
    out = capsys.readouterr().out
    assert "# Sweep pop-" in out and "2 completed" in out
    assert tune.tune_main(argv) == 1  # the same sweep again: refused, --resume continues it
    assert "pass --resume" in caplog.text


def test_a_trial_never_builds_or_evaluates_test(tmp_path, monkeypatch):
    """Checked, not assumed: record every split the trial's dataset builds and evaluates."""
    from mbrec.data.dataset import MultiBehaviorSequentialDataset
    from mbrec.evaluation import Evaluator

    built_splits, evaluated = [], []
    original_build, original_evaluate = MultiBehaviorSequentialDataset.build, Evaluator.evaluate

    def recording_build(self, splits=("train", "valid", "test")):
        built_splits.extend(splits)
        return original_build(self, splits)

    def recording_evaluate(self, model, split_dataset, *args, **kwargs):
        evaluated.append(split_dataset.split_name)
        return original_evaluate(self, model, split_dataset, *args, **kwargs)

    monkeypatch.setattr(MultiBehaviorSequentialDataset, "build", recording_build)
    monkeypatch.setattr(Evaluator, "evaluate", recording_evaluate)
    reports = []

    class FakeTune:  # what the trial calls on Ray's session
        @staticmethod
        def report(metrics):
            reports.append(metrics)

    spec = {"model": "SASRec", "dataset": "synthetic", "config_files": [], "data_path": None,
            "cache_dir": str(tmp_path / "cache"), "device": "cpu"}
    overrides = {**TINY, "epochs": 2, "hidden_size": 16}
    _fit_trial(spec, overrides, {"hidden_size": 16}, tmp_path / "trial", FakeTune)
    assert "test" not in built_splits and {"train", "valid"} <= set(built_splits)
    assert evaluated == ["valid", "valid"] and len(reports) == 2  # one validation per epoch, each reported


def test_asha_never_stops_a_trial_before_the_models_stopping_floor(tmp_path, ray_session):
    # Rungs at grace 1 (reduction 2) would judge trials after 1, 2 and 4 validations; with a floor of 3
    # epochs the first rung is at validation 1 + 3 = 4, so every trial reports at least 4 scores.
    summary = sweep(tmp_path, "SASRec", GRIDS / "tiny.yaml", epochs=6,
                    overrides={**TINY, "stopping_min_epochs": 3},
                    cli_options={"scheduler": "asha", "grace_period": 1, "reduction_factor": 2})
    spec = json.loads((Path(summary["trials"][0]["dir"]).parents[1] / tune.SPEC_FILE).read_text())
    assert (spec["asha_grace"], spec["floor_validations"]) == (4, 3)
    assert all(len(reported_scores(trial)) >= 4 for trial in summary["trials"])
