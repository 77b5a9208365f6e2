"""Boundary search: spend a phase map's trials where the region changes.

A dense grid of R points per axis spends almost all of its trials far from the boundaries
between regions. Here a coarse grid is refined where the label changes, on a dyadic lattice:

- Every point has integer lattice coordinates, 0 .. R - 1 per axis, with
  ``R = (initial - 1) * 2**depth + 1``: the resolution of the dense grid this replaces. A point
  shared by several cells is one point, evaluated once.
- Level 0 is the starting grid, ``initial`` points per axis, ``2**depth`` lattice units apart.
  After each level, every cell of that level whose corner labels are not all "the same" is split
  in 2**d (d = number of axes): with two axes its four edge midpoints and its centre become new
  points (some already there from a neighbour), with one axis its midpoint. Cells whose corners
  agree are not visited again. After ``depth`` levels the cells along a boundary are one lattice
  unit wide: the result reads as the dense grid in which only cells near a boundary were run.
- What a coarse cell hides is missed: a region thinner than the starting spacing that passes
  between the level-0 points, or a bump that leaves a cell through the edge it came in by.
  ``bench/boundary.py`` measures how often.
- ``trace=True`` (off by default) also splits a cell whose corners agree when a point on its
  edges, added by a neighbour's split, disagrees: a thin region seen once is then followed
  along (in the bench: a thin band the starting grid saw is mapped exactly instead of 94% of
  cells right, a noisy boundary 99.2% instead of 97.5%, smooth maps cost the same). The price
  is latency: a reopened coarse cell has its own levels still to go, so a map can take more
  than ``depth`` levels (up to 16 instead of 3 in the bench), each a wait for its slowest trial.

Rules (each chosen here, each checked in tests/test_boundary.py):

- "The same" is the same group: ``groups`` maps a label to a group name (e.g. grok and
  generalize -> "learned"), every other label is its own group. A cell whose corners differ
  only within a group is not split and is labelled with the group's name.
- Repeats (``num_samples``, seeds base + 0, 1, ...): a point's label is the majority of its
  repeats, ties to the earliest label in ``grok_tune.regions.REGIONS`` (analysis.common's
  ``majority`` rule), labels outside REGIONS after them, by name. Errored repeats (label None)
  do not vote.
- A point with no valid label is unknown: it is ignored when deciding whether a cell splits
  (an errored trial is no evidence of a boundary, and splitting around it would spend trials
  on a crash), and a cell is labelled by its known corners. A cell with no known corner is
  ``UNKNOWN``. Unknown points are not run again.
- ``max_trials`` (trials = points x repeats) is never exceeded. The starting grid must fit. When
  a level's splits do not all fit, cells are taken greedily in a fixed order (most distinct
  groups among their corners first, then the largest cells; among equals, lattice order visited
  in bit-reversed rank, so that any prefix is spread along the boundary instead of piled at one
  end), each taken if its new points still fit, and refinement ends after that level
  (``truncated``): going deeper on part of a boundary would leave an uneven map. The cells left
  unsplit stay ``MIXED`` at their coarse size. ``BoundaryPlan`` shares it between maps.
- Boundaries: along every lattice line parallel to an axis (for one axis: the axis itself),
  each pair of neighbouring evaluated points whose labels differ in group is a ``Crossing``
  between their two values; its width (hi - lo, in the axis's units) is the uncertainty: one
  final cell where the refinement reached full depth, more where it was cut short.

The pure part (``Axis``, ``Refinement``, ``refine``, ``BoundaryPlan`` and the dense-grid
helpers) needs neither Ray nor torch. ``BoundarySearcher`` is ``BoundaryPlan`` as a Ray Tune
``Searcher``; Ray is imported when that name is first used.
"""

from __future__ import annotations

import itertools
import math
import pickle
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from grok_tune import metrics as m
from grok_tune.regions import DEFAULT_RULE, REGIONS

Coord = tuple[int, ...]
Label = str | None

