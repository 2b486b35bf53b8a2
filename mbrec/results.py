"""The results store: the only code that writes under ``results/``, always atomically.

One run = one JSON record at ``results/runs/<dataset>/<model>/<model>-seed<seed>-<key>.json``
holding the config, metrics per task, per-user ranks keyed by user token, timings, memory,
parameter count, versions and git commit. ``key`` hashes everything that changes the result,
so re-running the same (model, dataset, config, seed) finds the stored record.

Concurrency (several processes or Ray workers sharing one ``results/``): a record is written
to a temporary file, flushed to disk and renamed onto its name, so a reader sees either no
record or a complete one, never a partial one, even if the writer is killed. A run is trained
under :func:`run_lock` (an exclusive ``flock`` on ``<record>.lock``, removed on release), so two
workers given the same run never train it twice: the second waits, then finds the record. The OS drops the lock
when its holder dies, so a killed worker never blocks the retry. ``flock`` is honoured by
local file systems and NFSv4; on other shared storage run each run key from one place only.
"""

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import tempfile
from pathlib import Path

from mbrec.utils import REPO_DIR, atomic_path, write_json_atomic

RECORD_VERSION = 1
# Settings that do not change a run's numbers, so they do not enter its key.
VOLATILE_KEYS = {"show_progress", "device", "data_path", "eval_batch_size", "checkpoint_dir", "state",
                 "gpu_id", "use_gpu", "worker", "eval_item_chunk", "eval_memory_fraction",
                 "save_item_vectors", "keep_checkpoint", "fast_paths", "resume_every_seconds"}
REQUIRED_FIELDS = ("record_version", "run_key", "model", "dataset", "seed", "config", "results")
# A record may be stored gzip-compressed beside its plain name (``<name>.json.gz``): the reference
# suites commit theirs that way (per-user vectors compress about 4x). Readers accept both.
COMPRESSED_SUFFIX = ".gz"
RECORD_GLOBS = ("*.json", "*.json.gz")
# ``training.stopped_by``: the trainer's words (mbrec.training.trainer), repeated here because the
# results store must not import the training package.
STOPPED_BY_PATIENCE, STOPPED_BY_EPOCH_CAP, STOPPED_BY_NO_TRAINING = "patience", "epoch_cap", "not_trained"


class ResultsError(ValueError):
    """A stored record is corrupted or incomplete; it is reported, never used."""


def default_results_dir():
    return REPO_DIR / "results"


def check_writable(results_dir):
    """Refuse a results folder this process cannot write, before any data work (one clear line).

    Tried by writing and removing a file, which also catches read-only mounts that ``os.access``
    reports as writable.
    """
    results_dir = Path(results_dir)
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=results_dir, prefix=".write-check-", delete=True)
        probe.close()
    except OSError as error:
        raise ResultsError(f"cannot write results to {results_dir} ({error.strerror or error}); "
                           f"pass --results-dir with a writable folder") from None


def remove_empty_dirs(path, stop):
    """Remove ``path`` and its parents while they are empty, up to (not including) ``stop``."""
    path, stop = Path(path), Path(stop)
    while path != stop and stop in path.parents:
        try:
            path.rmdir()
        except OSError:  # not empty (or gone): stop there
            return
        path = path.parent


def run_key(model, dataset, settings, seed, data_fingerprint):
    """Hash of what determines a run's numbers: model, data (by content fingerprint), settings, seed."""
    stable = {key: value for key, value in settings.items() if key not in VOLATILE_KEYS}
    payload = json.dumps({"model": model, "dataset": dataset, "seed": seed, "settings": stable,
                          "data": data_fingerprint},
                         sort_keys=True, default=str)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:12]


def record_path(results_dir, model, dataset, seed, key):
    return Path(results_dir) / "runs" / dataset / model / f"{model}-seed{seed}-{key}.json"


def log_path(results_dir, model, dataset, seed, key):
    return Path(results_dir) / "logs" / dataset / model / f"{model}-seed{seed}-{key}.log"


def lock_path(record_file):
    return Path(record_file).with_name(Path(record_file).name + ".lock")


