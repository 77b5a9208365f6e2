"""A study's Ray results -> ``trials.parquet``, ``curves.parquet`` and ``phases.parquet``.

- trials: one row per trial: its settings (those its task reads; another task's are null),
  outcome, region and phase-change headline;
- curves: every evaluation of every trial (per-position metrics as columns where a task has
  named positions, e.g. ``val_loss_digit0``);
- phases: one row per phase change found in any loss curve of any trial (grok_tune/events.py).

The names are those of ``grok_tune.metrics`` and ``TrainConfig``. Each file is written with an
explicit schema and appears whole or not at all (written aside, then renamed), on a local disk
or in cloud storage alike (pyarrow's filesystems).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from grok_tune import metrics as m
from grok_tune.config import MEMBERS, PACK, TrainConfig, flat_settings
from grok_tune.events import DEFAULT_PHASE_RULE, PhaseRule, phase_outcome, run_phase_changes
from grok_tune.naming import differing_settings, member_dir
from grok_tune.progress import nanda_phases
from grok_tune.regions import (
    REGION,
    REGION_RULE,
    RegionRule,
    classify_trials,
    trials_rule,
)
from grok_tune.study_files import CURVES_FILE, PHASES_FILE, TRIAL_ID, TRIALS_FILE
from grok_tune.tasks import INFINITE, TASK_MEASURES

PHASE_RULE = "phase_rule"
# the columns of trials.parquet that phase_rows derives from the curves
HEADLINE_COLUMNS = (*m.PHASE_OUTCOMES, *m.NANDA_PHASES)
SETTING_SUFFIX = "_setting"  # curves_with_settings: lr_setting beside the curve's lr

_OUTCOME_COLUMNS: dict[str, pa.DataType] = {
    m.STATUS: pa.string(),
    REGION: pa.string(),
    REGION_RULE: pa.string(),
    m.STEPS_TO_MEMORIZE: pa.int64(),
    m.STEPS_TO_GENERALIZE: pa.int64(),
    m.STEP: pa.int64(),  # steps run
    m.TRAIN_ACC: pa.float64(),
    m.VAL_ACC: pa.float64(),
    m.TRAIN_LOSS: pa.float64(),
    m.VAL_LOSS: pa.float64(),
    m.WEIGHT_NORM: pa.float64(),
    **{name: pa.float64() for name in TASK_MEASURES},
    m.SOFTMAX_COLLAPSE: pa.float64(),
    m.LOGIT_GAP: pa.float64(),
    m.OBJECTIVE: pa.float64(),
    **{name: pa.float64() for name in m.PHASE_OUTCOMES},
    # Nanda's phases (grok_tune/progress.py), from the curves as the phase outcomes
    **{name: pa.float64() for name in m.NANDA_PHASES},
    PHASE_RULE: pa.string(),
    "best_val_acc": pa.float64(),
    "wall_time_s": pa.float64(),
    "node": pa.string(),
    "node_ip": pa.string(),
    "node_id": pa.string(),
    "device": pa.string(),
    "threads": pa.int64(),
    "effective_batch_size": pa.int64(),
    "num_params": pa.int64(),
    "decayed_params": pa.int64(),
    "train_examples": pa.int64(),  # null: infinite data
    "val_examples": pa.int64(),
    "error": pa.string(),
    "trial_dir": pa.string(),
    # a packed study (members_per_trial): the configuration's place in its trial's population
    "member": pa.int64(),
}
MEMBER = "member"


def _arrow_type(annotation: Any) -> pa.DataType:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        if int in args and any(typing.get_origin(a) is typing.Literal for a in args):
            return pa.float64()  # a size or 'infinite': stored as a number, infinite as inf
        return _arrow_type(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return pa.string()
    return {bool: pa.bool_(), int: pa.int64(), float: pa.float64()}.get(annotation, pa.string())


CONFIG_SCHEMA = [(name, _arrow_type(f.annotation)) for name, f in TrainConfig.model_fields.items()]
CONFIG_NAMES = [name for name, _ in CONFIG_SCHEMA]
TRIALS_BASE = [(TRIAL_ID, pa.string()), *CONFIG_SCHEMA, *_OUTCOME_COLUMNS.items()]
CURVES_BASE = [(TRIAL_ID, pa.string()), (m.STEP, pa.int64())] + [
    (name, pa.float64()) for name in (*m.CURVE_METRICS, *TASK_MEASURES, m.ELAPSED_S)
]
# the columns every study has; a task with named positions adds its own after them
TRIALS_SCHEMA = pa.schema(TRIALS_BASE)
CURVES_SCHEMA = pa.schema(CURVES_BASE)
PHASES_SCHEMA = pa.schema(
    [(TRIAL_ID, pa.string()), ("curve", pa.string())]
    + [(k, pa.float64()) for k in ("step", "start", "end", "loss_start", "loss_end", "size")]
    + [("factor", pa.float64())]
)
_POSITION_EVENT = re.compile(rf"^({m.STEPS_TO_MEMORIZE}|{m.STEPS_TO_GENERALIZE})_\w+$")
_POSITION_METRIC = re.compile(r"^(train|val)_(acc|loss)_(\w+)$")


def _trial_id(result: Any) -> str:
    # Tune puts the trial's id into every Result's metrics, even one that never reported (its
    # last_result); the folder is read only for a Result made by hand. Folders are named by
    # grok_tune/naming.py (t00003_frac=0.5) and hold no id; Tune's own names did (old studies).
    tid = (result.metrics or {}).get("trial_id")
    if tid:
        return str(tid)
    match = re.search(r"_([0-9a-f]{5}_\d{5})", Path(result.path).name)
    return match.group(1) if match else Path(result.path).name


def _none_if_nan(value: Any) -> Any:
    return None if isinstance(value, float) and value != value else value


def config_columns(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's settings as Parquet columns: resolved (a task's defaults filled in), another
    task's settings null, 'infinite' as inf."""
    try:
        used = TrainConfig(**config).used()
    except ValueError:  # not a valid configuration (a hand-made result): as given
        used = {k: config.get(k, f.default) for k, f in TrainConfig.model_fields.items()}
    return {k: math.inf if v == INFINITE else v for k, v in used.items()}


