"""TensorBoard's names and the study driver's TensorBoard files, without a study: tags, folder
names, the HParams config, a failed trial's session (the studies: tests/test_search.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs as pafs
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata

from grok_tune import metrics as m
from grok_tune.naming import TrialDirname, differing_settings, member_dir, varying_settings
from grok_tune.regions import REGION
from grok_tune.space import parse_spec
from grok_tune.tasks import TASK_MEASURES
from grok_tune.tensorboard_log import StudyLog

SPEC = {
    "name": "s",
    "mode": "grid",
    "params": {"op": "S5:x*y", "lr": {"loguniform": [1e-4, 1e-2]}, "frac": {"grid": [0.3, 0.5]}},
    "variants": [{}, {"grad_filter": "ema"}],
}


def test_every_metric_has_a_grouped_tag():
    tags = [m.tensorboard_tag(n) for n in (*m.CURVE_METRICS, *TASK_MEASURES, m.STEPS_TO_GENERALIZE)]
    assert tags[:4] == ["acc/train", "loss/train", "acc/val", "loss/val"]
    assert m.tensorboard_tag("val_acc_digit3") == "acc/val_digit3"
    assert m.tensorboard_tag(m.WEIGHT_NORM) == "measures/weight_norm"
    assert m.tensorboard_tag(m.STEPS_TO_GENERALIZE) == "outcome/steps_to_generalize"
    assert {t.split("/")[0] for t in tags} == set(m.TAG_GROUPS)
    assert len(set(tags)) == len(tags)


def test_folder_names_are_short_safe_and_carry_what_varies():
    spec = parse_spec(SPEC, "s.yaml")
    keys = varying_settings(spec)
    assert keys == ("lr", "frac", "grad_filter")
    trial = SimpleNamespace(
        experiment_tag="7_frac=0.3,lr=0.0012,variant=...",
        config={"op": "S5:x*y", "lr": 0.00123456, "frac": 0.3, "variant": {"grad_filter": "ema"}},
    )
    assert TrialDirname(keys)(trial) == "t00007_lr=0.00123_frac=0.3_grad_filter=ema"
    assert TrialDirname(("op",))(trial) == "t00007_op=S5_x_y"  # no ':' or '*' in a folder
    configs = [{"seed": s, "weight_decay": w, "p": 23} for w in (0.0, 1.0) for s in (0, 1)]
    keys = differing_settings(configs)
    assert keys == ("seed", "weight_decay")
    assert member_dir(2, configs[3], keys) == "m2_seed=1_weight_decay=1"


def fake_trial(tmp_path: Path, config: dict) -> SimpleNamespace:
    storage = SimpleNamespace(
        storage_filesystem=pafs.LocalFileSystem(),
        experiment_fs_path=str(tmp_path),
        trial_fs_path=str(tmp_path / "t00000_frac=0.3"),
    )
    return SimpleNamespace(storage=storage, config=config)


def test_the_study_config_is_written_once_and_a_failed_trial_gets_its_session(tmp_path):
    spec = parse_spec(SPEC, "s.yaml")
    trial = fake_trial(tmp_path, {"op": "S5:x*y", "lr": 1e-3, "frac": 0.3, "variant": {}})
    log = StudyLog(spec)
    log.on_trial_start(0, [], trial)
    StudyLog(spec).on_trial_start(0, [], trial)  # a resumed study keeps the config it has
    assert len(list(tmp_path.glob("events.out.tfevents.*.hparams"))) == 1
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.EXPERIMENT_TAG]
    experiment = metadata.parse_experiment_plugin_data(content)
    infos = {h.name: h for h in experiment.hparam_infos}
    assert [h.name for h in experiment.hparam_infos if h.differs] == [
        REGION, m.STATUS, "lr", "frac", "grad_filter"
    ]  # fmt: skip
    assert infos["lr"].domain_interval.max_value == pytest.approx(1e-2)
    assert list(infos["frac"].domain_discrete) == [0.3, 0.5]
    assert list(infos["op"].domain_discrete) == ["S5:x*y"]
    assert experiment.metric_infos[0].name.tag == "outcome/steps_to_generalize"

    log.on_trial_error(0, [], trial)
    acc = EventAccumulator(trial.storage.trial_fs_path)
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert start.hparams[m.STATUS].string_value == "error" and REGION not in start.hparams
    assert start.hparams["frac"].number_value == 0.3
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_FAILURE
