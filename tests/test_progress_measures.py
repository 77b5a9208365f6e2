"""Nanda et al.'s progress measures (grok_tune/progress.py) against direct computations on small
tensors: the Fourier basis and norms against numpy's FFT, the projection against Nanda's own
2-D basis construction, restricted and excluded loss on hand-built logits and a hand-built model
whose frequencies are known, Gini on known vectors, the phases on synthetic curves; then one
short real run of each path (Trainer, Population) that records them. About 15 s, one thread.
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from grok_tune import metrics as m
from grok_tune import progress as P
from grok_tune.config import TrainConfig
from grok_tune.results import phase_rows
from grok_tune.tasks import make_task


def _w(k: int, p: int) -> float:
    return 2 * math.pi * k / p


# --- Fourier basis and norms ---------------------------------------------------------------------
@pytest.mark.parametrize("p", [7, 8, 13])
def test_fourier_basis_is_orthonormal_cos_sin_rows(p):
    basis = P.fourier_basis(p)
    assert torch.allclose(basis @ basis.T, torch.eye(p, dtype=torch.float64), atol=1e-12)
    x = np.arange(p)
    assert np.allclose(basis[0].numpy(), 1 / math.sqrt(p))
    for k in range(1, (p - 1) // 2 + 1):  # Nanda's layout: cos k, sin k at rows 2k-1, 2k
        cos, sin = np.cos(_w(k, p) * x), np.sin(_w(k, p) * x)
        assert np.allclose(basis[2 * k - 1].numpy(), cos / np.linalg.norm(cos))
        assert np.allclose(basis[2 * k].numpy(), sin / np.linalg.norm(sin))


@pytest.mark.parametrize("p", [11, 12])
def test_fourier_norms_match_numpy_fft(p):
    w = torch.randn(p, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    spectrum = np.fft.rfft(w.numpy(), axis=0)  # X_k = sum_x W[x] e^{-i w_k x}
    energy = (np.abs(spectrum) ** 2).sum(axis=1)
    n = (p - 1) // 2
    # cos k and sin k of unit norm: |<cos,W>|² + |<sin,W>|² = (2/p)|X_k|²; the constant |X_0|²/p
    assert np.allclose(P.frequency_norms(w).numpy() ** 2, 2 / p * energy[1 : n + 1])
    norms = P.fourier_norms(w).numpy()
    assert norms[0] ** 2 == pytest.approx(energy[0] / p)
    assert (norms**2).sum() == pytest.approx(float((w**2).sum()))  # Parseval: orthonormal


def test_key_frequencies_are_the_embeddings_largest():
    p, known = 31, (3, 7, 11)
    x = torch.arange(p, dtype=torch.float64)
    waves = (torch.cos, torch.sin)
    columns = [f(_w(k, p) * x) * (1 + i) for i, k in enumerate(known) for f in waves]
    rng = torch.Generator().manual_seed(1)
    noise = 0.01 * torch.randn(p, 4, generator=rng, dtype=torch.float64)
    embedding = torch.cat([torch.stack(columns, dim=1), noise], dim=1)
    assert P.key_frequencies(embedding, k=3) == list(known)
    assert set(known) <= set(P.key_frequencies(embedding))  # five: the three and two of noise
    assert len(P.key_frequencies(torch.randn(5, 3))) == 2  # p = 5 has two frequencies


# --- Gini ----------------------------------------------------------------------------------------
def test_gini_on_known_vectors():
    assert P.gini([1.0, 1.0, 1.0, 1.0]) == pytest.approx(0.0)
    assert P.gini([0.0, 0.0, 0.0, 5.0]) == pytest.approx(1 - 1 / 4)
    assert P.gini([0.0, 0.0, 1.0, 1.0]) == pytest.approx(0.5)
    # Hurley & Rickard's form equals the mean absolute difference over twice the mean
    v = np.random.default_rng(0).exponential(size=50)
    direct = np.abs(v[:, None] - v[None, :]).sum() / (2 * len(v) ** 2 * v.mean())
    assert P.gini(v) == pytest.approx(direct)
    assert P.gini(torch.tensor(v)) == pytest.approx(direct)
    assert math.isnan(P.gini([0.0, 0.0]))


# --- restricted and excluded logits --------------------------------------------------------------
def _nanda_sum_directions(logits: torch.Tensor, freqs) -> torch.Tensor:
    """Nanda's own construction (helpers.py: fourier_2d_basis_term, get_component_cos_xpy,
    get_component_sin_xpy): the 2-D basis terms of the 1-D basis, combined into the unit
    directions cos(w(a+b)) and sin(w(a+b)) over the flattened grid, each projected out."""
    p = logits.shape[0]
    basis = P.fourier_basis(p)
    flat = logits.double().reshape(p * p, -1)

    def term(i: int, j: int) -> torch.Tensor:
        return (basis[i][:, None] * basis[j][None, :]).flatten()

    out = torch.zeros_like(flat)
    for k in freqs:
        cos_xpy = (term(2 * k - 1, 2 * k - 1) - term(2 * k, 2 * k)) / math.sqrt(2)
        sin_xpy = (term(2 * k, 2 * k - 1) + term(2 * k - 1, 2 * k)) / math.sqrt(2)
        for d in (cos_xpy, sin_xpy):
            out += d[:, None] @ (d[None, :] @ flat)
    return out.reshape(logits.shape)


@pytest.mark.parametrize("p", [7, 10])
def test_projection_matches_nandas_2d_basis(p):
    logits = torch.randn(p, p, p, generator=torch.Generator().manual_seed(2))
    freqs = [1, 3] if p == 7 else [2, 4]
    ours = P.sum_direction_part(logits, freqs)
    assert torch.allclose(ours, _nanda_sum_directions(logits, freqs), atol=1e-10)
    # a projection: idempotent, and what it removes is orthogonal to what it keeps
    assert torch.allclose(P.sum_direction_part(ours, freqs), ours, atol=1e-10)
    rest = P.excluded_logits(logits, freqs)
    assert abs(float((rest * ours).sum())) < 1e-8
    with pytest.raises(ValueError, match="frequency"):
        P.sum_direction_part(logits, [p // 2 + 1])


def _circuit_logits(p: int, freqs, scale: float, sign: int = 1) -> torch.Tensor:
    """logits[a, j, c] = scale * Σ_k cos(w_k(a + sign*j - c)): Nanda's final circuit exactly."""
    a = torch.arange(p, dtype=torch.float64)
    phase = a[:, None, None] + sign * a[None, :, None] - a[None, None, :]
    return scale * sum(torch.cos(_w(k, p) * phase) for k in freqs)


