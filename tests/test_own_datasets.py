"""A user's own data: datasets declared outside the repository, one raw input per prepared folder,
one code path for prepare options (runner and command line), structural checks on raw data."""

import logging
import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from mbrec.benchmark.runner import plan_run, prepare_data
from mbrec.config import merge_layers
from mbrec.data import DataPreparationError, prepare
from mbrec.data.__main__ import main as data_main
from mbrec.data.declarations import DATASET_FILES_ENV
from mbrec.data.prepare import read_meta


@pytest.fixture(autouse=True)
def no_declared_datasets(monkeypatch):
    """Each test starts with no user declarations (the flag writes them into the environment)."""
    monkeypatch.delenv(DATASET_FILES_ENV, raising=False)


def write_pickle(path, obj):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


def write_shop_matrices(folder, shapes=None, heldout=None):
    """A pickled-matrix set with its own file names: 3 users x 5 items, clicks and orders."""
    folder.mkdir(parents=True, exist_ok=True)
    shapes = shapes or {"clicks.pkl": (3, 5), "orders.pkl": (3, 5)}
    clicks = sp.csr_matrix(([10, 20, 30, 40], ([0, 1, 2, 2], [1, 2, 3, 4])), shape=(3, 5))
    orders = sp.csr_matrix(([11, 31], ([0, 2], [1, 3])), shape=(3, 5))
    for name, matrix in (("clicks.pkl", clicks), ("orders.pkl", orders)):
        write_pickle(folder / name, matrix if shapes[name] == (3, 5) else sp.csr_matrix(matrix.T))
    write_pickle(folder / "holdout.pkl", heldout if heldout is not None else [4, None, 0])


SHOP_YAML = """\
behaviors: [click, order]
target_behavior: order
min_user_inter: 1
heldout: append
prepare:
  format: matrices
  raw: raw                       # relative to this file
  files: {click: clicks.pkl, order: orders.pkl}
  heldout_file: holdout.pkl
"""


def declare_shop(tmp_path, text=SHOP_YAML, name="my_shop"):
    home = tmp_path / "home"
    write_shop_matrices(home / "raw")
    declaration = home / f"{name}.yaml"
    declaration.write_text(text)
    return declaration


