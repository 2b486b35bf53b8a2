"""MBGen before and after its CPU fast paths, side by side on one model.

The fast paths: the encoder and the teacher-forced decoder run per group of similar history
lengths, each cut to its longest history, in chunks small enough for malloc to recycle their
temporaries (``MBGen.length_groups``); cross-attention reads the encoder output through products of
its weights where that needs fewer multiplications (``Attention.attend_absorbed``); and beam search
decodes only the new position at each step, the decoded positions' self-attention keys and values
cached and the memory's cross-attention view prepared once per search (``MBGen.decode_step``,
``DecoderCache``). :func:`reference_path` runs the computation as it was before them (the whole
batch at the full window, keys and values of every memory token for every decoder layer, every
beam step re-decoding the whole prefix) on the same model and weights;
``tests/test_mbgen_speed.py`` checks that both compute the same thing.

Times training steps (forward + backward + AdamW, the trainer's prefix batches) and beam search
on one evaluation batch (``full_sort_predict``: told the behavior, as ``behavior_specific`` and
the validation; and the told-nothing beam of ``behavior_item``), alternating reference and fast
path batch by batch so that a loaded machine slows both alike, and prints the median seconds per
batch of each and their ratio (fast / reference). The two sides train the same model in turns,
each batch once per side (the second side on weights one step further; which side goes first
alternates), and time the same eval batch.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/mbgen_fast_paths.py --dataset retailrocket_f10 \\
        [--batches 6] [--eval-batches 3] [--threads 1] [d_model=64 d_ff=256 ...]
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
from torch.nn import functional as F  # noqa: E402

from benchmarks.diffusion_speed import build_for_timing, interleaved_train_seconds  # noqa: E402
from mbrec.config import parse_overrides  # noqa: E402
from mbrec.data.dataset import SequenceLoader  # noqa: E402
from mbrec.data.item_tokenizers import BOS_TOKEN  # noqa: E402
from mbrec.layers.seq2seq import Attention  # noqa: E402
from mbrec.training.trainer import build_optimizer  # noqa: E402

SUITE_SIZE = {"d_model": 64, "d_ff": 256}  # the reference suite's MBGen size on CPU


def reference_attention(attention, x, context, bias):
    """``Attention.forward`` before the fast paths: the context's keys and values, then
    ``F.scaled_dot_product_attention`` with the bias as its mask."""
    groups = x.size(0) // context.size(0)
    length = x.size(1)
    stacked = x.reshape(context.size(0), groups * length, x.size(2))  # [B, G * Lq, D]
    q = attention._heads(attention.query(stacked))
    k, v = attention._heads(attention.key(context)), attention._heads(attention.value(context))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                         dropout_p=attention.dropout_prob if attention.training else 0.0)
    return attention.output(out.transpose(1, 2).reshape(x.size(0), length, -1))


def reference_beam_search(model, memory, memory_padding, beam_size, behaviors=None):
    """``MBGen.beam_search`` before the fast paths: every step decodes every beam's whole prefix."""
    batch_size, device = memory.size(0), memory.device
    tokens = torch.full((batch_size, 1, 1), BOS_TOKEN, dtype=torch.long, device=device)  # [B, W, T]
    scores = torch.zeros(batch_size, 1, device=device)  # [B, W]
    if behaviors is not None:
        tokens = torch.cat([tokens, model.layout.behavior_tokens(behaviors).view(batch_size, 1, 1)], dim=2)
        beam_behaviors = behaviors.view(batch_size, 1)
    else:
        beam_behaviors = None
    prefix_index = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
    first_level = -1 if behaviors is None else 0
    for level in range(first_level, model.tokenizer.n_levels):
        width, length = tokens.shape[1], tokens.shape[2]
        injected = (torch.zeros(batch_size, width, dtype=torch.long, device=device) if beam_behaviors is None
                    else beam_behaviors)
        logits = model.decode(tokens.flatten(0, 1), model.decoder_behaviors(injected.flatten(), length),
                              memory, memory_padding)
        log_probs = F.log_softmax(logits[:, -1], dim=-1).view(batch_size, width, -1)
        if level < 0:
            offset, n_choices = model.layout.behavior_offset, model.layout.n_behaviors
            candidates = log_probs[..., offset:offset + n_choices]
        else:
            offset, n_choices = model.layout.digit_offsets[level], model.tokenizer.level_sizes[level]
            candidates = log_probs[..., offset:offset + n_choices]
            valid = getattr(model, f"valid_next_{level}")[prefix_index]
            candidates = candidates.masked_fill(~valid, -torch.inf)
        total = (scores.unsqueeze(2) + candidates).flatten(1)
        scores, chosen = total.topk(min(beam_size, total.size(1)), dim=1)
        parent, choice = chosen // n_choices, chosen % n_choices
        tokens = torch.cat([tokens.gather(1, parent.unsqueeze(2).expand(-1, -1, length)),
                            (choice + offset).unsqueeze(2)], dim=2)
        if level < 0:
            beam_behaviors = choice + 1
            prefix_index = torch.zeros_like(choice)
        else:
            beam_behaviors = beam_behaviors.gather(1, parent)
            prefix_index = prefix_index.gather(1, parent) * n_choices + choice
    digits = tokens[:, :, -model.tokenizer.n_levels:] - torch.tensor(model.layout.digit_offsets, device=device)
    items = model.tokenizer.decode(digits.cpu()).to(device)
    items = torch.where(torch.isfinite(scores), items, torch.zeros_like(items))
    return beam_behaviors, items, scores


