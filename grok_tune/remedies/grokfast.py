"""Grokfast (Lee et al. 2024, github.com/ironjr/grokfast): amplify the gradients' slow part,
between ``loss.backward()`` and ``optimizer.step()``. The filters are elementwise, so they act
on each member of stacked parameters (a leading axis of K models) independently as they are."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from grok_tune.remedies import FILTER_READS

if TYPE_CHECKING:
    from grok_tune.config import TrainConfig
    from grok_tune.stacked import Stack


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


def new_filter(cfg: TrainConfig) -> GrokfastEMA | GrokfastMA:
    if cfg.grad_filter == "ema":
        return GrokfastEMA(cfg.grokfast_alpha, cfg.grokfast_lamb)
    return GrokfastMA(cfg.grokfast_window, cfg.grokfast_lamb)


def member_filter(cfg: TrainConfig, params: Sequence[torch.Tensor]) -> GrokfastEMA | GrokfastMA:
    """The run's filter, a gradient hook with state (saved with the run)."""
    return new_filter(cfg)


class StackedFilters:
    """Grokfast on the stacked path: one filter per distinct setting, over the block of rows of
    the members that use it (elementwise: each member's own)."""

    def __init__(self, stack: Stack, models: Sequence[Any]) -> None:
        self.stack = stack
        self.filters: dict[tuple, GrokfastEMA | GrokfastMA] = {}
        self.groups: dict[tuple, list[int]] = {}

    def _key(self, i: int) -> tuple:
        cfg = self.stack.cfgs[i]
        return (cfg.grad_filter, *(getattr(cfg, n) for n in FILTER_READS[cfg.grad_filter]))

    def set_active(self, active: list[int]) -> None:
        groups: dict[tuple, list[int]] = {}
        for i in active:
            if self.stack.cfgs[i].grad_filter != "none":
                groups.setdefault(self._key(i), []).append(i)
        self.groups = groups
        for key in list(self.filters):
            if key not in groups:
                del self.filters[key]
        for key in groups:
            if key not in self.filters:
                self.filters[key] = new_filter(self.stack.cfgs[groups[key][0]])

    def __call__(self, grad: torch.Tensor, flat: torch.Tensor) -> None:
        active = self.stack.active
        row_of = {i: r for r, i in enumerate(active)}
        for key, members in self.groups.items():
            apply = self.filters[key]
            if len(members) == len(active):
                apply([SimpleNamespace(grad=grad)])
            else:
                rows = torch.tensor([row_of[i] for i in members], device=grad.device)
                sub = SimpleNamespace(grad=grad.index_select(0, rows))
                apply([sub])
                grad.index_copy_(0, rows, sub.grad)

    def retire(self, done: list[int]) -> None:
        """The filters' states restricted to the members that stay (before ``set_active``)."""
        for key, members in self.groups.items():
            kept = [j for j, i in enumerate(members) if i not in done]
            if kept and len(kept) < len(members):
                f = self.filters[key]
                keep = torch.tensor(kept, device=self.stack.device)
                f.load_state_dict(_slice_filter_state(f.state_dict(), keep))

    def state_dict(self) -> dict[str, Any]:
        return {
            "filters": [
                {"members": list(members), "state": _clone(self.filters[key].state_dict())}
                for key, members in self.groups.items()
            ]
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Into a part whose ``set_active`` has run for the checkpoint's active members."""
        self.filters = {}
        self.set_active(self.stack.active)
        for saved in state["filters"]:
            key = self._key(saved["members"][0])
            if self.groups.get(key) != list(saved["members"]):
                raise ValueError("checkpoint's filter groups do not match its members")
            self.filters[key].load_state_dict(saved["state"])


def _slice_filter_state(state: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """A Grokfast filter's state restricted to the members ``keep`` (rows of its block): μ and
    the MA's running sum have the member axis first, its ring buffer second."""
    out = dict(state)
    for key, dim in (("mu", 0), ("sum", 0), ("buffer", 1)):
        if key in state:
            out[key] = [None if t is None else t.index_select(dim, keep) for t in state[key]]
    return out


def _clone(state: dict[str, Any]) -> dict[str, Any]:
    return {
        k: [t.clone() if isinstance(t, torch.Tensor) else t for t in v]
        if isinstance(v, list)
        else v
        for k, v in state.items()
    }
