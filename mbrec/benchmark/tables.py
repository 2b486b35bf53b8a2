"""Result tables rebuilt from stored records, never from training (protocol.md, "Tables").

Pipeline: :func:`collect_records` (load and validate ``results/runs/**.json``; corrupted or
partial files are reported, never used; duplicates resolved to the newest run) ->
:func:`build_table` (one row per model, one column per dataset x metric, marks, tests,
"Improve" row, footnote) -> :func:`to_markdown` / :func:`to_latex` / :func:`to_csv`, written
atomically by :func:`write_tables`. :func:`efficiency_table` and :func:`efficiency_plot`
summarize parameters, time and memory. :func:`table_main` is the ``run_benchmark.py table`` CLI.

Marking rule (documented in every table's footnote): values are compared as displayed, i.e.
rounded to ``decimals`` places, so a reader never sees equal numbers with different marks.
Every model with the highest displayed value is bold; every model with the next distinct
displayed value is underlined. A star is given only to a sole best model, and only when it
beats every runner-up (underlined model) with p < alpha in the paired t-test on per-user
values (pairs = same seed and same test user, pooled over the seeds both models ran), with a
positive mean difference. A dagger does the same with the across-seed t-test (paired by seed),
which is only run when both models share at least ``MIN_SEEDS_FOR_SEED_TEST`` seeds.
"""

import argparse
import csv
import io
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from mbrec.benchmark.results import ResultsError, default_results_dir, load_record
from mbrec.benchmark.stats import (
    DEFAULT_ALPHA, MIN_SEEDS_FOR_SEED_TEST, AlignmentError, per_user_values, pooled_user_ttest, seed_ttest,
)
from mbrec.evaluation import TASKS
from mbrec.utils import atomic_path

DEFAULT_TASK = "behavior_specific"
DEFAULT_METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
DISPLAY_DECIMALS = 4
PERCENT_DECIMALS = 2
EFFICIENCY_DECIMALS = 2
PERCENT = 100.0

# Cell states.
VALUE, NOT_APPLICABLE, MISSING = "value", "na", "missing"
# What a reader sees for a cell without a number.
NA_MARK = "N/A"
MISSING_MARK = "—"
LATEX_MISSING_MARK = "--"
# Group labels of the rows.
BASELINE_GROUP, PROPOSED_GROUP, IMPROVE_GROUP = "baseline", "proposed", "improve"
IMPROVE_LABEL = "Improve"
GROUP_HEADINGS = {BASELINE_GROUP: "baselines", PROPOSED_GROUP: "proposed"}
# Footnote sentences start with these marks; renderers draw them in their own syntax.
STAR_MARK, DAGGER_MARK = "*", "†"
# A task key absent from a record's results: the task was not evaluated in that run.
_ABSENT = object()
# Records without a creation time sort as the oldest when duplicates are resolved.
_OLDEST = datetime.min.isoformat()
EFFICIENCY_STEM = "efficiency"
PLOT_DPI = 120
PLOT_PANEL_WIDTH_INCHES = 4.5
PLOT_HEIGHT_INCHES = 3.5
BYTES_NOTE = "MB = 2^20 bytes"


# --------------------------------------------------------------------------------------------
# Collecting records
# --------------------------------------------------------------------------------------------

def _created(record):
    return str(record.get("created") or _OLDEST)


def _run_identity(record):
    return str(record["model"]), str(record["dataset"]), int(record["seed"])


def _newest_per_run(entries):
    """Keep the newest of several ``(path, record)`` entries per (model, dataset, seed).

    Returns ``(records, problems)``; each duplicate is reported, naming the file kept.
    """
    by_run = defaultdict(list)
    for path, record in entries:
        by_run[_run_identity(record)].append((path, record))
    kept, problems = [], []
    for (model, dataset, seed), candidates in sorted(by_run.items()):
        candidates.sort(key=lambda entry: (_created(entry[1]), str(entry[0])), reverse=True)
        newest_path, newest = candidates[0]
        kept.append(newest)
        if len(candidates) > 1:
            ignored = ", ".join(f"{path} (created {entry.get('created')})" for path, entry in candidates[1:])
            problems.append(f"{len(candidates)} records for {model} on {dataset} seed {seed}: using "
                            f"{newest_path} (created {newest.get('created')}); ignoring {ignored}")
    return kept, problems


