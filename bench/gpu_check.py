"""The device check of populations (issue 21): correctness on the device, throughput against K,
Power et al.'s Figure 2 as a population, and the same with the step compiled.

Run on a GPU machine of one's own from the repository root (writes OUT/results.json, rewritten
atomically after every measurement, and OUT/report.txt, the same as a text table)::

    python -m bench.gpu_check OUT --device cuda --time-budget-s 420
    bash bench/gpu_check.sh OUT --device cuda ...   # installs bench/wheels first if pydantic is
                                                    # missing (the lent GPU machine has no pydantic)

and on CPU at tiny sizes (the test suite does this: tests/test_gpu_check.py)::

    .venv/bin/python -m bench.gpu_check OUT --device cpu --model tiny --p 23 --members 1,2 ...

Parts, each stopped when its share of ``--time-budget-s`` runs out (what it measured is kept,
and the report says where it stopped):

checks      correctness, compared number by number; each records pass/fail, the largest
            difference and the tolerance used; any failure makes the exit status 1.
            stacked_vs_alone: the stacked path (every member in one pass: the GPU path) against
              each member run alone on the per-member path (``Trainer(stacked=False)``): losses
              and weight norm within a relative tolerance, accuracies within 0.02 (a row or two
              flipping), final weights within an absolute one.
            member_vs_alone: the per-member path (the population's members stepped one after
              another, each its own model and optimizer) against the same runs alone: bit for
              bit (==) on CPU; on CUDA recorded against the stacked tolerance (informational).
            checkpoint_resume: a population saved at an evaluation mid-run, loaded into a new
              one and run on, against the uninterrupted run: == wherever the device is
              deterministic. On CUDA both runs are under ``torch.use_deterministic_algorithms``
              (warn_only: a warning names any op without a deterministic kernel, and the check
              then falls back to the tolerance); what that mode costs is measured beside it, and
              whether two default-mode runs differ at all.
            retire_mid_run: a member that diverges and one stopped by ``confusion_step`` leave
              the stack mid-run: their status and step, their weights untouched afterwards (==),
              and the survivors' runs equal to a population of the survivors alone.
throughput  ``bench/population.py``'s measurement (the paper's model on x/y mod 97): member-steps
            per second of the population at each K of ``--members`` against K naive ``Trainer``
            runs in turn (each a population of one), peak memory per member on CUDA, and where
            the curve flattens. Naive runs take turns, so their rate does not depend on K: above
            ``--naive-max-k`` the largest K measured stands for them.
fig2        Power et al.'s Figure 2: x/y mod p, ``--fractions`` × ``--fig2-seeds`` seeds, the
            paper's optimizer (AdamW lr 1e-3, wd 1, betas (0.9, 0.98), 10-step warm-up, batch
            min(512, half the training set)) and model (``--model paper``), ``--fig2-steps``
            budget and the project's stopping rules (a member stops 3 evaluations after it
            generalized). Members that share a batch size train as one population. Per fraction:
            the median steps to 99% validation accuracy over seeds (a seed that never got there
            counts as infinite, so the median is censored when most did not), beside the
            README's CPU figure for the same setup where there is one; the wall time of the
            whole figure.
compile     the largest Figure 2 population on the stacked path (all its members kept to
            ``--compile-steps``, so that every variant trains the same stack) stepped as it is,
            without the shared prefix (its ``unique`` reads a count back to the host every
            step), and with forward + loss and the AdamW update under ``torch.compile`` for each
            of ``--compile`` (``inductor``, ``inductor:reduce-overhead`` = CUDA graphs, dynamo's
            ``eager`` to test the wiring on CPU): steady member-steps/s after the first
            evaluation, the first interval (compilation) apart, and the largest relative
            difference of the losses from the population's at the first evaluation after step 0
            (a wrong step shows there) and at the last (where training has amplified rounding:
            chaos, not error).

Imports: only torch, numpy and grok_tune's engine (config, model, member, stacked, population,
train, which need pydantic for TrainConfig), never Ray, Optuna or pandas. The lent GPU machine
(Python 3.12, PyTorch 2.11) has no pydantic: ``bench/gpu_check.sh`` installs the wheels carried
in ``bench/wheels`` (downloaded here by ``bash bench/gpu_check.sh --download-wheels``) into a
temporary folder when ``import pydantic`` fails. This script says which import failed, and
exits 2, if one does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file, or on a machine where grok_tune is not installed
    sys.path.insert(0, str(ROOT))

try:
    import torch
    import torch.nn.functional as F

    from bench import population as bench_pop
    from grok_tune import metrics as m
    from grok_tune.config import TrainConfig
    from grok_tune.packing import population_groups
    from grok_tune.population import Population
    from grok_tune.stacked import Stack
    from grok_tune.tasks import IGNORE
    from grok_tune.train import Record, Trainer

    IMPORT_ERROR: ImportError | None = None
except ImportError as err:  # reported by main(): which module, and how to get it
    IMPORT_ERROR = err

PARTS = ("checks", "throughput", "fig2", "compile")
# compile's share covers two compilations (tens of seconds each); what a part leaves unused
# goes to the parts after it
SHARES = {"checks": 0.1, "throughput": 0.15, "fig2": 0.45, "compile": 0.3}
MODELS = {
    "paper": {"n_layers": 2, "d_model": 128, "n_heads": 4, "d_mlp": 512},
    "small": {"n_layers": 1, "d_model": 64, "n_heads": 4, "d_mlp": 256},  # the tests' TINY
    "tiny": {"n_layers": 1, "d_model": 32, "n_heads": 4, "d_mlp": 64},
}
# The stacked path rounds differently from the per-member path's kernels, and training amplifies
# that: the paper model's curves stayed within 2e-5 (relative) of a run alone over 30 steps on
# CPU here, and drifted to 1.4e-2 over 200 (chaos, not error): the checks compare short runs, at
# 1e-3. Accuracy: a row or two of a split flipping. Weights: Adam moves a weight by about lr a
# step whatever the gradient's size, so where a gradient is rounding noise (the keys' bias has
# none at all) two runs may part by up to 2·lr a step; a member given another's weights is off
# by the scale of the initialisation. Hence weights within 2·lr·steps.
STACKED_TOL = {"rel": 1e-3, "acc": 0.02}
CURVE_KEYS = ("train_loss", "val_loss", "weight_norm")
ACC_KEYS = ("train_acc", "val_acc")
# The README's CPU figure for the same setup (x/y mod 97, the paper's model and optimizer, seed
# 0; "The reproduction table"): steps to 99% validation accuracy, by training fraction.
README_CPU_FIG2 = {0.5: 2000}


class OutOfTime(Exception):
    """A part's share of the time budget ran out (raised from an evaluation callback)."""


