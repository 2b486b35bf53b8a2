"""Ray Tune sweeps: ``python run_benchmark.py tune --model M --dataset D [options] [key=value ...]``.

One sweep = one grid (:mod:`mbrec.benchmark.search_space`) on one (model, dataset):

1. The grid is read and its names checked against the model's config, the data prepared, and
   the sweep's spec written to ``results/sweeps/<dataset>/<model>/<name>/sweep.json``; all
   before Ray starts, so wrong input is a one-line error.
2. Ray Tune runs one trial per sampled config. A trial builds its run exactly as the runner
   does (:func:`mbrec.benchmark.runner.setup_run`), trains with the model's trainer and
   reports the valid metric after every validation (test is never evaluated in a trial).
   ASHA stops weak trials early. Each trial has its own folder (log, checkpoint, outcome);
   a trial that raises is recorded as failed and the sweep goes on.
3. The best config by valid metric is retrained and tested by the normal runner
   (:func:`mbrec.benchmark.runner.run`), stored as an ordinary results record that names the
   sweep (``selected_by``); the sweep summary (JSON + Markdown) and a sensitivity plot
   (valid metric against each swept parameter) are written beside ``sweep.json``.

Every trial's id and parameters are drawn by the driver when the sweep is planned (from the
sweep seed and the trial's index) and stored in ``sweep.json``. ``--resume`` continues an
interrupted sweep from the trials' own files, not Ray's saved state: a finished trial is kept
with its score and epochs, unfinished ones run with their stored parameters. Ray is an optional extra; this module imports it only when a sweep runs.

Modules: ``plan`` (everything checked before Ray starts: options, spec, sweep folder),
``trial`` (one trial, in a Ray worker), ``driver`` (running the sweep on Ray, reading its
trials, retraining the best; :func:`sweep` does it all), ``summary`` (summary JSON/Markdown
and the sensitivity plot) and ``command`` (``run_benchmark.py tune``). This package re-exports
their public names, so ``from mbrec.benchmark import tune`` is the one import callers need.

Imports: mbrec.benchmark.runner and search_space, mbrec.training, mbrec.registry, mbrec.config,
mbrec.results, mbrec.utils; Ray only inside functions.
"""

from mbrec.benchmark.tune.command import build_tune_parser, tune_main
from mbrec.benchmark.tune.driver import (
    RAY_ERROR_FILE, best_trial, collect_trials, connect_ray, retrain_best, run_sweep, sweep,
)
from mbrec.benchmark.tune.plan import (
    METRIC, MODE, NAME_HASH_LENGTH, OPTION_KEYS, RAY_INSTALL_HINT, SAMPLING_OPTION_KEYS, SCHEDULERS, SPEC_FILE,
    SPEC_VERSION, SWEEPS_DIRNAME, TRIALS_DIRNAME, TuneNotInstalledError, default_sweep_name, expected_trials,
    join_in_token_mode, plan_sweep, require_ray, space_of, sweep_dir_of, sweep_options,
)
from mbrec.benchmark.tune.summary import (
    LOG_AXIS_RATIO, PLOT_FILE, SUMMARY_JSON, SUMMARY_MD, build_summary, sensitivity_plot, summary_markdown,
    write_summary,
)
from mbrec.benchmark.tune.trial import (
    ATTEMPTS_FILE, CHECKPOINT_NAME, COMPLETED, FAILED, NOT_RUN, OUTCOME_FILE, STOPPED, TRIAL_LOG, train_trial,
    trial_dirname,
)

__all__ = [
    "ATTEMPTS_FILE", "CHECKPOINT_NAME", "COMPLETED", "FAILED", "LOG_AXIS_RATIO", "METRIC", "MODE",
    "NAME_HASH_LENGTH", "NOT_RUN", "OPTION_KEYS", "OUTCOME_FILE", "PLOT_FILE", "RAY_ERROR_FILE", "RAY_INSTALL_HINT",
    "SAMPLING_OPTION_KEYS", "SCHEDULERS", "SPEC_FILE", "SPEC_VERSION", "STOPPED", "SUMMARY_JSON", "SUMMARY_MD",
    "SWEEPS_DIRNAME", "TRIALS_DIRNAME", "TRIAL_LOG", "TuneNotInstalledError", "best_trial", "build_summary",
    "build_tune_parser", "collect_trials", "connect_ray", "default_sweep_name", "expected_trials",
    "join_in_token_mode", "plan_sweep",
    "require_ray", "retrain_best", "run_sweep", "sensitivity_plot", "space_of", "summary_markdown",
    "sweep", "sweep_dir_of", "sweep_options", "train_trial", "trial_dirname", "tune_main", "write_summary",
]
