"""The Ray Tune trainable: a plain function of a config dict that reports dicts.

It drives the engine's ``Trainer``: every evaluation goes to ``tune.report`` (and to the trial's
TensorBoard files), a checkpoint every ``checkpoint_every`` steps and at the end, and a restarted
trial continues from ``tune.get_checkpoint()`` bit-for-bit.
"""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import tune

from grok_tune import metrics as m
from grok_tune.config import TrainConfig, flat_settings

if TYPE_CHECKING:
    from grok_tune.train import Trainer


def grokking_trial(config: dict[str, Any], checkpoint_every: int = 1000) -> None:
    # torch loads here, in the trial's process: the driver only pickles this function
    import torch

    from grok_tune.layout import STATE_FILE
    from grok_tune.tensorboard_log import TrialLog
    from grok_tune.train import Trainer

    cfg = TrainConfig(**flat_settings(config))
    ctx = tune.get_context()
    resources = ctx.get_trial_resources().required_resources
    # one intra-op thread per CPU Ray gave the trial: two trials on two cores beat one on both
    torch.set_num_threads(max(1, int(resources.get("CPU", 1))))
    # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU, so "cuda" is the one it assigned
    device = "cuda" if resources.get("GPU", 0) > 0 and torch.cuda.is_available() else "cpu"
    trainer = Trainer(cfg, device)

    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            trainer.load(Path(d) / STATE_FILE)
    where = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "node": platform.node(),
        "node_id": ray.get_runtime_context().get_node_id(),
        **trainer.summary(),
    }
    # a resumed trial re-logs what came after its checkpoint, which logged its own step
    resume_step = trainer.step + 1 if checkpoint else None
    log = TrialLog(
        ctx.get_trial_dir(), {**cfg.used(), **where}, resume_step, trainer.layout.position_names
    )

    reported = False

    def on_eval(record: dict[str, Any], t: Trainer) -> None:
        nonlocal reported
        reported = True
        log.evaluation(record)
        metrics = {**record, **where}
        if record[m.DONE] or (record[m.STEP] and record[m.STEP] % checkpoint_every == 0):
            with tempfile.TemporaryDirectory() as d:
                t.save(Path(d) / STATE_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)

    final = trainer.run(on_eval)
    if not reported:
        # restored from the final checkpoint of a run that ended after Tune's last snapshot of
        # the study: nothing to train, but Tune must still hear the outcome
        tune.report({**final, **where})
    log.finish({**final, **trainer.phases()})
