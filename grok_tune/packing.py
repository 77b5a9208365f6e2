"""Which runs can train as one population (grok_tune/population.py), without torch: the study
driver packs a study's configurations into Ray trials with these rules.

Members share what fixes the shapes and the schedule (``SHARED``) and the effective batch size
(the default batch follows the training set's size); they may differ in ``MAY_DIFFER``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grok_tune.config import INFINITE_BATCH, TrainConfig
from grok_tune.remedies import REMEDIES
from grok_tune.tasks import task_class

# What a study varies per trial; every other setting fixes a shape or the schedule and is shared.
# A setting added to TrainConfig is shared until it is listed here.
MAY_DIFFER = frozenset(
    {
        "seed", "frac", "lr", "weight_decay", "decay_scope", "dropout", "init_scale",
        "batch_size", "threshold", "stop_after_generalized", "confusion_step",
        "preset",  # a label: the settings it fills are compared one by one
        # each remedy's settings, where its registry entry says members may differ in them
        *(name for remedy in REMEDIES if remedy.may_differ for name in remedy.fields),
    }
)  # fmt: skip
# settings the stacked path (grok_tune/stacked.py) does not implement: at any other value, a
# population runs on the per-member path (an lr of the embeddings' own is a second lr column
# per member in its optimizer, which it does not have)
NOT_STACKED: dict[str, Any] = {"embedding_lr": None}
SHARED = tuple(name for name in TrainConfig.model_fields if name not in MAY_DIFFER)
EFFECTIVE_BATCH = "effective batch size"


def training_examples(cfg: TrainConfig) -> int | None:
    """The size of the run's training set (None: infinite data), without building the data."""
    if cfg.infinite_data:
        return None
    return task_class(cfg.task).training_examples(cfg)  # Population checks it against the data


def effective_batch_size(cfg: TrainConfig) -> int:
    """The batch ``Trainer(cfg)`` trains on: the default depends on the training set's size."""
    n = training_examples(cfg)
    if n is None:
        return cfg.batch_size or INFINITE_BATCH
    return min(cfg.batch_size or min(512, n // 2), n) or 1


def population_key(cfg: TrainConfig) -> tuple[tuple[str, Any], ...]:
    """Equal for configurations that can train in one population: the shared settings and the
    effective batch size."""
    return (
        *((name, getattr(cfg, name)) for name in SHARED),
        (EFFECTIVE_BATCH, effective_batch_size(cfg)),
    )


def why_not_stacked(cfgs: Sequence[TrainConfig]) -> str | None:
    """Why these members cannot run on the stacked path (one lr per member; a remedy without a
    stacked part), or None."""
    for cfg in cfgs:
        unknown = [name for name, plain in NOT_STACKED.items() if getattr(cfg, name) != plain]
        unknown += [r.switch for r in REMEDIES if r.stacked is None and r.on(cfg)]
        if unknown:
            return f"it does not know {', '.join(f'{n} {getattr(cfg, n)!r}' for n in unknown)}"
    return None


def check_population(cfgs: Sequence[TrainConfig]) -> None:
    """ValueError naming the first setting in which a member differs from member 0."""
    if not cfgs:
        raise ValueError("a population needs at least one member")
    first = population_key(cfgs[0])
    for i, cfg in enumerate(cfgs[1:], 1):
        for (name, a), (_, b) in zip(first, population_key(cfg), strict=True):
            if a != b:
                raise ValueError(
                    f"members 0 and {i} cannot share a population: {name} is {a!r} and {b!r} "
                    f"(members may differ only in {', '.join(sorted(MAY_DIFFER))}, with the "
                    "same effective batch size)"
                )


def population_groups(cfgs: Sequence[TrainConfig], max_size: int | None = None) -> list[list[int]]:
    """Indices of ``cfgs`` grouped by ``population_key`` (in order of first appearance), each
    group cut into populations of at most ``max_size`` members."""
    if max_size != 1:
        groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault(population_key(cfg), []).append(i)
    size = max_size or len(cfgs) or 1
    return [g[s : s + size] for g in groups.values() for s in range(0, len(g), size)]


def why_apart(cfgs: Sequence[TrainConfig]) -> list[str]:
    """The settings that keep the study's configurations in separate populations: those of the
    population key that take more than one value (``effective batch size`` among them)."""
    keys = [population_key(cfg) for cfg in cfgs]
    if not keys:
        return []
    return [
        name for i, (name, _) in enumerate(keys[0]) if len({repr(key[i][1]) for key in keys}) > 1
    ]
