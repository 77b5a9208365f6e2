"""Ray Tune's overhead on a study: the same trials with and without Ray, side by side.

    .venv/bin/python bench/study_overhead.py [--space search_spaces/default.yaml]

1. The study through ``python -m grok_tune.search`` (local Ray started inside, as ``make demo``
   does): wall time from the command's start to its results, Ray's start-up included.
2. The same trial configurations as plain processes, two at a time with one thread each (the
   study's concurrency), through ``Trainer.run`` with no callback: no Ray, no reports, no
   checkpoints, no TensorBoard.

The trials are deterministic, so both run the same steps; the overhead is the share of the
study's wall time that the plain run does not need. Trial-steps per second are reported for both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# named here: a study's folder is otherwise the file's `name:`, not necessarily its file name
STUDY_NAME = "overhead"


def _plain_trial(config: dict) -> int:
    import torch

    from grok_tune.train import TrainConfig, Trainer

    torch.set_num_threads(1)
    trainer = Trainer(TrainConfig(**config))
    trainer.run()
    return trainer.step


def grid_configs(space: Path) -> list[dict]:
    from grok_tune.space import Grid, load_spec

    spec = load_spec(space)
    if spec.mode != "grid" or not all(isinstance(d, Grid) for d in spec.distributions.values()):
        raise SystemExit("this benchmark replays grid studies only (no sampled settings)")
    # the study's own points: every grid combination crossed with the file's variants
    return [{**spec.fixed, **point} for point in spec.grid_points()] * spec.num_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--space", type=Path, default=ROOT / "search_spaces/default.yaml")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    configs = grid_configs(args.space)
    with tempfile.TemporaryDirectory() as storage:
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "grok_tune.search", "--space", str(args.space),
             "--name", STUDY_NAME, "--storage", storage,
             "--max-concurrent", str(args.concurrency)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        ray_wall = time.perf_counter() - t0
        from grok_tune.results import read_trials

        trials = read_trials(str(Path(storage) / STUDY_NAME))
        ray_steps = int(trials["step"].sum())
        trial_seconds = float(trials["wall_time_s"].sum())

    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.concurrency) as pool:
        plain_steps = sum(pool.map(_plain_trial, configs))
    plain_wall = time.perf_counter() - t0

    figures = {
        "trials": len(configs),
        "ray_wall_s": round(ray_wall, 1),
        "plain_wall_s": round(plain_wall, 1),
        "ray_trial_steps": ray_steps,
        "plain_trial_steps": plain_steps,
        "ray_trial_steps_per_s": round(ray_steps / ray_wall, 1),
        "plain_trial_steps_per_s": round(plain_steps / plain_wall, 1),
        "overhead_share_of_study_wall": round(1 - plain_wall / ray_wall, 3),
        "sum_of_trial_wall_s_in_ray": round(trial_seconds, 1),
    }
    print(json.dumps(figures, indent=2))
    if ray_steps != plain_steps:
        print("warning: the two runs did not take the same steps", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
