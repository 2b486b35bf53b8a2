"""Adaptive layer normalisation (AdaLN): a condition vector sets the shift, scale and gate of a block.

Perez et al. (FiLM, AAAI 2018); Peebles & Xie (DiT, ICCV 2023): ``SiLU -> Linear(cond, k * D)``
yields ``k`` modulation vectors; a residual block then computes
``x + gate * f(LN(x) * (1 + scale) + shift)`` with an affine-free LayerNorm.
"""

from torch import nn


def modulate(normed, shift, scale):
    """``normed * (1 + scale) + shift`` (the ``1 +`` keeps a zero condition the identity)."""
    return normed * (1 + scale) + shift


class AdaLNModulation(nn.Module):
    """Condition ``[N, C]`` -> ``n_vectors`` modulation vectors, each ``[N, D]``."""

    def __init__(self, condition_dim, dim, n_vectors):
        super().__init__()
        self.n_vectors = n_vectors
        self.projection = nn.Sequential(nn.SiLU(), nn.Linear(condition_dim, n_vectors * dim))

    def forward(self, condition):
        return self.projection(condition).chunk(self.n_vectors, dim=-1)
