"""SASRec_B: SASRec over (item, behavior) pair tokens.

The "_B" setting of the FatsMB/MBGen baselines: every (item, behavior) pair is its own token,
so "view item 7" and "buy item 7" have separate embeddings, and the model predicts the next
pair. Scores for one asked behavior are the logits of that behavior's pairs; with no behavior
given, an item's score is the log of its marginal probability, logsumexp over behaviors.
The pair vocabulary and the scoring rules are in :class:`PairTokens`, shared with BERT4Rec_B.

Reference: Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018 (the encoder,
RecBole's ``SASRec``); the pair-token setting follows the baselines of Liu et al.,
"Multi-Behavior Generative Recommendation" (MBGen).
"""

import torch
from torch import nn

from baselines import PredictFromFullSort
from mbrec.data.dataset import TARGET_BEHAVIOR_LIST, TARGET_ITEM_LIST
from mbrec.models.causal import SASRec


class PairTokens:
    """(item, behavior) pair vocabulary and its scoring; ``pair = (item-1) * B + (behavior-1) + 1``.

    Mixed into a model that sets ``n_items``, ``n_behaviors`` (with padding), ``BEHAVIOR`` and
    implements ``pair_logits(interaction)`` -> ``[B, n_pairs]`` (row 0 = padding pair).
    """

    def n_pairs(self):
        """Pair vocabulary size including the padding pair 0."""
        return (self.n_items - 1) * (self.n_behaviors - 1) + 1

    def pair_ids(self, items, behaviors):
        """Pair token of each (item, behavior); padding (item 0) stays 0."""
        pairs = (items - 1) * (self.n_behaviors - 1) + behaviors
        return torch.where(items > 0, pairs, torch.zeros_like(pairs))

    def full_sort_predict(self, interaction):
        pair_scores = self.full_sort_predict_behavior_item(interaction)  # [B, n_behaviors, n_items]
        if self.BEHAVIOR in interaction:
            asked = interaction[self.BEHAVIOR].view(-1, 1, 1).expand(-1, 1, pair_scores.size(2))
            return pair_scores.gather(1, asked).squeeze(1)  # [B, n_items]
        return torch.logsumexp(pair_scores, dim=1)  # [B, n_items]: log of the item's marginal

    def full_sort_predict_behavior_item(self, interaction):
        logits = self.pair_logits(interaction)[:, :self.n_pairs()]  # [B, n_pairs]
        batch_size = logits.size(0)
        by_item = logits[:, 1:].reshape(batch_size, self.n_items - 1, self.n_behaviors - 1)  # [B, I-1, Bh-1]
        scores = logits.new_full((batch_size, self.n_behaviors, self.n_items), -torch.inf)
        scores[:, 1:, 1:] = by_item.transpose(1, 2)
        return scores  # [B, n_behaviors, n_items]


class SASRec_B(PairTokens, PredictFromFullSort, SASRec):
    """SASRec whose vocabulary is (item, behavior) pairs (see :class:`PairTokens`)."""

    behavior_conditioned = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if self.loss_type != "CE":
            raise ValueError("SASRec_B supports loss_type: CE only (it ranks all pairs)")
        self.BEHAVIOR = config["BEHAVIOR_FIELD"]
        self.BEHAVIOR_SEQ = self.BEHAVIOR + config["LIST_SUFFIX"]
        self.n_behaviors = dataset.n_behaviors  # including the padding id 0
        # Replaces SASRec's item table: one row per pair, row 0 = padding.
        self.item_embedding = nn.Embedding(self.n_pairs(), self.hidden_size, padding_idx=0)
        self._init_weights(self.item_embedding)

    def pair_logits(self, interaction):
        pair_seq = self.pair_ids(interaction[self.ITEM_SEQ], interaction[self.BEHAVIOR_SEQ])  # [B, L]
        seq_output = self.forward(pair_seq, interaction[self.ITEM_SEQ_LEN])  # [B, H]
        return seq_output @ self.item_embedding.weight.T  # [B, n_pairs]

    def calculate_loss(self, interaction):
        if self.sequence_training:
            return super().calculate_loss(interaction)
        logits = self.pair_logits(interaction)
        target = self.pair_ids(interaction[self.POS_ITEM_ID], interaction[self.BEHAVIOR])  # [B]
        return self.loss_fct(logits, target)

    def sequence_logits(self, interaction, has_target):
        """Pair logits ``[N, n_pairs]`` at every target position; the target is the next (item, behavior) pair."""
        pair_seq = self.pair_ids(interaction[self.ITEM_SEQ], interaction[self.BEHAVIOR_SEQ])  # [B, L]
        with self.reading_every_position():
            states = self.forward(pair_seq, interaction[self.ITEM_SEQ_LEN])  # [B, L, H]
        targets = self.pair_ids(interaction[TARGET_ITEM_LIST], interaction[TARGET_BEHAVIOR_LIST])  # [B, L]
        return states[has_target] @ self.item_embedding.weight.T, targets[has_target]
