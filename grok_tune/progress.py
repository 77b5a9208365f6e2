"""Nanda et al.'s (2023) progress measures for modular addition, and the three phases they mark.

"Progress measures for grokking via mechanistic interpretability" reads a grokked x+y mod p
network as Fourier multiplication: the embedding keeps a few *key frequencies* w_k = 2πk/p, the
network computes cos(w_k(a+b)) and sin(w_k(a+b)), and the logits are about
Σ_k α_k cos(w_k(a+b-c)). His measures, every evaluation, over all p² inputs:

- **key frequencies**: the ``KEY_FREQUENCIES`` frequencies k in 1..(p-1)/2 whose cos/sin pair
  carries the largest norm of the embedding in the 1-D Fourier basis over the token index
  (paper §4.1; the TransformerLens demo's rule, ``(fourier_basis @ W_E).norm(dim=-1)``, with a
  fixed count here in place of its max/4 threshold). He fixed the set once from the final model
  and reused it for every checkpoint; a run that is being trained has no final model, so here
  the set is read from the embedding of the moment (so early values of the losses below use
  whatever frequencies the random embedding favours; see the README).
- **restricted loss**: the logits over the (a, b) grid written in the 2-D Fourier basis, every
  component set to zero but the constant and the directions cos(w_k(a+b)), sin(w_k(a+b)) of the
  key frequencies; cross-entropy over all p² inputs. The released code's ``trig_loss``
  (Nanda's Colab cell 245; ``calculate_trig_loss`` in progress-measures-paper's helpers):
  ``get_component_cos_xpy + get_component_sin_xpy`` summed over ``key_freqs``, then
  ``test_logits(..., bias_correction=True, mode='all')``, which adds back the per-class mean
  of the original logits (= keeping the constant component).
- **excluded loss**: the same directions *removed* from the logits (everything else kept, no
  bias correction), cross-entropy on the training pairs only (paper §5.1 "We measure this on
  the training data"; Colab ``excl_loss`` / ``calculate_excluded_loss_2D_full``, all key
  frequencies at once as in the paper's Figure 7).
- **Gini coefficients** (Hurley & Rickard 2009) of the norms of the Fourier components of the
  embedding W_E (over the token index) and of the neuron-logit map W_L = W_U W_out (over the
  output class): paper §5.1 and Figure 7, bottom left.

For x-y the same holds with b read as -b (the logits are Σ α cos(w_k(a-b-c))): the task lays
the grid out with b = -j mod p in column j, and everything above applies unchanged. Other operations
record None (the additive Fourier basis is not theirs).

The projection is cheap: a direction cos(w_k(a+b)) depends on s = a+b mod p only, so projecting
the (p, p, classes) logits onto those directions is a 1-D transform of M[s, c] = Σ_{a+b=s}
L[a, b, c] (p x classes), band-limited to the key frequencies and spread back over the grid:
O(p³) for the sum, next to O(p² · width) for the forward pass.

The phases (``nanda_phases``) are a pure function of a run's curves, numpy only (analysis
loads this module without torch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from grok_tune import metrics as m
from grok_tune.events import DEFAULT_PHASE_RULE, _running_median, largest_phase_change

if TYPE_CHECKING:
    import torch
    from torch import nn

# Nanda's mainline model keeps 5 key frequencies (paper §4.1: six with non-negligible norm in
# W_E, five "used significantly in later parts of the model"); other seeds 3 or 4. A fixed count
# keeps runs comparable: an unused sixth frequency costs little, a missing one would leave its
# share of the circuit in the excluded logits. The same count as fourier_sparsity's.
KEY_FREQUENCIES = m.FOURIER_KEY_FREQUENCIES
# operations whose answer is a Fourier-multiplication circuit over Z_p, and the sign of b in it
ADDITIVE_OPS: dict[str, int] = {"x+y": 1, "x-y": -1}
# all p³ logits are held at once (p = 256: 67 MB of float32); above it the measures are None
P_MAX = 256
# phases: a circuit formed when the excluded loss rose at least this factor from its minimum
MIN_EXCLUDED_RISE = 2.0
# ... and circuit formation ends when this share of that rise (in log-loss) is done
RISE_DONE = 0.9
SMOOTH = DEFAULT_PHASE_RULE.smooth  # running median over this many evaluations, as events.py


# --- Fourier basis and key frequencies ---------------------------------------------------------
def fourier_basis(p: int) -> torch.Tensor:
    """Nanda's orthonormal real Fourier basis over Z_p, (p, p), one basis vector per row: the
    constant, then cos k and sin k at rows 2k-1, 2k for k = 1..(p-1)/2, each of norm 1 (his
    ``make_fourier_basis``); for an even p the last row is cos(πx) (his basis would divide the
    zero vector sin(πx) by its norm)."""
    import torch

    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
    if p % 2 == 0:
        rows.append(torch.cos(math.pi * x))
    basis = torch.stack(rows)
    return basis / basis.norm(dim=1, keepdim=True)


def fourier_norms(matrix: torch.Tensor) -> torch.Tensor:
    """The norm of each Fourier component of ``matrix`` (p, d) over its first axis:
    ``(fourier_basis @ W).norm(dim=-1)``, p values (float64)."""
    basis = fourier_basis(matrix.shape[0]).to(matrix.device)
    return (basis @ matrix.detach().double()).norm(dim=1)


def frequency_norms(matrix: torch.Tensor) -> torch.Tensor:
    """Per frequency k = 1..(p-1)/2, the norm of the cos k and sin k components together."""
    norms = fourier_norms(matrix)
    n = (matrix.shape[0] - 1) // 2
    return (norms[1 : 2 * n + 1].view(n, 2) ** 2).sum(dim=1).sqrt()


def key_frequencies(embedding: torch.Tensor, k: int = KEY_FREQUENCIES) -> list[int]:
    """The ``k`` frequencies (1-based, ascending) with the largest embedding norm."""
    norms = frequency_norms(embedding)
    top = norms.topk(min(k, len(norms))).indices
    return sorted(int(i) + 1 for i in top)


def gini(values: torch.Tensor | np.ndarray | Sequence[float]) -> float:
    """Gini coefficient of non-negative ``values`` (Hurley & Rickard 2009's sparsity measure, as
    Nanda uses it): with c sorted ascending, ``1 - 2 Σ_k (c_k / |c|_1) (N - k + 1/2) / N``.
    0 for equal values, 1 - 1/N for a single non-zero one."""
    c = np.sort(np.abs(np.asarray(values, dtype=np.float64).ravel()))
    n, total = len(c), c.sum()
    if n == 0 or total == 0:
        return math.nan
    k = np.arange(1, n + 1)
    return float(1.0 - 2.0 * np.sum(c / total * (n - k + 0.5) / n))


# --- restricted and excluded logits --------------------------------------------------------------
def sum_direction_part(logits: torch.Tensor, freqs: Sequence[int]) -> torch.Tensor:
    """The part of grid logits (p, p, classes), indexed [a, b, c], along the directions
    cos(w_k(a+b)) and sin(w_k(a+b)) of ``freqs``, per class c: the orthogonal projection that
    Nanda's ``get_component_cos_xpy`` + ``get_component_sin_xpy`` compute with the 2-D basis.

    A direction cos(w_k(a+b)) is a function of s = a+b mod p, so the projection is one of
    M[s] = Σ_{a+b=s} L[a, b] onto frequency k in s (a 1-D transform), divided by p (each s has
    p pairs) and read back at s = a+b."""
    import torch

    p = logits.shape[0]
    a = torch.arange(p, device=logits.device)
    s = (a[:, None] + a[None, :]) % p  # (p, p)
    x = logits.double()
    summed = torch.zeros((p, *x.shape[2:]), dtype=x.dtype, device=x.device)
    summed.index_add_(0, s.flatten(), x.flatten(0, 1))
    spectrum = torch.fft.rfft(summed, dim=0)
    keep = torch.zeros(spectrum.shape[0], dtype=torch.bool, device=x.device)
    for k in freqs:
        if not 1 <= k <= (p - 1) // 2:
            raise ValueError(f"frequency {k}: allowed 1..{(p - 1) // 2} for p = {p}")
        keep[k] = True
    band = torch.fft.irfft(spectrum * keep[:, None].to(spectrum.dtype), n=p, dim=0) / p
    return band[s]


def restricted_logits(logits: torch.Tensor, freqs: Sequence[int]) -> torch.Tensor:
    """The constant (per class, the mean over the grid) plus the key frequencies' sum
    directions: Nanda's ``trig_loss`` logits with ``bias_correction=True``."""
    return logits.double().mean(dim=(0, 1), keepdim=True) + sum_direction_part(logits, freqs)


