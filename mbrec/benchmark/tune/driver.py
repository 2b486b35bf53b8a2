"""The sweep, run in the driver: connecting to Ray, running or resuming the trials, reading what
became of each, retraining the best config through the runner, and :func:`sweep`, which plans,
runs, summarizes and retrains."""

import copy
import json
import logging
import os
import signal
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

from mbrec import results as store
from mbrec.benchmark.runner import run
from mbrec.benchmark.search_space import nested, with_ties
from mbrec.benchmark.tune.plan import (
    METRIC, MODE, RAY_AUTH_MODE_ENV, RAY_TOKEN_FILE, SPEC_FILE, join_in_token_mode, TRIALS_DIRNAME, expected_trials, plan_sweep, require_ray, space_of, trial_params,
)
from mbrec.benchmark.tune.summary import SUMMARY_JSON, build_summary, write_summary
from mbrec.benchmark.tune.trial import (
    ATTEMPTS_FILE, CHECKPOINT_NAME, COMPLETED, FAILED, FAILURE_FILE, NOT_RUN, OUTCOME_FILE, SECONDS_FILE,
    STATUS_FILE, STOPPED, TRIAL_LOG, train_trial, trial_dir_of, trial_dirname,
)
from mbrec.config import ConfigError, deep_update
from mbrec.training.resume import resume_path_of
from mbrec.utils import REPO_DIR, read_json_or_none, write_json_atomic

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
        join_in_token_mode(address)
        try:
            ray.init(address=address, runtime_env=runtime_env)
        except ConnectionError as error:
            mode = os.environ.get(RAY_AUTH_MODE_ENV)
            hint = ("" if (mode or "").lower() == "token" else
                    f"; {RAY_AUTH_MODE_ENV} is {mode or 'unset'} and a cluster from `ray start` (Ray 2.60) asks for "
                    f"token authentication: run this command with {RAY_AUTH_MODE_ENV}=token in the environment "
                    f"(the token is read from $RAY_AUTH_TOKEN or {RAY_TOKEN_FILE}; copy the head's file there)")
            raise ConfigError(f"cannot join the Ray cluster at {address} ({error}){hint}") from None
    else:
        logger.info(f"starting a local Ray ({num_cpus or 'all'} CPUs)")
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env)
    return True


def _progress_callback(spec, total, done):
    """A Ray Tune callback that files each trial's end in its ``status.json`` (as soon as Ray says
    so, so a killed driver loses nothing finished) and logs ``[done/total]``, counting the
    trials finished before a resume."""
    from ray import tune

    metric_name = f"{spec['valid_task']} {spec['valid_metric']}"

    class SweepProgress(tune.Callback):
        def __init__(self):
            self.done = done

        def _end(self, trial, lost_worker=False):
            self.done += 1
            trial_id = trial.config["trial_id"]
            entry = _file_trial_end(spec, trial_id, trial.last_result or {}, lost_worker)
            score = (f"best valid {metric_name} {entry['best_valid']:.4f}" if entry["best_valid"] is not None
                     else "no valid score")
            failure = f" ({entry['error']})" if entry.get("error") else ""
            logger.info(f"[{self.done}/{total}] trial {trial_id} {entry['status']}{failure}: {score}; "
                        f"params {trial_params(spec)[trial_id]}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._end(trial)

        def on_trial_error(self, iteration, trials, trial, **info):  # its worker died max_failures + 1 times
            self._end(trial, lost_worker=True)

    return SweepProgress()


def _file_trial_end(spec, trial_id, last_result, lost_worker):
    """Write what became of one attempt of a trial into its ``status.json``; return the entry."""
    trial_dir = trial_dir_of(spec, trial_id)
    outcome, failure = read_json_or_none(trial_dir / OUTCOME_FILE), read_json_or_none(trial_dir / FAILURE_FILE)
    validations = int(last_result.get("training_iteration") or 0)
    entry = {"ended": datetime.now(timezone.utc).isoformat(timespec="seconds"), "validations": validations,
             "best_valid": last_result.get("best_valid_score"), "error": None,
             "epochs_run": int(last_result["epoch"]) + 1 if last_result.get("epoch") is not None else 0}
    if failure is not None:
        entry.update(status=FAILED, error=failure["error"])
    elif lost_worker:
        entry.update(status=FAILED, error=f"worker lost after {spec['options']['max_failures']} retries: "
                                          f"{_error_line(trial_dir)}")
    elif outcome is not None or validations >= spec["max_validations"]:
        entry["status"] = COMPLETED  # ASHA stops a trial at its last report (max_t), before it writes its outcome
    elif validations:
        entry["status"] = STOPPED
    else:
        entry.update(status=FAILED, error="ended without reporting a valid score")
    status = read_json_or_none(trial_dir / STATUS_FILE) or {"trial_id": trial_id, "attempts": []}
    status["attempts"].append(entry)
    trial_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(trial_dir / STATUS_FILE, status)
    # The trial is over (completed, stopped by ASHA or failed): a resume state it left is not resumed.
    resume_path_of(trial_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    return entry


def run_sweep(spec, sweep_dir, resume=False, retry_failed=False, ray_address=None, callbacks=()):
    """Run (or resume) the sweep on Ray Tune; return its trials (see :func:`collect_trials`) and whether
    a stop signal (Ctrl+C, SIGUSR1) ended it.

    What is finished is read from the trials' own files (``outcome.json``, ``status.json``),
    never from Ray's saved state: a finished trial is never run again, and every trial trains
    the parameters drawn for its id when the sweep was planned. ``callbacks`` are extra Ray Tune
    callbacks (the tests use one to interrupt a sweep). On ``--resume`` ASHA compares the
    resumed trials among themselves (the finished ones are not rerun to fill its rungs).
    """
    ray, tune = require_ray()
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    options = spec["options"]
    before = collect_trials(spec)
    rerun = {NOT_RUN} | ({FAILED} if retry_failed else set())
    pending = [trial["trial_id"] for trial in before if trial["status"] in rerun]
    if resume:
        logger.info(f"resuming sweep {spec['name']}: {len(before) - len(pending)} finished trial(s) kept from their "
                    f"own files, {len(pending)} to run{' (failed trials run again)' if retry_failed else ''}")
    if not pending:
        return before, False
    started_ray = connect_ray(ray_address, options["local_num_cpus"])
    try:
        trainable = tune.with_resources(tune.with_parameters(train_trial, spec=spec),
                                        {"cpu": options["cpus_per_trial"], "gpu": options["gpus_per_trial"]})
        if options["scheduler"] == "asha":
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=spec["max_validations"],
                                      # sweep.json files planned before the floor rule have no asha_grace
                                      grace_period=min(int(spec.get("asha_grace", options["grace_period"])),
                                                       spec["max_validations"]),
                                      reduction_factor=options["reduction_factor"])
        else:
            scheduler = FIFOScheduler()
        tuner = tune.Tuner(
            trainable,
            param_space={"trial_id": tune.grid_search(pending)},
            tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, scheduler=scheduler, num_samples=1,
                                        max_concurrent_trials=options["max_concurrent"],
                                        # a fresh worker per trial would import torch and recbole again
                                        reuse_actors=True,
                                        trial_dirname_creator=lambda trial: trial_dirname(trial.config["trial_id"])),
            run_config=tune.RunConfig(
                name=TRIALS_DIRNAME, storage_path=str(sweep_dir),
                failure_config=tune.FailureConfig(max_failures=int(options["max_failures"])),
                callbacks=[_progress_callback(spec, expected_trials(spec), len(before) - len(pending)),
                           *callbacks]),
        )
        with _signal_handlers_restored() as signals:
            tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    return collect_trials(spec), signals.stop_requested


