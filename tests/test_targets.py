"""Target shares stored per task: repeat (in the input window), cold (never in training), held-out."""

import pickle

import pytest
import scipy.sparse as sp

from mbrec import registry
from mbrec.data.dataset import MultiBehaviorSequentialDataset
from mbrec.data.prepare import prepare
from mbrec.data.readers.matrices import HELDOUT_SUFFIX
from mbrec.data.targets import UNKNOWN, target_kinds
from mbrec.evaluation import Evaluator
from tests.conftest import make_config

# Format A, 4 users x 9 items (view, cart, buy matrices; value = timestamp) and held-out items:
# user 0: views 1, 2, 3; held-out 4 (seen in user 1's training)    -> held-out, not cold, new
# user 1: views 4, 5, cart 1, buy 4                                -> logged, repeat
# user 2: views 6, 1, 3; held-out 7 (nowhere else)                -> held-out, cold
# user 3: views 1, 3, cart 8 (8 only here)                         -> logged, cold
SHAPE = (4, 9)
VIEW = sp.csr_matrix(([10, 20, 30, 10, 20, 10, 20, 30, 10, 20],
                      ([0, 0, 0, 1, 1, 2, 2, 2, 3, 3], [1, 2, 3, 4, 5, 6, 1, 3, 1, 3])), shape=SHAPE)
CART = sp.csr_matrix(([30, 30], ([1, 3], [1, 8])), shape=SHAPE)
BUY = sp.csr_matrix(([40], ([1], [4])), shape=SHAPE)
HELDOUT = [4, None, 7, None]  # tst_int: one entry per user


def prepared(tmp_path, **options):
    raw = tmp_path / "rr"
    raw.mkdir(exist_ok=True)
    for name, obj in {"trn_view": VIEW, "trn_cart": CART, "trn_buy": BUY, "tst_int": HELDOUT}.items():
        with open(raw / name, "wb") as handle:
            pickle.dump(obj, handle)
    return prepare("retailrocket", raw_path=raw, cache_dir=tmp_path / "cache", **options)


def split_views(folder):
    config = make_config("Pop", folder, base_dataset="retailrocket")
    dataset = MultiBehaviorSequentialDataset(config)
    train, _, test = dataset.build()
    return config, train, test


def test_counts_of_repeat_cold_and_heldout_targets(tmp_path):
    folder = prepared(tmp_path)
    assert (folder / f"{folder.name}{HELDOUT_SUFFIX}").is_file()
    config, train, test = split_views(folder)
    model = registry.get_model_class("Pop")(config, train)
    result = Evaluator(config).evaluate(model, test, tasks=["behavior_specific", "target_behavior"])
    assert result["behavior_specific"].to_record()["targets"] == {"targets": 4, "in_window": 1, "cold": 2,
                                                                  "heldout": 2}
    # target_behavior counts users whose target is a buy: users 0 and 2 (held-out) and 1 (logged buy of 4)
    assert result["target_behavior"].to_record()["targets"] == {"targets": 3, "in_window": 1, "cold": 1,
                                                                "heldout": 2}


def test_heldout_falls_back_on_the_raw_file_then_says_unknown(tmp_path):
    folder = prepared(tmp_path)
    (folder / f"{folder.name}{HELDOUT_SUFFIX}").unlink()  # a folder prepared before the file existed
    _, _, test = split_views(folder)
    flags = [False] * len(test.target_rows)
    assert target_kinds(test, test.target_rows, flags)["heldout"] == 2
    for name in ("trn_view", "trn_cart", "trn_buy", "tst_int"):
        (tmp_path / "rr" / name).unlink()
    _, _, test = split_views(folder)
    assert target_kinds(test, test.target_rows, flags)["heldout"] == UNKNOWN


def test_no_heldout_count_when_heldout_items_are_ignored(tmp_path):
    folder = prepared(tmp_path, heldout="ignore")
    _, _, test = split_views(folder)
    counts = target_kinds(test, test.target_rows, [False] * len(test.target_rows))
    assert counts["heldout"] is None and counts["targets"] == len(test.target_rows)
