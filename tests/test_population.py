"""Populations: K runs trained together give each member the run it is alone.

On CPU a population steps each member's own model (the per-member path), so a member's records
and weights are bit for bit those of ``Trainer(cfg).run()`` (a population of one) at the same
thread count, dropout included: the tests compare with ``==`` (NaN equal to NaN), not a
tolerance; what they hold is that members never reach into each other (generators, filters,
retirement, checkpoints). The stacked path (every member in one pass: the GPU path) rounds
differently and is held to the per-member one within a tolerance measured here (see
test_stacked_path_agrees_to_rounding). One thread, tiny models: about 40 s in all.
"""

import copy
import math

import pytest
import torch

from grok_tune import metrics as m
from grok_tune.member import lr_at
from grok_tune.model import Transformer
from grok_tune.packing import (
    EFFECTIVE_BATCH,
    check_population,
    effective_batch_size,
    population_groups,
    population_key,
)
from grok_tune.population import Population
from grok_tune.train import TrainConfig, Trainer, model_config

# x+y mod 23 on a 1-layer width-32 model: a few seconds for a handful of runs
SMALL = dict(
    op="x+y", p=23, frac=0.8, batch_size=64, lr=5e-3, n_layers=1, d_model=32, d_mlp=64,
    eval_every=25, steps=100,
)  # fmt: skip
# width 64 generalizes: seed 0 memorizes at step 225, generalizes at 375 and stops at 500
GROKS = {**SMALL, "d_model": 64, "d_mlp": 256, "steps": 700, "stop_after_generalized": 2}
ADDITION = dict(
    task="addition", digits=2, train_size=200, val_size=100, n_layers=1, d_model=32, d_mlp=64,
    eval_every=25, steps=75, lr=5e-3,
)  # fmt: skip
INDUCTION = dict(
    task="repeated_subsequence", seq_len=12, sub_len=3, repeats=2, vocab=16, train_size=64,
    val_size=32, n_layers=2, d_model=32, n_heads=4, d_mlp=0, eval_every=25, steps=75, lr=3e-3,
)  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # exactness is per thread count: Trainer runs under the same
    yield
    torch.set_num_threads(threads)


def same(a: object, b: object) -> bool:
    """Equal, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def without_clock(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != m.ELAPSED_S}


def assert_same_records(h1: list[dict], h2: list[dict]) -> None:
    assert len(h1) == len(h2)
    for a, b in zip(h1, h2, strict=True):
        a, b = without_clock(a), without_clock(b)
        assert a.keys() == b.keys()
        bad = {k: (a[k], b[k]) for k in a if not same(a[k], b[k])}
        assert not bad, f"step {a[m.STEP]}: {bad}"


def assert_same_weights(s1: dict, s2: dict) -> None:
    assert s1.keys() == s2.keys()
    for name in s1:  # bit for bit, NaN (a diverged member) equal to NaN
        torch.testing.assert_close(s1[name], s2[name], rtol=0, atol=0, equal_nan=True, msg=name)


def equal_states(a: object, b: object) -> bool:
    """Checkpoint states equal, tensors by value."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(equal_states(a[k], b[k]) for k in a)
        )
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(equal_states(x, y) for x, y in zip(a, b, strict=True))
    return same(a, b)


def configs(base: dict, *variants: dict) -> list[TrainConfig]:
    return [TrainConfig(**{**base, **v}) for v in variants]


