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

from mbrec.results import ResultsError, default_results_dir, load_record
from mbrec.reporting.stats import (
    CORRECTION_NAMES, CORRECTIONS, DEFAULT_ALPHA, DEFAULT_BOOTSTRAP_RESAMPLES, DEFAULT_BOOTSTRAP_SEED,
    DEFAULT_CONFIDENCE, DEFAULT_CORRECTION, DEFAULT_TEST, MIN_SEEDS_FOR_SEED_TEST, NEW, PARTS, REPEAT, TEST_NAMES,
    TESTS, AlignmentError, adjust_pvalues, effect_size, paired_test, paired_user_values, per_user_values,
    repeat_flags, seed_ttest,
)
from mbrec.evaluation.metrics import TASKS
from mbrec.utils import atomic_path

DEFAULT_TASK = "behavior_specific"
DEFAULT_METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
DISPLAY_DECIMALS = 4
PERCENT_DECIMALS = 2
P_VALUE_DIGITS = 3  # significant digits of a p-value
EFFICIENCY_DECIMALS = 2
PERCENT = 100.0

# Cell states.
VALUE, NOT_APPLICABLE, MISSING, UNKNOWN, EMPTY = "value", "na", "missing", "unknown", "empty"
# What a reader sees for a cell without a number.
NA_MARK = "N/A"
MISSING_MARK = "—"
UNKNOWN_MARK = "?"
EMPTY_MARK = "n=0"
# Rules that do not learn: the first rows of a default table, so every learned model is read against them.
SANITY_BASELINES = ("Pop", "Recent")
# Starts the footnote sentence on model selection (the test lock).
SELECTION_NOTE = "Selected on valid; test evaluated once"
# At most this many runs are named in one footnote sentence; the rest are counted.
MAX_LISTED = 5
PART_TITLES = {REPEAT: "Repeat targets (target item in the input window)",
               NEW: "New-item targets (target item not in the input window)"}
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

    ``status`` is ``"value"``, ``"na"`` (the model cannot do the task), ``"missing"`` (no
    run stored), ``"unknown"`` (a repeat/new part asked of records without repeat flags) or
    ``"empty"`` (no test user in that part).
    ``user_test`` / ``seed_test`` are the tests of a best cell against the runner-up named in
    ``compared_with`` (the least significant one after correction when several tie), with
    their corrected p-values and the effect size of that comparison.
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
    user_p_adjusted: float = None
    seed_p_adjusted: float = None
    effect: object = None


@dataclass
class Comparison:
    """One tested pair of a table: the sole best model vs one runner-up in one column.

    ``user_test`` is on per-user values (pairs = same seed, same user, pooled over common
    seeds), ``effect`` the mean paired difference with its bootstrap CI on the same pairs,
    ``seed_test`` the paired-by-seed t-test (None with too few common seeds). The ``*_adjusted``
    p-values are set by :func:`apply_correction` over the whole family.
    """

    dataset: str
    metric: str
    best: str
    runner_up: str
    user_test: object
    effect: object
    seed_test: object
    part: str = None
    user_p_adjusted: float = math.nan
    seed_p_adjusted: float = math.nan


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
    test: str = DEFAULT_TEST
    correction: str = DEFAULT_CORRECTION
    part: str = None  # None = all test users; "repeat" / "new" = one part of them
    comparisons: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    family_size: int = 0  # tested per-user comparisons in the family this table was corrected with
    seed_family_size: int = 0  # tested across-seed comparisons in that family

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


def _part_value(result, metric, part):
    """Mean ``metric`` over the users of ``part`` in one task result; UNKNOWN without repeat flags."""
    flags = repeat_flags(result)
    if flags is None:
        return UNKNOWN
    ranks = np.asarray((result.get("per_user") or {}).get("rank", []), dtype=np.float64)
    selected = ranks[flags == (part == REPEAT)]
    return float(np.mean(per_user_values(selected, metric))) if len(selected) else math.nan


