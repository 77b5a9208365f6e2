"""Training throughput of grok_tune against a plain PyTorch loop of the same model.

Run by hand from the repository root (not a test; about 4-5 minutes on 2 CPU cores)::

    .venv/bin/python bench/train_step.py                        # CPU, 1 and 2 threads
    .venv/bin/python bench/train_step.py --json bench.json      # also write every figure
    .venv/bin/python bench/train_step.py --device cuda          # on a GPU machine

What it compares, in one process on one machine, on Power et al.'s defaults (x/y mod 97,
50 % training data, 2 layers, width 128, 4 heads, MLP 512, batch 512, AdamW lr 1e-3 wd 1):

grok        ``grok_tune.train.Trainer`` itself, driven for a fixed step budget: fused AdamW and
            the model's "last position only" final layer.
plain       the same model written the obvious way in this file: every layer on every position,
            logits of the last position taken afterwards, ``torch.optim.AdamW`` with default
            options, ``torch.randint`` batches, full-split evaluation under ``no_grad``.
ablations   grok_adamw   Trainer with default (non-fused) AdamW instead of fused;
            grok_full    Trainer with the shortcut off (every layer on every position), fused;
            plain_fused  the plain loop with fused AdamW.

Each measurement runs ``--warmup`` steps, then times ``--steps`` steps with a full-split
evaluation every 100 steps (and one at the end of the budget, as Trainer does). The time of
every evaluation is measured on its own, so one run gives both figures:

bare        steps / (wall time - evaluation time)
with eval   1 / (bare seconds per step + mean evaluation seconds / 100): the rate of a long run
            under the evaluation schedule of one full-split evaluation per 100 steps.

Configurations and thread counts alternate within each of ``--rounds`` rounds (the order is
reversed every other round), ratios are taken within a round and the median over rounds is
reported, so that noise on the machine hits both sides alike.

FLOP/s are matmul FLOPs counted analytically (forward; backward counted as 2x forward) divided
by the measured bare step time. "useful" GFLOP/s divides the plain model's count by the
implementation's own step time: the rate at which it gets the plain model's work done. Both are
compared with a plain fp32 matmul measured in the same run on the same threads.
"""

from __future__ import annotations

import argparse
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
from grok_tune.data import Dataset
from grok_tune.model import ModelConfig, Transformer
from grok_tune.train import Record, TrainConfig, Trainer

EVAL_EVERY = 100
CONFIGS = ("grok", "plain", "grok_adamw", "grok_full", "plain_fused")
DESCRIPTIONS = {
    "grok": "grok_tune Trainer (fused AdamW, last-only)",
    "plain": "plain loop (default AdamW, all positions)",
    "grok_adamw": "Trainer, default AdamW instead of fused",
    "grok_full": "Trainer, last-only shortcut off",
    "plain_fused": "plain loop with fused AdamW",
}


# --- the plain model: the same architecture written the obvious way -----------------------
# Module names mirror grok_tune's so that one state_dict loads into both (checked below).
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
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(
            PlainBlock(cfg.d_model, cfg.n_heads, cfg.d_mlp) for _ in range(cfg.n_layers)
        )
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.num_classes)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))[:, -1]  # every position computed, the last one used


class NoShortcutTransformer(Transformer):
    """grok_tune's model with the last-only shortcut off: every layer on every position."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.tok_emb(idx) + self.pos_emb.weight[: idx.shape[1]])
        for block in self.blocks:
            x = block(x, last_only=False)
        return self.head(self.ln_f(x[:, -1]))


# --- FLOP counting -----------------------------------------------------------------------
def forward_flops_per_sample(cfg: ModelConfig, last_only_layers: int, head_positions: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one sample's forward pass.

    A full layer runs the QKV projection, the attention scores and the weighted sum (counted as
    full T x T), the output projection and the MLP on all T positions; a last-only layer computes
    keys and values on all T positions but the query, its attention row, the output projection
    and the MLP on one.
    """
    T, C, M = cfg.seq_len, cfg.d_model, cfg.d_mlp
    full = 2 * T * C * 3 * C + 2 * (2 * T * T * C) + 2 * T * C * C + 2 * (2 * T * C * M)
    last = 2 * C * C + 2 * T * C * 2 * C + 2 * (2 * T * C) + 2 * C * C + 2 * (2 * C * M)
    n_full = cfg.n_layers - last_only_layers
    return n_full * full + last_only_layers * last + 2 * head_positions * C * cfg.num_classes


