"""End to end: the runner, the results store, determinism, and models that learn."""

import json

import numpy as np
import pytest
import torch

from mbrec import results as store
from mbrec.protocol import CONTENT_PREFIX
from mbrec.benchmark.runner import run
from mbrec.cli import main
from mbrec.training.trainer import Trainer
from mbrec.config import ConfigError
from mbrec.data.dataset import MultiBehaviorSequentialDataset
from mbrec.evaluation import Evaluator
from mbrec.registry import UnknownModelError
from tests.conftest import make_config, write_inter

TINY_SYNTHETIC = {"prepare": {"size": {"n_users": 60, "n_items": 50, "n_categories": 5}},
                  "epochs": 2, "show_progress": False, "eval_batch_size": 64}


def tiny_run(tmp_path, model="SASRec", **overrides):
    settings = {**TINY_SYNTHETIC, **overrides}
    return run(model, "synthetic", overrides=settings, cache_dir=tmp_path / "cache",
               results_dir=tmp_path / "results")


def test_run_writes_a_complete_record_and_reuses_it(tmp_path):
    record = tiny_run(tmp_path, hidden_size=16, inner_size=32)
    files = list((tmp_path / "results" / "runs").rglob("*.json"))
    assert len(files) == 1
    stored = store.load_record(files[0])
    assert stored["run_key"] == record["run_key"]
    for task in ("behavior_specific", "target_behavior", "next_item"):
        per_user = stored["results"][task]["per_user"]
        assert len(per_user["user"]) == len(per_user["rank"]) == stored["results"][task]["n_users"]
    assert stored["results"]["behavior_item"] is None  # SASRec has no behavior head
    assert stored["efficiency"]["parameters"] > 0 and stored["versions"]["recbole"] == "1.2.1"
    assert stored["machine"]["cpu"] and stored["machine"]["logical_cpus"] >= 1  # seconds depend on the CPU
    protocol = stored["protocol"]  # what was measured: data by content, window, tasks, ...; no hyperparameter
    assert protocol["dataset"] == "synthetic" and protocol["data"].startswith(CONTENT_PREFIX)
    assert protocol["MAX_ITEM_LIST_LENGTH"] == 50 and protocol["valid_task"] == "behavior_specific"
    assert "hidden_size" not in protocol and "seed" not in protocol
    assert len(stored["protocol_fingerprint"]) == 12
    assert list((tmp_path / "results" / "logs").rglob("*.log"))
    again = tiny_run(tmp_path, hidden_size=16, inner_size=32)
    assert again["created"] == record["created"]  # found, not retrained
    assert not list((tmp_path / "results").rglob("*.pth"))  # no checkpoint left behind


def test_same_seed_same_numbers(tmp_path):
    first = tiny_run(tmp_path / "a", model="SASRec_B", hidden_size=16, inner_size=32)
    second = tiny_run(tmp_path / "b", model="SASRec_B", hidden_size=16, inner_size=32)
    assert first["run_key"] == second["run_key"]
    for task in ("behavior_specific", "behavior_item"):
        assert first["results"][task]["per_user"] == second["results"][task]["per_user"]
    other_seed = run("SASRec_B", "synthetic", overrides={**TINY_SYNTHETIC, "hidden_size": 16, "inner_size": 32},
                     seed=7, cache_dir=tmp_path / "a" / "cache", results_dir=tmp_path / "a" / "results")
    assert other_seed["run_key"] != first["run_key"]
    assert other_seed["protocol_fingerprint"] == first["protocol_fingerprint"]  # a seed is no protocol setting
    masked = run("SASRec_B", "synthetic", overrides={**TINY_SYNTHETIC, "hidden_size": 16, "inner_size": 32,
                                                     "mask_history": True},
                 cache_dir=tmp_path / "a" / "cache", results_dir=tmp_path / "a" / "results")
    assert masked["protocol_fingerprint"] != first["protocol_fingerprint"]


