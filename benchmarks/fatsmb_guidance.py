"""FatsMB's classifier-free guidance, re-scored on one trained model (issue 22, question 1).

Loads a FatsMB run trained with ``keep_checkpoint=True`` (its record's ``.json``; the weights are
the ``.pth`` beside it) and evaluates valid and test again for every guidance weight ``w`` and sign,
without retraining: ``minus`` is the paper's Eq. 17, ``(1 + w) cond - w uncond``; ``plus`` is what
the reference code computes, ``(1 + w) cond + w uncond``; ``w = 0`` is the conditional output alone
(the sign does not matter there). Every setting sees the same sampling noise (the run's sampling
seed), so the differences are the guidance's alone. Choose on valid; test is printed beside it.

Usage:
    python run_benchmark.py --model FatsMB --dataset retailrocket keep_checkpoint=True ...
    python benchmarks/fatsmb_guidance.py RECORD.json [--weights 0 0.5 1 2 3] [--tasks behavior_specific target_behavior]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mbrec.benchmark.probes import evaluate_splits, guidance, load_trained  # noqa: E402

METRICS = ("ndcg@10", "recall@10")
SIGNS = ("minus", "plus")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("record", help="the run's record .json (trained with keep_checkpoint=True)")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 3.0])
    parser.add_argument("--tasks", nargs="+", default=["behavior_specific", "target_behavior"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)

    trained = load_trained(args.record, device=args.device, cache_dir=args.cache_dir)
    own = trained.network.guidance_weight, trained.network.guidance_sign
    print(f"{args.record}\ntrained and selected with guidance w={own[0]} sign={own[1]}; sampling seed "
          f"{trained.network.sampling_seed}")
    header = ["w", "sign"] + [f"{split} {task} {metric}" for task in args.tasks for split in ("valid", "test")
                              for metric in METRICS]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for weight in args.weights:
        for sign in (SIGNS[:1] if weight == 0 else SIGNS):  # w = 0: the conditional output, either sign
            start = time.perf_counter()
            with guidance(trained.network, weight, sign):
                scores = evaluate_splits(trained, args.tasks)
            cells = [f"{scores[split][task][metric]:.4f}" for task in args.tasks for split in ("valid", "test")
                     for metric in METRICS]
            print("| " + " | ".join([f"{weight:g}", sign if weight else "either"] + cells) + f" |  ({time.perf_counter() - start:.0f}s)",
                  flush=True)


if __name__ == "__main__":
    main()
