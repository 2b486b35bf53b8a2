"""A suite's time, without training: the progress estimate from the suite's stored records and sweep
trials (from the start of a command and after each run of a round), trial times read from a trial
folder, and the README's cost table from hand-made records and sweep summaries."""

import json
import logging
from types import SimpleNamespace

from mbrec import results as store
from mbrec.benchmark import suite as suite_runner
from mbrec.benchmark.suite import (PENDING, STORED, SeedStep, SweepStep, progress_line,
                                   suite_estimator)
from mbrec.benchmark.suite import suite_main
from mbrec.benchmark.suite_estimate import Estimator, duration
from mbrec.benchmark.tune.driver import _trial_seconds
from mbrec.reporting.suite_tables import cost_section, suite_report
from mbrec.suite_costs import sweep_costs
from mbrec.suites import RECORD_KEY, load_suite

HOUR = 3600.0


def save_run(results_dir, entry, dataset, seed, seconds, suite="ci", model=None):
    """A minimal stored record of ``entry`` on ``dataset`` naming the suite, costing ``seconds``."""
    model = model or entry
    record = {"run_key": f"{entry}-{dataset}-{seed}", "model": model, "dataset": dataset, "seed": seed,
              "config": {"seed": seed}, "results": {},
              "efficiency": {"train_seconds": seconds - 2.0, "eval_seconds": 1.0, "data_seconds": 1.0},
              RECORD_KEY: [{"suite": suite, "entry": entry, "dataset_variant": dataset, "sweep": None}]}
    path = store.compressed_path(store.record_path(results_dir, model, dataset, seed, f"k{seed}"))
    store.save_record(path, record)
    return path


def save_sweep(results_dir, model, dataset, name, trial_seconds, statuses=None, cpus_per_trial=1.0):
    """A sweep folder as the tuner leaves it: ``sweep.json`` and ``summary.json`` (trial seconds or None)."""
    folder = results_dir / "sweeps" / dataset / model / name
    folder.mkdir(parents=True)
    options = {"cpus_per_trial": cpus_per_trial, "num_samples": len(trial_seconds)}
    (folder / "sweep.json").write_text(json.dumps({"model": model, "dataset": dataset, "options": options}))
    statuses = statuses or ["completed"] * len(trial_seconds)
    trials = [{"trial_id": f"{i:04d}", "status": status, **({} if seconds == "absent" else {"seconds": seconds})}
              for i, (seconds, status) in enumerate(zip(trial_seconds, statuses))]
    (folder / "summary.json").write_text(json.dumps({
        "sweep": name, "model": model, "dataset": dataset, "options": options, "interrupted": False,
        "best": {"trial_id": "0000", "params": {}}, "trials": trials}))


def ci_entry(name):
    return load_suite("ci").entry(name)


# --- the progress estimate ----------------------------------------------------------------------

def test_estimate_uses_the_suites_stored_records_from_the_start(tmp_path):
    """A command whose plan has no stored run (here: a new dataset variant) is estimated from the
    records the suite already stored, not "no estimate yet"."""
    ci = load_suite("ci")
    save_run(tmp_path, "SASRec", "synthetic_ci", 1, HOUR)
    save_run(tmp_path, "SASRec", "synthetic_ci", 2, 3 * HOUR)
    save_run(tmp_path, "Pop", "synthetic_ci", 1, 60.0, suite="another_suite")  # not this suite's
    pending = [SeedStep(ci_entry("SASRec"), "other_variant", 1), SeedStep(ci_entry("Pop"), "other_variant", 1)]
    estimator = suite_estimator(ci, pending, tmp_path)
    assert estimator.run_seconds("SASRec", "synthetic_ci") == 2 * HOUR
    assert estimator.run_seconds("SASRec", "other_variant") == 2 * HOUR  # no run of that variant: another's
    assert estimator.run_seconds("Pop", "other_variant") is None  # another suite's Pop run is not evidence
    line = progress_line([], pending, estimator, ci.tuning["trials"])
    assert "0/2 done" in line and "about 2.00 core-hours left for 1 of 2 steps" in line
    assert line.endswith("not counted, no run or trial of their model yet: Pop")
    assert "no estimate" in progress_line([], pending, Estimator(), ci.tuning["trials"])


