"""Record small runs' every evaluation record and final weights, exactly, as a reference.

``python bench/reference_runs.py tests/data/reference_runs.json`` writes, for each run below
(one per task, data regime, architecture and remedy the engine has a seam for, single runs and
populations on both of a population's paths), every evaluation record (the clock left out) and
a digest of each member's final weights. tests/test_reference_runs.py reruns them and requires
the same values, bit for bit: an engine change that changes any run shows there. Written from
the code at the commit named in the file; one thread (exactness is per thread count).
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from grok_tune import metrics as m
from grok_tune.config import TrainConfig

TABLE = dict(
    op="x+y", p=23, frac=0.8, batch_size=64, lr=5e-3, n_layers=1, d_model=32, d_mlp=64,
    eval_every=25, steps=100,
)  # fmt: skip
# fmt: off
RUNS: dict[str, list[dict[str, Any]]] = {
    "table": [TABLE],
    "table_dropout": [{**TABLE, "dropout": 0.1, "seed": 3}],
    "table_remedies": [{**TABLE, "grad_filter": "ema", "orthogonal_grad": True,
                        "fixed_weight_norm": True, "loss": "stablemax"}],
    "table_ma_adam": [{**TABLE, "grad_filter": "ma", "grokfast_window": 10, "optimizer": "adam",
                       "weight_decay": 0.1, "decay_scope": "all"}],
    "nanda_like": [{**TABLE, "layer_norm": False, "init": "width_scaled", "extra_classes": 1,
                    "warmup_from_zero": True, "loss_dtype": "float64", "batch_size": 100_000,
                    "operator_token": False, "attn_bias": False, "head_bias": False}],
    "s5": [{**TABLE, "op": "S5:x*y", "frac": 0.3, "steps": 50}],
    "addition": [dict(task="addition", digits=2, train_size=200, val_size=100, n_layers=1,
                      d_model=32, d_mlp=64, eval_every=25, steps=75, lr=5e-3)],
    "addition_unlimited": [dict(task="addition", digits=2, train_size=None, val_size=100,
                                n_layers=1, d_model=32, d_mlp=64, eval_every=25, steps=75,
                                lr=5e-3)],
    "induction": [dict(task="repeated_subsequence", seq_len=12, sub_len=3, repeats=2, vocab=16,
                       train_size=64, val_size=32, n_layers=2, d_model=32, n_heads=4, d_mlp=0,
                       eval_every=25, steps=75, lr=3e-3)],
    "mlp_liu": [{"preset": "liu2022", "p": 23, "steps": 100, "eval_every": 25}],
    "mlp_prieto": [{"preset": "prieto2025_mlp", "p": 23, "steps": 100, "eval_every": 25,
                    "orthogonal_grad": True}],
    "post_norm_xavier": [{**TABLE, "block_norm": "post", "attn_init": "xavier"}],
    "population": [{**TABLE, "seed": 0}, {**TABLE, "seed": 1, "lr": 1e-3, "grad_filter": "ema"},
                   {**TABLE, "seed": 2, "weight_decay": 0.0, "orthogonal_grad": True}],
}
# fmt: on
POPULATION_PATHS = ("exact", "stacked")  # how a population of several members is run


def digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def clean(record: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe and exact: floats as their repr, the clock left out."""
    out = {}
    for k, v in record.items():
        if k == m.ELAPSED_S:
            continue
        if isinstance(v, float):
            v = "nan" if math.isnan(v) else repr(v)
        out[k] = v
    return out


def run(name: str, path: str) -> dict[str, Any]:
    from grok_tune.population import Population
    from grok_tune.train import Trainer

    cfgs = [TrainConfig(**s) for s in RUNS[name]]
    if len(cfgs) == 1 and path == "single":
        t = Trainer(cfgs[0])
        t.run()
        weights = digest(t.model.state_dict())
        return {"records": [[clean(r) for r in t.history]], "weights": [weights]}
    kw = {"stacked": True, "chunk": len(cfgs)} if path == "stacked" else {}
    pop = Population(cfgs, **kw)
    pop.run()
    return {
        "records": [[clean(r) for r in pop.histories[i]] for i in range(len(cfgs))],
        "weights": [digest(pop.member_state_dict(i)) for i in range(len(cfgs))],
    }


def cases() -> list[tuple[str, str]]:
    out = []
    for name, settings in RUNS.items():
        paths = ("single",) if len(settings) == 1 else POPULATION_PATHS
        out += [(name, p) for p in paths]
    return out


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    result = {"commit": commit, "runs": {f"{n}/{p}": run(n, p) for n, p in cases()}}
    Path(argv[0]).write_text(json.dumps(result, indent=0, sort_keys=True) + "\n")
    print(f"{len(result['runs'])} runs recorded at {commit} in {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
