"""Populations: K runs trained as one model whose weights carry a leading member axis.

A grokking run is tiny: on a GPU one run is bound by kernel launches, not arithmetic. A
``Population`` trains K runs (its *members*) as one stacked model: each member's weights are a
row of one ``(K, row_length)`` buffer, every matrix product a batched one (``torch.baddbmm``),
attention one call over K·B rows, the optimizer a dozen elementwise ops over the whole buffer:
one stream of launches drives K runs. It knows nothing of Ray: ``run(on_eval)`` hands every
evaluation's records to the caller, and ``save``/``load`` checkpoint the whole population.

Members share what fixes the shapes and the schedule (``SHARED``: the task and its data regime,
the model's shape, steps, eval_every, warm-up, the optimizer's kind, betas and ε, the loss and
its dtype) and the effective batch size (the default batch follows the training set's size:
``population_key`` groups by it, ``check_population`` refuses a mix). They may differ in
everything else a study varies (``MAY_DIFFER``): seed (initialisation, batches, dropout, the
table's split, the generated data), lr, weight decay and decay_scope, dropout, init_scale, frac,
the remedies (Grokfast filter and its settings, ⊥Grad, fixed weight norm), the accuracy
threshold and the stopping rules.

Each member is the run ``Trainer(cfg)`` makes: its initial weights (its ``Transformer``, built
under its seed; ``member_state_dict(i)`` loads back into ``Transformer(model_config(cfg_i,
layout))``), its batches (its own generator or stream counter over its own training data), the
loss, the remedies at the same seams (filter, ⊥Grad, AdamW / Adam with its lr, weight decay,
decay scope and warm-up, fixed weight norm at its own initial norm), the same evaluation records
and one ``RunEvents`` per member. ``elapsed_s`` is the population's wall-clock time.

Exactness. With ``exact`` (the default on CPU) every member goes through the very kernels
Trainer runs, one member at a time (``chunk`` 1): F.linear, LayerNorm, the fused AdamW step,
the remedies' own calls, the metrics' sums. Without dropout a member's records and weights are
then bit for bit those of ``Trainer(cfg).run()`` at the same thread count (the tests compare
with ==). That takes care: each parameter starts 64 bytes apart in the buffer, weights require
grad when evaluated, and a linear layer's weight gradient is taken as gᵀx, since BLAS kernels
and F.linear's dispatch round differently otherwise. On a GPU the default is stacked: every
member in one pass, LayerNorm's gain and bias and the optimizer over the whole stack. It is the
same function, rounded differently (agreement to 1e-4 is tested on CPU); training amplifies
rounding slowly, as it does a change of thread count.

Dropout: each member draws its masks from its own generator, so a member does not depend on
who else is in its population; the masks are not those Trainer draws from torch's global
generator, so runs with dropout match Trainer in distribution only. In a population where any
member has dropout, every member runs the dropout path (no shared prefix, attention as plain
matmuls): the same function for members without it, rounded differently.

Stopping. Events are read at evaluations (as Trainer reads them), so a member that has
generalized and held, diverged or been called confused leaves the stack at that evaluation:
nothing of it changes afterwards (no step, no decay, no filter state) and it costs nothing. Its
final weights are kept; the population ends with its last member.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, get_args

import torch
import torch.nn.functional as F
from torch.optim.adam import adam as functional_adam

from grok_tune import metrics as m
from grok_tune import remedies
from grok_tune.config import FILTER_READS, DecayScope, TrainConfig
from grok_tune.events import RunEvents, StoppingRule, phase_outcome, run_phase_changes
from grok_tune.model import ModelConfig, Transformer
from grok_tune.packing import (
    check_population,
    effective_batch_size,
    training_examples,
)
from grok_tune.progress import nanda_phases
from grok_tune.tasks import IGNORE, Split, make_task
from grok_tune.tasks.streams import stream_key
from grok_tune.train import Record, cross_entropy, model_config, save_atomically

SCOPES: tuple[str, ...] = get_args(DecayScope)
ALIGN = 16  # floats: 64 bytes, the alignment of torch's CPU allocations

OnEval = Callable[[dict[int, Record], "Population"], None]


# --- the stacked model ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Slot:
    """Where one of the model's parameters lies in a member's row of the flat buffer."""

    name: str
    shape: tuple[int, ...]
    start: int
    stop: int


class _Linear(torch.autograd.Function):
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


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Each member's ``F.linear``: x (K, ..., in), w (K, out, in), b (K, out) or None."""
    if x.shape[0] == 1:  # one member: F.linear itself (squeeze: a view both ways, no copy)
        one = F.linear(x.squeeze(0), w.squeeze(0), None if b is None else b.squeeze(0))
        return one.unsqueeze(0)
    y = _Linear.apply(x.reshape(x.shape[0], -1, x.shape[-1]), w, b)
    return y.view(*x.shape[:-1], w.shape[1])


