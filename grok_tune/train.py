"""One grokking run: task data + model + AdamW -> evaluations and events. Knows nothing of Ray.

``Trainer(cfg).run(on_eval)`` is the one training loop: the CLI below, Ray Tune's trainable and
the tests all drive it, each with its own ``on_eval`` callback. A step is::

    batch -> loss_fn(logits, targets) -> backward -> grad_hooks (gradient remedies) -> AdamW
          -> step_hooks (weight-norm control)

and every ``eval_every`` steps a full evaluation of both splits, read by the event rules of
grok_tune/events.py, which decide when the run ends.

``python -m grok_tune.train --op x/y --p 97 --frac 0.5 --steps 100000 --out DIR`` runs one trial
with a progress bar and writes DIR/curve.csv, DIR/outcome.json and DIR/checkpoint.pt.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
from grok_tune import remedies
from grok_tune.cli import Parser
from grok_tune.config import INFINITE_BATCH, TrainConfig
from grok_tune.events import RunEvents, StoppingRule, phase_outcome, run_phase_changes
from grok_tune.model import ModelConfig, build_model
from grok_tune.progress import nanda_phases
from grok_tune.tasks import IGNORE, Layout, Split, make_task

Record = dict[str, Any]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ParamsHook = Callable[[list[torch.nn.Parameter]], Any]


def model_config(cfg: TrainConfig, layout: Layout) -> ModelConfig:
    """The model for a run: the task's layout plus the run's model settings (same names)."""
    from_task = {
        "vocab_size": layout.vocab_size,
        # extra outputs that no target names (Nanda et al.'s unembedding scores '=' too)
        "num_classes": layout.num_classes + cfg.extra_classes,
        "n_positions": layout.n_positions,
        "n_predict": layout.n_predict,
        "shared_prefix": layout.shared_prefix,
        "operands": layout.operands,
        "operand_vocab": layout.operand_vocab,
    }
    knobs = {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(ModelConfig)
        if f.name not in from_task and f.name in TrainConfig.model_fields
    }
    return ModelConfig(**from_task, **knobs)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the predicted positions (B, P, classes) vs (B, P)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def save_atomically(state: dict[str, Any], path: str | os.PathLike) -> None:
    tmp = Path(f"{path}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a kill mid-write never leaves a torn checkpoint


class Trainer:
    """Holds the whole state of a run; ``state_dict``/``load_state_dict`` resume it bit-for-bit.

    Seams for what a run may add to the plain step (grok_tune/remedies.py): ``loss_fn``, the
    ``grad_hooks`` called with the parameters between ``backward()`` and the optimizer's step,
    the ``step_hooks`` called after it; a hook with state (``state_dict``/``load_state_dict``)
    is saved and restored with the run.
    """

    def __init__(self, cfg: TrainConfig, device: str | torch.device = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.task = make_task(cfg)
        self.layout = self.task.layout
        # finite data: the training set; infinite: a fixed probe of the stream to measure on
        self.train_data = self.task.training.to(self.device)
        self.val_data = self.task.validation.to(self.device)
        n_train = len(self.train_data)
        if self.task.infinite:
            self.batch_size = cfg.batch_size or INFINITE_BATCH
        else:
            self.batch_size = min(cfg.batch_size or min(512, n_train // 2), n_train) or 1
        torch.manual_seed(cfg.seed)  # initialisation and dropout; batches have their own stream
        self.model = build_model(model_config(cfg, self.layout)).to(self.device)
        self.params = list(self.model.parameters())
        groups = self.model.param_groups(cfg.weight_decay, cfg.decay_scope, cfg.embedding_lr)
        self.decayed_params = sum(
            p.numel() for g in groups if g.pop("decayed") for p in g["params"]
        )
        # adam: weight decay as an L2 term in the gradient (torch.optim.Adam), where AdamW
        # shrinks the weights apart from Adam's normalisation
        optimizer = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        self.optimizer = optimizer(
            groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, fused=True
        )
        self.batch_rng = torch.Generator().manual_seed(cfg.seed)
        self.stream_counter = 0  # infinite data: the stream's whole state
        self.step = 0
        self.history: list[Record] = []
        self.elapsed_s = 0.0
        self.events = RunEvents(
            StoppingRule(cfg.steps, cfg.stop_after_generalized, cfg.confusion_step, cfg.threshold),
            self.layout.position_names,
        )
        self.loss_fn: LossFn = cross_entropy
        self.grad_hooks: list[ParamsHook] = []
        self.step_hooks: list[ParamsHook] = []
        self._install_remedies()
        # each group's own lr (the embeddings' may differ): what warm-up scales
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]

    def _install_remedies(self) -> None:
        """The remedies the settings ask for, at the loop's seams (grok_tune/remedies.py)."""
        cfg = self.cfg
        if (cfg.loss, cfg.loss_dtype) != ("cross_entropy", "float32"):
            loss = remedies.loss_function(cfg.loss, cfg.loss_dtype, ignore_index=IGNORE)
            self.loss_fn = lambda logits, y: loss(logits.flatten(0, 1), y.flatten())
        # a filter first, then ⊥Grad on what the optimizer will see (Prieto et al. wrap the
        # whole optimizer step)
        if cfg.grad_filter == "ema":
            self.grad_hooks.append(remedies.GrokfastEMA(cfg.grokfast_alpha, cfg.grokfast_lamb))
        elif cfg.grad_filter == "ma":
            self.grad_hooks.append(remedies.GrokfastMA(cfg.grokfast_window, cfg.grokfast_lamb))
        if cfg.orthogonal_grad:
            self.grad_hooks.append(remedies.orthogonalize_grads_)
        if cfg.fixed_weight_norm:
            # Omnigrok holds the norm where initialisation put it (init_scale sets that)
            target = remedies.total_norm(self.params)
            self.step_hooks.append(lambda ps: remedies.fix_weight_norm_(ps, target))

    @property
    def status(self) -> str:
        return self.events.status

    # --- the loop -------------------------------------------------------------------------
    def _batch(self) -> Split:
        if self.task.infinite:
            batch, self.stream_counter = self.task.stream(self.stream_counter, self.batch_size)
            return batch.to(self.device)
        if self.batch_size == len(self.train_data):
            return self.train_data
        idx = torch.randperm(len(self.train_data), generator=self.batch_rng)[: self.batch_size]
        return self.train_data.rows(idx.to(self.device, non_blocking=True))

    def run(self, on_eval: Callable[[Record, Trainer], None] | None = None) -> Record:
        """Train until generalized-and-held, diverged, a stopping rule or the budget.

        ``on_eval`` gets every evaluation record (the last one has the final status). Returns it.
        """
        cfg, model, opt = self.cfg, self.model, self.optimizer
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
                    done = self.step + (not cfg.warmup_from_zero)
                    for group, lr in zip(opt.param_groups, self.base_lrs, strict=True):
                        group["lr"] = lr * done / cfg.warmup_steps
                elif self.step == cfg.warmup_steps:
                    for group, lr in zip(opt.param_groups, self.base_lrs, strict=True):
                        group["lr"] = lr
                batch = self._batch()
                loss = self.loss_fn(model(batch.x), batch.y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for hook in self.grad_hooks:
                    hook(self.params)
                opt.step()
                for hook in self.step_hooks:
                    hook(self.params)
                self.step += 1
            record = self._evaluate(time.perf_counter() - t0)
            if on_eval:
                on_eval(record, self)
        return record

    def _evaluate(self, train_seconds: float) -> Record:
        t0 = time.perf_counter()
        record: Record = {m.STEP: self.step}
        record |= m.evaluate(self.model, self.train_data, self.layout, "train", collapse=True)
        record |= m.evaluate(self.model, self.val_data, self.layout, "val")
        record[m.WEIGHT_NORM] = m.weight_norm(self.model)
        record |= self.task.measures(self.model)
        record[m.LR] = self.optimizer.param_groups[0]["lr"]
        self.elapsed_s += train_seconds + time.perf_counter() - t0
        record[m.ELAPSED_S] = self.elapsed_s
        self.events.update(record)
        record |= self.events.outcome()
        self.history.append(record)
        return record

    def phases(self) -> Record:
        """The run's largest phase changes of the training and validation loss so far, and
        where Nanda's three phases ended (grok_tune/progress.py)."""
        curve = (
            {k: [r.get(k) for r in self.history] for k in self.history[0]} if self.history else {}
        )
        found = run_phase_changes(curve, self.layout.position_names)
        return phase_outcome(found) | nanda_phases(curve)

    # --- checkpoints ----------------------------------------------------------------------
    def _stateful_hooks(self) -> list[Any]:
        return [h for h in (*self.grad_hooks, *self.step_hooks) if hasattr(h, "state_dict")]

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.model_dump(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "hooks": [h.state_dict() for h in self._stateful_hooks()],
            "batch_rng": self.batch_rng.get_state(),
            "stream_counter": self.stream_counter,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "step": self.step,
            "history": self.history,
            "events": self.events.state_dict(),
            "elapsed_s": self.elapsed_s,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.cfg.model_dump()
        if state["config"] != mine:
            theirs = state["config"]
            differ = [f"{k} {theirs.get(k)!r} there, {v!r} here" for k, v in mine.items()
                      if theirs.get(k) != v]  # fmt: skip
            raise ValueError(
                "checkpoint was written by a run with a different configuration: "
                + ", ".join(differ)
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for hook, hook_state in zip(self._stateful_hooks(), state["hooks"], strict=True):
            hook.load_state_dict(hook_state)
        self.batch_rng.set_state(state["batch_rng"])
        self.stream_counter = state["stream_counter"]
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = state["step"]
        self.history = state["history"]
        self.events.load_state_dict(state["events"])
        self.elapsed_s = state["elapsed_s"]

    def save(self, path: str | os.PathLike) -> None:
        save_atomically(self.state_dict(), path)

    def load(self, path: str | os.PathLike) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))

    def summary(self) -> Record:
        """Facts of the run that are not curves: recorded with its outcome."""
        return {
            "effective_batch_size": self.batch_size,
            "num_params": self.model.num_params(),
            "decayed_params": self.decayed_params,
            "train_examples": None if self.task.infinite else len(self.train_data),
            "val_examples": len(self.val_data),
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
OUTCOME_FILE = "outcome.json"


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

    from grok_tune.study_files import folder_problem

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
    elif args.resume and (out / OUTCOME_FILE).exists():  # a finished run is never overwritten
        parser.fail(
            f"--resume: {out} holds a finished run ({OUTCOME_FILE}) but no {CHECKPOINT_FILE} to "
            "continue from: nothing to resume (train again into another --out)"
        )
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
    outcome = {**cfg.used(), **trainer.summary(), **final, **trainer.phases()}
    (out / OUTCOME_FILE).write_text(json.dumps(outcome, indent=2) + "\n")
    print(
        f"{final[m.STATUS]}: memorized at step {final[m.STEPS_TO_MEMORIZE]}, generalized at step "
        f"{final[m.STEPS_TO_GENERALIZE]} (None = not within {trainer.step} steps); "
        f"{trainer.step / max(final[m.ELAPSED_S], 1e-9):.1f} steps/s; results in {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
