"""One grokking run: data + model + AdamW -> evaluations and events. Knows nothing of Ray.

``Trainer(cfg).run(on_eval)`` is the one training loop: the CLI below, Ray Tune's trainable and
the tests all drive it, each with its own ``on_eval`` callback.

``python -m grok_tune.train --op x/y --p 97 --frac 0.5 --steps 100000 --out DIR`` runs one trial
with a progress bar and writes DIR/curve.csv, DIR/outcome.json and DIR/checkpoint.pt.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError

from grok_tune import metrics as m
from grok_tune.cli import Parser
from grok_tune.config import TrainConfig
from grok_tune.data import is_s5, make_dataset
from grok_tune.model import ModelConfig, Transformer

Record = dict[str, Any]


class Trainer:
    """Holds the whole state of a run; ``state_dict``/``load_state_dict`` resume it bit-for-bit."""

    def __init__(self, cfg: TrainConfig, device: str | torch.device = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.data = make_dataset(cfg.op, cfg.p, cfg.frac, cfg.seed).to(self.device)
        n_train = len(self.data.train_y)
        self.batch_size = min(cfg.batch_size or min(512, n_train // 2), n_train) or 1
        torch.manual_seed(cfg.seed)  # initialisation and dropout; batches have their own stream
        self.model = Transformer(
            ModelConfig(
                vocab_size=self.data.vocab_size,
                num_classes=self.data.num_classes,
                n_layers=cfg.n_layers,
                d_model=cfg.d_model,
                n_heads=cfg.n_heads,
                d_mlp=cfg.d_mlp,
                dropout=cfg.dropout,
                layer_norm=cfg.layer_norm,
                init_scale=cfg.init_scale,
            )
        ).to(self.device)
        groups = self.model.param_groups(cfg.weight_decay, cfg.decay_scope)
        self.decayed_params = sum(p.numel() for p in groups[0]["params"])
        self.optimizer = torch.optim.AdamW(
            groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True
        )
        self.batch_rng = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.history: list[Record] = []
        self.steps_to_memorize: int | None = None
        self.steps_to_generalize: int | None = None
        self.best_val_acc = 0.0
        self.held = 0  # consecutive evaluations at or above the threshold on validation
        self.status = m.Status.RUNNING
        self.elapsed_s = 0.0

    # --- the loop -------------------------------------------------------------------------
    def run(self, on_eval: Callable[[Record, Trainer], None] | None = None) -> Record:
        """Train until generalized-and-held, diverged, a stopping rule or the budget.

        ``on_eval`` gets every evaluation record (the last one has the final status). Returns it.
        """
        cfg, model, opt, data = self.cfg, self.model, self.optimizer, self.data
        n_train = len(data.train_y)
        full_batch = self.batch_size == n_train
        model.train()
        if self.step == 0 and not self.history:
            record = self._evaluate(0.0)
            if on_eval:
                on_eval(record, self)
            if self.status != m.Status.RUNNING:
                return record
        record = self.history[-1]
        while self.status == m.Status.RUNNING:
            t0 = time.perf_counter()
            until = min(self.step + cfg.eval_every - self.step % cfg.eval_every, cfg.steps)
            while self.step < until:
                if self.step < cfg.warmup_steps:
                    for group in opt.param_groups:
                        group["lr"] = cfg.lr * (self.step + 1) / cfg.warmup_steps
                elif self.step == cfg.warmup_steps:
                    for group in opt.param_groups:
                        group["lr"] = cfg.lr
                if full_batch:
                    xb, yb = data.train_x, data.train_y
                else:
                    idx = torch.randperm(n_train, generator=self.batch_rng)[: self.batch_size]
                    idx = idx.to(self.device, non_blocking=True)
                    xb, yb = data.train_x[idx], data.train_y[idx]
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                self.step += 1
            record = self._evaluate(time.perf_counter() - t0)
            if on_eval:
                on_eval(record, self)
        return record

    def _evaluate(self, train_seconds: float) -> Record:
        cfg, data = self.cfg, self.data
        t0 = time.perf_counter()
        train_acc, train_loss = m.accuracy_and_loss(self.model, data.train_x, data.train_y)
        val_acc, val_loss = m.accuracy_and_loss(self.model, data.val_x, data.val_y)
        norm = m.weight_norm(self.model)
        sparsity = (
            None
            if is_s5(cfg.op)
            else m.fourier_sparsity(self.model.tok_emb.weight[: data.num_classes])
        )
        self.elapsed_s += train_seconds + time.perf_counter() - t0

        thr = m.ACCURACY_THRESHOLD
        if not all(map(math.isfinite, (train_loss, val_loss, norm))):
            self.status = m.Status.DIVERGED
        else:
            self.best_val_acc = max(self.best_val_acc, val_acc)
            if self.steps_to_memorize is None and train_acc >= thr:
                self.steps_to_memorize = self.step
            if self.steps_to_generalize is None and val_acc >= thr:
                self.steps_to_generalize = self.step
            self.held = self.held + 1 if val_acc >= thr else 0
            held_enough = cfg.stop_after_generalized and self.held >= cfg.stop_after_generalized
            confused = (
                cfg.confusion_step is not None
                and self.step >= cfg.confusion_step
                and self.steps_to_memorize is None
            )
            if held_enough or self.step >= cfg.steps or confused:
                generalized = self.steps_to_generalize is not None
                self.status = m.Status.GENERALIZED if generalized else m.Status.CENSORED

        record: Record = {
            m.STEP: self.step,
            m.TRAIN_ACC: train_acc,
            m.TRAIN_LOSS: train_loss,
            m.VAL_ACC: val_acc,
            m.VAL_LOSS: val_loss,
            m.WEIGHT_NORM: norm,
            m.FOURIER_SPARSITY: sparsity,
            m.LR: self.optimizer.param_groups[0]["lr"],
            m.ELAPSED_S: self.elapsed_s,
            m.STEPS_TO_MEMORIZE: self.steps_to_memorize,
            m.STEPS_TO_GENERALIZE: self.steps_to_generalize,
            m.STATUS: str(self.status),
            m.OBJECTIVE: m.objective(
                self.status, self.steps_to_generalize, self.best_val_acc, cfg.steps
            ),
            m.DONE: self.status != m.Status.RUNNING,
        }
        self.history.append(record)
        return record

    # --- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.model_dump(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "batch_rng": self.batch_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "step": self.step,
            "history": self.history,
            "steps_to_memorize": self.steps_to_memorize,
            "steps_to_generalize": self.steps_to_generalize,
            "best_val_acc": self.best_val_acc,
            "held": self.held,
            "status": str(self.status),
            "elapsed_s": self.elapsed_s,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.cfg.model_dump()
        if state["config"] != mine:
            differ = [k for k in mine if state["config"].get(k) != mine[k]]
            raise ValueError(
                "checkpoint was written by a run with a different configuration: "
                + ", ".join(
                    f"{k} {state['config'].get(k)!r} there, {mine[k]!r} here" for k in differ
                )
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.batch_rng.set_state(state["batch_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = state["step"]
        self.history = state["history"]
        self.steps_to_memorize = state["steps_to_memorize"]
        self.steps_to_generalize = state["steps_to_generalize"]
        self.best_val_acc = state["best_val_acc"]
        self.held = state["held"]
        self.status = m.Status(state["status"])
        self.elapsed_s = state["elapsed_s"]

    def save(self, path: str | os.PathLike) -> None:
        tmp = Path(f"{path}.tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)  # a kill mid-write never leaves a torn checkpoint

    def load(self, path: str | os.PathLike) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))

    def summary(self) -> Record:
        """Facts of the run that are not curves: recorded with its outcome."""
        return {
            "effective_batch_size": self.batch_size,
            "num_params": self.model.num_params(),
            "decayed_params": self.decayed_params,
            "train_size": len(self.data.train_y),
            "val_size": len(self.data.val_y),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
        }


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# --- CLI ----------------------------------------------------------------------------------
def _cli_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m grok_tune.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, field in TrainConfig.model_fields.items():
        # strings on the command line; TrainConfig converts and validates them all at once
        parser.add_argument(
            _cli_flag(name),
            dest=name,
            default=None,
            metavar="V",
            help=f"{field.description or ''} (default {field.default})".strip(),
        )
    parser.add_argument("--out", type=Path, required=True, help="output directory (new or empty)")
    parser.add_argument("--device", default=default_device(), help="cpu or cuda[:N]")
    parser.add_argument("--threads", type=_positive_int, default=available_cpus())
    parser.add_argument(
        "--resume",
        action="store_true",
        help=f"continue the run in OUT from OUT/{CHECKPOINT_FILE}, with OUT/{CONFIG_FILE}'s "
        "settings (settings given again must match)",
    )
    parser.add_argument("--checkpoint-every", type=_positive_int, default=1000, metavar="STEPS")
    return parser


def parse_config(
    parser: Parser, args: argparse.Namespace, base: dict[str, Any] | None = None
) -> TrainConfig:
    given = {k: v for k, v in vars(args).items() if k in TrainConfig.model_fields and v is not None}
    for key in ("batch_size", "stop_after_generalized", "confusion_step"):
        if isinstance(given.get(key), str) and given[key].lower() in ("none", "null"):
            given[key] = None
    try:
        return TrainConfig(**{**(base or {}), **given})
    except ValidationError as err:
        problems = []
        for e in err.errors(include_url=False):
            where = _cli_flag(str(e["loc"][0])) if e["loc"] else "settings"
            problems.append(f"{where}: {str(e['msg']).removeprefix('Value error, ')}")
        parser.fail("; ".join(problems))


def check_device(device: str) -> str | None:
    """Why ``device`` cannot run a trial here, or None."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        return f"--device {device}: not a device name (cpu, cuda, cuda:N)"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return f"--device {device}: torch sees no CUDA device here; use --device cpu"
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"--device {device}: there are {torch.cuda.device_count()} CUDA devices"
    elif dev.type != "cpu":
        return f"--device {device}: grok_tune runs on cpu or cuda"
    return None


