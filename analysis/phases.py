"""Phase changes: loss curves with their sudden drops marked, and finite against infinite data.

    python -m analysis.phases STUDY_DIR [--trials ID ...]

``phase_curves.png``: one panel per trial, its loss curves on a log axis against steps; a task
whose answer has several positions (the digits of a sum) draws each position's validation loss
(solid) and training loss (dotted) in one colour scale, carry first; other tasks draw the
training (red) and validation (green) loss. Every phase change found (grok_tune/events.py,
phases.parquet) is a dot on its curve.

``phase_gap.png``: per task, one row per trial, the step of the largest phase change of the
training loss (●) and of the validation loss (■) joined by a line: with unlimited data they
coincide, with limited data and weight decay the validation drop comes long after the
training one (grokking). A curve without a phase change within the budget is a hollow marker
at the right edge, marked "none", and not joined to the other: a line is drawn only between two
phase changes (it reads as a lag).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes

from analysis.common import (
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
from grok_tune.remedies import ALL_REMEDY_SETTINGS
from grok_tune.study_files import TRIAL_ID

TASK = "task"
TRAIN_COLOR, VAL_COLOR = "tab:red", "tab:green"
MAX_COLUMNS = 3
MAX_PANELS = 12
POSITION = "_digit"  # the per-position curves: train_loss_digit0, ...


def has_phases(study: Study) -> bool:
    """Whether the figures apply: some phase change was found, or a task has positions."""
    positions = any(str(c).startswith(f"{m.STEPS_TO_MEMORIZE}_") for c in study.trials.columns)
    return positions or not study.phases.empty


def _positions(curve: pd.DataFrame) -> list[str]:
    prefix = f"{m.VAL_LOSS}_"
    names = [c[len(prefix) :] for c in curve.columns if c.startswith(prefix)]
    return [n for n in names if curve[f"{prefix}{n}"].notna().any()]


def _mark(ax: Axes, curve: pd.DataFrame, column: str, steps: pd.Series, color: str) -> int:
    """Dots on the curve at each phase change's step (the curve's value there, interpolated)."""
    if steps.empty:
        return 0
    values = np.interp(steps, curve[m.STEP], curve[column].astype(float))
    ax.scatter(steps, values, s=36, color=color, edgecolors="black", linewidths=0.6, zorder=5)
    return len(steps)


def _panel(
    ax: Axes, study: Study, trial: pd.Series, curve: pd.DataFrame, found: pd.DataFrame
) -> int:
    marks = 0
    positions = _positions(curve)
    if positions:
        cmap = colormaps["viridis"]
        for k, pos in enumerate(positions):
            color = cmap(k / max(1, len(positions) - 1) * 0.9)
            val, train = f"{m.VAL_LOSS}_{pos}", f"{m.TRAIN_LOSS}_{pos}"
            ax.plot(curve[m.STEP], curve[val], color=color, label=pos)
            ax.plot(curve[m.STEP], curve[train], color=color, linestyle=":", linewidth=1)
            for column in (val, train):
                marks += _mark(
                    ax, curve, column, found.loc[found["curve"] == column, "step"], color
                )
    else:
        for column, color, label in (
            (m.TRAIN_LOSS, TRAIN_COLOR, "train"),
            (m.VAL_LOSS, VAL_COLOR, "validation"),
        ):
            ax.plot(curve[m.STEP], curve[column], color=color, label=label)
            marks += _mark(ax, curve, column, found.loc[found["curve"] == column, "step"], color)
    ax.set_yscale("log")
    ax.set_xlabel("optimization steps")
    ax.set_ylabel("loss (nats)" + (": solid val, dotted train" if positions else ""))
    settings = describe_settings(trial, [c for c in study.distinguishing() if c in trial.index])
    ax.set_title(f"{trial[TASK]}\n{settings or trial[TRIAL_ID]}", fontsize=8)
    ax.legend(fontsize=6, loc="upper right", ncol=2 if len(positions) > 4 else 1)
    return marks


def default_trials(study: Study) -> list[str]:
    """As the accuracy curves: one trial per group of the map's axes (analysis.curves), or the
    first trials when none has finished."""
    from analysis import curves

    chosen, _ = curves.default_trials(study)
    return chosen or list(study.trials.sort_values(TRIAL_ID)[TRIAL_ID].head(MAX_PANELS))


def plot_phase_curves(
    study: Study, trial_ids: Sequence[str] | None = None, out: Path | None = None
) -> Drawn:
    ids = list(trial_ids) if trial_ids else default_trials(study)
    known = study.trials.set_index(TRIAL_ID)
    unknown = [t for t in ids if t not in known.index]
    if unknown:
        raise AnalysisError(
            f"unknown trial {', '.join(map(repr, unknown))}; allowed: {', '.join(known.index)}"
        )
    if not ids:
        raise AnalysisError(f"{study.path}: no trials")
    curves = {t: c.sort_values(m.STEP) for t, c in study.curves.groupby(TRIAL_ID)}
    cols = min(MAX_COLUMNS, len(ids))
    rows = math.ceil(len(ids) / cols)
    fig = new_figure(4.6 * cols, 3.6 * rows + 0.5)
    marks = lines = 0
    for i, tid in enumerate(ids):
        trial = known.loc[tid].copy()
        trial[TRIAL_ID] = tid
        curve = curves.get(tid)
        ax = fig.add_subplot(rows, cols, i + 1)
        if curve is None or curve.empty:
            ax.set_title(f"{tid}: no evaluations", fontsize=8)
            continue
        marks += _panel(ax, study, trial, curve, study.phases[study.phases[TRIAL_ID] == tid])
        lines += len(ax.get_lines())
    fig.suptitle(title(study, "loss curves, phase changes marked"), fontsize=10)
    path = save(fig, figure_path(study, out, "phase_curves.png"))
    return Drawn(path, n_points=marks, n_lines=lines)


def _row_label(study: Study, trial: pd.Series) -> str:
    """The trial's varying settings, its remedies in words (analysis.remedies) when they vary."""
    from analysis.remedies import remedy_name, varies_remedies

    remedy = set(ALL_REMEDY_SETTINGS)
    varying = [c for c in study.distinguishing() if c != TASK and c not in remedy]
    parts = [remedy_name(trial)] if varies_remedies(study) else []
    parts.append(describe_settings(trial, varying))
    return ", ".join(p for p in parts if p) or str(trial[TRIAL_ID])