def _trial_config(result: Any) -> dict[str, Any] | None:
    """A trial's config: from its last report, else from the params.json Tune wrote when it
    started (a trial stopped before its first report), else unknown."""
    if result.config:
        return result.config
    try:
        fs, path = pafs.FileSystem.from_uri(str(result.path))
        with fs.open_input_stream(f"{path}/params.json") as f:
            return json.loads(f.read().decode())
    except (OSError, ValueError, TypeError, pa.ArrowException):
        return None


def trial_row(result: Any) -> dict[str, Any]:
    """One row of trials.parquet from a ray.tune Result (finished, stopped or errored)."""
    last = dict(result.metrics or {})
    config = _trial_config(result)
    settings = config_columns(flat_settings(config)) if config is not None else {}
    row: dict[str, Any] = {TRIAL_ID: _trial_id(result), **settings}
    for name in _OUTCOME_COLUMNS:
        row[name] = _none_if_nan(last.get(name))
    for name, value in last.items():  # each named position's own events
        if _POSITION_EVENT.match(name):
            row[name] = value
    curve = result.metrics_dataframe
    if curve is not None and m.VAL_ACC in curve:
        row["best_val_acc"] = float(curve[m.VAL_ACC].max())
    row["wall_time_s"] = last.get("time_total_s")
    row["trial_dir"] = str(result.path)
    if result.error is not None:
        row[m.STATUS] = str(m.Status.ERROR)
        row["error"] = f"{type(result.error).__name__}: {result.error}".strip()[:2000]
    elif row[m.STATUS] in (None, str(m.Status.RUNNING)):
        row[m.STATUS] = str(m.Status.RUNNING)  # the study was interrupted: resume it
    return row


def member_rows(
    result: Any, configs: list[dict[str, Any]], keys: Sequence[str] = ()
) -> list[tuple[dict, pd.DataFrame]]:
    """A packed trial's configurations (a population, grok_tune/trainable.py): per member its
    row of trials.parquet and its curve, read from the trial's reports (``members/<i>/...``);
    ``keys``: the settings that vary in the study, which name the members' folders."""
    df = result.metrics_dataframe
    tid = _trial_id(result)
    last_report = dict(result.metrics or {})
    out = []
    for i, config in enumerate(configs):
        prefix = f"{MEMBERS}/{i}/"
        columns = [c for c in df.columns if c.startswith(prefix)] if df is not None else []
        curve = (
            df[columns].rename(columns={c: c[len(prefix) :] for c in columns}) if columns else None
        )
        if curve is not None and m.STEP in curve:
            curve = curve.dropna(subset=[m.STEP]).drop_duplicates(subset=[m.STEP], keep="last")
            curve = curve.sort_values(m.STEP)
        last = curve.iloc[-1].to_dict() if curve is not None and len(curve) else {}
        row: dict[str, Any] = {TRIAL_ID: f"{tid}.{i}", **config_columns(flat_settings(config))}
        for name in _OUTCOME_COLUMNS:
            row[name] = _none_if_nan(last.get(name))
        row[MEMBER] = i
        for name, value in last.items():
            if _POSITION_EVENT.match(name):
                row[name] = _none_if_nan(value)
        if curve is not None and m.VAL_ACC in curve:
            row["best_val_acc"] = float(curve[m.VAL_ACC].max())
        # the population's time, shared among its members: summing the column counts it once
        total = last_report.get("time_total_s")
        row["wall_time_s"] = None if total is None else total / len(configs)
        row["trial_dir"] = str(Path(result.path) / member_dir(i, config, keys))
        if result.error is not None:
            row[m.STATUS] = str(m.Status.ERROR)
            row["error"] = f"{type(result.error).__name__}: {result.error}".strip()[:2000]
        elif row[m.STATUS] in (None, str(m.Status.RUNNING)):
            row[m.STATUS] = str(m.Status.RUNNING)
        frame = pd.DataFrame(columns=[name for name, _ in CURVES_BASE])
        if curve is not None and m.STEP in curve:
            keep = [n for n, _ in CURVES_BASE if n in curve and n != TRIAL_ID]
            keep += [c for c in curve.columns if _POSITION_METRIC.match(c) and c not in keep]
            frame = curve[keep].assign(**{TRIAL_ID: row[TRIAL_ID]})
        out.append((row, frame))
    return out