# Ray Tune's fit installs its own SIGINT (and SIGUSR1) handler, "stop the sweep and save", and puts the
# previous one back only when a signal arrives, not when the sweep ends: a suite that goes on to its seed
# runs in the same process would then answer Ctrl+C with Tune's warning and keep training.
TUNE_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGUSR1") if hasattr(signal, name))


@contextmanager
def _signal_handlers_restored():
    """The process's SIGINT/SIGUSR1 handlers as they were before the block (main thread only: elsewhere
    neither Tune nor we may set them).

    Yields an object whose ``stop_requested`` says, after the block, whether Tune's handler caught a
    stop signal: Tune ends the sweep quietly then, and a caller that goes on (a suite's next steps)
    must stop too. Tune installs its handler for both signals; when one arrives it puts the SIGINT
    handler from before back and leaves its own on SIGUSR1. So: SIGUSR1 changed and SIGINT not.
    """
    signals = SimpleNamespace(stop_requested=False)
    if threading.current_thread() is not threading.main_thread():
        yield signals
        return
    before = {number: signal.getsignal(number) for number in TUNE_SIGNALS}
    try:
        yield signals
    finally:
        after = {number: signal.getsignal(number) for number in TUNE_SIGNALS}
        sigusr1 = getattr(signal, "SIGUSR1", None)
        signals.stop_requested = (sigusr1 in after and after[sigusr1] != before[sigusr1]
                                  and after[signal.SIGINT] == before[signal.SIGINT])
        for number, handler in before.items():
            if handler is not None:  # None: set outside Python, cannot be restored from here
                signal.signal(number, handler)