def step_flops(cfg: ModelConfig, batch: int, config: str) -> int:
    """Forward + backward (2x forward) matmul FLOPs of one training step of ``config``."""
    if config in ("grok", "grok_adamw"):
        fwd = forward_flops_per_sample(cfg, last_only_layers=1, head_positions=1)
    elif config == "grok_full":
        fwd = forward_flops_per_sample(cfg, last_only_layers=0, head_positions=1)
    else:  # plain: head over every position
        fwd = forward_flops_per_sample(cfg, last_only_layers=0, head_positions=cfg.seq_len)
    return 3 * fwd * batch


# --- timing helpers ----------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """One timed run: ``steps`` optimizer steps and ``evals`` full-split evaluations."""

    config: str
    threads: int
    round: int
    steps: int
    train_s: float  # wall time minus evaluation time
    eval_s: list[float] = field(default_factory=list)

    @property
    def step_s(self) -> float:
        return self.train_s / self.steps

    @property
    def mean_eval_s(self) -> float:
        return statistics.fmean(self.eval_s) if self.eval_s else math.nan

    @property
    def bare_rate(self) -> float:
        return 1.0 / self.step_s

    @property
    def eval_rate(self) -> float:
        """Steps/s under one evaluation per EVAL_EVERY steps."""
        return 1.0 / (self.step_s + self.mean_eval_s / EVAL_EVERY)


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
    """Drive grok_tune's Trainer: ``warmup`` steps, then ``steps`` timed steps of ``run``."""
    trainer = Trainer(train_config(warmup), device)
    cfg = trainer.cfg
    if config == "grok_full":
        model = NoShortcutTransformer(trainer.model.cfg).to(device)
        model.load_state_dict(trainer.model.state_dict())
        trainer.model = model
    if config in ("grok_adamw", "grok_full"):
        trainer.optimizer = torch.optim.AdamW(
            trainer.model.param_groups(cfg.weight_decay, cfg.decay_scope),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            fused=True if config == "grok_full" else None,
        )
    trainer.run()  # warm-up: evaluation at step 0, `warmup` steps, evaluation at the budget

    # extend the budget and let the same Trainer go on; time every evaluation on its own
    trainer.cfg = cfg.model_copy(update={"steps": warmup + steps})
    trainer.status = m.Status.RUNNING
    evaluate = trainer._evaluate
    eval_s: list[float] = []

    def timed_evaluate(train_seconds: float) -> Record:
        sync(device)
        t0 = time.perf_counter()
        record = evaluate(train_seconds)
        sync(device)
        eval_s.append(time.perf_counter() - t0)
        return record

    trainer._evaluate = timed_evaluate  # type: ignore[method-assign]
    sync(device)
    t0 = time.perf_counter()
    trainer.run()
    sync(device)
    wall = time.perf_counter() - t0
    assert trainer.step == warmup + steps, trainer.step
    return Timing(config, threads, rnd, steps, wall - sum(eval_s), eval_s)


@torch.no_grad()
def plain_evaluate(model: nn.Module, data: Dataset) -> tuple[float, float, float, float]:
    """Accuracy and loss on the full train and validation splits, the obvious way."""
    model.eval()
    out: list[float] = []
    for x, y in ((data.train_x, data.train_y), (data.val_x, data.val_y)):
        logits = model(x)
        out += [
            (logits.argmax(dim=1) == y).float().mean().item(),
            F.cross_entropy(logits, y).item(),
        ]
    model.train()
    return out[0], out[1], out[2], out[3]


def time_plain(
    config: str,
    data: Dataset,
    model_cfg: ModelConfig,
    device: torch.device,
    warmup: int,
    steps: int,
    threads: int,
    rnd: int,
) -> Timing:
    """The plain loop: same schedule as ``time_trainer`` (evaluation every 100 steps and at the
    end of the budget), timed after ``warmup`` steps and a warm-up evaluation."""
    torch.manual_seed(0)
    model = PlainTransformer(model_cfg).to(device)
    kwargs: dict[str, Any] = {"fused": True} if config == "plain_fused" else {}
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=1.0, **kwargs
    )
    n_train, batch = len(data.train_y), 512
    model.train()

    def train_step() -> None:
        idx = torch.randint(n_train, (batch,), device=device)
        loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(warmup):
        train_step()
    plain_evaluate(model, data)
    step, total, eval_s = warmup, warmup + steps, []
    sync(device)
    t0 = time.perf_counter()
    while step < total:
        until = min(step + EVAL_EVERY - step % EVAL_EVERY, total)
        while step < until:
            train_step()
            step += 1
        sync(device)
        te = time.perf_counter()
        plain_evaluate(model, data)
        sync(device)
        eval_s.append(time.perf_counter() - te)
    sync(device)
    wall = time.perf_counter() - t0
    return Timing(config, threads, rnd, steps, wall - sum(eval_s), eval_s)


