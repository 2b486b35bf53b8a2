"""Multi-behavior baselines: BERT4Rec_MB, BERT4Rec_B, MB-STR, PBAT and their building blocks."""

import copy

import pytest
import torch
from recbole.utils import init_seed

from mbrec.data.dataset import MultiBehaviorSequentialDataset, SequenceLoader
from mbrec.layers.behavior_attention import (BehaviorPairRelativeBias, BehaviorSpecificEncoderLayer,
                                             BehaviorSpecificLinear, BehaviorSpecificSelfAttention)
from mbrec.layers.cloze import cloze_mask, padding_after, with_slot
from mbrec.layers.wasserstein import squared_wasserstein
from mbrec.registry import get_model_class
from tests.conftest import make_config, write_inter

HIDDEN, HEADS, LENGTH, BEHAVIORS = 16, 2, 8, 4  # BEHAVIORS includes id 0 (padding / unknown)
CLOZE_MODELS = ["BERT4Rec_MB", "BERT4Rec_B", "MBSTR"]
MODELS = [*CLOZE_MODELS, "PBAT"]
TINY = dict(behaviors=["view", "cart", "buy"], hidden_size=16, inner_size=32, n_layers=1, hidden_dropout_prob=0.0,
            attn_dropout_prob=0.0, MAX_ITEM_LIST_LENGTH=16, train_batch_size=64, eval_batch_size=64,
            eval_tasks=["behavior_specific"], topk=[1, 5, 10],
            train_unit="prefix")  # the tests here feed prefix batches (sequence mode: tests/test_cloze_sequence.py)


def cycle_rows(n_users=40, n_items=8):
    """Every next item is the last one plus 1 (mod ``n_items``); users have 5..12 interactions.

    Lengths vary so that the positions of valid/test queries also occur as training queries
    (with one length for all users, absolute position embeddings at the test position would never be trained).
    """
    behaviors = ["view", "cart", "buy"]
    return [(f"u{user}", f"i{(user + step) % n_items}", behaviors[(user + step) % 3], step)
            for user in range(n_users) for step in range(5 + user % 8)]


@pytest.fixture
def built(tmp_path):
    def build(model, **overrides):
        config = make_config(model, write_inter(tmp_path, "cycle", cycle_rows()), **{**TINY, **overrides})
        init_seed(2024, True)
        train, valid, test = MultiBehaviorSequentialDataset(config).build()
        return config, get_model_class(model)(config, train), train, test
    return build


def first_batch(config, split, training=True, hint="true", size=16):
    return next(iter(SequenceLoader(config, split, size, training=training, behavior_hint=None if training else hint)))


# ----- behavior-specific attention (MB-STR's MBST and MBSPG) ---------------------------------------

def attention_layer(seed=0):
    torch.manual_seed(seed)
    layer = BehaviorSpecificSelfAttention(HIDDEN, HEADS, BEHAVIORS, attn_dropout_prob=0.0, max_distance=3).eval()
    with torch.no_grad():
        layer.relative_bias.table.normal_()  # zero at init: make the bias matter
    return layer


def test_behavior_specific_linear_uses_the_tokens_own_parameter_set():
    torch.manual_seed(0)
    linear = BehaviorSpecificLinear(BEHAVIORS, 5, 3)
    x, behaviors = torch.randn(2, 6, 5), torch.randint(0, BEHAVIORS, (2, 6))
    expected = torch.stack([torch.stack([x[i, j] @ linear.weight[b] + linear.bias[b]
                                         for j, b in enumerate(row.tolist())]) for i, row in enumerate(behaviors)])
    assert torch.allclose(linear(x, behaviors), expected, atol=1e-6)


def test_swapping_one_positions_behavior_changes_its_attention_output():
    layer = attention_layer()
    hidden = torch.randn(1, LENGTH, HIDDEN)
    behaviors = torch.tensor([[1, 2, 3, 1, 2, 3, 1, 2]])
    padding = torch.zeros(1, LENGTH, dtype=torch.bool)
    swapped = behaviors.clone()
    swapped[0, 4] = 1  # position 4: cart -> view
    base, changed = layer(hidden, behaviors, padding), layer(hidden, swapped, padding)
    assert not torch.allclose(base[0, 4], changed[0, 4], atol=1e-4)


def swap_parameter_sets(module, first, second):
    """Exchange the parameters of behaviors ``first`` and ``second`` everywhere in ``module``."""
    order = list(range(BEHAVIORS))
    order[first], order[second] = second, first
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, BehaviorSpecificLinear):
                sub.weight.copy_(sub.weight[order])
                sub.bias.copy_(sub.bias[order])
            elif isinstance(sub, BehaviorPairRelativeBias):
                sub.table.copy_(sub.table[:, order][:, :, order])


