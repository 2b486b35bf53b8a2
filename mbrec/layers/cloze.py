"""BERT-style Cloze inputs: prefix examples with a slot, and whole training windows.

Prefix mode (``train_unit: prefix``). Shared by the bidirectional baselines (BERT4Rec_MB, BERT4Rec_B,
MB-STR). The history (left-aligned,
``n`` real positions) gets one more position ``n``, the *slot*: in training it holds the example's
target and is always masked (so training always practises the evaluation query), and every history
position is masked too with probability ``mask_prob`` (the Cloze task of BERT4Rec, Sun et al.,
CIKM 2019). At evaluation the slot holds the ``[mask]`` token and the encoder output there scores
the next item. The sequence is ``L + 1`` long, so no history item is dropped to make room (RecBole's
``BERT4Rec.reconstruct_test_data`` drops the first item of every sequence instead).

Sequence mode (``train_unit: sequence``). A training batch holds each user's training window
(``item_length`` real positions, left-aligned, zero-padded) and the model draws the masks:
:func:`sequence_cloze_mask` masks every real position with probability ``mask_prob`` and, when a
sequence drew none, one of its real positions chosen uniformly (BERT's at-least-one rule, so every
sequence contributes a target); padding is never masked. ``last_item_prob`` turns a sequence, with
that probability, into a sample whose only masked position is its last real one (BERT4Rec's
"samples that only mask the last item", Sun et al. 2019, Sec. 3.6; RecBole's ``ft_ratio``).
"""

import torch


def with_slot(sequence, lengths, slot_value):
    """``[B, L]`` left-aligned sequence -> ``[B, L+1]`` with ``slot_value`` (``[B]`` or int) at position ``n``.

    Everything after the slot is set to 0, so that encoders which find padding by id 0 (RecBole's
    ``get_attention_mask``) agree with :func:`padding_after` whatever the batch held there.
    """
    extended = torch.cat([sequence, sequence.new_zeros(sequence.size(0), 1)], dim=1)
    extended[torch.arange(sequence.size(0), device=sequence.device), lengths] = slot_value
    return extended.masked_fill(padding_after(lengths, extended.size(1)), 0)


def padding_after(lengths, length):
    """``[B, length]`` bool, True at padding: positions after each row's slot ``n``."""
    positions = torch.arange(length, device=lengths.device).unsqueeze(0)  # [1, length]
    return positions > lengths.unsqueeze(1)


def slot_mask(lengths, length):
    """``[B, length]`` bool, True only at each row's slot ``n``."""
    positions = torch.arange(length, device=lengths.device).unsqueeze(0)  # [1, length]
    return positions == lengths.unsqueeze(1)


def cloze_mask(padding, lengths, mask_prob):
    """``[B, L+1]`` bool: the positions to predict; the slot always, history with ``mask_prob``, padding never."""
    rows = torch.arange(padding.size(0), device=padding.device)
    history = ~padding
    history[rows, lengths] = False
    masked = history & (torch.rand(padding.shape, device=padding.device) < mask_prob)
    masked[rows, lengths] = True
    return masked


def slot_output(hidden, lengths):
    """The encoder output at each row's slot: ``[B, L+1, D]`` -> ``[B, D]``."""
    return hidden[torch.arange(hidden.size(0), device=hidden.device), lengths]


def hide_behaviors(behaviors, where, prob):
    """Replace the behavior by 0 ("unknown") at ``where`` with probability ``prob`` (condition dropout)."""
    if prob <= 0:
        return behaviors
    hide = where & (torch.rand(behaviors.shape, device=behaviors.device) < prob)
    return behaviors.masked_fill(hide, 0)


def real_positions(lengths, length):
    """``[B, length]`` bool, True at each row's ``n`` real (non-padding) positions of a left-aligned window."""
    positions = torch.arange(length, device=lengths.device).unsqueeze(0)  # [1, length]
    return positions < lengths.unsqueeze(1)


def sequence_cloze_mask(lengths, length, mask_prob, last_item_prob=0.0):
    """``[B, length]`` bool: the positions of whole training windows to mask and predict.

    Each real position with ``mask_prob``; a row that drew none gets one real position chosen
    uniformly; with ``last_item_prob`` a row is masked at its last real position only. Rows of
    length 0 (none in a training batch) stay unmasked.
    """
    real = real_positions(lengths, length)
    masked = real & (torch.rand(real.shape, device=lengths.device) < mask_prob)
    rows = torch.arange(lengths.size(0), device=lengths.device)
    drew_none = ~masked.any(dim=1) & (lengths > 0)
    uniform_position = (torch.rand(lengths.shape, device=lengths.device) * lengths).long()  # in [0, n)
    masked[rows[drew_none], uniform_position[drew_none]] = True
    if last_item_prob > 0:
        last_only = (torch.rand(lengths.shape, device=lengths.device) < last_item_prob) & (lengths > 0)
        last_position = real_positions(lengths, length) & ~real_positions(lengths - 1, length)
        masked = torch.where(last_only.unsqueeze(1), last_position, masked)
    return masked
