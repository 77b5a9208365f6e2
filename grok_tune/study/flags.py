"""The flags that override a study file's keys, and where a setting came from (to blame the
flag, not the file, for a bad value)."""

from __future__ import annotations

import argparse
from pathlib import Path

from grok_tune.space import Overrides, read_study_file

# The flags that override a study file's keys, by key.
FLAGS = {
    "num_samples": "--num-samples",
    "max_concurrent": "--max-concurrent",
    "cpus_per_trial": "--cpus-per-trial",
    "gpus_per_trial": "--gpus-per-trial",
    "members_per_trial": "--members-per-trial",
}


def overrides(args: argparse.Namespace) -> Overrides:
    return {key: (getattr(args, key), flag) for key, flag in FLAGS.items()}


def default_name(path: Path) -> str | None:
    """A study's name when --name is not given: the file's `name`, else its file name."""
    data = read_study_file(path)
    named = data.get("name") if isinstance(data, dict) else None
    return None if named else path.stem


def sources(args: argparse.Namespace) -> dict[str, str]:
    """Where each resource setting came from, to name it when refusing it."""
    where = "the stored study" if args.resume else str(args.space)
    return {
        k: flag if getattr(args, k) is not None else f"{k} in {where}" for k, flag in FLAGS.items()
    }
