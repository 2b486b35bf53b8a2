"""Planning a sweep: everything checked before Ray starts (the grid, its names against the model's
config, the sweep options, the data), the sweep's spec and folder, and Ray's parameter space."""

import copy
import hashlib
import json
import logging
import math
import os
import sys
from pathlib import Path

from mbrec import registry
from mbrec import results as store
from mbrec.benchmark.runner import prepare_data
from mbrec.benchmark.search_space import (Param, SearchSpace, check_names, default_grid_file, draw_trials,
                                          load_search_space, sweep_defaults)
from mbrec.config import ConfigError, build_config, merge_layers
from mbrec.data.declarations import declared_dataset_files
from mbrec.utils import data_dir

logger = logging.getLogger("mbrec")

RAY_INSTALL_HINT = ('Ray Tune is not installed; sweeps need the optional extra: pip install -e ".[tune]" '
                    '(or pip install "ray[tune]>=2.40")')
SWEEPS_DIRNAME = "sweeps"
TRIALS_DIRNAME = "trials"        # Ray's experiment folder inside the sweep folder
SPEC_FILE = "sweep.json"         # what the sweep runs; written before Ray starts, read by --resume
METRIC = "valid_score"           # the key trials report; the config's valid_metric on valid_task
MODE = "max"                     # every valid_metric (Recall, NDCG, MRR) is better when higher
SPEC_VERSION = 2  # 2: trials drawn by the driver (spec["trials"]), space_order
NAME_HASH_LENGTH = 8
OPTION_KEYS = ("num_samples", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "scheduler", "grace_period",
               "reduction_factor", "max_failures", "local_num_cpus")
SAMPLING_OPTION_KEYS = ("num_samples", "scheduler", "grace_period", "reduction_factor")
SCHEDULERS = ("asha", "fifo")


RAY_AUTH_MODE_ENV = "RAY_AUTH_MODE"
# Where `ray start --head` writes the cluster's token (Ray's default; RAY_AUTH_TOKEN_PATH moves it).
RAY_TOKEN_FILE = Path.home() / ".ray" / "auth_token"


def join_in_token_mode(address):
    """Join the cluster at ``address`` in token mode when a token is at hand; True when set here.

    Ray 2.60 runs `ray start --head` with token authentication once a token exists
    (``~/.ray/auth_token``, which any local ``ray.init()`` writes), but a driver joining an explicit
    address only sends the token in token mode (``RAY_AUTH_MODE=token``), and Ray reads that mode
    when it is imported. With ``RAY_AUTH_MODE`` unset and a token available (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), token mode is set, and Ray's cached config is
    refreshed as Ray itself does for a local cluster. A token-mode driver also joins a cluster
    without authentication.
    """
    if not address or os.environ.get(RAY_AUTH_MODE_ENV):
        return False
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or RAY_TOKEN_FILE)
    if not (os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()):
        return False
    os.environ[RAY_AUTH_MODE_ENV] = "token"
    if "ray" in sys.modules:  # already imported: its config cached the old mode
        try:
            from ray._raylet import Config

            Config.initialize("")
        except (ImportError, AttributeError):  # another Ray version: the error line names the variable
            pass
    logger.info(f"joining {address} with token authentication ({RAY_AUTH_MODE_ENV}=token)")
    return True


class TuneNotInstalledError(RuntimeError):
    """Ray Tune is missing; the message says how to install it."""


def require_ray():
    """Import Ray and Ray Tune, or raise :class:`TuneNotInstalledError` with the install command."""
    try:
        import ray
        from ray import tune
    except ImportError as error:
        raise TuneNotInstalledError(f"{RAY_INSTALL_HINT} ({error})") from None
    return ray, tune


def sweep_options(space, cli_options=None):
    """Sweep options: ``properties/tune.yaml`` < the grid's ``tune:`` block < command-line flags."""
    options = dict(sweep_defaults())
    for source, layer in (("the grid file's 'tune:' block", space.options),
                          ("the command line", {k: v for k, v in (cli_options or {}).items() if v is not None})):
        unknown = sorted(set(layer) - set(OPTION_KEYS))
        if unknown:
            raise ConfigError(f"Unknown sweep option(s) {unknown} in {source}; valid: {list(OPTION_KEYS)}")
        options.update(layer)
    if options["scheduler"] not in SCHEDULERS:
        raise ConfigError(f"Unknown scheduler '{options['scheduler']}'; use one of {list(SCHEDULERS)}")
    for key in ("num_samples", "cpus_per_trial", "grace_period", "reduction_factor"):
        if not float(options[key]) > 0:
            raise ConfigError(f"Sweep option {key} must be > 0, got {options[key]}")
    return options


