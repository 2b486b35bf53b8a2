"""Raw multi-behavior logs -> RecBole atomic files (``<name>.inter``, ``<name>.item``).

Every dataset has a YAML file: a built-in one in ``properties/dataset/``, or the user's own,
declared with ``--dataset-file`` (``mbrec.data.declarations``); its ``prepare:`` block names a
raw *format* and the files to read. One reader per format (``mbrec/data/readers/``, the
registry ``FORMATS``) turns the raw files into interactions ``(user_id, item_id, behavior,
timestamp)``; the shared steps here validate options, locate raw files, fingerprint them, and
write the atomic files into a cache folder, atomically.

Ordering rule (the downstream dataset stable-sorts by (user, timestamp), so this decides ties):
rows are ordered by user, then timestamp; ties keep file order for formats that have one
(CSV logs), and for format A (one matrix per behavior, no file order) ties are ordered by the
behavior's index in the dataset's ``behaviors`` vocabulary, then by item id. The readers apply
it (``mbrec.data.readers.table``); the atomic ``.inter`` file stays the cache format, so
RecBole's loader and every model keep working; a columnar cache beside it is left for when
profiling shows the loader is the bottleneck.

Caching: ``<cache>/<folder>/meta.json`` stores a fingerprint of the prepare version, the
format, every effective option and each raw file's path, size and mtime. A matching
fingerprint reuses the folder without reading raw data; a changed file (same path) rebuilds it.
A folder is never shared by two raw inputs: when it was built from other raw paths, preparing
stops and says so (a second data set gets its own name; ``--force`` replaces the folder).
"""

import datetime
import hashlib
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mbrec.data import declarations
from mbrec.data.errors import DataPreparationError
from mbrec.data.readers import FORMATS
# LogColumns and ReaderOutput are re-exported: callers import them from here
from mbrec.data.readers.table import INTER_COLUMNS, LogColumns, ReaderOutput  # noqa: F401
from mbrec.utils import DATA_DIR_ENV, atomic_path, data_dir, read_yaml
from mbrec.utils import cache_dir as cache_root

logger = logging.getLogger(__name__)

# Bump when the output of any reader changes, so every cached folder is rebuilt.
PREPARE_VERSION = 1

INTER_HEADER = "user_id:token\titem_id:token\tbehavior:token\ttimestamp:float"
ITEM_HEADER = "item_id:token\tcategory:token"
META_FILE = "meta.json"

HELDOUT_MODES = ("append", "ignore")
# Keys of a YAML ``prepare:`` block that say where files come from, not what is in them.
LOCATION_KEYS = ("subdir", "source", "raw")
# Options that only describe a format's file layout: dropped when ``format`` is overridden.
LAYOUT_KEYS = ("files", "heldout_file")
OVERRIDABLE_KEYS = {
    "format", "files", "heldout_file", "heldout", "time_range", "sep", "header",
    "behavior_map", "size", "seed", "content_dim", "content_noise", "behaviors", "target_behavior",
}


# ----------------------------------------------------------------------------- registry
def registered_names():
    """Every dataset name: built-in YAMLs (aliases included) and the user's declared ones."""
    return declarations.dataset_names()


def dataset_spec(name):
    """The YAML spec of dataset ``name`` with aliases resolved; ``spec['name']`` is canonical.

    ``spec['declared_in']`` is the YAML it came from; ``spec['raw']`` the declaration's own raw
    location (``prepare.raw``, user datasets), else None.

    Raises:
        DataPreparationError: for unknown names (the message lists the valid ones).
    """
    seen = []
    while True:
        path = declarations.declaration_file(name)
        if path is None:
            raise DataPreparationError(
                f"Unknown dataset {name!r}. Registered datasets: {', '.join(registered_names())}. "
                f"Your own dataset: declare it in NAME.yaml and pass --dataset-file NAME.yaml "
                f"(datasets/README.md, 'Your own dataset').")
        spec = declarations.check_declaration(path) if path.stem in declarations.declared_dataset_files() \
            else read_yaml(path)
        seen.append(name)
        # an alias names another dataset; a variant (``extends``: other run settings, e.g. a longer
        # window) prepares its base dataset's data
        if "alias_of" not in spec and "extends" not in spec:
            break
        name = spec.get("alias_of") or spec["extends"]
        if name in seen:
            raise DataPreparationError(f"Alias cycle in dataset configs: {' -> '.join(seen + [name])}")
    spec = dict(spec)
    spec["name"] = name
    spec.setdefault("prepare", {})
    spec["declared_in"] = str(path)
    spec["raw"] = declarations.raw_location(path, spec)
    return spec


def default_options(spec):
    """The options the YAML gives: its ``prepare:`` block plus behaviors and held-out mode."""
    options = {k: v for k, v in spec["prepare"].items() if k not in LOCATION_KEYS}
    options["behaviors"] = list(spec["behaviors"])
    options["target_behavior"] = spec.get("target_behavior")
    if options.get("format") == "matrices" or "heldout" in spec:
        options["heldout"] = spec.get("heldout", "append")
    return options


