"""One run, end to end: prepare data -> config -> dataset -> model -> train -> test -> record.

Each arrow is one call; no step reaches back into an earlier one. Used by ``run_benchmark.py``.
"""

import argparse
import logging
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from mbrec import registry
from mbrec.registry import UnknownModelError
from mbrec.benchmark import results as store
from mbrec.benchmark.results import ResultsError
from mbrec.benchmark.trainer import Trainer, TrainingError
from mbrec.config import ConfigError, build_config, merge_layers, parse_overrides
from mbrec.data.dataset import DatasetError, MultiBehaviorSequentialDataset
from mbrec.data.prepare import LOCATION_KEYS, DataPreparationError, dataset_spec, prepare, read_meta
from mbrec.evaluation import Evaluator
from mbrec.utils import REPO_DIR, atomic_path, file_sha256

logger = logging.getLogger("mbrec")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
# Errors caused by the user's input (names, configs, data files): reported without a traceback.
USER_ERRORS = (DataPreparationError, ConfigError, DatasetError, ResultsError, UnknownModelError)
# Keys of the run settings that the data preparation step consumes.
PREPARE_SETTING_KEYS = ("heldout", "behaviors", "target_behavior")


def resolve_device(requested="auto"):
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def git_commit():
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_DIR,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions():
    import recbole

    import mbrec

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "recbole": recbole.__version__, "mbrec": mbrec.__version__}


def prepare_data(dataset, settings, data_path=None, cache_dir=None):
    """Prepare (or reuse) the dataset's atomic files with the run's preparation options."""
    spec = dataset_spec(dataset)
    overrides = {key: value for key, value in (settings.get("prepare") or {}).items() if key not in LOCATION_KEYS}
    overrides.update({key: settings[key] for key in PREPARE_SETTING_KEYS if key in settings})
    if "heldout" in overrides and "heldout" not in spec and spec["prepare"].get("format") != "matrices":
        overrides.pop("heldout")  # only format A has held-out items
    return spec["name"], prepare(spec["name"], data_path=data_path, cache_dir=cache_dir, **overrides)


class _RunLog:
    """Route the root logger (RecBole logs there too) to the run's log file for its duration.

    ``mode="a"`` appends (a retried tune trial keeps the log of its failed attempt).
    """

    def __init__(self, path, mode="w"):
        self.path = path
        self.mode = mode
        self.handler = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.path, mode=self.mode, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()


def plan_run(model, dataset, config_files=(), overrides=None, seed=None, data_path=None, cache_dir=None,
             results_dir=None):
    """Settings, prepared data, run key and record path of one run, without training.

    Returns ``types.SimpleNamespace`` with ``settings``, ``seed``, ``canonical``, ``dataset_dir``,
    ``key``, ``path``, ``results_dir``. Used by :func:`run` and by the Ray grid's driver (which
    skips stored runs before scheduling them).
    """
    settings = merge_layers(model, dataset, config_files, overrides)
    if seed is not None:
        settings["seed"] = int(seed)
    seed = int(settings["seed"])
    canonical, dataset_dir = prepare_data(dataset, settings, data_path, cache_dir)
    results_dir = results_dir or store.default_results_dir()
    key = store.run_key(model, dataset_dir.name, settings, seed, read_meta(dataset_dir).get("fingerprint"))
    path = store.record_path(results_dir, model, dataset_dir.name, seed, key)
    return SimpleNamespace(settings=settings, seed=seed, canonical=canonical, dataset_dir=dataset_dir, key=key,
                           path=path, results_dir=results_dir)


