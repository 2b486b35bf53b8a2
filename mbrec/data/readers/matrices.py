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
    # A COO pickle may list one (user, item) cell twice; scipy would add the two timestamps.
    # Keep the cell once, with its latest timestamp, and count the duplicates for the summary.
    cells = coo.row.astype(np.int64) * coo.shape[1] + coo.col
    order = np.lexsort((coo.data, cells))
    last_of_cell = np.r_[cells[order][1:] != cells[order][:-1], True] if len(order) else np.zeros(0, bool)
    unique = order[last_of_cell]
    rows, cols, values = coo.row[unique], coo.col[unique], coo.data[unique]
    keep = values != 0  # explicit zeros are not interactions
    return (rows[keep].astype(np.int64), cols[keep].astype(np.int64), values[keep], coo.shape,
            len(cells) - len(unique))


def _check_shapes(shapes):
    """Every behavior matrix must be users x items of one dataset (a transposed one is refused)."""
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{behavior} {rows:,} x {cols:,}" for behavior, (rows, cols) in shapes.items())
        raise DataPreparationError(
            f"Format 'matrices': the behavior matrices differ in shape ({listed}); each must be the same "
            f"users x items matrix of one dataset (is one transposed, or from another data set?)")


def load_heldout(path, shape=None):
    """Held-out (users, items) from a ``tst_int`` list or a ``test_mat.pkl`` sparse matrix, checked
    against the behavior matrices' ``shape`` when given."""
    import scipy.sparse as sp

    loaded = load_pickle(path)
    if sp.issparse(loaded):
        rows, cols, _, held_shape, _ = _load_matrix(path)
        if shape is not None and held_shape != shape:
            raise DataPreparationError(
                f"{path}: the held-out matrix is {held_shape[0]:,} x {held_shape[1]:,}, the behavior matrices "
                f"{shape[0]:,} x {shape[1]:,}; it must be the same users x items (transposed, or another data set?)")
        return rows, cols
    if isinstance(loaded, (list, tuple, np.ndarray)):
        users = np.array([u for u, item in enumerate(loaded) if item is not None], dtype=np.int64)
        items = np.array([int(item) for item in loaded if item is not None], dtype=np.int64)
        if shape is not None and (len(loaded) != shape[0]
                                  or (len(items) and (items.min() < 0 or items.max() >= shape[1]))):
            raise DataPreparationError(
                f"{path}: the held-out list has {len(loaded):,} entries (one per user) and items "
                f"{items.min(initial=0)}..{items.max(initial=0)}; the behavior matrices have {shape[0]:,} users "
                f"and {shape[1]:,} items (another data set?)")
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
    shapes, duplicates = {}, 0
    for behavior, _ in sorted(options["files"].items(), key=lambda kv: str(kv[0])):
        if behavior not in vocabulary:
            raise DataPreparationError(
                f"Option files names behavior {behavior!r}, not in the dataset's behaviors {vocabulary}")
        rows, cols, values, shapes[behavior], cell_duplicates = _load_matrix(files[behavior])
        duplicates += cell_duplicates
        users.append(rows)
        items.append(cols)
        codes.append(np.full(len(rows), vocabulary.index(behavior), dtype=np.int8))
        stamps.append(values)
    users, items, codes = np.concatenate(users), np.concatenate(items), np.concatenate(codes)
    stamps = np.concatenate(stamps)
    stamps = whole_numbers_as_int(stamps) if stamps.dtype.kind == "f" else stamps.astype(np.int64)
    _check_shapes(shapes)
    dropped, notes, write_extra = {}, {"duplicate_cells_kept_latest": duplicates}, None
    if "heldout" in files:
        held_users, held_items = load_heldout(files["heldout"], next(iter(shapes.values())))
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