def curve_rows(result: Any) -> pd.DataFrame:
    curve = result.metrics_dataframe
    base = [name for name, _ in CURVES_BASE]
    if curve is None or m.STEP not in curve:
        return pd.DataFrame(columns=base)
    curve = curve.assign(**{TRIAL_ID: _trial_id(result)})
    columns = base + [c for c in curve.columns if _POSITION_METRIC.match(c) and c not in base]
    for name in columns:
        if name not in curve:
            curve[name] = None
    # a trial resumed from a checkpoint repeats the evaluations after it: the last one counts
    return curve[columns].drop_duplicates(subset=[m.STEP], keep="last").sort_values(m.STEP)


def phase_rows(
    curves: pd.DataFrame, rule: PhaseRule = DEFAULT_PHASE_RULE
) -> tuple[pd.DataFrame, dict[str, dict[str, float | None]]]:
    """Every phase change of every trial's loss curves (rows of phases.parquet), and each
    trial's headline (the largest drop of its training and validation loss, and where Nanda's
    three phases ended: ``HEADLINE_COLUMNS``)."""
    rows, headline = [], {}
    positions = sorted(
        {match.group(3) for c in curves.columns if (match := _POSITION_METRIC.match(c))}
    )
    for tid, curve in curves.groupby(TRIAL_ID, sort=True):
        curve = curve.sort_values(m.STEP)
        columns = {c: curve[c].astype("float64").to_numpy() for c in curve if c != TRIAL_ID}
        mine = [p for p in positions if curve[f"{m.TRAIN_LOSS}_{p}"].notna().any()]
        found = run_phase_changes(columns, mine, rule)
        headline[str(tid)] = phase_outcome(found) | nanda_phases(columns)
        for phase in found:
            rows.append({TRIAL_ID: tid, "curve": phase.curve, **dataclasses.asdict(phase.change)})
    return pd.DataFrame(rows, columns=PHASES_SCHEMA.names), headline


def _schema(base: list[tuple[str, pa.DataType]], frame: pd.DataFrame) -> pa.Schema:
    """The base columns, then the per-position ones this study's tasks produced."""
    names = {name for name, _ in base}
    extra = sorted(c for c in frame.columns if c not in names)
    types_ = [pa.int64() if _POSITION_EVENT.match(c) else pa.float64() for c in extra]
    return pa.schema([*base, *zip(extra, types_, strict=True)])


def _settings_key(config: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in config_columns(flat_settings(config)).items()))


