"""The multi-behavior dataset: behavior ids, ordering, leave-one-out, windows, no leakage."""

import os
from pathlib import Path

import numpy as np
import pytest

from mbrec.data.dataset import DatasetError, MultiBehaviorSequentialDataset
from tests.conftest import make_config, write_inter

BEHAVIORS = ["view", "cart", "buy"]


def build(tmp_path, rows, **overrides):
    dataset_dir = write_inter(tmp_path, "tiny", rows)
    overrides.setdefault("behaviors", BEHAVIORS)
    config = make_config("SASRec", dataset_dir, **overrides)
    dataset = MultiBehaviorSequentialDataset(config)
    return dataset, dataset.build()


def sequence_of(dataset, user):
    uid = dataset.token2id(dataset.uid_field, user)
    rows = np.flatnonzero(dataset.row_arrays[dataset.uid_field] == uid)
    items = dataset.id2token(dataset.iid_field, dataset.row_arrays[dataset.iid_field][rows])
    behaviors = dataset.id2token(dataset.behavior_field, dataset.row_arrays[dataset.behavior_field][rows])
    return rows, list(zip(items, behaviors))


def test_behavior_ids_follow_configured_vocabulary(tmp_path, tiny_rows):
    dataset, _ = build(tmp_path, tiny_rows)
    assert list(dataset.field2id_token["behavior"]) == ["[PAD]", "view", "cart", "buy"]
    assert dataset.target_behavior_id == 3
    assert dataset.n_behaviors == 4


def test_sort_is_stable_by_time_and_short_users_dropped(tmp_path, tiny_rows):
    dataset, _ = build(tmp_path, tiny_rows)
    _, user_a = sequence_of(dataset, "a")
    assert user_a == [("i1", "buy"), ("i2", "view"), ("i3", "view"), ("i3", "cart"), ("i4", "view"), ("i3", "buy")]
    _, user_b = sequence_of(dataset, "b")
    assert user_b == [("i5", "view"), ("i2", "cart"), ("i2", "view")]
    assert "c" not in set(dataset.field2id_token[dataset.uid_field])


def test_leave_one_out_split(tmp_path, tiny_rows):
    dataset, (train, valid, test) = build(tmp_path, tiny_rows)
    rows_a, _ = sequence_of(dataset, "a")
    rows_b, _ = sequence_of(dataset, "b")
    assert sorted(test.target_rows) == sorted([rows_a[-1], rows_b[-1]])
    assert sorted(valid.target_rows) == sorted([rows_a[-2], rows_b[-2]])
    # training targets: from each user's second row up to (excluding) the valid target
    assert sorted(train.target_rows) == sorted(list(rows_a[1:-2]) + list(rows_b[1:-2]))
    assert not set(train.target_rows) & (set(valid.target_rows) | set(test.target_rows))
    # the training view's interactions never include valid or test targets
    visible = set(map(tuple, zip(train.inter_feat["user_id"].tolist(), train.inter_feat["timestamp"].tolist())))
    for row in list(valid.target_rows) + list(test.target_rows):
        key = (int(dataset.row_arrays["user_id"][row]), float(dataset.inter_feat["timestamp"][row]))
        assert key not in visible


def test_input_window_is_strictly_before_target_and_truncated(tmp_path, tiny_rows):
    dataset, (_, _, test) = build(tmp_path, tiny_rows, MAX_ITEM_LIST_LENGTH=3)
    rows_a, seq_a = sequence_of(dataset, "a")
    batch = dataset.make_batch(np.array([rows_a[-1]]))
    assert batch["item_length"].tolist() == [3]
    items = dataset.id2token("item_id", batch["item_id_list"][0, :3].numpy())
    behaviors = dataset.id2token("behavior", batch["behavior_list"][0, :3].numpy())
    assert list(zip(items, behaviors)) == seq_a[-4:-1]  # the 3 interactions before the target
    window, lengths = dataset.input_window(test.target_rows)
    for target, row_window, length in zip(test.target_rows, window, lengths):
        used = row_window[:length]
        assert (used < target).all() and (row_window[length:] == -1).all()
        assert (dataset.row_arrays["user_id"][used] == dataset.row_arrays["user_id"][target]).all()


def test_eval_batches_carry_only_the_allowed_hint(tmp_path, tiny_rows):
    dataset, (_, _, test) = build(tmp_path, tiny_rows)
    rows = test.target_rows
    blind = dataset.make_batch(rows)
    assert "item_id" not in blind and "behavior" not in blind
    told = dataset.make_batch(rows, behavior_hint="true")
    assert "item_id" not in told
    assert told["behavior"].tolist() == dataset.target_behaviors(rows).tolist()
    asked = dataset.make_batch(rows, behavior_hint=dataset.target_behavior_id)
    assert set(asked["behavior"].tolist()) == {3}
    train_batch = dataset.make_batch(rows, with_target=True)
    assert train_batch["item_id"].tolist() == dataset.target_items(rows).tolist()


