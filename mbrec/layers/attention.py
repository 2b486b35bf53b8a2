"""Bidirectional Transformer encoder with absolute, rotary (RoPE) or behavior-aware rotary attention.

- RoPE (Su et al., "RoFormer", Neurocomputing 2024, Eq. 34): query and key of position ``m`` are
  rotated pairwise, ``f(q, m) = q e^{i m theta}``, so ``<f(q, m), f(k, n)>`` depends on ``m - n``
  only. Pairs are the interleaved dimensions ``(0, 1), (2, 3), ...`` with ``theta_j =
  base^{-2j / d_head}``.
- BaRoPE (FatsMB, Yang et al., KDD'26, Eq. 13): the rotated query and key are further scaled
  by a behavior-dependent vector, ``f'(q, a, m) = h(a) f(q, m)``. The score is then
  ``h(a) h(b) g(q, k, m - n)`` (Appendix C, Eq. 30): still relative in position, and modulated
  by the behaviors of both tokens. Eq. 30 holds only if ``h`` scales each rotated pair as a whole
  (a real factor on each complex component, the "magnitude" of Eq. 26); one factor per
  dimension, as FatsMB's code does, makes the score depend on absolute positions. So the scale
  has one entry per rotated pair (``D / 2``), applied to both dimensions of the pair. The caller
  computes ``h`` and passes it as ``pair_scale``; a scale of ones is plain RoPE.

Post-LN blocks as BERT / BERT4Rec (``LN(x + Dropout(sublayer(x)))``). Padding is masked as a key
so that it never changes the output of a real position; a fully padded query row attends
uniformly (finite fill value, no NaN) and its output is meaningless.
"""

import math

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def rotary_angles(length, head_dim, base=10000.0, device=None):
    """``cos`` and ``sin`` of ``m * theta_j`` for positions ``m < length``: two ``[length, head_dim / 2]``."""
    if head_dim % 2:
        raise ValueError(f"RoPE rotates pairs of dimensions; the head size must be even, got {head_dim}")
    frequencies = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1) * frequencies  # [L, d/2]
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotate interleaved pairs of the last dimension: ``x [..., L, d]``, ``cos``/``sin [L, d/2]``."""
    even, odd = x[..., 0::2], x[..., 1::2]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)  # [..., L, d/2, 2]
    return rotated.flatten(-2)


class MultiHeadSelfAttention(nn.Module):
    """Self-attention with optional RoPE on q and k and an optional elementwise q/k scale (BaRoPE)."""

    def __init__(self, hidden_size, n_heads, attn_dropout_prob, rotary=False, rope_base=10000.0):
        super().__init__()
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = hidden_size // n_heads
        self.rotary = rotary
        self.rope_base = rope_base
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.output = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = nn.Dropout(attn_dropout_prob)

    def _heads(self, x):
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, L, d_head]

    def scores(self, hidden, padding_mask, pair_scale=None):
        """Pre-softmax attention scores ``[B, H, L, L]``; padded keys get a large negative score.

        Args:
            hidden: ``[B, L, D]``.
            padding_mask: ``[B, L]``, True at padding.
            pair_scale: ``[B, L, D / 2]`` scale of each rotated pair of q and k (BaRoPE's ``h(b)``;
                per head as consecutive ``d_head / 2`` slices), or None.
        """
        query, key = self._heads(self.query(hidden)), self._heads(self.key(hidden))
        if self.rotary:
            cos, sin = rotary_angles(hidden.size(1), self.head_dim, self.rope_base, hidden.device)
            query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        if pair_scale is not None:  # Eq. 13: h(a) f(q, m), h(b) f(k, n)
            batch, length, _ = pair_scale.shape
            scale = pair_scale.view(batch, length, self.n_heads, self.head_dim // 2).transpose(1, 2)
            scale = scale.repeat_interleave(2, dim=-1)  # [B, H, L, d_head]: both dims of a pair
            query, key = query * scale, key * scale
        scores = query @ key.transpose(-2, -1) / math.sqrt(self.head_dim)  # [B, H, L, L]
        fill = torch.finfo(scores.dtype).min
        return scores.masked_fill(padding_mask[:, None, None, :], fill)

    def forward(self, hidden, padding_mask, pair_scale=None):
        weights = self.attn_dropout(torch.softmax(self.scores(hidden, padding_mask, pair_scale), dim=-1))
        context = weights @ self._heads(self.value(hidden))  # [B, H, L, d_head]
        batch, _, length, _ = context.shape
        return self.output(context.transpose(1, 2).reshape(batch, length, -1))  # [B, L, D]


class TransformerEncoderLayer(nn.Module):
    """Post-LN block: ``x = LN(x + Drop(Attn(x)))``, ``x = LN(x + Drop(FFN(x)))``."""

    def __init__(self, hidden_size, n_heads, inner_size, hidden_dropout_prob, attn_dropout_prob, hidden_act="relu",
                 layer_norm_eps=1e-5, rotary=False, rope_base=10000.0):
        super().__init__()
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"Unknown hidden_act '{hidden_act}'; use one of {sorted(ACTIVATIONS)}")
        self.attention = MultiHeadSelfAttention(hidden_size, n_heads, attn_dropout_prob, rotary, rope_base)
        self.attention_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.ffn = nn.Sequential(nn.Linear(hidden_size, inner_size), ACTIVATIONS[hidden_act](),
                                 nn.Dropout(hidden_dropout_prob), nn.Linear(inner_size, hidden_size))
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout_prob)

    def forward(self, hidden, padding_mask, pair_scale=None):
        hidden = self.attention_norm(hidden + self.dropout(self.attention(hidden, padding_mask, pair_scale)))
        return self.ffn_norm(hidden + self.dropout(self.ffn(hidden)))


class TransformerEncoder(nn.Module):
    """A stack of :class:`TransformerEncoderLayer`; ``pair_scales`` gives one BaRoPE scale per layer (or None)."""

    def __init__(self, n_layers, hidden_size, n_heads, inner_size, hidden_dropout_prob, attn_dropout_prob,
                 hidden_act="relu", layer_norm_eps=1e-5, rotary=False, rope_base=10000.0):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(hidden_size, n_heads, inner_size, hidden_dropout_prob, attn_dropout_prob,
                                    hidden_act, layer_norm_eps, rotary, rope_base)
            for _ in range(n_layers))

    def forward(self, hidden, padding_mask, pair_scales=None):
        for index, layer in enumerate(self.layers):
            scale = None if pair_scales is None else pair_scales[index]
            hidden = layer(hidden, padding_mask, scale)
        return hidden  # [B, L, D]
