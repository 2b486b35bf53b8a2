"""MB-STR: Multi-Behavior Sequential Transformer Recommender.

Yuan, Guo, Yu, Zhang, Wang, Zhuang, "Multi-Behavior Sequential Transformer Recommender", SIGIR 2022.

- Input: item embedding + behavior embedding + absolute position embedding (BERT4Rec's input, which
  MB-STR builds on), LayerNorm and dropout.
- Multi-behavior sparse Transformer (MBST): every token's query/key/value projections and both
  feed-forward layers are the parameter set of its behavior
  (:mod:`mbrec.layers.behavior_attention`).
- Multi-behavior sequential pattern generator (MBSPG): a learned attention bias per head, behavior
  pair ``(b_i, b_j)`` and clipped relative distance ``j - i`` (``max_relative_distance``).
- Behavior-aware prediction (BAP): a CGC multi-task head (Tang et al., RecSys 2020) with
  ``n_shared_experts`` shared and ``n_private_experts`` behavior-specific experts, hard-routed by
  the behavior to predict for (:class:`mbrec.layers.moe.TaskRoutedMoE`; the "unknown" behavior uses
  the shared experts only). The query is ``LN(h + CGC(h, b))``, scored against the tied item table
  plus an item bias.
- Cloze training as BERT4Rec (:mod:`mbrec.layers.cloze`): the slot after the history holds the
  target and is always masked; history positions are masked with probability ``mask_ratio``; a
  masked position keeps its behavior (the model learns "which item with behavior b goes here"),
  hidden (id 0) with probability ``behavior_dropout_prob`` so the model also ranks items told
  nothing (``train_unit: prefix``). With ``train_unit: sequence`` (default) a batch holds users'
  training windows of up to ``L + 1`` rows (``cloze_window_rows``: the evaluation slot after a full
  window sits at position L and at distance L from the first item; windows of L rows would never
  train that position embedding nor that relative bias), each real position masked with
  ``mask_ratio`` (at least one per window) and no slot, as PBAT's public code (a later model of the same line, compared with MB-STR) draws one
  masked window per user and epoch; MB-STR's own code was not checked for this. At evaluation
  the slot is ``[mask]`` with the asked behavior, which routes the slot's projections, its FFN,
  its relative biases and the head: ``full_sort_predict`` returns scores for the asked behavior.

Where the paper is not specific we chose: a bias table (not an MLP) for MBSPG; linear experts in
the head (``TaskRoutedMoE``); the attention output projection shared across behaviors. The public
evaluation used 99 sampled negatives and target-behavior users only; ours is the full ranking of
the suite's protocol.
"""

import torch
from torch import nn
from torch.nn import functional as F
from recbole.model.abstract_recommender import SequentialRecommender

from baselines import PredictFromFullSort
from baselines.bert4rec_mb import check_cloze_config
from mbrec.layers import bert_init
from mbrec.layers.behavior_attention import BehaviorSpecificLinear, BehaviorSpecificTransformerEncoder
from mbrec.data.dataset import train_unit
from mbrec.layers.cloze import (cloze_mask, hide_behaviors, padding_after, real_positions, sequence_cloze_mask,
                                slot_output, with_slot)
from mbrec.layers.moe import TaskRoutedMoE


