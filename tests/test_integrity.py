"""Checks that stop a run before it measures the wrong thing (mbrec.benchmark.integrity)."""

import numpy as np
import pytest

from mbrec import registry
from mbrec.benchmark import integrity
from mbrec.benchmark.runner import setup_run
from mbrec.config import ConfigError, merge_layers
from mbrec.data.dataset import DatasetError
from mbrec.protocol import protocol_fingerprint, protocol_of
from tests.conftest import write_inter

BEHAVIORS = ["view", "cart", "buy"]
# Every user's valid target (second to last) is a view: no valid buy.
NO_VALID_BUY = [(user, item, behavior, stamp) for user in ("a", "b", "c")
                for item, behavior, stamp in (("i1", "view", 1), ("i2", "view", 2), ("i3", "buy", 3))]


def settings_for(model="SASRec", **overrides):
    settings = merge_layers(model, "synthetic")
    settings.update(show_progress=False, behaviors=BEHAVIORS, target_behavior="buy", **overrides)
    return settings


def test_empty_valid_set_for_the_valid_task_stops_before_the_model_is_built(tmp_path, monkeypatch):
    dataset_dir = write_inter(tmp_path, "novalidbuy", NO_VALID_BUY)
    built_models = []
    model_class = registry.get_model_class("SASRec")
    monkeypatch.setattr(model_class, "__init__", lambda *args, **kwargs: built_models.append(1))
    with pytest.raises(DatasetError, match=r"valid_task 'target_behavior' has 0 valid targets with the target "
                                           r"behavior 'buy' \(of 3\)"):
        setup_run(model_class, dataset_dir, settings_for(valid_task="target_behavior"), 1, "cpu")
    assert not built_models  # stopped before the model (and so before training)


def test_valid_task_with_examples_passes_and_reports_the_count(tmp_path):
    dataset_dir = write_inter(tmp_path, "novalidbuy", NO_VALID_BUY)
    built = setup_run(registry.get_model_class("SASRec"), dataset_dir,
                      settings_for(valid_task="behavior_specific", hidden_size=8, inner_size=8), 1, "cpu")
    assert integrity.check_valid_examples(built.valid_data, "behavior_specific", type(built.network)) == 3
    assert built.protocol_fingerprint and built.protocol["valid_task"] == "behavior_specific"
    with pytest.raises(ConfigError, match="N/A for SASRec"):
        integrity.check_valid_examples(built.valid_data, "behavior_item", type(built.network))


def _export(tmp_path, protocol, fingerprint, name="vectors"):
    vectors_file = tmp_path / f"{name}.npy"
    np.save(vectors_file, np.ones((4, 2), dtype=np.float32))
    provenance = integrity.vectors_provenance(vectors_file, "SASRec", 1, "k", tmp_path, protocol, fingerprint)
    integrity.write_vectors_provenance(vectors_file, provenance)
    return vectors_file


def _protocol(**changes):
    settings = {**settings_for(), **changes}
    protocol = protocol_of("synthetic", "inter-sha256:abc", None, settings)
    return protocol, protocol_fingerprint(protocol)


def test_item_vectors_from_another_protocol_or_dataset_are_refused(tmp_path):
    protocol, fingerprint = _protocol()
    vectors_file = _export(tmp_path, protocol, fingerprint)
    settings = {"item_tokenizer": "sid", "item_vectors_file": str(vectors_file)}
    assert integrity.check_item_vectors(settings, protocol, fingerprint)["trained_on"] == "train"
    masked, masked_fingerprint = _protocol(mask_history=True)
    with pytest.raises(ConfigError, match=r"protocol .*\(mask_history: False vs True\)"):
        integrity.check_item_vectors(settings, masked, masked_fingerprint)
    other_data = dict(protocol, data="inter-sha256:def")
    with pytest.raises(ConfigError, match="prepared data inter-sha256:abc vs this run's inter-sha256:def"):
        integrity.check_item_vectors(settings, other_data, fingerprint)
    other_dataset = dict(protocol, dataset="taobao")
    with pytest.raises(ConfigError, match="dataset 'synthetic' vs this run's 'taobao'"):
        integrity.check_item_vectors(settings, other_dataset, fingerprint)


def test_item_vectors_without_provenance_or_changed_since_export_are_refused(tmp_path):
    protocol, fingerprint = _protocol()
    bare = tmp_path / "bare.npy"
    np.save(bare, np.ones((4, 2), dtype=np.float32))
    with pytest.raises(ConfigError, match="has no provenance file"):
        integrity.check_item_vectors({"item_tokenizer": "sid", "item_vectors_file": str(bare)}, protocol, fingerprint)
    vectors_file = _export(tmp_path, protocol, fingerprint)
    np.save(vectors_file, np.zeros((4, 2), dtype=np.float32))
    with pytest.raises(ConfigError, match="content changed"):
        integrity.check_item_vectors({"item_tokenizer": "sid", "item_vectors_file": str(vectors_file)}, protocol,
                                     fingerprint)
    assert integrity.check_item_vectors({"item_tokenizer": "cid", "item_vectors_file": str(vectors_file)},
                                        protocol, fingerprint) is None


def test_run_key_settings_hash_the_vectors_content_not_their_path(tmp_path):
    first, second = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(first, np.ones((4, 2), dtype=np.float32))
    np.save(second, np.ones((4, 2), dtype=np.float32))
    keyed_first = integrity.key_settings({"item_vectors_file": str(first), "seed": 1})
    keyed_second = integrity.key_settings({"item_vectors_file": str(second), "seed": 1})
    assert keyed_first == keyed_second and keyed_first["item_vectors_file"].startswith("sha256:")
    np.save(second, np.zeros((4, 2), dtype=np.float32))
    assert integrity.key_settings({"item_vectors_file": str(second)}) != integrity.key_settings(
        {"item_vectors_file": str(first)})
