"""Training throughput of grok_tune against a plain PyTorch loop of the same model.

Run by hand from the repository root (a benchmark, not a test). About 5 minutes on 2 idle CPU
cores; longer where other processes share them (it waits for them and retries)::

    .venv/bin/python bench/train_step.py                        # CPU, 1 and 2 threads
    .venv/bin/python bench/train_step.py --json bench.json      # also write every figure
    .venv/bin/python bench/train_step.py --device cuda          # on a GPU machine

What it compares, in one process on one machine, on Power et al.'s defaults (x/y mod 97,
50 % training data, 2 layers, width 128, 4 heads, MLP 512, batch 512, AdamW lr 1e-3 wd 1):

grok         ``grok_tune.train.Trainer`` itself on the per-member path (its own model, the
             population's loop; on a GPU too), driven for a fixed step budget: fused AdamW, the
             model's "last position only" final layer and its shared prefix ('a ∘' computed
             once per distinct a in the batch, not once per row).
plain        the same model written the obvious way in this file: every layer on every position,
             logits of the last position taken afterwards, ``torch.optim.AdamW`` with default
             options, ``torch.randint`` batches, full-split evaluation under ``no_grad``.
grok_adamw   ablation: Trainer with default (non-fused) AdamW.
grok_unshared  ablation: Trainer with the shared prefix off (last-only on), fused.
grok_full    ablation: Trainer with both shortcuts off (every layer on every position), fused.
plain_fused  ablation: the plain loop with fused AdamW.

Each measurement runs ``--warmup`` untimed steps, then ``--steps`` timed steps with a full-split
evaluation every 100 steps and one at the end of the budget, as Trainer does. Training steps
are timed in windows of 10 consecutive steps and every evaluation on its own, so one run gives

bare         steps/s of training alone: steps / seconds, summed over the clean windows;
with eval    1 / (bare seconds per step + mean evaluation seconds / 100): the rate of a long
             run under the schedule of one full-split evaluation per 100 steps.

The machine may be shared: for every window and evaluation the CPU time other processes used
meanwhile is read from /proc/stat. Windows in which they used 0.25 cores or more are left out;
each run waits (up to 5 s) for a quiet machine first, a run with fewer than half its windows
clean is retried (``--retries``), and one with fewer than 3 clean windows is left out of the
summary. Configurations and thread counts alternate within each of ``--rounds`` rounds (the
order reversed every other round), ratios are taken within a round (rounds where both runs are
usable) and the median over rounds is reported. Two threads are very sensitive to other work:
a run sharing its cores can be several times slower, hence all this.

GFLOP/s are matmul FLOPs counted analytically (forward, plus backward counted as twice the
forward) divided by the bare step time; "useful" GFLOP/s divides the plain model's count by the
implementation's own step time: the rate at which it gets the plain model's work done. Both
are compared with fp32 matmuls measured in the same run on the same threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
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
import torch.nn.functional as F
from torch import nn

from grok_tune import metrics as m
from grok_tune.config import TrainConfig
from grok_tune.model import ModelConfig, Transformer
from grok_tune.tasks import Split
from grok_tune.train import Record, Trainer

EVAL_EVERY = 100
WINDOW = 10  # training steps per timing window
OTHER_MAX_CORES = 0.25  # a window is clean if other processes used fewer cores than this
CLEAN_MIN_SHARE = 0.5  # a run with a smaller share of clean windows is retried
USABLE_MIN_WINDOWS = 3  # a run with fewer clean windows is left out of the summary
CONFIGS = ("grok", "plain", "grok_adamw", "grok_unshared", "grok_full", "plain_fused")
DESCRIPTIONS = {
    "grok": "grok_tune Trainer (fused AdamW, last-only, shared prefix)",
    "plain": "plain loop (default AdamW, all positions)",
    "grok_adamw": "Trainer, default AdamW instead of fused",
    "grok_unshared": "Trainer, shared prefix off",
    "grok_full": "Trainer, last-only and shared prefix off",
    "plain_fused": "plain loop with fused AdamW",
}
MATMULS = {"2048x128@128x512": (2048, 128, 512), "1024^3": (1024, 1024, 1024)}


# --- the plain model: the same architecture written the obvious way -----------------------
# Module names mirror grok_tune's so that one state_dict loads into both (checked in main).
class PlainAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class PlainBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_mlp: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = PlainAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), nn.ReLU(), nn.Linear(d_mlp, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class PlainTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.n_positions, cfg.d_model)
        self.blocks = nn.ModuleList(
            PlainBlock(cfg.d_model, cfg.n_heads, cfg.d_mlp) for _ in range(cfg.n_layers)
        )
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.num_classes)
        self.n_predict = cfg.n_predict

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        # every position computed, the predicted ones used: (B, n_predict, classes)
        return self.head(self.ln_f(x))[:, -self.n_predict :]


def plain_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the predicted positions: (B, P, classes) against (B, P)."""
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def plain_optimizer(model: nn.Module, fused: bool = False) -> torch.optim.AdamW:
    kwargs: dict[str, Any] = {"fused": True} if fused else {}
    return torch.optim.AdamW(
        model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=1.0, **kwargs
    )


