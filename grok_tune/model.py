"""The grokking models, in plain PyTorch: the transformer, and the anchors' MLP.

A decoder-only transformer with causal attention and learned positions (Power et al. 2022):
defaults are the paper's 2 layers, width 128, 4 heads, MLP 512 (about 4·10⁵ parameters).
Nanda et al.'s 1-layer model without LayerNorm is ``n_layers=1, layer_norm=False``; his
induction model is attention-only, ``d_mlp=0``.

The task says which trailing positions carry a prediction (``n_predict``: the '=' of a table,
the answer digits of a sum, every position of a sequence), which allows two shortcuts, exact up
to float rounding (tests/test_model.py holds both to the obvious computation, gradients
included): the last layer runs its queries, output projection and MLP on the predicted
positions alone, and a leading prefix that takes few values across the batch ('a ∘' of a
table) runs once per distinct prefix instead of once per row.

``architecture: mlp`` is the model two anchors drew their claims on (``MLP`` below): the
operands alone (the table's '∘' and '=' carry nothing), embedded, then hidden layers and an
output layer. ``mlp_input: embedding`` is Liu et al.'s toy model (one learned vector per
element, the two operands' vectors summed, a tanh MLP decoder; ejmichaud/grokking-squared,
toy/train_add.py ``DEC``/``NET``); ``mlp_input: one_hot`` is Prieto et al.'s (the operands'
one-hot vectors concatenated into bias-free ReLU layers; LucasPrietoAl/grokking-at-the-edge-of-
numerical-stability, models.py ``MLP``). ``build_model`` picks the one a config names.

Members: every weight may carry a leading member axis. Called with K members' weights stacked
(``torch.func.functional_call`` with (K, ...) tensors, token ids (K, B, T)), the same modules
run K models at once: each matrix product a batched one, attention one call over K·B rows
(grok_tune/stacked.py, the GPU path). With a model's own weights nothing changes: every
module runs PyTorch's own kernels, and a run is the run it always was
(tests/test_reference_runs.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from grok_tune.config import DecayScope, TrainConfig


def _default(name: str):
    """The setting's default: TrainConfig owns the knobs and their defaults."""
    return TrainConfig.model_fields[name].default


@dataclass
class ModelConfig:
    vocab_size: int  # input tokens (the task's)
    num_classes: int  # answer classes at each predicted position
    n_positions: int = 4  # input positions (a ∘ b =)
    n_predict: int = 1  # trailing positions that predict (the '=' of a table)
    # leading positions computed once per distinct prefix in the batch (0: never); the table
    # task sets 2 ('a ∘'), as under causal attention they depend on a alone
    shared_prefix: int = 0
    # the MLP reads these positions alone (the table's operands), tokens 0 .. operand_vocab - 1
    operands: tuple[int, ...] = ()
    operand_vocab: int = 0
    architecture: str = _default("architecture")  # transformer | mlp
    # transformer: blocks; mlp: hidden layers
    n_layers: int = _default("n_layers")
    # transformer: the residual width; mlp with embedding input: the embedding's width
    d_model: int = _default("d_model")
    n_heads: int = _default("n_heads")
    # transformer: each block's MLP width, 0: attention-only blocks; mlp: every hidden layer's
    d_mlp: int = _default("d_mlp")
    dropout: float = _default("dropout")
    layer_norm: bool = _default("layer_norm")
    activation: str = _default("activation")  # relu | gelu | tanh
    attn_bias: bool = _default("attn_bias")
    head_bias: bool = _default("head_bias")
    block_norm: str = _default("block_norm")  # pre | post | stream (where LayerNorm sits)
    attn_init: str = _default("attn_init")  # pytorch | xavier (nn.MultiheadAttention's)
    mlp_input: str = _default("mlp_input")  # embedding (Liu et al.) | one_hot (Prieto et al.)
    mlp_bias: bool = _default("mlp_bias")  # biases in every layer of the MLP
    init: str = _default("init")  # pytorch | width_scaled (Nanda et al.'s) | uniform_embeddings
    init_scale: float = _default("init_scale")  # Omnigrok's α: multiplies every initial weight


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}[name]()


