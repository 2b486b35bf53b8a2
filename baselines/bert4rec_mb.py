"""BERT4Rec_MB: BERT4Rec with additive behavior embeddings; the asked behavior is the mask token's.

Encoder: RecBole's ``BERT4Rec`` (Sun et al., "BERT4Rec: Sequential Recommendation with
Bidirectional Encoder Representations from Transformer", CIKM 2019): bidirectional Transformer,
output ``LN(GELU(W h))`` scored against the tied item table plus an item bias. Each position adds a
behavior embedding (:class:`mbrec.layers.behavior.MultiBehaviorEmbedding`): a visible history
token adds its behavior from the ``history`` table; a ``[mask]`` token adds the behavior of the
interaction it hides from the ``asked`` table, so the model is asked "which item, with this
behavior, goes here". The query is the ``[mask]`` slot after the history
(:mod:`mbrec.layers.cloze`) with the task's asked behavior, or "unknown" (id 0) when told nothing.

Training (Cloze, ``train_unit: prefix``): the slot holds the example's target and is always masked; each history position
is masked with probability ``mask_ratio``. At every masked position the behavior is hidden (id 0)
with probability ``behavior_dropout_prob`` (condition dropout), so the model also ranks items told
nothing (the ``next_item`` task). This replaces RecBole's ``mask_itemseq`` batch transform (which
masks only inside the input window and never predicts the example's target), hence
``transform: ~`` in the YAML. With ``train_unit: sequence`` (default) a batch holds users' training
windows of up to ``L + 1`` rows (``cloze_window_rows``: the evaluation slot after a full window of
L rows sits at position L, which the absolute position table must have learned) and the masks
follow BERT4Rec's paper (:func:`mbrec.layers.cloze.sequence_cloze_mask`):
each item with ``mask_ratio``, at least one per window, and with probability ``ft_ratio`` only the
last item; a masked position carries its own behavior (hidden with ``behavior_dropout_prob``).
"""

import torch
from torch import nn
from torch.nn import functional as F
from recbole.model.sequential_recommender.bert4rec import BERT4Rec

from baselines import PredictFromFullSort
from mbrec.layers.behavior import MultiBehaviorEmbedding
from mbrec.data.dataset import train_unit
from mbrec.layers.cloze import (cloze_mask, hide_behaviors, padding_after, sequence_cloze_mask, slot_mask, slot_output,
                                with_slot)


def check_cloze_config(model_name, config):
    """Errors for settings a Cloze baseline cannot run with (raised at construction)."""
    if config["loss_type"] != "CE":
        raise ValueError(f"{model_name} supports loss_type: CE only (it ranks all items), got {config['loss_type']}")
    if not 0.0 <= float(config["mask_ratio"]) < 1.0:
        raise ValueError(f"{model_name}: mask_ratio must lie in [0, 1), got {config['mask_ratio']}")
    if config["transform"] is not None:
        raise ValueError(f"{model_name} masks inside the model; set `transform: ~` (got {config['transform']})")


class BERT4Rec_MB(PredictFromFullSort, BERT4Rec):
    """BERT4Rec + behavior embeddings; the ``[mask]`` slot carries the asked behavior."""

    behavior_conditioned = True
    train_units = ("prefix", "sequence")
    train_unit_kind = "cloze"
    cloze_window_rows = "window+slot"  # sequence mode trains position L, where a full window's slot is queried

    def __init__(self, config, dataset):
        check_cloze_config(type(self).__name__, config)
        super().__init__(config, dataset)
        self.BEHAVIOR = config["BEHAVIOR_FIELD"]
        self.BEHAVIOR_SEQ = self.BEHAVIOR + config["LIST_SUFFIX"]
        self.train_unit = train_unit(config)
        self.last_item_prob = float(config["ft_ratio"] or 0.0)
        # One position more than RecBole's BERT4Rec: the slot follows the full window.
        self.position_embedding = nn.Embedding(self.max_seq_length + 1, self.hidden_size)
        self.behaviors = MultiBehaviorEmbedding(config, dataset.n_behaviors, self.hidden_size)
        self.apply(self._init_weights)
        self.behaviors.zero_padding()

    def forward(self, items, behaviors, masked):
        """``[B, L+1]`` items (``[mask]`` where hidden), behavior ids, masked positions -> ``[B, L+1, H]``."""
        positions = torch.arange(items.size(1), device=items.device).unsqueeze(0)  # [1, L+1]
        behavior_embedding = torch.where(masked.unsqueeze(-1), self.behaviors.asked(behaviors),
                                         self.behaviors.history(behaviors))  # [B, L+1, H]
        hidden = self.item_embedding(items) + behavior_embedding + self.position_embedding(positions)
        hidden = self.dropout(self.LayerNorm(hidden))
        attention_mask = self.get_attention_mask(items, bidirectional=True)  # padding (item 0) is never a key
        hidden = self.trm_encoder(hidden, attention_mask, output_all_encoded_layers=True)[-1]
        return self.output_ln(self.output_gelu(self.output_ffn(hidden)))  # [B, L+1, H]

    def item_logits(self, hidden):
        """``[N, H]`` -> ``[N, n_items]`` (the ``[mask]`` row is not an item)."""
        return hidden @ self.item_embedding.weight[:self.n_items].T + self.output_bias

    def calculate_loss(self, interaction):
        if self.train_unit == "sequence":
            return self.sequence_loss(interaction)
        lengths = interaction[self.ITEM_SEQ_LEN]
        items = with_slot(interaction[self.ITEM_SEQ], lengths, interaction[self.POS_ITEM_ID])  # [B, L+1]
        behaviors = with_slot(interaction[self.BEHAVIOR_SEQ], lengths, interaction[self.BEHAVIOR])
        masked = cloze_mask(padding_after(lengths, items.size(1)), lengths, self.mask_ratio)
        labels = items[masked]  # [M]
        behaviors = hide_behaviors(behaviors, masked, self.behaviors.dropout_prob)
        hidden = self.forward(items.masked_fill(masked, self.mask_token), behaviors, masked)
        return F.cross_entropy(self.item_logits(hidden[masked]), labels)

    def sequence_loss(self, interaction):
        """Sequence mode: Cloze over the training window of up to L + 1 rows (no slot appended; BERT4Rec's
        last-item samples: on a full window, exactly the evaluation query's position L)."""
        items, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]  # [B, L], [B]
        masked = sequence_cloze_mask(lengths, items.size(1), self.mask_ratio, self.last_item_prob)
        behaviors = hide_behaviors(interaction[self.BEHAVIOR_SEQ], masked, self.behaviors.dropout_prob)
        hidden = self.forward(items.masked_fill(masked, self.mask_token), behaviors, masked)  # [B, L, H]
        return F.cross_entropy(self.item_logits(hidden[masked]), items[masked])

    def full_sort_predict(self, interaction):
        lengths = interaction[self.ITEM_SEQ_LEN]
        asked = self.behaviors.asked_behavior(interaction)  # [B]; 0 when told nothing
        items = with_slot(interaction[self.ITEM_SEQ], lengths, self.mask_token)
        behaviors = with_slot(interaction[self.BEHAVIOR_SEQ], lengths, asked)
        hidden = self.forward(items, behaviors, slot_mask(lengths, items.size(1)))
        return self.item_logits(slot_output(hidden, lengths))  # [B, n_items]
