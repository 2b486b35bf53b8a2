"""Tests of the embedded synthetic MBSR generator (mbrec.data.synthetic)."""

import numpy as np
import pandas as pd
import pytest

from mbrec.data import synthetic as syn

SMALL = syn.SIZES["small"]


@pytest.fixture(scope="module")
def small():
    return syn.generate_interactions("small", seed=2024)


def _concat(size, seed, upc):
    return pd.concat(list(syn.iter_interaction_chunks(size, seed, users_per_chunk=upc)), ignore_index=True)


def test_columns_dtypes_vocabulary(small):
    assert list(small.columns) == ["user_id", "item_id", "behavior", "timestamp"]
    assert small.user_id.dtype == np.int64
    assert small.item_id.dtype == np.int64
    assert small.timestamp.dtype == np.int64
    assert set(small.behavior.unique()) == set(syn.BEHAVIORS)
    assert all(isinstance(b, str) for b in small.behavior.iloc[:100])
    assert small.user_id.nunique() == SMALL["n_users"]
    assert small.user_id.min() == 0 and small.user_id.max() == SMALL["n_users"] - 1
    assert small.item_id.min() >= 0 and small.item_id.max() < SMALL["n_items"]
    assert small.groupby("user_id").size().min() >= syn.MIN_ENGAGEMENTS
    assert 30_000 <= len(small) <= 45_000  # SIZES["small"]: 1,200 users x ~30 rows
    mean = len(small) / SMALL["n_users"]
    assert abs(mean - SMALL["mean_interactions"]) / SMALL["mean_interactions"] < 0.1
    # realistic 9-day span starting 2017-11-25
    assert small.timestamp.min() >= syn.START_TIMESTAMP
    assert small.timestamp.max() < syn.START_TIMESTAMP + syn.SPAN_S + 3600


def test_sorted_strictly_increasing_within_user(small):
    u = small.user_id.to_numpy()
    t = small.timestamp.to_numpy()
    assert np.all(np.diff(u) >= 0)
    same = u[1:] == u[:-1]
    assert np.all(np.diff(t)[same] > 0)


def test_deterministic_and_seed_dependent(small):
    again = syn.generate_interactions("small", seed=2024)
    pd.testing.assert_frame_equal(small, again)
    other = syn.generate_interactions("small", seed=7)
    assert len(other) != len(small) or not other.equals(small)
    np.testing.assert_array_equal(syn.item_categories("small", 2024), syn.item_categories("small", 2024))
    assert not np.array_equal(syn.item_categories("small", 2024), syn.item_categories("small", 7))
    np.testing.assert_array_equal(syn.item_content("small", 2024), syn.item_content("small", 2024))


def test_independent_of_chunking(small):
    a = _concat("small", 2024, 100)
    b = _concat("small", 2024, 1000)
    c = _concat("small", 2024, 777)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c)
    pd.testing.assert_frame_equal(a, small)


def test_chunks_do_not_split_users():
    seen = set()
    for chunk in syn.iter_interaction_chunks("small", 2024, users_per_chunk=300):
        users = set(chunk.user_id.unique())
        assert len(users) <= 300
        assert not users & seen
        seen |= users
    assert len(seen) == SMALL["n_users"]


def test_funnel_ratios(small):
    shares = small.behavior.value_counts(normalize=True)
    for behavior, target in syn.FUNNEL_TARGETS.items():
        assert abs(shares[behavior] - target) <= max(0.2 * target, 0.005), (behavior, shares[behavior])
    assert shares["view"] > shares["cart"] > shares["fav"] > shares["buy"]