def collect_records(results_dir=None, models=None, datasets=None, seeds=None):
    """Load the stored run records under ``<results_dir>/runs/<dataset>/<model>/*.json``.

    Args:
        results_dir: the results root (default: the repository's ``results/``).
        models, datasets, seeds: optional filters (model names, prepared dataset folder names
            such as ``retailrocket`` or ``retailrocket-heldout_ignore``, integer seeds).

    Returns:
        ``(records, problems)``: the valid records sorted by (model, dataset, seed), and one
        message per corrupted or partial file (never used) and per duplicated run (the newest
        by ``created`` is used).
    """
    runs_dir = Path(results_dir or default_results_dir()) / "runs"
    model_filter = set(models) if models else None
    dataset_filter = set(datasets) if datasets else None
    seed_filter = {int(seed) for seed in seeds} if seeds else None
    entries, problems = [], []
    for path in sorted(runs_dir.glob("*/*/*.json")):
        if path.name.startswith("."):
            continue  # an in-progress atomic write
        dataset_folder, model_folder = path.parent.parent.name, path.parent.name
        if ((model_filter and model_folder not in model_filter)
                or (dataset_filter and dataset_folder not in dataset_filter)):
            continue
        try:
            record = load_record(path)
            identity = _run_identity(record)
            if not isinstance(record["results"], dict):
                raise ResultsError(f"{path}: 'results' is not a mapping of task -> result")
        except (ResultsError, OSError, UnicodeDecodeError, TypeError, AttributeError, ValueError, KeyError) as error:
            problems.append(f"skipped {path}: {error}")
            continue
        model, dataset, seed = identity
        if ((model_filter and model not in model_filter) or (dataset_filter and dataset not in dataset_filter)
                or (seed_filter is not None and seed not in seed_filter)):
            continue
        entries.append((path, record))
    records, duplicate_problems = _newest_per_run(entries)
    return records, problems + duplicate_problems


# --------------------------------------------------------------------------------------------
# Building a table
# --------------------------------------------------------------------------------------------

@dataclass
class Cell:
    """One (model, dataset, metric) entry: mean over seeds plus marks and tests.

    ``status`` is ``"value"``, ``"na"`` (the model cannot do the task) or ``"missing"`` (no
    run stored). ``user_test`` / ``seed_test`` are the tests of a best cell against the
    runner-up named in ``compared_with`` (the least significant one when several tie).
    """

    status: str
    mean: float = None
    std: float = None
    seeds: tuple = ()
    best: bool = False
    second: bool = False
    star: bool = False
    seed_star: bool = False
    compared_with: str = None
    user_test: object = None
    seed_test: object = None


@dataclass
class ResultTable:
    """A built table: ``cells[(model, dataset, metric)]`` and ``improve[(dataset, metric)]``."""

    task: str
    metrics: tuple
    datasets: list
    baselines: list
    proposed: list
    cells: dict
    improve: dict
    alpha: float
    show_std: bool
    decimals: int
    footnote: list
    problems: list = field(default_factory=list)

    @property
    def columns(self):
        """``(dataset, metric)`` pairs in display order: dataset-major, metric-minor."""
        return [(dataset, metric) for dataset in self.datasets for metric in self.metrics]

    @property
    def models(self):
        return list(self.baselines) + list(self.proposed)

    @property
    def has_improve(self):
        return bool(self.proposed)

    def group_of(self, model):
        return PROPOSED_GROUP if model in self.proposed else BASELINE_GROUP