def test_a_sweep_is_estimated_from_stored_trial_times(tmp_path):
    ci = load_suite("ci")
    save_sweep(tmp_path, "SASRec", "synthetic_ci", "SASRec-aaaa", [HOUR, 3 * HOUR])
    estimator = suite_estimator(ci, [], tmp_path)
    step = SweepStep(ci_entry("SASRec"), "synthetic_ci", {}, None, state=PENDING)
    assert estimator.sweep_seconds("SASRec", "synthetic_ci", trials=2) == 4 * HOUR
    assert "about 4.00 core-hours left" in progress_line([step], [], estimator, 2)
    # without trials, runs give an upper bound (ASHA stops trials early)
    assert Estimator([(("SASRec", "synthetic_ci"), HOUR)]).sweep_seconds("SASRec", "synthetic_ci", 3) == 3 * HOUR


def test_a_round_of_runs_updates_its_estimate_after_each_run(tmp_path, monkeypatch, caplog):
    """Within one round, the progress line after the first run is estimated from that run."""
    ci = load_suite("ci")
    steps = [SeedStep(ci_entry("SASRec"), "synthetic_ci", seed,
                      path=store.record_path(tmp_path, "SASRec", "synthetic_ci", seed, f"k{seed}"))
             for seed in ci.seeds]

    def fake_run(model, dataset, config_files, overrides, seed, *args, **kwargs):
        store.save_record(steps[ci.seeds.index(seed)].path, {
            "run_key": f"k{seed}", "model": model, "dataset": dataset, "seed": seed, "config": {}, "results": {},
            "efficiency": {"train_seconds": 2 * HOUR}})

    monkeypatch.setattr(suite_runner, "run", fake_run)
    args = SimpleNamespace(workers=None, ray_address=None, device="cpu", data_path=None, cache_dir=None)
    with caplog.at_level(logging.INFO, logger="mbrec"):
        failures = suite_runner._run_seed_steps(ci, steps, args, tmp_path, steps, Estimator())
    assert failures == [] and [step.state for step in steps] == [STORED, STORED]
    first = next(message for message in caplog.messages if "seed 1: stored" in message)
    assert "1/2 done; about 2.00 core-hours left" in first
    assert suite_estimator(ci, steps, tmp_path).run_seconds("SASRec", "synthetic_ci") == 2 * HOUR  # annotated


def test_plan_durations_never_read_as_free():
    assert duration(20) == "<1 min" and duration(0) == "<1 min"
    assert duration(30 * 60) == "~30 min" and duration(5 * HOUR) == "~5.0 h"


# --- trial times ---------------------------------------------------------------------------------

def test_trial_seconds_sum_the_ended_attempts(tmp_path):
    assert _trial_seconds(tmp_path) is None  # no attempt ended (or a summary from before trials were timed)
    (tmp_path / "seconds.log").write_text("12.5\n7.25\n3.")  # the last line cut short by a killed worker
    assert _trial_seconds(tmp_path) == 12.5 + 7.25 + 3.0
    (tmp_path / "seconds.log").write_text("12.5\nnot a number\n")
    assert _trial_seconds(tmp_path) == 12.5


def test_sweeps_summarized_before_trials_were_timed_get_their_times_from_the_trial_folders(tmp_path, capsys):
    """``suite --fill-sweep-times``: start (attempts.log) to end (status.json) of each attempt."""
    save_sweep(tmp_path, "SASRec", "synthetic_ci", "SASRec-old", ["absent"] * 3)
    trials = tmp_path / "sweeps" / "synthetic_ci" / "SASRec" / "SASRec-old" / "trials"
    starts = {"0000": ["2026-12-01T23:11:48+00:00"], "0001": ["2026-12-01T23:00:00+00:00"],
              "0002": ["2026-12-01T23:00:00+00:00", "2026-12-01T23:05:00+00:00"]}  # 0002: a lost worker's start
    ends = {"0000": ["2026-12-01T23:12:10+00:00"], "0001": ["2026-12-01T23:00:30+00:00"],
            "0002": ["2026-12-01T23:10:00+00:00"]}
    for trial_id in starts:
        folder = trials / f"trial_{trial_id}"
        folder.mkdir(parents=True)
        (folder / "attempts.log").write_text("".join(f"{stamp} pid=1\n" for stamp in starts[trial_id]))
        (folder / "status.json").write_text(json.dumps({"attempts": [{"ended": stamp} for stamp in ends[trial_id]]}))
    (trials / "trial_0001" / "seconds.log").write_text("31.5\n")  # the trial's own time wins
    assert suite_main(["ci", "--results-dir", str(tmp_path), "--fill-sweep-times"]) == 0
    out = capsys.readouterr().out
    assert "2 trial time(s) written" in out and "SASRec-old (1 of 3 trials)" in out
    summary = json.loads((trials.parent / "summary.json").read_text())
    assert [trial.get("seconds") for trial in summary["trials"]] == [22.0, 31.5, None]
    (cost,) = sweep_costs(tmp_path)
    assert cost.trial_seconds == [22.0, 31.5] and cost.untimed_trials == 1
    assert suite_main(["ci", "--results-dir", str(tmp_path), "--fill-sweep-times"]) == 0  # nothing new
    assert "written" not in capsys.readouterr().out