def test_unknown_behavior_is_a_clear_error(tmp_path, tiny_rows):
    rows = tiny_rows + [("a", "i9", "like", 99)]
    with pytest.raises(DatasetError, match="like"):
        build(tmp_path, rows)


def test_all_users_filtered_out_is_a_clear_error(tmp_path, tiny_rows):
    with pytest.raises(DatasetError, match="filtered out"):
        build(tmp_path, tiny_rows, min_user_inter=50)


def test_missing_behavior_column_is_a_clear_error(tmp_path):
    folder = tmp_path / "nobeh"
    folder.mkdir()
    (folder / "nobeh.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\na\ti1\t1\n")
    with pytest.raises(DatasetError, match="behavior"):
        MultiBehaviorSequentialDataset(make_config("SASRec", folder, behaviors=BEHAVIORS))


@pytest.mark.skipif(not os.environ.get("MBREC_DATA_DIR"), reason="MBREC_DATA_DIR not set")
def test_real_retailrocket_split_has_no_target_leakage(tmp_path):
    from mbrec.data.prepare import prepare

    folder = prepare("retailrocket", cache_dir=tmp_path)
    config = make_config("SASRec", Path(folder), base_dataset="retailrocket")
    dataset = MultiBehaviorSequentialDataset(config)
    train, valid, test = dataset.build()
    # every user kept (>= 3 interactions; 16 of 2,174 have fewer) has a held-out buy appended
    assert len(test.target_rows) == dataset.user_num - 1 == 2158
    assert (dataset.target_behaviors(test.target_rows) == dataset.target_behavior_id).all()
    window, lengths = dataset.input_window(test.target_rows)
    items = dataset.row_arrays["item_id"]
    for target, row_window, length in zip(test.target_rows, window, lengths):
        assert (row_window[:length] < target).all()
        # heldout: append -> the test item is new to the user (shared README), never in its input
        assert items[target] not in set(items[row_window[:length]])
    assert (valid.target_rows + 1 == test.target_rows).all()  # valid = the row just before test


def test_target_in_window_sees_only_the_truncated_window(tmp_path):
    rows = [
        ("u", "i7", "view", 1), ("u", "i8", "view", 2), ("u", "i9", "view", 3), ("u", "i7", "buy", 4),
        ("v", "i1", "view", 1), ("v", "i2", "view", 2), ("v", "i1", "cart", 3), ("v", "i3", "buy", 4),
    ]
    # Window 2: u's test target i7 was seen 3 rows back (outside); v's valid target i1 is inside.
    dataset, (_, valid, test) = build(tmp_path / "short", rows, MAX_ITEM_LIST_LENGTH=2)
    users = dataset.user_tokens(test.target_rows).tolist()
    assert dict(zip(users, dataset.target_in_window(test.target_rows).tolist())) == {"u": False, "v": False}
    valid_users = dataset.user_tokens(valid.target_rows).tolist()
    assert dict(zip(valid_users, dataset.target_in_window(valid.target_rows).tolist())) == {"u": False, "v": True}
    # Window 50: u's i7 is in it; chunking gives the same answer as one pass.
    dataset, (_, _, test) = build(tmp_path / "long", rows)
    users = dataset.user_tokens(test.target_rows).tolist()
    assert dict(zip(users, dataset.target_in_window(test.target_rows, chunk_size=1).tolist())) == {
        "u": True, "v": False}


def test_unsorted_file_orders_by_exact_time_within_float32_spacing(tmp_path):
    """RecBole holds ``timestamp:float`` as float32 (128 s apart at Unix times): order by the exact time."""
    base = 1_500_000_000  # a multiple of 128: base + 10 and base + 60 both round to base in float32
    rows = [("u", "i_old", "view", base - 1000), ("u", "i_late", "buy", base + 60), ("u", "i_early", "cart", base + 10),
            ("v", "i_early", "view", base + 5), ("v", "i_old", "view", base + 1), ("v", "i_late", "view", base + 3)]
    dataset, (_, valid, test) = build(tmp_path, rows)
    _, user_u = sequence_of(dataset, "u")
    assert user_u == [("i_old", "view"), ("i_early", "cart"), ("i_late", "buy")]
    _, user_v = sequence_of(dataset, "v")
    assert [item for item, _ in user_v] == ["i_old", "i_late", "i_early"]
    targets = dict(zip(test.user_tokens(test.target_rows), test.target_items(test.target_rows)))
    assert dataset.id2token(dataset.iid_field, targets["u"]) == "i_late"
    assert dataset.id2token(dataset.iid_field, targets["v"]) == "i_early"
