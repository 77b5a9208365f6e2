"""The configurations a grid or random study runs, one per trial unpacked, and their packs
(populations of ``members_per_trial``)."""

from __future__ import annotations

from typing import Any

from grok_tune.space import SEED, Distribution, StudySpec


def member_configs(spec: StudySpec) -> list[dict[str, Any]]:
    """A grid or random study's configurations, one per trial it would run unpacked: the grid's
    points (each repeat in turn), or ``num_samples`` draws from the distributions."""
    seeds = spec.repeat_seeds() or [None] * spec.num_samples
    if spec.mode == "grid":
        return [seeded({**spec.fixed, **p}, s) for s in seeds for p in spec.grid_points()]
    import numpy as np

    rng = np.random.default_rng(spec.seed)

    def draw(dist: Distribution) -> Any:
        kind = next(iter(type(dist).model_fields))
        value = getattr(dist, kind)
        if kind == "uniform":
            return float(rng.uniform(*value))
        if kind == "loguniform":
            return float(np.exp(rng.uniform(np.log(value[0]), np.log(value[1]))))
        if kind == "int":
            return int(rng.integers(value[0], value[1] + 1))
        return value[int(rng.integers(len(value)))]

    return [
        seeded({**spec.fixed, **{k: draw(d) for k, d in spec.distributions.items()}}, s)
        for s in seeds
    ]


def seeded(config: dict[str, Any], seed: int | None) -> dict[str, Any]:
    return config if seed is None else {**config, SEED: seed}


def packs_of(spec: StudySpec) -> list[list[dict[str, Any]]]:
    """The study's configurations packed into populations of at most ``members_per_trial``
    (grok_tune/packing.py: members share the task, the model's shape and the schedule)."""
    from grok_tune.config import TrainConfig, flat_settings
    from grok_tune.packing import population_groups

    configs = member_configs(spec)
    groups = population_groups(
        [TrainConfig(**flat_settings(c)) for c in configs], spec.members_per_trial
    )
    return [[configs[i] for i in group] for group in groups]
