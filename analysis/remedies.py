"""The remedies compared: steps to memorize and to generalize per remedy and weight decay.

    python -m analysis.remedies STUDY_DIR

``remedies.png``: one panel per weight decay; per remedy (Grokfast's filters, StableMax, the
float64 loss, ⊥Grad, a fixed weight norm, and any combination the study ran), every trial's
steps to memorize (▲) and to generalize (●), seeds as separate points, the median as a bar. A
trial that never generalized within its budget is censored: a hollow circle in the band above
the budget, never a point at the budget. The table (printed and in summary.txt): per remedy and
weight decay, trials, median steps to memorize and to generalize (censored-aware), censored.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.common import (
    BUDGET,
    AnalysisError,
    Drawn,
    Study,
    base_parser,
    figure_path,
    new_figure,
    plain_log_axis,
    run_command,
    save,
    title,
)
from analysis.fraction_curve import censored_median
from grok_tune import metrics as m
from grok_tune.remedies import REMEDY_SETTINGS, remedy_name

REMEDY = "remedy"
WEIGHT_DECAY = "weight_decay"
MEMORIZE_COLOR, GENERALIZE_COLOR = "#e66101", "#5e3c99"
CENSORED_BAND = 1.5


def varies_remedies(study: Study) -> bool:
    return any(c in study.trials and study.trials[c].nunique() > 1 for c in REMEDY_SETTINGS)


def with_remedies(study: Study) -> pd.DataFrame:
    done = study.finished
    if done.empty:
        raise AnalysisError(f"{study.path}: no finished trials")
    return done.assign(**{REMEDY: [remedy_name(r) for _, r in done.iterrows()]})


def _order(names: pd.Series) -> list[str]:
    seen = list(dict.fromkeys(names))
    return (["baseline"] if "baseline" in seen else []) + [n for n in seen if n != "baseline"]


def remedy_table(study: Study) -> pd.DataFrame:
    done = with_remedies(study)
    gen = done[m.STEPS_TO_GENERALIZE].where(done[m.STATUS] != m.Status.DIVERGED).astype(float)
    mem = done[m.STEPS_TO_MEMORIZE].astype(float)
    done = done.assign(_gen=gen, _mem=mem)
    rows = []
    for (remedy, wd), g in done.groupby([REMEDY, WEIGHT_DECAY], sort=False):
        rows.append(
            {
                REMEDY: remedy,
                WEIGHT_DECAY: wd,
                "trials": len(g),
                "median_memorize": censored_median(g["_mem"]),
                "median_generalize": censored_median(g["_gen"]),
                "censored": int(g["_gen"].isna().sum()),
                "diverged": int((g[m.STATUS] == m.Status.DIVERGED).sum()),
            }
        )
    table = pd.DataFrame(rows)
    order = {name: i for i, name in enumerate(_order(done[REMEDY]))}
    return table.sort_values(
        [WEIGHT_DECAY, REMEDY],
        key=lambda c: c.map(order) if c.name == REMEDY else c,
        ignore_index=True,
    )


def format_remedy_table(table: pd.DataFrame) -> str:
    def steps(v: float) -> str:
        return "censored" if np.isinf(v) else "n/a" if np.isnan(v) else f"{v:,.0f}"

    shown = table.assign(
        median_memorize=[steps(v) for v in table["median_memorize"]],
        median_generalize=[steps(v) for v in table["median_generalize"]],
    )
    return shown.to_string(index=False)


def plot_remedies(study: Study, out: Path | None = None) -> Drawn:
    done = with_remedies(study)
    names = _order(done[REMEDY])
    decays = sorted(done[WEIGHT_DECAY].unique())
    budget = float(done[BUDGET].max())
    band = budget * CENSORED_BAND
    fig = new_figure(max(6.0, 1.1 * len(names) * len(decays) + 2), 4.6)
    points = 0
    for k, wd in enumerate(decays):
        ax = fig.add_subplot(1, len(decays), k + 1)
        mine = done[done[WEIGHT_DECAY] == wd]
        for i, name in enumerate(names):
            g = mine[mine[REMEDY] == name]
            if g.empty:
                continue
            jitter = np.linspace(-0.12, 0.12, len(g)) if len(g) > 1 else np.zeros(1)
            mem = g[m.STEPS_TO_MEMORIZE].astype(float)
            gen = g[m.STEPS_TO_GENERALIZE].astype(float)
            ax.scatter(i - 0.15 + jitter, mem.fillna(band), marker="^", s=30,
                       facecolors=[MEMORIZE_COLOR if v == v else "none" for v in mem],
                       edgecolors=MEMORIZE_COLOR)  # fmt: skip
            ax.scatter(i + 0.15 + jitter, gen.fillna(band), marker="o", s=34,
                       facecolors=[GENERALIZE_COLOR if v == v else "none" for v in gen],
                       edgecolors=GENERALIZE_COLOR)  # fmt: skip
            points += 2 * len(g)
            median = censored_median(gen)
            if np.isfinite(median):
                ax.hlines(median, i + 0.0, i + 0.3, color=GENERALIZE_COLOR, linewidth=2)
        ax.axhspan(budget, band * 1.3, color="grey", alpha=0.1, linewidth=0)
        ax.axhline(budget, color="grey", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_ylim(
            max(1.0, float(done[m.STEPS_TO_MEMORIZE].min(skipna=True) or 10) / 2), band * 1.3
        )
        plain_log_axis(ax.yaxis, steps=True)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"weight decay {wd:g}", fontsize=9)
        if k == 0:
            ax.set_ylabel("steps: ▲ memorized, ● generalized\n(hollow, above the budget: censored)")
    fig.suptitle(title(study, "steps to memorize and to generalize, per remedy"), fontsize=10)
    path = save(fig, figure_path(study, out, "remedies.png"))
    return Drawn(path, n_points=points, n_cells=len(names) * len(decays))


def build_parser() -> argparse.ArgumentParser:
    return base_parser("analysis.remedies", __doc__)


def main(argv: Sequence[str] | None = None) -> int:
    def body(study: Study, args: argparse.Namespace) -> list[Path]:
        print(format_remedy_table(remedy_table(study)))
        return [plot_remedies(study, args.out).path]

    return run_command(build_parser(), argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
