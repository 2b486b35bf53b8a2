"""Training units: sequence-mode windows cover exactly prefix mode's targets, never valid/test ones."""

from collections import Counter

import numpy as np
import pytest
import torch
from recbole.utils import init_seed

from mbrec.config import ConfigError
from mbrec.data.dataset import (TARGET_BEHAVIOR_LIST, TARGET_ITEM_LIST, DatasetError,
                                MultiBehaviorSequentialDataset, SequenceLoader, WindowLoader)
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
@pytest.mark.parametrize("cloze_window_rows, width", [("window", WINDOW), ("window+slot", WINDOW + 1)])
def test_cloze_windows_stay_inside_the_training_part(splits, random_window_prob, cloze_window_rows, width):
    config, dataset, (train, valid, test) = splits
    starts, sizes = dataset.training_parts()
    init_seed(5, True)
    config["cloze_random_window_prob"] = random_window_prob
    loader = WindowLoader(config, train, len(starts), kind="cloze", cloze_window_rows=cloze_window_rows)
    windows = loader.epoch_batches()[0]
    assert len(windows) == len(starts)  # one window per user with a training part
    windows = windows[np.argsort(windows[:, 0])]  # the loader shuffles; back in the parts' order
    assert (windows[:, 0] >= starts).all() and (windows[:, 0] + windows[:, 1] <= starts + sizes).all()
    assert (windows[:, 1] == np.minimum(sizes, width)).all()
    if random_window_prob == 0.0:
        assert (windows[:, 0] + windows[:, 1] == starts + sizes).all()  # the part's last rows
    else:
        assert (windows[:, 0] + windows[:, 1] < starts + sizes).any()  # some drawn windows end earlier
    touched = set(window_rows(windows).tolist())
    assert touched.isdisjoint(valid.target_rows.tolist()) and touched.isdisjoint(test.target_rows.tolist())
    batch = loader.build_batch(windows)
    assert TARGET_ITEM_LIST not in batch and (batch["item_length"].numpy() == windows[:, 1]).all()
    assert batch["item_id_list"].shape == (len(windows), width)


def test_an_unknown_cloze_window_rule_is_a_clear_error(splits):
    config, _, (train, _, _) = splits
    with pytest.raises(DatasetError, match="cloze_window_rows"):
        WindowLoader(config, train, 7, kind="cloze", cloze_window_rows="window+2")


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

    config["train_unit"] = "prefix"
    assert type(Trainer(config, CausalStub(), "cpu").train_loader(train)) is SequenceLoader
    config["train_unit"] = "sequence"
    assert isinstance(Trainer(config, CausalStub(), "cpu").train_loader(train), WindowLoader)


# ----- sequence_batch: what train_batch_size counts in a causal sequence-mode batch ------------------

def epoch_targets(batches, dataset):
    """(user, item, behavior) of every target the windows of ``batches`` predict."""
    users, items, behaviors = (dataset.row_arrays[field] for field in ("user_id", "item_id", "behavior"))
    rows = np.concatenate([np.arange(first + 1, first + n_rows) for windows in batches for first, n_rows in windows])
    return Counter(zip(users[rows].tolist(), items[rows].tolist(), behaviors[rows].tolist()))


