"""Phase changes on synthetic loss curves whose answers are known."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from grok_tune.events import (
    DEFAULT_PHASE_RULE,
    PhaseChange,
    PhaseRule,
    first_phase_change,
    largest_phase_change,
    phase_changes,
)

CHANCE = float(np.log(97))  # a p = 97 table: the loss at initialisation


def drop(t: np.ndarray, at: float, width: float, hi: float, lo: float) -> np.ndarray:
    """A sigmoid in log-loss from ``hi`` to ``lo``, centred at ``at``, 10-90% in ``width`` steps."""
    share = 1 / (1 + np.exp(-(t - at) * 2 * np.log(9) / width))
    return np.exp(np.log(hi) + share * (np.log(lo) - np.log(hi)))


def noisy(loss: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Multiplicative noise: a loss curve's noise scales with the loss."""
    return loss * np.exp(np.random.default_rng(seed).normal(0, sigma, len(loss)))


def evals(last: int, every: int) -> np.ndarray:
    return np.arange(0, last + 1, every, dtype=float)


def assert_one_drop(
    changes: list[PhaseChange], at: float, hi: float, lo: float, tol: float, sigma: float = 0.0
) -> PhaseChange:
    assert len(changes) == 1, changes
    (c,) = changes
    assert abs(c.step - at) <= tol, (c.step, at)
    assert c.start < c.step < c.end
    # the plateau's level where the fall leaves it carries the noise into the size
    assert c.size == pytest.approx(hi - lo, rel=0.1 + 1.5 * sigma)
    # the end is where 90% of the fall in log-loss is done
    assert 0.8 * np.log(hi / lo) <= np.log(c.factor) <= 1.1 * np.log(hi / lo)
    assert c.size == pytest.approx(c.loss_start - c.loss_end)
    assert c.factor == pytest.approx(c.loss_start / c.loss_end)
    return c


# --- one drop after a plateau ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "width", "every", "hi", "lo", "sigma"),
    [
        (1_000, 100, 20, np.log(10), 0.01, 0.0),  # an answer digit, early and sharp
        (10_000, 1_500, 100, CHANCE, 0.01, 0.0),  # 1,500 steps at step 10,000: sudden
        (5_000, 400, 50, CHANCE, 0.05, 0.1),
        (2_000, 150, 25, 6.0, 1.5, 0.05),  # induction: from ln(vocab) to a quarter of it
        (30_000, 4_000, 200, 1.0, 0.02, 0.1),
        (40_000, 3_000, 100, 0.08, 0.002, 0.1),  # small in nats, still 0.078 of them
    ],
)
def test_a_sigmoid_drop_after_a_plateau_is_found_at_its_centre(
    at: float, width: float, every: int, hi: float, lo: float, sigma: float
) -> None:
    t = evals(3 * at, every)
    loss = noisy(drop(t, at, width, hi, lo), sigma, seed=int(at))
    assert_one_drop(phase_changes(t, loss), at, hi, lo, tol=2 * every + 0.1 * width, sigma=sigma)


@pytest.mark.parametrize("seed", range(5))
def test_noise_moves_the_drop_by_a_few_evaluations_at_most(seed: int) -> None:
    t = evals(100_000, 50)  # 2,001 evaluations
    loss = noisy(drop(t, 40_000, 1_000, CHANCE, 0.01), 0.15, seed)
    assert_one_drop(phase_changes(t, loss), 40_000, CHANCE, 0.01, tol=200, sigma=0.15)


def test_several_drops_in_one_curve_are_found_in_time_order() -> None:
    t = evals(40_000, 50)
    clean = drop(t, 2_000, 200, CHANCE, 1.0) * drop(t, 15_000, 1_000, 1.0, 0.05)
    changes = phase_changes(t, noisy(clean, 0.05))
    assert len(changes) == 2
    assert changes[0].step == pytest.approx(2_000, abs=100)
    assert changes[1].step == pytest.approx(15_000, abs=150)
    assert changes[0].end <= changes[1].start
    assert changes[0].size == pytest.approx(CHANCE - 1.0, rel=0.2)
    assert changes[1].size == pytest.approx(0.95, rel=0.2)