# ----------------------------------------------------------------------------- own datasets
def test_declared_dataset_prepares_and_plans_runs_under_its_own_name(tmp_path, capsys, monkeypatch):
    declaration = declare_shop(tmp_path)
    monkeypatch.chdir(tmp_path)  # any directory
    cache = tmp_path / "cache"
    assert data_main(["prepare", "my_shop", "--dataset-file", str(declaration), "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert f"-> {cache / 'my_shop'}" in out
    meta = read_meta(cache / "my_shop")
    assert meta["dataset"] == "my_shop" and meta["behavior_counts"] == {"click": 4, "order": 4}
    assert meta["raw_files"]["click"] == str(tmp_path / "home" / "raw" / "clicks.pkl")

    plan = plan_run("Pop", "my_shop", cache_dir=cache, results_dir=tmp_path / "results")
    assert plan.dataset_dir == cache / "my_shop" and plan.canonical == "my_shop"
    assert "my_shop" in plan.path.parts  # results are filed under the declared name
    assert plan.settings["behaviors"] == ["click", "order"]  # the declaration is the dataset's config layer


def test_run_key_follows_the_data_content_not_its_path_or_file_times(tmp_path, monkeypatch):
    """Committed reference records must be found again on another machine, or after the raw data
    was copied anew (new paths, new file times); a changed held-out list must change the key."""
    from mbrec.data.declarations import use_dataset_files

    def key_for(home_name, heldout=None):
        home = tmp_path / home_name
        write_shop_matrices(home / "raw", heldout=heldout)
        (home / "my_shop.yaml").write_text(SHOP_YAML)
        monkeypatch.delenv(DATASET_FILES_ENV, raising=False)  # one declaration of the name at a time
        use_dataset_files([home / "my_shop.yaml"])
        plan = plan_run("Pop", "my_shop", cache_dir=tmp_path / f"cache_{home_name}", results_dir=tmp_path / "r")
        return plan.key, read_meta(plan.dataset_dir)["fingerprint"]

    key_a, folder_fingerprint_a = key_for("machine_a")
    key_b, folder_fingerprint_b = key_for("machine_b")
    assert folder_fingerprint_a != folder_fingerprint_b  # the folder's own fingerprint hashes raw paths
    assert key_a == key_b
    key_c, _ = key_for("machine_c", heldout=[3, None, 0])
    assert key_c != key_a


def test_run_command_accepts_a_dataset_file(tmp_path, capsys):
    from mbrec.cli import main

    declaration = declare_shop(tmp_path)
    assert main(["--dataset-file", str(declaration), "--list"]) == 0
    assert "my_shop" in capsys.readouterr().out


def test_a_dataset_file_cannot_take_a_built_in_name(tmp_path, capsys):
    declaration = declare_shop(tmp_path, name="amazon_beauty")
    assert data_main(["prepare", "amazon_beauty", "--dataset-file", str(declaration),
                      "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert "built-in dataset" in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()


def test_unknown_dataset_says_how_to_declare_one(tmp_path):
    with pytest.raises(DataPreparationError, match="--dataset-file"):
        prepare("my_shop", cache_dir=tmp_path)


# ----------------------------------------------------------------------------- one raw input per folder
def write_diffurec(path, sequences):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_pickle(path, {"train": {u: s[:-2] for u, s in sequences.items()},
                        "val": {u: s[-2:-1] for u, s in sequences.items()},
                        "test": {u: s[-1:] for u, s in sequences.items()}})


def test_a_second_raw_input_never_replaces_a_prepared_folder(tmp_path):
    real, other = tmp_path / "real" / "dataset.pkl", tmp_path / "other" / "dataset.pkl"
    write_diffurec(real, {1: [1, 2, 3, 4]})
    write_diffurec(other, {7: [9, 8, 7, 6, 5]})
    folder = prepare("amazon_beauty", raw_path=real, cache_dir=tmp_path / "cache")
    before = (folder / "amazon_beauty.inter").read_text()
    with pytest.raises(DataPreparationError) as caught:
        prepare("amazon_beauty", raw_path=other, cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert str(real) in message and str(other) in message and "--dataset-file" in message
    assert (folder / "amazon_beauty.inter").read_text() == before  # the real data stayed
    # the same path with new content rebuilds (a re-downloaded file), as before
    write_diffurec(real, {1: [1, 2, 3, 4, 5]})
    assert read_meta(prepare("amazon_beauty", raw_path=real, cache_dir=tmp_path / "cache"))["n_rows"] == 5
    # --force replaces the folder on purpose
    assert read_meta(prepare("amazon_beauty", raw_path=other, cache_dir=tmp_path / "cache",
                             force=True))["n_rows"] == 5


def test_raw_path_nowhere_names_the_prepared_copy_and_its_raw_source(tmp_path, caplog):
    real = tmp_path / "real" / "dataset.pkl"
    write_diffurec(real, {1: [1, 2, 3, 4]})
    folder = prepare("amazon_beauty", raw_path=real, cache_dir=tmp_path / "cache")
    with caplog.at_level(logging.WARNING):
        assert prepare("amazon_beauty", data_path=tmp_path / "typo", cache_dir=tmp_path / "cache") == folder
    assert str(folder) in caplog.text and str(real) in caplog.text and str(tmp_path / "typo") in caplog.text


# ----------------------------------------------------------------------------- one code path for options
def test_a_new_format_replaces_the_yaml_file_list_in_the_runner(tmp_path):
    settings = merge_layers("Pop", "ijcai", overrides={"prepare": {"format": "ijcai15"}})
    assert "files" not in settings["prepare"] and "heldout_file" not in settings["prepare"]
    settings = merge_layers("Pop", "retailrocket", overrides={"prepare": {"files": {"view": "v.pkl"}}})
    assert settings["prepare"]["files"] == {"view": "v.pkl"}  # replaced, not merged entry by entry

    raw = tmp_path / "data" / "ijcai"
    raw.mkdir(parents=True)
    (raw / "user_log_format1.csv").write_text("user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type\n"
                                              "3,50,6,1,2,1111,2\n3,51,6,1,2,0511,0\n")
    settings = merge_layers("Pop", "ijcai", overrides={"prepare": {"format": "ijcai15"}})
    name, folder = prepare_data("ijcai", settings, data_path=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert name == "ijcai" and read_meta(folder)["n_rows"] == 2  # the README's own command


def test_missing_file_names_the_option_that_names_it(tmp_path):
    raw = tmp_path / "ijcai"
    raw.mkdir()
    with pytest.raises(DataPreparationError) as caught:
        prepare("ijcai", raw_path=raw, cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert "train_mat_buy.pkl (prepare.files.buy)" in message
    assert "test_mat.pkl (prepare.heldout_file)" in message


# ----------------------------------------------------------------------------- structural checks
@pytest.mark.parametrize("shapes, words", [
    ({"clicks.pkl": (3, 5), "orders.pkl": (5, 3)}, ["differ in shape", "click 3 x 5", "order 5 x 3", "transposed"]),
])
def test_matrices_of_different_shapes_are_refused(tmp_path, shapes, words):
    declaration = declare_shop(tmp_path)
    write_shop_matrices(tmp_path / "home" / "raw", shapes=shapes)
    assert data_main(["prepare", "my_shop", "--dataset-file", str(declaration),
                      "--cache-dir", str(tmp_path / "cache")]) == 2
    with pytest.raises(DataPreparationError) as caught:
        prepare("my_shop", cache_dir=tmp_path / "cache")
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize("heldout, word", [
    ([4, None], "2 entries"),                                                   # one user short
    ([9, None, 0], "items 0..9"),                                               # an item past the matrices
    (sp.csr_matrix(([1], ([0], [1])), shape=(5, 3)), "held-out matrix is 5 x 3"),  # transposed
])
def test_held_out_items_must_match_the_matrices(tmp_path, heldout, word):
    declaration = declare_shop(tmp_path)
    write_shop_matrices(tmp_path / "home" / "raw", heldout=heldout)
    data_main(["list", "--dataset-file", str(declaration)])
    with pytest.raises(DataPreparationError, match=word):
        prepare("my_shop", cache_dir=tmp_path / "cache")


def test_duplicates_and_odd_timestamps_are_counted_in_the_summary(tmp_path, capsys):
    raw = tmp_path / "log.csv"
    raw.write_text("user,item,behavior,timestamp\n"
                   "1,2,pv,5\n1,2,pv,5\n"          # a duplicate row
                   "1,3,buy,-7\n"                  # negative
                   "2,3,pv,1700000000000\n")       # milliseconds: far in the future as seconds
    assert data_main(["prepare", "taobao", "--raw", str(raw), "--format", "csv", "--option", "time_range=null",
                      "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "kept 1 duplicate rows" in out
    assert "kept 1 negative timestamps" in out
    assert "kept 1 timestamps later than the preparation time" in out


def test_duplicate_cells_of_a_matrix_keep_their_latest_time(tmp_path):
    declaration = declare_shop(tmp_path)
    raw = tmp_path / "home" / "raw"
    write_pickle(raw / "clicks.pkl", sp.coo_matrix(([10, 12], ([0, 0], [1, 1])), shape=(3, 5)))
    data_main(["list", "--dataset-file", str(declaration)])
    folder = prepare("my_shop", cache_dir=tmp_path / "cache")
    rows = (folder / "my_shop.inter").read_text().splitlines()[1:]
    assert "0\t1\tclick\t12" in rows and not any(row.endswith("\t22") for row in rows)  # not 10 + 12
    assert read_meta(folder)["notes"]["duplicate_cells_kept_latest"] == 1
    assert np.isfinite(read_meta(folder)["n_rows"])


def test_list_shows_variants_and_declared_datasets(tmp_path, capsys):
    declaration = declare_shop(tmp_path)
    assert data_main(["list", "--dataset-file", str(declaration), "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "my_shop " in out and "retailrocket_f10 -> retailrocket" in out  # a variant prepares its base's data
