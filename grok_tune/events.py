"""Events in a training curve, read by pure rules (numpy only: analysis loads this without torch).

Two parts: phase changes in a loss curve (below), and a run's events and stopping
(``RunEvents``, ``StoppingRule``: memorized, generalized, held, diverged, confused, budget),
which the training loop feeds one evaluation at a time and the tests drive directly.

Phase changes
-------------
A **phase change** is a sudden drop of a loss after a plateau: each answer digit's loss in
multi-digit addition, the loss when induction heads form, the validation loss when a grokking
run generalizes, the training loss in its first evaluations. ``phase_changes(steps, losses,
rule)`` finds them in one curve; the settings are the fields of ``PhaseRule`` (defaults here).

1. **Smoothing.** The curve ends at its first NaN/inf (a diverged run: nothing after it means
   anything). Losses are clamped at 1e-12 (a float32 loss can round to 0), smoothed by a running
   median over ``smooth`` (5) evaluations, centred and shrinking at the ends so that the first
   evaluation (the model at chance) keeps its value, and read as ``y = ln loss``. A median keeps
   the edge of a drop sharp and removes spikes of up to ``smooth // 2`` evaluations.
2. **Time scale.** Steps need not be evenly spaced. A drop starting at step ``t`` has the window
   ``W(t)``: the longer of ``rel_window`` (0.5) × ``t`` steps and ``min_window_evals`` (12)
   evaluations. Sudden is relative to the run so far: at step 10,000 a drop may take up to 5,000
   steps, at step 300 only 12 evaluations (not fewer: a grokking run's first drop,
   memorization, takes several evaluations and is followed by a spiky tail). A drop done
   within half the steps before it spans at most 0.18 decades of the log-step axis grokking is
   plotted on: a cliff there, and room for Nanda et al.'s clean-up phase (about 9.4k to 13k
   steps). The evaluation floor is the resolution, and all the first evaluation (step 0, no
   run before it) gets.
3. **A drop** from evaluation ``s`` (start) to ``e`` (end, within ``W(t_s)`` of ``s``) is a phase
   change when it is

   - *big*: the smoothed loss falls by a factor of at least ``min_drop_factor`` (2) counted
     from the lowest level held before (over the span ``W(t_s)`` before ``s``; held for two
     evaluations, a running median of 3), so that a loss coming back down after a spike (a
     slingshot) does not count: a phase change takes the loss where it has not just been; and
     by at least ``min_drop_nats`` (0.01) nats from the level it sat at (the plateau's local
     level, the median of the ``2 x min_window_evals + 1`` evaluations up to ``s``, or the
     loss at ``s`` if lower): what the fall moves, not what a dip in a bumpy floor had briefly
     moved already;
   - *after a plateau or a slow stretch*: over that span before ``s``, **and** over a span
     as long as the drop itself, the log-loss fell per step at less than ``max_rate_before``
     (0.25) of the drop's mean rate. Rising or flat is a plateau (validation loss rises while
     a grokking run memorizes), and so is a decline slower than a quarter of the drop (a rate,
     not an amount: validation loss often eases down before it collapses); a steady decline,
     exponential or power-law, never is. The span as long as the drop is what a researcher's
     eye compares a cliff with: averaged over a long window, the cliff just before a point in
     its tail looks slow, and the tail would pass for a fresh cliff. The first evaluation has
     no history and counts as a plateau (the model starts at chance, so training loss's initial
     drop counts), and a fall under way since the first evaluation starts there;
   - *followed by a slower stretch*, its tail: over as long a span after ``e`` as the window,
     the log-loss falls per step at under ``max_rate_after`` (0.7) of the drop's mean rate, or
     not at all. A cliff followed by a slower decline is a phase change (a digit's loss goes on
     sinking after its cliff, a grokking run's validation loss after its collapse); a decline
     that goes on as fast as it began, or nearly (from 0.8 of the rate up: a bend too slight
     for the eye, and within the noise of a smoothed curve), has no foot and is a steady
     decline. A drop from the first evaluation has no plateau to stand out from, so its tail
     must give the same contrast a plateau would: under ``max_rate_before`` of its rate (the
     head of a power law that starts at once is no cliff). At the end of a curve it is judged
     on the evaluations there are, but the end needs ``smooth // 2`` evaluations after it
     (the median shrinks to raw values at the very end);
   - *kept*: over that span after ``e`` the loss does not climb back to where it started. A
     dip that comes back is the mirror of a spike.

   Why both amounts: a fall from 1e-4 to 1e-6 is a factor of 100 but 1e-4 nats and moves no
   prediction; a fall from 20 to 19 nats is a nat but 5%, the kind of wobble an overconfident
   validation loss makes. Once the loss is small, cross-entropy is about the probability mass on
   wrong answers, so 0.01 nats is 1% of it moved onto the right ones; halving is far outside a
   smoothed curve's noise (with 10% noise from one evaluation to the next it wanders by a factor
   of 1.3 within a window, 1.5 over 2,000 evaluations), and the new-low count above puts a noise
   dip further out still. In log space the rule is scale-free in the loss; the nats floor is its
   one absolute.
4. **Search**, greedy in time order, each change starting at or after the previous one's end.
   Evaluation ``i`` is a candidate when the lowest point ``j`` within ``W(t_i)`` is both amounts
   below it (for all ``i`` at once, by a sparse-table range minimum). From a candidate: the start
   ``s`` is the last evaluation before the middle of the fall to ``j`` whose loss is still
   within 5% (of the fall in nats) of its local level, the median of the ``2 ×
   min_window_evals + 1`` evaluations up to it (a plateau wanders: judged against its highest
   point, the start would land on a noise peak far from the fall); the bottom ``b`` is the
   lowest point within ``W(t_s)`` of ``s`` before the loss climbs back above ``s`` (a sawtooth's
   next tooth is not this drop's bottom). The end ``e`` is the **foot** of the cliff, where the
   steep part stops. The ends tried run from ``s + 1`` to the first evaluation with 90% of the
   log-fall from ``s`` to ``b`` done (the end does not wait for a noisy or slowly sinking
   floor); kept are those with which the drop passes the tests. With ``r`` the drop's mean rate
   to the kept end after which the loss falls slowest, as a share of the drop's rate (where the
   contrast between cliff and tail is sharpest), ``e`` is the kept end farthest below the line
   from ``s`` that falls at ``max_rate_after`` × ``r``: before it the loss falls faster than
   that line, after it slower. So a cliff followed by a slow tail ends at the foot of the
   cliff, not out in the tail, while a sigmoid's rounded bottom still falls faster than the
   line. With an end kept, the drop is reported and the search goes on from ``e``; otherwise
   from ``s + 1``. A few milliseconds for a curve of 2,000 evaluations.
5. **Reported** (``PhaseChange``): ``start``/``end``, the steps of ``s``/``e``; ``loss_start``
   and ``loss_end``, the smoothed losses there; ``size`` = their difference in nats, ``factor``
   = their ratio (for a sigmoid ``ln factor`` is about 90% of the log-fall; for a cliff
   followed by a tail, the cliff's alone); ``step``, the one step that stands for the change:
   its **steepest point**, where the log-loss crosses the middle of the shortest stretch of
   ``[s, e]`` that carries half the log-fall (interpolated; of equally short stretches, the
   middle one). That is the centre of a sigmoid, the steep part of a cliff with a rounded top
   or foot, always inside ``(start, end)``, and measured over half the fall it is steadier
   under noise than the steepest step between two evaluations; ``start`` and ``end`` move
   with noise more.

What it can miss, or see that is not there (tests/data/phase_curves holds 98 labelled curves of
real runs; ``python -m grok_tune.events_eval`` scores the rule against them):

- A drop slower than its window: the initial training drop when evaluations are so dense that
  it takes more than ``min_window_evals`` of them; a generalization slower than about half the
  run before it. A steady decline, however large, is never a phase change.
- A cliff whose tail falls at more than ``max_rate_after`` of the cliff's rate: on a log axis
  that is the start of a steady decline. A decline at one rate that reaches a floor within
  about 1.6 windows of its start (its tail over the window after a cut at one window falls at
  0.6 of its rate) counts: a change between two plateaus, as a grokking run's collapse looks
  on the log-step axis; one that runs on at one rate for 3 windows does not.
- A power law that begins after a plateau, with a time scale well under the window, is a
  cliff and a tail: it counts. One that begins at the first evaluation needs a flat foot.
- Drops under 0.01 nats: training loss's clean-up drop once it is already ~1e-3 (lower
  ``min_drop_nats``); drops under a factor 2, such as a language model's induction bump
  (a few tenths of a nat on ~3; lower ``min_drop_factor`` and smooth more). A drop right at a
  factor 2 is decided by the median's noise.
- Two drops less than a window apart: read as one when the second falls inside the first's
  window (the first alone fails the after-test, the second's fall being in its span), its
  steepest point in whichever falls more in log-loss (a fall to exactly 0, clamped at 1e-12,
  dwarfs anything); the second fails the plateau test when the first's fall lies in its span.
- Heavy noise: above about 20% from one evaluation to the next, noise makes drops of its own
  (smooth more: 7 or 9). A drop that recovers within ``smooth // 2`` evaluations is smoothed
  away; spikes of more evaluations, frequent enough to fill the median's window, can move a
  cliff's steepest point by an evaluation or two.
- A spike longer than the span before its fall, or a loss that fell, rose for long and fell
  again, counts when it ends below where that span began.
- A drop whose top eases in over tens of evaluations (a sigmoid in log-loss seen finely) starts
  where its fall shows within a few evaluations: its ``size`` is up to ~20% short.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike

from grok_tune import metrics as m

# --- phase changes ----------------------------------------------------------------------------

LOSS_FLOOR = 1e-12  # a float32 loss can round to 0; ln needs a number
_START_EDGE = 0.05  # the start: within 5% of the fall in nats of the plateau's level
_END_EDGE = 0.1  # the end: at most 90% of the log-fall (a noisy, slowly falling floor is no bottom)


def _whole(x: object) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _real(x: object) -> bool:
    return (
        isinstance(x, int | float | np.integer | np.floating)
        and not isinstance(x, bool)
        and math.isfinite(float(x))
    )


@dataclass(frozen=True)
class PhaseRule:
    """What counts as a phase change in a loss curve (the module docstring has the reasons)."""

    smooth: int = 5  # running median over this many evaluations (odd; 1 = none)
    min_drop_nats: float = 0.01
    min_drop_factor: float = 2.0
    rel_window: float = 0.5  # a drop at step t completes within rel_window * t steps ...
    min_window_evals: int = 12  # ... or within this many evaluations, whichever is longer
    max_rate_before: float = 0.25  # before it: falling at under this share of the drop's rate
    max_rate_after: float = 0.7  # after it (its tail): falling at under this share of its rate

    def __post_init__(self) -> None:
        if not _whole(self.smooth) or self.smooth < 1 or self.smooth % 2 == 0:
            raise ValueError(f"smooth = {self.smooth!r}: an odd whole number of evaluations >= 1")
        if not _real(self.min_drop_nats) or self.min_drop_nats < 0:
            raise ValueError(f"min_drop_nats = {self.min_drop_nats!r}: a finite number >= 0")
        if not _real(self.min_drop_factor) or self.min_drop_factor <= 1:
            raise ValueError(f"min_drop_factor = {self.min_drop_factor!r}: a finite number > 1")
        if not _real(self.rel_window) or self.rel_window < 0:
            raise ValueError(f"rel_window = {self.rel_window!r}: a finite number >= 0")
        if not _whole(self.min_window_evals) or self.min_window_evals < 1:
            raise ValueError(
                f"min_window_evals = {self.min_window_evals!r}: a whole number of evaluations >= 1"
            )
        for name in ("max_rate_before", "max_rate_after"):
            value = getattr(self, name)
            if not _real(value) or not 0 <= value < 1:
                raise ValueError(f"{name} = {value!r}: a number in [0, 1)")

    def describe(self) -> str:
        return (
            f"median{self.smooth},drop>={self.min_drop_nats:g}nats&x{self.min_drop_factor:g},"
            f"within=max({self.min_window_evals}evals,{self.rel_window:g}*step),"
            f"before<{self.max_rate_before:g}rate,after<{self.max_rate_after:g}rate"
        )


DEFAULT_PHASE_RULE = PhaseRule()


@dataclass(frozen=True)
class PhaseChange:
    """One sudden drop; steps as given, losses smoothed (``size`` in nats)."""

    step: float  # the steepest point, inside (start, end) (interpolated)
    start: float  # the last evaluation still at the plateau's level
    end: float  # the foot, where the steep part stops (a sigmoid: ~90% of the log-fall done)
    loss_start: float  # the smoothed loss at start
    loss_end: float  # the smoothed loss at end
    size: float  # loss_start - loss_end, nats
    factor: float  # loss_start / loss_end


def phase_changes(
    steps: ArrayLike,
    losses: ArrayLike,
    rule: PhaseRule = DEFAULT_PHASE_RULE,
) -> list[PhaseChange]:
    """Every phase change in one loss curve, in time order (see the module docstring)."""
    return list(_iter_phase_changes(steps, losses, rule))


def first_phase_change(
    steps: ArrayLike,
    losses: ArrayLike,
    rule: PhaseRule = DEFAULT_PHASE_RULE,
) -> PhaseChange | None:
    """The earliest phase change, or None; stops searching there."""
    return next(_iter_phase_changes(steps, losses, rule), None)


def largest_phase_change(
    steps: ArrayLike,
    losses: ArrayLike,
    rule: PhaseRule = DEFAULT_PHASE_RULE,
    by: Literal["size", "factor"] = "size",
) -> PhaseChange | None:
    """The phase change with the largest ``size`` (nats) or ``factor``; the earliest on a tie."""
    if by not in ("size", "factor"):
        raise ValueError(f"by = {by!r}: allowed: 'size', 'factor'")
    changes = phase_changes(steps, losses, rule)
    return max(changes, key=lambda c: getattr(c, by)) if changes else None


def _iter_phase_changes(
    steps: ArrayLike, losses: ArrayLike, rule: PhaseRule
) -> Iterator[PhaseChange]:
    t, loss = _curve(steps, losses)
    n = len(t)
    if n < 2:
        return
    lin = _running_median(np.maximum(loss, LOSS_FLOOR), rule.smooth)
    y = np.log(lin)
    m = rule.min_window_evals
    # the plateau's local level: a plateau wanders, and a start judged against one level for
    # all of it would land on a noise peak far from the fall
    level = _trailing_median(lin, 2 * m + 1)
    idx = np.arange(n)
    # the last evaluation within W(t_i) after i, and the first within W(t_i) before it
    reach = np.searchsorted(t, t + rule.rel_window * np.abs(t), side="right") - 1
    ahead = np.minimum(np.maximum(reach, idx + m), n - 1)
    back = np.searchsorted(t, t - rule.rel_window * np.abs(t), side="left")
    behind = np.maximum(np.minimum(back, idx - m), 0)

    # the first test, for all evaluations at once: the lowest point ahead is low enough
    table = _min_table(y)
    peaks = _min_table(-y)  # range maxima of y, negated
    held = np.log(_running_median(np.maximum(loss, LOSS_FLOOR), min(3, rule.smooth)))
    low_ahead = np.full(n, np.inf)
    low_ahead[:-1] = _table_min(table, idx[:-1] + 1, ahead[:-1])
    passes = (y - low_ahead >= math.log(rule.min_drop_factor)) & (
        lin - np.exp(low_ahead) >= rule.min_drop_nats
    )
    candidates = np.flatnonzero(passes)

    pos = 0
    while (k := int(np.searchsorted(candidates, pos))) < len(candidates):
        i = int(candidates[k])
        j = i + 1 + int(np.argmin(y[i + 1 : ahead[i] + 1]))
        s = _start(y, lin, level, i, j)
        # the bottom: the lowest point within the window before the loss climbs back above
        # where it started (a cliff does not climb back over its own top; a drop that does is
        # noise or a sawtooth, and only its part before the climb is a candidate)
        back_up = np.flatnonzero(y[j + 1 : ahead[s] + 1] > y[s])
        last = j + int(back_up[0]) if len(back_up) else int(ahead[s])
        b = s + 1 + int(np.argmin(y[s + 1 : last + 1]))
        e = _end(t, y, lin, s, b, ahead, behind, table, peaks, level, held, rule)
        if e is None and pos == 0 < s and (np.diff(y[: s + 1]) < 0).all():
            # a fall under way since the first evaluation starts there: the model at chance
            # is the plateau, and the evaluations the fall has already taken are not a
            # decline before it
            e = _end(t, y, lin, 0, b, ahead, behind, table, peaks, level, held, rule)
            if e is not None:
                s = 0
        if e is not None:
            yield _report(t, y, lin, s, e)
            pos = e
        else:
            pos = s + 1


def _start(y: np.ndarray, lin: np.ndarray, level: np.ndarray, i: int, j: int) -> int:
    """Where the fall from candidate ``i`` to its low ``j`` leaves the plateau: the last
    evaluation before the fall's middle (in log-loss) still within 5% of the fall in nats of
    the plateau's local level (the median of the evaluations up to it). A researcher puts the
    start of a cliff at its top edge, the last point before the loss visibly goes down; judged
    against the plateau's level, not its highest point, so that a noise peak far from the fall
    does not set it."""
    mid = i + 1 + int(np.argmax(y[i + 1 : j + 1] <= (math.log(level[i]) + y[j]) / 2))
    top = level[i:mid]
    at_level = np.flatnonzero(lin[i:mid] >= top - _START_EDGE * (top - lin[j]))
    return i + int(at_level[-1]) if len(at_level) else i


def _end(
    t: np.ndarray,
    y: np.ndarray,
    lin: np.ndarray,
    s: int,
    b: int,
    ahead: np.ndarray,
    behind: np.ndarray,
    table: np.ndarray,
    peaks: np.ndarray,
    plateau: np.ndarray,
    held: np.ndarray,
    rule: PhaseRule,
) -> int | None:
    """Where the phase change from ``s`` ends (the foot of the cliff), or None when no
    evaluation ends one.

    Tried: the evaluations up to 90% of the log-fall to the bottom ``b``; kept: those that
    make the drop big, after a plateau, and followed by a slower stretch (a tail). Of these,
    the foot is the one after which the loss falls slowest relative to the fall before it:
    where the contrast between the cliff and what follows it is sharpest."""
    stop = s + 2 + int(np.argmax(y[s + 1 : b + 1] <= y[b] + _END_EDGE * (y[s] - y[b])))
    ye, te = y[s + 1 : stop], t[s + 1 : stop]
    rate = (y[s] - ye) / (te - t[s])  # the drop's mean rate, log-loss per step
    # after a plateau: over the span before s, the loss fell (per step) at a small share of
    # the drop's rate, or not at all
    p = int(behind[s])
    before = float(y[p] - y[s])
    ok = rate * (rule.max_rate_before * (t[s] - t[p])) > before if before > 0 else rate > 0
    if not ok.any():
        return None
    # ... and over a span as long as the drop itself: a cliff stands out from what precedes it
    # at its own time scale too. Averaged over the whole window, the fall of a cliff just
    # before s looks slow, and the first part of its tail would pass for a fresh cliff.
    q = np.searchsorted(t, t[s] - (te - t[s]), "left")
    q = np.minimum(q, s - 1) if s > 0 else np.zeros(len(te), dtype=int)
    own = y[q] - y[s]
    ok &= (own <= 0) | (rate * (rule.max_rate_before * (t[s] - t[q])) > own) | (s == 0)
    if not ok.any():
        return None
    # big: a factor counted from the lowest level held before (a new low: a return after a
    # spike is no drop; held for two evaluations, a running median of 3: between frequent
    # spikes the floor can be shorter than the smoothing's window, which would hide it), an
    # amount in nats from the level the loss sat at (the plateau's local level, the median of
    # the evaluations up to s, or the start if lower): what the fall moves, not what a dip in
    # a bumpy floor had briefly moved already
    low = float(held[p : s + 1].min())
    level = min(float(lin[s]), float(plateau[s]))
    ok &= (ye <= low - math.log(rule.min_drop_factor)) & (
        lin[s + 1 : stop] <= level - rule.min_drop_nats
    )
    # held: the end has as many evaluations after it as the median needs to tell a fall from
    # a dip (at the very end of a curve the smoothing shrinks to the raw last values)
    last_end = len(t) - 1 - min(rule.smooth // 2, (len(t) - 1) // 2)
    e = s + 1 + np.flatnonzero(ok)
    e = e[e <= last_end]
    if not len(e):
        return None
    rate = rate[e - s - 1]
    # a knee: over as long a span after e as the window had, the loss falls (per step) at
    # under max_rate_after of the drop's rate. A slower decline may follow (a digit's loss
    # goes on sinking after its cliff: the cliff's tail); a decline as fast after as during
    # has no foot and is a steady decline, not a cliff. At the end of the curve it is judged
    # on the evaluations there are.
    w = int(ahead[s]) - s
    last = np.maximum(e + w, np.searchsorted(t, t[e] + (t[s + w] - t[s]), "right") - 1)
    last = np.minimum(last, len(t) - 1)
    span = t[last] - t[e]
    rest = y[e] - _table_min(table, e, last)
    after = np.divide(rest, span, out=np.zeros(len(e)), where=span > 0)
    share = after / rate
    # with no history (the first evaluation), what follows must stand out from the fall as a
    # plateau before it would have (max_rate_before): the head of a power law that starts at
    # once falls steeply and then slower, and only a fall with a flat foot is a cliff there
    limit = rule.max_rate_before if s == 0 else rule.max_rate_after
    # and the loss stays down: over that span it does not climb back to where it started. A
    # dip that comes back is the mirror of a spike, not a phase change.
    back_up = -_table_min(peaks, e, last)
    ok = (share < limit) & (back_up < y[s])
    if not ok.any():
        return None
    # the foot: with r the drop's rate to the kept end after which the loss falls slowest
    # relative to it, the kept end farthest below the line from s falling at max_rate_after
    # x r: before it the loss falls faster than that line, after it slower, at a tail's pace.
    # So a cliff with a slow tail ends at its foot, not out in the tail, and a sigmoid near
    # its 90% point.
    e, rate, share = e[ok], rate[ok], share[ok]
    pace = rule.max_rate_after * rate[np.argmin(share)]
    return int(e[np.argmax(y[s] - y[e] - pace * (t[e] - t[s]))])


def _steepest_half(t: np.ndarray, y: np.ndarray, s: int, e: int) -> tuple[int, int]:
    """The steepest stretch of the fall from ``s`` to ``e``: the shortest ``[a, b]`` over which
    the log-loss falls by half as much as from ``s`` to ``e`` (of equally short ones, the
    middle one: a fall at one rate has its steepest point in its middle). Measured over half
    the fall, noise of a few evaluations hardly moves it; for a sigmoid it is centred on the
    centre, for a cliff with a rounded top or foot it lies in the steep part."""
    half = (y[s] - y[e]) / 2
    seg = y[s : e + 1]
    low = np.minimum.accumulate(seg)  # non-increasing: the first reach of a level by search
    target = seg[:-1] - half
    b = np.searchsorted(-low, -target, side="left")
    # a dip before a that already reached its target would end the stretch before it starts
    valid = (low[:-1] > target) & (b < len(seg))
    if not valid.any():
        return s, e
    a_ = np.flatnonzero(valid)
    length = t[s + b[a_]] - t[s + a_]
    tied = a_[length <= length.min() * (1 + 1e-9)]
    a = int(tied[len(tied) // 2])
    return s + a, s + int(b[a])


def _report(t: np.ndarray, y: np.ndarray, lin: np.ndarray, s: int, e: int) -> PhaseChange:
    """The record of the change from ``s`` to ``e``: its steepest point and smoothed ends."""
    # the steepest point: where the log-loss crosses the middle of the steepest stretch
    a, b = _steepest_half(t, y, s, e)
    mid = (y[a] + y[b]) / 2
    k = a + 1 + int(np.argmax(y[a + 1 : b + 1] <= mid))  # y[k - 1] > mid >= y[k]
    share = (y[k - 1] - mid) / (y[k - 1] - y[k]) if y[k - 1] > y[k] else 0.5
    step = float(t[k - 1] + share * (t[k] - t[k - 1]))
    loss_start, loss_end = float(lin[s]), float(lin[e])
    return PhaseChange(
        step=step,
        start=float(t[s]),
        end=float(t[e]),
        loss_start=loss_start,
        loss_end=loss_end,
        size=loss_start - loss_end,
        factor=loss_start / loss_end,
    )


def _curve(steps: ArrayLike, losses: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Steps and losses up to the first non-finite loss; steps finite and increasing."""
    t = np.asarray(steps, dtype=float)
    loss = np.asarray(losses, dtype=float)
    if t.ndim != 1 or t.shape != loss.shape:
        raise ValueError(f"steps {t.shape} and losses {loss.shape}: two 1-D arrays of one length")
    bad = np.flatnonzero(~np.isfinite(loss))
    n = int(bad[0]) if len(bad) else len(loss)
    t, loss = t[:n], loss[:n]
    if not np.isfinite(t).all() or (np.diff(t) <= 0).any():
        raise ValueError("steps: finite and strictly increasing")
    return t, loss


