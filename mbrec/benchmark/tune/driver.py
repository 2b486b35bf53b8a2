"""The sweep, run in the driver: connecting to Ray, running or resuming the trials, reading what
became of each, retraining the best config through the runner, and :func:`sweep`, which plans,
runs, summarizes and retrains."""

import copy
import json
import logging
import os
from pathlib import Path

from mbrec import results as store
from mbrec.benchmark.runner import run
from mbrec.benchmark.search_space import nested, with_ties
from mbrec.benchmark.tune.plan import (
    METRIC, MODE, SPEC_FILE, TRIALS_DIRNAME, expected_trials, plan_sweep, ray_param_space, require_ray, space_of,
)
from mbrec.benchmark.tune.summary import build_summary, write_summary
from mbrec.benchmark.tune.trial import (
    ATTEMPTS_FILE, COMPLETED, FAILED, NOT_RUN, OUTCOME_FILE, STOPPED, TRIAL_LOG, train_trial, trial_dirname,
)
from mbrec.config import ConfigError, deep_update
from mbrec.utils import REPO_DIR, write_json_atomic

logger = logging.getLogger("mbrec")

RAY_ERROR_FILE = "error.txt"     # Ray's traceback of a failed trial, in the trial folder


def connect_ray(address=None, num_cpus=None):
    """Join the cluster at ``address``, or start a local Ray; return True when we started it.

    Workers get this repository on their ``PYTHONPATH`` so that they import the same mbrec as
    the driver (a checkout that is not pip-installed, or a git worktree).
    """
    import ray

    if ray.is_initialized():
        return False
    python_path = os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")]))
    runtime_env = {"env_vars": {"PYTHONPATH": python_path}}
    if address:
        logger.info(f"joining the Ray cluster at {address}")
        ray.init(address=address, runtime_env=runtime_env)
    else:
        logger.info(f"starting a local Ray ({num_cpus or 'all'} CPUs)")
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env)
    return True


def _progress_callback(spec, total):
    """A Ray Tune callback logging one line per finished or failed trial."""
    from ray import tune

    metric_name = f"{spec['valid_task']} {spec['valid_metric']}"

    class SweepProgress(tune.Callback):
        def __init__(self):
            self.done = 0

        def _line(self, trial, what):
            self.done += 1
            best = (trial.last_result or {}).get("best_valid_score")
            score = f"best valid {metric_name} {best:.4f}" if best is not None else "no valid score"
            logger.info(f"[{self.done}/{total}] trial {trial.trial_id} {what}: {score}; params {trial.config}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trial, "ended")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, "FAILED")

    return SweepProgress()


def run_sweep(spec, sweep_dir, resume=False, retry_failed=False, ray_address=None, callbacks=()):
    """Run (or resume) the sweep on Ray Tune; return its trials (see :func:`collect_trials`).

    ``callbacks`` are extra Ray Tune callbacks (the tests use one to interrupt a sweep).
    """
    ray, tune = require_ray()
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    experiment_dir = sweep_dir / TRIALS_DIRNAME
    options = spec["options"]
    space = space_of(spec)
    total = expected_trials(spec)
    started_ray = connect_ray(ray_address, options["local_num_cpus"])
    try:
        trainable = tune.with_resources(tune.with_parameters(train_trial, spec=spec),
                                        {"cpu": options["cpus_per_trial"], "gpu": options["gpus_per_trial"]})
        if resume:
            logger.info(f"resuming sweep {spec['name']} from {experiment_dir}"
                        f"{' (failed trials run again)' if retry_failed else ''}")
            tuner = tune.Tuner.restore(str(experiment_dir), trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=retry_failed)
        else:
            if options["scheduler"] == "asha":
                scheduler = ASHAScheduler(time_attr="training_iteration", max_t=spec["max_validations"],
                                          grace_period=min(int(options["grace_period"]), spec["max_validations"]),
                                          reduction_factor=options["reduction_factor"])
            else:
                scheduler = FIFOScheduler()
            tuner = tune.Tuner(
                trainable,
                param_space=ray_param_space(space),
                tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, scheduler=scheduler,
                                            num_samples=int(options["num_samples"]),
                                            max_concurrent_trials=options["max_concurrent"],
                                            # a fresh worker per trial would import torch and recbole again
                                            reuse_actors=True,
                                            trial_dirname_creator=lambda trial: trial_dirname(trial.trial_id)),
                run_config=tune.RunConfig(
                    name=TRIALS_DIRNAME, storage_path=str(sweep_dir),
                    failure_config=tune.FailureConfig(max_failures=int(options["max_failures"])),
                    callbacks=[_progress_callback(spec, total), *callbacks]),
            )
        tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    return collect_trials(experiment_dir, spec)