def test_restricted_loss_is_the_loss_and_excluded_is_chance_for_a_pure_circuit():
    p, freqs = 13, [2, 5]
    logits = _circuit_logits(p, freqs, scale=4.0)
    j = torch.arange(p)
    answers = (j[:, None] + j[None, :]) % p
    full = P.grid_cross_entropy(logits, answers)
    assert full < 1.0  # the circuit gets the answer right
    assert torch.allclose(P.restricted_logits(logits, freqs), logits, atol=1e-10)
    assert P.grid_cross_entropy(P.restricted_logits(logits, freqs), answers) == pytest.approx(full)
    # nothing but the circuit: removing it leaves all-zero logits, a uniform guess
    assert P.grid_cross_entropy(P.excluded_logits(logits, freqs), answers) == pytest.approx(
        math.log(p)
    )
    # memorized noise on top: restricted loss drops it, excluded loss keeps only it
    noise = 3.0 * torch.randn(p, p, p, generator=torch.Generator().manual_seed(3))
    noisy = logits + noise
    assert P.grid_cross_entropy(P.restricted_logits(noisy, freqs), answers) < P.grid_cross_entropy(
        noisy, answers
    )
    train = torch.rand(p, p, generator=torch.Generator().manual_seed(4)) < 0.5
    excluded = P.grid_cross_entropy(P.excluded_logits(noisy, freqs), answers, train)
    direct = torch.nn.functional.cross_entropy(
        (noisy - P.sum_direction_part(noisy, freqs))[train], answers[train]
    )
    assert excluded == pytest.approx(float(direct))


