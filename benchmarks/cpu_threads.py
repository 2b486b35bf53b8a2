"""Benchmark: torch threads and precision for the CPU reference suite (issue 20, section 6).

The `cpu` suite runs `--workers 2` runs at a time with one thread each on a 2-core machine. Would one
run at a time with two threads, or bf16 autocast, finish the suite sooner? Per model, on a dataset
variant of the suite, this trains batches with every (threads, precision) side, interleaved in
rounds so drift in the machine's load hits every side alike, and prints wall seconds per batch.

* threads: ``torch.set_num_threads(n)`` for the side's batches (1 and 2);
* precision: ``fp32`` or ``bf16`` (``precision=bf16``: forward and loss under autocast, as the runner).

Suite throughput: two 1-thread workers finish two runs in the time one 1-thread run takes (if the
two cores are free), one 2-thread worker finishes one run in ``t(2 threads)``; the suite is faster
with 2 threads per run only if ``t(2) < t(1) / 2``, so the script prints ``2 * t(2) / t(1)``
(above 1: keep two 1-thread workers). Wall time is the right measure here, so run it on an idle
machine (nothing else running); the figures mean nothing on a loaded one.

    MBREC_DATA_DIR=... python benchmarks/cpu_threads.py [--dataset retailrocket_f10] \\
        [--models SASRec SASRec_MB BERT4Rec] [--batches 10] [--rounds 3]
"""

import argparse
import itertools
import time

import torch
from recbole.utils import init_seed

from mbrec import registry
from mbrec.benchmark.runner import prepare_data
from mbrec.config import build_config, merge_layers
from mbrec.data.dataset import MultiBehaviorSequentialDataset
from mbrec.training.trainer import Trainer

SEED = 2024
SIDES = [(1, "fp32"), (2, "fp32"), (1, "bf16"), (2, "bf16")]


def build_data(model_name, dataset, cache_dir):
    """The model's config and training split, built once and shared by every side."""
    settings = merge_layers(model_name, dataset, overrides={"show_progress": False})
    _, dataset_dir = prepare_data(dataset, settings, cache_dir=cache_dir)
    config = build_config(registry.get_model_class(model_name), dataset_dir, settings)
    config["device"] = torch.device("cpu")
    return config, MultiBehaviorSequentialDataset(config).build(splits=("train",))[0]


def build_side(model_name, config, train, precision):
    """A fresh model and trainer (same seed for every side) and an endless batch stream."""
    model_class = registry.get_model_class(model_name)
    init_seed(SEED, True)
    model = model_class(config, train)
    trainer = Trainer(config, model, "cpu")
    trainer.precision = precision
    loader = trainer.train_loader(train)
    stream = itertools.chain.from_iterable(iter(loader) for _ in itertools.count())
    return trainer, stream, len(loader.epoch_batches()), config["train_unit"]


def wall_per_batch(trainer, stream, threads, batches):
    torch.set_num_threads(threads)
    start = time.perf_counter()
    trainer._train_epoch(itertools.islice(stream, batches), 0)
    return (time.perf_counter() - start) / batches


def run_model(model_name, args):
    config, train = build_data(model_name, args.dataset, args.cache_dir)
    sides = {side: build_side(model_name, config, train, side[1]) for side in SIDES}
    _, _, per_epoch, unit = sides[SIDES[0]]
    for (threads, _), (trainer, stream, _, _) in sides.items():  # warm up every side (allocators, caches)
        wall_per_batch(trainer, stream, threads, args.warmup)
    seconds = {side: [] for side in SIDES}
    for _ in range(args.rounds):
        for side, (trainer, stream, _, _) in sides.items():
            seconds[side].append(wall_per_batch(trainer, stream, side[0], args.batches))
    base = min(seconds[(1, "fp32")])
    print(f"\n== {model_name} on {args.dataset} (train_unit {unit}, {per_epoch} batches per epoch)")
    print(f"{'threads':>8}{'precision':>10}{'wall s/batch (best of rounds)':>32}{'s/epoch':>10}{'vs 1 thread fp32':>18}")
    for side in SIDES:
        best = min(seconds[side])
        print(f"{side[0]:>8}{side[1]:>10}{best:>32.4f}{best * per_epoch:>10.1f}{best / base:>18.2f}")
    for precision in ("fp32", "bf16"):
        ratio = 2 * min(seconds[(2, precision)]) / min(seconds[(1, precision)])
        print(f"suite throughput, {precision}: 2 x t(2 threads) / t(1 thread) = {ratio:.2f} "
              f"({'two 1-thread workers are faster' if ratio > 1 else 'one 2-thread worker is faster'})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="retailrocket_f10")
    parser.add_argument("--models", nargs="+", default=["SASRec", "SASRec_MB", "BERT4Rec"])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads available; "
          f"oneDNN (mkldnn) available: {torch.backends.mkldnn.is_available()}")
    for model_name in args.models:
        run_model(model_name, args)


if __name__ == "__main__":
    main()
