"""Raw values -> typed columns, with errors naming the file and line (shared by the readers).

Every problem with raw input becomes a :class:`DataPreparationError` that says where it is and
what was expected, never a pandas or pickle traceback.
"""

import pickle
import re
import warnings

import numpy as np
import pandas as pd

from mbrec.data.errors import DataPreparationError

# Rows per pandas chunk when streaming CSV input.
CSV_CHUNK_ROWS = 1_000_000
# Bytes read at a time when counting a file's lines (to preallocate the columns).
LINE_COUNT_BLOCK_BYTES = 16 * 2**20


def line_error(path, line, message):
    return DataPreparationError(f"{path}, line {line}: {message}")


def numeric_column(values, path, column, first_line, integer):
    """``values`` as int64/float64; names the first bad line (``first_line`` = line of row 0)."""
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    numeric = pd.to_numeric(values, errors="coerce")
    bad = numeric.isna().to_numpy()
    if bad.any():
        position = int(np.argmax(bad))
        value = values.iloc[position]
        problem = "missing value" if pd.isna(value) or str(value).strip() == "" else f"{value!r} is not a number"
        raise line_error(path, first_line + position, f"column {column!r}: {problem}")
    if integer:
        fraction = (numeric % 1 != 0).to_numpy()
        if fraction.any():
            position = int(np.argmax(fraction))
            raise line_error(path, first_line + position,
                             f"column {column!r}: {values.iloc[position]!r} is not an integer")
        return numeric.astype(np.int64)
    return numeric.astype(np.float64)


def behavior_column(values, mapping, vocabulary, path, column, first_line):
    """Map raw behavior values through ``mapping`` (str -> vocabulary string) to a Categorical."""
    raw = values.astype(str)
    mapped = raw.map(mapping)
    if mapped.isna().any():  # only then pay for stripping blanks around values
        raw = raw.str.strip()
        mapped = raw.map(mapping)
    bad = mapped.isna().to_numpy()
    if bad.any():
        position = int(np.argmax(bad))
        value = raw.iloc[position]
        hint = ""
        if re.fullmatch(r"-?\d+", value) and not any(re.fullmatch(r"-?\d+", k) for k in mapping):
            hint = (" Behavior codes are numeric: give option behavior_map, "
                    f"e.g. {{1: {vocabulary[0]}, ...}}, mapping codes to {vocabulary}.")
        raise line_error(path, first_line + position,
                         f"unknown behavior {value!r} in column {column!r}; allowed: "
                         f"{sorted(mapping)}.{hint}")
    return pd.Categorical(mapped, categories=vocabulary)


def vocabulary_mapping(vocabulary, mapping):
    """Check that every target of ``mapping`` is in the vocabulary; keys become strings."""
    outside = sorted({str(v) for v in mapping.values()} - set(vocabulary))
    if outside:
        raise DataPreparationError(
            f"Behaviors {outside} are not in the dataset's behaviors {vocabulary}")
    return {str(k): str(v) for k, v in mapping.items()}


def read_csv_chunks(path, **kwargs):
    """pandas.read_csv in chunks; pandas' parse errors become DataPreparationError naming the file."""
    try:
        reader = pd.read_csv(path, chunksize=CSV_CHUNK_ROWS, **kwargs)
        while True:
            try:
                chunk = next(reader)
            except StopIteration:
                return
            yield chunk
    except pd.errors.EmptyDataError:
        raise DataPreparationError(f"{path}: the file is empty")
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataPreparationError(f"{path}: cannot parse as CSV: {exc}".strip())


def csv_header(path, sep):
    """Column names of a CSV with a header row (the file must not be empty)."""
    if path.stat().st_size == 0:
        raise DataPreparationError(f"{path}: the file is empty")
    try:
        return list(pd.read_csv(path, sep=sep, nrows=0).columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataPreparationError(f"{path}: cannot read the header: {exc}")


def require_columns(path, header, required):
    missing = [c for c in required if c not in header]
    if missing:
        raise DataPreparationError(
            f"{path}: missing column(s) {missing} in the header; found {header}, need {required}")


def count_lines(path):
    """Newlines in ``path`` + 1: an upper bound on its rows, read in blocks (bounded memory)."""
    lines = 1
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(LINE_COUNT_BLOCK_BYTES), b""):
            lines += block.count(b"\n")
    return lines


def load_pickle(path):
    """Unpickle ``path``; old scipy pickles name deprecated modules, so silence their warnings."""
    import scipy.sparse  # noqa: F401  (old pickles reference scipy.sparse classes)

    if path.stat().st_size == 0:
        raise DataPreparationError(f"{path}: the file is empty")
    try:
        with warnings.catch_warnings(), open(path, "rb") as handle:
            warnings.simplefilter("ignore", DeprecationWarning)
            return pickle.load(handle)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as exc:
        raise DataPreparationError(f"{path}: cannot unpickle: {exc}")
