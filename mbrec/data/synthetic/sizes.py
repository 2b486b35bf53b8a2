"""Which synthetic world to generate: the named sizes, their defaults, the resolution of a size
name or parameter dict, and the ids of the random streams (one per part of the generator)."""

from __future__ import annotations

from typing import Mapping, Union

# --------------------------------------------------------------------------- sizes
SIZES: dict[str, dict] = {
    # n_users / n_items / n_categories: vocabulary sizes.
    # mean_interactions: target mean number of rows per user (the realised mean
    #   is within a few percent; every user has >= MIN_ENGAGEMENTS rows).
    # zipf_exponent: exponent of the item popularity power law.
    # small: the README's main command trains on it in minutes on 2 CPU cores.
    "small": dict(n_users=1_200, n_items=2_000, n_categories=20,
                  mean_interactions=30.0, zipf_exponent=0.8),
    "medium": dict(n_users=25_000, n_items=40_000, n_categories=300,
                   mean_interactions=34.0, zipf_exponent=0.8),
    "large": dict(n_users=250_000, n_items=400_000, n_categories=1_000,
                  mean_interactions=34.0, zipf_exponent=0.8),
    # IJCAI-15 (Tmall) scale: ~424k users, ~874k items, ~36M rows in the original.
    "ijcai": dict(n_users=400_000, n_items=800_000, n_categories=1_600,
                  mean_interactions=75.0, zipf_exponent=0.8),
}
DEFAULT_SIZE = "small"
DEFAULT_ITEMS_PER_CATEGORY = 100  # for explicit parameter dicts without n_categories
DEFAULT_SEED = 2024

# --------------------------------------------------------------------------- streams
ITEM_STREAM, LATENT_STREAM, CONTENT_STREAM, USER_STREAM = 0, 1, 2, 3


ParamsLike = Union[str, Mapping]


def resolve_params(size: ParamsLike = DEFAULT_SIZE) -> dict:
    """Return the parameter dict of a size name, or complete an explicit dict.

    A dict must contain ``n_users`` and ``n_items``; missing keys are taken from
    ``SIZES['small']`` (``n_categories`` defaults to ``max(1, n_items // 100)``).
    """
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"unknown synthetic size {size!r}; valid sizes: {sorted(SIZES)}")
        return dict(SIZES[size])
    if isinstance(size, Mapping):
        unknown = set(size) - set(SIZES[DEFAULT_SIZE])
        if unknown:
            raise ValueError(f"unknown synthetic parameters {sorted(unknown)}; "
                             f"valid: {sorted(SIZES[DEFAULT_SIZE])}")
        if "n_users" not in size or "n_items" not in size:
            raise ValueError("explicit synthetic parameters need 'n_users' and 'n_items'")
        params = dict(SIZES[DEFAULT_SIZE])
        params["n_categories"] = max(1, int(size["n_items"]) // DEFAULT_ITEMS_PER_CATEGORY)
        params.update(size)
        if params["n_categories"] > params["n_items"]:
            raise ValueError("n_categories must not exceed n_items")
        return params
    raise ValueError(f"size must be one of {sorted(SIZES)} or a dict, got {size!r}")


def _key(params: dict) -> tuple:
    return tuple(sorted(params.items()))
