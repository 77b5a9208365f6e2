"""A boundary study's map as what it is: each evaluated point, each cell at its own resolution.

``python -m analysis.phase_map STUDY_DIR`` draws a ``mode: boundary`` study with this module.
The refinement is rebuilt from the trials' regions (grok_tune/boundary.py ``replay``): the same
levels and cells the search made. A cell whose corners share a label is filled with its
colour; a cell whose corners differ (the boundary, at the final resolution where the search
reached it) is hatched grey, "mixed"; every evaluated point is a dot in its region's colour.
One panel per map (per point of the study's grid settings). The summary lists, per map and
axis, where the label changes and between which two values: the boundary's uncertainty is
that interval, one final cell wide where the refinement reached full depth.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_hex, to_rgb
from matplotlib.patches import Patch, Rectangle

from analysis.common import (
    NO_RESULT_COLOR,
    REGION_COLORS,
    AnalysisError,
    Drawn,
    Study,
    figure_path,
    fmt,
    majority,
    new_figure,
    plain_log_axis,
    title,
)
from grok_tune.boundary import MIXED, SEED, UNKNOWN, BoundaryPlan, Refinement, replay
from grok_tune.regions import REGION, REGIONS, Region

MIXED_COLOR = "#d9d9d9"
MAX_PANELS = 6


def is_boundary_study(study: Study) -> bool:
    return study.spec is not None and study.spec.mode == "boundary"


def _close(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def rebuild(study: Study) -> BoundaryPlan:
    """The study's refinement, replayed from its finished trials' regions."""
    spec = study.spec
    if spec is None or spec.mode != "boundary":
        raise AnalysisError(f"{study.path}: not a boundary study (mode: boundary)")
    done = study.finished
    plan_maps = None

    def label_at(i: int, values: dict[str, float], repeat: int) -> str | None:
        nonlocal plan_maps
        fixed = plan_maps[i]
        rows = done
        for key, value in fixed.items():
            if key in rows and key != SEED:
                rows = rows[[_same(v, value) for v in rows[key]]]
        for key, value in values.items():
            rows = rows[[_close(v, value) for v in rows[key]]]
        seed = int(fixed.get(SEED, 0)) + repeat
        rows = rows[rows[SEED] == seed]
        if rows.empty:
            return None
        return str(majority(rows[REGION])[0])

    from grok_tune.boundary import maps_of

    plan_maps = maps_of(spec)
    return replay(spec, label_at)


def _same(a: object, b: object) -> bool:
    if isinstance(a, float | int | np.floating | np.integer) and isinstance(b, float | int):
        return _close(float(a), float(b))
    return a == b


def _color(label: str) -> str:
    if label == MIXED:
        return MIXED_COLOR
    if label == UNKNOWN:
        return NO_RESULT_COLOR
    members = [REGION_COLORS[Region(m)] for m in label.split("+") if m in REGIONS]
    if not members:
        return "#999999"
    # a group (same: [[grok, generalize]]) is its members' colours mixed, apart from each alone
    return to_hex(np.mean([to_rgb(c) for c in members], axis=0))


def _panel(ax: Axes, ref: Refinement) -> tuple[int, int]:
    axes = ref.axes
    cells = ref.cells()
    for cell in cells:
        (x0, x1) = cell.bounds[0]
        y0, y1 = cell.bounds[1] if len(axes) > 1 else (0.0, 1.0)
        ax.add_patch(
            Rectangle(
                (x0, y0), x1 - x0, y1 - y0, facecolor=_color(cell.label),
                edgecolor="white", linewidth=0.6, hatch="//" if cell.label == MIXED else None,
                zorder=1,
            )
        )  # fmt: skip
    points = [p for p in ref.points if ref.label(p) is not None]
    for p in points:
        values = ref.values(p)
        x = values[axes[0].name]
        y = values[axes[1].name] if len(axes) > 1 else 0.5
        ax.scatter([x], [y], s=22, color=_color(ref.group(str(ref.label(p)))),
                   edgecolors="black", linewidths=0.5, zorder=3)  # fmt: skip
    ax.set_xlim(axes[0].lo, axes[0].hi)
    ax.set_xscale("log" if axes[0].log else "linear")
    ax.set_xlabel(axes[0].name)
    if len(axes) > 1:
        ax.set_ylim(axes[1].lo, axes[1].hi)
        ax.set_yscale("log" if axes[1].log else "linear")
        ax.set_ylabel(axes[1].name)
    else:
        ax.set_ylim(0, 1)
        ax.set_yticks([])
    for axis, spec_axis in ((ax.xaxis, axes[0]), (ax.yaxis, axes[-1])):
        if spec_axis.log and (axis is ax.xaxis or len(axes) > 1):
            plain_log_axis(axis)
    return len(cells), len(points)


def plot_boundary_map(study: Study, out: Path | None = None) -> Drawn:
    plan = rebuild(study)
    maps = plan.maps[:MAX_PANELS]
    cols = min(3, len(maps))
    rows = math.ceil(len(maps) / cols)
    two_d = len(plan.refinements[0].axes) > 1
    fig = new_figure(4.8 * cols + 1.2, (4.2 if two_d else 2.0) * rows + 0.6)
    n_cells = n_points = 0
    varying = [k for k in maps[0] if len({str(m_.get(k)) for m_ in plan.maps}) > 1]
    for i, fixed in enumerate(maps):
        ax = fig.add_subplot(rows, cols, i + 1)
        cells, points = _panel(ax, plan.refinements[i])
        n_cells, n_points = n_cells + cells, n_points + points
        ref = plan.refinements[i]
        label = ", ".join(f"{k}={fmt(fixed[k])}" for k in varying) or "the map"
        ax.set_title(f"{label}: {len(ref.points)} points, {len(ref.cells())} cells", fontsize=8)
    present = sorted({c.label for r in plan.refinements for c in r.cells()})
    handles = [Patch(facecolor=_color(lab), edgecolor="grey", label=lab,
                     hatch="//" if lab == MIXED else None) for lab in present]  # fmt: skip
    fig.legend(handles=handles, loc="outside right center", title="cells", fontsize=7)
    resolution = plan.refinements[0].resolution
    what = f"boundary search, cells at their own resolution (finest 1/{resolution - 1})"
    fig.suptitle(title(study, what), fontsize=9)
    axes_names = "_".join(a.name for a in plan.refinements[0].axes)
    path = figure_path(study, out, f"phase_map_{axes_names}_boundary.png")
    fig.savefig(path, dpi=120)
    return Drawn(path, n_cells=n_cells, n_points=n_points)


def boundary_summary(study: Study) -> str:
    """Per map and axis: the located boundaries, each between two values (its uncertainty)."""
    plan = rebuild(study)
    varying = [k for k in plan.maps[0] if len({str(m_.get(k)) for m_ in plan.maps}) > 1]
    dense = sum(r.resolution**r.dim for r in plan.refinements) * study.spec.num_samples
    ran = sum(r.trials for r in plan.refinements)
    lines = [f"boundary search: {ran} trials for what a dense grid does in {dense}"]
    for fixed, ref in zip(plan.maps, plan.refinements, strict=True):
        head = ", ".join(f"{k}={fmt(fixed[k])}" for k in varying) or "map"
        for axis, crossings in ref.boundaries().items():
            if not crossings:
                lines.append(f"  {head}: {axis}: no boundary found in range")
                continue
            seen = []
            for c in crossings:
                at = ", ".join(f"{k}={fmt(v)}" for k, v in c.at.items())
                seen.append(
                    f"{c.below} -> {c.above} between {fmt(c.lo)} and {fmt(c.hi)} "
                    f"(width {fmt(c.width)}{'; at ' + at if at else ''})"
                )
            lines.append(f"  {head}: {axis}: " + "; ".join(seen[:12]))
            if len(seen) > 12:
                lines.append(f"    ... and {len(seen) - 12} more crossings")
    return "\n".join(lines)
