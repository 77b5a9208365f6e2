"""``python -m analysis STUDY_DIR``: every analysis that applies to the study, in one go.

The summary, the region map and the accuracy curves always; the loss curves with their phase
changes and the train/validation phase-change gap when phase changes were found; the remedy
comparison when the study varies a remedy; the fraction curve when the study varies the
training fraction; the output-layer t-SNE (``--mod auto``) when a trial has a
checkpoint (on S5, every trial's coset agreement in the summary, and the figure of the one that
clusters most by cosets as well); Optuna's importances for an Optuna study. Prints where
everything went.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from analysis import (
    curves,
    embeddings,
    fraction_curve,
    importance,
    phase_map,
    phases,
    remedies,
    summary,
)
from analysis.common import FRAC, AnalysisError, Study, base_parser, run_command
from grok_tune.study_files import CURVES_FILE, TRIALS_FILE, tensorboard_command


def _optional(what: str, draw: Callable[[], Path], skipped: list[str]) -> list[Path]:
    """A figure that may not apply to this study, or that its trials cannot give yet (an
    interrupted study): a line saying why instead of a failure, and the other figures still
    drawn."""
    try:
        return [draw()]
    except AnalysisError as err:
        skipped.append(f"skipped {what}: {err}")
        print(skipped[-1])
        return []


def run_all(study: Study, out: Path | None = None) -> dict[str, Path]:
    """Every analysis that applies, by name ("summary", "region map", ...); what could not be
    drawn is said, one line each, in the summary file's last lines and on the terminal."""
    skipped: list[str] = []
    figures: dict[str, Callable[[], Path]] = {
        "region map": lambda: phase_map.plot_phase_map(study, out=out).path,
        "curves": lambda: curves.plot_curves(study, out=out).path,
    }
    if phases.has_phases(study):
        figures["phase curves"] = lambda: phases.plot_phase_curves(study, out=out).path
        figures["phase gap"] = lambda: phases.plot_phase_gap(study, out=out).path
    if remedies.varies_remedies(study):
        figures["remedies"] = lambda: _print_then(
            remedies.format_remedy_table(remedies.remedy_table(study)),
            lambda: remedies.plot_remedies(study, out=out).path,
        )
    if study.trials[FRAC].nunique() > 1:
        figures["fraction curve"] = lambda: _print_then(
            fraction_curve.format_table(fraction_curve.fraction_table(study)),
            lambda: fraction_curve.plot_fraction_curve(study, out=out).path,
        )
    figures["embeddings"] = lambda: (
        embeddings.plot_embeddings(study, mod=embeddings.AUTO, out=out).path
    )
    try:
        fits = embeddings.coset_fits(study)
        notes = embeddings.coset_lines(fits)
    except AnalysisError as err:
        fits, notes = [], [f"skipped the S5 coset check: {err}"]
    if fits:  # S5: the run whose rows cluster most by cosets too, where it is another
        best = max(fits, key=lambda f: f.fit.agreement).trial_id
        if best != embeddings.default_trial(study):
            figures["embeddings (best coset agreement)"] = lambda: (
                embeddings.plot_embeddings(study, trial_id=best, out=out).path
            )
    if study.is_optuna:
        figures["importance"] = lambda: importance.plot_importance(study, out).path
        figures["objective map"] = lambda: (
            phase_map.plot_phase_map(study, out=out, colour="objective").path
        )
    paths: dict[str, Path] = {}
    for what, draw in figures.items():
        for path in _optional(what, draw, skipped):
            paths[what] = path
    return {"summary": summary.write_summary(study, out, [*notes, *skipped]), **paths}


def _print_then(table: str, draw: Callable[[], Path]) -> Path:
    print(table)
    return draw()


def build_parser() -> argparse.ArgumentParser:
    return base_parser("analysis", __doc__)


def main(argv: Sequence[str] | None = None) -> int:
    def body(study: Study, args: argparse.Namespace) -> list[Path]:
        paths = run_all(study, args.out)
        # the study's outputs in one block at the end, where a user looks first
        print(f"\nstudy {study.name}: {study.path}")
        print(f"  region map:  {paths.get('region map', 'not drawn (see above)')}")
        print(f"  results:     {study.path / TRIALS_FILE}")
        print(f"               {study.path / CURVES_FILE}")
        print(f"  TensorBoard: {tensorboard_command(study.path)}")
        print(f"  {len(paths)} files written:")
        return list(paths.values())

    return run_command(build_parser(), argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
