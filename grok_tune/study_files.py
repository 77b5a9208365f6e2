"""The names of a study directory's files, and how a study's location is written: one home.

A study lives in ``STORAGE/NAME`` (a local folder, or an ``s3://`` / ``gs://`` URI)::

    study.yaml              the study file that made it, as validated (resources as last run)
    optuna.journal          Optuna's storage (mode optuna), readable by Optuna's own tools
    experiment_state-*.json Ray Tune's state (what --resume continues)
    <trial dirs>/           each trial: checkpoint_*/population.pt, TensorBoard events, result.json
    trials.parquet          one row per trial (per configuration of a population)
    curves.parquet          every evaluation of every trial
    phases.parquet          every phase change (sudden loss drop) of every trial's loss curves
    figures/, summary.txt   what ``python -m analysis`` writes

Every module that writes or reads these imports them from here; nothing here imports Ray,
torch or the search driver.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_STORAGE = "~/grok_tune_results"
STUDY_FILE = "study.yaml"
OPTUNA_FILE = "optuna.journal"
TRIALS_FILE = "trials.parquet"
CURVES_FILE = "curves.parquet"
PHASES_FILE = "phases.parquet"
FIGURES_DIR = "figures"
SUMMARY_FILE = "summary.txt"
# a trial checkpoint's one file: the state_dict of its population (a single run's: of one)
# through torch.save
STATE_FILE = "population.pt"
LEGACY_STATE_FILE = "trainer.pt"  # a single trial's, before the one engine (2026-12-06)
# the column naming a trial in both Parquet files
TRIAL_ID = "trial_id"


def is_uri(storage: str) -> bool:
    return "://" in storage


def study_uri(storage: str, name: str) -> str:
    """Where study ``name`` lives: an absolute local path, or ``scheme://bucket/.../name``."""
    if is_uri(storage):
        return f"{storage.rstrip('/')}/{name}"
    return str(Path(storage).expanduser().resolve() / name)


def folder_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot become a folder to write in, or None. Creates nothing."""
    import tempfile

    path = Path(path).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return "is a file, not a folder" if existing == path else f"lies under the file {existing}"
    try:  # a real write: os.access says yes to root on a read-only file system
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        return f"cannot write in {existing}: {err.strerror}"
    return None


def _runnable(program: str) -> str:
    """A program of this Python's environment as a user can type it here: ``.venv/bin/NAME``
    from the project's folder, an absolute path elsewhere, the bare name if it is not there."""
    import os
    import sys

    path = Path(sys.executable).parent / program
    if not path.exists():
        return program
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


def analysis_command(study: str | Path) -> str:
    return f"{_runnable('python')} -m analysis {study}"


def tensorboard_command(study: str | Path) -> str:
    return f"{_runnable('tensorboard')} --logdir {study}"
