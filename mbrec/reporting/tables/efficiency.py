"""The efficiency table and plot: parameters, train and eval time, peak memory per model x dataset
(means over seeds), as Markdown, CSV and a PNG of grouped bars."""

import csv
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mbrec.reporting.tables.formats import _markdown_row, _write_text, default_tables_dir
from mbrec.reporting.tables.marks import MISSING_MARK
from mbrec.utils import atomic_path

EFFICIENCY_DECIMALS = 2
EFFICIENCY_STEM = "efficiency"
PLOT_DPI = 120
PLOT_PANEL_WIDTH_INCHES = 4.5
PLOT_HEIGHT_INCHES = 3.5
BYTES_NOTE = "MB = 2^20 bytes"


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
    cpus: str = ""  # the processors the seconds were measured on (record "machine"); seconds across CPUs differ


# A record from before records named their machine (mbrec session 9).
UNRECORDED_CPU = "not recorded"

EFFICIENCY_COLUMNS = (
    ("model", "Model"), ("dataset", "Dataset"), ("n_seeds", "Seeds"), ("parameters", "Params"),
    ("train_seconds_per_epoch", "Train s/epoch"), ("train_seconds", "Train s"), ("eval_seconds", "Eval s"),
    ("peak_memory_mb", "Peak MB"), ("memory_kind", "Memory"), ("devices", "Device"), ("cpus", "CPU"),
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
        grouped[(record["dataset"], record["model"])].append(
            {**(record.get("efficiency") or {}), "cpu": (record.get("machine") or {}).get("cpu") or UNRECORDED_CPU})
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
            cpus=", ".join(sorted({run["cpu"] for run in runs})),
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
                  f"resident set of the run's process ({BYTES_NOTE}). CPU: the processor the seconds were "
                  f"measured on ({UNRECORDED_CPU}: a record from before records named it); seconds from two "
                  f"CPUs are not comparable."]
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
# What a panel or a bar says where runs have no value (rule-based models such as Pop do not train).
EMPTY_PANEL_TEXT = {"train_seconds_per_epoch": "no model here trains\n(rule-based: no epochs)"}
NO_VALUE_LABEL = {"train_seconds_per_epoch": "no training"}


def efficiency_plot(records, path):
    """Grouped bar charts (datasets x models) of time per epoch, eval time and peak memory, as PNG.

    Written atomically; returns ``path``. Needs matplotlib (Agg backend, no display).
    """
    import matplotlib.pyplot as plt

    figure = efficiency_figure(records)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=PLOT_DPI)
    plt.close(figure)
    return path


def efficiency_figure(records):
    """The matplotlib figure of :func:`efficiency_plot` (one panel per quantity).

    A panel where no run has a value (time per epoch when no model trains: Pop, Recent) shows a
    sentence instead of an empty 0-1 axis; a bar that is missing in a panel with others is
    labelled so, rather than left as a gap.
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
            for bar, height in zip(bars, heights):
                if height is None and any(getattr(row, name) is not None for row in rows):
                    axis.text(bar.get_x() + bar.get_width() / 2, 0, NO_VALUE_LABEL.get(name, "n/a"),
                              rotation=90, ha="center", va="bottom", fontsize="x-small")
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
        elif all(getattr(row, name) is None for row in rows):  # nothing to draw: no meaningless axis
            axis.set_axis_off()
            axis.text(0.5, 0.5, EMPTY_PANEL_TEXT.get(name, "no values"), ha="center", va="center",
                      transform=axis.transAxes)
    if models:
        axes[0].legend(fontsize="small")
    figure.tight_layout()
    return figure


def write_efficiency(records, out_dir=None, stem=EFFICIENCY_STEM, plot=True):
    """Write ``<stem>.md``, ``<stem>.csv`` and (``plot``) ``<stem>.png``; returns the paths."""
    out_dir = Path(out_dir) if out_dir else default_tables_dir()
    rows = efficiency_table(records)
    paths = {"md": _write_text(out_dir / f"{stem}.md", efficiency_to_markdown(rows)),
             "csv": _write_text(out_dir / f"{stem}.csv", efficiency_to_csv(rows))}
    if plot:
        paths["png"] = efficiency_plot(records, out_dir / f"{stem}.png")
    return paths
