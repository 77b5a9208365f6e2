"""Which hyperparameters mattered for the objective: Optuna's importances, as a bar chart.

    python -m analysis.importance STUDY_DIR

Reads the study's Optuna journal (``optuna.journal``, written by mode ``optuna`` studies) and
runs ``optuna.importance.get_param_importances`` (fANOVA) over its completed trials.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from analysis.common import (
    AnalysisError,
    Drawn,
    Study,
    base_parser,
    figure_path,
    new_figure,
    run_command,
    save,
)
from grok_tune import metrics as m
from grok_tune.study_files import OPTUNA_FILE

MIN_TRIALS = 2


@dataclass(frozen=True)
class ImportanceDrawn(Drawn):
    importances: dict[str, float] = field(default_factory=dict)


def load_optuna_study(study: Study) -> optuna.Study:
    journal = study.path / OPTUNA_FILE
    if not journal.is_file():
        raise AnalysisError(
            f"{study.path}: no {OPTUNA_FILE}: importances need a study run with mode: optuna"
        )
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    try:
        return optuna.load_study(study_name=study.name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise AnalysisError(
            f"{journal}: no Optuna study named {study.name!r}; it holds: {', '.join(names)}"
        ) from None


def importances(study: Study) -> dict[str, float]:
    """Each searched setting's share of the objective's variance (fANOVA), largest first."""
    ot = load_optuna_study(study)
    complete = ot.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < MIN_TRIALS:
        raise AnalysisError(
            f"{study.path}: {len(complete)} complete Optuna trial(s): importances need at least "
            f"{MIN_TRIALS}"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return dict(optuna.importance.get_param_importances(ot))


# |Spearman's rho| above which two searched settings moved together in the sample: fANOVA then
# splits one effect between them as it happens to, and their importances cannot be told apart
CORRELATED = 0.7


def complete_trials(study: Study) -> list[optuna.trial.FrozenTrial]:
    ot = load_optuna_study(study)
    return ot.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def correlated_pairs(study: Study) -> list[tuple[str, str, float]]:
    """Pairs of numeric searched settings whose sampled values correlate (Spearman)."""
    import pandas as pd

    params = pd.DataFrame([t.params for t in complete_trials(study)])
    numeric = params.select_dtypes("number")
    if len(numeric) < 3 or numeric.shape[1] < 2:
        return []
    rho = numeric.corr(method="spearman")
    names = list(rho.columns)
    return [
        (a, b, float(rho.loc[a, b]))
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if abs(rho.loc[a, b]) >= CORRELATED
    ]


def importance_report(study: Study) -> str:
    """Importances with what they rest on: the number of trials, how many of them TPE drew at
    random, and a caution where two searched settings moved together in the sample."""
    scores = importances(study)
    n = len(complete_trials(study))
    objective = study.spec.objective if study.spec else None
    metric = f"{objective.metric} ({objective.mode})" if objective else m.OBJECTIVE
    lines = [f"importance for {metric} (fANOVA over {n} complete trials):"]
    if study.spec is not None:
        lines.append(f"  {study.spec.startup_note()}")
    lines += [f"  {name}: {score:.2f}" for name, score in scores.items()]
    for a, b, rho in correlated_pairs(study):
        lines.append(
            f"  caution: {a} and {b} moved together in this sample (Spearman {rho:+.2f}): "
            "their importances cannot be told apart"
        )
    return "\n".join(lines)


def plot_importance(study: Study, out: Path | None = None) -> ImportanceDrawn:
    scores = importances(study)
    n = len(complete_trials(study))
    objective = study.spec.objective if study.spec else None
    metric = f"{objective.metric} ({objective.mode})" if objective else m.OBJECTIVE
    names = list(scores)[::-1]  # largest at the top
    fig = new_figure(6.5, 1.2 + 0.45 * max(1, len(names)))
    ax = fig.add_subplot()
    bars = ax.barh(names, [scores[n] for n in names], color="#5e3c99")
    ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    ax.set_xlim(0, max([*scores.values(), 0.01]) * 1.15)
    ax.set_xlabel("importance (fANOVA, sums to 1)")
    ax.set_title(
        f"{study.name}: hyperparameter importance for {metric}\n(fANOVA over {n} complete trials)",
        fontsize=10,
    )
    path = save(fig, figure_path(study, out, "importance.png"))
    return ImportanceDrawn(path, n_points=len(names), importances=scores)


def build_parser() -> argparse.ArgumentParser:
    return base_parser("analysis.importance", __doc__)


def main(argv: Sequence[str] | None = None) -> int:
    def body(study: Study, args: argparse.Namespace) -> list[Path]:
        drawn = plot_importance(study, args.out)
        for name, score in drawn.importances.items():
            print(f"{name:>24}  {score:.3f}")
        return [drawn.path]

    return run_command(build_parser(), argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
