"""DiffuRecSys's approximator before and after its CPU fast paths, side by side on one model.

The fast paths (``mbrec/models/diffurecsys.py``): dropout masks from 15-bit random integers
(``mbrec/layers/dropout.py``), attention written out with one additive padding bias per forward
(``PaddedAttention.attend``), the last block computed at the read position only, and the
approximator run per group of similar history lengths (``DiffuRecSys.length_groups``).
:func:`reference_path` runs the computation as it was before them (``nn.MultiheadAttention``'s
forward with the boolean padding mask, ``F.dropout``, every block at every position of the whole
batch) on the same model and weights; ``tests/test_diffurecsys_speed.py``
checks that both compute the same thing.

Times training steps (forward + backward + Adam, the trainer's prefix batches) and one reverse
chain (``full_sort_predict`` on one eval batch), alternating reference and fast path batch by
batch so that a loaded machine slows both alike, and prints the median seconds per batch of
each and their ratio (fast / reference). The two sides train the same model in turns, each
batch once per side (the second side on weights one step further; which side goes first
alternates), and time the same eval batch.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/diffurecsys_fast_paths.py --dataset retailrocket_f10 \\
        [--models DiffuRecSys DiffuRec] [--batches 8] [--eval-batches 2] [--threads 1] [hidden_size=64 ...]
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
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from benchmarks.diffusion_speed import build_for_timing, interleaved_train_seconds  # noqa: E402
from mbrec.config import parse_overrides  # noqa: E402
from mbrec.data.dataset import SequenceLoader  # noqa: E402
from mbrec.layers.dropout import IntegerMaskDropout  # noqa: E402
from mbrec.training.trainer import Trainer, build_optimizer  # noqa: E402


def _native_dropout(module, x):
    return F.dropout(x, module.p, module.training)


def reference_block(block, hidden, guidance, padding_mask):
    """``ApproximatorBlock.forward`` before the fast paths: every position, boolean key padding mask."""
    if block.cross_attention is not None:
        context = block.cross_norm(hidden)
        attended, _ = nn.MultiheadAttention.forward(block.cross_attention, guidance, context, context,
                                                    key_padding_mask=padding_mask, need_weights=False)
        hidden = hidden + _native_dropout(block.dropout, attended)
    normed = block.self_norm(hidden)
    attended, _ = nn.MultiheadAttention.forward(block.self_attention, normed, normed, normed,
                                                key_padding_mask=padding_mask, need_weights=False)
    hidden = hidden + _native_dropout(block.dropout, attended)
    inner, activation, inner_dropout, outer = block.ffn
    return hidden + _native_dropout(block.dropout, outer(_native_dropout(inner_dropout, activation(inner(
        block.ffn_norm(hidden))))))


def reference_approximate_x0(model, history, padding_mask, x_t, condition, behavior=None, lambdas=None):
    """``DiffuRecSys.approximate_x0`` before the fast paths."""
    if model.guidance_scale == "unit":
        guidance = (x_t + condition).unsqueeze(1).expand_as(history)
    else:
        if lambdas is None:
            lambdas = model.sample_lambda(history.shape, history.device)
        guidance = lambdas * (x_t + condition).unsqueeze(1)
    if behavior is not None:
        guidance = guidance + behavior.unsqueeze(1)
    hidden = history if model.use_cross_attention else history + guidance
    for block in model.blocks:
        hidden = reference_block(block, hidden, guidance, padding_mask)
    last = (~padding_mask).sum(dim=1) - 1
    output = hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    return model.output_norm(model.output_dropout(output))


@contextmanager
def reference_path(model):
    """Inside, ``model`` computes as before the fast paths: ``F.dropout`` masks, ``nn.MultiheadAttention``."""
    dropouts = [module for module in model.modules() if isinstance(module, IntegerMaskDropout)]
    for module in dropouts:
        module.forward = partial(_native_dropout, module)
    model.approximate_x0 = partial(reference_approximate_x0, model)
    try:
        yield model
    finally:
        del model.approximate_x0
        for module in dropouts:
            del module.forward


@contextmanager
def fast_path():
    """The model as it is."""
    yield


def compare(model_name, dataset, overrides, n_batches, n_eval_batches):
    """Seconds per training batch and per reverse chain of each side: two ``{side: [seconds]}``."""
    device = torch.device("cpu")
    config, train, test, model = build_for_timing(model_name, dataset, overrides, device)
    optimizer = build_optimizer(config, model.parameters())
    loader = iter(Trainer(config, model, device).train_loader(train))
    sides = {"reference": partial(reference_path, model), "fast": fast_path}
    train_seconds = interleaved_train_seconds(model, optimizer, loader, sides, n_batches)

    model.eval()
    eval_seconds = {side: [] for side in sides}
    eval_loader = iter(SequenceLoader(config, test, config["eval_batch_size"], shuffle=False, training=False))
    batch = next(eval_loader)
    for index in range(n_eval_batches):
        for side, path in (sides.items() if index % 2 else reversed(sides.items())):
            with path(), torch.no_grad():
                start = time.perf_counter()
                model.full_sort_predict(batch)
                eval_seconds[side].append(time.perf_counter() - start)
    return train_seconds, eval_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="retailrocket_f10")
    parser.add_argument("--models", nargs="+", default=["DiffuRecSys", "DiffuRec"])
    parser.add_argument("--batches", type=int, default=8, help="timed training batches per side")
    parser.add_argument("--eval-batches", type=int, default=2, help="timed reverse chains per side")
    parser.add_argument("--threads", type=int, default=1)
    args, rest = parser.parse_known_args()
    overrides = {"hidden_size": 64, **parse_overrides(rest)}  # the suite's size unless overridden
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"dataset {args.dataset}, cpu, {args.threads} thread(s), overrides {overrides}; median seconds per batch")
    print(f"{'model':<14}{'train ref':>11}{'train fast':>12}{'ratio':>8}{'eval ref':>11}{'eval fast':>11}{'ratio':>8}")
    for name in args.models:
        train, evaluation = compare(name, args.dataset, overrides, args.batches, args.eval_batches)
        train_ref, train_fast = statistics.median(train["reference"]), statistics.median(train["fast"])
        eval_ref, eval_fast = statistics.median(evaluation["reference"]), statistics.median(evaluation["fast"])
        print(f"{name:<14}{train_ref:>11.3f}{train_fast:>12.3f}{train_fast / train_ref:>8.2f}"
              f"{eval_ref:>11.3f}{eval_fast:>11.3f}{eval_fast / eval_ref:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