def update_prepare_options(options, update):
    """``options`` updated by ``update`` as every layer of prepare options is (the YAML, ``--config``
    files, ``prepare.KEY=...`` and ``--option``): each key is replaced whole (a ``files`` map too,
    never merged entry by entry), and a new ``format`` drops the old format's file layout."""
    options = dict(options)
    if "format" in update and update["format"] != options.get("format"):
        for key in LAYOUT_KEYS:  # the YAML's file names belong to its own format
            options.pop(key, None)
    options.update(update)
    return options


def effective_options(spec, overrides):
    """YAML options updated by ``overrides`` (None values are ignored), validated."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(overrides) - OVERRIDABLE_KEYS)
    if unknown:
        raise DataPreparationError(
            f"Unknown prepare option(s) {unknown}; allowed: {sorted(OVERRIDABLE_KEYS)}")
    options = update_prepare_options(default_options(spec), overrides)
    if options.get("format") not in FORMATS:
        raise DataPreparationError(
            f"Unknown format {options.get('format')!r} for dataset {spec['name']!r}; "
            f"known formats: {', '.join(sorted(FORMATS))}")
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
    raw_format = FORMATS[options["format"]]
    if raw_format.expected_files is not None:
        return raw_format.expected_files(options)
    return dict(options.get("files") or raw_format.default_files)


def file_option_names(options):
    """Role -> the prepare option that names its file (``prepare.files.buy``, ``prepare.heldout_file``)."""
    given = options.get("files") or {}
    names = {}
    for role in _expected_files(options):
        if role == "heldout" and options.get("heldout_file"):
            names[role] = "prepare.heldout_file"
        elif role in given:
            names[role] = f"prepare.files.{role}"
        else:
            names[role] = f"format {options['format']}'s default; set prepare.files.{role}"
    return names


def _missing_data_error(spec, options, location, missing):
    """One message saying where to get the raw files, what is expected and how to prepare.

    ``missing`` maps each missing file name to its role, so the message names the option to change.
    """
    name = spec["name"]
    expected = [f for f in _expected_files(options).values() if f] or ["one CSV/TSV log file"]
    subdir = spec["prepare"].get("subdir", name)
    where = (f"not found at {location}" if location else
             f": no raw location given (no --raw, no --data-path, ${DATA_DIR_ENV} unset)")
    option_names = file_option_names(options)
    missing_text = ", ".join(f"{file_name} ({option_names.get(role, 'prepare.files')})"
                             for file_name, role in dict(missing).items())
    lines = [
        f"Raw data for dataset {name!r} {where}" + (f"; missing: {missing_text}" if missing else "") + ".",
        f"  Get it from: {spec['prepare'].get('source', 'see datasets/README.md')}",
        f"  Expected: a folder holding {', '.join(expected)}"
        + (" (or --raw naming the file itself)" if len(expected) == 1 else ""),
        f"  Then run: python -m mbrec.data prepare {name} --raw /path/to/{subdir}",
        f"  or set {DATA_DIR_ENV}=/path/to/data so that $" f"{DATA_DIR_ENV}/{subdir}/ holds these files"
        f" and run: python -m mbrec.data prepare {name}",
    ]
    if name in declarations.declared_dataset_files():
        lines.append(f"  or set prepare.raw: /path/to/{subdir} in {spec['declared_in']}")
    return DataPreparationError("\n".join(lines))


def locate_raw_files(spec, options, raw_path=None, data_path=None):
    """Role -> resolved path of each raw file, or a DataPreparationError explaining what to do."""
    fmt = options["format"]
    if FORMATS[fmt].sources is not None:
        return FORMATS[fmt].sources()
    expected = _expected_files(options)
    # held-out items are not needed to drop them; read (and count) them only when present
    optional = {"heldout"} if options.get("heldout") == "ignore" else set()
    if raw_path is not None:
        root = Path(raw_path).expanduser().resolve()
    elif spec.get("raw") is not None and data_path is None:  # a user declaration's own prepare.raw
        root = Path(spec["raw"])
    else:
        base = data_dir(data_path)
        if base is None:
            raise _missing_data_error(spec, options, None, {})
        root = base / spec["prepare"].get("subdir", spec["name"])
    if not root.exists():
        raise _missing_data_error(spec, options, root, {})
    if root.is_file():
        if len(set(expected) - optional) != 1:
            raise DataPreparationError(
                f"Format {fmt!r} reads several files ({', '.join(map(str, expected.values()))}); "
                f"--raw must be their folder, not the file {root}")
        return {next(iter(set(expected) - optional)): root}
    files, missing = {}, {}
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
            missing[file_name] = role
    if missing:
        raise _missing_data_error(spec, options, root, missing)
    return files


def fingerprint(options, raw_files):
    """Hash of everything that determines the output; equal hashes mean the cache is valid."""
    raw = []
    for role, path in sorted(raw_files.items()):
        stat = path.stat()
        raw.append([role, str(path), stat.st_size, stat.st_mtime_ns])
    payload = {"version": PREPARE_VERSION, "format": options["format"], "options": options, "raw": raw}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# ----------------------------------------------------------------------------- writer
def _write_atomic_files(folder, name, output, vocabulary):
    """Stream ``output`` into ``folder/name.inter`` (+ .item, extras); return the counts for meta."""
    n_rows, behavior_counts = 0, np.zeros(len(vocabulary), dtype=np.int64)
    user_ids, item_ids = [], []
    negative_times, future_times, now = 0, 0, time.time()
    with open(folder / f"{name}.inter", "w", encoding="utf-8", newline="") as handle:
        handle.write(INTER_HEADER + "\n")
        for chunk in output.chunks:
            if not len(chunk):
                continue
            chunk[INTER_COLUMNS].to_csv(handle, sep="\t", header=False, index=False, lineterminator="\n")
            n_rows += len(chunk)
            behavior_counts += np.bincount(pd.Categorical(chunk["behavior"], categories=vocabulary).codes,
                                           minlength=len(vocabulary))
            stamps = pd.to_numeric(chunk["timestamp"], errors="coerce").to_numpy()
            negative_times += int((stamps < 0).sum())
            future_times += int((stamps > now).sum())
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
        "timestamps_negative": negative_times,
        "timestamps_after_preparation": future_times,
    }


def data_checks(meta):
    """Lines on what preparing found and did about odd rows (duplicates, odd timestamps).

    Such rows are kept: a log may legitimately repeat an event, and timestamps only order a
    user's events. The lines say so, so that a surprising count is seen before training.
    """
    notes = meta.get("notes") or {}
    lines = []
    if notes.get("duplicate_rows"):
        lines.append(f"kept {notes['duplicate_rows']:,} duplicate rows (same user, item, behavior and timestamp)")
    if notes.get("duplicate_cells_kept_latest"):
        lines.append(f"{notes['duplicate_cells_kept_latest']:,} (user, item) cells listed twice in a matrix: "
                     f"kept once, with the latest timestamp")
    if meta.get("timestamps_negative"):
        lines.append(f"kept {meta['timestamps_negative']:,} negative timestamps (they sort first in their user's "
                     f"history)")
    if meta.get("timestamps_after_preparation"):
        lines.append(f"kept {meta['timestamps_after_preparation']:,} timestamps later than the preparation time "
                     f"(milliseconds where seconds were expected? they only order each user's events)")
    return lines


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
            # A node or laptop without the raw data may run from a shared prepared copy; the
            # warning names both paths, so a mistyped --data-path does not go unnoticed.
            looked_at = data_dir(data_path) or "nowhere (no --data-path, $" + DATA_DIR_ENV + " unset)"
            built_from = ", ".join(sorted(str(path) for path in (meta.get("raw_files") or {}).values())) or "?"
            logger.warning("Raw data for %s not found under %s; using the prepared copy %s, built %s from %s",
                           name, looked_at, target, meta.get("created", "?"), built_from)
            return target
        raise
    digest = fingerprint(options, raw_files)
    meta = read_meta(target)
    if not force and meta and meta.get("fingerprint") == digest and (target / f"{folder_name}.inter").is_file():
        logger.info("Reusing prepared %s (fingerprint %s)", target, digest[:12])
        return target
    if not force and meta and FORMATS[options["format"]].sources is None:
        _refuse_other_raw_input(spec, target, meta, raw_files)
    started = time.time()
    logger.info("Preparing %s from %s into %s", name, {k: str(v) for k, v in raw_files.items()}, target)
    output = FORMATS[options["format"]].read(raw_files, options)
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
    for line in data_checks(meta):
        logger.warning("%s: %s", folder_name, line)
    return target


def _refuse_other_raw_input(spec, target, meta, raw_files):
    """Stop when ``target`` was built from other raw paths: one folder, one raw input.

    The same paths with new content (a re-downloaded file) rebuild the folder; other paths
    would silently swap the data behind the dataset's name and its results.
    """
    built_from = {role: str(path) for role, path in (meta.get("raw_files") or {}).items()}
    reading = {role: str(path) for role, path in raw_files.items()}
    if not built_from or built_from == reading:
        return
    raise DataPreparationError(
        f"The prepared folder {target} of dataset {spec['name']!r} was built from "
        f"{', '.join(sorted(built_from.values()))}; this run reads {', '.join(sorted(reading.values()))}. "
        f"A different data set needs its own name: declare it in a YAML of its own (--dataset-file, "
        f"datasets/README.md 'Your own dataset'). If it is the same data moved, rebuild the folder with: "
        f"python -m mbrec.data prepare {spec['name']} --raw {_common_folder(raw_files)} --force")


def _common_folder(raw_files):
    paths = [Path(path) for path in raw_files.values()]
    return paths[0] if len(paths) == 1 else paths[0].parent


def _options_hash(options):
    payload = {"version": PREPARE_VERSION, "options": options}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
