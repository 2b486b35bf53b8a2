"""M3BSR and its pieces: modal item features, the conditional feature denoiser, the router, the model."""

import numpy as np
import pytest
import torch

from mbrec.training.trainer import Trainer
from mbrec.config import merge_layers
from mbrec.data import synthetic
from mbrec.data.dataset import MultiBehaviorSequentialDataset, SequenceLoader
from mbrec.data.item_features import CATEGORICAL, DENSE, ItemFeatureError, load_item_features
from mbrec.evaluation import Evaluator
from mbrec.layers.diffusion import ConditionalFeatureDenoiser
from mbrec.layers.moe import BehaviorConditionedRouter
from mbrec.registry import get_model_class
from tests.conftest import make_config, write_inter
from tests.test_runner import behavior_rule_rows, tiny_run

TINY_M3BSR = dict(behaviors=["view", "cart", "buy"], hidden_size=16, inner_size=32, n_heads=2,
                  hidden_dropout_prob=0.0, attn_dropout_prob=0.0, diffusion_steps=5,
                  eval_tasks=["behavior_specific"], topk=[1, 5, 10], train_batch_size=64, eval_batch_size=128)


def build(dataset_dir, model="M3BSR", **overrides):
    from recbole.utils import init_seed

    config = make_config(model, dataset_dir, **{**TINY_M3BSR, **overrides})
    init_seed(2024, True)
    dataset = MultiBehaviorSequentialDataset(config)
    train, valid, test = dataset.build()
    return config, train, valid, test


def rule_folder(tmp_path, content_dim=8, n_users=100):
    """Behavior-rule data (next item fixed by the next behavior) plus a random content vector per item."""
    folder = write_inter(tmp_path, "rule", behavior_rule_rows(n_users=n_users))
    if content_dim:
        tokens = np.array([f"i{k}" for k in range(12)])
        vectors = np.random.default_rng(0).standard_normal((12, content_dim)).astype(np.float32)
        np.savez(folder / "rule.content.npz", item_id=tokens, vectors=vectors)
    return folder


# ----- modal item features ------------------------------------------------------------------------

def test_features_are_aligned_to_internal_ids_with_padding_and_missing_rows_zero(tmp_path):
    folder = rule_folder(tmp_path, content_dim=0)
    tokens = np.array(["i3", "i0", "unknown_item", "i7"])  # i-tokens the data knows, one it does not
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    np.save(folder / "rule.image.npy", vectors)
    (folder / "rule.image.ids").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    with open(folder / "rule.item", "w", encoding="utf-8") as handle:
        handle.write("item_id:token\tcategory:token\n" + "".join(f"i{k}\tc{k % 3}\n" for k in range(11)))
    config, train, _, _ = build(folder)
    features = load_item_features(train, "auto")
    assert features.names == ["image", "category"]
    image, category = features.modalities
    assert image.kind == DENSE and image.values.shape == (train.item_num, 3)
    token_to_id = train.field2token_id["item_id"]
    for row, token in enumerate(["i3", "i0", "i7"]):
        assert np.array_equal(image.values[token_to_id[token]], vectors[[0, 1, 3][row]])
    assert not image.values[0].any() and not image.has_feature[0]
    assert image.has_feature.sum() == 3 and not image.values[token_to_id["i5"]].any()
    assert category.kind == CATEGORICAL and category.n_categories == 3
    assert category.values[0] == 0 and category.values[token_to_id["i11"]] == 0  # i11 has no category
    same = category.values[token_to_id["i1"]] == category.values[token_to_id["i4"]]  # both c1
    assert same and category.values[token_to_id["i1"]] != category.values[token_to_id["i2"]]
    assert load_item_features(train, []).modalities == []
    with pytest.raises(ItemFeatureError, match="text"):
        load_item_features(train, ["text"])


def test_synthetic_content_noise_level_scales_only_the_noise():
    size = {"n_users": 20, "n_items": 40, "n_categories": 4}
    clean = synthetic.item_content(size, 7, 8, noise=0.0)
    low, high = synthetic.item_content(size, 7, 8, noise=0.5), synthetic.item_content(size, 7, 8, noise=1.5)
    assert np.allclose((high - clean), 3 * (low - clean), atol=1e-5)
    assert np.array_equal(low, synthetic.item_content(size, 7, 8))  # the default level is unchanged


# ----- conditional modality denoising -------------------------------------------------------------

