"""Format B: the Tianchi / Taobao UserBehavior CSV."""

import pandas as pd

from mbrec.data.errors import DataPreparationError
from mbrec.data.readers.parse import (
    behavior_column, count_lines, numeric_column, read_csv_chunks, vocabulary_mapping,
)
from mbrec.data.readers.table import LogColumns, items_first_category, log_output

DEFAULT_FILES = {"log": "UserBehavior.csv"}


def read_tianchi(files, options):
    """Format B: Tianchi UserBehavior CSV, no header, user,item,category,behavior,timestamp.

    Option ``time_range: [lo, hi)`` drops rows outside (counted in meta.json).
    """
    path = files["log"]
    if path.stat().st_size == 0:
        raise DataPreparationError(f"{path}: the file is empty")
    vocabulary = options["behaviors"]
    mapping = vocabulary_mapping(vocabulary, {b: b for b in ("pv", "fav", "cart", "buy") if b in vocabulary})
    time_range = options.get("time_range")
    names = ["user_id", "item_id", "category", "behavior", "timestamp"]
    log, categories, dropped, line = LogColumns(count_lines(path), vocabulary), [], 0, 1
    for chunk in read_csv_chunks(path, header=None, names=names, dtype={"behavior": str}):
        frame = pd.DataFrame({
            "user_id": numeric_column(chunk["user_id"], path, "user_id", line, True),
            "item_id": numeric_column(chunk["item_id"], path, "item_id", line, True),
            "behavior": behavior_column(chunk["behavior"], mapping, vocabulary, path, "behavior_type", line),
            "timestamp": numeric_column(chunk["timestamp"], path, "timestamp", line, True),
        })
        category = numeric_column(chunk["category"], path, "category_id", line, True)
        line += len(chunk)
        if time_range:
            keep = ((frame["timestamp"] >= time_range[0]) & (frame["timestamp"] < time_range[1])).to_numpy()
            dropped += int((~keep).sum())
            frame, category = frame[keep], category[keep]
        log.append(frame["user_id"], frame["item_id"], frame["behavior"].array, frame["timestamp"])
        categories.append(pd.DataFrame({"item_id": frame["item_id"], "category": category})
                          .drop_duplicates("item_id"))
    reasons = {f"timestamp outside time_range [{time_range[0]}, {time_range[1]})": dropped} if time_range else {}
    return log_output(log, path, items_first_category(categories), reasons)
