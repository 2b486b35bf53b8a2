"""Collecting run records for tables: load and validate the stored files, report the unusable
ones, keep the newest record of a (model, dataset, seed, protocol) run."""

from collections import defaultdict
from datetime import datetime
from pathlib import Path

from mbrec.protocol import record_protocol
from mbrec.results import ResultsError, default_results_dir, load_record, record_files

# Records without a creation time sort as the oldest when duplicates are resolved.
_OLDEST = datetime.min.isoformat()


def _created(record):
    return str(record.get("created") or _OLDEST)


def _run_identity(record):
    return str(record["model"]), str(record["dataset"]), int(record["seed"])


def _newest_per_run(entries):
    """Keep the newest of several ``(path, record)`` entries per (model, dataset, seed, protocol).

    Records under different protocols are all kept (a table refuses to mix them, or shows each in
    its own column). Returns ``(records, problems)``; each duplicate is reported, naming the file
    kept and why (the newest of one protocol: same measurement, so the latest code and settings).
    A kept record that had duplicates is a copy carrying that message as ``record_choice``, so the
    table's footnote can say which record it used.
    """
    by_run = defaultdict(list)
    for path, record in entries:
        by_run[(*_run_identity(record), record_protocol(record)[1])].append((path, record))
    kept, problems = [], []
    for (model, dataset, seed, protocol), candidates in sorted(by_run.items()):
        candidates.sort(key=lambda entry: (_created(entry[1]), str(entry[0])), reverse=True)
        newest_path, newest = candidates[0]
        if len(candidates) > 1:
            ignored = ", ".join(f"{path} (created {entry.get('created')})" for path, entry in candidates[1:])
            problems.append(f"{len(candidates)} records for {model} on {dataset} seed {seed} under protocol "
                            f"{protocol}: using {newest_path} (the newest, created {newest.get('created')}); "
                            f"ignoring {ignored}")
            newest = dict(newest, record_choice=problems[-1])
        kept.append(newest)
    return kept, problems


def collect_records(results_dir=None, models=None, datasets=None, seeds=None):
    """Load the stored run records under ``<results_dir>/runs/<dataset>/<model>/*.json``.

    Args:
        results_dir: the results root (default: the repository's ``results/``).
        models, datasets, seeds: optional filters (model names, prepared dataset folder names
            such as ``retailrocket`` or ``retailrocket-heldout_ignore``, integer seeds).

    Returns:
        ``(records, problems)``: the valid records sorted by (model, dataset, seed), and one
        message per corrupted or partial file (never used) and per duplicated run (the newest
        by ``created`` is used).
    """
    runs_dir = Path(results_dir or default_results_dir()) / "runs"
    model_filter = set(models) if models else None
    dataset_filter = set(datasets) if datasets else None
    seed_filter = {int(seed) for seed in seeds} if seeds else None
    entries, problems = [], []
    for path in record_files(runs_dir):  # plain and gzip-compressed (.json.gz); in-progress writes skipped
        dataset_folder, model_folder = path.parent.parent.name, path.parent.name
        if ((model_filter and model_folder not in model_filter)
                or (dataset_filter and dataset_folder not in dataset_filter)):
            continue
        try:
            record = load_record(path)
            identity = _run_identity(record)
            if not isinstance(record["results"], dict):
                raise ResultsError(f"{path}: 'results' is not a mapping of task -> result")
        except (ResultsError, OSError, UnicodeDecodeError, TypeError, AttributeError, ValueError, KeyError) as error:
            problems.append(f"skipped {path}: {error}")
            continue
        model, dataset, seed = identity
        if ((model_filter and model not in model_filter) or (dataset_filter and dataset not in dataset_filter)
                or (seed_filter is not None and seed not in seed_filter)):
            continue
        entries.append((path, record))
    records, duplicate_problems = _newest_per_run(entries)
    return records, problems + duplicate_problems