def test_first_and_largest() -> None:
    t = evals(40_000, 50)
    loss = drop(t, 2_000, 200, CHANCE, 1.0) * drop(t, 15_000, 1_000, 1.0, 0.05)
    first = first_phase_change(t, loss)
    by_size = largest_phase_change(t, loss)
    by_factor = largest_phase_change(t, loss, by="factor")
    assert first is not None and by_size is not None and by_factor is not None
    assert first.step == pytest.approx(2_000, abs=100)
    assert by_size == first  # 3.6 nats against 0.95
    assert by_factor.step == pytest.approx(15_000, abs=100)  # x20 against x4.6
    flat = np.full(len(t), CHANCE)
    assert first_phase_change(t, flat) is None
    assert largest_phase_change(t, flat) is None
    with pytest.raises(ValueError, match="by"):
        largest_phase_change(t, loss, by="steps")  # type: ignore[arg-type]


# --- no phase change ---------------------------------------------------------------------------

T = evals(100_000, 50)


@pytest.mark.parametrize(
    "loss",
    [
        pytest.param(np.full(len(T), CHANCE), id="flat"),
        pytest.param(noisy(np.full(len(T), CHANCE), 0.1, seed=1), id="noisy-flat"),
        pytest.param(noisy(np.full(len(T), 0.02), 0.15, seed=2), id="noisy-flat-low"),
        pytest.param(CHANCE * np.exp(-T / 20_000), id="slow-exponential"),
        pytest.param(CHANCE * np.exp(-T / 5_000), id="exponential-to-1e-8"),
        pytest.param(noisy(CHANCE * np.exp(-T / 10_000), 0.1, seed=3), id="noisy-exponential"),
        pytest.param(CHANCE * (1 + T / 1_000) ** -1.0, id="power-law"),
        pytest.param(CHANCE * (1 + T / 5_000) ** -2.0, id="power-law-steep"),
        pytest.param(CHANCE + T / 5_000, id="rising"),
        pytest.param(noisy(CHANCE + 10 * (1 - np.exp(-T / 3_000)), 0.1, seed=4), id="rising-noisy"),
    ],
)
def test_no_phase_change(loss: np.ndarray) -> None:
    assert phase_changes(T, loss) == []


@pytest.mark.parametrize("every", [50, 100])
def test_a_drop_as_long_as_the_run_before_it_is_not_sudden(every: int) -> None:
    # at step 300, 1,500 steps is most of the run so far; at 10,000 the same drop is sudden
    t = evals(20_000, every)
    assert phase_changes(t, drop(t, 1_050, 1_500, CHANCE, 0.01)) == []
    assert len(phase_changes(t, drop(t, 10_750, 1_500, CHANCE, 0.01))) == 1


def test_a_decline_that_only_begins_after_a_plateau_is_not_sudden() -> None:
    t = evals(40_000, 50)
    # flat to step 10,000, then down by a constant factor per step for 8,000 steps
    share = np.clip((t - 10_000) / 8_000, 0, 1)
    assert phase_changes(t, CHANCE * (0.01 / CHANCE) ** share) == []


def test_tiny_drops_count_neither_in_nats_alone_nor_as_a_factor_alone() -> None:
    t = evals(20_000, 50)
    # x100 but 1e-4 nats: no prediction moves
    assert phase_changes(t, drop(t, 10_000, 500, 1e-4, 1e-6)) == []
    # a nat but 5%
    assert phase_changes(t, drop(t, 10_000, 500, 20.0, 19.0)) == []
    # each is a setting
    assert len(phase_changes(t, drop(t, 10_000, 500, 1e-4, 1e-6), PhaseRule(min_drop_nats=0))) == 1
    assert len(phase_changes(t, drop(t, 10_000, 500, 20.0, 19.0), PhaseRule(min_drop_factor=1.04)))


def test_coming_back_down_after_a_spike_is_not_a_phase_change() -> None:
    t = evals(20_000, 50)
    loss = np.full(len(t), 0.05)
    loss[200:210] = 3.0  # ten evaluations: longer than the median removes (a slingshot)
    assert phase_changes(t, noisy(loss, 0.05)) == []


# --- grokking ----------------------------------------------------------------------------------