CASES = {
    "seeds": configs(SMALL, {"seed": 0}, {"seed": 1}, {"seed": 2}),
    "lr_and_weight_decay": configs(
        SMALL, {}, {"seed": 1, "lr": 2e-3, "weight_decay": 0.3}, {"seed": 2, "weight_decay": 0}
    ),
    "frac": configs(SMALL, {"frac": 0.5}, {"frac": 0.8, "seed": 1}, {"frac": 0.6, "seed": 2}),
    "init_scale": configs(SMALL, {}, {"seed": 1, "init_scale": 2.0}),
    "adam_and_decay_scopes": configs(
        {**SMALL, "optimizer": "adam", "weight_decay": 0.1},
        {"decay_scope": "all"},
        {"decay_scope": "matrices", "seed": 1},
        {"decay_scope": "matrices_except_embeddings", "seed": 2},
    ),
    "two_layers_shared_prefix": configs({**SMALL, "n_layers": 2}, {}, {"seed": 1, "lr": 1e-2}),
    "nanda_model": configs(
        {
            **SMALL,
            "layer_norm": False,
            "attn_bias": False,
            "head_bias": False,
            "init": "width_scaled",
            "operator_token": False,
            "activation": "gelu",
        },
        {},
        {"seed": 1},
    ),
    "addition_finite": configs(ADDITION, {}, {"seed": 1, "lr": 1e-3}),
    "addition_infinite": configs(
        {**ADDITION, "train_size": "infinite", "batch_size": 32}, {}, {"seed": 1}
    ),
    "repeated_subsequence_attention_only": configs(INDUCTION, {}, {"seed": 1}),
    # each remedy beside a member without it (the remedy on a subset of the stack's rows)
    "grokfast_ema": configs(
        SMALL,
        {"grad_filter": "ema"},
        {"seed": 1},
        {"grad_filter": "ema", "grokfast_alpha": 0.9, "seed": 2},
        {"grad_filter": "ema", "seed": 3},
    ),
    "grokfast_ma": configs(
        SMALL,
        {"grad_filter": "ma", "grokfast_window": 5},
        {"seed": 1},
        {"grad_filter": "ma", "grokfast_window": 3, "grokfast_lamb": 2.0, "seed": 2},
    ),
    "orthogonal_grad": configs(
        {**SMALL, "weight_decay": 0.0}, {"orthogonal_grad": True}, {"seed": 1}
    ),
    "fixed_weight_norm": configs(
        {**SMALL, "weight_decay": 0.0},
        {"fixed_weight_norm": True, "init_scale": 2.0},
        {"seed": 1},
        {"fixed_weight_norm": True, "seed": 2},
    ),
    "stablemax": configs({**SMALL, "loss": "stablemax"}, {}, {"seed": 1}),
    "thresholds_and_stopping": configs(
        SMALL,
        {"threshold": 0.3, "stop_after_generalized": 1},
        {"seed": 1, "threshold": 0.5},
        {"seed": 2, "confusion_step": 50},
    ),
}


@pytest.mark.parametrize("cfgs", CASES.values(), ids=CASES.keys())
def test_members_match_trainer_bit_for_bit(cfgs):
    pop = Population(cfgs)
    finals = pop.run()
    for i, cfg in enumerate(cfgs):
        trainer = Trainer(cfg)
        final = trainer.run()
        assert_same_records(trainer.history, pop.history(i))
        assert_same_records([finals[i]], [final])
        assert_same_weights(trainer.model.state_dict(), pop.member_state_dict(i))
        assert pop.summary(i) == {**trainer.summary(), "population_size": len(cfgs)}
        assert pop.phases(i) == trainer.phases()


def test_a_member_that_generalizes_stops_while_another_goes_on():
    cfgs = configs(GROKS, {}, {"weight_decay": 0.0, "seed": 1})
    pop = Population(cfgs)
    last_weights = {}

    def on_eval(records, population):
        assert all(r[m.STEP] == population.step for r in records.values())
        for i, record in records.items():
            if record[m.DONE]:
                last_weights[i] = population.member_state_dict(i)

    finals = pop.run(on_eval)
    assert finals[0][m.STATUS] == m.Status.GENERALIZED
    assert finals[1][m.STATUS] == m.Status.CENSORED
    assert finals[0][m.STEP] < finals[1][m.STEP] == GROKS["steps"]
    assert len(pop.history(0)) < len(pop.history(1))
    # left the stack at its last evaluation: nothing of it changed while the other trained
    assert_same_weights(last_weights[0], pop.member_state_dict(0))
    assert pop.active == []
    for i, cfg in enumerate(cfgs):
        trainer = Trainer(cfg)
        trainer.run()
        assert_same_records(trainer.history, pop.history(i))
        assert_same_weights(trainer.model.state_dict(), pop.member_state_dict(i))


