"""Plain CSV / TSV / whitespace-separated logs of (user, item, behavior, timestamp)."""

import csv
import re

import numpy as np

from mbrec.data.errors import DataPreparationError
from mbrec.data.readers.parse import (
    behavior_column, count_lines, csv_header, line_error, numeric_column, read_csv_chunks, vocabulary_mapping,
)
from mbrec.data.readers.table import INTER_COLUMNS, LogColumns, log_output

DEFAULT_FILES = {"log": None}  # None: the single file given, or the only file in the folder
# Bytes of a CSV file looked at to guess its delimiter and header.
SNIFF_BYTES = 64 * 1024
# Accepted header names per role (compared lower-cased).
CSV_COLUMN_NAMES = {
    "user_id": ("user", "user_id", "uid", "userid", "visitorid"),
    "item_id": ("item", "item_id", "sid", "iid", "itemid"),
    "behavior": ("behavior", "behavior_type", "action", "action_type", "event"),
    "timestamp": ("timestamp", "time", "ts", "time_stamp"),
}


def _sniff_csv(path, options):
    """(separator, has_header) of a plain log; options ``sep`` and ``header`` win over guessing."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        sample = handle.read(SNIFF_BYTES)
    if not sample.strip():
        raise DataPreparationError(f"{path}: the file is empty")
    sep = options.get("sep")
    if sep is None:
        try:
            sep = csv.Sniffer().sniff(sample, delimiters=",\t; ").delimiter
        except csv.Error:
            sep = r"\s+"
    if sep == " ":  # MB-STR style txt files: any run of blanks separates fields
        sep = r"\s+"
    first_line = sample.splitlines()[0]
    split_pattern = sep if sep == r"\s+" else re.escape(sep)
    first_fields = [f.strip().lower() for f in re.split(split_pattern, first_line.strip())]
    header = options.get("header")
    if header is None or header == "auto":
        known = {name for names in CSV_COLUMN_NAMES.values() for name in names}
        header = any(f in known for f in first_fields) or not any(re.fullmatch(r"-?[\d.eE+-]+", f) for f in first_fields)
    return sep, bool(header)


def read_csv_log(files, options):
    """Plain CSV/TSV/whitespace log with user, item, behavior, timestamp (header optional).

    Header names accepted per column are in CSV_COLUMN_NAMES; without a header the first four
    columns are taken in that order. Option ``behavior_map`` maps raw codes to the vocabulary.
    """
    path = files["log"]
    sep, has_header = _sniff_csv(path, options)
    vocabulary = options["behaviors"]
    mapping = vocabulary_mapping(vocabulary, options.get("behavior_map") or {b: b for b in vocabulary})
    if has_header:
        header = csv_header(path, sep)
        lowered = {str(c).strip().lower(): c for c in header}
        columns = {}
        for role, accepted in CSV_COLUMN_NAMES.items():
            found = [lowered[a] for a in accepted if a in lowered]
            if not found:
                raise DataPreparationError(
                    f"{path}: no {role.split('_')[0]} column in the header {header}; "
                    f"accepted names: {list(accepted)}")
            columns[role] = found[0]
        kwargs = {"usecols": list(columns.values()), "dtype": str}
        line = 2
    else:
        columns = {role: index for index, role in enumerate(INTER_COLUMNS)}
        kwargs = {"header": None, "usecols": list(range(len(INTER_COLUMNS))), "dtype": str}
        line = 1
    log = LogColumns(count_lines(path), vocabulary, id_dtype=object, timestamp_dtype=np.float64)
    for chunk in read_csv_chunks(path, sep=sep, keep_default_na=False, **kwargs):
        frame = {}
        for role in ("user_id", "item_id"):
            ids = chunk[columns[role]].str.strip()
            empty = (ids == "").to_numpy()
            if empty.any():
                raise line_error(path, line + int(np.argmax(empty)), f"empty {role}")
            frame[role] = ids
        frame["behavior"] = behavior_column(chunk[columns["behavior"]], mapping, vocabulary,
                                            path, columns["behavior"], line)
        frame["timestamp"] = numeric_column(chunk[columns["timestamp"]].str.strip(), path,
                                            columns["timestamp"], line, False)
        log.append(frame["user_id"], frame["item_id"], frame["behavior"], frame["timestamp"])
        line += len(chunk)
    return log_output(log, path)
