"""Benchmark grids on Ray: every (model, dataset, seed) of a command as one Ray task.

``run_benchmark.py --models ... --datasets ... --seeds ... --ray-address auto|HOST:PORT`` joins a
cluster; ``--workers N`` starts a local Ray that runs N runs at a time. The driver (this process)
prepares each dataset once, skips every run whose record is already stored, and submits the
rest; each task calls the ordinary runner (:func:`mbrec.benchmark.runner.run`) in a worker.

Guarantees, and what gives them:

* **each run once**: a stored record is never redone (driver check, then the runner's check
  under the run's lock, so two drivers or a duplicate task never train one run twice);
* **no partial record**: records are written to a temporary file and renamed (``results.py``);
* **a dead worker's run is retried**: Ray re-executes a task whose worker process died, up to
  ``--max-retries`` times; the OS released the dead worker's run lock, so the retry trains it.
  A run that *raises* (bad config, a bug) is not retried: it is reported as failed with its log.

On a cluster, ``--results-dir`` (and ``--cache-dir`` if shared) must be storage every node sees
at the same path: workers write the records there and the driver reads them back.
"""

import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field

from mbrec import registry
from mbrec import results as store
from mbrec.results import ResultsError
from mbrec.benchmark.runner import LOG_FORMAT, USER_ERRORS, plan_run, run, seed_label
from mbrec.data.declarations import declared_dataset_files, use_dataset_files

logger = logging.getLogger("mbrec")
DONE, FAILED = "done", "failed"
# First words of the line each attempt of a grid run writes into the run's log.
ATTEMPT_MARK = "== grid run"


class GridRunError(RuntimeError):
    """A run of the grid failed in its worker (the message and ``run_log`` say why and where)."""

    def __init__(self, message, run_log=None):
        super().__init__(message)
        self.run_log = run_log


