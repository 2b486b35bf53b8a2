"""The protocol fingerprint: the settings that change *what* a run measures (issue 18, section 2).

Two runs may share a table cell or a comparison only when their protocols are equal. The protocol
holds the dataset and the content hash of its prepared interactions, the held-out handling, the
user/item filters, the input window length, ``mask_history``, the evaluation tasks and cut-offs,
the valid task and metric that select the checkpoint, the target behavior and the tie rule. It
holds no model hyperparameter, no seed and no training setting (batch size, precision, epochs,
``train_unit``): those change how well a model does, not what is measured.

The fingerprint is an extra field of the record, never part of the run key (the run key holds the
same content identity of the data, so a stored run is found again on any machine that prepares the
same raw data). Records made before it existed get a protocol *derived* from their stored config;
their data identity is then the prepared folder's fingerprint (which hashes the raw files' paths
and times, not the content) and is marked as such, so a derived protocol never silently equals a
recorded one.

Imports: the standard library only (the runner and the reporting side both use it; no torch).
"""

import hashlib
import json

PROTOCOL_VERSION = 1
# How ranks treat items that score exactly like the target (mbrec.evaluation.evaluator): they count
# against it. Named here so that a change of rule changes every new record's protocol.
TIE_RULE = "pessimistic"
# Run settings (merged config) that change what is measured, and their value when a config lacks them.
SETTING_DEFAULTS = {
    "min_user_inter": 3,
    "min_item_inter": 0,
    "MAX_ITEM_LIST_LENGTH": 50,
    "mask_history": False,
    "eval_tasks": [],
    "topk": [],
    "valid_task": None,
    "valid_metric": None,
    "target_behavior": None,
}
# Data identities: the sha256 of the prepared data files' content (recorded; .inter and .heldout),
# or, for records made before protocols were stored, the prepared folder's fingerprint (hashes raw
# paths/times, not content). Records of the first protocol version hashed the .inter file alone
# ("inter-sha256:"); their identity differs from today's, so they are never mixed with new runs.
CONTENT_PREFIX = "prepared-sha256:"
DERIVED_PREFIX = "prepared-fingerprint:"
UNKNOWN = "unknown"
# How a record's protocol was obtained.
RECORDED, DERIVED = "recorded", "derived from the stored config"


def _normalized(key, value):
    """One canonical form per setting, so ``[10, 5]`` and ``[5, 10]`` or ``NDCG@10`` / ``ndcg@10`` agree."""
    if key in ("min_user_inter", "min_item_inter", "MAX_ITEM_LIST_LENGTH"):
        return int(value or 0)
    if key == "mask_history":
        return bool(value)
    if key == "topk":
        return sorted(int(k) for k in (value or []))
    if key == "eval_tasks":
        return sorted(str(task) for task in (value or []))
    if key == "valid_metric":
        return str(value).lower() if value is not None else None
    return value


def protocol_of(dataset, data_identity, heldout, settings, tie_rule=TIE_RULE):
    """The protocol of one run: a plain, JSON-ready dict.

    Args:
        dataset: the canonical dataset name (``retailrocket``), not the prepared folder.
        data_identity: ``prepared-sha256:<hex>`` of the prepared data files (see the prefixes).
        heldout: the held-out handling the data was prepared with (None for formats without held-out items).
        settings: the run's merged settings (``mbrec.config.merge_layers``).
    """
    protocol = {"version": PROTOCOL_VERSION, "dataset": dataset, "data": data_identity, "heldout": heldout,
                "tie_rule": tie_rule}
    for key, default in SETTING_DEFAULTS.items():
        protocol[key] = _normalized(key, settings.get(key, default))
    return protocol


def protocol_fingerprint(protocol):
    """A short hash of a protocol dict (12 hex digits)."""
    payload = json.dumps(protocol, sort_keys=True, default=str)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:12]


def record_protocol(record):
    """``(protocol, fingerprint, how)`` of a results record; ``how`` is :data:`RECORDED` or :data:`DERIVED`.

    A record without a stored protocol gets one from its config (every setting above is in the
    merged config it stored) with its data identity marked :data:`DERIVED_PREFIX`.
    """
    stored = record.get("protocol")
    if isinstance(stored, dict):
        return stored, record.get("protocol_fingerprint") or protocol_fingerprint(stored), RECORDED
    config = record.get("config") or {}
    data_fingerprint = (record.get("data") or {}).get("fingerprint")
    data_identity = DERIVED_PREFIX + data_fingerprint if data_fingerprint else UNKNOWN
    dataset = record.get("dataset_canonical") or record.get("dataset")
    protocol = protocol_of(dataset, data_identity, record.get("heldout"), config)
    return protocol, protocol_fingerprint(protocol), DERIVED


def protocol_differences(protocol_a, protocol_b):
    """Sorted keys whose values differ between two protocols (a key missing on one side differs)."""
    return sorted(key for key in set(protocol_a) | set(protocol_b) if protocol_a.get(key) != protocol_b.get(key))


def describe_differences(protocol_a, protocol_b, keys=None):
    """``"mask_history: False vs True; topk: [5, 10] vs [5, 10, 20]"`` for the differing keys."""
    keys = protocol_differences(protocol_a, protocol_b) if keys is None else keys
    return "; ".join(f"{key}: {protocol_a.get(key, UNKNOWN)!r} vs {protocol_b.get(key, UNKNOWN)!r}" for key in keys)


class ProtocolMismatch(ValueError):
    """Runs measured under different protocols were asked to share a cell or a comparison."""


def check_same_protocol(labelled_records):
    """Raise :class:`ProtocolMismatch` unless every record has the same protocol fingerprint.

    Args:
        labelled_records: ``[(label, record), ...]``; the labels name the runs in the message.

    The message names the differing keys and their values, run against run.
    """
    protocols = [(label, *record_protocol(record)) for label, record in labelled_records]
    if len({fingerprint for _, _, fingerprint, _ in protocols}) <= 1:
        return
    first_label, first, first_fingerprint, _ = protocols[0]
    lines = []
    for label, protocol, fingerprint, how in protocols[1:]:
        if fingerprint != first_fingerprint:
            lines.append(f"{first_label} (protocol {first_fingerprint}) vs {label} (protocol {fingerprint}"
                         f"{'' if how == RECORDED else ', ' + how}): {describe_differences(first, protocol)}")
    raise ProtocolMismatch("runs measured under different protocols cannot be compared or averaged:\n  "
                           + "\n  ".join(lines))
