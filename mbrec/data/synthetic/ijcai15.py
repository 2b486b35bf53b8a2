"""The synthetic log written in IJCAI-15's raw format (``user_log_format1.csv``), streamed chunk by
chunk so that the ``ijcai`` size (~30M rows) needs memory for one chunk only."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mbrec.data.synthetic.interactions import (
    DEFAULT_USERS_PER_CHUNK, SECONDS_PER_DAY, START_TIMESTAMP, iter_interaction_chunks,
)
from mbrec.data.synthetic.items import item_categories
from mbrec.data.synthetic.sizes import DEFAULT_SEED, DEFAULT_SIZE, ParamsLike, resolve_params

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
