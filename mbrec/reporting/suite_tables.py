"""A suite's tables from its stored records: ``run_benchmark.py table --suite NAME [--claims] [--write-readme]``.

The records of a suite (``results/reference/<suite>/runs``, plain or ``.json.gz``) each name the
suite entries they are runs of (``suite_entries``, written by the suite runner); a record is shown
as its entry (``FatsMB[pos=ape]``) on its dataset variant (``retailrocket_f10``). The section
rebuilt here is what the README holds between ``<!-- results:<suite>:begin -->`` and
``<!-- results:<suite>:end -->``: one table per task (behavior_specific, target_behavior, and
behavior_item for the entries that can do it) with Recall/NDCG@10/20 as mean ± std over seeds,
stars from the user-level paired test with Holm correction, the budget footnote, the efficiency
table and its plot, and the cost so far (:func:`cost_section`). ``--write-readme`` replaces that section; a test checks README and records agree.
"""

import argparse
import sys
from pathlib import Path

from mbrec.protocol import ProtocolMismatch
from mbrec.reporting.claims import claims_to_markdown, evaluate_claims, load_claims
from mbrec.reporting.tables import (DEFAULT_METRICS, build_table, efficiency_plot, efficiency_table,
                                    efficiency_to_markdown, to_markdown)
from mbrec.results import ResultsError, load_record, record_files
from mbrec.suite_costs import SECONDS_PER_HOUR, record_seconds, sweep_costs
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
    cells = {}  # (entry, dataset, seed) -> path of the record shown
    for path in record_files(Path(results_dir) / "runs"):
        try:
            record = load_record(path)
        except (ResultsError, OSError, ValueError) as error:
            problems.append(f"skipped {path}: {error}")
            continue
        for entry, dataset in entry_annotations(record, suite.name):
            if entry in entries and dataset in datasets:
                cell = (entry, dataset, record.get("seed"))
                if cell in cells:  # two configurations of one seed would be averaged as if two seeds
                    raise SuiteError(f"two stored runs are {entry} on {dataset} seed {record.get('seed')}: "
                                     f"{cells[cell]} and {path} (a setting of the suite changed since one "
                                     f"was stored); delete the stale one (`run_benchmark.py suite {suite.name} --stale` lists them)")
                cells[cell] = path
                records.append({**record, "model": entry, "dataset": dataset})
    return records, problems


def _budget_line(suite):
    tuning, training = suite.tuning, suite.training
    return (f"Budget: every learned entry tuned with the same budget on seed {suite.tuning_seed}: "
            f"{tuning['trials']} Ray Tune trials, distinct configurations drawn from its grid ({tuning.get('scheduler', 'asha')} scheduler, "
            f"grace period {tuning.get('grace_period')} validations after the model's stopping floor, reduction factor {tuning.get('reduction_factor')}), "
            f"selection on valid only; the selected configuration then ran on seeds "
            f"{', '.join(str(seed) for seed in suite.seeds)}. Epoch cap {training.get('epochs')}"
            f"{_model_caps(suite)}, patience "
            f"{training.get('stopping_step')} validations. Entries with a [switch] in their name are ablations: "
            f"the tuned configuration of their model with that switch changed, not tuned again.")


def _floor_text(floor):
    """``100`` or ``100 (mbae), 30 (diffusion), 30 (finetune)`` (a per-stage mapping)."""
    if isinstance(floor, dict):
        return ", ".join(f"{value} ({stage})" for stage, value in floor.items())
    return str(floor)


def _model_caps(suite):
    """`` (BERT4Rec 600, validated every 10 epochs; FatsMB 100 per stage)``: the models whose own overrides
    set another cap, a floor, a validation interval or a precision (a model may set any of them alone)."""
    caps = []
    for model, settings in suite.model_overrides.items():
        stage_caps = sorted({value for key, value in settings.items()
                             if key.endswith("_epochs") and key != "stopping_min_epochs"})
        heads = ([f"{model} {settings['epochs']}"] if "epochs" in settings else []) + (
            [f"{model} {'/'.join(str(value) for value in stage_caps)} per stage"] if stage_caps else [])
        floor = settings.get("stopping_min_epochs")
        details = ((f", no early stop before {_floor_text(floor)}" if floor else "")
                   + (f", validated every {settings['eval_step']} epochs" if settings.get("eval_step", 1) != 1 else "")
                   + (f", trained in {settings['precision']}" if settings.get("precision", "fp32") != "fp32" else ""))
        if not heads and not details:
            continue  # e.g. a width: not part of the training budget
        heads = heads or [model]
        caps.extend(heads[:-1] + [heads[-1] + details])  # the details once, after the last cap
    return f" ({'; '.join(caps)})" if caps else ""


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