def plan_sweep(model, dataset, grid=None, config_files=(), overrides=None, seed=None, epochs=None,
               cli_options=None, name=None, device="auto", data_path=None, cache_dir=None, results_dir=None,
               command_models=()):
    """Check a sweep's inputs and return its spec (a JSON-able dict) and its folder.

    ``command_models``: the other models of the same command or suite (a shared override one of them
    knows is not refused as misspelt; see :func:`mbrec.config.merge_layers`).

    Raises ConfigError (and the runner's other user errors) on an unknown model, dataset,
    grid file, grid parameter or sweep option; prepares the dataset so trials find it cached.
    """
    model_class = registry.get_model_class(model)
    grid_file = Path(grid) if grid else default_grid_file(model)
    if not grid and not grid_file.is_file():
        raise ConfigError(f"No grid for {model}: write {grid_file} (format: README, 'Sweeps') or pass --grid FILE")
    space = load_search_space(grid_file)
    options = sweep_options(space, cli_options)
    overrides = copy.deepcopy(overrides or {})
    if epochs is not None:
        overrides["epochs"] = int(epochs)
    if seed is not None:
        overrides["seed"] = int(seed)
    settings = merge_layers(model, dataset, config_files, overrides, command_models)
    _, dataset_dir = prepare_data(dataset, settings, data_path, cache_dir)
    config = build_config(model_class, dataset_dir, settings)
    check_names(space, settings, config.final_config_dict, model)
    # ASHA counts validations (one tune.report each); this many happen at most.
    eval_step = max(1, int(settings["eval_step"]))
    max_validations = max(1, math.ceil(int(settings["epochs"]) / eval_step))
    # The model's stopping floor says its valid scores before that epoch say nothing yet (a Cloze or
    # staged model's first plateau sits at Pop's level): ASHA may not stop a trial on them either, so
    # its grace period counts the validations after the floor. A trial ASHA stopped at the floor would
    # be judged on noise, which is what patience alone did before the floor existed.
    floor = settings.get("stopping_min_epochs") or 0
    floor = max(floor.values(), default=0) if isinstance(floor, dict) else floor  # per stage: the longest
    floor_validations = math.ceil(int(floor or 0) / eval_step)
    spec = {
        "spec_version": SPEC_VERSION,
        "model": model,
        "dataset": dataset,
        "dataset_dir": dataset_dir.name,
        "grid_file": str(grid_file.resolve()),
        "space": space.to_dict(),
        "space_order": list(space.params),  # sweep.json sorts keys; columns keep the grid file's order
        "options": options,
        "overrides": overrides,
        "config_files": [str(Path(path).resolve()) for path in config_files],
        "command_models": list(command_models),  # not in the sweep's name: it changes no setting
        # the user's dataset declarations (--dataset-file), for trials and --resume
        "dataset_files": [str(path) for path in sorted(declared_dataset_files().values())],
        "seed": int(settings["seed"]),
        "epochs": int(settings["epochs"]),
        "max_validations": max_validations,
        # the validations ASHA waits before its first rung: grace_period after the model's stopping floor
        "asha_grace": int(options["grace_period"]) + floor_validations,
        "floor_validations": floor_validations,
        "valid_metric": str(settings["valid_metric"]).lower(),
        "valid_task": settings["valid_task"],
        "device": device,
        # resolved here so that every node reads the driver's path, not its own environment's
        "data_path": str(data_dir(data_path)) if data_dir(data_path) else None,
        "cache_dir": str(cache_dir) if cache_dir else None,
        "results_dir": str(Path(results_dir or store.default_results_dir()).resolve()),
    }
    # Every trial's id and parameters, fixed before any trial starts (the same on --resume).
    trials = draw_trials(space, options["num_samples"], spec["seed"])
    spec["trials"] = [{"trial_id": trial_id, "params": params} for trial_id, params in trials]
    # Distinct draws name a sweep anew only where they change its trials: a sweep whose independent
    # draws were already distinct keeps its name (and its stored results); one that repeated a
    # configuration is a different sweep now.
    spec["draw"] = ("independent" if trials == draw_trials(space, options["num_samples"], spec["seed"], distinct=False)
                    else DISTINCT_DRAW)
    spec["name"] = name or default_sweep_name(grid_file, spec)
    if options["scheduler"] == "asha" and spec["asha_grace"] >= max_validations:
        after_floor = (f" after the stopping floor's {floor_validations} validation(s)" if floor_validations else "")
        logger.warning(f"ASHA cannot stop any trial: grace_period {options['grace_period']}{after_floor} >= the "
                       f"{max_validations} validation(s) a trial makes (epochs / eval_step); lower --grace-period or "
                       f"use --scheduler fifo")
    return spec, sweep_dir_of(spec)


# How trials were drawn when that changed the draws (see ``draw_trials``); part of the sweep's name.
DISTINCT_DRAW = "distinct"


def default_sweep_name(grid_file, spec):
    """``<grid stem>-<hash>``: the same command names the same sweep, so ``--resume`` finds it."""
    identity = {key: spec[key] for key in ("model", "dataset", "dataset_dir", "space", "overrides", "config_files",
                                          "seed")}
    # Options that change which trials run; resources and retries may differ on --resume.
    identity["options"] = {key: spec["options"][key] for key in SAMPLING_OPTION_KEYS}
    if spec.get("draw") == DISTINCT_DRAW:
        identity["draw"] = DISTINCT_DRAW
    # ASHA's grace counted after the stopping floor changed which trials such a sweep stops; sweeps of
    # models without a floor keep their names
    if spec.get("floor_validations"):
        identity["asha_grace_after_floor"] = spec["floor_validations"]
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode("utf-8")).hexdigest()
    return f"{Path(grid_file).stem}-{digest[:NAME_HASH_LENGTH]}"


def sweep_dir_of(spec):
    return Path(spec["results_dir"]) / SWEEPS_DIRNAME / spec["dataset_dir"] / spec["model"] / spec["name"]


def space_of(spec):
    """The spec's search space (stored as ``{name: {kind: values}}``), in the grid file's order."""
    order = spec.get("space_order") or list(spec["space"])
    return SearchSpace({name: Param(name, *next(iter(spec["space"][name].items()))) for name in order})


def trial_params(spec):
    """trial id -> the swept parameters of that trial (drawn when the sweep was planned), in the
    grid file's order (sweep.json sorts keys), so logs read the same before and after a resume."""
    names = [param.name for param in space_of(spec).swept]
    return {trial["trial_id"]: {name: trial["params"][name] for name in names} for trial in spec["trials"]}


def expected_trials(spec):
    """Trials the sweep makes in all: every grid point ``num_samples`` times (at most one trial per
    distinct configuration of a finite space, see ``draw_trials``)."""
    return len(spec["trials"])
