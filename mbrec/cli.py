"""The command line: ``run_benchmark.py`` parses here and dispatches to one subcommand.

Subcommands: runs (default; one machine or a Ray grid), ``table`` and ``compare`` (reporting,
no training), ``tune`` (Ray Tune sweeps), ``suite`` (a suite's sweeps and runs). This is the only
module that imports both the benchmark package (runner, grid, tune) and reporting; neither imports it.
"""

import argparse
import logging
import sys

from mbrec import registry
from mbrec import results as store
from mbrec.benchmark.runner import LOG_FORMAT, USER_ERRORS, run, seed_label
from mbrec.config import parse_overrides
from mbrec.data.declarations import DATASET_FILE_HELP, use_dataset_files
from mbrec.data.errors import DataPreparationError

logger = logging.getLogger("mbrec")


def format_summary(records, tasks=("behavior_specific", "target_behavior", "behavior_item", "next_item"),
                   metrics=("recall@10", "ndcg@10", "recall@20", "ndcg@20")):
    """A plain-text table of test metrics, one line per (run, task)."""
    header = f"{'model':<12} {'dataset':<16} {'seed':>5} {'task':<18} {'users':>6} " + " ".join(
        f"{m:>9}" for m in metrics)
    lines = [header, "-" * len(header)]
    for record in records:
        for task in tasks:
            result = record["results"].get(task, "absent")
            if result == "absent":
                continue
            if result is None:
                lines.append(f"{record['model']:<12} {record['dataset']:<16} {record['seed']:>5} {task:<18} "
                             f"{'':>6} " + " ".join(f"{'N/A':>9}" for _ in metrics))
                continue
            values = " ".join(f"{result['metrics'].get(m, float('nan')):>9.4f}" for m in metrics)
            lines.append(f"{record['model']:<12} {record['dataset']:<16} {record['seed']:>5} {task:<18} "
                         f"{result['n_users']:>6} {values}")
    return "\n".join(lines)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="run_benchmark.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train and evaluate multi-behavior sequential recommenders under one protocol.\n\n"
                    "subcommands (run_benchmark.py SUBCOMMAND --help for each one's options):\n"
                    "  (none)   train and test runs: every --models x --datasets x --seeds, here or as a Ray\n"
                    "           grid (--workers N locally, --ray-address on a cluster; options below)\n"
                    "  table    rebuild comparison tables (Markdown, LaTeX, CSV, efficiency PNG) from stored runs\n"
                    "  compare  compare two stored runs user by user (paired test), no training\n"
                    "  tune     Ray Tune hyperparameter sweep of one model on one dataset",
        epilog="Extra arguments key=value (or --key=value) override any config entry, e.g. "
               "epochs=20 learning_rate=1e-3 prepare.size=medium.")
    parser.add_argument("--model", "--models", dest="models", nargs="+", default=["SASRec"],
                        help="model name(s): mbrec's and RecBole's sequential models")
    parser.add_argument("--dataset", "--datasets", dest="datasets", nargs="+", default=["synthetic"],
                        help="dataset name(s): built-in (properties/dataset/*.yaml) or declared with --dataset-file")
    parser.add_argument("--seed", "--seeds", dest="seeds", nargs="+", type=int, default=[None],
                        help="random seed(s); default: the config's seed")
    parser.add_argument("--dataset-file", dest="dataset_files", action="append", default=[], metavar="NAME.yaml",
                        help=DATASET_FILE_HELP)
    parser.add_argument("--config", dest="config_files", nargs="+", default=[], help="extra YAML config file(s)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--data-path", help="root of the raw data (default: $MBREC_DATA_DIR)")
    parser.add_argument("--cache-dir", help="where prepared atomic files go (default: $MBREC_CACHE_DIR or "
                                            "~/.cache/mbrec)")
    parser.add_argument("--results-dir", help="default: results/ in the repository")
    parser.add_argument("--rerun", action="store_true", help="train again even if a stored record exists")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--list", action="store_true", help="list models and datasets and exit")
    grid = parser.add_argument_group("benchmark grid on Ray (pip install -e \".[tune]\"; see README 'Scaling up')")
    grid.add_argument("--ray-address", help="run every (model, dataset, seed) as a Ray task on this cluster "
                                            "(auto or HOST:PORT)")
    grid.add_argument("--workers", type=int, help="run the grid on a local Ray with this many runs at a time")
    grid.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs each run reserves (default 1)")
    grid.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs each run reserves (default 0)")
    grid.add_argument("--max-retries", type=int, default=3,
                      help="times a run whose worker died is retried (default 3)")
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(argv)
    except KeyboardInterrupt:  # outside a run (a run's own Ctrl+C is reported where it happens)
        print("interrupted (Ctrl+C); records and tables are written atomically: none is half-written; a run "
              "that saved a resume state continues from it when the same command runs again", file=sys.stderr)
        return EXIT_INTERRUPTED


