"""Ctrl+C during a run: one line, exit status 130, no orphan checkpoint, no lock file."""

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


def test_ctrl_c_during_training_prints_one_line_and_leaves_no_orphans(tmp_path):
    results = tmp_path / "results"
    command = [sys.executable, "run_benchmark.py", "--models", "Pop", "SASRec", "--dataset", "synthetic",
               "--results-dir", str(results), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
               "prepare.size={n_users: 60, n_items: 50, n_categories: 5}", "epochs=100000", "stopping_step=100000"]  # SASRec trains until it is interrupted
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
        while not list(results.glob("runs/*/SASRec/*.pth")):  # the first validation has written the selected weights
            assert process.poll() is None, stderr_file.read_text(encoding="utf-8")
            assert time.monotonic() < deadline, "training never wrote a checkpoint"
            time.sleep(POLL_S)
        assert list(results.glob("runs/*/SASRec/*.lock"))  # mid-training: the run holds its lock
        process.send_signal(signal.SIGINT)
        process.wait(timeout=CHECKPOINT_WAIT_S)
    finally:
        if process.poll() is None:
            process.kill()
    err = stderr_file.read_text(encoding="utf-8")

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
