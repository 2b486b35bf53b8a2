"""Encoder-decoder Transformer blocks with T5-style relative position bias.

T5 (Raffel et al., JMLR 2020, Section 2.1): no absolute positions; each head adds a learned
scalar to its attention logits that depends only on the bucketed relative distance ``key -
query`` (exact buckets for small distances, logarithmic ones up to ``max_distance``). The bias
is computed once per stack and shared by its layers; cross-attention has none. Pre-norm blocks
with RMSNorm, as T5. Head size and model size are independent (``n_heads * d_head`` need not
equal ``d_model``), as MBGen's 6 heads x 64 on d_model 256.

The feed-forward sub-layer is passed in as a module ``ffn(x, behavior_vectors, routes)``
(:class:`FeedForward`, or :class:`mbrec.layers.moe.PositionRoutedFFN` for routed experts), so the
same block serves dense and sparse stacks; ``behavior_vectors`` (or None) are concatenated to the
FFN input (MBGen's behavior injection).
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from mbrec.layers.attention import ACTIVATIONS


def relative_position_buckets(query_length, key_length, n_buckets, max_distance, bidirectional, device=None):
    """``[Lq, Lk]`` bucket of each relative distance ``key - query`` (T5's bucketing).

    Bidirectional: half the buckets for keys before the query, half for keys after it.
    Unidirectional (causal decoder): keys after the query share bucket 0 (they are masked anyway).
    """
    query = torch.arange(query_length, device=device).unsqueeze(1)
    key = torch.arange(key_length, device=device).unsqueeze(0)
    relative = key - query  # [Lq, Lk]
    buckets = torch.zeros_like(relative)
    if bidirectional:
        n_buckets //= 2
        buckets = buckets + (relative > 0).long() * n_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)
    exact = n_buckets // 2
    is_small = distance < exact
    # Distances from ``exact`` up to ``max_distance`` share logarithmically wider buckets.
    log_bucket = exact + (torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                          * (n_buckets - exact)).long()
    log_bucket = log_bucket.clamp(max=n_buckets - 1)
    return buckets + torch.where(is_small, distance, log_bucket)


class RelativePositionBias(nn.Module):
    """Learned ``[n_heads]`` bias per relative-distance bucket -> ``[1, n_heads, Lq, Lk]``."""

    def __init__(self, n_heads, n_buckets, max_distance, bidirectional):
        super().__init__()
        self.n_buckets = n_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.bias = nn.Embedding(n_buckets, n_heads)

    def forward(self, query_length, key_length):
        buckets = relative_position_buckets(query_length, key_length, self.n_buckets, self.max_distance,
                                            self.bidirectional, self.bias.weight.device)  # [Lq, Lk]
        return self.bias(buckets).permute(2, 0, 1).unsqueeze(0)  # [1, H, Lq, Lk]


class Attention(nn.Module):
    """Multi-head attention with an additive ``[*, H, Lq, Lk]`` bias (position bias and masks)."""

    def __init__(self, d_model, n_heads, d_head, dropout_prob):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.query = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.key = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.value = nn.Linear(d_model, n_heads * d_head, bias=False)
        self.output = nn.Linear(n_heads * d_head, d_model, bias=False)
        self.dropout_prob = dropout_prob

    def _heads(self, x):
        return x.view(x.size(0), x.size(1), self.n_heads, self.d_head).transpose(1, 2)  # [B, H, L, d]

    def forward(self, x, context, bias):
        """``x [B * G, Lq, D]`` attends to ``context [B, Lk, D]``; ``G`` > 1 query groups share one context.

        Beam search asks with ``G`` beams per example: their queries are stacked along the query
        axis of their example (exact for attention, whose query rows are independent), so the
        context's keys and values are computed once per example, not once per beam.
        """
        groups = x.size(0) // context.size(0)
        if groups * context.size(0) != x.size(0):
            raise ValueError(f"{x.size(0)} query rows do not split into groups over {context.size(0)} contexts")
        length = x.size(1)
        stacked = x.reshape(context.size(0), groups * length, x.size(2))  # [B, G * Lq, D]
        q = self._heads(self.query(stacked))
        k, v = self._heads(self.key(context)), self._heads(self.value(context))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.dropout_prob if self.training else 0.0)  # [B, H, G*Lq, d]
        return self.output(out.transpose(1, 2).reshape(x.size(0), length, -1))  # [B * G, Lq, D]


class FeedForward(nn.Module):
    """``Linear(in_dim, d_ff) -> activation -> dropout -> Linear(d_ff, d_model)``; ``in_dim`` may exceed d_model."""

    def __init__(self, in_dim, d_ff, d_model, dropout_prob, activation="relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"Unknown activation '{activation}'; use one of {sorted(ACTIVATIONS)}")
        self.net = nn.Sequential(nn.Linear(in_dim, d_ff), ACTIVATIONS[activation](), nn.Dropout(dropout_prob),
                                 nn.Linear(d_ff, d_model))

    def forward(self, x, behavior_vectors=None, routes=None):
        if behavior_vectors is not None:
            x = torch.cat([x, behavior_vectors], dim=-1)
        return self.net(x)


def padding_bias(key_padding, dtype):
    """``[B, Lk]`` bool (True = padding) -> ``[B, 1, 1, Lk]`` additive mask (large negative, finite: no NaN rows)."""
    return torch.zeros(key_padding.shape, dtype=dtype, device=key_padding.device).masked_fill(
        key_padding, torch.finfo(dtype).min / 2)[:, None, None, :]


def causal_bias(length, dtype, device):
    """``[1, 1, L, L]``: 0 on and below the diagonal, large negative above."""
    future = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    return torch.zeros(length, length, dtype=dtype, device=device).masked_fill(
        future, torch.finfo(dtype).min / 2)[None, None]


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + FFN."""

    def __init__(self, d_model, n_heads, d_head, ffn, dropout_prob):
        super().__init__()
        self.self_norm, self.ffn_norm = nn.RMSNorm(d_model), nn.RMSNorm(d_model)
        self.self_attention = Attention(d_model, n_heads, d_head, dropout_prob)
        self.ffn = ffn
        self.dropout = nn.Dropout(dropout_prob)

    def forward(self, x, self_bias, behavior_vectors=None, routes=None):
        normed = self.self_norm(x)
        x = x + self.dropout(self.self_attention(normed, normed, self_bias))
        return x + self.dropout(self.ffn(self.ffn_norm(x), behavior_vectors, routes))


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention + cross-attention to the encoder + FFN."""

    def __init__(self, d_model, n_heads, d_head, ffn, dropout_prob):
        super().__init__()
        self.self_norm, self.cross_norm, self.ffn_norm = nn.RMSNorm(d_model), nn.RMSNorm(d_model), nn.RMSNorm(d_model)
        self.self_attention = Attention(d_model, n_heads, d_head, dropout_prob)
        self.cross_attention = Attention(d_model, n_heads, d_head, dropout_prob)
        self.ffn = ffn
        self.dropout = nn.Dropout(dropout_prob)

    def forward(self, x, memory, self_bias, cross_bias, behavior_vectors=None, routes=None):
        normed = self.self_norm(x)
        x = x + self.dropout(self.self_attention(normed, normed, self_bias))
        x = x + self.dropout(self.cross_attention(self.cross_norm(x), memory, cross_bias))
        return x + self.dropout(self.ffn(self.ffn_norm(x), behavior_vectors, routes))
