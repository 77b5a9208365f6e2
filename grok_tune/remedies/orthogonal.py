"""⊥Grad (Prieto et al. 2025, github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability):
each gradient without its component along its weights, between ``backward`` and ``step``,
after any gradient filter."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from grok_tune.remedies.tensors import _rows, _unrows

if TYPE_CHECKING:
    from grok_tune.config import TrainConfig
    from grok_tune.stacked import Stack

ORTHO_EPS = 1e-30  # Prieto et al.'s ε, both in w·w and under ‖g⊥‖


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


def member_hook(cfg: TrainConfig, params: Sequence[torch.Tensor]) -> Any:
    return orthogonalize_grads_


class StackedOrthogonal:
    """⊥Grad on the stacked path: per parameter tensor and member, on the rows of the members
    that use it."""

    def __init__(self, stack: Stack, models: Sequence[Any]) -> None:
        self.stack = stack
        self.rows: torch.Tensor | None = None
        self.any = False

    def set_active(self, active: list[int]) -> None:
        self.rows = self.stack.rows_where(lambda c: c.orthogonal_grad)
        self.any = any(self.stack.cfgs[i].orthogonal_grad for i in active)

    def __call__(self, grad: torch.Tensor, flat: torch.Tensor) -> None:
        if not self.any:
            return
        rows, chunks = self.rows, self.stack.chunks
        g = grad if rows is None else grad.index_select(0, rows)
        w = flat if rows is None else flat.index_select(0, rows)
        slots = [
            SimpleNamespace(grad=gc, detach=lambda wc=wc: wc)
            for wc, gc in zip(chunks(w), chunks(g), strict=True)
        ]
        orthogonalize_grads_(slots, member_dim=0)
        if rows is not None:
            grad.index_copy_(0, rows, g)

    def retire(self, done: list[int]) -> None:
        """Nothing held per member."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing held."""