MIXED = "mixed"  # a cell whose corners fall in more than one group
UNKNOWN = "unknown"  # a cell none of whose corners has a valid label
FINISHED = "FINISHED"  # ray.tune.search.Searcher.FINISHED, checked where the searcher is built
SEED = "seed"  # the TrainConfig setting a repeat changes

# The searcher's record of each trial (records()); trial configs carry none of these.
TRIAL_ID = "trial_id"
MAP = "boundary_map"
POINT = "boundary_point"
LEVEL = "boundary_level"
REPEAT = "boundary_repeat"
LABEL = "boundary_label"

_REGION_RANK = {str(r): i for i, r in enumerate(REGIONS)}


@dataclass(frozen=True)
class Axis:
    """One axis of a map: a setting from ``lo`` to ``hi``, refined in log space if ``log``."""

    name: str
    lo: float
    hi: float
    log: bool = False

    def __post_init__(self) -> None:
        if not self.lo < self.hi:
            raise ValueError(
                f"axis {self.name}: the range is empty or inverted: {self.lo} >= {self.hi}"
            )
        if self.log and self.lo <= 0:
            raise ValueError(f"axis {self.name}: a log axis needs lo > 0, got {self.lo}")

    def value(self, t: float) -> float:
        """The setting at fraction ``t`` of the axis; the ends exactly ``lo`` and ``hi``."""
        if t <= 0:
            return float(self.lo)
        if t >= 1:
            return float(self.hi)
        if self.log:
            a, b = math.log(self.lo), math.log(self.hi)
            return math.exp(a + t * (b - a))
        return self.lo + t * (self.hi - self.lo)

    def middle(self, a: float, b: float) -> float:
        """The middle of two values of this axis (geometric on a log axis)."""
        return math.sqrt(a * b) if self.log else (a + b) / 2


@dataclass(frozen=True)
class Cell:
    """A cell of the refined map: ``size`` lattice units wide from ``origin``.

    ``corners`` are the corner points' labels in ``itertools.product((0, 1), repeat=d)`` order
    (None: unknown); ``label`` is their common label, their group's name, ``MIXED`` or
    ``UNKNOWN``; ``bounds`` are (lo, hi) per axis in the axes' units.
    """

    origin: Coord
    size: int
    corners: tuple[Label, ...]
    label: str
    bounds: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Crossing:
    """A boundary crossed along ``axis`` between two neighbouring evaluated points.

    ``at`` holds the other axes' values (the lattice line; empty for a one-axis map);
    ``lo``/``hi`` the crossing's two points on ``axis``, labelled ``below`` and ``above``.
    """

    axis: str
    at: dict[str, float]
    lo: float
    hi: float
    below: str
    above: str
    position: float  # the middle of lo and hi (geometric on a log axis)

    @property
    def width(self) -> float:
        """The uncertainty: where between ``lo`` and ``hi`` the boundary lies is unknown."""
        return self.hi - self.lo


def majority_label(labels: Iterable[Label]) -> Label:
    """The most common valid label, ties to the earliest in REGIONS order; None if none."""
    counts = Counter(label for label in labels if label is not None)
    if not counts:
        return None
    best = max(counts.values())
    tied = [label for label, n in counts.items() if n == best]
    return min(tied, key=lambda label: (_REGION_RANK.get(label, len(REGIONS)), label))


def label_region(result: Mapping[str, Any]) -> Label:
    """The default ``label_of``: a trial's last result -> its region (grok_tune.regions).

    None (unknown) for a trial that errored or never finished (status still running, as when
    something outside the trial stopped it): its events are not final.
    """
    status = result.get(m.STATUS)
    if status not in (m.Status.GENERALIZED, m.Status.CENSORED, m.Status.DIVERGED):
        return None
    region = DEFAULT_RULE.classify(
        result.get(m.STEPS_TO_MEMORIZE),
        result.get(m.STEPS_TO_GENERALIZE),
        status == m.Status.DIVERGED,
    )
    return str(region)


def _bit_reversed(i: int, bits: int) -> int:
    return int(format(i, f"0{bits}b")[::-1], 2) if bits else 0


