"""Re-scoring a kept run (mbrec/benchmark/probes.py): the checkpoint survives, reloads to the record's
numbers, and each probe changes exactly the inference choice it names."""

from pathlib import Path

import pytest
import torch

from mbrec.benchmark.probes import ProbeError, evaluate_splits, guidance, load_trained, relative_change, replaced_xt
from mbrec.data.dataset import SequenceLoader
from tests.test_runner import tiny_run

TINY_FATSMB = dict(hidden_size=16, inner_size=32, n_layers=1, diffusion_steps=20, ddim_skip=5, mbae_epochs=1,
                   diffusion_epochs=1, finetune_epochs=1, sampling_repeats=0)
TINY_DIFFUSION = dict(hidden_size=16, n_layers=1, n_heads=2, diffusion_steps=8, epochs=1, sampling_repeats=0)


def kept_run(tmp_path, model, **overrides):
    record = tiny_run(tmp_path, model=model, keep_checkpoint=True, **overrides)
    path = next((tmp_path / "results" / "runs").rglob("*.json"))
    return record, path


def test_keep_checkpoint_keeps_the_selected_weights_and_not_the_run_key(tmp_path):
    record, path = kept_run(tmp_path / "kept", "SASRec", hidden_size=16, inner_size=32)
    checkpoint = Path(record["checkpoint"])
    assert checkpoint == path.with_suffix(".pth") and checkpoint.exists()
    plain = tiny_run(tmp_path / "plain", hidden_size=16, inner_size=32)
    assert plain["run_key"] == record["run_key"]  # keeping the weights does not change what the run is
    assert plain["checkpoint"] is None


def test_a_kept_fatsmb_reloads_to_its_record_and_guidance_changes_only_its_scores(tmp_path):
    record, path = kept_run(tmp_path, "FatsMB", **TINY_FATSMB)
    trained = load_trained(path, cache_dir=tmp_path / "cache")
    assert trained.network.stage == "finetune"
    again = evaluate_splits(trained, ["behavior_specific"], splits=("test",))["test"]["behavior_specific"]
    assert again == pytest.approx(record["results"]["behavior_specific"]["metrics"])  # the same weights, same noise
    batch = next(iter(SequenceLoader(trained.config, trained.test_data, 32, training=False, behavior_hint="true")))
    scores = {}
    for weight, sign in [(0.0, "minus"), (0.0, "plus"), (1.0, "minus"), (1.0, "plus")]:
        with torch.no_grad(), guidance(trained.network, weight, sign):
            trained.network.train(False)  # reseed the sampling noise: every setting sees the same noise
            scores[weight, sign] = trained.network.full_sort_predict(batch)
    assert torch.equal(scores[0.0, "minus"], scores[0.0, "plus"])  # w = 0: conditional only, sign irrelevant
    assert not torch.allclose(scores[1.0, "minus"], scores[1.0, "plus"])
    assert not torch.allclose(scores[1.0, "minus"], scores[0.0, "minus"])
    own = float(record["config"]["guidance_weight"]), record["config"]["guidance_sign"]
    assert (trained.network.guidance_weight, trained.network.guidance_sign) == own  # restored


def test_replaced_xt_feeds_the_approximator_the_replacement_only(tmp_path):
    _, path = kept_run(tmp_path, "DiffuRecSys", **TINY_DIFFUSION)
    trained = load_trained(path, cache_dir=tmp_path / "cache")
    network = trained.network
    seen = []
    original = network.approximate_x0

    def spy(history, padding_mask, x_t, *args, **kwargs):
        seen.append(x_t)
        return original(history, padding_mask, x_t, *args, **kwargs)

    network.approximate_x0 = spy
    batch = next(iter(SequenceLoader(trained.config, trained.test_data, 32, training=False)))
    with torch.no_grad():
        network.train(False)
        reference = network.full_sort_predict(batch)
        true_inputs = list(seen)
        seen.clear()
        with replaced_xt(network, "zeros"):
            network.train(False)
            zeroed = network.full_sort_predict(batch)
        assert len(seen) == len(true_inputs) == trained.config["diffusion_steps"]
        assert all(not x_t.any() for x_t in seen) and all(x_t.abs().sum() > 0 for x_t in true_inputs)
        seen.clear()
        with replaced_xt(network, "noise"):
            network.train(False)
            noised = network.full_sort_predict(batch)
        assert all(not torch.equal(a, b) for a, b in zip(seen[1:], true_inputs[1:]))
    assert relative_change(reference, zeroed) > 0 and relative_change(reference, noised) > 0
    assert network.approximate_x0 is spy  # restored
    with pytest.raises(ProbeError, match="replacement"):
        with replaced_xt(network, "ones"):
            pass


def test_a_run_without_kept_weights_is_refused_clearly(tmp_path):
    tiny_run(tmp_path, hidden_size=16, inner_size=32)
    path = next((tmp_path / "results" / "runs").rglob("*.json"))
    with pytest.raises(ProbeError, match="keep_checkpoint=True"):
        load_trained(path, cache_dir=tmp_path / "cache")
