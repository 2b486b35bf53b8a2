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

Modules
    ``sizes`` (named sizes, defaults, parameter resolution, random stream ids), ``items``
    (categories, popularity, latent factors, content vectors), ``interactions`` (users,
    sessions, the funnel: the rows) and ``ijcai15`` (the rows written as IJCAI-15's raw log).
    This package re-exports their public API; every module of it is part of the synthetic
    dataset's cache fingerprint (:mod:`mbrec.data.readers.synthetic`).

Imports: numpy and pandas only.
"""

from mbrec.data.synthetic.ijcai15 import (
    IJCAI15_ACTION_OF, IJCAI15_FILE, IJCAI15_HEADER, ijcai15_frame, item_sellers_brands, write_ijcai15_log,
)
from mbrec.data.synthetic.interactions import (
    BEHAVIORS, DEFAULT_USERS_PER_CHUNK, FUNNEL_TARGETS, MIN_ENGAGEMENTS, SPAN_DAYS, SPAN_S, START_TIMESTAMP,
    USER_BLOCK, generate_interactions, iter_interaction_chunks,
)
from mbrec.data.synthetic.items import (
    CONTENT_DIM, CONTENT_NOISE, LATENT_DIM, item_categories, item_content, item_latent_factors,
)
from mbrec.data.synthetic.sizes import DEFAULT_SEED, DEFAULT_SIZE, SIZES, resolve_params

# The constants callers read (``synthetic.LATENT_DIM``, ``synthetic.IJCAI15_FILE``, ...) are
# re-exported above but, as before the split, are not part of ``__all__``.

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
