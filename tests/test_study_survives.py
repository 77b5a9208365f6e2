"""A study survives what a user or a cluster does to it (issue 16): interrupted before any trial
reported, by Ctrl-C or SIGTERM; copied elsewhere and resumed there; its saved state damaged;
its driver killed at any moment. Each ends in a clear refusal or in the study it would have
been, on a real local Ray (the session's cluster, conftest.py)."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from grok_tune import metrics as m
from grok_tune import search
from grok_tune.results import read_curves, read_trials

from .conftest import TINY_PARAMS, start_study

pytestmark = pytest.mark.usefixtures("ray_session")

# one trial at a time, so that an interrupted study has running, pending and unstarted trials
SLOW = {
    "name": "slow",
    "mode": "grid",
    "max_concurrent": 1,
    "checkpoint_every": 100,
    "params": {**TINY_PARAMS, "steps": 900, "frac": 0.5, "seed": {"grid": [0, 1, 2]}},
}


def write(tmp: Path, spec: dict) -> Path:
    path = tmp / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def wait_for(ready, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, "the study never got there"
        time.sleep(0.05)


def files(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


def started_not_reported(study: Path) -> bool:
    """A trial has started (Tune wrote its params.json) and none has reported yet."""
    started = list(study.glob("*/params.json"))
    reported = [p for p in study.glob("*/result.json") if p.stat().st_size]
    return bool(started) and not reported


@pytest.mark.parametrize(
    ("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_interrupted_before_any_report_every_trial_is_a_row(tmp_path, ray_session, sig, status):
    log = (tmp_path / "log.txt").open("w")
    proc = start_study(write(tmp_path, SLOW), tmp_path / "store", ray_session, output=log)
    study = tmp_path / "store" / "slow"
    wait_for(lambda: started_not_reported(study))
    os.kill(proc.pid, sig)
    assert proc.wait(timeout=120) == status
    out = (tmp_path / "log.txt").read_text()
    assert "Traceback" not in out and "Tuner.restore" not in out
    assert f"--resume --name slow --storage {tmp_path / 'store'}" in out
    trials = read_trials(str(study))
    # every configuration is a row with its settings: started (running) or not (pending)
    assert sorted(trials["seed"]) == [0, 1, 2]
    assert set(trials[m.STATUS]) <= {"running", "pending"} and "pending" in set(trials[m.STATUS])
    assert trials["region"].isna().all() and (trials["p"] == 23).all()
    if sig == signal.SIGINT:  # and it resumes to its end (once is enough for both signals)
        resume = ["--resume", "--name", "slow", "--storage", str(tmp_path / "store")]
        assert search.main(resume) == 0
        assert (read_trials(str(study))[m.STATUS] == "censored").all()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, ray_session):
    """A study stopped by Ctrl-C once its first trial has a checkpoint."""
    tmp = tmp_path_factory.mktemp("interrupted")
    proc = start_study(write(tmp, SLOW), tmp / "store", ray_session)
    study = tmp / "store" / "slow"
    wait_for(lambda: bool(list(study.glob("*/checkpoint_*"))))
    time.sleep(1.5)  # Tune's saved state knows the checkpoint
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    return study


def test_a_copied_study_resumes_inside_its_copy(interrupted, tmp_path):
    before = files(interrupted)
    copy = tmp_path / "elsewhere" / "slow"
    shutil.copytree(interrupted, copy)
    storage = str(tmp_path / "elsewhere")
    assert search.main(["--resume", "--name", "slow", "--storage", storage]) == 0
    assert files(interrupted) == before  # the original folder: not a byte written
    trials = read_trials(str(copy))
    assert len(trials) == 3 and (trials[m.STATUS] == "censored").all()
    for trial_dir in trials["trial_dir"]:  # checkpoints and TensorBoard files: in the copy
        assert Path(trial_dir).parent == copy
        assert list(Path(trial_dir).glob("events.out.tfevents.*"))
        assert list(Path(trial_dir).glob("checkpoint_*"))
    assert set(read_curves(str(copy))["trial_id"]) == set(trials["trial_id"])


def _truncate_state(study: Path) -> str:
    state = sorted(study.glob("experiment_state-*.json"))[-1]
    state.write_text(state.read_text()[:300])
    return state.name


def _garbage_study_file(study: Path) -> str:
    (study / "study.yaml").write_text("params: [unclosed\n  - {")
    return "study.yaml"


def _no_tuner(study: Path) -> str:
    (study / "tuner.pkl").unlink()
    return "tuner.pkl: missing"


def _checkpoint_gone(study: Path) -> str:
    for checkpoint in study.glob("*/checkpoint_*"):
        shutil.rmtree(checkpoint)
    return "missing, and trial"


@pytest.mark.parametrize(
    "damage", [_truncate_state, _garbage_study_file, _no_tuner, _checkpoint_gone]
)
def test_damaged_state_is_refused_naming_the_file(interrupted, tmp_path, capsys, damage):
    study = tmp_path / "slow"
    shutil.copytree(interrupted, study)
    named = damage(study)
    before = files(study)
    with pytest.raises(SystemExit) as exit_:
        search.main(["--resume", "--name", "slow", "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert named in err and str(study) in err, err
    assert files(study) == before  # nothing run, nothing written


def test_a_moved_optuna_study_is_refused_naming_both_places(tmp_path, ray_session, capsys):
    spec = {
        "name": "opt",
        "mode": "optuna",
        "num_samples": 4,
        "max_concurrent": 1,
        "checkpoint_every": 100,
        "params": {**TINY_PARAMS, "steps": 1500, "weight_decay": {"uniform": [0.1, 1.0]}},
    }
    proc = start_study(write(tmp_path, spec), tmp_path / "a", ray_session)
    wait_for(lambda: bool(list((tmp_path / "a" / "opt").glob("*/checkpoint_*"))))
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    shutil.copytree(tmp_path / "a" / "opt", tmp_path / "b" / "opt")
    with pytest.raises(SystemExit):
        search.main(["--resume", "--name", "opt", "--storage", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert f"began at {tmp_path / 'a' / 'opt'}" in err and f"now at {tmp_path / 'b' / 'opt'}" in err


# --- the driver killed at random moments -------------------------------------------------------
# Trials checkpoint at every evaluation, several times a second: Tune's saved state lags behind
# the checkpoints, the window in which Tune's own retention lost a trial's checkpoint.
BURSTY = {
    "name": "bursty",
    "mode": "grid",
    "max_concurrent": 2,
    "checkpoint_every": 50,
    "params": {
        **TINY_PARAMS, "steps": 600, "dropout": 0.05, "stop_after_generalized": None,
        "frac": {"grid": [0.5, 0.7]}, "weight_decay": {"grid": [0.3, 1.0]},
    },
}  # fmt: skip
KILLS = int(os.environ.get("GROK_TUNE_KILLS", "2"))  # 20 by hand (README): 10-25 minutes
KEYS = ["frac", "weight_decay"]


def _tensorboard_steps(study: Path) -> dict[tuple, list[int]]:
    """Each trial's validation-accuracy steps as TensorBoard reads them (purged events gone)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trials = read_trials(str(study))
    out = {}
    for _, row in trials.iterrows():
        acc = EventAccumulator(row["trial_dir"])
        acc.Reload()
        out[tuple(row[KEYS])] = [e.step for e in acc.Scalars(m.tensorboard_tag(m.VAL_ACC))]
    return out


