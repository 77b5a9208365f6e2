"""The region of every setting over two hyperparameters: Liu et al.'s phase diagram.

    python -m analysis.phase_map STUDY_DIR [--x NAME] [--y NAME] [--scatter]
        [--colour region|objective]

A grid study gives cells: each one coloured by the majority region of its trials over seeds and
repeats (``k/n`` says how many agree; a tie goes to the earlier in REGIONS order) and annotated
with the median steps to generalize of those that generalized (``cens.`` when none did).
Sampled settings (random, Optuna) give points coloured by region; ``--scatter`` asks for points
whatever the study. The axes default to the two searched settings with the most distinct
values (seeds are repeats, not an axis), or an Optuna study's two most important settings by its
own importances; learning rate and weight decay are log axes. ``--colour objective`` colours
each trial by the study's objective instead of its region. A
``mode: boundary`` study is drawn as its refinement: cells at their own resolution
(analysis/boundary_map.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.patches import Patch

from analysis.boundary_map import is_boundary_study, plot_boundary_map
from analysis.common import (
    LEARNED,
    NO_RESULT_COLOR,
    REGION_COLORS,
    AnalysisError,
    Drawn,
    Study,
    base_parser,
    figure_path,
    fmt,
    majority,
    new_figure,
    plain_log_axis,
    run_command,
    save,
    text_color,
    title,
)
from grok_tune import metrics as m
from grok_tune.regions import REGION, REGIONS, Region
from grok_tune.space import is_log_scale


@dataclass(frozen=True)
class Cell:
    region: Region | None  # None: no finished trial (errored or still running)
    agree: int
    n: int
    median_steps: float | None  # among the trials that generalized; None: censored

    def label(self) -> str:
        if self.region is None:
            return "no result"
        if self.region == Region.INDUCTION:  # heads form at the validation loss's cliff
            steps = f"heads at {self.median_steps:,.0f}" if self.median_steps else ""
        else:
            steps = "cens." if self.median_steps is None else f"{self.median_steps:,.0f} steps"
        return f"{self.region} {self.agree}/{self.n}\n{steps}"


def default_axes(study: Study) -> tuple[str, str | None]:
    """An Optuna study's two most important settings (by its own importances); else the two
    searched settings with the most distinct values; seeds only when nothing else."""
    candidates = study.axes()
    candidates = sorted(candidates, key=lambda c: -study.trials[c].nunique())  # stable: file order
    if study.is_optuna and len(candidates) > 2:
        from analysis.importance import importances

        try:
            ranked = [c for c in importances(study) if c in candidates]
        except AnalysisError:  # too few complete trials: the plain rule
            ranked = []
        candidates = ranked + [c for c in candidates if c not in ranked]
    if not candidates:
        raise AnalysisError(
            f"{study.path}: no setting varies across the trials: nothing to map (python -m "
            "analysis.phase_map --x NAME draws one setting anyway)"
        )
    return candidates[0], (candidates[1] if len(candidates) > 1 else None)


def cell_of(done: pd.DataFrame) -> Cell:
    """A cell from its finished trials."""
    if done.empty:
        return Cell(None, 0, 0, None)
    region, agree = majority(done[REGION])
    if region == Region.INDUCTION:
        steps = done.loc[done[REGION] == region, m.VAL_PHASE_STEP].dropna()
    else:
        steps = done.loc[done[REGION].isin(LEARNED), m.STEPS_TO_GENERALIZE].dropna()
    return Cell(region, agree, len(done), float(steps.median()) if len(steps) else None)


def cells(study: Study, x: str, y: str | None) -> dict[tuple, Cell]:
    """(x value, y value or None) -> the cell's majority region, agreement and median steps."""
    finished = study.finished.index
    table = {}
    for key, group in study.trials.groupby([x] if y is None else [x, y], sort=True, dropna=False):
        xv, yv = (key[0], None) if y is None else key
        table[(xv, yv)] = cell_of(group[group.index.isin(finished)])
    return table


def _legend(ax: Axes, regions: Sequence[Region | None]) -> None:
    present = [r for r in REGIONS if r in regions]
    handles = [Patch(color=REGION_COLORS[r], label=str(r)) for r in present]
    if None in regions:
        handles.append(Patch(facecolor=NO_RESULT_COLOR, edgecolor="grey", label="no result"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), title="region")