def run(model, dataset, config_files=(), overrides=None, seed=None, device="auto", data_path=None,
        cache_dir=None, results_dir=None, rerun=False):
    """Train and evaluate one (model, dataset, config, seed); return its results record.

    A stored record with the same key is returned as is unless ``rerun``.
    """
    model_class = registry.get_model_class(model)  # fail fast on unknown names
    plan = plan_run(model, dataset, config_files, overrides, seed, data_path, cache_dir, results_dir)
    settings, seed, canonical, dataset_dir = plan.settings, plan.seed, plan.canonical, plan.dataset_dir
    key, path, results_dir = plan.key, plan.path, plan.results_dir
    if path.exists() and not rerun:
        logger.info(f"found stored run {path}; skipping (use --rerun to train again)")
        return store.load_record(path)

    # One process trains a run at a time (parallel grids, Ray workers): a second one waits here,
    # then finds the record the first wrote.
    with store.run_lock(path):
        if path.exists() and not rerun:
            logger.info(f"another process stored run {path} meanwhile; skipping")
            return store.load_record(path)
        log_file = store.log_path(results_dir, model, dataset_dir.name, seed, key)
        with _RunLog(log_file):
            try:
                return _train_and_record(model, model_class, canonical, dataset_dir, settings, seed, device, key,
                                         path, log_file)
            except Exception as error:
                logger.error(f"run {key} failed: {type(error).__name__}: {error}", exc_info=True)  # into the log
                error.run_log = log_file  # the summary of a multi-run command points at it
                raise


def setup_run(model_class, dataset_dir, settings, seed, device, with_test=True):
    """Config, data splits and a freshly initialized model for one run, on ``device``.

    Shared by :func:`run` and the Ray Tune trials (``mbrec.benchmark.tune``), so that a
    trial trains exactly what the runner would. A trial passes ``with_test=False``: its
    ``test_data`` is None, so it cannot evaluate test even by mistake (test lock).

    Returns:
        ``types.SimpleNamespace`` with ``config``, ``dataset``, ``train_data``, ``valid_data``,
        ``test_data``, ``network``, ``n_parameters``, ``data_seconds``, ``device``.
    """
    from recbole.utils import init_seed

    device = resolve_device(device)
    config = build_config(model_class, dataset_dir, settings)
    config["device"] = device
    init_seed(seed, config["reproducibility"])
    logger.info(f"model={model_class.__name__} dataset={dataset_dir.name} seed={seed} device={device}")
    logger.info("settings:\n" + "\n".join(f"  {k}: {settings[k]}" for k in sorted(settings)))

    start = time.perf_counter()
    dataset = MultiBehaviorSequentialDataset(config)
    if with_test:
        train_data, valid_data, test_data = dataset.build()
    else:
        (train_data, valid_data), test_data = dataset.build(splits=("train", "valid")), None
    data_seconds = time.perf_counter() - start
    logger.info(f"data: {dataset.user_num - 1} users, {dataset.item_num - 1} items, {len(dataset.inter_feat)} "
                f"interactions; examples train {len(train_data.target_rows)} valid {len(valid_data.target_rows)} "
                f"test {len(test_data.target_rows) if with_test else 'not built'} ({data_seconds:.1f}s)")

    init_seed(seed, config["reproducibility"])
    network = model_class(config, train_data).to(device)
    n_parameters = sum(p.numel() for p in network.parameters())
    logger.info(f"{model_class.__name__}: {n_parameters} parameters")
    return SimpleNamespace(config=config, dataset=dataset, train_data=train_data, valid_data=valid_data,
                           test_data=test_data, network=network, n_parameters=n_parameters,
                           data_seconds=data_seconds, device=device)


