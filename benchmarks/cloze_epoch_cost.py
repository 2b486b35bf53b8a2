"""Cost of one Cloze training epoch in sequence mode against prefix mode, side by side in one process.

For a Cloze model (default FatsMB, its stage 1 = MBAE pretraining), on a real prepared dataset:
builds the model once per ``train_unit`` from the same seed and times training steps (batch
gathering + forward + backward + optimizer step, as the trainer's loop) on one thread:
- sequence mode: ``--sequence-epochs`` whole epochs (one window per user), after one warm-up batch,
  for each of ``--stages``;
- prefix mode (the first stage only): ``--prefix-batches`` batches after one warm-up batch, extrapolated to the epoch's
  batch count (a full prefix epoch of FatsMB on retailrocket is about ten minutes; 0 = time a
  whole epoch).
Prints wall and CPU seconds (this process) per epoch, batches per epoch, loss targets (masked
positions) per batch and the prefix/sequence ratio. On a shared machine the CPU seconds are the
steadier figure: wall time grows with the other processes' load.

Usage:
    python benchmarks/cloze_epoch_cost.py --dataset retailrocket [--model FatsMB] [--stage mbae]
        [--stages mbae diffusion finetune] [--sequence-epochs 3] [--prefix-batches 30] [key=value ...]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

from mbrec import registry  # noqa: E402
from mbrec.benchmark.runner import prepare_data  # noqa: E402
from mbrec.config import build_config, merge_layers, parse_overrides  # noqa: E402
from mbrec.data.dataset import MultiBehaviorSequentialDataset, SequenceLoader, WindowLoader  # noqa: E402
from mbrec.training.trainer import build_optimizer  # noqa: E402


def build(model_name, dataset, overrides, unit, stage):
    settings = merge_layers(model_name, dataset, overrides={**overrides, "train_unit": unit})
    _, dataset_dir = prepare_data(dataset, settings)
    settings["show_progress"] = False
    config = build_config(registry.get_model_class(model_name), dataset_dir, settings)
    config["device"] = torch.device("cpu")
    init_seed(config["seed"], True)
    train, _ = MultiBehaviorSequentialDataset(config).build(("train", "valid"))
    model = registry.get_model_class(model_name)(config, train)
    if stage:
        model.set_stage(stage)
    optimizer = build_optimizer(config, [p for p in model.parameters() if p.requires_grad])
    if unit == "sequence":
        loader = WindowLoader(config, train, config["train_batch_size"], kind=model.train_unit_kind,
                              cloze_window_rows=getattr(model, "cloze_window_rows", "window"))
    else:
        loader = SequenceLoader(config, train, config["train_batch_size"], shuffle=True, training=True)
    return model, optimizer, loader


def train_steps(model, optimizer, batches):
    """Wall and CPU seconds (this process) of each batch, gathering included."""
    model.train()
    seconds = []
    start, start_cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
        now, now_cpu = time.perf_counter(), time.process_time()
        seconds.append((now - start, now_cpu - start_cpu))
        start, start_cpu = now, now_cpu
    return seconds


def total(seconds):
    """(wall, cpu) sums of :func:`train_steps` output."""
    return sum(wall for wall, _ in seconds), sum(cpu for _, cpu in seconds)


def count_targets(model, loader, batches):
    """Masked positions per batch, counted by the decoder's input rows (FatsMB) or one per example."""
    decoder = getattr(model, "decoder", None)
    if decoder is None:
        return None
    rows = []
    handle = decoder.register_forward_hook(lambda _m, inputs, _o: rows.append(inputs[0].shape[0]))
    with torch.no_grad():
        for batch in batches:
            model.calculate_loss(batch)
    handle.remove()
    return sum(rows) / len(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="retailrocket")
    parser.add_argument("--model", default="FatsMB")
    parser.add_argument("--stages", nargs="+", default=["mbae"],
                        help="FatsMB stages to time in sequence mode, the first also in prefix mode ('' for "
                             "single-stage models)")
    parser.add_argument("--sequence-epochs", type=int, default=3)
    parser.add_argument("--prefix-batches", type=int, default=30,
                        help="0: time a whole prefix epoch; -1: sequence mode only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.overrides)
    print(f"{args.model} on {args.dataset}, {torch.get_num_threads()} thread(s)")

    sequence = {}
    for stage in args.stages:
        model, optimizer, loader = build(args.model, args.dataset, overrides, "sequence", stage)
        train_steps(model, optimizer, [next(iter(loader))])  # warm-up
        epochs = [total(train_steps(model, optimizer, iter(loader))) for _ in range(args.sequence_epochs)]
        wall, cpu = (sum(values) / len(values) for values in zip(*epochs))
        sequence[stage] = (wall, cpu)
        targets = count_targets(model, loader, list(iter(loader))[:3]) if stage != "diffusion" else None
        print(f"sequence, stage {stage or '-'}: {len(loader)} batches/epoch, {wall:.2f} s/epoch wall, "
              f"{cpu:.2f} CPU-s/epoch (per epoch wall: {', '.join(f'{w:.2f}' for w, _ in epochs)})"
              + (f", {targets:.0f} masked positions/batch" if targets else ""), flush=True)

    if args.prefix_batches < 0:
        return
    stage = args.stages[0]
    model, optimizer, loader = build(args.model, args.dataset, overrides, "prefix", stage)
    batches = iter(loader)
    train_steps(model, optimizer, [next(batches)])  # warm-up
    n_timed = len(loader) - 1 if args.prefix_batches == 0 else min(args.prefix_batches, len(loader) - 1)
    wall, cpu = total(train_steps(model, optimizer, (next(batches) for _ in range(n_timed))))
    scale = len(loader) / n_timed
    targets = count_targets(model, loader, [next(iter(loader))])
    print(f"prefix, stage {stage or '-'}: {len(loader)} batches/epoch, {wall / n_timed:.3f} s/batch wall over "
          f"{n_timed} batches -> {wall * scale:.1f} s/epoch wall, {cpu * scale:.1f} CPU-s/epoch"
          + ("" if args.prefix_batches == 0 else " (extrapolated)")
          + (f", {targets:.0f} masked positions/batch" if targets else ""))
    sequence_wall, sequence_cpu = sequence[stage]
    print(f"prefix / sequence per epoch, stage {stage or '-'}: {wall * scale / sequence_wall:.1f}x wall, "
          f"{cpu * scale / sequence_cpu:.1f}x CPU")


if __name__ == "__main__":
    main()
