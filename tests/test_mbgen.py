"""MBGen and its parts: item tokenizers, T5 blocks, position-routed experts, constrained beam search."""

import itertools
import math

import numpy as np
import pytest
import torch

from mbrec.training.scheduled_trainer import ScheduledTrainer, warmup_cosine_factor
from mbrec.data.dataset import MultiBehaviorSequentialDataset, SequenceLoader
from mbrec.data.item_tokenizers import (ChunkedIdTokenizer, SemanticIdTokenizer, TokenLayout, balanced_assignment,
                                        build_item_tokenizer)
from mbrec.evaluation import Evaluator
from mbrec.evaluation.evaluator import pessimistic_rank
from mbrec.layers.moe import PositionRoutedFFN
from mbrec.layers.seq2seq import FeedForward, relative_position_buckets
from mbrec.registry import get_model_class
from tests.conftest import make_config, write_inter
from tests.test_runner import behavior_rule_rows

TINY_MBGEN = dict(behaviors=["view", "cart", "buy"], d_model=32, d_ff=64, n_heads=2, d_head=16, n_encoder_layers=2,
                  n_decoder_layers=2, behavior_embedding_size=8, n_user_buckets=16, MAX_ITEM_LIST_LENGTH=6,
                  eval_tasks=["behavior_specific", "behavior_item"], topk=[1, 5, 10], train_batch_size=64,
                  eval_batch_size=64, warmup_steps=5)


# ----- item tokenizers ----------------------------------------------------------------------------

@pytest.mark.parametrize("n_items", [2, 9, 28, 1000, 1001])
def test_cid_is_a_bijection_with_the_smallest_base(n_items):
    tokenizer = ChunkedIdTokenizer(n_items, n_levels=3, seed=7)
    base = tokenizer.level_sizes[0]
    assert base ** 3 >= n_items - 1 and (base == 2 or (base - 1) ** 3 < n_items - 1)  # three digits suffice, no more
    items = torch.arange(1, n_items)
    codes = tokenizer.encode(items)  # [n, 3]
    assert len({tuple(code) for code in codes.tolist()}) == n_items - 1  # one unique code per item
    assert torch.equal(tokenizer.decode(codes), items)  # decode(encode(i)) = i
    assert (tokenizer.encode(torch.tensor([0])) == -1).all()  # padding has no code
    # balanced: every first digit holds at most base ** 2 items
    assert np.bincount(codes[:, 0].numpy()).max() <= base ** 2


def test_cid_depends_on_its_seed_only():
    assert torch.equal(ChunkedIdTokenizer(500, seed=1).codes, ChunkedIdTokenizer(500, seed=1).codes)
    assert not torch.equal(ChunkedIdTokenizer(500, seed=1).codes, ChunkedIdTokenizer(500, seed=2).codes)


def test_valid_next_digits_is_the_prefix_trie():
    tokenizer = ChunkedIdTokenizer(30, seed=3)  # base 4: 64 paths, 29 items
    paths = set(map(tuple, tokenizer.codes[1:].tolist()))
    sizes = tokenizer.level_sizes
    for level in range(3):
        table = tokenizer.valid_next_digits(level)
        for prefix in itertools.product(*(range(size) for size in sizes[:level])):
            index = 0
            for digit, size in zip(prefix, sizes):
                index = index * size + digit
            expected = [any(path[:level] == prefix and path[level] == digit for path in paths)
                        for digit in range(sizes[level])]
            assert table[index].tolist() == expected


