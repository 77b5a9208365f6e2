"""A boundary study end to end: the CLI on a real local Ray, a SIGKILL and --resume, analysis."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis import __main__ as analysis_all
from analysis.boundary_map import boundary_summary, plot_boundary_map, rebuild
from analysis.common import load_study
from grok_tune import search
from grok_tune.regions import REGION
from grok_tune.results import read_trials

from .conftest import TINY_PARAMS, any_trial_done, kill_study_when

pytestmark = pytest.mark.usefixtures("ray_session")

# x+y mod 23 on the tiny model: memorizes only at small fractions, groks at large ones within
# 1,200 steps; initial 3, depth 2: 3 points, then the bisections of the interval that differs
SPEC = {
    "name": "edge",
    "mode": "boundary",
    "initial": 3,
    "depth": 2,
    "max_concurrent": 2,
    "checkpoint_every": 100,
    "params": {**TINY_PARAMS, "steps": 1200, "frac": {"uniform": [0.1, 0.9]}},
}


def points(study: Path) -> pd.DataFrame:
    trials = read_trials(str(study))
    return trials[["frac", REGION]].sort_values("frac", ignore_index=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("boundary")
    space = tmp / "edge.yaml"
    space.write_text(yaml.safe_dump(SPEC))
    assert search.main(["--space", str(space), "--storage", str(tmp)]) == 0
    return tmp / "edge"


def test_boundary_study_refines_where_the_region_changes(reference):
    found = points(reference)
    assert found["frac"].iloc[0] == pytest.approx(0.1) and found["frac"].iloc[-1] == 0.9
    assert {0.1, 0.5, 0.9} <= set(found["frac"].round(6))
    # fewer trials than the dense grid of the same resolution (9 points), and the labels along
    # the axis change only where the search put its extra points
    assert len(found) < 9
    assert found[REGION].nunique() >= 2
    study = load_study(reference)
    plan = rebuild(study)
    ref = plan.refinements[0]
    assert sorted(ref.values(p)["frac"] for p in ref.points) == pytest.approx(
        found["frac"].tolist()
    )
    crossings = ref.boundaries()["frac"]
    assert crossings and all(c.width == pytest.approx(0.1) for c in crossings)


def test_boundary_study_analysis(reference, capsys):
    study = load_study(reference)
    drawn = plot_boundary_map(study)
    assert drawn.path.name == "phase_map_frac_boundary.png" and drawn.n_points == len(study.trials)
    text = boundary_summary(study)
    assert "boundary search:" in text and "frac:" in text and "width 0.1" in text
    assert analysis_all.main([str(reference)]) == 0
    assert "phase_map_frac_boundary.png" in capsys.readouterr().out
    assert "boundary search:" in (reference / "summary.txt").read_text()


def test_killed_boundary_study_resumes_to_the_same_points(reference, tmp_path, ray_session):
    space = tmp_path / "edge.yaml"
    space.write_text(yaml.safe_dump(SPEC))
    store = tmp_path / "store"
    # killed once a trial has finished (the searcher has a label) and others still run
    kill_study_when(space, store, ray_session, any_trial_done)
    study = store / "edge"
    assert search.main(["--resume", "--name", "edge", "--storage", str(store)]) == 0
    resumed = read_trials(str(study))
    assert resumed["trial_id"].is_unique
    pd.testing.assert_frame_equal(points(study), points(reference))