def _seed_values(runs, task, metric, part=None):
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
        if part is not None:
            stored = _part_value(result, metric, part)
            if stored is UNKNOWN or math.isnan(stored):
                states.add(UNKNOWN if stored is UNKNOWN else EMPTY)
                continue
        else:
            stored = (result.get("metrics") or {}).get(metric)
        if stored is None:
            ranks = (result.get("per_user") or {}).get("rank", [])
            if not len(ranks):
                states.add(MISSING)
                continue
            stored = float(np.mean(per_user_values(ranks, metric)))
        if math.isnan(float(stored)):  # no test user for this task (or part) in this run
            states.add(MISSING)
            continue
        values[seed] = float(stored)
        states.add(VALUE)
    return values, states


def _make_cell(runs, task, metric, part=None):
    values, states = _seed_values(runs, task, metric, part)
    if values:
        seeds = tuple(sorted(values))
        series = np.asarray([values[seed] for seed in seeds])
        std = float(np.std(series, ddof=1)) if len(series) > 1 else None
        return Cell(VALUE, float(series.mean()), std, seeds), values
    if NOT_APPLICABLE in states:
        return Cell(NOT_APPLICABLE), values
    if UNKNOWN in states:
        return Cell(UNKNOWN), values
    if EMPTY in states:
        return Cell(EMPTY), values
    return Cell(MISSING), values


def _runs_with_result(runs, task, part=None):
    """The seeds whose record can be paired for ``task`` (and split into parts when ``part`` is set)."""
    return {seed: record for seed, record in runs.items() if record["results"].get(task) is not None
            and (part is None or repeat_flags(record["results"][task]) is not None)}


@dataclass(frozen=True)
class _Settings:
    """How the tests and effect sizes of one table are computed."""

    test: str = DEFAULT_TEST
    confidence: float = DEFAULT_CONFIDENCE
    n_resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES
    bootstrap_seed: int = DEFAULT_BOOTSTRAP_SEED


def _mark_column(table, runs_by_model, seed_values, dataset, metric, problems, settings):
    """Bold/underline one (dataset, metric) column and test its sole best against every runner-up.

    Stars and daggers are decided later, by :func:`apply_correction`, once the whole family
    of comparisons is known.
    """
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
    for runner_up in second_models:
        user_test, effect = None, None
        try:
            values = paired_user_values(_runs_with_result(runs_by_model[best], table.task, table.part),
                                        _runs_with_result(runs_by_model[runner_up], table.task, table.part),
                                        table.task, metric, part=table.part)
            if values is not None:
                user_test = paired_test(*values, test=settings.test)
                effect = effect_size(*values, confidence=settings.confidence, n_resamples=settings.n_resamples,
                                     seed=settings.bootstrap_seed)
        except AlignmentError as error:
            problems.append(f"no significance test for {best} vs {runner_up} on {dataset} {metric}: {error}")
        table.comparisons.append(Comparison(dataset, metric, best, runner_up, user_test, effect,
                                            seed_ttest(seed_values[best], seed_values[runner_up]), table.part))


def _adjusted(pvalues, correction):
    return adjust_pvalues(pvalues, correction) if pvalues else np.zeros(0)


