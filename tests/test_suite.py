"""The tiny `ci` suite end to end on synthetic data in tmp dirs: plan, tune on the first seed, every
seed, skip on rerun, resume after a lost run, and the suite's tables. Never the reference suites."""

import json

import pytest

ray = pytest.importorskip("ray")

from mbrec import results as store  # noqa: E402
from mbrec.benchmark.suite import suite_main  # noqa: E402
from mbrec.reporting.suite_tables import print_suite_report  # noqa: E402
from mbrec.suites import RECORD_KEY, load_suite  # noqa: E402
from mbrec.training.resume import resume_path_of  # noqa: E402
from mbrec.utils import REPO_DIR  # noqa: E402

LOCAL_CPUS = 2


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module; the suite's sweeps join it instead of starting their own."""
    ray.init(num_cpus=LOCAL_CPUS, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO_DIR)}})
    yield
    ray.shutdown()


def suite(tmp_path, *extra):
    return suite_main(["ci", "--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"),
                       "--device", "cpu", *extra], report=print_suite_report)


def stored(tmp_path):
    """``{(entry, seed): (path, record)}`` of the suite's records."""
    found = {}
    for path in store.record_files(tmp_path / "results" / "runs"):
        record = store.load_record(path)
        for mark in record[RECORD_KEY]:
            found[(mark["entry"], record["seed"])] = (path, record)
    return found


def test_ci_suite_tunes_runs_every_seed_skips_and_resumes(tmp_path, ray_session, capsys):
    ci = load_suite("ci")
    assert suite(tmp_path, "--dry-run") == 0
    plan = capsys.readouterr().out
    assert "sweep SASRec" in plan and "waits for its sweep" in plan and "0/7 done" in plan

    assert suite(tmp_path) == 0
    out = capsys.readouterr().out
    assert "#### behavior_specific" in out and "SASRec[layers=2]" in out  # ends with the suite's tables

    # tuned once, on the first seed, with the suite's number of trials, selection on valid
    summaries = list((tmp_path / "results" / "sweeps").glob("*/SASRec/*/summary.json"))
    assert len(summaries) == 1
    summary = json.loads(summaries[0].read_text())
    assert len(summary["trials"]) == ci.tuning["trials"] and summary["seed"] == ci.tuning_seed
    assert summary["options"]["scheduler"] == "asha" and summary["final"] is None  # no test in the sweep
    assert all(trial["seconds"] > 0 for trial in summary["trials"])  # every trial timed (README cost table)
    selected = summary["best"]["params"]

    runs = stored(tmp_path)
    assert set(runs) == {(entry.name, seed) for entry in ci.entries for seed in ci.seeds}
    for (entry, seed), (path, record) in runs.items():
        assert path.name.endswith(".json.gz")  # suites store compressed records
        assert record["training"]["stopped_by"] in ("patience", "epoch_cap", "not_trained")
        if entry.startswith("SASRec"):  # the selected configuration on every seed, ablation included
            assert {name: record["config"][name] for name in selected} == selected
            assert record["config"]["epochs"] == ci.training["epochs"]
    assert runs[("SASRec[layers=2]", 1)][1]["config"]["n_layers"] == 2
    assert runs[("SASRec", 1)][1]["config"]["n_layers"] == 1

    # rerun: nothing is trained or tuned again; a dry run writes nothing (not even the derived grids)
    created = {key: record["created"] for key, (_, record) in runs.items()}
    grids = tmp_path / "results" / "grids"
    for grid in grids.iterdir():
        grid.unlink()
    grids.rmdir()
    before = snapshot(tmp_path / "results")
    assert suite(tmp_path, "--dry-run") == 0
    assert "7/7 done" in capsys.readouterr().out
    assert snapshot(tmp_path / "results") == before
    assert suite(tmp_path) == 0
    assert {key: record["created"] for key, (_, record) in stored(tmp_path).items()} == created

    # a lost run (killed before it stored its record) is the only one trained on resume; the plan says
    # it resumes when its attempt left a resume state (an unreadable one: it trains from epoch 0)
    lost_path, _ = runs[("SASRec", 2)]
    lost_path.unlink()
    resume_state = resume_path_of(lost_path.with_name(lost_path.name.removesuffix(".json.gz") + ".pth"))
    resume_state.write_bytes(b"not a resume state")
    assert suite(tmp_path, "--dry-run") == 0
    assert "(resumes: an interrupted attempt saved its state)" in capsys.readouterr().out
    assert suite(tmp_path) == 0
    assert not resume_state.exists()
    again = stored(tmp_path)
    assert set(again) == set(runs)
    assert [key for key, (_, record) in again.items() if record["created"] != created[key]] == [("SASRec", 2)]