def _train_and_record(model, model_class, canonical, dataset_dir, settings, seed, device, key, path, log_file):
    logger.info(f"run {key}: model={model} dataset={dataset_dir.name} seed={seed}")
    built = setup_run(model_class, dataset_dir, settings, seed, device)
    config, dataset, network, device = built.config, built.dataset, built.network, built.device
    train_data, valid_data, test_data = built.train_data, built.valid_data, built.test_data
    data_seconds, n_parameters = built.data_seconds, built.n_parameters
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    if settings.get("save_item_vectors"):
        _item_table(network, dataset.item_num)  # refuse before training, not after
    trainer_class = getattr(model_class, "trainer_class", Trainer)
    trainer = trainer_class(config, network, device)
    start = time.perf_counter()
    checkpoint = path.with_suffix(".pth")
    fit_summary = trainer.fit(train_data, valid_data, checkpoint)
    train_seconds = time.perf_counter() - start
    test_lock = _test_lock(checkpoint, config, fit_summary)

    start = time.perf_counter()
    tasks = list(config["eval_tasks"])
    valid_results = Evaluator(config).evaluate(network, valid_data, tasks=tasks, device=device)
    test_results = Evaluator(config).evaluate(network, test_data, tasks=tasks, device=device)  # the only time
    eval_seconds = time.perf_counter() - start
    sampling_spread = _sampling_spread(network, config, test_data, tasks, device, test_results)
    if settings.get("save_item_vectors"):
        save_item_vectors(network, dataset, Path(settings["save_item_vectors"]))
    checkpoint.unlink(missing_ok=True)  # the record is the product; weights are not kept (their hash is)

    train_epochs = [entry["train_seconds"] for entry in trainer.history]
    record = {
        "run_key": key,
        "model": model,
        "dataset": dataset_dir.name,
        "dataset_canonical": canonical,
        "heldout": settings.get("heldout"),
        "seed": seed,
        "config": settings,
        "data": {key_: read_meta(dataset_dir).get(key_) for key_ in ("fingerprint", "n_rows", "n_users", "n_items")}
        | {"users_after_filter": dataset.user_num - 1, "items": dataset.item_num - 1,
           "interactions": len(dataset.inter_feat), "behaviors": dataset.behavior_vocab,
           "target_behavior": config["target_behavior"]},
        "results": {task: (result.to_record() if result else None) for task, result in test_results.items()},
        "valid_results": {task: (result.metrics if result else None) for task, result in valid_results.items()},
        "training": fit_summary | {"history": trainer.history},
        "model_notes": getattr(network, "run_notes", None),  # what the model ran with (e.g. M3BSR: ID-only)
        "test_lock": test_lock,
        "sampling_spread": sampling_spread,
        "efficiency": {
            "parameters": n_parameters,
            "train_seconds": train_seconds,
            "train_seconds_per_epoch": float(np.mean(train_epochs)) if train_epochs else None,
            # share of training time the loop waited for batches (the device idles meanwhile)
            "data_wait_share": (sum(entry.get("data_wait_seconds", 0.0) for entry in trainer.history)
                                / sum(train_epochs)) if train_epochs and sum(train_epochs) > 0 else None,
            "eval_seconds": eval_seconds,
            "data_seconds": data_seconds,
            "peak_cpu_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "device": str(device),
        },
        "versions": versions(),
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
        "log_file": str(log_file),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    store.save_record(path, record)
    logger.info(f"wrote {path}")
    return record


def _sampling_spread(network, config, test_data, tasks, device, test_results):
    """How much test metrics move with the sampling noise alone (models with ``stochastic_inference``).

    The same selected weights are evaluated again under ``sampling_repeats`` further sampling
    seeds (the run's sampling seed + 1, + 2, ...). Nothing is selected on these numbers: the
    record's metrics stay those of the run's own sampling seed, which is the first value here.
    """
    repeats = int(config["sampling_repeats"] or 0)
    if repeats <= 0 or not getattr(network, "stochastic_inference", False):
        return None
    base_seed = network.sampling_seed
    seeds = [base_seed + offset for offset in range(repeats + 1)]
    per_seed = [{task: result.metrics for task, result in test_results.items() if result}]
    for seed in seeds[1:]:
        network.reseed_sampling(seed)
        results = Evaluator(config).evaluate(network, test_data, tasks=tasks, device=device)
        per_seed.append({task: result.metrics for task, result in results.items() if result})
    network.reseed_sampling(base_seed)
    spread = {"seeds": seeds, "tasks": {}}
    for task, metrics in per_seed[0].items():
        spread["tasks"][task] = {}
        for metric in metrics:
            values = [float(run_metrics[task][metric]) for run_metrics in per_seed]
            spread["tasks"][task][metric] = {"values": values, "mean": float(np.mean(values)),
                                             "std": float(np.std(values, ddof=1)),
                                             "range": float(max(values) - min(values))}
    valid_metric = config["valid_metric"].lower()
    for task, metrics in spread["tasks"].items():
        if valid_metric in metrics:
            entry = metrics[valid_metric]
            logger.info(f"sampling spread {task} {valid_metric} over seeds {seeds}: mean {entry['mean']:.4f} "
                        f"std {entry['std']:.4f} range {entry['range']:.4f}")
    return spread


def _item_table(network, n_items):
    """The model's ``item_embedding`` (one row per item, maybe more); a clear error if it has none."""
    table = getattr(network, "item_embedding", None)
    if not isinstance(table, torch.nn.Embedding):
        raise ConfigError(f"save_item_vectors: {type(network).__name__} has no item_embedding table to save")
    if table.num_embeddings < n_items:
        raise ConfigError(f"save_item_vectors: {type(network).__name__}'s item_embedding has "
                          f"{table.num_embeddings} rows for {n_items} items (not one row per item)")
    return table


def save_item_vectors(network, dataset, prefix):
    """Write the selected weights' item table as ``prefix.npy`` (``[n_items, d]``, row 0 padding) and
    ``prefix.ids`` (the item token of each row), the input MBGen's semantic IDs read
    (``item_vectors_file`` / ``item_vectors_ids``). Rows past ``n_items`` (a [mask] item) are dropped."""
    vectors = _item_table(network, dataset.item_num).weight.detach()[:dataset.item_num].float().cpu().numpy()
    tokens = [str(token) for token in dataset.field2id_token[dataset.iid_field]]
    with atomic_path(prefix.with_suffix(".npy")) as tmp, open(tmp, "wb") as handle:
        np.save(handle, vectors)
    with atomic_path(prefix.with_suffix(".ids")) as tmp:
        Path(tmp).write_text("\n".join(tokens) + "\n", encoding="utf-8")
    logger.info(f"item vectors [{vectors.shape[0]}, {vectors.shape[1]}] -> {prefix.with_suffix('.npy')}")


def _test_lock(checkpoint, config, fit_summary):
    """What selected the weights test is evaluated on: their checkpoint's sha256 and the valid score.

    Called after training and before test, so the hash names the weights test is run on.
    """
    if not checkpoint.exists():
        raise TrainingError(f"the trainer left no checkpoint at {checkpoint}; a trainer must write the "
                            f"selected weights there (see mbrec.benchmark.trainer)")
    return {"checkpoint_sha256": file_sha256(checkpoint), "selected_on": "valid",
            "valid_task": config["valid_task"], "valid_metric": str(config["valid_metric"]).lower(),
            "valid_value": fit_summary.get("best_valid_score"), "selected_epoch": fit_summary.get("best_epoch"),
            "test_evaluations": 1}


def format_summary(records, tasks=("behavior_specific", "target_behavior", "behavior_item", "next_item"),
                   metrics=("recall@10", "ndcg@10", "recall@20", "ndcg@20")):
    """A plain-text table of test metrics, one line per (run, task)."""
    header = f"{'model':<12} {'dataset':<16} {'seed':>5} {'task':<18} {'users':>6} " + " ".join(
        f"{m:>9}" for m in metrics)
    lines = [header, "-" * len(header)]
    for record in records:
        for task in tasks:
            result = record["results"].get(task, "absent")
            if result == "absent":
                continue
            if result is None:
                lines.append(f"{record['model']:<12} {record['dataset']:<16} {record['seed']:>5} {task:<18} "
                             f"{'':>6} " + " ".join(f"{'N/A':>9}" for _ in metrics))
                continue
            values = " ".join(f"{result['metrics'].get(m, float('nan')):>9.4f}" for m in metrics)
            lines.append(f"{record['model']:<12} {record['dataset']:<16} {record['seed']:>5} {task:<18} "
                         f"{result['n_users']:>6} {values}")
    return "\n".join(lines)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="run_benchmark.py",
        description="Train and evaluate multi-behavior sequential recommenders under one protocol. "
                    "`run_benchmark.py table --help` rebuilds comparison tables from stored results; "
                    "`run_benchmark.py compare --help` compares two stored runs user by user.",
        epilog="Extra arguments key=value (or --key=value) override any config entry, e.g. "
               "epochs=20 learning_rate=1e-3 prepare.size=medium.")
    parser.add_argument("--model", "--models", dest="models", nargs="+", default=["SASRec"],
                        help="model name(s): mbrec's and RecBole's sequential models")
    parser.add_argument("--dataset", "--datasets", dest="datasets", nargs="+", default=["synthetic"],
                        help="registered dataset name(s) (properties/dataset/*.yaml)")
    parser.add_argument("--seed", "--seeds", dest="seeds", nargs="+", type=int, default=[None],
                        help="random seed(s); default: the config's seed")
    parser.add_argument("--config", dest="config_files", nargs="+", default=[], help="extra YAML config file(s)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--data-path", help="root of the raw data (default: $MBREC_DATA_DIR)")
    parser.add_argument("--cache-dir", help="where prepared atomic files go (default: $MBREC_CACHE_DIR or "
                                            "~/.cache/mbrec)")
    parser.add_argument("--results-dir", help="default: results/ in the repository")
    parser.add_argument("--rerun", action="store_true", help="train again even if a stored record exists")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--list", action="store_true", help="list models and datasets and exit")
    grid = parser.add_argument_group("benchmark grid on Ray (pip install -e \".[tune]\"; see README 'Scaling up')")
    grid.add_argument("--ray-address", help="run every (model, dataset, seed) as a Ray task on this cluster "
                                            "(auto or HOST:PORT)")
    grid.add_argument("--workers", type=int, help="run the grid on a local Ray with this many runs at a time")
    grid.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs each run reserves (default 1)")
    grid.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs each run reserves (default 0)")
    grid.add_argument("--max-retries", type=int, default=3,
                      help="times a run whose worker died is retried (default 3)")
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "table":  # rebuild tables from stored results, no training
        from mbrec.benchmark.tables import table_main

        return table_main(argv[1:])
    if argv and argv[0] == "tune":  # Ray Tune sweep (optional extra: pip install -e ".[tune]")
        from mbrec.benchmark.tune import tune_main

        return tune_main(argv[1:])
    if argv and argv[0] == "compare":  # two stored runs, user by user, no training
        from mbrec.benchmark.compare import compare_main

        return compare_main(argv[1:])
    parser = build_parser()
    # key=value overrides may sit anywhere, also right after a list option (--models A B lr=1e-3).
    extra = [arg for arg in argv if "=" in arg and not arg.startswith("-")]
    args, unknown = parser.parse_known_args([arg for arg in argv if arg not in extra])
    extra += unknown
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    if args.list:
        print("models:  ", ", ".join(registry.model_names()))
        print("datasets:", ", ".join(registry.dataset_names()))
        return 0
    unknown_flags = [arg for arg in extra if arg.startswith("--") and "=" not in arg]
    if unknown_flags:
        parser.error(f"unrecognized arguments: {' '.join(unknown_flags)}")
    overrides = parse_overrides(extra)
    if args.no_progress:
        overrides["show_progress"] = False
    if args.ray_address or args.workers:
        from mbrec.benchmark.grid import run_grid
        from mbrec.benchmark.tune import TuneNotInstalledError

        try:
            records, failures = run_grid(args, overrides)
        except TuneNotInstalledError as error:  # Ray is an optional extra
            print(f"error: the grid runs on Ray: {error}", file=sys.stderr)
            return 2
        return _report(records, failures, args)
    records, failures = [], []
    for dataset in args.datasets:
        for model in args.models:
            for seed in args.seeds:
                try:
                    records.append(run(model, dataset, args.config_files, overrides, seed, args.device,
                                       args.data_path, args.cache_dir, args.results_dir, args.rerun))
                except USER_ERRORS as error:  # bad input: a clear message, no traceback
                    logger.error(f"{model} on {dataset} (seed {seed}): {error}")
                    failures.append((model, dataset, seed, error))
                except Exception as error:  # one failed run must not stop the others
                    if getattr(error, "run_log", None) is None:
                        logger.exception(f"{model} on {dataset} (seed {seed}) failed")
                    failures.append((model, dataset, seed, error))
    return _report(records, failures, args)


def _report(records, failures, args):
    """Summary, comparison table and the failed runs of a multi-run command; the exit status."""
    if records:
        print(format_summary(records))
    if len(records) + len(failures) > 1 and records:
        write_comparison_tables(records, args)
    for model, dataset, seed, error in failures:
        first_line = str(error).splitlines()[0] if str(error) else ""
        log = getattr(error, "run_log", None)
        print(f"FAILED {model} {dataset} seed={seed}: {type(error).__name__}: {first_line}"
              + (f"  (log: {log})" if log else ""), file=sys.stderr)
    return 1 if failures else 0


def write_comparison_tables(records, args):
    """The comparison table of this command's runs; a failed (model, dataset) is a marked hole."""
    from mbrec.benchmark.tables import build_table, default_tables_dir, to_markdown, write_tables

    table = build_table(records, models=args.models)
    print(to_markdown(table))
    for name, path in write_tables(table, default_tables_dir(args.results_dir)).items():
        print(f"wrote {name}: {path}")
