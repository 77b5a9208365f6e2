"""``--resume``: the stored study with what a resume may change, the checks that its saved state
can be resumed, and what Tune's restored study must be told (through private attributes)."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from grok_tune import study_state
from grok_tune.config import strict_value
from grok_tune.space import RESUMABLE, SpecError, StudySpec, load_yaml, parse_spec, read_study_file
from grok_tune.study.errors import Refused
from grok_tune.study.flags import FLAGS, default_name
from grok_tune.study.storage import read_text
from grok_tune.study.tuner import study_exists
from grok_tune.study_files import STUDY_FILE, study_uri


def differing_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    keys = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += differing_keys(x, y, f"{prefix}{key}.")
        elif x != y:
            keys.append(f"{prefix}{key}")
    return keys


def resolve_resume(args: argparse.Namespace, storage: str) -> StudySpec:
    """The stored study, with the settings a resume may change taken from the file and flags."""
    name = args.name
    if name is None and args.space is not None:
        name = default_name(args.space) or read_study_file(args.space)["name"]
    if name is None:
        raise Refused("--resume needs --name NAME (or --space FILE)")
    where = f"{study_uri(storage, name)}/{STUDY_FILE}"
    stored_text = read_text(where)
    if stored_text is None:
        raise Refused(f"--resume: no study {name!r} in {storage} (no {where})")
    try:
        stored_data = load_yaml(stored_text)
    except yaml.YAMLError as err:
        raise Refused(f"--resume: {where}: damaged, not valid YAML ({err})") from None
    try:
        stored = parse_spec(stored_data, where)
    except SpecError as err:
        raise Refused(f"--resume: {where}: damaged, not a study file: {err}") from None
    changes: dict[str, Any] = {}
    if args.space is not None:
        given = parse_spec(read_study_file(args.space), str(args.space), {"name": (name, "")})
        fixed = [
            k for k in differing_keys(stored.model_dump(), given.model_dump()) if k not in RESUMABLE
        ]
        if fixed:
            raise Refused(
                f"--resume: {args.space} differs from the study being resumed in "
                f"{', '.join(fixed)}: only {', '.join(RESUMABLE)} may change on --resume"
            )
        changes.update({k: getattr(given, k) for k in RESUMABLE})
    for key in ("num_samples", "members_per_trial"):
        given_flag = getattr(args, key)
        if given_flag is not None and strict_value(given_flag, int) != getattr(stored, key):
            raise Refused(
                f"{FLAGS[key]}: cannot change on --resume (how the study's configurations are "
                "laid out in trials is fixed when it began)"
            )
    overrides = {key: (getattr(args, key), flag) for key, flag in FLAGS.items() if key in RESUMABLE}
    # (a flag equal to the stored value is no change: it is taken, and changes nothing)
    return parse_spec({**stored.model_dump(mode="json"), **changes}, where, overrides)


def check_resumable(spec: StudySpec, uri: str) -> None:
    """Refuse a resume that would run something else than the study: damaged or missing state
    files, or an Optuna study in another folder than the one it began in."""
    if study_state.newest_state_file(uri) is None:
        if study_exists(uri):  # Tune would silently start it over, beside what the first run left
            raise Refused(
                f"--resume: {uri} holds no saved progress (stopped before Ray Tune first saved "
                "its state, a second or so after the start): run it anew under another --name, "
                "or delete the folder"
            )
        raise Refused(f"--resume: no study state at {uri} (it never started a trial)")
    try:
        trials = study_state.check_resumable(uri)
    except study_state.DamagedState as err:
        raise Refused(f"--resume: {err}") from None
    old = study_state.moved_from(uri, trials)
    if old and spec.mode == "optuna":
        # Optuna's journal is bound to the path it was opened at, inside Tune's saved searcher
        raise Refused(
            f"--resume: this Optuna study began at {old} and is now at {uri}: its Optuna journal "
            f"would still be written at {old}. Resume it where it began"
        )
