import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grok_tune import metrics as m
from grok_tune import remedies as r


def grads_sequence(steps: int, shape: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(steps)]


def param_with_grad(grad: torch.Tensor) -> nn.Parameter:
    p = nn.Parameter(torch.zeros_like(grad))
    p.grad = grad.clone()
    return p


# --- Grokfast -------------------------------------------------------------------------------
def test_ema_follows_the_formula_from_the_first_step():
    alpha, lamb = 0.9, 2.0
    filt = r.GrokfastEMA(alpha=alpha, lamb=lamb)
    mu = None
    for g in grads_sequence(6, (3, 2)):
        p = param_with_grad(g)
        filt.apply([p])
        mu = g.clone() if mu is None else mu  # μ starts at the first gradient...
        mu = alpha * mu + (1 - alpha) * g  # ...and that step already updates it
        torch.testing.assert_close(p.grad, g + lamb * mu, rtol=1e-6, atol=1e-7)


def test_ma_adds_nothing_until_the_window_is_full_then_the_window_mean():
    window, lamb = 3, 5.0
    filt = r.GrokfastMA(window=window, lamb=lamb)
    seen = []
    for step, g in enumerate(grads_sequence(11, (4,)), start=1):
        p = param_with_grad(g)
        filt(p for p in [p])
        seen.append(g)
        if step < window:
            assert torch.equal(p.grad, g)
        else:
            mean = sum(seen[-window:]) / window  # the original's sum(deque) / len
            torch.testing.assert_close(p.grad, g + lamb * mean, rtol=1e-6, atol=1e-6)


def test_ma_running_sum_stays_close_to_the_exact_sum_over_many_windows():
    filt = r.GrokfastMA(window=7, lamb=1.0)
    # gradients that shrink by orders of magnitude, as late in a grokking run
    gs = [g * 10.0 ** (-k / 10) for k, g in enumerate(grads_sequence(100, (50,)))]
    for step, g in enumerate(gs, start=1):
        p = param_with_grad(g)
        filt.apply([p])
        if step >= 7:
            exact = torch.stack(gs[step - 7 : step]).double().mean(0)
            err = (p.grad.double() - g.double() - exact).abs().max()
            assert err <= 1e-5 * exact.abs().max()


def test_filters_skip_parameters_without_grad_and_keep_their_place():
    a, frozen, b = (
        nn.Parameter(torch.zeros(2)),
        nn.Parameter(torch.zeros(3)),
        nn.Parameter(torch.zeros(1)),
    )
    for filt in (r.GrokfastEMA(), r.GrokfastMA(window=2)):
        a.grad, frozen.grad, b.grad = torch.ones(2), None, torch.ones(1)
        filt.apply([a, frozen, b])
        filt.apply([a, frozen, b])
        assert frozen.grad is None
        assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
        with pytest.raises(ValueError, match="same parameters"):
            filt.apply([a, b])


# --- StableMax and cross-entropy ------------------------------------------------------------
def s_manual(x: float) -> float:
    return x + 1.0 if x >= 0 else 1.0 / (1.0 - x)


def test_stablemax_values_and_loss_against_a_manual_float64_computation():
    logits = torch.tensor([[2.0, -1.0, 0.0, 0.5], [-3.0, -0.25, 4.0, 1.0], [0.1, 0.2, 0.3, -9.0]])
    targets = torch.tensor([0, 2, -100])
    rows = [[s_manual(float(x)) for x in row] for row in logits]
    probs = [[v / sum(row) for v in row] for row in rows]
    torch.testing.assert_close(
        r.stablemax_probabilities(logits), torch.tensor(probs, dtype=torch.float64)
    )
    expected = -(math.log(probs[0][0]) + math.log(probs[1][2])) / 2  # row 3 is ignored
    loss = r.stablemax_cross_entropy(logits, targets)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-7)
    # s is not shift-invariant: unlike softmax, adding a constant changes the loss
    assert r.stablemax_cross_entropy(logits + 5.0, targets).item() != pytest.approx(expected)
    assert r.stablemax_cross_entropy(logits, torch.full((3,), -100)).isnan()


def test_stablemax_gradient_is_finite_everywhere_and_matches_float64():
    logits = torch.tensor([[1.0, 0.0, -1.0, 30.0], [-0.0, 1.0, 2.0, -50.0]], requires_grad=True)
    targets = torch.tensor([1, 3])
    r.stablemax_cross_entropy(logits, targets).backward()
    x64 = logits.detach().double().requires_grad_()
    s = torch.empty_like(x64)
    neg = x64 < 0  # each branch on its own elements: a where over both would give NaN at x = 1
    s[~neg], s[neg] = x64[~neg] + 1, 1 / (1 - x64[neg])
    (-(s / s.sum(1, keepdim=True)).log().gather(1, targets[:, None]).mean()).backward()
    assert logits.grad.dtype == torch.float32 and torch.isfinite(logits.grad).all()
    assert torch.equal(logits.grad, x64.grad.float())  # float64 gradient, rounded once


