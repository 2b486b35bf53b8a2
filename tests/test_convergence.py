"""Converged means converged: each record says whether training stopped by patience or by the epoch
cap (older records are judged from their history), and a table marks a cell with a capped run."""

import pytest

from mbrec.benchmark.runner import run
from mbrec.evaluation import summarize
from mbrec.reporting.tables import build_table, to_latex, to_markdown
from mbrec.reporting.tables.marks import CAP_MARK
from mbrec.results import STOPPED_BY_EPOCH_CAP, STOPPED_BY_NO_TRAINING, STOPPED_BY_PATIENCE, stopped_by

TINY = {"prepare": {"size": {"n_users": 60, "n_items": 50, "n_categories": 5}}, "eval_batch_size": 64,
        "show_progress": False}
# SASRec's layers, small; Pop has none (these keys are refused for it: mbrec.config_check).
TINY_LAYERS = {"n_layers": 1, "hidden_size": 16, "inner_size": 32}
TASK = "behavior_specific"


def tiny_run(tmp_path, model="SASRec", **overrides):
    layers = {} if model == "Pop" else TINY_LAYERS
    return run(model, "synthetic", overrides={**TINY, **layers, **overrides}, seed=1, device="cpu",
               cache_dir=tmp_path / "cache", results_dir=tmp_path / "results")


def test_a_run_records_whether_patience_or_the_cap_stopped_it(tmp_path):
    capped = tiny_run(tmp_path, epochs=2, stopping_step=10)
    assert capped["training"]["stopped_by"] == STOPPED_BY_EPOCH_CAP and capped["training"]["epochs_run"] == 2
    # learning rate 0: valid never improves after the first validation, so patience 0 stops at epoch 1
    patient = tiny_run(tmp_path, epochs=5, stopping_step=0, learning_rate=0.0)
    assert patient["training"]["stopped_by"] == STOPPED_BY_PATIENCE and patient["training"]["epochs_run"] == 2
    assert tiny_run(tmp_path, model="Pop")["training"]["stopped_by"] == STOPPED_BY_NO_TRAINING


def history(scores, stage=None):
    return [{"epoch": epoch, "valid_score": score, **({"stage": stage} if stage else {})}
            for epoch, score in enumerate(scores)]


@pytest.mark.parametrize("config, entries, expected", [
    # fewer epochs than the cap: patience stopped it
    ({"epochs": 10, "stopping_step": 1}, history([0.1, 0.2, 0.1, 0.1]), STOPPED_BY_PATIENCE),
    # every epoch of the cap ran and the last one improved: the cap stopped it
    ({"epochs": 4, "stopping_step": 1}, history([0.1, 0.2, 0.3, 0.4]), STOPPED_BY_EPOCH_CAP),
    # every epoch ran, but patience ran out exactly at the last one
    ({"epochs": 4, "stopping_step": 1}, history([0.1, 0.3, 0.2, 0.2]), STOPPED_BY_PATIENCE),
    # staged: the first stage converged, the second hit its own cap
    ({"epochs": 99, "stopping_step": 0, "a_epochs": 5, "b_epochs": 2},
     history([0.1, 0.2, 0.2], "a") + history([0.3, 0.4], "b"), STOPPED_BY_EPOCH_CAP),
])
def test_old_records_are_judged_from_their_history(config, entries, expected):
    assert stopped_by({"config": config, "training": {"history": entries, "epochs_run": len(entries)}}) == expected


def test_stored_stopped_by_wins_and_unknown_stays_unknown():
    assert stopped_by({"config": {}, "training": {"stopped_by": STOPPED_BY_PATIENCE}}) == STOPPED_BY_PATIENCE
    assert stopped_by({"config": {"seed": 1}, "results": {}}) is None  # hand-made or foreign record


def record(model, seed, stopped):
    ranks = [0, 3, 30, 99]
    return {"run_key": f"{model}{seed}", "model": model, "dataset": "ds", "seed": seed, "config": {"seed": seed},
            "created": "2024-01-01T00:00:00+00:00",
            "results": {TASK: {"metrics": summarize(ranks), "n_users": 4,
                               "per_user": {"user": ["a", "b", "c", "d"], "rank": ranks}}},
            "training": {"stopped_by": stopped}}


def test_a_cell_with_a_capped_run_is_marked_and_explained():
    records = [record("Converged", seed, STOPPED_BY_PATIENCE) for seed in (1, 2)]
    records += [record("Capped", 1, STOPPED_BY_PATIENCE), record("Capped", 2, STOPPED_BY_EPOCH_CAP)]
    table = build_table(records, metrics=("recall@10",))
    assert table.cells[("Capped", "ds", "recall@10")].capped
    assert not table.cells[("Converged", "ds", "recall@10")].capped
    text = to_markdown(table)
    capped_row = next(line for line in text.splitlines() if line.startswith("| Capped"))
    converged_row = next(line for line in text.splitlines() if line.startswith("| Converged"))
    assert CAP_MARK in capped_row and CAP_MARK not in converged_row
    assert any(line.startswith(f"- {CAP_MARK}: at least one run") for line in text.splitlines())
    assert "$^{\\ddagger}$" in to_latex(table)
    unmarked = to_markdown(build_table(records[:2], metrics=("recall@10",)))
    assert CAP_MARK not in unmarked  # no capped run: no mark, no sentence
