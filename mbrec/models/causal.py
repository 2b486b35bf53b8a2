"""Causal models trained at every position in one pass (``train_unit: sequence``).

A causal encoder's output at position j depends only on positions 0..j, so one pass over a window
gives the prediction of every prefix of it: the loss is taken at every position that has a target
(``target_item_list``, the next interaction; :class:`mbrec.data.dataset.WindowLoader`), averaged
over all target positions of the batch, which is what prefix mode's mean over examples averages
too. With dropout off, the loss at a position equals the loss of its prefix example (tested).

:class:`CausalSequenceTraining` is mixed in before the model's class. In prefix mode it hands
``calculate_loss`` to that class unchanged. RecBole's ``SASRec`` and ``GRU4Rec`` get it through
the two same-named subclasses below (the registry serves them under RecBole's names): they add no
parameter, so a trained model's weights and scores are RecBole's, and in sequence mode the per-
position states come out of RecBole's own ``forward``, whose final ``gather_indexes`` (the last
position) is skipped while :meth:`CausalSequenceTraining.reading_every_position` is active.
"""

from contextlib import contextmanager

from torch.nn import functional as F
from recbole.model.sequential_recommender.gru4rec import GRU4Rec as RecBoleGRU4Rec
from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec

from mbrec.data.dataset import TARGET_ITEM_LIST, train_unit


class CausalSequenceTraining:
    """Sequence-mode training for a causal sequential model (mixed in before its class).

    Subclasses whose states are not RecBole's ``forward`` override :meth:`sequence_logits`.
    """

    train_units = ("prefix", "sequence")
    train_unit_kind = "causal"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.sequence_training = train_unit(config) == "sequence"
        self.every_position = False
        if self.sequence_training and getattr(self, "loss_type", "CE") != "CE":
            raise ValueError(f"{type(self).__name__}: train_unit sequence trains with loss_type CE (over all "
                             f"items), got {self.loss_type}; use train_unit=prefix for it")

    @contextmanager
    def reading_every_position(self):
        """Within it, ``gather_indexes`` returns every position ``[B, L, H]`` instead of one ``[B, H]``."""
        self.every_position = True
        try:
            yield
        finally:
            self.every_position = False

    def gather_indexes(self, output, gather_index):
        if self.every_position:
            return output
        return super().gather_indexes(output, gather_index)

    def calculate_loss(self, interaction):
        if not self.sequence_training:
            return super().calculate_loss(interaction)
        losses, _ = self.target_losses(interaction)
        return losses.mean()  # over every target position of the batch

    def target_losses(self, interaction):
        """Cross-entropy ``[N]`` at the batch's N target positions and their ``[B, L]`` bool mask."""
        has_target = interaction[TARGET_ITEM_LIST] > 0  # [B, L]
        logits, targets = self.sequence_logits(interaction, has_target)  # [N, V], [N]
        return F.cross_entropy(logits, targets, reduction="none"), has_target

    def position_losses(self, interaction):
        """``[B, L]`` loss at each position (0 where nothing is predicted): for tests and diagnostics."""
        losses, has_target = self.target_losses(interaction)
        return losses.new_zeros(has_target.shape).masked_scatter(has_target, losses)

    def sequence_logits(self, interaction, has_target):
        """Logits over all items ``[N, n_items]`` at the ``has_target`` positions, and their targets ``[N]``."""
        with self.reading_every_position():
            states = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])  # [B, L, H]
        return states[has_target] @ self.item_embedding.weight.T, interaction[TARGET_ITEM_LIST][has_target]


class SASRec(CausalSequenceTraining, RecBoleSASRec):
    """RecBole's SASRec (Kang & McAuley, ICDM 2018); in sequence mode, the loss at every position."""


class GRU4Rec(CausalSequenceTraining, RecBoleGRU4Rec):
    """RecBole's GRU4Rec (Hidasi et al., ICLR 2016); in sequence mode, the loss at every position."""
