"""BERT4Rec_B: BERT4Rec over (item, behavior) pair tokens.

The "_B" setting of the MBGen baselines (Liu et al., "Multi-Behavior Generative Recommendation"):
every (item, behavior) pair is its own token, as in SASRec_B; the vocabulary and the scoring
rules (scores for the asked behavior, logsumexp over behaviors when told nothing, (behavior, item)
pairs) are :class:`baselines.sasrec_b.PairTokens`. Encoder: RecBole's ``BERT4Rec`` (Sun et al.,
CIKM 2019) with one ``[mask]`` token (id ``n_pairs``) and a pair bias. Training is the Cloze task of
:mod:`mbrec.layers.cloze`: the slot after the history holds the target pair and is always masked,
history pairs are masked with probability ``mask_ratio``; at evaluation the slot is ``[mask]``.
With ``train_unit: sequence`` (default) a batch holds users' training windows of up to ``L + 1`` rows
(the slot's position L is trained, as BERT4Rec_MB's), masked as BERT4Rec_MB's (each pair with
``mask_ratio``, at least one, ``ft_ratio`` last-pair-only windows).
"""

import torch
from torch import nn
from torch.nn import functional as F
from recbole.model.sequential_recommender.bert4rec import BERT4Rec

from baselines import PredictFromFullSort
from baselines.bert4rec_mb import check_cloze_config
from baselines.sasrec_b import PairTokens
from mbrec.data.dataset import train_unit
from mbrec.layers.cloze import cloze_mask, padding_after, sequence_cloze_mask, slot_output, with_slot


class BERT4Rec_B(PairTokens, PredictFromFullSort, BERT4Rec):
    """BERT4Rec whose vocabulary is (item, behavior) pairs plus ``[mask]``."""

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
        self.n_behaviors = dataset.n_behaviors  # including the padding id 0
        self.mask_token = self.n_pairs()
        # Replace BERT4Rec's item table and bias: pairs + [mask]; one position more for the slot.
        self.item_embedding = nn.Embedding(self.n_pairs() + 1, self.hidden_size, padding_idx=0)
        self.output_bias = nn.Parameter(torch.zeros(self.n_pairs()))
        self.position_embedding = nn.Embedding(self.max_seq_length + 1, self.hidden_size)
        self.apply(self._init_weights)

    def pair_scores(self, hidden):
        """``[N, H]`` -> ``[N, n_pairs]``."""
        return hidden @ self.item_embedding.weight[:self.n_pairs()].T + self.output_bias

    def pair_logits(self, interaction):
        lengths = interaction[self.ITEM_SEQ_LEN]
        pairs = self.pair_ids(interaction[self.ITEM_SEQ], interaction[self.BEHAVIOR_SEQ])  # [B, L]
        hidden = self.forward(with_slot(pairs, lengths, self.mask_token))  # [B, L+1, H]
        return self.pair_scores(slot_output(hidden, lengths))  # [B, n_pairs]

    def calculate_loss(self, interaction):
        if self.train_unit == "sequence":
            return self.sequence_loss(interaction)
        lengths = interaction[self.ITEM_SEQ_LEN]
        pairs = self.pair_ids(interaction[self.ITEM_SEQ], interaction[self.BEHAVIOR_SEQ])  # [B, L]
        target = self.pair_ids(interaction[self.POS_ITEM_ID], interaction[self.BEHAVIOR])  # [B]
        tokens = with_slot(pairs, lengths, target)  # [B, L+1]
        masked = cloze_mask(padding_after(lengths, tokens.size(1)), lengths, self.mask_ratio)
        labels = tokens[masked]  # [M]
        hidden = self.forward(tokens.masked_fill(masked, self.mask_token))
        return F.cross_entropy(self.pair_scores(hidden[masked]), labels)

    def sequence_loss(self, interaction):
        """Sequence mode: Cloze over the window's pair tokens, as BERT4Rec_MB (see the module docstring)."""
        lengths = interaction[self.ITEM_SEQ_LEN]
        pairs = self.pair_ids(interaction[self.ITEM_SEQ], interaction[self.BEHAVIOR_SEQ])  # [B, L]
        masked = sequence_cloze_mask(lengths, pairs.size(1), self.mask_ratio, self.last_item_prob)
        hidden = self.forward(pairs.masked_fill(masked, self.mask_token))  # [B, L, H]
        return F.cross_entropy(self.pair_scores(hidden[masked]), pairs[masked])
