"""PBAT: Personalized Behavior-Aware Transformer.

Su, Chen, Lin, Li, Zhang, Ming, "Personalized Behavior-Aware Transformer for Multi-Behavior
Sequential Recommendation", ACM MM 2023.

- Gaussian representations: every item, behavior and position has a mean and a (pre-activation)
  standard-deviation embedding; a token is the sum of its item, behavior and position Gaussians
  (means add, std streams add before ``ELU + 1``, as in STOSA/PBAT).
- Personalized behavior pattern generator (PBPG): a user's behavior Gaussian is the global one plus
  a user-specific shift, ``b_u = b + W [e_u ; b]`` for the mean and the std streams (``e_u`` a
  learned user embedding), so the same behavior can weigh differently for different users.
- Behavior-aware collaboration extractor (BACE): causal 2-Wasserstein self-attention
  (:mod:`mbrec.layers.wasserstein`) whose logits get a learned bias per head, behavior pair and
  clipped relative distance (:class:`mbrec.layers.behavior_attention.BehaviorPairRelativeBias`,
  shared with MB-STR).
- Distribution-based prediction: the last position's Gaussian, shifted by the user's Gaussian of the
  asked behavior (nothing added when told nothing; hidden with probability ``behavior_dropout_prob``
  in training), is scored against every item's Gaussian by ``-W2^2``; cross-entropy over all items.

Where the paper is not specific, or for the suite's protocol, we chose: the linear form of the user
shift in PBPG, a bias table for the behavior relations in BACE, cross-entropy over all items
(the paper trains on sampled negatives), and the asked behavior added to the query (PBAT predicts
for one target behavior only).

``training``: ``causal`` (default) trains the causal encoder on next-item targets (the last
position of each prefix, or every position with ``train_unit: sequence``), as the suite's other
causal models. ``cloze`` is how the authors' code trains: BERT-style, the attention is
bidirectional, masked positions are predicted, each scored with its own behavior shift (hidden
with ``behavior_dropout_prob``). With ``train_unit: prefix`` the history gets one slot for the
example's target (:mod:`mbrec.layers.cloze`, as MB-STR; always masked, history masked with
``mask_ratio``); with ``sequence`` a user's training window is masked with ``mask_ratio`` (no
slot). At evaluation the slot after the history is ``[mask]`` with the asked behavior.
"""

import torch
from torch import nn
from recbole.model.abstract_recommender import SequentialRecommender

from baselines import PredictFromFullSort
from mbrec.data.dataset import TARGET_BEHAVIOR_LIST, TARGET_ITEM_LIST
from mbrec.layers import bert_init
from mbrec.layers.behavior_attention import BehaviorPairRelativeBias
from mbrec.layers.cloze import (cloze_mask, hide_behaviors, padding_after, real_positions, sequence_cloze_mask,
                                slot_output, with_slot)
from mbrec.layers.wasserstein import WassersteinEncoderLayer, positive, squared_wasserstein
from mbrec.models.causal import CausalSequenceTraining


TRAININGS = ("causal", "cloze")


