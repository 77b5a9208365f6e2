"""Multi-node studies on a head and a worker node started on this machine.

Each study runs in a subprocess (tests/multinode_study.py) that owns its two-node cluster and
always shuts it down, so these tests never touch the suite's shared local Ray.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from grok_tune import metrics as m
from grok_tune.results import read_trials

from .conftest import TINY_PARAMS

SCRIPT = Path(__file__).with_name("multinode_study.py")
SPEC = {
    "name": "multinode",
    "mode": "grid",
    "max_concurrent": 2,
    "checkpoint_every": 100,
    "max_failures": 2,
    "params": {
        **TINY_PARAMS,
        "steps": 2000,
        "stop_after_generalized": None,  # long enough trials to be caught mid-run
        "frac": {"grid": [0.5, 0.7]},
        "weight_decay": {"grid": [0.3, 1.0]},
    },
}
OUTCOME = ["frac", "weight_decay", m.STATUS, m.STEPS_TO_MEMORIZE, m.STEPS_TO_GENERALIZE,
           m.STEP, m.VAL_ACC, m.WEIGHT_NORM]  # fmt: skip


def run_study(tmp_path: Path, *extra: str) -> tuple[dict, pd.DataFrame]:
    space = tmp_path / "multinode.yaml"
    space.write_text(yaml.safe_dump(SPEC))
    storage = tmp_path / "shared_storage"
    # Tune copies a trial's result.json into the storage with its saved state: every second
    # here (its default is 10 s or more), so that the killer sees a running trial's progress
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(space), str(storage), *extra],
        capture_output=True, text=True, timeout=400,
        env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return info, read_trials(str(storage / "multinode"))


@pytest.fixture(scope="module")
def spread(tmp_path_factory):
    return run_study(tmp_path_factory.mktemp("spread"))


def test_study_runs_on_both_nodes_into_shared_storage(spread):
    info, trials = spread
    assert info["exit"] == 0
    assert len(trials) == 4 and (trials[m.STATUS] != m.Status.ERROR).all()
    assert set(trials["node_id"]) == {info["head"], info["worker"]}


def test_killed_worker_trials_finish_on_the_survivor(spread, tmp_path):
    info, trials = run_study(tmp_path, "--kill-worker")
    assert info["killed"], "the worker was never caught running a checkpointed trial"
    assert len(trials) == 4 and trials["trial_id"].is_unique
    assert (trials[m.STATUS].isin([m.Status.GENERALIZED, m.Status.CENSORED])).all()
    # the trials that were on the worker ended on the head, continued from their checkpoints
    assert set(trials["node_id"]) == {info["head"]}
    moved = []
    for trial_dir in trials["trial_dir"]:
        lines = (Path(trial_dir) / "result.json").read_text().splitlines()
        nodes = {json.loads(line).get("node_id") for line in lines}
        if nodes == {info["head"], info["worker"]}:
            moved.append(trial_dir)
    assert moved
    # and end exactly where an undisturbed study ends
    key = ["frac", "weight_decay"]
    pd.testing.assert_frame_equal(
        trials[OUTCOME].sort_values(key, ignore_index=True),
        spread[1][OUTCOME].sort_values(key, ignore_index=True),
    )