def pending_rows(planned: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for the planned configurations that no trial ran (the study was interrupted before
    Tune created them): their settings, status 'pending'."""
    ran = collections.Counter(
        tuple(sorted((k, repr(r.get(k))) for k in CONFIG_NAMES)) for r in rows
    )
    out = []
    for i, config in enumerate(planned):
        key = _settings_key(config)
        if ran[key]:
            ran[key] -= 1
            continue
        out.append(
            {
                TRIAL_ID: f"pending_{i:05d}",
                **config_columns(flat_settings(config)),
                m.STATUS: str(m.Status.PENDING),
            }
        )
    return out


def tables(
    results: Any,
    rule: RegionRule | None = None,
    phase_rule: PhaseRule = DEFAULT_PHASE_RULE,
    packs: list[list[dict[str, Any]]] | None = None,
    planned: list[dict[str, Any]] | None = None,
) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(trials, curves, phases) Arrow tables from a ray.tune ResultGrid (or a list of Results);
    ``packs``: a packed study's populations, whose members become one row each; ``planned``:
    every configuration the study runs (grid, random), so that those no trial ran yet are rows
    too (status 'pending'); ``rule``: by default the default rule at the trials' own
    threshold (``trials_rule``)."""
    rows, curve_frames = [], []
    keys = differing_settings(c for p in packs or [] for c in p)
    for result in results:
        pack = (_trial_config(result) or {}).get(PACK)
        if packs is not None and pack is not None:
            for row, curve in member_rows(result, packs[pack], keys):
                rows.append(row)
                curve_frames.append(curve)
        else:
            rows.append(trial_row(result))
            curve_frames.append(curve_rows(result))
    if planned is not None:
        rows += pending_rows(planned, rows)
    trials = pd.DataFrame(rows).reindex(
        columns=list(dict.fromkeys([n for n, _ in TRIALS_BASE] + [k for r in rows for k in r]))
    )
    curves = pd.concat(curve_frames, ignore_index=True) if curve_frames else pd.DataFrame()
    curves = curves.reindex(
        columns=list(dict.fromkeys([n for n, _ in CURVES_BASE] + list(curves.columns)))
    )
    phases, headline = phase_rows(curves, phase_rule)
    for name in HEADLINE_COLUMNS:
        trials[name] = [headline.get(t, {}).get(name) for t in trials[TRIAL_ID]]
    trials[PHASE_RULE] = phase_rule.describe()
    rule = trials_rule(trials) if rule is None else rule
    trials = classify_trials(trials, curves, rule).sort_values(TRIAL_ID, ignore_index=True)
    trials_schema, curves_schema = _schema(TRIALS_BASE, trials), _schema(CURVES_BASE, curves)
    return (
        pa.Table.from_pandas(
            _to_objects(trials, trials_schema), schema=trials_schema, preserve_index=False
        ),
        pa.Table.from_pandas(
            _to_objects(curves, curves_schema), schema=curves_schema, preserve_index=False
        ),
        pa.Table.from_pandas(_to_objects(phases), schema=PHASES_SCHEMA, preserve_index=False),
    )


def _to_objects(df: pd.DataFrame, schema: pa.Schema | None = None) -> pd.DataFrame:
    # pandas NaN/NA -> None so that Arrow stores nulls in integer and string columns; integer
    # columns read back from CSV reports as floats (100.0) become integers again
    df = df.copy()
    for field in schema or []:
        if pa.types.is_integer(field.type) and field.name in df:
            df[field.name] = pd.to_numeric(df[field.name]).astype("Int64")
    return df.astype(object).where(df.notna(), None)


def write_atomic(table: pa.Table, uri: str) -> None:
    fs, path = pafs.FileSystem.from_uri(uri)
    tmp = f"{path}.tmp"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, path)


def write_results(
    results: Any,
    study_uri: str,
    rule: RegionRule | None = None,
    packs: list[list[dict[str, Any]]] | None = None,
    planned: list[dict[str, Any]] | None = None,
) -> dict[str, str]:
    trials, curves, phases = tables(results, rule, packs=packs, planned=planned)
    paths = {
        "trials": f"{study_uri}/{TRIALS_FILE}",
        "curves": f"{study_uri}/{CURVES_FILE}",
        "phases": f"{study_uri}/{PHASES_FILE}",
    }
    # trials last: its presence says the others are there
    write_atomic(curves, paths["curves"])
    write_atomic(phases, paths["phases"])
    write_atomic(trials, paths["trials"])
    return paths


def read_trials(study_uri: str) -> pd.DataFrame:
    return pq.read_table(f"{study_uri}/{TRIALS_FILE}").to_pandas()


def read_curves(study_uri: str) -> pd.DataFrame:
    return pq.read_table(f"{study_uri}/{CURVES_FILE}").to_pandas()


def read_phases(study_uri: str) -> pd.DataFrame:
    return pq.read_table(f"{study_uri}/{PHASES_FILE}").to_pandas()


def curves_with_settings(study_uri: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """curves.parquet with its trial's settings beside every evaluation: by default the
    settings that vary among the trials (in TrainConfig's order), then ``region`` and
    ``status``; ``columns`` picks any columns of trials.parquet instead. The join the README
    shows, on ``trial_id``: one row per evaluation, as in curves.parquet. A setting named as a
    curve's column gets ``_setting`` (``lr_setting``, the peak; ``lr``, the step's)."""
    trials = read_trials(study_uri)
    if columns is None:
        varying = [n for n, _ in CONFIG_SCHEMA if trials[n].nunique(dropna=False) > 1]
        columns = [*varying, REGION, m.STATUS]
    unknown = [c for c in columns if c not in trials or c == TRIAL_ID]
    if unknown:
        raise ValueError(
            f"not a column of {TRIALS_FILE}: {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(c for c in trials.columns if c != TRIAL_ID)}"
        )
    settings = trials[[TRIAL_ID, *columns]]
    return read_curves(study_uri).merge(
        settings, on=TRIAL_ID, how="left", suffixes=("", SETTING_SUFFIX), validate="many_to_one"
    )
