"""Ray Tune sweeps: ``python run_benchmark.py tune --model M --dataset D [options] [key=value ...]``.

One sweep = one grid (:mod:`mbrec.benchmark.search_space`) on one (model, dataset):

1. The grid is read and its names checked against the model's config, the data prepared, and
   the sweep's spec written to ``results/sweeps/<dataset>/<model>/<name>/sweep.json``; all
   before Ray starts, so wrong input is a one-line error.
2. Ray Tune runs one trial per sampled config. A trial builds its run exactly as the runner
   does (:func:`mbrec.benchmark.runner.setup_run`), trains with the model's trainer and
   reports the valid metric after every validation (test is never evaluated in a trial).
   ASHA stops weak trials early. Each trial has its own folder (log, checkpoint, outcome);
   a trial that raises is recorded as failed and the sweep goes on.
3. The best config by valid metric is retrained and tested by the normal runner
   (:func:`mbrec.benchmark.runner.run`), stored as an ordinary results record that names the
   sweep (``selected_by``); the sweep summary (JSON + Markdown) and a sensitivity plot
   (valid metric against each swept parameter) are written beside ``sweep.json``.

``--resume`` continues an interrupted sweep from Ray's saved state: finished trials are kept,
unfinished ones run. Ray is an optional extra; this module imports it only when a sweep runs.
"""

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from mbrec import registry
from mbrec import results as store
from mbrec.benchmark.runner import LOG_FORMAT, USER_ERRORS, _RunLog, prepare_data, run, setup_run
from mbrec.benchmark.search_space import (CHOICE, GRID, LOGUNIFORM, QUNIFORM, UNIFORM, Param, SearchSpace,
                                          check_names, default_grid_file, load_search_space, nested,
                                          sweep_defaults, with_ties)
from mbrec.training.trainer import Trainer
from mbrec.config import ConfigError, build_config, deep_update, merge_layers, parse_overrides
from mbrec.utils import REPO_DIR, atomic_path, data_dir, write_json_atomic

logger = logging.getLogger("mbrec")

RAY_INSTALL_HINT = ('Ray Tune is not installed; sweeps need the optional extra: pip install -e ".[tune]" '
                    '(or pip install "ray[tune]>=2.40")')
SWEEPS_DIRNAME = "sweeps"
TRIALS_DIRNAME = "trials"        # Ray's experiment folder inside the sweep folder
SPEC_FILE = "sweep.json"         # what the sweep runs; written before Ray starts, read by --resume
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
PLOT_FILE = "sensitivity.png"
TRIAL_LOG = "trial.log"          # a trial's log, appended to by each attempt
ATTEMPTS_FILE = "attempts.log"   # one line per start of a trial (Ray retries, --resume)
OUTCOME_FILE = "outcome.json"    # written when a trial trained to its end
CHECKPOINT_NAME = "checkpoint/best.pth"
RAY_ERROR_FILE = "error.txt"     # Ray's traceback of a failed trial, in the trial folder
METRIC = "valid_score"           # the key trials report; the config's valid_metric on valid_task
MODE = "max"                     # every valid_metric (Recall, NDCG, MRR) is better when higher
SPEC_VERSION = 1
NAME_HASH_LENGTH = 8
OPTION_KEYS = ("num_samples", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "scheduler", "grace_period",
               "reduction_factor", "max_failures", "local_num_cpus")
SAMPLING_OPTION_KEYS = ("num_samples", "scheduler", "grace_period", "reduction_factor")
SCHEDULERS = ("asha", "fifo")

COMPLETED, STOPPED, FAILED, NOT_RUN = "completed", "stopped early", "failed", "unfinished"
PLOT_DPI = 120
PLOT_PANEL_INCHES = 3.6
# A numeric parameter whose values span this ratio or more is drawn on a log axis.
LOG_AXIS_RATIO = 100