def _draw_grid(ax: Axes, study: Study, x: str, y: str | None) -> int:
    table = cells(study, x, y)
    xs = sorted({k[0] for k in table})
    ys = sorted({k[1] for k in table}, key=lambda v: (v is None, v))
    image = np.ones((len(ys), len(xs), 3))
    size = max(6, 11 - max(len(xs), len(ys)) // 2)  # smaller text in many, smaller cells
    for (xv, yv), cell in table.items():
        i, j = ys.index(yv), xs.index(xv)
        color = REGION_COLORS[cell.region] if cell.region else NO_RESULT_COLOR
        image[i, j] = to_rgb(color)
        ax.text(
            j, i, cell.label(), ha="center", va="center", fontsize=size, color=text_color(color)
        )
    ax.imshow(image, origin="lower", aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(xs)), [fmt(v) for v in xs])
    ax.set_yticks(range(len(ys)), [fmt(v) for v in ys]) if y else ax.set_yticks([])
    ax.set_xticks(np.arange(len(xs) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(ys) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=2)
    ax.tick_params(which="minor", length=0)
    _legend(ax, [c.region for c in table.values()])
    return len(table)


def _numeric_axis(ax: Axes, which: str, values: pd.Series, name: str) -> pd.Series:
    """Values as positions on the axis: categories get codes, lr/wd a log (or symlog) scale."""
    set_scale, set_ticks = (
        (ax.set_xscale, ax.set_xticks) if which == "x" else (ax.set_yscale, ax.set_yticks)
    )
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        categories = sorted(values.astype(str).unique())
        set_ticks(range(len(categories)), categories)
        return values.astype(str).map(categories.index)
    if is_log_scale(name):
        positive = values[values > 0]
        if len(positive) == len(values):
            set_scale("log")
        elif len(positive):  # weight decay 0 next to positive values
            set_scale("symlog", linthresh=float(positive.min()))
    return values


# what a points map's colour shows: each trial's region, or the Optuna objective's value
COLOURS = ("region", "objective")


def _draw_points(ax: Axes, study: Study, x: str, y: str | None, colour: str = "region") -> int:
    done = study.finished
    xs = _numeric_axis(ax, "x", done[x], x)
    ys = _numeric_axis(ax, "y", done[y], y) if y else pd.Series(0.0, index=done.index)
    if y is None:
        ax.set_yticks([])
    if colour == "objective":
        metric = study.spec.objective.metric if study.spec else m.OBJECTIVE
        dots = ax.scatter(
            xs, ys, c=done[metric].astype(float), cmap="viridis", s=45,
            edgecolors="black", linewidths=0.4,
        )  # fmt: skip
        ax.figure.colorbar(dots, ax=ax, label=metric)
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                plain_log_axis(axis)
        return len(done)
    for region in REGIONS:
        mine = done[REGION] == region
        if mine.any():
            ax.scatter(
                xs[mine], ys[mine], c=REGION_COLORS[region], label=str(region),
                s=45, edgecolors="black", linewidths=0.4, alpha=0.85,
            )  # fmt: skip
    if len(done):
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), title="region")
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            plain_log_axis(axis)
    return len(done)


def plot_phase_map(
    study: Study,
    x: str | None = None,
    y: str | None = None,
    scatter: bool = False,
    out: Path | None = None,
    colour: str = "region",
) -> Drawn:
    """The region map over ``x`` (and ``y``); ``colour``: "objective" draws every trial as a
    point coloured by the study's objective (an Optuna study's view of what it optimized)."""
    if colour not in COLOURS:
        raise AnalysisError(f"--colour {colour}: one of {', '.join(COLOURS)}")
    scatter = scatter or colour == "objective"
    if x is None and y is None and not scatter and is_boundary_study(study):
        return plot_boundary_map(study, out)  # cells at their own resolution
    if x is None and y is None:
        x, y = default_axes(study)
    elif x is None:
        raise AnalysisError("--y needs --x")
    study.check_columns([c for c in (x, y) if c])
    if x == y:
        raise AnalysisError(f"--x and --y are both {x!r}: pick two settings")
    grid = not scatter and all(study.is_discrete(c) for c in (x, y) if c)
    fig = new_figure(7.5, 5.0 if y else 2.6)
    ax = fig.add_subplot()
    n = _draw_grid(ax, study, x, y) if grid else _draw_points(ax, study, x, y, colour)
    ax.set_xlabel(x)
    ax.set_ylabel(y or "")
    repeats = (
        "majority region over seeds/repeats, median steps to generalize"
        if grid
        else f"{colour} of each trial"
    )
    ax.set_title(title(study, repeats), fontsize=10)
    kind = [] if grid else ["points"] if colour == "region" else ["objective"]
    name = "_".join(["phase_map", x, *([y] if y else []), *kind]) + ".png"
    path = save(fig, figure_path(study, out, name))
    return Drawn(path, n_cells=n if grid else 0, n_points=0 if grid else n)


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("analysis.phase_map", __doc__)
    parser.add_argument("--x", help="setting on the x axis (default: see above)")
    parser.add_argument("--y", help="setting on the y axis")
    parser.add_argument("--scatter", action="store_true", help="points even for a grid")
    parser.add_argument(
        "--colour", default="region", choices=COLOURS, help="points by region or objective"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def body(study: Study, args: argparse.Namespace) -> list[Path]:
        return [plot_phase_map(study, args.x, args.y, args.scatter, args.out, args.colour).path]

    return run_command(build_parser(), argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
