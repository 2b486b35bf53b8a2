"""Format A: one pickled scipy user x item matrix per behavior (value = timestamp), plus held-out items."""

import numpy as np
import pandas as pd

from mbrec.data.errors import DataPreparationError
from mbrec.data.readers.parse import load_pickle
from mbrec.data.readers.table import ReaderOutput, in_chunks, whole_numbers_as_int

DEFAULT_FILES = {}  # the YAML's ``files: {behavior: file name}`` (and ``heldout_file``) say what to read
# Written beside ``<name>.inter`` with ``heldout: append``: the appended (user, item) pairs, one per line, so
# that a run can tell held-out test targets from logged last interactions (their shares decide what a score
# means). The .inter file itself is unchanged.
HELDOUT_SUFFIX = ".heldout"


def expected_files(options):
    """Role -> file name: one matrix per behavior named in option ``files``, plus ``heldout_file``."""
    files = dict(options.get("files") or {})
    if not files:
        raise DataPreparationError("Format 'matrices' needs option files: {behavior: file name}")
    if options.get("heldout_file"):
        files["heldout"] = options["heldout_file"]
    return files


def _load_matrix(path):
    """A pickled scipy sparse matrix as (rows, cols, values) int64/int64/number arrays."""
    import scipy.sparse as sp

    matrix = load_pickle(path)
    if not sp.issparse(matrix):
        raise DataPreparationError(f"{path}: expected a pickled scipy.sparse matrix, got {type(matrix).__name__}")
    coo = sp.coo_matrix(matrix)
    coo.sum_duplicates()
    keep = coo.data != 0  # explicit zeros are not interactions
    return coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int64), coo.data[keep], coo.shape


def load_heldout(path):
    """Held-out (users, items) from a ``tst_int`` list or a ``test_mat.pkl`` sparse matrix."""
    import scipy.sparse as sp

    loaded = load_pickle(path)
    if sp.issparse(loaded):
        rows, cols, _, _ = _load_matrix(path)
        return rows, cols
    if isinstance(loaded, (list, tuple, np.ndarray)):
        users = np.array([u for u, item in enumerate(loaded) if item is not None], dtype=np.int64)
        items = np.array([int(item) for item in loaded if item is not None], dtype=np.int64)
        return users, items
    raise DataPreparationError(f"{path}: expected a list (tst_int) or sparse matrix, got {type(loaded).__name__}")


def read_matrices(files, options):
    """Format A: one pickled user x item matrix per behavior (value = timestamp) + held-out items.

    Ties in time: behavior vocabulary order, then item id. ``heldout: append`` adds each
    held-out item as its user's last interaction (target behavior, user's max timestamp + 1).
    """
    vocabulary = options["behaviors"]
    target = options.get("target_behavior")
    users, items, codes, stamps = [], [], [], []
    for behavior, _ in sorted(options["files"].items(), key=lambda kv: str(kv[0])):
        if behavior not in vocabulary:
            raise DataPreparationError(
                f"Option files names behavior {behavior!r}, not in the dataset's behaviors {vocabulary}")
        rows, cols, values, _ = _load_matrix(files[behavior])
        users.append(rows)
        items.append(cols)
        codes.append(np.full(len(rows), vocabulary.index(behavior), dtype=np.int8))
        stamps.append(values)
    users, items, codes = np.concatenate(users), np.concatenate(items), np.concatenate(codes)
    stamps = np.concatenate(stamps)
    stamps = whole_numbers_as_int(stamps) if stamps.dtype.kind == "f" else stamps.astype(np.int64)
    dropped, notes, write_extra = {}, {}, None
    if "heldout" in files:
        held_users, held_items = load_heldout(files["heldout"])
        pair_base = max(int(items.max(initial=0)), int(held_items.max(initial=0))) + 1
        notes["heldout_in_own_history"] = int(np.isin(held_users * pair_base + held_items,
                                                      users * pair_base + items).sum())
        notes["users_with_several_heldout"] = int((np.bincount(held_users) > 1).sum()) if len(held_users) else 0
        if options.get("heldout", "append") == "append":
            if target not in vocabulary:
                raise DataPreparationError(f"target_behavior {target!r} is not in behaviors {vocabulary}")
            last = np.full(max(int(users.max(initial=0)), int(held_users.max(initial=0))) + 1,
                           np.iinfo(np.int64).min if stamps.dtype.kind == "i" else -np.inf, dtype=stamps.dtype)
            np.maximum.at(last, users, stamps)
            no_history = ~np.isin(held_users, users)
            notes["heldout_users_without_history"] = int(no_history.sum())
            # Without history there is nothing to follow; any time works for a one-row user.
            held_stamps = np.where(no_history, stamps.max(initial=0), last[held_users]) + 1
            users = np.concatenate([users, held_users])
            items = np.concatenate([items, held_items])
            codes = np.concatenate([codes, np.full(len(held_users), vocabulary.index(target), dtype=np.int8)])
            stamps = np.concatenate([stamps, held_stamps.astype(stamps.dtype)])
            write_extra = _heldout_writer(held_users, held_items)
        else:
            dropped["held-out items (heldout: ignore)"] = int(len(held_users))
    order = np.lexsort((items, codes, stamps, users))
    log = pd.DataFrame({
        "user_id": users[order],
        "item_id": items[order],
        "behavior": pd.Categorical.from_codes(codes[order], categories=vocabulary),
        "timestamp": stamps[order],
    })
    return ReaderOutput(in_chunks(log), None, dropped, notes, write_extra)


def _heldout_writer(held_users, held_items):
    def write(folder, name, item_ids):
        pairs = pd.DataFrame({"user_id": held_users, "item_id": held_items})
        with open(folder / f"{name}{HELDOUT_SUFFIX}", "w", encoding="utf-8", newline="") as handle:
            pairs.to_csv(handle, sep="\t", header=False, index=False, lineterminator="\n")
    return write
