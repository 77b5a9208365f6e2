"""Boundary search against the dense grid it replaces, on synthetic maps with known boundaries.

    .venv/bin/python bench/boundary.py [--initial 5] [--depth 3] [--offsets 20] [--seed 0]
        [--trace]

Each map labels [0, 1]^2 (or [0, 1]) with region names; a trial is a call of the map, so this
runs in seconds and measures only the search. Per map: the trials the refinement used, the
trials of the dense grid of the same resolution (R = (initial - 1) * 2**depth + 1 per axis,
times the repeats), their ratio, and the share of the dense grid's points and cells labelled the
same (cells: the label of their corners, or "mixed"). Thin regions (narrower than the starting
spacing, 1 / (initial - 1)) are run at ``--offsets`` random offsets: the table gives the mean
and the worst agreement, how often the region was missed entirely (no trial inside it), and the
agreement over the offsets where it was seen. ``levels``: rounds of trials, each a wait for its
slowest trial on a real study (``--trace`` can take more than depth + 1).
The goal at depth 3, initial 5: at least 3x fewer trials than the dense grid, at least 98% of
cells the same; rows that miss it are marked.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grok_tune.boundary import (
    Axis,
    Label,
    Refinement,
    agreement,
    cell_labels,
    dense_points,
    refine,
)

AXES_2D = (Axis("x", 0.0, 1.0), Axis("y", 0.0, 1.0))
AXES_1D = (Axis("x", 0.0, 1.0),)
GOAL_RATIO, GOAL_CELLS = 3.0, 0.98

MapFn = Callable[[dict[str, float], int], Label]


def line(v: dict[str, float], r: int) -> Label:
    return "grok" if v["y"] > 0.3 + 0.4 * v["x"] else "memorize"


def curve(v: dict[str, float], r: int) -> Label:
    return "grok" if v["y"] > 0.45 + 0.2 * math.sin(2 * math.pi * 1.2 * v["x"]) else "memorize"


def three(v: dict[str, float], r: int) -> Label:
    if v["x"] < 0.15 + 0.1 * v["y"]:
        return "confusion"
    return "generalize" if (v["x"] - 1) ** 2 + v["y"] ** 2 < 0.6**2 else "memorize"


def corner(v: dict[str, float], r: int) -> Label:
    # a region smaller than one starting cell, in the corner: the corner is a starting point
    return "diverged" if (1 - v["x"]) ** 2 + (1 - v["y"]) ** 2 < 0.15**2 else "grok"


def thin(offset: float, width: float) -> MapFn:
    """A band ``width`` high (narrower than the starting spacing), gently sloped."""

    def fn(v: dict[str, float], r: int) -> Label:
        inside = abs(v["y"] - (offset + 0.1 * v["x"])) < width / 2
        return "grok" if inside else "memorize"

    return fn


def noisy(band: float, flip: float, seed: int) -> MapFn:
    """The line, each trial's label flipped with probability ``flip`` within ``band`` of it."""

    def fn(v: dict[str, float], r: int) -> Label:
        label = line(v, r)
        if abs(v["y"] - (0.3 + 0.4 * v["x"])) < band:
            key = [round(v["x"] * 1e6), round(v["y"] * 1e6), r, seed]
            if np.random.default_rng(key).random() < flip:
                return "memorize" if label == "grok" else "grok"
        return label

    return fn


def step_1d(v: dict[str, float], r: int) -> Label:
    return "grok" if v["x"] > 0.37 else "memorize"


def thin_1d(offset: float, width: float) -> MapFn:
    def fn(v: dict[str, float], r: int) -> Label:
        return "grok" if abs(v["x"] - offset) < width / 2 else "memorize"

    return fn


@dataclass
class Row:
    name: str
    trials: int
    dense: int
    points_same: float
    cells_same: float
    levels: int
    worst_cells: float | None = None
    missed: str = ""
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.dense / self.trials


def measure(
    axes: tuple[Axis, ...],
    fn: MapFn,
    initial: int,
    depth: int,
    num_samples: int = 1,
    max_trials: int | None = None,
    trace: bool = False,
) -> tuple[Refinement, float, float]:
    ref = Refinement(
        axes, initial, depth, num_samples=num_samples, max_trials=max_trials, trace=trace
    )
    refine(ref, fn)
    truth = dense_points(axes, ref.resolution, fn, num_samples)
    return (
        ref,
        agreement(ref.dense_points(), truth),
        agreement(ref.densify(), cell_labels(truth)),
    )