def _seed_values(runs, task, metric):
    """``{seed: metric value}`` over the seeds whose result for ``task`` exists, and the states seen."""
    values, states = {}, set()
    for seed, record in runs.items():
        result = record["results"].get(task, _ABSENT)
        if result is _ABSENT:
            states.add(MISSING)
            continue
        if result is None:
            states.add(NOT_APPLICABLE)
            continue
        stored = (result.get("metrics") or {}).get(metric)
        if stored is None:
            ranks = (result.get("per_user") or {}).get("rank", [])
            if not len(ranks):
                states.add(MISSING)
                continue
            stored = float(np.mean(per_user_values(ranks, metric)))
        if math.isnan(float(stored)):  # no test user for this task in this run
            states.add(MISSING)
            continue
        values[seed] = float(stored)
        states.add(VALUE)
    return values, states


def _make_cell(runs, task, metric):
    values, states = _seed_values(runs, task, metric)
    if values:
        seeds = tuple(sorted(values))
        series = np.asarray([values[seed] for seed in seeds])
        std = float(np.std(series, ddof=1)) if len(series) > 1 else None
        return Cell(VALUE, float(series.mean()), std, seeds), values
    if NOT_APPLICABLE in states:
        return Cell(NOT_APPLICABLE), values
    return Cell(MISSING), values


def _runs_with_result(runs, task):
    return {seed: record for seed, record in runs.items() if record["results"].get(task) is not None}


def _mark_column(table, runs_by_model, seed_values, dataset, metric, problems):
    """Bold/underline/star/dagger the cells of one (dataset, metric) column."""
    scored = {model: round(table.cells[(model, dataset, metric)].mean, table.decimals)
              for model in table.models if table.cells[(model, dataset, metric)].status == VALUE}
    if not scored:
        return
    distinct = sorted(set(scored.values()), reverse=True)
    best_models = [model for model, value in scored.items() if value == distinct[0]]
    second_models = [model for model, value in scored.items() if len(distinct) > 1 and value == distinct[1]]
    for model in best_models:
        table.cells[(model, dataset, metric)].best = True
    for model in second_models:
        table.cells[(model, dataset, metric)].second = True
    if len(best_models) != 1 or not second_models:
        return  # tied best: nobody beats anybody; a lone model: nothing to test against
    best = best_models[0]
    best_cell = table.cells[(best, dataset, metric)]
    user_tests, seed_tests = [], []
    for runner_up in second_models:
        try:
            user_test = pooled_user_ttest(_runs_with_result(runs_by_model[best], table.task),
                                          _runs_with_result(runs_by_model[runner_up], table.task),
                                          table.task, metric)
        except AlignmentError as error:
            problems.append(f"no significance test for {best} vs {runner_up} on {dataset} {metric}: {error}")
            user_test = None
        user_tests.append((runner_up, user_test))
        seed_tests.append((runner_up, seed_ttest(seed_values[best], seed_values[runner_up])))

    def weakest(tests):
        """The least favourable test: a missing one, else the largest p-value."""
        return max(tests, key=lambda entry: math.inf if entry[1] is None else entry[1].pvalue)

    def wins(tests):
        return all(test is not None and test.significant(table.alpha) and test.mean_difference > 0
                   for _, test in tests)

    best_cell.compared_with, best_cell.user_test = weakest(user_tests)
    best_cell.seed_test = weakest(seed_tests)[1]
    best_cell.star = wins(user_tests)
    best_cell.seed_star = wins(seed_tests)


def _improve(table, dataset, metric):
    """(best proposed - best baseline) / best baseline in %, or None when either is absent or 0."""
    def best_of(models):
        means = [table.cells[(model, dataset, metric)].mean for model in models
                 if table.cells[(model, dataset, metric)].status == VALUE]
        return max(means) if means else None

    best_proposed, best_baseline = best_of(table.proposed), best_of(table.baselines)
    if best_proposed is None or best_baseline is None or best_baseline == 0:
        return None
    return (best_proposed - best_baseline) / best_baseline * PERCENT


