"""One run, end to end: prepare data -> config -> dataset -> model -> train -> test -> record.

Each arrow is one call; no step reaches back into an earlier one. Used by ``run_benchmark.py``.
"""

import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from mbrec import registry, utils
from mbrec.registry import UnknownModelError
from mbrec import results as store
from mbrec.results import ResultsError
from mbrec.training.resume import resume_path_of
from mbrec.training.trainer import Trainer, TrainingError
from mbrec.config import ConfigError, base_dataset, build_config, check_train_unit, merge_layers
from mbrec.data.dataset import DatasetError, MultiBehaviorSequentialDataset
from mbrec.data.prepare import LOCATION_KEYS, DataPreparationError, dataset_spec, prepare, read_meta
from mbrec.evaluation import Evaluator
from mbrec.benchmark import integrity
from mbrec.benchmark.memory import PeakRSS
from mbrec.utils import REPO_DIR, atomic_path, file_sha256

logger = logging.getLogger("mbrec")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
# Errors caused by the user's input (names, configs, data files): reported without a traceback.
USER_ERRORS = (DataPreparationError, ConfigError, DatasetError, ResultsError, UnknownModelError)
# Keys of the run settings that the data preparation step consumes.
PREPARE_SETTING_KEYS = ("heldout", "behaviors", "target_behavior")


def seed_label(seed):
    """``seed=2025``, or ``default seed`` when the command gave none (the config's seed applies)."""
    return "default seed" if seed is None else f"seed={seed}"


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


def machine(cpuinfo="/proc/cpuinfo"):
    """The CPU a run's seconds were measured on: the sessions of one suite get different machines
    (session 8 an AVX512-BF16 CPU, session 9 an AMD EPYC with AVX2 only), and seconds per epoch
    from two CPUs are not comparable."""
    name = None
    try:
        for line in Path(cpuinfo).read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": name or platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": cpu_has_native_bf16(cpuinfo)}


def prepare_data(dataset, settings, data_path=None, cache_dir=None):
    """Prepare (or reuse) the dataset's atomic files with the run's preparation options.

    A dataset variant prepares its base dataset's files (its own settings, including any
    ``prepare:`` options it changes, arrive in ``settings``).
    """
    spec = dataset_spec(base_dataset(dataset))
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

    def note(self, message):
        """A line in the run's log file only (the console gets the command's own summary line)."""
        self.handler.emit(logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, None, None))

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()


def plan_run(model, dataset, config_files=(), overrides=None, seed=None, data_path=None, cache_dir=None,
             results_dir=None, command_models=()):
    """Settings, prepared data, run key and record path of one run, without training.

    Returns ``types.SimpleNamespace`` with ``settings``, ``seed``, ``canonical``, ``dataset_dir``,
    ``key``, ``path``, ``results_dir``, ``prepared_now`` (this call built the prepared copy). Used by :func:`run` and by the Ray grid's driver (which
    skips stored runs before scheduling them).
    """
    settings = merge_layers(model, dataset, config_files, overrides, command_models)
    check_train_unit(registry.get_model_class(model), settings)  # before the data is prepared
    if seed is not None:
        settings["seed"] = int(seed)
    seed = int(settings["seed"])
    cache_root = utils.cache_dir(cache_dir)
    cached_before = set(cache_root.iterdir()) if cache_root.is_dir() else set()
    canonical, dataset_dir = prepare_data(dataset, settings, data_path, cache_dir)
    results_dir = results_dir or store.default_results_dir()
    # The data by content, not the prepared folder's fingerprint (raw paths and file times): the
    # same data prepared elsewhere, or re-copied, must find the stored runs (committed records).
    key = store.run_key(model, dataset_dir.name, integrity.key_settings(settings), seed,
                        integrity.prepared_data_identity(dataset_dir))
    path = store.record_path(results_dir, model, dataset_dir.name, seed, key)
    return SimpleNamespace(settings=settings, seed=seed, canonical=canonical, dataset_dir=dataset_dir, key=key,
                           path=path, results_dir=results_dir, prepared_now=dataset_dir not in cached_before)


