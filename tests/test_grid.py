"""The benchmark grid on a local Ray: a killed worker is retried, each run stored exactly once."""

import logging
import os
import signal
import threading
import time

import pytest

pytest.importorskip("ray")

from mbrec import results as store  # noqa: E402
from mbrec.cli import main  # noqa: E402

TINY = ["prepare.size={n_users: 60, n_items: 50, n_categories: 5}", "epochs=2", "eval_batch_size=64",
        "hidden_size=16", "inner_size=32", "n_layers=1"]
MODELS, SEEDS = ["SASRec", "Pop"], ["1", "2"]


def kill_first_running_worker(results_dir, stop, killed):
    """Watch run locks; SIGKILL the first process holding one whose record is not written yet."""
    while not stop.is_set():
        for lock in results_dir.glob("runs/*/*/*.json.lock"):
            record = lock.with_name(lock.name[:-len(".lock")])
            try:
                text = lock.read_text()
            except OSError:
                continue
            if text.startswith("pid ") and not record.exists():
                pid = int(text.split()[1])
                if pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(record)
                    return
        time.sleep(0.02)


def grid(tmp_path, *extra):
    return main(["--models", *MODELS, "--datasets", "synthetic", "--seeds", *SEEDS, "--workers", "2",
                 "--cache-dir", str(tmp_path / "cache"), "--results-dir", str(tmp_path / "results"),
                 "--no-progress", *TINY, *extra])


def test_grid_survives_a_killed_worker_and_runs_each_run_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mbrec")
    results_dir = tmp_path / "results"
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_first_running_worker, args=(results_dir, stop, killed), daemon=True)
    killer.start()
    try:
        assert grid(tmp_path) == 0
    finally:
        stop.set()
        killer.join(10)
    assert len(killed) == 1  # one worker really died mid-run
    records = sorted(results_dir.glob("runs/*/*/*.json"))
    assert len(records) == len(MODELS) * len(SEEDS)  # every run stored, none twice
    loaded = [store.load_record(path) for path in records]  # every record complete and valid
    assert {(r["model"], r["seed"]) for r in loaded} == {(m, int(s)) for m in MODELS for s in SEEDS}
    assert killed[0] in records  # the killed run was retried to the end
    # the retry appended to the dead attempt's log, and the driver says a retry happened
    log = store.load_record(killed[0])["log_file"]
    attempts = [line for line in open(log, encoding="utf-8") if line.startswith("== grid run")]
    assert [line.split(": ")[1].split(" (")[0] for line in attempts] == ["attempt 1", "attempt 2"]
    assert "done after 2 attempts" in caplog.text
    created = {path: store.load_record(path)["created"] for path in records}

    assert grid(tmp_path) == 0  # again: everything is stored, nothing is retrained
    assert {path: store.load_record(path)["created"] for path in sorted(results_dir.glob("runs/*/*/*.json"))} \
        == created


def test_a_suite_subset_accepts_the_suite_wide_keys_of_its_other_models(tmp_path):
    """`suite cpu --entries FatsMB --workers 2` failed every seed run: the suite-wide `embedding_size`
    (GRU4Rec's) was checked against the subset's models only. A grid told the suite's models accepts it;
    on its own a key no model of the command knows is still refused."""
    from types import SimpleNamespace

    from mbrec.benchmark.grid import GridJob, plan_grid

    args = SimpleNamespace(config_files=[], data_path=None, cache_dir=str(tmp_path / "cache"),
                           results_dir=str(tmp_path / "results"), rerun=False)
    jobs = [GridJob("SASRec", "synthetic", 1, {"embedding_size": 16, "epochs": 2})]
    _, pending, failures = plan_grid(args, None, jobs, command_models=["SASRec", "GRU4Rec"])
    assert not failures and len(pending) == 1
    _, pending, failures = plan_grid(args, None, jobs)
    assert not pending and "embedding_size" in str(failures[0][3])
