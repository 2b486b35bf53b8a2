"""``python run_benchmark.py suite NAME``: run whatever a suite (``properties/suites/NAME.yaml``) still lacks.

The plan, per dataset variant and entry (:mod:`mbrec.suites` describes the file):

1. **Tune** every learned entry on the suite's first seed: a Ray Tune sweep with the suite's
   budget, the same for every learned model: ``tuning.trials`` trials drawn at random from the
   model's grid (``properties/hyper/<Model>.yaml``; every axis becomes a random choice, so the
   trial count does not depend on the grid's size; parameters the suite fixes are not swept), the
   same ASHA settings, selection on valid only (the sweep never evaluates test). Entries with
   ``tune_from`` reuse another entry's selection; rules without training (Pop, Recent) are not tuned.
2. **Run** the selected configuration on every seed through the ordinary runner (the first seed
   included: the same configuration and seed as the sweep's best trial).

Stored runs are skipped and a finished sweep is not run again, an interrupted one is resumed: the
command resumes where it stopped. Seed runs go through the benchmark grid
(:mod:`mbrec.benchmark.grid`) with ``--workers N`` or ``--ray-address``; sweeps through
:mod:`mbrec.benchmark.tune`. Each record gets the suite entry it is a run of (``suite_entries``)
and is stored gzip-compressed (``.json.gz``). Progress is ``done/total`` with a time estimate from
what the suite stored (its records' seconds, its sweeps' trial times), updated as runs finish.
``--dry-run`` prints the plan and writes nothing under the results folder.
"""

import argparse
import copy
import json
import logging
import math
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import yaml

from mbrec import registry
from mbrec import results as store
from mbrec import suite_costs, suites
from mbrec.benchmark.suite_estimate import Estimator, duration
from mbrec.benchmark import grid as grid_runs
from mbrec.benchmark.runner import LOG_FORMAT, USER_ERRORS, plan_run, run
from mbrec.benchmark.search_space import CHOICE, GRID, SAME_AS, default_grid_file, load_search_space, nested
from mbrec.benchmark.tune import TuneNotInstalledError, plan_sweep, sweep
from mbrec.benchmark.tune.driver import fill_trial_seconds
from mbrec.config import ConfigError, deep_update, merge_layers
from mbrec.training.resume import resume_path_of
from mbrec.training.trainer import NoTrainingTrainer

logger = logging.getLogger("mbrec")
GRIDS_DIRNAME = "grids"  # the grids the suite derived from the models' grids, beside its records
STORED, PENDING, WAITING, FAILED = "stored", "to run", "waits for its sweep", "failed"


@dataclass
class SweepStep:
    """One entry's sweep on one dataset variant: its spec arguments, state and (when done) selection."""

    entry: object
    dataset: str
    settings: dict
    grid_file: Path
    sweep_dir: Path = None
    state: str = PENDING  # STORED (finished), PENDING (new or to resume), FAILED
    resume: bool = False
    selected: dict = None
    name: str = None


@dataclass
class SeedStep:
    """One run of the selected configuration of an entry on one variant and seed."""

    entry: object
    dataset: str
    seed: int
    overrides: dict = field(default_factory=dict)
    state: str = PENDING
    path: Path = None
    sweep: str = None


def suite_models(suite):
    """Every model of the whole suite file (a subset run too): its suite-wide overrides are meant for
    whichever of them knows a key, so a key one of them knows is not refused as misspelt."""
    return suite.file_models  # read once with the file (was: the YAML re-read at every call)


def entry_settings(suite, entry):
    """An entry's overrides: suite-wide < training (cap, patience) < the model's < the entry's own."""
    settings = {}
    for layer in (suite.overrides, suite.training, suite.model_overrides.get(entry.model, {}), entry.overrides):
        deep_update(settings, copy.deepcopy(layer))
    stages = getattr(registry.get_model_class(entry.model), "training_stages", None)
    if stages:  # a staged model validates once per epoch of every stage: the sweep's ASHA horizon
        merged = merge_layers(entry.model, suite.datasets[0], (), settings, suite_models(suite))
        settings["epochs"] = sum(int(merged[f"{stage}_epochs"]) for stage in stages)
    return settings


