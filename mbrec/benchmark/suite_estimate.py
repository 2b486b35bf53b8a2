"""How long a suite's remaining steps will take, from what the suite stored (used by
:mod:`mbrec.benchmark.suite` for its plan lines and progress line).

Imports: mbrec.suite_costs only.
"""

from mbrec import suite_costs


class Estimator:
    """Seconds a step will take, from the suite's finished work: the stored runs' records (train + eval
    + data seconds) and the stored sweeps' trial times. A step is estimated from its own entry's
    evidence on the same dataset variant, else its family's (an ablation and the entry it was tuned
    from), else its entry's and then its family's on another variant; runs and sweep trials alike, the
    closest first. A sweep counts ``trials`` times the trial estimate (from trials first; an upper
    bound from runs, since ASHA stops trials early). A step with no evidence of its own model has no
    estimate: another model's time says nothing (a DiffuRec epoch costs 20-40x SASRec's here), and the
    progress line names the entries it could not count. ``add`` takes a run finished while the suite
    runs."""

    def __init__(self, run_seconds=(), trial_seconds=(), families=None):
        self.families = dict(families or {})
        self.pools = {"run": {}, "trial": {}}
        for (entry, dataset), seconds in run_seconds:
            self.add(entry, dataset, seconds)
        for (entry, dataset), seconds in trial_seconds:
            self.add(entry, dataset, seconds, kind="trial")

    def add(self, entry, dataset, seconds, kind="run"):
        self.pools[kind].setdefault((entry, dataset), []).append(seconds)

    def family(self, entry):
        return self.families.get(entry, entry)

    def _seconds(self, entry, dataset, kinds):
        family = self.family(entry)
        levels = (lambda e, d: e == entry and d == dataset, lambda e, d: self.family(e) == family and d == dataset,
                  lambda e, d: e == entry, lambda e, d: self.family(e) == family)
        for matches in levels:
            for kind in kinds:
                pool = [value for (e, d), values in self.pools[kind].items() if matches(e, d) for value in values]
                if pool:
                    return sum(pool) / len(pool)
        return None

    def run_seconds(self, entry, dataset):
        return self._seconds(entry, dataset, ("run", "trial"))

    def sweep_seconds(self, entry, dataset, trials):
        one = self._seconds(entry, dataset, ("trial", "run"))
        return None if one is None else trials * one

    def describe(self, pending_runs, pending_sweeps, trials):
        estimates = [(step, self.run_seconds(step.entry.name, step.dataset)) for step in pending_runs]
        estimates += [(step, self.sweep_seconds(step.entry.name, step.dataset, trials)) for step in pending_sweeps]
        if not estimates:
            return "nothing left"
        known = [value for _, value in estimates if value is not None]
        if not known:
            return "no estimate yet (no finished run or sweep trial of these entries)"
        text = f"about {sum(known) / suite_costs.SECONDS_PER_HOUR:.2f} core-hours left"
        unknown = sorted({step.entry.name for step, value in estimates if value is None})
        if not unknown:
            return text
        return (text + f" for {len(known)} of {len(estimates)} steps; not counted, no run or trial of their "
                f"model yet: {', '.join(unknown)}")


def duration(seconds):
    """A plan line's estimate: minutes, or hours past two (``~0 min`` would read as free)."""
    if seconds < 60:
        return "<1 min"
    return f"~{seconds / 60:.0f} min" if seconds < 2 * 3600 else f"~{seconds / 3600:.1f} h"