def collect_trials(experiment_dir, spec):
    """One dict per trial from Ray's saved experiment state and the trial folders.

    Keys: ``trial_id``, ``params`` (tied ones included), ``status`` (completed, stopped early,
    failed, unfinished), ``best_valid`` (max reported valid metric, None if none), ``validations``,
    ``epochs_run``, ``attempts``, ``error`` (first line of the cause), ``log``, ``dir``.
    """
    from ray import tune

    analysis = tune.ExperimentAnalysis(str(experiment_dir))
    space = space_of(spec)
    trials = []
    for trial in analysis.trials:
        trial_dir = Path(trial.path) if trial.path else None  # storage_path is a local (or shared) folder
        reports = _read_reports(trial_dir)
        scores = [report[METRIC] for report in reports if report.get(METRIC) is not None]
        epochs = [report["epoch"] for report in reports if report.get("epoch") is not None]
        outcome = trial_dir / OUTCOME_FILE if trial_dir else None
        if trial.status == "ERROR":
            status = FAILED
        elif (outcome is not None and outcome.is_file()) or len(scores) >= spec["max_validations"]:
            status = COMPLETED  # ASHA stops a trial at its last report (max_t), before it writes its outcome
        elif trial.status == "TERMINATED" and scores:
            status = STOPPED
        else:
            status = NOT_RUN
        attempts_file = trial_dir / ATTEMPTS_FILE if trial_dir else None
        trials.append({
            "trial_id": trial.trial_id,
            "params": with_ties(space, {name: trial.config[name] for name in (p.name for p in space.swept)
                                        if name in trial.config}),
            "status": status,
            "best_valid": max(scores) if scores else None,
            "validations": len(scores),
            "epochs_run": _epochs_run(outcome, epochs),
            "attempts": (len(attempts_file.read_text().splitlines())
                         if attempts_file is not None and attempts_file.is_file() else 0),
            "error": _error_line(trial_dir) if status == FAILED else None,
            "log": str(trial_dir / TRIAL_LOG) if trial_dir else None,
            "dir": str(trial_dir) if trial_dir else None,
        })
    return sorted(trials, key=lambda entry: entry["trial_id"])


def _epochs_run(outcome, reported_epochs):
    """Epochs trained: from the trial's outcome when it ended, else from its last report."""
    if outcome is not None and outcome.is_file():
        with open(outcome, encoding="utf-8") as handle:
            return int(json.load(handle)["epochs_run"])
    return max(reported_epochs) + 1 if reported_epochs else 0


def _read_reports(trial_dir):
    """The metrics a trial reported, in order (Ray's ``result.json``: one JSON object per line)."""
    path = trial_dir / "result.json" if trial_dir else None
    if path is None or not path.is_file():
        return []
    reports = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                reports.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short when the sweep was killed
    return reports


def _error_line(trial_dir):
    """The failing exception as ``Type: message``: the last line of Ray's traceback file."""
    path = trial_dir / RAY_ERROR_FILE if trial_dir else None
    if path is None or not path.is_file():
        return "failed (no error file)"
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[-1] if lines else "failed (empty error file)"


def best_trial(trials):
    """The trial with the highest valid metric among those that did not fail (ties: first id)."""
    candidates = [trial for trial in trials if trial["status"] in (COMPLETED, STOPPED)
                  and trial["best_valid"] is not None]
    ranked = sorted(candidates, key=lambda trial: (-trial["best_valid"], trial["trial_id"]))
    return ranked[0] if ranked else None