def _footnote(table, records):
    """Sentences explaining the cells, marks, tests, notes and held-out settings."""
    seed_counts = sorted({len(cell.seeds) for cell in table.cells.values() if cell.status == VALUE})
    seeds_text = "/".join(str(count) for count in seed_counts) or "0"
    spread = " ± sample std over seeds" if table.show_std else ""
    lines = [
        f"Task: {table.task}. Each cell: test metric, mean over seeds ({seeds_text} seeds){spread}.",
        f"Bold: best; underlined: second best. Values are compared as displayed (rounded to "
        f"{table.decimals} decimals): all tied-best are bold and the next distinct value is underlined.",
        f"{STAR_MARK}: the sole best model beats the runner-up with p < {table.alpha:g} in a two-sided paired t-test "
        f"(scipy ttest_rel) on per-user values; pairs are (same seed, same test user), pooled over the "
        f"seeds both models ran.",
        f"{DAGGER_MARK}: the same holds for the across-seed paired t-test (paired by seed; only with at "
        f"least {MIN_SEEDS_FOR_SEED_TEST} common seeds).",
        f"{NA_MARK}: the model cannot do this task; {MISSING_MARK}: run not present.",
    ]
    if table.has_improve:
        lines.append(f"{IMPROVE_LABEL}: (best proposed - best baseline) / best baseline, in %.")
    in_table = set(table.datasets)
    notes = defaultdict(set)
    heldout = {}
    for record in records:
        if record["dataset"] not in in_table or record["model"] not in table.models:
            continue
        heldout.setdefault(record["dataset"], set()).add(record.get("heldout"))
        result = record["results"].get(table.task)
        if isinstance(result, dict) and result.get("note"):
            notes[result["note"]].add(record["model"])
    for note, models in sorted(notes.items()):
        lines.append(f"{note[0].upper()}{note[1:]}: {', '.join(sorted(models))}.")
    if heldout:
        settings = "; ".join(
            f"{dataset}: " + ", ".join("none (no held-out file)" if value is None else str(value)
                                       for value in sorted(values, key=str))
            for dataset, values in sorted(heldout.items()))
        lines.append(f"Held-out test items (heldout setting): {settings}.")
    return lines


