"""SASRec_MB: SASRec with additive behavior embeddings, conditioned on the asked behavior.

Each input position is ``item embedding + behavior embedding + position embedding``; the
sequence representation and an embedding of the asked target behavior are fused by a residual
MLP into the query scored against the (shared, behavior-free) item table. During training the asked behavior is
the target's own, replaced by "unknown" (id 0, a zero vector) with probability
``behavior_dropout_prob`` so that the model also ranks items when told nothing (the
``next_item`` task). The same construction as the BERT4Rec_MB baseline of the MB literature,
on SASRec's causal encoder (Kang & McAuley, ICDM 2018; RecBole's ``SASRec``).
"""

import torch
from torch import nn

from baselines import PredictFromFullSort
from mbrec.data.dataset import TARGET_BEHAVIOR_LIST, TARGET_ITEM_LIST
from mbrec.layers.behavior import MultiBehaviorEmbedding
from mbrec.models.causal import SASRec


class SASRec_MB(PredictFromFullSort, SASRec):
    """SASRec + behavior embeddings on inputs + the asked behavior on the output query."""

    behavior_conditioned = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.behaviors = MultiBehaviorEmbedding(config, dataset.n_behaviors, self.hidden_size)
        # The query must depend on (history, asked behavior) jointly -- e.g. "buy" means "the item
        # carted last", not a fixed item bias -- so the two are fused by an MLP, not just added.
        self.query_fusion = nn.Sequential(nn.Linear(2 * self.hidden_size, self.inner_size), nn.GELU(),
                                          nn.Linear(self.inner_size, self.hidden_size))
        self.apply(self._init_weights)
        self.behaviors.zero_padding()

    def position_states(self, interaction):
        """Encoder output at every position ``[B, L, H]`` (causal: position j has seen rows 0..j)."""
        item_seq = interaction[self.ITEM_SEQ]  # [B, L]
        positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)  # [1, L]
        hidden = (self.item_embedding(item_seq) + self.behaviors.history_embedding(interaction)
                  + self.position_embedding(positions))  # [B, L, H]
        hidden = self.dropout(self.LayerNorm(hidden))
        attention_mask = self.get_attention_mask(item_seq)
        return self.trm_encoder(hidden, attention_mask, output_all_encoded_layers=True)[-1]

    def fused_query(self, state, asked):
        """Query ``[..., H]`` from encoder states ``[..., H]`` and asked behavior ids ``[...]`` (0 = told nothing)."""
        return state + self.query_fusion(torch.cat([state, self.behaviors.asked(asked)], dim=-1))

    def encode(self, interaction):
        last = self.gather_indexes(self.position_states(interaction), interaction[self.ITEM_SEQ_LEN] - 1)  # [B, H]
        return self.fused_query(last, self.behaviors.asked_behavior(interaction))  # [B, H]

    def calculate_loss(self, interaction):
        if self.sequence_training:
            return super().calculate_loss(interaction)
        logits = self.encode(interaction) @ self.item_embedding.weight.T  # [B, n_items]
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def sequence_logits(self, interaction, has_target):
        """At every target position, the query asks for the behavior of the interaction it predicts."""
        states = self.position_states(interaction)[has_target]  # [N, H]
        asked = self.behaviors.hidden_in_training(interaction[TARGET_BEHAVIOR_LIST][has_target])  # [N]
        logits = self.fused_query(states, asked) @ self.item_embedding.weight.T  # [N, n_items]
        return logits, interaction[TARGET_ITEM_LIST][has_target]

    def full_sort_predict(self, interaction):
        return self.encode(interaction) @ self.item_embedding.weight.T  # [B, n_items]
