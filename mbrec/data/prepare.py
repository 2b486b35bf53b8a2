"""Raw multi-behavior logs -> RecBole atomic files (``<name>.inter``, ``<name>.item``).

Every registered dataset has a YAML file in ``properties/dataset/``; its ``prepare:`` block
names a raw *format* and the files to read. One reader per format turns the raw files into
interactions ``(user_id, item_id, behavior, timestamp)``; a shared writer orders them (see
``protocol.md``, "Data") and writes the atomic files into a cache folder, atomically.

Ordering rule (the downstream dataset stable-sorts by (user, timestamp), so this decides ties):
rows are ordered by user, then timestamp; ties keep file order for formats that have one
(CSV logs), and for format A (one matrix per behavior, no file order) ties are ordered by the
behavior's index in the dataset's ``behaviors`` vocabulary, then by item id.

Memory: the CSV readers (tianchi, ijcai15, retailrocket, csv) read the raw file in chunks
into one preallocated array per column (:class:`LogColumns`: behaviors as 1-byte codes), sort
by permuting one column at a time, and hand the writer slices; the log is never held twice
(no list of chunks plus their concatenation, no sorted copy of the whole frame). The atomic
``.inter`` file stays the cache format, so RecBole's loader and every model keep working; a
columnar cache beside it is left for when profiling shows the loader is the bottleneck.

Caching: ``<cache>/<folder>/meta.json`` stores a fingerprint of the prepare version, the
format, every effective option and each raw file's path, size and mtime. A matching
fingerprint reuses the folder without reading raw data.
"""

import csv
import datetime
import hashlib
import json
import logging
import pickle
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mbrec.utils import DATA_DIR_ENV, PROPERTIES_DIR, atomic_path, data_dir, read_yaml
from mbrec.utils import cache_dir as cache_root

logger = logging.getLogger(__name__)

# Bump when the output of any reader changes, so every cached folder is rebuilt.
PREPARE_VERSION = 1

INTER_COLUMNS = ["user_id", "item_id", "behavior", "timestamp"]
INTER_HEADER = "user_id:token\titem_id:token\tbehavior:token\ttimestamp:float"
ITEM_HEADER = "item_id:token\tcategory:token"
META_FILE = "meta.json"

# Rows per pandas chunk when streaming CSV input and when writing output.
CSV_CHUNK_ROWS = 1_000_000
WRITE_CHUNK_ROWS = 500_000
# Bytes read at a time when counting a file's lines (to preallocate the columns).
LINE_COUNT_BLOCK_BYTES = 16 * 2**20
# Bytes of a CSV file looked at to guess its delimiter and header.
SNIFF_BYTES = 64 * 1024
HELDOUT_MODES = ("append", "ignore")
# Counting duplicate rows hashes every row; skipped above this size (full Taobao: ~100M rows).
DUPLICATE_CHECK_MAX_ROWS = 20_000_000
# Keys of a YAML ``prepare:`` block that say where files come from, not what is in them.
LOCATION_KEYS = ("subdir", "source")
# Options that only describe a format's file layout: dropped when ``format`` is overridden.
LAYOUT_KEYS = ("files", "heldout_file")
OVERRIDABLE_KEYS = {
    "format", "files", "heldout_file", "heldout", "time_range", "sep", "header",
    "behavior_map", "size", "seed", "content_dim", "content_noise", "behaviors", "target_behavior",
}

# IJCAI-15 ``user_log_format1.csv``: MMDD dates of 2015, days start at midnight China time.
IJCAI15_YEAR = 2015
CHINA_UTC_OFFSET_S = 8 * 3600
IJCAI15_ACTIONS = {0: "click", 1: "cart", 2: "buy", 3: "fav"}
RETAILROCKET_EVENTS = {"view": "view", "addtocart": "cart", "transaction": "buy"}
MS_PER_SECOND = 1000

