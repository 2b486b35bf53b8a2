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
import hashlib
import json
import os
import tempfile
from pathlib import Path

from mbrec.utils import REPO_DIR, write_json_atomic

RECORD_VERSION = 1
# Settings that do not change a run's numbers, so they do not enter its key.
VOLATILE_KEYS = {"show_progress", "device", "data_path", "eval_batch_size", "checkpoint_dir", "state",
                 "gpu_id", "use_gpu", "worker", "eval_item_chunk", "eval_memory_fraction",
                 "save_item_vectors"}
REQUIRED_FIELDS = ("record_version", "run_key", "model", "dataset", "seed", "config", "results")


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


def save_record(path, record):
    record = {"record_version": RECORD_VERSION, **record}
    missing = [field for field in REQUIRED_FIELDS if field not in record]
    if missing:
        raise ResultsError(f"Refusing to write an incomplete record {path}: missing {missing}")
    write_json_atomic(path, record)
    return path


def load_record(path):
    """Load and validate a record; raise ResultsError naming the file and the problem."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except json.JSONDecodeError as error:
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
