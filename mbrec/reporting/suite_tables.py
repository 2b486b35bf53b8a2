"""A suite's tables from its stored records: ``run_benchmark.py table --suite NAME [--claims] [--write-readme]``.

The records of a suite (``results/reference/<suite>/runs``, plain or ``.json.gz``) each name the
suite entries they are runs of (``suite_entries``, written by the suite runner); a record is shown
as its entry (``FatsMB[pos=ape]``) on its dataset variant (``retailrocket_f10``). The section
rebuilt here is what the README holds between ``<!-- results:<suite>:begin -->`` and
``<!-- results:<suite>:end -->``: one table per task (behavior_specific, target_behavior, and
behavior_item for the entries that can do it) with Recall/NDCG@10/20 as mean ± std over seeds,
stars from the user-level paired test with Holm correction, the budget footnote, the efficiency
table and its plot. ``--write-readme`` replaces that section; a test checks README and records agree.
"""

import argparse
import sys
from pathlib import Path

from mbrec.reporting.claims import claims_to_markdown, evaluate_claims, load_claims
from mbrec.reporting.tables import (DEFAULT_METRICS, build_table, efficiency_plot, efficiency_table,
                                    efficiency_to_markdown, to_markdown)
from mbrec.results import ResultsError, load_record, record_files
from mbrec.suites import CLAIMS_FILE, SuiteError, default_suite_results_dir, entry_annotations, load_suite
from mbrec.utils import REPO_DIR, atomic_path

SUITE_TASKS = ("behavior_specific", "target_behavior", "behavior_item")
README = REPO_DIR / "README.md"
NOT_YET_RUN = "not yet run"
PLOT_NAME = "efficiency.png"


def begin_marker(suite_name):
    return f"<!-- results:{suite_name}:begin -->"


def end_marker(suite_name):
    return f"<!-- results:{suite_name}:end -->"


def collect_suite_records(suite, results_dir):
    """``(records, problems)``: one copy of each stored record per entry it is a run of, relabelled
    ``model`` = entry name and ``dataset`` = dataset variant, in the suite's entries and datasets."""
    records, problems = [], []
    entries, datasets = {entry.name for entry in suite.entries}, set(suite.datasets)
    for path in record_files(Path(results_dir) / "runs"):
        try:
            record = load_record(path)
        except (ResultsError, OSError, ValueError) as error:
            problems.append(f"skipped {path}: {error}")
            continue
        for entry, dataset in entry_annotations(record, suite.name):
            if entry in entries and dataset in datasets:
                records.append({**record, "model": entry, "dataset": dataset})
    return records, problems


def _budget_line(suite):
    tuning, training = suite.tuning, suite.training
    return (f"Budget: every learned entry tuned with the same budget on seed {suite.tuning_seed}: "
            f"{tuning['trials']} Ray Tune trials drawn from its grid ({tuning.get('scheduler', 'asha')} scheduler, "
            f"grace period {tuning.get('grace_period')}, reduction factor {tuning.get('reduction_factor')}), "
            f"selection on valid only; the selected configuration then ran on seeds "
            f"{', '.join(str(seed) for seed in suite.seeds)}. Epoch cap {training.get('epochs')}, patience "
            f"{training.get('stopping_step')} validations. Entries with a [switch] in their name are ablations: "
            f"the tuned configuration of their model with that switch changed, not tuned again.")


def _task_table(suite, records, task):
    able = [entry.name for entry in suite.entries
            if any(record["model"] == entry.name and record["results"].get(task) is not None for record in records)]
    if not able:
        return None
    proposed = [name for name in suite.proposed if name in able]
    baselines = [name for name in able if name not in proposed]
    return build_table([record for record in records if record["model"] in able], task=task,
                       metrics=DEFAULT_METRICS, proposed=proposed, show_std=True, models=baselines,
                       datasets=suite.datasets)


