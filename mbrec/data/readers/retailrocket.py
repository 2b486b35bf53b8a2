"""RetailRocket's raw Kaggle ``events.csv``."""

import numpy as np

from mbrec.data.readers.parse import (
    behavior_column, count_lines, csv_header, numeric_column, read_csv_chunks, require_columns, vocabulary_mapping,
)
from mbrec.data.readers.table import LogColumns, log_output

DEFAULT_FILES = {"log": "events.csv"}
RETAILROCKET_EVENTS = {"view": "view", "addtocart": "cart", "transaction": "buy"}
MS_PER_SECOND = 1000


def read_retailrocket(files, options):
    """RetailRocket ``events.csv``: ms timestamps -> seconds; view/addtocart/transaction."""
    path = files["log"]
    required = ["timestamp", "visitorid", "event", "itemid"]
    require_columns(path, csv_header(path, ","), required)
    vocabulary = options["behaviors"]
    mapping = vocabulary_mapping(vocabulary, RETAILROCKET_EVENTS)
    log, line = LogColumns(count_lines(path), vocabulary, timestamp_dtype=np.float64), 2
    for chunk in read_csv_chunks(path, usecols=required, dtype={"event": str}):
        log.append(numeric_column(chunk["visitorid"], path, "visitorid", line, True),
                   numeric_column(chunk["itemid"], path, "itemid", line, True),
                   behavior_column(chunk["event"], mapping, vocabulary, path, "event", line),
                   numeric_column(chunk["timestamp"], path, "timestamp", line, True) / MS_PER_SECOND)
        line += len(chunk)
    return log_output(log, path)