def test_grokking_validation_loss_one_phase_change_at_the_collapse() -> None:
    t = evals(40_000, 100)
    # memorizing: validation loss rises from chance to 15 nats and sits there, noisy
    high = noisy(CHANCE + (15 - CHANCE) * (1 - np.exp(-t / 1_500)), 0.1, seed=5)
    loss = drop(t, 20_000, 1_000, 1.0, 0.01 / 15) * high  # then collapses to ~0.01
    (c,) = phase_changes(t, loss)
    assert c.step == pytest.approx(20_000, abs=300)
    assert c.loss_start > 12 and c.loss_end < 0.05
    # 5% of the fall in nats is reached ~5 sigmoid scales before the centre; noise moves it more
    assert 17_500 <= c.start < 20_000 < c.end <= 21_000


def test_grokking_validation_loss_that_eases_down_before_it_collapses() -> None:
    # during circuit formation validation loss can drift down; the collapse still stands out
    t = evals(30_000, 100)
    drift = np.clip(1 - (t - 3_000) / 20_000, 0.35, 1.0) ** 2  # x8 down over 13,000 steps
    loss = noisy(8.0 * drift * drop(t, 16_000, 800, 1.0, 0.005), 0.05, seed=6)
    (c,) = phase_changes(t, loss)
    assert c.step == pytest.approx(16_000, abs=300)


def test_grokking_training_loss_its_initial_drop_counts() -> None:
    t = evals(40_000, 100)
    floor = noisy(np.full(len(t), 1e-3), 0.1, seed=7)
    loss = np.r_[CHANCE, 0.5, 0.02, floor[3:]]
    (c,) = phase_changes(t, loss)
    assert c.start == 0 and c.end <= 400 and c.step <= 200
    assert c.loss_start == CHANCE  # the first evaluation keeps its value
    assert c.size == pytest.approx(CHANCE, rel=0.01)


def test_grokking_training_loss_with_a_clean_up_drop() -> None:
    t = evals(40_000, 100)
    loss = np.r_[CHANCE, 0.8, 0.1, np.full(len(t) - 3, 0.05)] * drop(t, 20_000, 1_500, 1.0, 0.02)
    changes = phase_changes(t, noisy(loss, 0.1, seed=8))
    assert len(changes) == 2
    assert changes[0].start == 0
    assert changes[1].step == pytest.approx(20_000, abs=300)
    assert changes[1].size == pytest.approx(0.049, rel=0.25)


def test_an_initial_drop_over_many_evaluations_needs_a_longer_minimum_window() -> None:
    # the same drop over the first 300 steps, evaluated every 100 steps and every 10
    def initial_drop(t: np.ndarray) -> np.ndarray:
        return np.exp(np.log(CHANCE) + np.clip(t / 300, 0, 1) * np.log(1e-3 / CHANCE))

    sparse, dense = evals(20_000, 100), evals(20_000, 10)
    assert len(phase_changes(sparse, initial_drop(sparse))) == 1
    assert phase_changes(dense, initial_drop(dense)) == []  # 30 evaluations: not sudden
    (c,) = phase_changes(dense, initial_drop(dense), PhaseRule(min_window_evals=40))
    assert c.start == 0 and c.step == pytest.approx(150, abs=20)


def test_each_answer_digit_has_its_own_phase_change() -> None:
    # multi-digit addition: each answer digit's loss plateaus at ln 10, then drops at its own time
    t = evals(15_000, 50)
    for k, at in enumerate((1_000, 3_000, 6_000, 10_000)):
        loss = noisy(drop(t, at, 0.1 * at, np.log(10), 0.01), 0.05, seed=k)
        tol = max(100, 0.05 * at)
        assert_one_drop(phase_changes(t, loss), at, np.log(10), 0.01, tol=tol, sigma=0.05)


# --- awkward curves ----------------------------------------------------------------------------