def excluded_logits(logits: torch.Tensor, freqs: Sequence[int]) -> torch.Tensor:
    """The logits with the key frequencies' sum directions removed, all else kept."""
    return logits.double() - sum_direction_part(logits, freqs)


def grid_cross_entropy(
    logits: torch.Tensor, answers: torch.Tensor, mask: torch.Tensor | None = None
) -> float:
    """Mean cross-entropy of grid logits (p, p, classes) against answers (p, p), over the
    cells where ``mask`` (p, p) is True (all by default); float64, as Nanda's notebook's
    high-precision loss."""
    import torch.nn.functional as F

    flat, y = logits.double().flatten(0, 1), answers.flatten()
    if mask is not None:
        flat, y = flat[mask.flatten()], y[mask.flatten()]
    return float(F.cross_entropy(flat, y))


def operand_embedding(model: nn.Module) -> torch.Tensor:
    """One row per element token: the model's ``operand_embedding()`` (the MLP with one-hot
    input has no table of its own), or a plain module's ``tok_emb``."""
    if hasattr(model, "operand_embedding"):
        return model.operand_embedding()
    return model.tok_emb.weight


def neuron_logit_map(model: nn.Module) -> torch.Tensor | None:
    """W_L = W_U W_out, (classes, d_mlp): the map from the last block's MLP neurons to the
    logits (paper §4.2), or None for a model whose last block has no MLP. With a final
    LayerNorm (not Nanda's model) it leaves out the norm's scaling."""
    if not hasattr(model, "blocks"):  # the MLP (architecture: mlp): its head reads the neurons
        return model.head.weight.detach()
    block = model.blocks[-1]
    if block.mlp is None:
        return None
    return model.head.weight.detach() @ block.mlp[-1].weight.detach()