def single(name: str, axes: tuple[Axis, ...], fn: MapFn, args: argparse.Namespace, **kw) -> Row:
    ref, pts, cells = measure(axes, fn, args.initial, args.depth, trace=args.trace, **kw)
    dense = ref.resolution ** len(axes) * kw.get("num_samples", 1)
    note = "cut by max_trials" if ref.truncated else ""
    return Row(name, ref.trials, dense, pts, cells, ref.level + 1, note=note)


def offsets_row(
    name: str, axes: tuple[Axis, ...], make: Callable[[float], MapFn], args: argparse.Namespace
) -> Row:
    rng = np.random.default_rng(args.seed)
    trials, pts, cells, seen, levels = [], [], [], [], 0
    dense = 0
    for offset in rng.uniform(0.1, 0.85, args.offsets):
        fn = make(float(offset))
        ref, p, c = measure(axes, fn, args.initial, args.depth, trace=args.trace)
        dense = ref.resolution ** len(axes)
        trials.append(ref.trials)
        pts.append(p)
        cells.append(c)
        levels = max(levels, ref.level + 1)
        if any(ref.label(q) == "grok" for q in ref.points):
            seen.append(c)
    missed = args.offsets - len(seen)
    seen_note = f"; when seen {np.mean(seen):.1%} cells" if seen else ""
    return Row(
        name,
        round(float(np.mean(trials))),
        dense,
        float(np.mean(pts)),
        float(np.mean(cells)),
        levels,
        worst_cells=min(cells),
        missed=f"{missed}/{args.offsets}",
        note=f"means over offsets{seen_note}",
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--initial", type=int, default=5)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--offsets", type=int, default=20, help="random offsets of each thin map")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trace", action="store_true", help="Refinement(trace=True)")
    args = p.parse_args(argv)
    spacing = 1 / (args.initial - 1)

    rows = [
        single("2-D line", AXES_2D, line, args),
        single("2-D curve (sine)", AXES_2D, curve, args),
        single("2-D three regions", AXES_2D, three, args),
        single("2-D corner region r=0.15", AXES_2D, corner, args),
        offsets_row(
            f"2-D thin band w={0.5 * spacing:g}", AXES_2D, lambda o: thin(o, 0.5 * spacing), args
        ),
        offsets_row(
            f"2-D thin band w={0.2 * spacing:g}", AXES_2D, lambda o: thin(o, 0.2 * spacing), args
        ),
        single("2-D noisy band 0.06, flip 0.2", AXES_2D, noisy(0.06, 0.2, args.seed), args),
        single(
            "2-D noisy, 3 repeats",
            AXES_2D,
            noisy(0.06, 0.2, args.seed),
            args,
            num_samples=3,
        ),
        single("2-D line, max_trials 100", AXES_2D, line, args, max_trials=100),
        single("1-D step", AXES_1D, step_1d, args),
        offsets_row(
            f"1-D thin w={0.5 * spacing:g}", AXES_1D, lambda o: thin_1d(o, 0.5 * spacing), args
        ),
    ]
    rule = "trace" if args.trace else "corners"
    resolution = (args.initial - 1) * 2**args.depth + 1
    print(
        f"{rule}, initial {args.initial}, depth {args.depth}: R = {resolution} points per axis; "
        f"goal >= {GOAL_RATIO:g}x fewer trials, >= {GOAL_CELLS:.0%} cells same\n"
    )
    header = (
        f"{'map':<32} {'trials':>6} {'dense':>6} {'fewer':>6} {'points':>7} {'cells':>7} "
        f"{'worst':>7} {'missed':>6} {'levels':>6}  note"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        fails = r.ratio < GOAL_RATIO or r.cells_same < GOAL_CELLS
        worst = f"{r.worst_cells:7.1%}" if r.worst_cells is not None else " " * 7
        note = "; ".join(x for x in (r.note, "MISSES THE GOAL" if fails else "") if x)
        print(
            f"{r.name:<32} {r.trials:>6} {r.dense:>6} {r.ratio:>5.1f}x {r.points_same:>7.1%} "
            f"{r.cells_same:>7.1%} {worst} {r.missed:>6} {r.levels:>6}  {note}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