def test_popularity_heavy_tailed(small):
    views = small[small.behavior == "view"].item_id.value_counts()
    top = views.iloc[: SMALL["n_items"] // 10].sum()
    assert top / views.sum() > 0.4


def test_buys_preceded_by_view_or_cart(small):
    t = small.assign(pos=np.arange(len(small)))
    pre = t[t.behavior.isin(["view", "cart"])].groupby(["user_id", "item_id"]).pos.min().rename("first_pre")
    buys = t[t.behavior == "buy"].join(pre, on=["user_id", "item_id"])
    frac = (buys.first_pre < buys.pos).mean()
    assert frac > 0.7
    # a large part of buys come after other items were viewed in between
    assert len(buys) > 500  # ~2% of the ~36k small rows


def test_carted_items_are_bought_later(small):
    """The multi-behavior signal: a buy is mostly of an item carted/faved before."""
    t = small.assign(pos=np.arange(len(small)))
    cf = t[t.behavior.isin(["cart", "fav"])].groupby(["user_id", "item_id"]).pos.min().rename("first_cf")
    buys = t[t.behavior == "buy"].join(cf, on=["user_id", "item_id"])
    assert (buys.first_cf < buys.pos).mean() > 0.7


def test_categories_and_content():
    cats = syn.item_categories("small")
    assert cats.dtype == np.int64 and cats.shape == (SMALL["n_items"],)
    assert cats.min() == 0 and cats.max() == SMALL["n_categories"] - 1
    content = syn.item_content("small", dim=32)
    assert content.dtype == np.float32 and content.shape == (SMALL["n_items"], 32)
    assert syn.item_content("small", dim=8).shape == (SMALL["n_items"], 8)
    x = content / np.linalg.norm(content, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    a = rng.integers(0, len(x), 20_000)
    b = rng.integers(0, len(x), 20_000)
    random_sim = np.mean(np.sum(x[a] * x[b], axis=1))
    same = []
    order = np.argsort(cats, kind="stable")
    sc = cats[order]
    starts = np.searchsorted(sc, np.arange(SMALL["n_categories"]))
    ends = np.searchsorted(sc, np.arange(SMALL["n_categories"]), side="right")
    for s, e in zip(starts, ends):
        if e - s >= 2:
            idx = order[s:e]
            same.append(np.mean(np.sum(x[idx[:-1]] * x[idx[1:]], axis=1)))
    assert np.mean(same) > random_sim + 0.2
    # content is a noisy function of the latent factors
    lat = syn.item_latent_factors("small")
    assert lat.shape == (SMALL["n_items"], syn.LATENT_DIM)
    coef, *_ = np.linalg.lstsq(lat, content, rcond=None)
    resid = content - lat @ coef
    r2 = 1 - resid.var() / content.var()
    assert 0.5 < r2 < 0.99


def test_interest_drift(small):
    """Early and late halves of a user's history overlap less than under a random order."""
    cats = syn.item_categories("small")

    def overlap(df):
        pos = df.groupby("user_id").cumcount()
        n = df.groupby("user_id").user_id.transform("size")
        early = df[pos < n // 2].groupby("user_id").cat.agg(set)
        late = df[pos >= n // 2].groupby("user_id").cat.agg(set)
        return np.mean([len(e & l) / len(e | l) for e, l in zip(early, late)])

    df = small.assign(cat=cats[small.item_id.to_numpy()])
    shuffled = df.sample(frac=1.0, random_state=0).sort_values("user_id", kind="stable")
    real, rand = overlap(df), overlap(shuffled)
    assert 0.15 < real < rand - 0.05
    # interests concentrate: a user touches few of the categories
    assert df.groupby("user_id").cat.nunique().mean() < 0.5 * SMALL["n_categories"]


def test_unknown_size_and_params():
    with pytest.raises(ValueError, match="small"):
        list(syn.iter_interaction_chunks("huge"))
    with pytest.raises(ValueError):
        syn.item_content("nope")
    p = dict(n_users=300, n_items=500, n_categories=10, mean_interactions=20.0)
    df = syn.generate_interactions(p, seed=1)
    assert df.user_id.nunique() == 300 and df.item_id.max() < 500
    assert syn.item_categories(p, 1).max() < 10


def test_all_sizes_defined():
    for name in ("small", "medium", "large", "ijcai"):
        p = syn.resolve_params(name)
        assert {"n_users", "n_items", "n_categories", "mean_interactions"} <= set(p)
    ij = syn.SIZES["ijcai"]
    assert ij["n_users"] * ij["mean_interactions"] >= 25_000_000


def test_every_generator_module_is_in_the_prepared_cache_fingerprint():
    """The generator's source stands in for raw data: editing any module that makes rows or item
    vectors must invalidate prepared caches, whichever module of the package it is in."""
    import inspect
    from pathlib import Path

    from mbrec.data.prepare import dataset_spec, effective_options, locate_raw_files

    spec = dataset_spec("synthetic")
    fingerprinted = {Path(path).resolve() for path in locate_raw_files(spec, effective_options(spec, {})).values()}
    defining = {Path(inspect.getsourcefile(getattr(syn, name))).resolve()
                for name in syn.__all__ if callable(getattr(syn, name))}
    assert len(defining) > 1  # the generator spans several modules
    assert defining <= fingerprinted