# Accepted header names per role in plain CSV/TSV logs (compared lower-cased).
CSV_COLUMN_NAMES = {
    "user_id": ("user", "user_id", "uid", "userid", "visitorid"),
    "item_id": ("item", "item_id", "sid", "iid", "itemid"),
    "behavior": ("behavior", "behavior_type", "action", "action_type", "event"),
    "timestamp": ("timestamp", "time", "ts", "time_stamp"),
}

# Files each format reads when the YAML does not name them (used with ``--format``).
DEFAULT_FILES = {
    "tianchi": {"log": "UserBehavior.csv"},
    "ijcai15": {"log": "user_log_format1.csv"},
    "retailrocket": {"log": "events.csv"},
    "diffurec": {"dict": "dataset.pkl"},
    "csv": {"log": None},  # None: the single file given, or the only file in the folder
    "synthetic": {},
}


class DataPreparationError(ValueError):
    """Raised for any problem with a dataset's name, raw files or options (never a traceback)."""


# ----------------------------------------------------------------------------- registry
def registered_names():
    """Every dataset name with a YAML in ``properties/dataset`` (aliases included)."""
    return sorted(p.stem for p in (PROPERTIES_DIR / "dataset").glob("*.yaml"))


def dataset_spec(name):
    """The YAML spec of dataset ``name`` with aliases resolved; ``spec['name']`` is canonical.

    Raises:
        DataPreparationError: for unknown names (the message lists the valid ones).
    """
    seen = []
    while True:
        path = PROPERTIES_DIR / "dataset" / f"{name}.yaml"
        if not path.is_file():
            raise DataPreparationError(
                f"Unknown dataset {name!r}. Registered datasets: {', '.join(registered_names())}.")
        spec = read_yaml(path)
        seen.append(name)
        if "alias_of" not in spec:
            break
        name = spec["alias_of"]
        if name in seen:
            raise DataPreparationError(f"Alias cycle in dataset configs: {' -> '.join(seen + [name])}")
    spec = dict(spec)
    spec["name"] = name
    spec.setdefault("prepare", {})
    return spec


def default_options(spec):
    """The options the YAML gives: its ``prepare:`` block plus behaviors and held-out mode."""
    options = {k: v for k, v in spec["prepare"].items() if k not in LOCATION_KEYS}
    options["behaviors"] = list(spec["behaviors"])
    options["target_behavior"] = spec.get("target_behavior")
    if options.get("format") == "matrices" or "heldout" in spec:
        options["heldout"] = spec.get("heldout", "append")
    return options


def effective_options(spec, overrides):
    """YAML options updated by ``overrides`` (None values are ignored), validated."""
    options = default_options(spec)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(overrides) - OVERRIDABLE_KEYS)
    if unknown:
        raise DataPreparationError(
            f"Unknown prepare option(s) {unknown}; allowed: {sorted(OVERRIDABLE_KEYS)}")
    if "format" in overrides and overrides["format"] != options.get("format"):
        for key in LAYOUT_KEYS:  # the YAML's file names belong to its own format
            options.pop(key, None)
    options.update(overrides)
    if options.get("format") not in READERS:
        raise DataPreparationError(
            f"Unknown format {options.get('format')!r} for dataset {spec['name']!r}; "
            f"known formats: {', '.join(sorted(READERS))}")
    if "heldout" in options and options["heldout"] not in HELDOUT_MODES:
        raise DataPreparationError(
            f"Option heldout must be one of {HELDOUT_MODES}, got {options['heldout']!r}")
    return options


def variant_name(spec, options):
    """Cache folder / dataset name: the canonical name, plus ``-key_value`` per non-default option.

    e.g. ``retailrocket`` for the YAML settings, ``retailrocket-heldout_ignore`` otherwise, so
    different settings never overwrite each other.
    """
    defaults = default_options(spec)
    parts = [spec["name"]]
    for key in sorted(options):
        value = options[key]
        if defaults.get(key) == value:
            continue
        if isinstance(value, (str, int, float)) and re.fullmatch(r"[\w.]+", str(value)):
            text = str(value)
        else:  # lists, maps, paths: a short stable hash keeps the name readable
            text = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:8]
        parts.append(f"{key}_{text}")
    return "-".join(parts)


