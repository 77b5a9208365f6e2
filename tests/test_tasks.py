"""Every task through the one loop: layouts, per-position metrics, the data command, resume."""

from __future__ import annotations

import pytest
import torch

from grok_tune import data
from grok_tune import metrics as m
from grok_tune.config import TrainConfig
from grok_tune.tasks import IGNORE
from grok_tune.train import Trainer

from .conftest import TINY_PARAMS
from .test_mlp import LIU, PRIETO

SMALL_MODEL = {
    "n_layers": 1,
    "d_model": 32,
    "n_heads": 4,
    "d_mlp": 64,
    "eval_every": 20,
    "batch_size": 64,
}
ADDITION = {"task": "addition", "digits": 2, "val_size": 100, "lr": 3e-3, **SMALL_MODEL}
INDUCTION = {
    "task": "repeated_subsequence", "seq_len": 16, "vocab": 8, "sub_len": 4, "repeats": 2,
    "val_size": 50, "lr": 3e-3, **SMALL_MODEL, "n_layers": 2, "d_mlp": 0,
}  # fmt: skip


def test_addition_layout_and_targets():
    trainer = Trainer(TrainConfig(**ADDITION, train_size=40, steps=20))
    layout = trainer.layout
    assert (layout.n_positions, layout.n_predict, layout.num_classes) == (8, 3, 10)
    assert layout.position_names == ("digit0", "digit1", "digit2")
    x, y = trainer.train_data.x, trainer.train_data.y
    assert x.shape == (40, 8) and y.shape == (40, 3)
    # a b + c d = s0 s1 (s2 is the last target, never an input): teacher forcing
    a = x[:, 0] * 10 + x[:, 1]
    b = x[:, 3] * 10 + x[:, 4]
    total = y[:, 0] * 100 + y[:, 1] * 10 + y[:, 2]
    assert torch.equal(a + b, total)
    assert torch.equal(x[:, 6:8], y[:, :2])
    assert set(x[:, 2].tolist()) == {10} and set(x[:, 5].tolist()) == {11}


def test_repeated_subsequence_predicts_only_what_context_determines():
    trainer = Trainer(TrainConfig(**INDUCTION, train_size=30, steps=20))
    x, y = trainer.train_data.x, trainer.train_data.y
    assert x.shape == (30, 15) and y.shape == (30, 15)
    assert trainer.layout.exact_match is False
    predicted = y != IGNORE
    # (repeats - 1) occurrences, each after its first token
    assert (predicted.sum(dim=1) == 3).all()
    tokens = torch.cat([x, y[:, -1:].clamp(min=0)], dim=1)
    rows, cols = predicted.nonzero(as_tuple=True)
    assert torch.equal(y[rows, cols], tokens[rows, cols + 1])


@pytest.mark.parametrize("regime", [40, "infinite"])
def test_addition_runs_with_per_position_metrics_and_events(regime):
    trainer = Trainer(TrainConfig(**ADDITION, train_size=regime, steps=100))
    final = trainer.run()
    for pos in trainer.layout.position_names:
        for name in m.POSITION_METRICS:
            assert m.position_metric(name, pos) in final
        for event in m.POSITION_EVENTS:
            assert m.position_metric(event, pos) in final
    # the answer is right only when every digit is
    digits_right = min(
        final[m.position_metric(m.VAL_ACC, p)] for p in trainer.layout.position_names
    )
    assert final[m.VAL_ACC] <= digits_right + 1e-9
    assert trainer.summary()["train_examples"] == (40 if regime == 40 else None)


