"""Ctrl+C during a run: one line, exit status 130, no lock file; no orphan checkpoint, or a resume state."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mbrec import results as store

REPO = Path(__file__).resolve().parents[1]
# Guard only (not a timing): how long to wait for training to reach its first checkpoint.
CHECKPOINT_WAIT_S = 300
POLL_S = 0.05


def interrupt_training(tmp_path, wait_for, *extra):
    """Start Pop then SASRec (training until interrupted), send SIGINT once ``wait_for`` matches a file."""
    results = tmp_path / "results"
    command = [sys.executable, "run_benchmark.py", "--models", "Pop", "SASRec", "--dataset", "synthetic",
               "--results-dir", str(results), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
               "prepare.size={n_users: 60, n_items: 50, n_categories: 5}", "epochs=100000", "stopping_step=100000",
               *extra]  # SASRec trains until it is interrupted
    env = dict(os.environ, OMP_NUM_THREADS="1")
    stderr_file = tmp_path / "stderr.txt"  # a file, not a pipe: a full pipe would block the child's logging
    with open(stderr_file, "w", encoding="utf-8") as stderr:
        # SIG_DFL for SIGINT in the child: a test process started in the background (`cmd &` in a
        # non-interactive shell) ignores SIGINT, the child would inherit that, and Python then installs
        # no KeyboardInterrupt handler; a user's terminal always delivers Ctrl+C.
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + CHECKPOINT_WAIT_S
        while not list(results.glob(wait_for)):
            assert process.poll() is None, stderr_file.read_text(encoding="utf-8")
            assert time.monotonic() < deadline, f"training never wrote {wait_for}"
            time.sleep(POLL_S)
        assert list(results.glob("runs/*/SASRec/*.lock"))  # mid-training: the run holds its lock
        process.send_signal(signal.SIGINT)
        process.wait(timeout=CHECKPOINT_WAIT_S)
    finally:
        if process.poll() is None:
            process.kill()
    return process, stderr_file.read_text(encoding="utf-8"), results


def test_ctrl_c_during_training_prints_one_line_and_leaves_no_orphans(tmp_path):
    # the first validation has written the selected weights; no resume state before 5 minutes
    process, err, results = interrupt_training(tmp_path, "runs/*/SASRec/*.pth")

    assert process.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1
    assert "SASRec on synthetic (default seed) did not finish" in lines[0]
    assert "no checkpoint" in lines[0] and "1 finished run record(s)" in lines[0]  # Pop's
    assert not list(results.glob("runs/*/SASRec/*.pth")) and not list(results.glob("runs/*/SASRec/*.json"))
    assert not list(results.rglob("*.lock"))
    pop_records = list(results.glob("runs/*/Pop/*.json"))
    assert len(pop_records) == 1 and store.load_record(pop_records[0])["model"] == "Pop"
    log = lines[0].split("its log ")[1].split(",")[0]
    assert "interrupted (Ctrl+C): checkpoint deleted" in Path(log).read_text(encoding="utf-8")


def test_ctrl_c_after_a_resume_state_keeps_it_and_says_the_command_resumes(tmp_path):
    process, err, results = interrupt_training(tmp_path, "runs/*/SASRec/*.resume.pth", "resume_every_seconds=0")

    assert process.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1 and "SASRec on synthetic (default seed) did not finish" in lines[0]
    assert "running the same command again resumes it" in lines[0] and "its resume state" in lines[0]
    state = list(results.glob("runs/*/SASRec/*.resume.pth"))
    assert len(state) == 1 and state[0].with_name(state[0].name.replace(".resume", "")).exists()
    assert not list(results.glob("runs/*/SASRec/*.json")) and not list(results.rglob("*.lock"))
