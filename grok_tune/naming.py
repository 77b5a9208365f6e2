"""What a trial's folder (and a packed member's) is called: its TensorBoard run name.

Tune's own folder names (``grokking_trial_a94ba_00000_0_frac=0.5,weight_decay=1_2026-...``)
are cut by TensorBoard's run list before the values, and Tune drops values past 130
characters. Here a trial's folder is its number and the values of the settings that vary in
the study: ``t00003_frac=0.5_weight_decay=1``; a packed trial's members are
``t00001/m2_seed=1_weight_decay=1``. Every setting is still in the run's hparams and in
trials.parquet; the name only tells the runs apart at a glance.

Names are made once, when Tune creates a trial; Tune stores them in its state, so ``--resume``
finds the same folders. Without Ray or torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from grok_tune.config import flat_settings

if TYPE_CHECKING:
    from grok_tune.space import StudySpec

MAX_NAME = 80  # characters of values kept: TensorBoard's run list shows about this many
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")  # S5:x*y, x^2+y^2: no ':' '*' '^' in folder names
_TRIAL_NUMBER = re.compile(r"^(\d+)")


def varying_settings(spec: StudySpec) -> tuple[str, ...]:
    """The settings whose value changes from trial to trial: the study's distributions, the
    variants' settings, and a boundary study's repeat seed."""
    keys = [*spec.distributions, *(k for variant in spec.variants for k in variant)]
    if spec.mode == "boundary" and spec.num_samples > 1:
        keys.append("seed")  # grok_tune/boundary.py: a repeat is the point with the next seed
    return tuple(dict.fromkeys(keys))


def differing_settings(configs: Iterable[dict[str, Any]]) -> tuple[str, ...]:
    """The settings that take more than one value among ``configs`` (a packed study's), in
    the order they first appear."""
    configs = [flat_settings(c) for c in configs]
    keys = dict.fromkeys(k for c in configs for k in c)
    return tuple(k for k in keys if len({repr(c.get(k)) for c in configs}) > 1)


def _value(value: Any) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.3g}"  # sampled lr 0.00123, not 0.0012345
    return str(value)


def settings_label(settings: dict[str, Any], keys: Sequence[str]) -> str:
    """``frac=0.5_weight_decay=1``: the values of ``keys`` a configuration has, filesystem-safe,
    at most MAX_NAME characters."""
    flat = flat_settings(settings)
    parts = [f"{k}={_value(flat[k])}" for k in keys if k in flat]
    return _UNSAFE.sub("_", "_".join(parts))[:MAX_NAME]


def run_name(prefix: str, number: int, settings: dict[str, Any], keys: Sequence[str]) -> str:
    """``t00003_frac=0.5_weight_decay=1``: unique by the number, readable by the values."""
    label = settings_label(settings, keys)
    return f"{prefix}{number:05d}_{label}" if label else f"{prefix}{number:05d}"


def member_dir(i: int, config: dict[str, Any], keys: Sequence[str]) -> str:
    """A packed trial's member ``i`` in its trial's folder (its TensorBoard run):
    ``m2_seed=1_weight_decay=1``."""
    label = settings_label(config, keys)
    return f"m{i}_{label}" if label else f"m{i}"


class TrialDirname:
    """Tune's ``trial_dirname_creator``: ``t<number>_<varying values>``.

    The number is the one Tune puts first in the trial's experiment tag (its place in the
    study); a class, not a closure, so that Tune's pickled state restores it on --resume.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)

    def __call__(self, trial: Any) -> str:
        number = _TRIAL_NUMBER.match(str(trial.experiment_tag))
        # Tune appends a random suffix itself should a folder of this name exist already
        return run_name("t", int(number.group(1)) if number else 0, trial.config, self.keys)