def apply_correction(tables, correction=None, alpha=None):
    """Correct the p-values of all comparisons of ``tables`` as one family, then set stars and daggers.

    Two families: the per-user tests (stars) and the across-seed tests (daggers). A star goes
    to a sole best model when every runner-up comparison has a corrected p < alpha and a
    positive mean difference; the cell keeps the weakest comparison (largest corrected p).

    Args:
        tables: tables shown together (e.g. the repeat and the new part of one output).
        correction, alpha: default the first table's.
    """
    tables = list(tables)
    if not tables:
        return
    correction = correction or tables[0].correction
    alpha = tables[0].alpha if alpha is None else alpha
    comparisons = [comparison for table in tables for comparison in table.comparisons]
    user_p = [comparison.user_test.pvalue if comparison.user_test else math.nan for comparison in comparisons]
    seed_p = [comparison.seed_test.pvalue if comparison.seed_test else math.nan for comparison in comparisons]
    for comparison, user_adjusted, seed_adjusted in zip(comparisons, _adjusted(user_p, correction),
                                                         _adjusted(seed_p, correction)):
        comparison.user_p_adjusted, comparison.seed_p_adjusted = float(user_adjusted), float(seed_adjusted)
    family_size = int(np.sum(~np.isnan(np.asarray(user_p, dtype=np.float64)))) if user_p else 0
    seed_family_size = int(np.sum(~np.isnan(np.asarray(seed_p, dtype=np.float64)))) if seed_p else 0

    def wins(test, adjusted):
        return test is not None and not math.isnan(adjusted) and adjusted < alpha and test.mean_difference > 0

    def weakness(adjusted):
        return math.inf if math.isnan(adjusted) else adjusted

    for table in tables:
        table.correction, table.alpha, table.family_size = correction, alpha, family_size
        table.seed_family_size = seed_family_size
        by_cell = defaultdict(list)
        for comparison in table.comparisons:
            by_cell[(comparison.best, comparison.dataset, comparison.metric)].append(comparison)
        for key, cell_comparisons in by_cell.items():
            cell = table.cells[key]
            weakest = max(cell_comparisons, key=lambda comparison: weakness(comparison.user_p_adjusted))
            weakest_seed = max(cell_comparisons, key=lambda comparison: weakness(comparison.seed_p_adjusted))
            cell.compared_with, cell.user_test, cell.effect = weakest.runner_up, weakest.user_test, weakest.effect
            cell.user_p_adjusted = weakest.user_p_adjusted
            cell.seed_test, cell.seed_p_adjusted = weakest_seed.seed_test, weakest_seed.seed_p_adjusted
            cell.star = all(wins(comparison.user_test, comparison.user_p_adjusted) for comparison in cell_comparisons)
            cell.seed_star = all(wins(comparison.seed_test, comparison.seed_p_adjusted)
                                 for comparison in cell_comparisons)
        table.footnote = [line for line in table.footnote if not line.startswith((STAR_MARK, DAGGER_MARK))]
        table.footnote[2:2] = _significance_lines(table)


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


def _significance_lines(table):
    """Footnote sentences on the star, the dagger, the correction, its family and the effect sizes."""
    correction = CORRECTION_NAMES[table.correction]
    corrected = ("p-values uncorrected" if table.correction == "none" else
                 f"p-values {correction}-corrected over the family of all {table.family_size} per-user comparisons "
                 f"shown: the sole best vs each runner-up, in every column{' of both parts' if table.part else ''}")
    seed_corrected = ("uncorrected" if table.correction == "none" else
                      f"{correction}-corrected over the {table.seed_family_size} across-seed tests shown")
    return [
        f"{STAR_MARK}: the sole best model beats the runner-up with p < {table.alpha:g} in a "
        f"{TEST_NAMES[table.test]} on per-user values; pairs are (same seed, same test user), pooled over the "
        f"seeds both models ran; {corrected}.",
        f"{DAGGER_MARK}: the same holds for the across-seed paired t-test (paired by seed; only with at "
        f"least {MIN_SEEDS_FOR_SEED_TEST} common seeds; {seed_corrected}).",
    ]


def _footnote(table, records):
    """Sentences explaining the cells, marks, tests, notes, selection and held-out settings."""
    seed_counts = sorted({len(cell.seeds) for cell in table.cells.values() if cell.status == VALUE})
    seeds_text = "/".join(str(count) for count in seed_counts) or "0"
    spread = " ± sample std over seeds" if table.show_std else ""
    users = {None: "", REPEAT: " Repeat targets only: users whose target item is in the model's input window.",
             NEW: " New-item targets only: users whose target item is not in the model's input window."}
    lines = [
        f"Task: {table.task}.{users[table.part]} Each cell: test metric, mean over seeds ({seeds_text} "
        f"seeds){spread}.",
        f"Bold: best; underlined: second best. Values are compared as displayed (rounded to "
        f"{table.decimals} decimals): all tied-best are bold and the next distinct value is underlined.",
        # the star and dagger sentences are inserted here by apply_correction
        f"{NA_MARK}: the model cannot do this task; {MISSING_MARK}: run not present.",
    ]
    if table.part:
        lines.append(f"{UNKNOWN_MARK}: the run's record has no repeat flags (made before they were stored); "
                     f"rerun it with --rerun to split it. {EMPTY_MARK}: no test user of this part.")
    if table.has_improve:
        lines.append(f"{IMPROVE_LABEL}: (best proposed - best baseline) / best baseline, in %.")
    in_table = set(table.datasets)
    shown = [record for record in records if record["dataset"] in in_table and record["model"] in table.models]
    lines.append(_selection_line(shown))
    notes = defaultdict(set)
    heldout = {}
    for record in shown:
        heldout.setdefault(record["dataset"], set()).add(record.get("heldout"))
        result = record["results"].get(table.task)
        if isinstance(result, dict) and result.get("note"):
            notes[result["note"]].add(record["model"])
    for note, models in sorted(notes.items()):
        lines.append(f"{note[0].upper()}{note[1:]}: {', '.join(sorted(models))}.")
    lines.extend(_modality_lines(shown))
    if heldout:
        settings = "; ".join(
            f"{dataset}: " + ", ".join("none (no held-out file)" if value is None else str(value)
                                       for value in sorted(values, key=str))
            for dataset, values in sorted(heldout.items()))
        lines.append(f"Held-out test items (heldout setting): {settings}.")
    return lines


