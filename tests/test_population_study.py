"""Packed studies (members_per_trial): configurations trained as populations inside Ray trials,
each still one row of trials.parquet, one TensorBoard run, and resumable when killed."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from grok_tune import metrics as m
from grok_tune import search
from grok_tune.results import read_curves, read_trials

from .conftest import TINY_PARAMS, kill_study_when

pytestmark = pytest.mark.usefixtures("ray_session")

SPEC = {
    "name": "packed",
    "mode": "grid",
    "members_per_trial": 3,
    "checkpoint_every": 100,
    "params": {
        **TINY_PARAMS, "frac": 0.7, "steps": 400, "stop_after_generalized": None,
        "weight_decay": {"grid": [0.0, 1.0]}, "seed": {"grid": [0, 1]},
    },
}  # fmt: skip
OUTCOME = [
    "weight_decay", "seed", m.STATUS, m.STEPS_TO_MEMORIZE, m.STEPS_TO_GENERALIZE, m.STEP,
    m.TRAIN_LOSS, m.VAL_LOSS, m.VAL_ACC, m.WEIGHT_NORM,
]  # fmt: skip


def run(tmp: Path, spec: dict, name: str) -> Path:
    space = tmp / f"{name}.yaml"
    space.write_text(yaml.safe_dump({**spec, "name": name}))
    assert search.main(["--space", str(space), "--storage", str(tmp)]) == 0
    return tmp / name


def outcomes(study: Path) -> pd.DataFrame:
    trials = read_trials(str(study))
    return trials[OUTCOME].sort_values(["weight_decay", "seed"], ignore_index=True)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packs")
    packed = run(tmp, SPEC, "packed")
    single = run(tmp, {**SPEC, "members_per_trial": 1}, "single")
    return packed, single


def test_a_packed_study_has_a_row_and_a_run_per_configuration(studies):
    packed, _ = studies
    trials = read_trials(str(packed))
    assert len(trials) == 4 and trials["trial_id"].is_unique
    assert sorted(trials["member"].tolist()) == [0, 0, 1, 2]  # packs of 3 and 1
    curves = read_curves(str(packed))
    assert set(curves["trial_id"]) == set(trials["trial_id"])
    assert (curves.groupby("trial_id")[m.STEP].max() == 400).all()
    for trial_dir in trials["trial_dir"]:
        assert re.fullmatch(r"m[0-2]_seed=[01]_weight_decay=[01]", Path(trial_dir).name)
        assert list(Path(trial_dir).glob("events.out.tfevents.*"))


def test_a_packed_study_ends_as_the_unpacked_one(studies):
    # a population member on CPU is its Trainer run, bit for bit (grok_tune/population.py)
    packed, single = studies
    pd.testing.assert_frame_equal(outcomes(packed), outcomes(single))


def test_a_killed_packed_study_resumes_to_the_same_outcomes(studies, tmp_path, ray_session):
    packed, _ = studies
    space = tmp_path / "packed.yaml"
    space.write_text(yaml.safe_dump(SPEC))
    store = tmp_path / "store"
    study = store / "packed"
    kill_study_when(space, store, ray_session, lambda s: bool(list(s.glob("*/checkpoint_*"))))
    assert search.main(["--resume", "--name", "packed", "--storage", str(store)]) == 0
    pd.testing.assert_frame_equal(outcomes(study), outcomes(packed))


def test_members_per_trial_is_refused_where_it_cannot_pack(tmp_path, capsys):
    spec = {**SPEC, "mode": "optuna", "params": {**TINY_PARAMS, "frac": {"uniform": [0.3, 0.8]}}}
    space = tmp_path / "o.yaml"
    space.write_text(yaml.safe_dump(spec))
    with pytest.raises(SystemExit):
        search.main(["--space", str(space), "--storage", str(tmp_path / "s"), "--dry-run"])
    assert "members_per_trial: packs grid and random studies" in capsys.readouterr().err


def test_a_random_study_runs_the_same_points_packed_or_not(tmp_path):
    """One sampler draws a random study's points (grok_tune/study/configs.py): packing them
    into populations cannot change which configurations run, nor their seeds."""
    spec = {
        "name": "random",
        "mode": "random",
        "num_samples": 4,
        "seed": 7,
        "params": {
            **TINY_PARAMS, "steps": 20, "eval_every": 20,
            "lr": {"loguniform": [1e-3, 1e-2]}, "frac": {"uniform": [0.3, 0.7]},
            "weight_decay": {"choice": [0.0, 1.0]},
        },
    }  # fmt: skip
    points = []
    for k in (1, 2):
        study = run(tmp_path, {**spec, "members_per_trial": k}, f"random{k}")
        trials = read_trials(str(study))[["lr", "frac", "weight_decay", "seed"]]
        points.append(trials.sort_values("lr", ignore_index=True))
    pd.testing.assert_frame_equal(points[0], points[1])
    assert sorted(points[0]["seed"]) == [0, 1, 2, 3]  # each trial its own seed
    assert points[0]["lr"].nunique() == 4
