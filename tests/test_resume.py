"""An interrupted run resumes at its last resume state and ends exactly where an uninterrupted run ends."""

import logging

import pytest

from mbrec.benchmark.runner import run
from mbrec.training import resume as resume_module
from mbrec.training.resume import resume_path_of
from mbrec.training.trainer import Trainer

TINY = {"prepare": {"size": {"n_users": 60, "n_items": 50, "n_categories": 5}}, "show_progress": False,
        "eval_batch_size": 64, "epochs": 5, "stopping_step": 100, "resume_every_seconds": 0}
# One per trainer path and source of randomness: plain Trainer with dropout (SASRec), the warm-up/cosine
# schedule (MBGen), Cloze masks under bf16 (BERT4Rec_MB), diffusion noise (DiffuRecSys), M3BSR's denoisers.
MODELS = {
    "SASRec": dict(hidden_size=16, inner_size=32),
    "MBGen": dict(d_model=16, d_ff=32, n_heads=2, d_head=8, n_encoder_layers=1, n_decoder_layers=1,
                  behavior_injection_layers=1, behavior_embedding_size=4, warmup_steps=3, MAX_ITEM_LIST_LENGTH=5),
    "BERT4Rec_MB": dict(hidden_size=16, inner_size=32, precision="bf16"),
    "DiffuRecSys": dict(hidden_size=16, n_layers=1, n_heads=2, diffusion_steps=8, sampling_repeats=0),
    "M3BSR": dict(modal_features=[], hidden_size=16, inner_size=32, diffusion_steps=2),
}
INTERRUPTED_AT_VALIDATION = 3  # epoch 2: the last resume state is the one saved after epoch 1


def tiny_run(folder, model):
    return run(model, "synthetic", overrides={**TINY, **MODELS[model]}, cache_dir=folder.parent / "cache",
               results_dir=folder / "results")


def interrupt_at_validation(monkeypatch, count):
    """Ctrl+C as the ``count``-th validation's score is reported (before that epoch's resume state)."""
    calls = []
    notify = Trainer.notify_validation

    def interrupting(self, entry, best_score, best_epoch):
        calls.append(entry["epoch"])
        if len(calls) == count:
            raise KeyboardInterrupt
        return notify(self, entry, best_score, best_epoch)

    monkeypatch.setattr(Trainer, "notify_validation", interrupting)


def comparable(record):
    """What a run computed (not when or how fast): per-user ranks, valid scores, losses, selection."""
    training = record["training"]
    return ({task: result and result["per_user"] for task, result in record["results"].items()},
            record["valid_results"], training["best_epoch"], training["best_valid_score"], training["stopped_by"],
            [(entry["epoch"], entry["loss"], entry.get("valid_score")) for entry in training["history"]])


@pytest.mark.parametrize("model", sorted(MODELS))
def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch, model):
    whole = tiny_run(tmp_path / "whole", model)
    assert "resumed" not in whole["training"]

    with monkeypatch.context() as patch:
        interrupt_at_validation(patch, INTERRUPTED_AT_VALIDATION)
        with pytest.raises(KeyboardInterrupt) as interrupted:
            tiny_run(tmp_path / "split", model)
    resume_file = interrupted.value.resume_state
    assert resume_file is not None and resume_file.exists()
    assert resume_file == resume_path_of(resume_file.parent / (resume_file.name.split(".")[0] + ".pth"))
    assert resume_file.with_name(resume_file.name.replace(".resume.pth", ".pth")).exists()  # selected weights kept
    assert not list((tmp_path / "split" / "results").rglob("*.json*"))  # no record

    resumed = tiny_run(tmp_path / "split", model)
    assert [entry["at_epoch"] for entry in resumed["training"]["resumed"]] == [INTERRUPTED_AT_VALIDATION - 1]
    assert comparable(resumed) == comparable(whole)
    assert resumed["efficiency"]["train_seconds"] > 0
    assert not list((tmp_path / "split" / "results").rglob("*.pth"))  # state and weights removed at the end