def _dispatch(argv):
    if argv and argv[0] == "suite":  # a suite's missing sweeps and runs, then its tables
        from mbrec.benchmark.suite import suite_main
        from mbrec.reporting.suite_tables import print_suite_report

        return suite_main(argv[1:], report=print_suite_report)
    if argv and argv[0] == "table" and any(arg.split("=")[0] == "--suite" for arg in argv[1:]):
        from mbrec.reporting.suite_tables import suite_table_main

        return suite_table_main(argv[1:])
    if argv and argv[0] == "table":  # rebuild tables from stored results, no training
        from mbrec.reporting.tables import table_main

        return table_main(argv[1:])
    if argv and argv[0] == "tune":  # Ray Tune sweep (optional extra: pip install -e ".[tune]")
        from mbrec.benchmark.tune import tune_main

        return tune_main(argv[1:])
    if argv and argv[0] == "compare":  # two stored runs, user by user, no training
        from mbrec.reporting.compare import compare_main

        return compare_main(argv[1:])
    parser = build_parser()
    # key=value overrides may sit anywhere, also right after a list option (--models A B lr=1e-3).
    extra = [arg for arg in argv if "=" in arg and not arg.startswith("-")]
    args, unknown = parser.parse_known_args([arg for arg in argv if arg not in extra])
    extra += unknown
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    try:
        use_dataset_files(args.dataset_files)
    except DataPreparationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.list:
        print("models:  ", ", ".join(registry.model_names()))
        print("datasets:", ", ".join(registry.dataset_names()))
        return 0
    unknown_flags = [arg for arg in extra if arg.startswith("--") and "=" not in arg]
    if unknown_flags:
        parser.error(f"unrecognized arguments: {' '.join(unknown_flags)}")
    overrides = parse_overrides(extra)
    try:
        store.check_writable(args.results_dir or store.default_results_dir())
    except store.ResultsError as error:  # before any data work, not after preparing the data
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.no_progress:
        overrides["show_progress"] = False
    if args.ray_address or args.workers:
        from mbrec.benchmark.grid import run_grid
        from mbrec.benchmark.tune import TuneNotInstalledError
        from mbrec.config import ConfigError

        try:
            records, failures = run_grid(args, overrides)
        except (TuneNotInstalledError, ConfigError) as error:  # Ray is an optional extra; a cluster refused us
            print(f"error: the grid runs on Ray: {error}", file=sys.stderr)
            return 2
        return _report(records, failures, args)
    records, failures = [], []
    several_runs = len(args.datasets) * len(args.models) * len(args.seeds) > 1
    for dataset in args.datasets:
        for model in args.models:
            for seed in args.seeds:
                try:
                    records.append(run(model, dataset, args.config_files, overrides, seed, args.device,
                                       args.data_path, args.cache_dir, args.results_dir, args.rerun,
                                       command_models=args.models))
                except KeyboardInterrupt as interrupt:
                    return _interrupted(f"{model} on {dataset} ({seed_label(seed)})", records, interrupt)
                except USER_ERRORS as error:  # bad input: a clear message, no traceback
                    if several_runs:  # a single run's error is its FAILED line alone
                        logger.error(f"{model} on {dataset} ({seed_label(seed)}): {error}")
                    failures.append((model, dataset, seed, error))
                except Exception as error:  # one failed run must not stop the others
                    if getattr(error, "run_log", None) is None:
                        logger.exception(f"{model} on {dataset} ({seed_label(seed)}) failed")
                    failures.append((model, dataset, seed, error))
    return _report(records, failures, args)


# Exit status of a command stopped by Ctrl+C (SIGINT), as shells report it: 128 + 2.
EXIT_INTERRUPTED = 130


def _interrupted(what, records, interrupt):
    """One line for Ctrl+C during a run: what stopped, what stays on disk; no traceback."""
    log = getattr(interrupt, "run_log", None)
    resume = getattr(interrupt, "resume_state", None)
    kept = [f"its log {log}"] if log else []
    if resume:
        kept.append(f"its resume state {resume}")
    kept.append(f"{len(records)} finished run record(s) of this command")
    again = ("running the same command again resumes it at its last resume state" if resume else
             "no checkpoint (running the same command again trains it from the start)")
    print(f"interrupted (Ctrl+C): {what} did not finish: no record, {again}; kept: {', '.join(kept)}",
          file=sys.stderr)
    return EXIT_INTERRUPTED


def _report(records, failures, args):
    """Summary, comparison table and the failed runs of a multi-run command; the exit status."""
    if records:
        print(format_summary(records))
    if len(records) + len(failures) > 1 and records:
        write_comparison_tables(records, args)
    for model, dataset, seed, error in failures:
        first_line = str(error).splitlines()[0] if str(error) else ""
        log = getattr(error, "run_log", None)
        print(f"FAILED {model} {dataset} {seed_label(seed)}: {type(error).__name__}: {first_line}"
              + (f"  (log: {log})" if log else ""), file=sys.stderr)
    return 1 if failures else 0


def write_comparison_tables(records, args):
    """The comparison table of this command's runs; a failed (model, dataset) is a marked hole."""
    from mbrec.protocol import ProtocolMismatch
    from mbrec.reporting.protocols import split_by_protocol
    from mbrec.reporting.tables import build_table, default_tables_dir, to_markdown, write_efficiency, write_tables

    try:
        table = build_table(records, models=args.models)
    except ProtocolMismatch as error:  # e.g. a model YAML sets another valid_task: one column per protocol
        print(f"Note: {error}\nShowing a column per protocol variant.", file=sys.stderr)
        table = build_table(split_by_protocol(records), models=args.models)
    print(to_markdown(table))
    for name, path in write_tables(table, default_tables_dir(args.results_dir)).items():
        print(f"wrote {name}: {path}")
    # The efficiency table and chart of this command's runs too (the README promises them here).
    for name, path in write_efficiency(records, default_tables_dir(args.results_dir)).items():
        print(f"wrote efficiency {name}: {path}")