def is_trained(model):
    return getattr(registry.get_model_class(model), "trainer_class", None) is not NoTrainingTrainer


def _fixed_names(settings, prefix=""):
    names = set()
    for key, value in settings.items():
        names.add(prefix + key)
        if isinstance(value, dict):
            names |= _fixed_names(value, f"{prefix}{key}.")
    return names


def derive_grid(suite, entry, settings, out_dir):
    """Write the suite's grid of ``entry``: the model's grid, every axis a random choice, fixed names dropped.

    Returns the file. Drawing ``trials`` configurations at random gives every model the same number
    of trials whatever its grid's size; a parameter the suite fixes (e.g. ``hidden_size``) is not swept.
    """
    source = Path(entry.grid) if entry.grid else default_grid_file(entry.model)
    if not source.is_file():
        raise ConfigError(f"suite {suite.name}: no grid for {entry.name}: write {source} (README, 'Sweeps')")
    space = load_search_space(source)
    fixed = _fixed_names(settings)
    kept = {name: param for name, param in space.params.items() if name not in fixed
            and not (param.kind == SAME_AS and param.values in fixed)}
    swept = {name: param for name, param in kept.items() if param.kind != SAME_AS}
    if not swept:
        raise ConfigError(f"suite {suite.name}: the suite fixes every parameter of {source} for {entry.name}; "
                          f"nothing is left to tune")
    derived = {name: ({CHOICE: list(param.values)} if param.kind in (GRID, CHOICE) else {param.kind: param.values})
               for name, param in kept.items()}
    path = Path(out_dir) / GRIDS_DIRNAME / f"{slug(entry.name)}.yaml"
    text = (f"# Derived by `run_benchmark.py suite {suite.name}` from {source.name}: every axis drawn at random,\n"
            f"# {suite.tuning['trials']} trials; fixed by the suite (not swept): "
            f"{', '.join(sorted(set(space.params) - set(kept))) or 'none'}.\n"
            + yaml.safe_dump({"space": derived}, sort_keys=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def slug(name):
    """A file-name-safe form of an entry name (``FatsMB[pos=ape]`` -> ``FatsMB_pos=ape_``)."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)


def sweep_options(suite, args):
    """The sweep options of every learned entry: the suite's budget, this machine's resources."""
    options = {"num_samples": suite.tuning["trials"], **{key: suite.tuning[key] for key in
                                                           ("scheduler", "grace_period", "reduction_factor")
                                                           if key in suite.tuning}}
    if args.workers:
        options.update(max_concurrent=args.workers, local_num_cpus=math.ceil(args.workers * args.cpus_per_run))
    options["cpus_per_trial"] = args.cpus_per_run
    options["gpus_per_trial"] = args.gpus_per_run
    return options


def _sweep_state(step):
    """STORED with the selection, FAILED (no trial scored), or PENDING (``resume`` when begun)."""
    summary_file = step.sweep_dir / "summary.json"
    if summary_file.is_file():
        with open(summary_file, encoding="utf-8") as handle:
            summary = json.load(handle)
        if not summary.get("interrupted") and summary.get("best"):
            step.state, step.selected = STORED, summary["best"]["params"]
            return
        if not summary.get("interrupted"):
            step.state = FAILED
            return
    step.state, step.resume = PENDING, (step.sweep_dir / "trials").exists()


def plan_suite(suite, args, results_dir, grids_dir=None):
    """Every sweep and seed run of the suite with its state (stored, to run, waiting, failed).

    The derived grids are written under ``grids_dir`` (default: ``results_dir``); a dry run passes a
    temporary folder. A sweep's name hashes the grid's content, not its path, so the plan is the same.
    """
    sweeps, seed_runs, options = {}, [], sweep_options(suite, args)
    for dataset in suite.datasets:
        for entry in suite.entries:
            settings = entry_settings(suite, entry)
            if not is_trained(entry.model) or entry.tune_from:
                continue
            grid_file = derive_grid(suite, entry, settings, grids_dir or results_dir)
            spec, sweep_dir = plan_sweep(entry.model, dataset, grid_file, (), settings, suite.tuning_seed, None,
                                         options, None, args.device, args.data_path, args.cache_dir, results_dir,
                                         suite_models(suite))
            step = SweepStep(entry, dataset, settings, grid_file, sweep_dir, name=spec["name"])
            _sweep_state(step)
            sweeps[(entry.name, dataset)] = step
        for entry in suite.entries:
            source = sweeps.get((entry.tune_from or entry.name, dataset))
            for seed in suite.seeds:
                step = SeedStep(entry, dataset, seed, sweep=source.name if source else None)
                if source is not None and source.state != STORED:
                    step.state = WAITING if source.state == PENDING else FAILED
                else:
                    _plan_seed_run(suite, step, source, args, results_dir)
                seed_runs.append(step)
    return list(sweeps.values()), seed_runs


def _plan_seed_run(suite, step, source, args, results_dir):
    overrides = entry_settings(suite, step.entry)
    if source is not None:
        deep_update(overrides, nested(source.selected))
        deep_update(overrides, copy.deepcopy(step.entry.overrides))  # an ablation's switch beats the selection
    step.overrides = overrides
    plan = plan_run(step.entry.model, step.dataset, (), overrides, step.seed, args.data_path, args.cache_dir,
                    results_dir, suite_models(suite))
    step.path = plan.path
    step.state = STORED if store.stored_record(plan.path) else PENDING


def annotate(suite, step, results_dir):
    """Name the suite entry in the step's record and store it compressed; return the record (or None)."""
    found = store.stored_record(step.path)
    if found is None:
        return None
    record = store.load_record(found)
    entries = [item for item in record.get(suites.RECORD_KEY) or []
               if (item.get("suite"), item.get("entry"), item.get("dataset_variant"))
               != (suite.name, step.entry.name, step.dataset)]
    mark = {"suite": suite.name, "entry": step.entry.name, "dataset_variant": step.dataset, "sweep": step.sweep}
    changed = entries + [mark] != (record.get(suites.RECORD_KEY) or [])
    record[suites.RECORD_KEY] = entries + [mark]
    target = store.compressed_path(step.path)
    if changed or found != target:
        store.save_record(target, record)
        if found != target:
            found.unlink()
    return record


def suite_estimator(suite, seed_runs, results_dir):
    """An :class:`Estimator` from everything the suite stored under ``results_dir`` (reads only): the
    records naming the suite (every entry and variant, so a partial run is estimated from the others
    too), the plan's stored runs not yet annotated, and the trial times of the sweeps of its variants."""
    named = suite_costs.suite_run_seconds(suite.name, results_dir)
    seen = {path.resolve() for _, _, path in named}
    unnamed = [((step.entry.name, step.dataset), suite_costs.record_seconds(store.load_record(found)))
               for step in seed_runs if step.state == STORED
               and (found := store.stored_record(step.path)) is not None and found.resolve() not in seen]
    tuned = {}  # model -> the entry whose sweep it is (entries outside a partial run: the model's name)
    for entry in suite.entries:
        if not entry.tune_from:
            tuned.setdefault(entry.model, entry.name)
    trials = [((tuned.get(cost.model, cost.model), cost.dataset), seconds)
              for cost in suite_costs.sweep_costs(results_dir) for seconds in cost.trial_seconds]
    families = {entry.name: entry.tune_from or entry.name for entry in suite.entries}
    return Estimator([(mark, seconds) for mark, seconds, _ in named] + unnamed, trials, families)


def describe_plan(suite, sweeps, seed_runs, estimator):
    lines = [f"suite {suite.name}: {len(suite.datasets)} dataset(s) x {len(suite.entries)} entries x "
             f"{len(suite.seeds)} seeds; tuning {suite.tuning['trials']} trials per learned entry on seed "
             f"{suite.tuning_seed} ({suite.tuning.get('scheduler', 'asha')}, grace {suite.tuning.get('grace_period')}, "
             f"reduction {suite.tuning.get('reduction_factor')}); cap/patience {suite.training}"]
    for step in sweeps:
        estimate = estimator.sweep_seconds(step.entry.name, step.dataset, suite.tuning["trials"])
        lines.append(f"  sweep {step.entry.name:<24} {step.dataset:<18} {step.state}"
                     + (" (resume)" if step.resume else "")
                     + (f" ({duration(estimate)})" if step.state == PENDING and estimate is not None else "")
                     + f"  [{step.sweep_dir}]")
    for step in seed_runs:
        estimate = estimator.run_seconds(step.entry.name, step.dataset)
        resumes = (step.state == PENDING and step.path is not None
                   and resume_path_of(step.path.with_suffix(".pth")).exists())
        lines.append(f"  run   {step.entry.name:<24} {step.dataset:<18} seed {step.seed:<6} {step.state}"
                     + (" (resumes: an interrupted attempt saved its state)" if resumes else "")
                     + (f" ({duration(estimate)})" if step.state != STORED and estimate is not None else ""))
    return "\n".join(lines)


def progress_line(sweeps, seed_runs, estimator, trials):
    done = sum(step.state == STORED for step in sweeps) + sum(step.state == STORED for step in seed_runs)
    total = len(sweeps) + len(seed_runs)
    pending_sweeps = [step for step in sweeps if step.state == PENDING]
    pending_runs = [step for step in seed_runs if step.state in (PENDING, WAITING)]
    return f"suite progress: {done}/{total} done; {estimator.describe(pending_runs, pending_sweeps, trials)}"


def annotate_stored(suite, seed_runs, results_dir):
    """Name the suite entry in every stored run of the plan (writes: never in a dry run)."""
    for step in seed_runs:
        if step.state == STORED:
            annotate(suite, step, results_dir)


def run_suite(suite, args, results_dir):
    """Run the missing sweeps, then the missing seed runs; return ``(failures, seed_runs)``."""
    failures = []
    for round_ in ("sweeps", "seed runs"):
        sweeps, seed_runs = plan_suite(suite, args, results_dir)
        annotate_stored(suite, seed_runs, results_dir)
        estimator = suite_estimator(suite, seed_runs, results_dir)
        logger.info(progress_line(sweeps, seed_runs, estimator, suite.tuning["trials"]))
        if round_ == "sweeps":
            for step in [step for step in sweeps if step.state == PENDING]:
                logger.info(f"sweep {step.entry.name} on {step.dataset}" + (" (resuming)" if step.resume else ""))
                try:
                    summary = sweep(step.entry.model, step.dataset, step.grid_file, (), step.settings,
                                    suite.tuning_seed, None, sweep_options(suite, args), None, args.device,
                                    args.data_path, args.cache_dir, results_dir, resume=step.resume,
                                    ray_address=args.ray_address, retrain=False, command_models=suite_models(suite))
                except USER_ERRORS as error:
                    failures.append(f"sweep {step.entry.name} on {step.dataset}: {error}")
                    continue
                if summary.get("stop_requested"):  # Tune caught Ctrl+C and ended the sweep: the suite ends too
                    logger.warning(f"sweep {step.entry.name} on {step.dataset} was interrupted; the same command "
                                   f"resumes it")
                    raise KeyboardInterrupt
                if summary.get("best") is None or summary.get("interrupted"):
                    failures.append(f"sweep {step.entry.name} on {step.dataset}: no selection "
                                    f"(see {step.sweep_dir / 'summary.md'})")
                step.state = STORED if summary.get("best") and not summary.get("interrupted") else FAILED
                for trial in summary.get("trials") or []:  # the next sweeps' estimate uses its trials' time
                    if trial.get("seconds") is not None:
                        estimator.add(step.entry.name, step.dataset, float(trial["seconds"]), kind="trial")
                logger.info(progress_line(sweeps, seed_runs, estimator, suite.tuning["trials"]))
            continue
        failures += [f"{step.entry.name} on {step.dataset} seed {step.seed}: its sweep has no selection"
                     for step in seed_runs if step.state == FAILED]
        pending = [step for step in seed_runs if step.state == PENDING]
        failures += _run_seed_steps(suite, pending, args, results_dir, seed_runs, estimator)
        annotate_stored(suite, seed_runs, results_dir)
    return failures, seed_runs


def _run_seed_steps(suite, pending, args, results_dir, seed_runs, estimator):
    failures = []
    if pending and (args.workers or args.ray_address):
        jobs = [grid_runs.GridJob(step.entry.model, step.dataset, step.seed, step.overrides) for step in pending]
        grid_args = SimpleNamespace(**{**vars(args), "config_files": [], "results_dir": results_dir, "rerun": False})
        _, grid_failures = grid_runs.run_grid(grid_args, None, jobs, command_models=suite_models(suite))
        failures += [f"{model} on {dataset} seed {seed}: {error}" for model, dataset, seed, error in grid_failures]
        for step in pending:
            step.state = STORED if store.stored_record(step.path) else FAILED
        return failures
    for step in pending:
        start = time.perf_counter()
        try:
            run(step.entry.model, step.dataset, (), step.overrides, step.seed, args.device, args.data_path,
                args.cache_dir, results_dir, command_models=suite_models(suite))
            step.state = STORED
            record = annotate(suite, step, results_dir)
            if record is not None:  # the next runs' estimate uses it
                estimator.add(step.entry.name, step.dataset, suite_costs.record_seconds(record))
        except Exception as error:  # noqa: BLE001 (one failed run must not stop the suite; its log says why)
            step.state = FAILED
            log = getattr(error, "run_log", None)
            failures.append(f"{step.entry.name} on {step.dataset} seed {step.seed}: {type(error).__name__}: "
                            f"{str(error).splitlines()[0] if str(error) else ''}" + (f" (log: {log})" if log else ""))
        logger.info(f"{step.entry.name} {step.dataset} seed {step.seed}: {step.state} "
                    f"({time.perf_counter() - start:.0f}s); "
                    + progress_line([], seed_runs, estimator, suite.tuning["trials"]))
    return failures


def stale_files(suite, sweeps, seed_runs, results_dir):
    """``(stale, undecided)``: stored records and sweep folders under ``results_dir`` that no step of
    the plan names (a setting changed since they were stored, or they were never the suite's), and
    the records of entries whose new sweep has not run yet (the sweep may select their configuration
    again, as SASRec's re-tuning did, and then its runs are reused). Reads only."""
    planned = {path.resolve() for step in seed_runs if step.path is not None
               for path in (Path(step.path), store.compressed_path(step.path))}
    waiting = {(step.entry.name, step.dataset) for step in seed_runs if step.path is None}
    stale, undecided = [], []
    for path in store.record_files(Path(results_dir) / "runs"):
        if path.resolve() in planned:
            continue
        try:
            marks = suites.entry_annotations(store.load_record(path), suite.name)
        except (store.ResultsError, OSError, ValueError):
            marks = []
        (undecided if any(mark in waiting for mark in marks) else stale).append(path)
    kept = {step.sweep_dir.resolve() for step in sweeps}
    stale += sorted(folder for folder in Path(results_dir).glob(f"{suite_costs.SWEEPS_DIRNAME}/*/*/*")
                    if folder.is_dir() and folder.resolve() not in kept)
    return stale, undecided


def print_stale(suite, args, results_dir):
    """``--stale``: the stale paths on stdout, one per line (for ``git rm -r``); the rest on stderr."""
    with tempfile.TemporaryDirectory(prefix="mbrec-suite-stale-") as grids_dir:
        sweeps, seed_runs = plan_suite(suite, args, results_dir, grids_dir)
    stale, undecided = stale_files(suite, sweeps, seed_runs, results_dir)
    for path in stale:
        print(path)
    logger.info(f"{len(stale)} stale path(s) under {results_dir} (no step of suite {suite.name} names them)"
                + (f"; {len(undecided)} record(s) wait for their entry's new sweep, which may select their "
                   f"configuration again: {', '.join(str(path) for path in undecided)}" if undecided else ""))
    return 0


def fill_sweep_times(results_dir):
    """``--fill-sweep-times``: time the trials of the sweeps summarized before trials were timed."""
    untimed = []
    for summary_file in sorted(Path(results_dir).glob(f"{suite_costs.SWEEPS_DIRNAME}/*/*/*/"
                                                      f"{suite_costs.SUMMARY_JSON}")):
        filled = fill_trial_seconds(summary_file.parent)
        if filled:
            print(f"{summary_file}: {filled} trial time(s) written")
    for cost in suite_costs.sweep_costs(results_dir):
        if not cost.timed:
            untimed.append(f"{cost.dataset} {cost.sweep} ({cost.untimed_trials} of {cost.trials_run} trials)")
    print("every sweep is timed" if not untimed else "still untimed (no trial folders, or a lost worker's "
          "attempt without its end): " + "; ".join(untimed))
    return 0


def build_suite_parser():
    parser = argparse.ArgumentParser(
        prog="run_benchmark.py suite",
        description="Run what a suite (properties/suites/NAME.yaml) still lacks: sweeps on the first seed with the "
                    "same budget for every learned model, then the selected configuration on every seed; stored "
                    "runs and finished sweeps are skipped. Ends with the suite's tables.")
    parser.add_argument("name", help=f"suite name ({', '.join(suites.suite_names())}) or a suite YAML file")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (what is stored, what would run); "
                                                               "writes nothing")
    parser.add_argument("--fill-sweep-times", action="store_true",
                        help="write the trial times into the suite's sweep summaries that lack them (summarized "
                             "before trials were timed), from their trial folders; then exit")
    parser.add_argument("--stale", action="store_true",
                        help="print the stored records and sweep folders that no step of the whole suite names "
                             "(a setting changed since they were stored), one per line, and exit; writes nothing")
    parser.add_argument("--entries", nargs="+", help="run only these entries (an ablation brings the entry it is "
                                                     "tuned from); the tables still show the whole suite")
    parser.add_argument("--datasets", nargs="+", help="run only these dataset variants")
    parser.add_argument("--results-dir", help="default: results/reference/<suite>/ in the repository")
    parser.add_argument("--workers", type=int, help="local Ray: this many runs (and sweep trials) at a time")
    parser.add_argument("--ray-address", help="join this Ray cluster (auto or HOST:PORT)")
    parser.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs per run / trial (default 1)")
    parser.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs per run / trial (default 0)")
    parser.add_argument("--max-retries", type=int, default=3, help="retries of a run whose worker died")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--data-path", help="root of the raw data (default: $MBREC_DATA_DIR)")
    parser.add_argument("--cache-dir", help="prepared data (default: $MBREC_CACHE_DIR or ~/.cache/mbrec)")
    return parser


def suite_main(argv=None, report=None):
    """``run_benchmark.py suite ...``; ``report(suite, results_dir)`` prints the tables at the end."""
    args = build_suite_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    try:
        whole_suite = suite = suites.load_suite(args.name)
        suite = whole_suite.subset(args.entries, args.datasets)
        for entry in suite.entries:
            registry.get_model_class(entry.model)
        for dataset in suite.datasets:
            merge_layers(suite.entries[0].model, dataset)  # unknown variants fail here, before any work
        results_dir = Path(args.results_dir) if args.results_dir else suites.default_suite_results_dir(suite.name)
        if args.fill_sweep_times:
            return fill_sweep_times(results_dir)
        if args.stale:  # judged against the whole suite: a subset's plan would call the rest stale
            return print_stale(whole_suite, args, results_dir)
        if args.dry_run:  # the plan only: the grids go to a temporary folder, records are not annotated
            with tempfile.TemporaryDirectory(prefix="mbrec-suite-dry-run-") as grids_dir:
                sweeps, seed_runs = plan_suite(suite, args, results_dir, grids_dir)
            estimator = suite_estimator(suite, seed_runs, results_dir)
            print(describe_plan(suite, sweeps, seed_runs, estimator))
            print(progress_line(sweeps, seed_runs, estimator, suite.tuning["trials"]))
            return 0
        store.check_writable(results_dir)  # before any sweep or run: one line, not a traceback mid-suite
        failures, _ = run_suite(suite, args, results_dir)
    except (suites.SuiteError, *USER_ERRORS) as error:
        logger.error(str(error))
        return 1
    except TuneNotInstalledError as error:  # Ray is an optional extra; sweeps need it
        logger.error(f"the suite tunes with Ray Tune: {error}")
        return 2
    if report is not None:
        report(whole_suite, results_dir)
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0
