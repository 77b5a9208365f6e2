"""Generate the loss curves of the labelled phase-change set (tests/data/phase_curves/).

    python -m bench.phase_curves [--only NAME ...] [--plot]

Each run trains one small configuration with the real Trainer (one thread, no Ray) and stores
its steps and loss curves (training and validation, overall and per answer position), rounded
to 4 significant digits, with the settings that produced them, as one JSON file per run. The
labels (tests/data/phase_curves/labels.yaml) are written by hand from the plots that ``--plot``
draws (log-loss against step, gridlines every few hundred steps); they are never generated from
the detector. ``bench/phase_labels.py`` scores the detector against them.

About 15 CPU-minutes for all runs on one core of a 2-core Xeon.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "phase_curves"

# the README demo (search_spaces/default.yaml): x+y mod 59, 1 layer, width 64
DEMO = dict(
    op="x+y", p=59, n_layers=1, d_model=64, d_mlp=256, lr=3e-3, steps=3000, eval_every=50,
    confusion_step=1500,
)  # fmt: skip
# search_spaces/phase_change_tables.yaml at p = 97
TABLE97 = dict(
    op="x+y", p=97, n_layers=1, d_model=128, d_mlp=512, lr=2e-3, weight_decay=1.0, steps=4000,
    eval_every=50,
)  # fmt: skip
# REFERENCE.md's 4-digit addition: each answer digit falls off its own cliff
ADD4 = dict(
    task="addition", digits=4, val_size=500, n_layers=1, d_model=96, n_heads=4, d_mlp=384,
    lr=5e-4, weight_decay=0.1, batch_size=64, steps=4000, eval_every=50,
    stop_after_generalized=None,
)  # fmt: skip
# search_spaces/phase_change_induction.yaml, width 64
INDUCTION = dict(
    task="repeated_subsequence", seq_len=40, vocab=24, sub_len=8, repeats=3, val_size=300,
    d_model=64, n_heads=4, d_mlp=0, lr=1e-3, weight_decay=1.0, beta2=0.999, batch_size=64,
    steps=2000, eval_every=50, stop_after_generalized=None,
)  # fmt: skip

SPIKY = {**DEMO, "stop_after_generalized": None}


def _runs() -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (group, settings)."""
    runs: dict[str, tuple[str, dict[str, Any]]] = {}
    for frac in (0.3, 0.5, 0.8):
        for wd in (0.0, 1.0):
            runs[f"demo_f{frac}_wd{wd:g}"] = ("tables", {**DEMO, "frac": frac, "weight_decay": wd})
    runs["demo_f0.5_wd10"] = ("tables", {**DEMO, "frac": 0.5, "weight_decay": 10.0})
    runs["table97_f0.3"] = ("tables", {**TABLE97, "frac": 0.3})
    runs["table97_f0.95"] = ("tables", {**TABLE97, "frac": 0.95, "stop_after_generalized": 10})
    for seed in (0, 1, 2):
        runs[f"add4_inf_s{seed}"] = ("addition", {**ADD4, "train_size": "infinite", "seed": seed})
    runs["add4_n400"] = ("addition", {**ADD4, "train_size": 400, "steps": 3000})
    runs["add3_n750_wd0"] = (
        "addition",
        {**ADD4, "digits": 3, "train_size": 750, "weight_decay": 0.0, "steps": 3000},
    )
    for layers in (1, 2, 3):
        runs[f"induction_L{layers}"] = (
            "induction",
            {**INDUCTION, "n_layers": layers, "train_size": "infinite"},
        )
    runs["induction_L2_n256"] = ("induction", {**INDUCTION, "n_layers": 2, "train_size": 256})
    remedies: dict[str, dict[str, Any]] = {
        "remedy_ema_f0.5_wd1": {"frac": 0.5, "weight_decay": 1.0, "grad_filter": "ema"},
        "remedy_ema_f0.3_wd0": {"frac": 0.3, "weight_decay": 0.0, "grad_filter": "ema"},
        "remedy_stablemax_f0.5": {"frac": 0.5, "weight_decay": 0.0, "loss": "stablemax"},
        "remedy_ortho_f0.5": {"frac": 0.5, "weight_decay": 0.0, "orthogonal_grad": True},
    }
    for name, settings in remedies.items():
        runs[name] = ("remedies", {**DEMO, **settings})
    # spiky: a large learning rate (loss spikes that recover, slingshots)
    spiky: dict[str, dict[str, Any]] = {
        "spiky_lr1e-2_f0.5_wd1": {"frac": 0.5, "weight_decay": 1.0, "lr": 1e-2},
        "spiky_lr1e-2_f0.3_wd0.3": {"frac": 0.3, "weight_decay": 0.3, "lr": 1e-2},
        "spiky_lr3e-2_f0.8_wd0": {"frac": 0.8, "weight_decay": 0.0, "lr": 3e-2},
    }
    for name, settings in spiky.items():
        runs[name] = ("spiky", {**SPIKY, **settings})
    return runs


