"""Checks that stop a run before it measures the wrong thing, and what a run records about its protocol.

* :func:`run_protocol`: the run's protocol and fingerprint (:mod:`mbrec.protocol`), with the
  prepared data identified by the sha256 of its content (:func:`prepared_data_identity`; the
  folder's own fingerprint hashes raw paths and times, so the same data prepared on two machines,
  or copied again with new file times, would look different). The run key uses the same identity;
* :func:`check_valid_examples`: model selection needs valid examples for ``valid_task``; with none
  every valid score would be NaN and epoch 0 would be "selected" without a word;
* item vectors for MBGen's semantic IDs carry a provenance file (:func:`vectors_provenance`) naming
  the dataset, its prepared data, the protocol and the split they were trained on;
  :func:`check_item_vectors` refuses vectors from another dataset or protocol (their training could
  have seen this run's valid or test targets), and :func:`key_settings` puts the vectors' content,
  not their path, into the run key.
"""

import hashlib
import json
from pathlib import Path

from mbrec.config import ConfigError
from mbrec.data.dataset import DatasetError
from mbrec.data.prepare import META_FILE, read_meta
from mbrec.evaluation.metrics import TASKS
from mbrec.protocol import CONTENT_PREFIX, describe_differences, protocol_fingerprint, protocol_of
from mbrec.utils import file_sha256, write_json_atomic

# Written beside exported item vectors: ``<prefix>.provenance.json``.
PROVENANCE_SUFFIX = ".provenance.json"
# Settings naming files whose content (not path) decides a run's numbers.
CONTENT_SETTINGS = ("item_vectors_file", "item_vectors_ids")
CONTENT_HASH_PREFIX = "sha256:"
# The splits exported vectors were fitted and selected on (the runner's Trainer.fit sees only these).
TRAINED_ON, SELECTED_ON = "train", "valid"
_content_hashes = {}  # (path, size, mtime_ns) -> sha256: a prepared file is hashed once per process


def _cached_sha256(path):
    stat = Path(path).stat()
    cache_key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if cache_key not in _content_hashes:
        _content_hashes[cache_key] = file_sha256(path)
    return _content_hashes[cache_key]


def prepared_data_identity(dataset_dir):
    """``prepared-sha256:<hex>`` of the prepared data files of ``dataset_dir`` (by content).

    Every data file of the folder counts (``.inter``, ``.heldout``: the held-out targets decide the
    test split too), named by suffix, so the identity is the same wherever and whenever the same
    raw data was prepared. ``meta.json`` does not count: it holds paths, times and reports.
    """
    dataset_dir = Path(dataset_dir)
    parts = []
    for path in sorted(dataset_dir.glob(f"{dataset_dir.name}.*")):
        if path.is_file() and path.name != META_FILE:
            parts.append(f"{path.suffix}:{_cached_sha256(path)}")
    if not parts:
        raise DatasetError(f"{dataset_dir}: no prepared data files")
    return CONTENT_PREFIX + hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def run_protocol(dataset_dir, settings):
    """``(protocol, fingerprint)`` of a run on the prepared folder ``dataset_dir`` with ``settings``."""
    meta = read_meta(dataset_dir) or {}
    protocol = protocol_of(meta.get("dataset") or Path(dataset_dir).name, prepared_data_identity(dataset_dir),
                           (meta.get("options") or {}).get("heldout"), settings)
    return protocol, protocol_fingerprint(protocol)