class TuneNotInstalledError(RuntimeError):
    """Ray Tune is missing; the message says how to install it."""


def require_ray():
    """Import Ray and Ray Tune, or raise :class:`TuneNotInstalledError` with the install command."""
    try:
        import ray
        from ray import tune
    except ImportError as error:
        raise TuneNotInstalledError(f"{RAY_INSTALL_HINT} ({error})") from None
    return ray, tune


# --------------------------------------------------------------------------------------------
# Planning: everything checked before Ray starts
# --------------------------------------------------------------------------------------------

def sweep_options(space, cli_options=None):
    """Sweep options: ``properties/tune.yaml`` < the grid's ``tune:`` block < command-line flags."""
    options = dict(sweep_defaults())
    for source, layer in (("the grid file's 'tune:' block", space.options),
                          ("the command line", {k: v for k, v in (cli_options or {}).items() if v is not None})):
        unknown = sorted(set(layer) - set(OPTION_KEYS))
        if unknown:
            raise ConfigError(f"Unknown sweep option(s) {unknown} in {source}; valid: {list(OPTION_KEYS)}")
        options.update(layer)
    if options["scheduler"] not in SCHEDULERS:
        raise ConfigError(f"Unknown scheduler '{options['scheduler']}'; use one of {list(SCHEDULERS)}")
    for key in ("num_samples", "cpus_per_trial", "grace_period", "reduction_factor"):
        if not float(options[key]) > 0:
            raise ConfigError(f"Sweep option {key} must be > 0, got {options[key]}")
    return options


def plan_sweep(model, dataset, grid=None, config_files=(), overrides=None, seed=None, epochs=None,
               cli_options=None, name=None, device="auto", data_path=None, cache_dir=None, results_dir=None):
    """Check a sweep's inputs and return its spec (a JSON-able dict) and its folder.

    Raises ConfigError (and the runner's other user errors) on an unknown model, dataset,
    grid file, grid parameter or sweep option; prepares the dataset so trials find it cached.
    """
    model_class = registry.get_model_class(model)
    grid_file = Path(grid) if grid else default_grid_file(model)
    if not grid and not grid_file.is_file():
        raise ConfigError(f"No grid for {model}: write {grid_file} (format: README, 'Sweeps') or pass --grid FILE")
    space = load_search_space(grid_file)
    options = sweep_options(space, cli_options)
    overrides = copy.deepcopy(overrides or {})
    if epochs is not None:
        overrides["epochs"] = int(epochs)
    if seed is not None:
        overrides["seed"] = int(seed)
    settings = merge_layers(model, dataset, config_files, overrides)
    _, dataset_dir = prepare_data(dataset, settings, data_path, cache_dir)
    config = build_config(model_class, dataset_dir, settings)
    check_names(space, settings, config.final_config_dict, model)
    # ASHA counts validations (one tune.report each); this many happen at most.
    max_validations = max(1, math.ceil(int(settings["epochs"]) / max(1, int(settings["eval_step"]))))
    spec = {
        "spec_version": SPEC_VERSION,
        "model": model,
        "dataset": dataset,
        "dataset_dir": dataset_dir.name,
        "grid_file": str(grid_file.resolve()),
        "space": space.to_dict(),
        "options": options,
        "overrides": overrides,
        "config_files": [str(Path(path).resolve()) for path in config_files],
        "seed": int(settings["seed"]),
        "epochs": int(settings["epochs"]),
        "max_validations": max_validations,
        "valid_metric": str(settings["valid_metric"]).lower(),
        "valid_task": settings["valid_task"],
        "device": device,
        # resolved here so that every node reads the driver's path, not its own environment's
        "data_path": str(data_dir(data_path)) if data_dir(data_path) else None,
        "cache_dir": str(cache_dir) if cache_dir else None,
        "results_dir": str(Path(results_dir or store.default_results_dir()).resolve()),
    }
    spec["name"] = name or default_sweep_name(grid_file, spec)
    return spec, sweep_dir_of(spec)


