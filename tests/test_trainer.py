"""Test lock: training and model selection never touch the test split; the record names the checkpoint."""

import hashlib

import pytest
import torch

from mbrec import registry
from mbrec.training.trainer import PRECISIONS, Trainer
from mbrec.data import dataset as dataset_module
from mbrec.data.dataset import MultiBehaviorSequentialDataset
from mbrec.evaluation import Evaluator
from tests.conftest import make_config, write_inter

ROWS = [(f"u{user}", f"i{(user + step) % 7}", "view" if step % 3 else "buy", step)
        for user in range(12) for step in range(6)]


@pytest.fixture
def touched_splits(monkeypatch):
    """Record the split of every loader built and every evaluation run, through the real code."""
    touched = {"loader": [], "evaluate": []}
    original_loader_init = dataset_module.SequenceLoader.__init__
    original_evaluate = Evaluator.evaluate

    def loader_init(self, config, split_dataset, *args, **kwargs):
        touched["loader"].append(split_dataset.split_name)
        original_loader_init(self, config, split_dataset, *args, **kwargs)

    def evaluate(self, model, split_dataset, *args, **kwargs):
        touched["evaluate"].append(split_dataset.split_name)
        return original_evaluate(self, model, split_dataset, *args, **kwargs)

    monkeypatch.setattr(dataset_module.SequenceLoader, "__init__", loader_init)
    monkeypatch.setattr(Evaluator, "evaluate", evaluate)
    return touched


@pytest.mark.parametrize("model_name", ["SASRec", "Pop"])
def test_fit_never_touches_the_test_split(tmp_path, touched_splits, model_name):
    config = make_config(model_name, write_inter(tmp_path, "lock", ROWS), behaviors=["view", "cart", "buy"],
                         hidden_size=8, inner_size=16, n_layers=1, epochs=3, stopping_step=0)
    dataset = MultiBehaviorSequentialDataset(config)
    train, valid = dataset.build(splits=("train", "valid"))  # what a tuning trial builds
    model_class = registry.get_model_class(model_name)
    network = model_class(config, train)
    trainer = getattr(model_class, "trainer_class", Trainer)(config, network, torch.device("cpu"))
    checkpoint = tmp_path / "best.pth"
    summary = trainer.fit(train, valid, checkpoint)
    assert touched_splits["evaluate"] and set(touched_splits["evaluate"]) == {"valid"}
    assert set(touched_splits["loader"]) <= {"train", "valid"} and "valid" in touched_splits["loader"]
    assert checkpoint.exists() and summary["best_valid_score"] >= 0.0


def test_the_record_names_the_checkpoint_test_was_evaluated_on(tmp_path, touched_splits, monkeypatch):
    from tests.test_runner import tiny_run

    seen_at_test = {}
    counting_evaluate = Evaluator.evaluate  # the recording wrapper installed by the fixture

    def evaluate(self, model, split_dataset, *args, **kwargs):
        if split_dataset.split_name == "test":
            checkpoint = next((tmp_path / "results" / "runs").rglob("*.pth"))
            seen_at_test["sha256"] = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
            stored = torch.load(checkpoint, weights_only=True)
            seen_at_test["same_weights"] = all(torch.equal(stored[name], tensor)
                                               for name, tensor in model.state_dict().items())
        return counting_evaluate(self, model, split_dataset, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "evaluate", evaluate)
    record = tiny_run(tmp_path, hidden_size=8, inner_size=16, epochs=2)
    lock = record["test_lock"]
    # Test ran once, last, on the weights whose file hash the record stores.
    assert touched_splits["evaluate"].count("test") == 1 and touched_splits["evaluate"][-1] == "test"
    assert seen_at_test["same_weights"] and lock["checkpoint_sha256"] == seen_at_test["sha256"]
    assert lock["valid_value"] == pytest.approx(record["training"]["best_valid_score"])
    assert lock["valid_value"] == max(entry["valid_score"] for entry in record["training"]["history"])
    assert lock["valid_metric"] == "ndcg@10" and lock["selected_on"] == "valid"
    assert lock["test_evaluations"] == 1


# ----- loader prefetching, data-wait accounting, bf16 -------------------------------------------

