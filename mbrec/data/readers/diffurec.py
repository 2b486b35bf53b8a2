"""Format C: DiffuRec's preprocessed dict (train / val / test sequences per user), one behavior."""

import numpy as np
import pandas as pd

from mbrec.data.errors import DataPreparationError
from mbrec.data.readers.parse import load_pickle
from mbrec.data.readers.table import ReaderOutput, in_chunks

DEFAULT_FILES = {"dict": "dataset.pkl"}


def read_diffurec(files, options):
    """Format C: {train, val, test: user -> items in time order, umap, smap}; one behavior.

    Timestamps are positions in train + val + test, so leave-one-out reproduces the split.
    """
    path = files["dict"]
    data = load_pickle(path)
    if not isinstance(data, dict) or not {"train", "val", "test"} <= set(data):
        raise DataPreparationError(f"{path}: expected a dict with keys train, val, test (DiffuRec layout)")
    if len(options["behaviors"]) != 1:
        raise DataPreparationError(
            f"Format 'diffurec' is single-behavior; the dataset lists behaviors {options['behaviors']}")
    user_ids = sorted(set(data["train"]) | set(data["val"]) | set(data["test"]))
    sequences = [list(data["train"].get(u, [])) + list(data["val"].get(u, [])) + list(data["test"].get(u, []))
                 for u in user_ids]
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    total = int(lengths.sum())
    items = np.fromiter((item for s in sequences for item in s), dtype=np.int64, count=total)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    log = pd.DataFrame({
        "user_id": np.repeat(np.asarray(user_ids, dtype=np.int64), lengths),
        "item_id": items,
        "behavior": pd.Categorical.from_codes(np.zeros(total, dtype=np.int8), categories=options["behaviors"]),
        "timestamp": np.arange(total, dtype=np.int64) - starts,
    })
    notes = {"users_without_val": int(sum(not data["val"].get(u) for u in user_ids)),
             "users_without_test": int(sum(not data["test"].get(u) for u in user_ids))}
    return ReaderOutput(in_chunks(log), None, {}, notes)
