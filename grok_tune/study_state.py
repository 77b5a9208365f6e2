"""Ray Tune's saved state of a study: checked before a resume, and its checkpoints pruned.

Tune writes a study's state (``experiment_state-*.json``: every trial, its status and the
checkpoint it would resume from) every few seconds, and registers a trial's checkpoints as they
come. Left to itself, Tune deletes a trial's oldest checkpoint whenever a new one registers
(``num_to_keep``), whether or not its last saved state still points at it: a driver killed
between the two resumes that trial from a checkpoint that is gone, and the trial fails. Here
Tune deletes nothing; ``prune`` deletes a trial's checkpoints older than the one the *saved*
state points at, so that whatever moment the driver dies, the checkpoint a resume needs is
there (the run after it is recomputed, bit for bit).

The state is read with Ray's own decoder (the trials are cloudpickled inside the JSON): one
module knows its shape; Ray is pinned.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import pyarrow.fs as pafs

STATE_PATTERN = re.compile(r"^experiment_state-.*\.json$")
TUNER_FILE = "tuner.pkl"
CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")


class DamagedState(Exception):
    """A study folder whose saved state cannot be resumed; the message names the file."""


@dataclass(frozen=True)
class TrialState:
    trial_id: str
    folder: str  # the trial's folder name inside the study
    experiment_path: str  # where the study was when the state was written
    checkpoint: str | None  # the checkpoint folder a resume starts from, by name


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri)


def _names(fs: pafs.FileSystem, path: str) -> list[str]:
    selector = pafs.FileSelector(path, allow_not_found=True)
    return [PurePosixPath(info.path).name for info in fs.get_file_info(selector)]


def newest_state_file(uri: str) -> str | None:
    """The name of the study's newest ``experiment_state-*.json`` (as Tune picks it)."""
    fs, path = _fs(uri)
    states = sorted(n for n in _names(fs, path) if STATE_PATTERN.match(n))
    return states[-1] if states else None


def read_trials(uri: str) -> list[TrialState]:
    """Every trial of the study's newest saved state, or DamagedState naming the file."""
    from ray.tune.experiment.trial import Trial

    fs, path = _fs(uri)
    name = newest_state_file(uri)
    if name is None:
        raise DamagedState(f"{uri}: no experiment_state-*.json (Ray Tune's saved state)")
    where = f"{uri}/{name}"
    try:
        with fs.open_input_stream(f"{path}/{name}") as f:
            state = json.loads(f.read().decode())
        trials = []
        for trial_json, metadata_json in state["trial_data"]:
            trial = Trial.from_json_state(trial_json, stub=True)
            trial.restore_run_metadata(metadata_json)
            latest = trial.run_metadata.checkpoint_manager.latest_checkpoint_result
            checkpoint = PurePosixPath(latest.checkpoint.path).name if latest else None
            trials.append(
                TrialState(
                    trial_id=trial.trial_id,
                    folder=trial.storage.trial_dir_name,
                    experiment_path=trial.storage.experiment_fs_path,
                    checkpoint=checkpoint,
                )
            )
    except Exception as err:  # truncated, edited, another Ray's: all mean "cannot resume"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DamagedState(f"{where}: damaged, cannot be read ({reason[:200]})") from None
    return trials


def check_resumable(uri: str) -> list[TrialState]:
    """The study's trials if its saved state can be resumed; else DamagedState naming the
    damaged or missing file. Reads only."""
    fs, path = _fs(uri)
    names = set(_names(fs, path))
    if TUNER_FILE not in names:
        raise DamagedState(
            f"{uri}/{TUNER_FILE}: missing (Ray Tune's record of how the study runs): the study "
            "cannot be resumed; its finished trials stay in trials.parquet"
        )
    trials = read_trials(uri)
    for trial in trials:
        if trial.checkpoint and trial.checkpoint not in _names(fs, f"{path}/{trial.folder}"):
            raise DamagedState(
                f"{uri}/{trial.folder}/{trial.checkpoint}: missing, and trial {trial.trial_id} "
                "resumes from it"
            )
    return trials


def moved_from(uri: str, trials: list[TrialState]) -> str | None:
    """Where the study was when its state was written, if that is not ``uri`` (a copied or
    moved study folder)."""
    _, path = _fs(uri)
    for trial in trials:
        if trial.experiment_path.rstrip("/") != path.rstrip("/"):
            return trial.experiment_path
    return None


def prune(uri: str) -> int:
    """Delete each trial's checkpoints older than the one the study's saved state resumes it
    from; keep that one and every newer one. Returns how many were deleted. A state that
    cannot be read (being written, say) prunes nothing this time."""
    try:
        trials = read_trials(uri)
    except DamagedState:
        return 0
    fs, path = _fs(uri)
    deleted = 0
    for trial in trials:
        keep = CHECKPOINT_DIR.match(trial.checkpoint or "")
        if not keep:
            continue
        for name in _names(fs, f"{path}/{trial.folder}"):
            match = CHECKPOINT_DIR.match(name)
            if match and int(match.group(1)) < int(keep.group(1)):
                fs.delete_dir(f"{path}/{trial.folder}/{name}")
                deleted += 1
    return deleted
