"""One local Ray for the whole test session (about 4 s to start), shared by every study test."""

import os

import pytest

# Tests exercise grok_tune on a private local cluster only
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# studies end without their analysis (tests that want it run it, or pass no flag and unset this)
os.environ.setdefault("GROK_TUNE_ANALYSIS", "off")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


# A task that memorizes, then generalizes, in about 2 s on one core: lr 5e-3, as 1e-2 sits at
# the edge of stability here (train accuracy collapses and recovers) and its outcome then
# changes with the float rounding of the thread count
TINY_PARAMS = {
    "op": "x+y",
    "p": 23,
    "lr": 5e-3,
    "n_layers": 1,
    "d_model": 64,
    "d_mlp": 256,
    "eval_every": 50,
}


def kill_study_when(space, storage, address: str, ready, timeout: float = 240.0) -> None:
    """Run a study in its own process on the session's cluster and SIGKILL it once
    ``ready(study_dir)`` holds, as a crash would (Tune snapshots its state every second)."""
    import signal
    import time
    from pathlib import Path

    import yaml

    name = yaml.safe_load(Path(space).read_text())["name"]
    proc = start_study(space, storage, address)
    study = Path(storage) / name
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not ready(study):
        time.sleep(0.2)
    time.sleep(1.0)
    assert proc.poll() is None, "the study finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def start_study(space, storage, address: str, output=None):
    """``python -m grok_tune.search`` in its own process on the session's cluster, with Tune
    saving its state every second (its default is every 10 s or more)."""
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "grok_tune.search", "--space", str(space),
         "--storage", str(storage), "--address", address],
        stdout=output or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if output else subprocess.DEVNULL,
        env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"},
        text=True,
    )  # fmt: skip


def any_trial_done(study) -> bool:
    return any('"done_training": true' in p.read_text() for p in study.glob("*/result.json"))
