"""MBGen's training throughput and beam-search evaluation time, on a real prepared dataset.

Times ``--batches`` training steps (forward + backward + AdamW, sequences per second) and one
full evaluation of the test split per beam width (the evaluator's own passes: told behavior, and
(behavior, item) pairs), and prints peak memory (CUDA peak allocated on a GPU, process peak RSS
on CPU). The figures the MBGen issue asks for on a GPU:

    python benchmarks/mbgen_speed.py --dataset retailrocket --device cuda [key=value ...] --beams 10 50
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from benchmarks.diffusion_speed import peak_memory_mb, synchronize  # noqa: E402
from mbrec import registry  # noqa: E402
from mbrec.benchmark.runner import prepare_data, resolve_device  # noqa: E402
from mbrec.training.trainer import build_optimizer  # noqa: E402
from mbrec.config import build_config, merge_layers, parse_overrides  # noqa: E402
from mbrec.data.dataset import MultiBehaviorSequentialDataset, SequenceLoader  # noqa: E402
from mbrec.evaluation import Evaluator  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="retailrocket")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--beams", type=int, nargs="+", default=[10, 50])
    args, rest = parser.parse_known_args()
    overrides = parse_overrides(rest)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    settings = merge_layers("MBGen", args.dataset, overrides=overrides)
    _, dataset_dir = prepare_data(args.dataset, settings)
    settings["show_progress"] = False
    config = build_config(registry.get_model_class("MBGen"), dataset_dir, settings)
    config["device"] = device
    train, _, test = MultiBehaviorSequentialDataset(config).build()
    model = registry.get_model_class("MBGen")(config, train).to(device)
    optimizer = build_optimizer(config, model.parameters())
    loader = iter(SequenceLoader(config, train, config["train_batch_size"], shuffle=True, training=True))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    seconds, sequences = [], 0
    for step in range(args.batches + 1):  # the first batch warms up kernels and allocators
        batch = next(loader).to(device)
        synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
        synchronize(device)
        if step:
            seconds.append(time.perf_counter() - start)
            sequences += len(batch)
    print(f"dataset {args.dataset}, device {device}, overrides {overrides or 'none'}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")
    print(f"training: {sequences / sum(seconds):.1f} sequences/s ({sum(seconds) / len(seconds):.3f} s/batch of "
          f"{config['train_batch_size']}), peak {peak_memory_mb(device):.0f} MB")
    evaluator = Evaluator(config)
    for beam_size in args.beams:
        model.beam_size = beam_size
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for task in ("behavior_specific", "behavior_item"):
            synchronize(device)
            start = time.perf_counter()
            evaluator.evaluate(model, test, tasks=[task], device=device)
            synchronize(device)
            print(f"beam {beam_size:>3} {task:<18} {time.perf_counter() - start:8.1f} s for "
                  f"{len(test.target_rows)} test users, peak {peak_memory_mb(device):.0f} MB")


if __name__ == "__main__":
    main()
