"""Benchmark: full-ranking evaluation rate at a large item count (SASRec scores, mbrec's ranking).

What is measured: the evaluator's per-batch work for ``--users`` users over ``--n-items`` items
(default 874,328, IJCAI-15's item count): RecBole SASRec's ``full_sort_predict`` on random input
windows of ``MAX_ITEM_LIST_LENGTH`` items, the padding item set to ``-inf``, then
``mbrec.evaluation.chunked_rank`` (exact pessimistic ranks, chunked over items). The batch size
goes through ``fit_eval_batch_size`` as in the evaluator. Not included: gathering batches from a
dataset (``make_batch``, small next to scoring at this item count) and metric averaging.
The model is untrained (random weights): speed does not depend on the weights.

Prints users/s, seconds spent scoring vs ranking, and peak RSS (CPU) or peak CUDA memory.

    OMP_NUM_THREADS=1 python benchmarks/eval_speed.py --users 2000 [--n-items 874328] [--hidden-size 64]
        [--batch-size 256] [--item-chunk 0] [--device cpu|cuda] [--threads N]
"""

import argparse
import resource
import time

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.model.sequential_recommender import SASRec

from mbrec.evaluation.evaluator import chunked_rank, fit_eval_batch_size

IJCAI_ITEMS = 874_328
WINDOW = 50
# RecBole's SASRec defaults (recbole/properties/model/SASRec.yaml), hidden size from the command line.
SASREC_DEFAULTS = {"n_layers": 2, "n_heads": 2, "inner_size": 256, "hidden_dropout_prob": 0.5,
                   "attn_dropout_prob": 0.5, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
                   "initializer_range": 0.02, "loss_type": "CE"}
KIB_PER_MIB = 1024


class _ItemCount:
    """The one thing a RecBole sequential model asks its dataset for: the item count (padding included)."""

    def __init__(self, n_items):
        self.n_items = n_items

    def num(self, field):
        return self.n_items


def build_model(n_items, hidden_size, device):
    config = {"USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "LIST_SUFFIX": "_list",
              "ITEM_LIST_LENGTH_FIELD": "item_length", "NEG_PREFIX": "neg_", "MAX_ITEM_LIST_LENGTH": WINDOW,
              "device": device, "hidden_size": hidden_size, **SASREC_DEFAULTS}
    return SASRec(config, _ItemCount(n_items)).to(device).eval()


def measure_full_ranking(users, n_items=IJCAI_ITEMS, hidden_size=64, batch_size=256, item_chunk=0,
                         device="cpu", seed=2024):
    """Time scoring and ranking ``users`` random users over ``n_items`` items; return the figures as a dict."""
    device = torch.device(device)
    torch.manual_seed(seed)
    n_columns = n_items + 1  # + padding item 0
    model = build_model(n_columns, hidden_size, device)
    batch_size = fit_eval_batch_size(batch_size, n_columns, device)
    rng = np.random.default_rng(seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    score_s = rank_s = 0.0
    ranks = []
    with torch.no_grad():
        for begin in range(0, users, batch_size):
            size = min(batch_size, users - begin)
            lengths = rng.integers(1, WINDOW + 1, size)
            items = rng.integers(1, n_columns, (size, WINDOW))
            items[np.arange(WINDOW)[None, :] >= lengths[:, None]] = 0  # left-aligned, zero-padded
            batch = Interaction({"item_id_list": torch.from_numpy(items), "item_length": torch.from_numpy(lengths),
                                 "user_id": torch.arange(begin, begin + size)}).to(device)
            targets = torch.from_numpy(rng.integers(1, n_columns, size)).to(device)
            start = time.perf_counter()
            scores = model.full_sort_predict(batch).view(size, -1).float()
            scores[:, 0] = -torch.inf
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            middle = time.perf_counter()
            ranks.append(chunked_rank(scores, targets, item_chunk or None).cpu())
            del scores
            rank_s += time.perf_counter() - middle
            score_s += middle - start
    total = score_s + rank_s
    peak_mib = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB)
    return {"model": "SASRec", "hidden_size": hidden_size, "n_items": n_items, "users": users, "batch_size": batch_size,
            "item_chunk": item_chunk or None, "device": str(device), "torch_threads": torch.get_num_threads(),
            "users_per_second": users / total, "seconds": total, "score_seconds": score_s, "rank_seconds": rank_s,
            "peak_mib": peak_mib, "peak_kind": "CUDA allocated" if device.type == "cuda" else "process RSS",
            "mean_rank_of_random_targets": torch.cat(ranks).float().mean().item()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--n-items", type=int, default=IJCAI_ITEMS, help="items excluding padding")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256, help="eval_batch_size before fitting to memory")
    parser.add_argument("--item-chunk", type=int, default=0, help="eval_item_chunk (0: all items at once)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = measure_full_ranking(args.users, args.n_items, args.hidden_size, args.batch_size, args.item_chunk,
                                   args.device, args.seed)
    print(f"SASRec d={args.hidden_size}, {args.n_items:,} items, {args.users:,} users, batch {figures['batch_size']}, "
          f"item chunk {args.item_chunk or 'all'}, device {figures['device']}, torch threads {figures['torch_threads']}")
    print(f"{figures['users_per_second']:.1f} users/s; {figures['seconds']:.2f}s = scoring {figures['score_seconds']:.2f}s"
          f" + ranking {figures['rank_seconds']:.2f}s; peak {figures['peak_kind']} {figures['peak_mib']:.0f} MiB")
    print(f"mean rank of random targets {figures['mean_rank_of_random_targets']:,.0f} (expect ~{args.n_items / 2:,.0f})")


if __name__ == "__main__":
    main()