def snapshot(folder):
    """``{relative path: (size, mtime_ns)}`` of every file and folder under ``folder``."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*"))}


def test_dry_run_of_a_new_suite_writes_nothing(tmp_path, capsys):
    """The plan only: no derived grid, no folder, no record annotated; the data cache may fill."""
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    (results / "notes.txt").write_text("the researcher's own file")
    before = snapshot(results)
    assert suite(tmp_path, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "sweep SASRec" in out and "0/7 done" in out
    assert snapshot(results) == before


def test_an_unwritable_results_dir_is_refused_before_any_work(tmp_path, caplog):
    (tmp_path / "a_file").write_text("")
    assert suite_main(["ci", "--results-dir", str(tmp_path / "a_file" / "results"), "--device", "cpu"]) == 1
    assert "cannot write results" in caplog.text and "Traceback" not in caplog.text


def test_unknown_suite_is_one_line_error(tmp_path, caplog):
    assert suite_main(["no_such_suite", "--results-dir", str(tmp_path)]) == 1
    assert "Unknown suite" in caplog.text


def save_marked(path, entry, seed):
    """A minimal record at ``path`` naming the ci suite's ``entry`` on synthetic_ci."""
    store.save_record(store.compressed_path(path), {
        "run_key": path.stem, "model": entry.split("[")[0], "dataset": "synthetic", "seed": seed, "config": {},
        "results": {}, RECORD_KEY: [{"suite": "ci", "entry": entry, "dataset_variant": "synthetic_ci"}]})


def test_stale_lists_the_records_and_sweeps_no_step_names(tmp_path, capsys, caplog):
    """After a setting change: the old records and sweep folders are listed (for `git rm`), the current
    ones are not, and a record whose entry's new sweep has not run is held back (it may be reused)."""
    assert suite(tmp_path, "--dry-run") == 0
    capsys.readouterr()
    from mbrec.benchmark.suite import build_suite_parser, plan_suite
    args = build_suite_parser().parse_args(["ci", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")])
    _, seed_runs = plan_suite(load_suite("ci"), args, tmp_path / "results", tmp_path / "grids")
    current = next(step.path for step in seed_runs if step.entry.name == "Pop" and step.seed == 1)
    runs = tmp_path / "results" / "runs" / "synthetic"
    save_marked(current, "Pop", 1)
    old_pop = runs / "Pop" / "Pop-seed1-0123456789ab.json"
    save_marked(old_pop, "Pop", 1)
    old_sasrec = runs / "SASRec" / "SASRec-seed1-0123456789ab.json"
    save_marked(old_sasrec, "SASRec", 1)  # SASRec's sweep has not run: undecided
    old_sweep = tmp_path / "results" / "sweeps" / "synthetic" / "SASRec" / "SASRec-00000000"
    old_sweep.mkdir(parents=True)
    with caplog.at_level("INFO", logger="mbrec"):
        assert suite(tmp_path, "--stale") == 0
    assert capsys.readouterr().out.split() == [str(store.compressed_path(old_pop)), str(old_sweep)]
    assert "1 record(s) wait for their entry's new sweep" in caplog.text and "SASRec-seed1" in caplog.text
    assert store.stored_record(current) is not None  # nothing deleted


def test_ctrl_c_during_a_sweep_stops_the_suite(tmp_path, monkeypatch):
    """Tune ends a sweep quietly on Ctrl+C (its own handler); the suite must not go on to its next step."""
    calls = []

    def interrupted_sweep(*args, **kwargs):
        calls.append(args[0])
        return {"best": None, "interrupted": True, "stop_requested": True, "trials": []}

    monkeypatch.setattr("mbrec.benchmark.suite.sweep", interrupted_sweep)
    with pytest.raises(KeyboardInterrupt):
        suite(tmp_path)
    assert calls == ["SASRec"]
    assert not list((tmp_path / "results").rglob("*.json.gz"))  # no seed run started
