"""M3BSR with and without its fast paths (``fast_paths: True`` / ``False``), side by side on one model.

The fast paths (``mbrec/models/m3bsr.py``'s module doc): the denoising chains compute only the
tokens they change, with their condition's keys and values prepared once per batch and the step
embedding once per step; the experts compute their last layer at the read position only. Both sides
draw the same random numbers, and ``tests/test_m3bsr_speed.py`` checks that they compute the same.

Times training steps (forward + backward + the run's optimizer step, the trainer's prefix batches)
and ``full_sort_predict`` on evaluation batches (told the behavior), alternating the two sides
batch by batch so that a loaded machine slows both alike, and prints the median seconds per batch
of each and their ratio (fast / plain). The two sides train the same model in turns, each batch
once per side (the second side on weights one step further; which side goes first alternates),
and score the same evaluation batch (the test split's first). The evaluation's table of denoised modal vectors is built
once per evaluation, so it is built before each side's timed call, untimed.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/m3bsr_fast_paths.py --dataset retailrocket_f10 \\
        [--model M3BSR] [--batches 5] [--eval-batches 3] [--threads 1] [hidden_size=64 ...]
"""

import argparse
import os
import statistics
import sys
import time
from contextlib import contextmanager
from functools import partial

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from benchmarks.diffusion_speed import build_for_timing, interleaved_train_seconds  # noqa: E402
from mbrec.config import parse_overrides  # noqa: E402
from mbrec.data.dataset import SequenceLoader  # noqa: E402
from mbrec.training.trainer import Trainer, build_optimizer  # noqa: E402

SUITE_SIZE = {"hidden_size": 64}  # the reference suite's M3BSR width on CPU


@contextmanager
def computation(model, fast):
    """Inside, ``model`` runs with ``fast_paths`` set to ``fast``."""
    before = model.fast_paths
    model.fast_paths = fast
    try:
        yield model
    finally:
        model.fast_paths = before


def compare(model_name, dataset, overrides, n_batches, n_eval_batches):
    """Seconds per training batch and per eval batch of each side: two ``{side: [seconds]}``."""
    device = torch.device("cpu")
    config, train, test, model = build_for_timing(model_name, dataset, overrides, device)
    optimizer = build_optimizer(config, model.parameters())
    loader = iter(getattr(type(model), "trainer_class", Trainer)(config, model, device).train_loader(train))
    sides = {"plain": partial(computation, model, False), "fast": partial(computation, model, True)}
    train_seconds = interleaved_train_seconds(model, optimizer, loader, sides, n_batches)

    model.eval()
    eval_seconds = {side: [] for side in sides}
    batch = next(iter(SequenceLoader(config, test, config["eval_batch_size"], behavior_hint="true")))
    for index in range(n_eval_batches + 1):  # round 0 warms up, untimed
        for side, path in (sides.items() if index % 2 else reversed(sides.items())):
            with path(), torch.no_grad():
                model.eval()  # drops the evaluation table: built by this side, untimed
                if model.features:
                    model._modal_tables()
                start = time.perf_counter()
                model.full_sort_predict(batch)
                if index:
                    eval_seconds[side].append(time.perf_counter() - start)
    return train_seconds, eval_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="retailrocket_f10")
    parser.add_argument("--model", default="M3BSR", help="M3BSR or one of its ablations (M3BSR_woMD, ...)")
    parser.add_argument("--batches", type=int, default=5, help="timed training batches per side")
    parser.add_argument("--eval-batches", type=int, default=3, help="timed eval calls per side")
    parser.add_argument("--threads", type=int, default=1)
    args, rest = parser.parse_known_args()
    overrides = {**SUITE_SIZE, **parse_overrides(rest)}
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train, evaluation = compare(args.model, args.dataset, overrides, args.batches, args.eval_batches)
    print(f"{args.model} on {args.dataset}, cpu, {args.threads} thread(s), overrides {overrides}; "
          f"median seconds per batch")
    print(f"{'':<26}{'plain':>8}{'fast':>8}{'ratio':>8}")
    for name, seconds in (("train step", train), ("eval batch, told behavior", evaluation)):
        plain, fast = statistics.median(seconds["plain"]), statistics.median(seconds["fast"])
        print(f"{name:<26}{plain:>8.3f}{fast:>8.3f}{fast / plain:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
