"""Settings are checked before any data work: unknown keys (with a did-you-mean), types and ranges."""

import pytest
import yaml

from mbrec import registry
from mbrec.cli import main
from mbrec.config import ConfigError, merge_layers
from mbrec.utils import PROPERTIES_DIR


# A tiny synthetic set and one epoch: where a check were missing, the run would be over quickly.
TINY_RUN = ["prepare.size={n_users: 60, n_items: 50, n_categories: 5}", "epochs=1"]


def run_cli(tmp_path, capsys, *args, model="SASRec"):
    code = main(["--model", model, "--dataset", "synthetic", "--results-dir", str(tmp_path / "results"),
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress", *TINY_RUN, *args])
    return code, capsys.readouterr().err


def test_misspelt_key_stops_the_run_before_data_loading(tmp_path, capsys):
    code, err = run_cli(tmp_path, capsys, "epoch=5")
    assert code == 1
    assert "unknown config key 'epoch' (command line)" in err and "did you mean 'epochs'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "cache").exists()  # nothing prepared
    assert not [path for path in (tmp_path / "results").rglob("*") if path.is_file()]  # nothing written


def test_misspelt_key_in_a_config_file_names_the_file(tmp_path):
    config_file = tmp_path / "my.yaml"
    config_file.write_text("learning_rat: 0.01\n")
    with pytest.raises(ConfigError, match=r"'learning_rat' \(in .*my.yaml\).*did you mean 'learning_rate'"):
        merge_layers("SASRec", "synthetic", [config_file])


def test_a_key_of_another_model_is_refused():
    with pytest.raises(ConfigError, match="'guidance_weight'.*no config layer of SASRec.*setting of FatsMB"):
        merge_layers("SASRec", "synthetic", overrides={"guidance_weight": 2.0})
    assert merge_layers("FatsMB", "synthetic", overrides={"guidance_weight": 2.0})["guidance_weight"] == 2.0
    # RecBole's own keys of the model stay known (BERT4Rec's mask_ratio is in RecBole's YAML only)
    assert merge_layers("BERT4Rec", "synthetic", overrides={"mask_ratio": 0.3})["mask_ratio"] == 0.3
    with pytest.raises(ConfigError, match="'mask_ratio'"):
        merge_layers("SASRec", "synthetic", overrides={"mask_ratio": 0.3})


def test_unknown_prepare_option_has_a_did_you_mean():
    with pytest.raises(ConfigError, match=r"'prepare.sise'.*did you mean 'prepare.size'"):
        merge_layers("SASRec", "synthetic", overrides={"prepare": {"sise": "medium"}})


@pytest.mark.parametrize("override, words", [
    ("epochs=abc", "epochs must be an integer >= 1, got 'abc'"),
    ("epochs=0", "epochs must be an integer >= 1, got 0"),
    ("hidden_size=big", "hidden_size must be an integer >= 1, got 'big'"),
    ("learning_rate=-1", "learning_rate must be a number >= 0, got -1"),
    ("hidden_dropout_prob=1.5", "hidden_dropout_prob must be a probability in [0, 1), got 1.5"),
    ("attn_dropout_prob=-0.1", "attn_dropout_prob must be a probability in [0, 1), got -0.1"),
    ("stopping_min_epochs={'mbae':-3}", "stopping_min_epochs [mbae] must be an integer >= 0, got -3"),
])
def test_bad_values_get_one_line_naming_the_key(tmp_path, capsys, override, words):
    code, err = run_cli(tmp_path, capsys, override)
    assert code == 1
    assert words in err and "Traceback" not in err
    failed = [line for line in err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and words in failed[0]
    assert not (tmp_path / "cache").exists()


def test_several_bad_values_one_line_each():
    with pytest.raises(ConfigError) as caught:
        merge_layers("SASRec", "synthetic", overrides={"epochs": "abc", "learning_rate": -1.0})
    lines = str(caught.value).splitlines()
    assert len(lines) == 2 and "epochs" in lines[0] and "learning_rate" in lines[1]


@pytest.mark.parametrize("grid", sorted((PROPERTIES_DIR / "hyper").glob("*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_grid_parameter_is_a_known_key(grid):
    """No false refusal: every parameter the shipped sweep grids tune is accepted for their model."""
    space = yaml.safe_load(grid.read_text())["space"]
    overrides = {}
    for name in space:
        *parents, leaf = name.split(".")
        node = overrides
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = None  # None: the key is checked, its value is the YAML's
    merge_layers(grid.stem, "synthetic", overrides=overrides)


@pytest.mark.parametrize("model", registry.model_names())
def test_every_model_yaml_passes_the_value_checks(model):
    merge_layers(model, "synthetic")


def test_model_name_in_the_wrong_case_suggests_the_right_one(tmp_path, capsys):
    code, err = run_cli(tmp_path, capsys, model="sasrec")
    assert code == 1
    assert "Unknown model 'sasrec'. Did you mean 'SASRec'?" in err
    failed = [line for line in err.splitlines() if line.startswith("FAILED")]
    assert failed and "seed=None" not in failed[0] and "default seed" in failed[0]
    assert "seed None" not in err


def test_a_key_of_another_model_in_the_same_command_is_accepted():
    """``--models SASRec Pop n_layers=1``: n_layers is meant for SASRec, not a misspelling."""
    assert merge_layers("Pop", "synthetic", overrides={"n_layers": 1}, command_models=["SASRec", "Pop"])
    with pytest.raises(ConfigError, match="no config layer of Pop or Recent knows it"):
        merge_layers("Pop", "synthetic", overrides={"n_layers": 1}, command_models=["Pop", "Recent"])