def _running_median(x: np.ndarray, k: int) -> np.ndarray:
    """Centred running median of ``k`` (odd) values, the window shrinking to fit at the ends."""
    n = len(x)
    h = min(k // 2, (n - 1) // 2)
    if h == 0:
        return x.copy()
    out = np.empty(n)
    out[h : n - h] = np.median(sliding_window_view(x, 2 * h + 1), axis=1)
    for a in range(h):
        out[a] = np.median(x[: 2 * a + 1])
        out[n - 1 - a] = np.median(x[n - 1 - 2 * a :])
    return out


def _trailing_median(x: np.ndarray, k: int) -> np.ndarray:
    """Median of the ``k`` values up to each (fewer at the start)."""
    out = np.empty(len(x))
    head = min(k - 1, len(x))
    for a in range(head):
        out[a] = np.median(x[: a + 1])
    if len(x) >= k:
        out[k - 1 :] = np.median(sliding_window_view(x, k), axis=1)
    return out


def _min_table(x: np.ndarray) -> np.ndarray:
    """A sparse table of ``x`` for range minima: row k holds the minima of 2**k values."""
    n = len(x)
    table = np.full((max(1, n.bit_length()), n), np.inf)
    table[0] = x
    for k in range(1, len(table)):
        half = 1 << (k - 1)
        table[k, : n - half] = np.minimum(table[k - 1, : n - half], table[k - 1, half:])
    return table


def _table_min(table: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """min(x[lo[r] : hi[r] + 1]) for every r (all lo <= hi), from ``table = _min_table(x)``."""
    k = np.frexp((hi - lo + 1).astype(float))[1] - 1  # floor(log2(length)), exactly
    return np.minimum(table[k, lo], table[k, hi - (1 << k) + 1])


# --- memorize, generalize, stopping -----------------------------------------------------------
# Pure bookkeeping over a run's evaluations: the loop hands each evaluation record here, and the
# status decides whether it goes on. The same rules for a run alone and for each member of a
# population.


@dataclass(frozen=True)
class StoppingRule:
    """When a run ends. Nothing ends a run for low validation accuracy alone: a grokking run
    sits at chance for thousands of steps."""

    steps: int  # the budget
    stop_after_generalized: int | None = 3  # evaluations held at or above the threshold
    confusion_step: int | None = None  # not memorized by then: confusion, stop
    threshold: float = m.ACCURACY_THRESHOLD


@dataclass
class RunEvents:
    """The events of one run so far: when it memorized and generalized (overall and per named
    position), its best validation accuracy, and its status. ``state_dict`` resumes it."""

    rule: StoppingRule
    positions: tuple[str, ...] = ()
    steps_to_memorize: int | None = None
    steps_to_generalize: int | None = None
    best_val_acc: float = 0.0
    held: int = 0  # consecutive evaluations at or above the threshold on validation
    status: str = m.Status.RUNNING
    # position_metric(STEPS_TO_MEMORIZE, "digit0") -> step, ...
    position_steps: dict[str, int | None] = field(default_factory=dict)

    def update(self, record: Mapping[str, Any]) -> str:
        """Read one evaluation (step, train/val accuracy and loss, weight norm, per-position
        accuracies); returns the status after it."""
        rule, step = self.rule, int(record[m.STEP])
        numbers = (record[m.TRAIN_LOSS], record[m.VAL_LOSS], record[m.WEIGHT_NORM])
        if not all(math.isfinite(x) for x in numbers):
            self.status = m.Status.DIVERGED
            return self.status
        thr = rule.threshold
        train_acc, val_acc = record[m.TRAIN_ACC], record[m.VAL_ACC]
        self.best_val_acc = max(self.best_val_acc, val_acc)
        if self.steps_to_memorize is None and train_acc >= thr:
            self.steps_to_memorize = step
        if self.steps_to_generalize is None and val_acc >= thr:
            self.steps_to_generalize = step
        for pos in self.positions:
            for event, acc in (
                (m.STEPS_TO_MEMORIZE, m.TRAIN_ACC),
                (m.STEPS_TO_GENERALIZE, m.VAL_ACC),
            ):
                key = m.position_metric(event, pos)
                if (
                    self.position_steps.get(key) is None
                    and record[m.position_metric(acc, pos)] >= thr
                ):
                    self.position_steps[key] = step
                self.position_steps.setdefault(key, None)
        self.held = self.held + 1 if val_acc >= thr else 0
        held_enough = rule.stop_after_generalized and self.held >= rule.stop_after_generalized
        confused = (
            rule.confusion_step is not None
            and step >= rule.confusion_step
            and self.steps_to_memorize is None
        )
        if held_enough or step >= rule.steps or confused:
            generalized = self.steps_to_generalize is not None
            self.status = m.Status.GENERALIZED if generalized else m.Status.CENSORED
        return self.status

    def outcome(self) -> dict[str, Any]:
        """The events as record fields (censored ones None, never the budget)."""
        return {
            m.STEPS_TO_MEMORIZE: self.steps_to_memorize,
            m.STEPS_TO_GENERALIZE: self.steps_to_generalize,
            **self.position_steps,
            m.STATUS: str(self.status),
            m.OBJECTIVE: m.objective(
                self.status, self.steps_to_generalize, self.best_val_acc, self.rule.steps
            ),
            m.DONE: self.status != m.Status.RUNNING,
        }

    def state_dict(self) -> dict[str, Any]:
        state = asdict(self)
        del state["rule"], state["positions"]  # the run's settings, not its state
        state["status"] = str(self.status)  # plain data: checkpoints load with weights_only
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, dict(value) if isinstance(value, dict) else value)
        self.status = m.Status(self.status)


# --- the phase changes of a whole run ----------------------------------------------------------
@dataclass(frozen=True)
class CurvePhase:
    """A phase change found in one named curve of one run (a row of phases.parquet)."""

    curve: str  # the loss curve: train_loss, val_loss, val_loss_digit2, ...
    change: PhaseChange


def run_phase_changes(
    curve: Mapping[str, Sequence[float]],
    positions: Sequence[str] = (),
    rule: PhaseRule = DEFAULT_PHASE_RULE,
) -> list[CurvePhase]:
    """Every phase change of a run's loss curves, overall and per named position.

    ``curve`` maps metric names to their values at ``curve[STEP]``, as a run's history or its
    rows of curves.parquet give them."""
    names = [m.TRAIN_LOSS, m.VAL_LOSS]
    names += [m.position_metric(n, p) for p in positions for n in (m.TRAIN_LOSS, m.VAL_LOSS)]
    found = []
    for name in names:
        if name in curve and len(curve[m.STEP]) > 1:
            found += [CurvePhase(name, c) for c in phase_changes(curve[m.STEP], curve[name], rule)]
    return found


def phase_outcome(phases: Sequence[CurvePhase]) -> dict[str, float | None]:
    """The headline of a run's phase changes: the step and size of the largest drop of the
    training and of the validation loss (None when there is none). Their difference is the
    delay that makes a run grok."""
    out: dict[str, float | None] = {}
    for loss, step_key, drop_key in (
        (m.TRAIN_LOSS, m.TRAIN_PHASE_STEP, m.TRAIN_PHASE_DROP),
        (m.VAL_LOSS, m.VAL_PHASE_STEP, m.VAL_PHASE_DROP),
    ):
        mine = [p.change for p in phases if p.curve == loss]
        largest = max(mine, key=lambda c: c.size) if mine else None
        out[step_key] = None if largest is None else float(largest.step)
        out[drop_key] = None if largest is None else float(largest.size)
    return out
