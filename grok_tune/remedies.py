"""The field's grokking remedies: small functions of tensors, called at the training loop's seams.

- **Grokfast** (Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying Slow Gradients",
  github.com/ironjr/grokfast): :class:`GrokfastEMA`, :class:`GrokfastMA`. Between
  ``loss.backward()`` and ``optimizer.step()``.
- **StableMax** and float64 cross-entropy (Prieto et al. 2025, "Grokking at the Edge of Numerical
  Stability", github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability):
  :func:`stablemax_cross_entropy`, :func:`cross_entropy`, :func:`loss_function`. The loss.
- **⊥Grad** (same paper and repository): :func:`orthogonalize_grads_`. Between ``backward`` and
  ``step``, after any gradient filter.
- **Weight-norm control** (Liu et al. 2023, "Omnigrok: Grokking Beyond Algorithmic Data",
  github.com/KindXiaoming/Omnigrok): :func:`fix_weight_norm_`, :func:`total_norm`. After
  ``optimizer.step()``.
- **Softmax Collapse and the logit gap** (Prieto et al.): :func:`softmax_collapse`,
  :func:`logit_gap`. On the training split's logits at every evaluation.

Nothing here knows the Trainer. Grokfast's filters are elementwise, so they act on each member
of "stacked" parameters (a leading axis of K models) independently as they are; the per-tensor
remedies take ``member_dim`` to reduce per member instead of over the whole tensor.

Where the papers' code differs from their text, this follows the code and says so at the spot:
the first EMA step (``GrokfastEMA``), ⊥Grad's norm guard and dtype, and Omnigrok's target norm.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F

LossName = Literal["cross_entropy", "stablemax"]
LOSS_NAMES: tuple[LossName, ...] = ("cross_entropy", "stablemax")
LOSS_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
# The dtype each loss was run in when none is named: the papers' defaults
DEFAULT_LOSS_DTYPE: dict[str, str] = {"cross_entropy": "float32", "stablemax": "float64"}
ORTHO_EPS = 1e-30  # Prieto et al.'s ε, both in w·w and under ‖g⊥‖

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --- Grokfast ----------------------------------------------------------------------------------
class _GradFilter:
    """State held per parameter by position: pass the same parameters in the same order every
    call (``model.parameters()``). A parameter whose ``grad`` is None is skipped: its state is
    neither created nor advanced that step."""

    def __init__(self) -> None:
        self._n: int | None = None  # how many parameters the state is for

    def _params(self, params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
        params = list(params)
        if self._n is None:
            self._n = len(params)
            self._init_state(self._n)
        elif len(params) != self._n:
            raise ValueError(
                f"{type(self).__name__} holds state for {self._n} parameters, "
                f"got {len(params)}: pass the same parameters every call"
            )
        return params

    def _init_state(self, n: int) -> None:
        raise NotImplementedError

    def __call__(self, params: Iterable[torch.Tensor]) -> None:
        self.apply(params)

    def apply(self, params: Iterable[torch.Tensor]) -> None:
        raise NotImplementedError

    def _check(self, state: dict[str, Any], **expected: float) -> None:
        for key, value in expected.items():
            if state[key] != value:
                raise ValueError(
                    f"{type(self).__name__}: checkpoint has {key} = {state[key]}, "
                    f"this filter {value}"
                )


def _on(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # a checkpoint loads onto the CPU; the state follows the gradients on first use
    return t if t.device == like.device else t.to(like.device)


class GrokfastEMA(_GradFilter):
    """Grokfast-EMA: ``μ ← α·μ + (1−α)·g;  g ← g + λ·μ``, in place on each ``p.grad``.

    μ starts at the first gradient seen and that first step already applies the update, so μ
    after step 1 is ``α·g + (1−α)·g`` (= g up to rounding), as ironjr/grokfast's
    ``gradfilter_ema`` does; no bias correction. Memory: one copy of the gradients.
    """

    def __init__(self, alpha: float = 0.98, lamb: float = 2.0) -> None:
        super().__init__()
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        self.alpha, self.lamb = float(alpha), float(lamb)
        self._mu: list[torch.Tensor | None] = []

    def _init_state(self, n: int) -> None:
        self._mu = [None] * n

    @torch.no_grad()
    def apply(self, params: Iterable[torch.Tensor]) -> None:
        mus, grads = [], []
        for i, p in enumerate(self._params(params)):
            g = p.grad
            if g is None:
                continue
            mu = self._mu[i]
            if mu is None:
                mu = g.detach().clone()
            elif mu.shape != g.shape:
                raise ValueError(f"parameter {i}: state {tuple(mu.shape)}, grad {tuple(g.shape)}")
            self._mu[i] = mu = _on(mu, g)
            mus.append(mu)
            grads.append(g)
        if grads:  # one kernel per op for all tensors: the filter runs every step
            torch._foreach_mul_(mus, self.alpha)
            torch._foreach_add_(mus, grads, alpha=1.0 - self.alpha)
            torch._foreach_add_(grads, mus, alpha=self.lamb)

    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters and μ (references, as ``torch.optim`` does: save before stepping on)."""
        return {"alpha": self.alpha, "lamb": self.lamb, "n": self._n, "mu": list(self._mu)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check(state, alpha=self.alpha, lamb=self.lamb)
        self._n = state["n"]
        self._mu = [None if t is None else t.clone() for t in state["mu"]]


class GrokfastMA(_GradFilter):
    """Grokfast-MA: ``g ← g + λ·mean(last w gradients)``, in place on each ``p.grad``; nothing is
    added until w gradients have been seen (ironjr/grokfast's ``gradfilter_ma``, warm-up on).

    Memory: w copies of the gradients (a ring buffer of shape ``(w, *p.shape)`` per parameter)
    plus a running sum, so a step costs O(1) in w instead of the original's O(w) ``sum(deque)``.

    Float behaviour: the running sum takes the newest gradient in and the oldest out, so between
    refreshes it carries the rounding of those adds (relative error about w·ε of the window's
    largest entries, ε the dtype's epsilon); every w gradients, once the ring holds oldest to
    newest in order, it is recomputed from the buffer, so the drift never outlives a window. The
    sum is part of the state, so a restored filter continues bit-for-bit.
    """

    def __init__(self, window: int = 100, lamb: float = 5.0) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window, self.lamb = int(window), float(lamb)
        self._count: list[int] = []
        self._buffer: list[torch.Tensor | None] = []
        self._sum: list[torch.Tensor | None] = []

    def _init_state(self, n: int) -> None:
        self._count, self._buffer, self._sum = [0] * n, [None] * n, [None] * n

    @torch.no_grad()
    def apply(self, params: Iterable[torch.Tensor]) -> None:
        w = self.window
        for i, p in enumerate(self._params(params)):
            g = p.grad
            if g is None:
                continue
            buf, total = self._buffer[i], self._sum[i]
            if buf is None or total is None:
                buf, total = g.new_zeros((w, *g.shape)), torch.zeros_like(g)
            elif buf.shape[1:] != g.shape:
                raise ValueError(
                    f"parameter {i}: state {tuple(buf.shape[1:])}, grad {tuple(g.shape)}"
                )
            buf, total = _on(buf, g), _on(total, g)
            self._buffer[i], self._sum[i] = buf, total
            count, slot = self._count[i], self._count[i] % w
            if count >= w:
                total.sub_(buf[slot])  # the oldest gradient leaves the window
            buf[slot].copy_(g)
            total.add_(g)
            count += 1
            self._count[i] = count
            if slot == w - 1:  # slots 0..w-1 now hold oldest..newest: drop the accumulated drift
                torch.sum(buf, dim=0, out=total)
            if count >= w:
                g.add_(total, alpha=self.lamb / w)

    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters, counts, ring buffers and running sums (references: save first)."""
        return {
            "window": self.window,
            "lamb": self.lamb,
            "n": self._n,
            "count": list(self._count),
            "buffer": list(self._buffer),
            "sum": list(self._sum),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check(state, window=self.window, lamb=self.lamb)
        self._n = state["n"]
        self._count = [int(c) for c in state["count"]]
        self._buffer = [None if t is None else t.clone() for t in state["buffer"]]
        self._sum = [None if t is None else t.clone() for t in state["sum"]]


# --- StableMax and cross-entropy in a chosen dtype --------------------------------------------
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


# --- per-tensor reductions, whole or per member -----------------------------------------------
def _rows(t: torch.Tensor, member_dim: int | None) -> torch.Tensor:
    """(1, numel) for the whole tensor, (K, numel / K) with the member axis first."""
    if member_dim is None:
        return t.reshape(1, -1)
    return t.movedim(member_dim, 0).reshape(t.shape[member_dim], -1)


def _unrows(rows: torch.Tensor, like: torch.Tensor, member_dim: int | None) -> torch.Tensor:
    if member_dim is None:
        return rows.reshape(like.shape)
    return rows.reshape(like.movedim(member_dim, 0).shape).movedim(0, member_dim)


# --- ⊥Grad -------------------------------------------------------------------------------------
@torch.no_grad()
def orthogonalize_grads_(
    params: Iterable[torch.Tensor], eps: float = ORTHO_EPS, member_dim: int | None = None
) -> None:
    """⊥Grad, in place on each ``p.grad``: ``g⊥ = g − (w·g)/(w·w + ε)·w``, rescaled to ‖g‖.

    Per parameter tensor (per member of it with ``member_dim``), in the parameter's dtype, as
    the repository's ``OrthoGrad`` does: it rescales by ``‖g‖ / (‖g⊥‖ + ε)`` with the same ε, so
    a gradient parallel to w (g⊥ = 0) becomes 0 rather than NaN. Its wrapper orthogonalizes every
    parameter (a later version takes the first N parameter groups): pass the ones you want.
    """
    for p in params:
        g = p.grad
        if g is None or g.numel() == 0:
            continue
        w2, g2 = _rows(p.detach(), member_dim), _rows(g, member_dim)
        proj = torch.linalg.vecdot(w2, g2).unsqueeze(1) / (
            torch.linalg.vecdot(w2, w2).unsqueeze(1) + eps
        )
        g_orth = g2 - proj * w2
        scale = g2.norm(dim=1, keepdim=True) / (g_orth.norm(dim=1, keepdim=True) + eps)
        g.copy_(_unrows(g_orth * scale, g, member_dim))


# --- Omnigrok's weight-norm control ------------------------------------------------------------
@torch.no_grad()
def total_norm(params: Iterable[torch.Tensor], member_dim: int | None = None) -> torch.Tensor:
    """L2 norm of all the tensors together: a 0-d tensor, or (K,) per member with ``member_dim``
    (each tensor's member axis at ``member_dim``). A tensor, so no device sync is forced."""
    ps = [p.detach() for p in params]
    if member_dim is None:
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(ps)))
    squares = [_rows(p, member_dim).square().sum(dim=1) for p in ps]
    return torch.stack(squares).sum(dim=0).sqrt()