def _outcome(study: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    trials = read_trials(str(study))
    columns = [*KEYS, m.STATUS, m.STEPS_TO_MEMORIZE, m.STEPS_TO_GENERALIZE, m.STEP, m.VAL_LOSS]
    curves = read_curves(str(study)).merge(trials[["trial_id", *KEYS]], on="trial_id")
    curve_columns = [*KEYS, m.STEP, m.TRAIN_LOSS, m.VAL_ACC]
    return (
        trials[columns].sort_values(KEYS, ignore_index=True),
        curves[curve_columns].sort_values([*KEYS, m.STEP], ignore_index=True),
    )


@pytest.fixture(scope="module")
def bursty_reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bursty")
    start = time.monotonic()
    assert search.main(["--space", str(write(tmp, BURSTY)), "--storage", str(tmp)]) == 0
    return _outcome(tmp / "bursty"), _tensorboard_steps(tmp / "bursty"), time.monotonic() - start


@pytest.mark.parametrize("kill", range(KILLS))
def test_a_driver_killed_at_any_moment_resumes_to_the_same_study(
    tmp_path, ray_session, bursty_reference, kill
):
    (trials, curves), steps, duration = bursty_reference
    proc = start_study(write(tmp_path, BURSTY), tmp_path, ray_session)
    study = tmp_path / "bursty"
    wait_for(lambda: bool(list(study.glob("experiment_state-*.json"))))
    # a moment anywhere in the study's life (the subprocess also starts its own driver first)
    time.sleep(random.Random(kill).uniform(0.0, duration))
    proc.kill()
    proc.wait()
    assert search.main(["--resume", "--name", "bursty", "--storage", str(tmp_path)]) == 0
    resumed_trials, resumed_curves = _outcome(study)
    pd.testing.assert_frame_equal(resumed_trials, trials)
    pd.testing.assert_frame_equal(resumed_curves, curves)
    # TensorBoard reads each run as the uninterrupted one: every evaluation once, in order
    assert _tensorboard_steps(study) == steps


# --- what the study runs, and where ---------------------------------------------------------------
def test_without_address_a_study_runs_on_its_own_ray(tmp_path, ray_session):
    """Another Ray on the machine (here: the test session's) is never joined without
    --address: the study's trials run on a Ray of its own."""
    import subprocess
    import sys

    import ray

    spec = {
        "name": "own",
        "mode": "grid",
        "params": {**TINY_PARAMS, "steps": 50, "seed": {"grid": [0]}},
    }
    cmd = [sys.executable, "-m", "grok_tune.search", "--space", str(write(tmp_path, spec))]
    subprocess.run([*cmd, "--storage", str(tmp_path)], check=True, capture_output=True, timeout=300)
    nodes = set(read_trials(str(tmp_path / "own"))["node_id"])
    assert nodes and ray.get_runtime_context().get_node_id() not in nodes


def test_repeats_take_their_own_seeds(tmp_path, capsys):
    spec = {
        "name": "repeats",
        "mode": "grid",
        "num_samples": 3,
        "params": {**TINY_PARAMS, "steps": 50, "frac": {"grid": [0.4, 0.6]}},
    }
    space = write(tmp_path, spec)
    assert search.main(["--space", str(space), "--storage", str(tmp_path), "--dry-run"]) == 0
    assert "seeds: repeat r runs with seed 0 + r: [0, 1, 2]" in capsys.readouterr().out
    assert search.main(["--space", str(space), "--storage", str(tmp_path)]) == 0
    trials = read_trials(str(tmp_path / "repeats"))
    assert sorted(zip(trials["frac"], trials["seed"], strict=True)) == [
        (f, s) for f in (0.4, 0.6) for s in (0, 1, 2)
    ]
    # repeats differ: three seeds give three different final losses at each fraction
    assert (trials.groupby("frac")[m.TRAIN_LOSS].nunique() == 3).all()
    # resuming with the stored --num-samples is no change
    assert (
        search.main(
            ["--resume", "--name", "repeats", "--storage", str(tmp_path), "--num-samples", "3"]
        )
        == 0
    )


def test_a_packed_study_shows_its_packs_and_shares_its_time(tmp_path, capsys):
    spec = {
        "name": "packs",
        "mode": "grid",
        "members_per_trial": 2,
        "params": {**TINY_PARAMS, "steps": 50, "frac": 0.6, "batch_size": {"grid": [32, 64]},
                   "seed": {"grid": [0, 1]}},
    }  # fmt: skip
    space = write(tmp_path, spec)
    assert search.main(["--space", str(space), "--storage", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "packed: 4 configurations in 2 Ray trials of 2, 2 members" in out
    assert "kept in separate populations by effective batch size" in out
    assert search.main(["--space", str(space), "--storage", str(tmp_path)]) == 0
    trials = read_trials(str(tmp_path / "packs"))
    # a member's wall time is its share of its population's: the column sums to the packs' time
    per_pack = trials.assign(pack=trials["trial_id"].str.split(".").str[0]).groupby("pack")
    assert (per_pack["wall_time_s"].nunique() == 1).all()
    assert per_pack["wall_time_s"].sum().gt(0).all()


def test_analysis_of_an_interrupted_study_draws_what_it_can(interrupted, tmp_path, capsys):
    from analysis.__main__ import main as analyse

    study = tmp_path / "slow"
    shutil.copytree(interrupted, study)
    assert analyse([str(study)]) == 0
    out = capsys.readouterr().out
    assert "Traceback" not in out and f"study slow: {study}" in out
    summary = (study / "summary.txt").read_text()
    # the trials that never ran are counted, not drawn (how many: however far the study got
    # before Ctrl-C on this machine); a figure that cannot be drawn yet (the accuracy curves,
    # before any trial finished) is said, in the summary and on the terminal
    trials = read_trials(str(study))
    pending = int((trials[m.STATUS] == "pending").sum())
    said = re.findall(r"pending (\d+) \(no final region\)", summary)
    assert said == ([str(pending)] if pending else []) and "pending_0" not in summary
    drawn = (study / "figures" / "curves.png").exists()
    assert drawn or ("skipped curves: " in summary and "skipped curves: " in out)
    assert (study / "figures").is_dir()


def test_a_study_with_a_failed_trial_exits_1_and_records_it(tmp_path, capsys):
    """A trial whose process dies (out of memory, a node lost) with no retries left is recorded
    as failed: the study says so and never exits 0."""
    import json
    import threading

    # the trials train for seconds (3,000 steps, no early stop): the kill lands mid-trial
    params = {**SLOW["params"], "steps": 3000, "stop_after_generalized": None}
    spec = {**SLOW, "name": "failing", "max_failures": 0, "params": params}

    def training() -> Path | None:
        for result in (tmp_path / "failing").glob("*/result.json"):
            try:  # Tune may be halfway through writing the last line
                last = json.loads(result.read_text().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                continue
            if not last.get("done"):
                return result
        return None

    def kill_first_trial() -> None:
        found: list[Path] = []
        wait_for(lambda: bool(found.append(training()) or found[-1]))
        os.kill(json.loads(found[-1].read_text().splitlines()[0])["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_first_trial)
    killer.start()
    assert search.main(["--space", str(write(tmp_path, spec)), "--storage", str(tmp_path)]) == 1
    killer.join()
    out = capsys.readouterr().out
    assert "2 of 3 trials finished" in out and "failed: 1 trials raised an error" in out
    trials = read_trials(str(tmp_path / "failing"))
    failed = trials[trials[m.STATUS] == "error"]
    assert len(failed) == 1 and failed["error"].str.len().gt(0).all()
    assert failed["region"].isna().all()