def default_sweep_name(grid_file, spec):
    """``<grid stem>-<hash>``: the same command names the same sweep, so ``--resume`` finds it."""
    identity = {key: spec[key] for key in ("model", "dataset", "dataset_dir", "space", "overrides", "config_files",
                                          "seed")}
    # Options that change which trials run; resources and retries may differ on --resume.
    identity["options"] = {key: spec["options"][key] for key in SAMPLING_OPTION_KEYS}
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode("utf-8")).hexdigest()
    return f"{Path(grid_file).stem}-{digest[:NAME_HASH_LENGTH]}"


def sweep_dir_of(spec):
    return Path(spec["results_dir"]) / SWEEPS_DIRNAME / spec["dataset_dir"] / spec["model"] / spec["name"]


def space_of(spec):
    """The spec's search space (stored as ``{name: {kind: values}}``)."""
    return SearchSpace({name: Param(name, *next(iter(kind_values.items())))
                        for name, kind_values in spec["space"].items()})


def ray_param_space(space):
    """Our search space as Ray Tune's ``param_space`` (tied parameters are set inside the trial)."""
    from ray import tune

    makers = {
        GRID: tune.grid_search,
        CHOICE: tune.choice,
        UNIFORM: lambda bounds: tune.uniform(*bounds),
        LOGUNIFORM: lambda bounds: tune.loguniform(*bounds),
        QUNIFORM: lambda bounds: tune.quniform(*bounds),
    }
    return {param.name: makers[param.kind](param.values) for param in space.swept}


# --------------------------------------------------------------------------------------------
# One trial (runs in a Ray worker)
# --------------------------------------------------------------------------------------------

def trial_dirname(trial_id):
    """A trial's folder name under ``trials/`` (Ray's default name lists every parameter)."""
    return f"trial_{trial_id}"


def train_trial(params, spec):
    """Ray Tune trainable: train one sampled config, reporting the valid metric per validation.

    Never evaluates the test split. Writes into the trial's own folder (under the sweep
    folder, which a cluster's nodes must share): ``trial.log``
    (appended per attempt), ``attempts.log``, the best checkpoint while training and, when
    training ends, ``outcome.json``. An exception fails the trial (Ray records it); the
    sweep goes on.
    """
    import torch
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    # Not get_trial_dir(): for a reused worker it names a node-local staging folder.
    trial_dir = sweep_dir_of(spec) / TRIALS_DIRNAME / trial_dirname(trial_id)
    trial_dir.mkdir(parents=True, exist_ok=True)
    chosen = with_ties(space_of(spec), params)
    overrides = deep_update(copy.deepcopy(spec["overrides"]), nested(chosen))
    overrides["show_progress"] = False  # progress bars from many workers would garble the driver's console
    # Ray limits the worker to its CPUs; torch would otherwise start a thread per core of the node.
    torch.set_num_threads(max(1, int(spec["options"]["cpus_per_trial"])))
    logging.getLogger().setLevel(logging.INFO)
    with open(trial_dir / ATTEMPTS_FILE, "a", encoding="utf-8") as handle:
        handle.write(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} pid={os.getpid()}\n")
    with _RunLog(trial_dir / TRIAL_LOG, mode="a"):
        logger.info(f"trial {trial_id} of sweep {spec['name']}: {spec['model']} on {spec['dataset']}, "
                    f"params {chosen} (mbrec from {REPO_DIR}, pid {os.getpid()})")
        try:
            _fit_trial(spec, overrides, chosen, trial_dir, tune)
        except Exception:
            logger.exception(f"trial {trial_id} failed")
            raise