def _modality_lines(records):
    """Which runs used modal item features and which ran ID-only (models that record ``model_notes``)."""
    id_only, modal = defaultdict(set), defaultdict(set)
    for record in records:
        notes = record.get("model_notes")
        if not isinstance(notes, dict) or "id_only" not in notes:
            continue
        if notes["id_only"]:
            id_only[record["model"]].add(record["dataset"])
        else:
            modal[(record["model"], ", ".join(notes.get("modalities") or []))].add(record["dataset"])
    lines = []
    if id_only:
        runs = "; ".join(f"{model} on {', '.join(sorted(datasets))}" for model, datasets in sorted(id_only.items()))
        lines.append(f"ID-only (no modal item features, modality denoising off): {runs}.")
    if modal:
        runs = "; ".join(f"{model} on {', '.join(sorted(datasets))} ({names})"
                         for (model, names), datasets in sorted(modal.items()))
        lines.append(f"Modal item features used: {runs}.")
    return lines


def _selection_line(records):
    """The test-lock sentence: how checkpoints were selected, and which records cannot show it."""
    criteria = sorted({f"{lock.get('valid_task')} {lock.get('valid_metric')}"
                       for lock in (record.get("test_lock") for record in records) if lock})
    line = (f"{SELECTION_NOTE}: each run's checkpoint was chosen by its valid score"
            f"{' (' + ', '.join(criteria) + ')' if criteria else ''} and test was run once, on that checkpoint "
            f"(its sha256 and valid score are in the record).")
    unlocked = sorted(f"{record['model']}/{record['dataset']}/seed {record['seed']}" for record in records
                      if not record.get("test_lock"))
    if unlocked:
        line += (f" {len(unlocked)} of {len(records)} records predate stored checkpoint hashes: "
                 f"{', '.join(unlocked[:MAX_LISTED])}{' ...' if len(unlocked) > MAX_LISTED else ''}.")
    return line


def _seed_warnings(table, runs_by_model_dataset):
    """A plain warning per dataset where a shown model has fewer than ``MIN_SEEDS_FOR_SEED_TEST`` seeds."""
    warnings = []
    for dataset in table.datasets:
        few = sorted((model, len(runs_by_model_dataset[(model, dataset)])) for model in table.models
                     if 0 < len(runs_by_model_dataset.get((model, dataset), {})) < MIN_SEEDS_FOR_SEED_TEST)
        if few:
            listed = ", ".join(f"{model} ({count})" for model, count in few)
            warnings.append(f"{dataset}: fewer than {MIN_SEEDS_FOR_SEED_TEST} seeds for {listed}. The spread over "
                            f"seeds is not estimated reliably and the across-seed test ({DAGGER_MARK}) is not run, "
                            f"so a difference may be due to the seed; run more seeds (--seeds).")
    return warnings


def _default_row_order(model):
    """Sanity baselines first (in :data:`SANITY_BASELINES` order), then the others alphabetically."""
    if model in SANITY_BASELINES:
        return 0, SANITY_BASELINES.index(model), ""
    return 1, 0, model.lower()


