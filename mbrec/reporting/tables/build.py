"""The table model and its cell statistics: :class:`ResultTable` of :class:`Cell` entries, the
seed means, the bold/underline marks, the paired tests of the sole best against each runner-up
(:class:`Comparison`), the multiple-comparison correction that sets stars and daggers, and
:func:`build_table`. The marking rule is in the package docstring (:mod:`mbrec.reporting.tables`).
"""

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from mbrec.reporting.stats import (
    CORRECTIONS, DEFAULT_ALPHA, DEFAULT_BOOTSTRAP_RESAMPLES, DEFAULT_BOOTSTRAP_SEED, DEFAULT_CONFIDENCE,
    DEFAULT_CORRECTION, DEFAULT_MIN_USERS, DEFAULT_TEST, PARTS, REPEAT, TESTS, AlignmentError, adjust_pvalues,
    per_user_values, repeat_flags, seed_ttest,
)
from mbrec.reporting.evidence import pair_evidence
from mbrec.reporting.tables.footnotes import _footnote, _seed_warnings, _significance_lines
from mbrec.reporting.tables.marks import (
    BASELINE_GROUP, DAGGER_MARK, DEFAULT_METRICS, DEFAULT_TASK, DISPLAY_DECIMALS, EMPTY, MISSING, NOT_APPLICABLE,
    PERCENT, PROPOSED_GROUP, STAR_MARK, UNKNOWN, VALUE,
)
from mbrec.reporting.tables.records import _newest_per_run
from mbrec.reporting.protocols import check_table_protocols
from mbrec.results import STOPPED_BY_EPOCH_CAP, stopped_by
from mbrec.evaluation.metrics import TASKS

# Rules that do not learn: the first rows of a default table, so every learned model is read against them.
SANITY_BASELINES = ("Pop", "Recent")
# A task key absent from a record's results: the task was not evaluated in that run.
_ABSENT = object()


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
    capped: bool = False  # a run of the cell stopped at the epoch cap (not converged)


@dataclass
class Comparison:
    """One tested pair of a table: the sole best model vs one runner-up in one column.

    ``user_test`` is over users (each user's value averaged over the common seeds, n = users),
    ``effect`` the mean difference over those users with a bootstrap CI resampling users,
    ``seed_test`` the across-seed t-test on per-seed means (None with too few common seeds).
    The ``*_adjusted`` p-values are set by :func:`apply_correction` over the whole family.
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
        capped = any(stopped_by(runs[seed]) == STOPPED_BY_EPOCH_CAP for seed in seeds)
        return Cell(VALUE, float(series.mean()), std, seeds, capped=capped), values
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
    min_users: int = DEFAULT_MIN_USERS


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
        user_test, effect, seed_test = None, None, None
        try:
            evidence = pair_evidence(
                _runs_with_result(runs_by_model[best], table.task, table.part),
                _runs_with_result(runs_by_model[runner_up], table.task, table.part), table.task, metric,
                part=table.part, test=settings.test, min_users=settings.min_users, confidence=settings.confidence,
                n_resamples=settings.n_resamples, bootstrap_seed=settings.bootstrap_seed)
            if evidence is not None:
                user_test, effect, seed_test = evidence.user_test, evidence.effect, evidence.seed_test
        except AlignmentError as error:
            problems.append(f"no significance test for {best} vs {runner_up} on {dataset} {metric}: {error}")
        if user_test is None:
            # users cannot be paired: the across-seed test still has each run's own seed means
            seed_test = seed_ttest(seed_values[best], seed_values[runner_up])
        table.comparisons.append(Comparison(dataset, metric, best, runner_up, user_test, effect, seed_test,
                                            table.part))


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


def _default_row_order(model):
    """Sanity baselines first (in :data:`SANITY_BASELINES` order), then the others alphabetically."""
    if model in SANITY_BASELINES:
        return 0, SANITY_BASELINES.index(model), ""
    return 1, 0, model.lower()


def build_table(records, task=DEFAULT_TASK, metrics=DEFAULT_METRICS, proposed=(), alpha=DEFAULT_ALPHA,
                show_std=False, models=None, datasets=None, decimals=DISPLAY_DECIMALS, test=DEFAULT_TEST,
                correction=DEFAULT_CORRECTION, part=None, confidence=DEFAULT_CONFIDENCE,
                n_resamples=DEFAULT_BOOTSTRAP_RESAMPLES, bootstrap_seed=DEFAULT_BOOTSTRAP_SEED, correct=True,
                min_users=DEFAULT_MIN_USERS):
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
        min_users: fewer users than this in a comparison give no p-value (and no star).
        correct: apply the correction now; False when several tables form one family (the
            caller then runs :func:`apply_correction` on all of them).

    Returns:
        :class:`ResultTable`.

    Raises:
        ProtocolMismatch: a dataset column holds runs of different protocols (the message names the
            differing keys); relabel them with :func:`mbrec.reporting.protocols.split_by_protocol`
            for a column per protocol variant.
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
    # One protocol per column: never a cell or a test over runs that measured different things.
    check_table_protocols([record for record in records if record["dataset"] in datasets
                           and record["model"] in baselines + proposed])

    runs_by_model_dataset = defaultdict(dict)
    for record in records:
        runs_by_model_dataset[(record["model"], record["dataset"])][int(record["seed"])] = record

    table = ResultTable(task=task, metrics=metrics, datasets=datasets, baselines=baselines, proposed=proposed,
                        cells={}, improve={}, alpha=alpha, show_std=show_std, decimals=decimals, footnote=[],
                        problems=problems, test=test, correction=correction, part=part)
    settings = _Settings(test, confidence, n_resamples, bootstrap_seed, min_users)
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
