"""architecture: mlp — the anchors' MLP (Liu et al.'s embedding toy model, Prieto et al.'s
one-hot MLP) held to a direct computation, trained through the one Trainer, resumed, refused
where it does not belong."""

import numpy as np
import pytest
import torch

from grok_tune import metrics as m
from grok_tune.config import TrainConfig
from grok_tune.model import MLP, ModelConfig, build_model
from grok_tune.packing import check_population, population_groups, why_not_stacked
from grok_tune.population import Population
from grok_tune.train import Trainer

# x+y mod 13 at 70% of the table: each MLP memorizes it within a few hundred steps
LIU = dict(
    architecture="mlp",
    mlp_input="embedding",
    op="x+y",
    p=13,
    frac=0.7,
    d_model=8,
    d_mlp=32,
    n_layers=2,
    activation="tanh",
    init="uniform_embeddings",
    lr=3e-3,
    embedding_lr=1e-2,
    weight_decay=0.0,
    decay_scope="all_except_embeddings",
    eval_every=50,
    steps=1500,
)
PRIETO = dict(
    architecture="mlp",
    mlp_input="one_hot",
    op="x+y",
    p=13,
    frac=0.7,
    d_mlp=32,
    n_layers=2,
    mlp_bias=False,
    lr=1e-2,
    weight_decay=0.0,
    eval_every=50,
    steps=1500,
)


def small(mlp_input: str, **kw) -> MLP:
    # the table 'a ∘ b =': operands at positions 0 and 2, elements 0..4
    cfg = ModelConfig(
        vocab_size=7,
        num_classes=5,
        n_positions=4,
        operands=(0, 2),
        operand_vocab=5,
        architecture="mlp",
        mlp_input=mlp_input,
        d_model=3,
        d_mlp=4,
        n_layers=2,
        **kw,
    )
    return MLP(cfg)


def test_embedding_input_is_the_sum_of_both_operands_then_the_mlp():
    torch.manual_seed(0)
    model = small("embedding", activation="tanh")
    rng = np.random.default_rng(1)
    weights = {k: rng.normal(size=tuple(v.shape)) for k, v in model.state_dict().items()}
    model.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in weights.items()})
    idx = torch.tensor([[0, 5, 3, 6], [4, 5, 4, 6], [2, 5, 1, 6]])
    out = model(idx).detach().numpy()
    assert out.shape == (3, 1, 5)
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    for row, (a, b) in enumerate([(0, 3), (4, 4), (2, 1)]):
        h = w["tok_emb.weight"][a] + w["tok_emb.weight"][b]  # Liu et al.: E_a + E_b
        h = np.tanh(w["hidden.0.weight"] @ h + w["hidden.0.bias"])
        h = np.tanh(w["hidden.2.weight"] @ h + w["hidden.2.bias"])
        logits = w["head.weight"] @ h + w["head.bias"]
        np.testing.assert_allclose(out[row, 0], logits, rtol=1e-5, atol=1e-5)


def test_one_hot_input_is_the_concatenated_operands_then_bias_free_relu_layers():
    torch.manual_seed(0)
    model = small("one_hot", mlp_bias=False, activation="relu")
    assert model.tok_emb is None and all(mod.bias is None for mod in (model.head,))
    rng = np.random.default_rng(2)
    weights = {k: rng.normal(size=tuple(v.shape)) for k, v in model.state_dict().items()}
    assert set(weights) == {"hidden.0.weight", "hidden.2.weight", "head.weight"}
    assert weights["hidden.0.weight"].shape == (4, 10)  # two one-hot vectors of 5
    model.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in weights.items()})
    idx = torch.tensor([[0, 5, 3, 6], [4, 5, 4, 6]])
    out = model(idx).detach().numpy()
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    for row, (a, b) in enumerate([(0, 3), (4, 4)]):
        x = np.concatenate([np.eye(5)[a], np.eye(5)[b]])  # Prieto et al.: flattened one-hots
        h = relu(weights["hidden.0.weight"] @ x)
        h = relu(weights["hidden.2.weight"] @ h)
        np.testing.assert_allclose(out[row, 0], weights["head.weight"] @ h, rtol=1e-5, atol=1e-5)
    # the first operand's columns are its 'embedding' for the Fourier measures
    assert torch.equal(model.operand_embedding(), model.hidden[0].weight[:, :5].T)


def test_without_operator_token_the_operands_are_positions_0_and_1():
    cfg = TrainConfig(**{**PRIETO, "operator_token": False, "steps": 1})
    trainer = Trainer(cfg)
    assert trainer.model.cfg.operands == (0, 1)
    x = trainer.train_data.x[:3]
    eye = torch.eye(13)
    expected = torch.cat([eye[x[:, 0]], eye[x[:, 1]]], dim=1)
    w1, w2, head = (p.detach() for p in trainer.model.parameters())
    direct = torch.relu(torch.relu(expected @ w1.T) @ w2.T) @ head.T
    torch.testing.assert_close(trainer.model(x)[:, 0], direct)


def test_liu_init_is_uniform_embeddings_and_scaled():
    torch.manual_seed(0)
    model = small("embedding", init="uniform_embeddings")
    assert model.tok_emb.weight.abs().max() <= 0.5
    torch.manual_seed(0)
    scaled = small("embedding", init="uniform_embeddings", init_scale=3.0)
    torch.testing.assert_close(scaled.tok_emb.weight, 3.0 * model.tok_emb.weight)
    torch.testing.assert_close(scaled.head.weight, 3.0 * model.head.weight)


