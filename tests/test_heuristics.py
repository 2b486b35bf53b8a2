"""Pop and Recent against values computed by hand under the pessimistic tie rule."""

import math

import pytest

from mbrec import registry
from mbrec.data.dataset import MultiBehaviorSequentialDataset
from mbrec.evaluation import Evaluator
from tests.conftest import make_config, write_inter

ROWS = [
    # user a: valid target i3 (t4), test target i1 bought (t5)
    ("a", "i1", "view", 1), ("a", "i2", "view", 2), ("a", "i1", "cart", 3), ("a", "i3", "view", 4),
    ("a", "i1", "buy", 5),
    # user b: valid target i4, test target i2 bought
    ("b", "i2", "view", 1), ("b", "i2", "cart", 2), ("b", "i4", "view", 3), ("b", "i2", "buy", 4),
    # user c: valid target i5, test target i6 viewed (a new item)
    ("c", "i3", "view", 1), ("c", "i4", "view", 2), ("c", "i5", "view", 3), ("c", "i6", "view", 4),
]
# Training part (before each valid target): i1 x2, i2 x3, i3 x1, i4 x1, i5 x0, i6 x0.
EXPECTED_TEST_RANKS = {
    # Pop: a's i1 (2) is below i2 (3); b's i2 is top; c's i6 (0) is below i1..i4 and ties with i5.
    "Pop": {"a": 1, "b": 0, "c": 5},
    # Recent: a's window latest-first is i3, i1, i2; b's is i4, i2; c's is i5, i4, i3, then i2, i1 by Pop.
    "Recent": {"a": 1, "b": 1, "c": 5},
}


@pytest.mark.parametrize("model_name", ["Pop", "Recent"])
def test_heuristic_ranks_and_metrics_match_hand_computation(tmp_path, model_name):
    config = make_config(model_name, write_inter(tmp_path, "hand", ROWS), behaviors=["view", "cart", "buy"],
                         topk=[1, 2])
    dataset = MultiBehaviorSequentialDataset(config)
    train, _, test = dataset.build()
    model = registry.get_model_class(model_name)(config, train)
    assert sum(p.numel() for p in model.parameters()) == 0
    batch = dataset.make_batch(test.target_rows, with_target=True)
    full = model.full_sort_predict(batch)
    assert model.predict(batch).tolist() == full[range(len(full)), batch["item_id"]].tolist()
    results = Evaluator(config).evaluate(model, test, tasks=["behavior_specific", "target_behavior"])
    expected = EXPECTED_TEST_RANKS[model_name]
    assert dict(zip(results["behavior_specific"].users, results["behavior_specific"].ranks.tolist())) == expected
    ndcg2 = sum(1 / math.log2(r + 2) for r in expected.values() if r < 2) / 3
    assert results["behavior_specific"].metrics["ndcg@2"] == pytest.approx(ndcg2)
    assert results["behavior_specific"].metrics["recall@1"] == pytest.approx(
        sum(r < 1 for r in expected.values()) / 3)
    # target_behavior counts a and b only (their test targets are buys)
    buy_ranks = [expected["a"], expected["b"]]
    assert sorted(results["target_behavior"].users) == ["a", "b"]
    assert results["target_behavior"].metrics["recall@2"] == pytest.approx(sum(r < 2 for r in buy_ranks) / 2)


def test_pop_behavior_counts_one_behavior(tmp_path):
    config = make_config("Pop", write_inter(tmp_path, "hand", ROWS), behaviors=["view", "cart", "buy"],
                         pop_behavior="cart")
    dataset = MultiBehaviorSequentialDataset(config)
    train, _, _ = dataset.build()
    model = registry.get_model_class("Pop")(config, train)
    counts = {dataset.id2token("item_id", i): c for i, c in enumerate(model.item_popularity.tolist()) if c}
    assert counts == {"i1": 1.0, "i2": 1.0}


def test_heuristics_run_through_the_runner(tmp_path):
    from tests.test_runner import tiny_run

    record = tiny_run(tmp_path, model="Recent")
    assert record["efficiency"]["parameters"] == 0 and record["training"]["epochs_run"] == 0
    assert record["results"]["behavior_item"] is None


# A second hand-made log where the tie rule decides ranks: several items share a count.
TIE_ROWS = [
    # p: valid target i3, test target i9 bought (never seen before)
    ("p", "i1", "view", 1), ("p", "i2", "view", 2), ("p", "i3", "view", 3), ("p", "i9", "buy", 4),
    # q: valid target i5, test target i4 bought (a repeat: viewed and carted before)
    ("q", "i4", "view", 1), ("q", "i4", "cart", 2), ("q", "i5", "view", 3), ("q", "i4", "buy", 4),
    # r: valid target i8, test target i2 viewed (not a buy: counted by behavior_specific only)
    ("r", "i6", "view", 1), ("r", "i7", "view", 2), ("r", "i8", "view", 3), ("r", "i2", "view", 4),
]
# Training part: i4 x2; i1, i2, i6, i7 x1; i3, i5, i8, i9 x0 (9 items besides padding).
TIE_RANKS = {
    # Pop. p: i9 (0) is below the five counted items and ties with i3, i5, i8 -> 5 + 3.
    #      q: i4 is the most popular. r: i2 (1) is below i4 and ties with i1, i6, i7 -> 1 + 3.
    "Pop": {"p": 8, "q": 0, "r": 4},
    # Recent. p: window i3, i2, i1 first, then i4, i6, i7 by Pop; i9 ties with i5, i8 -> 6 + 2.
    #         q: window latest-first is i5, i4 -> 1. r: window i8, i7, i6, then i4; i2 ties with i1 -> 4 + 1.
    "Recent": {"p": 8, "q": 1, "r": 5},
}
TIE_REPEAT = {"p": 0, "q": 1, "r": 0}
TIE_TOPK = [1, 5]


def _hand_metrics(ranks, k):
    """Recall, NDCG and MRR @k of hand ranks, written out from their definitions."""
    hits = [rank for rank in ranks if rank < k]
    return {f"recall@{k}": len(hits) / len(ranks),
            f"ndcg@{k}": sum(1 / math.log2(rank + 2) for rank in hits) / len(ranks),
            f"mrr@{k}": sum(1 / (rank + 1) for rank in hits) / len(ranks)}


@pytest.mark.parametrize("model_name", ["Pop", "Recent"])
def test_heuristics_under_the_pessimistic_tie_rule_for_both_told_tasks(tmp_path, model_name):
    config = make_config(model_name, write_inter(tmp_path, "ties", TIE_ROWS), behaviors=["view", "cart", "buy"],
                         topk=TIE_TOPK)
    dataset = MultiBehaviorSequentialDataset(config)
    train, _, test = dataset.build()
    model = registry.get_model_class(model_name)(config, train)
    results = Evaluator(config).evaluate(model, test, tasks=["behavior_specific", "target_behavior"])
    expected = TIE_RANKS[model_name]
    for task, users in (("behavior_specific", ["p", "q", "r"]), ("target_behavior", ["p", "q"])):
        record = results[task].to_record()
        assert dict(zip(record["per_user"]["user"], record["per_user"]["rank"])) == {
            user: expected[user] for user in users}, task
        assert dict(zip(record["per_user"]["user"], record["per_user"]["repeat"])) == {
            user: TIE_REPEAT[user] for user in users}, task
        for k in TIE_TOPK:
            for name, value in _hand_metrics([expected[user] for user in users], k).items():
                assert record["metrics"][name] == pytest.approx(value), (task, name)
