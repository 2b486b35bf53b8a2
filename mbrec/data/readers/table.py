"""The columnar table every reader hands to the writer (:class:`ReaderOutput`), and the log it is built from.

Memory: the CSV readers (tianchi, ijcai15, retailrocket, csv) read the raw file in chunks
into one preallocated array per column (:class:`LogColumns`: behaviors as 1-byte codes), sort
by permuting one column at a time, and hand the writer slices; the log is never held twice
(no list of chunks plus their concatenation, no sorted copy of the whole frame).
"""

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mbrec.data.errors import DataPreparationError

INTER_COLUMNS = ["user_id", "item_id", "behavior", "timestamp"]
# Rows per DataFrame handed to the writer.
WRITE_CHUNK_ROWS = 500_000
# Counting duplicate rows hashes every row; skipped above this size (full Taobao: ~100M rows).
DUPLICATE_CHECK_MAX_ROWS = 20_000_000


@dataclass
class ReaderOutput:
    """What a reader hands to the writer.

    ``chunks`` yields DataFrames with INTER_COLUMNS already in final order; ``items`` maps
    item_id -> category (or None); ``write_extra(folder, name, item_ids)`` writes extra files.
    """

    chunks: object
    items: object = None
    dropped: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    write_extra: object = None


class LogColumns:
    """A raw log as one preallocated array per column, filled chunk by chunk (one copy in memory).

    ``behavior`` is stored as 1-byte codes into the vocabulary. ``capacity`` is an upper bound
    on the rows (e.g. the file's line count); if it is exceeded the arrays grow (doubling).
    """

    def __init__(self, capacity, vocabulary, id_dtype=np.int64, timestamp_dtype=np.int64):
        capacity = max(int(capacity), 1)
        self.vocabulary = list(vocabulary)
        self.columns = {"user_id": np.empty(capacity, id_dtype), "item_id": np.empty(capacity, id_dtype),
                        "behavior": np.empty(capacity, np.int8), "timestamp": np.empty(capacity, timestamp_dtype)}
        self.n_rows = 0

    def append(self, user_id, item_id, behavior, timestamp):
        """Add one chunk; ``behavior`` is a Categorical over the vocabulary (``behavior_column``)."""
        n_new = len(user_id)
        end = self.n_rows + n_new
        capacity = len(self.columns["user_id"])
        if end > capacity:  # only when the line count was not an upper bound
            new_capacity = max(end, 2 * capacity)
            for name, values in self.columns.items():
                grown = np.empty(new_capacity, values.dtype)
                grown[:self.n_rows] = values[:self.n_rows]
                self.columns[name] = grown
        for name, values in (("user_id", user_id), ("item_id", item_id), ("behavior", behavior.codes),
                             ("timestamp", timestamp)):
            self.columns[name][self.n_rows:end] = np.asarray(values)
        self.n_rows = end

    def trim(self):
        """Drop the unused capacity (views: no copy)."""
        self.columns = {name: values[:self.n_rows] for name, values in self.columns.items()}

    def frame(self):
        """The log as a DataFrame over the same arrays where pandas allows (small logs, checks)."""
        return pd.DataFrame({**self.columns, "behavior": self._behaviors(self.columns["behavior"])}, copy=False)

    def _behaviors(self, codes):
        return pd.Categorical.from_codes(codes, categories=self.vocabulary)

    def order_by_user_then_time(self):
        """Stable sort by (user, timestamp), ties keep file order; one column permuted at a time."""
        self.trim()
        order = np.lexsort((self.columns["timestamp"], _sort_key(pd.Series(self.columns["user_id"], copy=False))))
        for name in list(self.columns):
            self.columns[name] = self.columns[name][order]  # the old column is freed right away
        del order

    def chunks(self):
        """The rows as DataFrames of WRITE_CHUNK_ROWS rows with INTER_COLUMNS (behavior as strings)."""
        for start in range(0, self.n_rows, WRITE_CHUNK_ROWS):
            stop = start + WRITE_CHUNK_ROWS
            yield pd.DataFrame({"user_id": self.columns["user_id"][start:stop],
                                "item_id": self.columns["item_id"][start:stop],
                                "behavior": self._behaviors(self.columns["behavior"][start:stop]),
                                "timestamp": self.columns["timestamp"][start:stop]})


def _sort_key(ids):
    """Integer codes sorting ids numerically when they all are numbers, else as strings."""
    if ids.dtype.kind in "iuf":
        return ids.to_numpy()
    numeric = pd.to_numeric(ids, errors="coerce")
    keys = numeric if not numeric.isna().any() else ids
    return pd.factorize(keys, sort=True)[0]


def in_chunks(frame):
    for start in range(0, len(frame), WRITE_CHUNK_ROWS):
        yield frame.iloc[start:start + WRITE_CHUNK_ROWS]


def whole_numbers_as_int(timestamps):
    """Integral float timestamps are written as integers (no '.0' noise, exact)."""
    if timestamps.dtype.kind == "f" and np.all(np.mod(timestamps, 1) == 0):
        return timestamps.astype(np.int64)
    return timestamps


def items_first_category(pairs):
    """item_id -> category of its first occurrence (a few raw items list several categories)."""
    pairs = pd.concat(pairs, ignore_index=True).drop_duplicates("item_id", keep="first")
    return pairs.set_index("item_id")["category"]


def _count_duplicates(frame):
    """Exact duplicate rows (kept, but reported); None for logs too large to hash cheaply."""
    if len(frame) > DUPLICATE_CHECK_MAX_ROWS:
        return None
    return int(frame.duplicated(INTER_COLUMNS).sum())


def log_output(log, path, items=None, dropped=None):
    """Order a filled :class:`LogColumns` and hand it to the writer (notes: duplicate rows)."""
    if log.n_rows == 0 and not any((dropped or {}).values()):
        raise DataPreparationError(f"{path}: no data rows")
    log.trim()
    if log.columns["timestamp"].dtype.kind == "f":
        log.columns["timestamp"] = whole_numbers_as_int(log.columns["timestamp"])
    notes = {"duplicate_rows": _count_duplicates(log.frame()) if log.n_rows <= DUPLICATE_CHECK_MAX_ROWS else None}
    log.order_by_user_then_time()
    return ReaderOutput(log.chunks(), items, dropped or {}, notes)