class NoShortcutTransformer(Transformer):
    """grok_tune's model with both shortcuts off: every layer on every position of every row."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.tok_emb(idx) + self.pos_emb.weight[: idx.shape[1]])
        for block in self.blocks:
            x, _ = block(x)
        return self.head(self.ln_f(x[:, x.shape[1] - self.cfg.n_predict :]))


# --- FLOP counting -----------------------------------------------------------------------
def layer_flops(cfg: ModelConfig, queries: int, new_keys: int, context: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one block: the query projection, attention rows
    (scores and weighted sum over ``context`` positions, causal masking not subtracted), output
    projection and MLP on ``queries`` positions; keys and values on ``new_keys`` positions."""
    C, M = cfg.d_model, cfg.d_mlp
    qkv = 2 * queries * C * C + 2 * new_keys * C * 2 * C
    return qkv + 2 * (2 * queries * context * C) + 2 * queries * C * C + 2 * (2 * queries * C * M)


def forward_flops_per_sample(cfg: ModelConfig, config: str, batch: int, prefix: int) -> float:
    """Matmul FLOPs of one sample's forward pass under ``config``'s shortcuts.

    Last-only: the last block's queries, output projection and MLP on the predicted positions
    alone (the '=' of a table). Shared prefix (``prefix`` leading positions, the task layout's:
    'a ∘' of a table): the prefix through every block once per distinct prefix in the batch
    (counted as min(p, batch), an upper bound), the rows' own blocks on the positions after it.
    """
    T, L, P = cfg.n_positions, cfg.n_layers, cfg.n_predict
    full = layer_flops(cfg, T, T, T)
    # the model's own rule: prefixes are shared from 2 layers on, without dropout, and only
    # where the prefix ends before the predicted positions
    shares = prefix > 0 and L > 1 and cfg.dropout == 0 and prefix <= T - P
    if config in ("plain", "plain_fused", "grok_full"):
        body: float = L * full
    elif config == "grok_unshared" or not shares:
        body = (L - 1) * full + layer_flops(cfg, P, T, T)
    else:  # grok, grok_adamw
        rows = (L - 1) * layer_flops(cfg, T - prefix, T - prefix, T)
        rows += layer_flops(cfg, P, T - prefix, T)
        prefixes = min(cfg.num_classes, batch)
        body = rows + prefixes / batch * L * layer_flops(cfg, prefix, prefix, prefix)
    head_positions = T if config.startswith("plain") else P
    return body + 2 * head_positions * cfg.d_model * cfg.num_classes


def step_flops(cfg: ModelConfig, batch: int, config: str, prefix: int) -> float:
    """Forward + backward (2x forward) matmul FLOPs of one training step of ``config``."""
    return 3 * forward_flops_per_sample(cfg, config, batch, prefix) * batch


# --- clocks that know when other processes shared the CPU ----------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


Counters = tuple[float, float | None, float]


