"""StableMax and cross-entropy in a chosen dtype (Prieto et al. 2025, "Grokking at the Edge of
Numerical Stability", github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability):
the training loss."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from grok_tune.config import TrainConfig

LossName = Literal["cross_entropy", "stablemax"]
LOSS_NAMES: tuple[LossName, ...] = ("cross_entropy", "stablemax")
LOSS_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
# The dtype each loss was run in when none is named: the papers' defaults
DEFAULT_LOSS_DTYPE: dict[str, str] = {"cross_entropy": "float32", "stablemax": "float64"}

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _s(x: torch.Tensor) -> torch.Tensor:
    """``x + 1`` for x ≥ 0, ``1 / (1 − x)`` for x < 0.

    Each branch sees only its own half of the line (the clamps), so the branch ``where`` does
    not take never produces inf and its zero gradient never meets an infinite derivative (NaN).
    The repository's ``1 / (1 − x + 1e-30)``: the 1e-30 vanishes against 1 − x ≥ 1, left out.
    """
    return torch.where(x < 0, 1.0 / (1.0 - x.clamp(max=0.0)), x.clamp(min=0.0) + 1.0)


def stablemax_probabilities(
    logits: torch.Tensor, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """``s(x_i) / Σ_j s(x_j)`` over the last axis, in ``dtype``. s increases with x, so the argmax
    (hence accuracy) is that of the logits; no max is subtracted, as s is not shift-invariant."""
    s = _s(logits.to(dtype))
    return s / s.sum(dim=-1, keepdim=True)


def _flat(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)


def stablemax_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = -100,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Mean over the non-ignored targets of ``−log(s(x_t) / Σ_j s(x_j))``, computed in ``dtype``
    (float64, as the paper's runs), returned in the logits' dtype.

    Logits (N, C) (or (..., C)), targets (N,) (or (...)). The backward runs in ``dtype`` down to
    the cast of the logits, so their gradient is the float64 gradient rounded once to float32.
    All targets ignored gives NaN, as ``F.cross_entropy``. ``log s − log Σ s`` rather than the
    repository's ``log(s / Σ s)``: the same value, without underflow of the ratio.
    """
    x, t = _flat(logits, targets)
    s = _s(x.to(dtype))
    log_p = torch.log(s) - torch.log(s.sum(dim=-1, keepdim=True))
    keep = t != ignore_index
    picked = log_p.gather(1, torch.where(keep, t, 0).unsqueeze(1)).squeeze(1)
    loss = -torch.where(keep, picked, 0.0).sum() / keep.sum()
    return loss.to(logits.dtype)


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Ordinary (softmax) cross-entropy computed in ``dtype``, returned in the logits' dtype.

    Prieto et al.: float64 alone postpones Softmax Collapse enough for some runs to generalize
    without weight decay. As for StableMax, the gradient is computed in ``dtype`` and rounded once.
    """
    x, t = _flat(logits, targets)
    return F.cross_entropy(x.to(dtype), t, ignore_index=ignore_index).to(logits.dtype)


def loss_function(
    name: LossName = "cross_entropy", dtype: str | None = None, ignore_index: int = -100
) -> LossFn:
    """The loss the loop calls as ``loss_fn(logits, targets)``: a scalar in the logits' dtype.

    ``name``: "cross_entropy" | "stablemax"; ``dtype``: "float32" | "float64", where the loss
    and its gradient are computed; None is the paper's (cross-entropy float32, StableMax float64).
    """
    if name not in LOSS_NAMES:
        raise ValueError(f"loss {name!r} is not one of {', '.join(LOSS_NAMES)}")
    dtype = DEFAULT_LOSS_DTYPE[name] if dtype is None else dtype
    if dtype not in LOSS_DTYPES:
        raise ValueError(f"loss dtype {dtype!r} is not one of {', '.join(LOSS_DTYPES)}")
    fn = stablemax_cross_entropy if name == "stablemax" else cross_entropy
    return functools.partial(fn, dtype=LOSS_DTYPES[dtype], ignore_index=ignore_index)


def member_loss(cfg: TrainConfig, params: Sequence[torch.Tensor] = ()) -> LossFn:
    """The run's training loss on (B, P, classes) logits against (B, P) targets."""
    from grok_tune.tasks import IGNORE

    loss = loss_function(cfg.loss, cfg.loss_dtype, ignore_index=IGNORE)
    return lambda logits, y: loss(logits.flatten(0, 1), y.flatten())
