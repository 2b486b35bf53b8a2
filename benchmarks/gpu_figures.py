"""Every GPU figure the earlier issues still owe, in one run (designed for < 10 minutes of device time).

Figures (each section is timed on its own; one that fails is recorded with its error, the others go on):

1. **full ranking at IJCAI scale**: SASRec scores + exact pessimistic ranks of ``--rank-users`` random
   users over 874,328 items (``benchmarks/eval_speed.py``): users/s, scoring vs ranking seconds, peak memory;
2. **training cost** of SASRec, FatsMB, MBGen, DiffuRecSys and M3BSR at their YAML settings on a synthetic
   dataset (``--size``, default ``medium``: 25k users, 40k items): seconds per training batch and per epoch
   (extrapolated from ``--batches`` timed batches after one warm-up), seconds per evaluation batch and per
   split, peak memory, in fp32 and in bf16 (autocast, as ``precision=bf16`` trains) side by side;
3. **MBGen beam time**: one evaluation batch (told behavior) per beam width, extrapolated to the split.

Writes ``gpu_figures.json`` and ``gpu_figures.md`` under ``--out``. ``--smoke`` runs every section at tiny
sizes (a few seconds on a CPU) to check the script itself; its numbers mean nothing.

    python benchmarks/gpu_figures.py --out gpu_out --device cuda
    OMP_NUM_THREADS=1 python benchmarks/gpu_figures.py --out /tmp/gpu_smoke --smoke
"""

import argparse
import json
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from benchmarks.diffusion_speed import build_for_timing, time_eval_batch, time_model  # noqa: E402
from benchmarks.eval_speed import IJCAI_ITEMS, measure_full_ranking  # noqa: E402
from mbrec.benchmark.runner import resolve_device  # noqa: E402

TRAINED_MODELS = ("SASRec", "FatsMB", "MBGen", "DiffuRecSys", "M3BSR")
PRECISIONS = ("fp32", "bf16")
BEAM_WIDTHS = (10, 50)
FULL = {"rank_users": 4096, "rank_items": IJCAI_ITEMS, "size": "medium", "batches": 10}
SMOKE = {"rank_users": 64, "rank_items": 5_000, "size": {"n_users": 60, "n_items": 50, "n_categories": 5},
         "batches": 1}
SMOKE_MODEL_OVERRIDES = {"eval_batch_size": 64, "train_batch_size": 32, "diffusion_steps": 4, "ddim_skip": 1}
DATASET = "synthetic"
JSON_NAME, MARKDOWN_NAME = "gpu_figures.json", "gpu_figures.md"


