"""What kind of item each evaluated target is: the shares that decide what a score means (issue 18, 3e).

For the examples of one split (given by their target rows) :func:`target_kinds` counts targets that are

* ``in_window``: already in the user's input window (any behavior): a *repeat*;
* ``cold``: never seen in training, i.e. in no row a model may learn from (the rows before each
  user's valid target, :attr:`MultiBehaviorSequentialDataset.train_visible_rows`): no item-ID model
  can have learned anything about such an item;
* ``heldout`` (format A with ``heldout: append`` only): an appended held-out item rather than a logged
  interaction. The appended pairs are read from ``<name>.heldout`` (written by the matrices reader);
  folders prepared before that file existed fall back on the raw held-out file named in
  ``meta.json``; without either the count is ``"unknown"``. None when the data has no held-out items.

Imports: numpy and mbrec.data only.
"""

from pathlib import Path

import numpy as np

from mbrec.data.errors import DataPreparationError
from mbrec.data.prepare import read_meta
from mbrec.data.readers.matrices import HELDOUT_SUFFIX, load_heldout

UNKNOWN = "unknown"


def _cached(dataset, name, compute):
    """A per-dataset value computed once (views share the arrays it is computed from)."""
    if not hasattr(dataset, name):
        setattr(dataset, name, compute())
    return getattr(dataset, name)


def cold_flags(dataset, target_rows):
    """``[B]`` bool: the target item occurs in no training-visible row."""
    items = dataset.row_arrays[dataset.iid_field]

    def seen_in_training():
        seen = np.zeros(dataset.item_num, dtype=bool)
        seen[items[dataset.train_visible_rows]] = True
        return seen

    return ~_cached(dataset, "_items_seen_in_training", seen_in_training)[items[np.asarray(target_rows)]]


def _heldout_pairs(dataset):
    """``(user tokens, item tokens)`` appended as held-out items, None (no held-out items) or UNKNOWN."""
    folder = Path(dataset.config["data_path"])
    meta = read_meta(folder) or {}
    if meta.get("format") != "matrices" or (meta.get("options") or {}).get("heldout") != "append":
        return None
    sidecar = folder / f"{dataset.dataset_name}{HELDOUT_SUFFIX}"
    if sidecar.is_file():
        pairs = np.loadtxt(sidecar, dtype=str, delimiter="\t", ndmin=2)
        return pairs[:, 0], pairs[:, 1]
    raw = (meta.get("raw_files") or {}).get("heldout")
    if raw and Path(raw).is_file():
        try:
            users, items = load_heldout(Path(raw))
        except DataPreparationError:
            return UNKNOWN
        return users.astype(str), items.astype(str)
    return UNKNOWN


def heldout_flags(dataset, target_rows):
    """``[B]`` bool (the target is an appended held-out item), None (no held-out items) or UNKNOWN.

    Appended items are each user's last rows (a timestamp after all of the user's others), so a target
    is held-out when it is among the user's last ``n`` rows, ``n`` = the user's held-out items, and
    its (user, item) pair is one of them.
    """
    def pair_codes():
        pairs = _heldout_pairs(dataset)
        if pairs is None or isinstance(pairs, str):
            return pairs
        user_ids, item_ids = dataset.field2token_id[dataset.uid_field], dataset.field2token_id[dataset.iid_field]
        known = [(user_ids[user], item_ids[item]) for user, item in zip(*pairs)
                 if user in user_ids and item in item_ids]  # users/items a filter dropped are not evaluated
        if not known:
            return np.zeros(0, dtype=np.int64), np.zeros(dataset.user_num, dtype=np.int64)
        users, items = np.asarray(known, dtype=np.int64).T
        return users * dataset.item_num + items, np.bincount(users, minlength=dataset.user_num)

    codes = _cached(dataset, "_heldout_pair_codes", pair_codes)
    if codes is None or isinstance(codes, str):
        return codes
    pair_code, heldout_per_user = codes
    target_rows = np.asarray(target_rows, dtype=np.int64)
    users = dataset.row_arrays[dataset.uid_field][target_rows]
    items = dataset.row_arrays[dataset.iid_field][target_rows]
    rows_after = _rows_after(dataset)[target_rows]
    return (rows_after < heldout_per_user[users]) & np.isin(users * dataset.item_num + items, pair_code)


def _rows_after(dataset):
    """``[n_rows]``: how many rows of the same user follow each row."""
    def compute():
        starts = dataset.row_user_start
        n_rows = len(starts)
        is_last = np.ones(n_rows, dtype=bool)
        is_last[:-1] = starts[1:] != starts[:-1]
        ends = np.flatnonzero(is_last)  # [n_users] the last row of each user
        user_end = np.repeat(ends, np.diff(np.append(-1, ends)))
        return user_end - np.arange(n_rows)

    return _cached(dataset, "_rows_after_in_user", compute)


def target_kinds(dataset, target_rows, in_window):
    """Counts of the targets of ``target_rows``: ``{"targets", "in_window", "cold", "heldout"}``.

    ``in_window``: the ``[B]`` repeat flags the evaluator already has. ``heldout`` is an int, None
    (the data has no held-out items) or ``"unknown"``.
    """
    heldout = heldout_flags(dataset, target_rows)
    return {"targets": int(len(target_rows)), "in_window": int(np.sum(in_window)),
            "cold": int(cold_flags(dataset, target_rows).sum()),
            "heldout": heldout if heldout is None or isinstance(heldout, str) else int(heldout.sum())}
