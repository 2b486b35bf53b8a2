"""The results store under concurrency: atomic records, one trainer per run key."""

import hashlib
import json
import multiprocessing
import time

import pytest

from mbrec import results as store

N_WRITERS, RECORDS_PER_WRITER, SHARED_PATHS = 6, 8, 3
N_USERS = 20_000  # per-user vectors make a record ~0.5 MB, so writes take long enough to overlap


def make_record(writer, index):
    ranks = [(writer * 7919 + index * 31 + user) % 1000 for user in range(N_USERS)]
    digest = hashlib.sha1(json.dumps(ranks).encode()).hexdigest()
    return {"run_key": f"{writer}-{index}", "model": "M", "dataset": "d", "seed": writer, "config": {"digest": digest},
            "results": {"next_item": {"metrics": {"recall@10": 0.0}, "n_users": N_USERS,
                                      "per_user": {"user": [str(u) for u in range(N_USERS)], "rank": ranks}}}}


def writer_process(root, writer):
    for index in range(RECORDS_PER_WRITER):
        own = store.record_path(root, "M", "d", writer, f"own{index}")
        store.save_record(own, make_record(writer, index))
        shared = store.record_path(root, "M", "d", 0, f"shared{index % SHARED_PATHS}")  # everyone writes these
        store.save_record(shared, make_record(writer, index))


def reader_process(root, stop, problems):
    """Reads whatever exists while the writers run: a record is absent or complete, never partial."""
    while not stop.is_set():
        for path in (root / "runs").glob("*/*/*.json"):
            try:
                record = store.load_record(path)
            except FileNotFoundError:
                continue
            except store.ResultsError as error:
                problems.put(str(error))
                continue
            ranks = record["results"]["next_item"]["per_user"]["rank"]
            if hashlib.sha1(json.dumps(ranks).encode()).hexdigest() != record["config"]["digest"]:
                problems.put(f"{path}: ranks of one writer, digest of another")


def test_concurrent_writers_leave_every_record_complete(tmp_path):
    context = multiprocessing.get_context("fork")
    stop, problems = context.Event(), context.Queue()
    reader = context.Process(target=reader_process, args=(tmp_path, stop, problems))
    reader.start()
    writers = [context.Process(target=writer_process, args=(tmp_path, writer)) for writer in range(N_WRITERS)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=120)
        assert process.exitcode == 0
    stop.set()
    reader.join(timeout=30)
    seen = []
    while not problems.empty():
        seen.append(problems.get())
    assert seen == []
    paths = sorted((tmp_path / "runs").glob("*/*/*.json"))
    assert len(paths) == N_WRITERS * RECORDS_PER_WRITER + SHARED_PATHS
    for path in paths:  # complete, valid, and internally consistent (one writer's whole record)
        record = store.load_record(path)
        ranks = record["results"]["next_item"]["per_user"]["rank"]
        assert len(ranks) == N_USERS
        assert hashlib.sha1(json.dumps(ranks).encode()).hexdigest() == record["config"]["digest"]
    assert not [p for p in (tmp_path / "runs").rglob("*") if p.name.startswith(".")]  # no temporaries left


def locked_increment(counter_file, times):
    for _ in range(times):
        with store.run_lock(counter_file) as acquired:
            assert acquired
            value = int(counter_file.read_text()) if counter_file.exists() else 0
            time.sleep(0.001)  # widen the read-modify-write window an unlocked update would lose
            counter_file.write_text(str(value + 1))


def test_run_lock_lets_one_process_in_at_a_time(tmp_path):
    counter = tmp_path / "counter.json"
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=locked_increment, args=(counter, 25)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert int(counter.read_text()) == 100  # also while each release removes the lock file
    assert not store.lock_path(counter).exists()  # no lock left beside a finished record


def hold_lock(path, held, release):
    with store.run_lock(path):
        held.set()
        release.wait(30)


def test_run_lock_without_wait_reports_a_busy_run_and_a_dead_holder_frees_it(tmp_path):
    path = store.record_path(tmp_path, "M", "d", 1, "k")
    context = multiprocessing.get_context("fork")
    held, release = context.Event(), context.Event()
    holder = context.Process(target=hold_lock, args=(path, held, release))
    holder.start()
    assert held.wait(30)
    with store.run_lock(path, wait=False) as acquired:
        assert not acquired
    holder.kill()  # a killed worker: the OS drops its lock
    holder.join(30)
    with store.run_lock(path, wait=False) as acquired:
        assert acquired


@pytest.mark.parametrize("content", ["", "{\"run_key\": ", "{}"])
def test_partial_or_empty_records_are_reported_not_used(tmp_path, content):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(store.ResultsError):
        store.load_record(path)
