"""Repeat-target and new-item-target tables: one table per part of the test users (target item in
/ not in the input window), corrected as one family, with the users per part."""

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mbrec.reporting.stats import NEW, PARTS, REPEAT, repeat_flags
from mbrec.reporting.tables.build import apply_correction, build_table
from mbrec.reporting.tables.formats import (
    _markdown_row, _write_text, default_tables_dir, to_csv, to_latex, to_markdown,
)
from mbrec.reporting.tables.marks import MISSING_MARK, PERCENT, UNKNOWN_MARK
from mbrec.reporting.tables.records import _newest_per_run

PART_TITLES = {REPEAT: "Repeat targets (target item in the input window)",
               NEW: "New-item targets (target item not in the input window)"}


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
