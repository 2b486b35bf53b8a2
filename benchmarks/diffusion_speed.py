"""Per-batch training and sampling cost of the diffusion models, on a real prepared dataset.

Times ``--batches`` training steps (forward + backward + Adam) and the full reverse chain used
by the evaluator (``full_sort_predict`` on one eval batch) for each model, with the models'
own YAML settings unless overridden, and prints seconds per batch, the extrapolated seconds
per training epoch and per full evaluation of one split, parameters and peak memory (CUDA
peak allocated on a GPU, process peak RSS on CPU).

Usage:
    python benchmarks/diffusion_speed.py --dataset amazon_beauty [--models DiffuRec DiffuRecSys]
        [--device cuda] [--batches 5] [key=value ...]
"""

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from mbrec import registry  # noqa: E402
from mbrec.benchmark.runner import prepare_data, resolve_device  # noqa: E402
from mbrec.config import build_config, merge_layers, parse_overrides  # noqa: E402
from mbrec.data.dataset import MultiBehaviorSequentialDataset, SequenceLoader  # noqa: E402
from mbrec.training.trainer import PRECISIONS, Trainer, build_optimizer  # noqa: E402


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def time_eval_batch(model, batch, device):
    """Seconds of one ``full_sort_predict`` (the evaluator's scoring call) on ``batch``."""
    synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        model.full_sort_predict(batch)
    synchronize(device)
    return time.perf_counter() - start


def interleaved_train_seconds(model, optimizer, loader, sides, n_batches):
    """``{side: [seconds]}`` of ``n_batches`` training steps per side, the sides alternating in order batch
    by batch on the same model and batches (batch 0 warms both up, untimed): on a shared, noisy machine
    only such side-by-side figures give a fair ratio. ``sides``: name -> context manager factory that
    switches the model to that side's computation."""
    seconds = {side: [] for side in sides}
    model.train()
    for index in range(n_batches + 1):
        batch = next(loader)
        for side, path in (sides.items() if index % 2 else reversed(sides.items())):
            with path():
                start = time.perf_counter()
                optimizer.zero_grad()
                model.calculate_loss(batch).backward()
                optimizer.step()
                if index:
                    seconds[side].append(time.perf_counter() - start)
    return seconds


def build_for_timing(model_name, dataset, overrides, device):
    """``(config, train split, test split, model on device)`` of one run's settings."""
    settings = merge_layers(model_name, dataset, overrides=overrides)
    _, dataset_dir = prepare_data(dataset, settings)
    settings["show_progress"] = False
    config = build_config(registry.get_model_class(model_name), dataset_dir, settings)
    config["device"] = device
    train, _, test = MultiBehaviorSequentialDataset(config).build()
    return config, train, test, registry.get_model_class(model_name)(config, train).to(device)


def time_model(model_name, dataset, overrides, device, n_batches, precision="fp32", built=None):
    """Seconds per training batch (forward + backward + step under ``precision``, as the trainer) and per
    evaluation batch, extrapolated to an epoch and a split; ``built`` reuses :func:`build_for_timing`."""
    config, train, test, model = built or build_for_timing(model_name, dataset, overrides, device)
    optimizer = build_optimizer(config, model.parameters())
    # the model's own trainer lays out its batches (prefix examples, or whole windows with train_unit: sequence)
    train_loader = getattr(type(model), "trainer_class", Trainer)(config, model, device).train_loader(train)
    loader = iter(train_loader)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    model.train()
    seconds = []
    for _ in range(n_batches + 1):  # the first batch warms up kernels and allocators
        batch = next(loader).to(device)
        synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32"):
            loss = model.calculate_loss(batch)
        loss.backward()
        optimizer.step()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    train_batch = sum(seconds[1:]) / n_batches

    model.eval()
    eval_loader = iter(SequenceLoader(config, test, config["eval_batch_size"], shuffle=False, training=False))
    eval_batch = time_eval_batch(model, next(eval_loader).to(device), device)
    n_train_batches = len(train_loader)
    n_eval_batches = -(-len(test.target_rows) // config["eval_batch_size"])
    return {
        "model": model_name,
        "precision": precision,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_s_per_batch": train_batch,
        "train_s_per_epoch": train_batch * n_train_batches,
        "eval_s_per_batch": eval_batch,
        "eval_s_per_split": eval_batch * n_eval_batches,
        "peak_mb": peak_memory_mb(device),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="amazon_beauty")
    parser.add_argument("--models", nargs="+", default=["DiffuRec", "DiffuRecSysV1", "DiffuRecSys"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", type=int, default=5)
    args, rest = parser.parse_known_args()
    overrides = parse_overrides(rest)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    print(f"dataset {args.dataset}, device {device}, overrides {overrides or 'none'}")
    print(f"{'model':<16}{'params':>10}{'train s/batch':>15}{'train s/epoch':>15}{'eval s/batch':>14}"
          f"{'eval s/split':>14}{'peak MB':>10}")
    for name in args.models:
        row = time_model(name, args.dataset, overrides, device, args.batches)
        print(f"{row['model']:<16}{row['parameters']:>10,}{row['train_s_per_batch']:>15.3f}"
              f"{row['train_s_per_epoch']:>15.1f}{row['eval_s_per_batch']:>14.3f}{row['eval_s_per_split']:>14.1f}"
              f"{row['peak_mb']:>10.0f}")


if __name__ == "__main__":
    main()
