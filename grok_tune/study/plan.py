"""``--dry-run``: what a study would run, in words, from its checked StudySpec."""

from __future__ import annotations

import itertools

from grok_tune.space import SEED, Grid, StudySpec
from grok_tune.study.cluster import local_cpus, resources_text
from grok_tune.study.configs import member_configs, packs_of

MAX_POINTS_LISTED = 60


def plan(spec: StudySpec, uri: str, exists: bool, address: str | None) -> str:
    """What the study would run, in words: the --dry-run output."""
    most = "at most " if spec.mode == "boundary" else ""
    lines = [f"study {spec.name} ({spec.mode}): {most}{spec.num_trials()} trials"]
    if spec.description:
        lines.append(f"  {spec.description}")
    fixed = ", ".join(f"{k}={v}" for k, v in spec.fixed.items())
    lines.append(f"  fixed: {fixed or 'none'} (every other setting: its default, or its preset's)")
    if spec.mode == "grid":
        points = spec.grid_points()
        grids = ", ".join(
            f"{k} {d.grid}" for k, d in spec.distributions.items() if isinstance(d, Grid)
        )
        repeats = f" x {spec.num_samples} repeats" if spec.num_samples > 1 else ""
        if spec.variants:  # the points count every variant at every grid point
            per = len(points) // len(spec.variants)
            repeats += f" ({len(spec.variants)} variants x {per} grid point{'s' * (per != 1)})"
        lines.append(
            f"  grid: {grids or 'no axis (the variants alone)'}: {len(points)} points{repeats}"
        )
        for point in itertools.islice(points, MAX_POINTS_LISTED):
            said = ", ".join(f"{k}={v}" for k, v in point.items())
            lines.append(f"    {said or '(the settings as they are)'}")
        if len(points) > MAX_POINTS_LISTED:
            lines.append(f"    ... and {len(points) - MAX_POINTS_LISTED} more")
    if spec.mode == "boundary":
        lines += _boundary_plan(spec)
    lines += _seed_plan(spec)
    if spec.members_per_trial > 1:
        lines += _pack_plan(spec)
    others = {k: d for k, d in spec.distributions.items() if not isinstance(d, Grid)}
    for key, dist in others.items() if spec.mode != "boundary" else ():
        lines.append(f"  {key}: {dist.model_dump()} (sampled per trial)")
    if spec.variants:
        lines.append(f"  variants (each crossed with the grid): {len(spec.variants)}")
        lines += [f"    {v or '{} (the settings as they are)'}" for v in spec.variants]
    if spec.mode == "optuna":
        lines.append(
            f"  Optuna TPE (seed {spec.seed}): {spec.objective.mode} {spec.objective.metric}"
        )
        lines.append(f"  {spec.startup_note()}")
    at_once = spec.max_concurrent or (
        "CPUs // cpus_per_trial of the cluster when the study starts"
        if address
        else f"{max(1, int(local_cpus() // spec.cpus_per_trial))} (this machine's CPUs)"
    )
    lines.append(f"  resources: {resources_text(spec)}; at most {at_once} at once")
    lines.append(f"  on: {'the Ray cluster at ' + address if address else 'local Ray'}")
    state = "exists: --resume continues it" if exists else "new"
    lines.append(f"  study directory: {uri} ({state})")
    lines.append("dry run: nothing was started or written")
    return "\n".join(lines)


def _pack_plan(spec: StudySpec) -> list[str]:
    """How the configurations are packed into Ray trials, and what keeps any apart."""
    from grok_tune.config import TrainConfig, flat_settings
    from grok_tune.packing import why_apart

    packs = packs_of(spec)
    sizes = sorted((len(p) for p in packs), reverse=True)
    shown = ", ".join(map(str, sizes[:20])) + (", ..." if len(sizes) > 20 else "")
    lines = [
        f"  packed: {sum(sizes)} configurations in {len(packs)} Ray trials of "
        f"{shown} members (members_per_trial {spec.members_per_trial})"
    ]
    apart = why_apart([TrainConfig(**flat_settings(c)) for c in member_configs(spec)])
    if apart:
        lines.append(
            f"    kept in separate populations by {', '.join(apart)}: members of one "
            "population share these (grok_tune/packing.py)"
        )
    return lines


def _seed_plan(spec: StudySpec) -> list[str]:
    """What seeds the trials run with: a repeat that repeats its seed repeats the run."""
    seeds = spec.repeat_seeds()
    if seeds:
        what = "repeat" if spec.mode == "grid" else "trial"
        base = f"params.seed {seeds[0]}" if SEED in spec.fixed else "seed 0"
        return [f"  seeds: {what} r runs with {base} + r: {seeds}"]
    if spec.mode in ("grid", "random") and spec.num_samples > 1:
        return [
            f"  seeds: the {spec.num_samples} repeats take the seeds params.seed or the variants "
            "give: a repeat of a seed is the same run (bit for bit on CPU)"
        ]
    if spec.mode != "boundary" and SEED not in spec.params:
        return ["  seeds: every trial runs with seed 0 (params.seed: {grid: [0, 1, 2]} for more)"]
    return []


def _boundary_plan(spec: StudySpec) -> list[str]:
    from grok_tune.boundary import axes_of, maps_of

    axes, maps = axes_of(spec), maps_of(spec)
    resolution = (spec.initial - 1) * 2**spec.depth + 1
    first = spec.initial ** len(axes) * spec.num_samples
    lines = [
        "  axes, refined where the region changes: "
        + ", ".join(f"{a.name} [{a.lo:g}, {a.hi:g}]{' (log)' if a.log else ''}" for a in axes),
        f"  {len(maps)} map(s), each starting with {spec.initial}^{len(axes)} points x "
        f"{spec.num_samples} repeats = {first} trials, refined {spec.depth} levels deep: the "
        f"resolution of a {resolution}^{len(axes)} grid",
    ]
    grids = {k: d.grid for k, d in spec.distributions.items() if isinstance(d, Grid)}
    if grids:
        lines.append(f"  maps: one per point of {', '.join(f'{k} {v}' for k, v in grids.items())}")
    if spec.same:
        lines.append(
            f"  counted as one label: {', '.join('+'.join(map(str, s)) for s in spec.same)}"
        )
    return lines
