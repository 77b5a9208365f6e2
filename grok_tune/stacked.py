"""The stacked path: K members as one model whose weights carry a leading member axis.

A grokking run is tiny: on a GPU one run is bound by kernel launches, not arithmetic. ``Stack``
holds each member's weights as a row of one ``(K, row_length)`` buffer: every matrix product a
batched one (``torch.baddbmm``), attention one call over K·B rows, the optimizer a dozen
elementwise ops over the whole buffer; one stream of launches drives K runs. It is one of the
two ways ``Population`` (grok_tune/population.py) runs its members; the other steps each
member's own model (grok_tune/member.py). The loop, the evaluation schedule, the records, the
events and the checkpoints are the population's, whichever path runs.

It runs the model itself (grok_tune/model.py), whose modules take weights with a member axis:
``torch.func.functional_call`` with the stack's (K, ...) views. It rounds differently from the
per-member path (batched kernels): agreement to 1e-4 is tested on CPU; training amplifies
rounding slowly, as it does a change of thread count. It runs members under one lr each
(``packing.why_not_stacked`` says what else it does not know); a population that needs more
runs on the per-member path.

Dropout: each member draws its masks from its own generator (``MemberDropout``), so a member
does not depend on who else is in its population; the masks are not those the model draws
from torch's generator, so runs with dropout match the per-member path in distribution only.
In a population where any member has dropout, every member runs the dropout path (no shared
prefix, attention as plain matmuls).

A member that ended leaves the stack at that evaluation: nothing of it changes afterwards (no
step, no decay, no filter state) and it costs nothing. Its final weights are kept.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, get_args

import torch
import torch.nn.functional as F

from grok_tune import metrics as m
from grok_tune.config import DecayScope, TrainConfig
from grok_tune.member import Record, loss_function, lr_at
from grok_tune.model import Model, per_member
from grok_tune.remedies import REMEDIES
from grok_tune.tasks import IGNORE, Split
from grok_tune.tasks.streams import stream_key

if TYPE_CHECKING:
    from grok_tune.population import Population

SCOPES: tuple[str, ...] = get_args(DecayScope)
ALIGN = 16  # floats: 64 bytes, the alignment of torch's CPU allocations


# --- the stacked model ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Slot:
    """Where one of the model's parameters lies in a member's row of the flat buffer."""

    name: str
    shape: tuple[int, ...]
    start: int
    stop: int


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
        keep = u >= per_member(self.rates, x.dim())
        return x * keep * per_member(self.scales, x.dim())


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
    """Per row, ``metrics.softmax_collapse``'s test (float32 Σ exp(z − max z) == 1) and
    ``metrics.logit_gap``'s top-two difference (float64): those measures before their mean,
    so that each member's rows are counted apart."""
    z = logits.detach().float()
    collapsed = torch.exp(z - z.amax(dim=-1, keepdim=True)).sum(dim=-1) == 1
    if z.shape[-1] < 2:
        return collapsed, torch.zeros(z.shape[:-1], dtype=torch.float64, device=z.device)
    top = z.topk(2, dim=-1).values
    return collapsed, (top[..., 0] - top[..., 1]).double()


class StackedPart(Protocol):
    """A remedy's part of the stacked path (its registry entry names the class): built with the
    stack and the members' initial models; told which members are active (``set_active``:
    at the start, after members leave, after a load); called at its seam with the (K, row)
    gradient and weights of the active members, changing them in place; told which members
    leave before they do (``retire``); its state saved with the population."""

    def set_active(self, active: list[int]) -> None: ...
    def __call__(self, grad: torch.Tensor, flat: torch.Tensor) -> None: ...
    def retire(self, done: list[int]) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# --- the stacked members --------------------------------------------------------------------------