def clustered_vectors(n_items=200, n_clusters=8, dim=16, seed=0):
    """``[n_items, dim]`` (row 0 padding): items around ``n_clusters`` centres, and each item's cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)) * 5
    cluster = rng.integers(n_clusters, size=n_items)
    vectors = centres[cluster] + rng.normal(size=(n_items, dim)) * 0.3
    return vectors.astype(np.float32), cluster


SMALL_SID = dict(hidden_sizes=[32], latent_size=8, epochs=20, seed=3)


def test_sid_is_a_balanced_bijection_that_groups_similar_items():
    vectors, cluster = clustered_vectors()
    tokenizer = SemanticIdTokenizer(vectors, codebook_size=8, **SMALL_SID)
    items = torch.arange(1, 200)
    codes = tokenizer.encode(items)
    assert len({tuple(code) for code in codes.tolist()}) == 199  # one unique code per item
    assert torch.equal(tokenizer.decode(codes), items)
    assert np.bincount(codes[:, 0].numpy()).max() <= math.ceil(199 / 8)  # balanced first digit
    assert tokenizer.level_sizes[:2] == (8, 8) and tokenizer.level_sizes[2] == codes[:, 2].max() + 1
    # items of one cluster share first digits far more often than chance (1/8)
    first, same_cluster = codes[:, 0].numpy(), cluster[1:, None] == cluster[None, 1:]
    same_code = first[:, None] == first[None, :]
    assert same_code[same_cluster].mean() > 0.5
    again = SemanticIdTokenizer(vectors, codebook_size=8, **SMALL_SID)
    assert torch.equal(again.codes, tokenizer.codes)  # deterministic with a seed


def test_balanced_assignment_respects_capacity():
    distances = torch.tensor([[0.0, 1.0], [0.1, 1.0], [0.2, 1.0]])  # everyone prefers centre 0
    assert balanced_assignment(distances, capacity=2).tolist() == [0, 0, 1]


def test_sid_is_read_from_a_vector_file_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MBREC_CACHE_DIR", str(tmp_path / "cache"))
    vectors, _ = clustered_vectors(n_items=60)
    np.save(tmp_path / "vectors.npy", vectors[::-1].copy())  # rows in another order than the dataset's ids
    (tmp_path / "ids.txt").write_text("\n".join(f"i{row}" for row in reversed(range(60))))
    config = {"item_tokenizer": "sid", "item_vectors_file": str(tmp_path / "vectors.npy"),
              "item_vectors_ids": str(tmp_path / "ids.txt"), "sid_codebook_size": 4, "sid_hidden_sizes": [16],
              "sid_latent_size": 4, "sid_epochs": 5, "sid_learning_rate": 1e-3, "tokenizer_seed": 1}
    tokens = ["[PAD]", *(f"i{row}" for row in range(1, 60))]
    first = build_item_tokenizer(config, tokens)
    assert len(list((tmp_path / "cache" / "item_tokens").glob("sid-*.npy"))) == 1
    cached = build_item_tokenizer(config, tokens)
    assert torch.equal(cached.codes, first.codes) and cached.level_sizes == first.level_sizes
    with pytest.raises(ValueError, match="have no vector"):
        build_item_tokenizer(config, [*tokens, "unknown"])


def test_token_ranges_do_not_overlap_and_cover_the_vocabulary():
    layout = TokenLayout(n_behaviors=4, level_sizes=(5, 5, 6), n_user_buckets=7)
    ranges = layout.ranges()
    tokens = [token for values in ranges.values() for token in values]
    assert len(tokens) == len(set(tokens)) == layout.vocab_size
    assert sorted(tokens) == list(range(layout.vocab_size))
    behaviors = layout.behavior_tokens(torch.tensor([0, 1, 4]))
    assert behaviors[0] == 0 and set(behaviors[1:].tolist()) <= set(ranges["behavior"])
    digits = layout.digit_tokens(torch.tensor([[0, 4, 5], [-1, -1, -1]]))
    assert [digits[0, level].item() in ranges[f"digit{level}"] for level in range(3)] == [True] * 3
    assert (digits[1] == 0).all()


# ----- building blocks ----------------------------------------------------------------------------

def test_relative_buckets_depend_only_on_the_distance():
    buckets = relative_position_buckets(12, 12, n_buckets=8, max_distance=16, bidirectional=True)
    for shift in range(1, 6):
        assert torch.equal(buckets[shift:, shift:], buckets[:-shift, :-shift])
    assert buckets.max() < 8 and buckets[0, 1] != buckets[1, 0]  # before and after differ
    causal = relative_position_buckets(6, 6, n_buckets=8, max_distance=16, bidirectional=False)
    assert (causal.triu(1) == 0).all() and causal[5, 0] > causal[5, 4]


def test_position_routed_ffn_sends_each_token_to_its_expert():
    torch.manual_seed(0)
    moe = PositionRoutedFFN([FeedForward(4, 8, 4, 0.0) for _ in range(3)])
    x = torch.randn(2, 3, 4)
    output = moe(x, routes=torch.arange(3))
    for slot in range(3):
        assert torch.allclose(output[:, slot], moe.experts[slot](x[:, slot]))


def test_position_routed_ffn_under_bf16_autocast_returns_the_experts_dtype():
    """fp32 input (e.g. an RMSNorm output), bf16 expert outputs (autocast's linear layers): no dtype mix."""
    torch.manual_seed(0)
    moe = PositionRoutedFFN([FeedForward(4, 8, 4, 0.0) for _ in range(3)])
    x = torch.randn(2, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = moe(x, routes=torch.arange(3))
        expected = [moe.experts[slot](x[:, slot]) for slot in range(3)]
    assert output.dtype == torch.bfloat16
    for slot in range(3):
        assert torch.equal(output[:, slot], expected[slot])


# ----- the model ----------------------------------------------------------------------------------

@pytest.fixture
def rule_data(tmp_path):
    """Behavior-rule data (tests/test_runner.py): the next item is fixed by the last item and the next behavior."""
    def build(n_users=60, **overrides):
        config = make_config("MBGen", write_inter(tmp_path, "rule", behavior_rule_rows(n_users=n_users, length=8)),
                             **{**TINY_MBGEN, **overrides})
        from recbole.utils import init_seed

        init_seed(2024, True)
        dataset = MultiBehaviorSequentialDataset(config)
        train, valid, test = dataset.build()
        model = get_model_class("MBGen")(config, train)
        return config, model, train, valid, test
    return build


def eval_batch(config, split, behavior_hint="true", size=8):
    return next(iter(SequenceLoader(config, split, size, behavior_hint=behavior_hint)))


def test_decoder_slots_reach_only_their_expert(rule_data):
    config, model, _, valid, _ = rule_data()
    model.eval()
    seen = {}
    last_layer = model.decoder_layers[-1].ffn
    assert isinstance(last_layer, PositionRoutedFFN) and len(last_layer.experts) == 4
    for slot, expert in enumerate(last_layer.experts):
        expert.register_forward_hook(lambda module, inputs, output, slot=slot: seen.setdefault(slot, []).append(
            inputs[0].shape[0]))
    batch = eval_batch(config, valid)
    memory, padding = model.encode(batch)
    items, behaviors = torch.from_numpy(valid.target_items(valid.target_rows[:8])), batch["behavior"]
    with torch.no_grad():
        _, logits = model.teacher_forced_logits(memory, padding, items, behaviors)
        assert seen == {slot: [8] for slot in range(4)}  # each expert sees exactly one token per example
        # changing expert 2 of the last layer changes the logits of slot 2 only
        torch.nn.init.normal_(last_layer.experts[2].net[0].weight)
        _, changed = model.teacher_forced_logits(memory, padding, items, behaviors)
    differs = (changed - logits).abs().amax(dim=(0, 2)) > 1e-6  # [slots]
    assert differs.tolist() == [False, False, True, False]


def test_ablations_remove_routing_and_injection(rule_data):
    _, model, _, _, _ = rule_data(position_routing=False, behavior_injection=False)
    assert all(isinstance(layer.ffn, FeedForward) for layer in model.decoder_layers)
    assert all(layer.ffn.net[0].in_features == 32 for layer in [*model.encoder_layers, *model.decoder_layers])
    _, injected, _, _, _ = rule_data(behavior_injection_layers=1)
    widths = [layer.ffn.net[0].in_features for layer in injected.encoder_layers]
    assert widths == [32 + 8, 32]  # behavior injection in the first behavior_injection_layers only


def test_history_behaviors_reach_the_encoder_only_through_tokens_and_injection(rule_data):
    config, model, _, valid, _ = rule_data()
    model.eval()
    batch = eval_batch(config, valid)
    tokens, token_behaviors = model.encoder_inputs(batch)
    length = batch["item_length"]
    assert tokens.shape == (8, 1 + 4 * 6)
    for row in range(8):
        end = 4 * length[row].item()
        assert tokens[row, end] >= model.layout.user_offset  # the user token follows the latest interaction
        assert (tokens[row, end + 1:] == 0).all() and (tokens[row, :end] > 0).all()
        assert (tokens[row, :end] < model.layout.user_offset).all()
        assert torch.equal(token_behaviors[row, :end:4], batch["behavior_list"][row, :length[row]])
        assert token_behaviors[row, end] == 0


def exhaustive_log_probs(model, memory, padding, behavior):
    """``[B, n_items]`` log p(c1 c2 c3 | history, behavior) of every item, teacher-forced."""
    batch_size, n_items = memory.size(0), model.n_items
    items = torch.arange(1, n_items).repeat(batch_size)
    behaviors = torch.full_like(items, behavior)
    log_probs = model.sequence_log_probs(memory.repeat_interleave(n_items - 1, 0),
                                         padding.repeat_interleave(n_items - 1, 0), items, behaviors)
    return log_probs.view(batch_size, n_items - 1, -1)


def test_full_width_beam_equals_exhaustive_scoring(rule_data):
    config, model, _, valid, _ = rule_data()
    model.eval()
    batch = eval_batch(config, valid, size=4)
    with torch.no_grad():
        memory, padding = model.encode(batch)
        behaviors = batch["behavior"]
        n_real = model.n_items - 1
        _, items, scores = model.beam_search(memory, padding, n_real, behaviors)  # told the behavior
        for row in range(4):
            exhaustive = exhaustive_log_probs(model, memory[row:row + 1], padding[row:row + 1],
                                              behaviors[row].item())[0, :, 1:].sum(-1)  # digits only
            assert sorted(items[row].tolist()) == list(range(1, model.n_items))  # every item, each once
            assert torch.allclose(scores[row], exhaustive[items[row] - 1], atol=1e-4)
            assert (scores[row][:-1] >= scores[row][1:]).all()  # best first
        # told nothing: the beam covers every (behavior, item) pair with the joint probability
        n_pairs = 3 * n_real
        beam_behaviors, items, scores = model.beam_search(memory, padding, n_pairs)
        for row in range(4):
            pairs = set(zip(beam_behaviors[row].tolist(), items[row].tolist()))
            assert len(pairs) == n_pairs and all(item > 0 for _, item in pairs)
            for behavior in (1, 2, 3):
                exhaustive = exhaustive_log_probs(model, memory[row:row + 1], padding[row:row + 1], behavior)[0].sum(-1)
                chosen = beam_behaviors[row] == behavior
                assert torch.allclose(scores[row][chosen], exhaustive[items[row][chosen] - 1], atol=1e-4)


def test_narrow_beam_returns_valid_distinct_items(rule_data):
    config, model, _, valid, _ = rule_data(tokenizer_seed=5)
    model.eval()
    batch = eval_batch(config, valid)
    with torch.no_grad():
        memory, padding = model.encode(batch)
        _, items, scores = model.beam_search(memory, padding, 3, batch["behavior"])
    assert items.shape == (8, 3) and torch.isfinite(scores).all()
    assert ((items > 0) & (items < model.n_items)).all()
    assert all(len(set(row)) == 3 for row in items.tolist())


def test_beam_items_rank_above_all_others_and_ties_count_against_the_target(rule_data):
    _, model, _, _, _ = rule_data()
    items = torch.tensor([[3, 5, 0]])  # the third beam is empty (fewer valid paths than beams)
    scores = torch.tensor([[-0.5, -2.0, -torch.inf]])
    table = model._scores_from_beam(torch.ones_like(items), items, scores, 1)[:, 0]  # [1, n_items]
    assert table[0, 3] == -0.5 and table[0, 5] == -2.0
    outside = [item for item in range(1, model.n_items) if item not in (3, 5)]
    assert (table[0, outside] < -2.0).all() and torch.isfinite(table).all()
    table[:, 0] = -torch.inf  # as the evaluator does
    ranks = pessimistic_rank(table, torch.tensor([outside[0]]))
    assert ranks.item() == model.n_items - 2  # the bottom of the tied block of non-beam items


def test_behavior_aware_allocation_shares_the_beam_by_behavior_probability(rule_data):
    from mbrec.models.mbgen import largest_remainder_allocation

    shares = largest_remainder_allocation(torch.tensor([[0.3, 0.42, 0.18, 0.1]]), 10)
    assert shares.tolist() == [[3, 4, 2, 1]]  # the paper's example (Section 4.4.2)
    config, model, _, valid, _ = rule_data(behavior_aware_allocation=True, beam_size=4)
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict_behavior_item(eval_batch(config, valid, behavior_hint=None))
    floor = scores[:, 1:].amin(dim=(1, 2), keepdim=True)
    assert ((scores[:, 1:] > floor).flatten(1).sum(1) == 4).all()  # exactly beam_size pairs above the floor


def test_warmup_then_cosine():
    factors = [warmup_cosine_factor(step, 4, 20, 0.1) for step in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(1.0) and factors[20] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))


def test_small_mbgen_overfits_a_tiny_dataset(rule_data, tmp_path):
    """Trained on 30 users, MBGen must reproduce its training targets, told and not told the behavior.

    Chance level: recall@1 = 1/12 told the behavior, recall@5 = 5/36 for (behavior, item) pairs.
    """
    config, model, train, valid, _ = rule_data(n_users=30, epochs=40, eval_step=40, learning_rate=0.01,
                                               train_batch_size=32, n_encoder_layers=1, n_decoder_layers=1,
                                               behavior_injection_layers=1)
    evaluator = Evaluator(config)
    before = evaluator.evaluate(model, train, tasks=["behavior_specific", "behavior_item"])
    ScheduledTrainer(config, model, torch.device("cpu")).fit(train, valid, tmp_path / "mbgen.pth")
    after = evaluator.evaluate(model, train, tasks=["behavior_specific", "behavior_item"])
    assert before["behavior_specific"].metrics["recall@1"] < 0.3
    assert after["behavior_specific"].metrics["recall@1"] > 0.6
    assert after["behavior_specific"].metrics["recall@5"] > 0.9
    assert after["behavior_item"].metrics["recall@5"] > 0.8


def test_mbgen_trains_in_bf16(rule_data, tmp_path):
    """``precision: bf16`` (the trainer's autocast) trains MBGen; the weights stay fp32."""
    config, model, train, valid, _ = rule_data(n_users=30, epochs=1, precision="bf16")
    trainer = ScheduledTrainer(config, model, torch.device("cpu"))
    trainer.fit(train, valid, tmp_path / "mbgen.pth")
    assert len(trainer.history) == 1 and math.isfinite(trainer.history[0]["loss"])
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())


