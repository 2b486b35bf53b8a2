"""Benchmark: build time and peak memory of mbrec's dataset vs. RecBole's stock SequentialDataset.

What is measured
----------------
For each dataset, on the SAME prepared atomic ``.inter`` file (``mbrec.data.prepare.prepare``):

* **ours**: ``mbrec.data.dataset.MultiBehaviorSequentialDataset(config).build()``. It keeps the
  interactions once and indexes every training example by its target row.
* **stock**: ``recbole.data.dataset.SequentialDataset(config).build()`` with
  ``eval_args: {split: {LS: valid_and_test}, order: TO, mode: full}`` (RecBole's sequential
  defaults). Its ``data_augmentation`` materializes dense ``[n_examples, MAX_ITEM_LIST_LENGTH]``
  copies of every interaction field in a Python loop.

Both use one config built as the tests build it (``merge_layers`` + ``build_config``, so
``load_col``, ``user_inter_num_interval`` etc. are identical). Each build runs in a FRESH Python
subprocess (this script re-run with ``--worker``), so one build's memory cannot pollute another's.
In the child we time only dataset construction + ``build()`` (wall seconds; imports and config
are excluded) and read ``resource.getrusage(RUSAGE_SELF).ru_maxrss``:

* *peak MB*: the child's absolute peak RSS;
* *delta MB*: that peak minus the child's peak RSS right before construction (after imports and
  config), i.e. the memory the build itself added.

Training examples: ours ``len(train.target_rows)``, stock ``len(train_dataset)``; they must agree,
and a warning is printed if they do not. One known, explained difference: RecBole's leave-one-out
gives a user with exactly 3 interactions 1 training example and no valid one, while the protocol
(ours) gives that user a valid and a test target and no training example; the warning says whether
the gap is exactly that. ``speedup`` = stock seconds / ours seconds (``>Nx`` when stock timed out).

How to run
----------
::

    . /work/venv/bin/activate
    MBREC_DATA_DIR=/work/shared/datasets MBREC_CACHE_DIR=/tmp/bench_cache \\
        python benchmarks/dataset_build.py [--datasets retailrocket ijcai synthetic2m] \\
        [--skip-stock-above N_ROWS] [--timeout S]

A stock build that runs past ``--timeout`` seconds is killed and reported as ``timeout``; the
remaining builds still run. Builds run one after another (never in parallel) so timings are not
skewed by competing for cores.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# Dataset key on the command line -> (registered dataset name, prepare() overrides).
SYNTHETIC_2M_SIZE = {"n_users": 60_000, "n_items": 100_000, "n_categories": 500, "mean_interactions": 34.0}
# The scale points (~1M, 3M, 10M, 30M rows): users x 34 interactions; ijcai = the generator's size.
SYNTHETIC_SCALE_SIZES = {
    "synthetic1m": {"n_users": 30_000, "n_items": 50_000, "n_categories": 250, "mean_interactions": 34.0},
    "synthetic3m": {"n_users": 90_000, "n_items": 150_000, "n_categories": 750, "mean_interactions": 34.0},
    "synthetic10m": {"n_users": 300_000, "n_items": 500_000, "n_categories": 1_000, "mean_interactions": 34.0},
    "synthetic30m": "ijcai",
}
DATASETS = {
    "retailrocket": ("retailrocket", {}),
    "ijcai": ("ijcai", {}),
    "synthetic2m": ("synthetic", {"size": SYNTHETIC_2M_SIZE}),
    **{key: ("synthetic", {"size": size, "content_dim": 0}) for key, size in SYNTHETIC_SCALE_SIZES.items()},
}
DEFAULT_DATASETS = ["retailrocket", "ijcai", "synthetic2m"]
DEFAULT_TIMEOUT_S = 1200
DEFAULT_MODEL = "SASRec"  # any sequential model; it only selects the model YAML layer
# RecBole's defaults for sequential recommendation: leave-one-out, time order, full ranking.
STOCK_EVAL_ARGS = {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"}
IMPLEMENTATIONS = ("ours", "stock")
LEAVE_OUT_EXAMPLES = 2  # LS: valid_and_test leaves out one valid and one test example per user
MIN_ROWS_FOR_AN_EXAMPLE = 2  # an example needs a target and at least one earlier interaction

KIB_PER_MIB = 1024  # ru_maxrss is in KiB on Linux
RESULT_MARKER = "BENCH_RESULT "  # prefix of the worker's one JSON line on stdout
STDERR_TAIL_CHARS = 2000  # how much of a failed worker's stderr to show


# ---------------------------------------------------------------------- worker (child process)
def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB


def make_config(base_dataset, dataset_dir, model):
    """The run config, built as ``tests/conftest.py::make_config`` builds it."""
    import torch

    from mbrec import registry
    from mbrec.config import build_config, merge_layers

    settings = merge_layers(model, base_dataset)
    settings.update(show_progress=False, eval_args=STOCK_EVAL_ARGS)
    config = build_config(registry.get_model_class(model), Path(dataset_dir), settings)
    config["device"] = torch.device("cpu")
    return config


def recbole_rule_train_examples(dataset):
    """Training examples RecBole's leave-one-out would give on our dataset's users.

    RecBole augments a user with n interactions into n - 1 examples and then leaves out
    ``min(2, n - 2)`` of them (``_split_index_by_leave_one_out``), so a user with exactly
    ``LEAVE_OUT_EXAMPLES + 1`` interactions keeps one training example and gets no valid one;
    the protocol (ours) gives that user a valid and a test target and no training example.
    """
    import numpy as np

    _, user_counts = np.unique(dataset.row_arrays[dataset.uid_field], return_counts=True)
    user_counts = user_counts[user_counts >= MIN_ROWS_FOR_AN_EXAMPLE]
    left_out = np.minimum(LEAVE_OUT_EXAMPLES, user_counts - MIN_ROWS_FOR_AN_EXAMPLE)
    return int(np.sum(user_counts - 1 - left_out))


def run_worker(implementation, base_dataset, dataset_dir, model):
    """Build one dataset once; print the measurements as one JSON line."""
    from recbole.data.dataset import SequentialDataset

    from mbrec.data.dataset import MultiBehaviorSequentialDataset

    config = make_config(base_dataset, dataset_dir, model)
    dataset_class = MultiBehaviorSequentialDataset if implementation == "ours" else SequentialDataset
    baseline_mib = peak_rss_mib()
    start = time.perf_counter()
    dataset = dataset_class(config)
    train, _valid, _test = dataset.build()
    seconds = time.perf_counter() - start
    peak_mib = peak_rss_mib()
    n_train = len(train.target_rows) if implementation == "ours" else len(train)
    result = {"seconds": seconds, "peak_mib": peak_mib, "delta_mib": peak_mib - baseline_mib,
              "baseline_mib": baseline_mib, "train_examples": int(n_train)}
    if implementation == "ours":
        result["recbole_rule_train_examples"] = recbole_rule_train_examples(dataset)
    print(RESULT_MARKER + json.dumps(result), flush=True)


# ---------------------------------------------------------------------- driver (parent process)
def prepare_dataset(key):
    """Prepare (or reuse) the atomic files; return (base dataset name, folder, row count)."""
    from mbrec.data.prepare import prepare

    base_dataset, overrides = DATASETS[key]
    folder = prepare(base_dataset, **overrides)
    with open(folder / "meta.json", encoding="utf-8") as handle:
        n_rows = json.load(handle)["n_rows"]
    return base_dataset, folder, n_rows


def measure(implementation, base_dataset, folder, model, timeout_s):
    """Run one build in a fresh subprocess; return its result dict or ``{"status": ...}``."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", implementation,
               "--base-dataset", base_dataset, "--dataset-dir", str(folder), "--model", model]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:  # subprocess.run kills the child before raising
        return {"status": "timeout"}
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return {"status": "ok", **json.loads(line[len(RESULT_MARKER):])}
    print(f"[{implementation} on {folder.name}] worker failed (exit {completed.returncode}):\n"
          f"{completed.stderr[-STDERR_TAIL_CHARS:]}", file=sys.stderr)
    return {"status": "error"}