def matmul_gflops(device: torch.device, m_: int, k: int, n: int, min_s: float = 0.15) -> float:
    """fp32 GFLOP/s of (m x k) @ (k x n): the median of 5 timed chunks of repeated products."""
    a = torch.randn(m_, k, device=device)
    b = torch.randn(k, n, device=device)
    c = torch.empty(m_, n, device=device)
    for _ in range(3):
        torch.mm(a, b, out=c)
    sync(device)
    reps, t = 1, 0.0
    while t < min_s / 5:  # calibrate a chunk of about min_s / 5 seconds
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
    return statistics.median(rates)


MATMULS = {"2048x128@128x512": (2048, 128, 512), "1024^3": (1024, 1024, 1024)}


# --- where the time of one step goes -------------------------------------------------------
def phase_breakdown(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    data: Dataset,
    device: torch.device,
    sample: Callable[[], torch.Tensor],
    iters: int = 30,
) -> dict[str, float]:
    """Mean milliseconds of sampling, forward (with loss), backward (with zero_grad), optimizer."""
    model.train()
    acc = dict.fromkeys(("sample", "forward", "backward", "optimizer"), 0.0)
    for i in range(iters + 5):
        sync(device)
        t0 = time.perf_counter()
        idx = sample()
        xb, yb = data.train_x[idx], data.train_y[idx]
        sync(device)
        t1 = time.perf_counter()
        loss = F.cross_entropy(model(xb), yb)
        sync(device)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync(device)
        t3 = time.perf_counter()
        opt.step()
        sync(device)
        t4 = time.perf_counter()
        if i >= 5:
            for key, dt in zip(acc, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                acc[key] += dt
    return {key: 1e3 * v / iters for key, v in acc.items()}


def eval_breakdown(
    trainer: Trainer, plain: nn.Module, data: Dataset, device: torch.device, reps: int = 3
) -> dict[str, float]:
    """Milliseconds of one full evaluation, Trainer's and the plain one, and of a chunked variant
    of grok_tune's ``accuracy_and_loss`` (chunks of 512 rows: the batch size)."""

    @torch.inference_mode()
    def chunked(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        model.eval()
        logits = torch.cat([model(xc) for xc in x.split(512)])
        model.train()
        return float((logits.argmax(1) == y).float().mean()), float(F.cross_entropy(logits, y))

    splits = ((data.train_x, data.train_y), (data.val_x, data.val_y))

    def both_splits(fn: Callable[..., Any], model: nn.Module) -> Callable[[], list[Any]]:
        return lambda: [fn(model, x, y) for x, y in splits]

    cases: dict[str, Callable[[], Any]] = {
        "trainer._evaluate": lambda: trainer._evaluate(0.0),
        "grok accuracy_and_loss x2": both_splits(m.accuracy_and_loss, trainer.model),
        "grok chunked(512) x2": both_splits(chunked, trainer.model),
        "plain eval x2": lambda: plain_evaluate(plain, data),
    }
    out = {}
    for name, fn in cases.items():
        fn()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        out[name] = 1e3 * (time.perf_counter() - t0) / reps
    return out


def measure_breakdown(
    data: Dataset, model_cfg: ModelConfig, batch: int, device: torch.device
) -> dict[str, dict[str, float]]:
    """Per-phase milliseconds of a grok_tune step (Trainer's model and fused AdamW, randperm
    batches) and of a plain step, and of the evaluations."""
    trainer = Trainer(train_config(1), device)
    gen = torch.Generator().manual_seed(0)
    n_train = len(data.train_y)
    torch.manual_seed(0)
    plain_model = PlainTransformer(model_cfg).to(device)
    plain_opt = torch.optim.AdamW(
        plain_model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=1.0
    )

    def grok_sample() -> torch.Tensor:
        return torch.randperm(n_train, generator=gen)[:batch].to(device)

    def plain_sample() -> torch.Tensor:
        return torch.randint(n_train, (batch,), device=device)

    return {
        "grok": phase_breakdown(trainer.model, trainer.optimizer, data, device, grok_sample),
        "plain": phase_breakdown(plain_model, plain_opt, data, device, plain_sample),
        "eval": eval_breakdown(trainer, plain_model, data, device),
    }


# --- main ----------------------------------------------------------------------------------
def rounds_order(n_rounds: int, threads: list[int]) -> Iterator[tuple[int, int, list[str]]]:
    """(round, threads, configs): thread counts and configurations alternate, reversed every
    other round so that neither side always runs first."""
    for r in range(n_rounds):
        ths = threads if r % 2 == 0 else threads[::-1]
        for th in ths:
            yield r, th, list(CONFIGS if r % 2 == 0 else CONFIGS[::-1])


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="default: 1 2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per run")
    parser.add_argument("--steps", type=int, default=150, help="timed steps per run")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    threads = args.threads or ([1] if device.type == "cuda" else [1, 2])
    t_start = time.perf_counter()
    load_before = os.getloadavg()

    # the model both sides train, and checks that they are the same function
    probe = Trainer(train_config(1), device)
    data, model_cfg, batch = probe.data, probe.model.cfg, probe.batch_size
    plain = PlainTransformer(model_cfg).to(device)
    plain.load_state_dict(probe.model.state_dict())
    full = NoShortcutTransformer(model_cfg).to(device)
    full.load_state_dict(probe.model.state_dict())
    n_grok, n_plain = probe.model.num_params(), sum(p.numel() for p in plain.parameters())
    assert n_grok == n_plain, (n_grok, n_plain)
    with torch.no_grad():
        ref = probe.model.eval()(data.val_x[:256])
        diff_plain = float((plain.eval()(data.val_x[:256]) - ref).abs().max())
        diff_full = float((full.eval()(data.val_x[:256]) - ref).abs().max())
    assert diff_plain < 1e-4 and diff_full < 1e-4, (diff_plain, diff_full)
    flops = {c: step_flops(model_cfg, batch, c) for c in CONFIGS}
    print(
        f"device {device}, torch {torch.__version__}, {os.cpu_count()} CPUs, threads {threads}; "
        f"{n_grok:,} parameters on both sides; same logits on shared weights "
        f"(max |diff| plain {diff_plain:.1e}, shortcut off {diff_full:.1e}); batch {batch}, "
        f"train {len(data.train_y)}, val {len(data.val_y)}; {args.rounds} rounds x "
        f"({args.warmup} warm-up + {args.steps} timed steps), load avg {load_before[0]:.2f}",
        flush=True,
    )

    timings: list[Timing] = []
    mm: dict[tuple[int, str], list[float]] = {}
    for rnd, th, configs in rounds_order(args.rounds, threads):
        torch.set_num_threads(th)
        for name, shape in MATMULS.items():
            mm.setdefault((th, name), []).append(matmul_gflops(device, *shape))
        for config in configs:
            if config.startswith("grok"):
                t = time_trainer(config, device, args.warmup, args.steps, th, rnd)
            else:
                t = time_plain(config, data, model_cfg, device, args.warmup, args.steps, th, rnd)
            timings.append(t)
            print(
                f"  round {rnd} threads {th} {config:<11} {t.bare_rate:6.2f} steps/s bare, "
                f"{t.eval_rate:6.2f} with eval ({1e3 * t.mean_eval_s:.0f} ms/eval)",
                flush=True,
            )

    # where the time goes, per phase (grok: Trainer's model and optimizer; plain as above)
    breakdown: dict[int, dict[str, dict[str, float]]] = {}
    for th in threads:
        torch.set_num_threads(th)
        breakdown[th] = measure_breakdown(data, model_cfg, batch, device)

    # --- summary ------------------------------------------------------------------------
    def of(config: str, th: int) -> list[Timing]:
        return [t for t in timings if t.config == config and t.threads == th]

    def paired(num: str, den: str, th: int, rate: str) -> float:
        """Median over rounds of the within-round ratio num/den."""
        by_round = {t.round: getattr(t, rate) for t in of(den, th)}
        return median([getattr(t, rate) / by_round[t.round] for t in of(num, th)])

    summary: dict[str, Any] = {"threads": {}}
    lines = []
    hdr = (
        f"{'config':<12}{'thr':>4}{'steps/s':>9}{'+eval':>8}{'ms/step':>9}{'ms/eval':>9}"
        f"{'GFLOP/st':>10}{'GFLOP/s':>9}{'useful':>8}{'%peak':>7}  what"
    )
    for th in threads:
        peak = max(median(mm[(th, name)]) for name in MATMULS)
        per: dict[str, Any] = {
            "matmul_gflops": {name: median(mm[(th, name)]) for name in MATMULS},
            "configs": {},
        }
        for config in CONFIGS:
            ts = of(config, th)
            step_s = median([t.step_s for t in ts])
            gf = flops[config] / step_s / 1e9
            useful = flops["plain"] / step_s / 1e9
            row = {
                "bare_steps_per_s": median([t.bare_rate for t in ts]),
                "with_eval_steps_per_s": median([t.eval_rate for t in ts]),
                "ms_per_step": 1e3 * step_s,
                "ms_per_eval": 1e3 * median([t.mean_eval_s for t in ts]),
                "gflop_per_step": flops[config] / 1e9,
                "achieved_gflops": gf,
                "useful_gflops": useful,
                "percent_of_matmul": 100 * gf / peak,
            }
            per["configs"][config] = row
            lines.append(
                f"{config:<12}{th:>4}{row['bare_steps_per_s']:>9.2f}"
                f"{row['with_eval_steps_per_s']:>8.2f}{row['ms_per_step']:>9.1f}"
                f"{row['ms_per_eval']:>9.0f}{row['gflop_per_step']:>10.3f}{gf:>9.1f}"
                f"{useful:>8.1f}{row['percent_of_matmul']:>6.0f}%  {DESCRIPTIONS[config]}"
            )
        per["ratios"] = {
            "grok/plain bare": paired("grok", "plain", th, "bare_rate"),
            "grok/plain with eval": paired("grok", "plain", th, "eval_rate"),
            "fused AdamW: grok/grok_adamw": paired("grok", "grok_adamw", th, "bare_rate"),
            "last-only: grok/grok_full": paired("grok", "grok_full", th, "bare_rate"),
            "fused AdamW on plain: plain_fused/plain": paired(
                "plain_fused", "plain", th, "bare_rate"
            ),
            "rest (model code, loop): grok_full/plain_fused": paired(
                "grok_full", "plain_fused", th, "bare_rate"
            ),
            "FLOP ratio plain/grok (ideal last-only gain)": flops["plain"] / flops["grok"],
        }
        per["breakdown_ms"] = breakdown[th]
        summary["threads"][th] = per

    print("\n=== steps/s (median of rounds), matmul GFLOP/s and FLOP rates ===")
    print(hdr)
    print("\n".join(lines))
    print("\nmatmul fp32 GFLOP/s (same run, same threads):")
    for th in threads:
        mmd = summary["threads"][th]["matmul_gflops"]
        print(f"  threads {th}: " + ", ".join(f"{k} {v:.1f}" for k, v in mmd.items()))
    print("\n=== ratios (median over rounds of within-round ratios; >1 = first is faster) ===")
    ratio_names = list(summary["threads"][threads[0]]["ratios"])
    print(f"{'':<48}" + "".join(f"{'thr ' + str(th):>10}" for th in threads))
    for name in ratio_names:
        vals = "".join(f"{summary['threads'][th]['ratios'][name]:>10.3f}" for th in threads)
        print(f"{name:<48}{vals}")
    print("\n=== one step by phase, ms (mean of 30 steps; grok = Trainer's model + fused) ===")
    print(f"{'':<12}{'thr':>4}" + "".join(f"{k:>11}" for k in breakdown[threads[0]]["grok"]))
    for th in threads:
        for impl in ("grok", "plain"):
            ph = breakdown[th][impl]
            print(f"{impl:<12}{th:>4}" + "".join(f"{v:>11.2f}" for v in ph.values()))
    print("\nforward / backward GFLOP/s (matmul FLOPs / phase time):")
    for th in threads:
        parts = []
        for impl, config in (("grok", "grok"), ("plain", "plain")):
            ph = breakdown[th][impl]
            fwd = flops[config] / 3  # ms -> GFLOP/s: FLOPs / ms / 1e6
            f_rate, b_rate = fwd / ph["forward"] / 1e6, 2 * fwd / ph["backward"] / 1e6
            parts.append(f"{impl} fwd {f_rate:.1f}, bwd {b_rate:.1f}")
        print(f"  threads {th}: " + "; ".join(parts))
    print("\n=== one full-split evaluation, ms ===")
    for th in threads:
        ev = breakdown[th]["eval"]
        print(f"  threads {th}: " + ", ".join(f"{k} {v:.0f}" for k, v in ev.items()))

    elapsed = time.perf_counter() - t_start
    load_after = os.getloadavg()
    print(
        f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        f"(a load well above the thread count means other work shared the cores); "
        f"bench took {elapsed:.0f} s"
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
            "load_avg_before_after": [load_before[0], load_after[0]],
            "elapsed_s": elapsed,
            "summary": summary,
            "timings": [
                {**asdict(t), "bare_rate": t.bare_rate, "eval_rate": t.eval_rate} for t in timings
            ],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
