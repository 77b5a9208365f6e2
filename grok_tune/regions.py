"""The region rules: where a trial lies among confusion, memorize, grok and generalize.

- confusion:  never memorized (train accuracy never reached the threshold) within its budget
- memorize:   memorized, never generalized within its budget
- grok:       generalized long after it memorized (the gap rule below)
- generalize: generalized about when it memorized (Liu et al.'s "comprehension")
- diverged:   the loss or the weights became NaN/inf

Censored trials stay censored: "never generalized within its budget" is never read as
"generalized at the budget". The gap rule is a setting. Liu et al. call it grokking when more
than 10³ steps separate the two events ("steps"); that depends on the budget and the task (a
small model on a tiny table generalizes within 10³ steps whatever it does), so the default,
"ratio", calls it grokking when generalizing took more than ``min_ratio`` (3) times as many
steps as memorizing: scale-free, and it agrees with Power et al.'s examples (x/y mod 97 at 50%
data, memorized by step ~500 and generalized near 2,000-4,000, groks; at 80% it does not).
The accuracy threshold defaults to Power et al.'s 0.99 (Liu et al. used 0.9).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import numpy as np
import pandas as pd

from grok_tune import metrics as m

REGION = "region"
REGION_RULE = "region_rule"


class Region(StrEnum):
    CONFUSION = "confusion"
    MEMORIZE = "memorize"
    GROK = "grok"
    GENERALIZE = "generalize"
    DIVERGED = "diverged"


# the order in plots and tables: from learning nothing to learning at once
REGIONS = (Region.CONFUSION, Region.MEMORIZE, Region.GROK, Region.GENERALIZE, Region.DIVERGED)


@dataclass(frozen=True)
class RegionRule:
    threshold: float = m.ACCURACY_THRESHOLD
    gap: Literal["steps", "ratio"] = "ratio"
    min_gap_steps: int = 1000  # Liu et al.
    min_ratio: float = 3.0

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold = {self.threshold}: an accuracy in (0, 1]")
        if self.gap not in ("steps", "ratio"):
            raise ValueError(f"gap = {self.gap!r}: allowed: 'steps', 'ratio'")

    def describe(self) -> str:
        gap = f"gap>{self.min_gap_steps}" if self.gap == "steps" else f"ratio>{self.min_ratio:g}"
        return f"acc>={self.threshold:g},{gap}"

    def classify(
        self, steps_to_memorize: float | None, steps_to_generalize: float | None, diverged: bool
    ) -> Region:
        mem = None if _missing(steps_to_memorize) else float(steps_to_memorize)
        gen = None if _missing(steps_to_generalize) else float(steps_to_generalize)
        if diverged:
            return Region.DIVERGED
        if gen is None:
            return Region.MEMORIZE if mem is not None else Region.CONFUSION
        if mem is None or gen <= mem:  # validation got there first: nothing to wait for
            return Region.GENERALIZE
        late = gen - mem > self.min_gap_steps if self.gap == "steps" else gen > self.min_ratio * mem
        return Region.GROK if late else Region.GENERALIZE


DEFAULT_RULE = RegionRule()


def _missing(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and np.isnan(x)) or x is pd.NA


def first_step_reaching(steps: pd.Series, acc: pd.Series, threshold: float) -> float | None:
    """First evaluation step with accuracy >= threshold, or None (censored)."""
    hit = steps[acc.to_numpy() >= threshold]
    return float(hit.iloc[0]) if len(hit) else None


# statuses whose events so far are not an outcome: no region
UNFINISHED = (m.Status.ERROR, m.Status.RUNNING, m.Status.PENDING)


def classify_trials(
    trials: pd.DataFrame, curves: pd.DataFrame | None = None, rule: RegionRule = DEFAULT_RULE
) -> pd.DataFrame:
    """Add ``region`` and ``region_rule`` to a trials table (rows of trials.parquet).

    A trial's recorded events are used when it ran at the rule's threshold (its ``threshold``
    setting, 0.99 unless a preset or the study chose another); otherwise they are re-derived
    from the curves (the first evaluation at or above the rule's threshold, so ``curves`` is
    needed) and replace the steps columns, so that what a figure marks is what the region rests
    on. A run stopped after holding its threshold stays censored at a stricter one it never
    reached.
    """
    out = trials.copy()
    mem, gen = out[m.STEPS_TO_MEMORIZE], out[m.STEPS_TO_GENERALIZE]
    recorded = out.get("threshold", pd.Series(m.ACCURACY_THRESHOLD, index=out.index))
    redo = recorded.fillna(m.ACCURACY_THRESHOLD).astype(float) != rule.threshold
    if redo.any():
        if curves is None:
            raise ValueError("a threshold other than the recorded one needs the curves")
        by_trial = {t: c.sort_values(m.STEP) for t, c in curves.groupby("trial_id")}
        empty = pd.DataFrame({m.STEP: [], m.TRAIN_ACC: [], m.VAL_ACC: []})

        def event(tid: str, col: str) -> float | None:
            c = by_trial.get(tid, empty)
            return first_step_reaching(c[m.STEP], c[col], rule.threshold)

        tids = out["trial_id"]
        mem = pd.Series(
            [event(t, m.TRAIN_ACC) if r else v for t, r, v in zip(tids, redo, mem, strict=True)],
            index=out.index,
        )
        gen = pd.Series(
            [event(t, m.VAL_ACC) if r else v for t, r, v in zip(tids, redo, gen, strict=True)],
            index=out.index,
        )
        out[m.STEPS_TO_MEMORIZE] = pd.to_numeric(mem).astype("Int64")
        out[m.STEPS_TO_GENERALIZE] = pd.to_numeric(gen).astype("Int64")
    status = out[m.STATUS].astype(str)
    # an errored or unfinished trial has no region: its events so far are not its outcome
    regions = [
        None if s in UNFINISHED else str(rule.classify(a, b, s == m.Status.DIVERGED))
        for a, b, s in zip(mem, gen, status, strict=True)
    ]
    out[REGION] = pd.Series(regions, index=out.index, dtype="string")
    out[REGION_RULE] = rule.describe()
    return out
