"""What each grokking remedy costs in training-step time, against the plain step, side by side.

Run by hand from the repository root (a benchmark, not a test). About 5 minutes on 2 idle CPU
cores with the defaults; longer where other processes share them::

    .venv/bin/python bench/remedies.py                          # both models, 1 thread
    .venv/bin/python bench/remedies.py --threads 1 2 --json remedies.json
    .venv/bin/python bench/remedies.py --models small --rounds 3 --steps 100

Every remedy is switched on the way a study switches it on, as a TrainConfig setting, and runs
in grok_tune's own ``Trainer`` on the per-member path (grok_tune/member.py: the remedies of
grok_tune/remedies.py at the loop's seams), on a GPU too:

baseline     no remedy: cross-entropy in float32, fused AdamW.
ema          Grokfast-EMA (α 0.98, λ 2): one copy of the gradients, three foreach passes a step.
ma           Grokfast-MA (window 100, λ 5): a ring of 100 gradient copies per parameter, a
             running sum, and once every 100 steps the sum recomputed from the whole ring.
stablemax    StableMax cross-entropy, computed in float64 (Prieto et al.'s default).
float64      ordinary cross-entropy computed in float64 (``loss_dtype: float64``).
ortho        ⊥Grad: each gradient's component along its weights removed, norm kept.
fixed_norm   the total weight norm held at its initial value after every step (Omnigrok).
all          ema + stablemax + ortho + fixed_norm together (one gradient filter at a time: EMA,
             the cheaper; MA's cost is its own row).

on two models: ``paper``, Power et al.'s (x/y mod 97, 50 % training data, 2 layers, width 128,
4 heads, MLP 512, batch 512); ``small``, the one studies here use (search_spaces/default.yaml:
x+y mod 59, 50 %, 1 layer, width 64, MLP 256, batch 512), where a fixed per-step cost weighs
more.

Method: train_step.py's, with its rules for a shared machine, interleaved more finely. Every
remedy has its own Trainer, built once per model and warmed up by ``--warmup`` untimed steps
(MA: plus its window, so that its filter is past filling its ring and adds to the gradient, as
for the rest of a run). A round then moves every Trainer on ``--steps`` steps, in windows of 10
steps taken in turn, one remedy after the other (the order reversed every other pass), each
window through Trainer's own ``run()`` with the budget extended by 10 and the evaluation at its
end left out: only training steps are timed, and load that comes and goes on a shared machine
falls on all remedies alike. A window in which other processes used 0.25 cores or more is left
out; a round with fewer than half its windows clean is retried (``--retries``). A remedy's
cost is the median over ``--rounds`` rounds of its seconds per step divided by the baseline's in
the same round, over the rounds where both had at least 3 clean windows (all rounds if none).
Before its timed windows a round runs one untimed window of each remedy: the first window after
the wait for a quiet machine is slower. MA recomputes its running sum once every 100 steps, so
any ``--steps`` that is a multiple of 100 counts that in proportion.

"hooks" is the time spent inside the gradient and step hooks (the filter, ⊥Grad, the norm
control) and "loss" inside the loss function's forward pass, per timed step, from timers around
those calls (CPU only: on a GPU they would need a sync each). The loss's backward lies outside
both: the step-time ratio counts it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

# train_step.py's clock and its rules for a shared machine: one methodology for both benches
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import (
    CLEAN_MIN_SHARE,
    USABLE_MIN_WINDOWS,
    WINDOW,
    Span,
    counters,
    others_between,
    sync,
    wait_for_quiet,
)

from grok_tune.config import TrainConfig
from grok_tune.train import Record, Trainer

MA_WINDOW = 100
NEVER = 10**9  # an evaluation interval no run reaches
MODELS: dict[str, dict[str, Any]] = {
    "paper": {
        "op": "x/y",
        "p": 97,
        "frac": 0.5,
        "n_layers": 2,
        "d_model": 128,
        "n_heads": 4,
        "d_mlp": 512,
        "batch_size": 512,
    },
    "small": {
        "op": "x+y",
        "p": 59,
        "frac": 0.5,
        "n_layers": 1,
        "d_model": 64,
        "d_mlp": 256,
        "lr": 3e-3,
        "batch_size": 512,
    },
}
REMEDIES: dict[str, dict[str, Any]] = {
    "baseline": {},
    "ema": {"grad_filter": "ema"},
    "ma": {"grad_filter": "ma", "grokfast_window": MA_WINDOW},
    "stablemax": {"loss": "stablemax"},
    "float64": {"loss_dtype": "float64"},
    "ortho": {"orthogonal_grad": True},
    "fixed_norm": {"fixed_weight_norm": True},
    "all": {
        "grad_filter": "ema",
        "loss": "stablemax",
        "orthogonal_grad": True,
        "fixed_weight_norm": True,
    },
}
DESCRIPTIONS = {
    "baseline": "no remedy",
    "ema": "Grokfast-EMA",
    "ma": f"Grokfast-MA, window {MA_WINDOW}",
    "stablemax": "StableMax loss, float64",
    "float64": "cross-entropy in float64",
    "ortho": "⊥Grad",
    "fixed_norm": "weight norm held fixed",
    "all": "ema + stablemax + ortho + fixed_norm",
}


def train_config(model: str, remedy: str) -> TrainConfig:
    return TrainConfig(
        **MODELS[model],
        **REMEDIES[remedy],
        # the budget is moved on a window at a time (Driven.advance); evaluations never come
        steps=1,
        eval_every=NEVER,
        stop_after_generalized=None,
    )


def warmup_steps(remedy: str, warmup: int) -> int:
    """MA adds nothing until its ring is full: time it as it runs for the rest of a run."""
    return warmup + (MA_WINDOW if REMEDIES[remedy].get("grad_filter") == "ma" else 0)


class Stopwatch:
    """Wraps a hook or the loss function; accumulates the seconds spent inside once ``on``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.on = False
        self.seconds = 0.0

    def __call__(self, *args: Any) -> Any:
        if not self.on:
            return self.fn(*args)
        t0 = time.perf_counter()
        out = self.fn(*args)
        self.seconds += time.perf_counter() - t0
        return out


