"""The item side of the synthetic data: categories (grouped), Zipf popularity and the tables that
sample from it, latent item factors and the content vectors derived from them."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from mbrec.data.synthetic.sizes import (
    CONTENT_STREAM, DEFAULT_SEED, DEFAULT_SIZE, ITEM_STREAM, LATENT_STREAM, ParamsLike, _key, resolve_params,
)

# --------------------------------------------------------------------------- items
CATS_PER_GROUP = 5           # categories per group (drift goes mostly to siblings)
CATEGORY_SIZE_EXPONENT = 0.5  # Zipf exponent of category sizes
ZIPF_OFFSET = 10.0           # popularity weight = (rank + offset) ** -exponent
LATENT_DIM = 16
CATEGORY_SPREAD = 0.6        # std of category centroid around its group centroid
ITEM_SPREAD = 0.5            # std of item factors around their category centroid
CONTENT_DIM = 32
CONTENT_NOISE = 0.5          # std of the additive noise on content vectors;
#                              the signal part has per-dim std ~1.3, i.e. SNR ~ 7


# =========================================================================== items
class _ItemTables:
    """Item-side tables needed for sampling (categories and popularity)."""

    def __init__(self, params: dict, seed: int):
        n_items, n_cat = int(params["n_items"]), int(params["n_categories"])
        rng = np.random.default_rng([seed, ITEM_STREAM])
        cat_w = rng.permutation(np.arange(1, n_cat + 1, dtype=np.float64) ** -CATEGORY_SIZE_EXPONENT)
        extra = rng.choice(n_cat, size=n_items - n_cat, p=cat_w / cat_w.sum())
        self.item_cat = rng.permutation(np.concatenate([np.arange(n_cat), extra])).astype(np.int64)
        rank = rng.permutation(n_items).astype(np.float64)
        weight = (rank + ZIPF_OFFSET) ** -float(params["zipf_exponent"])
        # items ordered by category; cumulative popularity for inverse-CDF sampling
        self.order = np.argsort(self.item_cat, kind="stable")
        self.cum_w = np.cumsum(weight[self.order])
        self.total_w = self.cum_w[-1]
        cat_sorted = self.item_cat[self.order]
        self.cat_start = np.searchsorted(cat_sorted, np.arange(n_cat), side="left")
        self.cat_end = np.searchsorted(cat_sorted, np.arange(n_cat), side="right")
        cum0 = np.concatenate([[0.0], self.cum_w])
        self.cat_lo_w = cum0[self.cat_start]
        self.cat_hi_w = cum0[self.cat_end]
        cat_pop = self.cat_hi_w - self.cat_lo_w
        self.cat_cum = np.cumsum(cat_pop / cat_pop.sum())
        self.n_cat = n_cat
        self.n_items = n_items

    def sample_categories(self, rng, shape):
        u = rng.random(shape)
        return np.minimum(np.searchsorted(self.cat_cum, u, side="right"), self.n_cat - 1)

    def sample_in_category(self, rng, cats):
        u = rng.random(cats.shape)
        target = self.cat_lo_w[cats] + u * (self.cat_hi_w[cats] - self.cat_lo_w[cats])
        pos = np.searchsorted(self.cum_w, target, side="right")
        pos = np.clip(pos, self.cat_start[cats], self.cat_end[cats] - 1)
        return self.order[pos]

    def sample_global(self, rng, n):
        pos = np.searchsorted(self.cum_w, rng.random(n) * self.total_w, side="right")
        return self.order[np.minimum(pos, self.n_items - 1)]


@lru_cache(maxsize=4)
def _item_tables(key: tuple, seed: int) -> _ItemTables:
    return _ItemTables(dict(key), seed)


def item_categories(size: ParamsLike = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Category id (0..n_categories-1) of every item, int64 ``[n_items]``."""
    params = resolve_params(size)
    return _item_tables(_key(params), seed).item_cat.copy()


def item_latent_factors(size: ParamsLike = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Latent item factors ``[n_items, LATENT_DIM]`` float32 (group + category + item parts)."""
    params = resolve_params(size)
    cats = _item_tables(_key(params), seed).item_cat
    n_cat = int(params["n_categories"])
    n_groups = -(-n_cat // CATS_PER_GROUP)
    rng = np.random.default_rng([seed, LATENT_STREAM])
    group_c = rng.standard_normal((n_groups, LATENT_DIM))
    cat_c = group_c[np.arange(n_cat) // CATS_PER_GROUP] + CATEGORY_SPREAD * rng.standard_normal((n_cat, LATENT_DIM))
    lat = cat_c[cats].astype(np.float32)
    lat += (ITEM_SPREAD * rng.standard_normal((len(cats), LATENT_DIM))).astype(np.float32)
    return lat


def item_content(size: ParamsLike = DEFAULT_SIZE, seed: int = DEFAULT_SEED,
                 dim: int = CONTENT_DIM, noise: float = CONTENT_NOISE) -> np.ndarray:
    """Dense content vectors float32 ``[n_items, dim]`` (row i = item id i).

    ``content = latent @ W / sqrt(LATENT_DIM) + noise * N(0, I)`` with a
    fixed random Gaussian projection ``W``; items of the same category (and, less
    so, the same group) have similar content vectors. ``noise = 0`` gives the clean
    signal (the ground truth of a denoiser); the noise draw does not depend on ``noise``,
    so two levels differ only in its scale.
    """
    lat = item_latent_factors(size, seed)
    rng = np.random.default_rng([seed, CONTENT_STREAM, dim])
    proj = (rng.standard_normal((LATENT_DIM, dim)) / math.sqrt(LATENT_DIM)).astype(np.float32)
    out = lat @ proj
    out += (noise * rng.standard_normal(out.shape)).astype(np.float32)
    return out.astype(np.float32, copy=False)
