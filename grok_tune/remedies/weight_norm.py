"""Omnigrok's weight-norm control (Liu et al. 2023, github.com/KindXiaoming/Omnigrok): the
total weight norm held at a target after every ``optimizer.step()``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from grok_tune.remedies.tensors import _rows

if TYPE_CHECKING:
    from grok_tune.config import TrainConfig
    from grok_tune.stacked import Stack


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


def member_hook(cfg: TrainConfig, params: Sequence[torch.Tensor]) -> Any:
    """Omnigrok holds the norm where initialisation put it (init_scale sets that)."""
    target = total_norm(params)
    return lambda ps: fix_weight_norm_(ps, target)


class StackedWeightNorm:
    """The weight norm on the stacked path: each member held at its own initial norm (computed
    as its own model computes it), on the rows of the members that use it."""

    def __init__(self, stack: Stack, models: Sequence[Any]) -> None:
        self.stack = stack
        self.target = torch.stack([total_norm(list(m.parameters())) for m in models]).to(
            stack.device
        )
        self.rows: torch.Tensor | None = None
        self.any = False

    def set_active(self, active: list[int]) -> None:
        self.rows = self.stack.rows_where(lambda c: c.fixed_weight_norm)
        self.any = any(self.stack.cfgs[i].fixed_weight_norm for i in active)

    def __call__(self, grad: torch.Tensor, flat: torch.Tensor) -> None:
        if not self.any:
            return
        rows = self.rows
        w = flat if rows is None else flat.index_select(0, rows)
        target = self.target if rows is None else self.target.index_select(0, rows)
        fix_weight_norm_(self.stack.chunks(w), target, member_dim=0)
        if rows is not None:
            flat.index_copy_(0, rows, w)

    def retire(self, done: list[int]) -> None:
        keep = [r for r, i in enumerate(self.stack.active) if i not in done]
        rows = torch.tensor(keep, dtype=torch.long, device=self.target.device)
        self.target = self.target.index_select(0, rows)

    def state_dict(self) -> dict[str, Any]:
        return {"target": self.target.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.target = state["target"].to(self.stack.device).clone()