def test_the_embedding_learns_on_its_own_learning_rate():
    cfg = TrainConfig(**{**LIU, "warmup_steps": 0, "weight_decay": 0.5, "steps": 1})
    trainer = Trainer(cfg)
    groups = trainer.optimizer.param_groups
    emb = trainer.model.tok_emb.weight
    own = [g for g in groups if any(p is emb for p in g["params"])]
    assert len(own) == 1 and own[0]["lr"] == 1e-2 and own[0]["weight_decay"] == 0.0
    rest = [g for g in groups if g is not own[0] and g["params"]]
    assert all(g["lr"] == 3e-3 and g["weight_decay"] == 0.5 for g in rest)
    # every decoder tensor decays, biases included (Liu et al.'s AdamW on the decoder)
    assert trainer.decayed_params == trainer.model.num_params(non_embedding=True)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.run()
    # Adam's first step moves every coordinate with a gradient by about its lr: sign(g)·lr
    moved = (emb.detach() - before["tok_emb.weight"]).abs()
    assert moved.max() == pytest.approx(1e-2, rel=1e-3)
    head = trainer.model.head.weight.detach()
    shrink = before["head.weight"] * (1 - 3e-3 * 0.5)
    assert ((head - shrink).abs().max()) == pytest.approx(3e-3, rel=1e-3)


def test_embedding_lr_survives_warm_up():
    trainer = Trainer(TrainConfig(**{**LIU, "warmup_steps": 10, "steps": 5, "eval_every": 5}))
    trainer.run()
    lrs = sorted({g["lr"] for g in trainer.optimizer.param_groups})
    assert lrs == pytest.approx([3e-3 * 5 / 10, 1e-2 * 5 / 10])


@pytest.mark.parametrize("settings", [LIU, PRIETO], ids=["liu", "prieto"])
def test_a_short_run_memorizes_a_small_table(settings):
    torch.manual_seed(123)
    final = Trainer(TrainConfig(**settings)).run()
    assert final[m.STEPS_TO_MEMORIZE] is not None and final[m.STEPS_TO_MEMORIZE] <= 1000
    assert final[m.TRAIN_ACC] >= 0.99
    assert final[m.SOFTMAX_COLLAPSE] is not None


def test_build_model_picks_the_architecture():
    cfg = ModelConfig(vocab_size=7, num_classes=5, operands=(0, 2), operand_vocab=5)
    assert type(build_model(cfg)).__name__ == "Transformer"
    cfg.architecture = "mlp"
    assert isinstance(build_model(cfg), MLP)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({**PRIETO, "n_heads": 8}, "n_heads: not a setting of the model of architecture mlp"),
        ({**PRIETO, "layer_norm": False}, "layer_norm: not a setting"),
        ({**PRIETO, "dropout": 0.1}, "dropout: not a setting"),
        ({**PRIETO, "embedding_lr": 1e-3}, "with one-hot input"),
        ({**PRIETO, "d_model": 64}, "with one-hot input"),
        ({**PRIETO, "init": "width_scaled"}, "architecture mlp knows pytorch"),
        ({**PRIETO, "init": "uniform_embeddings"}, "needs mlp_input embedding"),
        ({**PRIETO, "d_mlp": 0}, "d_mlp = 0"),
        ({"architecture": "mlp", "task": "addition"}, "task addition has none"),
        ({"mlp_input": "one_hot"}, "mlp_input: not a setting of the model of architecture trans"),
        ({"mlp_bias": False}, "mlp_bias: not a setting"),
        ({"init": "uniform_embeddings"}, "architecture transformer knows"),
    ],
)
def test_settings_of_the_other_architecture_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


def test_unread_settings_are_blank_in_the_record():
    used = TrainConfig(**PRIETO).used()
    assert used["n_heads"] is None and used["layer_norm"] is None and used["d_model"] is None
    assert used["mlp_input"] == "one_hot" and used["d_mlp"] == 32
    used = TrainConfig(**LIU).used()
    assert used["d_model"] == 8 and used["embedding_lr"] == 1e-2
    assert TrainConfig().used()["mlp_input"] is None


def without_clock(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != m.ELAPSED_S}


def test_a_population_of_mlps_trains_each_member_as_its_run_alone():
    """MLP members packed like any other study's: on the per-member path (CPU's), each bit for
    bit its run alone; the stacked path runs them too (tests/test_population.py)."""
    cfgs = [TrainConfig(**{**PRIETO, "seed": s, "steps": 60, "eval_every": 20}) for s in range(2)]
    assert population_groups(cfgs, 2) == [[0, 1]]
    pop = Population(cfgs)
    assert not pop.stacked
    pop.run()
    for i, cfg in enumerate(cfgs):
        alone = Trainer(cfg)
        alone.run()
        assert [without_clock(r) for r in pop.history(i)] == [
            without_clock(r) for r in alone.history
        ]


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"embedding_lr": 1e-2}, "embedding_lr 0.01"),
        ({**LIU, "embedding_lr": 1e-3}, "embedding_lr 0.001"),
    ],
)
def test_the_stacked_path_names_what_it_does_not_know(settings, named):
    cfgs = [TrainConfig(**settings)]
    assert named in (why_not_stacked(cfgs) or "")
    check_population(cfgs)  # a population still: on the per-member path


def test_transformer_settings_are_refused_for_the_mlp():
    with pytest.raises(ValueError, match="block_norm: not a setting"):
        TrainConfig(**{**PRIETO, "block_norm": "post"})
