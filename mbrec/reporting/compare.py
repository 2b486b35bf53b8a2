"""``run_benchmark.py compare RUN_A RUN_B``: two runs side by side, user by user.

A RUN is a results record (``results/runs/<dataset>/<model>/*.json``) or ``MODEL/DATASET``
or ``MODEL/DATASET/SEED`` looked up in the results store (without a seed: every stored seed).
For each task both runs have and each metric it prints both values, the mean paired
difference with its bootstrap confidence interval (resampling users), the relative change,
the raw and the corrected p-value of the paired test over users and the number of users. The
correction's family is every row printed. With several seeds on both sides, each user's value
is averaged over the common seeds before the test (``mbrec.reporting.evidence``: the same rule
as the tables), and the across-seed mean, std and paired-by-seed t-test are added apart.
"""

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mbrec.protocol import RECORDED, ProtocolMismatch, check_same_protocol, describe_differences, record_protocol
from mbrec.results import ResultsError, default_results_dir, load_record
from mbrec.reporting.evidence import BOOTSTRAP_RULE, SEED_TEST_RULE, UNTESTED_RULE, pair_evidence, user_level_description
from mbrec.reporting.stats import (
    CORRECTION_NAMES, DEFAULT_BOOTSTRAP_RESAMPLES, DEFAULT_BOOTSTRAP_SEED, DEFAULT_CONFIDENCE, DEFAULT_CORRECTION,
    DEFAULT_MIN_USERS, DEFAULT_TEST, MIN_SEEDS_FOR_SEED_TEST, PARTS, AlignmentError, RepeatFlagsMissing,
    adjust_pvalues, p_value_text,
)
from mbrec.reporting.tables import (
    DEFAULT_METRICS, DISPLAY_DECIMALS, MISSING_MARK, P_VALUE_DIGITS, PERCENT, PERCENT_DECIMALS,
    add_statistics_arguments, collect_records,
)
from mbrec.evaluation.metrics import TASKS

ALL_USERS = "all"
# A RUN spec without a file: MODEL/DATASET or MODEL/DATASET/SEED.
SPEC_PARTS = (2, 3)


@dataclass
class CompareRow:
    """One (task, metric, part) line of a comparison."""

    task: str
    metric: str
    part: str
    mean_a: float
    mean_b: float
    test: object
    effect: object
    n_users: int  # users tested (each averaged over the common seeds)
    n_seeds: int
    seed_values_a: list
    seed_values_b: list
    seed_test: object
    p_adjusted: float = math.nan


def resolve_run(spec, results_dir=None, protocol=None):
    """``{seed: record}`` of a RUN argument (a record file, ``MODEL/DATASET`` or ``MODEL/DATASET/SEED``).

    ``protocol``: keep only stored records with this protocol fingerprint (or a prefix of it).

    Raises:
        ResultsError: no such file and no matching stored record (the message says what exists), or
        the stored records of the spec were made under several protocols and none was chosen.
    """
    path = Path(spec)
    if path.is_file():
        record = load_record(path)
        return {int(record["seed"]): record}
    parts = spec.split("/")
    if path.suffix == ".json" or len(parts) not in SPEC_PARTS:
        raise ResultsError(f"RUN '{spec}' is neither a results record file nor MODEL/DATASET[/SEED]")
    model, dataset = parts[0], parts[1]
    seeds = None
    if len(parts) == 3:
        if not parts[2].lstrip("-").isdigit():
            raise ResultsError(f"RUN '{spec}': the seed '{parts[2]}' is not an integer")
        seeds = [int(parts[2])]
    records, problems = collect_records(results_dir, [model], [dataset], seeds)
    if protocol:
        records = [record for record in records if record_protocol(record)[1].startswith(protocol)]
    if not records:
        stored, _ = collect_records(results_dir, [model], [dataset])
        known = sorted(int(record["seed"]) for record in stored)
        hint = (f"stored seeds: {known}" if known else
                f"no stored run of {model} on {dataset} under {Path(results_dir or default_results_dir()) / 'runs'}")
        extra = f" ({len(problems)} unusable file(s): {problems[0]})" if problems else ""
        raise ResultsError(f"RUN '{spec}' matches no usable record{' with protocol ' + protocol if protocol else ''}; "
                           f"{hint}{extra}")
    by_protocol = {}
    for record in records:
        by_protocol.setdefault(record_protocol(record)[1], []).append(record)
    if len(by_protocol) > 1:
        (first, first_records), *others = sorted(by_protocol.items())
        reference = record_protocol(first_records[0])[0]
        lines = [f"{fingerprint} differs from {first} in "
                 f"{describe_differences(reference, record_protocol(group[0])[0])}" for fingerprint, group in others]
        raise ResultsError(f"RUN '{spec}' has stored records under {len(by_protocol)} protocols "
                           f"({', '.join(sorted(by_protocol))}); name one with --protocol FINGERPRINT:\n  "
                           + "\n  ".join(lines))
    return {int(record["seed"]): record for record in records}