class PBAT(CausalSequenceTraining, PredictFromFullSort, SequentialRecommender):
    """Gaussian tokens with personalized behaviors, Wasserstein attention with behavior relations, W2 scores."""

    behavior_conditioned = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if config["loss_type"] != "CE":
            raise ValueError(f"PBAT supports loss_type: CE only (it ranks all items), got {config['loss_type']}")
        self.training_mode = config["training"]
        if self.training_mode not in TRAININGS:
            raise ValueError(f"PBAT training must be one of {TRAININGS}, got {self.training_mode!r}")
        self.cloze = self.training_mode == "cloze"
        if self.cloze and not 0.0 <= float(config["mask_ratio"]) < 1.0:
            raise ValueError(f"PBAT: mask_ratio must lie in [0, 1), got {config['mask_ratio']}")
        if self.cloze:
            self.train_unit_kind = "cloze"  # sequence mode: whole windows, the model draws the masks
        self.mask_ratio = float(config["mask_ratio"] or 0.0)
        self.mask_token = self.n_items  # the [mask] item of Cloze training (one row past the items)
        self.hidden_size = config["hidden_size"]
        self.initializer_range = config["initializer_range"]
        self.behavior_dropout_prob = float(config["behavior_dropout_prob"] or 0.0)
        self.USER_ID = config["USER_ID_FIELD"]
        self.BEHAVIOR = config["BEHAVIOR_FIELD"]
        self.BEHAVIOR_SEQ = self.BEHAVIOR + config["LIST_SUFFIX"]
        self.n_behaviors = dataset.n_behaviors  # including id 0 = padding / unknown
        hidden, eps = self.hidden_size, config["layer_norm_eps"]

        n_item_rows = self.n_items + int(self.cloze)  # + [mask]
        n_positions = self.max_seq_length + int(self.cloze)  # + the slot after the full window
        self.item_mean = nn.Embedding(n_item_rows, hidden, padding_idx=0)
        self.item_std = nn.Embedding(n_item_rows, hidden, padding_idx=0)
        self.behavior_mean = nn.Embedding(self.n_behaviors, hidden, padding_idx=0)
        self.behavior_std = nn.Embedding(self.n_behaviors, hidden, padding_idx=0)
        self.position_mean = nn.Embedding(n_positions, hidden)
        self.position_std = nn.Embedding(n_positions, hidden)
        self.user_embedding = nn.Embedding(dataset.num(self.USER_ID), hidden)
        self.pattern_mean = nn.Linear(2 * hidden, hidden)  # PBPG: user-specific shift of the behavior mean
        self.pattern_std = nn.Linear(2 * hidden, hidden)
        self.input_norms = nn.ModuleList(nn.LayerNorm(hidden, eps=eps) for _ in range(2))
        self.input_dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.behavior_relations = BehaviorPairRelativeBias(config["n_heads"], self.n_behaviors,
                                                           int(config["max_relative_distance"]))
        self.layers = nn.ModuleList(
            WassersteinEncoderLayer(hidden, config["n_heads"], config["inner_size"], config["hidden_dropout_prob"],
                                    config["attn_dropout_prob"], config["hidden_act"], eps)
            for _ in range(config["n_layers"]))
        self.apply(self._init_weights)

    def _init_weights(self, module):
        bert_init(module, self.initializer_range)

    def personalized_behaviors(self, users, behaviors):
        """PBPG: ``users [B]``, ``behaviors [B, ...]`` -> mean and std-stream ``[B, ..., H]``; zero for id 0."""
        user = self.user_embedding(users)  # [B, H]
        mean, std = self.behavior_mean(behaviors), self.behavior_std(behaviors)
        user = user.view(user.size(0), *([1] * (behaviors.dim() - 1)), -1).expand_as(mean)
        known = (behaviors > 0).unsqueeze(-1)
        mean = mean + self.pattern_mean(torch.cat([user, mean], dim=-1)) * known
        std = std + self.pattern_std(torch.cat([user, std], dim=-1)) * known
        return mean, std

    def forward(self, interaction):
        """The last position's Gaussian: mean ``[B, H]`` and std stream ``[B, H]`` (before ``ELU + 1``)."""
        mean, std = self.position_states(interaction)
        last = torch.arange(mean.size(0), device=mean.device), interaction[self.ITEM_SEQ_LEN] - 1
        return mean[last], std[last]

    def position_states(self, interaction):
        """Every position's Gaussian, mean and std stream ``[B, L, H]`` (causal: position j has seen rows 0..j)."""
        items, behaviors = interaction[self.ITEM_SEQ], interaction[self.BEHAVIOR_SEQ]  # [B, L]
        lengths = interaction[self.ITEM_SEQ_LEN]
        length = items.size(1)
        positions = torch.arange(length, device=items.device)
        real = positions.unsqueeze(0) < lengths.unsqueeze(1)  # [B, L]
        items, behaviors = items * real, behaviors * real  # whatever the batch held after the length is padding
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
        key_mask = ~(causal.unsqueeze(0) & real.unsqueeze(1))  # [B, L, L]: future or padding keys
        return self.encode(items, behaviors, interaction[self.USER_ID], key_mask)

    def encode(self, items, behaviors, users, key_mask):
        """``[B, L']`` items, behaviors, users ``[B]``, ``[B, L', L']`` masked keys -> mean, std ``[B, L', H]``."""
        positions = torch.arange(items.size(1), device=items.device)
        behavior_mean, behavior_std = self.personalized_behaviors(users, behaviors)
        mean = self.item_mean(items) + behavior_mean + self.position_mean(positions)
        std = self.item_std(items) + behavior_std + self.position_std(positions)
        mean, std = (self.input_dropout(norm(x)) for norm, x in zip(self.input_norms, (mean, std)))
        relations = self.behavior_relations(behaviors)  # [B, H, L', L']
        for layer in self.layers:
            mean, std = layer(mean, std, key_mask, relations)
        return mean, std

    def bidirectional_states(self, items, behaviors, users, padding):
        """Cloze: ``[B, L']`` items (``[mask]`` where hidden), behaviors, ``[B, L']`` padding -> mean, std ``[B, L', H]``."""
        key_mask = padding.unsqueeze(1).expand(-1, items.size(1), -1)  # [B, L', L']: padding keys only
        return self.encode(items, behaviors, users, key_mask)

    def item_scores(self, interaction):
        mean, std = self.forward(interaction)  # [B, H]
        asked = interaction[self.BEHAVIOR] if self.BEHAVIOR in interaction else torch.zeros_like(
            interaction[self.ITEM_SEQ_LEN])
        return self.query_scores(mean, std, interaction[self.USER_ID], asked)

    def query_scores(self, mean, std, users, asked):
        """``-W2^2`` of every item ``[N, n_items]`` from Gaussians ``[N, H]`` shifted by the users' ``[N]``
        Gaussians of the asked behaviors ``[N]`` (hidden with ``behavior_dropout_prob`` in training)."""
        if self.training:
            asked = hide_behaviors(asked, torch.ones_like(asked, dtype=torch.bool), self.behavior_dropout_prob)
        return self.score(mean, std, users, asked)

    def score(self, mean, std, users, asked):
        """``-W2^2`` of every item ``[N, n_items]`` from the query shifted by the users' Gaussians of ``asked``."""
        asked_mean, asked_std = self.personalized_behaviors(users, asked)  # zero when unknown
        query_mean, query_std = mean + asked_mean, positive(std + asked_std)  # [N, H]
        item_std = positive(self.item_std.weight[:self.n_items])  # [n_items, H] (no [mask] row)
        return -squared_wasserstein(query_mean, query_std, self.item_mean.weight[:self.n_items], item_std)

    def cloze_loss(self, interaction):
        """The authors' training: every masked position predicts its item, with its own behavior's shift."""
        lengths, users = interaction[self.ITEM_SEQ_LEN], interaction[self.USER_ID]
        if self.sequence_training:  # the user's training window, no slot
            items, behaviors = interaction[self.ITEM_SEQ], interaction[self.BEHAVIOR_SEQ]  # [B, L]
            masked = sequence_cloze_mask(lengths, items.size(1), self.mask_ratio)
            padding = ~real_positions(lengths, items.size(1))
        else:  # one example: the history plus the slot holding its target
            items = with_slot(interaction[self.ITEM_SEQ], lengths, interaction[self.POS_ITEM_ID])  # [B, L+1]
            behaviors = with_slot(interaction[self.BEHAVIOR_SEQ], lengths, interaction[self.BEHAVIOR])
            padding = padding_after(lengths, items.size(1))
            masked = cloze_mask(padding, lengths, self.mask_ratio)
        behaviors = hide_behaviors(behaviors, masked, self.behavior_dropout_prob)
        mean, std = self.bidirectional_states(items.masked_fill(masked, self.mask_token), behaviors, users, padding)
        rows = users.unsqueeze(1).expand_as(items)[masked]  # [M]: whose position each is
        scores = self.score(mean[masked], std[masked], rows, behaviors[masked])  # [M, n_items]
        return nn.functional.cross_entropy(scores, items[masked])

    def calculate_loss(self, interaction):
        if self.cloze:
            return self.cloze_loss(interaction)
        if self.sequence_training:
            return super().calculate_loss(interaction)
        return nn.functional.cross_entropy(self.item_scores(interaction), interaction[self.POS_ITEM_ID])

    def sequence_logits(self, interaction, has_target):
        """At every target position, the query is shifted by the behavior of the interaction it predicts."""
        mean, std = self.position_states(interaction)  # [B, L, H]
        users = interaction[self.USER_ID].unsqueeze(1).expand_as(has_target)[has_target]  # [N]
        asked = interaction[TARGET_BEHAVIOR_LIST][has_target]  # [N]
        logits = self.query_scores(mean[has_target], std[has_target], users, asked)
        return logits, interaction[TARGET_ITEM_LIST][has_target]

    def full_sort_predict(self, interaction):
        if not self.cloze:
            return self.item_scores(interaction)  # [B, n_items]
        lengths, users = interaction[self.ITEM_SEQ_LEN], interaction[self.USER_ID]
        asked = interaction[self.BEHAVIOR] if self.BEHAVIOR in interaction else torch.zeros_like(lengths)
        items = with_slot(interaction[self.ITEM_SEQ], lengths, self.mask_token)
        behaviors = with_slot(interaction[self.BEHAVIOR_SEQ], lengths, asked)
        mean, std = self.bidirectional_states(items, behaviors, users, padding_after(lengths, items.size(1)))
        return self.score(slot_output(mean, lengths), slot_output(std, lengths), users, asked)  # [B, n_items]