@torch.no_grad()
def fix_weight_norm_(
    params: Iterable[torch.Tensor],
    target_norm: float | torch.Tensor,
    member_dim: int | None = None,
) -> torch.Tensor:
    """Rescale all the given parameters together, in place, so their total L2 norm is
    ``target_norm`` (per member with ``member_dim``; then a float or a (K,) tensor). Returns the
    norm before rescaling. All-zero weights have no direction to scale and are left as they are.

    Omnigrok's experiments hold the norm at its initial value (call with the initial
    :func:`total_norm`); their helper counts the first tensor twice in that norm, not followed.
    """
    ps = list(params)
    norm = total_norm(ps, member_dim)
    scale = torch.where(norm > 0, torch.as_tensor(target_norm).to(norm) / norm, 1.0)
    if member_dim is None:
        torch._foreach_mul_(ps, scale)
    else:
        for p in ps:
            shape = [1] * p.ndim
            shape[member_dim] = -1
            p.mul_(scale.view(shape))
    return norm


# --- Softmax Collapse measures -----------------------------------------------------------------
@torch.inference_mode()
def softmax_collapse(logits: torch.Tensor, dtype: torch.dtype = torch.float32) -> float:
    """Share of rows whose softmax has collapsed in ``dtype``: ``Σ exp(z − max z) == 1`` exactly.

    If the argmax is the target, such a row's loss is exactly 0 and so is the gradient of the
    argmax logit; the others get exp(−gap) each: learning from the row stops (Prieto et al.'s
    Softmax Collapse, measured as their logger does). This describes the
    logits whatever loss is used: with float64 or StableMax the loss itself has not collapsed.
    """
    z = logits.detach().to(dtype).reshape(-1, logits.shape[-1])
    sum_exp = torch.exp(z - z.amax(dim=1, keepdim=True)).sum(dim=1)
    return float((sum_exp == 1).float().mean())


@torch.inference_mode()
def logit_gap(logits: torch.Tensor) -> float:
    """Mean over rows of (largest − second largest logit): the logit scale behind the collapse.

    1 + exp(−gap) rounds to 1 in float32 once exp(−gap) < 2⁻²⁴, i.e. a gap above about 16.6
    when the other terms are added to 1 one at a time, and up to ln(C − 1) more (about 21 for
    C ≈ 100) when the reduction sums the small terms first: so a gap of about 17-21 collapses.
    """
    if logits.shape[-1] < 2:
        raise ValueError("logit_gap needs at least 2 classes")
    top = logits.detach().reshape(-1, logits.shape[-1]).topk(2, dim=1).values
    return float((top[:, 0] - top[:, 1]).double().mean())