def build_table(records, task=DEFAULT_TASK, metrics=DEFAULT_METRICS, proposed=(), alpha=DEFAULT_ALPHA,
                show_std=False, models=None, datasets=None, decimals=DISPLAY_DECIMALS):
    """Build the main result table of ``task`` from run records.

    Args:
        records: valid records (from :func:`collect_records`); duplicated (model, dataset,
            seed) runs are reduced to the newest and reported in ``table.problems``.
        task: one of ``mbrec.evaluation.TASKS``.
        metrics: column metrics, e.g. ``("recall@10", "ndcg@10")``.
        proposed: model names forming the proposed group (shown after the baselines, in this
            order, and compared in the "Improve" row); empty = no proposed group, no Improve row.
        alpha: significance level of the star / dagger.
        show_std: render "mean ± std" (sample std over seeds).
        models: optional baseline order (default: alphabetical); names not in records are
            shown as missing rows.
        datasets: optional dataset order (default: alphabetical over the records).
        decimals: display precision, also the precision at which ties are decided.

    Returns:
        :class:`ResultTable`.
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; use one of {TASKS}")
    metrics = tuple(metric.lower() for metric in metrics)
    records, problems = _newest_per_run([(f"record {record.get('run_key')}", record) for record in records])
    proposed = [model for model in dict.fromkeys(proposed)]
    record_models = sorted({record["model"] for record in records}, key=str.lower)
    baseline_order = list(models) if models else record_models
    baselines = [model for model in dict.fromkeys(baseline_order) if model not in proposed]
    datasets = list(datasets) if datasets else sorted({record["dataset"] for record in records})

    runs_by_model_dataset = defaultdict(dict)
    for record in records:
        runs_by_model_dataset[(record["model"], record["dataset"])][int(record["seed"])] = record

    table = ResultTable(task=task, metrics=metrics, datasets=datasets, baselines=baselines, proposed=proposed,
                        cells={}, improve={}, alpha=alpha, show_std=show_std, decimals=decimals, footnote=[],
                        problems=problems)
    for dataset in datasets:
        runs_by_model = {model: runs_by_model_dataset.get((model, dataset), {}) for model in table.models}
        for metric in metrics:
            seed_values = {}
            for model in table.models:
                cell, seed_values[model] = _make_cell(runs_by_model[model], task, metric)
                table.cells[(model, dataset, metric)] = cell
            _mark_column(table, runs_by_model, seed_values, dataset, metric, table.problems)
            if table.has_improve:
                table.improve[(dataset, metric)] = _improve(table, dataset, metric)
    table.footnote = _footnote(table, records)
    return table


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Style:
    """How one output format writes marks."""

    bold: str
    underline: str
    star: str
    dagger: str
    plus_minus: str
    missing: str
    not_applicable: str
    percent: str


_MARKDOWN = _Style(bold="**{}**", underline="<u>{}</u>", star="\\*", dagger="†", plus_minus=" ± ",
                   missing=MISSING_MARK, not_applicable=NA_MARK, percent="%")
_LATEX = _Style(bold="\\textbf{{{}}}", underline="\\underline{{{}}}", star="$^{*}$", dagger="$^{\\dagger}$",
                plus_minus="$\\pm$", missing=LATEX_MISSING_MARK, not_applicable=NA_MARK, percent="\\%")
_LATEX_SPECIAL = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_",
                  "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}",
                  "†": "$^{\\dagger}$", "±": "$\\pm$", "—": "--", "≥": "$\\geq$", "<": "$<$", ">": "$>$"}


def latex_escape(text):
    """Escape LaTeX special characters in plain text."""
    return "".join(_LATEX_SPECIAL.get(character, character) for character in str(text))


def _format_cell(table, cell, style):
    if cell.status == NOT_APPLICABLE:
        return style.not_applicable
    if cell.status == MISSING:
        return style.missing
    text = f"{cell.mean:.{table.decimals}f}"
    if table.show_std and cell.std is not None:
        text += f"{style.plus_minus}{cell.std:.{table.decimals}f}"
    if cell.best:
        text = style.bold.format(text)
    elif cell.second:
        text = style.underline.format(text)
    if cell.star:
        text += style.star
    if cell.seed_star:
        text += style.dagger
    return text


def _format_improve(value, style):
    return style.missing if value is None else f"{value:+.{PERCENT_DECIMALS}f}{style.percent}"


def _markdown_footnote_line(line):
    """Escape a leading star so markdown shows it instead of starting emphasis."""
    return "\\" + line if line.startswith(STAR_MARK) else line


def _latex_footnote_line(line):
    if line.startswith(STAR_MARK):
        return _LATEX.star + latex_escape(line[len(STAR_MARK):])
    return latex_escape(line)


def _markdown_row(cells):
    return "| " + " | ".join(cells) + " |"


def to_markdown(table, footnote=True):
    """The table as GitHub markdown (bold ``**``, underline ``<u>``, ``\\*`` and † marks) + footnote."""
    header = ["Model"] + [f"{dataset} {metric}" for dataset, metric in table.columns]
    lines = [_markdown_row(header), _markdown_row(["---"] + ["---:"] * len(table.columns))]
    blank = [""] * len(table.columns)
    for group, models in ((BASELINE_GROUP, table.baselines), (PROPOSED_GROUP, table.proposed)):
        if table.has_improve and models:
            lines.append(_markdown_row([f"_{GROUP_HEADINGS[group]}_"] + blank))
        for model in models:
            lines.append(_markdown_row([model] + [_format_cell(table, table.cells[(model, dataset, metric)], _MARKDOWN)
                                                  for dataset, metric in table.columns]))
    if table.has_improve:
        lines.append(_markdown_row([IMPROVE_LABEL] + [_format_improve(table.improve[column], _MARKDOWN)
                                                      for column in table.columns]))
    if footnote and table.footnote:
        lines.append("")
        lines.extend(f"- {_markdown_footnote_line(line)}" for line in table.footnote)
    return "\n".join(lines) + "\n"


def to_latex(table):
    """The table as a booktabs LaTeX ``table`` (``\\textbf``, ``\\underline``, ``$^{*}$``) + footnote."""
    n_metrics = len(table.metrics)
    column_spec = "l" + "".join(" " + "c" * n_metrics for _ in table.datasets)
    dataset_header = " & ".join(f"\\multicolumn{{{n_metrics}}}{{c}}{{{latex_escape(dataset)}}}"
                                for dataset in table.datasets)
    rules = " ".join(f"\\cmidrule(lr){{{2 + index * n_metrics}-{1 + (index + 1) * n_metrics}}}"
                     for index in range(len(table.datasets)))
    metric_header = " & ".join(latex_escape(metric) for _, metric in table.columns)
    lines = ["\\begin{table}[t]", "\\centering", "\\small", f"\\begin{{tabular}}{{{column_spec}}}", "\\toprule",
             f"Model & {dataset_header} \\\\", rules, f" & {metric_header} \\\\", "\\midrule"]
    for index, models in enumerate((table.baselines, table.proposed)):
        if index and models:
            lines.append("\\midrule")
        for model in models:
            cells = [_format_cell(table, table.cells[(model, dataset, metric)], _LATEX)
                     for dataset, metric in table.columns]
            lines.append(" & ".join([latex_escape(model)] + cells) + " \\\\")
    if table.has_improve:
        lines.append("\\midrule")
        lines.append(" & ".join([IMPROVE_LABEL] + [_format_improve(table.improve[column], _LATEX)
                                                   for column in table.columns]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    if table.footnote:
        footnote = " ".join(_latex_footnote_line(line) for line in table.footnote)
        lines += ["\\par\\smallskip", f"{{\\footnotesize {footnote}}}"]
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("group", "model", "dataset", "metric", "status", "mean", "std", "n_seeds", "seeds", "mark",
              "star", "seed_star", "compared_with", "p_user", "p_seed")


def _number(value):
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))


def to_csv(table):
    """The table in long form, one line per (model, dataset, metric) plus the Improve lines.

    ``status`` is value/na/missing; ``mark`` is best/second; ``star`` / ``seed_star`` are 1/0;
    ``p_user`` / ``p_seed`` are the best cell's test p-values against ``compared_with``;
    Improve lines hold the percentage in ``mean``. Numbers are unrounded.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for model in table.models:
        for dataset, metric in table.columns:
            cell = table.cells[(model, dataset, metric)]
            writer.writerow({
                "group": table.group_of(model), "model": model, "dataset": dataset, "metric": metric,
                "status": cell.status, "mean": _number(cell.mean), "std": _number(cell.std),
                "n_seeds": len(cell.seeds), "seeds": " ".join(str(seed) for seed in cell.seeds),
                "mark": "best" if cell.best else "second" if cell.second else "",
                "star": int(cell.star), "seed_star": int(cell.seed_star), "compared_with": cell.compared_with or "",
                "p_user": _number(cell.user_test.pvalue if cell.user_test else None),
                "p_seed": _number(cell.seed_test.pvalue if cell.seed_test else None),
            })
    if table.has_improve:
        for dataset, metric in table.columns:
            value = table.improve[(dataset, metric)]
            writer.writerow({"group": IMPROVE_GROUP, "model": IMPROVE_LABEL, "dataset": dataset, "metric": metric,
                             "status": MISSING if value is None else VALUE, "mean": _number(value)})
    return buffer.getvalue()