# ----------------------------------------------------------------------------- raw files
def _expected_files(options):
    """Role -> file name the format reads (held-out file included where required)."""
    fmt = options["format"]
    if fmt == "matrices":
        files = dict(options.get("files") or {})
        if not files:
            raise DataPreparationError("Format 'matrices' needs option files: {behavior: file name}")
        if options.get("heldout_file"):
            files["heldout"] = options["heldout_file"]
        return files
    return dict(options.get("files") or DEFAULT_FILES[fmt])


def _missing_data_error(spec, options, location, missing):
    """One message saying where to get the raw files, what is expected and how to prepare."""
    name = spec["name"]
    expected = [f for f in _expected_files(options).values() if f] or ["one CSV/TSV log file"]
    subdir = spec["prepare"].get("subdir", name)
    where = (f"not found at {location}" if location else
             f": no raw location given (no --raw, no --data-path, ${DATA_DIR_ENV} unset)")
    lines = [
        f"Raw data for dataset {name!r} {where}" + (f"; missing: {', '.join(missing)}" if missing else "") + ".",
        f"  Get it from: {spec['prepare'].get('source', 'see datasets/README.md')}",
        f"  Expected: a folder holding {', '.join(expected)}"
        + (" (or --raw naming the file itself)" if len(expected) == 1 else ""),
        f"  Then run: python -m mbrec.data prepare {name} --raw /path/to/{subdir}",
        f"  or set {DATA_DIR_ENV}=/path/to/data so that $" f"{DATA_DIR_ENV}/{subdir}/ holds these files"
        f" and run: python -m mbrec.data prepare {name}",
    ]
    return DataPreparationError("\n".join(lines))


def locate_raw_files(spec, options, raw_path=None, data_path=None):
    """Role -> resolved path of each raw file, or a DataPreparationError explaining what to do."""
    fmt = options["format"]
    if fmt == "synthetic":
        return _synthetic_sources()
    expected = _expected_files(options)
    # held-out items are not needed to drop them; read (and count) them only when present
    optional = {"heldout"} if options.get("heldout") == "ignore" else set()
    if raw_path is not None:
        root = Path(raw_path).expanduser().resolve()
    else:
        base = data_dir(data_path)
        if base is None:
            raise _missing_data_error(spec, options, None, [])
        root = base / spec["prepare"].get("subdir", spec["name"])
    if not root.exists():
        raise _missing_data_error(spec, options, root, [])
    if root.is_file():
        if len(set(expected) - optional) != 1:
            raise DataPreparationError(
                f"Format {fmt!r} reads several files ({', '.join(map(str, expected.values()))}); "
                f"--raw must be their folder, not the file {root}")
        return {next(iter(set(expected) - optional)): root}
    files, missing = {}, []
    for role, file_name in expected.items():
        if file_name is None:  # csv: the folder must hold exactly one data file
            candidates = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
            if len(candidates) != 1:
                raise DataPreparationError(
                    f"Format 'csv': {root} holds {len(candidates)} files; pass the log file itself "
                    f"with --raw, or set option files: {{log: NAME}}")
            files[role] = candidates[0]
        elif (root / file_name).is_file():
            files[role] = root / file_name
        elif role not in optional:
            missing.append(file_name)
    if missing:
        raise _missing_data_error(spec, options, root, missing)
    return files


def _synthetic_sources():
    """The generator package's source files stand in for raw data: editing any of them invalidates caches."""
    try:
        from mbrec.data import synthetic
    except ImportError as exc:
        raise DataPreparationError(f"The synthetic generator mbrec.data.synthetic is unavailable: {exc}")
    package_dir = Path(synthetic.__file__).resolve().parent
    return {f"generator/{path.name}": path for path in sorted(package_dir.glob("*.py"))}


