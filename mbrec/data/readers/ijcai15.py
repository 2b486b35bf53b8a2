"""IJCAI-15 (Tmall repeat buyers) ``user_log_format1.csv``."""

import numpy as np
import pandas as pd

from mbrec.data.readers.parse import (
    behavior_column, count_lines, csv_header, line_error, numeric_column, read_csv_chunks, require_columns,
    vocabulary_mapping,
)
from mbrec.data.readers.table import LogColumns, items_first_category, log_output

DEFAULT_FILES = {"log": "user_log_format1.csv"}
# ``time_stamp`` is an MMDD date of 2015; days start at midnight China time.
IJCAI15_YEAR = 2015
CHINA_UTC_OFFSET_S = 8 * 3600
IJCAI15_ACTIONS = {0: "click", 1: "cart", 2: "buy", 3: "fav"}


def read_ijcai15(files, options):
    """IJCAI-15 ``user_log_format1.csv`` (header; time_stamp MMDD of 2015, action_type 0-3)."""
    path = files["log"]
    required = ["user_id", "item_id", "cat_id", "time_stamp", "action_type"]
    require_columns(path, csv_header(path, ","), required)
    vocabulary = options["behaviors"]
    mapping = vocabulary_mapping(vocabulary, IJCAI15_ACTIONS)
    log, categories, line = LogColumns(count_lines(path), vocabulary), [], 2
    for chunk in read_csv_chunks(path, usecols=required, dtype={"action_type": str}):
        mmdd = numeric_column(chunk["time_stamp"], path, "time_stamp", line, True)
        try:
            dates = pd.to_datetime(pd.DataFrame({"year": IJCAI15_YEAR, "month": mmdd // 100, "day": mmdd % 100}))
        except ValueError:
            month, day = mmdd // 100, mmdd % 100
            bad = ~((month >= 1) & (month <= 12) & (day >= 1) & (day <= 31)).to_numpy()
            position = int(np.argmax(bad)) if bad.any() else 0
            raise line_error(path, line + position, f"time_stamp {mmdd.iloc[position]} is not a valid MMDD date")
        seconds = dates.to_numpy().astype("datetime64[s]").astype(np.int64) - CHINA_UTC_OFFSET_S
        item_id = numeric_column(chunk["item_id"], path, "item_id", line, True)
        log.append(numeric_column(chunk["user_id"], path, "user_id", line, True), item_id,
                   behavior_column(chunk["action_type"], mapping, vocabulary, path, "action_type", line), seconds)
        categories.append(pd.DataFrame({
            "item_id": item_id,
            "category": numeric_column(chunk["cat_id"], path, "cat_id", line, True)}).drop_duplicates("item_id"))
        line += len(chunk)
    return log_output(log, path, items_first_category(categories) if categories else None)
