"""Steps to generalize against the training fraction: Power et al.'s Figure 2.

    python -m analysis.fraction_curve STUDY_DIR [--by NAME ...]

One line per operation (and per value of any other discrete setting the study varies, or of
``--by``): the median over seeds of the steps until validation accuracy first reached the
threshold. A trial that never got there is censored, not "generalized at the budget": the median
counts it as later than any step run, and a median that falls on a censored trial is drawn as a
hollow marker in the band above the budget, marked "censored". The table of (group, fraction,
trials, generalized, median steps) is printed too.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.transforms import blended_transform_factory

from analysis.common import (
    BUDGET,
    FRAC,
    LEARNED,
    OP,
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
from grok_tune.regions import REGION, Region

N_TRIALS = "trials"
N_GENERALIZED = "generalized"
MEDIAN = "median_steps"  # inf: censored (more than half never generalized)
CENSORED_BAND = 1.5  # censored medians sit this factor above the largest budget
CENSORED_STAGGER = 1.12


@dataclass(frozen=True)
class FractionDrawn(Drawn):
    n_censored: int = 0


def censored_median(steps: pd.Series) -> float:
    """Median of steps with censored trials (NaN) counted as later than any step: inf if it
    falls on one, since then it is only known to be beyond the budget."""
    return float(np.median(steps.fillna(np.inf).to_numpy())) if len(steps) else np.nan


def group_columns(study: Study, by: Sequence[str] | None) -> list[str]:
    if by:
        study.check_columns(by)
        return [OP, *[c for c in by if c not in (OP, FRAC)]]
    return [OP, *[c for c in study.groups(exclude=(FRAC,)) if c != OP]]


def fraction_table(study: Study, by: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (group, fraction): trials, generalized, censored-aware median steps."""
    done = study.finished
    if done.empty:
        raise AnalysisError(f"{study.path}: no finished trials")
    generalized = done[m.STEPS_TO_GENERALIZE].where(done[REGION] != Region.DIVERGED)
    done = done.assign(_gen=generalized.astype("float64"))
    keys = [*group_columns(study, by), FRAC]
    rows = [
        {
            **dict(zip(keys, key, strict=True)),
            N_TRIALS: len(g),
            N_GENERALIZED: int(g["_gen"].notna().sum()),
            MEDIAN: censored_median(g["_gen"]),
        }
        for key, g in done.groupby(keys, sort=True)
    ]
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    shown = table.assign(
        **{MEDIAN: [("censored" if np.isinf(v) else f"{v:,.0f}") for v in table[MEDIAN]]}
    )
    return shown.to_string(index=False)


def plot_fraction_curve(
    study: Study, by: Sequence[str] | None = None, out: Path | None = None
) -> FractionDrawn:
    if study.trials[FRAC].nunique() < 2:
        raise AnalysisError(f"{study.path}: the training fraction does not vary in this study")
    table = fraction_table(study, by)
    keys = group_columns(study, by)
    budget = float(study.finished[BUDGET].max())
    band = budget * CENSORED_BAND
    fig = new_figure(7.5, 4.8)
    ax = fig.add_subplot()
    groups = [g for _, g in table.groupby(keys, sort=True)]
    learned = study.finished[study.finished[REGION].isin(LEARNED)]
    n_censored = 0
    for i, group in enumerate(groups):
        first = group.iloc[0]
        trials = learned[(learned[keys] == first[keys]).all(axis=1)]
        # censored markers stagger upward so that no line's hides another's at the same fraction
        band_i = band * CENSORED_STAGGER**i
        label = describe_settings(first, keys)
        n_censored += _draw_group(ax, group, trials, label, band_i, f"C{i % 10}")
    top = band * CENSORED_STAGGER ** len(groups)
    ax.axhspan(budget, top, color="grey", alpha=0.1, linewidth=0)
    ax.axhline(budget, color="grey", linestyle=":", linewidth=1)
    right = blended_transform_factory(ax.transAxes, ax.transData)
    ax.text(1.01, band, "censored\n(> budget)", transform=right, va="bottom", fontsize=8)
    ax.text(1.01, budget, f"budget\n{budget:,.0f}", transform=right, va="top", fontsize=8)
    ax.set_yscale("log")
    finite = table.loc[~np.isinf(table[MEDIAN]), MEDIAN]
    ax.set_ylim(min([*finite, budget]) / 2, top)
    plain_log_axis(ax.yaxis, steps=True)
    ax.set_xlabel("training fraction")
    ax.set_ylabel(f"steps until val acc >= {study.rule.threshold:g} (median over seeds)")
    ax.set_title(title(study, "steps to generalize vs training fraction"), fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    path = save(fig, figure_path(study, out, "fraction_curve.png"))
    return FractionDrawn(path, n_points=len(table), n_lines=len(groups), n_censored=n_censored)


def _draw_group(
    ax: Axes, group: pd.DataFrame, learned: pd.DataFrame, label: str, band: float, color: str
) -> int:
    """One line of medians, broken where censored, with hollow markers in the censored band,
    and each of its generalized trials as a small faint dot: the spread behind the medians."""
    median = group[MEDIAN].to_numpy()
    censored = np.isinf(median)
    ax.plot(group[FRAC], np.where(censored, np.nan, median), "o-", color=color, label=label)
    ax.plot(
        group[FRAC][censored], np.full(censored.sum(), band), "o",
        markerfacecolor="none", markeredgecolor=color, markersize=9,
    )  # fmt: skip
    ax.scatter(learned[FRAC], learned[m.STEPS_TO_GENERALIZE], s=12, color=color, alpha=0.35)
    return int(censored.sum())


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("analysis.fraction_curve", __doc__)
    parser.add_argument("--by", nargs="+", metavar="NAME", help="settings that split the lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def body(study: Study, args: argparse.Namespace) -> list[Path]:
        print(format_table(fraction_table(study, args.by)))
        return [plot_fraction_curve(study, args.by, args.out).path]

    return run_command(build_parser(), argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