def test_cross_entropy_in_float64_against_the_formula():
    logits = torch.tensor(
        [[30.0, 0.0, -2.0], [1.0, 2.0, 3.0], [0.5, 0.5, 0.0]], dtype=torch.float32
    )
    targets = torch.tensor([1, 2, -100])
    manual = [
        -(float(logits[i, t]) - math.log(sum(math.exp(float(v)) for v in logits[i])))
        for i, t in ((0, 1), (1, 2))
    ]
    loss = r.cross_entropy(logits, targets, dtype=torch.float64)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(sum(manual) / 2, rel=1e-7)
    assert r.cross_entropy(logits, targets).item() == pytest.approx(sum(manual) / 2, rel=1e-6)


def test_loss_function_names_dtypes_and_the_papers_defaults():
    logits, targets = torch.randn(5, 7), torch.randint(0, 7, (5,))
    assert torch.equal(r.loss_function()(logits, targets), F.cross_entropy(logits, targets))
    assert torch.equal(
        r.loss_function("stablemax")(logits, targets),
        r.stablemax_cross_entropy(logits, targets, dtype=torch.float64),
    )
    assert torch.equal(
        r.loss_function("cross_entropy", "float64")(logits, targets),
        r.cross_entropy(logits, targets, dtype=torch.float64),
    )
    with pytest.raises(ValueError, match="not one of"):
        r.loss_function("mse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not one of"):
        r.loss_function("stablemax", "float16")


# --- ⊥Grad ----------------------------------------------------------------------------------
def test_orthogonal_grad_is_the_formula_orthogonal_and_keeps_the_norm():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 3))
    g = torch.randn(4, 3)
    w.grad = g.clone()
    r.orthogonalize_grads_([w])
    wf, gf = w.detach().double().flatten(), g.double().flatten()
    g_orth = gf - (wf @ gf) / (wf @ wf + 1e-30) * wf
    expected = g_orth * gf.norm() / g_orth.norm()
    torch.testing.assert_close(w.grad.double().flatten(), expected, rtol=1e-5, atol=1e-6)
    assert abs(float(wf @ w.grad.double().flatten())) < 1e-5
    assert float(w.grad.norm()) == pytest.approx(float(g.norm()), rel=1e-6)


def test_orthogonal_grad_of_a_gradient_along_w_is_zero_not_nan():
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    w.grad = torch.tensor([2.0, 4.0])
    zero = nn.Parameter(torch.zeros(3))
    zero.grad = torch.ones(3)
    r.orthogonalize_grads_([w, zero])
    assert torch.isfinite(w.grad).all() and float(w.grad.norm()) < 1e-6
    torch.testing.assert_close(zero.grad, torch.ones(3))  # w = 0: nothing to project out


def test_orthogonal_grad_per_member_equals_each_member_alone():
    torch.manual_seed(0)
    stacked = nn.Parameter(torch.randn(3, 4, 5))  # K = 3 members of a (4, 5) weight
    stacked.grad = torch.randn(3, 4, 5)
    singles = [nn.Parameter(stacked.detach()[k].clone()) for k in range(3)]
    for k, p in enumerate(singles):
        p.grad = stacked.grad[k].clone()
    r.orthogonalize_grads_([stacked], member_dim=0)
    r.orthogonalize_grads_(singles)
    for k, p in enumerate(singles):
        torch.testing.assert_close(stacked.grad[k], p.grad, rtol=1e-5, atol=1e-6)
    # the member axis need not lead
    moved = nn.Parameter(stacked.detach().movedim(0, 2).clone())
    moved.grad = torch.stack([p.grad for p in singles]).movedim(0, 2).clone()
    before = moved.grad.clone()
    r.orthogonalize_grads_([moved], member_dim=2)  # already orthogonal: unchanged
    torch.testing.assert_close(moved.grad, before, rtol=1e-4, atol=1e-5)


# --- weight-norm control --------------------------------------------------------------------
def test_fix_weight_norm_gives_the_target_norm_and_keeps_directions():
    torch.manual_seed(0)
    ps = [nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.randn(4))]
    before = [p.detach().clone() for p in ps]
    old = r.fix_weight_norm_(ps, 2.5)
    manual = math.sqrt(sum(float(v) ** 2 for p in before for v in p.flatten()))
    assert float(old) == pytest.approx(manual, rel=1e-6)
    assert float(r.total_norm(ps)) == pytest.approx(2.5, rel=1e-6)
    for p, b in zip(ps, before, strict=True):
        torch.testing.assert_close(p.detach(), b * (2.5 / manual))