def _hours(seconds):
    return f"{seconds / SECONDS_PER_HOUR:.2f}"


def cost_section(suite, records, sweeps):
    """The suite's cost so far (a Markdown table per dataset variant), from its records and the
    :class:`~mbrec.suite_costs.SweepCost` of its sweep folders: deterministic in the stored files."""
    models = {entry.model for entry in suite.entries}
    entries = {entry.name for entry in suite.entries}
    planned = len(suite.entries) * len(suite.seeds)
    lines = ["| Dataset | Seed runs done / planned | Seed runs (core-h) | Sweeps finished | Sweep trials run "
             "| Sweeps (core-h) | Total (core-h) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    totals = {"done": 0, "planned": 0, "run_s": 0.0, "sweeps": 0, "trials": 0, "sweep_h": 0.0, "untimed": 0}
    untimed = []
    for dataset in suite.datasets:
        mine = [record for record in records if record["dataset"] == dataset and record["model"] in entries]
        done = len({(record["model"], record["seed"]) for record in mine})
        # a record that is a run of two entries was trained once: its time counts once
        run_s = sum(record_seconds(record) for record in {record["run_key"]: record for record in mine}.values())
        costs = [cost for cost in sweeps if cost.dataset == dataset and cost.model in models]
        sweep_h = sum(cost.core_hours for cost in costs)
        lacking = [cost for cost in costs if not cost.timed]
        if lacking:
            untimed.append(f"{dataset}: {', '.join(cost.sweep for cost in lacking)}")
        bound = "≥ " if lacking else ""
        finished = sum(cost.finished for cost in costs)
        trials = sum(cost.trials_run for cost in costs)
        lines.append(f"| {dataset} | {done} / {planned} | {_hours(run_s)} | {finished} | {trials} | "
                     f"{bound}{sweep_h:.2f}" + (f" ({len(lacking)} untimed)" if lacking else "")
                     + f" | {bound}{run_s / SECONDS_PER_HOUR + sweep_h:.2f} |")
        for key, value in (("done", done), ("planned", planned), ("run_s", run_s), ("sweeps", finished),
                           ("trials", trials), ("sweep_h", sweep_h), ("untimed", len(lacking))):
            totals[key] += value
    bound = "≥ " if totals["untimed"] else ""
    lines.append(f"| all | {totals['done']} / {totals['planned']} | {_hours(totals['run_s'])} | {totals['sweeps']} "
                 f"| {totals['trials']} | {bound}{totals['sweep_h']:.2f} | "
                 f"{bound}{totals['run_s'] / SECONDS_PER_HOUR + totals['sweep_h']:.2f} |")
    notes = ["", "- Time spent so far, from the stored files only: a seed run's train + eval + data seconds "
             "(its record), one core per run (`--cpus-per-run`, default 1); a sweep's trials' wall seconds "
             "(its `summary.json`) times its CPUs per trial. Planned seed runs: entries x seeds per dataset; "
             "a sweep is run once per learned entry (not for rules such as Pop, nor for ablations)."]
    if untimed:
        notes.append(f"- Untimed sweeps (their summaries predate trial times, so their time is missing and the "
                     f"sums marked ≥ are lower bounds): {'; '.join(untimed)}.")
    return "\n".join(lines + notes) + "\n"


def suite_section(suite, records, plot_path=None, plot_link=None, write_plot=True, sweeps=()):
    """The Markdown between the README markers (without the markers). The plot's link is part of the text
    whether or not the plot file is (re)written now, so the text never depends on ``write_plot``.
    ``sweeps``: the :class:`~mbrec.suite_costs.SweepCost` of the suite's sweep folders (the cost table)."""
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
    if parts[-1] and not parts[-1].endswith("\n"):  # a blank line ends the part before the heading
        parts.append("")
    parts += ["#### Cost", "", cost_section(suite, records, sweeps)]
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
    section = suite_section(suite, records, plot, link, write_plot, sweep_costs(results_dir))
    claims = None
    if records and claims_file is not None:
        claims = claims_to_markdown(evaluate_claims(load_claims(claims_file), records, suite.datasets))
    return section, claims, problems


def print_suite_report(suite, results_dir):
    """The suite runner's closing output: the suite's tables (or why they cannot be built)."""
    try:
        section, _, problems = suite_report(suite, results_dir, claims_file=None)
    except (SuiteError, ProtocolMismatch) as error:  # the runs are stored; only the tables wait
        print(f"error: no tables: {error}", file=sys.stderr)
        return
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
    except (SuiteError, ProtocolMismatch) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