def counters() -> Counters:
    """(perf_counter, busy CPU seconds of the whole machine or None, this process's CPU s)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        v = [int(f) for f in fields]  # user nice system idle iowait irq softirq steal ...
        busy: float | None = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        busy = None
    own = os.times()
    return time.perf_counter(), busy, own.user + own.system


def others_between(a: Counters, b: Counters) -> float | None:
    """Cores other processes used on average between two ``counters()`` readings."""
    if a[1] is None or b[1] is None or b[0] <= a[0]:
        return None
    return max((b[1] - a[1]) - (b[2] - a[2]), 0.0) / (b[0] - a[0])


def wait_for_quiet(max_wait_s: float = 5.0, probe_s: float = 0.5) -> float:
    """Wait (up to ``max_wait_s``) until other processes leave the CPU; returns seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait_s:
        a = counters()
        time.sleep(probe_s)
        others = others_between(a, counters())
        if others is None or others < OTHER_MAX_CORES:
            break
    return time.perf_counter() - t0


@dataclass
class Span:
    """``steps`` training steps (0: an evaluation) that took ``seconds``."""

    steps: int
    seconds: float
    others: float | None  # cores other processes used meanwhile

    @property
    def clean(self) -> bool:
        return self.others is None or self.others < OTHER_MAX_CORES


