"""Data at scale: the IJCAI-15 raw log of the generator, chunked prepare, lean windows = prefixes."""

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from recbole.data.dataset import SequentialDataset

from mbrec.data import synthetic
from mbrec.data.dataset import MultiBehaviorSequentialDataset, SequenceLoader
from mbrec.data.prepare import LogColumns, prepare
from tests.conftest import make_config, write_inter

TINY = {"n_users": 90, "n_items": 120, "n_categories": 6}
CLICK_OF = {"view": "click", "cart": "cart", "buy": "buy", "fav": "fav"}  # ijcai.yaml's vocabulary
WINDOW = 3  # short, so that truncation of long prefixes is exercised


def test_ijcai15_log_is_deterministic_and_in_the_raw_format(tmp_path):
    first = tmp_path / "a.csv"
    n_rows = synthetic.write_ijcai15_log(first, TINY, seed=5)
    synthetic.write_ijcai15_log(tmp_path / "b.csv", TINY, seed=5, users_per_chunk=7)  # other chunking
    assert first.read_bytes() == (tmp_path / "b.csv").read_bytes()
    synthetic.write_ijcai15_log(tmp_path / "c.csv", TINY, seed=6)
    assert first.read_bytes() != (tmp_path / "c.csv").read_bytes()
    log = pd.read_csv(first)
    assert list(log.columns) == ["user_id", "item_id", "cat_id", "seller_id", "brand_id", "time_stamp",
                                 "action_type"]
    assert len(log) == n_rows and set(log["action_type"]) <= {0, 1, 2, 3}
    assert log["time_stamp"].between(1103, 1112).all()  # MMDD, the span ends on Double 11
    generated = synthetic.generate_interactions(TINY, seed=5)
    codes = generated["behavior"].map(synthetic.IJCAI15_ACTION_OF)
    assert (log["action_type"].to_numpy() == codes.to_numpy()).all()  # 0 click, 1 cart, 2 buy, 3 fav
    assert (log["item_id"].to_numpy() == generated["item_id"].to_numpy() + 1).all()
    # every item has one category, seller and brand; a brand belongs to one seller
    assert (log.groupby("item_id")[["cat_id", "seller_id", "brand_id"]].nunique() == 1).all().all()
    assert (log.groupby("brand_id")["seller_id"].nunique() == 1).all()


def test_prepare_reads_the_raw_log_back_to_the_generated_sequences(tmp_path):
    synthetic.write_ijcai15_log(tmp_path / "raw.csv", TINY, seed=5)
    folder = prepare("ijcai", raw_path=tmp_path / "raw.csv", cache_dir=tmp_path / "cache", format="ijcai15")
    prepared = pd.read_csv(folder / f"{folder.name}.inter", sep="\t")
    generated = synthetic.generate_interactions(TINY, seed=5)
    # day-level timestamps tie a lot: the reader's stable sort must keep the file's order
    assert (prepared["user_id:token"].to_numpy() == generated["user_id"].to_numpy() + 1).all()
    assert (prepared["item_id:token"].to_numpy() == generated["item_id"].to_numpy() + 1).all()
    assert prepared["behavior:token"].tolist() == generated["behavior"].map(CLICK_OF).tolist()
    assert all(group.is_monotonic_increasing for _, group in prepared.groupby("user_id:token")["timestamp:float"])


def test_log_columns_grow_past_a_short_capacity_and_sort_stably():
    log = LogColumns(2, ["view", "buy"])
    behaviors = pd.Categorical(["view", "buy", "view"], categories=["view", "buy"])
    log.append(np.array([2, 1, 2]), np.array([10, 11, 12]), behaviors, np.array([5, 9, 5]))
    log.append(np.array([1]), np.array([13]), behaviors[:1], np.array([9]))
    log.order_by_user_then_time()
    frame = pd.concat(list(log.chunks()))
    assert frame["item_id"].tolist() == [11, 13, 10, 12]  # user 1 (tie at 9: file order), then user 2
    assert frame["behavior"].tolist() == ["buy", "view", "view", "view"]


def _examples_from_batches(dataset, loader):
    examples = Counter()
    for batch in loader:
        for row in range(len(batch)):
            length = int(batch["item_length"][row])
            items = dataset.id2token("item_id", batch["item_id_list"][row, :length].numpy())
            behaviors = dataset.id2token("behavior", batch["behavior_list"][row, :length].numpy())
            examples[(tuple(items), tuple(behaviors), dataset.id2token("item_id", int(batch["item_id"][row])),
                      dataset.id2token("behavior", int(batch["behavior"][row])))] += 1
    return examples


def _prefix_examples(rows, window):
    """The protocol's prefix augmentation, written out: every training target with its window."""
    examples = Counter()
    by_user = {}
    for user, item, behavior, timestamp in rows:
        by_user.setdefault(user, []).append((timestamp, item, behavior))
    for sequence in by_user.values():
        sequence = [(item, behavior) for _, item, behavior in sorted(sequence, key=lambda entry: entry[0])]
        for target in range(1, len(sequence) - 2):  # the last two rows are valid and test
            inputs = sequence[max(0, target - window):target]
            examples[(tuple(i for i, _ in inputs), tuple(b for _, b in inputs), *sequence[target])] += 1
    return examples


def test_on_the_fly_windows_equal_prefix_augmentation(tmp_path):
    rng = np.random.default_rng(11)
    rows = []
    for user in range(25):
        length = int(rng.integers(4, 12))  # >= 4: RecBole and the protocol agree on the split
        stamps = rng.permutation(100)[:length]  # distinct, written out of time order
        rows += [(f"u{user}", f"i{rng.integers(0, 15)}", ["view", "cart", "buy"][rng.integers(0, 3)], int(t))
                 for t in stamps]
    folder = write_inter(tmp_path, "tiny", rows)
    config = make_config("SASRec", folder, behaviors=["view", "cart", "buy"], MAX_ITEM_LIST_LENGTH=WINDOW)
    dataset = MultiBehaviorSequentialDataset(config)
    train, _, _ = dataset.build()
    ours = _examples_from_batches(dataset, SequenceLoader(config, train, 8, shuffle=True, training=True))
    expected = _prefix_examples(rows, WINDOW)
    assert sum(expected.values()) > 100 and any(len(key[0]) == WINDOW for key in expected)
    assert ours == expected

    # RecBole's stock dataset materializes the same examples (dense copies of every prefix).
    stock_config = make_config("SASRec", folder, behaviors=["view", "cart", "buy"], MAX_ITEM_LIST_LENGTH=WINDOW,
                               eval_args={"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"})
    stock_train = SequentialDataset(stock_config).build()[0]
    stock = Counter()
    feat = stock_train.inter_feat
    for row in range(len(feat)):
        length = int(feat["item_length"][row])
        stock[(tuple(stock_train.id2token("item_id", feat["item_id_list"][row, :length].numpy())),
               tuple(stock_train.id2token("behavior", feat["behavior_list"][row, :length].numpy())),
               stock_train.id2token("item_id", int(feat["item_id"][row])),
               stock_train.id2token("behavior", int(feat["behavior"][row])))] += 1
    assert stock == expected