def default_tables_dir(results_dir=None):
    return Path(results_dir or default_results_dir()) / "tables"


def _write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_tables(table, out_dir=None, stem=None):
    """Write ``<stem>.md``, ``<stem>.tex`` and ``<stem>.csv`` atomically.

    Args:
        out_dir: default ``results/tables``.
        stem: default the table's task name.

    Returns:
        ``{"md": path, "tex": path, "csv": path}``.
    """
    out_dir = Path(out_dir) if out_dir else default_tables_dir()
    stem = stem or table.task
    renderers = {"md": to_markdown, "tex": to_latex, "csv": to_csv}
    return {suffix: _write_text(out_dir / f"{stem}.{suffix}", render(table)) for suffix, render in renderers.items()}


# --------------------------------------------------------------------------------------------
# Efficiency
# --------------------------------------------------------------------------------------------

@dataclass
class EfficiencyRow:
    """Means over seeds for one (model, dataset); None where no run stored the number."""

    model: str
    dataset: str
    n_seeds: int
    parameters: float
    train_seconds: float
    train_seconds_per_epoch: float
    eval_seconds: float
    peak_memory_mb: float
    memory_kind: str  # "GPU" (peak allocated) or "CPU RSS" (peak resident set)
    devices: str


EFFICIENCY_COLUMNS = (
    ("model", "Model"), ("dataset", "Dataset"), ("n_seeds", "Seeds"), ("parameters", "Params"),
    ("train_seconds_per_epoch", "Train s/epoch"), ("train_seconds", "Train s"), ("eval_seconds", "Eval s"),
    ("peak_memory_mb", "Peak MB"), ("memory_kind", "Memory"), ("devices", "Device"),
)