class StepClock:
    """Times windows of WINDOW consecutive training steps and every evaluation.

    Call ``step()`` at the start of every training step and wrap every evaluation in
    ``evaluation(fn)``: the window in progress when an evaluation starts is dropped, so that
    windows hold training steps only. On a GPU it synchronizes at window edges only.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.windows: list[Span] = []
        self.evals: list[Span] = []
        self._start: Counters | None = None
        self._n = 0

    def _now(self) -> Counters:
        sync(self.device)
        return counters()

    def step(self) -> None:
        if self._start is None:
            self._start, self._n = self._now(), 0
            return
        self._n += 1
        if self._n == WINDOW:
            now = self._now()
            self.windows.append(
                Span(WINDOW, now[0] - self._start[0], others_between(self._start, now))
            )
            self._start, self._n = now, 0

    def evaluation(self, fn: Callable[[], Any]) -> Any:
        self._start = None
        a = self._now()
        out = fn()
        b = self._now()
        self.evals.append(Span(0, b[0] - a[0], others_between(a, b)))
        return out


@dataclass
class Timing:
    """One timed run of ``config``: its training windows and its evaluations."""

    config: str
    threads: int
    round: int
    steps: int  # timed steps
    wall_s: float  # wall time of the timed part, evaluations included
    windows: list[Span] = field(default_factory=list)
    evals: list[Span] = field(default_factory=list)

    @property
    def clean_share(self) -> float:
        return sum(w.clean for w in self.windows) / max(len(self.windows), 1)

    @property
    def clean(self) -> bool:
        return self.clean_share >= CLEAN_MIN_SHARE

    @property
    def usable(self) -> bool:
        return sum(w.clean for w in self.windows) >= USABLE_MIN_WINDOWS

    @property
    def step_s(self) -> float:
        """Seconds per training step over the clean windows (all windows if none is clean)."""
        ws = [w for w in self.windows if w.clean] or self.windows
        return sum(w.seconds for w in ws) / sum(w.steps for w in ws)

    @property
    def eval_s(self) -> float:
        """Mean seconds of one evaluation (clean ones where there are any)."""
        es = [e for e in self.evals if e.clean] or self.evals
        return statistics.fmean(e.seconds for e in es)

    @property
    def all_in_step_s(self) -> float:
        """Wall time minus evaluations, over every timed step: disturbances included."""
        return (self.wall_s - sum(e.seconds for e in self.evals)) / self.steps

    @property
    def bare_rate(self) -> float:
        return 1.0 / self.step_s

    @property
    def eval_rate(self) -> float:
        """Steps/s under one evaluation per EVAL_EVERY steps."""
        return 1.0 / (self.step_s + self.eval_s / EVAL_EVERY)


# --- the measurements --------------------------------------------------------------------
def train_config(steps: int) -> TrainConfig:
    return TrainConfig(
        op="x/y",
        p=97,
        frac=0.5,
        n_layers=2,
        d_model=128,
        n_heads=4,
        d_mlp=512,
        batch_size=512,
        lr=1e-3,
        weight_decay=1.0,
        steps=steps,
        eval_every=EVAL_EVERY,
        stop_after_generalized=None,
    )


def time_trainer(
    config: str, device: torch.device, warmup: int, steps: int, threads: int, rnd: int
) -> Timing:
    """Drive grok_tune's Trainer: ``warmup`` steps, then ``steps`` timed steps of ``run``.

    The training steps are seen through a forward pre-hook on the model (training mode only:
    evaluations run in eval mode) and the evaluations by wrapping its population's
    ``_evaluate``. The ablations swap the member's model or optimizer (``trainer.member``).
    """
    trainer = Trainer(train_config(warmup), device, stacked=False)
    pop, member, cfg = trainer.population, trainer.member, trainer.cfg
    if config == "grok_full":
        model = NoShortcutTransformer(member.model.cfg).to(device)
        model.load_state_dict(member.model.state_dict())
        member.model, member.params = model, list(model.parameters())
    if config == "grok_unshared":
        member.model.cfg.shared_prefix = 0
    if config in ("grok_adamw", "grok_full"):
        member.optimizer = torch.optim.AdamW(
            member.model.param_groups(cfg.weight_decay, cfg.decay_scope),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.adam_eps,
            fused=True if config == "grok_full" else None,
        )
        member.base_lrs = [group["lr"] for group in member.optimizer.param_groups]
    trainer.run()  # warm-up: evaluation at step 0, `warmup` steps, evaluation at the budget

    # extend the budget and let the same population go on, watched by the clock: the loop reads
    # the budget from its cfgs, the stopping rule from events, which ended the run at `warmup`
    # and took it out of the active members
    pop.cfgs[0] = cfg.model_copy(update={"steps": warmup + steps})
    pop.events[0].rule = dataclasses.replace(pop.events[0].rule, steps=warmup + steps)
    pop.events[0].status = m.Status.RUNNING
    pop.active = [0]
    clock = StepClock(device)
    evaluate = pop._evaluate

    def timed_evaluate(train_seconds: float) -> dict[int, Record]:
        return clock.evaluation(lambda: evaluate(train_seconds))

    def on_forward(module: nn.Module, args: Any) -> None:
        if module.training:
            clock.step()

    pop._evaluate = timed_evaluate  # type: ignore[method-assign]
    hook = trainer.model.register_forward_pre_hook(on_forward)
    sync(device)
    t0 = time.perf_counter()
    trainer.run()
    sync(device)
    wall = time.perf_counter() - t0
    hook.remove()
    assert trainer.step == warmup + steps, trainer.step
    return Timing(config, threads, rnd, steps, wall, clock.windows, clock.evals)


@torch.no_grad()
def plain_evaluate(model: nn.Module, train: Split, val: Split) -> list[float]:
    """Accuracy and loss on the full train and validation splits, the obvious way."""
    model.eval()
    out: list[float] = []
    for split in (train, val):
        logits = model(split.x)
        out.append((logits.argmax(dim=-1) == split.y).float().mean().item())
        out.append(plain_loss(logits, split.y).item())
    model.train()
    return out


def time_plain(
    config: str,
    train: Split,
    val: Split,
    model_cfg: ModelConfig,
    device: torch.device,
    warmup: int,
    steps: int,
    threads: int,
    rnd: int,
) -> Timing:
    """The plain loop, on the schedule of ``time_trainer``: evaluation every 100 steps and at
    the end of the budget, timed after ``warmup`` steps and a warm-up evaluation."""
    torch.manual_seed(0)
    model = PlainTransformer(model_cfg).to(device)
    opt = plain_optimizer(model, fused=config == "plain_fused")
    n_train, batch = len(train), 512
    model.train()
    clock = StepClock(device)

    def train_step() -> None:
        idx = torch.randint(n_train, (batch,), device=device)
        loss = plain_loss(model(train.x[idx]), train.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(warmup):
        train_step()
    plain_evaluate(model, train, val)
    step, total = warmup, warmup + steps
    sync(device)
    t0 = time.perf_counter()
    while step < total:
        until = min(step + EVAL_EVERY - step % EVAL_EVERY, total)
        while step < until:
            clock.step()
            train_step()
            step += 1
        clock.evaluation(lambda: plain_evaluate(model, train, val))
    sync(device)
    wall = time.perf_counter() - t0
    return Timing(config, threads, rnd, steps, wall, clock.windows, clock.evals)


def matmul_gflops(device: torch.device, m_: int, k: int, n: int, min_s: float = 0.15) -> float:
    """fp32 GFLOP/s of (m x k) @ (k x n): the best of 5 timed chunks of repeated products."""
    a = torch.randn(m_, k, device=device)
    b = torch.randn(k, n, device=device)
    c = torch.empty(m_, n, device=device)
    for _ in range(3):
        torch.mm(a, b, out=c)
    sync(device)
    reps, t = 1, 0.0
    while t < min_s / 5:  # calibrate chunks of about min_s / 5 seconds
        reps *= 2
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=c)
        sync(device)
        t = time.perf_counter() - t0
    rates = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=c)
        sync(device)
        rates.append(2 * m_ * k * n * reps / (time.perf_counter() - t0) / 1e9)
    return max(rates)


# --- where the time of one step goes -------------------------------------------------------
PHASES = ("sample", "forward", "backward", "optimizer")


def phase_breakdown(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    train: Split,
    device: torch.device,
    sample: Callable[[], torch.Tensor],
    iters: int = 30,
) -> dict[str, float]:
    """Median milliseconds of sampling, forward (with the loss), backward (with zero_grad) and
    the optimizer step, over ``iters`` steps after 5 untimed ones."""
    model.train()
    times: dict[str, list[float]] = {p: [] for p in PHASES}
    for i in range(iters + 5):
        stamps = [time.perf_counter()]
        idx = sample()
        xb, yb = train.x[idx], train.y[idx]
        sync(device)
        stamps.append(time.perf_counter())
        loss = plain_loss(model(xb), yb)
        sync(device)
        stamps.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync(device)
        stamps.append(time.perf_counter())
        opt.step()
        sync(device)
        stamps.append(time.perf_counter())
        if i >= 5:
            for p, t0, t1 in zip(PHASES, stamps, stamps[1:], strict=False):
                times[p].append(1e3 * (t1 - t0))
    return {p: statistics.median(ts) for p, ts in times.items()}


@torch.inference_mode()
def chunked_accuracy_and_loss(
    model: nn.Module, split: Split, chunk: int = m.EVAL_CHUNK
) -> tuple[float, float]:
    """Accuracy and loss alone, with the forward pass in chunks of rows as ``metrics.evaluate``
    runs it: what that costs without its per-position and Softmax Collapse bookkeeping."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(xc) for xc in split.x.split(chunk)])
    model.train(was_training)
    acc = (logits.argmax(dim=-1) == split.y).float().mean()
    return float(acc), float(plain_loss(logits, split.y))