class Refinement:
    """The refinement of one map, driven from outside: no trials run here.

    Loop: evaluate ``requests()`` (``values(point)`` and the repeat), ``record`` each label;
    once ``level_complete``, ``advance()``; ``finished`` when nothing is left to split.
    ``trace`` (off by default) also splits a cell whose corners agree when a point on its edges,
    added by a neighbour's split, disagrees with them: a region that crosses a coarse cell
    between its corners (a thin band, a bump) is then followed from where it was first seen,
    at the cost of more trials and of levels beyond ``depth`` (a reopened coarse cell still has
    its own levels to go).
    """

    def __init__(
        self,
        axes: Sequence[Axis],
        initial: int = 5,
        depth: int = 3,
        *,
        num_samples: int = 1,
        groups: Mapping[str, str] | None = None,
        max_trials: int | None = None,
        trace: bool = False,
    ) -> None:
        self.axes = tuple(axes)
        names = [a.name for a in self.axes]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"axes: at least one, names distinct; got {names}")
        if initial < 2 or depth < 0 or num_samples < 1:
            raise ValueError(
                f"initial = {initial} (>= 2), depth = {depth} (>= 0), "
                f"num_samples = {num_samples} (>= 1)"
            )
        self.initial, self.depth, self.num_samples = initial, depth, num_samples
        self.groups = dict(groups or {})
        self.max_trials = max_trials
        self.trace = trace
        self.resolution = (initial - 1) * 2**depth + 1
        step = 2**depth
        first = [
            tuple(step * i for i in c) for c in itertools.product(range(initial), repeat=self.dim)
        ]
        if max_trials is not None and len(first) * num_samples > max_trials:
            raise ValueError(
                f"max_trials = {max_trials} does not fit the starting grid: "
                f"{len(first)} points x {num_samples} repeats"
            )
        self.level = 0
        self.truncated = False  # a level's splits were cut by max_trials
        self.finished = False
        self._votes: dict[Coord, dict[int, Label]] = {}
        self._level_of: dict[Coord, int] = {}
        self._level_points: list[Coord] = []
        # the refined map's cells, origin -> size; a split replaces a cell by its 2**d children.
        # Without trace only the newest cells can be mixed (older ones' corners never change).
        self._leaves: dict[Coord, int] = {
            tuple(step * i for i in c): step
            for c in itertools.product(range(initial - 1), repeat=self.dim)
        }
        self._ask(first)

    # --- the loop -----------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return len(self.axes)

    @property
    def trials(self) -> int:
        """Trials asked for so far (points x repeats), recorded or not."""
        return len(self._votes) * self.num_samples

    def requests(self) -> list[tuple[Coord, int]]:
        """The current level's (point, repeat) pairs not yet recorded, in lattice order."""
        return [
            (p, r)
            for p in self._level_points
            for r in range(self.num_samples)
            if r not in self._votes[p]
        ]

    def values(self, point: Coord) -> dict[str, float]:
        """The axes' settings at a lattice point."""
        n = self.resolution - 1
        return {a.name: a.value(i / n) for a, i in zip(self.axes, point, strict=True)}

    def record(self, point: Coord, repeat: int, label: Label) -> None:
        """One repeat's label (None: the trial errored)."""
        if point not in self._votes or not 0 <= repeat < self.num_samples:
            raise ValueError(f"point {point} repeat {repeat} was never asked for")
        if repeat in self._votes[point]:
            raise ValueError(f"point {point} repeat {repeat} is already recorded")
        if label in (MIXED, UNKNOWN):
            raise ValueError(f"{label!r} names a kind of cell, not a label")
        self._votes[point][repeat] = None if label is None else str(label)

    @property
    def level_complete(self) -> bool:
        return not self.requests()

    def advance(self) -> list[Coord]:
        """Split the cells whose labels differ; the next level's new points, [] when done."""
        if not self.level_complete:
            raise RuntimeError(f"level {self.level} has {len(self.requests())} trials to record")
        if self.finished:
            return []
        candidates = [
            (o, s) for o, s in sorted(self._leaves.items()) if s > 1 and self._mixed(o, s)
        ]
        chosen = [] if self.truncated else self._select(candidates)
        if not chosen:
            self.finished = True
            return []
        new: set[Coord] = set()
        for origin, size in chosen:
            half = size // 2
            del self._leaves[origin]
            for corner in itertools.product((0, 1), repeat=self.dim):
                self._leaves[_add(origin, corner, half)] = half
            new.update(self._split_points(origin, half))
        self.level += 1
        self._ask(sorted(new))
        return self._level_points

    # --- reading the result -------------------------------------------------------------------
    def label(self, point: Coord) -> Label:
        """A point's label: the majority of its recorded repeats; None if none is valid."""
        return majority_label(self._votes.get(point, {}).values())

    def point_level(self, point: Coord) -> int:
        return self._level_of[point]

    @property
    def points(self) -> list[Coord]:
        """Every point asked for, in the order asked."""
        return list(self._votes)

    def group(self, label: str) -> str:
        return self.groups.get(label, label)

    def cells(self) -> list[Cell]:
        """The refined map: its leaf cells in lattice order, each at its own size."""
        return [self._cell(o, s) for o, s in sorted(self._leaves.items())]

    def densify(self) -> np.ndarray:
        """Labels of the dense grid's (R - 1)**d cells: each gets its refined cell's label."""
        out = np.full((self.resolution - 1,) * self.dim, UNKNOWN, dtype=object)
        for cell in self.cells():
            out[tuple(slice(o, o + cell.size) for o in cell.origin)] = cell.label
        return out

    def dense_points(self) -> np.ndarray:
        """Labels of the dense grid's R**d points: evaluated points their own, the others that
        of the finest uniform cell around them; None where nothing says (a cut-off mixed cell)."""
        out = np.full((self.resolution,) * self.dim, None, dtype=object)
        for cell in sorted(self.cells(), key=lambda c: -c.size):  # finer cells overwrite
            if cell.label not in (MIXED, UNKNOWN):
                out[tuple(slice(o, o + cell.size + 1) for o in cell.origin)] = cell.label
        for p in self._votes:
            label = self.label(p)
            if label is not None:
                out[p] = label
        return out

    def boundaries(self) -> dict[str, list[Crossing]]:
        """Per axis, every crossing along the lattice lines parallel to it (see the module)."""
        known = {p: label for p in self._votes if (label := self.label(p)) is not None}
        n = self.resolution - 1
        out: dict[str, list[Crossing]] = {}
        for k, axis in enumerate(self.axes):
            lines: dict[Coord, list[tuple[int, str]]] = defaultdict(list)
            for p, label in known.items():
                lines[p[:k] + p[k + 1 :]].append((p[k], label))
            others = [a for j, a in enumerate(self.axes) if j != k]
            found = []
            for line, points in sorted(lines.items()):
                at = {a.name: a.value(i / n) for a, i in zip(others, line, strict=True)}
                for (i, a), (j, b) in itertools.pairwise(sorted(points)):
                    if self.group(a) != self.group(b):
                        lo, hi = axis.value(i / n), axis.value(j / n)
                        found.append(Crossing(axis.name, at, lo, hi, a, b, axis.middle(lo, hi)))
            out[axis.name] = found
        return out

    # --- state --------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything, as plain lists and dicts (JSON-able); ``from_state`` reads it back."""
        return {
            "axes": [asdict(a) for a in self.axes],
            "initial": self.initial,
            "depth": self.depth,
            "num_samples": self.num_samples,
            "groups": dict(self.groups),
            "max_trials": self.max_trials,
            "trace": self.trace,
            "level": self.level,
            "truncated": self.truncated,
            "finished": self.finished,
            "points": [[list(p), self._level_of[p]] for p in self._votes],
            "votes": [
                [list(p), r, label] for p, v in self._votes.items() for r, label in v.items()
            ],
            "level_points": [list(p) for p in self._level_points],
            "leaves": [[list(o), s] for o, s in self._leaves.items()],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Refinement:
        ref = cls(
            [Axis(**a) for a in state["axes"]],
            state["initial"],
            state["depth"],
            num_samples=state["num_samples"],
            groups=state["groups"],
            max_trials=state["max_trials"],
            trace=state["trace"],
        )
        ref.level, ref.truncated, ref.finished = (
            state["level"],
            state["truncated"],
            state["finished"],
        )
        ref._votes = {tuple(p): {} for p, _ in state["points"]}
        ref._level_of = {tuple(p): level for p, level in state["points"]}
        for p, r, label in state["votes"]:
            ref._votes[tuple(p)][r] = label
        ref._level_points = [tuple(p) for p in state["level_points"]]
        ref._leaves = {tuple(o): s for o, s in state["leaves"]}
        return ref

    # --- inside -------------------------------------------------------------------------------
    def _ask(self, points: list[Coord]) -> None:
        self._level_points = points
        for p in points:
            self._votes[p] = {}
            self._level_of[p] = self.level

    def _corner_labels(self, origin: Coord, size: int) -> tuple[Label, ...]:
        return tuple(
            self.label(_add(origin, c, size)) for c in itertools.product((0, 1), repeat=self.dim)
        )

    def _groups_of(self, origin: Coord, size: int) -> set[str]:
        """The groups a cell's known points show: its corners, or with trace every point on it."""
        if self.trace:
            box = itertools.product(*(range(o, o + size + 1) for o in origin))
            labels = [self.label(p) for p in box if p in self._votes]
        else:
            labels = list(self._corner_labels(origin, size))
        return {self.group(x) for x in labels if x is not None}

    def _mixed(self, origin: Coord, size: int) -> bool:
        return len(self._groups_of(origin, size)) > 1

    def _split_points(self, origin: Coord, half: int) -> set[Coord]:
        """The points a split adds: its 3**d points on the half lattice, less those known."""
        pts = (_add(origin, c, half) for c in itertools.product((0, 1, 2), repeat=self.dim))
        return {p for p in pts if p not in self._votes}

    def _cell(self, origin: Coord, size: int) -> Cell:
        corners = self._corner_labels(origin, size)
        known = [x for x in corners if x is not None]
        if not known:
            label = UNKNOWN
        elif len(set(known)) == 1:
            label = known[0]
        else:
            groups = {self.group(x) for x in known}
            label = groups.pop() if len(groups) == 1 else MIXED
        n = self.resolution - 1
        bounds = tuple(
            (a.value(o / n), a.value((o + size) / n))
            for a, o in zip(self.axes, origin, strict=True)
        )
        return Cell(origin, size, corners, label, bounds)

    def _select(self, candidates: list[tuple[Coord, int]]) -> list[tuple[Coord, int]]:
        """The cells to split within max_trials (see the module for the order); sets truncated."""
        if self.max_trials is None:
            return candidates
        budget = self.max_trials - self.trials
        tiers: dict[tuple[int, int], list[tuple[Coord, int]]] = defaultdict(list)
        for o, s in candidates:  # most groups first, then the largest cells
            tiers[len(self._groups_of(o, s)), s].append((o, s))
        ranked: list[tuple[Coord, int]] = []
        for _, tier in sorted(tiers.items(), reverse=True):
            bits = (len(tier) - 1).bit_length()
            ranked += [
                c for _, c in sorted((_bit_reversed(i, bits), c) for i, c in enumerate(tier))
            ]
        chosen, new = [], set()
        for origin, size in ranked:
            extra = self._split_points(origin, size // 2) - new
            if (len(new) + len(extra)) * self.num_samples <= budget:
                chosen.append((origin, size))
                new |= extra
        if len(chosen) < len(candidates):
            self.truncated = True
        return sorted(chosen)


def _add(origin: Coord, offset: Iterable[int], scale: int) -> Coord:
    return tuple(o + scale * c for o, c in zip(origin, offset, strict=True))


LabelAt = Callable[[dict[str, float], int], Label]


def refine(refinement: Refinement, label_at: LabelAt) -> Refinement:
    """Run a refinement to the end with ``label_at(values, repeat)`` as the trial."""
    while True:
        for point, repeat in refinement.requests():
            refinement.record(point, repeat, label_at(refinement.values(point), repeat))
        if not refinement.advance():
            return refinement


def dense_points(
    axes: Sequence[Axis], resolution: int, label_at: LabelAt, num_samples: int = 1
) -> np.ndarray:
    """The dense grid run point by point: R**d majority labels (what refinement replaces)."""
    n = resolution - 1
    out = np.empty((resolution,) * len(axes), dtype=object)
    for point in itertools.product(range(resolution), repeat=len(axes)):
        values = {a.name: a.value(i / n) for a, i in zip(axes, point, strict=True)}
        out[point] = majority_label(label_at(values, r) for r in range(num_samples))
    return out


def cell_labels(points: np.ndarray, groups: Mapping[str, str] | None = None) -> np.ndarray:
    """A dense grid's cells from its points, with the refinement's cell rule."""
    groups = dict(groups or {})
    d = points.ndim
    out = np.empty(tuple(s - 1 for s in points.shape), dtype=object)
    for origin in itertools.product(*(range(s) for s in out.shape)):
        known = [
            x for c in itertools.product((0, 1), repeat=d) if (x := points[_add(origin, c, 1)])
        ]
        names = {groups.get(x, x) for x in known}
        if not known:
            out[origin] = UNKNOWN
        elif len(set(known)) == 1:
            out[origin] = known[0]
        else:
            out[origin] = names.pop() if len(names) == 1 else MIXED
    return out


def agreement(a: np.ndarray, b: np.ndarray, groups: Mapping[str, str] | None = None) -> float:
    """The share of entries whose labels fall in the same group (None only matches None)."""
    groups = dict(groups or {})
    same = [groups.get(x, x) == groups.get(y, y) for x, y in zip(a.ravel(), b.ravel(), strict=True)]
    return float(np.mean(same))


# --- many maps, and the trials behind them ----------------------------------------------------
def grid_maps(fixed: Mapping[str, Any], grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """One map per point of a study's grid settings (those that are not axes), in grid order."""
    names = list(grid)
    return [
        {**fixed, **dict(zip(names, values, strict=True))}
        for values in itertools.product(*(grid[n] for n in names))
    ]


@dataclass
class _Settings:
    maps: list[dict[str, Any]]
    axes: list[dict[str, Any]]
    initial: int
    depth: int
    max_trials: int | None
    num_samples: int
    groups: dict[str, str] = field(default_factory=dict)
    trace: bool = False


class BoundaryPlan:
    """Boundary search over several maps, as trials: the bookkeeping behind the Tune searcher.

    Each map (a dict of fixed settings) is refined on its own; a trial's config is the map's
    settings, the axes' values and ``seed`` (the map's ``seed``, default 0, plus the repeat).
    Which trial is which map, point and repeat stays here, keyed by trial id, so no extra key
    reaches the trainable. ``suggest`` hands out every point of each map's current level at
    once; None while a level is handed out but unfinished; FINISHED when every map is done.
    ``max_trials`` is shared between the maps in equal parts (the first maps take the
    remainder), so the plan does not depend on which map's trials finish first.
    """

    def __init__(
        self,
        maps: Sequence[Mapping[str, Any]],
        axes: Sequence[Axis],
        initial: int = 5,
        depth: int = 3,
        max_trials: int | None = None,
        num_samples: int = 1,
        label_of: Callable[[Mapping[str, Any]], Label] = label_region,
        groups: Mapping[str, str] | None = None,
        trace: bool = False,
    ) -> None:
        maps = [dict(x) for x in maps] or [{}]
        axes = list(axes)
        names = {a.name for a in axes}
        for i, fixed in enumerate(maps):
            if clash := sorted(names & set(fixed)):
                raise ValueError(f"map {i} fixes {clash}, which are axes")
            if fixed in maps[:i]:
                raise ValueError(f"map {i} repeats map {maps.index(fixed)}: {fixed}")
        self.settings = _Settings(
            maps, [asdict(a) for a in axes], initial, depth, max_trials, num_samples,
            dict(groups or {}), trace,
        )  # fmt: skip
        self.label_of = label_of
        shares = [None] * len(maps)
        if max_trials is not None:
            q, r = divmod(max_trials, len(maps))
            shares = [q + (i < r) for i in range(len(maps))]
        self.refinements = [
            Refinement(
                axes,
                initial,
                depth,
                num_samples=num_samples,
                groups=groups,
                max_trials=share,
                trace=trace,
            )
            for share in shares
        ]
        self._queue: list[tuple[int, Coord, int]] = []
        self._pending: dict[str, tuple[int, Coord, int]] = {}
        self._records: dict[str, dict[str, Any]] = {}
        for i in range(len(maps)):
            self._enqueue(i)

    @property
    def maps(self) -> list[dict[str, Any]]:
        return self.settings.maps

    def config(self, map_index: int, point: Coord, repeat: int) -> dict[str, Any]:
        fixed = self.maps[map_index]
        values = self.refinements[map_index].values(point)
        return {**fixed, **values, SEED: int(fixed.get(SEED, 0)) + repeat}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._queue:
            key = self._queue.pop(0)
            self._pending[trial_id] = key
            return self.config(*key)
        if not self._pending and all(r.finished for r in self.refinements):
            return FINISHED
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # only the final result labels a point

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        key = self._pending.pop(trial_id, None)
        if key is None:  # not handed out here, or already counted: nothing to learn
            return
        label = None if error or result is None else self.label_of(result)
        label = None if label is None else str(label)
        map_index, point, repeat = key
        ref = self.refinements[map_index]
        self._records[trial_id] = {
            TRIAL_ID: trial_id,
            MAP: map_index,
            POINT: point,
            LEVEL: ref.point_level(point),
            REPEAT: repeat,
            LABEL: label,
            **self.config(*key),
        }
        ref.record(point, repeat, label)
        if ref.level_complete:
            ref.advance()
            self._enqueue(map_index)

    @property
    def finished(self) -> bool:
        return not self._queue and not self._pending and all(r.finished for r in self.refinements)

    def pending(self) -> dict[str, tuple[int, Coord, int]]:
        """Trials handed out and not complete: trial id -> (map, point, repeat)."""
        return dict(self._pending)

    def records(self) -> list[dict[str, Any]]:
        """One row per completed trial, in completion order: trial id, map, point (lattice
        coordinates), level, repeat, label (None: errored or unknown), and the trial's config."""
        return [dict(row) for row in self._records.values()]

    # --- state: plain data, so that save/restore never pickles a class or a function ----------
    def get_state(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "refinements": [r.state() for r in self.refinements],
            "queue": [[i, list(p), r] for i, p, r in self._queue],
            "pending": {t: [i, list(p), r] for t, (i, p, r) in self._pending.items()},
            "records": [{**row, POINT: list(row[POINT])} for row in self._records.values()],
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue from ``get_state``'s data. Trials that were handed out and not complete stay
        pending under their ids: Tune resumes an unfinished trial under its old id (and the
        ConcurrencyLimiter in front of a searcher drops completions of ids it did not hand
        out). Points in the queue were never handed out, so they are handed out again."""
        if state["settings"] != asdict(self.settings):
            raise ValueError(
                "the saved boundary search has other settings than this one: "
                f"saved {state['settings']}, here {asdict(self.settings)}"
            )
        self.refinements = [Refinement.from_state(s) for s in state["refinements"]]
        self._queue = [(i, tuple(p), r) for i, p, r in state["queue"]]
        self._pending = {t: (i, tuple(p), r) for t, (i, p, r) in state["pending"].items()}
        self._records = {
            row[TRIAL_ID]: {**row, POINT: tuple(row[POINT])} for row in state["records"]
        }

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))

    def _enqueue(self, map_index: int) -> None:
        ref = self.refinements[map_index]
        self._queue += [(map_index, p, r) for p, r in ref.requests()]


def _make_searcher_class() -> type:
    from ray.tune.search import Searcher
    from ray.tune.search.variant_generator import _has_unresolved_values

    assert Searcher.FINISHED == FINISHED

    class BoundarySearcher(BoundaryPlan, Searcher):
        """``BoundaryPlan`` as a Ray Tune ``Searcher``.

        Use with ``TuneConfig(search_alg=..., num_samples=-1, max_concurrent_trials=N)``: the
        searcher ends the study (FINISHED), and without ``max_concurrent_trials`` Tune runs one
        trial at a time. ``param_space`` may add fixed settings, not distributions. Resume
        relies on Tune resuming unfinished trials under their ids (``Tuner.restore``'s default
        ``resume_unfinished=True``): a trial restarted under a new id would never be counted.
        """

        def __init__(
            self,
            maps: Sequence[Mapping[str, Any]],
            axes: Sequence[Axis],
            initial: int = 5,
            depth: int = 3,
            max_trials: int | None = None,
            num_samples: int = 1,
            label_of: Callable[[Mapping[str, Any]], Label] = label_region,
            groups: Mapping[str, str] | None = None,
            trace: bool = False,
            metric: str | None = None,
            mode: str | None = None,
        ) -> None:
            Searcher.__init__(self, metric=metric, mode=mode)
            BoundaryPlan.__init__(
                self, maps, axes, initial, depth, max_trials, num_samples, label_of, groups, trace
            )

        def set_search_properties(
            self, metric: str | None, mode: str | None, config: dict, **spec: Any
        ) -> bool:
            if config and _has_unresolved_values(config):
                return False  # Tune then says a searcher with its own space takes no domains
            self._metric = self._metric or metric
            self._mode = self._mode or mode
            return True

    BoundarySearcher.__module__ = __name__
    BoundarySearcher.__qualname__ = "BoundarySearcher"
    return BoundarySearcher


def __getattr__(name: str) -> Any:
    # the searcher subclasses Ray's Searcher: build it, importing Ray, only when asked for
    if name == "BoundarySearcher":
        cls = _make_searcher_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- a study file's boundary search ---------------------------------------------------------
def axes_of(spec: Any) -> list[Axis]:
    """A boundary study's axes (``StudySpec.axes``): its ranges, log ones refined in log space."""
    out = []
    for name, dist in spec.axes.items():
        log = hasattr(dist, "loguniform")
        lo, hi = dist.loguniform if log else dist.uniform
        out.append(Axis(name, float(lo), float(hi), log))
    return out


def maps_of(spec: Any) -> list[dict[str, Any]]:
    """One map per point of the study's grids (the settings that are not axes), fixed ones in
    each; no grid: one map."""
    grids = {k: d.grid for k, d in spec.distributions.items() if hasattr(d, "grid")}
    return grid_maps(spec.fixed, grids)


def groups_of(spec: Any) -> dict[str, str]:
    """``same: [[grok, generalize]]`` -> {"grok": "grok+generalize", "generalize": ...}."""
    return {str(label): "+".join(map(str, same)) for same in spec.same for label in same}


def plan_for(
    spec: Any, label_of: Callable[[Mapping[str, Any]], Label] = label_region
) -> BoundaryPlan:
    """The boundary search a study file (a ``StudySpec`` in mode boundary) describes, fresh."""
    return BoundaryPlan(
        maps_of(spec), axes_of(spec), spec.initial, spec.depth, spec.max_trials,
        spec.num_samples, label_of, groups_of(spec), spec.trace,
    )  # fmt: skip


def searcher_for(spec: Any) -> Any:
    """``plan_for``'s plan as a Ray Tune searcher (imports Ray)."""
    return _make_searcher_class()(
        maps_of(spec), axes_of(spec), spec.initial, spec.depth, spec.max_trials,
        spec.num_samples, label_region, groups_of(spec), spec.trace,
    )  # fmt: skip


def replay(spec: Any, label_at: Callable[[int, dict[str, float], int], Label]) -> BoundaryPlan:
    """The refinement a finished study ran, rebuilt from its trials' labels: the same levels,
    points and cells as its searcher made, for analysis to draw without Ray's state.
    ``label_at(map index, axis values, repeat)`` is a trial's label (None: no such trial, or
    it errored). With labels under another region rule than the study's, the replay follows
    the labels it is given: points it asks for that never ran are unknown."""
    plan = plan_for(spec)
    for i, ref in enumerate(plan.refinements):
        refine(ref, lambda values, repeat, i=i: label_at(i, values, repeat))
    return plan
