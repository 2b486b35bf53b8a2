"""Result tables rebuilt from stored records, never from training (protocol.md, "Tables").

One module per output concern; imports: mbrec.results, mbrec.reporting.stats,
mbrec.evaluation.metrics, mbrec.utils and each other (never a dataset, a model or the runner).

Pipeline: :func:`collect_records` (``records``: load and validate ``results/runs/**.json``;
corrupted or partial files are reported, never used; duplicates resolved to the newest run) ->
:func:`build_table` (``build``: one row per model, one column per dataset x metric, marks,
tests, "Improve" row; ``footnotes``: the sentences under it) -> :func:`to_markdown` /
:func:`to_latex` / :func:`to_csv` (``formats``), written atomically by :func:`write_tables`.
``split`` holds the repeat / new-item tables, ``efficiency`` the parameters / time / memory
table and plot, ``command`` the ``run_benchmark.py table`` CLI (:func:`table_main`); ``marks``
the states, marks and precision they share.

Marking rule (documented in every table's footnote): values are compared as displayed, i.e.
rounded to ``decimals`` places, so a reader never sees equal numbers with different marks.
Every model with the highest displayed value is bold; every model with the next distinct
displayed value is underlined. A star is given only to a sole best model, and only when it
beats every runner-up (underlined model) with p < alpha in the paired test over users (each
user's value averaged over the seeds both models ran, n = users: ``mbrec.reporting.evidence``,
the rule ``compare`` uses too), with a positive mean difference. A dagger does the same with
the across-seed t-test on per-seed means (paired by seed), a separate result, which is only run
when both models share at least ``MIN_SEEDS_FOR_SEED_TEST`` seeds. A comparison that cannot be
tested (too few users, zero variance of the differences) gets no mark and says why.

This package re-exports the public names below, so ``from mbrec.reporting.tables import X``
is the one import the command line, ``compare`` and the tests need.
"""

from mbrec.reporting.tables.build import Cell, Comparison, ResultTable, apply_correction, build_table
from mbrec.reporting.tables.command import (
    add_statistics_arguments, build_table_parser, statistics_options, table_main,
)
from mbrec.reporting.tables.efficiency import (
    EfficiencyRow, efficiency_figure, efficiency_plot, efficiency_table, efficiency_to_csv, efficiency_to_markdown,
    write_efficiency,
)
from mbrec.reporting.tables.footnotes import SELECTION_NOTE
from mbrec.reporting.tables.formats import (
    CSV_FIELDS, comparisons_to_markdown, default_tables_dir, latex_escape, to_csv, to_latex, to_markdown,
    write_tables,
)
from mbrec.reporting.tables.marks import (
    DEFAULT_METRICS, DEFAULT_TASK, DISPLAY_DECIMALS, EMPTY, EMPTY_MARK, MISSING, MISSING_MARK, NA_MARK,
    NOT_APPLICABLE, P_VALUE_DIGITS, PERCENT, PERCENT_DECIMALS, UNKNOWN, UNKNOWN_MARK, VALUE,
)
from mbrec.reporting.tables.records import collect_records
from mbrec.reporting.tables.split import (
    PartCount, build_split_tables, repeat_counts, repeat_counts_to_markdown, split_repeat_to_markdown,
    write_split_tables,
)

__all__ = [
    "CSV_FIELDS", "DEFAULT_METRICS", "DEFAULT_TASK", "DISPLAY_DECIMALS", "EMPTY", "EMPTY_MARK", "MISSING",
    "MISSING_MARK", "NA_MARK", "NOT_APPLICABLE", "PERCENT", "PERCENT_DECIMALS", "P_VALUE_DIGITS", "SELECTION_NOTE",
    "UNKNOWN", "UNKNOWN_MARK", "VALUE", "Cell", "Comparison", "EfficiencyRow", "PartCount", "ResultTable",
    "add_statistics_arguments", "apply_correction", "build_split_tables", "build_table", "build_table_parser",
    "collect_records", "comparisons_to_markdown", "default_tables_dir", "efficiency_figure", "efficiency_plot", "efficiency_table",
    "efficiency_to_csv", "efficiency_to_markdown", "latex_escape", "repeat_counts", "repeat_counts_to_markdown",
    "split_repeat_to_markdown", "statistics_options", "table_main", "to_csv", "to_latex", "to_markdown",
    "write_efficiency", "write_split_tables", "write_tables",
]
