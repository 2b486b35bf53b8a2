"""Grid files and sweep planning: everything checked before Ray starts (Ray not needed here)."""

import math
import sys
from pathlib import Path

import pytest

from mbrec.benchmark import tune
from mbrec.benchmark.search_space import (GRID, LOGUNIFORM, default_grid_file, load_search_space, nested,
                                          with_ties)
from mbrec.config import ConfigError
from mbrec.utils import PROPERTIES_DIR

GRIDS = Path(__file__).parent / "grids"
TINY_DATA = {"prepare": {"size": {"n_users": 60, "n_items": 50, "n_categories": 5}}}


def test_yaml_grid_kinds_and_ties(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("space:\n"
                    "  learning_rate: {loguniform: [1.0e-4, 1.0e-2]}\n"
                    "  hidden_size: [8, 16]\n"
                    "  hidden_dropout_prob: {choice: [0.1, 0.5]}\n"
                    "  attn_dropout_prob: {same_as: hidden_dropout_prob}\n"
                    "tune:\n  num_samples: 3\n")
    space = load_search_space(path)
    assert [p.name for p in space.swept] == ["learning_rate", "hidden_size", "hidden_dropout_prob"]
    assert space.params["hidden_size"].kind == GRID and space.grid_size() == 2
    assert space.options == {"num_samples": 3}
    assert with_ties(space, {"hidden_dropout_prob": 0.1})["attn_dropout_prob"] == 0.1
    assert nested({"prepare.size": "medium", "epochs": 2}) == {"prepare": {"size": "medium"}, "epochs": 2}


def test_recbole_hyper_format():
    space = load_search_space(GRIDS / "tiny.hyper")
    learning_rate = space.params["learning_rate"]
    assert learning_rate.kind == LOGUNIFORM  # RecBole's bounds are natural logs
    assert learning_rate.values == pytest.approx([math.exp(-8), 1.0])
    assert space.params["hidden_size"].kind == GRID and space.params["hidden_size"].values == [8, 16]


@pytest.mark.parametrize("text, message", [
    ("hidden_size: [8]\n", "'space:' mapping"),
    ("space:\n  hidden_size: {between: [1, 2]}\n", "unknown kind 'between'"),
    ("space:\n  learning_rate: {loguniform: [0, 1]}\n", "low > 0"),
    ("space:\n  learning_rate: {uniform: [2, 1]}\n", "low < high"),
    ("space:\n  hidden_size: []\n", "non-empty list"),
    ("space:\n  attn_dropout_prob: {same_as: nothing}\n", "tied to 'nothing'"),
])
def test_malformed_grids_are_clear_errors(tmp_path, text, message):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_search_space(path)


@pytest.mark.parametrize("model", ["SASRec", "SASRec_MB", "BERT4Rec", "GRU4Rec"])
def test_shipped_grids_name_real_settings(tmp_path, model):
    spec, sweep_dir = tune.plan_sweep(model, "synthetic", overrides=TINY_DATA, cache_dir=tmp_path / "cache",
                                      results_dir=tmp_path / "results")
    assert spec["grid_file"] == str(default_grid_file(model).resolve())
    assert sweep_dir.parent == tmp_path / "results" / "sweeps" / spec["dataset_dir"] / model


def test_misspelt_grid_parameter_fails_before_ray(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("space:\n  hiden_size: [8, 16]\n")
    with pytest.raises(ConfigError, match="'hiden_size' is not a config key of SASRec; did you mean hidden_size"):
        tune.plan_sweep("SASRec", "synthetic", grid=path, overrides=TINY_DATA, cache_dir=tmp_path / "cache",
                        results_dir=tmp_path / "results")


def test_unknown_sweep_option_and_missing_grid(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("space:\n  hidden_size: [8, 16]\ntune:\n  num_sample: 2\n")
    with pytest.raises(ConfigError, match="Unknown sweep option"):
        tune.plan_sweep("SASRec", "synthetic", grid=path, overrides=TINY_DATA, cache_dir=tmp_path / "cache")
    assert not (PROPERTIES_DIR / "hyper" / "Recent.yaml").exists()
    with pytest.raises(ConfigError, match="No grid for Recent"):
        tune.plan_sweep("Recent", "synthetic")


def test_tune_without_ray_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # importing ray now raises ImportError
    code = tune.tune_main(["--model", "SASRec", "--dataset", "synthetic"])
    assert code == 2
    assert 'pip install -e ".[tune]"' in capsys.readouterr().err


def test_a_suite_wide_key_of_another_model_is_accepted_in_a_sweep(tmp_path):
    """A suite's shared override (GRU4Rec's embedding_size) reaches every entry's sweep: refused as misspelt
    for BERT4Rec alone, accepted when the suite's models are named, and the trials get the same list."""
    overrides = {**TINY_DATA, "embedding_size": 16}
    with pytest.raises(ConfigError, match="unknown config key 'embedding_size'"):
        tune.plan_sweep("BERT4Rec", "synthetic", overrides=overrides, cache_dir=tmp_path / "cache",
                        results_dir=tmp_path / "results")
    spec, _ = tune.plan_sweep("BERT4Rec", "synthetic", overrides=overrides, cache_dir=tmp_path / "cache",
                              results_dir=tmp_path / "results", command_models=["BERT4Rec", "GRU4Rec"])
    assert spec["command_models"] == ["BERT4Rec", "GRU4Rec"]
    named, _ = tune.plan_sweep("BERT4Rec", "synthetic", overrides={**TINY_DATA, "embedding_size": 16},
                               cache_dir=tmp_path / "cache", results_dir=tmp_path / "results",
                               command_models=["GRU4Rec"])
    assert named["name"] == spec["name"]  # the list changes no setting, so not the sweep's name either


def test_draws_never_repeat_a_configuration_and_cover_a_small_grid_whole(tmp_path):
    """6 independent draws from BERT4Rec's suite grid (12 configurations) held 4 distinct ones, so
    the same model trained 3 times; distinct draws give 6, and a 4-configuration space 4 trials."""
    from mbrec.benchmark.search_space import distinct_configurations, draw_trials

    grid = tmp_path / "g.yaml"
    grid.write_text("space:\n  learning_rate: {choice: [0.0001, 0.001]}\n  mask_ratio: {choice: [0.2, 0.4, 0.6]}\n"
                    "  hidden_dropout_prob: {choice: [0.1, 0.3]}\n")
    space = load_search_space(grid)
    assert distinct_configurations(space) == 12
    configurations = lambda trials: {tuple(sorted(params.items())) for _, params in trials}  # noqa: E731
    for seed in range(20):
        independent = draw_trials(space, 6, seed, distinct=False)
        distinct = draw_trials(space, 6, seed)
        assert len(configurations(distinct)) == 6 and draw_trials(space, 6, seed) == distinct  # deterministic
        if len(configurations(independent)) == 6:  # nothing to redraw: the same trials (the same sweep)
            assert distinct == independent
    grid.write_text("space:\n  learning_rate: [0.001, 0.01]\n  mask_ratio: {choice: [0.2, 0.4]}\n")
    small = load_search_space(grid)
    trials = draw_trials(small, 3, seed=1)  # 2 grid points x 3 samples, but 4 configurations
    assert len(trials) == 4 and len(configurations(trials)) == 4
    grid.write_text("space:\n  weight_decay: {loguniform: [1.0e-6, 1.0e-3]}\n")
    assert distinct_configurations(load_search_space(grid)) is None
    assert len(draw_trials(load_search_space(grid), 5, seed=1)) == 5
