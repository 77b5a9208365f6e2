"""One member of a population (one run): its model built from its settings and the task's
layout, its optimizer, its loss and its remedies at the loop's seams, its warm-up.

A ``Member`` is the run as PyTorch writes it: an ``nn.Module``, a fused AdamW (or Adam with L2
decay) over the model's parameter groups, and the seams a remedy attaches to
(grok_tune/remedies/)::

    batch -> loss_fn(logits, targets) -> backward -> grad_hooks (gradient remedies) -> optimizer
          -> step_hooks (weight-norm control)

``Population`` (grok_tune/population.py) steps its members one after another on the per-member
path; the stacked path (grok_tune/stacked.py) starts from their initial models.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from grok_tune.config import TrainConfig
from grok_tune.model import Model, ModelConfig, build_model
from grok_tune.remedies import REMEDIES
from grok_tune.tasks import IGNORE, Layout, Split

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


def initial_model(cfg: TrainConfig, layout: Layout) -> tuple[Model, torch.Tensor]:
    """The run's model as initialised under its seed, and the CPU generator's state after it:
    where the run's dropout masks continue (the caller's generator is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(model_config(cfg, layout))
        return model, torch.get_rng_state()


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the predicted positions (B, P, classes) vs (B, P)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def loss_function(cfg: TrainConfig) -> LossFn:
    """The run's training loss on (B, P, classes) logits: cross-entropy, or a remedy's."""
    for remedy in REMEDIES:
        if remedy.seam == "loss" and remedy.on(cfg):
            return remedy.attach("member")(cfg)
    return cross_entropy


def lr_at(cfg: TrainConfig, step: int, lr: float | None = None) -> float:
    """The lr of step ``step`` (from 0) for a group whose base lr is ``lr`` (the run's): a
    linear warm-up over ``warmup_steps``, from lr/warmup_steps (or from 0: Nanda et al.'s)."""
    lr = cfg.lr if lr is None else lr
    if step >= cfg.warmup_steps:
        return lr
    done = step + (not cfg.warmup_from_zero)
    return lr * done / cfg.warmup_steps


def save_atomically(state: dict[str, Any], path: str | os.PathLike) -> None:
    tmp = Path(f"{path}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a kill mid-write never leaves a torn checkpoint


class Member:
    """One run's model, optimizer, loss and hooks; a hook with state (``state_dict``/
    ``load_state_dict``) is saved and restored with the run."""

    def __init__(
        self,
        cfg: TrainConfig,
        layout: Layout,
        device: torch.device,
        model: Model | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = device
        built, self.rng = initial_model(cfg, layout)
        self.cuda_rng = _seeded_cuda_state(cfg.seed, device)
        self.model = (built if model is None else model).to(device)
        self.model.train()
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
        # each group's own lr (the embeddings' may differ): what warm-up scales
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.loss_fn: LossFn = loss_function(cfg)
        # the remedies at their seams, in the registry's order (grok_tune/remedies/)
        self.grad_hooks: list[ParamsHook] = []
        self.step_hooks: list[ParamsHook] = []
        for remedy in REMEDIES:
            if remedy.seam != "loss" and remedy.on(cfg):
                hooks = self.grad_hooks if remedy.seam == "grad" else self.step_hooks
                hooks.append(remedy.attach("member")(cfg, self.params))

    def train_step(self, step: int, batch: Split) -> None:
        """Step ``step`` (from 0) on ``batch``."""
        cfg, opt = self.cfg, self.optimizer
        if step <= cfg.warmup_steps:  # the warm-up, and its end
            for group, lr in zip(opt.param_groups, self.base_lrs, strict=True):
                group["lr"] = lr_at(cfg, step, lr)
        # dropout draws from torch's generator: the member's own stream, whoever runs beside it
        drawing = cfg.dropout > 0 and self.model.training
        if drawing:
            outer = self._swap_rng(self.rng, self.cuda_rng)
        loss = self.loss_fn(self.model(batch.x), batch.y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if drawing:
            self.rng, self.cuda_rng = self._swap_rng(*outer)
        for hook in self.grad_hooks:
            hook(self.params)
        opt.step()
        for hook in self.step_hooks:
            hook(self.params)

    def _swap_rng(
        self, cpu: torch.Tensor, cuda: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Install generator states (the CPU's, the run's CUDA device's); return the previous."""
        before = torch.get_rng_state(), None
        torch.set_rng_state(cpu)
        if cuda is not None:
            before = before[0], torch.cuda.get_rng_state(self.device)
            torch.cuda.set_rng_state(cuda, self.device)
        return before

    @property
    def lr(self) -> float:
        """The lr of the last step (of the model's main group): what a record shows."""
        return self.optimizer.param_groups[0]["lr"]

    def _stateful_hooks(self) -> list[Any]:
        return [h for h in (*self.grad_hooks, *self.step_hooks) if hasattr(h, "state_dict")]

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights (the population saves those for every path); copies: the
        run trains on after a checkpoint is taken."""
        return {
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "hooks": [copy.deepcopy(h.state_dict()) for h in self._stateful_hooks()],
            "rng": self.rng.clone(),
            "cuda_rng": None if self.cuda_rng is None else self.cuda_rng.clone(),
        }

    def load_state_dict(self, state: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        for hook, hook_state in zip(self._stateful_hooks(), state["hooks"], strict=True):
            hook.load_state_dict(hook_state)
        self.rng = state["rng"].cpu()
        if state["cuda_rng"] is not None and self.cuda_rng is not None:
            self.cuda_rng = state["cuda_rng"].cpu()


def _seeded_cuda_state(seed: int, device: torch.device) -> torch.Tensor | None:
    """The state of ``device``'s generator seeded with ``seed`` (dropout on a GPU draws there),
    the generator itself left as it was; None on CPU."""
    if device.type != "cuda":
        return None
    before = torch.cuda.get_rng_state(device)
    with torch.cuda.device(device):
        torch.cuda.manual_seed(seed)
        state = torch.cuda.get_rng_state(device)
    torch.cuda.set_rng_state(before, device)
    return state