def suite_section(suite, records, plot_path=None, plot_link=None, write_plot=True):
    """The Markdown between the README markers (without the markers). The plot's link is part of the text
    whether or not the plot file is (re)written now, so the text never depends on ``write_plot``."""
    if not records:
        return f"_Suite `{suite.name}`: {NOT_YET_RUN}._ `python run_benchmark.py suite {suite.name}` runs it.\n"
    parts = [f"Suite `{suite.name}` ({suite.path.name}): {suite.description}".rstrip(": ") + ".", "",
             _budget_line(suite), ""]
    for task in SUITE_TASKS:
        table = _task_table(suite, records, task)
        if table is None:
            continue
        parts += [f"#### {task}", "", to_markdown(table)]
    parts += ["#### Efficiency", "", efficiency_to_markdown(efficiency_table(records))]
    if plot_path is not None:
        if write_plot:
            efficiency_plot(records, plot_path)
        parts += [f"![efficiency of suite {suite.name}]({plot_link or plot_path})", ""]
    return "\n".join(parts)


def replace_section(text, suite_name, section):
    """``text`` with the part between the suite's markers replaced; raise SuiteError without markers."""
    begin, end = begin_marker(suite_name), end_marker(suite_name)
    if begin not in text or end not in text or text.index(begin) > text.index(end):
        raise SuiteError(f"README has no '{begin}' ... '{end}' section for suite {suite_name}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{section.rstrip()}\n{end}{tail}"


def readme_section(text, suite_name):
    """The text between the suite's README markers (stripped), or None without markers."""
    begin, end = begin_marker(suite_name), end_marker(suite_name)
    if begin not in text or end not in text:
        return None
    return text.split(begin, 1)[1].split(end, 1)[0].strip()


def build_suite_parser():
    parser = argparse.ArgumentParser(prog="run_benchmark.py table --suite",
                                     description="Rebuild a suite's tables (README Results section) from its records.")
    parser.add_argument("--suite", required=True, help="suite name (properties/suites/NAME.yaml)")
    parser.add_argument("--results-dir", type=Path, help="default: results/reference/<suite>/")
    parser.add_argument("--claims", action="store_true", help="also print the papers' claims checked (claims.yaml)")
    parser.add_argument("--claims-file", type=Path, help="default: properties/suites/claims.yaml")
    parser.add_argument("--write-readme", action="store_true", help="write the section into README.md")
    parser.add_argument("--readme", type=Path, default=README, help=argparse.SUPPRESS)
    return parser


CLAIMS_HEADING = "#### The papers' claims"


def readme_text(section, claims):
    """The README section: the tables, then the claims table (once the suite has records)."""
    return section if claims is None else f"{section.rstrip()}\n\n{CLAIMS_HEADING}\n\n{claims}"


def suite_report(suite, results_dir, claims_file=CLAIMS_FILE, write_plot=True):
    """``(section, claims, problems)`` of a suite's stored records; ``claims`` is None without records."""
    records, problems = collect_suite_records(suite, results_dir)
    plot = Path(results_dir) / PLOT_NAME if records else None
    link = None
    if plot is not None:
        try:
            link = plot.resolve().relative_to(REPO_DIR).as_posix()
        except ValueError:  # outside the repository (a test's tmp dir): link the file itself
            link = str(plot)
    section = suite_section(suite, records, plot, link, write_plot)
    claims = None
    if records and claims_file is not None:
        claims = claims_to_markdown(evaluate_claims(load_claims(claims_file), records, suite.datasets))
    return section, claims, problems


def print_suite_report(suite, results_dir):
    """The suite runner's closing output: the suite's tables."""
    section, _, problems = suite_report(suite, results_dir, claims_file=None)
    print(section)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)


def suite_table_main(argv=None):
    args = build_suite_parser().parse_args(argv)
    try:
        suite = load_suite(args.suite)
        results_dir = args.results_dir or default_suite_results_dir(suite.name)
        section, claims, problems = suite_report(suite, results_dir, args.claims_file or CLAIMS_FILE)
        print(section)
        if args.claims:
            print(f"{CLAIMS_HEADING}\n\n{claims or NOT_YET_RUN}")
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        if args.write_readme:  # the README holds the tables and the claims table
            text = replace_section(args.readme.read_text(encoding="utf-8"), suite.name, readme_text(section, claims))
            with atomic_path(args.readme) as tmp:
                tmp.write_text(text, encoding="utf-8")
            print(f"wrote the {suite.name} section of {args.readme}")
    except SuiteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
