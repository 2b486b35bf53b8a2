"""What a suite's runs and sweeps took, read from the files they left (nothing is measured here).

- A stored run: its record's train + eval + data seconds (``efficiency``).
- A sweep: the seconds of each of its trials, ``trials[i].seconds`` in the sweep's ``summary.json``
  (each trial's wall time over its attempts, measured by the trial itself). Summaries written
  before trials were timed have no ``seconds``: such a sweep is reported as untimed, never guessed.

Standard library and the results store only, because both the suite runner (its progress
estimate) and reporting (the README's cost table, which may not import the benchmark package)
read it.
"""

from dataclasses import dataclass, field
from pathlib import Path

from mbrec import results as store
from mbrec.utils import read_json_or_none
from mbrec.suites import entry_annotations

# The benchmark's names for the sweep folder, its files and an unstarted trial
# (mbrec.benchmark.tune); repeated because reporting must not import the benchmark package.
SWEEPS_DIRNAME, SUMMARY_JSON, SPEC_JSON = "sweeps", "summary.json", "sweep.json"
TRIAL_NOT_RUN = "unfinished"
RUN_SECONDS_KEYS = ("train_seconds", "eval_seconds", "data_seconds")
SECONDS_PER_HOUR = 3600.0


def record_seconds(record):
    """A run's cost in seconds: train + eval + data (0 for a part the record lacks)."""
    efficiency = record.get("efficiency") or {}
    return sum(float(efficiency.get(key) or 0.0) for key in RUN_SECONDS_KEYS)


@dataclass
class SweepCost:
    """One sweep folder's cost. ``dataset`` is the dataset variant it ran on (``sweep.json``)."""

    sweep: str
    model: str
    dataset: str
    finished: bool  # not interrupted, with a selection
    trials_run: int  # trials that started (not ``unfinished``)
    cpus_per_trial: float
    trial_seconds: list = field(default_factory=list)  # of the trials that have their time
    untimed_trials: int = 0  # trials that ran but whose time the summary does not hold

    @property
    def timed(self):
        return self.untimed_trials == 0

    @property
    def core_hours(self):
        return sum(self.trial_seconds) * self.cpus_per_trial / SECONDS_PER_HOUR


def sweep_costs(results_dir):
    """:class:`SweepCost` of every sweep under ``<results_dir>/sweeps/`` with a summary, in path order."""
    costs = []
    for summary_file in sorted(Path(results_dir).glob(f"{SWEEPS_DIRNAME}/*/*/*/{SUMMARY_JSON}")):
        summary = read_json_or_none(summary_file)
        if not isinstance(summary, dict):
            continue
        spec = read_json_or_none(summary_file.with_name(SPEC_JSON)) or {}
        options = summary.get("options") or spec.get("options") or {}
        cost = SweepCost(sweep=str(summary.get("sweep", summary_file.parent.name)),
                         model=str(summary.get("model", spec.get("model"))),
                         dataset=str(spec.get("dataset", summary.get("dataset"))),
                         finished=bool(summary.get("best")) and not summary.get("interrupted"),
                         trials_run=0, cpus_per_trial=float(options.get("cpus_per_trial") or 1.0))
        for trial in summary.get("trials") or []:
            if trial.get("status") == TRIAL_NOT_RUN and trial.get("seconds") is None:
                continue
            cost.trials_run += 1
            if trial.get("seconds") is None:
                cost.untimed_trials += 1
            else:
                cost.trial_seconds.append(float(trial["seconds"]))
        costs.append(cost)
    return costs


def suite_run_seconds(suite_name, results_dir):
    """``[((entry, dataset variant), seconds, path)]`` of every stored record naming suite ``suite_name``
    (any entry and variant, also those outside a partial run); unreadable records are skipped."""
    found = []
    for path in store.record_files(Path(results_dir) / "runs"):
        try:
            record = store.load_record(path)
        except (store.ResultsError, OSError, ValueError):
            continue
        found += [(mark, record_seconds(record), path) for mark in entry_annotations(record, suite_name)]
    return found