def build_table(records, task=DEFAULT_TASK, metrics=DEFAULT_METRICS, proposed=(), alpha=DEFAULT_ALPHA,
                show_std=False, models=None, datasets=None, decimals=DISPLAY_DECIMALS, test=DEFAULT_TEST,
                correction=DEFAULT_CORRECTION, part=None, confidence=DEFAULT_CONFIDENCE,
                n_resamples=DEFAULT_BOOTSTRAP_RESAMPLES, bootstrap_seed=DEFAULT_BOOTSTRAP_SEED, correct=True):
    """Build the main result table of ``task`` from run records.

    Args:
        records: valid records (from :func:`collect_records`); duplicated (model, dataset,
            seed) runs are reduced to the newest and reported in ``table.problems``.
        task: one of ``mbrec.evaluation.TASKS``.
        metrics: column metrics, e.g. ``("recall@10", "ndcg@10")``.
        proposed: model names forming the proposed group (shown after the baselines, in this
            order, and compared in the "Improve" row); empty = no proposed group, no Improve row.
        alpha: significance level of the star / dagger (after correction).
        show_std: render "mean ± std" (sample std over seeds).
        models: optional baseline order (default: the sanity baselines Pop and Recent first,
            then alphabetical); names not in records are shown as missing rows.
        datasets: optional dataset order (default: alphabetical over the records).
        decimals: display precision, also the precision at which ties are decided.
        test: per-user test, one of ``stats.TESTS`` (``"ttest"``, ``"wilcoxon"``).
        correction: ``"holm"`` (default), ``"bh"`` or ``"none"``, over all comparisons of the table.
        part: None (all test users), ``"repeat"`` or ``"new"`` (users whose target item is /
            is not in the input window).
        confidence, n_resamples, bootstrap_seed: the effect sizes' bootstrap.
        correct: apply the correction now; False when several tables form one family (the
            caller then runs :func:`apply_correction` on all of them).

    Returns:
        :class:`ResultTable`.
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; use one of {TASKS}")
    if test not in TESTS or correction not in CORRECTIONS or part not in (None, *PARTS):
        raise ValueError(f"test must be one of {TESTS}, correction one of {CORRECTIONS}, part one of "
                         f"{(None, *PARTS)}; got {test!r}, {correction!r}, {part!r}")
    metrics = tuple(metric.lower() for metric in metrics)
    records, problems = _newest_per_run([(f"record {record.get('run_key')}", record) for record in records])
    proposed = [model for model in dict.fromkeys(proposed)]
    record_models = sorted({record["model"] for record in records}, key=_default_row_order)
    baseline_order = list(models) if models else record_models
    baselines = [model for model in dict.fromkeys(baseline_order) if model not in proposed]
    datasets = list(datasets) if datasets else sorted({record["dataset"] for record in records})

    runs_by_model_dataset = defaultdict(dict)
    for record in records:
        runs_by_model_dataset[(record["model"], record["dataset"])][int(record["seed"])] = record

    table = ResultTable(task=task, metrics=metrics, datasets=datasets, baselines=baselines, proposed=proposed,
                        cells={}, improve={}, alpha=alpha, show_std=show_std, decimals=decimals, footnote=[],
                        problems=problems, test=test, correction=correction, part=part)
    settings = _Settings(test, confidence, n_resamples, bootstrap_seed)
    for dataset in datasets:
        runs_by_model = {model: runs_by_model_dataset.get((model, dataset), {}) for model in table.models}
        for metric in metrics:
            seed_values = {}
            for model in table.models:
                cell, seed_values[model] = _make_cell(runs_by_model[model], task, metric, part)
                table.cells[(model, dataset, metric)] = cell
            _mark_column(table, runs_by_model, seed_values, dataset, metric, table.problems, settings)
            if table.has_improve:
                table.improve[(dataset, metric)] = _improve(table, dataset, metric)
    table.footnote = _footnote(table, records)
    table.warnings = _seed_warnings(table, runs_by_model_dataset)
    if correct:
        apply_correction([table])
    return table


def build_split_tables(records, **options):
    """The repeat-target and the new-item-target tables of ``records``, corrected as one family.

    ``options`` are :func:`build_table`'s. Returns ``{"repeat": table, "new": table}``.
    """
    tables = {part: build_table(records, part=part, correct=False, **options) for part in PARTS}
    apply_correction(tables.values())
    return tables


@dataclass(frozen=True)
class PartCount:
    """Test users of one run split by the repeat flag; None counts when the record has no flags."""

    repeat: int = None
    new: int = None

    @property
    def known(self):
        return self.repeat is not None


def repeat_counts(records, task, models=None, datasets=None):
    """``{(model, dataset): {seed: PartCount}}`` of the (newest) records, for ``task``.

    Tasks a run could not do (N/A) or did not evaluate are left out.
    """
    records, _ = _newest_per_run([(f"record {record.get('run_key')}", record) for record in records])
    counts = defaultdict(dict)
    for record in records:
        if (models and record["model"] not in models) or (datasets and record["dataset"] not in datasets):
            continue
        result = record["results"].get(task)
        if not isinstance(result, dict):
            continue
        flags = repeat_flags(result)
        count = PartCount() if flags is None else PartCount(int(flags.sum()), int((~flags).sum()))
        counts[(record["model"], record["dataset"])][int(record["seed"])] = count
    return dict(counts)


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
    unknown: str = UNKNOWN_MARK


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
    if cell.status == UNKNOWN:
        return style.unknown
    if cell.status == EMPTY:
        return EMPTY_MARK
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
    if footnote and table.warnings:
        lines.append("")
        lines.append("\n\n".join(f"> **Warning:** {warning}" for warning in table.warnings))
    if footnote and table.comparisons:
        lines += ["", comparisons_to_markdown(table)]
    return "\n".join(lines) + "\n"


def _signed(value, decimals):
    return MISSING_MARK if value is None or math.isnan(value) else f"{value:+.{decimals}f}"


def _p_text(value):
    return MISSING_MARK if value is None or math.isnan(value) else f"{value:.{P_VALUE_DIGITS}g}"


def comparisons_to_markdown(table):
    """The tested comparisons of a table: effect size with its CI, relative change, raw and corrected p."""
    confidence = next((comparison.effect.confidence for comparison in table.comparisons if comparison.effect),
                      DEFAULT_CONFIDENCE)
    correction = CORRECTION_NAMES[table.correction]
    header = ["Dataset", "Metric", "Best", "Runner-up", "Difference", f"{confidence:.0%} CI", "Relative",
              "p", f"p ({correction})", "Pairs"]
    lines = [f"Effect sizes of the tested comparisons: mean paired difference (best - runner-up) over "
             f"(seed, user) pairs, {confidence:.0%} percentile bootstrap CI resampling those pairs; relative = "
             f"difference / runner-up mean; {TEST_NAMES[table.test]}.", "",
             _markdown_row(header), _markdown_row(["---"] * 4 + ["---:"] * (len(header) - 4))]
    for comparison in table.comparisons:
        effect, test = comparison.effect, comparison.user_test
        lines.append(_markdown_row([
            comparison.dataset, comparison.metric, comparison.best, comparison.runner_up,
            _signed(effect.mean_difference if effect else None, table.decimals),
            (f"[{_signed(effect.ci_low, table.decimals)}, {_signed(effect.ci_high, table.decimals)}]"
             if effect else MISSING_MARK),
            (f"{effect.relative * PERCENT:+.{PERCENT_DECIMALS}f}%" if effect and effect.relative is not None
             else MISSING_MARK),
            _p_text(test.pvalue if test else None), _p_text(comparison.user_p_adjusted),
            str(test.n) if test else MISSING_MARK,
        ]))
    return "\n".join(lines)


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
    if table.footnote or table.warnings:
        footnote = " ".join([_latex_footnote_line(line) for line in table.footnote]
                            + [f"\\textbf{{Warning:}} {latex_escape(warning)}" for warning in table.warnings])
        lines += ["\\par\\smallskip", f"{{\\footnotesize {footnote}}}"]
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("group", "model", "dataset", "metric", "status", "mean", "std", "n_seeds", "seeds", "mark",
              "star", "seed_star", "compared_with", "p_user", "p_seed", "part", "test", "correction",
              "p_user_adjusted", "p_seed_adjusted", "difference", "ci_low", "ci_high", "relative", "n_pairs")


def _number(value):
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))


def to_csv(table):
    """The table in long form, one line per (model, dataset, metric) plus the Improve lines.

    ``status`` is value/na/missing; ``mark`` is best/second; ``star`` / ``seed_star`` are 1/0;
    ``p_user`` / ``p_seed`` are the best cell's raw test p-values against ``compared_with``,
    ``p_*_adjusted`` the corrected ones; ``difference`` [``ci_low``, ``ci_high``] and
    ``relative`` the effect size over ``n_pairs`` (seed, user) pairs; ``part`` is empty (all
    users), repeat or new. Improve lines hold the percentage in ``mean``. Numbers are unrounded.
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
                "part": table.part or "", "test": table.test, "correction": table.correction,
                "p_user_adjusted": _number(cell.user_p_adjusted if cell.user_test else None),
                "p_seed_adjusted": _number(cell.seed_p_adjusted if cell.seed_test else None),
                "difference": _number(cell.effect.mean_difference if cell.effect else None),
                "ci_low": _number(cell.effect.ci_low if cell.effect else None),
                "ci_high": _number(cell.effect.ci_high if cell.effect else None),
                "relative": _number(cell.effect.relative if cell.effect else None),
                "n_pairs": cell.user_test.n if cell.user_test else "",
            })
    if table.has_improve:
        for dataset, metric in table.columns:
            value = table.improve[(dataset, metric)]
            writer.writerow({"group": IMPROVE_GROUP, "model": IMPROVE_LABEL, "dataset": dataset, "metric": metric,
                             "status": MISSING if value is None else VALUE, "mean": _number(value),
                             "part": table.part or ""})
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


