"""The anchors reproduced: each preset's headline run, next to the number its paper reports.

Run by hand from the repository root (about 80 minutes on 2 CPUs for everything; each run on
one core, two at a time)::

    .venv/bin/python bench/reproduce.py                       # every row below
    .venv/bin/python bench/reproduce.py --only nanda grokfast_ma --json bench/out/repro.json
    .venv/bin/python bench/reproduce.py --only power_x/y --steps 50000   # another budget

Rows (the preset, what is overridden, what is read off the run, what the paper says):

nanda          nanda2023 as it is (full size): steps to 99% validation accuracy, the step of
               the validation loss's collapse (the largest phase change, grok_tune/events.py),
               memorization, and the Fourier sparsity of the embedding at the paper's phase
               boundaries (1.4k, 9.4k steps) and at the end.
power_x/y      power2022 (x/y mod 97, 50% of the data), budget 20k: steps to 99% validation.
grokfast_ma    grokfast2024 (Grokfast-MA, wd 0.01): steps to 95% validation.
grokfast_ema   grokfast2024 with the EMA filter (alpha 0.98, lambda 2, wd 0.005).
grokfast_base  grokfast2024 without a filter and weight decay 0 (their baseline), budget 60k.
prieto_ortho   prieto2025 (⊥Grad, AdamW weight decay 0), budget 3k: generalizes?
prieto_base    prieto2025 without ⊥Grad (AdamW, weight decay 0): memorizes only?
liu_*          four points of the learning-rate x weight-decay diagram on the project's small
               transformer (x+y mod 59, 50% data, 1 layer width 64; not Liu et al.'s model):
               the region each lands in against the phase their diagram puts there.

Each run is a Trainer on one thread; the table prints as runs finish and at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import platform
import time
from functools import partial
from pathlib import Path
from typing import Any

SMALL = {"op": "x+y", "p": 59, "frac": 0.5, "n_layers": 1, "d_model": 64, "d_mlp": 256,
         "steps": 6000, "eval_every": 50, "confusion_step": 3000}  # fmt: skip

# name -> (settings, reported, what is measured)
RUNS: dict[str, tuple[dict[str, Any], str]] = {
    "nanda": ({"preset": "nanda2023", "steps": 20_000, "eval_every": 100,
               "stop_after_generalized": 10},
              "memorized ~1.4k; circuits to ~9.4k; clean-up (test loss collapse) ~13-14k"),
    "power_x/y": ({"preset": "power2022", "steps": 20_000}, "Figure 2: ~10^3.5 steps at 50%"),
    "grokfast_ma": ({"preset": "grokfast2024", "eval_every": 10}, "95% at 790 steps"),
    "grokfast_ema": ({"preset": "grokfast2024", "grad_filter": "ema", "grokfast_alpha": 0.98,
                      "grokfast_lamb": 2.0, "weight_decay": 0.005, "eval_every": 10},
                     "95% at 910 steps"),
    "grokfast_base": ({"preset": "grokfast2024", "grad_filter": "none", "weight_decay": 0.0,
                       "steps": 60_000, "eval_every": 200}, "95% at 39,890 steps"),
    "prieto_ortho": ({"preset": "prieto2025", "steps": 3000, "eval_every": 50},
                     "⊥Grad, wd 0: generalizes, no delay (their transformer, Fig. 6)"),
    "prieto_base": ({"preset": "prieto2025", "orthogonal_grad": False, "steps": 3000,
                     "eval_every": 50}, "AdamW, wd 0: does not generalize"),
    "liu_lr1e-3_wd0": ({**SMALL, "lr": 1e-3, "weight_decay": 0.0}, "memorization"),
    "liu_lr3e-3_wd1": ({**SMALL, "lr": 3e-3, "weight_decay": 1.0}, "grokking/comprehension"),
    "liu_lr1e-2_wd10": ({**SMALL, "lr": 1e-2, "weight_decay": 10.0}, "confusion"),
    "liu_lr1e-4_wd0.1": ({**SMALL, "lr": 1e-4, "weight_decay": 0.1}, "memorization/confusion"),
}  # fmt: skip


def run_one(name: str, steps: int | None = None) -> dict[str, Any]:
    import torch

    from grok_tune import metrics as m
    from grok_tune.config import TrainConfig
    from grok_tune.regions import DEFAULT_RULE
    from grok_tune.train import Trainer

    torch.set_num_threads(1)
    settings, reported = RUNS[name]
    if steps is not None:
        settings = {**settings, "steps": steps}
    t0 = time.perf_counter()
    trainer = Trainer(TrainConfig(**settings))
    final = trainer.run()
    seconds = time.perf_counter() - t0
    history = trainer.history

    def at(step: int, key: str) -> float | None:
        rows = [r for r in history if r[m.STEP] <= step]
        return rows[-1].get(key) if rows else None

    phases = trainer.phases()
    out = {
        "name": name,
        "settings": settings,
        "reported": reported,
        "status": final[m.STATUS],
        "memorized": final[m.STEPS_TO_MEMORIZE],
        "generalized": final[m.STEPS_TO_GENERALIZE],
        "threshold": trainer.cfg.threshold,
        "steps_run": trainer.step,
        "val_phase_step": phases[m.VAL_PHASE_STEP],
        "train_phase_step": phases[m.TRAIN_PHASE_STEP],
        "region": str(DEFAULT_RULE.classify(
            final[m.STEPS_TO_MEMORIZE], final[m.STEPS_TO_GENERALIZE],
            final[m.STATUS] == m.Status.DIVERGED)),
        "best_val_acc": max(r[m.VAL_ACC] for r in history),
        "seconds": round(seconds, 1),
        "steps_per_s": round(trainer.step / seconds, 1),
    }  # fmt: skip
    if trainer.cfg.op in ("x+y",) and trainer.cfg.p == 113:
        # the paper's phase boundaries, this run's generalization and its end (a run that
        # stopped early has no value at a boundary past its end)
        marks = [0, 1_400, 9_400, final[m.STEPS_TO_GENERALIZE] or 0, trainer.step]
        out["fourier_sparsity"] = {
            str(s): at(s, m.FOURIER_SPARSITY) for s in sorted(set(marks)) if s <= trainer.step
        }
        # where his three phases end here (grok_tune/progress.py), beside his 1.4k, 9.4k, 14k
        out["nanda_phases"] = {name: phases[name] for name in m.NANDA_PHASES}
    return out


def fmt_steps(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.0f}"


def table(rows: list[dict[str, Any]]) -> str:
    from grok_tune.metrics import NANDA_PHASES

    lines = [
        f"{'run':<18} {'reported':<62} {'memorized':>9} {'general.':>9} {'val drop':>9} "
        f"{'region':<10} {'steps/s':>7}"
    ]
    for r in rows:
        lines.append(
            f"{r['name']:<18} {r['reported'][:62]:<62} {fmt_steps(r['memorized']):>9} "
            f"{fmt_steps(r['generalized']):>9} {fmt_steps(r['val_phase_step']):>9} "
            f"{r['region']:<10} {r['steps_per_s']:>7}"
        )
        if "fourier_sparsity" in r:
            sparsity = ", ".join(
                f"{k}: {v:.3f}" for k, v in r["fourier_sparsity"].items() if v is not None
            )
            lines.append(f"{'':<18} Fourier sparsity by step: {sparsity}")
        if "nanda_phases" in r:
            ends = ", ".join(
                f"{name} {fmt_steps(r['nanda_phases'][name])} (his {theirs})"
                for name, theirs in zip(NANDA_PHASES, ("~1.4k", "~9.4k", "~14k"), strict=True)
            )
            lines.append(f"{'':<18} Nanda's phases end: {ends}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=list(RUNS), help="runs to do")
    parser.add_argument("--workers", type=int, default=2, help="runs at once, one core each")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--steps", type=int, help="another budget for the runs chosen")
    args = parser.parse_args()
    names = args.only or list(RUNS)
    print(
        f"{platform.processor() or platform.machine()}, {len(names)} runs, {args.workers} at once"
    )
    rows = []
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for row in pool.imap_unordered(partial(run_one, steps=args.steps), names):
            rows.append(row)
            print(table([row]).splitlines()[1], flush=True)  # the row, not its notes
    rows.sort(key=lambda r: names.index(r["name"]))
    print()
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