def test_window_batches_hold_train_batch_size_windows_and_every_training_target_once(splits):
    config, dataset, (train, valid, test) = splits
    prefix = Counter()
    for batch in SequenceLoader(config, train, 7, shuffle=True, training=True):
        prefix.update(zip(batch["user_id"].tolist(), batch["item_id"].tolist(), batch["behavior"].tolist()))
    config["sequence_batch"] = "windows"
    loader = WindowLoader(config, train, 7, kind="causal")
    init_seed(3, True)
    batches = loader.epoch_batches()
    assert [len(windows) for windows in batches[:-1]] == [7] * (len(batches) - 1) and 1 <= len(batches[-1]) <= 7
    assert len(batches) == len(loader) == -(-len(dataset.causal_windows()) // 7)
    assert len(batches) < -(-len(train.target_rows) // 7)  # fewer optimizer steps than prefix mode
    assert epoch_targets(batches, dataset) == prefix and sum(prefix.values()) == len(train.target_rows)
    touched = set(window_rows(np.concatenate(batches)).tolist())
    assert touched.isdisjoint(valid.target_rows.tolist()) and touched.isdisjoint(test.target_rows.tolist())
    built = [loader.build_batch(windows) for windows in batches]
    assert sum(int((batch[TARGET_ITEM_LIST] > 0).sum()) for batch in built) == len(train.target_rows)
    assert all(batch["item_id_list"].shape == (len(windows), WINDOW) for batch, windows in zip(built, batches))


def test_by_default_a_batch_holds_about_train_batch_size_targets(splits):
    config, dataset, (train, _, _) = splits
    assert config["sequence_batch"] is None  # no layer sets it: the run keys of existing runs stay as they were
    init_seed(3, True)
    default = WindowLoader(config, train, 7, kind="causal").epoch_batches()
    config["sequence_batch"] = "targets"
    init_seed(3, True)
    explicit = WindowLoader(config, train, 7, kind="causal").epoch_batches()
    assert len(default) == len(explicit) and all(np.array_equal(a, b) for a, b in zip(default, explicit))
    # the blocks of targets of the unit before sequence_batch existed: a batch starts each 7th target
    init_seed(3, True)
    windows = dataset.causal_windows()[torch.randperm(len(dataset.causal_windows())).numpy()]
    starts = np.cumsum([0] + [len(batch) for batch in default[:-1]])
    targets_before = np.concatenate([[0], np.cumsum(windows[:, 1] - 1)[:-1]])
    assert np.array_equal(np.concatenate(default), windows)
    assert np.array_equal(targets_before[starts] // 7, np.arange(len(default)))
    assert epoch_targets(default, dataset) == epoch_targets([windows], dataset)


def test_cloze_windows_are_counted_the_same_with_either_setting(splits):
    config, _, (train, _, _) = splits
    n_users = len(train.training_parts()[0])
    for counts in (None, "windows"):
        config["sequence_batch"] = counts
        loader = WindowLoader(config, train, 7, kind="cloze")
        assert [len(windows) for windows in loader.epoch_batches()][:-1] == [7] * (len(loader) - 1)
        assert len(loader) == -(-n_users // 7)


def test_sequence_batch_is_checked_against_the_unit_and_enters_the_run_key(tmp_path):
    from mbrec import results
    from mbrec.benchmark import integrity
    from mbrec.config import merge_layers

    folder = write_inter(tmp_path, "varied", varied_rows())
    with pytest.raises(ConfigError, match="sequence_batch must be one of"):
        make_config("SASRec", folder, behaviors=BEHAVIORS, sequence_batch="users")
    with pytest.raises(ConfigError, match="does not apply to BERT4Rec"):
        make_config("BERT4Rec", folder, behaviors=BEHAVIORS, sequence_batch="targets")
    with pytest.raises(ConfigError, match="does not apply to SASRec with train_unit: prefix"):
        make_config("SASRec", folder, behaviors=BEHAVIORS, train_unit="prefix", sequence_batch="windows")
    assert make_config("SASRec", folder, behaviors=BEHAVIORS, sequence_batch="windows")["sequence_batch"] == "windows"
    keys = {counts: results.run_key("SASRec", "synthetic", integrity.key_settings(
        merge_layers("SASRec", "synthetic", overrides={} if counts is None else {"sequence_batch": counts})), 1, "d")
        for counts in (None, "windows")}
    assert keys[None] != keys["windows"]  # a known key (not refused as unknown), and in the run key


# ----- causal models: one sequence-mode pass = the prefix examples' losses ---------------------------

CAUSAL_MODELS = ["SASRec", "GRU4Rec", "SASRec_B", "SASRec_MB", "PBAT"]
BEHAVIOR_CONDITIONED = ["SASRec_B", "SASRec_MB", "PBAT"]
NO_DROPOUT = dict(hidden_size=16, inner_size=32, embedding_size=16, n_layers=1, hidden_dropout_prob=0.0,
                  attn_dropout_prob=0.0, dropout_prob=0.0, behavior_dropout_prob=0.0)


def causal_model(tmp_path, model_name, n_users=16):
    config = make_config(model_name, write_inter(tmp_path, "varied", varied_rows(n_users)), behaviors=BEHAVIORS,
                         MAX_ITEM_LIST_LENGTH=WINDOW, train_unit="sequence", **NO_DROPOUT)
    dataset = MultiBehaviorSequentialDataset(config)
    train, _, _ = dataset.build()
    init_seed(11, True)
    from mbrec.registry import get_model_class

    model = get_model_class(model_name)(config, train).eval()
    with torch.no_grad():  # away from the near-uniform initialisation, so that a wrong input shows in the losses
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    return dataset, model, config


def prefix_loss(model, dataset, target_row):
    """The model's own prefix-mode ``calculate_loss`` on the single example of ``target_row``."""
    model.sequence_training = False
    try:
        return model.calculate_loss(dataset.make_batch(np.array([target_row]), with_target=True))
    finally:
        model.sequence_training = True


@pytest.mark.parametrize("model_name", CAUSAL_MODELS)
def test_sequence_pass_losses_equal_the_prefix_examples_losses(tmp_path, model_name):
    dataset, model, _ = causal_model(tmp_path, model_name)
    assert model.train_unit_kind == "causal" and model.sequence_training
    windows = dataset.causal_windows()
    batch = dataset.make_window_batch(windows, causal=True)
    with torch.no_grad():
        per_position = model.position_losses(batch)  # [W, L]
        part_starts = set(dataset.training_parts()[0].tolist())
        compared = 0
        for index, (first, n_rows) in enumerate(windows):
            # The first window of a part shows every position its prefix history; a later one only its
            # full last position (module docstring of mbrec.data.dataset).
            positions = range(n_rows - 1) if first in part_starts else [WINDOW - 1] if n_rows == WINDOW + 1 else []
            for position in positions:
                expected = prefix_loss(model, dataset, first + position + 1)
                torch.testing.assert_close(per_position[index, position], expected, rtol=1e-4, atol=1e-5)
                compared += 1
        assert (per_position[batch["item_length"].unsqueeze(1) <= torch.arange(WINDOW)] == 0).all()
        assert compared > 40
        # the batch loss is the mean over every target position of the batch
        real = per_position[batch[TARGET_ITEM_LIST] > 0]
        torch.testing.assert_close(model.calculate_loss(batch), real.mean())


@pytest.mark.parametrize("model_name", BEHAVIOR_CONDITIONED)
def test_each_position_is_asked_the_behavior_of_the_interaction_it_predicts(tmp_path, model_name):
    dataset, model, _ = causal_model(tmp_path, model_name)
    batch = dataset.make_window_batch(dataset.causal_windows(), causal=True)
    window, position = int(torch.nonzero(batch["item_length"] > 2)[0]), 1  # a middle position of a window
    changed = batch[TARGET_BEHAVIOR_LIST].clone()
    changed[window, position] = changed[window, position] % 3 + 1  # another real behavior
    altered = copy_batch(batch, **{TARGET_BEHAVIOR_LIST: changed})
    with torch.no_grad():
        difference = (model.position_losses(batch) - model.position_losses(altered)).abs() > 1e-6
    assert difference[window, position] and difference.sum() == 1  # that position's loss, no other


def copy_batch(batch, **fields):
    from recbole.data.interaction import Interaction

    return Interaction({**{name: value.clone() for name, value in batch.interaction.items()}, **fields})


def test_prefix_mode_of_the_registered_sasrec_is_recboles(tmp_path):
    """The registry's SASRec is RecBole's class plus sequence training: same parameters, same prefix loss."""
    from recbole.model.sequential_recommender.sasrec import SASRec as RecBoleSASRec

    dataset, model, config = causal_model(tmp_path, "SASRec")
    stock = RecBoleSASRec(config, dataset.build()[0]).eval()
    stock.load_state_dict(model.state_dict())  # same parameter names and shapes
    train_rows = dataset.build()[0].target_rows[:20]
    batch = dataset.make_batch(train_rows, with_target=True)
    model.sequence_training = False
    with torch.no_grad():
        torch.testing.assert_close(model.calculate_loss(batch), stock.calculate_loss(batch))
        torch.testing.assert_close(model.full_sort_predict(batch), stock.full_sort_predict(batch))


def test_sequence_training_fits_through_the_trainer(tmp_path):
    dataset, model, config = causal_model(tmp_path, "SASRec_MB")
    train, valid, _ = dataset.build()
    trainer = Trainer(config, model.train(), "cpu")
    trainer.epochs = 2
    summary = trainer.fit(train, valid, tmp_path / "best.pth")
    assert summary["epochs_run"] == 2 and all(entry["loss"] > 0 for entry in trainer.history)
