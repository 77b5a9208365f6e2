"""TensorBoard files of one trial: live scalars plus an HParams session.

Tags are the metric names of ``grok_tune.metrics``. Each trial writes into its own directory,
so ``tensorboard --logdir STUDY_DIR`` lists every trial as a run, and the HParams dashboard,
which builds its table from the sessions' hyperparameters and scalar tags, lists every trial
with its settings and outcome while the study is still running.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from grok_tune import metrics as m

OUTCOME_METRICS = (m.STEPS_TO_MEMORIZE, m.STEPS_TO_GENERALIZE, m.OBJECTIVE, *m.PHASE_OUTCOMES)


class TrialLog:
    def __init__(
        self,
        log_dir: str | Path,
        hparams: dict[str, Any],
        resume_step: int,
        positions: tuple[str, ...] = (),
    ):
        self.tags = (*m.CURVE_METRICS, *m.position_metrics(positions))
        # purge_step hides what an earlier, interrupted attempt logged from the step this one
        # logs again: after its checkpoint, or everything when it starts over from step 0
        self.writer = SummaryWriter(str(log_dir), purge_step=resume_step)
        if resume_step == 0:
            _, session_start, _ = hparams_summaries(_tb_values(hparams), {})
            self.writer.file_writer.add_summary(session_start)

    def evaluation(self, record: dict[str, Any]) -> None:
        for name in self.tags:
            if record.get(name) is not None:
                self.writer.add_scalar(name, record[name], record[m.STEP])

    def finish(self, record: dict[str, Any]) -> None:
        for name in OUTCOME_METRICS:
            if record.get(name) is not None:  # censored stays absent, never "the budget"
                self.writer.add_scalar(name, record[name], record[m.STEP])
        _, _, session_end = hparams_summaries({}, {})
        self.writer.file_writer.add_summary(session_end)
        self.writer.close()


def _tb_values(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if isinstance(v, bool | int | float | str)}