@pytest.mark.parametrize("first, second", [(1, 2), (0, 3)])
def test_swapping_two_behaviors_parameters_and_labels_leaves_the_output_unchanged(first, second):
    torch.manual_seed(1)
    layer = BehaviorSpecificEncoderLayer(HIDDEN, HEADS, 2 * HIDDEN, BEHAVIORS, 0.0, 0.0, max_distance=3).eval()
    with torch.no_grad():
        for sub in layer.modules():
            if isinstance(sub, BehaviorPairRelativeBias):
                sub.table.normal_()
    hidden = torch.randn(2, LENGTH, HIDDEN)
    behaviors = torch.randint(0, BEHAVIORS, (2, LENGTH))
    behaviors[0, :4] = torch.tensor([first, second, first, second])  # both behaviors occur
    padding = torch.zeros(2, LENGTH, dtype=torch.bool)
    padding[1, -2:] = True
    relabelled = behaviors.clone()
    relabelled[behaviors == first], relabelled[behaviors == second] = second, first
    base = layer(hidden, behaviors, padding)
    swapped_layer = copy.deepcopy(layer)
    swap_parameter_sets(swapped_layer, first, second)
    assert torch.allclose(swapped_layer(hidden, relabelled, padding), base, atol=1e-5)
    assert not torch.allclose(layer(hidden, relabelled, padding), base, atol=1e-3)  # the labels do matter


def test_relative_bias_depends_on_behavior_pair_and_clipped_distance():
    bias = BehaviorPairRelativeBias(n_heads=1, n_behaviors=BEHAVIORS, max_distance=2)
    with torch.no_grad():
        bias.table.copy_(torch.arange(bias.table.numel(), dtype=torch.float).view_as(bias.table))
    behaviors = torch.tensor([[1, 2, 2, 3, 1, 1]])
    out = bias(behaviors)[0, 0]  # [L, L]
    for i in range(6):
        for j in range(6):
            expected = bias.table[0, behaviors[0, i], behaviors[0, j], max(-2, min(2, j - i)) + 2]
            assert out[i, j] == expected


# ----- Cloze inputs --------------------------------------------------------------------------------

