"""The Ray Tune trainable: a plain function of a config dict that reports dicts.

It drives the engine (grok_tune/population.py): a single trial as ``Trainer``, a population of
one whose records are flat (what Tune's searchers read), a packed trial as a ``Population`` of
its pack. Every evaluation goes to ``tune.report`` (and to the trial's TensorBoard files), a
checkpoint every ``checkpoint_every`` steps and at the end, and a restarted trial continues
from ``tune.get_checkpoint()`` bit-for-bit.
"""

from __future__ import annotations

import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import tune

from grok_tune import metrics as m
from grok_tune.config import MEMBERS, PACK, TrainConfig, flat_settings
from grok_tune.naming import differing_settings, member_dir
from grok_tune.study_files import LEGACY_STATE_FILE, STATE_FILE

if TYPE_CHECKING:
    from grok_tune.population import Population
    from grok_tune.train import Trainer


def _device() -> str:
    """The trial's device, and its threads: what Ray gave it."""
    import torch

    resources = tune.get_context().get_trial_resources().required_resources
    # one intra-op thread per CPU Ray gave the trial: two trials on two cores beat one on both
    torch.set_num_threads(max(1, int(resources.get("CPU", 1))))
    # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU, so "cuda" is the one it assigned
    return "cuda" if resources.get("GPU", 0) > 0 and torch.cuda.is_available() else "cpu"


def _where(device: str) -> dict[str, Any]:
    import torch

    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "node": platform.node(),
        "node_id": ray.get_runtime_context().get_node_id(),
    }


def _report(metrics: dict[str, Any], save: Callable[[Path], None] | None) -> None:
    """tune.report, with a checkpoint written by ``save`` into a folder when given."""
    if save is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        save(Path(d) / STATE_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def _restore(load: Callable[[Path], None]) -> bool:
    """Load the trial's Tune checkpoint, if it has one (a resumed or retried trial)."""
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            path = Path(d) / STATE_FILE
            if not path.exists() and (Path(d) / LEGACY_STATE_FILE).exists():
                path = Path(d) / LEGACY_STATE_FILE  # a study started before the one engine
            load(path)
    return checkpoint is not None


def grokking_trial(config: dict[str, Any], checkpoint_every: int = 1000) -> None:
    # torch loads here, in the trial's process: the driver only pickles this function
    from grok_tune.tensorboard_log import TrialLog
    from grok_tune.train import Trainer

    cfg = TrainConfig(**flat_settings(config))
    ctx = tune.get_context()
    device = _device()
    trainer = Trainer(cfg, device)
    restored = _restore(trainer.load)
    where = {**_where(device), **trainer.summary()}
    # a resumed trial re-logs what came after its checkpoint, which logged its own step; one
    # that restarts from step 0 (killed before its first checkpoint) re-logs everything
    resume_step = trainer.step + 1 if restored else 0
    log = TrialLog(
        ctx.get_trial_dir(), {**cfg.used(), **where}, resume_step, trainer.layout.position_names
    )

    reported = False

    def on_eval(record: dict[str, Any], t: Trainer) -> None:
        nonlocal reported
        reported = True
        log.evaluation(record)
        due = record[m.DONE] or (record[m.STEP] and record[m.STEP] % checkpoint_every == 0)
        _report({**record, **where}, t.save if due else None)

    final = trainer.run(on_eval)
    if not reported:
        # restored from the final checkpoint of a run that ended after Tune's last snapshot of
        # the study: nothing to train, but Tune must still hear the outcome
        tune.report({**final, **where})
    log.finish({**final, **trainer.phases()}, trainer.history)


def population_trial(
    config: dict[str, Any], packs: list[list[dict[str, Any]]], checkpoint_every: int = 1000
) -> None:
    """A packed study's trial: the configurations of pack ``config["pack"]`` trained as one
    population (grok_tune/population.py). Every evaluation reports each member's record under
    ``members`` (member index -> record); each member has its own TensorBoard run in the trial
    folder (``naming.member_dir``: ``m2_seed=1_weight_decay=1``); a checkpoint holds the whole
    population."""
    from grok_tune.population import Population
    from grok_tune.tensorboard_log import TrialLog

    cfgs = [TrainConfig(**flat_settings(c)) for c in packs[config[PACK]]]
    keys = differing_settings(c for pack in packs for c in pack)
    ctx = tune.get_context()
    device = _device()
    population = Population(cfgs, device)
    restored = _restore(population.load)
    where = [{**_where(device), **population.summary(i)} for i in range(len(cfgs))]
    resume_step = population.step + 1 if restored else 0
    positions = population.layout.position_names
    logs = [
        TrialLog(Path(ctx.get_trial_dir()) / member_dir(i, packs[config[PACK]][i], keys),
                 {**cfg.used(), **where[i]}, resume_step, positions)
        for i, cfg in enumerate(cfgs)
    ]  # fmt: skip
    reported = False

    def on_eval(records: dict[int, dict[str, Any]], p: Population) -> None:
        nonlocal reported
        reported = True
        for i, record in records.items():
            logs[i].evaluation(record)
        members = {str(i): {**r, **where[i]} for i, r in records.items()}
        metrics = {MEMBERS: members, m.STEP: p.step, m.DONE: not p.active}
        due = not p.active or (p.step and p.step % checkpoint_every == 0)
        _report(metrics, p.save if due else None)

    finals = population.run(on_eval)
    if not reported:  # restored from its final checkpoint: Tune must still hear the outcome
        members = {str(i): {**r, **where[i]} for i, r in enumerate(finals)}
        tune.report({MEMBERS: members, m.STEP: population.step, m.DONE: True})
    for i, log in enumerate(logs):
        log.finish({**finals[i], **population.phases(i)}, population.histories[i])