def test_trained_modality_denoiser_moves_held_out_features_towards_the_clean_signal():
    """Content = clean + noise; the condition carries the item's latent factors (what an ID embedding learns)."""
    size = {"n_users": 20, "n_items": 1200, "n_categories": 20}
    clean = torch.from_numpy(synthetic.item_content(size, 3, 16, noise=0.0))
    noisy = torch.from_numpy(synthetic.item_content(size, 3, 16))  # CONTENT_NOISE = 0.5
    condition = torch.from_numpy(synthetic.item_latent_factors(size, 3)).unsqueeze(1)  # [N, 1, 16]
    train, held_out = torch.arange(1000), torch.arange(1000, 1200)
    torch.manual_seed(0)
    denoiser = ConditionalFeatureDenoiser(16, 2, 64, n_steps=10, beta_start=1e-4, beta_end=0.02)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=3e-3)
    for _ in range(400):
        batch = train[torch.randint(len(train), (128,))]
        loss = denoiser.loss(noisy[batch].unsqueeze(1), condition[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    denoiser.eval()
    with torch.no_grad():
        denoised = denoiser.denoise(noisy[held_out].unsqueeze(1), condition[held_out]).squeeze(1)
    before = (noisy[held_out] - clean[held_out]).square().mean()
    after = (denoised - clean[held_out]).square().mean()
    assert after < 0.95 * before  # ~10% lower MSE after 400 steps; the ideal posterior mean is ~45% lower
    # the condition is what helps: without it (zero condition) the chain cannot know the item
    with torch.no_grad():
        blind = denoiser.denoise(noisy[held_out].unsqueeze(1), torch.zeros_like(condition[held_out])).squeeze(1)
    assert after < (blind - clean[held_out]).square().mean()


# ----- router -------------------------------------------------------------------------------------

def test_router_weights_sum_to_one_skip_unavailable_experts_and_depend_on_the_behavior():
    torch.manual_seed(0)
    router = BehaviorConditionedRouter(dim=8, n_behaviors=4, n_experts=5)
    summary = torch.randn(6, 8)
    available = torch.ones(6, 5, dtype=torch.bool)
    available[:3, 1] = False
    weights = router(summary, torch.full((6,), 1), available)
    assert torch.allclose(weights.sum(dim=-1), torch.ones(6))
    assert (weights[:3, 1] == 0).all() and (weights[3:, 1] > 0).all()
    assert not torch.allclose(weights, router(summary, torch.full((6,), 3), available))
    with pytest.raises(ValueError, match="available"):
        router(summary, torch.full((6,), 1), torch.zeros(6, 5, dtype=torch.bool))


def test_model_router_depends_on_the_asked_behavior(tmp_path):
    config, train, _, test = build(rule_folder(tmp_path))
    model = get_model_class("M3BSR")(config, train).eval()
    batch = next(iter(SequenceLoader(config, test, 16, behavior_hint=1)))
    weights = {b: model.router_weights(_with_behavior(batch, b)) for b in (1, 2, 3)}
    for value in weights.values():
        assert torch.allclose(value.sum(dim=-1), torch.ones(16), atol=1e-6)
        assert value.shape == (16, 3 * 2 + 1)  # (3 behaviors x 2 streams) + 1 shared expert
    assert not torch.allclose(weights[1], weights[3])
    scores = {b: model.full_sort_predict(_with_behavior(batch, b)) for b in (1, 3)}
    assert not torch.allclose(scores[1], scores[3])
    assert torch.equal(scores[1], model.full_sort_predict(_with_behavior(batch, 1)))  # deterministic denoising
    assert (scores[1][:, 0] == scores[1][:, 0]).all() and torch.isfinite(scores[1]).all()
    with torch.no_grad():  # new weights: the cached evaluation table of denoised item features is rebuilt
        model.modal_encoders[0].weight.mul_(2.0)
    model.eval()
    assert not torch.allclose(scores[1], model.full_sort_predict(_with_behavior(batch, 1)))


def _with_behavior(batch, behavior):
    from recbole.data.interaction import Interaction

    fields = {key: batch[key] for key in batch.interaction}
    fields["behavior"] = torch.full_like(batch["item_length"], behavior)
    return Interaction(fields)


# ----- the model ----------------------------------------------------------------------------------

def test_config_switches_and_errors(tmp_path):
    folder = rule_folder(tmp_path)
    config, train, _, _ = build(folder, modality_denoising=False, behavior_denoising=False, contrastive=False)
    model = get_model_class("M3BSR")(config, train)
    assert not model.modality_denoisers and model.behavior_denoiser is None
    assert model.run_notes["modalities"] == ["content"] and not model.run_notes["id_only"]
    config, train, _, _ = build(folder, shallow_behaviors=["click"])
    with pytest.raises(ValueError, match="behavior_denoising=False"):
        get_model_class("M3BSR")(config, train)
    config, train, _, _ = build(folder, modal_features=["image"])
    with pytest.raises(ItemFeatureError, match="image"):
        get_model_class("M3BSR")(config, train)


@pytest.mark.parametrize("ablation, switch", [("M3BSR_woMD", "modality_denoising"),
                                              ("M3BSR_woBD", "behavior_denoising"), ("M3BSR_woCL", "contrastive")])
def test_each_ablation_switches_off_one_part(ablation, switch):
    settings = merge_layers(ablation, "synthetic")
    assert settings[switch] is False
    assert all(settings[other] is True for other in ("modality_denoising", "behavior_denoising", "contrastive")
               if other != switch)
    assert get_model_class(ablation) is get_model_class("M3BSR")


def test_small_m3bsr_overfits_a_tiny_dataset(tmp_path):
    """All parts on (content modality, behavior denoising, contrastive); the told behavior fixes the next item."""
    config, train, valid, test = build(rule_folder(tmp_path, n_users=40), learning_rate=0.01, epochs=12,
                                       stopping_step=12, hidden_size=32, inner_size=64, train_batch_size=128,
                                       diffusion_steps=2)
    model = get_model_class("M3BSR")(config, train)
    assert model.modality_denoising and model.behavior_denoising and model.contrastive
    trainer = Trainer(config, model, torch.device("cpu"))
    trainer.fit(train, valid, tmp_path / "m3bsr.pth")
    losses = [entry["loss"] for entry in trainer.history]
    assert losses[-1] < 0.3 * losses[0]
    result = Evaluator(config).evaluate(model, train, tasks=["behavior_specific"])["behavior_specific"]
    assert result.metrics["recall@5"] > 0.9 and result.metrics["recall@1"] > 0.5  # on its training examples


def test_id_only_run_says_so_in_its_record(tmp_path):
    record = tiny_run(tmp_path, model="M3BSR", modal_features=[], hidden_size=16, inner_size=32, epochs=1,
                      diffusion_steps=2)
    notes = record["model_notes"]
    assert notes["id_only"] and not notes["modality_denoising"] and notes["behavior_denoising"]
    assert "ID-only" in notes["modal_features"]
    for task in ("behavior_specific", "target_behavior", "next_item"):
        assert 0.0 <= record["results"][task]["metrics"]["ndcg@10"] <= 1.0
