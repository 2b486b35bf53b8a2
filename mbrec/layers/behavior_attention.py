"""Behavior-specific Transformer blocks: MB-STR's multi-behavior sparse Transformer (MBST) and its
behavior-pair relative position bias (the multi-behavior sequential pattern generator, MBSPG).

Yuan, Guo, Yu, Zhang, Wang, Zhuang, "Multi-Behavior Sequential Transformer Recommender", SIGIR 2022.
Every token is routed by its behavior id to its own parameter set (a hard, behavior-routed sparse
layer): the query/key/value projections and both feed-forward layers are
:class:`BehaviorSpecificLinear`. The attention score of query ``i`` and key ``j`` gets a learned bias
per head that depends on the behavior pair ``(b_i, b_j)`` and the clipped relative distance
``j - i`` (:class:`BehaviorPairRelativeBias`). Behavior id 0 is padding and "unknown" (a slot whose
behavior is not told): it has a parameter set too. Padding is masked as a key, so it never changes
a real position's output. Post-LN blocks as BERT4Rec.
"""

import math

import torch
from torch import nn

from mbrec.layers.attention import ACTIVATIONS


class BehaviorSpecificLinear(nn.Module):
    """``x [..., in]`` with behavior ids ``[...]`` -> ``[..., out]``, using ``weight[b]``, ``bias[b]`` per token."""

    def __init__(self, n_behaviors, in_features, out_features):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_behaviors, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(n_behaviors, out_features))
        self.reset_parameters(1.0 / math.sqrt(in_features))

    def reset_parameters(self, std):
        """Normal(0, std) weights, zero biases (every behavior alike)."""
        with torch.no_grad():
            self.weight.normal_(0.0, std)
            self.bias.zero_()

    def forward(self, x, behaviors):
        n_behaviors, in_features, out_features = self.weight.shape
        flat = x.reshape(-1, in_features)  # [N, in]
        # Every behavior's map in one matmul, then each token keeps its own: one dense product is
        # faster than a gather/scatter per behavior at these sizes (a handful of behaviors).
        every = (flat @ self.weight.transpose(0, 1).reshape(in_features, -1)).view(-1, n_behaviors, out_features)
        every = every + self.bias  # [N, n_behaviors, out]
        index = behaviors.reshape(-1, 1, 1).expand(-1, 1, out_features)
        return every.gather(1, index).squeeze(1).view(*x.shape[:-1], out_features)


class BehaviorPairRelativeBias(nn.Module):
    """``[B, L]`` behavior ids -> ``[B, H, L, L]`` bias ``table[h, b_i, b_j, clip(j - i)]``."""

    def __init__(self, n_heads, n_behaviors, max_distance):
        super().__init__()
        if max_distance < 1:
            raise ValueError(f"max_relative_distance must be >= 1, got {max_distance}")
        self.n_behaviors = n_behaviors
        self.max_distance = max_distance
        self.table = nn.Parameter(torch.zeros(n_heads, n_behaviors, n_behaviors, 2 * max_distance + 1))

    def forward(self, behaviors):
        length = behaviors.size(1)
        positions = torch.arange(length, device=behaviors.device)
        distance = (positions.unsqueeze(0) - positions.unsqueeze(1)).clamp(-self.max_distance, self.max_distance)
        n_distances = 2 * self.max_distance + 1
        pair = behaviors.unsqueeze(2) * self.n_behaviors + behaviors.unsqueeze(1)  # [B, L, L]: (query, key)
        index = pair * n_distances + (distance + self.max_distance)  # [B, L, L]
        bias = self.table.flatten(1)[:, index]  # [H, B, L, L]
        return bias.transpose(0, 1)  # [B, H, L, L]


class BehaviorSpecificSelfAttention(nn.Module):
    """Multi-head self-attention with behavior-specific q/k/v and the behavior-pair relative bias."""

    def __init__(self, hidden_size, n_heads, n_behaviors, attn_dropout_prob, max_distance):
        super().__init__()
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = hidden_size // n_heads
        self.query_key_value = BehaviorSpecificLinear(n_behaviors, hidden_size, 3 * hidden_size)
        self.relative_bias = BehaviorPairRelativeBias(n_heads, n_behaviors, max_distance)
        self.output = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = nn.Dropout(attn_dropout_prob)

    def _heads(self, x):
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, L, d_head]

    def forward(self, hidden, behaviors, padding_mask):
        """``hidden [B, L, D]``, ``behaviors [B, L]``, ``padding_mask [B, L]`` (True = pad) -> ``[B, L, D]``."""
        query, key, value = (self._heads(part) for part in self.query_key_value(hidden, behaviors).chunk(3, dim=-1))
        scores = query @ key.transpose(-2, -1) / math.sqrt(self.head_dim) + self.relative_bias(behaviors)
        scores = scores.masked_fill(padding_mask[:, None, None, :], torch.finfo(scores.dtype).min)  # [B, H, L, L]
        context = self.attn_dropout(torch.softmax(scores, dim=-1)) @ value  # [B, H, L, d_head]
        batch, _, length, _ = context.shape
        return self.output(context.transpose(1, 2).reshape(batch, length, -1))


class BehaviorSpecificEncoderLayer(nn.Module):
    """Post-LN block with behavior-specific attention projections and a behavior-specific FFN."""

    def __init__(self, hidden_size, n_heads, inner_size, n_behaviors, hidden_dropout_prob, attn_dropout_prob,
                 hidden_act="gelu", layer_norm_eps=1e-12, max_distance=50):
        super().__init__()
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"Unknown hidden_act '{hidden_act}'; use one of {sorted(ACTIVATIONS)}")
        self.attention = BehaviorSpecificSelfAttention(hidden_size, n_heads, n_behaviors, attn_dropout_prob,
                                                       max_distance)
        self.attention_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.ffn_in = BehaviorSpecificLinear(n_behaviors, hidden_size, inner_size)
        self.ffn_activation = ACTIVATIONS[hidden_act]()
        self.ffn_out = BehaviorSpecificLinear(n_behaviors, inner_size, hidden_size)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout_prob)

    def forward(self, hidden, behaviors, padding_mask):
        hidden = self.attention_norm(hidden + self.dropout(self.attention(hidden, behaviors, padding_mask)))
        inner = self.dropout(self.ffn_activation(self.ffn_in(hidden, behaviors)))
        return self.ffn_norm(hidden + self.dropout(self.ffn_out(inner, behaviors)))


class BehaviorSpecificTransformerEncoder(nn.Module):
    """A stack of :class:`BehaviorSpecificEncoderLayer`: ``[B, L, D]`` -> ``[B, L, D]``."""

    def __init__(self, n_layers, hidden_size, n_heads, inner_size, n_behaviors, hidden_dropout_prob,
                 attn_dropout_prob, hidden_act="gelu", layer_norm_eps=1e-12, max_distance=50):
        super().__init__()
        self.layers = nn.ModuleList(
            BehaviorSpecificEncoderLayer(hidden_size, n_heads, inner_size, n_behaviors, hidden_dropout_prob,
                                         attn_dropout_prob, hidden_act, layer_norm_eps, max_distance)
            for _ in range(n_layers))

    def forward(self, hidden, behaviors, padding_mask):
        for layer in self.layers:
            hidden = layer(hidden, behaviors, padding_mask)
        return hidden