@contextlib.contextmanager
def run_lock(record_file, wait=True):
    """Hold the exclusive lock of one run while the block runs; yield whether it was acquired.

    ``wait=False`` yields False at once when another process holds it (the caller skips).

    The lock file is removed when its holder releases it, so no ``.lock`` stays beside finished
    records. Removing it is safe for concurrent workers because a holder unlinks the file *while
    still holding* the lock, and whoever acquires a lock checks that its open file is still the one
    at the path (same inode); a waiter that got the lock of an unlinked file lets it go and takes
    the lock again on the path's current file. (A separate lock folder would leave files behind just
    the same; removing them this way needs no cleanup job.)
    """
    path = lock_path(record_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            yield False
            return
        if _still_at(handle, path):
            break
        handle.close()  # its holder removed this file meanwhile: lock the path's current file
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")  # who holds it, for a person looking at a busy run
        handle.flush()
        yield True
    finally:
        path.unlink(missing_ok=True)  # still holding the lock: see the docstring
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _still_at(handle, path):
    """Whether the open file ``handle`` is (still) the file at ``path``."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def compressed_path(path):
    """``<name>.json`` -> ``<name>.json.gz`` (the compressed form of the same record)."""
    path = Path(path)
    return path if path.name.endswith(COMPRESSED_SUFFIX) else path.with_name(path.name + COMPRESSED_SUFFIX)


def stored_record(path):
    """The stored file of the record meant by ``path`` (plain or compressed), or None when neither exists."""
    for candidate in (Path(path), compressed_path(path)):
        if candidate.is_file():
            return candidate
    return None


def save_record(path, record):
    """Write ``record`` atomically at ``path``; gzip-compressed when ``path`` ends in ``.gz``."""
    record = {"record_version": RECORD_VERSION, **record}
    missing = [field for field in REQUIRED_FIELDS if field not in record]
    if missing:
        raise ResultsError(f"Refusing to write an incomplete record {path}: missing {missing}")
    if str(path).endswith(COMPRESSED_SUFFIX):
        with atomic_path(path) as tmp:
            # mtime=0: the same record compresses to the same bytes (a rerun of `suite` leaves git clean)
            with open(tmp, "wb") as raw:
                with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
                    handle.write(json.dumps(record, indent=1, sort_keys=True, default=str).encode("utf-8"))
                raw.flush()
                os.fsync(raw.fileno())  # on disk before the rename makes it visible
    else:
        write_json_atomic(path, record)
    return path


def compress_record(path):
    """Rewrite a plain ``.json`` record as ``.json.gz`` (then remove the plain file); return the new path."""
    path = Path(path)
    if path.name.endswith(COMPRESSED_SUFFIX):
        return path
    target = compressed_path(path)
    save_record(target, load_record(path))
    path.unlink()
    return target


def record_files(runs_dir):
    """Every stored record file under ``<runs_dir>/<dataset>/<model>/`` (plain and compressed), sorted."""
    runs_dir = Path(runs_dir)
    paths = [path for pattern in RECORD_GLOBS for path in runs_dir.glob(f"*/*/{pattern}")]
    return sorted(path for path in paths if not path.name.startswith("."))  # "." = an atomic write in progress


def load_record(path):
    """Load and validate a record (plain or ``.gz``); raise ResultsError naming the file and the problem."""
    path = Path(path)
    try:
        if path.name.endswith(COMPRESSED_SUFFIX):
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                record = json.load(handle)
        else:
            with open(path, encoding="utf-8") as handle:
                record = json.load(handle)
    except (json.JSONDecodeError, gzip.BadGzipFile, EOFError) as error:
        raise ResultsError(f"{path} is not valid JSON ({error}); delete it or rerun with --rerun") from None
    missing = [field for field in REQUIRED_FIELDS if field not in record]
    if missing:
        raise ResultsError(f"{path} is incomplete: missing {missing}; rerun with --rerun")
    for task, result in (record["results"] or {}).items():
        if result is None:
            continue
        per_user = result.get("per_user", {})
        n_users = len(per_user.get("user", []))
        # "repeat" is optional: records made before repeat flags were stored lack it (unknown).
        repeat_length = len(per_user["repeat"]) if per_user.get("repeat") is not None else n_users
        if n_users != len(per_user.get("rank", [])) or repeat_length != n_users or "metrics" not in result:
            raise ResultsError(f"{path}: task '{task}' has inconsistent per-user vectors; rerun with --rerun")
    return record


def stopped_by(record):
    """Why a run's training ended: ``patience``, ``epoch_cap``, ``not_trained``, or None when unknown.

    Records made before the trainer stored it are judged from their history: a run that trained
    fewer epochs than its cap stopped by patience; one that ran all of them stopped by patience
    only if more than ``stopping_step`` validations after its best epoch did not improve.
    Multi-stage runs (history entries carry ``stage``) are judged stage by stage, each against
    ``<stage>_epochs``; one capped stage caps the run.
    """
    training = record.get("training") or {}
    if training.get("stopped_by"):
        return training["stopped_by"]
    history = training.get("history")
    config = record.get("config") or {}
    if history is None or "stopping_step" not in config:
        return None
    if training.get("epochs_run") == 0 and not history:
        return STOPPED_BY_NO_TRAINING
    stages = {}
    for entry in history:
        stages.setdefault(entry.get("stage"), []).append(entry)
    verdicts = []
    for stage, entries in stages.items():
        cap = config.get("epochs") if stage is None else config.get(f"{stage}_epochs")
        if cap is None:
            return None
        verdicts.append(_stage_stopped_by(entries, int(cap), int(config["stopping_step"])))
    return STOPPED_BY_EPOCH_CAP if STOPPED_BY_EPOCH_CAP in verdicts else STOPPED_BY_PATIENCE


def _stage_stopped_by(entries, cap, stopping_step):
    if len(entries) < cap:
        return STOPPED_BY_PATIENCE
    scores = [entry["valid_score"] for entry in entries if entry.get("valid_score") is not None]
    if not scores:
        return STOPPED_BY_EPOCH_CAP
    best_at = max(range(len(scores)), key=lambda index: (scores[index], -index))  # first best, as the trainer
    return STOPPED_BY_PATIENCE if len(scores) - 1 - best_at > stopping_step else STOPPED_BY_EPOCH_CAP