def _count_text(seed_counts):
    """``"repeat / new (share)"`` of one (model, dataset) over its seeds; ranges when seeds differ."""
    known = [count for count in seed_counts.values() if count.known]
    if not known:
        return f"{UNKNOWN_MARK} (no repeat flags)"

    def span(values):
        low, high = min(values), max(values)
        return f"{low:,}" if low == high else f"{low:,}-{high:,}"

    repeats = [count.repeat for count in known]
    news = [count.new for count in known]
    shares = [count.repeat / (count.repeat + count.new) for count in known if count.repeat + count.new]
    share = f" ({np.mean(shares) * PERCENT:.1f}% repeat)" if shares else ""
    text = f"{span(repeats)} / {span(news)}{share}"
    unknown = len(seed_counts) - len(known)
    if unknown:
        text += f"; {unknown} of {len(seed_counts)} runs without repeat flags"
    return text


def repeat_counts_to_markdown(counts, models, datasets, task):
    """Users per part: one row per model, one column per dataset: ``repeat / new (share)``."""
    lines = [f"Test users per part ({task}): repeat / new-item targets (share of repeats; a range when seeds "
             f"differ).", "", _markdown_row(["Model"] + list(datasets)), _markdown_row(["---"] * (len(datasets) + 1))]
    for model in models:
        lines.append(_markdown_row([model] + [_count_text(counts[(model, dataset)]) if (model, dataset) in counts
                                              else MISSING_MARK for dataset in datasets]))
    return "\n".join(lines) + "\n"