def _pair_seeds(runs_a, runs_b):
    """Key two single records alike, so two explicit runs pair even when their seeds differ."""
    if len(runs_a) == 1 and len(runs_b) == 1:
        (seed, record_a), = runs_a.items()
        return {seed: record_a}, {seed: next(iter(runs_b.values()))}
    return runs_a, runs_b


def _shared_tasks(runs_a, runs_b):
    """Tasks with a result (not N/A, evaluated) in every record of both runs, in protocol order."""
    records = list(runs_a.values()) + list(runs_b.values())
    return [task for task in TASKS if all(isinstance(record["results"].get(task), dict) for record in records)]


def compare_runs(runs_a, runs_b, tasks=None, metrics=DEFAULT_METRICS, test=DEFAULT_TEST,
                 correction=DEFAULT_CORRECTION, split_repeat=False, confidence=DEFAULT_CONFIDENCE,
                 n_resamples=DEFAULT_BOOTSTRAP_RESAMPLES, bootstrap_seed=DEFAULT_BOOTSTRAP_SEED,
                 min_users=DEFAULT_MIN_USERS):
    """The rows of a comparison of ``runs_a`` vs ``runs_b`` (``{seed: record}`` each), corrected as one family.

    Returns:
        ``(rows, notes)``: :class:`CompareRow` per (task, metric, part), and notes on rows left
        out (repeat/new rows of records made before repeat flags were stored).

    Raises:
        AlignmentError: the runs cannot be paired (no common seed, different users or data).
        ProtocolMismatch: the runs were measured under different protocols (the differing keys are named).
    """
    check_same_protocol([(_label(record), record) for record in (*runs_a.values(), *runs_b.values())])
    runs_a, runs_b = _pair_seeds(runs_a, runs_b)
    common_seeds = sorted(set(runs_a) & set(runs_b))
    if not common_seeds:
        raise AlignmentError(f"the runs share no seed (A: {sorted(runs_a)}, B: {sorted(runs_b)}); "
                             f"name one record on each side to compare across seeds")
    runs_a = {seed: runs_a[seed] for seed in common_seeds}
    runs_b = {seed: runs_b[seed] for seed in common_seeds}
    tasks = list(tasks) if tasks else _shared_tasks(runs_a, runs_b)
    if not tasks:
        raise AlignmentError("the runs have no task in common with per-user results")
    rows, notes = [], []
    for task in tasks:
        for metric in (metric.lower() for metric in metrics):
            for part in ((None, *PARTS) if split_repeat else (None,)):
                try:
                    evidence = pair_evidence(runs_a, runs_b, task, metric, part=part, test=test, min_users=min_users,
                                             confidence=confidence, n_resamples=n_resamples,
                                             bootstrap_seed=bootstrap_seed)
                except RepeatFlagsMissing as error:
                    note = f"{task}: no repeat/new rows, {error}"
                    notes += [] if note in notes else [note]
                    continue
                values = evidence.values
                if values.dropped_users:
                    notes.append(f"{task} {metric} {part or ALL_USERS}: {values.dropped_users} user(s) are paired "
                                 f"under some common seeds but not all; left out so each user averages the same seeds")
                rows.append(CompareRow(
                    task=task, metric=metric, part=part or ALL_USERS,
                    mean_a=float(np.mean(values.values_a)) if len(values.users) else math.nan,
                    mean_b=float(np.mean(values.values_b)) if len(values.users) else math.nan,
                    test=evidence.user_test, effect=evidence.effect, n_users=len(values.users),
                    n_seeds=len(common_seeds), seed_values_a=list(values.seed_means_a),
                    seed_values_b=list(values.seed_means_b), seed_test=evidence.seed_test))
    for row, adjusted in zip(rows, adjust_pvalues([row.test.pvalue for row in rows], correction)):
        row.p_adjusted = float(adjusted)
    return rows, notes


def _number(value, decimals=DISPLAY_DECIMALS, signed=False):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING_MARK
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def _p(value):
    return MISSING_MARK if value is None or math.isnan(value) else f"{value:.{P_VALUE_DIGITS}g}"


def _test_p(result):
    """A test's raw p-value, or why it has none (zero variance, too few users)."""
    return p_value_text(result, P_VALUE_DIGITS) or MISSING_MARK


def _value_over_seeds(mean, seed_values):
    if len(seed_values) < 2:
        return _number(mean)
    return f"{_number(mean)} ± {_number(float(np.std(seed_values, ddof=1)))}"


def _label(record):
    return f"{record['model']} on {record['dataset']} seed {record['seed']} (run {record.get('run_key')})"


def _describe(runs):
    record = next(iter(runs.values()))
    return f"{record['model']} on {record['dataset']} (seeds {', '.join(str(seed) for seed in sorted(runs))})"