def fingerprint(options, raw_files):
    """Hash of everything that determines the output; equal hashes mean the cache is valid."""
    raw = []
    for role, path in sorted(raw_files.items()):
        stat = path.stat()
        raw.append([role, str(path), stat.st_size, stat.st_mtime_ns])
    payload = {"version": PREPARE_VERSION, "format": options["format"], "options": options, "raw": raw}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------- helpers
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


def _line_error(path, line, message):
    return DataPreparationError(f"{path}, line {line}: {message}")


def _numeric_column(values, path, column, first_line, integer):
    """``values`` as int64/float64; names the first bad line (``first_line`` = line of row 0)."""
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    numeric = pd.to_numeric(values, errors="coerce")
    bad = numeric.isna().to_numpy()
    if bad.any():
        position = int(np.argmax(bad))
        value = values.iloc[position]
        problem = "missing value" if pd.isna(value) or str(value).strip() == "" else f"{value!r} is not a number"
        raise _line_error(path, first_line + position, f"column {column!r}: {problem}")
    if integer:
        fraction = (numeric % 1 != 0).to_numpy()
        if fraction.any():
            position = int(np.argmax(fraction))
            raise _line_error(path, first_line + position,
                              f"column {column!r}: {values.iloc[position]!r} is not an integer")
        return numeric.astype(np.int64)
    return numeric.astype(np.float64)


def _behavior_column(values, mapping, vocabulary, path, column, first_line):
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
        raise _line_error(path, first_line + position,
                          f"unknown behavior {value!r} in column {column!r}; allowed: "
                          f"{sorted(mapping)}.{hint}")
    return pd.Categorical(mapped, categories=vocabulary)


def _vocabulary_mapping(vocabulary, mapping):
    """Check that every target of ``mapping`` is in the vocabulary; keys become strings."""
    outside = sorted({str(v) for v in mapping.values()} - set(vocabulary))
    if outside:
        raise DataPreparationError(
            f"Behaviors {outside} are not in the dataset's behaviors {vocabulary}")
    return {str(k): str(v) for k, v in mapping.items()}


def _read_csv_chunks(path, **kwargs):
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


def _csv_header(path, sep):
    """Column names of a CSV with a header row (the file must not be empty)."""
    if path.stat().st_size == 0:
        raise DataPreparationError(f"{path}: the file is empty")
    try:
        return list(pd.read_csv(path, sep=sep, nrows=0).columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataPreparationError(f"{path}: cannot read the header: {exc}")


def _require_columns(path, header, required):
    missing = [c for c in required if c not in header]
    if missing:
        raise DataPreparationError(
            f"{path}: missing column(s) {missing} in the header; found {header}, need {required}")


def _count_lines(path):
    """Newlines in ``path`` + 1: an upper bound on its rows, read in blocks (bounded memory)."""
    lines = 1
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(LINE_COUNT_BLOCK_BYTES), b""):
            lines += block.count(b"\n")
    return lines


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
        """Add one chunk; ``behavior`` is a Categorical over the vocabulary (``_behavior_column``)."""
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


def _in_chunks(frame):
    for start in range(0, len(frame), WRITE_CHUNK_ROWS):
        yield frame.iloc[start:start + WRITE_CHUNK_ROWS]


def _whole_numbers_as_int(timestamps):
    """Integral float timestamps are written as integers (no '.0' noise, exact)."""
    if timestamps.dtype.kind == "f" and np.all(np.mod(timestamps, 1) == 0):
        return timestamps.astype(np.int64)
    return timestamps


def _items_first_category(pairs):
    """item_id -> category of its first occurrence (a few raw items list several categories)."""
    pairs = pd.concat(pairs, ignore_index=True).drop_duplicates("item_id", keep="first")
    return pairs.set_index("item_id")["category"]


def _count_duplicates(frame):
    """Exact duplicate rows (kept, but reported); None for logs too large to hash cheaply."""
    if len(frame) > DUPLICATE_CHECK_MAX_ROWS:
        return None
    return int(frame.duplicated(INTER_COLUMNS).sum())