class CircuitModel(nn.Module):
    """A hand-built 'model' with the Transformer's attribute names: its embedding holds the
    frequencies ``freqs`` (and weaker ones), its logits are exactly the circuit's."""

    def __init__(self, p: int, freqs, op_sign: int, operator_token: bool, scale: float = 0.5):
        super().__init__()
        self.p, self.freqs, self.sign, self.scale = p, freqs, op_sign, scale
        self.b_at = 2 if operator_token else 1
        x = torch.arange(p, dtype=torch.float64)
        cols = [f(_w(k, p) * x) for k in freqs for f in (torch.cos, torch.sin)]
        cols.append(0.05 * torch.cos(_w(1, p) * x))  # a weaker frequency that is not key
        emb = torch.zeros(p + 2, len(cols))
        emb[:p] = torch.stack(cols, dim=1).float()
        self.tok_emb = nn.Embedding.from_pretrained(emb)
        mlp = nn.Sequential(nn.Linear(len(cols), 8), nn.ReLU(), nn.Linear(8, len(cols)))
        self.blocks = nn.ModuleList([nn.Module()])
        self.blocks[0].mlp = mlp
        self.head = nn.Linear(len(cols), p, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        a, b = idx[:, 0].double(), idx[:, self.b_at].double()
        c = torch.arange(self.p, dtype=torch.float64)
        phase = a[:, None] + self.sign * b[:, None] - c[None, :]
        logits = self.scale * sum(torch.cos(_w(k, self.p) * phase) for k in self.freqs)
        return logits.float()[:, None, :]


@pytest.mark.parametrize(("op", "sign", "operator_token"), [("x+y", 1, False), ("x-y", -1, True)])
def test_task_measures_on_a_hand_built_model(op, sign, operator_token):
    p, freqs = 17, [3, 5, 6, 7, 8]  # five key frequencies, as KEY_FREQUENCIES
    cfg = TrainConfig(op=op, p=p, frac=0.5, operator_token=operator_token)
    task = make_task(cfg)
    model = CircuitModel(p, freqs, sign, operator_token)
    out = task.measures(model)
    assert set(out) == {m.FOURIER_SPARSITY, *m.NANDA_MEASURES}
    full = m.evaluate(model, task.training, task.layout, "train")[m.TRAIN_LOSS]
    all_pairs = m.evaluate(model, task.validation, task.layout, "val")[m.VAL_LOSS]
    whole = (full * len(task.training) + all_pairs * len(task.validation)) / p**2
    assert out[m.RESTRICTED_LOSS] == pytest.approx(whole, rel=1e-5)  # over all p² pairs
    assert out[m.EXCLUDED_LOSS] == pytest.approx(math.log(p), rel=1e-5)
    # the embedding: ten equal Fourier norms of p, six zero and a weak one: m equal non-zero
    # values of N have Gini (N - m) / N; W_L: whatever the random MLP has
    assert out[m.GINI_EMBEDDING] == pytest.approx((p - 10) / p, abs=0.01)
    assert 0 <= out[m.GINI_NEURON_LOGIT] < 1


def test_other_operations_record_none_and_s5_records_nothing():
    model = CircuitModel(17, [3], 1, True)
    out = make_task(TrainConfig(op="x/y", p=17, frac=0.5)).measures(model)
    assert all(out[name] is None for name in m.NANDA_MEASURES)
    assert make_task(TrainConfig(op="S5:x*y", frac=0.5)).measures(model) == {}  # none to take


# --- the phases ----------------------------------------------------------------------------------
def _nanda_like_curve(rng: np.random.Generator, grok: bool = True) -> dict[str, np.ndarray]:
    """Figure 7 of the paper, drawn by hand: memorization to 1.4k, the excluded loss rising to
    9.4k, the restricted (and test) loss collapsing from 9.4k to about 12k; 5% noise."""
    t = np.arange(0, 20_001, 100.0)
    ln_p = math.log(113)
    train = np.where(t < 1400, ln_p * np.exp(-t / 250), ln_p * np.exp(-1400 / 250))
    if grok:
        rise = np.clip((t - 1400) / 8000, 0, 1)
        excluded = np.where(t < 1400, train, train[14] * (ln_p / train[14]) ** rise)
        collapse = np.clip((t - 9400) / 2600, 0, 1)
        restricted = ln_p * (1e-4 / ln_p) ** (collapse**2)
    else:
        excluded, restricted = train.copy(), np.full_like(t, ln_p)
    noise = lambda: np.exp(rng.normal(0, 0.05, len(t)))  # noqa: E731
    return {
        m.STEP: t,
        m.TRAIN_LOSS: train * noise(),
        m.VAL_LOSS: restricted * noise(),
        m.EXCLUDED_LOSS: excluded * noise(),
        m.RESTRICTED_LOSS: restricted * noise(),
    }


def test_phases_on_a_synthetic_nanda_curve():
    found = P.nanda_phases(_nanda_like_curve(np.random.default_rng(0)))
    assert 1200 <= found[m.MEMORIZATION_END] <= 1600
    # 90% of the log-rise of the excluded loss: 1.4k + 0.9 * 8k = 8.6k
    assert 8200 <= found[m.CIRCUIT_FORMATION_END] <= 9400
    assert 11_000 <= found[m.CLEANUP_END] <= 12_400


def test_phases_of_a_run_that_only_memorizes_or_has_no_measures():
    found = P.nanda_phases(_nanda_like_curve(np.random.default_rng(1), grok=False))
    assert found == dict.fromkeys(m.NANDA_PHASES)
    plain = {m.STEP: [0, 100, 200], m.TRAIN_LOSS: [4.0, 1.0, 0.1]}
    assert P.nanda_phases(plain) == dict.fromkeys(m.NANDA_PHASES)
    none = {**plain, m.EXCLUDED_LOSS: [None, None, None], m.RESTRICTED_LOSS: [None] * 3}
    assert P.nanda_phases(none) == dict.fromkeys(m.NANDA_PHASES)
    assert P.nanda_phases({}) == dict.fromkeys(m.NANDA_PHASES)


def test_trials_table_gets_the_phases_from_curves():
    curve = pd.DataFrame(_nanda_like_curve(np.random.default_rng(0))).assign(trial_id="t1")
    _, headline = phase_rows(curve)
    assert (
        headline["t1"][m.MEMORIZATION_END]
        == P.nanda_phases({k: curve[k].to_numpy() for k in curve if k != "trial_id"})[
            m.MEMORIZATION_END
        ]
    )
    assert m.tensorboard_tag(m.RESTRICTED_LOSS) == "measures/restricted_loss"
    assert m.tensorboard_tag(m.CLEANUP_END) == "outcome/cleanup_end"


# --- real runs -----------------------------------------------------------------------------------
TINY = dict(
    op="x+y", p=23, frac=0.6, lr=5e-3, weight_decay=1.0, n_layers=1, d_model=32, d_mlp=64,
    eval_every=50, steps=300,
)  # fmt: skip


def test_trainer_records_the_measures_every_evaluation():
    from grok_tune.train import Trainer

    trainer = Trainer(TrainConfig(**TINY))
    trainer.run()
    curve = pd.DataFrame(trainer.history)
    for name in m.NANDA_MEASURES:
        assert curve[name].notna().all() and np.isfinite(curve[name]).all(), name
    # at chance at step 0: nothing to restrict or exclude yet
    assert curve[m.RESTRICTED_LOSS].iloc[0] == pytest.approx(math.log(23), abs=0.2)
    assert curve[m.EXCLUDED_LOSS].iloc[0] == pytest.approx(curve[m.TRAIN_LOSS].iloc[0], abs=0.2)
    assert set(m.NANDA_PHASES) <= set(trainer.phases())


def test_population_members_record_the_trainers_measures():
    from grok_tune.population import Population
    from grok_tune.train import Trainer

    cfgs = [TrainConfig(**{**TINY, "steps": 100}), TrainConfig(**{**TINY, "steps": 100, "seed": 1})]
    pop = Population(cfgs)
    pop.run()
    alone = Trainer(cfgs[1])
    alone.run()
    for name in m.NANDA_MEASURES:
        assert [r[name] for r in pop.history(1)] == pytest.approx(
            [r[name] for r in alone.history], rel=1e-6
        )
    assert set(m.NANDA_PHASES) <= set(pop.phases(0))