def _protocol_line(runs_a):
    """Both sides share it (compare_runs checked): its fingerprint and the settings a reader needs."""
    protocol, fingerprint, how = record_protocol(next(iter(runs_a.values())))
    shown = ", ".join(f"{key} {protocol.get(key)!r}" for key in ("heldout", "MAX_ITEM_LIST_LENGTH", "mask_history",
                                                                  "valid_task", "valid_metric"))
    return f"Protocol (both runs): {fingerprint}{'' if how == RECORDED else ' (' + how + ')'}: {shown}"


def format_comparison(rows, runs_a, runs_b, test, correction, confidence, notes=()):
    """Markdown: header lines naming the runs, one table row per (task, metric, part), a footnote."""
    several_seeds = rows and rows[0].n_seeds > 1
    header = ["Task", "Metric", "Part", "A", "B", "A - B", f"{confidence:.0%} CI", "Relative", "p",
              f"p ({CORRECTION_NAMES[correction]})", "n"]
    if several_seeds:
        header += ["p (seeds)"]
    lines = [f"A: {_describe(runs_a)}", f"B: {_describe(runs_b)}", _protocol_line(runs_a), "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    for row in rows:
        effect = row.effect
        cells = [row.task, row.metric, row.part, _value_over_seeds(row.mean_a, row.seed_values_a),
                 _value_over_seeds(row.mean_b, row.seed_values_b), _number(effect.mean_difference, signed=True),
                 f"[{_number(effect.ci_low, signed=True)}, {_number(effect.ci_high, signed=True)}]",
                 (f"{effect.relative * PERCENT:+.{PERCENT_DECIMALS}f}%" if effect.relative is not None
                  else MISSING_MARK),
                 _test_p(row.test), _p(row.p_adjusted), f"{row.n_users:,}"]
        if several_seeds:
            cells.append(_test_p(row.seed_test))
        lines.append("| " + " | ".join(cells) + " |")
    n_tested = sum(not math.isnan(row.test.pvalue) for row in rows)
    lines += ["", f"- Test (p): {user_level_description(test)}; {UNTESTED_RULE}.",
              f"- Correction: {CORRECTION_NAMES[correction]}, over the family of all {n_tested} tested rows above.",
              f"- A - B: mean paired difference over users; CI: {confidence:.0%} {BOOTSTRAP_RULE}; "
              f"relative = (A - B) / B.",
              "- Part: all test users of the task, or only repeat targets (target item in the input window of "
              "both runs) or new-item targets."]
    if several_seeds:
        lines.append(f"- p (seeds): {SEED_TEST_RULE}; A and B show the mean ± std of the per-seed means. "
                     f"Not corrected; a separate result from p.")
    lines += [f"- Note: {note}" for note in notes]
    if rows and rows[0].n_seeds < MIN_SEEDS_FOR_SEED_TEST:
        lines.append(f"- Warning: only {rows[0].n_seeds} common seed(s); the across-seed std and paired-by-seed "
                     f"test need at least {MIN_SEEDS_FOR_SEED_TEST}, so a difference may be due to the seed.")
    return "\n".join(lines) + "\n"


def build_compare_parser():
    parser = argparse.ArgumentParser(
        prog="run_benchmark.py compare",
        description="Compare two stored runs user by user: values, difference with CI, raw and corrected p.")
    parser.add_argument("run_a", metavar="RUN_A", help="a results record .json, or MODEL/DATASET[/SEED]")
    parser.add_argument("run_b", metavar="RUN_B", help="a results record .json, or MODEL/DATASET[/SEED]")
    parser.add_argument("--results-dir", type=Path, default=None, help="results root for MODEL/DATASET specs")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=None,
                        help="default: every task both runs have results for")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    parser.add_argument("--split-repeat", action="store_true", help="add rows for repeat and new-item targets")
    parser.add_argument("--protocol", default=None, metavar="FINGERPRINT",
                        help="for MODEL/DATASET runs: only stored records with this protocol fingerprint (or prefix)")
    add_statistics_arguments(parser)
    return parser


def compare_main(argv=None):
    """``run_benchmark.py compare``: print the comparison; 0 on success, 1 on a user error."""
    args = build_compare_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        runs_a = resolve_run(args.run_a, args.results_dir, args.protocol)
        runs_b = resolve_run(args.run_b, args.results_dir, args.protocol)
        rows, notes = compare_runs(runs_a, runs_b, args.tasks, args.metrics, args.test, args.correction,
                                   args.split_repeat, args.confidence, args.bootstrap_resamples, args.bootstrap_seed,
                                   args.min_users)
    except (ResultsError, AlignmentError, ProtocolMismatch, ValueError) as error:
        print(f"compare: {error}", file=sys.stderr)
        return 1
    print(format_comparison(rows, runs_a, runs_b, args.test, args.correction, args.confidence, notes))
    return 0
