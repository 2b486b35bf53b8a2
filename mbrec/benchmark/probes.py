"""Re-scoring a trained run without retraining: the fidelity probes of ``benchmarks/``.

A run trained with ``keep_checkpoint=True`` keeps its selected weights beside its record
(``<record>.pth``, named in the record's ``checkpoint``). :func:`load_trained` rebuilds that run's
config, data splits and model from the record and loads the weights, so a probe can change one
inference choice (FatsMB's guidance sign and weight; what the diffusion denoiser sees as ``x_t``)
and evaluate valid and test again on the very weights the run selected.

Nothing here writes a record: probes print numbers, the run's own record stays as it was.
"""

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import torch

from mbrec import registry
from mbrec.benchmark.runner import prepare_data, setup_run
from mbrec.evaluation import Evaluator

# What :func:`replaced_xt` may put where the denoiser reads x_t.
XT_REPLACEMENTS = ("noise", "zeros")


class ProbeError(ValueError):
    """A record cannot be re-scored (no kept checkpoint, or a model the probe does not apply to)."""


def load_trained(record_path, device="cpu", data_path=None, cache_dir=None):
    """The run of ``record_path`` rebuilt with its selected weights loaded, in eval mode.

    Returns ``SimpleNamespace(record, config, network, valid_data, test_data, device)``.
    """
    record_path = Path(record_path)
    record = json.loads(record_path.read_text(encoding="utf-8"))
    checkpoint = Path(record.get("checkpoint") or record_path.with_suffix(".pth"))
    if not checkpoint.exists():
        raise ProbeError(f"{record_path}: no kept checkpoint at {checkpoint}; train the run with "
                         f"keep_checkpoint=True (and --rerun if it is stored already)")
    settings = dict(record["config"])
    model_class = registry.get_model_class(record["model"])
    _, dataset_dir = prepare_data(record["dataset_canonical"], settings, data_path, cache_dir)
    built = setup_run(model_class, dataset_dir, settings, int(record["seed"]), device)
    network = built.network
    state = torch.load(checkpoint, map_location=built.device, weights_only=True)
    network.load_state_dict(state)
    stages = getattr(network, "training_stages", None)
    if stages:  # a staged model infers as its last trained stage does (StagedTrainer leaves it so)
        trained = [stage for stage in stages if stage in (record["training"].get("stages") or {})]
        network.set_stage(trained[-1] if trained else stages[0])
    network.eval()
    return SimpleNamespace(record=record, config=built.config, network=network, valid_data=built.valid_data,
                           test_data=built.test_data, device=built.device)


def evaluate_splits(trained, tasks, splits=("valid", "test")):
    """``{split: {task: metrics}}`` of the loaded network as it is now (tasks N/A for it are left out)."""
    evaluator = Evaluator(trained.config)
    scores = {}
    for split in splits:
        data = {"valid": trained.valid_data, "test": trained.test_data}[split]
        results = evaluator.evaluate(trained.network, data, tasks=list(tasks), device=trained.device)
        scores[split] = {task: result.metrics for task, result in results.items() if result}
    return scores


@contextlib.contextmanager
def guidance(network, weight, sign):
    """FatsMB's classifier-free guidance set to ``(weight, sign)`` for the duration (then restored)."""
    if not hasattr(network, "guidance_weight"):
        raise ProbeError(f"{type(network).__name__} has no classifier-free guidance to change")
    saved = network.guidance_weight, network.guidance_sign
    network.guidance_weight, network.guidance_sign = float(weight), sign
    try:
        yield network
    finally:
        network.guidance_weight, network.guidance_sign = saved


@contextlib.contextmanager
def replaced_xt(network, replacement, seed=0):
    """The DiffuRec family's approximator reads fresh noise (or zeros) where it would read ``x_t``.

    Only the approximator's input changes: the sampler still steps the true ``x_t`` with the
    approximator's ``x0_hat``. If the outputs and metrics barely move, the denoiser does not use
    ``x_t`` and the model is close to a deterministic function of the history. ``noise`` is drawn
    from its own generator (``seed``), so the model's sampling noise stays what it was.
    """
    if replacement not in XT_REPLACEMENTS:
        raise ProbeError(f"x_t replacement must be one of {XT_REPLACEMENTS}, got {replacement!r}")
    if not hasattr(network, "approximate_x0"):
        raise ProbeError(f"{type(network).__name__} has no diffusion approximator (approximate_x0)")
    original = network.approximate_x0
    overridden = "approximate_x0" in vars(network)  # an instance's own override is put back, not dropped
    generators = {}

    def substitute(history, padding_mask, x_t, *args, **kwargs):
        if replacement == "zeros":
            return original(history, padding_mask, torch.zeros_like(x_t), *args, **kwargs)
        if x_t.device not in generators:
            generators[x_t.device] = torch.Generator(device=x_t.device).manual_seed(seed)
        fresh = torch.randn(x_t.shape, device=x_t.device, generator=generators[x_t.device])
        return original(history, padding_mask, fresh, *args, **kwargs)

    network.approximate_x0 = substitute
    try:
        yield network
    finally:
        if overridden:
            network.approximate_x0 = original
        else:
            del network.approximate_x0  # back to the class's method


def relative_change(reference, changed):
    """``||changed - reference|| / ||reference||`` over the whole tensor (0 = identical)."""
    return float((changed - reference).norm() / reference.norm().clamp_min(1e-12))