def run(model, dataset, config_files=(), overrides=None, seed=None, device="auto", data_path=None,
        cache_dir=None, results_dir=None, rerun=False, log_mode="w", command_models=()):
    """Train and evaluate one (model, dataset, config, seed); return its results record.

    A stored record with the same key is returned as is unless ``rerun``. ``log_mode="a"``
    appends to the run's log (a grid's retried run keeps the log of the attempt that died).
    """
    model_class = registry.get_model_class(model)  # fail fast on unknown names
    plan = plan_run(model, dataset, config_files, overrides, seed, data_path, cache_dir, results_dir, command_models)
    settings, seed, canonical, dataset_dir = plan.settings, plan.seed, plan.canonical, plan.dataset_dir
    key, path, results_dir = plan.key, plan.path, plan.results_dir
    if store.stored_record(path) and not rerun:
        logger.info(f"found stored run {store.stored_record(path)}; skipping (use --rerun to train again)")
        return store.load_record(store.stored_record(path))

    try:
        return _run_locked(model, model_class, plan, device, rerun, log_mode)
    except DatasetError:
        # The data cannot serve this run (e.g. every interaction filtered out): the error's one line
        # says it all, so nothing of the run stays behind, nor the prepared copy built just for it.
        log_file = store.log_path(results_dir, model, dataset_dir.name, seed, key)
        log_file.unlink(missing_ok=True)
        store.remove_empty_dirs(log_file.parent, results_dir)
        store.remove_empty_dirs(path.parent, results_dir)
        if plan.prepared_now:
            shutil.rmtree(dataset_dir, ignore_errors=True)
        raise


def _run_locked(model, model_class, plan, device, rerun, log_mode):
    """Train and record one planned run under its lock (see :func:`run`)."""
    settings, seed, canonical, dataset_dir = plan.settings, plan.seed, plan.canonical, plan.dataset_dir
    key, path, results_dir = plan.key, plan.path, plan.results_dir
    # One process trains a run at a time (parallel grids, Ray workers): a second one waits here,
    # then finds the record the first wrote.
    with store.run_lock(path):
        if store.stored_record(path) and not rerun:
            logger.info(f"another process stored run {path} meanwhile; skipping")
            return store.load_record(store.stored_record(path))
        log_file = store.log_path(results_dir, model, dataset_dir.name, seed, key)
        with _RunLog(log_file, log_mode) as run_log:
            try:
                return _train_and_record(model, model_class, canonical, dataset_dir, settings, seed, device, key,
                                         path, log_file)
            except KeyboardInterrupt as interrupt:
                # With a resume state (mbrec.training.resume) the same command continues at its epoch and
                # the selected weights stay beside it; without one a rerun trains from epoch 0, so the
                # weights would only be an orphan file. The log is kept.
                checkpoint, resume = path.with_suffix(".pth"), resume_path_of(path.with_suffix(".pth"))
                interrupt.run_log = log_file
                interrupt.resume_state = resume if resume.exists() else None
                if interrupt.resume_state:
                    run_log.note(f"run {key} interrupted (Ctrl+C): no record written; the same command resumes "
                                 f"from {resume}")
                else:
                    checkpoint.unlink(missing_ok=True)
                    run_log.note(f"run {key} interrupted (Ctrl+C): checkpoint deleted, no record written")
                raise
            except DatasetError:
                raise  # a user error, one line (see run); no traceback into the log or on the console
            except Exception as error:
                logger.error(f"run {key} failed: {type(error).__name__}: {error}", exc_info=True)  # into the log
                error.run_log = log_file  # the summary of a multi-run command points at it
                raise


