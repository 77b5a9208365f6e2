"""Per-tensor reductions, over the whole tensor or per member of stacked parameters (a leading
axis of K models): what ⊥Grad and the weight norm reduce over."""

from __future__ import annotations

import torch


def _rows(t: torch.Tensor, member_dim: int | None) -> torch.Tensor:
    """(1, numel) for the whole tensor, (K, numel / K) with the member axis first."""
    if member_dim is None:
        return t.reshape(1, -1)
    return t.movedim(member_dim, 0).reshape(t.shape[member_dim], -1)


def _unrows(rows: torch.Tensor, like: torch.Tensor, member_dim: int | None) -> torch.Tensor:
    if member_dim is None:
        return rows.reshape(like.shape)
    return rows.reshape(like.movedim(member_dim, 0).shape).movedim(0, member_dim)