def _log_output(log, path, items=None, dropped=None):
    """Order a filled :class:`LogColumns` and hand it to the writer (notes: duplicate rows)."""
    if log.n_rows == 0 and not any((dropped or {}).values()):
        raise DataPreparationError(f"{path}: no data rows")
    log.trim()
    if log.columns["timestamp"].dtype.kind == "f":
        log.columns["timestamp"] = _whole_numbers_as_int(log.columns["timestamp"])
    notes = {"duplicate_rows": _count_duplicates(log.frame()) if log.n_rows <= DUPLICATE_CHECK_MAX_ROWS else None}
    log.order_by_user_then_time()
    return ReaderOutput(log.chunks(), items, dropped or {}, notes)


# ----------------------------------------------------------------------------- readers
def read_tianchi(files, options):
    """Format B: Tianchi UserBehavior CSV, no header, user,item,category,behavior,timestamp.

    Option ``time_range: [lo, hi)`` drops rows outside (counted in meta.json).
    """
    path = files["log"]
    if path.stat().st_size == 0:
        raise DataPreparationError(f"{path}: the file is empty")
    vocabulary = options["behaviors"]
    mapping = _vocabulary_mapping(vocabulary, {b: b for b in ("pv", "fav", "cart", "buy") if b in vocabulary})
    time_range = options.get("time_range")
    names = ["user_id", "item_id", "category", "behavior", "timestamp"]
    log, categories, dropped, line = LogColumns(_count_lines(path), vocabulary), [], 0, 1
    for chunk in _read_csv_chunks(path, header=None, names=names, dtype={"behavior": str}):
        frame = pd.DataFrame({
            "user_id": _numeric_column(chunk["user_id"], path, "user_id", line, True),
            "item_id": _numeric_column(chunk["item_id"], path, "item_id", line, True),
            "behavior": _behavior_column(chunk["behavior"], mapping, vocabulary, path, "behavior_type", line),
            "timestamp": _numeric_column(chunk["timestamp"], path, "timestamp", line, True),
        })
        category = _numeric_column(chunk["category"], path, "category_id", line, True)
        line += len(chunk)
        if time_range:
            keep = ((frame["timestamp"] >= time_range[0]) & (frame["timestamp"] < time_range[1])).to_numpy()
            dropped += int((~keep).sum())
            frame, category = frame[keep], category[keep]
        log.append(frame["user_id"], frame["item_id"], frame["behavior"].array, frame["timestamp"])
        categories.append(pd.DataFrame({"item_id": frame["item_id"], "category": category})
                          .drop_duplicates("item_id"))
    reasons = {f"timestamp outside time_range [{time_range[0]}, {time_range[1]})": dropped} if time_range else {}
    return _log_output(log, path, _items_first_category(categories), reasons)