def test_untold_beam_is_shared_between_next_item_and_behavior_item_until_the_weights_change(rule_data):
    config, model, _, valid, _ = rule_data(beam_size=4)
    model.eval()
    batch = eval_batch(config, valid, behavior_hint=None)
    calls = []
    search = model.beam_search
    model.beam_search = lambda *args, **kwargs: calls.append(1) or search(*args, **kwargs)
    with torch.no_grad():
        item_scores = model.full_sort_predict(batch)
        pair_scores = model.full_sort_predict_behavior_item(batch)
        assert len(calls) == 1  # the second task reused the first's beam
        model.beam_search = search
        fresh = get_model_class("MBGen")(config, valid)
        fresh.load_state_dict(model.state_dict())
        fresh.eval()
        assert torch.equal(fresh.full_sort_predict_behavior_item(batch), pair_scores)  # same as computed afresh
        assert torch.equal(fresh.full_sort_predict(batch), item_scores)
        model.full_sort_predict(batch)  # memoised again
        model.token_embedding.weight.add_(0.5)  # new weights: the memo must not be used
        model.beam_search = lambda *args, **kwargs: calls.append(1) or search(*args, **kwargs)
        changed = model.full_sort_predict_behavior_item(batch)
    assert len(calls) == 2 and not torch.equal(changed, pair_scores)
    with torch.no_grad():
        model.beam_size = 6  # a new width (benchmarks/mbgen_speed.py --beams): the width-4 memo must not be used
        wider = model.full_sort_predict_behavior_item(batch)
    assert len(calls) == 3
    assert ((wider[:, 1:] > wider[:, 1:].amin(dim=(1, 2), keepdim=True)).flatten(1).sum(1) == 6).all()
    other = eval_batch(config, valid, behavior_hint=None, size=5)  # another batch is not served from the memo
    with torch.no_grad():
        assert model.full_sort_predict_behavior_item(other).shape[0] == 5