# CPU flags of native bf16 matrix products; without them torch emulates bf16 and a bf16 training step
# took 5.9-9.2x the fp32 one (AMD EPYC, AVX2; README "Threads and precision on this CPU").
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo="/proc/cpuinfo"):
    """True/False from the CPU's flags; None where they cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


def warn_if_emulated_bf16(config, device):
    if config["precision"] == "bf16" and device.type == "cpu" and cpu_has_native_bf16() is False:
        logger.warning("precision=bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16 flag): torch emulates "
                       "it, and a training step is several times slower than in fp32 here; precision=fp32 is faster")


def setup_run(model_class, dataset_dir, settings, seed, device, with_test=True):
    """Config, data splits and a freshly initialized model for one run, on ``device``.

    Shared by :func:`run` and the Ray Tune trials (``mbrec.benchmark.tune``), so that a
    trial trains exactly what the runner would. A trial passes ``with_test=False``: its
    ``test_data`` is None, so it cannot evaluate test even by mistake (test lock).

    Stops before the model is built when the valid split has no example for ``valid_task`` or
    the item vectors it would read come from another dataset or protocol (``mbrec.benchmark.integrity``).

    Returns:
        ``types.SimpleNamespace`` with ``config``, ``dataset``, ``train_data``, ``valid_data``,
        ``test_data``, ``network``, ``n_parameters``, ``data_seconds``, ``device``, ``protocol``,
        ``protocol_fingerprint``, ``item_vectors`` (the provenance of the vectors read, or None).
    """
    from recbole.utils import init_seed

    device = resolve_device(device)
    config = build_config(model_class, dataset_dir, settings)
    config["device"] = device
    init_seed(seed, config["reproducibility"])
    logger.info(f"model={model_class.__name__} dataset={dataset_dir.name} seed={seed} device={device}")
    warn_if_emulated_bf16(config, device)
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
    integrity.check_valid_examples(valid_data, config["valid_task"], model_class)
    protocol, fingerprint = integrity.run_protocol(dataset_dir, settings)
    item_vectors = integrity.check_item_vectors(settings, protocol, fingerprint)
    logger.info(f"protocol {fingerprint}: {protocol}")

    init_seed(seed, config["reproducibility"])
    network = model_class(config, train_data).to(device)
    n_parameters = sum(p.numel() for p in network.parameters())
    logger.info(f"{model_class.__name__}: {n_parameters} parameters")
    return SimpleNamespace(config=config, dataset=dataset, train_data=train_data, valid_data=valid_data,
                           test_data=test_data, network=network, n_parameters=n_parameters,
                           data_seconds=data_seconds, device=device, protocol=protocol,
                           protocol_fingerprint=fingerprint, item_vectors=item_vectors)


def _train_and_record(model, model_class, canonical, dataset_dir, settings, seed, device, key, path, log_file):
    # This run's own CPU peak (data, model, training, evaluation); see mbrec.benchmark.memory.
    with PeakRSS() as peak_rss:
        return _train_and_record_measured(model, model_class, canonical, dataset_dir, settings, seed, device,
                                          key, path, log_file, peak_rss)


def _train_and_record_measured(model, model_class, canonical, dataset_dir, settings, seed, device, key, path,
                               log_file, peak_rss):
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
    # a resumed run: the earlier attempts' training up to their resume state counts too
    train_seconds = time.perf_counter() - start + fit_summary.get("seconds_before_resume", 0.0)
    test_lock = _test_lock(checkpoint, config, fit_summary)

    start = time.perf_counter()
    tasks = list(config["eval_tasks"])
    valid_results = Evaluator(config).evaluate(network, valid_data, tasks=tasks, device=device)
    test_results = Evaluator(config).evaluate(network, test_data, tasks=tasks, device=device)  # the only time
    eval_seconds = time.perf_counter() - start
    sampling_spread = _sampling_spread(network, config, test_data, tasks, device, test_results)
    if sampling_spread:  # the same weights were evaluated on test again, once per further sampling seed
        test_lock["test_evaluations"] += len(sampling_spread["seeds"]) - 1
    if settings.get("save_item_vectors"):
        vectors_file = save_item_vectors(network, dataset, Path(settings["save_item_vectors"]))
        integrity.write_vectors_provenance(vectors_file, integrity.vectors_provenance(
            vectors_file, model, seed, key, dataset_dir, built.protocol, built.protocol_fingerprint))
    if not settings.get("keep_checkpoint"):
        checkpoint.unlink(missing_ok=True)  # the record is the product; weights are not kept (their hash is)

    train_epochs = [entry["train_seconds"] for entry in trainer.history]
    record = {
        "run_key": key,
        "model": model,
        "dataset": dataset_dir.name,
        "dataset_canonical": canonical,
        "heldout": settings.get("heldout"),
        "protocol": built.protocol,
        "protocol_fingerprint": built.protocol_fingerprint,
        "seed": seed,
        "config": settings,
        "data": {key_: read_meta(dataset_dir).get(key_) for key_ in ("fingerprint", "n_rows", "n_users", "n_items")}
        | {"content": integrity.prepared_data_identity(dataset_dir),
           "users_after_filter": dataset.user_num - 1, "items": dataset.item_num - 1,
           "interactions": len(dataset.inter_feat), "behaviors": dataset.behavior_vocab,
           "target_behavior": config["target_behavior"]},
        "results": {task: (result.to_record() if result else None) for task, result in test_results.items()},
        "valid_results": {task: (result.metrics if result else None) for task, result in valid_results.items()},
        "training": fit_summary | {"history": trainer.history},
        "model_notes": getattr(network, "run_notes", None),  # what the model ran with (e.g. M3BSR: ID-only)
        "item_vectors": built.item_vectors,  # provenance of the vectors MBGen's semantic IDs were built from
        "test_lock": test_lock,
        # kept (keep_checkpoint=True) for probes that re-score the selected weights without retraining
        "checkpoint": str(checkpoint) if settings.get("keep_checkpoint") else None,
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
            "peak_cpu_rss_mb": peak_rss.mb,  # sampled so far in this run (it ends with saving the record)
            "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "device": str(device),
        },
        "versions": versions(),
        "machine": machine(),
        "git_commit": git_commit(),
        "command": " ".join(sys.argv),
        "log_file": str(log_file),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    store.save_record(path, record)
    store.compressed_path(path).unlink(missing_ok=True)  # a --rerun replaces the compressed copy too
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
    (``item_vectors_file`` / ``item_vectors_ids``). Rows past ``n_items`` (a [mask] item) are dropped.
    Returns the ``.npy`` path (the runner writes its provenance beside it)."""
    vectors = _item_table(network, dataset.item_num).weight.detach()[:dataset.item_num].float().cpu().numpy()
    tokens = [str(token) for token in dataset.field2id_token[dataset.iid_field]]
    with atomic_path(prefix.with_suffix(".npy")) as tmp, open(tmp, "wb") as handle:
        np.save(handle, vectors)
    with atomic_path(prefix.with_suffix(".ids")) as tmp:
        Path(tmp).write_text("\n".join(tokens) + "\n", encoding="utf-8")
    logger.info(f"item vectors [{vectors.shape[0]}, {vectors.shape[1]}] -> {prefix.with_suffix('.npy')}")
    return prefix.with_suffix(".npy")


def _test_lock(checkpoint, config, fit_summary):
    """What selected the weights test is evaluated on: their checkpoint's sha256 and the valid score.

    Called after training and before test, so the hash names the weights test is run on.
    """
    if not checkpoint.exists():
        raise TrainingError(f"the trainer left no checkpoint at {checkpoint}; a trainer must write the "
                            f"selected weights there (see mbrec.training.trainer)")
    return {"checkpoint_sha256": file_sha256(checkpoint), "selected_on": "valid",
            "valid_task": config["valid_task"], "valid_metric": str(config["valid_metric"]).lower(),
            "valid_value": fit_summary.get("best_valid_score"), "selected_epoch": fit_summary.get("best_epoch"),
            "test_evaluations": 1}
