"""Benchmark: SASRec's training cost per epoch in sequence mode, prefix mode and RecBole's stock trainer.

What is measured, per dataset setting, in one process with the same torch threads for every side:

* ``stock``: RecBole's own ``Trainer._train_epoch`` over RecBole's ``TrainDataLoader`` on RecBole's
  stock ``SequentialDataset`` (every prefix materialized), RecBole's ``SASRec``;
* ``prefix`` / ``sequence`` / ``windows``: mbrec's ``Trainer._train_epoch`` with ``train_unit`` prefix /
  sequence with batches of ``train_batch_size`` targets (``sequence_batch: targets``, the default) /
  sequence with batches of ``train_batch_size`` windows (``sequence_batch: windows``); fp32, and bf16
  with ``precision=bf16``.

Times are process CPU-seconds (the machine is shared; run with OMP_NUM_THREADS=1). Every side trains ``--batches`` batches after ``--warmup`` untimed ones (gathering included; a side whose
epoch has fewer batches trains one untimed epoch, then whole epochs up to ``--batches`` batches) and the
seconds per epoch are the mean seconds per batch times the side's batches per epoch (prefix and stock:
one batch per ``train_batch_size`` examples; sequence and windows: the batches its loader cut for
this epoch). The output layer's share is the time of the all-item softmax alone (``[N, H] @ E^T``,
cross-entropy, backward, for the side's mean N targets per batch) over the side's step.

    OMP_NUM_THREADS=1 MBREC_DATA_DIR=... python benchmarks/train_unit_speed.py \\
        [--settings retailrocket retailrocket-filtered taobao ijcai] [--batches 20] [--no-stock] \\
        [--sides prefix sequence windows] [--precisions fp32 bf16]
"""

import argparse
import itertools
import time
import warnings

import torch
from recbole.utils import init_seed

from mbrec import registry
from mbrec.benchmark.runner import prepare_data
from mbrec.config import build_config, merge_layers
from mbrec.data.dataset import MultiBehaviorSequentialDataset
from mbrec.training.trainer import Trainer

# name -> (dataset, overrides); the filtered setting is the (items with >= 10 interactions, window 20)
SETTINGS = {
    "retailrocket": ("retailrocket", {}),
    "retailrocket-filtered": ("retailrocket", {"min_item_inter": 10, "MAX_ITEM_LIST_LENGTH": 20}),
    "taobao": ("taobao", {}),
    "ijcai": ("ijcai", {}),
}
SEED = 2024
# side -> the settings that make it
SIDES = {"prefix": {"train_unit": "prefix"}, "sequence": {"train_unit": "sequence"},
         "windows": {"train_unit": "sequence", "sequence_batch": "windows"}}


def build(dataset_name, overrides, side, cache_dir):
    settings = merge_layers("SASRec", dataset_name, overrides={**overrides, **SIDES[side], "show_progress": False})
    _, dataset_dir = prepare_data(dataset_name, settings, cache_dir=cache_dir)
    config = build_config(registry.get_model_class("SASRec"), dataset_dir, settings)
    config["device"] = torch.device("cpu")
    return config


def timed(step_many, warmup, batches):
    """CPU-seconds per batch of ``step_many(n)`` (which trains n batches) after ``warmup`` batches.

    Process CPU time, not wall time: the machine is shared, and with one thread per side the CPU time
    is what a side costs whatever else runs beside it.
    """
    step_many(warmup)
    start = time.process_time()
    step_many(batches)
    return (time.process_time() - start) / batches


