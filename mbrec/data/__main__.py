"""Command line for data preparation.

    python -m mbrec.data list [--dataset-file NAME.yaml ...]
    python -m mbrec.data prepare NAME [--dataset-file NAME.yaml] [--raw PATH] [--data-path DIR] [--cache-dir DIR] [--force]
                                      [--format F] [--heldout append|ignore] [--size S] [--seed N]
                                      [--sep SEP] [--option KEY=YAML_VALUE ...]
    python -m mbrec.data synthesize-ijcai15 OUT [--size ijcai] [--seed N]
        (the synthetic log in IJCAI-15's raw format, then: prepare ijcai --raw OUT --format ijcai15)
"""

import argparse
import logging
import os
import sys
import time

import yaml

from mbrec.data.prepare import (
    HELDOUT_MODES, META_FILE, DataPreparationError, data_checks, dataset_spec, effective_options,
    fingerprint, locate_raw_files, prepare, read_meta, registered_names, variant_name,
)
from mbrec.data.declarations import DATASET_FILE_HELP, use_dataset_files
from mbrec.data.readers import FORMATS
from mbrec.utils import CACHE_DIR_ENV, DATA_DIR_ENV, data_dir
from mbrec.utils import cache_dir as cache_root


def _parse_option(text):
    """``KEY=VALUE`` with VALUE parsed as YAML (so lists and maps work: behavior_map={1: view})."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m mbrec.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="registered datasets: format, raw data found, prepared")
    listing.add_argument("--data-path", help="root of raw data (default $MBREC_DATA_DIR)")
    listing.add_argument("--cache-dir", help="root of prepared data (default $MBREC_CACHE_DIR)")
    listing.add_argument("--dataset-file", action="append", default=[], metavar="NAME.yaml",
                         help=DATASET_FILE_HELP)

    prep = commands.add_parser("prepare", help="write RecBole atomic files for a dataset")
    prep.add_argument("name", help="registered dataset name (see `list`), or one declared with --dataset-file")
    prep.add_argument("--dataset-file", action="append", default=[], metavar="NAME.yaml", help=DATASET_FILE_HELP)
    prep.add_argument("--raw", help="raw file or folder (default <data-path>/<subdir>)")
    prep.add_argument("--data-path", help="root of raw data (default $MBREC_DATA_DIR)")
    prep.add_argument("--cache-dir", help="root of prepared data (default $MBREC_CACHE_DIR or ~/.cache/mbrec)")
    prep.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    prep.add_argument("--format", choices=sorted(FORMATS), help="raw format (default from the YAML)")
    prep.add_argument("--heldout", choices=HELDOUT_MODES, help="format A held-out items")
    prep.add_argument("--size", help="synthetic dataset size")
    prep.add_argument("--seed", type=int, help="synthetic dataset seed")
    prep.add_argument("--sep", help="CSV delimiter (default: sniffed)")
    prep.add_argument("--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE",
                      help="any other prepare option, VALUE in YAML syntax (repeatable)")

    synth = commands.add_parser("synthesize-ijcai15",
                                help="write the synthetic log as IJCAI-15's user_log_format1.csv (streamed)")
    synth.add_argument("out", help="output file, or folder for user_log_format1.csv")
    synth.add_argument("--size", default="ijcai", help="synthetic size (default ijcai: ~30M rows)")
    synth.add_argument("--seed", type=int, default=2024, help="generator seed (default 2024)")
    return parser


def _status(name, data_path, cache_path):
    """(format, raw status, prepared status) of one registered dataset, without reading raw data."""
    spec = dataset_spec(name)
    options = effective_options(spec, {})
    target = cache_root(cache_path) / variant_name(spec, options)
    try:
        raw_files = locate_raw_files(spec, options, None, data_path)
        raw = "found"
    except DataPreparationError:
        raw_files, raw = None, "missing"
    meta = read_meta(target)
    if meta is None:
        prepared = "no"
    elif raw_files is not None and meta.get("fingerprint") != fingerprint(options, raw_files):
        prepared = f"stale ({target})"
    else:
        prepared = f"yes ({meta.get('n_rows', '?')} rows, {target})"
    alias = f" -> {spec['name']}" if spec["name"] != name else ""
    return f"{name}{alias}", options["format"], raw, prepared


def _where(label, path, source):
    """One line: which folder was looked in, where that choice came from, and whether it exists."""
    if path is None:
        return f"{label}: not set ({source}); datasets that need raw files show raw missing"
    return f"{label}: {path} ({source}; {'exists' if path.is_dir() else 'does not exist'})"


def cmd_list(args):
    raw_root = data_dir(args.data_path)
    raw_source = ("--data-path" if args.data_path else
                  f"${DATA_DIR_ENV}" if raw_root else f"neither --data-path nor ${DATA_DIR_ENV}")
    prepared_root = cache_root(args.cache_dir)
    prepared_source = ("--cache-dir" if args.cache_dir else
                       f"${CACHE_DIR_ENV}" if os.environ.get(CACHE_DIR_ENV) else f"default; ${CACHE_DIR_ENV} unset")
    print(_where("raw data", raw_root, raw_source))
    print(_where("prepared data", prepared_root, prepared_source))
    rows = [("name", "format", "raw", "prepared")]
    rows += [_status(name, args.data_path, args.cache_dir) for name in registered_names()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    return 0


def cmd_prepare(args):
    overrides = dict(args.option)
    for key in ("format", "heldout", "size", "seed", "sep"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    started = time.time()
    folder = prepare(args.name, raw_path=args.raw, data_path=args.data_path, cache_dir=args.cache_dir,
                     force=args.force, **overrides)
    meta = read_meta(folder) or {}
    counts = ", ".join(f"{b} {c:,}" for b, c in meta.get("behavior_counts", {}).items())
    print(f"Prepared {args.name} -> {folder}")
    print(f"  RecBole: data_path={folder.parent} dataset={folder.name}")
    print(f"  files: {', '.join(meta.get('files', [META_FILE]))}")
    print(f"  {meta.get('n_rows', 0):,} interactions ({counts}); "
          f"{meta.get('n_users', 0):,} users, {meta.get('n_items', 0):,} items")
    for reason, count in (meta.get("dropped") or {}).items():
        print(f"  dropped {count:,}: {reason}")
    for line in data_checks(meta):
        print(f"  {line}")
    print(f"  {time.time() - started:.2f}s (built {meta.get('created', '?')})")
    return 0


def cmd_synthesize_ijcai15(args):
    from pathlib import Path

    from mbrec.data import synthetic

    started = time.time()
    size = yaml.safe_load(args.size) if args.size.strip().startswith("{") else args.size
    out = Path(args.out)
    n_rows = synthetic.write_ijcai15_log(out, size, args.seed)
    print(f"wrote {n_rows:,} rows to {out / synthetic.IJCAI15_FILE if out.is_dir() else out} "
          f"({time.time() - started:.1f}s); prepare with: python -m mbrec.data prepare ijcai --raw {out} "
          f"--format ijcai15")
    return 0


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        use_dataset_files(getattr(args, "dataset_file", None))
        if args.command == "synthesize-ijcai15":
            return cmd_synthesize_ijcai15(args)
        return cmd_list(args) if args.command == "list" else cmd_prepare(args)
    except DataPreparationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