def test_corrupted_record_is_reported_not_used(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"model": "SASRec"')
    with pytest.raises(store.ResultsError, match="not valid JSON"):
        store.load_record(path)
    path.write_text(json.dumps({"model": "SASRec"}))
    with pytest.raises(store.ResultsError, match="missing"):
        store.load_record(path)


def test_unknown_names_give_clear_errors(tmp_path, capsys):
    with pytest.raises(UnknownModelError, match="SASRec_B"):
        run("NoSuchModel", "synthetic")
    code = main(["--model", "SASRec", "--dataset", "nosuch", "--results-dir", str(tmp_path)])
    assert code == 1
    assert "Unknown dataset 'nosuch'" in capsys.readouterr().err


def behavior_rule_rows(n_users=100, length=12, n_items=12, seed=0):
    """The next item is the last item shifted by an amount the next behavior decides.

    view -> +1, cart -> +3, buy -> +5 (mod n_items), behaviors drawn uniformly. Knowing the
    history alone, the best guess is right 1 time in 3; told the behavior, always.
    """
    shift = {"view": 1, "cart": 3, "buy": 5}
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        item = int(rng.integers(n_items))
        for step in range(length):
            behavior = str(rng.choice(list(shift)))
            item = (item + shift[behavior]) % n_items
            rows.append((f"u{user}", f"i{item}", behavior, step))
    return rows


def train_and_test(tmp_path, model, rows, **overrides):
    settings = dict(behaviors=["view", "cart", "buy"], hidden_size=32, inner_size=64, n_layers=1,
                    hidden_dropout_prob=0.0, attn_dropout_prob=0.0, learning_rate=0.01, epochs=20,
                    stopping_step=20, train_batch_size=128, eval_tasks=["behavior_specific"], topk=[1, 5, 10])
    settings.update(overrides)
    config = make_config(model, write_inter(tmp_path, "rule", rows), **settings)
    from recbole.utils import init_seed

    init_seed(2024, True)
    dataset = MultiBehaviorSequentialDataset(config)
    train, valid, test = dataset.build()
    network = __import__("mbrec.registry", fromlist=["x"]).get_model_class(model)(config, train)
    Trainer(config, network, torch.device("cpu")).fit(train, valid, tmp_path / f"{model}.pth")
    return Evaluator(config).evaluate(network, test, tasks=["behavior_specific"])["behavior_specific"]


def test_tiny_model_overfits_a_tiny_dataset(tmp_path):
    # a deterministic cycle: every next item is fixed by the last one
    rows = [(f"u{u}", f"i{(u + t) % 8}", "view", t) for u in range(40) for t in range(10)]
    result = train_and_test(tmp_path, "SASRec", rows, epochs=30)
    assert result.metrics["recall@1"] > 0.95


@pytest.mark.parametrize("behavior_model", ["SASRec_B", "SASRec_MB"])
def test_behavior_aware_model_beats_item_only_when_behavior_matters(tmp_path, behavior_model):
    rows = behavior_rule_rows()
    item_only = train_and_test(tmp_path / "sasrec", "SASRec", rows)
    pair_tokens = train_and_test(tmp_path / "behavior", behavior_model, rows)
    assert pair_tokens.metrics["recall@1"] > 0.9
    assert item_only.metrics["recall@1"] < 0.6  # about 1/3 is the best it can do
    assert item_only.metrics["recall@5"] > 0.9  # but it did learn the three candidates


@pytest.mark.parametrize("model", ["BERT4Rec", "GRU4Rec"])
def test_recbole_baselines_run_through_the_runner(tmp_path, model):
    record = tiny_run(tmp_path, model=model, epochs=1)
    result = record["results"]["behavior_specific"]
    assert result["n_users"] == record["data"]["users_after_filter"]
    assert 0.0 <= result["metrics"]["ndcg@10"] <= result["metrics"]["recall@10"] <= 1.0


def test_a_failed_run_is_a_marked_hole_with_its_log(tmp_path, capsys):
    # An optimizer nobody has: DiffuRec's run fails inside training setup (its trainer builds the
    # optimizer); Pop does not train, builds none, and still runs. (A DiffuRec-only key such as
    # cross_attention is now refused for Pop before any work, see tests/test_config_check.py.)
    code = main(["--models", "Pop", "DiffuRec", "--dataset", "synthetic", "--results-dir", str(tmp_path / "results"),
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress", "learner=nosuch",
                 "prepare.size={n_users: 60, n_items: 50, n_categories: 5}"])
    assert code == 1
    captured = capsys.readouterr()
    failed = [line for line in captured.err.splitlines() if line.startswith("FAILED DiffuRec")]
    assert failed and "(log: " in failed[0]
    log = failed[0].split("(log: ")[1].rstrip(")")
    assert "Unknown learner 'nosuch'" in open(log, encoding="utf-8").read()
    table = (tmp_path / "results" / "tables" / "behavior_specific.md").read_text(encoding="utf-8")
    diffurec_row = next(line for line in table.splitlines() if line.startswith("| DiffuRec"))
    assert "—" in diffurec_row  # the hole is marked, Pop's numbers are there
    assert any(line.startswith("| Pop") and "0." in line for line in table.splitlines())


def test_saved_item_vectors_feed_mbgen_semantic_ids(tmp_path):
    """A run can export its selected item table; MBGen's SID tokenizer reads it as item_vectors_file."""
    prefix = tmp_path / "vectors" / "sasrec_items"
    # the same protocol (window of 5) as the MBGen run below: vectors from another protocol are refused
    record = tiny_run(tmp_path, hidden_size=16, inner_size=32, MAX_ITEM_LIST_LENGTH=5, save_item_vectors=str(prefix))
    vectors = np.load(prefix.with_suffix(".npy"))
    tokens = prefix.with_suffix(".ids").read_text().split()
    assert vectors.shape == (51, 16) and len(tokens) == 51  # 50 items + padding row, hidden 16
    assert np.abs(vectors[1:]).sum() > 0 and len(set(tokens)) == 51
    provenance = json.loads(prefix.with_suffix(".provenance.json").read_text())
    assert provenance["protocol_fingerprint"] == record["protocol_fingerprint"]
    assert provenance["dataset"] == "synthetic" and provenance["trained_on"] == "train"
    again = tiny_run(tmp_path, hidden_size=16, inner_size=32, MAX_ITEM_LIST_LENGTH=5)  # export: same run key
    assert again["run_key"] == record["run_key"] and again["created"] == record["created"]
    mbgen = tiny_run(tmp_path / "mbgen", model="MBGen", epochs=1, item_tokenizer="sid",
                     item_vectors_file=str(prefix.with_suffix(".npy")), item_vectors_ids=str(prefix.with_suffix(".ids")),
                     sid_codebook_size=4, sid_hidden_sizes=[16], sid_latent_size=4, sid_epochs=5, d_model=16, d_ff=32,
                     n_heads=2, d_head=8, n_encoder_layers=1, n_decoder_layers=1, behavior_injection_layers=1,
                     behavior_embedding_size=4, warmup_steps=2, MAX_ITEM_LIST_LENGTH=5)
    assert mbgen["results"]["behavior_specific"]["n_users"] > 0
    assert mbgen["item_vectors"]["run_key"] == record["run_key"]  # the record names the vectors it read
    with pytest.raises(ConfigError, match="MAX_ITEM_LIST_LENGTH: 5 vs 4"):
        tiny_run(tmp_path / "mbgen4", model="MBGen", epochs=1, item_tokenizer="sid",
                 item_vectors_file=str(prefix.with_suffix(".npy")), MAX_ITEM_LIST_LENGTH=4)
    with pytest.raises(ConfigError, match="no item_embedding table"):
        tiny_run(tmp_path / "pop", model="Pop", save_item_vectors=str(tmp_path / "pop_items"))


def test_bf16_on_a_cpu_without_native_bf16_warns(tmp_path, caplog):
    from mbrec.benchmark.runner import cpu_has_native_bf16

    without, with_amx = tmp_path / "epyc", tmp_path / "sapphire"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n")
    with_amx.write_text("processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert cpu_has_native_bf16(without) is False and cpu_has_native_bf16(with_amx) is True
    assert cpu_has_native_bf16(tmp_path / "missing") is None
    native = cpu_has_native_bf16()
    with caplog.at_level("WARNING", logger="mbrec"):
        tiny_run(tmp_path, hidden_size=16, inner_size=32, epochs=1, precision="bf16")
    assert ("CPU without native bf16" in caplog.text) == (native is False)
