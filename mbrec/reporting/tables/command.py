"""``run_benchmark.py table``: its parser (with the statistics options ``compare`` shares) and
:func:`table_main`, which prints and writes every table."""

import argparse
import sys
from pathlib import Path

from mbrec.protocol import ProtocolMismatch
from mbrec.reporting.protocols import split_by_protocol, with_protocol
from mbrec.results import default_results_dir
from mbrec.reporting.stats import (
    CORRECTIONS, DEFAULT_ALPHA, DEFAULT_BOOTSTRAP_RESAMPLES, DEFAULT_BOOTSTRAP_SEED, DEFAULT_CONFIDENCE,
    DEFAULT_CORRECTION, DEFAULT_MIN_USERS, DEFAULT_TEST, TESTS,
)
from mbrec.reporting.tables.build import build_table
from mbrec.reporting.tables.efficiency import write_efficiency
from mbrec.reporting.tables.formats import default_tables_dir, to_markdown, write_tables
from mbrec.reporting.tables.marks import DEFAULT_METRICS, DEFAULT_TASK, UNKNOWN_MARK
from mbrec.reporting.tables.records import collect_records
from mbrec.reporting.tables.split import build_split_tables, repeat_counts, split_repeat_to_markdown, write_split_tables
from mbrec.evaluation.metrics import TASKS

def add_statistics_arguments(parser):
    """The options shared by ``table`` and ``compare``: test, correction and bootstrap."""
    parser.add_argument("--test", default=DEFAULT_TEST, choices=TESTS,
                        help="paired test on per-user values (default: ttest)")
    parser.add_argument("--correction", default=DEFAULT_CORRECTION, choices=CORRECTIONS,
                        help="multiple-comparison correction over all comparisons shown together (default: holm)")
    parser.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE,
                        help="confidence level of the bootstrap interval of the mean difference")
    parser.add_argument("--bootstrap-resamples", type=int, default=DEFAULT_BOOTSTRAP_RESAMPLES,
                        help="bootstrap resamples of the users")
    parser.add_argument("--bootstrap-seed", type=int, default=DEFAULT_BOOTSTRAP_SEED, help="seed of the bootstrap")
    parser.add_argument("--min-users", type=int, default=DEFAULT_MIN_USERS,
                        help="fewer users than this in a comparison: no p-value, no mark (default: 2, the least "
                             "a paired test needs)")


def statistics_options(args):
    """:func:`build_table` keyword arguments from :func:`add_statistics_arguments` options."""
    return {"test": args.test, "correction": args.correction, "confidence": args.confidence,
            "n_resamples": args.bootstrap_resamples, "bootstrap_seed": args.bootstrap_seed,
            "min_users": args.min_users}


def build_table_parser():
    parser = argparse.ArgumentParser(
        prog="run_benchmark.py table",
        description="Rebuild result tables from stored run records (no training).")
    parser.add_argument("--results-dir", type=Path, default=None, help="results root (default: results/)")
    parser.add_argument("--models", nargs="+", default=None, help="only these models (also the baseline order)")
    parser.add_argument("--datasets", nargs="+", default=None, help="only these prepared dataset folders")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="only these seeds")
    parser.add_argument("--task", default=DEFAULT_TASK, choices=TASKS)
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    parser.add_argument("--proposed", nargs="+", default=[], help="models of the proposed group (Improve row)")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="significance level of the marks")
    add_statistics_arguments(parser)
    parser.add_argument("--split-repeat", action="store_true",
                        help="also report repeat targets (target item in the input window) and new-item targets "
                             "apart, with user counts and tests on each part")
    parser.add_argument("--std", action="store_true", help="show mean ± std over seeds")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <results-dir>/tables)")
    parser.add_argument("--stem", default=None, help="output file name stem (default: the task)")
    parser.add_argument("--no-plot", action="store_true", help="skip the efficiency PNG")
    parser.add_argument("--by-protocol", action="store_true",
                        help="a column per protocol variant of a dataset (default: refuse to mix protocols)")
    parser.add_argument("--protocol", default=None, metavar="FINGERPRINT",
                        help="only records with this protocol fingerprint (or prefix)")
    return parser


def table_main(argv=None):
    """``run_benchmark.py table``: print and write the tables; returns the exit code.

    0 = tables written (problems, if any, are printed but do not fail the command);
    1 = no usable record matched the filters, or a column would mix protocols (without --by-protocol).
    """
    args = build_table_parser().parse_args(sys.argv[1:] if argv is None else argv)
    # Proposed models are always shown, even when --models leaves them out.
    wanted_models = list(dict.fromkeys(args.models + args.proposed)) if args.models else None
    records, problems = collect_records(args.results_dir, wanted_models, args.datasets, args.seeds)
    if problems:
        print(f"{len(problems)} problem(s) with stored results (these files are not used):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
    if args.protocol:
        records = with_protocol(records, args.protocol)
    if not records:
        results_dir = args.results_dir or default_results_dir()
        print(f"No usable run records under {Path(results_dir) / 'runs'} match the filters.", file=sys.stderr)
        return 1
    if args.by_protocol:
        records = split_by_protocol(records)
    options = dict(task=args.task, metrics=args.metrics, proposed=args.proposed, alpha=args.alpha,
                   show_std=args.std, models=args.models,
                   # a variant column is named "<dataset> [<fingerprint>]": the --datasets filter already ran
                   datasets=None if args.by_protocol else args.datasets, **statistics_options(args))
    try:
        table = build_table(records, **options)
    except ProtocolMismatch as error:
        print(f"table: {error}", file=sys.stderr)
        return 1
    print(to_markdown(table))
    for problem in table.problems:
        print(f"  - {problem}", file=sys.stderr)
    for warning in table.warnings:
        print(f"Warning: {warning}", file=sys.stderr)
    out_dir = args.out or default_tables_dir(args.results_dir)
    paths = write_tables(table, out_dir, args.stem)
    if args.split_repeat:
        split = build_split_tables(records, **options)
        counts = repeat_counts(records, args.task, set(table.models), set(table.datasets))
        print(split_repeat_to_markdown(split, counts))
        unflagged = sum(not count.known for seeds in counts.values() for count in seeds.values())
        if unflagged:
            print(f"Note: {unflagged} run(s) have no repeat flags (made before they were stored): shown as "
                  f"{UNKNOWN_MARK} in the repeat/new tables; rerun them with --rerun to split them.", file=sys.stderr)
        paths.update(write_split_tables(split, counts, out_dir, args.stem))
    paths.update({f"efficiency {suffix}": path for suffix, path in
                  write_efficiency(records, out_dir, plot=not args.no_plot).items()})
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    return 0