def ours(config, train, precision, warmup, batches):
    init_seed(SEED, True)
    model = registry.get_model_class("SASRec")(config, train)
    trainer = Trainer(config, model, "cpu")
    trainer.precision = precision
    loader = trainer.train_loader(train)
    batches_per_epoch = len(loader.epoch_batches())
    targets_per_batch = getattr(loader, "n_targets", 0) / batches_per_epoch or loader.batch_size
    if batches_per_epoch < warmup + batches:  # short epochs (windows): time whole epochs, one untimed first
        epochs = -(-batches // batches_per_epoch)
        seconds = timed(lambda n: [trainer._train_epoch(iter(loader), 0) for _ in range(n)], 1, epochs)
        return seconds / batches_per_epoch, batches_per_epoch, round(targets_per_batch), model
    stream = iter(loader)  # one epoch's batches, in order
    seconds = timed(lambda n: trainer._train_epoch(itertools.islice(stream, n), 0), warmup, batches)
    return seconds, batches_per_epoch, round(targets_per_batch), model


def stock(config, warmup, batches):
    """RecBole's trainer, loader, dataset and SASRec; TensorBoard (not installed here) is stubbed out."""
    from recbole.data.dataloader import TrainDataLoader
    from recbole.data.dataset import SequentialDataset
    from recbole.model.sequential_recommender.sasrec import SASRec
    from recbole.trainer import trainer as recbole_trainer

    recbole_trainer.get_tensorboard = lambda logger: None
    build_start = time.process_time()
    train = SequentialDataset(config).build()[0]
    build_seconds = time.process_time() - build_start
    init_seed(SEED, True)
    loader = TrainDataLoader(config, train, None, shuffle=True)
    model = SASRec(config, train)
    trainer = recbole_trainer.Trainer(config, model)
    stream = iter(loader)
    seconds = timed(lambda n: trainer._train_epoch(itertools.islice(stream, n), 0), warmup, batches)
    return seconds, len(loader), build_seconds


def output_layer_seconds(model, n_targets, precision, repeats=10):
    """Forward + backward of the all-item softmax alone for ``n_targets`` (history, target) pairs."""
    weight = model.item_embedding.weight
    states = torch.randn(n_targets, weight.size(1), requires_grad=True)
    targets = torch.randint(1, weight.size(0), (n_targets,))
    start = time.process_time()
    for _ in range(repeats):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(states @ weight.T, targets)
        loss.backward()
    return (time.process_time() - start) / repeats


def run_setting(name, args):
    dataset_name, overrides = SETTINGS[name]
    configs = {side: build(dataset_name, overrides, side, args.cache_dir) for side in args.sides}
    data = MultiBehaviorSequentialDataset(configs[args.sides[0]])
    train = data.build(splits=("train",))[0]
    batch_size = int(configs[args.sides[0]]["train_batch_size"])
    print(f"\n== {name}: {data.user_num - 1} users, {data.item_num - 1} items, {len(train.target_rows)} training "
          f"targets, window {data.max_item_list_len}, train_batch_size {batch_size}")
    rows = {}
    for side in args.sides:
        for precision in args.precisions:
            seconds, per_epoch, targets, model = ours(configs[side], train, precision, args.warmup, args.batches)
            share = output_layer_seconds(model, targets, precision) / seconds
            rows[f"{side} {precision}"] = (seconds, per_epoch, share)
    if args.stock:
        leave_one_out = {"eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"}}
        seconds, per_epoch, build_seconds = stock(build(dataset_name, {**overrides, **leave_one_out}, "prefix",
                                                        args.cache_dir), args.warmup, args.batches)
        rows["stock fp32"] = (seconds, per_epoch, float("nan"))
        print(f"(RecBole stock dataset build: {build_seconds:.1f} CPU s, not counted below)")
    print(f"{'side':<16}{'CPU s/batch':>12}{'batches/epoch':>15}{'CPU s/epoch':>12}{'output layer share':>20}")
    for side, (seconds, per_epoch, share) in rows.items():
        print(f"{side:<16}{seconds:>12.3f}{per_epoch:>15}{seconds * per_epoch:>12.1f}{share:>20.0%}")
    epoch = {side: seconds * per_epoch for side, (seconds, per_epoch, _) in rows.items()}
    ratios = []
    for precision in args.precisions:
        ratios += [f"{a}/{b} {precision} {epoch[f'{a} {precision}'] / epoch[f'{b} {precision}']:.1f}x"
                   for a, b in itertools.combinations(args.sides, 2)]
    if "bf16" in args.precisions and "fp32" in args.precisions:
        ratios += [f"bf16/fp32 {side} {epoch[f'{side} bf16'] / epoch[f'{side} fp32']:.2f}" for side in args.sides]
    if args.stock and "fp32" in args.precisions:
        ratios += [f"stock/{side} {epoch['stock fp32'] / epoch[f'{side} fp32']:.1f}x" for side in args.sides]
    print("per epoch: " + "; ".join(ratios))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--batches", type=int, default=20, help="timed batches per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per side first")
    parser.add_argument("--no-stock", dest="stock", action="store_false", help="skip RecBole's stock trainer")
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    print(f"torch threads {torch.get_num_threads()}; timed batches per side {args.batches} (after {args.warmup})")
    for name in args.settings:
        run_setting(name, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