def run_in_worker(model, dataset, config_files, overrides, seed, device, data_path, cache_dir, results_dir,
                  rerun, dataset_files=(), grid_id=None, command_models=()):
    """One run inside a Ray worker; returns a small outcome (the record itself is on shared storage).

    Exceptions become a ``failed`` outcome, so Ray only retries a run whose worker *died*.
    ``dataset_files``: the user's dataset declarations (``--dataset-file``) the driver read.
    Each attempt of the run in grid ``grid_id`` starts its log with an ``ATTEMPT_MARK`` line; a
    retry appends to the log of the attempt that died, and the outcome counts the attempts.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    attempt, log = 1, None
    try:
        use_dataset_files(dataset_files)
        plan = plan_run(model, dataset, config_files, overrides, seed, data_path, cache_dir, results_dir,
                        command_models)
        log = store.log_path(plan.results_dir, model, plan.dataset_dir.name, plan.seed, plan.key)
        attempt = _start_attempt(log, grid_id)
        record = run(model, dataset, config_files, overrides, seed, device, data_path, cache_dir, results_dir,
                     rerun, log_mode="a", command_models=command_models)
    except Exception as error:  # noqa: BLE001 (reported to the driver with the run's log)
        log = getattr(error, "run_log", None) or log
        return {"status": FAILED, "error": f"{type(error).__name__}: {error}", "log": str(log) if log else None,
                "attempts": attempt}
    path = store.record_path(results_dir or store.default_results_dir(), model, record["dataset"], record["seed"],
                             record["run_key"])
    return {"status": DONE, "path": str(store.stored_record(path) or path), "attempts": attempt}


def _start_attempt(log, grid_id):
    """Mark one attempt of a run at the end of its log (a first attempt starts the log afresh);
    return its number in grid ``grid_id``."""
    mark = f"{ATTEMPT_MARK} {grid_id}"
    earlier = 0
    if log.is_file():
        earlier = sum(line.startswith(mark) for line in log.read_text(encoding="utf-8", errors="replace").splitlines())
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a" if earlier else "w", encoding="utf-8") as handle:
        handle.write(f"{mark}: attempt {earlier + 1} (pid {os.getpid()})\n")
    return earlier + 1


@dataclass(frozen=True)
class GridJob:
    """One run of a grid: a model on a dataset with its own overrides (a suite entry's) and a seed."""

    model: str
    dataset: str
    seed: object
    overrides: dict = field(default_factory=dict, hash=False)


def grid_jobs(args, overrides):
    """The command's runs: every (dataset, model, seed) of ``args`` with the command's ``overrides``."""
    return [GridJob(model, dataset, seed, overrides) for dataset in args.datasets for model in args.models
            for seed in args.seeds]


def grid_models(jobs, command_models=None):
    """The models whose keys a shared override may name: ``command_models``, else the jobs' models
    (a key one of them knows is not misspelt)."""
    return list(command_models) if command_models is not None else list(dict.fromkeys(job.model for job in jobs))


def plan_grid(args, overrides, jobs=None, command_models=None):
    """Split the grid into stored records, runs to submit and runs that cannot start (bad input).

    ``jobs`` (:class:`GridJob`) replace the command's cross product (the suite runner passes its own).
    ``command_models``: the models whose keys a shared override may name (default: the jobs' models;
    a suite passes every model of its file, so a subset run accepts the suite-wide overrides).
    """
    stored, pending, failures = [], [], []
    jobs = jobs if jobs is not None else grid_jobs(args, overrides)
    command_models = grid_models(jobs, command_models)
    for job in jobs:
        model, dataset, seed = job.model, job.dataset, job.seed
        try:
            registry.get_model_class(model)
            plan = plan_run(model, dataset, args.config_files, job.overrides, seed, args.data_path,
                            args.cache_dir, args.results_dir, command_models)
            if store.stored_record(plan.path) and not args.rerun:
                stored.append(store.load_record(store.stored_record(plan.path)))
                continue
        except USER_ERRORS as error:
            logger.error(f"{model} on {dataset} ({seed_label(seed)}): {error}")
            failures.append((model, dataset, seed, error))
            continue
        pending.append(job)
    return stored, pending, failures


def run_device(args):
    """The device a grid run uses: what it reserved (``auto`` -> CUDA only with ``--gpus-per-run``)."""
    if args.device not in (None, "auto"):
        return args.device
    return "cuda" if args.gpus_per_run > 0 else "cpu"


def run_grid(args, overrides, jobs=None, command_models=None):
    """Run the command's grid (or ``jobs``) on Ray; return ``(records, failures)`` like the sequential runner.

    ``command_models``: see :func:`plan_grid`."""
    from mbrec.benchmark.tune import connect_ray, require_ray

    jobs = jobs if jobs is not None else grid_jobs(args, overrides)
    command_models = grid_models(jobs, command_models)  # the workers check keys against the same list
    records, pending, failures = plan_grid(args, overrides, jobs, command_models)
    logger.info(f"grid: {len(records) + len(pending) + len(failures)} runs; {len(records)} stored (skipped), "
                f"{len(pending)} to run, {len(failures)} cannot start")
    if not pending:
        return records, failures
    ray, _ = require_ray()
    local_cpus = None if args.ray_address else math.ceil(args.workers * args.cpus_per_run)
    started = connect_ray(args.ray_address, local_cpus)
    try:
        task = ray.remote(run_in_worker).options(num_cpus=args.cpus_per_run, num_gpus=args.gpus_per_run,
                                                 max_retries=args.max_retries, retry_exceptions=False)
        device = run_device(args)
        dataset_files = sorted(declared_dataset_files().values())
        grid_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"  # tells this grid's attempts from older logs
        waiting = {task.remote(job.model, job.dataset, args.config_files, job.overrides, job.seed, device,
                               args.data_path, args.cache_dir, args.results_dir, args.rerun, dataset_files, grid_id,
                               command_models):
                   (job.model, job.dataset, job.seed) for job in pending}
        finished = 0
        while waiting:
            (ref,), _ = ray.wait(list(waiting), num_returns=1)
            model, dataset, seed = waiting.pop(ref)
            finished += 1
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayError as error:  # the worker died more than --max-retries times
                outcome = {"status": FAILED, "error": f"worker lost after {args.max_retries} retries: "
                                                      f"{type(error).__name__}: {error}", "log": None}
            if outcome["status"] == DONE:
                try:
                    records.append(store.load_record(outcome["path"]))
                except (OSError, ResultsError) as error:
                    outcome = {"status": FAILED, "log": None,
                               "error": f"the worker wrote {outcome['path']} but the driver cannot read it "
                                        f"({error}); --results-dir must be storage every node shares"}
            if outcome["status"] == FAILED:
                failures.append((model, dataset, seed, GridRunError(outcome["error"], outcome["log"])))
            attempts = outcome.get("attempts", 1)
            logger.info(f"grid [{finished}/{len(pending)}] {model} {dataset} {seed_label(seed)}: {outcome['status']}"
                        + (f" after {attempts} attempts" if attempts > 1 else ""))
    finally:
        if started:
            ray.shutdown()
    return records, failures