def split_repeat_to_markdown(tables, counts):
    """The repeat and the new-item tables (one correction family) and the users per part."""
    first = tables[REPEAT]
    sections = []
    for part in PARTS:
        sections += [f"## {PART_TITLES[part]}", "", to_markdown(tables[part])]
    sections += ["## Users per part", "", repeat_counts_to_markdown(counts, first.models, first.datasets, first.task)]
    return "\n".join(sections)


def write_split_tables(tables, counts, out_dir=None, stem=None):
    """Write ``<stem>-split-repeat.md`` (both parts and the counts) and each part's ``.tex`` / ``.csv``."""
    out_dir = Path(out_dir) if out_dir else default_tables_dir()
    stem = stem or tables[REPEAT].task
    paths = {"split md": _write_text(out_dir / f"{stem}-split-repeat.md", split_repeat_to_markdown(tables, counts))}
    for part, table in tables.items():
        paths[f"{part} tex"] = _write_text(out_dir / f"{stem}-{part}.tex", to_latex(table))
        paths[f"{part} csv"] = _write_text(out_dir / f"{stem}-{part}.csv", to_csv(table))
    return paths


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


def statistics_options(args):
    """:func:`build_table` keyword arguments from :func:`add_statistics_arguments` options."""
    return {"test": args.test, "correction": args.correction, "confidence": args.confidence,
            "n_resamples": args.bootstrap_resamples, "bootstrap_seed": args.bootstrap_seed}


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
    options = dict(task=args.task, metrics=args.metrics, proposed=args.proposed, alpha=args.alpha,
                   show_std=args.std, models=args.models, datasets=args.datasets, **statistics_options(args))
    table = build_table(records, **options)
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