def eval_breakdown(
    trainer: Trainer, plain: nn.Module, device: torch.device, reps: int = 3
) -> dict[str, float]:
    """Best-of-``reps`` milliseconds of one evaluation: the population's whole ``_evaluate``
    (records, events), its two ``metrics.evaluate`` calls alone, accuracy and loss alone in
    chunks of 512 rows, and the plain one."""
    train, val, layout, model = trainer.train_data, trainer.val_data, trainer.layout, trainer.model
    cases: dict[str, Callable[[], Any]] = {
        "population._evaluate": lambda: trainer.population._evaluate(0.0),
        "evaluate x2": lambda: [
            m.evaluate(model, train, layout, "train", collapse=True),
            m.evaluate(model, val, layout, "val"),
        ],
        "acc+loss alone, 512-row chunks": lambda: [
            chunked_accuracy_and_loss(model, s) for s in (train, val)
        ],
        "plain eval": lambda: plain_evaluate(plain, train, val),
    }
    out = {}
    for name, fn in cases.items():
        fn()
        best = math.inf
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            best = min(best, time.perf_counter() - t0)
        out[name] = 1e3 * best
    return out


def measure_breakdown(
    model_cfg: ModelConfig, batch: int, device: torch.device
) -> dict[str, dict[str, float]]:
    """Per-phase milliseconds of a grok_tune step (Trainer's model and fused AdamW, randperm
    batches) and of a plain step, and of the evaluations."""
    trainer = Trainer(train_config(1), device, stacked=False)
    train = trainer.train_data
    gen = torch.Generator().manual_seed(0)
    n_train = len(train)
    torch.manual_seed(0)
    plain_model = PlainTransformer(model_cfg).to(device)
    plain_opt = plain_optimizer(plain_model)

    def grok_sample() -> torch.Tensor:
        return torch.randperm(n_train, generator=gen)[:batch].to(device)

    def plain_sample() -> torch.Tensor:
        return torch.randint(n_train, (batch,), device=device)

    return {
        "grok": phase_breakdown(trainer.model, trainer.optimizer, train, device, grok_sample),
        "plain": phase_breakdown(plain_model, plain_opt, train, device, plain_sample),
        "eval": eval_breakdown(trainer, plain_model, device),
    }


