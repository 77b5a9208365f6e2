"""A real boundary study against a fair sample of the dense grid of the same resolution.

    .venv/bin/python bench/boundary_real.py STUDY_DIR [--sample 30] [--seed 0] [--storage DIR]

STUDY_DIR is a finished ``mode: boundary`` study with one map (boundary_lr_wd.yaml). The dense
grid of its resolution has R^d points; this draws ``--sample`` of them at random among those the
search did not run, runs them as a grid study of their own (one variant per point, the study's
other settings unchanged), and reports: the trials the search used against the dense grid's,
and for the sampled points the share whose region the refined map gives right (the label of the
cell the point lies in: a cell whose corners agree), the share that fall in a mixed cell (the
boundary, where the map does not say), and how many a uniform cell got wrong.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.boundary_map import rebuild
from analysis.common import load_study, majority
from grok_tune.boundary import MIXED
from grok_tune.regions import REGION


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("study", type=Path)
    parser.add_argument("--sample", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", type=Path, default=Path("bench/out"))
    args = parser.parse_args()

    study = load_study(args.study)
    plan = rebuild(study)
    if len(plan.refinements) != 1:
        raise SystemExit("one map only (a study without grid settings)")
    ref = plan.refinements[0]
    run = set(ref.points)
    lattice = [p for p in itertools.product(range(ref.resolution), repeat=ref.dim) if p not in run]
    rng = np.random.default_rng(args.seed)
    chosen = [lattice[i] for i in rng.choice(len(lattice), size=args.sample, replace=False)]

    spec = study.spec
    fixed = dict(spec.fixed)
    variants = [ref.values(p) for p in chosen]
    name = f"{spec.name}_dense_sample"
    dense_spec = {
        "name": name,
        "mode": "grid",
        "max_concurrent": spec.max_concurrent,
        "params": {**fixed, "seed": {"grid": [int(fixed.get("seed", 0))]}},
        "variants": variants,
    }
    args.storage.mkdir(parents=True, exist_ok=True)
    space = args.storage / f"{name}.yaml"
    space.write_text(yaml.safe_dump(dense_spec))
    if not (args.storage / name / "trials.parquet").exists():
        subprocess.run(
            [sys.executable, "-m", "grok_tune.search", "--space", str(space),
             "--storage", str(args.storage)],
            check=True,
        )  # fmt: skip
    dense = load_study(args.storage / name).finished

    cells = {c.origin: c for c in ref.cells()}

    def cell_label(point: tuple[int, ...]) -> str:
        for origin, cell in cells.items():
            if all(o <= x <= o + cell.size for o, x in zip(origin, point, strict=True)):
                return cell.label
        return MIXED

    right = mixed = wrong = 0
    misses = []
    for point, values in zip(chosen, variants, strict=True):
        rows = dense
        for key, value in values.items():
            rows = rows[np.isclose(rows[key].astype(float), value, rtol=1e-9)]
        if rows.empty:
            continue
        truth = ref.group(str(majority(rows[REGION])[0]))
        label = ref.group(cell_label(point))  # a cell of one group member is the group's
        if label == MIXED:
            mixed += 1
        elif label == truth:
            right += 1
        else:
            wrong += 1
            misses.append(f"    {values}: the map says {label}, the trial was {truth}")
    n = right + mixed + wrong
    dense_total = ref.resolution**ref.dim * spec.num_samples
    print(
        f"{spec.name}: the search ran {ref.trials} trials; the dense grid of its resolution "
        f"({ref.resolution}^{ref.dim}) has {dense_total} ({dense_total / ref.trials:.1f}x)"
    )
    print(f"sampled dense points not run by the search: {n}")
    print(f"  in a uniform cell, region right: {right} ({right / n:.0%})")
    print(f"  in a mixed (boundary) cell:      {mixed} ({mixed / n:.0%})")
    print(f"  in a uniform cell, region wrong: {wrong} ({wrong / n:.0%})")
    print("\n".join(misses))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
