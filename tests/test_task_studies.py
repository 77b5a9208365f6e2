"""Studies of the new tasks and of remedies, end to end on a real local Ray: Parquet columns per
answer position, phase changes, TensorBoard tags, variants, and the figures that apply."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis import __main__ as analysis_all
from analysis import phases, remedies
from analysis.common import load_study
from grok_tune import metrics as m
from grok_tune import search
from grok_tune.results import read_curves, read_phases, read_trials

from .conftest import TINY_PARAMS

pytestmark = pytest.mark.usefixtures("ray_session")

ADDITION_STUDY = {
    "name": "digits",
    "mode": "grid",
    "max_concurrent": 2,
    "params": {
        "task": "addition", "digits": 2, "val_size": 100, "n_layers": 1, "d_model": 32,
        "d_mlp": 64, "lr": 3e-3, "batch_size": 64, "steps": 160, "eval_every": 20,
        "train_size": {"grid": ["infinite", 40]},
    },
}  # fmt: skip

REMEDY_STUDY = {
    "name": "remedies",
    "mode": "grid",
    "max_concurrent": 2,
    "params": {**TINY_PARAMS, "frac": 0.7, "steps": 200, "weight_decay": {"grid": [0.0, 1.0]}},
    "variants": [{}, {"grad_filter": "ema"}, {"loss": "stablemax", "orthogonal_grad": True}],
}


def run_study(tmp: Path, spec: dict) -> Path:
    space = tmp / f"{spec['name']}.yaml"
    space.write_text(yaml.safe_dump(spec))
    assert search.main(["--space", str(space), "--storage", str(tmp)]) == 0
    return tmp / spec["name"]


@pytest.fixture(scope="module")
def addition_study(tmp_path_factory):
    return run_study(tmp_path_factory.mktemp("addition"), ADDITION_STUDY)


@pytest.fixture(scope="module")
def remedy_study(tmp_path_factory):
    return run_study(tmp_path_factory.mktemp("remedies"), REMEDY_STUDY)


def test_addition_study_records_every_answer_digit(addition_study):
    trials = read_trials(str(addition_study))
    assert len(trials) == 2
    assert sorted(trials["train_size"].tolist()) == [40.0, float("inf")]
    assert trials["op"].isna().all() and trials["frac"].isna().all()  # the table's settings
    assert trials["train_examples"].isna().sum() == 1  # infinite data has no count
    for pos in ("digit0", "digit1", "digit2"):
        assert m.position_metric(m.STEPS_TO_MEMORIZE, pos) in trials
    curves = read_curves(str(addition_study))
    for name in m.position_metrics(("digit0", "digit1", "digit2")):
        assert name in curves and curves[name].notna().all()
    found = read_phases(str(addition_study))
    assert set(found.columns) >= {"trial_id", "curve", "step", "size", "factor"}
    for name in m.PHASE_OUTCOMES:
        assert name in trials


def test_addition_study_tensorboard_has_the_digits(addition_study):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for trial_dir in read_trials(str(addition_study))["trial_dir"]:
        acc = EventAccumulator(trial_dir)
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert {"loss/val_digit0", "acc/train_digit2", "measures/softmax_collapse"} <= tags


def test_addition_study_figures(addition_study, capsys):
    assert analysis_all.main([str(addition_study)]) == 0
    printed = capsys.readouterr().out
    figures = addition_study / "figures"
    for name in ("phase_curves.png", "phase_gap.png", "phase_map_train_size.png"):
        assert str(figures / name) in printed, name
    study = load_study(addition_study)
    drawn = phases.plot_phase_curves(study)
    assert drawn.n_lines == 2 * 2 * 3  # 2 trials x (val, train) x 3 digits
    summary = (addition_study / "summary.txt").read_text()
    assert "phase changes (largest drop" in summary and "addition" in summary


def test_variants_cross_the_grid(remedy_study):
    trials = read_trials(str(remedy_study))
    assert len(trials) == 3 * 2
    assert sorted(trials["grad_filter"].tolist()) == ["ema", "ema", "none", "none", "none", "none"]
    stable = trials[trials["loss"] == "stablemax"]
    assert len(stable) == 2 and stable["orthogonal_grad"].all()
    assert (stable["loss_dtype"] == "float64").all()  # the remedy's own default, resolved
    # an off filter's settings are blank, an on one's resolved
    assert trials.loc[trials["grad_filter"] == "none", "grokfast_lamb"].isna().all()
    assert (trials.loc[trials["grad_filter"] == "ema", "grokfast_lamb"] == 2.0).all()


def test_remedy_figure_and_table(remedy_study, capsys):
    study = load_study(remedy_study)
    assert remedies.varies_remedies(study)
    table = remedies.remedy_table(study)
    assert set(table[remedies.REMEDY]) == {"baseline", "grokfast ema", "stablemax + ⊥grad"}
    assert set(table["weight_decay"]) == {0.0, 1.0} and (table["trials"] == 1).all()
    drawn = remedies.plot_remedies(study)
    assert drawn.path.is_file() and drawn.n_points == 2 * 6
    assert analysis_all.main([str(remedy_study)]) == 0
    assert "remedies.png" in capsys.readouterr().out
    assert "remedies (median steps" in (remedy_study / "summary.txt").read_text()


def test_phases_found_under_another_rule_are_found_again(addition_study, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    copy = tmp_path / "copy"
    shutil.copytree(addition_study, copy)
    table = pq.read_table(copy / "trials.parquet").to_pandas()
    table["phase_rule"] = "an older rule"
    table[m.TRAIN_PHASE_STEP] = None
    table.to_parquet(copy / "trials.parquet")
    (copy / "phases.parquet").unlink()
    study = load_study(copy)
    fresh = load_study(addition_study)
    assert study.stale_phases and not fresh.stale_phases
    by_id = lambda s: s.trials.set_index("trial_id")[m.TRAIN_PHASE_STEP].sort_index()  # noqa: E731
    pd.testing.assert_series_equal(by_id(study).astype(float), by_id(fresh).astype(float))
    assert len(study.phases) == len(fresh.phases)