def _fit_trial(spec, overrides, chosen, trial_dir, tune):
    model_class = registry.get_model_class(spec["model"])
    settings = merge_layers(spec["model"], spec["dataset"], spec["config_files"], overrides)
    seed = int(settings["seed"])
    _, dataset_dir = prepare_data(spec["dataset"], settings, spec["data_path"], spec["cache_dir"])
    built = setup_run(model_class, dataset_dir, settings, seed, spec["device"], with_test=False)
    trainer = getattr(model_class, "trainer_class", Trainer)(built.config, built.network, built.device)

    def report(entry, best_score, best_epoch):
        metrics = {METRIC: float(entry["valid_score"]), "best_valid_score": float(best_score)}
        if entry.get("epoch") is not None:
            metrics["epoch"] = int(entry["epoch"])
        if entry.get("loss") is not None:
            metrics["loss"] = float(entry["loss"])
        tune.report(metrics)  # ASHA may stop the trial here

    trainer.validation_callbacks.append(report)
    checkpoint = trial_dir / CHECKPOINT_NAME
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        fit_summary = trainer.fit(built.train_data, built.valid_data, checkpoint)
    finally:  # also when the scheduler stops the trial (SystemExit inside tune.report)
        checkpoint.unlink(missing_ok=True)  # the retrained best config is the product, not trial weights
    write_json_atomic(trial_dir / OUTCOME_FILE, {
        **fit_summary, "params": chosen, "parameters": built.n_parameters,
        "train_seconds": time.perf_counter() - start, "history": trainer.history})


# --------------------------------------------------------------------------------------------
# The sweep (runs in the driver)
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Summary and plot
# --------------------------------------------------------------------------------------------

def expected_trials(spec):
    """Trials the sweep makes in all: every grid point ``num_samples`` times."""
    return space_of(spec).grid_size() * int(spec["options"]["num_samples"])


def build_summary(spec, trials, best, final=None, final_error=None, unfinished=0):
    """The sweep summary as a JSON-able dict (see :func:`write_summary`).

    ``unfinished`` counts trials not finished yet (also those Ray had not created when interrupted);
    a summary with ``interrupted: true`` has no retrained best config.
    """
    counts = {status: sum(trial["status"] == status for trial in trials) for status in (COMPLETED, STOPPED, FAILED)}
    counts[NOT_RUN] = unfinished
    summary = {
        "sweep": spec["name"], "model": spec["model"], "dataset": spec["dataset_dir"],
        "valid_metric": spec["valid_metric"], "valid_task": spec["valid_task"], "mode": MODE,
        "grid_file": spec["grid_file"], "space": spec["space"], "options": spec["options"],
        "overrides": spec["overrides"], "seed": spec["seed"], "epochs": spec["epochs"],
        "command": " ".join(sys.argv), "trial_counts": counts, "interrupted": unfinished > 0, "trials": trials,
        "best": best, "final": None, "final_error": final_error,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if final is not None:
        record, path = final
        task = spec["valid_task"]
        summary["final"] = {
            "record": str(path), "run_key": record["run_key"], "log": record.get("log_file"),
            "valid": (record.get("valid_results") or {}).get(task),
            "test": ((record.get("results") or {}).get(task) or {}).get("metrics"),
        }
    return summary


def summary_markdown(summary):
    metric = f"{summary['valid_task']} {summary['valid_metric']}"
    swept = [name for name, kind_values in summary["space"].items() if "same_as" not in kind_values]
    lines = [f"# Sweep {summary['sweep']}: {summary['model']} on {summary['dataset']}", "",
             f"- command: `{summary['command']}`",
             f"- grid: `{summary['grid_file']}`; scheduler {summary['options']['scheduler']}, "
             f"{summary['options']['num_samples']} sample(s) per grid point, {summary['epochs']} epochs max, "
             f"seed {summary['seed']}",
             f"- selection: best valid {metric} (test never evaluated in trials)",
             "- trials: " + ", ".join(f"{n} {status}" for status, n in summary["trial_counts"].items() if n)
             + (" (interrupted: continue with --resume)" if summary["interrupted"] else "")]
    best = summary["best"]
    if best:
        lines.append(f"- best: trial {best['trial_id']} valid {best['best_valid']:.4f} with "
                     + ", ".join(f"{k}={v}" for k, v in best["params"].items()))
    final = summary["final"]
    if final:
        test = final["test"] or {}
        lines.append(f"- retrained by the runner: `{final['record']}`; test "
                     + ", ".join(f"{k} {v:.4f}" for k, v in sorted(test.items()) if k.endswith(("@10", "@20"))))
    if summary["final_error"]:
        lines.append(f"- retraining the best config failed: {summary['final_error']}")
    lines += ["", "| trial | " + " | ".join(swept) + f" | best valid {summary['valid_metric']} | epochs | status |",
              "|---|" + "---|" * len(swept) + "---:|---:|---|"]
    ranked = sorted(summary["trials"], key=lambda t: (t["best_valid"] is None, -(t["best_valid"] or 0.0)))
    for trial in ranked:
        score = f"{trial['best_valid']:.4f}" if trial["best_valid"] is not None else "-"
        if best and trial["trial_id"] == best["trial_id"]:
            score = f"**{score}**"
        status = trial["status"] + (f": {trial['error']} (log: `{trial['log']}`)" if trial["error"] else "")
        lines.append(f"| {trial['trial_id']} | " + " | ".join(str(trial["params"].get(name)) for name in swept)
                     + f" | {score} | {trial['epochs_run']} | {status} |")
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir, summary):
    """Write ``summary.json``, ``summary.md`` and ``sensitivity.png`` atomically; return their paths."""
    write_json_atomic(sweep_dir / SUMMARY_JSON, summary)
    with atomic_path(sweep_dir / SUMMARY_MD) as tmp:
        tmp.write_text(summary_markdown(summary), encoding="utf-8")
    plot = sensitivity_plot(summary, sweep_dir / PLOT_FILE)
    return [sweep_dir / SUMMARY_JSON, sweep_dir / SUMMARY_MD] + ([plot] if plot else [])