def collect_trials(spec):
    """One dict per planned trial, in trial order, read from the trial folders (not Ray's state).

    Keys: ``trial_id``, ``params`` (tied ones included), ``status`` (completed, stopped early,
    failed, unfinished), ``best_valid``, ``validations``, ``epochs_run``, ``attempts`` (starts),
    ``history`` (what each ended attempt became), ``seconds`` (wall seconds over its ended attempts; None
    before any attempt ended), ``error`` (first line of the cause), ``log``, ``dir``.
    """
    space, params_of = space_of(spec), trial_params(spec)
    trials = []
    for planned in spec["trials"]:
        trial_dir = trial_dir_of(spec, planned["trial_id"])
        outcome, failure = read_json_or_none(trial_dir / OUTCOME_FILE), read_json_or_none(trial_dir / FAILURE_FILE)
        history = (read_json_or_none(trial_dir / STATUS_FILE) or {}).get("attempts", [])
        last = history[-1] if history else {}
        if outcome is not None:  # trained to its end: its own numbers, whatever Ray saved
            status, best_valid = COMPLETED, outcome.get("best_valid_score")
            validations, epochs_run, error = outcome.get("validations", last.get("validations", 0)), \
                int(outcome["epochs_run"]), None
        elif failure is not None:
            status, best_valid, validations, epochs_run, error = FAILED, None, 0, 0, failure["error"]
        elif last:
            status, best_valid, error = last["status"], last["best_valid"], last.get("error")
            validations, epochs_run = last["validations"], last["epochs_run"]
        else:
            status, best_valid, validations, epochs_run, error = NOT_RUN, None, 0, 0, None
        attempts_file = trial_dir / ATTEMPTS_FILE
        trials.append({
            "trial_id": planned["trial_id"],
            "params": with_ties(space, params_of[planned["trial_id"]]),
            "status": status,
            "best_valid": best_valid if status != FAILED else None,
            "validations": validations,
            "epochs_run": epochs_run,
            "attempts": len(attempts_file.read_text().splitlines()) if attempts_file.is_file() else 0,
            "seconds": _trial_seconds(trial_dir),
            "history": history,
            "error": error if status == FAILED else None,
            "log": str(trial_dir / TRIAL_LOG),
            "dir": str(trial_dir),
        })
    return trials


def _trial_seconds(trial_dir):
    """The wall seconds of a trial's ended attempts, or None when none has ended or they are unknown.

    From ``seconds.log`` (the trial times each attempt itself); for a trial from before that file,
    from the start of each attempt (``attempts.log``) to its end as the driver filed it
    (``status.json``), when every start has its end (a lost worker's attempt has none). An
    attempt killed before it wrote its line is missing: the sum is then a lower bound.
    """
    path = trial_dir / SECONDS_FILE
    if not path.is_file():
        return _seconds_from_timestamps(trial_dir)
    values = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            values.append(float(line))
        except ValueError:  # a line cut short by a killed worker
            continue
    return round(sum(values), 3) if values else None


def _seconds_from_timestamps(trial_dir):
    attempts_file = trial_dir / ATTEMPTS_FILE
    ended = [attempt.get("ended") for attempt in (read_json_or_none(trial_dir / STATUS_FILE) or {}).get("attempts", [])]
    if not attempts_file.is_file() or not ended:
        return None
    try:
        started = [datetime.fromisoformat(line.split()[0]) for line in attempts_file.read_text().splitlines()
                   if line.strip()]
        ended = [datetime.fromisoformat(stamp) for stamp in ended]
    except (ValueError, TypeError, IndexError):
        return None
    if len(started) != len(ended):
        return None
    return float(sum((end - start).total_seconds() for start, end in zip(started, ended)))


def fill_trial_seconds(sweep_dir):
    """Write each trial's ``seconds`` into a sweep's ``summary.json`` where it lacks them (a summary
    from before trials were timed), from the trial folders beside it; return how many were filled."""
    summary_file = Path(sweep_dir) / SUMMARY_JSON
    summary = read_json_or_none(summary_file)
    if not isinstance(summary, dict):
        return 0
    filled = 0
    for trial in summary.get("trials") or []:
        if trial.get("seconds") is None:
            seconds = _trial_seconds(Path(sweep_dir) / TRIALS_DIRNAME / trial_dirname(trial["trial_id"]))
            if seconds is not None:
                trial["seconds"], filled = seconds, filled + 1
    if filled:
        write_json_atomic(summary_file, summary)
    return filled


def _error_line(trial_dir):
    """The failing exception as ``Type: message``: the last line of Ray's traceback file."""
    path = trial_dir / RAY_ERROR_FILE if trial_dir else None
    if path is None or not path.is_file():
        return "no error file"
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[-1] if lines else "empty error file"


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
          retry_failed=False, ray_address=None, retrain=True, callbacks=(), command_models=()):
    """Plan, run (or resume), summarize and retrain the best config; return the summary dict.

    The arguments mirror ``run_benchmark.py tune`` (see :func:`build_tune_parser`).
    """
    require_ray()  # before any work: a missing Ray is the first thing to tell
    spec, sweep_dir = plan_sweep(model, dataset, grid, config_files, overrides, seed, epochs, cli_options, name,
                                 device, data_path, cache_dir, results_dir, command_models)
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
        if "trials" not in stored:
            raise ConfigError(f"The sweep at {sweep_dir} was made by an older mbrec (its trials were drawn by Ray, "
                              f"so they cannot be resumed truthfully); start a new one with --name NEW")
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
    trials, stop_requested = run_sweep(spec, sweep_dir, resume, retry_failed, ray_address, callbacks)
    best = best_trial(trials)
    unfinished = sum(trial["status"] == NOT_RUN for trial in trials)
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
    summary["stop_requested"] = stop_requested  # Ctrl+C (or SIGUSR1) ended the sweep: a suite stops too
    for path in write_summary(sweep_dir, summary):
        logger.info(f"wrote {path}")
    return summary