# --- time budget and results ---------------------------------------------------------------
class Budget:
    """Shares of one wall-clock budget; a part that ends early leaves its rest to the others."""

    def __init__(self, total_s: float, parts: list[str]) -> None:
        self.start = time.monotonic()
        self.total_s = total_s
        self.pending = list(parts)

    def begin(self, part: str) -> float:
        """The deadline (time.monotonic) of ``part``: its share of what is left."""
        left = self.total_s - (time.monotonic() - self.start)
        weight = SHARES[part] / sum(SHARES[p] for p in self.pending)
        self.pending.remove(part)
        return time.monotonic() + max(0.0, left * weight)


class Results:
    """results.json and report.txt in the output folder, rewritten atomically on every save, so
    that a run killed by a timeout still leaves what it measured."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out = out
        self.data: dict[str, Any] = {"meta": meta, "checks": [], "stopped": {}}

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.out / "results.json", json.dumps(self.data, indent=2) + "\n")
        _write_atomically(self.out / "report.txt", render(self.data))

    def stop(self, part: str, why: str) -> None:
        self.data["stopped"][part] = why
        print(f"[{part}] stopped: {why}", flush=True)
        self.save()


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- configurations --------------------------------------------------------------------------
def base_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The paper's run (preset power2022's optimizer) on ``--model`` and ``--p``."""
    return {
        "op": "x/y", "p": args.p, "lr": args.lr, "weight_decay": 1.0, "beta1": 0.9,
        "beta2": 0.98, "warmup_steps": 10, **MODELS[args.model],
    }  # fmt: skip


def stacked_tolerance(cfgs: list[TrainConfig]) -> dict[str, float]:
    lr, steps = max(c.lr for c in cfgs if c.lr < 1), cfgs[0].steps  # (not a diverging member's)
    return {**STACKED_TOL, "weights_abs": 2 * lr * steps}


def check_configs(args: argparse.Namespace) -> list[TrainConfig]:
    """Four members that differ where a study varies them."""
    base = {
        **base_settings(args), "frac": 0.5, "steps": args.check_steps,
        "eval_every": args.check_eval_every, "stop_after_generalized": None,
    }  # fmt: skip
    variants = [
        {"seed": 0},
        {"seed": 1, "lr": 2 * args.lr, "weight_decay": 0.3},
        {"seed": 2, "weight_decay": 0.0},
        {"seed": 3, "decay_scope": "matrices"},
    ]
    return [TrainConfig(**{**base, **v}) for v in variants]


def fig2_configs(args: argparse.Namespace, steps: int, stop: int | None) -> list[TrainConfig]:
    return [
        TrainConfig(
            **base_settings(args),
            frac=frac,
            seed=seed,
            steps=steps,
            eval_every=args.fig2_eval_every,
            stop_after_generalized=stop,
        )
        for frac in args.fractions
        for seed in range(args.fig2_seeds)
    ]


