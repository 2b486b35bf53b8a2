"""One trial of a sweep: what runs in a Ray worker (train one sampled config, report the valid
metric per validation, never test), its files, and the statuses a trial ends with."""

import copy
import logging
import os
import time
from datetime import datetime, timezone

from mbrec import registry
from mbrec.benchmark.runner import _RunLog, prepare_data, setup_run
from mbrec.benchmark.search_space import nested, with_ties
from mbrec.benchmark.tune.plan import METRIC, TRIALS_DIRNAME, space_of, sweep_dir_of, trial_params
from mbrec.training.trainer import Trainer
from mbrec.config import deep_update, merge_layers
from mbrec.data.declarations import use_dataset_files
from mbrec.utils import REPO_DIR, write_json_atomic

logger = logging.getLogger("mbrec")

TRIAL_LOG = "trial.log"          # a trial's log, appended to by each attempt
ATTEMPTS_FILE = "attempts.log"   # one line per start of a trial (Ray retries, --resume, --retry-failed)
OUTCOME_FILE = "outcome.json"    # written by the trial when it trained to its end
FAILURE_FILE = "failure.json"    # written by the trial when it raised (the error; the traceback is in its log)
STATUS_FILE = "status.json"      # written by the driver when Ray says the trial ended: status and attempts
SECONDS_FILE = "seconds.log"     # one line per ended attempt: its wall seconds (the suite's cost accounting)
CHECKPOINT_NAME = "checkpoint/best.pth"

COMPLETED, STOPPED, FAILED, NOT_RUN = "completed", "stopped early", "failed", "unfinished"


def trial_dirname(trial_id):
    """A trial's folder name under ``trials/`` (Ray's default name lists every parameter)."""
    return f"trial_{trial_id}"


def trial_dir_of(spec, trial_id):
    return sweep_dir_of(spec) / TRIALS_DIRNAME / trial_dirname(trial_id)


def train_trial(config, spec):
    """Ray Tune trainable: train one planned trial, reporting the valid metric per validation.

    ``config`` names the trial (``{"trial_id": ...}``); its parameters were drawn when the sweep
    was planned (``spec["trials"]``), so a resumed or retried trial trains the same config.
    Never evaluates the test split. Writes into the trial's own folder (under the sweep folder,
    which a cluster's nodes must share): ``trial.log`` (appended per attempt), ``attempts.log``,
    the best checkpoint while training and, when training ends, ``outcome.json``. A trial that
    raises writes ``failure.json`` and returns: Ray retries only a trial whose worker *died*
    (``max_failures``), as the grid does; the sweep goes on.
    """
    import torch
    from ray import tune

    use_dataset_files(spec.get("dataset_files"))
    trial_id = config["trial_id"]
    # Not get_trial_dir(): for a reused worker it names a node-local staging folder.
    trial_dir = trial_dir_of(spec, trial_id)
    trial_dir.mkdir(parents=True, exist_ok=True)
    chosen = with_ties(space_of(spec), trial_params(spec)[trial_id])
    overrides = deep_update(copy.deepcopy(spec["overrides"]), nested(chosen))
    overrides["show_progress"] = False  # progress bars from many workers would garble the driver's console
    # Ray limits the worker to its CPUs; torch would otherwise start a thread per core of the node.
    torch.set_num_threads(max(1, int(spec["options"]["cpus_per_trial"])))
    logging.getLogger().setLevel(logging.INFO)
    (trial_dir / FAILURE_FILE).unlink(missing_ok=True)  # a retried trial's earlier failure is in status.json
    with open(trial_dir / ATTEMPTS_FILE, "a", encoding="utf-8") as handle:
        handle.write(f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} pid={os.getpid()}\n")
    start = time.perf_counter()
    try:
        with _RunLog(trial_dir / TRIAL_LOG, mode="a"):
            logger.info(f"trial {trial_id} of sweep {spec['name']}: {spec['model']} on {spec['dataset']}, "
                        f"params {chosen} (mbrec from {REPO_DIR}, pid {os.getpid()})")
            try:
                _fit_trial(spec, overrides, chosen, trial_dir, tune)
            except Exception as error:  # noqa: BLE001 (recorded as the trial's failure; the sweep goes on)
                logger.exception(f"trial {trial_id} failed")
                write_json_atomic(trial_dir / FAILURE_FILE,
                                  {"error": f"{type(error).__name__}: {error}".splitlines()[0]})
    finally:  # also when ASHA stops the trial (SystemExit in tune.report): a stopped trial cost time too
        with open(trial_dir / SECONDS_FILE, "a", encoding="utf-8") as handle:
            handle.write(f"{time.perf_counter() - start:.3f}\n")


def _fit_trial(spec, overrides, chosen, trial_dir, tune):
    model_class = registry.get_model_class(spec["model"])
    settings = merge_layers(spec["model"], spec["dataset"], spec["config_files"], overrides,
                            spec.get("command_models", ()))
    seed = int(settings["seed"])
    _, dataset_dir = prepare_data(spec["dataset"], settings, spec["data_path"], spec["cache_dir"])
    built = setup_run(model_class, dataset_dir, settings, seed, spec["device"], with_test=False)
    trainer = getattr(model_class, "trainer_class", Trainer)(built.config, built.network, built.device)

    reported = []

    def report(entry, best_score, best_epoch):
        reported.append(float(entry["valid_score"]))
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
        # An attempt killed mid-way (Ctrl+C, the driver or a session ended) left a resume state: the
        # trial continues there, first reporting its earlier validations again (Trainer._resume), so
        # ASHA sees the same curve as from a trial never interrupted. The state is removed by the
        # driver when Ray says the trial ended (_file_trial_end): inside the trial, ASHA's stop and
        # the end of an interrupted sweep look alike.
        fit_summary = trainer.fit(built.train_data, built.valid_data, checkpoint)
    finally:  # also when the scheduler stops the trial (SystemExit inside tune.report)
        checkpoint.unlink(missing_ok=True)  # the retrained best config is the product, not trial weights
    write_json_atomic(trial_dir / OUTCOME_FILE, {
        **fit_summary, "params": chosen, "parameters": built.n_parameters, "validations": len(reported),
        "train_seconds": time.perf_counter() - start, "history": trainer.history})
