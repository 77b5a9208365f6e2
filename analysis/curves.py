"""Train and validation accuracy against steps (log axis): Power et al.'s Figure 1.

    python -m analysis.curves STUDY_DIR [--trials ID ...]

One panel per trial, the steps at which it memorized and generalized marked by vertical lines.
By default one trial per cell of the region map (each combination of the map's axes: its first
seed), every cell up to 12, else 12 spread evenly over them; each panel's title names the
settings that tell the trials apart.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from analysis.common import (
    SEED,
    AnalysisError,
    Drawn,
    Study,
    base_parser,
    describe_settings,
    figure_path,
    new_figure,
    plain_log_axis,
    run_command,
    save,
    title,
)
from grok_tune import metrics as m
from grok_tune.regions import REGION
from grok_tune.study_files import TRIAL_ID

TRAIN_COLOR, VAL_COLOR = "tab:red", "tab:green"
MAX_COLUMNS = 3


@dataclass(frozen=True)
class CurvesDrawn(Drawn):
    trials: tuple[str, ...] = ()  # one panel each, in this order


MAX_PANELS = 12


def default_trials(study: Study) -> tuple[list[str], int]:
    """One finished trial per group of the map's axes (its lowest seed), at most MAX_PANELS
    spread evenly over the groups; and how many groups there are."""
    from analysis.phase_map import default_axes

    done = study.finished
    if done.empty:
        return [], 0
    try:
        keys = [a for a in default_axes(study) if a]
    except AnalysisError:  # nothing varies: one trial says it all
        keys = []
    order = [*keys, *([SEED] if SEED in done else []), TRIAL_ID]
    firsts = done.sort_values(order).drop_duplicates(keys or [REGION])
    groups = len(firsts)
    if groups > MAX_PANELS:  # a readable sample, spread over the whole range
        firsts = firsts.iloc[np.linspace(0, groups - 1, MAX_PANELS).round().astype(int)]
    return list(firsts[TRIAL_ID]), groups


def _panel(ax: Axes, study: Study, trial: pd.Series, curve: pd.DataFrame) -> None:
    curve = curve[curve[m.STEP] > 0]  # a log axis has no step 0
    ax.plot(curve[m.STEP], curve[m.TRAIN_ACC], color=TRAIN_COLOR, label="train")
    ax.plot(curve[m.STEP], curve[m.VAL_ACC], color=VAL_COLOR, label="validation")
    for event, color, name in (
        (m.STEPS_TO_MEMORIZE, TRAIN_COLOR, "memorized"),
        (m.STEPS_TO_GENERALIZE, VAL_COLOR, "generalized"),
    ):
        step = trial[event]
        if not pd.isna(step) and step > 0:
            label = f"{name} @ {int(step):,}"
            ax.axvline(step, color=color, linestyle="--", linewidth=1, label=label)
    ax.axhline(study.rule.threshold, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis, steps=True)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("optimization steps")
    ax.set_ylabel("accuracy")
    settings = describe_settings(trial, [c for c in study.distinguishing() if c in trial.index])
    ax.set_title(f"{settings or trial[TRIAL_ID]}\n{trial[REGION]} ({trial[m.STATUS]})", fontsize=9)
    ax.legend(fontsize=7, loc="best")


def plot_curves(
    study: Study, trial_ids: Sequence[str] | None = None, out: Path | None = None
) -> CurvesDrawn:
    ids, groups = (list(trial_ids), 0) if trial_ids else default_trials(study)
    if not ids:
        raise AnalysisError(f"{study.path}: no finished trial to draw")
    known = study.trials.set_index(TRIAL_ID)
    unknown = [t for t in ids if t not in known.index]
    if unknown:
        raise AnalysisError(
            f"unknown trial {', '.join(map(repr, unknown))}; allowed: {', '.join(known.index)}"
        )
    curves = {t: c.sort_values(m.STEP) for t, c in study.curves.groupby(TRIAL_ID)}
    cols = min(MAX_COLUMNS, len(ids))
    rows = math.ceil(len(ids) / cols)
    fig = new_figure(4.2 * cols, 3.4 * rows + 0.5)
    for i, tid in enumerate(ids):
        trial = known.loc[tid].copy()
        trial[TRIAL_ID] = tid
        _panel(fig.add_subplot(rows, cols, i + 1), study, trial, curves.get(tid, _EMPTY))
    shown = f" ({len(ids)} of {groups} groups, spread evenly)" if groups > len(ids) else ""
    fig.suptitle(title(study, f"accuracy during training{shown}"), fontsize=10)
    path = save(fig, figure_path(study, out, "curves.png"))
    return CurvesDrawn(path, n_lines=2 * len(ids), trials=tuple(ids))


_EMPTY = pd.DataFrame({m.STEP: [], m.TRAIN_ACC: [], m.VAL_ACC: []})


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("analysis.curves", __doc__)
    parser.add_argument("--trials", nargs="+", metavar="ID", help="trial ids (trials.parquet)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def body(study: Study, args: argparse.Namespace) -> list[Path]:
        return [plot_curves(study, args.trials, args.out).path]

    return run_command(build_parser(), argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
