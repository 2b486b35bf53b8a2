"""What a newcomer sees: the top-level help, one-line errors that leave nothing behind, where data is looked for."""

import os

import pytest

from mbrec.cli import main
from mbrec.data.__main__ import main as data_main

TINY_SET = "prepare.size={n_users: 60, n_items: 50, n_categories: 5}"


def test_top_level_help_lists_every_subcommand_with_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for subcommand in ("table", "compare", "tune"):
        lines = [line for line in out.splitlines() if line.strip().startswith(subcommand + " ")]
        assert len(lines) == 1, subcommand
    for option in ("--workers", "--ray-address", "--cpus-per-run", "--gpus-per-run", "--max-retries"):
        assert option in out


def test_all_interactions_filtered_out_is_one_line_and_leaves_nothing(tmp_path, capsys):
    results, cache = tmp_path / "results", tmp_path / "cache"
    code = main(["--model", "SASRec", "--dataset", "synthetic", "--results-dir", str(results), "--cache-dir",
                 str(cache), "--no-progress", TINY_SET, "min_user_inter=1000"])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "filtered out" in line]
    assert len(errors) == 1 and errors[0].startswith("FAILED SASRec synthetic")
    left = [path for path in [*results.rglob("*"), *cache.rglob("*")] if not path.is_dir()]
    assert left == []  # no prepared copy, no log, no lock


def test_a_filter_error_keeps_a_prepared_copy_it_did_not_build(tmp_path, capsys):
    args = ["--model", "Pop", "--dataset", "synthetic", "--results-dir", str(tmp_path / "results"),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", TINY_SET]
    assert main(args) == 0
    prepared = sorted(path for path in (tmp_path / "cache").rglob("*") if path.is_file())
    assert main([*args, "min_user_inter=1000"]) == 1
    assert sorted(path for path in (tmp_path / "cache").rglob("*") if path.is_file()) == prepared


def test_unwritable_results_dir_is_refused_before_any_work(tmp_path, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    code = main(["--model", "SASRec", "--dataset", "synthetic", "--results-dir", str(not_a_folder / "results"),
                 "--cache-dir", str(tmp_path / "cache"), TINY_SET])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [err.strip()]  # one line
    assert "cannot write results to" in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()  # refused before preparing data


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_results_dir_is_refused_before_any_work(tmp_path, capsys):
    read_only = tmp_path / "results"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        code = main(["--model", "SASRec", "--dataset", "synthetic", "--results-dir", str(read_only),
                     "--cache-dir", str(tmp_path / "cache"), TINY_SET])
    finally:
        read_only.chmod(0o755)
    assert code == 2 and "cannot write results to" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_data_list_says_where_it_looked(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MBREC_DATA_DIR", raising=False)
    assert data_main(["list", "--cache-dir", str(tmp_path / "nowhere")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "raw data: not set (neither --data-path nor $MBREC_DATA_DIR); datasets that need raw " \
                     "files show raw missing"
    assert out[1] == f"prepared data: {tmp_path / 'nowhere'} (--cache-dir; does not exist)"
    monkeypatch.setenv("MBREC_DATA_DIR", str(tmp_path))
    assert data_main(["list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"raw data: {tmp_path} ($MBREC_DATA_DIR; exists)"
