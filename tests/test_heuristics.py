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