def measures(
    model: nn.Module, inputs: torch.Tensor, answers: torch.Tensor, train: torch.Tensor, p: int
) -> dict[str, float | None]:
    """Nanda's four measures of ``model`` on modular addition.

    ``inputs`` (p², seq) are the token rows of the grid [a, j] in a-major order, ``answers``
    and ``train`` (p, p) its answers a + j mod p and its training mask, all on the model's
    device. (For x-y the task puts b = -j mod p in column j: the same grid.) One forward pass
    over all p² rows (in chunks), dropout off."""
    import torch

    embedding = operand_embedding(model)[:p].detach()
    w_l = neuron_logit_map(model)
    out: dict[str, float | None] = {
        m.GINI_EMBEDDING: gini(fourier_norms(embedding).cpu()),
        m.GINI_NEURON_LOGIT: None if w_l is None else gini(fourier_norms(w_l[:p]).cpu()),
    }
    was_training = model.training
    model.eval()
    with torch.inference_mode():  # in cache-sized chunks, as metrics.evaluate: 2x faster on CPU
        chunks = [model(x)[:, -1, :p] for x in inputs.split(m.EVAL_CHUNK)]
        logits = torch.cat(chunks).reshape(p, p, -1)
    model.train(was_training)
    freqs = key_frequencies(embedding)
    out[m.RESTRICTED_LOSS] = grid_cross_entropy(restricted_logits(logits, freqs), answers)
    out[m.EXCLUDED_LOSS] = grid_cross_entropy(excluded_logits(logits, freqs), answers, train)
    return out


# --- the three phases --------------------------------------------------------------------------
def nanda_phases(curve: Mapping[str, Sequence[float]]) -> dict[str, float | None]:
    """Where Nanda's three phases end in one run's curves (``curve[STEP]`` and the measures by
    name, as a run's history or its rows of curves.parquet give them); None where a phase has
    not ended (or the run has no such measures).

    Paper §5.2: memorization (0-1.4k) "a decline of both excluded and train loss, with test
    and restricted loss both remaining high"; circuit formation (1.4k-9.4k) "excluded loss
    rises ... test and train loss stay flat"; cleanup (9.4k-14k) "excluded loss plateaus,
    restricted loss continues to drop, test loss suddenly drops". On curves smoothed by a
    running median of ``SMOOTH`` evaluations (noise would move an extremum):

    - ``memorization_end``: the step of the excluded loss's minimum, where it stops falling
      with the training loss and starts rising. None unless it then rises by at least
      ``MIN_EXCLUDED_RISE`` (no circuit formed: the run has not left memorization);
    - ``circuit_formation_end``: the first step after it at which the excluded loss has done
      ``RISE_DONE`` of its log-rise to its later maximum (the plateau's knee);
    - ``cleanup_end``: the end (knee) of the largest phase change of the restricted loss
      (grok_tune/events.py's rule): the step its collapse is done.
    """
    out: dict[str, float | None] = dict.fromkeys(m.NANDA_PHASES)
    steps = np.asarray(curve.get(m.STEP, []), dtype=float)
    excluded = _finite(curve.get(m.EXCLUDED_LOSS), len(steps))
    if excluded is not None:
        t, ex = steps[excluded[0]], np.log(np.maximum(excluded[1], 1e-12))
        ex = _running_median(ex, SMOOTH)
        low = int(np.argmin(ex))
        if low < len(ex) - 1:
            high = low + 1 + int(np.argmax(ex[low + 1 :]))
            if ex[high] - ex[low] >= math.log(MIN_EXCLUDED_RISE):
                out[m.MEMORIZATION_END] = float(t[low])
                target = ex[low] + RISE_DONE * (ex[high] - ex[low])
                done = low + 1 + int(np.argmax(ex[low + 1 : high + 1] >= target))
                out[m.CIRCUIT_FORMATION_END] = float(t[done])
    restricted = _finite(curve.get(m.RESTRICTED_LOSS), len(steps))
    if restricted is not None and len(restricted[1]) > 1:
        drop = largest_phase_change(steps[restricted[0]], restricted[1])
        if drop is not None:
            out[m.CLEANUP_END] = float(drop.end)
    return out


def _finite(values: Sequence[float] | None, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The indices and values of a curve's evaluations that have the measure, up to the first
    non-finite one (a diverged run), or None when it has none."""
    if values is None or n == 0:
        return None
    v = np.array([math.nan if x is None else float(x) for x in values], dtype=float)[:n]
    present = np.flatnonzero(~np.isnan(v))
    if not len(present):
        return None
    v = v[present]
    bad = np.flatnonzero(~np.isfinite(v))
    keep = present[: bad[0]] if len(bad) else present
    return (keep, v[: len(keep)]) if len(keep) else None
