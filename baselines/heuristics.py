"""Sanity baselines that do not train: ``Pop`` and ``Recent``.

They tell a reader how much of a learned model's score a counting rule already gets. In
multi-behavior logs that share is large: a user who viewed an item often buys it next, so
``Recent`` (re-rank the input window) is a strong baseline for buy targets.

* ``Pop``: score = number of interactions with the item in the training part of the split
  (each user's interactions before the valid target), all behaviors, or one behavior with
  ``pop_behavior: buy``.
* ``Recent``: items of the input window first, latest occurrence first; every other item after
  them, ordered by ``Pop``.

Both ignore behavior hints, have no parameters and use :class:`NoTrainingTrainer`.
"""

import numpy as np
import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from mbrec.training.trainer import NoTrainingTrainer
from baselines import PredictFromFullSort


class Pop(PredictFromFullSort, SequentialRecommender):
    """Global popularity over the training part of the split."""

    input_type = InputType.POINTWISE
    trainer_class = NoTrainingTrainer

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        items = dataset.inter_feat[self.ITEM_ID].numpy()  # the training view: rows before each valid target
        behavior = config["pop_behavior"]
        if behavior:
            behavior_field = config["BEHAVIOR_FIELD"]
            if behavior not in dataset.field2token_id[behavior_field]:
                raise ValueError(f"pop_behavior '{behavior}' is not one of {dataset.behavior_vocab}")
            keep = dataset.inter_feat[behavior_field].numpy() == dataset.field2token_id[behavior_field][behavior]
            items = items[keep]
        counts = np.bincount(items, minlength=self.n_items).astype(np.float64)
        counts[0] = 0.0  # padding
        self.register_buffer("item_popularity", torch.from_numpy(counts))  # [n_items]

    def forward(self, item_seq, item_seq_len):
        return self.item_popularity.unsqueeze(0).expand(item_seq.size(0), -1)  # [B, n_items]

    def calculate_loss(self, interaction):
        raise RuntimeError(f"{type(self).__name__} does not train")

    def full_sort_predict(self, interaction):
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])


class Recent(Pop):
    """The input window's items, latest first, then the rest by popularity."""

    def forward(self, item_seq, item_seq_len):
        batch_size, max_len = item_seq.shape
        # Popularity squeezed into [0, 1) so every window item (score >= 1) ranks above it.
        popularity = self.item_popularity / (self.item_popularity.max() + 1.0)
        scores = popularity.unsqueeze(0).repeat(batch_size, 1)  # [B, n_items]
        positions = torch.arange(1, max_len + 1, dtype=scores.dtype, device=scores.device)  # [L]
        recency = torch.where(item_seq > 0, 1.0 + positions, torch.zeros_like(positions))  # [B, L]
        # scatter_reduce "amax": an item seen several times keeps its latest position.
        window_scores = torch.zeros_like(scores).scatter_reduce(1, item_seq, recency, reduce="amax")
        return torch.where(window_scores > 0, window_scores, scores)
