"""The multi-behavior embedding shared by the behavior-aware models (SASRec_MB, DiffuRecSysMB, ...).

Two tables, both with id 0 = padding / "unknown" kept at zero:
- ``history``: added to each history token's item embedding (the behavior of that interaction);
- ``asked``: the behavior the model is asked to recommend for (the task's hint). In training it
  is the target's own behavior, hidden (id 0) with probability ``behavior_dropout_prob`` so that
  the same model also ranks items when told nothing (the ``next_item`` task: the evaluator then
  sends no ``behavior`` field).
"""

import torch
from torch import nn


class MultiBehaviorEmbedding(nn.Module):
    """History-behavior and asked-behavior embeddings, and the asked-behavior rule."""

    def __init__(self, config, n_behaviors, hidden_size):
        super().__init__()
        self.behavior_field = config["BEHAVIOR_FIELD"]
        self.behavior_seq_field = self.behavior_field + config["LIST_SUFFIX"]
        self.length_field = config["ITEM_LIST_LENGTH_FIELD"]
        self.dropout_prob = float(config["behavior_dropout_prob"] or 0.0)
        self.history = nn.Embedding(n_behaviors, hidden_size, padding_idx=0)
        self.asked = nn.Embedding(n_behaviors, hidden_size, padding_idx=0)

    def zero_padding(self):
        """Call after the model's own initialisation: the padding / unknown rows must stay zero."""
        with torch.no_grad():
            self.history.weight[0].zero_()
            self.asked.weight[0].zero_()

    def history_embedding(self, interaction, length=None):
        """[B, L, H] behavior embeddings of the history (first ``length`` columns if given)."""
        behaviors = interaction[self.behavior_seq_field]
        return self.history(behaviors if length is None else behaviors[:, :length])

    def asked_behavior(self, interaction):
        """[B] ids of the asked behavior: 0 when told nothing; randomly hidden in training."""
        if self.behavior_field not in interaction:
            return torch.zeros_like(interaction[self.length_field])
        return self.hidden_in_training(interaction[self.behavior_field])

    def hidden_in_training(self, asked):
        """``asked`` (any shape) with each id hidden (0) with ``behavior_dropout_prob`` in training."""
        if self.training and self.dropout_prob > 0:
            hide = torch.rand(asked.shape, device=asked.device) < self.dropout_prob
            asked = torch.where(hide, torch.zeros_like(asked), asked)
        return asked

    def asked_embedding(self, interaction):
        """[B, H]; zeros when told nothing."""
        return self.asked(self.asked_behavior(interaction))