def sensitivity_plot(summary, path):
    """Valid metric against each swept parameter, one panel each (like FatsMB's Figure 8).

    Each point is a trial (its best valid score); the line joins the mean per value. Returns
    the path, or None when no trial has a score.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [trial for trial in summary["trials"] if trial["best_valid"] is not None and trial["status"] != FAILED]
    names = [name for name, kind_values in summary["space"].items() if "same_as" not in kind_values]
    if not scored or not names:
        return None
    figure, axes = plt.subplots(1, len(names), figsize=(PLOT_PANEL_INCHES * len(names), PLOT_PANEL_INCHES),
                                squeeze=False)
    for axis, name in zip(axes[0], names):
        values = [trial["params"].get(name) for trial in scored]
        scores = [trial["best_valid"] for trial in scored]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            xs = values
            if min(values) > 0 and max(values) / min(values) >= LOG_AXIS_RATIO:
                axis.set_xscale("log")
        else:  # categories at 0, 1, 2, ... in first-seen order
            labels = list(dict.fromkeys(str(v) for v in values))
            xs = [labels.index(str(v)) for v in values]
            axis.set_xticks(range(len(labels)), labels)
        axis.scatter(xs, scores, alpha=0.6)
        by_value = {}
        for x, score in zip(xs, scores):
            by_value.setdefault(x, []).append(score)
        if 1 < len(by_value) < len(xs):  # repeated values (a grid): join their means
            ordered = sorted(by_value)
            axis.plot(ordered, [sum(by_value[x]) / len(by_value[x]) for x in ordered], marker="o")
        axis.set_xlabel(name)
        axis.set_ylabel(f"valid {summary['valid_metric']}")
        axis.grid(alpha=0.3)
    figure.suptitle(f"{summary['model']} on {summary['dataset']}: sweep {summary['sweep']}")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=PLOT_DPI)
    plt.close(figure)
    return path


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------

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


def build_tune_parser():
    parser = argparse.ArgumentParser(
        prog="run_benchmark.py tune",
        description="Ray Tune sweep of one model on one dataset over a grid (properties/hyper/<Model>.yaml); the "
                    "best config by valid metric is then retrained and tested by the normal runner.",
        epilog="Extra arguments key=value fix a config entry in every trial (and the retrained run), e.g. "
               "train_batch_size=512. Sweep defaults: properties/tune.yaml.")
    parser.add_argument("--model", required=True, help="model name (mbrec's or RecBole's sequential models)")
    parser.add_argument("--dataset", required=True, help="registered dataset name (properties/dataset/*.yaml)")
    parser.add_argument("--grid", help="grid file (default: properties/hyper/<Model>.yaml); YAML or RecBole's "
                                       "hyper format")
    parser.add_argument("--num-samples", type=int, help="runs per grid point (random parameters drawn anew)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default: as resources allow)")
    parser.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (fractions share a GPU)")
    parser.add_argument("--cpus-per-trial", type=float, help="CPUs per trial")
    parser.add_argument("--num-cpus", dest="local_num_cpus", type=int, help="CPUs of the local Ray (no "
                                                                          "--ray-address); default all")
    parser.add_argument("--scheduler", choices=SCHEDULERS, help="asha stops weak trials early; fifo does not")
    parser.add_argument("--ray-address", help="join this Ray cluster (e.g. 10.0.0.1:6379 or auto) instead of "
                                              "starting a local Ray")
    parser.add_argument("--name", help="sweep name (default: <grid>-<hash of the sweep's settings>)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep; finished trials "
                                                              "are not rerun")
    parser.add_argument("--retry-failed", action="store_true", help="with --resume: run failed trials again")
    parser.add_argument("--no-retrain", action="store_true", help="skip retraining the best config on test")
    parser.add_argument("--epochs", type=int, help="max epochs per trial and for the retrained best config")
    parser.add_argument("--seed", type=int, help="random seed of every trial (default: the config's)")
    parser.add_argument("--config", dest="config_files", nargs="+", default=[], help="extra YAML config file(s)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when the trial has a GPU), cpu, cuda")
    parser.add_argument("--data-path", help="root of the raw data (default: $MBREC_DATA_DIR; the same path on "
                                            "every node)")
    parser.add_argument("--cache-dir", help="where prepared atomic files go (default: $MBREC_CACHE_DIR)")
    parser.add_argument("--results-dir", help="default: results/ in the repository (shared storage on a cluster)")
    return parser


def tune_main(argv=None):
    """``run_benchmark.py tune ...``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_tune_parser()
    extra = [arg for arg in argv if "=" in arg and not arg.startswith("-")]
    args, unknown = parser.parse_known_args([arg for arg in argv if arg not in extra])
    unknown_flags = [arg for arg in unknown if arg.startswith("--") and "=" not in arg]
    if unknown_flags:
        parser.error(f"unrecognized arguments: {' '.join(unknown_flags)}")
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    cli_options = {key: getattr(args, key) for key in ("num_samples", "max_concurrent", "gpus_per_trial",
                                                       "cpus_per_trial", "local_num_cpus", "scheduler")}
    try:
        summary = sweep(args.model, args.dataset, args.grid, args.config_files, parse_overrides(extra + unknown),
                        args.seed, args.epochs, cli_options, args.name, args.device, args.data_path, args.cache_dir,
                        args.results_dir, args.resume, args.retry_failed, args.ray_address,
                        retrain=not args.no_retrain)
    except TuneNotInstalledError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except USER_ERRORS as error:
        logger.error(str(error))
        return 1
    print(summary_markdown(summary))
    complete = summary["final"] is not None or (args.no_retrain and summary["best"] is not None)
    return 0 if complete else 1