def test_a_state_of_other_training_code_is_not_used(tmp_path, monkeypatch, caplog):
    whole = tiny_run(tmp_path / "whole", "SASRec")
    with monkeypatch.context() as patch:
        interrupt_at_validation(patch, INTERRUPTED_AT_VALIDATION)
        with pytest.raises(KeyboardInterrupt) as interrupted:
            tiny_run(tmp_path / "split", "SASRec")
    assert interrupted.value.resume_state.exists()
    monkeypatch.setattr(resume_module, "training_code_identity", lambda: "edited since")
    with caplog.at_level(logging.WARNING, logger="mbrec"):
        again = tiny_run(tmp_path / "split", "SASRec")
    assert "saved by other training code" in caplog.text
    assert "resumed" not in again["training"]  # trained from epoch 0, so the same numbers again
    assert comparable(again) == comparable(whole)


def test_without_resume_states_an_interrupted_run_starts_over(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        interrupt_at_validation(patch, INTERRUPTED_AT_VALIDATION)
        with pytest.raises(KeyboardInterrupt) as interrupted:
            run("SASRec", "synthetic", overrides={**TINY, **MODELS["SASRec"], "resume_every_seconds": None},
                cache_dir=tmp_path / "cache", results_dir=tmp_path / "results")
    assert interrupted.value.resume_state is None
    assert not list((tmp_path / "results").rglob("*.pth"))  # no orphan weights either


def test_code_identity_covers_models_and_trainer_not_reporting():
    names = {f"{path.parent.name}/{path.name}" for path in resume_module._source_files()}
    assert {"training/trainer.py", "models/fatsmb.py", "layers/dropout.py", "baselines/bert4rec.py",
            "data/dataset.py", "evaluation/evaluator.py"} <= names
    assert not any(name.startswith(("reporting/", "benchmark/", "tune/")) for name in names)


def test_a_resumed_trainer_reports_every_validation_as_an_uninterrupted_one(tmp_path, monkeypatch):
    """A sweep's trial that resumes tells its callbacks (ASHA) the earlier validations again, in order."""
    from mbrec.benchmark.runner import prepare_data, setup_run
    from mbrec.config import merge_layers
    from mbrec.registry import get_model_class

    def fit(folder, interrupt_at=None):
        settings = merge_layers("SASRec", "synthetic", (), {**TINY, **MODELS["SASRec"]})
        _, dataset_dir = prepare_data("synthetic", settings, None, tmp_path / "cache")
        built = setup_run(get_model_class("SASRec"), dataset_dir, settings, int(settings["seed"]), "cpu",
                          with_test=False)
        trainer = Trainer(built.config, built.network, built.device)
        reports = []

        def report(entry, best_score, best_epoch):
            if interrupt_at is not None and len(reports) + 1 == interrupt_at:
                raise KeyboardInterrupt
            reports.append((entry["epoch"], entry["valid_score"], best_score, best_epoch))

        trainer.validation_callbacks.append(report)
        folder.mkdir(parents=True, exist_ok=True)
        trainer.fit(built.train_data, built.valid_data, folder / "best.pth")
        return reports

    whole = fit(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "split", interrupt_at=INTERRUPTED_AT_VALIDATION)
    assert (tmp_path / "split" / "best.resume.pth").exists()
    assert fit(tmp_path / "split") == whole
    assert not (tmp_path / "split" / "best.resume.pth").exists()


def test_the_code_identity_is_that_of_the_code_imported(monkeypatch):
    """Sources edited under a running process (a checkout moved on) do not change the hash its states carry."""
    before = resume_module.training_code_identity()
    monkeypatch.setattr(resume_module, "_source_files", lambda: (_ for _ in ()).throw(AssertionError("re-read")))
    assert resume_module.training_code_identity() == before and len(before) == 64
