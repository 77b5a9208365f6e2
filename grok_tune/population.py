"""The training run, once: K ≥ 1 members trained together; a single run is a population of one.

``Population(cfgs).run(on_eval)`` is the one loop: the one-trial CLI (``Trainer``, a population
of one), Ray Tune's trainable, packed studies and the tests all drive it. It owns what every
run has whatever computes its steps: the data and each member's batch stream, the evaluation
schedule (every ``eval_every`` steps and at the budget), the records, the event rules of
grok_tune/events.py (which end a member), the phases, the summary and the checkpoint. It knows
nothing of Ray: ``run(on_eval)`` hands every evaluation's records to the caller.

The steps themselves run on one of two paths, two ways to run the same model:

- per member (the default on CPU, for a single run, and wherever the stacked path lacks a
  setting): each member its own ``Member`` (grok_tune/member.py: an ``nn.Module``, a fused
  AdamW, the remedies at the loop's seams), stepped one after another. A member is then bit
  for bit the run alone, dropout included (its masks come from its own generator state).
- stacked (the default for K > 1 on a GPU): every member's weights a row of one buffer, one
  forward and backward pass of the model with a member axis (grok_tune/model.py) and one
  optimizer step for all (grok_tune/stacked.py). The same function, rounded differently;
  dropout masks from each member's own generator.

Members share what fixes the shapes and the schedule (``packing.SHARED``) and the effective batch
size; they may differ in everything else a study varies (``packing.MAY_DIFFER``): seed, lr,
weight decay, dropout, the remedies, the stopping rules, ...

Stopping. Events are read at evaluations, so a member that has generalized and held, diverged
or been called confused stops there: nothing of it changes afterwards. The population ends
with its last member; ``elapsed_s`` is the population's wall-clock time.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from grok_tune import metrics as m
from grok_tune.config import TrainConfig
from grok_tune.events import RunEvents, StoppingRule, phase_outcome, run_phase_changes
from grok_tune.member import Member, Record, initial_model, save_atomically
from grok_tune.model import Model
from grok_tune.packing import (
    check_population,
    effective_batch_size,
    training_examples,
    why_not_stacked,
)
from grok_tune.progress import nanda_phases
from grok_tune.stacked import Stack
from grok_tune.tasks import Split, make_task

OnEval = Callable[[dict[int, Record], "Population"], None]


class EachMember:
    """The per-member path: each member's own model and optimizer, one after another."""

    def __init__(self, pop: Population, models: Sequence[Model]) -> None:
        self.pop = pop
        self.members = [
            Member(cfg, pop.layout, pop.device, model)
            for cfg, model in zip(pop.cfgs, models, strict=True)
        ]
        self.num_params = self.members[0].model.num_params()

    def train_step(self, step: int) -> None:
        for i in self.pop.active:
            self.members[i].train_step(step, self.pop.batch(i))

    def evaluate(self, step: int) -> list[Record]:
        pop, out = self.pop, []
        for i in pop.active:
            member, layout = self.members[i], pop.layout
            record = m.evaluate(member.model, pop.train[i], layout, "train", collapse=True)
            record |= m.evaluate(member.model, pop.val[i], layout, "val")
            record[m.WEIGHT_NORM] = m.weight_norm(member.model)
            record |= pop.tasks[i].measures(member.model)
            record[m.LR] = member.lr
            out.append(record)
        return out

    def retire(self, done: list[int]) -> None:
        """Nothing to free: a member that ended is simply no longer stepped."""

    def decayed_params(self, i: int) -> int:
        return self.members[i].decayed_params

    def member_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.members[i].model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"members": [member.state_dict() for member in self.members]}

    def load_state_dict(
        self, state: dict[str, Any], weights: list[dict[str, torch.Tensor]], active: list[int]
    ) -> None:
        for member, saved, w in zip(self.members, state["members"], weights, strict=True):
            member.load_state_dict(saved, w)


