"""Deterministic synthetic multi-behavior sequential recommendation data.

This module is the embedded default dataset of ``mbrec``: the benchmark's main
command runs on it without downloading anything.  It imitates the structure of
e-commerce logs such as Taobao *UserBehavior* (behaviors ``view`` / ``fav`` /
``cart`` / ``buy`` over nine days starting 2017-11-25) while being small,
seeded and fast to generate.

Generative process
------------------
Items
    ``n_items`` items are split over ``n_categories`` categories (category sizes
    are mildly Zipf distributed, every category has at least one item).
    Categories are grouped ``CATS_PER_GROUP`` at a time into *groups*
    (think "clothing" > "shoes").  Every item gets a latent factor vector
    ``group centroid + CATEGORY_SPREAD * N(0, I) + ITEM_SPREAD * N(0, I)``
    of dimension ``LATENT_DIM``.  Item popularity is a power law: a random
    permutation of ranks ``r`` gets weight ``(r + ZIPF_OFFSET) ** -zipf_exponent``.

Users, interests and drift
    Each user has ``N_INTERESTS`` interest slots with Dirichlet(``INTEREST_ALPHA``)
    weights; each slot starts at a category drawn proportionally to category
    popularity.  With probability ``P_DRIFT`` a slot *drifts* at a random time
    (uniform in ``DRIFT_TIME_RANGE`` of the time span) to a new category, which
    is a sibling in the same group with probability ``P_DRIFT_SIBLING`` and a
    popularity-drawn category otherwise.  Interests therefore drift over time,
    mostly to related categories.

Sessions and engagements
    A user has ``MIN_ENGAGEMENTS + LogNormal`` *engagements* (one engagement =
    one item considered by the user), spread over ``1 + Poisson`` sessions
    (``ENGAGEMENTS_PER_SESSION`` on average).  Session starts follow a day-uniform,
    diurnal (``DIURNAL_WEIGHTS``) pattern; engagements inside a session are
    separated by exponential gaps (``ENGAGEMENT_GAP_S``).  A session focuses on
    one interest slot (``P_SESSION_FOCUS``); the engagement's category is the
    slot's category at that time (before/after drift), the item is drawn from
    that category proportionally to popularity.  With probability ``P_EXPLORE``
    the item is drawn from global popularity instead, and with ``P_REVISIT`` the
    engagement revisits an item the user engaged with earlier.

Funnel and behavior chains
    Each engagement expands into events of the same item:

    * a first ``view``, plus ``Geometric`` extra views (``P_STOP_REVIEW``),
      mostly within a minute or two, sometimes (``P_REVIEW_LATER``) in a later
      session of the user;
    * ``fav`` with probability ``P_FAV`` and ``cart`` with probability ``P_CART``
      shortly after the first view.  A fraction ``P_CONSIDER_WITHOUT_VIEW`` of
      carts/favs are made straight from a list page, without the view event;
    * ``buy`` with probability ``P_BUY_AFTER_CART`` if carted, ``P_BUY_AFTER_FAV``
      if only faved and ``P_BUY_AFTER_VIEW`` if only viewed.  Buys after a cart
      or fav are usually *delayed* (``P_BUY_DELAYED``): the user comes back
      after ``Exp(BUY_DELAY_LONG_S)`` and buys during the first of *its own
      sessions* starting after that, at a random point of that session, i.e.
      hours to days later with other items in between.  If the user has no such
      session the buy is lost (the item stays "carted but not bought").  The
      other buys are impulse buys minutes later (``BUY_DELAY_SHORT_S``).  With
      probability ``P_VIEW_BEFORE_BUY`` a delayed buy is preceded by a fresh
      view just before it.  A fraction ``P_DIRECT_BUY`` of view-only buys have
      no view at all (bought straight from a list/search page);
    * events falling after the end of the time span are dropped.

    The resulting behavior mix is close to Taobao's (``FUNNEL_TARGETS``:
    view 89.8 %, cart 5.5 %, fav 2.9 %, buy 2.0 %).

Why multi-behavior models can win
    The next ``buy`` is very likely one of the items the user carted (or faved)
    earlier and has not bought yet, but because buys are delayed to a later
    session, several other items are usually viewed in between, so "the most
    recent items" of the item sequence are a weak predictor of the buy.  An
    item-only model cannot tell the carted items apart from the many viewed
    ones; a model that sees behavior tokens (and the target behavior) can.
    ``benchmarks/synthetic_check.py`` verifies this with two heuristics.

Timestamps
    Unix seconds from ``START_TIMESTAMP`` (2017-11-25 00:00:00 UTC) over
    ``SPAN_DAYS`` days.  Within a user, rows are sorted and timestamps are made
    *strictly* increasing (ties are broken in the intended order
    view < fav < cart < buy and shifted by one second), so a few rows may end up
    a handful of seconds past the nominal end of the span.

Determinism
    Item tables come from ``np.random.default_rng([seed, <stream id>])``; users
    are generated in fixed blocks of ``USER_BLOCK`` users, block ``b`` using
    ``np.random.default_rng([seed, USER_STREAM, b])``.  Output therefore only
    depends on ``(size, seed)``, never on ``users_per_chunk``.

Sizes
    See ``SIZES``.  Measured on one CPU core (seed 2024): ``small`` (default)
    1,200 users / 2,000 items / ~36k rows in < 0.1 s; ``medium`` ~0.85M rows in
    ~0.7 s; ``large`` ~8.5M rows; ``ijcai`` (400k users, 800k items, ~30M rows,
    the size of IJCAI-15) ~35 s, streamed chunk by chunk (memory bounded by one
    chunk; ``item_content('ijcai')`` is a 100 MB float32 array).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Iterator, Mapping, Union

import numpy as np
import pandas as pd

__all__ = [
    "SIZES",
    "BEHAVIORS",
    "FUNNEL_TARGETS",
    "iter_interaction_chunks",
    "generate_interactions",
    "item_content",
    "item_categories",
    "item_latent_factors",
    "resolve_params",
    "write_ijcai15_log",
    "item_sellers_brands",
]

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

BEHAVIORS = ("view", "fav", "cart", "buy")  # code order == tie-breaking order
VIEW, FAV, CART, BUY = 0, 1, 2, 3
# Taobao UserBehavior behavior shares, the funnel this generator aims at.
FUNNEL_TARGETS = {"view": 0.898, "cart": 0.055, "fav": 0.029, "buy": 0.020}

# --------------------------------------------------------------------------- time
START_TIMESTAMP = 1_511_568_000  # 2017-11-25 00:00:00 UTC
SPAN_DAYS = 9
SECONDS_PER_DAY = 86_400
SECONDS_PER_HOUR = 3_600
SPAN_S = SPAN_DAYS * SECONDS_PER_DAY
# relative activity per hour of day (evening peak, quiet night)
DIURNAL_WEIGHTS = np.array([3, 2, 1, 1, 1, 1, 2, 3, 4, 5, 6, 6,
                            6, 6, 6, 6, 6, 6, 7, 8, 9, 10, 9, 6], dtype=np.float64)

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

# --------------------------------------------------------------------------- users
USER_BLOCK = 1_000           # users per RNG block (fixes determinism vs chunking)
DEFAULT_USERS_PER_CHUNK = 10_000
MIN_ENGAGEMENTS = 5
ENGAGEMENT_SIGMA = 0.8       # log-normal sigma of the number of engagements
MAX_ENGAGEMENT_FACTOR = 20   # cap: at most this many times the mean
N_INTERESTS = 3
INTEREST_ALPHA = 1.0
P_DRIFT = 0.7
DRIFT_TIME_RANGE = (0.1, 0.9)
P_DRIFT_SIBLING = 0.6
ENGAGEMENTS_PER_SESSION = 10.0
ENGAGEMENT_GAP_S = 90.0
P_SESSION_FOCUS = 0.8
P_EXPLORE = 0.1
P_REVISIT = 0.04

# --------------------------------------------------------------------------- funnel
P_STOP_REVIEW = 0.85         # extra views ~ Geometric(p) - 1 (mean ~0.18)
MAX_EXTRA_VIEWS = 20
P_REVIEW_LATER = 0.1         # an extra view comes in a later session instead of minutes later
REVIEW_GAP_SHORT_S = 60.0
REVIEW_GAP_LONG_S = 6 * SECONDS_PER_HOUR  # then snapped to the next session
P_FAV = 0.035
P_CART = 0.072
FAV_DELAY_S = 60.0
CART_DELAY_S = 60.0
P_BUY_AFTER_CART = 0.45
P_BUY_AFTER_FAV = 0.10
P_BUY_AFTER_VIEW = 0.004
P_BUY_DELAYED = 0.85         # buys after cart/fav that come hours/days later
BUY_DELAY_SHORT_S = 120.0
BUY_DELAY_LONG_S = 1.0 * SECONDS_PER_DAY  # then snapped to the next session
P_VIEW_BEFORE_BUY = 0.1      # delayed buy preceded by a fresh view of the item
VIEW_BEFORE_BUY_GAP_S = 60.0
P_DIRECT_BUY = 0.3           # view-only buys that have no view event at all
P_CONSIDER_WITHOUT_VIEW = 0.4  # carts/favs made from a list page, without a view event
# measured share of generated events that fall inside the span (late re-views and
# late buys are cut); used to calibrate the number of engagements per user
EVENTS_KEPT_FRACTION = 0.98

# --------------------------------------------------------------------------- streams
ITEM_STREAM, LATENT_STREAM, CONTENT_STREAM, USER_STREAM = 0, 1, 2, 3
_USER_KEY_SHIFT = 1 << 40    # > any |timestamp - index| inside a block
_SESSION_KEY_SHIFT = 4.0 * SPAN_S  # > any session time (float key user*shift + time)


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


# =========================================================================== users
def _expected_events_per_engagement() -> float:
    """Approximate mean number of rows produced by one engagement."""
    p_cf = 1 - (1 - P_CART) * (1 - P_FAV)
    p_buy_cf = P_CART * P_BUY_AFTER_CART + (1 - P_CART) * P_FAV * P_BUY_AFTER_FAV
    p_buy_v = (1 - p_cf) * P_BUY_AFTER_VIEW
    extra_views = (1 - P_STOP_REVIEW) / P_STOP_REVIEW
    views = 1 - p_buy_v * P_DIRECT_BUY - p_cf * P_CONSIDER_WITHOUT_VIEW + extra_views + p_buy_cf * P_BUY_DELAYED * P_VIEW_BEFORE_BUY
    return views + P_FAV + P_CART + p_buy_cf + p_buy_v


def _group_starts(sorted_groups: np.ndarray) -> np.ndarray:
    """Index of the first element of each element's group (groups contiguous)."""
    n = len(sorted_groups)
    is_start = np.ones(n, dtype=bool)
    is_start[1:] = sorted_groups[1:] != sorted_groups[:-1]
    return np.maximum.accumulate(np.where(is_start, np.arange(n), 0))


