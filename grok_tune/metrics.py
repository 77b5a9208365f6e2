"""What a run measures, and the names it goes by everywhere.

These names are the keys of the engine's evaluations, of ``tune.report``, the columns of
``trials.parquet`` and ``curves.parquet``, and the TensorBoard tags: import them, never retype.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # names and rules load without torch (analysis needs only them)
    import torch
    from torch import nn

STEP = "step"
TRAIN_ACC = "train_acc"
TRAIN_LOSS = "train_loss"
VAL_ACC = "val_acc"
VAL_LOSS = "val_loss"
WEIGHT_NORM = "weight_norm"
FOURIER_SPARSITY = "fourier_sparsity"
LR = "lr"
ELAPSED_S = "elapsed_s"
CURVE_METRICS = (TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS, WEIGHT_NORM, FOURIER_SPARSITY, LR)

STEPS_TO_MEMORIZE = "steps_to_memorize"
STEPS_TO_GENERALIZE = "steps_to_generalize"
STATUS = "status"
OBJECTIVE = "objective"
DONE = "done_training"

# Power et al.: "memorized" and "generalized" mean train / validation accuracy first >= 99%.
ACCURACY_THRESHOLD = 0.99
EVAL_CHUNK = 512
# Nanda et al. found about five key frequencies in a grokked modular-addition embedding.
FOURIER_KEY_FREQUENCIES = 5


class Status(StrEnum):
    RUNNING = "running"
    GENERALIZED = "generalized"  # validation accuracy reached the threshold
    CENSORED = "censored"  # budget (or a stopping rule) ended it first: never "at the budget"
    DIVERGED = "diverged"  # loss or weights became NaN/inf
    ERROR = "error"  # the trial raised; set by the study service, never by the engine


def accuracy_and_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Accuracy and mean cross-entropy on a whole split, dropout off."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    with torch.inference_mode():
        # batch-sized chunks stay in cache: a whole split at once is ~25% slower on CPU
        logits = torch.cat([model(chunk) for chunk in x.split(EVAL_CHUNK)])
    model.train(was_training)
    loss = F.cross_entropy(logits, y)
    acc = (logits.argmax(dim=1) == y).float().mean()
    return float(acc), float(loss)


def weight_norm(model: nn.Module) -> float:
    """L2 norm of all parameters together: Omnigrok's order parameter for the phases."""
    import torch

    norms = torch._foreach_norm([p.detach() for p in model.parameters()])
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def fourier_sparsity(embedding: torch.Tensor, k: int = FOURIER_KEY_FREQUENCIES) -> float:
    """Share of the residues' embedding energy in its ``k`` strongest frequencies (Nanda et al.).

    ``embedding`` is (p, d), row r the embedding of residue r. A random embedding spreads its
    energy evenly (about 2k/p); a grokked one concentrates it in a few key frequencies, and this
    rises before validation accuracy moves.
    """
    import torch

    p = embedding.shape[0]
    spectrum = torch.fft.rfft(embedding.detach().float(), dim=0).abs().pow(2).sum(dim=1)
    # rfft keeps one of each mirrored pair (f, p - f): count those twice (Parseval)
    weight = torch.full_like(spectrum, 2.0)
    weight[0] = 1.0
    if p % 2 == 0:
        weight[-1] = 1.0
    energy = spectrum * weight
    return float(energy.topk(min(k, len(energy))).values.sum() / energy.sum())


def objective(
    status: Status | str, steps_to_generalize: int | None, best_val_acc: float, budget: int
) -> float:
    """Optuna's number for "steps to generalize", defined for every trial (minimize).

    generalized: the step it generalized. Censored: ``budget * (2 - best validation accuracy)``,
    worse than any trial that generalized within the budget and better the closer it came.
    Diverged: ``2 * budget``, the worst value.
    """
    if status == Status.GENERALIZED and steps_to_generalize is not None:
        return float(steps_to_generalize)
    if status == Status.DIVERGED or not math.isfinite(best_val_acc):
        return 2.0 * budget
    return budget * (2.0 - best_val_acc)