# --- main ----------------------------------------------------------------------------------
def rounds_order(n_rounds: int, threads: list[int]) -> Iterator[tuple[int, int, list[str]]]:
    """(round, threads, configs): thread counts and configurations alternate, reversed every
    other round so that neither side always runs first."""
    for r in range(n_rounds):
        for th in threads if r % 2 == 0 else threads[::-1]:
            yield r, th, list(CONFIGS if r % 2 == 0 else CONFIGS[::-1])


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def fmt_others(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="default: 1 2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per run")
    parser.add_argument("--steps", type=int, default=150, help="timed steps per run")
    parser.add_argument("--retries", type=int, default=1, help="re-runs of a disturbed run")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.steps <= WINDOW:  # a window closes at the step after its last: none would close
        parser.error(f"--steps must be more than {WINDOW}, one timing window")
    threads = args.threads or ([1] if device.type == "cuda" else [1, 2])
    t_start = time.perf_counter()

    # the model both sides train, and checks that they compute the same function
    probe = Trainer(train_config(1), device, stacked=False)
    train, val = probe.train_data, probe.val_data
    model_cfg, batch, prefix = probe.model.cfg, probe.batch_size, probe.layout.shared_prefix
    plain = PlainTransformer(model_cfg).to(device)
    plain.load_state_dict(probe.model.state_dict())
    full = NoShortcutTransformer(model_cfg).to(device)
    full.load_state_dict(probe.model.state_dict())
    n_grok, n_plain = probe.model.num_params(), sum(p.numel() for p in plain.parameters())
    assert n_grok == n_plain, (n_grok, n_plain)
    with torch.no_grad():
        ref = probe.model.eval()(val.x[:256])
        diff_plain = float((plain.eval()(val.x[:256]) - ref).abs().max())
        diff_full = float((full.eval()(val.x[:256]) - ref).abs().max())
    assert diff_plain < 1e-4 and diff_full < 1e-4, (diff_plain, diff_full)
    flops = {c: step_flops(model_cfg, batch, c, prefix) for c in CONFIGS}
    print(
        f"device {device}, torch {torch.__version__}, {os.cpu_count()} CPUs, threads {threads}; "
        f"{n_grok:,} parameters on both sides; same logits on shared weights "
        f"(max |diff| plain {diff_plain:.1e}, shortcut off {diff_full:.1e}); batch {batch}, "
        f"train {len(train)}, val {len(val)}, shared prefix {prefix}; {args.rounds} rounds x "
        f"({args.warmup} warm-up + {args.steps} timed steps)",
        flush=True,
    )

    timings: list[Timing] = []
    retried = 0
    mm: dict[tuple[int, str], list[float]] = {}
    for rnd, th, configs in rounds_order(args.rounds, threads):
        torch.set_num_threads(th)
        wait_for_quiet()
        for name, shape in MATMULS.items():
            mm.setdefault((th, name), []).append(matmul_gflops(device, *shape))
        for config in configs:
            for attempt in range(args.retries + 1):
                waited = wait_for_quiet()
                if config.startswith("grok"):
                    t = time_trainer(config, device, args.warmup, args.steps, th, rnd)
                else:
                    t = time_plain(
                        config, train, val, model_cfg, device, args.warmup, args.steps, th, rnd
                    )
                busy = (
                    ""
                    if t.clean
                    else ("  DISTURBED" + (", retry" if attempt < args.retries else ""))
                )
                print(
                    f"  round {rnd} threads {th} {config:<13} {t.bare_rate:6.2f} steps/s bare "
                    f"({1 / t.all_in_step_s:6.2f} all-in), {t.eval_rate:6.2f} with eval "
                    f"({1e3 * t.eval_s:4.0f} ms/eval); clean windows "
                    f"{sum(w.clean for w in t.windows)}/{len(t.windows)}"
                    + (f", waited {waited:.0f} s" if waited > 1 else "")
                    + busy,
                    flush=True,
                )
                if t.clean:
                    break
                retried += attempt < args.retries
            timings.append(t)

    # where the time goes, per phase (grok: Trainer's model and optimizer; plain as above)
    breakdown: dict[int, dict[str, dict[str, float]]] = {}
    breakdown_others: dict[int, float | None] = {}
    for th in threads:
        torch.set_num_threads(th)
        wait_for_quiet()
        before = counters()
        breakdown[th] = measure_breakdown(model_cfg, batch, device)
        breakdown_others[th] = others_between(before, counters())

    # --- summary ------------------------------------------------------------------------
    def runs(config: str, th: int) -> list[Timing]:
        return [t for t in timings if t.config == config and t.threads == th]

    def usable(config: str, th: int) -> list[Timing]:
        """The usable runs of ``config`` at ``th`` threads; all of them if none is."""
        ts = runs(config, th)
        return [t for t in ts if t.usable] or ts

    def paired(num: str, den: str, th: int, rate: str) -> float:
        """Median over rounds of the within-round ratio num/den (rounds where both runs are
        usable; all rounds if there is none)."""
        a = {t.round: t for t in runs(num, th)}
        b = {t.round: t for t in runs(den, th)}
        both = [r for r in a if a[r].usable and b[r].usable] or list(a)
        return median([getattr(a[r], rate) / getattr(b[r], rate) for r in both])

    summary: dict[int, Any] = {}
    lines = []
    for th in threads:
        peak = max(max(mm[(th, name)]) for name in MATMULS)
        per: dict[str, Any] = {
            "matmul_gflops": {name: max(mm[(th, name)]) for name in MATMULS},
            "configs": {},
        }
        for config in CONFIGS:
            ts = usable(config, th)
            step_s = median([t.step_s for t in ts])
            gf = flops[config] / step_s / 1e9
            row = {
                "bare_steps_per_s": median([t.bare_rate for t in ts]),
                "with_eval_steps_per_s": median([t.eval_rate for t in ts]),
                "ms_per_step": 1e3 * step_s,
                "ms_per_eval": 1e3 * median([t.eval_s for t in ts]),
                "gflop_per_step": flops[config] / 1e9,
                "achieved_gflops": gf,
                "useful_gflops": flops["plain"] / step_s / 1e9,
                "percent_of_matmul": 100 * gf / peak,
                "usable_runs": sum(t.usable for t in runs(config, th)),
                "runs": len(runs(config, th)),
            }
            per["configs"][config] = row
            lines.append(
                f"{config:<14}{th:>4}{row['bare_steps_per_s']:>9.2f}"
                f"{row['with_eval_steps_per_s']:>8.2f}{row['ms_per_step']:>9.1f}"
                f"{row['ms_per_eval']:>9.0f}{row['gflop_per_step']:>10.3f}{gf:>9.1f}"
                f"{row['useful_gflops']:>8.1f}{row['percent_of_matmul']:>6.0f}%"
                f"{row['usable_runs']:>4}/{row['runs']}  {DESCRIPTIONS[config]}"
            )
        per["ratios"] = {
            "grok/plain, bare step": paired("grok", "plain", th, "bare_rate"),
            "grok/plain, with eval every 100": paired("grok", "plain", th, "eval_rate"),
            "fused AdamW: grok/grok_adamw": paired("grok", "grok_adamw", th, "bare_rate"),
            "shared prefix: grok/grok_unshared": paired("grok", "grok_unshared", th, "bare_rate"),
            "last-only: grok_unshared/grok_full": paired(
                "grok_unshared", "grok_full", th, "bare_rate"
            ),
            "fused AdamW on plain: plain_fused/plain": paired(
                "plain_fused", "plain", th, "bare_rate"
            ),
            "the rest (code, loop): grok_full/plain_fused": paired(
                "grok_full", "plain_fused", th, "bare_rate"
            ),
            "FLOPs plain/grok (ideal gain of both shortcuts)": flops["plain"] / flops["grok"],
        }
        per["breakdown_ms"] = breakdown[th]
        per["breakdown_other_cores"] = breakdown_others[th]
        summary[th] = per

    print("\n=== steps/s (median over usable runs), FLOP rates ===")
    print(
        f"{'config':<14}{'thr':>4}{'steps/s':>9}{'+eval':>8}{'ms/step':>9}{'ms/eval':>9}"
        f"{'GFLOP/st':>10}{'GFLOP/s':>9}{'useful':>8}{'%peak':>7}{'runs':>6}  what"
    )
    print("\n".join(lines))
    print("\nfp32 matmul GFLOP/s, same run and threads (best of rounds; %peak is of the larger):")
    for th in threads:
        print(
            f"  threads {th}: "
            + ", ".join(f"{k} {v:.1f}" for k, v in summary[th]["matmul_gflops"].items())
        )
    print("\n=== ratios: median over rounds of within-round ratios (>1: the first is faster) ===")
    print(f"{'':<46}" + "".join(f"{'threads ' + str(th):>11}" for th in threads))
    for name in summary[threads[0]]["ratios"]:
        print(f"{name:<46}" + "".join(f"{summary[th]['ratios'][name]:>11.3f}" for th in threads))
    print("\n=== one step by phase: median ms of 30 steps (grok: Trainer's model, fused AdamW) ===")
    print(
        f"{'':<8}{'thr':>4}" + "".join(f"{p:>11}" for p in PHASES) + "   fwd GFLOP/s  bwd GFLOP/s"
    )
    for th in threads:
        for impl in ("grok", "plain"):
            ph = breakdown[th][impl]
            fwd = flops[impl] / 3  # FLOPs / ms / 1e6 = GFLOP/s
            print(
                f"{impl:<8}{th:>4}"
                + "".join(f"{ph[p]:>11.2f}" for p in PHASES)
                + f"{fwd / ph['forward'] / 1e6:>14.1f}{2 * fwd / ph['backward'] / 1e6:>13.1f}"
            )
    print(
        "other processes meanwhile: "
        + ", ".join(f"threads {th} {fmt_others(c)} cores" for th, c in breakdown_others.items())
    )
    print("\n=== one full-split evaluation (train + validation), best of 3, ms ===")
    for th in threads:
        ev = breakdown[th]["eval"]
        print(f"  threads {th}: " + ", ".join(f"{k} {v:.0f}" for k, v in ev.items()))

    elapsed = time.perf_counter() - t_start
    left_out = sum(not t.usable for t in timings)
    print(
        f"\n{retried} runs retried because other processes disturbed them; {left_out} of "
        f"{len(timings)} kept runs had fewer than {USABLE_MIN_WINDOWS} clean windows (left out "
        f"where a usable run exists); bench took {elapsed:.0f} s"
    )
    if args.json:
        payload = {
            "command": " ".join([sys.executable, *sys.argv]),
            "device": str(device),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "num_params": n_grok,
            "batch_size": batch,
            "step_flops": flops,
            "elapsed_s": elapsed,
            "summary": summary,
            "timings": [
                {
                    **asdict(t),
                    "step_s": t.step_s,
                    "eval_s": t.eval_s,
                    "all_in_step_s": t.all_in_step_s,
                    "clean": t.clean,
                    "usable": t.usable,
                }
                for t in timings
            ],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