class MBSTR(PredictFromFullSort, SequentialRecommender):
    """Behavior-specific Transformer + behavior-pair relative bias + CGC head, trained on the Cloze task."""

    behavior_conditioned = True
    train_units = ("prefix", "sequence")
    train_unit_kind = "cloze"
    cloze_window_rows = "window+slot"  # sequence mode trains position L, where a full window's slot is queried

    def __init__(self, config, dataset):
        check_cloze_config(type(self).__name__, config)
        super().__init__(config, dataset)
        self.train_unit = train_unit(config)
        self.hidden_size = config["hidden_size"]
        self.mask_ratio = float(config["mask_ratio"])
        self.behavior_dropout_prob = float(config["behavior_dropout_prob"] or 0.0)
        self.initializer_range = config["initializer_range"]
        self.BEHAVIOR = config["BEHAVIOR_FIELD"]
        self.BEHAVIOR_SEQ = self.BEHAVIOR + config["LIST_SUFFIX"]
        self.n_behaviors = dataset.n_behaviors  # including id 0 = padding / unknown
        self.mask_token = self.n_items

        self.item_embedding = nn.Embedding(self.n_items + 1, self.hidden_size, padding_idx=0)  # + [mask]
        self.behavior_embedding = nn.Embedding(self.n_behaviors, self.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length + 1, self.hidden_size)  # + the slot
        self.input_norm = nn.LayerNorm(self.hidden_size, eps=config["layer_norm_eps"])
        self.input_dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.encoder = BehaviorSpecificTransformerEncoder(
            n_layers=config["n_layers"], hidden_size=self.hidden_size, n_heads=config["n_heads"],
            inner_size=config["inner_size"], n_behaviors=self.n_behaviors,
            hidden_dropout_prob=config["hidden_dropout_prob"], attn_dropout_prob=config["attn_dropout_prob"],
            hidden_act=config["hidden_act"], layer_norm_eps=config["layer_norm_eps"],
            max_distance=int(config["max_relative_distance"]))
        self.head = TaskRoutedMoE(self.hidden_size, n_tasks=self.n_behaviors - 1,
                                  n_shared=int(config["n_shared_experts"]), n_private=int(config["n_private_experts"]))
        self.head_norm = nn.LayerNorm(self.hidden_size, eps=config["layer_norm_eps"])
        self.item_bias = nn.Parameter(torch.zeros(self.n_items))
        self.apply(self._init_weights)

    def _init_weights(self, module):
        """BERT4Rec's init; behavior-specific layers draw their per-behavior weights the same way."""
        bert_init(module, self.initializer_range)
        if isinstance(module, BehaviorSpecificLinear):
            module.reset_parameters(self.initializer_range)

    def forward(self, items, behaviors, padding):
        """``[B, L+1]`` items (``[mask]`` where hidden), behavior ids, padding mask -> ``[B, L+1, H]``."""
        positions = torch.arange(items.size(1), device=items.device).unsqueeze(0)  # [1, L+1]
        hidden = self.item_embedding(items) + self.behavior_embedding(behaviors) + self.position_embedding(positions)
        hidden = self.input_dropout(self.input_norm(hidden))
        return self.encoder(hidden, behaviors, padding)

    def item_logits(self, hidden, behaviors):
        """BAP: ``[N, H]`` outputs at the predicted positions, their behaviors ``[N]`` -> ``[N, n_items]``."""
        query = self.head_norm(hidden + self.head(hidden, behaviors))  # [N, H]
        return query @ self.item_embedding.weight[:self.n_items].T + self.item_bias

    def calculate_loss(self, interaction):
        if self.train_unit == "sequence":
            return self.sequence_loss(interaction)
        lengths = interaction[self.ITEM_SEQ_LEN]
        items = with_slot(interaction[self.ITEM_SEQ], lengths, interaction[self.POS_ITEM_ID])  # [B, L+1]
        behaviors = with_slot(interaction[self.BEHAVIOR_SEQ], lengths, interaction[self.BEHAVIOR])
        padding = padding_after(lengths, items.size(1))
        masked = cloze_mask(padding, lengths, self.mask_ratio)
        labels = items[masked]  # [M]
        behaviors = hide_behaviors(behaviors, masked, self.behavior_dropout_prob)
        hidden = self.forward(items.masked_fill(masked, self.mask_token), behaviors, padding)
        return F.cross_entropy(self.item_logits(hidden[masked], behaviors[masked]), labels)

    def sequence_loss(self, interaction):
        """Sequence mode: Cloze over the training window, no slot (see the module docstring)."""
        items, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]  # [B, L], [B]
        masked = sequence_cloze_mask(lengths, items.size(1), self.mask_ratio)
        behaviors = hide_behaviors(interaction[self.BEHAVIOR_SEQ], masked, self.behavior_dropout_prob)
        hidden = self.forward(items.masked_fill(masked, self.mask_token), behaviors,
                              ~real_positions(lengths, items.size(1)))  # [B, L, H]
        return F.cross_entropy(self.item_logits(hidden[masked], behaviors[masked]), items[masked])

    def full_sort_predict(self, interaction):
        lengths = interaction[self.ITEM_SEQ_LEN]
        if self.BEHAVIOR in interaction:
            asked = interaction[self.BEHAVIOR]  # [B]
        else:  # told nothing: the unknown behavior
            asked = torch.zeros_like(lengths)
        items = with_slot(interaction[self.ITEM_SEQ], lengths, self.mask_token)
        behaviors = with_slot(interaction[self.BEHAVIOR_SEQ], lengths, asked)
        hidden = self.forward(items, behaviors, padding_after(lengths, items.size(1)))
        return self.item_logits(slot_output(hidden, lengths), asked)  # [B, n_items]