def test_a_diverging_member_stops_as_diverged_without_disturbing_the_others():
    cfgs = configs(SMALL, {"lr": 1e3}, {"seed": 1}, {"seed": 2, "grad_filter": "ema"})
    pop = Population(cfgs)
    finals = pop.run()
    assert finals[0][m.STATUS] == m.Status.DIVERGED
    assert finals[0][m.STEP] < SMALL["steps"]
    assert [f[m.STEP] for f in finals[1:]] == [SMALL["steps"]] * 2
    for i, cfg in enumerate(cfgs):
        trainer = Trainer(cfg)
        trainer.run()
        assert_same_records(trainer.history, pop.history(i))
    # the others are what they are alone, too
    alone = Population(cfgs[1:])
    alone.run()
    for i in (1, 2):
        assert_same_records(pop.history(i), alone.history(i - 1))


@pytest.mark.parametrize("kill_at", [50, 75])
def test_checkpoint_at_an_evaluation_resumes_bit_for_bit(tmp_path, kill_at):
    cfgs = configs(
        {**SMALL, "grad_filter": "ema"},
        {"dropout": 0.1},
        {"seed": 1, "lr": 1e3},  # diverges at step 25: retired before the kill, filter sliced
        {"seed": 2},
        {"seed": 3, "grad_filter": "ma", "grokfast_window": 5, "dropout": 0.2},
        {"seed": 4, "grad_filter": "none", "stop_after_generalized": 1, "frac": 0.5},
    )
    path = tmp_path / "population.pt"

    def save_at(records, population):
        if population.step == kill_at:
            population.save(path)

    whole = Population(cfgs)
    whole.run(save_at)
    assert whole.statuses[1] == m.Status.DIVERGED
    resumed = Population(cfgs)
    resumed.load(path)
    assert resumed.step == kill_at and 1 not in resumed.active
    resumed.run()
    for i in range(len(cfgs)):
        assert_same_records(whole.history(i), resumed.history(i))
        assert_same_weights(whole.member_state_dict(i), resumed.member_state_dict(i))


def test_state_dict_is_a_copy_and_refuses_another_population():
    cfgs = configs(SMALL, {}, {"seed": 1})
    for stacked in (False, True):
        pop = Population(cfgs, stacked=stacked)
        taken: dict = {}

        def take(records, population, taken=taken):
            if population.step == 50:
                taken["state"] = population.state_dict()
                taken["copy"] = copy.deepcopy(taken["state"])

        pop.run(take)  # trains on to step 100 after the state was taken: it must not move
        assert equal_states(taken["state"], taken["copy"])
        state = taken["state"]
    other = Population(configs(SMALL, {}, {"seed": 1, "lr": 1e-3}))
    with pytest.raises(ValueError, match=r"member 1: lr 0\.005 there, 0\.001 here"):
        other.load_state_dict(state)


def test_dropout_draws_from_each_members_own_stream():
    with_dropout = TrainConfig(**SMALL, dropout=0.1)
    a = Population([with_dropout, TrainConfig(**SMALL, seed=1)])
    b = Population([TrainConfig(**SMALL, seed=2, dropout=0.3), with_dropout])
    a.run()
    b.run()
    assert_same_records(a.history(0), b.history(1))
    # dropout is on: the run differs from the one without
    plain = Population([TrainConfig(**SMALL)])
    plain.run()
    assert plain.history(0)[-1][m.TRAIN_LOSS] != a.history(0)[-1][m.TRAIN_LOSS]