KeysValues = tuple[torch.Tensor, torch.Tensor]  # (rows, heads, positions, head width) each


# --- weights with or without a member axis --------------------------------------------------
class _MemberLinear(torch.autograd.Function):
    """Each member's ``F.linear`` on (K, M, in) rows, with F.linear's own backward: the weight's
    gradient as gᵀx (autograd of a product with a transposed weight would take (xᵀg)ᵀ, which
    rounds differently for narrow outputs)."""

    @staticmethod
    def forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        wt = w.transpose(1, 2)
        return torch.bmm(x, wt) if b is None else torch.baddbmm(b.unsqueeze(1), x, wt)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        x, w, _ = inputs
        ctx.save_for_backward(x, w)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        return (
            torch.bmm(g, w) if need_x else None,
            torch.bmm(g.transpose(1, 2), x) if need_w else None,
            g.sum(dim=1) if need_b else None,
        )


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``F.linear``; with a member axis, x (K, ..., in), w (K, out, in), b (K, out) or None."""
    if w.dim() == 2:
        return F.linear(x, w, b)
    if x.shape[0] == 1:  # one member: F.linear itself (squeeze: a view both ways, no copy)
        one = F.linear(x.squeeze(0), w.squeeze(0), None if b is None else b.squeeze(0))
        return one.unsqueeze(0)
    y = _MemberLinear.apply(x.reshape(x.shape[0], -1, x.shape[-1]), w, b)
    return y.view(*x.shape[:-1], w.shape[1])


def per_member(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """A (K, ...) tensor shaped to broadcast against a (K, ..., C) tensor of ``ndim`` dims."""
    return t.view(t.shape[0], *([1] * (ndim - t.dim())), *t.shape[1:])


class Linear(nn.Linear):
    """nn.Linear (its initialisation, its kernel), whose weights may carry a member axis."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dim() == 1:
            return super().forward(x)
        # normalise, then each member's gain and bias: the forward rounds as the fused kernel
        # (addcmul is one fma), the backward does not
        y = F.layer_norm(x, self.normalized_shape, eps=self.eps)
        return torch.addcmul(per_member(self.bias, x.dim()), y, per_member(self.weight, x.dim()))


class Embedding(nn.Embedding):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.dim() == 2:
            return super().forward(idx)
        # (K, V, C): one table of K·V rows, member k's ids offset by k·V
        K, V = w.shape[:2]
        offset = per_member(torch.arange(K, device=idx.device) * V, idx.dim())
        return F.embedding(idx + offset, w.reshape(K * V, -1))

    def positions(self, T: int) -> torch.Tensor:
        """The first T rows, shaped to add to (B, T, C) or (K, B, T, C) embeddings."""
        w = self.weight
        return w[:T] if w.dim() == 2 else w[:, None, :T]