def check_valid_examples(valid_data, valid_task, model_class):
    """Stop before training when ``valid_task`` cannot select a checkpoint on this valid split."""
    if valid_task not in TASKS:
        raise ConfigError(f"valid_task '{valid_task}' is not a task; use one of {TASKS}")
    if valid_task == "behavior_item" and not hasattr(model_class, "full_sort_predict_behavior_item"):
        raise ConfigError(f"valid_task 'behavior_item' is N/A for {model_class.__name__} (no behavior head); "
                          f"choose another valid_task")
    rows = valid_data.target_rows
    count = len(rows)
    who = "valid examples"
    if valid_task == "target_behavior":
        count = int((valid_data.target_behaviors(rows) == valid_data.target_behavior_id).sum())
        who = f"valid targets with the target behavior '{valid_data.config['target_behavior']}' (of {len(rows)})"
    if count == 0:
        raise DatasetError(f"valid_task '{valid_task}' has 0 {who} in {valid_data.dataset_name}: every valid score "
                           f"would be NaN and no checkpoint could be selected; choose another valid_task "
                           f"(e.g. behavior_specific) or check the data")
    return count


def _provenance_path(vectors_file):
    return Path(vectors_file).with_suffix(PROVENANCE_SUFFIX)


def vectors_provenance(vectors_file, model, seed, run_key, dataset_dir, protocol, fingerprint):
    """What exported item vectors were trained on; written beside them as ``<prefix>.provenance.json``."""
    meta = read_meta(dataset_dir) or {}
    return {"vectors_sha256": file_sha256(vectors_file), "dataset": protocol["dataset"],
            "prepared_folder": Path(dataset_dir).name, "data": protocol["data"],
            "data_fingerprint": meta.get("fingerprint"), "protocol": protocol, "protocol_fingerprint": fingerprint,
            "trained_on": TRAINED_ON, "selected_on": SELECTED_ON, "model": model, "seed": seed, "run_key": run_key}


def write_vectors_provenance(vectors_file, provenance):
    path = _provenance_path(vectors_file)
    write_json_atomic(path, provenance)
    return path


def check_item_vectors(settings, protocol, fingerprint):
    """Refuse ``item_vectors_file`` unless its provenance names this run's dataset, data and protocol.

    Returns the provenance (stored in the run's record) or None when the run reads no vectors.
    """
    vectors_file = settings.get("item_vectors_file")
    if not vectors_file or str(settings.get("item_tokenizer", "")).lower() != "sid":
        return None
    if not Path(vectors_file).is_file():
        raise ConfigError(f"item_vectors_file {vectors_file} does not exist")
    path = _provenance_path(vectors_file)
    if not path.is_file():
        raise ConfigError(f"item_vectors_file {vectors_file} has no provenance file {path}: it cannot be shown that "
                          f"the vectors never saw this run's valid or test targets. Export vectors with "
                          f"save_item_vectors=PREFIX from a run on the same dataset and protocol")
    try:
        provenance = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path} is not a readable provenance file ({error})") from None
    problems = []
    if provenance.get("vectors_sha256") != file_sha256(vectors_file):
        problems.append(f"{vectors_file} is not the file the provenance describes (its content changed)")
    if provenance.get("dataset") != protocol["dataset"]:
        problems.append(f"dataset {provenance.get('dataset')!r} vs this run's {protocol['dataset']!r}")
    elif provenance.get("data") != protocol["data"]:
        problems.append(f"prepared data {provenance.get('data')} vs this run's {protocol['data']}")
    if provenance.get("protocol_fingerprint") != fingerprint:
        problems.append(f"protocol {provenance.get('protocol_fingerprint')} vs this run's {fingerprint} ("
                        f"{describe_differences(provenance.get('protocol') or {}, protocol)})")
    if problems:
        raise ConfigError(f"item_vectors_file {vectors_file} was trained under another setting than this run, so "
                          f"it may have seen this run's valid or test targets: " + "; ".join(problems))
    return provenance


def key_settings(settings):
    """``settings`` with every file of :data:`CONTENT_SETTINGS` replaced by its content hash (for the run key)."""
    keyed = dict(settings)
    for name in CONTENT_SETTINGS:
        if keyed.get(name) and Path(keyed[name]).is_file():
            keyed[name] = CONTENT_HASH_PREFIX + _cached_sha256(keyed[name])
    return keyed