def _exclusive_group_cumsum(values: np.ndarray, sorted_groups: np.ndarray) -> np.ndarray:
    cs = np.cumsum(values)
    start = _group_starts(sorted_groups)
    return cs - cs[start] + values[start] - values


def _generate_block(params: dict, items: _ItemTables, seed: int, block: int) -> dict:
    """Generate the rows of users ``[block*USER_BLOCK, ...)`` as numpy arrays."""
    n_users = int(params["n_users"])
    uid0 = block * USER_BLOCK
    n_u = min(USER_BLOCK, n_users - uid0)
    rng = np.random.default_rng([seed, USER_STREAM, block])

    # ---- engagements and sessions per user
    mean_eng = float(params["mean_interactions"]) / (_expected_events_per_engagement() * EVENTS_KEPT_FRACTION)
    mean_extra = max(mean_eng - MIN_ENGAGEMENTS + 0.5, 1e-3)  # +0.5: floor() below
    mu = math.log(mean_extra) - ENGAGEMENT_SIGMA ** 2 / 2
    n_eng = MIN_ENGAGEMENTS + np.floor(rng.lognormal(mu, ENGAGEMENT_SIGMA, n_u)).astype(np.int64)
    n_eng = np.minimum(n_eng, int(MAX_ENGAGEMENT_FACTOR * mean_eng) + MIN_ENGAGEMENTS)
    n_sess = np.minimum(1 + rng.poisson((n_eng - 1) / ENGAGEMENTS_PER_SESSION), n_eng)
    sess_off = np.concatenate([[0], np.cumsum(n_sess)[:-1]])
    n_s, n_e = int(n_sess.sum()), int(n_eng.sum())
    sess_user = np.repeat(np.arange(n_u), n_sess)
    diurnal_cum = np.cumsum(DIURNAL_WEIGHTS / DIURNAL_WEIGHTS.sum())
    hour = np.minimum(np.searchsorted(diurnal_cum, rng.random(n_s), side="right"), len(DIURNAL_WEIGHTS) - 1)
    sess_start = (rng.integers(0, SPAN_DAYS, n_s) * SECONDS_PER_DAY
                  + (hour + rng.random(n_s)) * SECONDS_PER_HOUR)

    # ---- interests (slots) with drift
    w = rng.gamma(INTEREST_ALPHA, size=(n_u, N_INTERESTS))
    w_cum = np.cumsum(w / w.sum(axis=1, keepdims=True), axis=1)
    cat0 = items.sample_categories(rng, (n_u, N_INTERESTS))
    drift_time = rng.uniform(*DRIFT_TIME_RANGE, size=(n_u, N_INTERESTS)) * SPAN_S
    drift_time[rng.random((n_u, N_INTERESTS)) >= P_DRIFT] = np.inf
    sibling = ((cat0 // CATS_PER_GROUP) * CATS_PER_GROUP
               + rng.integers(0, CATS_PER_GROUP, size=(n_u, N_INTERESTS)))
    sibling = np.minimum(sibling, items.n_cat - 1)
    cat1 = np.where(rng.random((n_u, N_INTERESTS)) < P_DRIFT_SIBLING, sibling,
                    items.sample_categories(rng, (n_u, N_INTERESTS)))

    def draw_slot(users, u):
        return np.minimum((u[:, None] > w_cum[users]).sum(axis=1), N_INTERESTS - 1)

    sess_slot = draw_slot(sess_user, rng.random(n_s))

    # ---- engagements: session, time, slot, category, item
    e_user = np.repeat(np.arange(n_u), n_eng)
    e_sess = sess_off[e_user] + np.floor(rng.random(n_e) * n_sess[e_user]).astype(np.int64)
    perm = np.argsort(e_sess, kind="stable")
    e_sess = e_sess[perm]
    e_user = e_user[perm]
    gaps = rng.exponential(ENGAGEMENT_GAP_S, n_e)
    t0 = sess_start[e_sess] + _exclusive_group_cumsum(gaps, e_sess)
    t0 = np.minimum(t0, SPAN_S - 1.0)
    # sessions sorted by (user, start) for "the user's next session after t" look-ups
    sess_end = sess_start.copy()
    np.maximum.at(sess_end, e_sess, t0)
    s_order = np.lexsort((sess_start, sess_user))
    s_user, s_start, s_end = sess_user[s_order], sess_start[s_order], sess_end[s_order]
    s_key = s_user * _SESSION_KEY_SHIFT + s_start

    def next_session_time(users, t):
        """A random time inside the user's first session starting after ``t`` (inf if none)."""
        pos = np.searchsorted(s_key, users * _SESSION_KEY_SHIFT + t, side="left")
        pos_c = np.minimum(pos, n_s - 1)
        ok = (pos < n_s) & (s_user[pos_c] == users)
        out = s_start[pos_c] + rng.random(len(t)) * (s_end[pos_c] - s_start[pos_c])
        return np.where(ok, out, np.inf)

    slot = np.where(rng.random(n_e) < P_SESSION_FOCUS, sess_slot[e_sess],
                    draw_slot(e_user, rng.random(n_e)))
    drifted = t0 >= drift_time[e_user, slot]
    cat = np.where(drifted, cat1[e_user, slot], cat0[e_user, slot])
    item = items.sample_in_category(rng, cat)
    explore = rng.random(n_e) < P_EXPLORE
    item[explore] = items.sample_global(rng, int(explore.sum()))
    # time order of engagements within user, then revisits of earlier items
    perm = np.lexsort((t0, e_user))
    e_user, t0, item = e_user[perm], t0[perm], item[perm]
    first = _group_starts(e_user)
    rank = np.arange(n_e) - first
    src = first + np.floor(rng.random(n_e) * rank).astype(np.int64)
    revisit = (rng.random(n_e) < P_REVISIT) & (rank > 0)
    item = np.where(revisit, item[src], item)

    # ---- funnel
    n_extra = np.minimum(rng.geometric(P_STOP_REVIEW, n_e) - 1, MAX_EXTRA_VIEWS)
    has_fav = rng.random(n_e) < P_FAV
    has_cart = rng.random(n_e) < P_CART
    p_buy = np.where(has_cart, P_BUY_AFTER_CART, np.where(has_fav, P_BUY_AFTER_FAV, P_BUY_AFTER_VIEW))
    has_buy = rng.random(n_e) < p_buy
    considered = has_cart | has_fav
    direct = has_buy & ~considered & (rng.random(n_e) < P_DIRECT_BUY)
    no_view = direct | (considered & (rng.random(n_e) < P_CONSIDER_WITHOUT_VIEW))
    t_fav = t0 + rng.exponential(FAV_DELAY_S, n_e)
    t_cart = t0 + rng.exponential(CART_DELAY_S, n_e)
    t_prev = np.maximum(t0, np.maximum(np.where(has_fav, t_fav, t0), np.where(has_cart, t_cart, t0)))
    delayed = considered & (rng.random(n_e) < P_BUY_DELAYED)
    t_buy_late = next_session_time(e_user, t_prev + rng.exponential(BUY_DELAY_LONG_S, n_e))
    t_buy = np.where(delayed, t_buy_late, t_prev + rng.exponential(BUY_DELAY_SHORT_S, n_e))
    t_buy = np.where(direct, t0, t_buy)
    pre_view = has_buy & delayed & (rng.random(n_e) < P_VIEW_BEFORE_BUY)
    t_pre = np.maximum(t_buy - rng.exponential(VIEW_BEFORE_BUY_GAP_S, n_e), t_prev)
    # extra views: short or long gaps, cumulated per engagement
    n_x = int(n_extra.sum())
    x_eng = np.repeat(np.arange(n_e), n_extra)
    x_late = rng.random(n_x) < P_REVIEW_LATER
    x_gap = np.where(x_late, 0.0, rng.exponential(REVIEW_GAP_SHORT_S, n_x))
    t_x = t0[x_eng] + _exclusive_group_cumsum(x_gap, x_eng) + x_gap
    t_x_late = next_session_time(e_user[x_eng], t0[x_eng] + rng.exponential(REVIEW_GAP_LONG_S, n_x))
    t_x = np.where(x_late, t_x_late, t_x)

    # ---- assemble events
    idx_v = np.flatnonzero(~no_view)
    idx_f = np.flatnonzero(has_fav)
    idx_c = np.flatnonzero(has_cart)
    idx_p = np.flatnonzero(pre_view)
    idx_b = np.flatnonzero(has_buy)
    ev_eng = np.concatenate([idx_v, x_eng, idx_f, idx_c, idx_p, idx_b])
    ev_t = np.concatenate([t0[idx_v], t_x, t_fav[idx_f], t_cart[idx_c], t_pre[idx_p], t_buy[idx_b]])
    ev_b = np.concatenate([np.full(len(idx_v) + n_x, VIEW, np.int8), np.full(len(idx_f), FAV, np.int8),
                           np.full(len(idx_c), CART, np.int8), np.full(len(idx_p), VIEW, np.int8),
                           np.full(len(idx_b), BUY, np.int8)])
    keep = ev_t < SPAN_S
    ev_eng, ev_t, ev_b = ev_eng[keep], ev_t[keep], ev_b[keep]
    ev_user = e_user[ev_eng]
    order = np.lexsort((ev_b, ev_t, ev_user))
    ev_user, ev_t, ev_b, ev_item = ev_user[order], ev_t[order], ev_b[order], item[ev_eng[order]]
    # strictly increasing integer timestamps within each user
    ts = np.floor(ev_t).astype(np.int64) - np.arange(len(ev_t), dtype=np.int64)
    shift = ev_user.astype(np.int64) * _USER_KEY_SHIFT
    ts = np.maximum.accumulate(ts + shift) - shift + np.arange(len(ev_t), dtype=np.int64)
    return {
        "user_id": ev_user.astype(np.int64) + uid0,
        "item_id": ev_item.astype(np.int64),
        "behavior": ev_b,
        "timestamp": ts + START_TIMESTAMP,
    }


_BEHAVIOR_ARRAY = np.array(BEHAVIORS, dtype=object)


def _to_frame(cols: dict, lo: int, hi: int) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": cols["user_id"][lo:hi],
        "item_id": cols["item_id"][lo:hi],
        "behavior": _BEHAVIOR_ARRAY[cols["behavior"][lo:hi]],
        "timestamp": cols["timestamp"][lo:hi],
    })