Dropout = Callable[[torch.Tensor], torch.Tensor]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.attn_bias)
        self.proj = Linear(cfg.d_model, cfg.d_model, bias=cfg.attn_bias)
        self.dropout = cfg.dropout

    def forward(
        self,
        x: torch.Tensor,
        prefix: KeysValues | None = None,
        n_out: int | None = None,
        drop: Dropout | None = None,
    ) -> tuple[torch.Tensor, KeysValues]:
        """Attention of x's last ``n_out`` positions (all, by default) over ``prefix`` (keys and
        values of the positions before x, computed elsewhere) and x. Returns their output and
        x's keys and values. ``drop``: dropout of the attention weights drawn by the caller."""
        *lead, T, C = x.shape  # lead: (B,), or (K, B) with a member axis
        n_q, H = T if n_out is None else n_out, self.n_heads
        w, b = self.qkv.weight, self.qkv.bias
        b_q, b_kv = (None, None) if b is None else (b[..., :C], b[..., C:])
        # attention itself has no weights: members and rows are one batch of K·B rows
        heads = lambda t: t.reshape(-1, t.shape[-2], H, C // H).transpose(1, 2)  # noqa: E731
        # Keys and values come from every position, but only the predicted positions need a
        # query in the last layer: its attention rows, projection and MLP run on those alone.
        q = heads(linear(x[..., T - n_q :, :], w[..., :C, :], b_q))
        k, v = (heads(t) for t in linear(x, w[..., C:, :], b_kv).split(C, dim=-1))
        keys, values, n_before = k, v, 0
        if prefix is not None:
            keys, values = torch.cat((prefix[0], k), dim=2), torch.cat((prefix[1], v), dim=2)
            n_before = prefix[0].shape[2]
        mask, causal = None, False
        if n_before == 0 and n_q == T and drop is None:
            causal = True  # the plain square case: the fused kernel's own causal mask
        elif n_q > 1 or drop is not None:  # query at absolute position i sees keys 0..i
            q_pos = torch.arange(n_before + T - n_q, n_before + T, device=x.device)
            mask = torch.arange(n_before + T, device=x.device) <= q_pos[:, None]
        # (one query at the last position sees every position: no mask at all)
        if drop is not None:
            # the fused kernel's dropout draws from torch's generator: the plain computation
            att = (q @ keys.transpose(-2, -1)) * (C // H) ** -0.5
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = drop(att.view(*lead, *att.shape[1:])).flatten(0, len(lead) - 1) @ values
        else:
            y = F.scaled_dot_product_attention(
                q,
                keys,
                values,
                attn_mask=mask,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=causal,
            )
        return self.proj(y.transpose(1, 2).reshape(*lead, n_q, C)), (k, v)


def _last(x: torch.Tensor, n_out: int | None) -> torch.Tensor:
    """x's last ``n_out`` positions (all of them for None): the residual of the rows a block's
    attention computes."""
    return x if n_out is None else x[..., x.shape[-2] - n_out :, :]


class Block(nn.Module):
    """One block; where its LayerNorms sit is ``block_norm`` (without ``layer_norm`` they are
    identities and the three agree):

    - ``pre``:    x + attn(LN(x)), then x + mlp(LN(x)) (GPT-2; Power et al.'s, Nanda's);
    - ``post``:   LN(x + attn(x)), then LN(x + mlp(x)) (nn.TransformerEncoderLayer's default,
      the transformer of Prieto et al.'s figure 6);
    - ``stream``: x = LN(x), then x + attn(x), then x + mlp(LN(x)): the attention's LayerNorm
      replaces the residual stream itself (Grokfast's ``Block.forward``: ``x = self.ln_1(x)``).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = cfg.block_norm
        norm = (lambda: LayerNorm(cfg.d_model)) if cfg.layer_norm else nn.Identity
        self.ln1 = norm()
        self.attn = Attention(cfg)
        self.mlp = None
        if cfg.d_mlp:  # attention-only blocks (Nanda's induction model) have neither
            self.ln2 = norm()
            self.mlp = nn.Sequential(
                Linear(cfg.d_model, cfg.d_mlp),
                _activation(cfg.activation),
                Linear(cfg.d_mlp, cfg.d_model),
            )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        prefix: KeysValues | None = None,
        n_out: int | None = None,
        drop: Dropout | None = None,
    ) -> tuple[torch.Tensor, KeysValues]:
        dropped = self.drop if drop is None else drop
        # the residual is taken before the attention runs: autograd sums x's two gradients in
        # the order their uses were made (bit for bit against grok_tune's recorded runs)
        if self.norm == "post":
            residual = _last(x, n_out)
            y, kv = self.attn(x, prefix, n_out, drop)
            x = self.ln1(residual + dropped(y))
            if self.mlp is not None:
                x = self.ln2(x + dropped(self.mlp(x)))
            return x, kv
        if self.norm == "stream":
            x = self.ln1(x)  # Grokfast's block: the normalised stream is the residual
            residual, h = _last(x, n_out), x
        else:
            residual = _last(x, n_out)
            h = self.ln1(x)
        y, kv = self.attn(h, prefix, n_out, drop)
        x = residual + dropped(y)
        if self.mlp is not None:
            x = x + dropped(self.mlp(self.ln2(x)))
        return x, kv


class _Parameters:
    """What a run (grok_tune/member.py) asks of either model about its parameters (the rules:
    below)."""

    def num_params(self, non_embedding: bool = False) -> int:
        return _num_params(self, non_embedding)

    def param_groups(
        self, weight_decay: float, scope: DecayScope, embedding_lr: float | None = None
    ) -> list[dict]:
        return param_groups(self, weight_decay, scope, embedding_lr)


class Transformer(_Parameters, nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = Embedding(cfg.n_positions, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        # post-norm blocks end in a LayerNorm: nn.TransformerEncoder adds no final one
        final_norm = cfg.layer_norm and cfg.block_norm != "post"
        self.ln_f = LayerNorm(cfg.d_model) if final_norm else nn.Identity()
        self.head = Linear(cfg.d_model, cfg.num_classes, bias=cfg.head_bias)
        if cfg.init == "width_scaled":
            self._init_width_scaled()
        if cfg.attn_init == "xavier":
            self._init_attention_xavier()
        if cfg.init_scale != 1.0:
            with torch.no_grad():
                for p in self.parameters():
                    p.mul_(cfg.init_scale)

    @torch.no_grad()
    def _init_width_scaled(self) -> None:
        """Nanda et al.'s initialisation: every matrix and embedding N(0, 1/d_model), the
        output layer N(0, 1/classes), biases 0. PyTorch's default gives the embeddings N(0, 1):
        a weight norm several times larger, which delays grokking by thousands of steps."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):  # LayerNorms keep gain 1, bias 0
                std = self.cfg.num_classes if module is self.head else self.cfg.d_model
                module.weight.normal_(0.0, std**-0.5)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()

    @torch.no_grad()
    def _init_attention_xavier(self) -> None:
        """nn.MultiheadAttention's initialisation (Grokfast's attention): the (3·d, d) input
        projection Xavier-uniform as one matrix, its and the output projection's biases 0; the
        output projection keeps nn.Linear's default, as MultiheadAttention's does."""
        for block in self.blocks:
            nn.init.xavier_uniform_(block.attn.qkv.weight)
            for linear in (block.attn.qkv, block.attn.proj):
                if linear.bias is not None:
                    linear.bias.zero_()

    def forward(self, idx: torch.Tensor, drop: Dropout | None = None) -> torch.Tensor:
        """Token ids (B, T) -> logits at the last n_predict positions (B, n_predict, classes);
        with a member axis (K, B, T) -> (K, B, n_predict, classes). ``drop``: dropout drawn by
        the caller (each member from its own generator) in place of the model's own."""
        cfg, last = self.cfg, len(self.blocks) - 1
        T, n_out = idx.shape[-1], self.cfg.n_predict
        x = self.tok_emb(idx) + self.pos_emb.positions(T)
        n = cfg.shared_prefix
        dropout = drop is not None or (self.training and cfg.dropout > 0)
        if n and last > 0 and not dropout and T - n_out >= n:
            # Under causal attention the prefix positions depend on the prefix's tokens alone:
            # run them once per distinct prefix in the batch (at most p of them for a table,
            # against 512 rows) and give every row its prefix's keys and values. Not with
            # dropout (masks differ row by row), nor with one layer (only the prefix's keys and
            # values would be saved: measured slower than the gather costs).
            ids, row = _distinct_rows(idx[..., :n], cfg.vocab_size)
            xp, x = self.tok_emb(ids) + self.pos_emb.positions(n), x[..., n:, :]
            for i, block in enumerate(self.blocks):
                xp, (k, v) = block(xp)
                # index_select, not k[row]: its backward sums rows in a fixed order on CPU
                # threads, so that runs stay deterministic and resume bit-for-bit
                shared = (k.index_select(0, row), v.index_select(0, row))
                x, _ = block(x, shared, n_out=n_out if i == last else None)
        else:
            x = (self.drop if drop is None else drop)(x)
            for i, block in enumerate(self.blocks):
                x, _ = block(x, n_out=n_out if i == last else None, drop=drop)
        # only the predicted positions reach the head (the last layer computed nothing else)
        return self.head(self.ln_f(x[..., x.shape[-2] - n_out :, :]))

    def embeddings(self) -> list[nn.Parameter]:
        """The embedding tables: what ``embedding_lr`` and the decay scopes name."""
        return [self.tok_emb.weight, self.pos_emb.weight]

    def operand_embedding(self) -> torch.Tensor:
        """One row per token: what the Fourier measures read (grok_tune/progress.py)."""
        return self.tok_emb.weight


class MLP(_Parameters, nn.Module):
    """The anchors' MLP over a table's two operands (``architecture: mlp``).

    operands -> input -> n_layers x (Linear(., d_mlp) -> activation) -> Linear(d_mlp, classes)

    where the input is, by ``mlp_input``:
    - ``embedding`` (Liu et al. 2022): ``tok_emb[a] + tok_emb[b]``, one learned d_model-wide
      vector per element, shared by both operands and summed, as their ``DEC.forward`` hard-codes
      the addition (``reprs[x_id[:, 0]] + reprs[x_id[:, 1]]``): the decoder sees a + b's
      representation alone, so a representation that is a line (Liu's parallelograms) makes
      the answer a function of it;
    - ``one_hot`` (Prieto et al. 2025): ``[one_hot(a), one_hot(b)]`` concatenated (their
      ``x.flatten(start_dim=1)`` over the dataset's one-hot pairs), so that the first layer
      holds one weight column per operand and element.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not cfg.operands or not cfg.operand_vocab:
            raise ValueError("architecture mlp: the task has no operand positions to read")
        if cfg.n_predict != 1:
            raise ValueError("architecture mlp: predicts one answer per row (n_predict 1)")
        self.cfg = cfg
        self.register_buffer("operands", torch.tensor(cfg.operands), persistent=False)
        self.tok_emb: Embedding | None = None
        if cfg.mlp_input == "embedding":
            self.tok_emb = Embedding(cfg.operand_vocab, cfg.d_model)
            width = cfg.d_model
        else:
            width = len(cfg.operands) * cfg.operand_vocab
        layers: list[nn.Module] = []
        for _ in range(cfg.n_layers):
            layers += [Linear(width, cfg.d_mlp, bias=cfg.mlp_bias), _activation(cfg.activation)]
            width = cfg.d_mlp
        self.hidden = nn.Sequential(*layers)
        self.head = Linear(width, cfg.num_classes, bias=cfg.mlp_bias)
        with torch.no_grad():
            if cfg.init == "uniform_embeddings" and self.tok_emb is not None:
                # Liu et al.'s ``(torch.rand(p, reprs_dim) - 1/2) * init_scale_reprs``: a
                # representation far smaller than nn.Embedding's N(0, 1)
                self.tok_emb.weight.uniform_(-0.5, 0.5)
            if cfg.init_scale != 1.0:
                for p in self.parameters():
                    p.mul_(cfg.init_scale)

    def forward(self, idx: torch.Tensor, drop: Dropout | None = None) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, 1, classes), as the transformer gives them (with a
        member axis: (K, B, T) -> (K, B, 1, classes)). The MLP has no dropout."""
        ops = idx.index_select(-1, self.operands)  # (..., B, operands): 'a' and 'b'
        if self.tok_emb is not None:
            x = self.tok_emb(ops).sum(dim=-2)
        else:
            x = F.one_hot(ops, self.cfg.operand_vocab).flatten(-2).to(self.head.weight.dtype)
        return self.head(self.hidden(x)).unsqueeze(-2)

    def embeddings(self) -> list[nn.Parameter]:
        return [] if self.tok_emb is None else [self.tok_emb.weight]

    def operand_embedding(self) -> torch.Tensor:
        """One row per element: the learned embedding, or (one-hot input) the first layer's
        weight columns that read the first operand."""
        if self.tok_emb is not None:
            return self.tok_emb.weight
        first = self.hidden[0] if len(self.hidden) else self.head
        return first.weight[:, : self.cfg.operand_vocab].T


Model = Transformer | MLP


def build_model(cfg: ModelConfig) -> Model:
    """The model ``cfg.architecture`` names."""
    return MLP(cfg) if cfg.architecture == "mlp" else Transformer(cfg)


def _num_params(model: Model, non_embedding: bool) -> int:
    n = sum(p.numel() for p in model.parameters())
    if non_embedding:
        n -= sum(p.numel() for p in model.embeddings())
    return n


def param_groups(
    model: Model, weight_decay: float, scope: DecayScope, embedding_lr: float | None = None
) -> list[dict]:
    """AdamW parameter groups: which tensors weight decay touches, by ``scope``, and the
    embeddings' own learning rate. Each group says whether it is ``decayed`` (the run
    counts and removes the key); the first is the decayed group of the rest of the model, whose
    lr the records show. Without ``embedding_lr`` there are two groups, as there always were
    (a checkpoint's optimizer state keeps its layout)."""
    embeddings = {id(p) for p in model.embeddings()}

    def decayed(p: nn.Parameter) -> bool:
        if scope == "all":
            return True
        if scope == "all_except_embeddings":
            return id(p) not in embeddings
        if p.dim() < 2:
            return False
        return scope == "matrices" or id(p) not in embeddings

    def group(params: list[nn.Parameter], decay: bool, lr: float | None = None) -> dict:
        out = {"params": params, "weight_decay": weight_decay if decay else 0.0, "decayed": decay}
        return out if lr is None else {**out, "lr": lr}

    params = list(model.parameters())
    if embedding_lr is None:
        return [
            group([p for p in params if decayed(p)], True),
            group([p for p in params if not decayed(p)], False),
        ]
    rest = [p for p in params if id(p) not in embeddings]
    own = [p for p in params if id(p) in embeddings]
    # Liu et al. train the representation with an optimizer of its own (lr eta_reprs): a group
    # of its own is the same AdamW arithmetic, tensor by tensor
    return [
        group([p for p in rest if decayed(p)], True),
        group([p for p in rest if not decayed(p)], False),
        group([p for p in own if decayed(p)], True, embedding_lr),
        group([p for p in own if not decayed(p)], False, embedding_lr),
    ]


def _distinct_rows(prefix: torch.Tensor, base: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of a (B, n) token block, and each row's index among them. One integer
    per row makes it a 1-D unique: a plain sort.

    With a member axis, (K, B, n): each member's distinct rows in the order above, padded with
    zero tokens to the largest count (K, U, n; the padding rows are read by no one), and each
    row's index among all K·U of them. One sort for all members (the member is the top digit).
    """
    weights = base ** torch.arange(prefix.shape[-1] - 1, -1, -1, device=prefix.device)
    if prefix.dim() == 2:
        ids, row = (prefix * weights).sum(dim=1).unique(return_inverse=True)
        digits = (ids[:, None] // weights) % base
        return digits, row
    K = prefix.shape[0]
    span = base ** prefix.shape[-1]
    member = torch.arange(K, device=prefix.device).unsqueeze(1)
    keys, inverse = ((prefix * weights).sum(dim=2) + member * span).unique(return_inverse=True)
    owner = keys // span
    counts = torch.bincount(owner, minlength=K)
    rank = torch.arange(len(keys), device=prefix.device) - (counts.cumsum(0) - counts)[owner]
    U = int(counts.max())
    codes = torch.zeros(K, U, dtype=keys.dtype, device=prefix.device)
    codes[owner, rank] = keys % span
    return (codes.unsqueeze(2) // weights) % base, (rank[inverse] + member * U).flatten()
