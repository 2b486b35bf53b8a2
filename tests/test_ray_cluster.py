"""Joining a cluster from ``ray start --head`` (Ray 2.60: token authentication by default), against
a real local head started and stopped by the test."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("ray")

from mbrec import results as store  # noqa: E402
from mbrec.utils import REPO_DIR  # noqa: E402

# Seconds a `ray start` / `ray stop` / join may take on a busy machine.
RAY_COMMAND_TIMEOUT = 120
JOIN = ("import logging, sys, ray; logging.basicConfig(level=logging.INFO); "
        "from mbrec.benchmark.tune import connect_ray; connect_ray(sys.argv[1]); "
        "print('CPUS', ray.cluster_resources().get('CPU'))")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def processes_using(folder):
    """Pids of the processes whose command line names ``folder`` (the head's own temp dir)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if str(folder) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A `ray start --head` on a free port, one for this module's tests (starting one takes seconds);
    HOME in its own temp folder, so its token file is the tests' own."""
    tmp_path = tmp_path_factory.mktemp("ray_head")
    ray_cli = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO_DIR))
    (tmp_path / "home").mkdir()
    temp_dir = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # Ray's socket paths must stay short
    port = free_port()
    try:
        # a token exists once any local ray.init() ran (Ray writes ~/.ray/auth_token); then
        # `ray start --head` enables token authentication
        subprocess.run([ray_cli, "get-auth-token", "--generate"], env=env, capture_output=True,
                       timeout=RAY_COMMAND_TIMEOUT, check=True)
        started = subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=1",
                                  "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
                                 env=env, capture_output=True, text=True, timeout=RAY_COMMAND_TIMEOUT)
        assert started.returncode == 0, started.stderr[-2000:]
        yield f"127.0.0.1:{port}", env
    finally:  # stopped even when the test fails: only this head's processes (never `ray stop`, which stops all)
        for pid in processes_using(temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def join(address, env):
    return subprocess.run([sys.executable, "-c", JOIN, address], env=env, cwd=REPO_DIR, capture_output=True,
                          text=True, timeout=RAY_COMMAND_TIMEOUT)


def test_joins_a_ray_start_head_with_its_token_and_says_how_when_it_cannot(ray_head):
    address, env = ray_head
    # as a user has it: Ray imported first, RAY_AUTH_MODE unset, the token where `ray start` wrote it
    joined = join(address, env)
    assert "CPUS 1.0" in joined.stdout, joined.stderr[-2000:]
    assert "RAY_AUTH_MODE=token" in joined.stderr  # the log says how it joined
    # the mode set against the cluster's: one line naming RAY_AUTH_MODE, no traceback from Ray's depths
    refused = join(address, {**env, "RAY_AUTH_MODE": "disabled"})
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert "ConfigError: cannot join the Ray cluster" in last and "RAY_AUTH_MODE=token" in last


def test_a_grid_runs_on_a_ray_start_head_with_no_extra_environment(ray_head, tmp_path):
    address, env = ray_head
    results_dir = tmp_path / "results"
    # the command a user types, in the user's environment (no RAY_* variables): Pop, two seeds, tiny data
    ran = subprocess.run([sys.executable, "run_benchmark.py", "--models", "Pop", "--datasets", "synthetic",
                          "--seeds", "1", "2", "--ray-address", address, "--no-progress",
                          "--cache-dir", str(tmp_path / "cache"), "--results-dir", str(results_dir),
                          "prepare.size={n_users: 60, n_items: 50, n_categories: 5}", "eval_batch_size=64"],
                         env=env, cwd=REPO_DIR, capture_output=True, text=True, timeout=RAY_COMMAND_TIMEOUT)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert f"joining {address} with token authentication" in ran.stderr  # ran on the head, not a local Ray
    records = sorted(results_dir.glob("runs/*/Pop/*.json"))
    assert {store.load_record(path)["seed"] for path in records} == {1, 2}
