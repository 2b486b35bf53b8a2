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
        self.scale = d_head ** -0.5  # F.scaled_dot_product_attention's default, which this layer uses

    def _heads(self, x):
        return x.view(x.size(0), x.size(1), self.n_heads, self.d_head).transpose(1, 2)  # [B, H, L, d]

    def project_keys_values(self, context):
        """``[B, Lk, D]`` -> keys and values ``[B, H, Lk, d]``."""
        return self._heads(self.key(context)), self._heads(self.value(context))

    def attend(self, x, keys, values, bias):
        """``x [B * G, Lq, D]`` attends to keys and values ``[B, H, Lk, d]``; ``G`` > 1 query groups share them.

        Beam search asks with ``G`` beams per example: their queries are stacked along the query
        axis of their example (exact for attention, whose query rows are independent), so the
        context's keys and values are computed once per example, not once per beam.
        """
        rows, length = x.size(0), x.size(1)
        stacked = x.reshape(keys.size(0), rows // keys.size(0) * length, x.size(2))  # [B, G * Lq, D]
        out = F.scaled_dot_product_attention(self._heads(self.query(stacked)), keys, values, attn_mask=bias,
                                             dropout_p=self.dropout_prob if self.training else 0.0)  # [B, H, G*Lq, d]
        return self.output(out.transpose(1, 2).reshape(rows, length, -1))  # [B * G, Lq, D]

    def forward(self, x, context, bias):
        """``x [B * G, Lq, D]`` attends to ``context [B, Lk, D]``; ``G`` > 1 query groups share one context."""
        groups = x.size(0) // context.size(0)
        if groups * context.size(0) != x.size(0):
            raise ValueError(f"{x.size(0)} query rows do not split into groups over {context.size(0)} contexts")
        if self.absorbs(x, groups * x.size(1), context.size(1), bias):
            stacked = x.reshape(context.size(0), groups * x.size(1), x.size(2))  # [B, G * Lq, D]
            return self.attend_absorbed(stacked, context, bias).reshape(x.shape)
        return self.attend(x, *self.project_keys_values(context), bias)

    def absorbs(self, x, n_queries, n_keys, bias):
        """Whether to read the context with :meth:`attend_absorbed`: on CPU, without attention dropout, with a
        bias along the keys only, and when it needs fewer multiplications than projecting the context's keys and
        values once, for ``n_queries`` queries in all (over all calls) reading ``n_keys`` context tokens."""
        if x.device.type != "cpu" or (self.training and self.dropout_prob > 0):
            return False  # CUDA: fused attention kernels; dropout: keep F.scaled_dot_product_attention's draws
        if bias is not None and bias.shape[-3:-1] != (1, 1):
            return False
        d_model, inner = x.size(-1), self.n_heads * self.d_head
        absorbed = n_queries * self.n_heads * d_model * 2 * (d_model + n_keys)
        projected = n_keys * d_model * 2 * inner + n_queries * (2 * d_model * inner + 2 * inner * n_keys)
        return absorbed < projected

    def attend_absorbed(self, x, context, bias):
        """Cross-attention of ``x [B, Lq, D]`` to ``context [B, Lk, D]`` without projecting the context.

        Per head ``h``, ``q_h k_h^T = x Wq_h^T Wk_h m^T`` and ``p v_h Wo_h^T = p m Wv_h^T Wo_h^T``:
        with the products ``Wq_h^T Wk_h`` and ``Wo_h Wv_h`` (``[D, D]`` each) formed first, the
        scores and the output come straight from the context ``m``, whose keys and values are
        never computed: the same function of the same weights, summed in another order. Why: in
        MBGen's decoder few queries (4 per example in training; in a beam search the beams' new
        positions, 2 + 2 * beam_size per example when told the behavior) read a long context (up
        to 81 tokens), and projecting every context token to the keys and values of all heads of
        4 decoder layers was a quarter of the multiplications in the linear layers of a training
        step (retailrocket_f10, d_model 64). :meth:`absorbs` says when it is cheaper. ``bias``
        may vary along the keys only (``[B, 1, 1, Lk]``, the padding).
        """
        batch, length, d_model = x.shape
        heads, d_head = self.n_heads, self.d_head
        query = (self.query.weight * self.scale).view(heads, d_head, d_model)
        key = self.key.weight.view(heads, d_head, d_model)
        query_key = torch.matmul(key.transpose(1, 2), query).reshape(heads * d_model, d_model)  # [h * D + e, c]
        value = self.value.weight.view(heads, d_head, d_model)
        output = self.output.weight.view(d_model, heads, d_head).transpose(0, 1)  # [H, D, d]
        value_output = torch.matmul(output, value).transpose(0, 1).reshape(d_model, heads * d_model)  # [c, h * D + e]
        queries = F.linear(x, query_key).view(batch, length * heads, d_model)  # [B, Lq * H, D]
        scores = torch.matmul(queries, context.transpose(1, 2))  # [B, Lq * H, Lk]
        if bias is not None:
            scores = scores.add_(bias.reshape(bias.size(0), 1, bias.size(-1)))  # in place: not needed for backward
        attended = torch.matmul(scores.softmax(dim=-1), context)  # [B, Lq * H, D]
        return F.linear(attended.view(batch, length, heads * d_model), value_output)  # [B, Lq, D]


class DecoderCache:
    """What one decoder layer keeps between the steps of a beam search.

    The cross-attention's view of the encoder output ``memory [B, S, D]``: either the memory
    itself, read by :meth:`Attention.attend_absorbed`, or (``memory_keys``/``memory_values``
    ``[B, H, S, d]``) its keys and values, the same at every step, so computed once per search
    instead of once per step; whichever needs fewer multiplications for ``n_queries`` queries
    per example over the search (:meth:`Attention.absorbs`). ``keys``/``values``
    ``[B * W, H, T, d]``: the self-attention's keys and values of the positions decoded so far;
    a position's depend on the positions up to it only (causal), so each is computed once, when
    its token is appended, and follows its beam (:meth:`reorder`).
    """

    def __init__(self, cross_attention, memory, cross_bias, n_queries):
        self.memory, self.memory_keys, self.memory_values = memory, None, None
        if not cross_attention.absorbs(memory, n_queries, memory.size(1), cross_bias):
            self.memory_keys, self.memory_values = cross_attention.project_keys_values(memory)
        self.keys = self.values = None

    @property
    def length(self):
        return 0 if self.keys is None else self.keys.size(2)

    def reorder(self, rows):
        """Keep the rows (beams) ``rows [B * W']`` of the self-attention cache, in that order."""
        self.keys, self.values = self.keys.index_select(0, rows), self.values.index_select(0, rows)


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

    def step(self, x, cache, self_bias, cross_bias, behavior_vectors=None, routes=None):
        """:meth:`forward` (inference: no dropout) of the positions after ``cache.length`` only: ``x [B * W, t, D]``.

        ``self_bias [1, H, t, cache.length + t]`` (the new positions' rows of the causal position
        bias); the new positions' keys and values join ``cache``.
        """
        normed = self.self_norm(x)
        keys, values = self.self_attention.project_keys_values(normed)
        if cache.keys is not None:
            keys, values = torch.cat([cache.keys, keys], dim=2), torch.cat([cache.values, values], dim=2)
        cache.keys, cache.values = keys, values
        x = x + self.self_attention.attend(normed, keys, values, self_bias)
        normed = self.cross_norm(x)
        if cache.memory_keys is None:
            memory = cache.memory
            stacked = normed.reshape(memory.size(0), -1, normed.size(2))  # the beams of an example: [B, W * t, D]
            x = x + self.cross_attention.attend_absorbed(stacked, memory, cross_bias).reshape(x.shape)
        else:
            x = x + self.cross_attention.attend(normed, cache.memory_keys, cache.memory_values, cross_bias)
        return x + self.ffn(self.ffn_norm(x), behavior_vectors, routes)