class Driven:
    """A Trainer with one remedy, moved on ``WINDOW`` steps at a time through its own ``run()``.

    Each ``advance`` extends the budget and lets ``run()`` (its population's loop) go on; the
    evaluation that ends the budget is replaced by a stop, so that only training steps run: the
    loop, the batches, the loss, the hooks and the optimizer are the run's own (its member's, on
    the per-member path, whatever the device).
    """

    def __init__(self, model: str, remedy: str, device: torch.device) -> None:
        self.trainer = t = Trainer(train_config(model, remedy), device, stacked=False)
        self.pop = pop = t.population
        pop.histories[0].append({})  # a fresh run() evaluates the untrained model first: skip that
        pop._evaluate = self._stop  # type: ignore[method-assign]
        self.hooks: list[Stopwatch] = []
        self.loss: Stopwatch | None = None
        if device.type == "cpu":  # on a GPU the watches would need a sync each
            member = t.member
            member.grad_hooks = [Stopwatch(h) for h in member.grad_hooks]
            member.step_hooks = [Stopwatch(h) for h in member.step_hooks]
            self.hooks = [*member.grad_hooks, *member.step_hooks]  # type: ignore[list-item]
            self.loss = Stopwatch(member.loss_fn)
            member.loss_fn = self.loss

    def _stop(self, train_seconds: float) -> dict[int, Record]:
        self.pop.active = []  # ends run(): the window is done
        return {}

    def advance(self, steps: int) -> None:
        pop = self.pop
        pop.cfgs[0] = pop.cfgs[0].model_copy(update={"steps": pop.step + steps})
        pop.active = [0]
        self.trainer.run()

    def watch(self, on: bool) -> None:
        """Start (from zero) or stop timing the hooks and the loss."""
        for w in self.watches:
            w.on = on
            if on:
                w.seconds = 0.0

    @property
    def watches(self) -> list[Stopwatch]:
        return [*self.hooks, *([self.loss] if self.loss else [])]


@dataclass
class Run:
    """One remedy on one model in one round: its training windows and time in the remedy."""

    model: str
    remedy: str
    threads: int
    round: int
    steps: int  # timed steps (those in windows)
    hooks_s: float | None  # inside grad and step hooks over the timed steps (None on a GPU)
    loss_s: float | None  # inside the loss's forward over the timed steps (None on a GPU)
    windows: list[Span] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # CPU seconds of each window

    @property
    def clean_share(self) -> float:
        return sum(w.clean for w in self.windows) / max(len(self.windows), 1)

    @property
    def usable(self) -> bool:
        return sum(w.clean for w in self.windows) >= USABLE_MIN_WINDOWS

    @property
    def step_s(self) -> float:
        """Seconds per training step over the clean windows (all windows if none is clean)."""
        ws = [w for w in self.windows if w.clean] or self.windows
        return sum(w.seconds for w in ws) / sum(w.steps for w in ws)

    @property
    def rate(self) -> float:
        return 1.0 / self.step_s

    @property
    def cpu_step_s(self) -> float:
        """CPU seconds per training step over every window (all threads of the process)."""
        return sum(self.cpu) / sum(w.steps for w in self.windows)