class Population:
    """K runs trained together; ``state_dict``/``load_state_dict`` resume them bit for bit.

    ``cfgs`` must pass ``packing.check_population``; member i is ``cfgs[i]`` in every method
    and record. ``models``, if given, are the members' initial models (copied); by default each
    is built under its member's seed. ``stacked`` picks the path (default: stacked on a GPU
    for two members or more that can be stacked, else per member); ``chunk`` is how many members the
    stacked path runs in one pass (default: all).
    """

    def __init__(
        self,
        cfgs: Sequence[TrainConfig],
        device: str | torch.device = "cpu",
        models: Sequence[Model] | None = None,
        stacked: bool | None = None,
        chunk: int | None = None,
    ) -> None:
        check_population(cfgs)
        self.cfgs = list(cfgs)
        self.device = torch.device(device)
        why = why_not_stacked(self.cfgs)
        if stacked and why:
            raise ValueError(f"the stacked path cannot run these members: {why}")
        if stacked is None:
            # a few small launches per member and step: cheap on CPU, not on a GPU; a single
            # run keeps its own model there too (torch's fused AdamW, the module's kernels)
            stacked = self.device.type == "cuda" and len(self.cfgs) > 1 and why is None
        self.stacked = stacked
        cfg0 = self.cfgs[0]
        self.tasks = [make_task(cfg) for cfg in self.cfgs]
        self.layout = self.tasks[0].layout
        self.infinite = self.tasks[0].infinite
        self.batch_size = effective_batch_size(cfg0)
        # finite data: the training sets; infinite: fixed probes of the streams to measure on
        self.train: list[Split] = [t.training.to(self.device) for t in self.tasks]
        self.val: list[Split] = [t.validation.to(self.device) for t in self.tasks]
        for cfg, split in zip(self.cfgs, self.train, strict=True):
            if not self.infinite and len(split) != training_examples(cfg):
                raise RuntimeError(
                    f"training_examples disagrees with task {cfg.task}: "
                    f"{training_examples(cfg)} against {len(split)} examples"
                )
        if models is None:
            models = [initial_model(cfg, self.layout)[0] for cfg in self.cfgs]
        elif len(models) != len(self.cfgs):
            raise ValueError(f"{len(models)} models for {len(self.cfgs)} configurations")
        else:
            models = [copy.deepcopy(model) for model in models]
        # each member's batches: its own generator (finite data) or stream counter (infinite)
        self.batch_rng = [torch.Generator().manual_seed(cfg.seed) for cfg in self.cfgs]
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
        self.active = list(range(len(self.cfgs)))
        self.path: EachMember | Stack = (
            Stack(self, models, chunk) if stacked else EachMember(self, models)
        )

    def __len__(self) -> int:
        return len(self.cfgs)

    @property
    def statuses(self) -> list[str]:
        return [str(e.status) for e in self.events]

    # --- batches ----------------------------------------------------------------------------------
    def batch_rows(self, i: int) -> torch.Tensor | None:
        """Member i's next training rows (CPU indices); None: the whole set, in its order."""
        n = len(self.train[i])
        if n == self.batch_size:
            return None
        return torch.randperm(n, generator=self.batch_rng[i])[: self.batch_size]

    def stream_batch(self, i: int) -> Split:
        """Member i's next batch of fresh examples (infinite data)."""
        counter = self.stream_counter[i]
        batch, self.stream_counter[i] = self.tasks[i].stream(counter, self.batch_size)
        return batch

    def batch(self, i: int) -> Split:
        """Member i's next batch, on the device."""
        if self.infinite:
            return self.stream_batch(i).to(self.device)
        rows = self.batch_rows(i)
        if rows is None:
            return self.train[i]
        return self.train[i].rows(rows.to(self.device, non_blocking=True))

    # --- the loop ---------------------------------------------------------------------------------
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
        every, budget = self.cfgs[0].eval_every, self.cfgs[0].steps
        while self.active:
            t0 = time.perf_counter()
            until = min(self.step + every - self.step % every, budget)
            while self.step < until:
                self.path.train_step(self.step)
                self.step += 1
            records = self._evaluate(time.perf_counter() - t0)
            if on_eval:
                on_eval(records, self)
        return [h[-1] for h in self.histories]

    def _evaluate(self, train_seconds: float) -> dict[int, Record]:
        t0 = time.perf_counter()
        measured = self.path.evaluate(self.step)
        self.elapsed_s += train_seconds + time.perf_counter() - t0
        records: dict[int, Record] = {}
        for i, measures in zip(self.active, measured, strict=True):
            record: Record = {m.STEP: self.step, **measures, m.ELAPSED_S: self.elapsed_s}
            self.events[i].update(record)
            record |= self.events[i].outcome()
            self.histories[i].append(record)
            records[i] = record
        done = [i for i in self.active if self.events[i].status != m.Status.RUNNING]
        if done:
            self.path.retire(done)
            self.active = [i for i in self.active if i not in done]
        return records

    # --- members ----------------------------------------------------------------------------------
    def member_state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Member i's weights, loadable into its model (``member.initial_model``)."""
        return self.path.member_state_dict(i)

    def member_model(self, i: int) -> Model:
        """Member i's model as it is now (a copy)."""
        model, _ = initial_model(self.cfgs[i], self.layout)
        model.load_state_dict(self.member_state_dict(i))
        return model.to(self.device)

    def history(self, i: int) -> list[Record]:
        return self.histories[i]

    def phases(self, i: int) -> Record:
        """Member i's largest phase changes of the training and validation loss so far, and
        where Nanda's three phases ended (grok_tune/progress.py)."""
        h = self.histories[i]
        curve = {k: [r.get(k) for r in h] for k in h[0]} if h else {}
        found = run_phase_changes(curve, self.layout.position_names)
        return phase_outcome(found) | nanda_phases(curve)

    def summary(self, i: int) -> Record:
        """Facts of member i's run that are not curves: recorded with its outcome."""
        return {
            "effective_batch_size": self.batch_size,
            "num_params": self.path.num_params,
            "decayed_params": self.path.decayed_params(i),
            "train_examples": None if self.infinite else len(self.train[i]),
            "val_examples": len(self.val[i]),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "population_size": len(self.cfgs),
        }

    # --- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A copy of the whole state: every member's weights (as its model's ``state_dict``,
        whichever path trains it), the path's optimizer and remedy states, every member's batch
        generator and stream counter, events and history."""
        return {
            "configs": [c.model_dump() for c in self.cfgs],
            "models": [self.member_state_dict(i) for i in range(len(self.cfgs))],
            "stacked": self.stacked,
            "path": self.path.state_dict(),
            "active": list(self.active),
            "batch_rng": [g.get_state() for g in self.batch_rng],
            "stream_counter": list(self.stream_counter),
            "step": self.step,
            "histories": [list(h) for h in self.histories],
            "events": [e.state_dict() for e in self.events],
            "elapsed_s": self.elapsed_s,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "config" in state:  # a single run's checkpoint from before the one engine
            state = _from_trainer_state(state, self.device)
        elif "flat" in state:
            raise ValueError(
                "checkpoint was written by a packed trial of grok_tune before its one engine "
                "(2026-12-06): resume it with the version that started the study"
            )
        mine = [c.model_dump() for c in self.cfgs]
        # a setting added since the checkpoint was written is there at its default (which
        # is the behaviour of the code that wrote it)
        defaults = {k: f.default for k, f in TrainConfig.model_fields.items()}
        theirs = [{**defaults, **t} for t in state["configs"]]
        if theirs != mine:
            if len(theirs) != len(mine):
                raise ValueError(
                    f"checkpoint holds {len(theirs)} runs, this population {len(mine)}"
                )
            who = [f"member {i}: " if len(mine) > 1 else "" for i in range(len(mine))]
            differ = [
                f"{who[i]}{k} {t.get(k)!r} there, {v!r} here"
                for i, (t, me) in enumerate(zip(theirs, mine, strict=True))
                for k, v in me.items()
                if t.get(k) != v
            ]
            raise ValueError(
                "checkpoint was written by a run with a different configuration: "
                + ", ".join(differ)
            )
        if state["stacked"] != self.stacked:
            path = "the stacked path" if state["stacked"] else "the per-member path"
            raise ValueError(f"checkpoint was written on {path}: resume it there")
        self.active = [] if state["active"] is None else list(state["active"])
        for e, s in zip(self.events, state["events"], strict=True):
            e.load_state_dict(s)
        if state["active"] is None:  # an old checkpoint's: the members whose events go on
            self.active = [i for i, e in enumerate(self.events) if e.status == m.Status.RUNNING]
        self.path.load_state_dict(state["path"], state["models"], self.active)
        # generator states are CPU byte tensors, wherever map_location put them
        for g, s in zip(self.batch_rng, state["batch_rng"], strict=True):
            g.set_state(s.cpu())
        self.stream_counter = list(state["stream_counter"])
        self.step = state["step"]
        self.histories = [list(h) for h in state["histories"]]
        self.elapsed_s = state["elapsed_s"]

    def save(self, path: str | os.PathLike) -> None:
        save_atomically(self.state_dict(), path)

    def load(self, path: str | os.PathLike) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))


def _from_trainer_state(old: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A single run's checkpoint as ``Trainer`` wrote it before the one engine (2026-12-06),
    in today's form: a study started with that version resumes with this one, bit for bit (its
    dropout masks continue from the generator state it saved)."""
    cuda = old.get("cuda_rng") or []
    member = {
        "optimizer": old["optimizer"],
        "hooks": old["hooks"],
        "rng": old["torch_rng"],
        "cuda_rng": cuda[device.index or 0] if cuda and device.type == "cuda" else None,
    }
    return {
        "configs": [old["config"]],
        "models": [old["model"]],
        "stacked": False,
        "path": {"members": [member]},
        "active": None,  # from the events, once loaded
        "batch_rng": [old["batch_rng"]],
        "stream_counter": [old["stream_counter"]],
        "step": old["step"],
        "histories": [old["history"]],
        "events": [old["events"]],
        "elapsed_s": old["elapsed_s"],
    }
