"""``run_benchmark.py tune``: its parser and :func:`tune_main`, which runs :func:`sweep` and prints
the summary."""

import argparse
import logging
import sys

from mbrec.benchmark.runner import LOG_FORMAT, USER_ERRORS
from mbrec.benchmark.tune.driver import sweep
from mbrec.benchmark.tune.plan import SCHEDULERS, TuneNotInstalledError
from mbrec.benchmark.tune.summary import summary_markdown
from mbrec.config import parse_overrides
from mbrec.data.declarations import DATASET_FILE_HELP, use_dataset_files

logger = logging.getLogger("mbrec")


def build_tune_parser():
    parser = argparse.ArgumentParser(
        prog="run_benchmark.py tune",
        description="Ray Tune sweep of one model on one dataset over a grid (properties/hyper/<Model>.yaml); the "
                    "best config by valid metric is then retrained and tested by the normal runner.",
        epilog="Extra arguments key=value fix a config entry in every trial (and the retrained run), e.g. "
               "train_batch_size=512. Sweep defaults: properties/tune.yaml.")
    parser.add_argument("--model", required=True, help="model name (mbrec's or RecBole's sequential models)")
    parser.add_argument("--dataset", required=True, help="dataset name: built-in (properties/dataset/*.yaml) or declared "
                                                          "with --dataset-file")
    parser.add_argument("--grid", help="grid file (default: properties/hyper/<Model>.yaml); YAML or RecBole's "
                                       "hyper format")
    parser.add_argument("--num-samples", type=int, help="runs per grid point (random parameters drawn anew)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default: as resources allow)")
    parser.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (fractions share a GPU)")
    parser.add_argument("--cpus-per-trial", type=float, help="CPUs per trial")
    parser.add_argument("--num-cpus", dest="local_num_cpus", type=int, help="CPUs of the local Ray (no "
                                                                          "--ray-address); default all")
    parser.add_argument("--scheduler", choices=SCHEDULERS, help="asha stops weak trials early; fifo does not")
    parser.add_argument("--grace-period", type=int, help="ASHA: validations every trial gets before it may be "
                                                         "stopped (default 5; a warning says when it stops nothing)")
    parser.add_argument("--max-failures", type=int, help="times a trial whose worker died is retried (default 3, "
                                                         "as the grid's --max-retries; a trial that raises is not)")
    parser.add_argument("--ray-address", help="join this Ray cluster (e.g. 10.0.0.1:6379 or auto) instead of "
                                              "starting a local Ray")
    parser.add_argument("--name", help="sweep name (default: <grid>-<hash of the sweep's settings>)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep; finished trials "
                                                              "are not rerun")
    parser.add_argument("--retry-failed", action="store_true", help="with --resume: run failed trials again")
    parser.add_argument("--no-retrain", action="store_true", help="skip retraining the best config on test")
    parser.add_argument("--epochs", type=int, help="max epochs per trial and for the retrained best config")
    parser.add_argument("--seed", type=int, help="random seed of every trial (default: the config's)")
    parser.add_argument("--dataset-file", dest="dataset_files", action="append", default=[], metavar="NAME.yaml",
                        help=DATASET_FILE_HELP)
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
                                                       "cpus_per_trial", "local_num_cpus", "scheduler", "grace_period",
                                                       "max_failures")}
    try:
        use_dataset_files(args.dataset_files)
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