def _batches(config, split, prefetch, stop_after=None):
    from mbrec.data.dataset import SequenceLoader

    from recbole.utils import init_seed

    init_seed(7, True)  # the shuffle (torch) and BERT4Rec's masking (Python's random) draw from global RNGs
    batches = []
    for batch in SequenceLoader(config, split, 5, shuffle=True, training=True, prefetch=prefetch):
        batches.append({field: value.clone() for field, value in batch.interaction.items()})
        if stop_after is not None and len(batches) == stop_after:
            break
    return batches


@pytest.mark.parametrize("model_name", ["SASRec", "BERT4Rec"])
def test_prefetching_gives_the_same_batches_in_the_same_order(tmp_path, model_name):
    config = make_config(model_name, write_inter(tmp_path, "tiny", ROWS))
    train, _, _ = MultiBehaviorSequentialDataset(config).build()
    plain, prefetched = _batches(config, train, 0), _batches(config, train, 3)
    assert len(plain) == len(prefetched) > 3
    for first, second in zip(plain, prefetched):
        assert first.keys() == second.keys()
        assert all(torch.equal(first[field], second[field]) for field in first)
    assert len(_batches(config, train, 2, stop_after=2)) == 2  # leaving early does not hang the thread


def test_a_failing_prefetch_raises_in_the_training_loop(tmp_path, monkeypatch):
    from mbrec.data.dataset import SequenceLoader

    config = make_config("SASRec", write_inter(tmp_path, "tiny", ROWS))
    train, _, _ = MultiBehaviorSequentialDataset(config).build()

    def broken(self, rows, **kwargs):
        raise RuntimeError("gather failed")

    monkeypatch.setattr(type(train), "make_batch", broken)
    with pytest.raises(RuntimeError, match="gather failed"):
        list(SequenceLoader(config, train, 5, shuffle=True, training=True, prefetch=2))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_records_data_wait_and_runs_in_bf16(tmp_path, precision):
    config = make_config("SASRec", write_inter(tmp_path, "tiny", ROWS), hidden_size=16, inner_size=32, epochs=2,
                         precision=precision, loader_prefetch=2)
    train, valid, _ = MultiBehaviorSequentialDataset(config).build()
    network = registry.get_model_class("SASRec")(config, train)
    trainer = Trainer(config, network, torch.device("cpu"))
    trainer.fit(train, valid, tmp_path / "model.pth")
    for entry in trainer.history:
        assert 0.0 <= entry["data_wait_seconds"] <= entry["train_seconds"]
        assert entry["loss"] == entry["loss"] and entry["loss"] > 0  # finite, not NaN
    with pytest.raises(ValueError, match="precision"):
        Trainer(make_config("SASRec", tmp_path / "tiny", precision="fp8"), network, torch.device("cpu"))


@pytest.mark.parametrize("model", ["FatsMB", "M3BSR", "DiffuRecSys", "DiffuRecSysMB", "PBAT", "MBSTR", "BERT4Rec_MB",
                                   "SASRec_MB"])
def test_multi_behavior_models_take_a_bf16_training_step(tmp_path, model):
    """One batch's loss and backward under the trainer's bf16 autocast, in every training stage (MBGen: test_mbgen)."""
    from tests.test_diffusion import TINY_DIFFUREC
    from tests.test_fatsmb import TINY_FATSMB
    from tests.test_m3bsr import TINY_M3BSR
    from tests.test_mb_baselines import TINY
    from tests.test_runner import behavior_rule_rows

    tiny = {"FatsMB": TINY_FATSMB, "M3BSR": TINY_M3BSR, "DiffuRecSys": TINY_DIFFUREC,
            "DiffuRecSysMB": TINY_DIFFUREC}.get(model, TINY)
    config = make_config(model, write_inter(tmp_path, "rule", behavior_rule_rows(n_users=30)),
                         **{**tiny, "precision": "bf16"})
    train, _, _ = MultiBehaviorSequentialDataset(config).build()
    network = registry.get_model_class(model)(config, train)
    trainer = getattr(network, "trainer_class", Trainer)(config, network, torch.device("cpu"))
    for stage in getattr(network, "training_stages", [None]):
        if stage is not None:
            network.set_stage(stage)
        with torch.autocast("cpu", dtype=PRECISIONS[trainer.precision]):
            loss = network.calculate_loss(next(iter(trainer.train_loader(train))))
        loss = sum(loss) if isinstance(loss, tuple) else loss
        assert torch.isfinite(loss), stage
        loss.backward()