def _stored_config(parser: Parser, out: Path) -> dict[str, Any]:
    path = out / CONFIG_FILE
    if not path.is_file():
        parser.fail(f"--resume: no run to resume in {out} (no {CONFIG_FILE})")
    try:
        stored = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        parser.fail(f"--resume: {path} cannot be read: {err}")
    if not isinstance(stored, dict):
        parser.fail(f"--resume: {path} is not a run's settings")
    return stored


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from grok_tune.layout import folder_problem

    parser = build_parser()
    args = parser.parse_args(argv)
    out: Path = args.out
    problem = folder_problem(out)
    if problem:
        parser.fail(f"--out {out}: {problem}")
    if not args.resume and out.is_dir() and any(out.iterdir()):
        parser.fail(f"--out {out}: not empty: --resume the run there, or choose another folder")
    cfg = parse_config(parser, args, _stored_config(parser, out) if args.resume else None)
    problem = check_device(args.device)
    if problem:
        parser.fail(problem)
    torch.set_num_threads(args.threads)
    trainer = Trainer(cfg, args.device)
    ckpt = out / CHECKPOINT_FILE
    if args.resume and ckpt.exists():
        try:
            trainer.load(ckpt)
        except ValueError as err:  # another run's checkpoint: say which settings differ
            parser.fail(f"--resume: {ckpt}: {err}")
        except Exception:
            parser.fail(f"--resume: {ckpt} is not a grok_tune checkpoint (it cannot be read)")
    elif args.resume:
        print(f"no {CHECKPOINT_FILE} in {out} yet: starting the run from step 0")
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused command leaves nothing behind
    (out / CONFIG_FILE).write_text(json.dumps(cfg.model_dump(), indent=2) + "\n")

    bar = tqdm(total=cfg.steps, initial=trainer.step, unit="step", dynamic_ncols=True)

    def on_eval(record: Record, t: Trainer) -> None:
        bar.update(record[m.STEP] - bar.n)
        bar.set_postfix(train=f"{record[m.TRAIN_ACC]:.3f}", val=f"{record[m.VAL_ACC]:.3f}")
        if record[m.DONE] or record[m.STEP] % args.checkpoint_every == 0:
            t.save(ckpt)

    final = trainer.run(on_eval)
    bar.close()
    import pandas as pd

    pd.DataFrame(trainer.history).to_csv(out / "curve.csv", index=False)
    outcome = {**cfg.model_dump(), **trainer.summary(), **final}
    (out / "outcome.json").write_text(json.dumps(outcome, indent=2) + "\n")
    print(
        f"{final[m.STATUS]}: memorized at step {final[m.STEPS_TO_MEMORIZE]}, generalized at step "
        f"{final[m.STEPS_TO_GENERALIZE]} (None = not within {trainer.step} steps); "
        f"{trainer.step / max(final[m.ELAPSED_S], 1e-9):.1f} steps/s; results in {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
