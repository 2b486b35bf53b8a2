"""Chunked full ranking: exact ranks, top-K and metrics equal the dense computation; batch sizing."""

import numpy as np
import pytest
import torch
from torch import nn

from mbrec.data.dataset import MultiBehaviorSequentialDataset
from mbrec.evaluation import EvaluationError, Evaluator, chunked_rank, fit_eval_batch_size, metric_vectors
from mbrec.evaluation import pessimistic_rank
from tests.conftest import make_config, write_inter

N_USERS, N_ITEMS, CHUNK = 64, 1_003, 100  # 1,003 is not a multiple of the chunk


def dense_numpy_ranks(scores, targets):
    """Independent reference: items scoring >= the target, the target itself excluded."""
    ranks = []
    for row, target in zip(scores, targets):
        if np.isneginf(row[target]):
            ranks.append(len(row))
        else:
            ranks.append(int(np.sum(np.delete(row, target) >= row[target])))
    return np.array(ranks)


@pytest.fixture
def tied_scores():
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 15, size=(N_USERS, N_ITEMS)).astype(np.float32)  # many ties on purpose
    scores[:, 0] = -np.inf  # padding
    scores[rng.random((N_USERS, N_ITEMS)) < 0.05] = -np.inf  # masked history
    targets = rng.integers(1, N_ITEMS, size=N_USERS)
    scores[3, targets[3]] = -np.inf  # an excluded target: never a hit
    scores[5, targets[5]] = scores[5].max() + 1  # a sole best target: rank 0
    return scores, targets


@pytest.mark.parametrize("chunk", [CHUNK, 1, 997, N_ITEMS, 5_000])
def test_chunked_ranks_and_metrics_equal_dense(tied_scores, chunk):
    scores, targets = tied_scores
    expected = dense_numpy_ranks(scores, targets)
    assert expected[3] == N_ITEMS and expected[5] == 0
    ranks = chunked_rank(torch.from_numpy(scores), torch.from_numpy(targets), chunk).numpy()
    np.testing.assert_array_equal(ranks, expected)
    np.testing.assert_array_equal(ranks, pessimistic_rank(torch.from_numpy(scores), torch.from_numpy(targets)))
    ours, reference = metric_vectors(ranks), metric_vectors(expected)
    for name in reference:
        np.testing.assert_array_equal(ours[name], reference[name])


def test_chunked_top_k_equals_dense_top_k(tied_scores):
    scores, targets = tied_scores
    tensor = torch.from_numpy(scores)
    _, values, columns = chunked_rank(tensor, torch.from_numpy(targets), CHUNK, topk=20)
    dense_values, _ = tensor.topk(20, dim=1)
    assert values.shape == columns.shape == (N_USERS, 20)
    torch.testing.assert_close(values, dense_values)  # ties may pick other columns, never other scores
    torch.testing.assert_close(tensor.gather(1, columns), values)
    assert all(len(set(row)) == 20 for row in columns.tolist())  # no column twice


def test_bad_chunk_is_a_clear_error():
    with pytest.raises(ValueError, match="eval_item_chunk"):
        chunked_rank(torch.zeros(2, 5), torch.tensor([1, 2]), -3)


class TiedRandomModel(nn.Module):
    """Coarse deterministic scores per (user, item): many ties; a behavior head for behavior_item."""

    behavior_conditioned = True

    def __init__(self, n_items, n_behaviors):
        super().__init__()
        self.n_items, self.n_behaviors = n_items, n_behaviors

    def _scores(self, interaction, *shape):
        users = interaction["user_id"].tolist()
        told = interaction["behavior"].tolist() if "behavior" in interaction else [0] * len(users)
        rows = [torch.randint(0, 3, shape, generator=torch.Generator().manual_seed(user * 10 + b)).float()
                for user, b in zip(users, told)]
        return torch.stack(rows)

    def full_sort_predict(self, interaction):
        return self._scores(interaction, self.n_items)

    def full_sort_predict_behavior_item(self, interaction):
        return self._scores(interaction, self.n_behaviors, self.n_items)


def test_evaluator_results_do_not_depend_on_the_chunk(tmp_path):
    rng = np.random.default_rng(3)
    rows = [(f"u{u}", f"i{rng.integers(0, 37)}", ["view", "cart", "buy"][rng.integers(0, 3)], t)
            for u in range(30) for t in range(6)]
    config = make_config("SASRec", write_inter(tmp_path, "tiny", rows), behaviors=["view", "cart", "buy"],
                         eval_batch_size=7)
    dataset = MultiBehaviorSequentialDataset(config)
    _, _, test = dataset.build()
    model = TiedRandomModel(dataset.item_num, dataset.n_behaviors)
    dense = Evaluator(config).evaluate(model, test)
    config["eval_item_chunk"] = 5  # neither item_num nor n_behaviors * item_num is a multiple of 5
    assert dataset.item_num % 5 and (dataset.item_num * dataset.n_behaviors) % 5
    chunked = Evaluator(config).evaluate(model, test)
    for task, result in dense.items():
        np.testing.assert_array_equal(result.ranks, chunked[task].ranks)
        assert result.metrics == chunked[task].metrics
    assert dense["behavior_item"].ranks.max() > 0 and dense["next_item"].ranks.min() < dataset.item_num


def test_cpu_batch_that_cannot_fit_says_what_to_set():
    per_user = 1_000 * 13
    with pytest.raises(EvaluationError, match="set eval_batch_size=50 "):
        fit_eval_batch_size(512, 1_000, "cpu", memory_fraction=0.5, available=100 * per_user)
    assert fit_eval_batch_size(512, 1_000, "cpu", available=10**12) == 512  # fits: unchanged


def test_cuda_batch_is_lowered_to_free_memory():
    per_user = 874_328 * 13
    assert fit_eval_batch_size(512, 874_328, "cuda", memory_fraction=0.5, available=200 * per_user) == 100
    assert fit_eval_batch_size(64, 874_328, "cuda", memory_fraction=0.5, available=200 * per_user) == 64
    with pytest.raises(EvaluationError, match="one user's scores"):
        fit_eval_batch_size(512, 874_328, "cuda", memory_fraction=0.5, available=per_user)