def iter_interaction_chunks(size: ParamsLike = DEFAULT_SIZE, seed: int = DEFAULT_SEED,
                            users_per_chunk: int = DEFAULT_USERS_PER_CHUNK) -> Iterator[pd.DataFrame]:
    """Yield the interactions as DataFrames of ``users_per_chunk`` consecutive users.

    Columns: ``user_id`` int64 (0..n_users-1), ``item_id`` int64 (0..n_items-1),
    ``behavior`` str (``view``/``fav``/``cart``/``buy``), ``timestamp`` int64
    Unix seconds.  Rows are sorted by (user_id, timestamp) with strictly
    increasing timestamps per user; a user is never split across chunks; the
    concatenation does not depend on ``users_per_chunk``.  Memory is bounded by
    one chunk plus one ``USER_BLOCK`` block.
    """
    params = resolve_params(size)
    if users_per_chunk < 1:
        raise ValueError("users_per_chunk must be >= 1")
    items = _item_tables(_key(params), seed)
    n_users = int(params["n_users"])
    cached_block, cached = -1, None
    for lo_user in range(0, n_users, users_per_chunk):
        hi_user = min(lo_user + users_per_chunk, n_users)
        parts = []
        for block in range(lo_user // USER_BLOCK, (hi_user - 1) // USER_BLOCK + 1):
            if block != cached_block:
                cached_block, cached = block, _generate_block(params, items, seed, block)
            uid = cached["user_id"]
            lo = np.searchsorted(uid, lo_user, side="left")
            hi = np.searchsorted(uid, hi_user, side="left")
            parts.append(_to_frame(cached, lo, hi))
        yield parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def generate_interactions(size: ParamsLike = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """All interactions in one DataFrame (convenience for small sizes)."""
    return pd.concat(list(iter_interaction_chunks(size, seed)), ignore_index=True)


# =========================================================================== IJCAI-15 raw format
IJCAI15_FILE = "user_log_format1.csv"
IJCAI15_HEADER = "user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type"
# Tianchi's codes: 0 click, 1 add-to-cart, 2 purchase, 3 add-to-favourite.
IJCAI15_ACTION_OF = {"view": 0, "cart": 1, "buy": 2, "fav": 3}
# The log's MMDD dates: day 0 of the span is this date, so the span ends on Double 11.
IJCAI15_FIRST_DAY = np.datetime64("2015-11-03")
# IJCAI-15 has 874,328 items, 4,995 sellers and 8,477 brands: items per seller / per brand.
ITEMS_PER_SELLER = 175
ITEMS_PER_BRAND = 103
SELLER_STREAM = 4
# The raw log's ids start at 1 (0 would read as "missing" to some tools).
IJCAI15_FIRST_ID = 1


def item_sellers_brands(size: ParamsLike = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> tuple:
    """Seller and brand id (from 1) of every item, int64 ``[n_items]`` each; a brand sells at one seller."""
    params = resolve_params(size)
    n_items = int(params["n_items"])
    n_sellers = max(1, n_items // ITEMS_PER_SELLER)
    n_brands = max(n_sellers, n_items // ITEMS_PER_BRAND)
    rng = np.random.default_rng([seed, SELLER_STREAM])
    brand_seller = rng.integers(0, n_sellers, n_brands)
    brands = rng.integers(0, n_brands, n_items)
    return brand_seller[brands] + IJCAI15_FIRST_ID, brands + IJCAI15_FIRST_ID


def ijcai15_frame(chunk: pd.DataFrame, categories: np.ndarray, sellers: np.ndarray,
                  brands: np.ndarray) -> pd.DataFrame:
    """One chunk of :func:`iter_interaction_chunks` in the IJCAI-15 columns and codes."""
    items = chunk["item_id"].to_numpy()
    days = (chunk["timestamp"].to_numpy() - START_TIMESTAMP) // SECONDS_PER_DAY
    dates = (IJCAI15_FIRST_DAY + days.astype("timedelta64[D]")).astype("datetime64[D]")
    months = dates.astype("datetime64[M]")
    mmdd = ((months.astype(np.int64) % 12 + 1) * 100
            + (dates - months.astype("datetime64[D]")).astype(np.int64) + 1)
    actions = chunk["behavior"].map(IJCAI15_ACTION_OF).to_numpy(np.int64)
    return pd.DataFrame({
        "user_id": chunk["user_id"].to_numpy() + IJCAI15_FIRST_ID,
        "item_id": items + IJCAI15_FIRST_ID,
        "cat_id": categories[items] + IJCAI15_FIRST_ID,
        "seller_id": sellers[items],
        "brand_id": brands[items],
        "time_stamp": mmdd,
        "action_type": actions,
    })


def write_ijcai15_log(path, size: ParamsLike = "ijcai", seed: int = DEFAULT_SEED,
                      users_per_chunk: int = DEFAULT_USERS_PER_CHUNK) -> int:
    """Write the synthetic log as IJCAI-15's ``user_log_format1.csv``; return the row count.

    Columns ``user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type`` with
    ``time_stamp`` MMDD (2015, from ``IJCAI15_FIRST_DAY``) and ``action_type`` 0 click (our
    view), 1 cart, 2 buy, 3 fav. Rows are grouped by user and in time order, so a reader that
    sorts stably by (user, day) recovers each user's exact sequence. Streamed: memory is bounded
    by one chunk plus the item tables; the file depends only on ``(size, seed)``. ``path`` is
    a file or a folder (then ``<folder>/user_log_format1.csv``); written to a temporary name
    first and renamed, so an interrupted run never leaves a truncated log.
    """
    import os
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        path = path / IJCAI15_FILE
    categories = item_categories(size, seed)
    sellers, brands = item_sellers_brands(size, seed)
    n_rows = 0
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", encoding="utf-8", newline="") as handle:
        handle.write(IJCAI15_HEADER + "\n")
        for chunk in iter_interaction_chunks(size, seed, users_per_chunk):
            ijcai15_frame(chunk, categories, sellers, brands).to_csv(handle, header=False, index=False,
                                                                       lineterminator="\n")
            n_rows += len(chunk)
    os.replace(partial, path)
    return n_rows