def test_cloze_mask_always_masks_the_slot_and_never_padding():
    items = torch.tensor([[5, 6, 7, 0, 0], [5, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
    lengths = torch.tensor([3, 1, 5])
    extended = with_slot(items, lengths, 9)  # [B, L+1]
    assert extended.tolist() == [[5, 6, 7, 9, 0, 0], [5, 9, 0, 0, 0, 0], [1, 2, 3, 4, 5, 9]]
    padding = padding_after(lengths, extended.size(1))
    assert torch.equal(padding, extended == 0)
    torch.manual_seed(0)
    for _ in range(20):
        masked = cloze_mask(padding, lengths, mask_prob=0.9)
        assert masked[torch.arange(3), lengths].all() and not masked[padding].any()
    assert cloze_mask(padding, lengths, 0.0).sum() == 3  # the slots only


# ----- the models ----------------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_padding_never_changes_the_scores(built, model):
    config, network, train, test = built(model)
    network.eval()
    batch = first_batch(config, test, training=False)
    lengths = batch["item_length"]
    assert (lengths < config["MAX_ITEM_LIST_LENGTH"]).any()
    noisy = copy.deepcopy(batch)
    pad = noisy["item_id_list"] == 0
    noisy["item_id_list"][pad] = torch.randint(1, network.n_items, (int(pad.sum()),))
    noisy["behavior_list"][pad] = torch.randint(1, 4, (int(pad.sum()),))
    # padding positions are those after each length; the model must read them as padding
    assert torch.allclose(network.full_sort_predict(batch), network.full_sort_predict(noisy), atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_scores_for_the_asked_behavior_and_when_told_nothing(built, model):
    config, network, train, test = built(model)
    network.eval()
    batch = first_batch(config, test, training=False)
    told = network.full_sort_predict(batch)
    assert told.shape == (len(batch), network.n_items) and torch.isfinite(told[:, 1:]).all()
    other = copy.deepcopy(batch)
    other["behavior"] = other["behavior"] % 3 + 1  # another behavior for every row
    assert not torch.allclose(network.full_sort_predict(other), told, atol=1e-6)
    blind = copy.deepcopy(batch)
    del blind.interaction["behavior"]
    nothing = network.full_sort_predict(blind)
    assert nothing.shape == told.shape and torch.isfinite(nothing[:, 1:]).all()
    items = torch.randint(1, network.n_items, (len(batch),))
    batch.update(type(batch)({"item_id": items}))
    assert torch.allclose(network.predict(batch), told.gather(1, items.unsqueeze(1)).squeeze(1))


def test_bert4rec_b_scores_are_its_pair_logits(built):
    config, network, train, test = built("BERT4Rec_B")
    network.eval()
    batch = first_batch(config, test, training=False)
    pairs = network.full_sort_predict_behavior_item(batch)  # [B, n_behaviors, n_items]
    assert pairs.shape == (len(batch), 4, network.n_items)
    assert torch.isinf(pairs[:, 0]).all() and torch.isinf(pairs[:, :, 0]).all()
    logits = network.pair_logits(batch)
    item, behavior = 3, 2
    assert torch.allclose(pairs[:, behavior, item], logits[:, network.pair_ids(torch.tensor(item),
                                                                                torch.tensor(behavior))])
    asked = batch["behavior"]
    assert torch.allclose(network.full_sort_predict(batch), pairs[torch.arange(len(batch)), asked])


@pytest.mark.parametrize("model", MODELS)
def test_training_predicts_the_target_at_the_slot(built, model):
    """The loss reads the example's target: changing only the target item changes the loss."""
    config, network, train, _ = built(model, mask_ratio=0.0)  # only the slot is predicted
    network.eval()  # no dropout; masking is deterministic with mask_ratio 0
    batch = first_batch(config, train)
    other = copy.deepcopy(batch)
    other["item_id"] = other["item_id"] % (network.n_items - 1) + 1
    assert network.calculate_loss(batch).item() != pytest.approx(network.calculate_loss(other).item())


def test_mbstr_swapping_behaviors_everywhere_leaves_scores_unchanged(built):
    """Model level: behavior embeddings, MBST, MBSPG and the CGC head's private experts all swapped."""
    config, network, train, test = built("MBSTR")
    network.eval()
    with torch.no_grad():
        for sub in network.modules():
            if isinstance(sub, BehaviorPairRelativeBias):
                sub.table.normal_()
    batch = first_batch(config, test, training=False)
    first, second = 1, 3
    swapped = copy.deepcopy(network)
    swap_parameter_sets(swapped, first, second)
    with torch.no_grad():
        swapped.behavior_embedding.weight[[first, second]] = network.behavior_embedding.weight[[second, first]]
        for experts in (swapped.head.private_experts, swapped.head.task_gates):
            experts[first - 1], experts[second - 1] = experts[second - 1], experts[first - 1]
    relabelled = copy.deepcopy(batch)
    for field in ("behavior", "behavior_list"):
        values = batch[field]
        relabelled[field] = torch.where(values == first, second, torch.where(values == second, first, values))
    base = network.full_sort_predict(batch)
    assert torch.allclose(swapped.full_sort_predict(relabelled), base, atol=1e-4)
    assert not torch.allclose(network.full_sort_predict(relabelled), base, atol=1e-4)


@pytest.mark.parametrize("overrides, message", [(dict(loss_type="BPR"), "CE only"),
                                                (dict(transform="mask_itemseq"), "transform"),
                                                (dict(mask_ratio=1.0), "mask_ratio")])
@pytest.mark.parametrize("model", CLOZE_MODELS)
def test_bad_config_is_refused(built, model, overrides, message):
    with pytest.raises(ValueError, match=message):
        built(model, **overrides)


@pytest.mark.parametrize("model, overrides", [*((model, {}) for model in MODELS), ("PBAT", dict(training="cloze"))])
def test_each_baseline_overfits_a_tiny_dataset(built, model, overrides):
    """40 Adam steps on all training examples at once; then the slot query recovers every training target."""
    config, network, train, _ = built(model, hidden_size=32, inner_size=64, mask_ratio=0.3, **overrides)
    n_examples = len(train.target_rows)
    batch = first_batch(config, train, size=n_examples)
    queries = first_batch(config, train, training=False, size=n_examples)  # the targets' behaviors, no targets
    targets = torch.as_tensor(train.target_items(train.target_rows))
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    network.train()
    for _ in range(40):
        optimizer.zero_grad()
        network.calculate_loss(batch).backward()
        optimizer.step()
    network.eval()
    with torch.no_grad():
        predicted = network.full_sort_predict(queries).argmax(dim=1)
    assert (predicted == targets).float().mean() > 0.95


@pytest.mark.parametrize("model", MODELS)
def test_runs_through_the_runner(tmp_path, model):
    from tests.test_runner import tiny_run

    record = tiny_run(tmp_path, model=model, hidden_size=16, inner_size=32, n_layers=1, epochs=1)
    for task in ("behavior_specific", "target_behavior", "next_item"):
        assert 0.0 <= record["results"][task]["metrics"]["ndcg@10"] <= 1.0
    assert (record["results"]["behavior_item"] is None) == (model != "BERT4Rec_B")  # only pair tokens rank pairs


# ----- PBAT: Gaussian tokens, Wasserstein attention, personalized behaviors ------------------------

def test_squared_wasserstein_of_diagonal_gaussians():
    torch.manual_seed(0)
    mean_a, std_a, mean_b, std_b = torch.randn(3, 4), torch.rand(3, 4), torch.randn(5, 4), torch.rand(5, 4)
    expected = ((mean_a[:, None] - mean_b[None]).square().sum(-1) + (std_a[:, None] - std_b[None]).square().sum(-1))
    assert torch.allclose(squared_wasserstein(mean_a, std_a, mean_b, std_b), expected, atol=1e-5)
    assert torch.allclose(squared_wasserstein(mean_a, std_a, mean_a, std_a).diagonal(), torch.zeros(3), atol=1e-5)


def test_pbat_is_causal_and_personalized(built):
    config, network, train, test = built("PBAT")
    network.eval()
    batch = first_batch(config, test, training=False)
    mean, std = network.forward(batch)
    shorter = copy.deepcopy(batch)
    shorter["item_length"] = batch["item_length"] - 1  # the same history, one interaction less
    future = copy.deepcopy(shorter)
    rows = torch.arange(len(batch))
    future["item_id_list"][rows, shorter["item_length"]] = 1  # a different item at the dropped position
    short_mean, _ = network.forward(shorter)
    assert torch.allclose(network.forward(future)[0], short_mean, atol=1e-5)  # never looks ahead
    assert not torch.allclose(short_mean, mean, atol=1e-4)
    other_user = copy.deepcopy(batch)
    other_user["user_id"] = batch["user_id"].roll(1)
    with torch.no_grad():
        network.pattern_mean.weight.normal_()  # the user shift is small at init: make it matter
    assert not torch.allclose(network.full_sort_predict(other_user), network.full_sort_predict(batch), atol=1e-4)


def test_pbat_cloze_training_is_bidirectional_and_predicts_masked_history(built):
    """``training: cloze`` (the authors' code): every masked position is a prediction and attention looks
    both ways; ``causal`` (prefix unit) predicts the last position's next item only."""
    scored = {}
    for training in ("causal", "cloze"):
        config, network, train, test = built("PBAT", training=training, mask_ratio=0.5, train_unit="prefix")
        original_score = network.score
        network.score = lambda mean, std, users, asked, _f=original_score: (
            scored.__setitem__(training, len(users)) or _f(mean, std, users, asked))
        batch = first_batch(config, train)
        network.train()
        network.calculate_loss(batch)
        if training == "cloze":
            assert network.item_mean.num_embeddings == network.n_items + 1  # + [mask]
            network.eval()
            lengths = batch["item_length"]
            items = with_slot(batch["item_id_list"], lengths, network.mask_token)
            behaviors = with_slot(batch["behavior_list"], lengths, 1)
            padding = padding_after(lengths, items.size(1))
            mean, _ = network.bidirectional_states(items, behaviors, batch["user_id"], padding)
            later = items.clone()
            rows = torch.arange(len(lengths))
            later[rows, lengths - 1] = 1 + items[rows, lengths - 1] % (network.n_items - 1)  # another latest item
            moved, _ = network.bidirectional_states(later, behaviors, batch["user_id"], padding)
            assert not torch.allclose(mean[:, 0], moved[:, 0], atol=1e-5)  # the first position sees the latest
    assert scored["causal"] == 16  # one prediction per example
    assert scored["cloze"] > 16  # the slot of each example plus masked history positions


def test_pbat_refuses_unknown_training(built):
    with pytest.raises(ValueError, match="training must be one of"):
        built("PBAT", training="bert")


@pytest.mark.parametrize("unit", ["prefix", "sequence"])
def test_pbat_cloze_runs_through_the_runner_in_both_training_units(tmp_path, unit):
    from tests.test_runner import tiny_run

    record = tiny_run(tmp_path, model="PBAT", hidden_size=16, inner_size=32, n_layers=1, epochs=1,
                      training="cloze", train_unit=unit)
    assert 0.0 <= record["results"]["behavior_specific"]["metrics"]["ndcg@10"] <= 1.0