RUNS = _runs()


def _round(x: float | None) -> float | None:
    if x is None or not math.isfinite(x) or x == 0:
        return None if x is None or not math.isfinite(x) else 0.0
    return float(f"{x:.4g}")


def generate(name: str, group: str, settings: dict[str, Any]) -> dict[str, Any]:
    import torch

    from grok_tune import metrics as m
    from grok_tune.config import TrainConfig
    from grok_tune.train import Trainer

    torch.set_num_threads(1)
    cfg = TrainConfig(**settings)
    trainer = Trainer(cfg)
    t0 = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - t0
    names = [m.TRAIN_LOSS, m.VAL_LOSS, m.TRAIN_ACC, m.VAL_ACC]
    for pos in trainer.layout.position_names:
        names += [m.position_metric(m.TRAIN_LOSS, pos), m.position_metric(m.VAL_LOSS, pos)]
    curves = {m.STEP: [int(r[m.STEP]) for r in trainer.history]}
    for key in names:
        curves[key] = [_round(r.get(key)) for r in trainer.history]
    print(f"{name}: {trainer.step} steps, {seconds:.0f} s, {trainer.status}", flush=True)
    return {"name": name, "group": group, "settings": settings, "curves": curves}


def plot(run: dict[str, Any], out: Path) -> None:
    """One figure per run: every loss curve on a log axis, gridlines to read steps from."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    curves = run["curves"]
    # one panel per loss, training and validation together (they coincide on unlimited data)
    panels = list(dict.fromkeys(k.split("_", 1)[1] for k in curves if "loss" in k))
    rows = len(panels)
    fig, axes = plt.subplots(rows, 1, figsize=(13, 3.0 * rows), squeeze=False)
    t = np.asarray(curves["step"], dtype=float)
    last = t[-1]
    major = 500 if last > 2500 else 250
    for ax, panel in zip(axes.flat, panels, strict=True):
        for split, colour in (("train", "tab:red"), ("val", "tab:green")):
            values = curves.get(f"{split}_{panel}")
            if values is None:
                continue
            y = np.array([np.nan if v is None else v for v in values], dtype=float)
            ax.semilogy(t, np.maximum(y, 1e-8), ".-", ms=2.5, lw=0.7, color=colour, label=split)
        ax.set_title(f"{run['name']}  {panel}", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
        ax.set_xticks(np.arange(0, last + 1, major))
        ax.set_xticks(np.arange(0, last + 1, major / 5), minor=True)
        ax.grid(True, which="major", lw=0.6)
        ax.grid(True, which="minor", axis="x", lw=0.25, alpha=0.6)
        ax.grid(True, which="minor", axis="y", lw=0.25, alpha=0.4)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{run['name']}.png", dpi=72)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="run names (default: every missing one)")
    parser.add_argument("--plot", type=Path, help="draw every stored run into this folder")
    args = parser.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    if args.plot:
        args.plot.mkdir(parents=True, exist_ok=True)
        for path in sorted(DATA.glob("*.json")):
            plot(json.loads(path.read_text()), args.plot)
        return
    for name, (group, settings) in RUNS.items():
        path = DATA / f"{name}.json"
        if (args.only and name not in args.only) or (not args.only and path.exists()):
            continue
        run = generate(name, group, settings)
        path.write_text(json.dumps(run, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