def retrain_best(spec, best, sweep_dir, device=None):
    """Train the best config through the normal runner (test evaluated once), mark its record.

    Returns the record; its ``selected_by`` lists the sweeps that picked its config.
    """
    overrides = deep_update(copy.deepcopy(spec["overrides"]), nested(best["params"]))
    logger.info(f"retraining the best config of sweep {spec['name']} (trial {best['trial_id']}, valid "
                f"{spec['valid_metric']} {best['best_valid']:.4f}) through the runner: {best['params']}")
    record = run(spec["model"], spec["dataset"], spec["config_files"], overrides, spec["seed"],
                 device or spec["device"], spec["data_path"], spec["cache_dir"], spec["results_dir"])
    path = store.record_path(spec["results_dir"], record["model"], record["dataset"], record["seed"],
                             record["run_key"])
    selection = {"sweep": spec["name"], "sweep_dir": str(sweep_dir), "trial_id": best["trial_id"],
                 "valid_metric": spec["valid_metric"], "valid_task": spec["valid_task"],
                 "best_valid": best["best_valid"]}
    selected_by = [entry for entry in record.get("selected_by", []) if entry.get("sweep_dir") != str(sweep_dir)]
    record["selected_by"] = selected_by + [selection]
    store.save_record(path, record)
    return record, path


def sweep(model, dataset, grid=None, config_files=(), overrides=None, seed=None, epochs=None, cli_options=None,
          name=None, device="auto", data_path=None, cache_dir=None, results_dir=None, resume=False,
          retry_failed=False, ray_address=None, retrain=True, callbacks=()):
    """Plan, run (or resume), summarize and retrain the best config; return the summary dict.

    The arguments mirror ``run_benchmark.py tune`` (see :func:`build_tune_parser`).
    """
    require_ray()  # before any work: a missing Ray is the first thing to tell
    spec, sweep_dir = plan_sweep(model, dataset, grid, config_files, overrides, seed, epochs, cli_options, name,
                                 device, data_path, cache_dir, results_dir)
    experiment_dir = sweep_dir / TRIALS_DIRNAME
    if resume:
        if not (sweep_dir / SPEC_FILE).is_file():
            raise ConfigError(f"No sweep to resume at {sweep_dir}; run the same command without --resume first "
                              f"(or pass the sweep's --name)")
        with open(sweep_dir / SPEC_FILE, encoding="utf-8") as handle:
            stored = json.load(handle)
        if {**stored, "device": device} != {**spec, "device": device}:
            logger.warning(f"--resume: using the sweep's stored settings from {sweep_dir / SPEC_FILE} (the command "
                           f"line differs)")
        spec = stored
    elif experiment_dir.exists():
        raise ConfigError(f"Sweep {spec['name']} already exists at {sweep_dir}; pass --resume to continue it or "
                          f"--name NEW to start another")
    else:
        write_json_atomic(sweep_dir / SPEC_FILE, spec)
    space = space_of(spec)
    logger.info(f"sweep {spec['name']}: {spec['model']} on {spec['dataset_dir']}, "
                f"{space.grid_size()} grid point(s) x {spec['options']['num_samples']} sample(s); "
                f"space: {space.describe()}; fixed overrides: {spec['overrides'] or 'none'}; "
                f"selecting by valid {spec['valid_task']} {spec['valid_metric']}; scheduler "
                f"{spec['options']['scheduler']}; {spec['options']['cpus_per_trial']} CPU / "
                f"{spec['options']['gpus_per_trial']} GPU per trial; folder {sweep_dir}")
    trials = run_sweep(spec, sweep_dir, resume, retry_failed, ray_address, callbacks)
    best = best_trial(trials)
    # Ray creates trials lazily (max_concurrent): an interrupted sweep may not list them all yet.
    unfinished = sum(trial["status"] == NOT_RUN for trial in trials) + max(0, expected_trials(spec) - len(trials))
    final, final_error = None, None
    if unfinished:
        logger.warning(f"{unfinished} trial(s) unfinished (interrupted?); continue with --resume")
    elif best is None:
        logger.error(f"no trial of sweep {spec['name']} produced a valid score; see the trial logs")
    elif retrain:
        try:
            final = retrain_best(spec, best, sweep_dir, device)
        except Exception as error:  # the sweep's summary is still worth writing
            logger.exception("retraining the best config failed")
            final_error = f"{type(error).__name__}: {error}"
    summary = build_summary(spec, trials, best, final, final_error, unfinished)
    for path in write_summary(sweep_dir, summary):
        logger.info(f"wrote {path}")
    return summary