def format_seconds(result):
    return f"{result['seconds']:.2f}" if result.get("status") == "ok" else result.get("status", "-")


def format_memory(result):
    if result.get("status") != "ok":
        return result.get("status", "-")
    return f"{result['peak_mib']:.0f} (+{result['delta_mib']:.0f})"


def table_row(key, n_rows, ours, stock):
    examples = "-"
    if ours.get("status") == "ok":
        examples = f"{ours['train_examples']:,}"
        if stock.get("status") == "ok" and stock["train_examples"] != ours["train_examples"]:
            examples = f"{ours['train_examples']:,} (stock {stock['train_examples']:,})"
    speedup = "-"
    if ours.get("status") == "ok" and stock.get("status") == "ok":
        speedup = f"{stock['seconds'] / ours['seconds']:.1f}x"
    elif ours.get("status") == "ok" and stock.get("status") == "timeout":
        speedup = f">{stock['timeout_s'] / ours['seconds']:.0f}x"
    cells = [key, f"{n_rows:,}", examples, format_seconds(ours), format_memory(ours),
             format_seconds(stock), format_memory(stock), speedup]
    return "| " + " | ".join(cells) + " |"


def run_driver(args):
    rows = []
    for key in args.datasets:
        base_dataset, folder, n_rows = prepare_dataset(key)
        print(f"== {key}: {n_rows:,} rows in {folder}", flush=True)
        results = {}
        for implementation in IMPLEMENTATIONS:
            if implementation == "stock" and args.skip_stock_above is not None and n_rows > args.skip_stock_above:
                results[implementation] = {"status": "skipped"}
            else:
                results[implementation] = measure(implementation, base_dataset, folder, args.model, args.timeout)
                results[implementation]["timeout_s"] = args.timeout
            print(f"   {implementation}: {json.dumps(results[implementation])}", flush=True)
        ours, stock = results["ours"], results["stock"]
        if ours.get("status") == "ok" and stock.get("status") == "ok" \
                and ours["train_examples"] != stock["train_examples"]:
            explained = stock["train_examples"] == ours["recbole_rule_train_examples"]
            reason = ("explained by RecBole's leave-one-out: users with exactly 3 interactions keep 1 "
                      "training example and get no valid target in stock, while ours gives them "
                      "valid + test targets and no training example" if explained else "UNEXPLAINED")
            print(f"WARNING: {key}: ours has {ours['train_examples']:,} training examples, "
                  f"stock has {stock['train_examples']:,} ({reason})", file=sys.stderr, flush=True)
        rows.append(table_row(key, n_rows, ours, stock))

    print()
    print("Peak MB = the build subprocess's peak RSS (MiB); (+N) = added by construction + build.")
    print("| dataset | rows | train examples | ours seconds | ours peak MB | stock seconds "
          "| stock peak MB | speedup |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS, choices=list(DATASETS))
    parser.add_argument("--skip-stock-above", type=int, default=None, metavar="N_ROWS",
                        help="skip RecBole's stock build on datasets with more than N_ROWS interactions")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help=f"per-build limit in seconds on the whole worker subprocess, imports included "
                             f"(default {DEFAULT_TIMEOUT_S})")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model whose YAML layer the config uses")
    # Internal: run one build in this (fresh) process.
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--base-dataset", help=argparse.SUPPRESS)
    parser.add_argument("--dataset-dir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.base_dataset, args.dataset_dir, args.model)
    else:
        run_driver(args)


if __name__ == "__main__":
    main()