class Stack:
    """The members of ``pop`` as one stacked model, their AdamW and remedies over the stack.

    ``models`` are the members' initial models; ``chunk`` is how many members share one forward
    and backward pass (default: all of them).
    """

    def __init__(self, pop: Population, models: Sequence[Model], chunk: int | None) -> None:
        self.pop = pop
        self.cfgs, self.device = pop.cfgs, pop.device
        self.chunk = chunk
        cfg0 = self.cfgs[0]
        # finite data: the training sets, one tensor with each member's offset
        self._offsets = [0]
        for split in pop.train:
            self._offsets.append(self._offsets[-1] + len(split))
        self._train_x = torch.cat([s.x for s in pop.train]).to(self.device)
        self._train_y = torch.cat([s.y for s in pop.train]).to(self.device)
        # the members' model, run with every member's weights at once (a leading member axis:
        # grok_tune/model.py), and as one member for the task's measures (_member_module)
        self._model: Model = copy.deepcopy(models[0]).eval()
        self._layout_params(self._model)
        self._flat = torch.stack([self._row(model) for model in models]).to(self.device)
        self._exp_avg = torch.zeros_like(self._flat)
        self._exp_avg_sq = torch.zeros_like(self._flat)
        self._adam_steps = 0
        self._retired: list[torch.Tensor | None] = [None] * len(self.cfgs)
        # dropout's own stream per member, apart from the batch stream of the same seed
        self.dropout_rng = [
            torch.Generator(device=self.device).manual_seed(stream_key(c.seed, "dropout") >> 1)
            for c in self.cfgs
        ]
        self._member_loss_fn = loss_function(cfg0)
        self._loss_fn = torch.func.vmap(self._member_loss_fn)
        # the remedies some member uses, each its part of the stacked path, in the registry's
        # order (grok_tune/remedies/); members that do not use one are rows it leaves alone
        self.parts: list[tuple[str, StackedPart]] = [
            (remedy.seam, remedy.attach("stacked")(self, models))
            for remedy in REMEDIES
            if remedy.seam != "loss" and any(remedy.on(c) for c in self.cfgs)
        ]
        self._set_active(list(range(len(self.cfgs))))

    # --- building ---------------------------------------------------------------------------------
    def _layout_params(self, template: Model) -> None:
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

    def decayed_params(self, i: int) -> int:
        """The parameters weight decay touches in member i, as its optimizer counts them."""
        sig = SCOPES.index(self.cfgs[i].decay_scope)
        return sum(b - a for a, b, s in self._tensors if s[sig])

    def _row(self, model: Model | dict[str, torch.Tensor]) -> torch.Tensor:
        """A member's weights (its model, or the model's state dict) as a row of the buffer."""
        params = model if isinstance(model, dict) else dict(model.named_parameters())
        row = torch.zeros(self.row_length)
        for name, slot in self._slots.items():
            row[slot.start : slot.stop] = params[name].detach().reshape(-1).cpu()
        return row

    def chunks(self, t: torch.Tensor) -> list[torch.Tensor]:
        """The (K, numel) columns of each parameter in ``t`` (K, row_length), in flat order: one
        split, whose backward is one cat."""
        return list(t.split(self._split, dim=1)[::2])

    def _views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        K = flat.shape[0]
        chunks = self.chunks(flat)
        return {
            n: c.view(K, *self._slots[n].shape) for n, c in zip(self._order, chunks, strict=True)
        }

    def _set_active(self, active: list[int]) -> None:
        """Everything per active member that follows from the configurations."""
        self.active = active
        cfgs = [self.cfgs[i] for i in active]
        dev = self.device
        f64 = {"dtype": torch.float64, "device": dev}
        self._lr = torch.tensor([c.lr for c in cfgs], **f64)
        warmup = self.cfgs[0].warmup_steps
        # the warm-up in the per-member path's arithmetic (Python floats)
        self._warmup_lr = torch.tensor([[lr_at(c, s) for c in cfgs] for s in range(warmup)], **f64)
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
        self._eval_cache: dict[str, _Stacked] = {}
        for _, part in self.parts:
            part.set_active(active)

    def rows_where(self, pred: Callable[[TrainConfig], bool]) -> torch.Tensor | None:
        """Stack rows of the active members for which ``pred`` holds; None for all of them."""
        rows = [r for r, i in enumerate(self.active) if pred(self.cfgs[i])]
        if len(rows) == len(self.active):
            return None
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    # --- a step -----------------------------------------------------------------------------------
    def forward(
        self, params: dict[str, torch.Tensor], idx: torch.Tensor, drop: MemberDropout | None = None
    ) -> torch.Tensor:
        """The model on (K, B, T) tokens with K members' weights (name -> (K, *shape)): (K, B,
        n_predict, classes)."""
        # no tied weights (every parameter its own slot): skipping the search for them halves
        # the call's cost, 130 -> 70 µs of Python per pass on this project's CPU
        return torch.func.functional_call(
            self._model, params, (idx,), {"drop": drop}, tie_weights=False
        )

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each active member's batch, the one it would draw alone: (K, B, T) and (K, B, P)."""
        pop = self.pop
        if pop.infinite:
            batches = [pop.stream_batch(i) for i in self.active]
            xs, ys = [b.x for b in batches], [b.y for b in batches]
            return torch.stack(xs).to(self.device), torch.stack(ys).to(self.device)
        rows = []
        for i in self.active:
            drawn, offset = pop.batch_rows(i), self._offsets[i]
            if drawn is None:  # the whole set, in its order
                rows.append(torch.arange(offset, offset + len(pop.train[i])))
            else:
                rows.append(drawn + offset)
        idx = torch.stack(rows)
        if self.device.type == "cuda":
            idx = idx.pin_memory()
        idx = idx.to(self.device, non_blocking=True)
        return self._train_x[idx], self._train_y[idx]

    def train_step(self, step: int) -> None:
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
            if size == 1:  # the loss of one run as the per-member path takes it
                loss = self._member_loss_fn(logits[0], y[a])
            else:  # the sum's gradient is each member's own: a NaN stays in its member's row
                loss = self._loss_fn(logits, y[a : a + size]).sum()
            loss.backward()
            assert rows.grad is not None
            grads.append(rows.grad)
        grad = grads[0] if len(grads) == 1 else torch.cat(grads)
        with torch.no_grad():
            for seam, part in self.parts:
                if seam == "grad":
                    part(grad, flat)
            self._adam(step, flat, grad)
            for seam, part in self.parts:
                if seam == "step":
                    part(grad, flat)

    def _adam(self, step: int, p: torch.Tensor, g: torch.Tensor) -> None:
        """The fused AdamW kernel's formulas (or Adam with L2 decay) over the whole (K, n_params)
        buffer at once: a dozen launches for any K, each member's lr and decay a column."""
        self._adam_steps += 1
        cfg = self.cfgs[0]
        t = self._adam_steps
        lr = self._warmup_lr[step] if step < cfg.warmup_steps else self._lr
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
        step_size = (-(lr / bias1)).float().unsqueeze(1)
        p.add_(self._exp_avg.mul(step_size).div_(denom))

    # --- evaluation -------------------------------------------------------------------------------
    def _eval_data(self, which: str) -> _Stacked:
        if which not in self._eval_cache:
            splits = self.pop.train if which == "train" else self.pop.val
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
        same chunks of EVAL_CHUNK rows, the same sums over the padded rows at once (the same
        up to rounding), padding rows counted nowhere."""
        layout = self.pop.layout
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
                if layout.exact_match
                else float(correct[k].sum()) / total,
                f"{prefix}_loss": float(loss_sum[k].sum()) / total,
            }
            for j, name in enumerate(layout.position_names):
                n = float(counted[k, j]) or math.nan
                rec[m.position_metric(f"{prefix}_acc", name)] = float(correct[k, j]) / n
                rec[m.position_metric(f"{prefix}_loss", name)] = float(loss_sum[k, j]) / n
            if collapse:
                rec[m.SOFTMAX_COLLAPSE] = float(collapsed[k]) / total
                rec[m.LOGIT_GAP] = float(gap[k]) / total
            out.append(rec)
        return out

    def _member_module(self, params: dict[str, torch.Tensor], row: int) -> Model:
        """The model with one member's weights (views, no copy): what the task's measures
        read."""
        for name, param in self._model.named_parameters():
            param.data = params[name][row]
        return self._model

    def evaluate(self, step: int) -> list[Record]:
        """Each active member's measures of both splits, weight norm, task measures and lr."""
        # weights that require grad, as a model's parameters do: F.linear picks its kernel by it
        params = self._views(self._flat.detach().requires_grad_(True))
        train = self._split_metrics(params, self._eval_data("train"), "train", collapse=True)
        val = self._split_metrics(params, self._eval_data("val"), "val", collapse=False)
        out = []
        with torch.no_grad():  # a member's norm and measures: on a module of its weights
            for r, i in enumerate(self.active):
                module = self._member_module(params, r)
                record: Record = {**train[r], **val[r], m.WEIGHT_NORM: m.weight_norm(module)}
                record |= self.pop.tasks[i].measures(module)
                # the lr of the member's last step, as its optimizer would show it
                record[m.LR] = self.cfgs[i].lr if step == 0 else lr_at(self.cfgs[i], step - 1)
                out.append(record)
        return out

    def retire(self, done: list[int]) -> None:
        """Members that ended leave the stack; their final weights are kept."""
        flat = self._flat
        for r, i in enumerate(self.active):
            if i in done:
                self._retired[i] = flat[r].clone()
        keep = [r for r, i in enumerate(self.active) if i not in done]
        rows = torch.tensor(keep, dtype=torch.long, device=self.device)
        for _, part in self.parts:
            part.retire(done)
        self._flat = flat.index_select(0, rows)
        self._exp_avg = self._exp_avg.index_select(0, rows)
        self._exp_avg_sq = self._exp_avg_sq.index_select(0, rows)
        self._set_active([self.active[r] for r in keep])

    # --- members ----------------------------------------------------------------------------------
    def member_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Member i's weights, loadable into its model (``member.initial_model``)."""
        row = self._retired[i]
        if row is None:
            row = self._flat[self.active.index(i)]
        return {
            n: row[self._slots[n].start : self._slots[n].stop].view(self._slots[n].shape).clone()
            for n in self._names
        }

    # --- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights (the population saves each member's as its model's)."""
        return {
            "active": list(self.active),
            "exp_avg": self._exp_avg.clone(),
            "exp_avg_sq": self._exp_avg_sq.clone(),
            "adam_steps": self._adam_steps,
            "remedies": [part.state_dict() for _, part in self.parts],
            "dropout_rng": [g.get_state() for g in self.dropout_rng],
        }

    def load_state_dict(
        self, state: dict[str, Any], weights: list[dict[str, torch.Tensor]], active: list[int]
    ) -> None:
        dev = self.device
        if list(state["active"]) != active:
            raise ValueError("checkpoint's stacked members do not match its active members")
        rows = [self._row(w).to(dev) for w in weights]
        self._flat = torch.stack([rows[i] for i in active]) if active else self._flat[:0]
        self._retired = [None if i in active else rows[i] for i in range(len(rows))]
        self._exp_avg = state["exp_avg"].to(dev).clone()
        self._exp_avg_sq = state["exp_avg_sq"].to(dev).clone()
        self._adam_steps = state["adam_steps"]
        self._set_active(list(state["active"]))
        for (_, part), saved in zip(self.parts, state["remedies"], strict=True):
            part.load_state_dict(saved)
        # generator states are CPU byte tensors, wherever map_location put them
        for g, s in zip(self.dropout_rng, state["dropout_rng"], strict=True):
            g.set_state(s.cpu())
