"""Rendering a built table: Markdown (with the comparisons' effect sizes), LaTeX (booktabs) and
long-form CSV, and writing the three atomically."""

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from mbrec.results import default_results_dir
from mbrec.reporting.evidence import BOOTSTRAP_RULE, user_level_description
from mbrec.reporting.stats import CORRECTION_NAMES, DEFAULT_CONFIDENCE, p_value_text
from mbrec.reporting.tables.marks import (
    BASELINE_GROUP, CAP_MARK, EMPTY_MARK, GROUP_HEADINGS, IMPROVE_GROUP, IMPROVE_LABEL, MISSING, MISSING_MARK, NA_MARK,
    NOT_APPLICABLE, EMPTY, P_VALUE_DIGITS, PERCENT, PERCENT_DECIMALS, PROPOSED_GROUP, STAR_MARK, UNKNOWN,
    UNKNOWN_MARK, VALUE,
)
from mbrec.utils import atomic_path

LATEX_MISSING_MARK = "--"


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
    cap: str = CAP_MARK


_MARKDOWN = _Style(bold="**{}**", underline="<u>{}</u>", star="\\*", dagger="†", plus_minus=" ± ",
                   missing=MISSING_MARK, not_applicable=NA_MARK, percent="%")
_LATEX = _Style(bold="\\textbf{{{}}}", underline="\\underline{{{}}}", star="$^{*}$", dagger="$^{\\dagger}$",
                cap="$^{\\ddagger}$",
                plus_minus="$\\pm$", missing=LATEX_MISSING_MARK, not_applicable=NA_MARK, percent="\\%")
_LATEX_SPECIAL = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_",
                  "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}",
                  "†": "$^{\\dagger}$", "‡": "$^{\\ddagger}$",
                  "±": "$\\pm$", "—": "--", "≥": "$\\geq$", "<": "$<$", ">": "$>$"}


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
    if cell.capped:
        text += style.cap
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
              "p", f"p ({correction})", "Users", "p (seeds)"]
    lines = [f"Effect sizes of the tested comparisons: mean paired difference (best - runner-up) over "
             f"users, {confidence:.0%} {BOOTSTRAP_RULE}; relative = "
             f"difference / runner-up mean; p: {user_level_description(table.test)}; p (seeds): the "
             f"across-seed t-test on per-seed means (n = shared seeds), uncorrected here.", "",
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
            p_value_text(test, P_VALUE_DIGITS) or MISSING_MARK, _p_text(comparison.user_p_adjusted),
            str(test.n) if test else MISSING_MARK, p_value_text(comparison.seed_test, P_VALUE_DIGITS) or MISSING_MARK,
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


CSV_FIELDS = ("group", "model", "dataset", "metric", "status", "mean", "std", "n_seeds", "seeds", "mark", "capped",
              "star", "seed_star", "compared_with", "p_user", "p_seed", "part", "test", "correction",
              "p_user_adjusted", "p_seed_adjusted", "difference", "ci_low", "ci_high", "relative", "n_users",
              "p_user_note", "p_seed_note")


def _number(value):
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))


def to_csv(table):
    """The table in long form, one line per (model, dataset, metric) plus the Improve lines.

    ``status`` is value/na/missing; ``mark`` is best/second; ``star`` / ``seed_star`` are 1/0;
    ``p_user`` / ``p_seed`` are the best cell's raw test p-values against ``compared_with``,
    ``p_*_adjusted`` the corrected ones; ``difference`` [``ci_low``, ``ci_high``] and
    ``relative`` the effect size over ``n_users`` users (each averaged over the common seeds);
    ``p_*_note`` says why a test has no p-value (or p = 1 for identical values); ``part`` is empty (all
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
                "capped": int(cell.capped),
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
                "n_users": cell.user_test.n if cell.user_test else "",
                "p_user_note": cell.user_test.reason if cell.user_test else "",
                "p_seed_note": cell.seed_test.reason if cell.seed_test else "",
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
