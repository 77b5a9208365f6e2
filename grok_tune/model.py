"""The grokking transformer, in plain PyTorch.

A decoder-only transformer with causal attention and learned positions (Power et al. 2022):
defaults are the paper's 2 layers, width 128, 4 heads, MLP 512 (about 4·10⁵ parameters).
Nanda et al.'s 1-layer model without LayerNorm is ``ModelConfig(n_layers=1, layer_norm=False)``.

Only the answer at '=' is ever predicted, which allows two shortcuts, exact up to float
rounding (tests/test_model.py holds both to the obvious computation, gradients included): the
last layer runs its queries, output projection and MLP on the '=' position alone, and the
positions of 'a ∘' run once per distinct a in the batch instead of once per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from grok_tune.config import DecayScope


@dataclass
class ModelConfig:
    vocab_size: int  # elements + operator token + '=' token
    num_classes: int  # possible answers c
    seq_len: int = 4  # a ∘ b =
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    dropout: float = 0.0
    layer_norm: bool = True
    init_scale: float = 1.0  # Omnigrok's α: multiplies every initial weight
    shared_prefix: bool = True  # compute 'a ∘' once per a (same result, fewer FLOPs)


KeysValues = tuple[torch.Tensor, torch.Tensor]  # (B, heads, positions, head width) each
PREFIX = 2  # 'a ∘': the positions that, under causal attention, depend on a alone


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(
        self, x: torch.Tensor, prefix: KeysValues | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, KeysValues]:
        """Attention of x's positions over ``prefix`` (keys and values of the positions before
        them, computed elsewhere) and themselves. Returns x's output and x's keys and values."""
        B, T, C = x.shape
        w, b = self.qkv.weight, self.qkv.bias
        heads = lambda t: t.view(B, t.shape[1], self.n_heads, C // self.n_heads).transpose(1, 2)  # noqa: E731
        # The last layer needs the query of the '=' position only: keys and values still come
        # from every position, but the query projection, attention rows, output projection and
        # MLP run on one position instead of four.
        q_in = x[:, -1:] if last_only else x
        q = heads(F.linear(q_in, w[:C], b[:C]))
        k, v = (heads(t) for t in F.linear(x, w[C:], b[C:]).split(C, dim=2))
        keys, values, mask = k, v, None
        if prefix is not None:
            keys, values = torch.cat((prefix[0], k), dim=2), torch.cat((prefix[1], v), dim=2)
            if not last_only:  # causal, shifted past the prefix: query i sees it and x[: i + 1]
                n = prefix[0].shape[2]
                mask = torch.ones(T, n + T, dtype=torch.bool, device=x.device).tril(diagonal=n)
        y = F.scaled_dot_product_attention(
            q,
            keys,
            values,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            # the last position sees every position anyway
            is_causal=prefix is None and not last_only,
        )
        return self.proj(y.transpose(1, 2).reshape(B, q.shape[2], C)), (k, v)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        norm = (lambda: nn.LayerNorm(cfg.d_model)) if cfg.layer_norm else nn.Identity
        self.ln1, self.ln2 = norm(), norm()
        self.attn = Attention(cfg)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_mlp), nn.ReLU(), nn.Linear(cfg.d_mlp, cfg.d_model)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, prefix: KeysValues | None = None, last_only: bool = False
    ) -> tuple[torch.Tensor, KeysValues]:
        residual = x[:, -1:] if last_only else x
        y, kv = self.attn(self.ln1(x), prefix, last_only)
        x = residual + self.drop(y)
        return x + self.drop(self.mlp(self.ln2(x))), kv


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model) if cfg.layer_norm else nn.Identity()
        self.head = nn.Linear(cfg.d_model, cfg.num_classes)
        if cfg.init_scale != 1.0:
            with torch.no_grad():
                for p in self.parameters():
                    p.mul_(cfg.init_scale)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> logits over the answer at the last position (B, num_classes)."""
        last = len(self.blocks) - 1
        x = self.tok_emb(idx) + self.pos_emb.weight[: idx.shape[1]]
        dropout = self.training and self.cfg.dropout > 0
        if self.cfg.shared_prefix and last > 0 and not dropout:
            # Under causal attention the positions of 'a ∘' depend on a alone: run them once
            # per distinct prefix in the batch (at most p of them, against 512 rows) and give
            # every row its prefix's keys and values. Not with dropout (masks differ row by
            # row), nor with one layer (only the prefix's keys and values would be saved:
            # measured slower than the gather costs).
            V = self.cfg.vocab_size  # one integer per (a, ∘): 1-D unique is a plain sort
            ids, row = (idx[:, 0] * V + idx[:, 1]).unique(return_inverse=True)
            prefixes = torch.stack((ids // V, ids % V), dim=1)  # (distinct prefixes, PREFIX)
            xp, x = self.tok_emb(prefixes) + self.pos_emb.weight[:PREFIX], x[:, PREFIX:]
            for i, block in enumerate(self.blocks):
                xp, (k, v) = block(xp)
                # index_select, not k[row]: its backward sums rows in a fixed order on CPU
                # threads, so that runs stay deterministic and resume bit-for-bit
                shared = (k.index_select(0, row), v.index_select(0, row))
                x, _ = block(x, shared, last_only=i == last)
        else:
            x = self.drop(x)
            for i, block in enumerate(self.blocks):
                x, _ = block(x, last_only=i == last)
        # only the '=' position predicts anything: the head runs on it alone
        return self.head(self.ln_f(x[:, -1]))

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() + self.pos_emb.weight.numel()
        return n

    def param_groups(self, weight_decay: float, scope: DecayScope) -> list[dict]:
        """AdamW parameter groups: which tensors weight decay touches, by ``scope``."""
        embeddings = {id(self.tok_emb.weight), id(self.pos_emb.weight)}

        def decayed(p: nn.Parameter) -> bool:
            if scope == "all":
                return True
            if p.dim() < 2:
                return False
            return scope == "matrices" or id(p) not in embeddings

        params = list(self.parameters())
        return [
            {"params": [p for p in params if decayed(p)], "weight_decay": weight_decay},
            {"params": [p for p in params if not decayed(p)], "weight_decay": 0.0},
        ]
