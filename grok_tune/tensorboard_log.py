"""A study's TensorBoard files: each trial's scalars and HParams session, the study's columns.

``tensorboard --logdir STUDY_DIR`` lists every trial folder (grok_tune/naming.py) as a run.

- Scalars: every evaluation under ``metrics.tensorboard_tag`` (``acc/train``, ``acc/val``,
  ``loss/...``, ``measures/...``), the outcome once at the end (``outcome/steps_to_generalize``,
  ...; a censored event stays absent, never "the budget").
- The HParams session: written once, when the trial ends, because TensorBoard keeps the first
  session a run records and ``region`` is only known then: the settings, where it ran, and the
  categorical hparams ``region`` (grok_tune/regions.py, the default rule, as trials.parquet has
  it) and ``status``. A trial that fails for good gets its session from the study driver
  (``StudyLog``) with status ``error`` and no region; a running trial is in Time Series, and in
  HParams once it ends (an interrupted one once ``--resume`` finishes it).
- The study's HParams config (``STUDY_DIR/events.out.tfevents.*.hparams``, written once): the
  columns the dashboard offers and shows. TensorBoard shows five hparams, those marked
  ``differs`` first by name, and the first five metrics: here ``region``, ``status`` and up to
  three settings the study varies, and ``steps_to_generalize``, ``steps_to_memorize``,
  ``val_acc``, ``train_acc``, ``objective``; the rest are a click away. The metric columns are
  named by the metric (``val_acc``), their data is the tag (``acc/val``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from ray import tune
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

from grok_tune import metrics as m
from grok_tune.config import PACK, flat_settings
from grok_tune.naming import differing_settings, member_dir, varying_settings
from grok_tune.regions import REGION, REGIONS, classify_trials
from grok_tune.study_files import TRIAL_ID
from grok_tune.tasks import TASK_MEASURES

if TYPE_CHECKING:
    import pyarrow.fs as pafs

    from grok_tune.space import StudySpec

OUTCOME_METRICS = (
    m.STEPS_TO_MEMORIZE, m.STEPS_TO_GENERALIZE, m.OBJECTIVE, *m.PHASE_OUTCOMES, *m.NANDA_PHASES,
)  # fmt: skip
# the HParams table's metric columns in order: the dashboard ticks the first five
TABLE_METRICS = (
    m.STEPS_TO_GENERALIZE, m.STEPS_TO_MEMORIZE, m.VAL_ACC, m.TRAIN_ACC, m.OBJECTIVE,
    m.VAL_LOSS, m.TRAIN_LOSS, *m.PHASE_OUTCOMES, *m.NANDA_PHASES, m.WEIGHT_NORM,
    *TASK_MEASURES, m.SOFTMAX_COLLAPSE, m.LOGIT_GAP,
)  # fmt: skip
# a session is written when its trial ends: it is never running
SESSION_STATUSES = tuple(s.value for s in m.Status if s not in (m.Status.RUNNING, m.Status.PENDING))
SHOWN_HPARAMS = 5  # TensorBoard's HParams dashboard shows this many hparams at first
CONFIG_SUFFIX = ".hparams"  # the study's config file, so that it is found (and written once)


class TrialLog:
    """One trial's (or one packed member's) TensorBoard run."""

    def __init__(
        self,
        log_dir: str | Path,
        hparams: dict[str, Any],
        resume_step: int,
        positions: tuple[str, ...] = (),
    ):
        from torch.utils.tensorboard import SummaryWriter  # the trial's process has torch

        self.hparams = hparams
        self.names = (*m.CURVE_METRICS, *TASK_MEASURES, *m.position_metrics(positions))
        # purge_step hides what an earlier, interrupted attempt logged from the step this one
        # logs again: after its checkpoint, or everything when it starts over from step 0
        self.writer = SummaryWriter(str(log_dir), purge_step=resume_step)

    def evaluation(self, record: dict[str, Any]) -> None:
        for name in self.names:
            if record.get(name) is not None:
                self.writer.add_scalar(m.tensorboard_tag(name), record[name], record[m.STEP])

    def finish(self, record: dict[str, Any], history: Sequence[dict[str, Any]]) -> None:
        """The outcome scalars and the session, with ``region`` from the whole ``history``."""
        for name in OUTCOME_METRICS:
            if record.get(name) is not None:  # censored stays absent, never "the budget"
                self.writer.add_scalar(m.tensorboard_tag(name), record[name], record[m.STEP])
        region = trial_region({**self.hparams, **record}, self.hparams.get("threshold"), history)
        outcome = {m.STATUS: str(record[m.STATUS]), **({REGION: region} if region else {})}
        for summary in session(self.hparams, outcome, api_pb2.STATUS_SUCCESS):
            self.writer.file_writer.add_summary(summary)
        self.writer.close()


def trial_region(
    record: dict[str, Any], threshold: float | None, history: Sequence[dict[str, Any]]
) -> str | None:
    """The trial's region as trials.parquet will have it: regions.py's default rule, its
    events re-derived from the curve when the trial ran at another threshold."""
    # the settings, the final record (losses, per-position events, phase changes): what the
    # task's outcome rule reads; the infinite data regime as trials.parquet stores it
    flat = {k: v for k, v in record.items() if v is None or isinstance(v, bool | int | float | str)}
    row = pd.DataFrame(
        [
            {
                **flat,
                TRIAL_ID: "",
                m.STATUS: str(record[m.STATUS]),
                "train_size": float("inf")
                if record.get("train_size") == "infinite"
                else (record.get("train_size")),
                "threshold": threshold if threshold is not None else m.ACCURACY_THRESHOLD,
            }
        ]
    )
    columns = [m.STEP, m.TRAIN_ACC, m.VAL_ACC]
    curve = pd.DataFrame([{k: r.get(k) for k in columns} for r in history], columns=columns)
    region = classify_trials(row, curve.assign(**{TRIAL_ID: ""}))[REGION].iloc[0]
    return None if pd.isna(region) else str(region)


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    # the HParams plugin's own summary layout (summary_v2._summary_pb: private; the v1 helpers
    # need TensorFlow): the data rides in the metadata of an empty tensor
    summary = Summary()
    summary.value.add(
        tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR
    )
    return summary


def session(hparams: dict[str, Any], outcome: dict[str, Any], end: int) -> list[Summary]:
    """A finished session's two summaries: its hparams (settings and outcome), its end. Its
    own group (no group name): repeats of a configuration are rows of their own."""
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in {**hparams, **outcome}.items():
        if isinstance(value, bool):
            start.hparams[name].bool_value = value
        elif isinstance(value, int | float):
            start.hparams[name].number_value = value
        elif isinstance(value, str):
            start.hparams[name].string_value = value
    finish = plugin_data_pb2.SessionEndInfo(status=end, end_time_secs=time.time())
    return [
        _summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(
            session_start_info=start)),
        _summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(
            session_end_info=finish)),
    ]  # fmt: skip


# --- the study's config, and the sessions of trials that failed: written by the driver --------
def _domain(info: api_pb2.HParamInfo, values: Sequence[Any]) -> None:
    """A discrete domain for values of one type; none for mixed ones (``infinite`` and 40),
    which the dashboard then shows unfiltered rather than hiding the values outside it."""
    kinds = {bool if isinstance(v, bool) else float if isinstance(v, int | float) else type(v)
             for v in values}  # fmt: skip
    if len(kinds) != 1:
        return
    kind = kinds.pop()
    if kind is float:
        info.type = api_pb2.DATA_TYPE_FLOAT64
        info.domain_discrete.extend(sorted({float(v) for v in values}))
    elif kind is bool:
        info.type = api_pb2.DATA_TYPE_BOOL
        info.domain_discrete.extend(sorted(set(values)))
    elif kind is str:
        info.type = api_pb2.DATA_TYPE_STRING
        info.domain_discrete.extend(list(dict.fromkeys(values)))


def _setting_info(spec: StudySpec, name: str) -> api_pb2.HParamInfo:
    info = api_pb2.HParamInfo(name=name)
    dist = spec.distributions.get(name)
    kind = next(iter(type(dist).model_fields)) if dist is not None else None
    if kind in ("grid", "choice"):
        _domain(info, getattr(dist, kind))
    elif kind in ("uniform", "loguniform", "int"):
        lo, hi = getattr(dist, kind)
        info.type = api_pb2.DATA_TYPE_FLOAT64
        info.domain_interval.min_value, info.domain_interval.max_value = float(lo), float(hi)
    elif name in spec.fixed:
        _domain(info, [spec.fixed[name]])
    # a variant's setting: no domain (a trial without it in its variant has the default)
    return info


def experiment_config(spec: StudySpec) -> Summary:
    """The study's HParams config: region and status, the settings it varies, the settings it
    fixes; the metrics, outcome first. The dashboard shows the hparams marked ``differs``
    (five at most, by name) and the first five metrics."""
    varying = varying_settings(spec)
    infos = [
        api_pb2.HParamInfo(
            name=REGION, type=api_pb2.DATA_TYPE_STRING, differs=True,
            description="grok_tune/regions.py, the default rule; none: the trial failed",
        ),
        api_pb2.HParamInfo(
            name=m.STATUS, type=api_pb2.DATA_TYPE_STRING, differs=True,
            description="generalized, censored (budget or a stopping rule), diverged, error",
        ),
    ]  # fmt: skip
    infos[0].domain_discrete.extend([str(r) for r in REGIONS])
    infos[1].domain_discrete.extend(SESSION_STATUSES)
    for i, name in enumerate(varying):
        info = _setting_info(spec, name)
        info.differs = i < SHOWN_HPARAMS - 2  # the first settings the study file names
        infos.append(info)
    infos += [_setting_info(spec, name) for name in spec.fixed if name not in varying]
    metrics = [
        api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m.tensorboard_tag(n)), display_name=n)
        for n in TABLE_METRICS
    ]
    experiment = api_pb2.Experiment(
        description=spec.description, time_created_secs=time.time(),
        hparam_infos=infos, metric_infos=metrics,
    )  # fmt: skip
    return _summary(
        metadata.EXPERIMENT_TAG,
        plugin_data_pb2.HParamsPluginData(experiment=experiment),
    )


def write_events(fs: pafs.FileSystem, folder: str, summaries: Sequence[Summary]) -> None:
    """An event file of ``summaries`` in ``folder`` of ``fs`` (local, or the study's cloud
    storage): written locally, then copied, as Tune's storage is not TensorBoard's."""
    import pyarrow.fs as pafs
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    with tempfile.TemporaryDirectory() as tmp:
        writer = EventFileWriter(tmp, filename_suffix=CONFIG_SUFFIX)
        for summary in summaries:
            writer.add_event(Event(wall_time=time.time(), summary=summary))
        writer.close()
        fs.create_dir(folder, recursive=True)
        for file in Path(tmp).iterdir():
            pafs.copy_files(
                str(file), f"{folder}/{file.name}",
                source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs,
            )  # fmt: skip


class StudyLog(tune.Callback):
    """In the study driver: the study's HParams config when its first trial starts (unless
    there is one), and the session of each trial that failed for good (Tune calls
    ``on_trial_error`` once it will not retry it); a packed study's ``packs`` name the failed
    trial's member runs and their settings."""

    def __init__(self, spec: StudySpec, packs: list[list[dict[str, Any]]] | None = None) -> None:
        self.spec = spec
        self.packs = packs
        self.configured = False

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.configured:
            return
        import pyarrow.fs as pafs

        fs, root = trial.storage.storage_filesystem, trial.storage.experiment_fs_path
        existing = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        if not any(f.base_name.endswith(CONFIG_SUFFIX) for f in existing):  # not on --resume
            write_events(fs, root, [experiment_config(self.spec)])
        self.configured = True

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        fs, folder = trial.storage.storage_filesystem, trial.storage.trial_fs_path
        outcome = {m.STATUS: str(m.Status.ERROR)}
        pack = trial.config.get(PACK)
        if self.packs is not None and pack is not None:
            keys = differing_settings(c for p in self.packs for c in p)
            runs = {
                f"{folder}/{member_dir(i, c, keys)}": flat_settings(c)
                for i, c in enumerate(self.packs[pack])
            }
        else:
            runs = {folder: flat_settings(trial.config)}
        for run, settings in runs.items():
            write_events(fs, run, session(settings, outcome, api_pb2.STATUS_FAILURE))