def _per_member(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """A (K, ...) tensor shaped to broadcast against a (K, ..., C) tensor of ``ndim`` dims."""
    return t.view(t.shape[0], *([1] * (ndim - t.dim())), *t.shape[1:])


def _member_distinct_rows(prefix: torch.Tensor, base: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``model._distinct_rows`` per member: (K, B, n) tokens -> each member's distinct rows in
    the model's order, padded with zero tokens to the largest count, (K, U, n); and each row's
    index among its member's (K, B). One sort for all members (the member is the top digit)."""
    K, _B, n = prefix.shape
    weights = base ** torch.arange(n - 1, -1, -1, device=prefix.device)
    span = base**n
    member = torch.arange(K, device=prefix.device).unsqueeze(1)
    keys, inverse = ((prefix * weights).sum(dim=2) + member * span).unique(return_inverse=True)
    owner = keys // span
    counts = torch.bincount(owner, minlength=K)
    rank = torch.arange(len(keys), device=prefix.device) - (counts.cumsum(0) - counts)[owner]
    codes = torch.zeros(K, int(counts.max()), dtype=keys.dtype, device=prefix.device)
    codes[owner, rank] = keys % span
    return (codes.unsqueeze(2) // weights) % base, rank[inverse]


class MemberDropout:
    """Dropout with each member's own generator: a member's masks depend on its stream alone,
    not on who else is in the population. One draw per member and site (K small launches)."""

    def __init__(self, rates: Sequence[float], generators: Sequence[torch.Generator]) -> None:
        self.generators = list(generators)
        device = self.generators[0].device
        r = torch.tensor(list(rates), dtype=torch.float32)
        self.rates = r.to(device)
        self.scales = (1.0 / (1.0 - r)).to(device)  # kept values scaled as F.dropout does

    def rows(self, start: int, stop: int) -> MemberDropout:
        """The same members' streams, for the stack rows start..stop."""
        sub = MemberDropout.__new__(MemberDropout)
        sub.generators = self.generators[start:stop]
        sub.rates, sub.scales = self.rates[start:stop], self.scales[start:stop]
        return sub

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[1:]
        u = torch.stack([torch.rand(shape, generator=g, device=x.device) for g in self.generators])
        keep = u >= _per_member(self.rates, x.dim())
        return x * keep * _per_member(self.scales, x.dim())


class StackedTransformer:
    """``grok_tune.model.Transformer`` for K members at once, as a function of the stacked
    parameters (name -> (K, *shape)) and token ids (K, B, T) -> logits (K, B, n_predict, classes).

    It keeps the model's two shortcuts: the last layer computes queries, projection and MLP on
    the predicted positions alone, and a shared prefix ('a ∘' of a table) runs once per distinct
    prefix among each member's rows, not once per row.
    """

    def __init__(self, cfg: ModelConfig, per_member_norm: bool = False) -> None:
        self.cfg = cfg
        # LayerNorm one member at a time: K small launches, but its backward is then the
        # fused kernel's own (bit for bit the single model's on CPU, where launches are cheap)
        self.per_member_norm = per_member_norm

    def __call__(
        self,
        p: dict[str, torch.Tensor],
        idx: torch.Tensor,
        drop: MemberDropout | None = None,
    ) -> torch.Tensor:
        cfg, last = self.cfg, self.cfg.n_layers - 1
        K, _B, T = idx.shape
        n_out, n = cfg.n_predict, cfg.shared_prefix
        x = self._embed(p, idx) + p["pos_emb.weight"][:, None, :T]
        if n and last > 0 and drop is None and T - n_out >= n:
            # as Transformer.forward: prefixes depend on their own tokens alone under causal
            # attention. Each member runs its own distinct prefixes, in the order the model
            # would, padded to the largest count (the padding rows are read by no one)
            ids, row = _member_distinct_rows(idx[..., :n], cfg.vocab_size)
            U = ids.shape[1]
            xp = self._embed(p, ids) + p["pos_emb.weight"][:, None, :n]
            x = x[:, :, n:]
            member = torch.arange(K, device=idx.device).unsqueeze(1)
            gather = (row + member * U).flatten()
            for i in range(cfg.n_layers):
                xp, (k, v) = self._block(p, i, xp)
                # index_select, not k[gather]: a deterministic backward on CPU (as the model)
                shared = (k.index_select(0, gather), v.index_select(0, gather))
                x, _ = self._block(p, i, x, shared, n_out if i == last else None)
        else:
            if drop is not None:
                x = drop(x)
            for i in range(cfg.n_layers):
                x, _ = self._block(p, i, x, None, n_out if i == last else None, drop)
        x = x[:, :, x.shape[2] - n_out :]
        return _linear(self._norm(p, "ln_f", x), p["head.weight"], p.get("head.bias"))

    def _embed(self, p: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        w = p["tok_emb.weight"]  # (K, V, C): one table of K·V rows, each member its own rows
        K, V = w.shape[:2]
        offset = _per_member(torch.arange(K, device=idx.device) * V, idx.dim())
        return F.embedding(idx + offset, w.reshape(K * V, -1))

    def _norm(self, p: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
        if not self.cfg.layer_norm:
            return x
        w, b = p[f"{name}.weight"], p[f"{name}.bias"]
        if self.per_member_norm and x.shape[0] == 1:
            return F.layer_norm(x.squeeze(0), (x.shape[-1],), w.squeeze(0), b.squeeze(0))[None]
        if self.per_member_norm:
            return torch.stack(
                [F.layer_norm(x[k], (x.shape[-1],), w[k], b[k]) for k in range(x.shape[0])]
            )
        # normalise, then each member's gain and bias: the forward rounds as the fused kernel
        # (addcmul is one fma), the backward does not
        y = F.layer_norm(x, (x.shape[-1],))
        return torch.addcmul(_per_member(b, x.dim()), y, _per_member(w, x.dim()))

    def _block(
        self,
        p: dict[str, torch.Tensor],
        i: int,
        x: torch.Tensor,
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
        n_out: int | None = None,
        drop: MemberDropout | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        pre = f"blocks.{i}."
        residual = x if n_out is None else x[:, :, x.shape[2] - n_out :]
        y, kv = self._attention(
            p, pre + "attn.", self._norm(p, pre + "ln1", x), prefix, n_out, drop
        )
        x = residual + (drop(y) if drop is not None else y)
        if self.cfg.d_mlp:
            h = _linear(
                self._norm(p, pre + "ln2", x), p[pre + "mlp.0.weight"], p[pre + "mlp.0.bias"]
            )
            h = F.gelu(h) if self.cfg.activation == "gelu" else F.relu(h)
            h = _linear(h, p[pre + "mlp.2.weight"], p[pre + "mlp.2.bias"])
            x = x + (drop(h) if drop is not None else h)
        return x, kv

    def _attention(
        self,
        p: dict[str, torch.Tensor],
        pre: str,
        x: torch.Tensor,
        prefix: tuple[torch.Tensor, torch.Tensor] | None,
        n_out: int | None,
        drop: MemberDropout | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        K, B, T, C = x.shape
        H = self.cfg.n_heads
        n_q = T if n_out is None else n_out
        w, b = p[pre + "qkv.weight"], p.get(pre + "qkv.bias")
        b_q, b_kv = (None, None) if b is None else (b[:, :C], b[:, C:])

        def heads(t: torch.Tensor) -> torch.Tensor:  # (K, B, t, C) -> (K·B, H, t, C/H)
            return t.reshape(K * B, t.shape[2], H, C // H).transpose(1, 2)

        # attention itself has no weights: members and rows are one batch of K·B rows
        q = heads(_linear(x[:, :, T - n_q :], w[:, :C], b_q))
        k, v = (heads(t) for t in _linear(x, w[:, C:], b_kv).split(C, dim=-1))
        keys, values, n_before = k, v, 0
        if prefix is not None:
            keys, values = torch.cat((prefix[0], k), dim=2), torch.cat((prefix[1], v), dim=2)
            n_before = prefix[0].shape[2]
        q_pos = torch.arange(n_before + T - n_q, n_before + T, device=x.device)
        mask = torch.arange(n_before + T, device=x.device) <= q_pos[:, None]
        if drop is not None:
            # SDPA's dropout would draw from the global generator: the plain computation
            att = (q @ keys.transpose(-2, -1)) * (C // H) ** -0.5
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            att = drop(att.view(K, B, *att.shape[1:])).flatten(0, 1)
            y = att @ values
        elif n_before == 0 and n_q == T:
            y = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
        else:  # (as the model: one query, at the last position, sees every key unmasked)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask if n_q > 1 else None)
        y = y.transpose(1, 2).reshape(K, B, n_q, C)
        return _linear(y, p[pre + "proj.weight"], p.get(pre + "proj.bias")), (k, v)


# --- batched measures of a split ------------------------------------------------------------------
@dataclass
class _Stacked:
    """Every active member's split, padded to the longest with IGNORE rows."""

    x: torch.Tensor  # (K, N, T)
    y: torch.Tensor  # (K, N, P)
    n: torch.Tensor  # (K,) real rows per member


def _stack_splits(splits: Sequence[Split], device: torch.device) -> _Stacked:
    longest = max(len(s) for s in splits)
    xs, ys = [], []
    for s in splits:
        pad = longest - len(s)
        xs.append(F.pad(s.x, (0, 0, 0, pad)))
        ys.append(F.pad(s.y, (0, 0, 0, pad), value=IGNORE))
    n = torch.tensor([len(s) for s in splits], device=device)
    return _Stacked(torch.stack(xs).to(device), torch.stack(ys).to(device), n)


def _collapsed_and_gaps(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, ``remedies.softmax_collapse``'s test (float32 Σ exp(z − max z) == 1) and
    ``remedies.logit_gap``'s top-two difference (float64): those measures before their mean,
    so that each member's rows are counted apart."""
    z = logits.detach().float()
    collapsed = torch.exp(z - z.amax(dim=-1, keepdim=True)).sum(dim=-1) == 1
    if z.shape[-1] < 2:
        return collapsed, torch.zeros(z.shape[:-1], dtype=torch.float64, device=z.device)
    top = z.topk(2, dim=-1).values
    return collapsed, (top[..., 0] - top[..., 1]).double()


def _lr_at(cfg: TrainConfig, step: int) -> float:
    """The lr of step ``step`` (from 0): Trainer's linear warm-up, in its arithmetic."""
    return cfg.lr * (step + 1) / cfg.warmup_steps if step < cfg.warmup_steps else cfg.lr


# --- the population -------------------------------------------------------------------------------
class Population:
    """K runs as one stacked model; ``state_dict``/``load_state_dict`` resume it bit-for-bit.

    ``cfgs`` must pass ``check_population``; member i is ``cfgs[i]`` in every method and record.
    ``models``, if given, are the members' initial Transformers (``Transformer(model_config(
    cfg_i, layout))``); by default each is built under its member's seed, as Trainer builds it.
    ``exact`` (default: on CPU) runs LayerNorm, the optimizer and the remedies per member with
    torch's own kernels; ``chunk`` is how many members share one forward and backward pass
    (default: 1 on CPU, where a stack of K only loses cache locality; all on a GPU).
    """

    def __init__(
        self,
        cfgs: Sequence[TrainConfig],
        device: str | torch.device = "cpu",
        models: Sequence[Transformer] | None = None,
        exact: bool | None = None,
        chunk: int | None = None,
    ) -> None:
        check_population(cfgs)
        self.cfgs = list(cfgs)
        self.device = torch.device(device)
        # a few small launches per member and step: cheap on CPU, not on a GPU
        self.exact = self.device.type == "cpu" if exact is None else exact
        self.chunk = (1 if self.device.type == "cpu" else None) if chunk is None else chunk
        cfg0 = self.cfgs[0]
        self.tasks = [make_task(cfg) for cfg in self.cfgs]
        self.layout = self.tasks[0].layout
        self.infinite = self.tasks[0].infinite
        self.batch_size = effective_batch_size(cfg0)
        # finite data: the training sets; infinite: the fixed probes of the streams
        self._train = [t.training for t in self.tasks]
        self._val = [t.validation for t in self.tasks]
        for cfg, split in zip(self.cfgs, self._train, strict=True):
            if not self.infinite and len(split) != training_examples(cfg):
                raise RuntimeError(
                    f"training_examples disagrees with task {cfg.task}: "
                    f"{training_examples(cfg)} against {len(split)} examples"
                )
        self._offsets = [0]
        for split in self._train:
            self._offsets.append(self._offsets[-1] + len(split))
        self._train_x = torch.cat([s.x for s in self._train]).to(self.device)
        self._train_y = torch.cat([s.y for s in self._train]).to(self.device)

        if models is None:
            models = [self._build(cfg) for cfg in self.cfgs]
        elif len(models) != len(self.cfgs):
            raise ValueError(f"{len(models)} models for {len(self.cfgs)} configurations")
        template = models[0]
        self.forward = StackedTransformer(
            model_config(cfg0, self.layout), per_member_norm=self.exact
        )
        self._layout_params(template)
        self._flat = torch.stack([self._row(model) for model in models]).to(self.device)
        self._exp_avg = torch.zeros_like(self._flat)
        self._exp_avg_sq = torch.zeros_like(self._flat)
        self._adam_steps = 0
        # Omnigrok's target: each member's initial norm, computed as Trainer computes it
        self._target_norm = torch.stack(
            [remedies.total_norm(list(model.parameters())) for model in models]
        ).to(self.device)
        self._retired: list[torch.Tensor | None] = [None] * len(self.cfgs)

        self.batch_rng = [torch.Generator().manual_seed(cfg.seed) for cfg in self.cfgs]
        # dropout's own stream per member, apart from the batch stream of the same seed
        self.dropout_rng = [
            torch.Generator(device=self.device).manual_seed(stream_key(c.seed, "dropout") >> 1)
            for c in self.cfgs
        ]
        self.stream_counter = [0] * len(self.cfgs)
        self.step = 0
        self.elapsed_s = 0.0
        self.histories: list[list[Record]] = [[] for _ in self.cfgs]
        self.events = [
            RunEvents(
                StoppingRule(c.steps, c.stop_after_generalized, c.confusion_step, c.threshold),
                self.layout.position_names,
            )
            for c in self.cfgs
        ]
        self._member_loss_fn = self._member_loss(cfg0)
        self._loss_fn = torch.func.vmap(self._member_loss_fn)
        self._shell: Transformer | None = None
        self._filters: dict[tuple, Any] = {}
        self._set_active(list(range(len(self.cfgs))))

    def __len__(self) -> int:
        return len(self.cfgs)

    # --- building ---------------------------------------------------------------------------------
    def _build(self, cfg: TrainConfig) -> Transformer:
        """The member's initial model, as Trainer makes it; the caller's RNG is left alone."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return Transformer(model_config(cfg, self.layout))

    def _layout_params(self, template: Transformer) -> None:
        """The flat row's layout: parameters grouped by the decay scopes that decay them, so a
        member's weight decay is one multiplier per group of columns."""
        names = [name for name, _ in template.named_parameters()]
        if list(template.state_dict()) != names:
            raise RuntimeError("the model has buffers: a member is more than its parameters")
        self._names = names
        decayed = {}
        by_id = {id(p): name for name, p in template.named_parameters()}
        for scope in SCOPES:
            group = template.param_groups(1.0, scope)[0]["params"]
            decayed[scope] = {by_id[id(p)] for p in group}
        params = dict(template.named_parameters())
        signature = {n: tuple(n in decayed[s] for s in SCOPES) for n in names}
        order = sorted(names, key=lambda n: signature[n], reverse=True)  # stable: model order
        self._slots: dict[str, Slot] = {}
        # (start, stop, decayed under each scope) of every tensor, and of runs of tensors
        # decayed alike
        self._tensors: list[tuple[int, int, tuple[bool, ...]]] = []
        self._classes: list[tuple[int, int, tuple[bool, ...]]] = []
        # every tensor starts ALIGN floats apart, as its own allocation would: BLAS kernels
        # round differently at other alignments
        start, self._split = 0, []
        for name in order:
            numel = params[name].numel()
            self._slots[name] = Slot(name, tuple(params[name].shape), start, start + numel)
            sig = signature[name]
            self._tensors.append((start, start + numel, sig))
            if self._classes and self._classes[-1][2] == sig:
                self._classes[-1] = (self._classes[-1][0], start + numel, sig)
            else:
                self._classes.append((start, start + numel, sig))
            pad = -numel % ALIGN
            self._split += [numel, pad]
            start += numel + pad
        self.row_length = start  # zeros between the tensors, never trained
        self.num_params = sum(p.numel() for p in params.values())
        self._order = order

    def _row(self, model: Transformer) -> torch.Tensor:
        params = dict(model.named_parameters())
        row = torch.zeros(self.row_length)
        for name, slot in self._slots.items():
            row[slot.start : slot.stop] = params[name].detach().reshape(-1).cpu()
        return row

    def _chunks(self, t: torch.Tensor) -> list[torch.Tensor]:
        """The (K, numel) columns of each parameter in ``t`` (K, row_length), in flat order: one
        split, whose backward is one cat."""
        return list(t.split(self._split, dim=1)[::2])

    def _views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        K = flat.shape[0]
        chunks = self._chunks(flat)
        return {
            n: c.view(K, *self._slots[n].shape) for n, c in zip(self._order, chunks, strict=True)
        }

    @staticmethod
    def _member_loss(cfg: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """One member's loss, as Trainer installs it."""
        if (cfg.loss, cfg.loss_dtype) == ("cross_entropy", "float32"):
            return cross_entropy
        loss = remedies.loss_function(cfg.loss, cfg.loss_dtype, ignore_index=IGNORE)
        return lambda logits, y: loss(logits.flatten(0, 1), y.flatten())

    def _set_active(self, active: list[int]) -> None:
        """Everything per active member that follows from the configurations."""
        self.active = active
        cfgs = [self.cfgs[i] for i in active]
        dev = self.device
        f64 = {"dtype": torch.float64, "device": dev}
        self._lr = torch.tensor([c.lr for c in cfgs], **f64)
        warmup = self.cfgs[0].warmup_steps
        # Trainer's warm-up, in its arithmetic (Python floats)
        self._warmup_lr = torch.tensor([[_lr_at(c, s) for c in cfgs] for s in range(warmup)], **f64)
        self._class_wd = [
            torch.tensor(
                [c.weight_decay if sig[SCOPES.index(c.decay_scope)] else 0.0 for c in cfgs], **f64
            )
            for _, _, sig in self._classes
        ]
        self._class_decays = [
            any(c.weight_decay and sig[SCOPES.index(c.decay_scope)] for c in cfgs)
            for _, _, sig in self._classes
        ]
        self._dropout = (
            MemberDropout([c.dropout for c in cfgs], [self.dropout_rng[i] for i in active])
            if active and any(c.dropout > 0 for c in cfgs)
            else None
        )
        self._ortho_rows = self._rows_where(lambda c: c.orthogonal_grad)
        self._norm_rows = self._rows_where(lambda c: c.fixed_weight_norm)
        # Grokfast: exact, each member's own filter over its tensors (Trainer's); stacked, one
        # filter per distinct setting over a block of rows (elementwise: each member's own)
        groups: dict[tuple, list[int]] = {}
        for i in active:
            if self.cfgs[i].grad_filter != "none":
                groups.setdefault(self._filter_key(i), []).append(i)
        self._filter_groups = groups
        for key in list(self._filters):
            if key not in groups:
                del self._filters[key]
        for key in groups:
            if key not in self._filters:
                self._filters[key] = self._new_filter(self.cfgs[groups[key][0]])
        self._eval_cache: dict[str, _Stacked] = {}

    def _rows_where(self, pred: Callable[[TrainConfig], bool]) -> torch.Tensor | None:
        """Stack rows of the active members for which ``pred`` holds; None for all of them."""
        rows = [r for r, i in enumerate(self.active) if pred(self.cfgs[i])]
        if len(rows) == len(self.active):
            return None
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _filter_key(self, i: int) -> tuple:
        cfg = self.cfgs[i]
        if self.exact:
            return ("member", i)
        return (cfg.grad_filter, *(getattr(cfg, n) for n in FILTER_READS[cfg.grad_filter]))

    def _member_tensors(self, t: torch.Tensor, r: int) -> list[torch.Tensor]:
        """Row r of ``t`` (K, row_length) as that member's parameters: the model's order and
        shapes, what Trainer hands its remedies."""
        return [t[r, s.start : s.stop].view(s.shape) for s in map(self._slots.get, self._names)]

    @staticmethod
    def _new_filter(cfg: TrainConfig) -> remedies.GrokfastEMA | remedies.GrokfastMA:
        if cfg.grad_filter == "ema":
            return remedies.GrokfastEMA(cfg.grokfast_alpha, cfg.grokfast_lamb)
        return remedies.GrokfastMA(cfg.grokfast_window, cfg.grokfast_lamb)

    # --- the loop ---------------------------------------------------------------------------------
    @property
    def statuses(self) -> list[str]:
        return [str(e.status) for e in self.events]

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each active member's batch, the one Trainer would draw: (K, B, T) and (K, B, P)."""
        B = self.batch_size
        if self.infinite:
            xs, ys = [], []
            for i in self.active:
                batch, self.stream_counter[i] = self.tasks[i].stream(self.stream_counter[i], B)
                xs.append(batch.x)
                ys.append(batch.y)
            return torch.stack(xs).to(self.device), torch.stack(ys).to(self.device)
        rows = []
        for i in self.active:
            n, offset = len(self._train[i]), self._offsets[i]
            if n == B:  # Trainer trains on the whole set, in its order
                rows.append(torch.arange(offset, offset + n))
            else:
                rows.append(torch.randperm(n, generator=self.batch_rng[i])[:B] + offset)
        idx = torch.stack(rows)
        if self.device.type == "cuda":
            idx = idx.pin_memory()
        idx = idx.to(self.device, non_blocking=True)
        return self._train_x[idx], self._train_y[idx]

    def _train_step(self) -> None:
        x, y = self._batch()
        flat = self._flat
        K = flat.shape[0]
        size = min(self.chunk or K, K)
        grads = []
        for a in range(0, K, size):
            # a leaf over these members' rows: their gradient, apart from the weights
            rows = flat[a : a + size].requires_grad_(True)
            drop = self._dropout.rows(a, a + size) if self._dropout else None
            logits = self.forward(self._views(rows), x[a : a + size], drop)
            if size == 1:  # the loss of one run as Trainer takes it
                loss = self._member_loss_fn(logits[0], y[a])
            else:  # the sum's gradient is each member's own: a NaN stays in its member's row
                loss = self._loss_fn(logits, y[a : a + size]).sum()
            loss.backward()
            assert rows.grad is not None
            grads.append(rows.grad)
        grad = grads[0] if len(grads) == 1 else torch.cat(grads)
        with torch.no_grad():
            self._filter(grad)
            if any(self.cfgs[i].orthogonal_grad for i in self.active):
                self._orthogonalize(grad)
            self._adam(flat, grad)
            if any(self.cfgs[i].fixed_weight_norm for i in self.active):
                self._fix_norm(flat)
        self.step += 1

    def _filter(self, grad: torch.Tensor) -> None:
        row_of = {i: r for r, i in enumerate(self.active)}
        for key, members in self._filter_groups.items():
            apply = self._filters[key]
            if self.exact:
                apply([SimpleNamespace(grad=g) for g in self._member_tensors(grad, row_of[key[1]])])
            elif len(members) == len(self.active):
                apply([SimpleNamespace(grad=grad)])
            else:
                rows = torch.tensor([row_of[i] for i in members], device=self.device)
                sub = SimpleNamespace(grad=grad.index_select(0, rows))
                apply([sub])
                grad.index_copy_(0, rows, sub.grad)

    def _orthogonalize(self, grad: torch.Tensor) -> None:
        if self.exact:  # Trainer's own call on each member's tensors
            for r, i in enumerate(self.active):
                if self.cfgs[i].orthogonal_grad:
                    ws, gs = self._member_tensors(self._flat, r), self._member_tensors(grad, r)
                    remedies.orthogonalize_grads_(
                        SimpleNamespace(grad=g, detach=lambda w=w: w)
                        for w, g in zip(ws, gs, strict=True)
                    )
            return
        rows, w = self._ortho_rows, self._flat
        g = grad if rows is None else grad.index_select(0, rows)
        w = w if rows is None else w.index_select(0, rows)
        # per parameter tensor and member, as Trainer's ⊥Grad on each of its tensors
        slots = [
            SimpleNamespace(grad=gc, detach=lambda wc=wc: wc)
            for wc, gc in zip(self._chunks(w), self._chunks(g), strict=True)
        ]
        remedies.orthogonalize_grads_(slots, member_dim=0)
        if rows is not None:
            grad.index_copy_(0, rows, g)

    def _fix_norm(self, flat: torch.Tensor) -> None:
        if self.exact:  # Trainer's own call on each member's tensors: the same norm's rounding
            for r, i in enumerate(self.active):
                if self.cfgs[i].fixed_weight_norm:
                    remedies.fix_weight_norm_(self._member_tensors(flat, r), self._target_norm[r])
            return
        rows = self._norm_rows
        w = flat if rows is None else flat.index_select(0, rows)
        target = self._target_norm if rows is None else self._target_norm.index_select(0, rows)
        remedies.fix_weight_norm_(self._chunks(w), target, member_dim=0)
        if rows is not None:
            flat.index_copy_(0, rows, w)

    def _adam(self, p: torch.Tensor, g: torch.Tensor) -> None:
        """AdamW (or Adam with L2 decay): torch's fused step, per member and parameter group
        as Trainer's optimizer runs it when ``exact``, else all members at once."""
        self._adam_steps += 1
        if self.exact:
            self._adam_per_member(p, g)
        else:
            self._adam_stacked(p, g)

    def _adam_per_member(self, p: torch.Tensor, g: torch.Tensor) -> None:
        t, state = self._adam_steps, (p, g, self._exp_avg, self._exp_avg_sq)
        for r, i in enumerate(self.active):
            cfg = self.cfgs[i]
            scope = SCOPES.index(cfg.decay_scope)
            for decayed in (True, False):  # Trainer's two parameter groups
                spans = [(a, b) for a, b, sig in self._tensors if sig[scope] == decayed]
                if not spans:
                    continue
                p_, g_, m_, v_ = ([x[r, a:b] for a, b in spans] for x in state)
                functional_adam(
                    p_, g_, m_, v_, [], [torch.tensor(t - 1.0) for _ in spans],
                    fused=True, decoupled_weight_decay=cfg.optimizer == "adamw",
                    amsgrad=False, maximize=False, beta1=cfg.beta1, beta2=cfg.beta2,
                    lr=_lr_at(cfg, self.step), eps=cfg.adam_eps,
                    weight_decay=cfg.weight_decay if decayed else 0.0,
                )  # fmt: skip

    def _adam_stacked(self, p: torch.Tensor, g: torch.Tensor) -> None:
        """The fused kernel's formulas over the whole (K, n_params) buffer at once: a dozen
        launches for any K, each member's lr and decay a column."""
        cfg = self.cfgs[0]
        s, t = self.step, self._adam_steps
        lr = self._warmup_lr[s] if s < cfg.warmup_steps else self._lr
        bias1 = 1 - cfg.beta1**t
        bias2_sqrt = math.sqrt(1 - cfg.beta2**t)
        for (a, b, _), wd, decays in zip(
            self._classes, self._class_wd, self._class_decays, strict=True
        ):
            if not decays:
                continue
            if cfg.optimizer == "adamw":  # decoupled: p ← p·(1 − lr·wd)
                p[:, a:b].mul_((1 - lr * wd).float().unsqueeze(1))
            else:  # L2 in the gradient: g ← g + wd·p
                g[:, a:b].addcmul_(p[:, a:b], wd.float().unsqueeze(1))
        self._exp_avg.lerp_(g, 1 - cfg.beta1)
        self._exp_avg_sq.mul_(cfg.beta2).addcmul_(g, g, value=1 - cfg.beta2)
        denom = self._exp_avg_sq.sqrt().div_(bias2_sqrt).add_(cfg.adam_eps)
        step = (-(lr / bias1)).float().unsqueeze(1)
        p.add_(self._exp_avg.mul(step).div_(denom))

    def run(self, on_eval: OnEval | None = None) -> list[Record]:
        """Train until every member has ended (generalized-and-held, diverged, a stopping rule
        or the budget). ``on_eval(records, population)`` gets, at every evaluation, the records
        of the members evaluated there (member index -> record; a member's last record has its
        final status); the population is consistent then, so it may be saved. Returns each
        member's last record."""
        if self.step == 0 and not any(self.histories):
            records = self._evaluate(0.0)
            if on_eval:
                on_eval(records, self)
        cfg = self.cfgs[0]
        while self.active:
            t0 = time.perf_counter()
            until = min(self.step + cfg.eval_every - self.step % cfg.eval_every, cfg.steps)
            while self.step < until:
                self._train_step()
            records = self._evaluate(time.perf_counter() - t0)
            if on_eval:
                on_eval(records, self)
        return [h[-1] for h in self.histories]

    # --- evaluation -------------------------------------------------------------------------------
    def _eval_data(self, which: str) -> _Stacked:
        if which not in self._eval_cache:
            splits = self._train if which == "train" else self._val
            self._eval_cache[which] = _stack_splits([splits[i] for i in self.active], self.device)
        return self._eval_cache[which]

    def _logits(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The model on every member's rows, ``chunk`` members at a time."""
        K = x.shape[0]
        size = min(self.chunk or K, K)
        if size == K:
            return self.forward(params, x)
        return torch.cat(
            [
                self.forward({n: p[a : a + size] for n, p in params.items()}, x[a : a + size])
                for a in range(0, K, size)
            ]
        )

    @torch.inference_mode()
    def _split_metrics(
        self, params: dict[str, torch.Tensor], data: _Stacked, prefix: str, collapse: bool
    ) -> list[dict[str, float]]:
        """``metrics.evaluate`` for every active member at once, each on its own split: the
        same chunks of EVAL_CHUNK rows, the same sums, padding rows counted nowhere. When
        ``exact``, each member's sums run over its own rows alone, as the single run sums
        them; otherwise over the padded rows at once (the same up to rounding)."""
        K, N, P = data.y.shape
        n_rows = data.n.tolist()
        loss_sum = torch.zeros(K, P, dtype=torch.float64)
        correct, counted = torch.zeros_like(loss_sum), torch.zeros_like(loss_sum)
        rows_right = torch.zeros(K, dtype=torch.float64)
        collapsed, gap = torch.zeros_like(rows_right), torch.zeros_like(rows_right)
        for start in range(0, N, m.EVAL_CHUNK):
            x, y = data.x[:, start : start + m.EVAL_CHUNK], data.y[:, start : start + m.EVAL_CHUNK]
            logits = self._logits(params, x)  # (K, c, P, classes)
            valid = y != IGNORE
            losses = F.cross_entropy(
                logits.flatten(0, 2).float(), y.flatten(), ignore_index=IGNORE, reduction="none"
            ).view_as(y)
            right = (logits.argmax(dim=-1) == y) & valid
            real = torch.arange(start, start + y.shape[1], device=self.device) < data.n[:, None]
            correct += right.sum(dim=1).double().cpu()
            counted += valid.sum(dim=1).double().cpu()
            rows_right += ((right | ~valid).all(dim=2) & real).sum(dim=1).double().cpu()
            if self.exact:
                for k in range(K):
                    rows = slice(0, max(0, min(n_rows[k] - start, y.shape[1])))
                    loss_sum[k] += losses[k, rows].sum(dim=0).double().cpu()
                    if collapse:
                        chosen = logits[k, rows][valid[k, rows]]
                        collapsed[k] += remedies.softmax_collapse(chosen) * len(chosen)
                        if chosen.shape[-1] > 1:
                            gap[k] += remedies.logit_gap(chosen) * len(chosen)
            else:
                loss_sum += losses.sum(dim=1).double().cpu()
                if collapse:
                    flags, gaps = _collapsed_and_gaps(logits)
                    collapsed += (flags & valid).sum(dim=(1, 2)).double().cpu()
                    gap += torch.where(valid, gaps, 0.0).sum(dim=(1, 2)).cpu()
        out = []
        for k in range(K):
            total = float(counted[k].sum())
            rec = {
                f"{prefix}_acc": float(rows_right[k]) / n_rows[k]
                if self.layout.exact_match
                else float(correct[k].sum()) / total,
                f"{prefix}_loss": float(loss_sum[k].sum()) / total,
            }
            for j, name in enumerate(self.layout.position_names):
                n = float(counted[k, j]) or math.nan
                rec[m.position_metric(f"{prefix}_acc", name)] = float(correct[k, j]) / n
                rec[m.position_metric(f"{prefix}_loss", name)] = float(loss_sum[k, j]) / n
            if collapse:
                rec[m.SOFTMAX_COLLAPSE] = float(collapsed[k]) / total
                rec[m.LOGIT_GAP] = float(gap[k]) / total
            out.append(rec)
        return out

    def _member_module(self, params: dict[str, torch.Tensor], row: int) -> Transformer:
        """A Transformer whose parameters are views of one member's weights: what the task's
        measures read (built once, no copy per member)."""
        if self._shell is None:
            self._shell = self._build(self.cfgs[0]).to(self.device)
        for name, param in self._shell.named_parameters():
            param.data = params[name][row]
        return self._shell

    def _lr_record(self, i: int) -> float:
        """The lr of the member's last step, as Trainer reads it from its optimizer."""
        return self.cfgs[i].lr if self.step == 0 else _lr_at(self.cfgs[i], self.step - 1)

    def _evaluate(self, train_seconds: float) -> dict[int, Record]:
        t0 = time.perf_counter()
        flat = self._flat
        # weights that require grad, as a model's parameters do: F.linear picks its kernel by it
        params = self._views(flat.detach().requires_grad_(True))
        train = self._split_metrics(params, self._eval_data("train"), "train", collapse=True)
        val = self._split_metrics(params, self._eval_data("val"), "val", collapse=False)
        norms, measures = [], []
        with torch.no_grad():  # a member's norm and measures: on a module of its weights
            for r, i in enumerate(self.active):
                module = self._member_module(params, r)
                norms.append(m.weight_norm(module))
                measures.append(self.tasks[i].measures(module))
        self.elapsed_s += train_seconds + time.perf_counter() - t0
        records: dict[int, Record] = {}
        for r, i in enumerate(self.active):
            record: Record = {m.STEP: self.step, **train[r], **val[r], m.WEIGHT_NORM: norms[r]}
            record |= measures[r]
            record[m.LR] = self._lr_record(i)
            record[m.ELAPSED_S] = self.elapsed_s
            self.events[i].update(record)
            record |= self.events[i].outcome()
            self.histories[i].append(record)
            records[i] = record
        self._retire([i for i in self.active if self.events[i].status != m.Status.RUNNING])
        return records

    def _retire(self, done: list[int]) -> None:
        """Members that ended leave the stack; their final weights are kept."""
        if not done:
            return
        flat = self._flat
        for r, i in enumerate(self.active):
            if i in done:
                self._retired[i] = flat[r].clone()
        keep = [r for r, i in enumerate(self.active) if i not in done]
        rows = torch.tensor(keep, dtype=torch.long, device=self.device)
        for key, members in self._filter_groups.items():
            kept = [j for j, i in enumerate(members) if i not in done]
            if kept and len(kept) < len(members):
                f = self._filters[key]
                f.load_state_dict(
                    _slice_filter_state(f.state_dict(), torch.tensor(kept, device=self.device))
                )
        self._flat = flat.index_select(0, rows)
        self._exp_avg = self._exp_avg.index_select(0, rows)
        self._exp_avg_sq = self._exp_avg_sq.index_select(0, rows)
        self._target_norm = self._target_norm.index_select(0, rows)
        self._set_active([self.active[r] for r in keep])

    # --- members ----------------------------------------------------------------------------------
    def member_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Member i's weights, loadable into ``Transformer(model_config(cfg_i, layout))``."""
        row = self._retired[i]
        if row is None:
            row = self._flat[self.active.index(i)]
        return {
            n: row[self._slots[n].start : self._slots[n].stop].view(self._slots[n].shape).clone()
            for n in self._names
        }

    def member_model(self, i: int) -> Transformer:
        model = self._build(self.cfgs[i])
        model.load_state_dict(self.member_state_dict(i))
        return model.to(self.device)

    def history(self, i: int) -> list[Record]:
        return self.histories[i]

    def phases(self, i: int) -> Record:
        """Member i's largest phase changes and Nanda's phases, as ``Trainer.phases``."""
        h = self.histories[i]
        curve = {k: [r.get(k) for r in h] for k in h[0]} if h else {}
        found = run_phase_changes(curve, self.layout.position_names)
        return phase_outcome(found) | nanda_phases(curve)

    def summary(self, i: int) -> Record:
        """``Trainer.summary`` for member i, and the population's size."""
        cfg = self.cfgs[i]
        sig = SCOPES.index(cfg.decay_scope)
        decayed = sum(b - a for a, b, s in self._tensors if s[sig])  # as Trainer counts them
        return {
            "effective_batch_size": self.batch_size,
            "num_params": self.num_params,
            "decayed_params": decayed,
            "train_examples": None if self.infinite else len(self._train[i]),
            "val_examples": len(self._val[i]),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "population_size": len(self.cfgs),
        }

    # --- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A copy of the whole state (weights, optimizer and filter states, every member's
        generators and stream counter, events and histories)."""
        cuda = self.device.type == "cuda"
        return {
            "configs": [c.model_dump() for c in self.cfgs],
            "active": list(self.active),
            "flat": self._flat.clone(),
            "exp_avg": self._exp_avg.clone(),
            "exp_avg_sq": self._exp_avg_sq.clone(),
            "adam_steps": self._adam_steps,
            "target_norm": self._target_norm.clone(),
            "filters": [
                {"members": list(members), "state": _clone(self._filters[key].state_dict())}
                for key, members in self._filter_groups.items()
            ],
            "retired": [None if t is None else t.clone() for t in self._retired],
            "batch_rng": [g.get_state() for g in self.batch_rng],
            "dropout_rng": [g.get_state() for g in self.dropout_rng],
            "cuda_rng": torch.cuda.get_rng_state_all() if cuda else [],
            "stream_counter": list(self.stream_counter),
            "step": self.step,
            "histories": [list(h) for h in self.histories],
            "events": [e.state_dict() for e in self.events],
            "elapsed_s": self.elapsed_s,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = [c.model_dump() for c in self.cfgs]
        theirs = state["configs"]
        if theirs != mine:
            if len(theirs) != len(mine):
                raise ValueError(
                    f"checkpoint holds {len(theirs)} members, this population {len(mine)}"
                )
            differ = [
                f"member {i}: {k} {t.get(k)!r} there, {v!r} here"
                for i, (t, me) in enumerate(zip(theirs, mine, strict=True))
                for k, v in me.items()
                if t.get(k) != v
            ]
            raise ValueError(
                "checkpoint was written by a population with a different configuration: "
                + ", ".join(differ)
            )
        dev = self.device
        self._flat = state["flat"].to(dev).clone()
        self._exp_avg = state["exp_avg"].to(dev).clone()
        self._exp_avg_sq = state["exp_avg_sq"].to(dev).clone()
        self._adam_steps = state["adam_steps"]
        self._target_norm = state["target_norm"].to(dev).clone()
        self._retired = [None if t is None else t.to(dev).clone() for t in state["retired"]]
        self._filters = {}
        self._set_active(list(state["active"]))
        for saved in state["filters"]:
            key = self._filter_key(saved["members"][0])
            if self._filter_groups.get(key) != list(saved["members"]):
                raise ValueError("checkpoint's filter groups do not match its members")
            self._filters[key].load_state_dict(saved["state"])
        # generator states are CPU byte tensors, wherever map_location put them
        for g, s in zip(self.batch_rng, state["batch_rng"], strict=True):
            g.set_state(s.cpu())
        for g, s in zip(self.dropout_rng, state["dropout_rng"], strict=True):
            g.set_state(s.cpu())
        if state["cuda_rng"] and dev.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        self.stream_counter = list(state["stream_counter"])
        self.step = state["step"]
        self.histories = [list(h) for h in state["histories"]]
        for e, s in zip(self.events, state["events"], strict=True):
            e.load_state_dict(s)
        self.elapsed_s = state["elapsed_s"]

    def save(self, path: str | os.PathLike) -> None:
        save_atomically(self.state_dict(), path)

    def load(self, path: str | os.PathLike) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))


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
