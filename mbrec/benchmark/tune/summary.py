"""A sweep's summary (JSON and Markdown) and its sensitivity plot (valid metric against each swept
parameter).

Reporting-like, but it reads a sweep's trial outcomes (``collect_trials``), not the results
store's records, so it lives here under mbrec/benchmark/ and not in mbrec/reporting/.
"""

import sys
from datetime import datetime, timezone

from mbrec.benchmark.tune.plan import MODE
from mbrec.benchmark.tune.trial import COMPLETED, FAILED, NOT_RUN, STOPPED
from mbrec.utils import atomic_path, write_json_atomic

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
PLOT_FILE = "sensitivity.png"
PLOT_DPI = 120
PLOT_PANEL_INCHES = 3.6
# A numeric parameter whose values span this ratio or more is drawn on a log axis (a log-uniform one always is).
LOG_AXIS_RATIO = 100


def build_summary(spec, trials, best, final=None, final_error=None, unfinished=0):
    """The sweep summary as a JSON-able dict (see :func:`write_summary`).

    ``unfinished`` counts trials not finished yet (also those Ray had not created when interrupted);
    a summary with ``interrupted: true`` has no retrained best config.
    """
    counts = {status: sum(trial["status"] == status for trial in trials) for status in (COMPLETED, STOPPED, FAILED)}
    counts[NOT_RUN] = unfinished
    summary = {
        "sweep": spec["name"], "model": spec["model"], "dataset": spec["dataset_dir"],
        "valid_metric": spec["valid_metric"], "valid_task": spec["valid_task"], "mode": MODE,
        "grid_file": spec["grid_file"], "space": spec["space"], "options": spec["options"],
        # columns in the grid file's order (sweep.json sorts its keys), the same after --resume
        "columns": [name for name in spec.get("space_order") or spec["space"]
                    if "same_as" not in spec["space"][name]],
        "overrides": spec["overrides"], "seed": spec["seed"], "epochs": spec["epochs"],
        "command": " ".join(sys.argv), "trial_counts": counts, "interrupted": unfinished > 0, "trials": trials,
        "best": best, "final": None, "final_error": final_error,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if final is not None:
        record, path = final
        task = spec["valid_task"]
        summary["final"] = {
            "record": str(path), "run_key": record["run_key"], "log": record.get("log_file"),
            "valid": (record.get("valid_results") or {}).get(task),
            "test": ((record.get("results") or {}).get(task) or {}).get("metrics"),
        }
    return summary


def summary_markdown(summary):
    metric = f"{summary['valid_task']} {summary['valid_metric']}"
    swept = summary["columns"]
    lines = [f"# Sweep {summary['sweep']}: {summary['model']} on {summary['dataset']}", "",
             f"- command: `{summary['command']}`",
             f"- grid: `{summary['grid_file']}`; scheduler {summary['options']['scheduler']}, "
             f"{summary['options']['num_samples']} sample(s) per grid point, {summary['epochs']} epochs max, "
             f"seed {summary['seed']}",
             f"- selection: best valid {metric} (test never evaluated in trials)",
             "- trials: " + ", ".join(f"{n} {status}" for status, n in summary["trial_counts"].items() if n)
             + (" (interrupted: continue with --resume)" if summary["interrupted"] else "")]
    best = summary["best"]
    if best:
        lines.append(f"- best: trial {best['trial_id']} valid {best['best_valid']:.4f} with "
                     + ", ".join(f"{k}={v}" for k, v in best["params"].items()))
    final = summary["final"]
    if final:
        test = final["test"] or {}
        lines.append(f"- retrained by the runner: `{final['record']}`; test "
                     + ", ".join(f"{k} {v:.4f}" for k, v in sorted(test.items()) if k.endswith(("@10", "@20"))))
    if summary["final_error"]:
        lines.append(f"- retraining the best config failed: {summary['final_error']}")
    lines += ["", "| trial | " + " | ".join(swept) + f" | best valid {summary['valid_metric']} | epochs | status |",
              "|---|" + "---|" * len(swept) + "---:|---:|---|"]
    ranked = sorted(summary["trials"], key=lambda t: (t["best_valid"] is None, -(t["best_valid"] or 0.0)))
    for trial in ranked:
        score = f"{trial['best_valid']:.4f}" if trial["best_valid"] is not None else "-"
        if best and trial["trial_id"] == best["trial_id"]:
            score = f"**{score}**"
        status = trial["status"] + (f": {trial['error']} (log: `{trial['log']}`)" if trial["error"] else "")
        if len(trial.get("history") or []) > 1:  # --retry-failed or a lost worker: every attempt, in order
            status += " (attempts: " + ", ".join(attempt["status"] for attempt in trial["history"]) + ")"
        lines.append(f"| {trial['trial_id']} | " + " | ".join(str(trial["params"].get(name)) for name in swept)
                     + f" | {score} | {trial['epochs_run']} | {status} |")
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir, summary):
    """Write ``summary.json``, ``summary.md`` and ``sensitivity.png`` atomically; return their paths."""
    write_json_atomic(sweep_dir / SUMMARY_JSON, summary)
    with atomic_path(sweep_dir / SUMMARY_MD) as tmp:
        tmp.write_text(summary_markdown(summary), encoding="utf-8")
    plot = sensitivity_plot(summary, sweep_dir / PLOT_FILE)
    return [sweep_dir / SUMMARY_JSON, sweep_dir / SUMMARY_MD] + ([plot] if plot else [])