def plot_phase_gap(study: Study, out: Path | None = None) -> Drawn:
    """Training against validation phase-change steps, per task and trial."""
    trials = study.trials.sort_values([TASK, *[c for c in study.varying() if c != TASK]])
    if trials.empty:
        raise AnalysisError(f"{study.path}: no trials")
    steps = trials[[m.TRAIN_PHASE_STEP, m.VAL_PHASE_STEP]].astype(float)
    finite = steps.to_numpy()[np.isfinite(steps.to_numpy())]
    budget = float(trials[m.STEP].max()) if m.STEP in trials else float(finite.max(initial=1))
    edge = max(budget, float(finite.max(initial=1))) * 1.6  # where "none" sits
    low = max(1.0, float(finite.min(initial=budget)) / 2)
    fig = new_figure(8.0, 1.2 + 0.38 * len(trials))
    ax = fig.add_subplot()
    labels, points = [], 0
    for row, (_, trial) in enumerate(trials.iterrows()):
        y = len(trials) - 1 - row
        train, val = trial[m.TRAIN_PHASE_STEP], trial[m.VAL_PHASE_STEP]
        xs = [edge if pd.isna(v) else float(v) for v in (train, val)]
        if not (pd.isna(train) or pd.isna(val)):  # a line is a lag: only between two changes
            ax.plot(xs, [y, y], color="grey", linewidth=1.5, zorder=1)
        for x, raw, marker, color in (
            (xs[0], train, "o", TRAIN_COLOR),
            (xs[1], val, "s", VAL_COLOR),
        ):
            face = "none" if pd.isna(raw) else color
            ax.scatter([x], [y], marker=marker, s=55, facecolors=face, edgecolors=color, zorder=3)
            points += 1
        # the accuracy events beside them: a phase change of the loss and the step accuracy
        # reaches the threshold need not coincide (memorization is often gradual)
        for event, marker, color in (
            (m.STEPS_TO_MEMORIZE, "^", TRAIN_COLOR),
            (m.STEPS_TO_GENERALIZE, "v", VAL_COLOR),
        ):
            if not pd.isna(trial.get(event)) and trial[event] > 0:
                ax.scatter([trial[event]], [y + 0.22], marker=marker, s=16, color=color,
                           alpha=0.6, zorder=2)  # fmt: skip
        labels.append(f"{trial[TASK]}: {_row_label(study, trial)}")
    ax.set_yticks(range(len(trials)), labels[::-1], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlim(low, edge * 1.3)
    ax.axvline(budget, color="grey", linestyle=":", linewidth=1)
    # rows sit at 0..n-1; the margin above holds the memorize/generalize ticks and "none"
    ax.set_ylim(-0.6, len(trials) - 0.1)
    ax.text(edge, len(trials) - 0.35, "none", ha="center", va="center", fontsize=7, color="grey")
    plain_log_axis(ax.xaxis, steps=True)
    ax.set_xlabel(
        "step of the largest phase change: ● training loss, ■ validation loss\n"
        f"(small: ▲ memorized, ▼ generalized at accuracy {study.rule.threshold:g})"
    )
    ax.set_title(title(study, "training vs validation phase change"), fontsize=10)
    path = save(fig, figure_path(study, out, "phase_gap.png"))
    return Drawn(path, n_points=points, n_lines=len(trials))


def phase_table(study: Study) -> str:
    """Per trial: its largest train and validation phase changes, and the delay between."""
    trials = study.trials[study.trials[m.STATUS] != m.Status.PENDING]  # never ran: no curve
    trials = trials.sort_values([TASK, *[c for c in study.varying() if c != TASK]])
    lines = ["phase changes (largest drop of the training / validation loss; step, nats):"]
    neither = trials[trials[m.TRAIN_PHASE_STEP].isna() & trials[m.VAL_PHASE_STEP].isna()]
    if len(neither) > 10:  # a big study's confusion corner would bury the rows that say something
        trials = trials.drop(neither.index)
    for _, trial in trials.iterrows():
        parts = []
        for split, step_key, drop_key in (
            ("train", m.TRAIN_PHASE_STEP, m.TRAIN_PHASE_DROP),
            ("val", m.VAL_PHASE_STEP, m.VAL_PHASE_DROP),
        ):
            step, drop = trial[step_key], trial[drop_key]
            parts.append(f"{split} none" if pd.isna(step) else f"{split} {step:,.0f} ({drop:.2f})")
        train, val = trial[m.TRAIN_PHASE_STEP], trial[m.VAL_PHASE_STEP]
        gap = "" if pd.isna(train) or pd.isna(val) else f"; val - train {val - train:+,.0f}"
        lines.append(
            f"  {trial[TRIAL_ID]} {trial[TASK]} {_row_label(study, trial)}: "
            + ", ".join(parts)
            + gap
        )
        per_position = study.phases[
            (study.phases[TRIAL_ID] == trial[TRIAL_ID])
            & study.phases["curve"].str.startswith(f"{m.VAL_LOSS}_")
        ]
        if not per_position.empty:
            by = per_position.groupby("curve")["step"].apply(
                lambda s: ", ".join(f"{v:,.0f}" for v in s)
            )
            lines.append(
                "    per position (val): "
                + "; ".join(f"{c.removeprefix(m.VAL_LOSS + '_')} {s}" for c, s in by.items())
            )
    if len(neither) > 10:
        lines.append(f"  {len(neither)} more trials: no phase change in either loss")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("analysis.phases", __doc__)
    parser.add_argument("--trials", nargs="+", metavar="ID", help="trial ids (trials.parquet)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def body(study: Study, args: argparse.Namespace) -> list[Path]:
        print(phase_table(study))
        return [
            plot_phase_curves(study, args.trials, args.out).path,
            plot_phase_gap(study, args.out).path,
        ]

    return run_command(build_parser(), argv, body)


if __name__ == "__main__":
    raise SystemExit(main())


def phase_story(study: Study) -> str:
    """Nanda's reading, one line per trial: for a task whose answer has several positions, the
    order in which they learn (each position's first validation phase change, and the step it
    reached the accuracy threshold); for induction, the step the heads formed (the validation
    loss's largest cliff) and the loss before and after. Empty when no trial has either."""
    from grok_tune.regions import INDUCTION_RULE
    from grok_tune.tasks import task_class

    lines = []
    for _, trial in study.trials.sort_values(TRIAL_ID).iterrows():
        if trial[m.STATUS] == m.Status.PENDING:
            continue
        label = _row_label(study, trial)
        found = study.phases[study.phases[TRIAL_ID] == trial[TRIAL_ID]]
        if task_class(str(trial[TASK])).outcome == INDUCTION_RULE:
            val = found[found["curve"] == m.VAL_LOSS].sort_values("size", ascending=False)
            if val.empty:
                lines.append(f"  {label}: no induction-head cliff")
            else:
                top = val.iloc[0]
                lines.append(
                    f"  {label}: heads formed at step {top['step']:,.0f} (validation loss "
                    f"{top['loss_start']:.2f} -> {top['loss_end']:.2f})"
                )
            continue
        prefix = f"{m.VAL_LOSS}_"
        per_position = found[found["curve"].str.startswith(prefix)]
        generalized = {
            c[len(m.STEPS_TO_GENERALIZE) + 1 :]: trial[c]
            for c in trial.index
            if str(c).startswith(f"{m.STEPS_TO_GENERALIZE}_")
        }
        if per_position.empty and not generalized:
            continue
        first = per_position.sort_values("step").drop_duplicates("curve")
        cliffs = {row["curve"][len(prefix) :]: row["step"] for _, row in first.iterrows()}
        names = sorted(
            set(cliffs) | set(generalized),
            key=lambda n: (pd.isna(cliffs.get(n, np.nan)), cliffs.get(n, np.inf), n),
        )
        order = ", ".join(f"{n} {_at(cliffs.get(n))}/{_at(generalized.get(n))}" for n in names)
        lines.append(f"  {label}: {order}")
    if not lines:
        return ""
    head = (
        "what each trial learned when (per answer position: its first validation phase change / "
        "the step it reached the threshold, in the order they learned; '-': none within the "
        "budget; induction: the step the heads formed):"
    )
    return "\n".join([head, *lines])


def _at(step: object) -> str:
    return "-" if step is None or pd.isna(step) else f"{float(step):,.0f}"
