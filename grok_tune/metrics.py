"""What a run measures, and the names it goes by everywhere.

These names are the keys of the engine's evaluations, of ``tune.report``, the columns of
``trials.parquet`` and ``curves.parquet``: import them, never retype. A task whose answer has
several positions (the digits of a sum) adds each position's own loss and accuracy under
``position_metric(TRAIN_LOSS, "digit0")`` = ``train_loss_digit0``, and so on.

TensorBoard is the one place a metric goes by another name: its Time Series dashboard groups
charts by the tag's part before the first ``/`` and sorts the groups by name, so a flat
``val_acc`` would be a section of its own, far below ``fourier_sparsity``. ``tensorboard_tag``
is the one mapping (``train_acc`` -> ``acc/train``, ``val_loss_digit0`` -> ``loss/val_digit0``,
``weight_norm`` -> ``measures/weight_norm``, ``steps_to_generalize`` ->
``outcome/steps_to_generalize``): accuracy and loss open first, the measures after, the
outcome last. Whatever writes or reads TensorBoard tags goes through it.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # names and rules load without torch (analysis needs only them)
    import torch
    from torch import nn

    from grok_tune.tasks import Layout, Split

STEP = "step"
TRAIN_ACC = "train_acc"
TRAIN_LOSS = "train_loss"
VAL_ACC = "val_acc"
VAL_LOSS = "val_loss"
WEIGHT_NORM = "weight_norm"
FOURIER_SPARSITY = "fourier_sparsity"
# Prieto et al.: the share of training predictions whose float32 softmax is exactly one-hot
# (loss and gradient exactly 0), and the logit scale behind it
SOFTMAX_COLLAPSE = "softmax_collapse"
LOGIT_GAP = "logit_gap"
# Nanda et al. 2023's progress measures of modular addition (grok_tune/progress.py): the loss
# with only the key Fourier frequencies of the logits kept (restricted) or removed (excluded),
# and the Gini coefficients of the Fourier norms of the embedding and of the neuron-logit map
RESTRICTED_LOSS = "restricted_loss"
EXCLUDED_LOSS = "excluded_loss"
GINI_EMBEDDING = "gini_embedding"
GINI_NEURON_LOGIT = "gini_neuron_logit"
NANDA_MEASURES = (RESTRICTED_LOSS, EXCLUDED_LOSS, GINI_EMBEDDING, GINI_NEURON_LOGIT)
LR = "lr"
ELAPSED_S = "elapsed_s"
# every run's curves; a task adds its own measures (``Task.MEASURES``, tasks.TASK_MEASURES)
CURVE_METRICS = (
    TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS, WEIGHT_NORM, SOFTMAX_COLLAPSE, LOGIT_GAP, LR,
)  # fmt: skip

STEPS_TO_MEMORIZE = "steps_to_memorize"
STEPS_TO_GENERALIZE = "steps_to_generalize"
# grok_tune/events.py: the largest phase change (sudden loss drop after a plateau) of the
# training and of the validation loss: its step and its size in nats
TRAIN_PHASE_STEP = "train_phase_step"
TRAIN_PHASE_DROP = "train_phase_drop"
VAL_PHASE_STEP = "val_phase_step"
VAL_PHASE_DROP = "val_phase_drop"
PHASE_OUTCOMES = (TRAIN_PHASE_STEP, TRAIN_PHASE_DROP, VAL_PHASE_STEP, VAL_PHASE_DROP)
# grok_tune/progress.py: the steps at which Nanda et al.'s three phases end, read from the
# measures above (memorization ~1.4k, circuit formation ~9.4k, clean-up ~14k in his run)
MEMORIZATION_END = "memorization_end"
CIRCUIT_FORMATION_END = "circuit_formation_end"
CLEANUP_END = "cleanup_end"
NANDA_PHASES = (MEMORIZATION_END, CIRCUIT_FORMATION_END, CLEANUP_END)
STATUS = "status"
OBJECTIVE = "objective"
DONE = "done_training"

# the per-split metrics a predicted position has of its own
SPLITS = ("train", "val")
POSITION_METRICS = (TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS)
POSITION_EVENTS = (STEPS_TO_MEMORIZE, STEPS_TO_GENERALIZE)

# Power et al.: "memorized" and "generalized" mean train / validation accuracy first >= 99%.
ACCURACY_THRESHOLD = 0.99
EVAL_CHUNK = 512
# Nanda et al. found about five key frequencies in a grokked modular-addition embedding.
FOURIER_KEY_FREQUENCIES = 5


# TensorBoard's tag groups (see the module's docstring), in the order the dashboard sorts them
TAG_GROUPS = ("acc", "loss", "measures", "outcome")
_SPLIT_METRIC = re.compile(r"^(train|val)_(acc|loss)(_\w+)?$")


def tensorboard_tag(name: str) -> str:
    """The TensorBoard tag of metric ``name``: ``acc/train``, ``loss/val_digit0``,
    ``measures/weight_norm``, ``outcome/steps_to_generalize``."""
    split_metric = _SPLIT_METRIC.match(name)
    if split_metric:
        split, kind, position = split_metric.groups()
        return f"{kind}/{split}{position or ''}"
    if name in (STEPS_TO_MEMORIZE, STEPS_TO_GENERALIZE, OBJECTIVE, *PHASE_OUTCOMES, *NANDA_PHASES):
        return f"outcome/{name}"
    return f"measures/{name}"


def position_metric(name: str, position: str) -> str:
    """The name of a metric or event of one predicted position: ``train_loss_digit0``."""
    return f"{name}_{position}"


def position_metrics(positions: tuple[str, ...]) -> tuple[str, ...]:
    """The per-position curve metrics of a task whose positions are named ``positions``."""
    return tuple(position_metric(n, p) for p in positions for n in POSITION_METRICS)


class Status(StrEnum):
    PENDING = "pending"  # never started: the study was interrupted first (resume it)
    RUNNING = "running"  # started, unfinished: the study was interrupted (resume it)
    GENERALIZED = "generalized"  # validation accuracy reached the threshold
    CENSORED = "censored"  # budget (or a stopping rule) ended it first: never "at the budget"
    DIVERGED = "diverged"  # loss or weights became NaN/inf
    ERROR = "error"  # the trial raised; set by the study service, never by the engine


def evaluate(
    model: nn.Module, split: Split, layout: Layout, prefix: str, collapse: bool = False
) -> dict[str, float]:
    """Accuracy and mean cross-entropy on a whole split (dropout off), over all its predicted
    positions and per named position; with ``collapse``, the Softmax Collapse share and the
    mean logit gap of its predictions. Keys: ``{prefix}_acc``, ``{prefix}_loss``, ...

    Accuracy is per row when the task's answer has several positions (all must be right),
    per position otherwise. The loss is softmax cross-entropy whatever loss the run trains on,
    so that runs compare. Evaluated in batch-sized chunks: cache-sized on CPU, and a large
    split's logits never exist at once.
    """
    import torch
    import torch.nn.functional as F

    from grok_tune.tasks import IGNORE

    P = layout.n_predict
    loss_sum = torch.zeros(P, dtype=torch.float64)
    correct = torch.zeros(P, dtype=torch.float64)
    counted = torch.zeros(P, dtype=torch.float64)
    rows_right = collapsed = gap = 0.0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for x, y in zip(split.x.split(EVAL_CHUNK), split.y.split(EVAL_CHUNK), strict=True):
            logits = model(x)  # (B, P, classes)
            valid = y != IGNORE
            losses = F.cross_entropy(
                logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE, reduction="none"
            ).view_as(y)
            right = (logits.argmax(dim=-1) == y) & valid
            loss_sum += losses.sum(dim=0).double().cpu()
            correct += right.sum(dim=0).double().cpu()
            counted += valid.sum(dim=0).double().cpu()
            rows_right += float((right | ~valid).all(dim=1).sum())
            if collapse:
                chosen = logits[valid]
                collapsed += softmax_collapse(chosen) * len(chosen)
                gap += logit_gap(chosen) * len(chosen) if chosen.shape[-1] > 1 else 0.0
    model.train(was_training)
    total = float(counted.sum())
    out = {
        f"{prefix}_acc": rows_right / len(split)
        if layout.exact_match
        else float(correct.sum()) / total,
        f"{prefix}_loss": float(loss_sum.sum()) / total,
    }
    for k, name in enumerate(layout.position_names):
        n = float(counted[k]) or math.nan
        out[position_metric(f"{prefix}_acc", name)] = float(correct[k]) / n
        out[position_metric(f"{prefix}_loss", name)] = float(loss_sum[k]) / n
    if collapse:
        out[SOFTMAX_COLLAPSE] = collapsed / total
        out[LOGIT_GAP] = gap / total
    return out


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


# --- Softmax Collapse (Prieto et al. 2025) ---------------------------------------------------
def softmax_collapse(logits: torch.Tensor, dtype: torch.dtype | None = None) -> float:
    """Share of rows whose softmax has collapsed in ``dtype`` (default float32):
    ``Σ exp(z − max z) == 1`` exactly.

    If the argmax is the target, such a row's loss is exactly 0 and so is the gradient of the
    argmax logit; the others get exp(−gap) each: learning from the row stops (Prieto et al.'s
    Softmax Collapse, measured as their logger does). This describes the
    logits whatever loss is used: with float64 or StableMax the loss itself has not collapsed.
    """
    import torch

    with torch.inference_mode():
        z = logits.detach().to(dtype or torch.float32).reshape(-1, logits.shape[-1])
        sum_exp = torch.exp(z - z.amax(dim=1, keepdim=True)).sum(dim=1)
        return float((sum_exp == 1).float().mean())


def logit_gap(logits: torch.Tensor) -> float:
    """Mean over rows of (largest − second largest logit): the logit scale behind the collapse.

    1 + exp(−gap) rounds to 1 in float32 once exp(−gap) < 2⁻²⁴, i.e. a gap above about 16.6
    when the other terms are added to 1 one at a time, and up to ln(C − 1) more (about 21 for
    C ≈ 100) when the reduction sums the small terms first: so a gap of about 17-21 collapses.
    """
    import torch

    if logits.shape[-1] < 2:
        raise ValueError("logit_gap needs at least 2 classes")
    with torch.inference_mode():
        top = logits.detach().reshape(-1, logits.shape[-1]).topk(2, dim=1).values
        return float((top[:, 0] - top[:, 1]).double().mean())