def read_ijcai15(files, options):
    """IJCAI-15 ``user_log_format1.csv`` (header; time_stamp MMDD of 2015, action_type 0-3)."""
    path = files["log"]
    required = ["user_id", "item_id", "cat_id", "time_stamp", "action_type"]
    _require_columns(path, _csv_header(path, ","), required)
    vocabulary = options["behaviors"]
    mapping = _vocabulary_mapping(vocabulary, IJCAI15_ACTIONS)
    log, categories, line = LogColumns(_count_lines(path), vocabulary), [], 2
    for chunk in _read_csv_chunks(path, usecols=required, dtype={"action_type": str}):
        mmdd = _numeric_column(chunk["time_stamp"], path, "time_stamp", line, True)
        try:
            dates = pd.to_datetime(pd.DataFrame({"year": IJCAI15_YEAR, "month": mmdd // 100, "day": mmdd % 100}))
        except ValueError:
            month, day = mmdd // 100, mmdd % 100
            bad = ~((month >= 1) & (month <= 12) & (day >= 1) & (day <= 31)).to_numpy()
            position = int(np.argmax(bad)) if bad.any() else 0
            raise _line_error(path, line + position, f"time_stamp {mmdd.iloc[position]} is not a valid MMDD date")
        seconds = dates.to_numpy().astype("datetime64[s]").astype(np.int64) - CHINA_UTC_OFFSET_S
        item_id = _numeric_column(chunk["item_id"], path, "item_id", line, True)
        log.append(_numeric_column(chunk["user_id"], path, "user_id", line, True), item_id,
                   _behavior_column(chunk["action_type"], mapping, vocabulary, path, "action_type", line), seconds)
        categories.append(pd.DataFrame({
            "item_id": item_id,
            "category": _numeric_column(chunk["cat_id"], path, "cat_id", line, True)}).drop_duplicates("item_id"))
        line += len(chunk)
    return _log_output(log, path, _items_first_category(categories) if categories else None)


def read_retailrocket(files, options):
    """RetailRocket ``events.csv``: ms timestamps -> seconds; view/addtocart/transaction."""
    path = files["log"]
    required = ["timestamp", "visitorid", "event", "itemid"]
    _require_columns(path, _csv_header(path, ","), required)
    vocabulary = options["behaviors"]
    mapping = _vocabulary_mapping(vocabulary, RETAILROCKET_EVENTS)
    log, line = LogColumns(_count_lines(path), vocabulary, timestamp_dtype=np.float64), 2
    for chunk in _read_csv_chunks(path, usecols=required, dtype={"event": str}):
        log.append(_numeric_column(chunk["visitorid"], path, "visitorid", line, True),
                   _numeric_column(chunk["itemid"], path, "itemid", line, True),
                   _behavior_column(chunk["event"], mapping, vocabulary, path, "event", line),
                   _numeric_column(chunk["timestamp"], path, "timestamp", line, True) / MS_PER_SECOND)
        line += len(chunk)
    return _log_output(log, path)


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
    mapping = _vocabulary_mapping(vocabulary, options.get("behavior_map") or {b: b for b in vocabulary})
    if has_header:
        header = _csv_header(path, sep)
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
    log = LogColumns(_count_lines(path), vocabulary, id_dtype=object, timestamp_dtype=np.float64)
    for chunk in _read_csv_chunks(path, sep=sep, keep_default_na=False, **kwargs):
        frame = {}
        for role in ("user_id", "item_id"):
            ids = chunk[columns[role]].str.strip()
            empty = (ids == "").to_numpy()
            if empty.any():
                raise _line_error(path, line + int(np.argmax(empty)), f"empty {role}")
            frame[role] = ids
        frame["behavior"] = _behavior_column(chunk[columns["behavior"]], mapping, vocabulary,
                                             path, columns["behavior"], line)
        frame["timestamp"] = _numeric_column(chunk[columns["timestamp"]].str.strip(), path,
                                             columns["timestamp"], line, False)
        log.append(frame["user_id"], frame["item_id"], frame["behavior"], frame["timestamp"])
        line += len(chunk)
    return _log_output(log, path)


def _load_pickle(path):
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


def _load_matrix(path):
    """A pickled scipy sparse matrix as (rows, cols, values) int64/int64/number arrays."""
    import scipy.sparse as sp

    matrix = _load_pickle(path)
    if not sp.issparse(matrix):
        raise DataPreparationError(f"{path}: expected a pickled scipy.sparse matrix, got {type(matrix).__name__}")
    coo = sp.coo_matrix(matrix)
    coo.sum_duplicates()
    keep = coo.data != 0  # explicit zeros are not interactions
    return coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int64), coo.data[keep], coo.shape


def _load_heldout(path):
    """Held-out (users, items) from a ``tst_int`` list or a ``test_mat.pkl`` sparse matrix."""
    import scipy.sparse as sp

    loaded = _load_pickle(path)
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
    stamps = _whole_numbers_as_int(stamps) if stamps.dtype.kind == "f" else stamps.astype(np.int64)
    dropped, notes = {}, {}
    if "heldout" in files:
        held_users, held_items = _load_heldout(files["heldout"])
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
        else:
            dropped["held-out items (heldout: ignore)"] = int(len(held_users))
    order = np.lexsort((items, codes, stamps, users))
    log = pd.DataFrame({
        "user_id": users[order],
        "item_id": items[order],
        "behavior": pd.Categorical.from_codes(codes[order], categories=vocabulary),
        "timestamp": stamps[order],
    })
    return ReaderOutput(_in_chunks(log), None, dropped, notes)


def read_diffurec(files, options):
    """Format C: {train, val, test: user -> items in time order, umap, smap}; one behavior.

    Timestamps are positions in train + val + test, so leave-one-out reproduces the split.
    """
    path = files["dict"]
    data = _load_pickle(path)
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
    return ReaderOutput(_in_chunks(log), None, {}, notes)


def read_synthetic(files, options):
    """Delegate to mbrec.data.synthetic (chunks come per user, already in time order)."""
    from mbrec.data import synthetic

    size, seed = options.get("size", "small"), int(options.get("seed", 0))
    vocabulary = options["behaviors"]
    mapping = _vocabulary_mapping(vocabulary, {b: b for b in vocabulary})

    def chunks():
        for chunk in synthetic.iter_interaction_chunks(size, seed):
            yield pd.DataFrame({
                "user_id": chunk["user_id"].to_numpy(np.int64),
                "item_id": chunk["item_id"].to_numpy(np.int64),
                "behavior": _behavior_column(chunk["behavior"], mapping, vocabulary,
                                             "synthetic generator", "behavior", 0),
                "timestamp": chunk["timestamp"].to_numpy(),
            })

    categories = np.asarray(synthetic.item_categories(size, seed))
    items = pd.Series(categories, index=np.arange(len(categories)), name="category")
    content_dim = int(options.get("content_dim") or 0)

    def write_content(folder, name, item_ids):
        if content_dim <= 0:
            return
        noise = float(options.get("content_noise", synthetic.CONTENT_NOISE))  # synthetic's std unless set
        vectors = np.asarray(synthetic.item_content(size, seed, content_dim, noise), dtype=np.float32)
        np.savez(folder / f"{name}.content.npz", item_id=np.array([str(i) for i in item_ids]),
                 vectors=vectors[item_ids])

    return ReaderOutput(chunks(), items, {}, {}, write_content)


READERS = {
    "tianchi": read_tianchi,
    "ijcai15": read_ijcai15,
    "retailrocket": read_retailrocket,
    "matrices": read_matrices,
    "diffurec": read_diffurec,
    "csv": read_csv_log,
    "synthetic": read_synthetic,
}


# ----------------------------------------------------------------------------- writer
def _write_atomic_files(folder, name, output, vocabulary):
    """Stream ``output`` into ``folder/name.inter`` (+ .item, extras); return the counts for meta."""
    n_rows, behavior_counts = 0, np.zeros(len(vocabulary), dtype=np.int64)
    user_ids, item_ids = [], []
    with open(folder / f"{name}.inter", "w", encoding="utf-8", newline="") as handle:
        handle.write(INTER_HEADER + "\n")
        for chunk in output.chunks:
            if not len(chunk):
                continue
            chunk[INTER_COLUMNS].to_csv(handle, sep="\t", header=False, index=False, lineterminator="\n")
            n_rows += len(chunk)
            behavior_counts += np.bincount(pd.Categorical(chunk["behavior"], categories=vocabulary).codes,
                                           minlength=len(vocabulary))
            user_ids.append(pd.unique(chunk["user_id"]))
            item_ids.append(pd.unique(chunk["item_id"]))
    if n_rows == 0:
        raise DataPreparationError(f"Dataset {name!r}: no interactions left to write")
    users = pd.unique(np.concatenate(user_ids))
    items = np.sort(pd.unique(np.concatenate(item_ids)))
    if output.items is not None:
        categories = output.items.reindex(items)
        known = categories.notna().to_numpy()  # every item should have one; never write NaN
        table = pd.DataFrame({"item_id": items[known],
                              "category": categories[known].astype(output.items.dtype).to_numpy()})
        with open(folder / f"{name}.item", "w", encoding="utf-8", newline="") as handle:
            handle.write(ITEM_HEADER + "\n")
            table.to_csv(handle, sep="\t", header=False, index=False, lineterminator="\n")
    if output.write_extra is not None:
        output.write_extra(folder, name, items)
    return {
        "n_rows": n_rows,
        "behavior_counts": {b: int(c) for b, c in zip(vocabulary, behavior_counts)},
        "n_users": int(len(users)),
        "n_items": int(len(items)),
    }


def read_meta(folder):
    """The meta.json of a prepared folder, or None."""
    try:
        with open(Path(folder) / META_FILE, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def prepare(name, raw_path=None, data_path=None, cache_dir=None, force=False, **overrides):
    """Prepare dataset ``name`` as RecBole atomic files and return their folder.

    Args:
        name: a registered dataset (``properties/dataset/NAME.yaml``; aliases resolved).
        raw_path: a raw file or folder; default ``data_dir(data_path) / prepare.subdir``.
        data_path: root of raw data (default ``$MBREC_DATA_DIR``).
        cache_dir: root of prepared folders (default ``$MBREC_CACHE_DIR`` or ~/.cache/mbrec).
        force: rebuild even when the cached fingerprint matches.
        **overrides: prepare options, e.g. ``heldout='ignore'``, ``size``, ``seed``, ``format``,
            ``sep``, ``behavior_map``, ``time_range``.

    Returns:
        pathlib.Path ``<cache>/<folder>``; ``folder`` is the canonical name for the YAML
        settings and ``<name>-<key>_<value>...`` when options differ (e.g.
        ``retailrocket-heldout_ignore``). The atomic files inside are named after the folder
        (``<folder>.inter``, ``<folder>.item``, ``meta.json``), so RecBole loads them with
        ``data_path=<cache>`` and ``dataset=<folder>``.

    Raises:
        DataPreparationError: unknown name/option, missing raw data or malformed input. On
        failure the cache folder is left as it was.
    """
    spec = dataset_spec(name)
    options = effective_options(spec, overrides)
    folder_name = variant_name(spec, options)
    target = cache_root(cache_dir) / folder_name
    try:
        raw_files = locate_raw_files(spec, options, raw_path, data_path)
    except DataPreparationError:
        meta = read_meta(target)
        if meta and not force and meta.get("options_fingerprint") == _options_hash(options) \
                and raw_path is None:
            logger.warning("Raw data for %s not found; reusing prepared %s", name, target)
            return target
        raise
    digest = fingerprint(options, raw_files)
    meta = read_meta(target)
    if not force and meta and meta.get("fingerprint") == digest and (target / f"{folder_name}.inter").is_file():
        logger.info("Reusing prepared %s (fingerprint %s)", target, digest[:12])
        return target
    started = time.time()
    logger.info("Preparing %s from %s into %s", name, {k: str(v) for k, v in raw_files.items()}, target)
    output = READERS[options["format"]](raw_files, options)
    with atomic_path(target) as tmp:
        tmp.mkdir()
        counts = _write_atomic_files(tmp, folder_name, output, options["behaviors"])
        meta = {
            "name": folder_name,
            "dataset": spec["name"],
            "format": options["format"],
            "options": options,
            "fingerprint": digest,
            "options_fingerprint": _options_hash(options),
            "prepare_version": PREPARE_VERSION,
            **counts,
            "dropped": output.dropped,
            "notes": output.notes,
            "raw_files": {role: str(path) for role, path in raw_files.items()},
            "files": sorted(p.name for p in tmp.iterdir()) + [META_FILE],
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 3),
        }
        with open(tmp / META_FILE, "w", encoding="utf-8") as handle:
            json.dump(meta, handle, indent=1, sort_keys=True, default=str)
    return target


def _options_hash(options):
    payload = {"version": PREPARE_VERSION, "options": options}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
