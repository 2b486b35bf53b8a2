"""Gaussian (mean, diagonal covariance) embeddings and 2-Wasserstein self-attention.

Stochastic self-attention as in STOSA (Fan et al., "Sequential Recommendation via Stochastic
Self-Attention", WWW 2022) and PBAT (Su et al., MM 2023): every token is a Gaussian
``N(mu, diag(sigma^2))``; the attention logit of query ``i`` and key ``j`` is ``-W2^2`` between their
distributions, with ``W2^2(N1, N2) = ||mu1 - mu2||^2 + ||sigma1 - sigma2||^2`` for diagonal
covariances; the output mean is the weighted sum of value means and the output covariance the sum
of value covariances weighted by the squared weights (a weighted sum of independent Gaussians).
Scales are kept positive with ``ELU + 1``.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from mbrec.layers.attention import ACTIVATIONS


def positive(x):
    """``ELU(x) + 1 > 0``: the standard-deviation parameterisation of STOSA/PBAT."""
    return F.elu(x) + 1.0


def squared_wasserstein(mean_a, std_a, mean_b, std_b):
    """``W2^2`` of every pair: ``[..., N, D]`` x ``[..., M, D]`` -> ``[..., N, M]`` (diagonal Gaussians)."""
    def pairwise_squared_distance(a, b):
        return (a.square().sum(-1, keepdim=True) + b.square().sum(-1).unsqueeze(-2)
                - 2.0 * a @ b.transpose(-2, -1))
    return (pairwise_squared_distance(mean_a, mean_b) + pairwise_squared_distance(std_a, std_b)).clamp_min(0.0)


class WassersteinSelfAttention(nn.Module):
    """Multi-head attention over Gaussian tokens; ``scores_bias`` ``[B, H, L, L]`` is added to the logits."""

    def __init__(self, hidden_size, n_heads, attn_dropout_prob):
        super().__init__()
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = hidden_size // n_heads
        self.mean_qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.std_qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.mean_output = nn.Linear(hidden_size, hidden_size)
        self.std_output = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = nn.Dropout(attn_dropout_prob)

    def _heads(self, x):
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, L, d_head]

    def forward(self, mean, std, key_mask, scores_bias=None):
        """``mean``, ``std`` ``[B, L, D]``; ``key_mask`` ``[B, 1 or L, L]`` True where a query may not look."""
        mean_q, mean_k, mean_v = (self._heads(x) for x in self.mean_qkv(mean).chunk(3, dim=-1))
        std_q, std_k, std_v = (self._heads(positive(x)) for x in self.std_qkv(std).chunk(3, dim=-1))
        scores = -squared_wasserstein(mean_q, std_q, mean_k, std_k) / math.sqrt(self.head_dim)  # [B, H, L, L]
        if scores_bias is not None:
            scores = scores + scores_bias
        scores = scores.masked_fill(key_mask.unsqueeze(1), torch.finfo(scores.dtype).min)
        weights = self.attn_dropout(torch.softmax(scores, dim=-1))
        out_mean = weights @ mean_v  # [B, H, L, d_head]
        out_std = (weights.square() @ std_v.square()).clamp_min(1e-12).sqrt()  # std of the weighted sum
        batch, _, length, _ = out_mean.shape
        merge = lambda x: x.transpose(1, 2).reshape(batch, length, -1)  # noqa: E731
        return self.mean_output(merge(out_mean)), self.std_output(merge(out_std))


class WassersteinEncoderLayer(nn.Module):
    """Post-LN block on both the mean and the (pre-activation) std stream, each with its own FFN."""

    def __init__(self, hidden_size, n_heads, inner_size, hidden_dropout_prob, attn_dropout_prob, hidden_act="gelu",
                 layer_norm_eps=1e-12):
        super().__init__()
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"Unknown hidden_act '{hidden_act}'; use one of {sorted(ACTIVATIONS)}")
        self.attention = WassersteinSelfAttention(hidden_size, n_heads, attn_dropout_prob)
        self.dropout = nn.Dropout(hidden_dropout_prob)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_size, eps=layer_norm_eps) for _ in range(4))
        self.ffns = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden_size, inner_size), ACTIVATIONS[hidden_act](),
                          nn.Dropout(hidden_dropout_prob), nn.Linear(inner_size, hidden_size))
            for _ in range(2))  # one FFN for the mean stream, one for the std stream

    def forward(self, mean, std, key_mask, scores_bias=None):
        attended_mean, attended_std = self.attention(mean, std, key_mask, scores_bias)
        mean = self.norms[0](mean + self.dropout(attended_mean))
        std = self.norms[1](std + self.dropout(attended_std))
        mean = self.norms[2](mean + self.dropout(self.ffns[0](mean)))
        std = self.norms[3](std + self.dropout(self.ffns[1](std)))
        return mean, std
