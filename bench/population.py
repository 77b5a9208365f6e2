"""Throughput of a population (K runs trained together) against K runs one after another.

Run by hand from the repository root (a benchmark, not a test)::

    .venv/bin/python bench/population.py                          # CPU, 1 thread, K up to 8
    .venv/bin/python bench/population.py --device cuda --members 1,8,64,256
    .venv/bin/python bench/population.py --steps 50 --threads 2 --json pop.json

The model is Power et al.'s (x/y mod 97, 50 % training data, 2 layers, width 128, 4 heads, MLP
512, batch 512, AdamW lr 1e-3 wd 1); member i has seed i. For each K in ``--members``:

naive        K ``Trainer`` runs one after another in this process: K populations of one, each
             on the device's default path.
population   ``grok_tune.population.Population`` with the device's defaults: on CPU the
             per-member path (each member its own model and fused AdamW, stepped one after
             another: bit for bit the run alone); on a GPU the stacked path, every member in one
             pass.
stacked      ``Population(stacked=True, chunk=K)``: the stacked path, the GPU's (every member in
             one pass, LayerNorm's gain and bias and AdamW over the whole stack), measured on CPU
             too.
vmap         the stacked population with its model replaced by ``torch.func.vmap`` of
             ``functional_call`` over grok_tune's own ``Transformer`` (shared prefix off: its
             ``unique`` cannot be vmapped).

Several processes (one per member, as Ray runs trials) are not measured here: on CPU they are
what a study does with K = 1 and one core per trial; on one GPU they contend for it without MPS.

Every run trains ``--steps`` steps with an evaluation at step 0 and at the end; the time inside
evaluations is subtracted, so the figure is training member-steps per second (K × steps / s).
Each measurement is repeated ``--rounds`` times in alternating order and the best round counts
(other processes on a shared machine only ever slow a run down); on CPU with one thread the
clock is the process's CPU time, which other processes disturb less than the wall clock.
On a GPU also the peak memory per member (``torch.cuda.max_memory_allocated`` / K) and the K
where the population's throughput stops growing (less than 10 % more for the next K).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from grok_tune.config import TrainConfig
from grok_tune.population import Population
from grok_tune.stacked import Stack
from grok_tune.train import Trainer

IMPLS = ("naive", "population", "stacked", "vmap")


def config(seed: int, steps: int) -> TrainConfig:
    return TrainConfig(
        op="x/y", p=97, frac=0.5, n_layers=2, d_model=128, n_heads=4, d_mlp=512,
        batch_size=512, lr=1e-3, weight_decay=1.0, seed=seed, steps=steps, eval_every=steps,
        stop_after_generalized=None,
    )  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class VmapForward:
    """The stacked path's model as ``vmap(functional_call(Transformer))`` over the members."""

    def __init__(self, pop: Population) -> None:
        template = pop.member_model(0)
        template.cfg.shared_prefix = 0  # unique() has a data-dependent shape: not vmappable
        template.train()

        def one(params: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(template, params, (idx,))

        self.batched = torch.func.vmap(one, randomness="different")

    def __call__(self, params: dict[str, torch.Tensor], idx: torch.Tensor, drop: Any = None):
        return self.batched(params, idx)


@dataclass
class Row:
    impl: str
    members: int
    steps: int
    train_s: float
    member_steps_per_s: float
    peak_mib_per_member: float | None


def clock() -> float:
    """CPU seconds of this process on one CPU thread (other processes on a shared machine do
    not count), else wall-clock seconds."""
    if torch.get_num_threads() == 1 and not torch.cuda.is_initialized():
        return time.process_time()
    return time.perf_counter()


def _timed(
    run: Callable[[], None], evaluate_owner: Any, device: torch.device
) -> tuple[float, float]:
    """Wall seconds of ``run`` and the seconds spent in ``_evaluate`` of the population(s)."""
    owners = evaluate_owner if isinstance(evaluate_owner, list) else [evaluate_owner]
    spent = [0.0]
    for owner in owners:
        inner = owner._evaluate

        def timed(*args: Any, _inner: Callable = inner) -> Any:
            sync(device)
            t0 = clock()
            out = _inner(*args)
            sync(device)
            spent[0] += clock() - t0
            return out

        owner._evaluate = timed
    sync(device)
    t0 = clock()
    run()
    sync(device)
    return clock() - t0, spent[0]


def measure(impl: str, k: int, steps: int, device: torch.device) -> Row:
    cfgs = [config(seed, steps) for seed in range(k)]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if impl == "naive":
        trainers = [Trainer(cfg, device) for cfg in cfgs]

        def run() -> None:
            for t in trainers:
                t.run()

        wall, evals = _timed(run, [t.population for t in trainers], device)
    else:
        if impl == "population":  # the device's defaults
            pop = Population(cfgs, device)
        else:  # the stacked path: every member in one pass
            pop = Population(cfgs, device, stacked=True, chunk=k)
        if impl == "vmap":
            assert isinstance(pop.path, Stack)
            pop.path.forward = VmapForward(pop)  # type: ignore[assignment]
        wall, evals = _timed(pop.run, pop, device)
    peak = None
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20 / k
    train_s = wall - evals
    return Row(impl, k, steps, train_s, k * steps / train_s, peak)


def flattens_at(rows: list[Row]) -> int | None:
    """The first K whose successor adds less than 10 % throughput."""
    for a, b in itertools.pairwise(rows):
        if b.member_steps_per_s < 1.1 * a.member_steps_per_s:
            return a.members
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--members", default=None, help="K values (default cpu 1,2,4,8)")
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"of {', '.join(IMPLS)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="repeats; the best one counts")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    default = "1,8,64,256" if args.device == "cuda" else "1,2,4,8"
    members = [int(k) for k in (args.members or default).split(",")]
    impls = [i for i in args.impls.split(",") if i]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"x/y mod 97, frac 0.5, 2 layers, width 128, MLP 512, batch 512; {args.steps} steps; "
        f"{device} ({name or platform.machine()}), {torch.get_num_threads()} thread(s), "
        f"torch {torch.__version__}"
    )
    # one untimed run first: allocator, kernels and caches warm for everyone alike
    measure("population", 1, 2, device)
    rows: list[Row] = []
    for k in members:
        best: dict[str, Row] = {}
        for rnd in range(args.rounds):  # alternating order; the best round counts (the
            order = impls if rnd % 2 == 0 else impls[::-1]  # machine may be shared)
            for impl in order:
                r = measure(impl, k, args.steps, device)
                print(
                    f"  K={k:<4} {impl:<11} {r.member_steps_per_s:8.1f} member-steps/s", flush=True
                )
                if impl not in best or r.member_steps_per_s > best[impl].member_steps_per_s:
                    best[impl] = r
        rows.extend(best[i] for i in impls)
    print()
    header = f"{'K':>5} " + " ".join(f"{i:>11}" for i in impls)
    if "naive" in impls:
        header += "   " + " ".join(f"{i + '/naive':>17}" for i in impls if i != "naive")
    print("member-steps/s")
    print(header)
    for k in members:
        by = {r.impl: r for r in rows if r.members == k}
        line = f"{k:>5} " + " ".join(f"{by[i].member_steps_per_s:>11.1f}" for i in impls)
        if "naive" in by:
            base = by["naive"].member_steps_per_s
            line += "   " + " ".join(
                f"{by[i].member_steps_per_s / base:>17.2f}" for i in impls if i != "naive"
            )
        print(line)
    if device.type == "cuda":
        print("\npeak MiB per member")
        for k in members:
            by = {r.impl: r for r in rows if r.members == k}
            print(f"{k:>5} " + " ".join(f"{by[i].peak_mib_per_member:>11.1f}" for i in impls))
    for impl in impls:
        if impl != "naive":
            at = flattens_at([r for r in rows if r.impl == impl])
            where = f"K = {at}" if at else "not within the K measured"
            print(f"{impl}: throughput stops growing (< 10 % per step in K) at {where}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