@pytest.mark.parametrize(
    "settings",
    [
        {**ADDITION, "train_size": "infinite"},  # the stream's counter is in the checkpoint
        {**INDUCTION, "train_size": "infinite", "dropout": 0.1},
        {**INDUCTION, "train_size": 30},
        {**TINY_PARAMS, "grad_filter": "ema"},
        {**TINY_PARAMS, "grad_filter": "ma", "grokfast_window": 5},
        {**TINY_PARAMS, "loss": "stablemax", "orthogonal_grad": True, "fixed_weight_norm": True},
        {**TINY_PARAMS, "optimizer": "adam", "init": "width_scaled", "operator_token": False},
        # the anchors' MLPs, a batch smaller than the training set (its RNG is in the state)
        {**LIU, "batch_size": 32},
        {**PRIETO, "batch_size": 32},
    ],
    ids=["addition-stream", "induction-stream", "induction-finite", "ema", "ma", "stablemax+",
         "anchor-settings", "liu-mlp", "prieto-mlp"],
)  # fmt: skip
def test_resume_is_bit_for_bit(tmp_path, settings):
    cfg = TrainConfig(
        **{**settings, "steps": 120, "eval_every": 20, "stop_after_generalized": None}
    )
    whole = Trainer(cfg)
    whole.run()

    class Killed(Exception):
        pass

    def kill_at_60(record, trainer):
        if record[m.STEP] == 60:
            trainer.save(tmp_path / "ckpt.pt")
            raise Killed

    with pytest.raises(Killed):
        Trainer(cfg).run(kill_at_60)
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG state
    resumed = Trainer(cfg)
    resumed.load(tmp_path / "ckpt.pt")
    resumed.run()
    strip = lambda h: [{k: v for k, v in r.items() if k != m.ELAPSED_S} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)
    for a, b in zip(
        whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_fixed_weight_norm_holds_the_initial_norm():
    trainer = Trainer(TrainConfig(**{**TINY_PARAMS, "fixed_weight_norm": True, "steps": 40}))
    initial = m.weight_norm(trainer.model)
    trainer.run()
    assert m.weight_norm(trainer.model) == pytest.approx(initial, rel=1e-5)
    assert all(r[m.WEIGHT_NORM] == pytest.approx(initial, rel=1e-5) for r in trainer.history)


def test_softmax_collapse_and_logit_gap_are_measured():
    trainer = Trainer(TrainConfig(**{**TINY_PARAMS, "steps": 40, "frac": 0.7}))
    final = trainer.run()
    assert 0.0 <= final[m.SOFTMAX_COLLAPSE] <= 1.0 and final[m.LOGIT_GAP] > 0


def test_settings_of_another_task_are_refused_and_left_blank():
    with pytest.raises(ValueError, match="digits: a setting of task addition, not of task table"):
        TrainConfig(digits=3)
    with pytest.raises(ValueError, match="frac: a setting of task table"):
        TrainConfig(task="addition", frac=0.3)
    used = TrainConfig(task="addition").used()
    assert used["op"] is None and used["frac"] is None and used["train_size"] == 750
    assert TrainConfig().used()["digits"] is None
    # a round trip through model_dump (checkpoints, Tune configs) is always accepted
    for cfg in (TrainConfig(task="addition"), TrainConfig(task="repeated_subsequence")):
        assert TrainConfig(**cfg.model_dump()) == cfg


def test_remedy_settings_resolve_their_defaults():
    assert TrainConfig(grad_filter="ema").grokfast_lamb == 2.0
    assert TrainConfig(grad_filter="ma").grokfast_lamb == 5.0
    assert TrainConfig(loss="stablemax").loss_dtype == "float64"
    assert TrainConfig().loss_dtype == "float32"
    used = TrainConfig(grad_filter="ma").used()
    assert used["grokfast_window"] == 100 and used["grokfast_alpha"] is None
    assert TrainConfig().used()["grokfast_lamb"] is None


def test_data_command_prints_generated_tasks(capsys):
    argv = ["--task", "addition", "--digits", "3", "--train-size", "20", "--seed", "0"]
    assert data.main([*argv, "--format", "csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "a,b,c,split"
    train = [r for r in rows[1:] if r.endswith(",train")]
    val = [r for r in rows[1:] if r.endswith(",val")]
    assert len(train) == 20 and len(val) == 1000
    for row in train + val:
        a, b, c, _ = row.split(",")
        assert int(a) + int(b) == int(c) and int(a) < 1000
    assert not {r.rsplit(",", 1)[0] for r in train} & {r.rsplit(",", 1)[0] for r in val}
    assert data.main(argv) == 0  # the same rows every time
    assert capsys.readouterr().out.splitlines() == rows
    induction = ["--task", "repeated_subsequence", "--seq-len", "12", "--vocab", "5"]
    induction += ["--sub-len", "3", "--train-size", "4", "--val-size", "3"]
    assert data.main(induction) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sequence,split" and len(lines) == 1 + 4 + 3
    assert all(len(line.split(",")[0].split()) == 12 for line in lines[1:])