MLP = {k: v for k, v in SMALL.items() if k != "d_model"} | {"architecture": "mlp", "n_layers": 2}
# the model of grok_tune/model.py run with a member axis: every architecture and block it has
STACKED_CASES = {
    "remedies": configs(
        {**SMALL, "n_layers": 2},
        {},
        {"seed": 1, "grad_filter": "ema"},
        {"seed": 2, "fixed_weight_norm": True, "weight_decay": 0.0},
        {"seed": 3, "orthogonal_grad": True, "decay_scope": "matrices"},
    ),
    "post_norm_xavier_extra_class": configs(
        {**SMALL, "n_layers": 2, "block_norm": "post", "attn_init": "xavier", "extra_classes": 1},
        {},
        {"seed": 1, "weight_decay": 0.3},
    ),
    "stream_norm_tanh": configs(
        {**SMALL, "n_layers": 2, "block_norm": "stream", "activation": "tanh"}, {}, {"seed": 1}
    ),
    "nanda_no_layer_norm": configs(
        {
            **SMALL,
            "layer_norm": False,
            "operator_token": False,
            "init": "width_scaled",
            "loss_dtype": "float64",
            "warmup_from_zero": True,
        },
        {},
        {"seed": 1},
    ),
    "mlp_one_hot": configs(
        {**MLP, "mlp_input": "one_hot", "mlp_bias": False},
        {},
        {"seed": 1, "orthogonal_grad": True},
    ),
    "mlp_embedding": configs(
        {**MLP, "d_model": 8, "activation": "tanh", "init": "uniform_embeddings"},
        {},
        {"seed": 1, "init_scale": 2.0},
    ),
}


@pytest.mark.parametrize("cfgs", STACKED_CASES.values(), ids=STACKED_CASES.keys())
def test_stacked_path_agrees_to_rounding(cfgs):
    """Every member in one pass, LayerNorm's gain and bias and AdamW over the whole stack: the
    GPU path. Its LayerNorm backward and the optimizer's tail elements round differently from
    torch's per-tensor kernels; over 100 steps the curves stayed within 2e-6 (relative) of the
    exact path here, so 1e-4 leaves room for other processors and amplification."""
    exact = Population(cfgs)
    exact.run()
    stacked = Population(cfgs, stacked=True, chunk=len(cfgs))
    stacked.run()
    for i in range(len(cfgs)):
        for a, b in zip(exact.history(i), stacked.history(i), strict=True):
            assert a[m.STATUS] == b[m.STATUS]
            for k in (m.TRAIN_ACC, m.VAL_ACC):
                assert abs(a[k] - b[k]) <= 0.02, (i, a[m.STEP], k)
            for k in (m.TRAIN_LOSS, m.VAL_LOSS, m.WEIGHT_NORM, m.LOGIT_GAP):
                assert b[k] == pytest.approx(a[k], rel=1e-4), (i, a[m.STEP], k)


def test_stacked_dropout_draws_from_each_members_own_stream():
    """On the stacked path a member's masks come from its own generator (the model's dropout
    sites, drawn by the stack): who else is in the population changes its run by rounding at
    most; and dropout is on (the attention weights' too: no shared prefix, plain matmuls)."""
    base = {**SMALL, "n_layers": 2}
    with_dropout = TrainConfig(**base, dropout=0.1)
    a = Population([with_dropout, TrainConfig(**base, seed=1)], stacked=True)
    b = Population([TrainConfig(**base, seed=2, dropout=0.3), with_dropout], stacked=True)
    plain = Population([TrainConfig(**base), TrainConfig(**base, seed=1)], stacked=True)
    for pop in (a, b, plain):
        pop.run()
    for x, y in zip(a.history(0), b.history(1), strict=True):
        for k in (m.TRAIN_LOSS, m.VAL_LOSS, m.WEIGHT_NORM):
            assert y[k] == pytest.approx(x[k], rel=1e-4), (x[m.STEP], k)
    assert plain.history(0)[-1][m.TRAIN_LOSS] != pytest.approx(
        a.history(0)[-1][m.TRAIN_LOSS], rel=1e-3
    )


def test_stacked_optimizer_is_the_fused_kernels_step():
    cfgs = configs(
        {**SMALL, "n_layers": 2},
        {"decay_scope": "matrices"},
        {"seed": 1, "lr": 1e-2, "weight_decay": 0.3},
    )
    each, stacked = Population(cfgs), Population(cfgs, stacked=True)
    stack = stacked.path
    torch.manual_seed(0)
    for step in range(3):  # the same gradients into both, warm-up lr and bias corrections included
        g = torch.zeros_like(stack._flat)  # the columns between tensors get no gradient
        for r, member in enumerate(each.path.members):
            for name, param in member.model.named_parameters():
                param.grad = torch.randn_like(param)
                slot = stack._slots[name]
                g[r, slot.start : slot.stop] = param.grad.flatten()
            for group, lr in zip(member.optimizer.param_groups, member.base_lrs, strict=True):
                group["lr"] = lr_at(member.cfg, step, lr)
            member.optimizer.step()
        with torch.no_grad():
            stack._adam(step, stack._flat, g)
    for i in range(len(cfgs)):
        for name, w in each.member_state_dict(i).items():
            torch.testing.assert_close(stacked.member_state_dict(i)[name], w, rtol=1e-6, atol=1e-7)


