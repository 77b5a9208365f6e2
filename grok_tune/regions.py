"""The outcome rules, per task and data regime, in one place: what a trial learned.

A region is a statement about what the run learned, and what can be learned depends on the
task and on the data. Each task names the rule it is read by (``Task.outcome``).

**Finite data, accuracy** (tables; addition on a fixed training set): Power et al.'s and
Liu et al.'s regions, from the steps at which training and validation accuracy first reach
the threshold:

- confusion:  never memorized (train accuracy never reached the threshold) within its budget
- memorize:   memorized, never generalized within its budget
- grok:       generalized long after it memorized (the gap rule below)
- generalize: generalized about when it memorized (Liu et al.'s "comprehension")
- diverged:   the loss or the weights became NaN/inf

**Unlimited data, accuracy** (addition with ``train_size: infinite``): every batch is fresh, so
training and validation are one distribution and there is no memorization to speak of; what
is left is how far the model got:

- learned:    validation accuracy (the whole answer) reached the threshold
- partial:    not the whole answer, but something learned suddenly: a validation phase change
              (grok_tune/events.py), or some answer positions reached the threshold on their own
              (addition's digits, each with its own cliff)
- confusion:  neither

**Induction** (repeated subsequences): accuracy on the predictable positions stays below 0.99
even when induction heads work (a repeat's first token after a collision is ambiguous), so
the question is whether the heads formed, read from the loss:

- induction:  a validation phase change, and the final validation loss on the predictable
              positions below a quarter of the unigram baseline ln(vocab): a copy mechanism
              puts most of its mass on the right token (2-3 layers fall from ~3.3 to ~0.3
              nats at vocab 128), which no statistic of the current token alone can (a
              1-layer model falls smoothly to 2.3-3.0, with no cliff)
- memorize:   finite data: the training loss fell below that level, the validation loss did not
- confusion:  neither
- diverged:   as above

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
    PARTIAL = "partial"
    LEARNED = "learned"
    INDUCTION = "induction"
    DIVERGED = "diverged"


# the order in plots and tables: from learning nothing to learning at once
REGIONS = (
    Region.CONFUSION, Region.MEMORIZE, Region.GROK, Region.GENERALIZE, Region.PARTIAL,
    Region.LEARNED, Region.INDUCTION, Region.DIVERGED,
)  # fmt: skip
# the regions of the finite-data accuracy rule (the tables'): always listed in counts
TABLE_REGIONS = (
    Region.CONFUSION, Region.MEMORIZE, Region.GROK, Region.GENERALIZE, Region.DIVERGED
)  # fmt: skip

# The outcome rules a task may be read by (``Task.outcome``), and the data regime.
ACCURACY = "accuracy"
INDUCTION_RULE = "induction"
# induction: the heads formed when the validation loss ends below this share of ln(vocab)
INDUCTION_LOSS_SHARE = 0.25


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


def trials_rule(trials: pd.DataFrame, rule: RegionRule = DEFAULT_RULE) -> RegionRule:
    """``rule`` at the trials' own accuracy threshold where they all ran at one (a preset's
    0.9 or 0.95): a study is read at the accuracy it ran for, and its recorded events stand
    (re-deriving them at 0.99 would relabel a 0.9 study's learners as never learning)."""
    import dataclasses

    recorded = trials.get("threshold")
    values = set() if recorded is None else set(recorded.dropna().astype(float))
    if len(values) != 1:
        return rule
    return dataclasses.replace(rule, threshold=values.pop())


def _missing(x: object) -> bool:
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
        None if s in UNFINISHED else str(outcome(row, a, b, s == m.Status.DIVERGED, rule))
        for (_, row), a, b, s in zip(out.iterrows(), mem, gen, status, strict=True)
    ]
    out[REGION] = pd.Series(regions, index=out.index, dtype="string")
    out[REGION_RULE] = rule.describe()
    return out


def outcome(
    row: pd.Series | dict, mem: float | None, gen: float | None, diverged: bool, rule: RegionRule
) -> Region:
    """A finished trial's region by its task's rule and its data regime (module docstring)."""
    from grok_tune.tasks import task_class

    task = _value(row, "task") or "table"
    kind = task_class(str(task)).outcome
    if diverged:
        return Region.DIVERGED
    if kind == INDUCTION_RULE:
        return _induction(row, task_class(str(task)).baseline_loss(row))
    if _infinite(_value(row, "train_size")):
        if gen is not None and not _missing(gen):
            return Region.LEARNED
        positions = [k for k in _keys(row) if k.startswith(f"{m.STEPS_TO_GENERALIZE}_")]
        some = any(not _missing(_value(row, k)) for k in positions)
        return (
            Region.PARTIAL
            if some or not _missing(_value(row, m.VAL_PHASE_STEP))
            else (Region.CONFUSION)
        )
    return rule.classify(mem, gen, diverged)


def _induction(row: pd.Series | dict, baseline: float) -> Region:
    level = INDUCTION_LOSS_SHARE * baseline
    val, train = _value(row, m.VAL_LOSS), _value(row, m.TRAIN_LOSS)
    phase = not _missing(_value(row, m.VAL_PHASE_STEP))
    if phase and not _missing(val) and float(val) < level:
        return Region.INDUCTION
    finite = not _infinite(_value(row, "train_size"))
    if finite and not _missing(train) and float(train) < level:
        return Region.MEMORIZE
    return Region.CONFUSION


def _keys(row: pd.Series | dict) -> list[str]:
    return list(row.index if isinstance(row, pd.Series) else row)


def _value(row: pd.Series | dict, key: str) -> object:
    value = row.get(key)
    return None if _missing(value) else value


def _infinite(size: object) -> bool:
    if isinstance(size, str):
        return size == "infinite"
    return isinstance(size, float) and np.isinf(size)