def test_a_non_finite_tail_ends_the_curve() -> None:
    t = evals(20_000, 50)
    loss = drop(t, 8_000, 500, CHANCE, 0.01)
    expected = phase_changes(t, loss)
    assert len(expected) == 1
    for bad in (np.nan, np.inf, -np.inf):
        after = loss.copy()
        after[300:] = bad  # diverged at step 15,000, after the drop
        assert phase_changes(t, after) == phase_changes(t[:300], loss[:300])
        assert phase_changes(t, after)[0].step == pytest.approx(expected[0].step)
        before = loss.copy()
        before[150:] = bad  # diverged at step 7,500, before it
        assert phase_changes(t, before) == []
    assert phase_changes(t, np.full(len(t), np.nan)) == []


def test_unequal_spacing() -> None:
    # log-spaced evaluations, and evaluations at jittered steps
    t_log = np.unique(np.round(np.geomspace(1, 100_000, 400)))
    (c,) = phase_changes(t_log, drop(t_log, 20_000, 2_000, CHANCE, 0.01))
    assert c.step == pytest.approx(20_000, abs=300)
    rng = np.random.default_rng(9)
    t_jit = np.cumsum(rng.integers(20, 200, 600)).astype(float)
    loss = noisy(drop(t_jit, 30_000, 2_000, CHANCE, 0.01), 0.05, seed=10)
    assert_one_drop(phase_changes(t_jit, loss), 30_000, CHANCE, 0.01, tol=400, sigma=0.05)


def test_short_curves_lists_and_columns() -> None:
    assert phase_changes([], []) == []
    assert phase_changes([0], [CHANCE]) == []
    assert len(phase_changes([0, 100, 200], [CHANCE, 0.01, 0.01])) == 1
    assert phase_changes([0, 100], [CHANCE, CHANCE]) == []
    # columns of curves.parquet (int64 steps, float64 losses), a missing loss ending the curve
    t = evals(20_000, 50)
    loss = drop(t, 8_000, 500, CHANCE, 0.01)
    column = pd.Series(loss, dtype="Float64")
    column.iloc[300:] = pd.NA
    expected = phase_changes(t[:300], loss[:300])
    assert phase_changes(pd.Series(t.astype(np.int64)), column) == expected


def test_steps_are_checked() -> None:
    with pytest.raises(ValueError, match="increasing"):
        phase_changes([0, 100, 100, 200], [1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="length"):
        phase_changes([0, 100], [1.0])


def test_cheap_on_long_curves() -> None:
    t = evals(200_000, 100)  # 2,001 evaluations
    curves = [
        noisy(drop(t, 80_000, 5_000, CHANCE, 0.01), 0.1),
        CHANCE * np.exp(-t / 20_000),  # every evaluation a candidate: the slow path
    ]
    start = time.perf_counter()
    for loss in curves * 10:
        phase_changes(t, loss)
    assert (time.perf_counter() - start) / 20 < 0.05  # a few milliseconds each, in fact


# --- the rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("smooth", 4),
        ("smooth", 0),
        ("smooth", 5.0),
        ("smooth", True),
        ("min_drop_nats", -0.1),
        ("min_drop_nats", float("nan")),
        ("min_drop_factor", 1.0),
        ("min_drop_factor", float("inf")),
        ("rel_window", -0.5),
        ("min_window_evals", 0),
        ("min_window_evals", 2.5),
        ("max_rate_before", 1.0),
        ("max_rate_before", -0.1),
        ("max_fall_after", 1.5),
        ("max_fall_after", "0.2"),
    ],
)
def test_bad_settings_are_refused_by_name(setting: str, value: object) -> None:
    with pytest.raises(ValueError, match=setting):
        PhaseRule(**{setting: value})  # type: ignore[arg-type]


def test_the_rule_describes_itself() -> None:
    assert PhaseRule() == DEFAULT_PHASE_RULE
    text = DEFAULT_PHASE_RULE.describe()
    for part in ("median5", "0.01nats", "x2", "8evals", "0.5*step", "0.25"):
        assert part in text
    assert PhaseRule(smooth=7).describe() != text
    with pytest.raises(AttributeError):
        DEFAULT_PHASE_RULE.smooth = 3  # type: ignore[misc]


def test_importable_without_torch_or_pandas() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['pandas'] = None\n"
        "import grok_tune.events as ev\n"
        "assert ev.phase_changes([0, 100, 200], [4.6, 0.01, 0.01])\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