def test_member_weights_load_into_the_model_and_build_a_population():
    cfgs = configs({**SMALL, "n_layers": 2}, {}, {"seed": 1, "init_scale": 3.0})
    pop = Population(cfgs)
    models = []
    for i, cfg in enumerate(cfgs):
        model = Transformer(model_config(cfg, pop.layout))
        model.load_state_dict(pop.member_state_dict(i))
        assert_same_weights(model.state_dict(), Trainer(cfg).model.state_dict())
        models.append(model)
    for stacked in (False, True):
        again = Population(cfgs, models=models, stacked=stacked)
        for i in range(len(cfgs)):
            assert_same_weights(again.member_state_dict(i), pop.member_state_dict(i))
    assert_same_weights(pop.member_model(1).state_dict(), pop.member_state_dict(1))


def test_members_that_cannot_share_a_population_are_refused_naming_the_setting():
    base = TrainConfig(**SMALL)
    for change, name in [
        ({"p": 29}, "p"),
        ({"n_layers": 2}, "n_layers"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"steps": 200}, "steps"),
        ({"loss": "stablemax"}, "loss"),
        ({"batch_size": None}, EFFECTIVE_BATCH),  # min(512, half of 423) = 211, not 64
    ]:
        other = TrainConfig(**{**SMALL, **change})
        with pytest.raises(ValueError, match=f"members 0 and 1 cannot share a population: {name} "):
            Population([base, other])
        assert population_key(other) != population_key(base)
    with pytest.raises(ValueError, match="at least one member"):
        check_population([])
    # what may differ does not split a group; the default batch follows the training set
    mixed = [base, TrainConfig(**{**SMALL, "lr": 1e-3, "seed": 3, "dropout": 0.1})]
    check_population(mixed)
    halves = [TrainConfig(**{**SMALL, "batch_size": None, "frac": f}) for f in (0.5, 0.8, 0.5)]
    assert [effective_batch_size(c) for c in halves] == [132, 211, 132]
    assert population_groups([*halves, base]) == [[0, 2], [1], [3]]
    assert population_groups([base] * 5, max_size=2) == [[0, 1], [2, 3], [4]]


# tests/data/legacy_trainer.pt: ``Trainer.save`` at step 50 of this run (of 100), written by
# grok_tune at 77b062c, the last version whose single runs had a loop of their own; its run
# ended with train loss 3.131999275081265 there
LEGACY = dict(SMALL, dropout=0.1, grad_filter="ema", seed=3)


def test_a_checkpoint_from_before_the_one_engine_resumes_bit_for_bit():
    """A study started with the older version resumes with this one (trainable.py finds the old
    file name): the same records and weights as the run uninterrupted, dropout included."""
    from pathlib import Path

    legacy = Path(__file__).parent / "data" / "legacy_trainer.pt"
    cfg = TrainConfig(**LEGACY)
    whole = Trainer(cfg)
    whole.run()
    assert whole.history[-1][m.TRAIN_LOSS] == 3.131999275081265  # as the old engine ended it
    resumed = Trainer(cfg)
    resumed.load(legacy)
    assert resumed.step == 50 and len(resumed.history) == 3
    resumed.run()
    assert_same_records(whole.history, resumed.history)
    assert_same_weights(whole.model.state_dict(), resumed.model.state_dict())
    with pytest.raises(ValueError, match="packed trial of grok_tune before its one engine"):
        Population(configs(SMALL, {}, {"seed": 1})).load_state_dict({"flat": torch.zeros(2, 3)})