# --- comparing runs ----------------------------------------------------------------------------
def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _rel(a: float, b: float) -> float:
    if _same(a, b):
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def compare_runs(
    h1: list[Record], h2: list[Record], w1: dict[str, torch.Tensor], w2: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """How far two runs of one configuration are apart: records at the same steps, weights."""
    out: dict[str, Any] = {
        "bitwise_equal": True, "max_rel_curve": 0.0, "max_abs_acc": 0.0,
        "max_abs_weights": 0.0, "same_steps": [r[m.STEP] for r in h1] == [r[m.STEP] for r in h2],
        "same_status": bool(h1 and h2 and h1[-1][m.STATUS] == h2[-1][m.STATUS]),
    }  # fmt: skip
    for a, b in zip(h1, h2, strict=False):
        for k in a.keys() - {m.ELAPSED_S}:
            if not _same(a[k], b.get(k)):
                out["bitwise_equal"] = False
        for k in CURVE_KEYS:
            out["max_rel_curve"] = max(out["max_rel_curve"], _rel(a[k], b[k]))
        for k in ACC_KEYS:
            out["max_abs_acc"] = max(out["max_abs_acc"], abs(a[k] - b[k]))
    for name in w1:
        x, y = w1[name].detach().cpu(), w2[name].detach().cpu()
        if not torch.equal(x.nan_to_num(), y.nan_to_num()) or not torch.equal(x.isnan(), y.isnan()):
            out["bitwise_equal"] = False
        diff = (x - y).abs().nan_to_num(0.0).max().item() if x.numel() else 0.0
        out["max_abs_weights"] = max(out["max_abs_weights"], diff)
    out["bitwise_equal"] &= out["same_steps"] and out["same_status"] and len(h1) == len(h2)
    return out


def within(diff: dict[str, Any], tol: dict[str, float] | None) -> bool:
    """Bitwise when ``tol`` is None, else within the tolerance."""
    if tol is None:
        return bool(diff["bitwise_equal"])
    return bool(
        diff["same_steps"]
        and diff["same_status"]
        and diff["max_rel_curve"] <= tol["rel"]
        and diff["max_abs_acc"] <= tol["acc"]
        and diff["max_abs_weights"] <= tol.get("weights_abs", math.inf)
    )


def check_entry(name: str, diffs: list[dict[str, Any]], tol: dict | None, **extra: Any) -> dict:
    worst = {
        k: max(d[k] for d in diffs) for k in ("max_rel_curve", "max_abs_acc", "max_abs_weights")
    }
    return {
        "name": name,
        "passed": all(within(d, tol) for d in diffs),
        "tolerance": "bitwise (==)" if tol is None else tol,
        "bitwise_equal": all(d["bitwise_equal"] for d in diffs),
        **worst,
        **extra,
        "members": diffs,
    }


# --- part 1: correctness -----------------------------------------------------------------------
def check_stacked_vs_alone(args: argparse.Namespace, device: torch.device) -> list[dict]:
    cfgs = check_configs(args)
    stacked = Population(cfgs, device, stacked=True, chunk=len(cfgs))
    stacked.run()
    alone = []
    for cfg in cfgs:  # the reference: each run alone, its own model (a GPU would stack it)
        t = Trainer(cfg, device, stacked=False)
        t.run()
        alone.append(t)

    def diffs(pop: Population) -> list[dict]:
        return [
            compare_runs(t.history, pop.history(i), t.model.state_dict(), pop.member_state_dict(i))
            for i, t in enumerate(alone)
        ]

    tol = stacked_tolerance(cfgs)
    entries = [check_entry("stacked_vs_alone", diffs(stacked), tol, path="stacked")]
    # the per-member path: each member its own model and optimizer, one after another: == on
    # CPU; on CUDA recorded (whether a member beside others is the run alone there too), held
    # to the stacked path's tolerance
    each = Population(cfgs, device, stacked=False)
    each.run()
    tol = None if device.type == "cpu" else tol
    entries.append(check_entry("member_vs_alone", diffs(each), tol, path="per-member"))
    # on CUDA the per-member path is not the one populations take: a finding, not a failure
    entries[-1]["informational"] = device.type != "cpu"
    return entries


@contextlib.contextmanager
def deterministic(on: bool) -> Iterator[list[str]]:
    """``torch.use_deterministic_algorithms`` (warn_only) for the block, and attention as plain
    matmuls (the memory-efficient kernel's backward is nondeterministic on CUDA); yields the
    warnings that name ops without a deterministic implementation."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    seen: list[str] = []
    before = torch.are_deterministic_algorithms_enabled()
    math_attention = sdpa_kernel([SDPBackend.MATH]) if on else contextlib.nullcontext()
    with warnings.catch_warnings(record=True) as caught, math_attention:
        warnings.simplefilter("always")
        torch.use_deterministic_algorithms(on, warn_only=True)
        try:
            yield seen
        finally:
            torch.use_deterministic_algorithms(before)
            seen.extend(sorted({str(w.message) for w in caught if "determinis" in str(w.message)}))


def determinism_cost(cfgs: list[TrainConfig], device: torch.device) -> float | None:
    """Extra training time under deterministic algorithms, as a fraction (CUDA only: CPU
    kernels are deterministic as they are): 100 steps of the population each way, twice in
    alternating order, the best of each."""
    if device.type != "cuda":
        return None
    long = [c.model_copy(update={"steps": 100, "eval_every": 100}) for c in cfgs]
    best = {True: math.inf, False: math.inf}
    for on in (False, True, True, False):
        pop = Population(long, device)
        with deterministic(on):
            sync(device)
            t0 = time.perf_counter()
            for _ in range(100):
                pop.path.train_step(pop.step)
                pop.step += 1
            sync(device)
        best[on] = min(best[on], time.perf_counter() - t0)
    return best[True] / best[False] - 1


def check_checkpoint_resume(args: argparse.Namespace, device: torch.device) -> dict:
    cfgs = check_configs(args)
    every = cfgs[0].eval_every
    kill_at = max(every, (cfgs[0].steps // 2) // every * every)
    strict = True  # CPU is deterministic as it is; CUDA under deterministic algorithms
    with tempfile.TemporaryDirectory() as tmp, deterministic(device.type == "cuda") as warned:
        path = Path(tmp) / "population.pt"

        def save_at(records: dict, pop: Population) -> None:
            if pop.step == kill_at:
                pop.save(path)

        whole = Population(cfgs, device)
        whole.run(save_at)
        resumed = Population(cfgs, device)
        resumed.load(path)
        resumed_at = resumed.step
        resumed.run()
    if warned:
        strict = False  # an op without a deterministic kernel: rounding may differ
    diffs = [
        compare_runs(
            whole.history(i),
            resumed.history(i),
            whole.member_state_dict(i),
            resumed.member_state_dict(i),
        )
        for i in range(len(cfgs))
    ]
    # the default mode: whether two runs of it differ at all
    plain, again = Population(cfgs, device), Population(cfgs, device)
    plain.run()
    again.run()
    repeat = [
        compare_runs(plain.history(i), again.history(i), plain.member_state_dict(i),
                     again.member_state_dict(i))
        for i in range(len(cfgs))
    ]  # fmt: skip
    return check_entry(
        "checkpoint_resume",
        diffs,
        None if strict else stacked_tolerance(cfgs),
        saved_at_step=kill_at,
        resumed_from_step=resumed_at,
        deterministic_algorithms=device.type == "cuda",
        nondeterministic_ops=warned,
        deterministic_cost=determinism_cost(cfgs, device),
        default_mode_repeatable=all(d["bitwise_equal"] for d in repeat),
        default_mode_max_abs_weights=max(d["max_abs_weights"] for d in repeat),
    )


def check_retire(args: argparse.Namespace, device: torch.device) -> dict:
    base = check_configs(args)
    every = base[0].eval_every
    cfgs = [
        base[0],
        base[1].model_copy(update={"lr": 1e3}),  # decoupled decay ×(1 − 1000): inf in a few steps
        base[2].model_copy(update={"confusion_step": every}),  # not memorized at its first eval
        base[3],
    ]
    cfgs = [TrainConfig(**c.model_dump()) for c in cfgs]  # validated again
    retiring, survivors = [1, 2], [0, 3]
    last_weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_eval(records: dict, pop: Population) -> None:
        for i, r in records.items():
            if r[m.DONE] and i in retiring:
                last_weights[i] = pop.member_state_dict(i)

    pop = Population(cfgs, device, stacked=device.type == "cuda")
    pop.run(on_eval)
    chunk = pop.path.chunk if isinstance(pop.path, Stack) else None
    alone = Population([cfgs[i] for i in survivors], device, stacked=pop.stacked, chunk=chunk)
    alone.run()
    diffs = [
        compare_runs(pop.history(i), alone.history(j), pop.member_state_dict(i),
                     alone.member_state_dict(j))
        for j, i in enumerate(survivors)
    ]  # fmt: skip
    budget = cfgs[0].steps
    retired = {
        str(i): {"status": pop.statuses[i], "last_step": pop.history(i)[-1][m.STEP]}
        for i in retiring
    }
    expected = {"1": m.Status.DIVERGED}
    left_early = all(r["last_step"] < budget for r in retired.values())
    statuses_ok = all(retired[k]["status"] == v for k, v in expected.items())
    untouched = all(
        torch.equal(a.nan_to_num(), pop.member_state_dict(i)[name].nan_to_num())
        for i in retiring
        for name, a in last_weights[i].items()
    )
    entry = check_entry(
        "retire_mid_run",
        diffs,
        stacked_tolerance(cfgs) if pop.stacked else None,
        path="stacked" if pop.stacked else "per-member",
        retired=retired,
        retired_before_budget=left_early,
        retired_weights_untouched=untouched,
        survivors_ran_to_step=[pop.history(i)[-1][m.STEP] for i in survivors],
    )
    entry["passed"] = bool(entry["passed"] and left_early and statuses_ok and untouched)
    return entry


def part_checks(args: argparse.Namespace, device: torch.device, res: Results) -> None:
    checks: list[Callable[[], list[dict] | dict]] = [
        lambda: check_stacked_vs_alone(args, device),
        lambda: check_checkpoint_resume(args, device),
        lambda: check_retire(args, device),
    ]
    names = ["stacked_vs_alone", "checkpoint_resume", "retire_mid_run"]
    for name, run in zip(names, checks, strict=True):
        t0 = time.perf_counter()
        try:
            got = run()
        except Exception as err:  # a check that crashes has failed; the others still run
            got = {"name": name, "passed": False, "error": _short_error(err)}
        for entry in got if isinstance(got, list) else [got]:
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            res.data["checks"].append(entry)
            verdict = "pass" if entry["passed"] else "FAIL"
            print(f"[checks] {entry['name']}: {verdict}", flush=True)
        res.save()


def _short_error(err: BaseException) -> str:
    tail = traceback.format_exception(err)[-3:]
    return "".join(tail).strip()[-1500:]


# --- part 2: throughput against K --------------------------------------------------------------
def part_throughput(
    args: argparse.Namespace, device: torch.device, res: Results, deadline: float
) -> None:
    out: dict[str, Any] = {"steps": args.bench_steps, "rounds": args.rounds, "rows": []}
    res.data["throughput"] = out
    bench_pop.measure("population", 1, 2, device)  # untimed: allocator and kernels warm
    naive_rate: float | None = None
    for k in args.members:
        if time.monotonic() > deadline:
            res.stop("throughput", f"time share spent before K = {k}")
            break
        row: dict[str, Any] = {"K": k}
        try:
            if k <= args.naive_max_k:
                naive = _best(
                    lambda k=k: bench_pop.measure("naive", k, args.bench_steps, device),
                    args.rounds,
                )
                naive_rate = naive.member_steps_per_s
                row["naive"] = asdict(naive)
            pop = _best(
                lambda k=k: bench_pop.measure("population", k, args.bench_steps, device),
                args.rounds,
            )
        except torch.OutOfMemoryError:
            res.stop("throughput", f"out of memory at K = {k}")
            break
        row["population"] = asdict(pop)
        row["naive_member_steps_per_s"] = naive_rate
        row["naive_measured_at_K"] = min(k, args.naive_max_k)
        row["speedup"] = pop.member_steps_per_s / naive_rate if naive_rate else None
        out["rows"].append(row)
        print(
            f"[throughput] K={k}: population {pop.member_steps_per_s:.1f} member-steps/s, "
            f"naive {naive_rate or float('nan'):.1f}",
            flush=True,
        )
        rows = [bench_pop.Row(**r["population"]) for r in out["rows"]]
        out["flattens_at_K"] = bench_pop.flattens_at(rows)
        res.save()


def _best(measure: Callable[[], Any], rounds: int) -> Any:
    """The best of ``rounds`` measurements: other work on the machine only ever slows one."""
    return max((measure() for _ in range(rounds)), key=lambda r: r.member_steps_per_s)


# --- part 3: Figure 2 as a population ----------------------------------------------------------
def _deadline_callback(deadline: float, progress: Callable[[Population], None]) -> Any:
    def on_eval(records: dict, pop: Population) -> None:
        progress(pop)
        if time.monotonic() > deadline and pop.active:
            raise OutOfTime(f"at step {pop.step}")

    return on_eval


def member_outcome(pop: Population, i: int) -> dict[str, Any]:
    last = pop.history(i)[-1]
    return {
        "frac": pop.cfgs[i].frac,
        "seed": pop.cfgs[i].seed,
        "status": pop.statuses[i],
        "steps_to_memorize": last.get(m.STEPS_TO_MEMORIZE),
        "steps_to_generalize": last.get(m.STEPS_TO_GENERALIZE),
        "last_step": last[m.STEP],
    }


def fig2_rows(members: list[dict[str, Any]], fractions: list[float], budget: int) -> list[dict]:
    """Per fraction: the median steps to generalize over seeds. A seed that never got there
    counts as infinite (censored: within the budget, or while it ran, if time ran out)."""
    rows = []
    for frac in fractions:
        got = [x for x in members if math.isclose(x["frac"], frac)]
        steps = [
            x["steps_to_generalize"] if x["steps_to_generalize"] is not None else math.inf
            for x in got
        ]
        median = statistics.median(steps) if steps else None
        unfinished = [x for x in got if x["status"] == m.Status.RUNNING]
        rows.append(
            {
                "frac": frac,
                "seeds": len(got),
                "steps_to_generalize": [x["steps_to_generalize"] for x in got],
                "median": None if median is None or math.isinf(median) else median,
                "censored": median is not None and math.isinf(median),
                "never": sum(math.isinf(s) for s in steps),
                "stopped_by_time": len(unfinished),
                "budget": budget,
                "readme_cpu": README_CPU_FIG2.get(frac),
            }
        )
    return rows


def _finish_estimate(marks: list[tuple[int, float]], budget: int) -> float | None:
    """Seconds the stopped population would still take to its budget, at the rate of its last
    ten evaluation intervals (the members still running then: the slowest to generalize)."""
    recent = marks[-11:]
    if len(recent) < 2 or recent[-1][0] == recent[0][0]:
        return None
    rate = (recent[-1][0] - recent[0][0]) / (recent[-1][1] - recent[0][1])
    return (budget - recent[-1][0]) / rate


def part_fig2(
    args: argparse.Namespace, device: torch.device, res: Results, deadline: float
) -> None:
    cfgs = fig2_configs(args, args.fig2_steps, stop=3)
    groups = population_groups(cfgs)
    paper = args.model == "paper" and args.p == 97 and args.lr == 1e-3
    out: dict[str, Any] = {
        "setup": f"x/y mod {args.p}, model {args.model}, lr {args.lr}, wd 1, "
        f"{args.fig2_steps} steps, eval every {args.fig2_eval_every}",
        "readme_figures_apply": paper,
        "populations": [len(g) for g in groups],
        "members": [],
        "rows": [],
        "complete": False,
    }
    res.data["fig2"] = out
    t_start = time.perf_counter()
    last_save = [time.monotonic()]
    marks: list[tuple[int, float]] = []  # (step, time) of the running population's evaluations

    def progress(pop: Population) -> None:  # the figure so far, every 30 s
        marks.append((pop.step, time.perf_counter()))
        out["progress"] = {"step": pop.step, "active": len(pop.active), "of": len(pop)}
        if time.monotonic() - last_save[0] > 30:
            last_save[0] = time.monotonic()
            res.save()

    stopped = None
    for n, group in enumerate(groups):
        pop = Population([cfgs[i] for i in group], device)
        marks.clear()
        try:
            pop.run(_deadline_callback(deadline, progress))
        except OutOfTime as why:
            stopped = f"time share spent {why} of {args.fig2_steps}"
            last = n == len(groups) - 1
            out["estimated_full_wall_s"] = (
                _finish_estimate(marks, args.fig2_steps) if last else None
            )
        out["members"] += [member_outcome(pop, i) for i in range(len(pop))]
        out["wall_s"] = time.perf_counter() - t_start
        if stopped and out.get("estimated_full_wall_s"):
            out["estimated_full_wall_s"] += out["wall_s"]
        out["rows"] = fig2_rows(out["members"], args.fractions, args.fig2_steps)
        res.save()
        if stopped:
            break
    out.pop("progress", None)
    out["complete"] = stopped is None and len(out["members"]) == len(cfgs)
    if stopped:
        res.stop("fig2", stopped)
    res.save()
    print(f"[fig2] {len(out['members'])} members in {out['wall_s']:.1f} s", flush=True)


# --- part 4: the step compiled -----------------------------------------------------------------
class CompiledStep:
    """``Stack.train_step`` (the stacked path's step, grok_tune/stacked.py) for plain AdamW
    members (no remedies, no dropout), with forward + loss and the AdamW update each under
    ``torch.compile``. The batch stays eager: each member's batch is drawn from its own CPU
    generator, as the member alone draws it. Installed as ``pop.path.train_step``."""

    def __init__(self, pop: Population, backend: str, mode: str | None) -> None:
        plain = all(
            c.grad_filter == "none" and not c.orthogonal_grad and not c.fixed_weight_norm
            and c.dropout == 0 and c.optimizer == "adamw" and c.loss == "cross_entropy"
            for c in pop.cfgs
        )  # fmt: skip
        if not isinstance(pop.path, Stack) or not plain:
            raise ValueError("CompiledStep: the stacked path of plain AdamW members only")
        self.stack: Stack = pop.path
        self.cudagraphs = mode is not None and "reduce-overhead" in mode
        opts: dict[str, Any] = {"backend": backend, "dynamic": False}
        if mode:
            opts["mode"] = mode
        self.forward_loss = torch.compile(self._forward_loss, **opts)
        self.update = torch.compile(_adamw_update, backend=backend, dynamic=False)
        self._decay: tuple[int, torch.Tensor] | None = None

    def _forward_loss(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        stack = self.stack
        logits = stack.forward(stack._views(flat), x)
        losses = F.cross_entropy(
            logits.flatten(0, 2), y.flatten(), ignore_index=IGNORE, reduction="none"
        ).view(y.shape[0], -1)
        counted = (y != IGNORE).view(y.shape[0], -1).sum(dim=1)
        return (losses.sum(dim=1) / counted).sum()  # each member's mean: its gradient its own

    def decay_columns(self) -> torch.Tensor:
        """Each member's weight decay per column of the buffer (K, row_length)."""
        stack = self.stack
        K = len(stack.active)
        if self._decay is None or self._decay[0] != K:
            cols = torch.zeros(K, stack.row_length, device=stack.device)
            for (a, b, _), wd in zip(stack._classes, stack._class_wd, strict=True):
                cols[:, a:b] = wd.float().unsqueeze(1)
            self._decay = (K, cols)
        return self._decay[1]

    def __call__(self, step: int) -> None:
        stack, cfg = self.stack, self.stack.cfgs[0]
        x, y = stack._batch()
        rows = stack._flat.detach().requires_grad_(True)
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        self.forward_loss(rows, x, y).backward()
        assert rows.grad is not None
        t = stack._adam_steps + 1
        lr = stack._warmup_lr[step] if step < cfg.warmup_steps else stack._lr
        dev = stack.device
        scalars = torch.tensor(
            [1 - cfg.beta1**t, math.sqrt(1 - cfg.beta2**t)], dtype=torch.float32, device=dev
        )
        with torch.no_grad():
            self.update(
                stack._flat, rows.grad, stack._exp_avg, stack._exp_avg_sq,
                lr.float().unsqueeze(1), self.decay_columns(), scalars,
                cfg.beta1, cfg.beta2, cfg.adam_eps,
            )  # fmt: skip
        stack._adam_steps = t


def _adamw_update(
    p: torch.Tensor, g: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, lr: torch.Tensor,
    decay: torch.Tensor, scalars: torch.Tensor, beta1: float, beta2: float, eps: float,
) -> None:  # fmt: skip
    """The stacked path's AdamW (``Stack._adam``) with its per-step numbers as tensors, so that
    a compiled graph serves every step."""
    p.mul_(1 - lr * decay)
    m1.lerp_(g, 1 - beta1)
    m2.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = (m2.sqrt() / scalars[1]).add_(eps)
    p.add_(m1 * (-lr / scalars[0]) / denom)


def _run_variant(
    cfgs: list[TrainConfig], device: torch.device, variant: str, deadline: float
) -> dict[str, Any]:
    pop = Population(cfgs, device, stacked=True, chunk=len(cfgs))
    assert isinstance(pop.path, Stack)
    if variant != "population":
        pop.path._model.cfg.shared_prefix = 0  # no unique(): no count read back to the host
    if variant.startswith("compile:"):
        backend, _, mode = variant.removeprefix("compile:").partition(":")
        pop.path.train_step = CompiledStep(pop, backend, mode or None)  # type: ignore[method-assign]
    marks: list[tuple[int, float, float]] = []  # (step, time, evaluation seconds so far)
    spent = [0.0]
    inner = pop._evaluate

    def timed(*a: Any) -> Any:
        sync(device)
        t0 = time.perf_counter()
        out = inner(*a)
        sync(device)
        spent[0] += time.perf_counter() - t0
        marks.append((pop.step, time.perf_counter(), spent[0]))
        return out

    pop._evaluate = timed  # type: ignore[method-assign]
    sync(device)
    t0 = time.perf_counter()
    stopped = None
    try:
        pop.run(_deadline_callback(deadline, lambda p: None))
    except OutOfTime as why:
        stopped = str(why)
    result: dict[str, Any] = {"variant": variant, "members": len(cfgs), "stopped": stopped}
    result["total_s"] = time.perf_counter() - t0
    if len(marks) >= 2:  # the first interval (compilation, warm-up) apart
        result["first_interval_s"] = marks[1][1] - marks[0][1] - (marks[1][2] - marks[0][2])
    if len(marks) >= 3:
        steps = marks[-1][0] - marks[1][0]
        train_s = (marks[-1][1] - marks[1][1]) - (marks[-1][2] - marks[1][2])
        result["steady_member_steps_per_s"] = len(cfgs) * steps / train_s
    # the first evaluation after step 0 and the last: rounding differences grow with training
    # (chaos), a wrong step shows at once
    for name, at in (("first", min(1, len(marks) - 1)), ("final", -1)):
        result[name] = {
            i: {k: pop.history(i)[at][k] for k in (m.STEP, *CURVE_KEYS)} for i in range(len(cfgs))
        }
    return result


def part_compile(
    args: argparse.Namespace, device: torch.device, res: Results, deadline: float
) -> None:
    cfgs = fig2_configs(args, args.compile_steps, stop=None)
    group = max(population_groups(cfgs), key=len)
    cfgs = [cfgs[i] for i in group]
    out: dict[str, Any] = {"steps": args.compile_steps, "members": len(cfgs), "variants": []}
    res.data["compile"] = out
    for variant in ["population", "no-shared-prefix", *(f"compile:{c}" for c in args.compile)]:
        if time.monotonic() > deadline:
            res.stop("compile", f"time share spent before {variant}")
            break
        try:
            got = _run_variant(cfgs, device, variant, deadline)
        except Exception as err:  # a backend that fails is a finding, not the end of the check
            got = {"variant": variant, "error": _short_error(err)}
        first = out["variants"][0] if out["variants"] else None  # the population as it is
        if first and "final" in got and "final" in first:
            for at in ("first", "final"):
                got[f"max_rel_{at}_loss_vs_population"] = max(
                    _rel(got[at][i][k], first[at][i][k])
                    for i in got[at]
                    for k in ("train_loss", "val_loss")
                )
            base = first.get("steady_member_steps_per_s")
            if base and got.get("steady_member_steps_per_s"):
                got["speedup_vs_population"] = got["steady_member_steps_per_s"] / base
        out["variants"].append(got)
        rate = got.get("steady_member_steps_per_s")
        print(f"[compile] {variant}: {rate and round(rate, 1)} member-steps/s", flush=True)
        res.save()


# --- the report ---------------------------------------------------------------------------------
def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}" if abs(x) >= 0.01 or x == 0 else f"{x:.2e}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def render(data: dict[str, Any]) -> str:
    meta = data["meta"]
    lines = [
        f"gpu_check on {meta['device']} ({meta['device_name']}), torch {meta['torch']}, "
        f"python {meta['python']}, {meta['date']}",
        f"arguments: {meta['argv']}",
        *(
            ["a CPU run: it proves the script, it measures no GPU"]
            if meta["device"] == "cpu"
            else []
        ),
        "",
        "correctness",
    ]
    for c in data["checks"]:
        if "error" in c:  # the check itself raised: its message, not a crash of the report
            lines.append(f"  FAIL  {c['name']:<18} raised: {c['error'].splitlines()[-1]}")
            continue
        tol = c.get("tolerance")
        tol_s = tol if isinstance(tol, str) else ", ".join(f"{k} {v:g}" for k, v in tol.items())
        lines.append(
            f"  {'pass' if c['passed'] else 'FAIL'}  {c['name']:<18} tolerance {tol_s}; "
            f"max rel curve {_fmt(c.get('max_rel_curve'))}, max abs acc "
            f"{_fmt(c.get('max_abs_acc'))}, max abs weights {_fmt(c.get('max_abs_weights'))}, "
            f"bitwise {c.get('bitwise_equal')}"
        )
        if c["name"] == "checkpoint_resume" and "default_mode_repeatable" in c:
            cost = c["deterministic_cost"]
            lines.append(
                "        deterministic algorithms: "
                + (
                    f"on, +{_fmt(100 * cost)}% training time, "
                    f"{len(c['nondeterministic_ops'])} op(s) without a deterministic kernel; "
                    if c["deterministic_algorithms"] and cost is not None
                    else "not needed here; "
                )
                + f"two runs in the default mode equal: {c['default_mode_repeatable']}"
            )
        if "error" in c:
            lines.append(f"        error: {c['error'].splitlines()[-1]}")
    lines += _render_throughput(data.get("throughput"))
    lines += _render_fig2(data.get("fig2"))
    lines += _render_compile(data.get("compile"))
    for part, why in data["stopped"].items():
        lines.append(f"stopped early: {part}: {why}")
    return "\n".join(lines) + "\n"


def _render_throughput(t: dict[str, Any] | None) -> list[str]:
    if not t:
        return []
    lines = [
        "",
        f"throughput (paper model, x/y mod 97; {t['steps']} steps, best of {t['rounds']}): "
        "member-steps/s",
        f"  {'K':>5} {'naive':>10} {'population':>11} {'speedup':>8} {'peak MiB/member':>16}",
    ]
    for r in t["rows"]:
        pop = r["population"]
        lines.append(
            f"  {r['K']:>5} {_fmt(r['naive_member_steps_per_s']):>10} "
            f"{_fmt(pop['member_steps_per_s']):>11} {_fmt(r['speedup'], 2):>8} "
            f"{_fmt(pop['peak_mib_per_member']):>16}"
        )
    at = t.get("flattens_at_K")
    lines.append(
        f"  the population's curve flattens (< 10% more for the next K) at K = {at}"
        if at
        else "  the population's curve does not flatten within the K measured"
    )
    return lines


def _render_fig2(f: dict[str, Any] | None) -> list[str]:
    if not f:
        return []
    status = "complete" if f["complete"] else "INCOMPLETE"
    lines = [
        "",
        f"Figure 2 as populations {f['populations']}: {f['setup']}; "
        f"wall {_fmt(f.get('wall_s'))} s ({status}"
        + (
            f"; the whole budget at the last rate: about {_fmt(f['estimated_full_wall_s'], 0)} s)"
            if f.get("estimated_full_wall_s")
            else ")"
        ),
        f"  {'frac':>5} {'median steps to 99%':>32} {'per seed':>24} {'README CPU':>11}",
    ]
    for r in f["rows"]:
        med = (
            f"censored ({r['never']}/{r['seeds']})"
            if r["censored"]
            else _fmt(r["median"] if r["median"] is None else int(r["median"]))
        )
        if r["stopped_by_time"]:
            med += f" [{r['stopped_by_time']} cut by time]"
        if not r["seeds"]:
            med = "not run (time)"
        seeds = ", ".join("-" if s is None else f"{s:,}" for s in r["steps_to_generalize"])
        cpu = _fmt(r["readme_cpu"]) if f["readme_figures_apply"] else "n/a"
        lines.append(f"  {r['frac']:>5.2f} {med:>32} {seeds:>24} {cpu:>11}")
    return lines


def _render_compile(c: dict[str, Any] | None) -> list[str]:
    if not c:
        return []
    lines = [
        "",
        f"the step compiled: Figure 2's largest population ({c['members']} members), "
        f"{c['steps']} steps each",
        f"  {'variant':<26} {'member-steps/s':>15} {'speedup':>8} {'first interval s':>17} "
        f"{'loss diff: 1st eval':>20} {'final':>8}",
    ]
    for v in c["variants"]:
        if "error" in v:
            lines.append(f"  {v['variant']:<26} error: {v['error'].splitlines()[-1][:80]}")
            continue
        lines.append(
            f"  {v['variant']:<26} {_fmt(v.get('steady_member_steps_per_s')):>15} "
            f"{_fmt(v.get('speedup_vs_population'), 2):>8} "
            f"{_fmt(v.get('first_interval_s'), 2):>17} "
            f"{_fmt(v.get('max_rel_first_loss_vs_population')):>20} "
            f"{_fmt(v.get('max_rel_final_loss_vs_population')):>8}"
        )
    return lines


# --- command line ------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", type=Path, help="folder for results.json and report.txt")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--time-budget-s", type=float, default=420.0, help="all parts together")
    p.add_argument("--parts", default=",".join(PARTS), help=f"of {', '.join(PARTS)}")
    p.add_argument("--model", choices=sorted(MODELS), default="paper", help="checks and fig2")
    p.add_argument("--p", type=int, default=97, help="modulus of x/y (checks and fig2)")
    p.add_argument("--lr", type=float, default=1e-3, help="checks and fig2 (the paper's 1e-3)")
    p.add_argument("--check-steps", type=int, default=30, help="short: see STACKED_TOL")
    p.add_argument("--check-eval-every", type=int, default=10)
    p.add_argument("--members", type=_ints, default=[1, 8, 64, 256], help="K values")
    p.add_argument("--naive-max-k", type=int, default=8, help="largest K of naive runs timed")
    p.add_argument("--bench-steps", type=int, default=20, help="steps per throughput run")
    p.add_argument("--rounds", type=int, default=2, help="throughput repeats, the best counts")
    p.add_argument("--fractions", type=_floats, default=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    p.add_argument("--fig2-seeds", type=int, default=3)
    p.add_argument("--fig2-steps", type=int, default=100_000)
    p.add_argument("--fig2-eval-every", type=int, default=100)
    p.add_argument("--compile-steps", type=int, default=1000)
    p.add_argument(
        "--compile",
        type=lambda s: [x for x in s.split(",") if x],
        # CUDA graphs first: launches are what a grokking step spends its time on
        default=["inductor:reduce-overhead", "inductor"],
        help="backend[:mode] list, in order; 'none' for no compiled variant",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default torch's)")
    args = p.parse_args(argv)
    args.compile = [c for c in args.compile if c != "none"]
    args.parts = [x for x in args.parts.split(",") if x]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        p.error(f"--parts: unknown {', '.join(sorted(unknown))}")
    return args


def _meta(args: argparse.Namespace, argv: list[str], device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "device": str(device),
        "device_name": name or platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": " ".join(argv),
        "time_budget_s": args.time_budget_s,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if IMPORT_ERROR is not None:
        print(
            f"gpu_check: cannot import {IMPORT_ERROR.name or IMPORT_ERROR}: {IMPORT_ERROR}\n"
            "  needed: torch, numpy, pydantic (grok_tune.config). On a machine without pydantic "
            "run bench/gpu_check.sh, which installs the wheels in bench/wheels",
            file=sys.stderr,
        )
        return 2
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("gpu_check: --device cuda but torch sees no CUDA device", file=sys.stderr)
            return 2
        # deterministic cuBLAS for the checkpoint check; read when cuBLAS starts, so set first
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if args.threads:
        torch.set_num_threads(args.threads)
    res = Results(args.out, _meta(args, argv, device))
    res.save()
    budget = Budget(args.time_budget_s, args.parts)
    print(f"gpu_check: {res.data['meta']['device_name']}; parts {', '.join(args.parts)}")
    for part in args.parts:
        deadline = budget.begin(part)
        t0 = time.perf_counter()
        if part == "checks":
            part_checks(args, device, res)
        elif part == "throughput":
            part_throughput(args, device, res, deadline)
        elif part == "fig2":
            part_fig2(args, device, res, deadline)
        else:
            part_compile(args, device, res, deadline)
        res.data.setdefault("part_seconds", {})[part] = round(time.perf_counter() - t0, 1)
        res.save()
    print()
    print(render(res.data))
    failed = [
        c["name"] for c in res.data["checks"] if not c["passed"] and not c.get("informational")
    ]
    if failed:
        print(f"gpu_check: correctness checks FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