def measure_round(
    drivers: dict[str, Driven], model: str, device: torch.device, steps: int, th: int, rnd: int
) -> list[Run]:
    """``steps`` steps of every remedy, a window of each in turn (the order reversed every
    other pass, so that none always follows the same one): load that comes and goes falls on
    all of them alike."""
    names = list(drivers)
    names = names[rnd % len(names) :] + names[: rnd % len(names)]  # each round starts elsewhere
    spans: dict[str, list[Span]] = {r: [] for r in names}
    cpu: dict[str, list[float]] = {r: [] for r in names}
    # untimed: the first windows after the wait for a quiet machine ran measurably slower
    # (caches, clock speed), and would all have fallen on the same remedy
    for remedy in names:
        drivers[remedy].advance(WINDOW)
    for d in drivers.values():
        d.watch(True)
    for i in range(steps // WINDOW):
        for remedy in names if i % 2 == 0 else names[::-1]:
            sync(device)
            a, c0 = counters(), time.process_time()
            drivers[remedy].advance(WINDOW)
            sync(device)
            c1, b = time.process_time(), counters()
            spans[remedy].append(Span(WINDOW, b[0] - a[0], others_between(a, b)))
            cpu[remedy].append(c1 - c0)
    runs = []
    for remedy, d in drivers.items():
        d.watch(False)
        hooks = sum(w.seconds for w in d.hooks) if d.loss else None
        loss = d.loss.seconds if d.loss else None
        runs.append(
            Run(model, remedy, th, rnd, len(spans[remedy]) * WINDOW, hooks, loss, spans[remedy],
                cpu[remedy])
        )  # fmt: skip
    return runs


# --- main ----------------------------------------------------------------------------------
def rounds_order(
    n_rounds: int, threads: list[int], models: list[str]
) -> Iterator[tuple[int, int, str]]:
    """(round, threads, model), the order of thread counts and models reversed every other
    round."""
    for r in range(n_rounds):
        flip = r % 2 == 1
        for th in threads[::-1] if flip else threads:
            for model in models[::-1] if flip else models:
                yield r, th, model


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="default: 1")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps (MA: + its window)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per remedy and round")
    parser.add_argument("--retries", type=int, default=1, help="re-runs of a disturbed round")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds each round waits at most for other processes to leave the CPU",
    )
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.rounds < 1 or args.steps < WINDOW or args.warmup < 0 or args.quiet_wait < 0:
        parser.error(
            f"--rounds at least 1, --steps at least {WINDOW}, --warmup and --quiet-wait at least 0"
        )
    t_start = time.perf_counter()

    facts: dict[str, dict[str, Any]] = {}
    for model in args.models:
        probe = Trainer(train_config(model, "baseline"), device)
        n = probe.model.num_params()
        facts[model] = {
            "num_params": n,
            "batch_size": probe.batch_size,
            "train_examples": len(probe.train_data),
            "ma_ring_mb": MA_WINDOW * n * 4 / 2**20,  # float32 gradients
        }
        print(
            f"{model}: {n:,} parameters, batch {probe.batch_size}, train "
            f"{len(probe.train_data)}; the MA ring holds {facts[model]['ma_ring_mb']:.0f} MB"
        )
    print(
        f"device {device}, torch {torch.__version__}, {os.cpu_count()} CPUs, threads "
        f"{args.threads}; per remedy {args.warmup} warm-up steps (MA {MA_WINDOW} more), then "
        f"{args.rounds} rounds x {args.steps} timed steps",
        flush=True,
    )

    drivers: dict[str, dict[str, Driven]] = {}
    for model in args.models:
        torch.set_num_threads(args.threads[0])
        drivers[model] = {r: Driven(model, r, device) for r in REMEDIES}
        for remedy, d in drivers[model].items():
            d.advance(warmup_steps(remedy, args.warmup))

    runs: list[Run] = []
    retried = 0
    for rnd, th, model in rounds_order(args.rounds, args.threads, args.models):
        torch.set_num_threads(th)
        for attempt in range(args.retries + 1):
            waited = wait_for_quiet(args.quiet_wait)
            got = measure_round(drivers[model], model, device, args.steps, th, rnd)
            windows = [w for r in got for w in r.windows]
            clean = sum(w.clean for w in windows) / len(windows) >= CLEAN_MIN_SHARE
            print(
                f"  round {rnd} threads {th} {model:<6} clean windows "
                f"{sum(w.clean for w in windows)}/{len(windows)}"
                + (f", waited {waited:.0f} s" if waited > 1 else "")
                + ("" if clean else "  DISTURBED" + (", retry" if attempt < args.retries else ""))
                + "\n    steps/s "
                + " ".join(f"{r.remedy} {r.rate:.1f}" for r in got),
                flush=True,
            )
            if clean:
                break
            retried += attempt < args.retries
        runs += got

    # --- summary ------------------------------------------------------------------------
    def of(model: str, remedy: str, th: int) -> list[Run]:
        return [r for r in runs if (r.model, r.remedy, r.threads) == (model, remedy, th)]

    def usable(model: str, remedy: str, th: int) -> list[Run]:
        rs = of(model, remedy, th)
        return [r for r in rs if r.usable] or rs

    def cost(model: str, remedy: str, th: int, attr: str) -> tuple[float, list[float]]:
        """Median over rounds of ``attr`` (seconds per step) / the baseline's in the same round
        (rounds where both runs are usable; all rounds if there is none), and the ratios."""
        a = {r.round: r for r in of(model, remedy, th)}
        b = {r.round: r for r in of(model, "baseline", th)}
        both = [k for k in a if k in b and a[k].usable and b[k].usable] or [k for k in a if k in b]
        ratios = [getattr(a[k], attr) / getattr(b[k], attr) for k in sorted(both)]
        return median(ratios), ratios

    def per_step_ms(rs: list[Run], attr: str) -> float | None:
        values = [getattr(r, attr) for r in rs]
        if any(v is None for v in values):
            return None
        return 1e3 * median([v / r.steps for v, r in zip(values, rs, strict=True)])

    summary: dict[str, Any] = {}
    print(
        "\n=== step time per remedy (median over usable runs). cost: median over rounds of the\n"
        "    within-round ratio of ms/step to the baseline's (1.10: 10% more time per step), in\n"
        "    wall time over clean windows (range: its lowest and highest round) and in this\n"
        "    process's CPU time over all windows; hooks, loss: ms per step inside them ==="
    )
    print(
        f"{'model':<7}{'thr':>4}  {'remedy':<11}{'steps/s':>9}{'ms/step':>9}{'cost':>7}"
        f"{'range':>11}{'cpu ms':>8}{'cost':>7}{'hooks':>7}{'loss':>6}{'runs':>6}  what"
    )
    for model in args.models:
        for th in args.threads:
            rows: dict[str, Any] = {}
            for remedy in REMEDIES:
                rs = usable(model, remedy, th)
                ratio, ratios = cost(model, remedy, th, "step_s")
                cpu_ratio, cpu_ratios = cost(model, remedy, th, "cpu_step_s")
                row = {
                    "steps_per_s": median([r.rate for r in rs]),
                    "ms_per_step": 1e3 * median([r.step_s for r in rs]),
                    "cost": ratio,
                    "cost_per_round": ratios,
                    "cpu_ms_per_step": 1e3 * median([r.cpu_step_s for r in of(model, remedy, th)]),
                    "cpu_cost": cpu_ratio,
                    "cpu_cost_per_round": cpu_ratios,
                    "hooks_ms_per_step": per_step_ms(rs, "hooks_s"),
                    "loss_fwd_ms_per_step": per_step_ms(rs, "loss_s"),
                    "usable_runs": sum(r.usable for r in of(model, remedy, th)),
                    "runs": len(of(model, remedy, th)),
                }
                rows[remedy] = row
                spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "n/a"
                hooks, loss = row["hooks_ms_per_step"], row["loss_fwd_ms_per_step"]
                print(
                    f"{model:<7}{th:>4}  {remedy:<11}{row['steps_per_s']:>9.2f}"
                    f"{row['ms_per_step']:>9.2f}{ratio:>7.3f}{spread:>11}"
                    f"{row['cpu_ms_per_step']:>8.2f}{cpu_ratio:>7.3f}"
                    f"{'n/a' if hooks is None else f'{hooks:.2f}':>7}"
                    f"{'n/a' if loss is None else f'{loss:.2f}':>6}"
                    f"{row['usable_runs']:>4}/{row['runs']}  {DESCRIPTIONS[remedy]}"
                )
            summary.setdefault(model, {})[str(th)] = rows
        print()

    elapsed = time.perf_counter() - t_start
    left_out = sum(not r.usable for r in runs)
    print(
        f"{retried} rounds retried because other processes disturbed them; {left_out} of "
        f"{len(runs)} kept runs (a remedy in a round) had fewer than {USABLE_MIN_WINDOWS} clean "
        f"windows (left out where a usable one exists); bench took {elapsed:.0f} s"
    )
    if args.json:
        payload = {
            "command": " ".join([sys.executable, *sys.argv]),
            "device": str(device),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "models": {m: {**MODELS[m], **facts[m]} for m in args.models},
            "remedies": REMEDIES,
            "elapsed_s": elapsed,
            "summary": summary,
            "runs": [
                {
                    **asdict(r),
                    "step_s": r.step_s,
                    "cpu_step_s": r.cpu_step_s,
                    "clean_share": r.clean_share,
                    "usable": r.usable,
                }
                for r in runs
            ],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
