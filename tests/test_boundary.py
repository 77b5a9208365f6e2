"""Boundary search: the pure refinement on synthetic maps, its plan of trials, and its Tune
searcher on a real local Ray (the last tests; see conftest.py)."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from grok_tune import boundary as b
from grok_tune import metrics as m
from grok_tune.boundary import (
    MIXED,
    UNKNOWN,
    Axis,
    BoundaryPlan,
    Refinement,
    agreement,
    cell_labels,
    dense_points,
    majority_label,
    refine,
)

XY = (Axis("x", 0.0, 1.0), Axis("y", 0.0, 1.0))
X = (Axis("x", 0.0, 1.0),)


# --- synthetic maps: (values, repeat) -> label --------------------------------------------------
def line(v, r=0):
    return "grok" if v["y"] > 0.3 + 0.4 * v["x"] else "memorize"


def curve(v, r=0):
    return "grok" if v["y"] > 0.45 + 0.2 * math.sin(2 * math.pi * 1.2 * v["x"]) else "memorize"


def three(v, r=0):
    if v["x"] < 0.15 + 0.1 * v["y"]:
        return "confusion"
    return "generalize" if (v["x"] - 1) ** 2 + v["y"] ** 2 < 0.36 else "memorize"


def corner(v, r=0):
    return "diverged" if (1 - v["x"]) ** 2 + (1 - v["y"]) ** 2 < 0.15**2 else "grok"


def band(offset, width=0.1):
    return lambda v, r=0: "grok" if abs(v["y"] - offset) < width / 2 else "memorize"


def step_1d(v, r=0):
    return "grok" if v["x"] > 0.37 else "memorize"


def compare(ref: Refinement, fn) -> tuple[float, float]:
    """Agreement of the refined map with the dense grid: points, cells."""
    truth = dense_points(ref.axes, ref.resolution, fn, ref.num_samples)
    return (
        agreement(ref.dense_points(), truth, ref.groups),
        agreement(ref.densify(), cell_labels(truth, ref.groups), ref.groups),
    )


def asked_once(ref: Refinement) -> bool:
    return len(ref.points) == len(set(ref.points))


# --- axes and the lattice -----------------------------------------------------------------------
def test_axis_values_linear_and_log():
    lin, log = Axis("wd", 0.0, 2.0), Axis("lr", 1e-4, 1e-2, log=True)
    assert [lin.value(t) for t in (0, 0.25, 1)] == [0.0, 0.5, 2.0]
    assert log.value(0) == 1e-4 and log.value(1) == 1e-2
    assert log.value(0.5) == pytest.approx(1e-3)  # log space: the geometric middle
    assert log.middle(1e-4, 1e-2) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="log axis"):
        Axis("lr", 0.0, 1.0, log=True)
    with pytest.raises(ValueError, match="empty or inverted"):
        Axis("wd", 1.0, 1.0)


def test_level_0_is_the_starting_grid_on_the_dense_lattice():
    ref = Refinement(XY, initial=5, depth=3)
    assert ref.resolution == 33
    points = [p for p, _ in ref.requests()]
    assert len(points) == 25 and all(i % 8 == 0 for p in points for i in p)
    assert ref.values((8, 32)) == {"x": 0.25, "y": 1.0}
    log_ref = Refinement((Axis("lr", 1e-4, 1e-2, log=True),), initial=3, depth=1)
    assert [log_ref.values(p)["lr"] for p, _ in log_ref.requests()] == pytest.approx(
        [1e-4, 1e-3, 1e-2]
    )


# --- refinement on the synthetic maps -----------------------------------------------------------
@pytest.mark.parametrize("fn", [line, curve, three, corner], ids=lambda f: f.__name__)
def test_smooth_maps_match_the_dense_grid_with_3x_fewer_trials(fn):
    ref = refine(Refinement(XY), fn)
    assert ref.finished and ref.level == 3 and asked_once(ref)
    assert ref.trials * 3 <= 33**2
    assert compare(ref, fn) == (1.0, 1.0)
    # the boundary is resolved to single cells; uniform cells stay as coarse as they can
    assert all(c.size == 1 for c in ref.cells() if c.label == MIXED)
    assert any(c.size == 8 for c in ref.cells())


def test_a_split_shares_its_edge_points_with_its_neighbour():
    # x > 0.3: the two level-0 cells left of x = 0.5 split; their common edge's midpoint is one
    ref = Refinement(XY, initial=3, depth=1)
    for p, r in ref.requests():
        ref.record(p, r, "grok" if ref.values(p)["x"] > 0.3 else "memorize")
    new = ref.advance()
    assert len(new) == 9  # 2 x 5, less the shared (1, 2)
    assert (1, 2) in new and len(set(new)) == 9
    assert ref.trials == 9 + 9


def test_one_axis_bisects_intervals_whose_ends_differ():
    ref = refine(Refinement(X), step_1d)
    assert ref.trials == 5 + 3  # one midpoint per level
    assert compare(ref, step_1d) == (1.0, 1.0)
    (crossing,) = ref.boundaries()["x"]
    assert crossing.lo < 0.37 < crossing.hi and crossing.width == pytest.approx(1 / 32)
    assert (crossing.below, crossing.above, crossing.at) == ("memorize", "grok", {})


def test_two_axis_boundaries_are_crossings_along_lattice_lines():
    vertical = lambda v, r=0: "grok" if v["x"] > 0.37 else "memorize"  # noqa: E731
    ref = refine(Refinement(XY), vertical)
    crossings = ref.boundaries()
    assert crossings["y"] == []  # nothing changes along y
    assert len(crossings["x"]) == 33  # one per row of the final lattice
    assert {c.at["y"] for c in crossings["x"]} == {i / 32 for i in range(33)}
    assert all(c.lo < 0.37 < c.hi and c.width == pytest.approx(1 / 32) for c in crossings["x"])


def test_a_thin_region_between_the_starting_points_is_missed():
    # narrower than the spacing (0.25): seen only when it covers a starting row
    missed, seen = band(0.38), band(0.5)
    ref = refine(Refinement(XY), missed)
    assert ref.trials == 25 and all(ref.label(p) == "memorize" for p in ref.points)
    assert compare(ref, missed)[1] < 0.9
    ref = refine(Refinement(XY), seen)
    assert compare(ref, seen) == (1.0, 1.0)


def test_trace_follows_a_thin_region_the_corners_straddle():
    # a sloped band: the corners catch it in places; tracing follows it from there
    fn = lambda v, r=0: "grok" if abs(v["y"] - (0.43 + 0.1 * v["x"])) < 0.025 else "memorize"  # noqa: E731
    plain = refine(Refinement(XY), fn)
    traced = refine(Refinement(XY, trace=True), fn)
    assert compare(traced, fn)[1] > compare(plain, fn)[1] + 0.02
    assert traced.level > 3 and asked_once(traced)
    # on a smooth map tracing changes nothing
    assert refine(Refinement(XY, trace=True), curve).points == refine(Refinement(XY), curve).points


def test_repeats_vote_and_noise_near_the_boundary():
    def noisy(v, r):
        label = line(v)
        near = abs(v["y"] - (0.3 + 0.4 * v["x"])) < 0.06
        key = [round(v["x"] * 1e6), round(v["y"] * 1e6), r]
        if near and np.random.default_rng(key).random() < 0.2:
            return "memorize" if label == "grok" else "grok"
        return label

    ref = refine(Refinement(XY, num_samples=3), noisy)
    assert ref.trials == 3 * len(ref.points) and ref.trials * 3 <= 3 * 33**2
    points, cells = compare(ref, noisy)
    assert points > 0.99 and cells > 0.97
    # repeats are what the majority sees: a point flipped in one repeat of three keeps its label
    flipped = [p for p in ref.points if noisy(ref.values(p), 0) != line(ref.values(p))]
    assert flipped and any(ref.label(p) == line(ref.values(p)) for p in flipped)


def test_majority_ties_go_to_the_earliest_region():
    assert majority_label(["grok", "memorize"]) == "memorize"  # REGIONS order
    assert majority_label(["generalize", "grok", "generalize"]) == "generalize"
    assert majority_label(["grok", None, None]) == "grok"  # errored repeats do not vote
    assert majority_label([None, None]) is None
    assert majority_label(["b", "a", "grok"]) == "grok"  # other labels after REGIONS, by name
    assert majority_label(["b", "a"]) == "a"
    ref = Refinement(X, initial=2, depth=1, num_samples=2)
    ref.record((0,), 0, "grok")
    ref.record((0,), 1, "memorize")
    assert ref.label((0,)) == "memorize"


def test_groups_decide_what_counts_as_the_same():
    fn = lambda v, r=0: "grok" if v["x"] < 0.5 else "generalize"  # noqa: E731
    ref = refine(Refinement(X), fn)
    assert ref.trials == 8 and any(c.label == MIXED for c in ref.cells())
    learned = {"grok": "learned", "generalize": "learned"}
    ref = refine(Refinement(X, groups=learned), fn)
    assert ref.trials == 5 and ref.boundaries()["x"] == []
    labels = [c.label for c in ref.cells()]
    assert "learned" in labels and MIXED not in labels
    assert compare(ref, fn) == (1.0, 1.0)  # compared by group


def test_unknown_points_split_nothing():
    def fn(v, r=0):
        if v["x"] == 0.5 and v["y"] == 0.5:
            return None  # the trial errored
        return line(v)

    ref = refine(Refinement(XY), fn)
    assert ref.label((16, 16)) is None and asked_once(ref)
    # the errored point's cells are labelled by their known corners; it is not run again
    around = [c for c in ref.cells() if (16, 16) in _corners(c)]
    assert around and all(c.label != UNKNOWN for c in around)
    ref = Refinement(X, initial=2, depth=2)
    for p, r in ref.requests():
        ref.record(p, r, None)
    assert ref.advance() == [] and [c.label for c in ref.cells()] == [UNKNOWN]


def _corners(cell: b.Cell) -> list[tuple[int, ...]]:
    o, s = cell.origin, cell.size
    return [(o[0] + i * s, o[1] + j * s) for i in (0, 1) for j in (0, 1)]


def test_max_trials_is_never_exceeded():
    full = refine(Refinement(XY), curve)
    for budget in (25, 60, 100, 150, full.trials - 1):
        ref = Refinement(XY, max_trials=budget)
        while True:
            for p, r in ref.requests():
                ref.record(p, r, curve(ref.values(p)))
            assert ref.trials <= budget
            if not ref.advance():
                break
        assert ref.truncated and ref.trials <= budget
        # what was left unsplit is marked mixed, at its coarse size
        assert any(c.label == MIXED and c.size > 1 for c in ref.cells())
    again = refine(Refinement(XY, max_trials=100), curve)
    assert again.points == refine(Refinement(XY, max_trials=100), curve).points  # deterministic
    assert refine(Refinement(XY, max_trials=full.trials), curve).points == full.points
    with pytest.raises(ValueError, match="starting grid"):
        Refinement(XY, max_trials=24)
    with pytest.raises(ValueError, match="starting grid"):
        Refinement(XY, num_samples=2, max_trials=49)


def test_max_trials_spreads_a_cut_level_along_the_boundary():
    ref = refine(Refinement(XY, max_trials=80), line)
    split = [c for c in ref.cells() if c.size == 4]
    xs = sorted({c.origin[0] for c in split})
    assert ref.truncated and len(xs) > 1 and xs[-1] - xs[0] >= 16  # not piled at one end


def test_state_round_trips_mid_run():
    ref = Refinement(XY, num_samples=2, trace=True)
    for p, r in ref.requests():
        ref.record(p, r, curve(ref.values(p)))
    ref.advance()
    half = ref.requests()[: len(ref.requests()) // 2]
    for p, r in half:
        ref.record(p, r, curve(ref.values(p)))
    state = json.loads(json.dumps(ref.state()))  # plain data
    again = refine(Refinement.from_state(state), curve)
    assert again.points == refine(ref, curve).points
    assert [c.label for c in again.cells()] == [c.label for c in ref.cells()]


def test_cells_carry_their_size_corners_and_bounds():
    lr = Axis("lr", 1e-4, 1e-2, log=True)
    ref = refine(Refinement((lr,), 3, 1), lambda v, r: "grok" if v["lr"] > 5e-4 else "memorize")
    cells = ref.cells()
    assert [(c.origin, c.size, c.label) for c in cells] == [
        ((0,), 1, "memorize"),
        ((1,), 1, MIXED),
        ((2,), 2, "grok"),
    ]
    assert cells[1].corners == ("memorize", "grok")
    assert cells[1].bounds[0] == pytest.approx((10**-3.5, 1e-3))
    (crossing,) = ref.boundaries()["lr"]
    assert crossing.position == pytest.approx(math.sqrt(10**-3.5 * 1e-3))  # geometric
    assert list(ref.densify()) == ["memorize", MIXED, "grok", "grok"]
    assert list(ref.dense_points()) == ["memorize", "memorize", "grok", "grok", "grok"]


def test_record_refuses_what_was_never_asked():
    ref = Refinement(X, initial=3, depth=1)
    with pytest.raises(ValueError, match="never asked"):
        ref.record((1,), 0, "grok")
    ref.record((0,), 0, "grok")
    with pytest.raises(ValueError, match="already recorded"):
        ref.record((0,), 0, "grok")
    with pytest.raises(RuntimeError, match="to record"):
        ref.advance()


# --- the default label ------------------------------------------------------------------------
def test_default_label_is_the_region():
    def result(mem, gen, status):
        return {m.STEPS_TO_MEMORIZE: mem, m.STEPS_TO_GENERALIZE: gen, m.STATUS: status}

    assert b.label_region(result(100, 1000, m.Status.GENERALIZED)) == "grok"
    assert b.label_region(result(100, 150, "generalized")) == "generalize"
    assert b.label_region(result(100, None, "censored")) == "memorize"
    assert b.label_region(result(None, None, "censored")) == "confusion"
    assert b.label_region(result(None, None, "diverged")) == "diverged"
    assert b.label_region(result(100, None, "running")) is None  # stopped before its end
    assert b.label_region(result(None, None, "error")) is None


# --- the plan of trials (the searcher without Ray) ------------------------------------------------
def label_of(result):
    return result["label"]


def map_label(config, r=0):
    """The trainable's label: the line shifted by the map's ``shift``."""
    return "grok" if config["y"] > 0.3 + 0.4 * config["x"] + config["shift"] else "memorize"


MAPS = [{"shift": 0.0}, {"shift": 0.2, "seed": 10}]


def drive(plan: BoundaryPlan, until=None) -> list[str]:
    """Hand out and complete trials in Tune's way: every suggestion at once, then completions.
    Stops (with trials still pending) once ``until(plan)`` holds; returns their ids."""
    n = len(plan.records()) + len(plan.pending())
    while True:
        handed = []
        while isinstance(config := plan.suggest(f"t{n}"), dict):
            handed.append((f"t{n}", config))
            n += 1
        if config == b.FINISHED:
            return []
        for tid, config in handed:
            plan.on_trial_complete(tid, {"label": map_label(config)})
            if until and until(plan):
                return list(plan.pending())


def pure(shift: float, **kw) -> Refinement:
    return refine(Refinement(XY, 3, 2, **kw), lambda v, r: map_label({**v, "shift": shift}))


def outcome(records) -> set[tuple]:
    return {(r[b.MAP], r[b.POINT], r[b.REPEAT], r[b.LABEL]) for r in records}


def expected(**kw) -> set[tuple]:
    out = set()
    for i, fixed in enumerate(MAPS):
        ref = pure(fixed["shift"], **kw)
        out |= {(i, p, r, ref.label(p)) for p in ref.points for r in range(ref.num_samples)}
    return out


def test_plan_hands_out_a_level_at_once_and_waits():
    plan = BoundaryPlan(MAPS, XY, initial=3, depth=2, label_of=label_of)
    configs = [plan.suggest(f"t{i}") for i in range(18)]
    assert all(isinstance(c, dict) for c in configs)  # both maps' level 0
    assert plan.suggest("t18") is None  # level handed out, unfinished
    assert configs[0] == {"shift": 0.0, "x": 0.0, "y": 0.0, "seed": 0}
    assert configs[9] == {"shift": 0.2, "seed": 10, "x": 0.0, "y": 0.0}
    for i, c in enumerate(configs[:9]):
        plan.on_trial_complete(f"t{i}", {"label": map_label(c)})
    assert isinstance(plan.suggest("t18"), dict)  # map 0 goes on without map 1
    plan.on_trial_complete("unknown", {"label": "grok"})  # not ours: ignored


def test_plan_matches_the_refinement_and_counts_errors_as_unknown():
    plan = BoundaryPlan(MAPS, XY, initial=3, depth=2, label_of=label_of, num_samples=2)
    drive(plan)
    assert plan.finished and outcome(plan.records()) == expected(num_samples=2)
    seeds = {(r[b.MAP], r[b.REPEAT]): r["seed"] for r in plan.records()}
    assert seeds == {(0, 0): 0, (0, 1): 1, (1, 0): 10, (1, 1): 11}

    plan = BoundaryPlan(MAPS[:1], XY, initial=3, depth=2, label_of=label_of)
    plan.suggest("a")
    plan.on_trial_complete("a", None, error=True)
    assert plan.records()[0][b.LABEL] is None
    assert plan.refinements[0].label((0, 0)) is None


def test_plan_shares_max_trials_between_maps():
    plan = BoundaryPlan(MAPS, XY, initial=3, depth=2, label_of=label_of, max_trials=41)
    assert [r.max_trials for r in plan.refinements] == [21, 20]
    drive(plan)
    assert len(plan.records()) <= 41


def test_plan_save_and_restore_mid_level(tmp_path):
    plan = BoundaryPlan(MAPS, XY, initial=3, depth=2, label_of=label_of)
    in_flight = drive(plan, until=lambda p: p.refinements[0].level == 1 and len(p.records()) > 12)
    assert in_flight and plan._queue
    plan.save(str(tmp_path / "plan.pkl"))
    fresh = BoundaryPlan(MAPS, XY, initial=3, depth=2, label_of=label_of)
    fresh.restore(str(tmp_path / "plan.pkl"))
    assert fresh.pending() == plan.pending()
    # Tune resumes the trials in flight under their ids; the queue is handed out again
    for tid in in_flight:
        key = fresh.pending()[tid]
        fresh.on_trial_complete(tid, {"label": map_label(fresh.config(*key))})
    drive(fresh)
    assert outcome(fresh.records()) == expected()
    other = BoundaryPlan(MAPS, XY, initial=3, depth=3, label_of=label_of)
    with pytest.raises(ValueError, match="other settings"):
        other.restore(str(tmp_path / "plan.pkl"))


def test_grid_settings_give_one_map_each():
    maps = b.grid_maps({"op": "x+y"}, {"frac": [0.3, 0.5], "p": [59]})
    assert maps == [{"op": "x+y", "frac": 0.3, "p": 59}, {"op": "x+y", "frac": 0.5, "p": 59}]
    assert b.grid_maps({"op": "x+y"}, {}) == [{"op": "x+y"}]


def test_the_pure_part_needs_neither_ray_nor_torch():
    code = (
        "import sys, grok_tune.boundary as b; "
        "b.refine(b.Refinement([b.Axis('x', 0, 1)]), lambda v, r: 'grok'); "
        "assert not {'ray', 'torch'} & set(sys.modules), 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plan_refuses_maps_that_fix_an_axis_or_repeat():
    with pytest.raises(ValueError, match="which are axes"):
        BoundaryPlan([{"x": 1}], XY)
    with pytest.raises(ValueError, match="repeats map 0"):
        BoundaryPlan([{"a": 1}, {"a": 1}], XY)


# --- the searcher on Tune -----------------------------------------------------------------------
ray_session = pytest.mark.usefixtures("ray_session")


def tune_run(tmp_path: Path, trainable, searcher, restore: bool = False):
    from ray import tune

    if restore:
        tuner = tune.Tuner.restore(str(tmp_path / "study"), trainable, resume_unfinished=True)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, max_concurrent_trials=2, num_samples=-1, reuse_actors=True
            ),
            run_config=tune.RunConfig(name="study", storage_path=str(tmp_path), verbose=0),
        )
    return tuner.fit()


def saved_searcher(tmp_path: Path):
    searcher = b.BoundarySearcher(MAPS, XY, initial=3, depth=2, label_of=label_of)
    searcher.restore_from_dir(str(tmp_path / "study"))
    return searcher


@ray_session
def test_searcher_under_tune_matches_the_refinement(tmp_path):
    from ray import tune

    def trainable(config):
        tune.report({"label": map_label(config)})

    searcher = b.BoundarySearcher(MAPS, XY, initial=3, depth=2, label_of=label_of)
    results = tune_run(tmp_path, trainable, searcher)
    assert not results.errors
    want = expected()
    assert len(results) == len(want)  # each point once, and nothing more
    got = saved_searcher(tmp_path)
    assert got.finished and outcome(got.records()) == want
    by_id = {r[b.TRIAL_ID]: r for r in got.records()}
    for result in results:
        row = by_id[result.metrics["trial_id"]]
        assert result.metrics["label"] == row[b.LABEL]
        assert set(result.config) == {"shift", "x", "y", "seed"}  # no bookkeeping keys


@ray_session
def test_searcher_resumes_an_interrupted_study(tmp_path):
    from ray import tune

    driver, flag = os.getpid(), tmp_path / "interrupted"

    def trainable(config):
        if config["x"] not in (0.0, 0.5, 1.0) or config["y"] not in (0.0, 0.5, 1.0):
            try:  # the first trial past level 0 interrupts the study (Tune's SIGUSR1 = Ctrl-C)
                os.close(os.open(flag, os.O_CREAT | os.O_EXCL))
                os.kill(driver, signal.SIGUSR1)
                time.sleep(5)  # in flight when the driver stops
            except FileExistsError:
                pass
        tune.report({"label": map_label(config)})

    searcher = b.BoundarySearcher(MAPS, XY, initial=3, depth=2, label_of=label_of)
    first = tune_run(tmp_path, trainable, searcher)
    assert flag.exists()
    stopped = saved_searcher(tmp_path)
    assert stopped.pending() and not stopped.finished
    done_before = len(stopped.records())

    results = tune_run(tmp_path, trainable, None, restore=True)
    assert not results.errors and len(first) <= len(results)
    got = saved_searcher(tmp_path)
    assert got.finished and outcome(got.records()) == expected()
    assert len(results) == len(expected()) > done_before  # none ran twice, none went missing
    # the trials in flight were resumed under their ids and counted once
    assert set(stopped.pending()) <= {r[b.TRIAL_ID] for r in got.records()}


def test_searcher_state_is_plain_data(tmp_path):
    searcher = b.BoundarySearcher(MAPS, XY, initial=3, depth=2, label_of=lambda r: r["label"])
    searcher.suggest("a")
    searcher.save(str(tmp_path / "s.pkl"))
    with open(tmp_path / "s.pkl", "rb") as f:
        state = pickle.load(f)
    json.dumps(state)  # nothing but lists, dicts, numbers and strings
    assert state["pending"] == {"a": [0, [0, 0], 0]}