def test_training_runs_without_autograd_anomaly_detection(tmp_path):
    """RecBole's sine.py switches anomaly detection on at import; the trainer switches it off (pure cost)."""
    torch.autograd.set_detect_anomaly(True)  # what importing recbole.model.sequential_recommender does, once
    config = make_config("SASRec", write_inter(tmp_path, "tiny", ROWS), hidden_size=8, inner_size=16)
    train, _, _ = MultiBehaviorSequentialDataset(config).build()
    Trainer(config, registry.get_model_class("SASRec")(config, train), torch.device("cpu"))
    assert not torch.is_anomaly_enabled()


def test_patience_cannot_stop_training_before_stopping_min_epochs(tmp_path, monkeypatch):
    """A flat valid score (a Cloze model's first plateau) stops a run after stopping_step + 1 bad
    validations; with stopping_min_epochs it trains at least that many epochs first."""
    monkeypatch.setattr(Trainer, "validate", lambda self, valid: 0.5)  # never improves after epoch 0

    def epochs_run(**settings):
        config = make_config("SASRec", write_inter(tmp_path, "flat", ROWS), behaviors=["view", "cart", "buy"],
                             hidden_size=8, inner_size=16, n_layers=1, epochs=12, stopping_step=1, **settings)
        train, valid = MultiBehaviorSequentialDataset(config).build(splits=("train", "valid"))
        trainer = Trainer(config, registry.get_model_class("SASRec")(config, train), torch.device("cpu"))
        summary = trainer.fit(train, valid, tmp_path / "best.pth")
        return summary["epochs_run"], summary["stopped_by"]

    assert epochs_run() == (3, "patience")
    assert epochs_run(stopping_min_epochs=8) == (8, "patience")
    assert epochs_run(stopping_min_epochs=20) == (12, "epoch_cap")


def test_a_staged_model_takes_one_floor_per_stage(tmp_path, monkeypatch):
    """stopping_min_epochs {stage: n} holds only the stages it names; one number holds every stage;
    a per-stage floor for a one-loop model or an unknown stage is refused."""
    from mbrec.training.staged_trainer import StagedTrainer
    monkeypatch.setattr(StagedTrainer, "validate", lambda self, valid: 0.5)  # never improves
    data = write_inter(tmp_path, "flat", ROWS)

    def stage_epochs(floor):
        config = make_config("FatsMB", data, behaviors=["view", "cart", "buy"], hidden_size=8, inner_size=16,
                             n_layers=1, diffusion_steps=10, ddim_skip=5, mbae_epochs=12, diffusion_epochs=12,
                             finetune_epochs=12, stopping_step=1, stopping_min_epochs=floor)
        train, valid = MultiBehaviorSequentialDataset(config).build(splits=("train", "valid"))
        trainer = StagedTrainer(config, registry.get_model_class("FatsMB")(config, train), torch.device("cpu"))
        summary = trainer.fit(train, valid, tmp_path / "best.pth")
        return tuple(summary["stages"][stage]["epochs_run"] for stage in ("mbae", "diffusion", "finetune"))

    plain = stage_epochs(0)
    assert stage_epochs({"mbae": 8}) == (8, plain[1], plain[2])
    assert stage_epochs(8) == (8, 8, 8)
    with pytest.raises(ValueError, match="unknown stage"):
        stage_epochs({"mbea": 8})
    config = make_config("SASRec", data, behaviors=["view", "cart", "buy"], hidden_size=8, inner_size=16,
                         n_layers=1, stopping_min_epochs={"mbae": 8})
    train = MultiBehaviorSequentialDataset(config).build(splits=("train",))[0]
    with pytest.raises(ValueError, match="needs a staged model"):
        Trainer(config, registry.get_model_class("SASRec")(config, train), torch.device("cpu"))
