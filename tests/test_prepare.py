"""Tests of mbrec.data.prepare: every reader on tiny hand-written fixtures, errors, cache, real data.

Real shared datasets are checked only when MBREC_DATA_DIR is set, e.g.
``MBREC_DATA_DIR=/work/shared/datasets python -m pytest tests/test_prepare.py``.
"""

import json
import os
import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from mbrec.data import DataPreparationError, dataset_spec, prepare
from mbrec.data.__main__ import main as cli_main
from mbrec.data.prepare import INTER_HEADER, ITEM_HEADER

# 2017-11-26 00:00 UTC+8: inside taobao's time_range; TAOBAO_AFTER is past its end.
TAOBAO_DAY = 1511625600
TAOBAO_AFTER = 1512316800 + 10


def read_rows(path):
    """(header, rows as tuples of strings) of a tab-separated atomic file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0], [tuple(line.split("\t")) for line in lines[1:]]


def inter_rows(folder):
    header, rows = read_rows(folder / f"{folder.name}.inter")
    assert header == INTER_HEADER
    return rows


def meta_of(folder):
    return json.loads((folder / "meta.json").read_text())


def write_pickle(path, obj):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


# ----------------------------------------------------------------------------- registry
def test_dataset_spec_resolves_alias_and_rejects_unknown():
    spec = dataset_spec("retail")
    assert spec["name"] == "taobao" and spec["prepare"]["format"] == "tianchi"
    with pytest.raises(DataPreparationError, match="taobao") as info:
        dataset_spec("no_such_dataset")
    assert "retailrocket" in str(info.value)


# ----------------------------------------------------------------------------- csv readers
def test_csv_with_header_aliases_and_stable_ties(tmp_path):
    raw = tmp_path / "log.csv"
    # header aliases uid/sid/action/ts; user 2 before user 10 (numeric order); ties keep file order
    raw.write_text("uid,sid,action,ts\n10,5,buy,300\n2,7,cart,100\n2,8,pv,100\n2,9,fav,50\n10,4,pv,300\n")
    folder = prepare("taobao", raw_path=raw, cache_dir=tmp_path / "cache", format="csv")
    assert inter_rows(folder) == [
        ("2", "9", "fav", "50"), ("2", "7", "cart", "100"), ("2", "8", "pv", "100"),
        ("10", "5", "buy", "300"), ("10", "4", "pv", "300"),
    ]
    meta = meta_of(folder)
    assert meta["n_rows"] == 5 and meta["n_users"] == 2 and meta["behavior_counts"]["pv"] == 2
    assert folder.name == "taobao-format_csv"


def test_tsv_without_header_keeps_string_ids_and_float_time(tmp_path):
    raw = tmp_path / "log.tsv"
    raw.write_text("u1\ti1\tpv\t10.5\nu1\ti2\tbuy\t3\nu0\ti3\tcart\t7\n")
    folder = prepare("taobao", raw_path=raw, cache_dir=tmp_path, format="csv")
    assert inter_rows(folder) == [("u0", "i3", "cart", "7.0"), ("u1", "i2", "buy", "3.0"),
                                  ("u1", "i1", "pv", "10.5")]


def test_mbstr_txt_with_behavior_map(tmp_path):
    raw = tmp_path / "train.txt"
    raw.write_text("uid sid behavior timestamp\n1 11 1 100\n1 12 4 90\n0 13  2 5\n")
    behavior_map = {1: "pv", 2: "fav", 3: "cart", 4: "buy"}
    folder = prepare("taobao", raw_path=raw, cache_dir=tmp_path, format="csv", behavior_map=behavior_map)
    assert inter_rows(folder) == [("0", "13", "fav", "5"), ("1", "12", "buy", "90"), ("1", "11", "pv", "100")]
    with pytest.raises(DataPreparationError, match="behavior_map"):
        prepare("taobao", raw_path=raw, cache_dir=tmp_path / "nomap", format="csv")


# ----------------------------------------------------------------------------- tianchi / ijcai15 / events
def test_tianchi_time_range_items_and_order(tmp_path):
    raw = tmp_path / "UserBehavior.csv"
    raw.write_text(
        f"5,100,7,pv,{TAOBAO_DAY + 20}\n"
        f"5,101,8,buy,{TAOBAO_DAY + 10}\n"
        f"5,102,8,pv,{TAOBAO_AFTER}\n"          # outside the time range: dropped
        f"1,100,7,cart,{TAOBAO_DAY + 20}\n"
        f"1,103,9,fav,{TAOBAO_DAY + 20}\n")     # tie with the cart row: file order
    folder = prepare("retail", raw_path=raw, cache_dir=tmp_path)
    assert folder.name == "taobao"
    assert inter_rows(folder) == [
        ("1", "100", "cart", str(TAOBAO_DAY + 20)), ("1", "103", "fav", str(TAOBAO_DAY + 20)),
        ("5", "101", "buy", str(TAOBAO_DAY + 10)), ("5", "100", "pv", str(TAOBAO_DAY + 20)),
    ]
    header, items = read_rows(folder / "taobao.item")
    assert header == ITEM_HEADER and items == [("100", "7"), ("101", "8"), ("103", "9")]
    assert list(meta_of(folder)["dropped"].values()) == [1]


def test_ijcai15_mmdd_dates_and_action_codes(tmp_path):
    raw = tmp_path / "user_log_format1.csv"
    raw.write_text("user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type\n"
                   "3,50,6,1,,1111,2\n"
                   "3,51,6,1,2,0511,0\n"
                   "3,50,6,1,2,1111,1\n"
                   "3,52,4,1,2,1111,3\n")
    folder = prepare("ijcai", raw_path=raw, cache_dir=tmp_path, format="ijcai15")
    may_11, nov_11 = 1431273600, 1447171200  # midnight UTC+8, as in the SSLRec matrices
    assert inter_rows(folder) == [("3", "51", "click", str(may_11)), ("3", "50", "buy", str(nov_11)),
                                  ("3", "50", "cart", str(nov_11)), ("3", "52", "fav", str(nov_11))]
    assert read_rows(folder / f"{folder.name}.item")[1] == [("50", "6"), ("51", "6"), ("52", "4")]


def test_retailrocket_events_ms_to_seconds(tmp_path):
    raw = tmp_path / "events.csv"
    raw.write_text("timestamp,visitorid,event,itemid,transactionid\n"
                   "1433221332117,257597,view,355908,\n"
                   "1433221000000,257597,transaction,355908,42\n"
                   "1433221000000,99,addtocart,1,\n")
    folder = prepare("retailrocket", raw_path=tmp_path, cache_dir=tmp_path / "c", format="retailrocket")
    assert inter_rows(folder) == [("99", "1", "cart", "1433221000.0"),
                                  ("257597", "355908", "buy", "1433221000.0"),
                                  ("257597", "355908", "view", "1433221332.117")]


# ----------------------------------------------------------------------------- format A
def write_retailrocket_matrices(folder, heldout):
    """3 users x 6 items; user 0 has a view, a cart and a buy all at t=100 (tie rule)."""
    folder.mkdir()
    shape = (3, 6)
    view = sp.csr_matrix(([100, 100, 50, 70], ([0, 0, 1, 2], [4, 2, 3, 1])), shape=shape)
    cart = sp.csr_matrix(([100], ([0], [1])), shape=shape)
    buy = sp.csr_matrix(([100, 60], ([0, 1], [0, 3])), shape=shape)
    for name, matrix in {"trn_view": view, "trn_cart": cart, "trn_buy": buy}.items():
        write_pickle(folder / name, matrix)
    write_pickle(folder / "tst_int", heldout)


def test_matrices_tie_order_and_heldout_append(tmp_path):
    write_retailrocket_matrices(tmp_path / "rr", [5, None, np.int32(0)])
    folder = prepare("retailrocket", raw_path=tmp_path / "rr", cache_dir=tmp_path)
    assert folder.name == "retailrocket"
    rows = inter_rows(folder)
    assert rows == [
        # same timestamp: vocabulary order view < cart < buy, then item id; held-out: last, buy, max + 1
        ("0", "2", "view", "100"), ("0", "4", "view", "100"), ("0", "1", "cart", "100"),
        ("0", "0", "buy", "100"), ("0", "5", "buy", "101"),
        ("1", "3", "view", "50"), ("1", "3", "buy", "60"),
        ("2", "1", "view", "70"), ("2", "0", "buy", "71"),
    ]
    ignored = prepare("retailrocket", raw_path=tmp_path / "rr", cache_dir=tmp_path, heldout="ignore")
    assert ignored.name == "retailrocket-heldout_ignore"
    assert inter_rows(ignored) == [row for row in rows if row not in {("0", "5", "buy", "101"),
                                                                     ("2", "0", "buy", "71")}]
    assert list(meta_of(ignored)["dropped"].values()) == [2]
    assert (folder / "retailrocket.inter").is_file()  # the default variant is untouched


def test_matrices_with_test_mat_coo_and_float_timestamps(tmp_path):
    raw = tmp_path / "ij"
    raw.mkdir()
    shape = (2, 4)
    write_pickle(raw / "train_mat_buy.pkl", sp.csr_matrix(([10.0], ([0], [1])), shape=shape))
    write_pickle(raw / "train_mat_fav.pkl", sp.csr_matrix(([10.0, 5.0], ([0, 1], [2, 0])), shape=shape))
    write_pickle(raw / "train_mat_cart.pkl", sp.csr_matrix(([3.0], ([1], [3])), shape=shape))
    write_pickle(raw / "test_mat.pkl", sp.coo_matrix(([1.0, 1.0], ([0, 1], [3, 2])), shape=shape))
    folder = prepare("ijcai", raw_path=raw, cache_dir=tmp_path)
    assert inter_rows(folder) == [
        ("0", "2", "fav", "10"), ("0", "1", "buy", "10"), ("0", "3", "buy", "11"),
        ("1", "3", "cart", "3"), ("1", "0", "fav", "5"), ("1", "2", "buy", "6"),
    ]


# ----------------------------------------------------------------------------- format C
def test_diffurec_dict_positions_as_timestamps(tmp_path):
    raw = tmp_path / "dataset.pkl"
    write_pickle(raw, {"train": {1: [5, 6], 0: [3]}, "val": {0: [4], 1: [7]}, "test": {0: [9], 1: [8]},
                       "umap": {"a": 0, "b": 1}, "smap": {}})
    folder = prepare("amazon_beauty", raw_path=raw, cache_dir=tmp_path)
    assert inter_rows(folder) == [("0", "3", "interact", "0"), ("0", "4", "interact", "1"),
                                  ("0", "9", "interact", "2"), ("1", "5", "interact", "0"),
                                  ("1", "6", "interact", "1"), ("1", "7", "interact", "2"),
                                  ("1", "8", "interact", "3")]


# ----------------------------------------------------------------------------- synthetic
def test_synthetic_streams_inter_item_and_content(tmp_path):
    pytest.importorskip("mbrec.data.synthetic")
    folder = prepare("synthetic", cache_dir=tmp_path)
    meta = meta_of(folder)
    rows = inter_rows(folder)
    assert len(rows) == meta["n_rows"] > 0
    keys = [(int(u), float(t)) for u, _, _, t in rows]
    assert keys == sorted(keys)
    _, items = read_rows(folder / "synthetic.item")
    content = np.load(folder / "synthetic.content.npz")
    assert len(items) == meta["n_items"] == len(content["item_id"])
    assert content["vectors"].dtype == np.float32 and list(content["item_id"]) == [i for i, _ in items]


# ----------------------------------------------------------------------------- errors
def assert_fails(tmp_path, match, **kwargs):
    cache = tmp_path / "cache"
    with pytest.raises(DataPreparationError) as info:
        prepare(cache_dir=cache, **kwargs)
    message = str(info.value)
    for fragment in match:
        assert fragment in message, message
    # nothing half-written: the cache root holds no dataset folder (temp folders are removed)
    assert not cache.exists() or not list(cache.iterdir())
    return message


def test_error_missing_behavior_column(tmp_path):
    raw = tmp_path / "log.csv"
    raw.write_text("user_id,item_id,timestamp\n1,2,3\n")
    assert_fails(tmp_path, ["log.csv", "behavior", "accepted names"], name="taobao", raw_path=raw, format="csv")


def test_error_unknown_behavior_names_value_and_line(tmp_path):
    raw = tmp_path / "UserBehavior.csv"
    raw.write_text(f"1,2,3,pv,{TAOBAO_DAY}\n1,2,3,like,{TAOBAO_DAY}\n")
    assert_fails(tmp_path, ["UserBehavior.csv", "line 2", "'like'", "'pv'"], name="taobao", raw_path=raw)


def test_error_non_numeric_timestamp_line(tmp_path):
    raw = tmp_path / "log.csv"
    raw.write_text("user,item,behavior,time\n1,2,pv,5\n1,2,pv,5\n1,3,buy,yesterday\n")
    assert_fails(tmp_path, ["line 4", "'yesterday'", "time"], name="taobao", raw_path=raw, format="csv")


@pytest.mark.parametrize("fmt, file_name", [("tianchi", "UserBehavior.csv"), ("csv", "log.csv"),
                                            ("retailrocket", "events.csv")])
def test_error_empty_file(tmp_path, fmt, file_name):
    raw = tmp_path / file_name
    raw.write_text("")
    assert_fails(tmp_path, [file_name, "empty"], name="taobao", raw_path=raw, format=fmt)


def test_error_missing_raw_folder_explains_how_to_prepare(tmp_path, monkeypatch):
    monkeypatch.setenv("MBREC_DATA_DIR", str(tmp_path / "nowhere"))
    message = assert_fails(tmp_path, ["python -m mbrec.data prepare retailrocket --raw", "trn_view", "tst_int",
                                      "SSLRec", "MBREC_DATA_DIR"], name="retailrocket")
    assert "Traceback" not in message


def test_failed_rebuild_leaves_previous_cache(tmp_path):
    raw = tmp_path / "log.csv"
    raw.write_text("user,item,behavior,timestamp\n1,2,pv,5\n")
    folder = prepare("taobao", raw_path=raw, cache_dir=tmp_path / "cache", format="csv")
    before = (folder / "meta.json").read_text()
    raw.write_text("user,item,behavior,timestamp\n1,2,pv,5\n1,2,pv,soon\n")
    with pytest.raises(DataPreparationError, match="line 3"):
        prepare("taobao", raw_path=raw, cache_dir=tmp_path / "cache", format="csv")
    assert (folder / "meta.json").read_text() == before
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [folder.name]


# ----------------------------------------------------------------------------- cache
def test_cache_reuse_touch_rebuild_and_force(tmp_path):
    raw = tmp_path / "UserBehavior.csv"
    raw.write_text(f"1,2,3,pv,{TAOBAO_DAY}\n")
    folder = prepare("taobao", raw_path=raw, cache_dir=tmp_path)
    inter = folder / "taobao.inter"
    first_meta, first_mtime = meta_of(folder), inter.stat().st_mtime_ns

    assert prepare("taobao", raw_path=raw, cache_dir=tmp_path) == folder
    assert meta_of(folder) == first_meta and inter.stat().st_mtime_ns == first_mtime

    stat = raw.stat()
    os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same content
    prepare("taobao", raw_path=raw, cache_dir=tmp_path)
    touched_meta = meta_of(folder)
    assert touched_meta["fingerprint"] != first_meta["fingerprint"]

    raw.write_text(f"1,2,3,pv,{TAOBAO_DAY}\n1,4,3,buy,{TAOBAO_DAY + 1}\n")
    assert meta_of(prepare("taobao", raw_path=raw, cache_dir=tmp_path))["n_rows"] == 2

    rebuilt_at = (folder / "meta.json").stat().st_mtime_ns
    prepare("taobao", raw_path=raw, cache_dir=tmp_path, force=True)
    assert (folder / "meta.json").stat().st_mtime_ns != rebuilt_at


def test_cli_prepare_prints_location(tmp_path, capsys):
    raw = tmp_path / "log.csv"
    raw.write_text("user,item,behavior,timestamp\n1,2,pv,5\n")
    assert cli_main(["prepare", "taobao", "--raw", str(raw), "--format", "csv",
                     "--cache-dir", str(tmp_path / "c")]) == 0
    assert str(tmp_path / "c" / "taobao-format_csv") in capsys.readouterr().out
    assert cli_main(["prepare", "nope", "--cache-dir", str(tmp_path / "c")]) == 2
    assert "Registered datasets" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real shared data
REAL_DATA = os.environ.get("MBREC_DATA_DIR")
needs_real_data = pytest.mark.skipif(not REAL_DATA, reason="MBREC_DATA_DIR not set")
HELDOUT_COUNTS = {"retailrocket": 2174, "ijcai": 7299, "yelp": 10000}


@needs_real_data
@pytest.mark.parametrize("name, counts", [
    ("retailrocket", {"view": 75374, "cart": 12456, "buy": 9551 + 2174}),
    ("ijcai", {"click": 0, "buy": 199654 + 7299, "fav": 158119, "cart": 1330}),
    ("yelp", {"tip": 285673, "neutral": 238880, "dislike": 198106, "like": 10000}),
])
def test_real_matrices(tmp_path, name, counts):
    folder = prepare(name, cache_dir=tmp_path)
    meta = meta_of(folder)
    assert meta["behavior_counts"] == counts
    assert meta["notes"]["heldout_in_own_history"] == 0
    # each held-out item (at most one per user here) is its user's last interaction, after the others
    spec = dataset_spec(name)
    heldout = pickle.load(open(os.path.join(REAL_DATA, name, spec["prepare"]["heldout_file"]), "rb"))
    if sp.issparse(heldout):
        coo = heldout.tocoo()
        heldout = dict(zip(coo.row.tolist(), coo.col.tolist()))
    else:
        heldout = {user: int(item) for user, item in enumerate(heldout) if item is not None}
    last, previous = {}, {}
    for user, item, behavior, stamp in inter_rows(folder):
        previous[int(user)] = last.get(int(user), (None, None, -np.inf))[2]
        last[int(user)] = (int(item), behavior, float(stamp))
    assert len(heldout) == HELDOUT_COUNTS[name]
    for user, item in heldout.items():
        assert last[user][:2] == (item, spec["target_behavior"]) and last[user][2] == previous[user] + 1


@needs_real_data
def test_real_taobao(tmp_path):
    meta = meta_of(prepare("taobao", cache_dir=tmp_path))
    dropped = sum(meta["dropped"].values())
    assert 0 < dropped < 100 and meta["n_rows"] == 84475 - dropped
    assert meta["n_users"] == 815


@needs_real_data
def test_real_amazon_beauty_val_test_are_last_two(tmp_path):
    folder = prepare("amazon_beauty", cache_dir=tmp_path)
    data = pickle.load(open(os.path.join(REAL_DATA, "amazon_beauty", "dataset.pkl"), "rb"))
    sequences = {}
    for user, item, _, stamp in inter_rows(folder):  # the file is already (user, time) ordered
        sequences.setdefault(int(user), []).append((float(stamp), int(item)))
    assert len(sequences) == 22363
    for user, sequence in sequences.items():
        items = [item for _, item in sorted(sequence, key=lambda pair: pair[0])]  # stable, like RecBole
        assert items[-1] == data["test"][user][0] and items[-2] == data["val"][user][0]
        assert items[:-2] == data["train"][user]
