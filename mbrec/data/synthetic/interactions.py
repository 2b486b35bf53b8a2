"""The user side of the synthetic data: engagements, sessions, drifting interests and the
view/fav/cart/buy funnel, generated in fixed blocks of users and streamed as DataFrame chunks
(the generative process is described in :mod:`mbrec.data.synthetic`)."""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import pandas as pd

from mbrec.data.synthetic.items import CATS_PER_GROUP, _item_tables, _ItemTables
from mbrec.data.synthetic.sizes import DEFAULT_SEED, DEFAULT_SIZE, USER_STREAM, ParamsLike, _key, resolve_params

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

_USER_KEY_SHIFT = 1 << 40    # > any |timestamp - index| inside a block
_SESSION_KEY_SHIFT = 4.0 * SPAN_S  # > any session time (float key user*shift + time)


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
