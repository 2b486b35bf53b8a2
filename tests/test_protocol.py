"""The protocol fingerprint (mbrec.protocol) and the table's like-with-like rules (mbrec.reporting.protocols)."""

import pytest

from mbrec.protocol import (
    DERIVED, RECORDED, ProtocolMismatch, check_same_protocol, protocol_fingerprint, protocol_of, record_protocol,
)
from mbrec.reporting.protocols import (
    check_table_protocols, protocol_lines, split_by_protocol, target_share_lines, repeated_test_line,
)

SETTINGS = {"min_user_inter": 3, "min_item_inter": 0, "MAX_ITEM_LIST_LENGTH": 50, "mask_history": False,
            "eval_tasks": ["behavior_specific", "next_item"], "topk": [5, 10, 20], "valid_task": "behavior_specific",
            "valid_metric": "NDCG@10", "target_behavior": "buy", "learning_rate": 0.001, "hidden_size": 64}


def record(model="A", seed=0, dataset="ds", targets=None, **changes):
    protocol = protocol_of(dataset, "inter-sha256:abc", "append", {**SETTINGS, **changes})
    result = {"metrics": {}, "per_user": {"user": [], "rank": []}}
    if targets:
        result["targets"] = targets
    return {"model": model, "seed": seed, "dataset": dataset, "run_key": f"{model}{seed}", "protocol": protocol,
            "protocol_fingerprint": protocol_fingerprint(protocol), "results": {"behavior_specific": result}}


def test_fingerprint_ignores_hyperparameters_seeds_and_order_but_not_protocol_settings():
    base = record()["protocol_fingerprint"]
    assert record(seed=7, learning_rate=0.1, hidden_size=8)["protocol_fingerprint"] == base
    assert record(topk=[20, 10, 5], valid_metric="ndcg@10")["protocol_fingerprint"] == base
    for change in ({"mask_history": True}, {"MAX_ITEM_LIST_LENGTH": 20}, {"min_user_inter": 5},
                   {"valid_task": "target_behavior"}, {"topk": [10]}, {"eval_tasks": ["next_item"]}):
        assert record(**change)["protocol_fingerprint"] != base, change
    assert "learning_rate" not in record()["protocol"] and "seed" not in record()["protocol"]


def test_old_records_get_a_derived_protocol_that_never_equals_a_recorded_one():
    old = {"model": "A", "seed": 0, "dataset": "ds", "dataset_canonical": "ds", "heldout": "append",
           "config": SETTINGS, "data": {"fingerprint": "f00"}}
    protocol, fingerprint, how = record_protocol(old)
    assert how == DERIVED and protocol["data"] == "prepared-fingerprint:f00" and protocol["mask_history"] is False
    assert record_protocol(record())[2] == RECORDED and fingerprint != record()["protocol_fingerprint"]
    with pytest.raises(ProtocolMismatch, match="data: 'inter-sha256:abc' vs 'prepared-fingerprint:f00'"):
        check_same_protocol([("new", record()), ("old", old)])


def test_a_table_column_mixing_protocols_is_refused_naming_the_keys():
    records = [record("A"), record("B"), record("C", mask_history=True), record("A", dataset="other")]
    with pytest.raises(ProtocolMismatch, match=r"ds: protocol \w+ \(C seed 0 .*mask_history: False vs True"):
        check_table_protocols(records)
    check_table_protocols(records[:2] + records[3:])  # one protocol per dataset: fine
    columns = sorted({entry["dataset"] for entry in split_by_protocol(records)})
    masked = records[2]["protocol_fingerprint"][:8]
    assert columns == ["ds [" + records[0]["protocol_fingerprint"][:8] + "]", f"ds [{masked}]", "other"]
    lines = protocol_lines(split_by_protocol(records))
    assert any("ds is shown under 2 protocols differing in: mask_history" in line for line in lines)


def test_target_shares_and_repeated_test_evaluations_in_the_footnote():
    counts = {"targets": 200, "in_window": 0, "cold": 20, "heldout": 65}
    line, = target_share_lines([record(targets=counts), record("B", targets=counts),
                                record(dataset="old")], "behavior_specific")
    assert ("ds: 0.0% in the input window, 10.0% cold (never in training), 32.5% held-out items vs 67.5% logged "
            "last interactions (n = 200)") in line
    assert "old: unknown" in line
    fats = dict(record("FatsMB"), test_lock={"test_evaluations": 3})
    assert "FatsMB/ds/seed 0 (3x)" in repeated_test_line([record(), fats])[0]
    assert repeated_test_line([record()]) == []
