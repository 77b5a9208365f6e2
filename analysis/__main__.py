"""``python -m analysis STUDY_DIR``: every analysis that applies to the study, in one go.

The summary, the region map and the accuracy curves always; the loss curves with their phase
changes and the train/validation phase-change gap when phase changes were found; the remedy
comparison when the study varies a remedy; the fraction curve when the study varies the
training fraction; the output-layer t-SNE (``--mod auto``) when a trial has a
checkpoint; Optuna's importances for an Optuna study. Prints where everything went.
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
from grok_tune.layout import CURVES_FILE, TRIALS_FILE


def _optional(what: str, draw: Callable[[], Path]) -> list[Path]:
    """A figure that may not apply to this study: a note instead of a failure."""
    try:
        return [draw()]
    except AnalysisError as err:
        print(f"skipped {what}: {err}")
        return []


def run_all(study: Study, out: Path | None = None) -> list[Path]:
    """Every analysis that applies; the region map is the second path."""
    paths = [summary.write_summary(study, out)]
    paths.append(phase_map.plot_phase_map(study, out=out).path)
    paths.append(curves.plot_curves(study, out=out).path)
    if phases.has_phases(study):
        paths.append(phases.plot_phase_curves(study, out=out).path)
        paths.append(phases.plot_phase_gap(study, out=out).path)
    if remedies.varies_remedies(study):
        print(remedies.format_remedy_table(remedies.remedy_table(study)))
        paths.append(remedies.plot_remedies(study, out=out).path)
    if study.trials[FRAC].nunique() > 1:
        print(fraction_curve.format_table(fraction_curve.fraction_table(study)))
        paths.append(fraction_curve.plot_fraction_curve(study, out=out).path)
    paths += _optional(
        "embeddings",
        lambda: embeddings.plot_embeddings(study, mod=embeddings.AUTO, out=out).path,
    )
    if study.is_optuna:
        paths += _optional("importance", lambda: importance.plot_importance(study, out).path)
    return paths


def build_parser() -> argparse.ArgumentParser:
    return base_parser("analysis", __doc__)


def main(argv: Sequence[str] | None = None) -> int:
    def body(study: Study, args: argparse.Namespace) -> list[Path]:
        paths = run_all(study, args.out)
        # the study's outputs in one block at the end, where a user looks first
        print(f"\nstudy {study.name}: {study.path}")
        print(f"  region map:  {paths[1]}")
        print(f"  results:     {study.path / TRIALS_FILE}")
        print(f"               {study.path / CURVES_FILE}")
        print(f"  TensorBoard: tensorboard --logdir {study.path}")
        print(f"  {len(paths)} files written:")
        return paths

    return run_command(build_parser(), argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
