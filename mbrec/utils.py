"""Paths and small I/O helpers shared by every mbrec module."""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
# YAML configs live next to the package (editable install); MBREC_PROPERTIES overrides.
PROPERTIES_DIR = Path(os.environ.get("MBREC_PROPERTIES", REPO_DIR / "properties"))

DATA_DIR_ENV = "MBREC_DATA_DIR"
CACHE_DIR_ENV = "MBREC_CACHE_DIR"


def data_dir(path=None):
    """Root of the raw data (``--data-path`` beats ``$MBREC_DATA_DIR``); None when neither is set."""
    path = path or os.environ.get(DATA_DIR_ENV)
    return Path(path).expanduser().resolve() if path else None


def cache_dir(path=None):
    """Where prepared atomic files are cached (``$MBREC_CACHE_DIR``, default ``~/.cache/mbrec``)."""
    path = path or os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "mbrec"
    return Path(path).expanduser().resolve()


def read_yaml(path):
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


@contextlib.contextmanager
def atomic_path(target):
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success.

    Works for files and directories, so a crash never leaves a half-written result.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp_target = tmp / target.name
    try:
        yield tmp_target
        if target.is_dir() and tmp_target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp_target, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_json_or_none(path):
    """The JSON in ``path``, or None when the file is missing or unreadable (a half-finished trial's)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def write_json_atomic(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=1, sort_keys=True, default=str)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename makes it visible


# Bytes read at a time when hashing a file (checkpoints can be large).
HASH_CHUNK_BYTES = 1 << 20


def file_sha256(path):
    """Hex sha256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
