"""Training units: sequence-mode windows cover exactly prefix mode's targets, never valid/test ones."""

from collections import Counter

import numpy as np
import pytest
import torch
from recbole.utils import init_seed

from mbrec.config import ConfigError
from mbrec.data.dataset import (TARGET_BEHAVIOR_LIST, TARGET_ITEM_LIST, MultiBehaviorSequentialDataset,
                                SequenceLoader, WindowLoader)
from mbrec.training.trainer import Trainer
from tests.conftest import make_config, write_inter

BEHAVIORS = ["view", "cart", "buy"]
WINDOW = 4  # short, so that most users' training parts need several sliding windows


def varied_rows(n_users=30):
    """Users with 1..20 interactions (some dropped, some shorter and some longer than the window)."""
    return [(f"u{user}", f"i{(3 * user + step * step) % 11}", BEHAVIORS[(user + step) % 3], step)
            for user in range(n_users) for step in range(1 + user % 20)]


@pytest.fixture
def splits(tmp_path):
    config = make_config("SASRec", write_inter(tmp_path, "varied", varied_rows()), behaviors=BEHAVIORS,
                         MAX_ITEM_LIST_LENGTH=WINDOW, train_batch_size=7)
    dataset = MultiBehaviorSequentialDataset(config)
    return config, dataset, dataset.build()


def window_rows(windows):
    """Every row each window ``(first, n_rows)`` spans."""
    return np.concatenate([np.arange(first, first + n_rows) for first, n_rows in windows])


def test_causal_windows_predict_each_prefix_target_exactly_once_and_never_valid_or_test(splits):
    _, dataset, (train, valid, test) = splits
    windows = dataset.causal_windows()
    assert (windows[:, 1] >= 2).all() and (windows[:, 1] <= WINDOW + 1).all()
    predicted = np.concatenate([np.arange(first + 1, first + n_rows) for first, n_rows in windows])
    assert sorted(predicted.tolist()) == sorted(train.target_rows.tolist())  # each once, no other row
    touched = set(window_rows(windows).tolist())
    assert touched.isdisjoint(valid.target_rows.tolist()) and touched.isdisjoint(test.target_rows.tolist())
    users = dataset.row_arrays["user_id"]
    assert all((users[first:first + n_rows] == users[first]).all() for first, n_rows in windows)  # one user each
    assert (windows[:, 1] == WINDOW + 1).sum() > 3  # the data exercises sliding windows


def test_one_epoch_of_sequence_batches_holds_the_prefix_targets_and_padding_is_never_a_target(splits):
    config, _, (train, _, _) = splits
    prefix = Counter()
    for batch in SequenceLoader(config, train, 7, shuffle=True, training=True):
        prefix.update(zip(batch["user_id"].tolist(), batch["item_id"].tolist(), batch["behavior"].tolist()))
    init_seed(3, True)
    sequence = Counter()
    loader = WindowLoader(config, train, 7, kind="causal")
    batches = list(loader)
    assert len(batches) <= len(loader)
    for batch in batches:
        lengths, targets = batch["item_length"], batch[TARGET_ITEM_LIST]
        real = torch.arange(WINDOW).unsqueeze(0) < lengths.unsqueeze(1)  # [B, L]
        assert (targets[real] > 0).all() and (targets[~real] == 0).all()
        assert (batch[TARGET_BEHAVIOR_LIST][~real] == 0).all() and (batch["item_id_list"][~real] == 0).all()
        assert real.sum() <= 7 + WINDOW - 1  # about train_batch_size targets per batch
        users = batch["user_id"].unsqueeze(1).expand_as(targets)
        sequence.update(zip(users[real].tolist(), targets[real].tolist(), batch[TARGET_BEHAVIOR_LIST][real].tolist()))
        # the next position's input is this position's target
        assert torch.equal(batch["item_id_list"][:, 1:][real[:, 1:]], targets[:, :-1][real[:, 1:]])
    assert sequence == prefix and sum(prefix.values()) == len(train.target_rows)


def test_a_short_part_is_one_window_whose_positions_see_their_prefix_inputs(splits):
    _, dataset, (train, _, _) = splits
    windows = dataset.causal_windows()
    batch = dataset.make_window_batch(windows, causal=True)
    first_rows = set(dataset.training_parts()[0].tolist())
    for index, (first, n_rows) in enumerate(windows):
        if first not in first_rows:
            continue  # a later window of a long part sees only its own rows (module docstring)
        for position in range(n_rows - 1):
            prefix = dataset.make_batch(np.array([first + position + 1]), with_target=True)
            length = int(prefix["item_length"][0])
            assert length == position + 1
            assert torch.equal(prefix["item_id_list"][0, :length], batch["item_id_list"][index, :length])
            assert torch.equal(prefix["behavior_list"][0, :length], batch["behavior_list"][index, :length])
            assert prefix["item_id"][0] == batch[TARGET_ITEM_LIST][index, position]
            assert prefix["behavior"][0] == batch[TARGET_BEHAVIOR_LIST][index, position]


@pytest.mark.parametrize("random_window_prob", [0.0, 1.0])
def test_cloze_windows_stay_inside_the_training_part(splits, random_window_prob):
    _, dataset, (_, valid, test) = splits
    starts, sizes = dataset.training_parts()
    init_seed(5, True)
    windows = dataset.cloze_windows(random_window_prob)
    assert len(windows) == len(starts)  # one window per user with a training part
    assert (windows[:, 0] >= starts).all() and (windows[:, 0] + windows[:, 1] <= starts + sizes).all()
    assert (windows[:, 1] == np.minimum(sizes, WINDOW)).all()
    if random_window_prob == 0.0:
        assert (windows[:, 0] + windows[:, 1] == starts + sizes).all()  # the part's last rows
    else:
        assert (windows[:, 0] + windows[:, 1] < starts + sizes).any()  # some drawn windows end earlier
    touched = set(window_rows(windows).tolist())
    assert touched.isdisjoint(valid.target_rows.tolist()) and touched.isdisjoint(test.target_rows.tolist())
    batch = dataset.make_window_batch(windows, causal=False)
    assert TARGET_ITEM_LIST not in batch and (batch["item_length"].numpy() == windows[:, 1]).all()


def test_unknown_or_unsupported_train_unit_is_a_clear_config_error(tmp_path):
    folder = write_inter(tmp_path, "varied", varied_rows())
    with pytest.raises(ConfigError, match="train_unit must be one of"):
        make_config("SASRec", folder, behaviors=BEHAVIORS, train_unit="prefixes")
    with pytest.raises(ConfigError, match="M3BSR does not train with train_unit: sequence"):
        make_config("M3BSR", folder, behaviors=BEHAVIORS, train_unit="sequence")


def test_unsupported_train_unit_fails_before_the_data_is_prepared(tmp_path, capsys):
    from mbrec.cli import main

    code = main(["--model", "M3BSR", "--dataset", "synthetic", "--results-dir", str(tmp_path / "results"),
                 "--cache-dir", str(tmp_path / "cache"), "train_unit=sequence"])
    assert code != 0 and "does not train with train_unit: sequence" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_the_trainer_builds_the_loader_of_the_train_unit(splits):
    config, _, (train, _, _) = splits

    class CausalStub(torch.nn.Module):
        train_unit_kind = "causal"

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

    assert type(Trainer(config, CausalStub(), "cpu").train_loader(train)) is SequenceLoader
    config["train_unit"] = "sequence"
    assert isinstance(Trainer(config, CausalStub(), "cpu").train_loader(train), WindowLoader)
