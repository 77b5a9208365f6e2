"""A study's Ray results -> ``trials.parquet`` (one row per trial) and ``curves.parquet``.

Both files carry the names of ``grok_tune.metrics`` and ``TrainConfig`` as columns, are written
with an explicit schema, and appear whole or not at all (written aside, then renamed), on a
local disk or in cloud storage alike (pyarrow's filesystems).
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from grok_tune import metrics as m
from grok_tune.config import TrainConfig
from grok_tune.layout import CURVES_FILE, TRIAL_ID, TRIALS_FILE
from grok_tune.regions import DEFAULT_RULE, REGION, REGION_RULE, RegionRule, classify_trials

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
    m.FOURIER_SPARSITY: pa.float64(),
    m.OBJECTIVE: pa.float64(),
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
    "train_size": pa.int64(),
    "val_size": pa.int64(),
    "error": pa.string(),
    "trial_dir": pa.string(),
}


def _arrow_type(annotation: Any) -> pa.DataType:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return _arrow_type(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return pa.string()
    return {bool: pa.bool_(), int: pa.int64(), float: pa.float64()}.get(annotation, pa.string())


CONFIG_SCHEMA = [(name, _arrow_type(f.annotation)) for name, f in TrainConfig.model_fields.items()]
TRIALS_SCHEMA = pa.schema([(TRIAL_ID, pa.string()), *CONFIG_SCHEMA, *_OUTCOME_COLUMNS.items()])
CURVES_SCHEMA = pa.schema(
    [(TRIAL_ID, pa.string()), (m.STEP, pa.int64())]
    + [(name, pa.float64()) for name in (*m.CURVE_METRICS, m.ELAPSED_S)]
)


def _trial_id(result: Any) -> str:
    tid = (result.metrics or {}).get("trial_id")
    if tid:
        return str(tid)
    match = re.search(r"_([0-9a-f]{5}_\d{5})", Path(result.path).name)
    return match.group(1) if match else Path(result.path).name


def _none_if_nan(value: Any) -> Any:
    return None if isinstance(value, float) and value != value else value


def trial_row(result: Any) -> dict[str, Any]:
    """One row of trials.parquet from a ray.tune Result (finished, stopped or errored)."""
    last = dict(result.metrics or {})
    config = TrainConfig.model_fields.keys()
    row: dict[str, Any] = {TRIAL_ID: _trial_id(result)}
    row.update({k: result.config.get(k, TrainConfig.model_fields[k].default) for k in config})
    for name in _OUTCOME_COLUMNS:
        row[name] = _none_if_nan(last.get(name))
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


def curve_rows(result: Any) -> pd.DataFrame:
    curve = result.metrics_dataframe
    columns = CURVES_SCHEMA.names
    if curve is None or m.STEP not in curve:
        return pd.DataFrame(columns=columns)
    curve = curve.assign(**{TRIAL_ID: _trial_id(result)})
    for name in columns:
        if name not in curve:
            curve[name] = None
    # a trial resumed from a checkpoint repeats the evaluations after it: the last one counts
    return curve[columns].drop_duplicates(subset=[m.STEP], keep="last").sort_values(m.STEP)


def tables(results: Any, rule: RegionRule = DEFAULT_RULE) -> tuple[pa.Table, pa.Table]:
    """(trials, curves) Arrow tables from a ray.tune ResultGrid (or any list of Results)."""
    trials = pd.DataFrame([trial_row(r) for r in results], columns=TRIALS_SCHEMA.names)
    curve_frames = [curve_rows(r) for r in results]
    curves = pd.concat(curve_frames, ignore_index=True) if curve_frames else pd.DataFrame()
    curves = curves.reindex(columns=CURVES_SCHEMA.names)
    trials = classify_trials(trials, curves, rule).sort_values(TRIAL_ID, ignore_index=True)
    return (
        pa.Table.from_pandas(_to_objects(trials), schema=TRIALS_SCHEMA, preserve_index=False),
        pa.Table.from_pandas(_to_objects(curves), schema=CURVES_SCHEMA, preserve_index=False),
    )


def _to_objects(df: pd.DataFrame) -> pd.DataFrame:
    # pandas NaN/NA -> None so that Arrow stores nulls in integer and string columns
    return df.astype(object).where(df.notna(), None)


def write_atomic(table: pa.Table, uri: str) -> None:
    fs, path = pafs.FileSystem.from_uri(uri)
    tmp = f"{path}.tmp"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, path)


def write_results(results: Any, study_uri: str, rule: RegionRule = DEFAULT_RULE) -> dict[str, str]:
    trials, curves = tables(results, rule)
    paths = {"trials": f"{study_uri}/{TRIALS_FILE}", "curves": f"{study_uri}/{CURVES_FILE}"}
    write_atomic(curves, paths["curves"])
    write_atomic(trials, paths["trials"])
    return paths


def read_trials(study_uri: str) -> pd.DataFrame:
    return pq.read_table(f"{study_uri}/{TRIALS_FILE}").to_pandas()


def read_curves(study_uri: str) -> pd.DataFrame:
    return pq.read_table(f"{study_uri}/{CURVES_FILE}").to_pandas()