@pytest.mark.parametrize("placement", ["append", "prepend", "none"])
def test_user_token_placement(rule_data, placement):
    """``user_token``: after the latest interaction (ours), first (the paper), or absent; only then do scores
    not depend on who the user is."""
    config, model, _, valid, _ = rule_data(user_token=placement)
    model.eval()
    batch = eval_batch(config, valid)
    tokens, token_behaviors = model.encoder_inputs(batch)
    length = batch["item_length"]
    is_user = tokens >= model.layout.user_offset
    assert tokens.shape == (8, 1 + 4 * 6)
    if placement == "none":
        assert not is_user.any()
    else:
        assert is_user.sum(dim=1).tolist() == [1] * 8
        where = is_user.int().argmax(dim=1)
        assert where.tolist() == ([0] * 8 if placement == "prepend" else (4 * length).tolist())
        start = 1 if placement == "prepend" else 0
        for row in range(8):  # the history keeps its behaviors beside its tokens
            behaviors = token_behaviors[row, start:start + 4 * length[row]:4]
            assert torch.equal(behaviors, batch["behavior_list"][row, :length[row]])
    other_users = batch["user_id"] + 1
    with torch.no_grad():
        memory, _ = model.encode(batch)
        original_users = batch["user_id"].clone()
        batch["user_id"] = other_users
        moved, _ = model.encode(batch)
        batch["user_id"] = original_users
    assert torch.allclose(memory, moved) == (placement == "none")


@pytest.mark.parametrize("buckets", [1, 3, 16])
def test_n_user_buckets_sets_how_many_users_share_a_token(rule_data, buckets):
    """``n_user_buckets``: the user token is one of that many; the hash is a bijection on consecutive ids modulo
    the buckets, so 60 users fill min(60, buckets) of them, and with one bucket the user is invisible."""
    config, model, _, valid, _ = rule_data(n_user_buckets=buckets)
    model.eval()
    assert model.layout.vocab_size - model.layout.user_offset == buckets
    tokens = model.user_tokens(torch.arange(1, 61))
    assert tokens.min() >= model.layout.user_offset and tokens.max() < model.layout.vocab_size
    assert len(tokens.unique()) == min(60, buckets)
    batch = eval_batch(config, valid)
    with torch.no_grad():
        memory, _ = model.encode(batch)
        original_users = batch["user_id"].clone()
        batch["user_id"] = original_users + 1
        moved, _ = model.encode(batch)
        batch["user_id"] = original_users
    assert torch.allclose(memory, moved) == (buckets == 1)


def test_user_token_rejects_unknown_placement(rule_data):
    with pytest.raises(ValueError, match="user_token must be one of"):
        rule_data(user_token="middle")