def _mean_of(values):
    present = [float(value) for value in values if value is not None]
    return float(np.mean(present)) if present else None


def efficiency_table(records):
    """Parameters, train seconds (total and per epoch), eval seconds and peak memory per model x dataset.

    Peak memory is the GPU peak when any seed ran on a GPU, else the peak CPU resident set.
    Returns a list of :class:`EfficiencyRow` sorted by dataset then model.
    """
    grouped = defaultdict(list)
    for record in records:
        grouped[(record["dataset"], record["model"])].append(record.get("efficiency") or {})
    rows = []
    for (dataset, model), runs in sorted(grouped.items(), key=lambda item: (item[0][0], item[0][1].lower())):
        gpu = _mean_of(run.get("peak_gpu_mb") for run in runs)
        rows.append(EfficiencyRow(
            model=model, dataset=dataset, n_seeds=len(runs),
            parameters=_mean_of(run.get("parameters") for run in runs),
            train_seconds=_mean_of(run.get("train_seconds") for run in runs),
            train_seconds_per_epoch=_mean_of(run.get("train_seconds_per_epoch") for run in runs),
            eval_seconds=_mean_of(run.get("eval_seconds") for run in runs),
            peak_memory_mb=gpu if gpu is not None else _mean_of(run.get("peak_cpu_rss_mb") for run in runs),
            memory_kind="GPU" if gpu is not None else "CPU RSS",
            devices=", ".join(sorted({str(run["device"]) for run in runs if run.get("device")})),
        ))
    return rows


def _efficiency_text(name, value):
    if value is None:
        return MISSING_MARK
    if name == "parameters":
        return f"{int(round(value)):,}"
    if isinstance(value, float):
        return f"{value:.{EFFICIENCY_DECIMALS}f}"
    return str(value)


def efficiency_to_markdown(rows):
    """Markdown rendering of :func:`efficiency_table` (means over seeds; MB = 2^20 bytes)."""
    lines = [_markdown_row([label for _, label in EFFICIENCY_COLUMNS]),
             _markdown_row(["---"] * len(EFFICIENCY_COLUMNS))]
    for row in rows:
        lines.append(_markdown_row([_efficiency_text(name, getattr(row, name)) for name, _ in EFFICIENCY_COLUMNS]))
    lines += ["", f"Means over seeds. Peak memory: GPU peak allocated when run on a GPU, else peak CPU "
                  f"resident set of the run's process ({BYTES_NOTE})."]
    return "\n".join(lines) + "\n"


