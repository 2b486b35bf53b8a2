"""The evaluator: hand-computed metrics, an independent numpy check, tasks and hints."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from mbrec.data.dataset import MultiBehaviorSequentialDataset
from mbrec.evaluation import EvaluationError, Evaluator, metric_vectors, pessimistic_rank, summarize
from tests.conftest import make_config, write_inter


def test_hand_computed_example():
    # items 0..4, item 0 = padding (excluded by the caller with -inf)
    scores = torch.tensor([[-math.inf, 0.5, 0.9, 0.5, 0.1]])
    rank = pessimistic_rank(scores, torch.tensor([1])).item()
    assert rank == 2  # item 2 scores higher; item 3 ties and counts against the target
    values = summarize([rank], topk=[1, 3])
    assert values["recall@1"] == 0.0 and values["recall@3"] == 1.0
    assert values["ndcg@3"] == pytest.approx(1 / math.log2(4))
    assert values["mrr@3"] == pytest.approx(1 / 3)
    # two users: ranks 0 and 4 -> Recall@3 = 0.5, NDCG@3 = (1 + 0) / 2, MRR@5 = (1 + 1/5) / 2
    values = summarize([0, 4], topk=[3, 5])
    assert values["recall@3"] == 0.5 and values["ndcg@3"] == 0.5
    assert values["mrr@5"] == pytest.approx(0.6)
    assert values["ndcg@5"] == pytest.approx((1 + 1 / math.log2(6)) / 2)


def test_constant_scores_get_no_hits():
    scores = torch.zeros(3, 10)
    ranks = pessimistic_rank(scores, torch.tensor([1, 5, 9]))
    assert ranks.tolist() == [9, 9, 9]


def test_excluded_target_is_never_a_hit():
    scores = torch.tensor([[0.0, -math.inf, 1.0]])
    assert pessimistic_rank(scores, torch.tensor([1])).item() == 3


def test_agrees_with_independent_numpy_computation():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, size=(200, 50)).astype(np.float32)  # many ties on purpose
    targets = rng.integers(1, 50, size=200)
    ours = pessimistic_rank(torch.from_numpy(scores), torch.from_numpy(targets)).numpy()
    ours_values = metric_vectors(ours, topk=[5, 10, 20])
    for user in range(200):
        target_score = scores[user, targets[user]]
        # position of the target in a descending sort that puts tied items before it
        order = np.lexsort((np.arange(50) == targets[user], -scores[user]))
        rank = int(np.flatnonzero(order == targets[user])[0])
        assert rank == int(np.sum(np.delete(scores[user], targets[user]) >= target_score))
        assert ours[user] == rank
        for k in (5, 10, 20):
            assert ours_values[f"recall@{k}"][user] == float(rank < k)
            expected_ndcg = 1 / np.log2(rank + 2) if rank < k else 0.0
            assert ours_values[f"ndcg@{k}"][user] == pytest.approx(expected_ndcg)
            assert ours_values[f"mrr@{k}"][user] == pytest.approx(1 / (rank + 1) if rank < k else 0.0)


class Oracle(nn.Module):
    """Knows every test target (from outside the protocol) and records what it was shown."""

    behavior_conditioned = True

    def __init__(self, dataset, rows, n_items, pair_scores=False):
        super().__init__()
        self.target_of = {int(u): (int(i), int(b)) for u, i, b in zip(
            dataset.row_arrays["user_id"][rows], dataset.target_items(rows), dataset.target_behaviors(rows))}
        self.n_items = n_items
        self.n_behaviors = dataset.n_behaviors
        self.seen = []
        if pair_scores:
            self.full_sort_predict_behavior_item = self._pairs

    def full_sort_predict(self, interaction):
        self.seen.append(set(interaction.interaction))
        scores = torch.zeros(len(interaction), self.n_items)
        for row, user in enumerate(interaction["user_id"].tolist()):
            item, behavior = self.target_of[user]
            told = interaction["behavior"][row].item() if "behavior" in interaction else None
            # right only when told the right behavior (or told nothing)
            scores[row, item] = 1.0 if told in (None, behavior) else -1.0
        return scores

    def _pairs(self, interaction):
        self.seen.append(set(interaction.interaction))
        scores = torch.zeros(len(interaction), self.n_behaviors, self.n_items)
        for row, user in enumerate(interaction["user_id"].tolist()):
            item, behavior = self.target_of[user]
            scores[row, behavior, item] = 1.0
        return scores


@pytest.fixture
def split(tmp_path, tiny_rows):
    rows = tiny_rows + [("d", "i1", "view", 1), ("d", "i2", "view", 2), ("d", "i4", "buy", 3)]
    config = make_config("SASRec", write_inter(tmp_path, "tiny", rows), behaviors=["view", "cart", "buy"],
                         eval_batch_size=2)
    dataset = MultiBehaviorSequentialDataset(config)
    _, _, test = dataset.build()
    return config, dataset, test


def test_tasks_count_the_right_users_and_hide_the_target(split):
    config, dataset, test = split
    model = Oracle(dataset, test.target_rows, dataset.item_num, pair_scores=True)
    results = Evaluator(config).evaluate(model, test)
    assert results["behavior_specific"].metrics["recall@5"] == 1.0
    assert results["next_item"].metrics["recall@5"] == 1.0
    assert results["behavior_item"].metrics["recall@5"] == 1.0
    # target_behavior: only users whose test target is a buy (a: i3 buy, d: i4 buy; b ends on a view)
    assert sorted(results["target_behavior"].users) == ["a", "d"]
    assert sorted(results["behavior_specific"].users) == ["a", "b", "d"]
    assert all("item_id" not in fields for fields in model.seen)  # the target item is never shown
    record = results["behavior_specific"].to_record()
    assert record["per_user"]["rank"] == [0, 0, 0] and record["n_users"] == 3


def test_behavior_item_is_na_without_a_behavior_head(split):
    config, dataset, test = split
    model = Oracle(dataset, test.target_rows, dataset.item_num)
    results = Evaluator(config).evaluate(model, test)
    assert results["behavior_item"] is None


def test_history_masking_removes_input_items(split):
    config, dataset, test = split
    config["mask_history"] = True
    model = Oracle(dataset, test.target_rows, dataset.item_num)
    results = Evaluator(config).evaluate(model, test, tasks=["next_item"])
    # user a's target i3 was viewed and carted before: masked -> miss; b's i2 too; d's i4 is new
    ranks = dict(zip(results["next_item"].users, results["next_item"].ranks))
    assert ranks["d"] == 0 and ranks["a"] >= dataset.item_num - 1 and ranks["b"] >= dataset.item_num - 1


def test_history_masking_masks_the_input_window_only(tmp_path):
    """mask_history removes the window's items; an item met only before the window stays rankable."""
    rows = [("e", "i1", "view", 1), ("e", "i2", "view", 2), ("e", "i3", "view", 3), ("e", "i4", "view", 4),
            ("e", "i1", "buy", 5)]  # window of 2 before the test target: i3, i4; i1 is older
    config = make_config("SASRec", write_inter(tmp_path, "window", rows), behaviors=["view", "cart", "buy"],
                         MAX_ITEM_LIST_LENGTH=2, mask_history=True)
    dataset = MultiBehaviorSequentialDataset(config)
    _, _, test = dataset.build()
    ranks = Evaluator(config).evaluate(Oracle(dataset, test.target_rows, dataset.item_num), test,
                                       tasks=["next_item"])["next_item"].ranks
    assert ranks.tolist() == [0]


def test_wrong_shapes_and_nan_are_reported(split):
    config, dataset, test = split

    class Broken(nn.Module):
        def full_sort_predict(self, interaction):
            return torch.full((len(interaction), dataset.item_num), math.nan)

    with pytest.raises(EvaluationError, match="NaN"):
        Evaluator(config).evaluate(Broken(), test, tasks=["next_item"])


def test_repeat_flag_says_whether_the_target_is_in_the_input_window(split):
    config, dataset, test = split
    model = Oracle(dataset, test.target_rows, dataset.item_num, pair_scores=True)
    results = Evaluator(config).evaluate(model, test)
    # a's test target i3 was viewed and carted before, b's i2 viewed and carted; d's i4 is new.
    expected = {"a": 1, "b": 1, "d": 0}
    for task in ("behavior_specific", "next_item", "behavior_item"):
        per_user = results[task].to_record()["per_user"]
        assert dict(zip(per_user["user"], per_user["repeat"])) == expected, task
    per_user = results["target_behavior"].to_record()["per_user"]  # a and d only: their targets are buys
    assert dict(zip(per_user["user"], per_user["repeat"])) == {"a": 1, "d": 0}
