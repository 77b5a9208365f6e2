"""Studies end to end on a real local Ray (one session for all tests, see conftest.py)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from grok_tune import metrics as m
from grok_tune import search
from grok_tune.regions import REGION, REGIONS, Region
from grok_tune.results import curves_with_settings, read_curves, read_trials

from .conftest import TINY_PARAMS, any_trial_done, kill_study_when

pytestmark = pytest.mark.usefixtures("ray_session")


def write_study(tmp_path: Path, **spec) -> Path:
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# lr 1e3 with weight decay 1 makes AdamW's decoupled decay multiply the weights by (1 - 1e3)
# each step: they overflow within a few steps
GRID = {
    "name": "grid",
    "mode": "grid",
    "max_concurrent": 2,
    "params": {
        **TINY_PARAMS,
        "frac": 0.7,
        "steps": 1500,
        "lr": {"grid": [5e-3, 1e3]},
        "weight_decay": {"grid": [0.0, 1.0]},
    },
}


@pytest.fixture(scope="module")
def grid_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    assert search.main(["--space", str(write_study(tmp, **GRID)), "--storage", str(tmp)]) == 0
    return tmp / "grid"


def ray_results(study: Path):
    from ray.tune import ExperimentAnalysis, ResultGrid

    return {r.metrics["trial_id"]: r for r in ResultGrid(ExperimentAnalysis(str(study)))}


def test_study_writes_every_output(grid_study):
    assert (grid_study / "study.yaml").exists()
    assert yaml.safe_load((grid_study / "study.yaml").read_text())["params"]["frac"] == 0.7
    assert list(grid_study.glob("experiment_state-*.json"))
    trials = read_trials(str(grid_study))
    assert len(trials) == 4
    for trial_dir in trials["trial_dir"]:
        assert list(Path(trial_dir).glob("events.out.tfevents.*"))


def test_outcomes_and_regions(grid_study):
    trials = read_trials(str(grid_study)).set_index(["lr", "weight_decay"])
    assert trials.loc[(5e-3, 1.0), m.STATUS] == m.Status.GENERALIZED
    assert trials.loc[(5e-3, 1.0), REGION] in (Region.GROK, Region.GENERALIZE)
    assert trials.loc[(5e-3, 0.0), m.STATUS] == m.Status.CENSORED
    assert trials.loc[(5e-3, 0.0), REGION] == Region.MEMORIZE
    assert pd.isna(trials.loc[(5e-3, 0.0), m.STEPS_TO_GENERALIZE])  # censored, not 1500
    # the diverging trial is recorded as such, and the study went on
    assert trials.loc[(1e3, 1.0), m.STATUS] == m.Status.DIVERGED
    assert trials.loc[(1e3, 1.0), REGION] == Region.DIVERGED
    assert trials.loc[(1e3, 0.0), m.STATUS] in (m.Status.CENSORED, m.Status.DIVERGED)
    assert (trials["node"] != "").all() and (trials["device"] == "cpu").all()
    assert trials["error"].isna().all()


def test_parquet_agrees_with_ray_and_with_the_curves(grid_study):
    trials = read_trials(str(grid_study)).set_index("trial_id")
    curves = read_curves(str(grid_study))
    results = ray_results(grid_study)
    assert set(results) == set(trials.index) == set(curves["trial_id"])
    for tid, result in results.items():
        row, last = trials.loc[tid], result.metrics
        assert row[m.STATUS] == last[m.STATUS]
        assert row[m.STEP] == last[m.STEP]
        assert row["lr"] == result.config["lr"]
        for key in (m.STEPS_TO_MEMORIZE, m.STEPS_TO_GENERALIZE):
            assert (pd.isna(row[key]) and last[key] is None) or row[key] == last[key]
        curve = curves[curves["trial_id"] == tid].sort_values(m.STEP)
        assert curve[m.STEP].is_unique and curve[m.STEP].iloc[-1] == row[m.STEP]
        assert len(curve) == len(result.metrics_dataframe[m.STEP].unique())
        if row[m.STATUS] != m.Status.DIVERGED:
            assert curve[m.VAL_ACC].iloc[-1] == pytest.approx(row[m.VAL_ACC])
            reached = curve.loc[curve[m.VAL_ACC] >= m.ACCURACY_THRESHOLD, m.STEP]
            expected = reached.iloc[0] if len(reached) else None
            assert (expected is None and pd.isna(row[m.STEPS_TO_GENERALIZE])) or (
                row[m.STEPS_TO_GENERALIZE] == expected
            )


def test_tensorboard_scalars_and_hparams(grid_study):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    trials = read_trials(str(grid_study))
    curves = read_curves(str(grid_study))
    tag = m.tensorboard_tag
    for _, row in trials.iterrows():
        acc = EventAccumulator(row["trial_dir"])
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert {"acc/train", "acc/val", "loss/train", "loss/val", "measures/weight_norm"} <= tags
        assert {t.split("/")[0] for t in tags} <= set(m.TAG_GROUPS)
        curve = curves[curves["trial_id"] == row["trial_id"]]
        assert [e.step for e in acc.Scalars(tag(m.VAL_ACC))] == curve[m.STEP].tolist()
        generalized = row[m.STATUS] == m.Status.GENERALIZED
        assert (tag(m.STEPS_TO_GENERALIZE) in tags) == generalized
        # one session, written at the end: the settings, the outcome, the region
        content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
        start = metadata.parse_session_start_info_plugin_data(
            content[metadata.SESSION_START_INFO_TAG]
        )
        assert start.hparams["lr"].number_value == row["lr"]
        assert start.hparams["op"].string_value == "x+y"
        assert start.hparams[m.STATUS].string_value == row[m.STATUS]
        assert start.hparams[REGION].string_value == row[REGION]
        assert metadata.SESSION_END_INFO_TAG in content


def test_trial_folders_are_named_by_what_varies(grid_study):
    trials = read_trials(str(grid_study))
    names = sorted(Path(d).name for d in trials["trial_dir"])
    assert names == [
        "t00000_lr=0.005_weight_decay=0",
        "t00001_lr=1e+03_weight_decay=0",
        "t00002_lr=0.005_weight_decay=1",
        "t00003_lr=1e+03_weight_decay=1",
    ]
    for _, row in trials.iterrows():  # the ids stay Tune's, the folder is the trial's own
        assert f"lr={row['lr']:.3g}" in row["trial_dir"]
    assert set(trials["trial_id"]) == set(ray_results(grid_study))


def test_tensorboard_dashboard_shows_region_status_and_outcome(grid_study):
    """What the HParams and Time Series dashboards get from a real TensorBoard server."""
    from .tensorboard_server import get, post, serve, wait_for

    trials = read_trials(str(grid_study))
    statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
    with serve(grid_study) as url:
        groups = {"experimentName": "", "allowedStatuses": statuses, "sliceSize": 100}
        found = wait_for(
            lambda: post(url, "/data/plugin/hparams/session_groups", groups),
            lambda r: len(r.get("sessionGroups", [])) == len(trials),
        )
        experiment = post(url, "/data/plugin/hparams/experiment", {"experimentName": ""})
        by_region = post(
            url,
            "/data/plugin/hparams/session_groups",
            {**groups, "colParams": [{"hparam": REGION, "filterDiscrete": ["memorize"]}]},
        )
        runs = get(url, "/data/plugin/scalars/tags")

    hparams = {h["name"]: h for h in experiment["hparamInfos"]}
    # categorical, with every value they can take: the dashboard colours and filters by them
    assert hparams[REGION]["domainDiscrete"] == [str(r) for r in REGIONS]
    assert set(hparams[m.STATUS]["domainDiscrete"]) == {
        "generalized",
        "censored",
        "diverged",
        "error",
    }
    # shown at first (the dashboard shows the five 'differs' first): the outcome and what varies
    shown = [h["name"] for h in experiment["hparamInfos"] if h.get("differs")]
    assert sorted(shown) == ["lr", REGION, m.STATUS, "weight_decay"]
    assert hparams["lr"]["domainDiscrete"] == [0.005, 1000.0]
    metrics = [(i["name"]["tag"], i["displayName"]) for i in experiment["metricInfos"]]
    # the dashboard ticks the first five metrics
    assert metrics[:5] == [
        ("outcome/steps_to_generalize", m.STEPS_TO_GENERALIZE),
        ("outcome/steps_to_memorize", m.STEPS_TO_MEMORIZE),
        ("acc/val", m.VAL_ACC),
        ("acc/train", m.TRAIN_ACC),
        ("outcome/objective", m.OBJECTIVE),
    ]

    sessions = {
        Path(g["name"]).name: g for g in found["sessionGroups"]
    }  # one session per trial, named by its folder
    for _, row in trials.iterrows():
        group = sessions[Path(row["trial_dir"]).name]
        assert group["hparams"][REGION] == row[REGION]
        assert group["hparams"][m.STATUS] == row[m.STATUS]
        values = {v["name"]["tag"]: v["value"] for v in group["metricValues"]}
        assert values["acc/val"] == pytest.approx(row[m.VAL_ACC], nan_ok=True)
        if row[m.STATUS] == m.Status.GENERALIZED:
            assert values["outcome/steps_to_generalize"] == row[m.STEPS_TO_GENERALIZE]
    memorized = {Path(g["name"]).name for g in by_region["sessionGroups"]}
    assert memorized == {
        Path(d).name for d in trials.loc[trials[REGION] == Region.MEMORIZE, "trial_dir"]
    }
    # Time Series: every trial's charts grouped acc, loss, measures, outcome
    for run, tags in runs.items():
        assert {t.split("/")[0] for t in tags} <= set(m.TAG_GROUPS), run


def test_curves_come_with_their_settings(grid_study):
    joined = curves_with_settings(str(grid_study))
    curves, trials = read_curves(str(grid_study)), read_trials(str(grid_study))
    assert len(joined) == len(curves)
    settings = ["lr_setting", "weight_decay", REGION, m.STATUS]  # lr: the step's
    assert list(joined.columns) == [*curves.columns, *settings]
    one = trials.iloc[0]
    rows = joined[joined["trial_id"] == one["trial_id"]]
    assert (rows["lr_setting"] == one["lr"]).all() and (rows[REGION] == one[REGION]).all()
    assert (rows[m.LR] <= one["lr"]).all()
    # the README's two lines of pandas give the same table
    t = pd.read_parquet(grid_study / "trials.parquet")
    df = pd.read_parquet(grid_study / "curves.parquet").merge(
        t[["trial_id", "lr", "weight_decay", "region", "status"]],
        on="trial_id",
        suffixes=("", "_setting"),
    )
    pd.testing.assert_frame_equal(df, joined)
    picked = curves_with_settings(str(grid_study), ["frac"])
    assert (picked["frac"] == 0.7).all()
    with pytest.raises(ValueError, match=r"not a column of trials\.parquet: 'learning_rate'"):
        curves_with_settings(str(grid_study), ["learning_rate"])


def test_existing_study_is_not_overwritten(grid_study, capsys):
    before = (grid_study / "trials.parquet").stat().st_mtime
    with pytest.raises(SystemExit):
        search.main(
            [
                "--space",
                str(grid_study / "study.yaml"),
                "--name",
                "grid",
                "--storage",
                str(grid_study.parent),
            ]
        )
    assert "already exists" in capsys.readouterr().err
    assert (grid_study / "trials.parquet").stat().st_mtime == before


def test_max_concurrent_holds_for_grids(tmp_path):
    # Tune ignores max_concurrent_trials for a grid's search algorithm: grok_tune must pass it
    spec = {
        "name": "one_at_a_time",
        "mode": "grid",
        "max_concurrent": 1,
        "params": {**TINY_PARAMS, "steps": 300, "frac": {"grid": [0.5, 0.7]}},
    }
    space = write_study(tmp_path, **spec)
    assert search.main(["--space", str(space), "--storage", str(tmp_path)]) == 0
    (_, first_end), (second_start, _) = _trial_spans(tmp_path / "one_at_a_time")
    assert first_end < second_start


def test_optuna_study_is_stored_beside_the_results(tmp_path):
    import optuna

    spec = {
        "name": "tpe",
        "mode": "optuna",
        "num_samples": 3,
        "max_concurrent": 2,
        "params": {
            **TINY_PARAMS,
            "steps": 600,
            "frac": {"uniform": [0.5, 0.8]},
            "weight_decay": {"loguniform": [0.1, 3.0]},
        },
    }
    assert (
        search.main(["--space", str(write_study(tmp_path, **spec)), "--storage", str(tmp_path)])
        == 0
    )
    study_dir = tmp_path / "tpe"
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(study_dir / "optuna.journal"))
    )
    study = optuna.load_study(study_name="tpe", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    trials = read_trials(str(study_dir))
    assert len(done) == len(trials) == 3
    assert sorted(t.value for t in done) == pytest.approx(sorted(trials[m.OBJECTIVE]))
    assert sorted(t.params["frac"] for t in done) == pytest.approx(sorted(trials["frac"]))
    assert trials["frac"].between(0.5, 0.8).all()


# --- resume ----------------------------------------------------------------------------------
RESUMABLE = {
    "name": "resumable",
    "mode": "grid",
    "max_concurrent": 2,
    "checkpoint_every": 100,
    "params": {
        **TINY_PARAMS,
        "steps": 900,
        "dropout": 0.05,  # exercises the RNG state in checkpoints
        "stop_after_generalized": None,  # every trial runs its whole budget
        "frac": {"grid": [0.5, 0.7]},
        "weight_decay": {"grid": [0.3, 1.0]},
    },
}
OUTCOME = [
    "frac",
    "weight_decay",
    m.STATUS,
    m.STEPS_TO_MEMORIZE,
    m.STEPS_TO_GENERALIZE,
    m.STEP,
    m.TRAIN_ACC,
    m.VAL_ACC,
    m.TRAIN_LOSS,
    m.VAL_LOSS,
    m.WEIGHT_NORM,
]


def outcomes(study: Path) -> pd.DataFrame:
    return read_trials(str(study))[OUTCOME].sort_values(["frac", "weight_decay"], ignore_index=True)


@pytest.fixture(scope="module")
def reference_outcomes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    space = write_study(tmp, **RESUMABLE)
    assert search.main(["--space", str(space), "--storage", str(tmp)]) == 0
    return outcomes(tmp / "resumable")


# the moments a driver may die: before any trial has a checkpoint, once one has, and once a
# trial has finished while others still run
KILL_MOMENTS = {
    "started": lambda study: bool(list(study.glob("*/result.json"))),
    "checkpointed": lambda study: bool(list(study.glob("*/checkpoint_*"))),
    "one finished": any_trial_done,
}


@pytest.mark.parametrize("moment", list(KILL_MOMENTS))
def test_killed_study_resumes_to_the_same_outcomes(
    tmp_path, ray_session, reference_outcomes, moment
):
    killed_dir = tmp_path / "killed"
    space = write_study(tmp_path, **RESUMABLE)
    kill_study_when(space, killed_dir, ray_session, KILL_MOMENTS[moment])
    study = killed_dir / "resumable"
    assert not (study / "trials.parquet").exists()

    assert search.main(["--resume", "--name", "resumable", "--storage", str(killed_dir)]) == 0
    resumed = read_trials(str(study))
    assert len(resumed) == 4 and resumed["trial_id"].is_unique
    assert (resumed[m.STATUS] != m.Status.RUNNING).all()
    # bit-for-bit resume on CPU: the same outcomes as the study never killed
    pd.testing.assert_frame_equal(outcomes(study), reference_outcomes)
    curves = read_curves(str(study))
    assert not curves.duplicated(["trial_id", m.STEP]).any()


def _trial_spans(study: Path) -> list[tuple[float, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spans = []
    for trial_dir in read_trials(str(study))["trial_dir"]:
        acc = EventAccumulator(trial_dir)
        acc.Reload()
        times = [e.wall_time for e in acc.Scalars(m.tensorboard_tag(m.VAL_ACC))]
        spans.append((min(times), max(times)))
    return sorted(spans)


def test_a_study_stuck_on_resources_is_fixed_by_resume(tmp_path, ray_session, capsys):
    """On a cluster an impossible request waits (and says so); --resume with other resources
    and concurrency runs it, while the search itself cannot change."""
    spec = {
        "name": "stuck",
        "mode": "grid",
        "params": {**TINY_PARAMS, "steps": 300, "frac": {"grid": [0.5, 0.6, 0.7]}},
    }
    space = write_study(tmp_path, **spec)
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "grok_tune.search", "--space", str(space), "--storage", str(store)]
    proc = subprocess.Popen(
        [*cmd, "--address", ray_session, "--cpus-per-trial", "64", "--max-concurrent", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1", "GROK_TUNE_WAIT_NOTICE_S": "1"},
    )
    notice = ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "waited" not in notice:
        notice = proc.stdout.readline()
    time.sleep(1.5)  # Tune's state on disk
    proc.kill()
    proc.wait()
    assert "for a node with room for a trial (64 CPU per trial)" in notice

    # the same file, new resources and concurrency: accepted and applied
    argv = ["--resume", "--space", str(space), "--storage", str(store)]
    assert search.main([*argv, "--cpus-per-trial", "1", "--max-concurrent", "2"]) == 0
    stored = yaml.safe_load((store / "stuck" / "study.yaml").read_text())
    assert stored["cpus_per_trial"] == 1.0 and stored["max_concurrent"] == 2
    trials = read_trials(str(store / "stuck"))
    assert len(trials) == 3 and (trials[m.STATUS] != m.Status.RUNNING).all()
    # the study began one trial at a time; resumed with 2, two ran at once
    (_, first_end), (second_start, _), _ = _trial_spans(store / "stuck")
    assert second_start < first_end
    capsys.readouterr()

    # the search and the trial settings cannot change
    (tmp_path / "edited").mkdir()
    edited = {**spec, "params": {**spec["params"], "steps": 400}}
    changed = write_study(tmp_path / "edited", **edited)
    with pytest.raises(SystemExit):
        search.main(["--resume", "--space", str(changed), "--storage", str(store)])
    assert "differs from the study being resumed in params.steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        search.main([*argv, "--num-samples", "2"])
    assert "--num-samples: cannot change on --resume" in capsys.readouterr().err
