"""The phase-change detector against hand-labelled loss curves: precision, recall, located step.

    python -m grok_tune.events_eval [DATA_DIR] [--curves]

``DATA_DIR`` (default tests/data/phase_curves) holds one JSON file per training run (its
settings and curves, written by bench/phase_curves.py) and ``labels.yaml``, written by hand from
the curves' plots, never from the detector: for each labelled curve the cliffs a researcher
would mark, each as ``[start, end]`` steps, and optionally ``maybe`` cliffs, drops the labeller
could not call either way (a detection there is neither right nor wrong, a miss no miss).
A curve listed with no cliffs is labelled as having none.

Scoring: a detected phase change is a true positive when its ``[start, end]`` overlaps a
labelled cliff's not yet matched to another detection (the one it overlaps most); it is
*located* when its ``step`` lies inside that cliff's ``[start, end]``; otherwise its error is
the distance in steps to the nearer edge. Precision = true positives / detections (those on
``maybe`` cliffs left out), recall = true positives / labelled cliffs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grok_tune.events import DEFAULT_PHASE_RULE, PhaseChange, PhaseRule, phase_changes

DATA_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "phase_curves"

Interval = tuple[float, float]


@dataclass(frozen=True)
class LabelledCurve:
    run: str
    group: str
    curve: str  # train_loss, val_loss_digit2, ...
    steps: np.ndarray
    losses: np.ndarray
    cliffs: tuple[Interval, ...]
    maybe: tuple[Interval, ...] = ()


@dataclass
class Score:
    """Counts over some curves; ``errors`` the located step's distance outside its cliff."""

    curves: int = 0
    labelled: int = 0
    found: int = 0  # detections, those on maybe cliffs left out
    true: int = 0
    inside: int = 0
    errors: list[float] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)  # "run/curve [start, end]"
    false: list[str] = field(default_factory=list)  # "run/curve step"
    outside: list[str] = field(default_factory=list)  # "run/curve step not in [start, end]"

    def add(self, other: Score) -> None:
        for name in ("curves", "labelled", "found", "true", "inside"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("errors", "misses", "false", "outside"):
            getattr(self, name).extend(getattr(other, name))

    @property
    def precision(self) -> float:
        return self.true / self.found if self.found else 1.0

    @property
    def recall(self) -> float:
        return self.true / self.labelled if self.labelled else 1.0


def load(data_dir: Path = DATA_DIR) -> list[LabelledCurve]:
    """Every labelled curve, in the labels file's order."""
    import yaml

    labels = yaml.safe_load((data_dir / "labels.yaml").read_text())
    out = []
    for run, curves in labels.items():
        stored = json.loads((data_dir / f"{run}.json").read_text())
        steps = np.asarray(stored["curves"]["step"], dtype=float)
        for curve, label in curves.items():
            label = label or {}
            values = [np.nan if v is None else v for v in stored["curves"][curve]]
            out.append(
                LabelledCurve(
                    run=run,
                    group=stored["group"],
                    curve=curve,
                    steps=steps,
                    losses=np.asarray(values, dtype=float),
                    cliffs=_intervals(label.get("cliffs", ())),
                    maybe=_intervals(label.get("maybe", ())),
                )
            )
    return out


def _intervals(raw: Iterable[Any]) -> tuple[Interval, ...]:
    out = []
    for pair in raw:
        start, end = (float(x) for x in pair)
        if not start < end:
            raise ValueError(f"cliff {pair}: start before end")
        out.append((start, end))
    return tuple(out)


def _overlap(a: Interval, b: Interval) -> float:
    """How far two closed intervals overlap; -distance between them when they do not."""
    return min(a[1], b[1]) - max(a[0], b[0])


def score_curve(curve: LabelledCurve, found: list[PhaseChange]) -> Score:
    score = Score(curves=1, labelled=len(curve.cliffs))
    free = list(curve.cliffs)
    where = f"{curve.run}/{curve.curve}"
    for change in found:
        span = (change.start, change.end)
        best = max(free, key=lambda c: _overlap(span, c), default=None)
        if best is not None and _overlap(span, best) >= 0:
            free.remove(best)
            score.found += 1
            score.true += 1
            lo, hi = best
            error = max(lo - change.step, change.step - hi, 0.0)
            score.errors.append(error)
            if error == 0:
                score.inside += 1
            else:
                score.outside.append(f"{where} step {change.step:.0f} not in [{lo:g}, {hi:g}]")
        elif any(_overlap(span, m) >= 0 for m in curve.maybe):
            continue  # a drop the labeller could not call: neither right nor wrong
        else:
            score.found += 1
            score.false.append(
                f"{where} step {change.step:.0f} [{change.start:g}, {change.end:g}]"
                f" {change.loss_start:.3g} -> {change.loss_end:.3g}"
            )
    score.misses += [f"{where} [{lo:g}, {hi:g}]" for lo, hi in free]
    return score


def evaluate(
    curves: Iterable[LabelledCurve], rule: PhaseRule = DEFAULT_PHASE_RULE
) -> dict[str, Score]:
    """Scores per curve group, and over all (key ``"all"``)."""
    groups: dict[str, Score] = {}
    total = Score()
    for curve in curves:
        s = score_curve(curve, phase_changes(curve.steps, curve.losses, rule))
        groups.setdefault(curve.group, Score()).add(s)
        total.add(s)
    return {**dict(sorted(groups.items())), "all": total}


def table(scores: Mapping[str, Score]) -> str:
    head = (
        f"{'group':<10} {'curves':>6} {'cliffs':>6} {'found':>5} {'TP':>4} {'prec':>5} "
        f"{'recall':>6} {'inside':>7} {'err med':>7} {'err max':>7}"
    )
    lines = [head, "-" * len(head)]
    for name, s in scores.items():
        errs = np.asarray(s.errors) if s.errors else np.zeros(1)
        lines.append(
            f"{name:<10} {s.curves:>6} {s.labelled:>6} {s.found:>5} {s.true:>4} "
            f"{s.precision:>5.2f} {s.recall:>6.2f} {f'{s.inside}/{s.true}':>7} "
            f"{np.median(errs):>7.0f} {errs.max():>7.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", nargs="?", type=Path, default=DATA_DIR)
    parser.add_argument("--curves", action="store_true", help="also list every curve's finds")
    args = parser.parse_args(argv)
    curves = load(args.data_dir)
    scores = evaluate(curves)
    print(f"rule: {DEFAULT_PHASE_RULE.describe()}")
    print(table(scores))
    total = scores["all"]
    for title, items in (
        ("missed", total.misses),
        ("false", total.false),
        ("located outside the cliff", total.outside),
    ):
        if items:
            print(f"\n{title} ({len(items)}):")
            print("\n".join(f"  {x}" for x in items))
    if args.curves:
        print()
        for c in curves:
            found = phase_changes(c.steps, c.losses)
            marks = ", ".join(f"{f.step:.0f} [{f.start:g}, {f.end:g}]" for f in found)
            print(f"{c.run}/{c.curve}: labelled {list(c.cliffs)}; found {marks or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