# --- the README's cost table ---------------------------------------------------------------------

def test_cost_table_counts_runs_and_sweep_time_and_names_untimed_sweeps(tmp_path):
    ci = load_suite("ci")  # 3 entries x 2 seeds on synthetic_ci
    save_run(tmp_path, "Pop", "synthetic_ci", 1, 0.5 * HOUR)
    save_run(tmp_path, "SASRec", "synthetic_ci", 1, 1.0 * HOUR)
    save_run(tmp_path, "SASRec", "synthetic_ci", 2, 1.5 * HOUR)
    save_sweep(tmp_path, "SASRec", "synthetic_ci", "SASRec-timed", [HOUR, HOUR, None],
               statuses=["completed", "stopped early", "unfinished"], cpus_per_trial=2.0)
    save_sweep(tmp_path, "SASRec", "synthetic_ci", "SASRec-old", ["absent", "absent"])
    costs = {cost.sweep: cost for cost in sweep_costs(tmp_path)}
    assert costs["SASRec-timed"].trials_run == 2 and costs["SASRec-timed"].core_hours == 4.0
    assert not costs["SASRec-old"].timed and costs["SASRec-timed"].timed
    section, _, _ = suite_report(ci, tmp_path, claims_file=None, write_plot=False)
    cost = section.split("#### Cost", 1)[1]
    row = next(line for line in cost.splitlines() if line.startswith("| synthetic_ci |"))
    assert row == "| synthetic_ci | 3 / 6 | 3.00 | 2 | 4 | ≥ 4.00 (1 untimed) | ≥ 7.00 |"
    assert "Untimed sweeps" in cost and "synthetic_ci: SASRec-old" in cost and "SASRec-timed" not in cost
    assert suite_report(ci, tmp_path, claims_file=None, write_plot=False)[0] == section  # deterministic


def test_cost_table_without_sweeps_has_no_bounds():
    ci = load_suite("ci")
    records = [{"model": "SASRec", "dataset": "synthetic_ci", "seed": 1, "run_key": "a",
                "efficiency": {"train_seconds": HOUR}},
               {"model": "SASRec[layers=2]", "dataset": "synthetic_ci", "seed": 1, "run_key": "a",
                "efficiency": {"train_seconds": HOUR}}]  # one run of two entries: trained once
    table = cost_section(ci, records, [])
    assert "| synthetic_ci | 2 / 6 | 1.00 | 0 | 0 | 0.00 | 1.00 |" in table
    assert "≥" not in table and "Untimed" not in table


def test_a_run_is_estimated_from_its_own_sweep_trials_before_other_models_runs():
    """FatsMB with no stored run yet: its own sweep's trials (~1 h here) say more than SASRec's runs
    of the same variant (1 min), which the estimate used first and so printed 'about 0.0 core-hours'."""
    estimator = Estimator(run_seconds=[(("SASRec", "v"), 60.0)], trial_seconds=[(("FatsMB", "v"), HOUR)])
    assert estimator.run_seconds("FatsMB", "v") == HOUR
    assert estimator.run_seconds("SASRec", "v") == 60.0
    # another model's time is no evidence (a DiffuRec epoch costs 20-40x SASRec's): no estimate
    assert estimator.run_seconds("GRU4Rec", "v") is None


def test_an_ablation_is_estimated_from_the_entry_it_was_tuned_from():
    estimator = Estimator(run_seconds=[(("FatsMB", "v"), HOUR), (("SASRec", "v"), 60.0)],
                          families={"FatsMB[pos=ape]": "FatsMB"})
    assert estimator.run_seconds("FatsMB[pos=ape]", "v") == HOUR
    assert estimator.run_seconds("FatsMB[pos=ape]", "w") == HOUR  # another variant: the family's time
    assert estimator.sweep_seconds("MBGen", "v", trials=6) is None