def efficiency_to_csv(rows):
    """CSV rendering of :func:`efficiency_table`, unrounded."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([name for name, _ in EFFICIENCY_COLUMNS])
    for row in rows:
        writer.writerow(["" if getattr(row, name) is None else getattr(row, name) for name, _ in EFFICIENCY_COLUMNS])
    return buffer.getvalue()


PLOTTED_QUANTITIES = (("train_seconds_per_epoch", "train seconds / epoch"), ("eval_seconds", "eval seconds"),
                      ("peak_memory_mb", "peak memory MB (hatched: CPU RSS, else GPU)"))
CPU_MEMORY_HATCH = "//"


def efficiency_plot(records, path):
    """Grouped bar charts (datasets x models) of time per epoch, eval time and peak memory, as PNG.

    Written atomically; returns ``path``. Needs matplotlib (Agg backend, no display).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = efficiency_table(records)
    datasets = sorted({row.dataset for row in rows})
    models = sorted({row.model for row in rows}, key=str.lower)
    lookup = {(row.dataset, row.model): row for row in rows}
    figure, axes = plt.subplots(1, len(PLOTTED_QUANTITIES),
                                figsize=(PLOT_PANEL_WIDTH_INCHES * len(PLOTTED_QUANTITIES), PLOT_HEIGHT_INCHES))
    positions = np.arange(len(datasets))
    bar_width = 1.0 / (len(models) + 1) if models else 1.0
    for axis, (name, label) in zip(axes, PLOTTED_QUANTITIES):
        for index, model in enumerate(models):
            heights = [getattr(lookup[(dataset, model)], name) if (dataset, model) in lookup else None
                       for dataset in datasets]
            bars = axis.bar(positions + index * bar_width,
                            [np.nan if height is None else height for height in heights], bar_width, label=model)
            if name == "peak_memory_mb":
                for bar, dataset in zip(bars, datasets):
                    row = lookup.get((dataset, model))
                    if row is not None and row.memory_kind != "GPU":
                        bar.set_hatch(CPU_MEMORY_HATCH)
        axis.set_xticks(positions + bar_width * (len(models) - 1) / 2 if models else positions)
        axis.set_xticklabels(datasets, rotation=20, ha="right")
        axis.set_title(label)
        if not rows:
            axis.text(0.5, 0.5, "no runs", ha="center", va="center", transform=axis.transAxes)
    if models:
        axes[0].legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=PLOT_DPI)
    plt.close(figure)
    return path


def write_efficiency(records, out_dir=None, stem=EFFICIENCY_STEM, plot=True):
    """Write ``<stem>.md``, ``<stem>.csv`` and (``plot``) ``<stem>.png``; returns the paths."""
    out_dir = Path(out_dir) if out_dir else default_tables_dir()
    rows = efficiency_table(records)
    paths = {"md": _write_text(out_dir / f"{stem}.md", efficiency_to_markdown(rows)),
             "csv": _write_text(out_dir / f"{stem}.csv", efficiency_to_csv(rows))}
    if plot:
        paths["png"] = efficiency_plot(records, out_dir / f"{stem}.png")
    return paths


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

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
    parser.add_argument("--std", action="store_true", help="show mean ± std over seeds")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <results-dir>/tables)")
    parser.add_argument("--stem", default=None, help="output file name stem (default: the task)")
    parser.add_argument("--no-plot", action="store_true", help="skip the efficiency PNG")
    return parser


def table_main(argv=None):
    """``run_benchmark.py table``: print and write the tables; returns the exit code.

    0 = tables written (problems, if any, are printed but do not fail the command);
    1 = no usable record matched the filters.
    """
    args = build_table_parser().parse_args(sys.argv[1:] if argv is None else argv)
    # Proposed models are always shown, even when --models leaves them out.
    wanted_models = list(dict.fromkeys(args.models + args.proposed)) if args.models else None
    records, problems = collect_records(args.results_dir, wanted_models, args.datasets, args.seeds)
    if problems:
        print(f"{len(problems)} problem(s) with stored results (these files are not used):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
    if not records:
        results_dir = args.results_dir or default_results_dir()
        print(f"No usable run records under {Path(results_dir) / 'runs'} match the filters.", file=sys.stderr)
        return 1
    table = build_table(records, task=args.task, metrics=args.metrics, proposed=args.proposed, alpha=args.alpha,
                        show_std=args.std, models=args.models, datasets=args.datasets)
    print(to_markdown(table))
    for problem in table.problems:
        print(f"  - {problem}", file=sys.stderr)
    out_dir = args.out or default_tables_dir(args.results_dir)
    paths = write_tables(table, out_dir, args.stem)
    paths.update({f"efficiency {suffix}": path for suffix, path in
                  write_efficiency(records, out_dir, plot=not args.no_plot).items()})
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    return 0