def test_fix_weight_norm_per_member():
    torch.manual_seed(0)
    ps = [nn.Parameter(torch.randn(3, 4, 2)), nn.Parameter(torch.randn(3, 5))]
    target = torch.tensor([1.0, 2.0, 3.0])
    r.fix_weight_norm_(ps, target, member_dim=0)
    for k in range(3):
        norm = math.sqrt(sum(float(p.detach()[k].square().sum()) for p in ps))
        assert norm == pytest.approx(float(target[k]), rel=1e-6)
    torch.testing.assert_close(r.total_norm(ps, member_dim=0), target)


# --- measures -------------------------------------------------------------------------------
def test_softmax_collapse_on_crafted_rows():
    logits = torch.tensor(
        [
            [30.0, 0.0, 0.0, 0.0, 0.0],  # gap 30: exp(-30) vanishes against 1 in float32
            [5.0, 0.0, 0.0, 0.0, 0.0],  # gap 5: does not
            [-7.0, 23.0, -1.0, 0.0, 2.0],  # gap 21
            [1.0, 1.0, 0.0, 0.0, 0.0],  # a tie: two terms of 1
        ]
    )
    assert m.softmax_collapse(logits) == 0.5
    assert m.softmax_collapse(logits, dtype=torch.float64) == 0.0
    # what "collapsed" means for training: the loss and the argmax logit's gradient are exactly
    # 0; the other logits get exp(-30) each
    row = logits[:1].clone().requires_grad_()
    loss = F.cross_entropy(row, torch.tensor([0]))
    loss.backward()
    assert loss.item() == 0.0 and row.grad[0, 0] == 0.0
    assert row.grad[0, 1:].max() < 1e-12


def test_logit_gap_is_the_mean_top_two_difference():
    logits = torch.tensor([[30.0, 0.0, 1.0], [5.0, 4.0, -2.0], [2.0, 2.0, 0.0]])
    assert m.logit_gap(logits) == pytest.approx((29.0 + 1.0 + 0.0) / 3)
    with pytest.raises(ValueError):
        m.logit_gap(torch.zeros(4, 1))


# --- resume and composition on a tiny model -------------------------------------------------
DATA_GEN = torch.Generator().manual_seed(1)
X = torch.randn(32, 6, generator=DATA_GEN)
Y = torch.randint(0, 5, (32,), generator=DATA_GEN)


def make_run(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def train(model, opt, steps, filt=None, ortho=False, norm=None, loss_fn=F.cross_entropy):
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(X), Y).backward()
        if filt is not None:
            filt.apply(model.parameters())
        if ortho:
            r.orthogonalize_grads_(model.parameters())
        opt.step()
        if norm is not None:
            r.fix_weight_norm_(model.parameters(), norm)
            assert float(r.total_norm(model.parameters())) == pytest.approx(norm, rel=1e-5)
            assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("make_filter", "n_before"),
    [
        (lambda: r.GrokfastEMA(alpha=0.9, lamb=2.0), 5),
        (lambda: r.GrokfastMA(window=4, lamb=5.0), 2),  # checkpoint before the window fills
        (lambda: r.GrokfastMA(window=4, lamb=5.0), 6),  # after a refresh of the running sum
    ],
)
def test_filters_resume_bit_for_bit_through_a_checkpoint(make_filter, n_before):
    model, opt = make_run()
    filt = make_filter()
    train(model, opt, n_before, filt, ortho=True)
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "filt": filt.state_dict()}, buffer
    )
    train(model, opt, 7, filt, ortho=True)

    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    model2, opt2 = make_run(seed=123)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    filt2 = make_filter()
    filt2.load_state_dict(ckpt["filt"])
    train(model2, opt2, 7, filt2, ortho=True)
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_checkpoint_does_not_load_into_a_differently_configured_filter():
    model, opt = make_run()
    filt = r.GrokfastMA(window=4)
    train(model, opt, 2, filt)
    with pytest.raises(ValueError, match="window"):
        r.GrokfastMA(window=5).load_state_dict(filt.state_dict())


@pytest.mark.parametrize("make_filter", [r.GrokfastEMA, lambda: r.GrokfastMA(window=3)])
def test_all_remedies_together(make_filter):
    model, opt = make_run()
    target = float(r.total_norm(model.parameters()))  # Omnigrok: hold the initial norm
    train(
        model, opt, 8, make_filter(), ortho=True, norm=target, loss_fn=r.loss_function("stablemax")
    )
    logits = model(X)
    assert 0.0 <= m.softmax_collapse(logits) <= 1.0
    assert math.isfinite(m.logit_gap(logits))
