"""BERT4Rec: RecBole's model, plus training on whole user windows (``train_unit: sequence``).

Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder Representations from
Transformer", CIKM 2019. Every layer, parameter and score is RecBole 1.2.1's ``BERT4Rec``; this
class only adds the sequence-mode loss, so a trained model loads into RecBole's class unchanged.

Prefix mode is RecBole's as it stands: each (history, target) example passes RecBole's
``mask_itemseq`` batch transform, which masks history items (the example's own target is never
predicted) or, for a share ``ft_ratio`` of the batches, only the last history item.

Sequence mode (the paper's training unit): one window of ``MAX_ITEM_LIST_LENGTH`` training rows per
user and epoch, masks drawn here (:func:`mbrec.layers.cloze.sequence_cloze_mask`): each item with
``mask_ratio``, at least one per window, and with probability ``ft_ratio`` a window masked at its
last item only (the paper's "samples that only mask the last item", Sec. 3.6). Applied to a window
batch, RecBole's transform would do the same up to three things this version does not copy: it can
leave a window without a target, it keeps at most ``int(mask_ratio * L)`` targets per window (the
rest are masked but not scored) and it draws a negative item per target in Python even for CE.
The loss is RecBole's CE over the tied item table plus bias, averaged over all masked positions
of the batch. Evaluation is RecBole's: ``[mask]`` appended after the history, first item dropped.
"""

from torch.nn import functional as F
from recbole.model.sequential_recommender.bert4rec import BERT4Rec as RecBoleBERT4Rec

from mbrec.data.dataset import train_unit
from mbrec.layers.cloze import sequence_cloze_mask


class BERT4Rec(RecBoleBERT4Rec):
    """RecBole's BERT4Rec; ``calculate_loss`` on window batches when ``train_unit: sequence``."""

    train_units = ("prefix", "sequence")
    train_unit_kind = "cloze"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.train_unit = train_unit(config)
        self.last_item_prob = float(config["ft_ratio"] or 0.0)
        if self.train_unit == "sequence" and self.loss_type != "CE":
            raise ValueError(f"BERT4Rec with train_unit: sequence supports loss_type: CE only, got {self.loss_type}")

    def calculate_loss(self, interaction):
        if self.train_unit != "sequence":
            return super().calculate_loss(interaction)
        items, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]  # [B, L], [B]
        masked = sequence_cloze_mask(lengths, items.size(1), self.mask_ratio, self.last_item_prob)
        hidden = self.forward(items.masked_fill(masked, self.mask_token))  # [B, L, H]
        logits = hidden[masked] @ self.item_embedding.weight[:self.n_items].T + self.output_bias  # [M, n_items]
        return F.cross_entropy(logits, items[masked])