def sensitivity_plot(summary, path):
    """Valid metric against each swept parameter, one panel each (like FatsMB's Figure 8).

    Each point is a trial (its best valid score); the line joins the mean per value. Returns
    the path, or None when no trial has a score.
    """
    import matplotlib.pyplot as plt

    figure = sensitivity_figure(summary)
    if figure is None:
        return None
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=PLOT_DPI)
    plt.close(figure)
    return path


def sensitivity_figure(summary):
    """The figure :func:`sensitivity_plot` saves (None when no trial has a score); stopped-early
    trials are hollow red circles, apart from completed ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [trial for trial in summary["trials"] if trial["best_valid"] is not None and trial["status"] != FAILED]
    names = summary["columns"]
    if not scored or not names:
        return None
    figure, axes = plt.subplots(1, len(names), figsize=(PLOT_PANEL_INCHES * len(names), PLOT_PANEL_INCHES),
                                squeeze=False)
    for axis, name in zip(axes[0], names):
        values = [trial["params"].get(name) for trial in scored]
        scores = [trial["best_valid"] for trial in scored]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            xs = values
            # drawn log-uniformly: a log axis whatever the span; other positive values when they span a lot
            if "loguniform" in summary["space"][name] or (
                    min(values) > 0 and max(values) / min(values) >= LOG_AXIS_RATIO):
                axis.set_xscale("log")
        else:  # categories at 0, 1, 2, ... in first-seen order
            labels = list(dict.fromkeys(str(v) for v in values))
            xs = [labels.index(str(v)) for v in values]
            axis.set_xticks(range(len(labels)), labels)
        stopped = [trial["status"] == STOPPED for trial in scored]
        for marks_stopped, style in ((False, {"label": "completed"}),
                                     (True, {"facecolors": "none", "edgecolors": "C3", "label": "stopped early"})):
            chosen = [(x, score) for x, score, is_stopped in zip(xs, scores, stopped) if is_stopped == marks_stopped]
            if chosen:
                axis.scatter(*zip(*chosen), alpha=0.7, **style)
        if any(stopped):
            axis.legend(fontsize="small")
        by_value = {}
        for x, score in zip(xs, scores):
            by_value.setdefault(x, []).append(score)
        if 1 < len(by_value) < len(xs):  # repeated values (a grid): join their means
            ordered = sorted(by_value)
            axis.plot(ordered, [sum(by_value[x]) / len(by_value[x]) for x in ordered], marker="o")
        axis.set_xlabel(name)
        axis.set_ylabel(f"valid {summary['valid_metric']}")
        axis.grid(alpha=0.3)
    figure.suptitle(f"{summary['model']} on {summary['dataset']}: sweep {summary['sweep']}")
    figure.tight_layout()
    return figure