def _one_full_group(lengths, window):
    return [(slice(None), window)]


@contextmanager
def reference_path(model):
    """Inside, ``model`` computes as before the fast paths (see the module doc)."""
    attentions = [module for module in model.modules() if isinstance(module, Attention)]
    for module in attentions:
        module.forward = partial(reference_attention, module)
    model.length_groups = _one_full_group
    model.beam_search = partial(reference_beam_search, model)
    try:
        yield model
    finally:
        del model.length_groups, model.beam_search
        for module in attentions:
            del module.forward


@contextmanager
def fast_path():
    """The model as it is."""
    yield


def compare(dataset, overrides, n_batches, n_eval_batches):
    """Seconds per training batch and per eval batch of each side: three ``{side: [seconds]}``."""
    device = torch.device("cpu")
    config, train, test, model = build_for_timing("MBGen", dataset, overrides, device)
    optimizer = build_optimizer(config, model.parameters())
    loader = iter(model.trainer_class(config, model, device).train_loader(train))
    sides = {"reference": partial(reference_path, model), "fast": fast_path}
    train_seconds = interleaved_train_seconds(model, optimizer, loader, sides, n_batches)

    model.eval()
    told_seconds, joint_seconds = ({side: [] for side in sides} for _ in range(2))
    told = next(iter(SequenceLoader(config, test, config["eval_batch_size"], behavior_hint="true")))
    untold = next(iter(SequenceLoader(config, test, config["eval_batch_size"], behavior_hint=None)))
    for index in range(n_eval_batches + 1):  # round 0 warms up, untimed
        for side, path in (sides.items() if index % 2 else reversed(sides.items())):
            with path(), torch.no_grad():
                start = time.perf_counter()
                model.full_sort_predict(told)
                middle = time.perf_counter()
                model._beam_memo = {}  # time the told-nothing beam itself, not the memo
                model.full_sort_predict_behavior_item(untold)
                if index:
                    told_seconds[side].append(middle - start)
                    joint_seconds[side].append(time.perf_counter() - middle)
    return train_seconds, told_seconds, joint_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="retailrocket_f10")
    parser.add_argument("--batches", type=int, default=6, help="timed training batches per side")
    parser.add_argument("--eval-batches", type=int, default=3, help="timed eval batches per side")
    parser.add_argument("--threads", type=int, default=1)
    args, rest = parser.parse_known_args()
    overrides = {**SUITE_SIZE, **parse_overrides(rest)}
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train, told, joint = compare(args.dataset, overrides, args.batches, args.eval_batches)
    print(f"MBGen on {args.dataset}, cpu, {args.threads} thread(s), overrides {overrides}; median seconds per batch")
    print(f"{'':<34}{'reference':>10}{'fast':>8}{'ratio':>8}")
    for name, seconds in (("train step", train), ("eval batch, told behavior", told),
                          ("eval batch, told nothing", joint)):
        reference, fast = statistics.median(seconds["reference"]), statistics.median(seconds["fast"])
        print(f"{name:<34}{reference:>10.3f}{fast:>8.3f}{fast / reference:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
