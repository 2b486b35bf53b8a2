"""Does the DiffuRec family's denoiser use x_t? (issue 22, question 2)

For each trained run (``keep_checkpoint=True``; DiffuRec, DiffuRecSysV1, DiffuRecSys, DiffuRecSysMB),
re-scores the selected weights with the approximator's ``x_t`` input replaced by fresh noise or by
zeros (the sampler still steps the true ``x_t``, see ``mbrec.benchmark.probes.replaced_xt``) and
prints:

- the relative change ``||x0' - x0|| / ||x0||`` of the generated ``x_0`` (the reverse chain's
  output) on the first ``--users`` test users, and for scale the change that another sampling seed
  causes with the true ``x_t`` (the model's own sampling noise);
- valid and test NDCG@10 / Recall@10 of ``--task`` under each input.

If replacing ``x_t`` moves the output no more than a new sampling seed does and leaves the metrics
where they were, the denoiser does not use ``x_t``: the model is a deterministic function of the
history plus noise, and the diffusion (and offset noise, which only touches ``x_t``) cannot matter.

Usage:
    python benchmarks/diffusion_xt_probe.py RECORD.json [RECORD.json ...] [--task behavior_specific]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from mbrec.benchmark.probes import evaluate_splits, load_trained, relative_change, replaced_xt  # noqa: E402
from mbrec.data.dataset import SequenceLoader  # noqa: E402

METRICS = ("ndcg@10", "recall@10")
INPUTS = ("true", "noise", "zeros")


def generated_x0(network, batch, replacement=None):
    """The reverse chain's output ``[B, H]`` (noise reseeded: every call sees the same sampling noise)."""
    network.train(False)
    with torch.no_grad():
        if replacement is None:
            return network.reverse(batch)
        with replaced_xt(network, replacement):
            return network.reverse(batch)


def probe(record, task, n_users, cache_dir=None, device="cpu"):
    trained = load_trained(record, device=device, cache_dir=cache_dir)
    network = trained.network
    hint = "true" if getattr(network, "behavior_conditioned", False) else None
    batch = next(iter(SequenceLoader(trained.config, trained.test_data, n_users, training=False,
                                     behavior_hint=hint))).to(trained.device)
    reference = generated_x0(network, batch)
    changes = {replacement: relative_change(reference, generated_x0(network, batch, replacement))
               for replacement in INPUTS[1:]}
    own_seed = network.sampling_seed
    network.reseed_sampling(own_seed + 1)
    changes["other sampling seed"] = relative_change(reference, generated_x0(network, batch))
    network.reseed_sampling(own_seed)
    metrics = {}
    for replacement in INPUTS:
        if replacement == "true":
            metrics[replacement] = evaluate_splits(trained, [task])
        else:
            with replaced_xt(network, replacement):
                metrics[replacement] = evaluate_splits(trained, [task])
    return trained.record, changes, metrics


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="+", help="records (.json) of runs trained with keep_checkpoint=True")
    parser.add_argument("--task", default="behavior_specific")
    parser.add_argument("--users", type=int, default=512, help="test users for the output change")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    header = ["model", "x_t input", "x0 change"] + [f"{split} {metric}" for split in ("valid", "test")
                                                    for metric in METRICS]
    print(f"task {args.task}; x0 change on {args.users} test users")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for record_path in args.records:
        start = time.perf_counter()
        record, changes, metrics = probe(record_path, args.task, args.users, args.cache_dir, args.device)
        name = record["model"] + (" (guidance_scale unit)" if record["config"].get("guidance_scale") == "unit" else "")
        print(f"| {name} | other sampling seed, true x_t | {changes['other sampling seed']:.4f} |" + " |" * 4)
        for replacement in INPUTS:
            change = "0" if replacement == "true" else f"{changes[replacement]:.4f}"
            cells = [f"{metrics[replacement][split][args.task][metric]:.4f}" for split in ("valid", "test")
                     for metric in METRICS]
            print(f"| {name} | {replacement} | {change} | " + " | ".join(cells) + " |", flush=True)
        print(f"({record_path}: {time.perf_counter() - start:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
