"""MBGen's cost per training step and per evaluation batch at several network shapes, side by side.

The reference suite fixes every model's width at 64. At ``d_model`` 64 MBGen's paper attention
(6 heads x 64, an inner width of 384) is 6x the model width, where every baseline at width 64 runs
2 heads x 32. This script builds one MBGen per shape on the same prepared dataset and times, in
turns batch by batch (so a loaded machine slows every shape alike), training steps (forward +
backward + AdamW on the trainer's prefix batches) and the told-behavior beam search of one eval
batch, and prints median seconds, the ratio to the first shape and the extrapolated epoch.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/mbgen_width.py --dataset retailrocket_f10 [--batches 6] \\
        [--shapes "n_heads=6 d_head=64" "n_heads=2 d_head=32" ...] [d_model=64 d_ff=256 ...]
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from benchmarks.diffusion_speed import build_for_timing, time_eval_batch  # noqa: E402
from benchmarks.mbgen_fast_paths import SUITE_SIZE  # noqa: E402
from mbrec.config import parse_overrides  # noqa: E402
from mbrec.data.dataset import SequenceLoader  # noqa: E402
from mbrec.training.trainer import build_optimizer  # noqa: E402

DEFAULT_SHAPES = ("n_heads=6 d_head=64 n_encoder_layers=4 n_decoder_layers=4",
                  "n_heads=2 d_head=32 n_encoder_layers=4 n_decoder_layers=4",
                  "n_heads=6 d_head=64 n_encoder_layers=2 n_decoder_layers=2",
                  "n_heads=2 d_head=32 n_encoder_layers=2 n_decoder_layers=2")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="retailrocket_f10")
    parser.add_argument("--batches", type=int, default=6, help="timed training batches per shape")
    parser.add_argument("--eval-batches", type=int, default=2, help="timed eval batches per shape")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES),
                        help="one quoted list of key=value overrides per shape")
    args, rest = parser.parse_known_args()
    common = {**SUITE_SIZE, **parse_overrides(rest)}
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    runs = []
    for shape in args.shapes:
        overrides = {**common, **parse_overrides(shape.split())}
        config, train, test, model = build_for_timing("MBGen", args.dataset, overrides, torch.device("cpu"))
        loader = type(model).trainer_class(config, model, torch.device("cpu")).train_loader(train)
        eval_batches = iter(SequenceLoader(config, test, config["eval_batch_size"], shuffle=False, training=False))
        runs.append({"shape": shape, "model": model, "optimizer": build_optimizer(config, model.parameters()),
                     "batches": iter(loader), "n_batches": len(loader), "eval": next(eval_batches),
                     "n_eval": -(-len(test) // config["eval_batch_size"]), "train": [], "beam": [],
                     "parameters": sum(p.numel() for p in model.parameters())})

    for index in range(args.batches + 1):  # batch 0 warms every shape up, untimed
        for run in (runs if index % 2 else runs[::-1]):
            batch = next(run["batches"])
            run["model"].train()
            start = time.perf_counter()
            run["optimizer"].zero_grad()
            run["model"].calculate_loss(batch).backward()
            run["optimizer"].step()
            if index:
                run["train"].append(time.perf_counter() - start)
    for index in range(args.eval_batches):
        for run in (runs if index % 2 else runs[::-1]):
            run["model"].eval()
            run["beam"].append(time_eval_batch(run["model"], run["eval"], torch.device("cpu")))

    print(f"MBGen on {args.dataset}, cpu, {args.threads} thread(s), common overrides {common}; "
          f"median seconds, ratio to the first shape")
    print(f"{'shape':<62}{'params':>9}{'train step':>11}{'ratio':>7}{'epoch s':>9}{'beam batch':>11}{'ratio':>7}")
    base_train = statistics.median(runs[0]["train"])
    base_beam = statistics.median(runs[0]["beam"])
    for run in runs:
        train_step, beam = statistics.median(run["train"]), statistics.median(run["beam"])
        print(f"{run['shape']:<62}{run['parameters']:>9}{train_step:>11.3f}{train_step / base_train:>7.2f}"
              f"{train_step * run['n_batches']:>9.0f}{beam:>11.3f}{beam / base_beam:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