def _section(figures, name, function):
    """Run one section; record its result or its error and its seconds."""
    start = time.perf_counter()
    try:
        figures[name] = {"result": function()}
    except Exception as error:  # noqa: BLE001 (a failed section must not cost the others)
        figures[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    figures[name]["seconds"] = time.perf_counter() - start
    print(f"{name}: {'done' if 'result' in figures[name] else figures[name]['error']} "
          f"({figures[name]['seconds']:.1f}s)", flush=True)


def training_figures(overrides, device, batches):
    rows = []
    for model in TRAINED_MODELS:
        built = build_for_timing(model, DATASET, overrides, device)
        for precision in PRECISIONS:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            try:
                rows.append(time_model(model, DATASET, overrides, device, batches, precision, built))
            except Exception as error:  # noqa: BLE001 (e.g. bf16 unsupported by one model: say so, go on)
                rows.append({"model": model, "precision": precision, "error": f"{type(error).__name__}: {error}"})
    return rows


def beam_figures(overrides, device):
    config, _, test, model = build_for_timing("MBGen", DATASET, overrides, device)
    from mbrec.data.dataset import SequenceLoader

    model.eval()
    batch = next(iter(SequenceLoader(config, test, config["eval_batch_size"], shuffle=False, training=False)))
    batch = batch.to(device)
    n_batches = -(-len(test.target_rows) // config["eval_batch_size"])
    rows = []
    for width in BEAM_WIDTHS:
        model.beam_size = width
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = time_eval_batch(model, batch, device)
        rows.append({"beam_size": width, "eval_s_per_batch": seconds, "eval_s_per_split": seconds * n_batches,
                     "batch_users": len(batch), "split_users": len(test.target_rows),
                     "peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None})
    return rows


def to_markdown(figures):
    meta = figures["meta"]
    lines = [f"# GPU figures ({meta['device_name']}, {meta['created']})", "",
             f"torch {meta['torch']}, mode {meta['mode']}, dataset {meta['dataset']}; "
             f"{meta['total_seconds']:.0f} s in all.", ""]
    ranking = figures.get("full_ranking", {})
    lines.append("## Full ranking")
    if "result" in ranking:
        r = ranking["result"]
        lines += [f"SASRec d={r['hidden_size']}, {r['n_items']:,} items, {r['users']:,} users (batch {r['batch_size']}): "
                  f"**{r['users_per_second']:.0f} users/s** (scoring {r['score_seconds']:.2f} s + ranking "
                  f"{r['rank_seconds']:.2f} s), peak {r['peak_kind']} {r['peak_mib']:.0f} MiB.", ""]
    else:
        lines += [f"failed: {ranking.get('error')}", ""]
    training = figures.get("training", {})
    lines += ["## Training cost (seconds per batch / epoch, evaluation per batch / split, peak memory)", ""]
    if "result" in training:
        lines += ["| model | precision | params | train s/batch | train s/epoch | eval s/batch | eval s/split | peak MB |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for row in training["result"]:
            if "error" in row:
                lines.append(f"| {row['model']} | {row['precision']} | failed: {row['error']} | | | | | |")
                continue
            lines.append(f"| {row['model']} | {row['precision']} | {row['parameters']:,} | "
                         f"{row['train_s_per_batch']:.4f} | {row['train_s_per_epoch']:.1f} | "
                         f"{row['eval_s_per_batch']:.4f} | {row['eval_s_per_split']:.1f} | {row['peak_mb']:.0f} |")
        lines += ["", "Peak MB: CUDA peak allocated per model on a GPU; on a CPU the process's peak RSS so far "
                      "(cumulative over the rows above it).", ""]
    else:
        lines += [f"failed: {training.get('error')}", ""]
    beams = figures.get("mbgen_beam", {})
    lines += ["## MBGen beam search (told behavior, one evaluation batch, extrapolated to the split)", ""]
    if "result" in beams:
        lines += ["| beam | s/batch | s/split | users/batch | split users |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {row['beam_size']} | {row['eval_s_per_batch']:.3f} | {row['eval_s_per_split']:.1f} | "
                  f"{row['batch_users']} | {row['split_users']} |" for row in beams["result"]]
    else:
        lines.append(f"failed: {beams.get('error')}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_figures.json and .md")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script (numbers mean nothing)")
    parser.add_argument("--cache-dir", help="prepared data (default: $MBREC_CACHE_DIR)")
    args = parser.parse_args(argv)
    if args.cache_dir:
        os.environ["MBREC_CACHE_DIR"] = args.cache_dir
    device = resolve_device(args.device)
    sizes = SMOKE if args.smoke else FULL
    overrides = {"prepare": {"size": sizes["size"]}, "show_progress": False,
                 **(SMOKE_MODEL_OVERRIDES if args.smoke else {})}
    torch.manual_seed(0)
    start = time.perf_counter()
    figures = {"meta": {"mode": "smoke" if args.smoke else "full", "device": str(device),
                        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
                        or "cpu", "torch": torch.__version__, "dataset": f"{DATASET} size {sizes['size']}",
                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}}
    _section(figures, "full_ranking", lambda: measure_full_ranking(sizes["rank_users"], sizes["rank_items"],
                                                                   device=str(device)))
    _section(figures, "training", lambda: training_figures(overrides, device, sizes["batches"]))
    _section(figures, "mbgen_beam", lambda: beam_figures(overrides, device))
    figures["meta"]["total_seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / JSON_NAME).write_text(json.dumps(figures, indent=1, default=str), encoding="utf-8")
    (args.out / MARKDOWN_NAME).write_text(to_markdown(figures), encoding="utf-8")
    print(to_markdown(figures))
    print(f"wrote {args.out / JSON_NAME} and {args.out / MARKDOWN_NAME}")
    return 0 if all("result" in figures[name] for name in ("full_ranking", "training", "mbgen_beam")) else 1


if __name__ == "__main__":
    sys.exit(main())
