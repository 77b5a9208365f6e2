"""A study in a few lines: regions, the fastest grok, the memorize -> grok boundary in fraction.

    python -m analysis.summary STUDY_DIR

Prints the summary and writes it to STUDY_DIR/summary.txt (or ``--out``/summary.txt).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.common import (
    FRAC,
    LEARNED,
    OP,
    SEED,
    AnalysisError,
    Study,
    base_parser,
    describe_settings,
    fmt,
    majority,
    run_command,
)
from grok_tune import metrics as m
from grok_tune.regions import REGION, REGIONS, TABLE_REGIONS, Region
from grok_tune.study_files import SUMMARY_FILE, TRIAL_ID
from grok_tune.tasks import task_class

MAX_LISTED = 12  # fractions listed one by one per group; a sampled study has one per trial


def region_counts(study: Study) -> str:
    trials = study.trials
    counts = trials[REGION].value_counts()
    # the tables' four always (a zero says something there); the others where they occur
    parts = [f"{r} {counts.get(r, 0)}" for r in REGIONS if r in TABLE_REGIONS or counts.get(r)]
    status = trials[m.STATUS]
    for status_name in (m.Status.ERROR, m.Status.RUNNING, m.Status.PENDING):
        n = int((status == status_name).sum())
        if n:
            parts.append(f"{status_name} {n} (no final region)")
    return ", ".join(parts)


def _task(row: pd.Series) -> str:
    return task_class(row.get("task") or "table").describe(row)


def fastest_grok(study: Study) -> str:
    grok = study.finished[study.finished[REGION] == Region.GROK]
    if grok.empty:
        return "fastest grok: none (no trial grokked under this rule)"
    best = grok.sort_values([m.STEPS_TO_GENERALIZE, TRIAL_ID]).iloc[0]
    settings = describe_settings(best, study.searched()) or "no searched settings"
    mem, gen = int(best[m.STEPS_TO_MEMORIZE]), int(best[m.STEPS_TO_GENERALIZE])
    return (
        f"fastest grok: trial {best[TRIAL_ID]}, memorized at step {mem:,}, generalized at step "
        f"{gen:,}\n  {settings} ({_task(best)})"
    )


def _group_boundary(by_frac: pd.Series) -> str:
    """One group's line: majority region per fraction, and where memorize turns to learning."""
    memorize = [f for f, r in by_frac.items() if r == Region.MEMORIZE]
    learned = [f for f, r in by_frac.items() if r in LEARNED]
    listed = ", ".join(f"{fmt(f)} {r}" for f, r in by_frac.items())
    along = f" ({listed})" if len(by_frac) <= MAX_LISTED else ""
    if memorize and learned:
        line = (
            f"largest fraction still 'memorize' {fmt(max(memorize))}, "
            f"smallest that 'grok'/'generalize' {fmt(min(learned))}"
        )
        if max(memorize) > min(learned):
            line += " (they overlap: no clean boundary)"
    elif memorize:
        line = f"no 'grok'/'generalize' at any fraction; largest 'memorize' {fmt(max(memorize))}"
    elif learned:
        line = f"no 'memorize' at any fraction; smallest 'grok'/'generalize' {fmt(min(learned))}"
    else:
        line = "neither 'memorize' nor 'grok'/'generalize' at any fraction"
    return line + along


def fraction_boundary(study: Study) -> str:
    done = study.finished
    if study.trials[FRAC].nunique() < 2:
        return "memorize -> grok boundary: the study does not vary the training fraction"
    if done[FRAC].nunique() < 2:
        return (
            "memorize -> grok boundary: the study varies the training fraction, but its "
            "finished trials cover fewer than two fractions (resume it)"
        )
    from analysis.boundary_map import is_boundary_study

    if is_boundary_study(study):
        return "memorize -> grok boundary: see the boundary search's lines below (per map)"
    # a majority across another axis would say what no slice of the map shows: with a
    # continuous one beside the fraction (a sampled study), each trial is its own slice
    continuous = [c for c in study.varying() if c not in (FRAC, SEED) and not study.is_discrete(c)]
    if continuous:
        return (
            f"memorize -> grok boundary: the fraction varies together with {', '.join(continuous)} "
            "(sampled): read it off the points map, trial by trial"
        )
    keys = [OP, *[c for c in study.groups(exclude=(FRAC,)) if c != OP]]
    lines = ["memorize -> grok boundary along the training fraction (majority over repeats):"]
    for _, group in done.groupby(keys, sort=True):
        by_frac = group.groupby(FRAC, sort=True)[REGION].agg(lambda r: majority(r)[0])
        head = describe_settings(group.iloc[0], keys)
        if len(by_frac) < 2:
            lines.append(f"  {head}: one fraction only ({fmt(by_frac.index[0])})")
        else:
            lines.append(f"  {head}: {_group_boundary(by_frac)}")
    return "\n".join(lines)


def summarize(study: Study) -> str:
    from analysis import boundary_map, phases, remedies  # their figures' own tables

    mode = study.spec.mode if study.spec else "unknown mode"
    parts = [
        f"study {study.name} ({mode}, {len(study.trials)} trials): {study.path}",
        f"region rule: {study.rule.describe()}",
        f"regions: {region_counts(study)}",
        fastest_grok(study),
        fraction_boundary(study),
    ]
    if boundary_map.is_boundary_study(study):
        parts.append(boundary_map.boundary_summary(study))
    if phases.has_phases(study):
        parts.append(phases.phase_table(study))
        story = phases.phase_story(study)
        if story:
            parts.append(story)
    if study.is_optuna:
        from analysis.importance import importance_report

        try:
            parts.append(importance_report(study))
        except AnalysisError as err:
            parts.append(f"importance: not computed: {err}")
    if remedies.varies_remedies(study) and not study.finished.empty:
        table = remedies.format_remedy_table(remedies.remedy_table(study))
        parts.append("remedies (median steps; censored: more than half never got there):")
        parts.append("  " + table.replace("\n", "\n  "))
    return "\n".join(parts)


def write_summary(study: Study, out: Path | None = None, notes: Sequence[str] = ()) -> Path:
    """summary.txt; ``notes``: lines after the summary (measures other analyses read, as the
    S5 coset check; the figures that could not be drawn, one line each, why)."""
    text = "\n".join([summarize(study), *notes])
    print(text)
    folder = out if out is not None else study.path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SUMMARY_FILE
    path.write_text(text + "\n")
    return path


def build_parser() -> argparse.ArgumentParser:
    return base_parser("analysis.summary", __doc__)


def main(argv: Sequence[str] | None = None) -> int:
    def body(study: Study, args: argparse.Namespace) -> list[Path]:
        return [write_summary(study, args.out)]

    return run_command(build_parser(), argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
