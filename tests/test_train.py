import json
import math
import re

import pandas as pd
import pytest
import torch

from grok_tune import metrics as m
from grok_tune import train
from grok_tune.train import TrainConfig, Trainer

# x+y mod 31 on a 1-layer, width-64 model: memorizes by step ~250, generalizes by ~950, in
# about 3 s on CPU (at lr 1e-2 it is unstable, and the outcome turns on float rounding)
TINY = dict(
    op="x+y",
    p=31,
    frac=0.6,
    lr=5e-3,
    weight_decay=1.0,
    n_layers=1,
    d_model=64,
    d_mlp=256,
    eval_every=50,
    steps=3000,
)


def test_tiny_configuration_memorizes_then_generalizes():
    trainer = Trainer(TrainConfig(**TINY))
    final = trainer.run()
    assert final[m.STATUS] == m.Status.GENERALIZED
    mem, gen = final[m.STEPS_TO_MEMORIZE], final[m.STEPS_TO_GENERALIZE]
    assert mem is not None and gen is not None
    assert 0 < mem < gen < 3000
    curve = pd.DataFrame(trainer.history)
    # the events are the first evaluations at or above the threshold, nothing else
    assert curve.loc[curve[m.TRAIN_ACC] >= m.ACCURACY_THRESHOLD, m.STEP].min() == mem
    assert curve.loc[curve[m.VAL_ACC] >= m.ACCURACY_THRESHOLD, m.STEP].min() == gen
    # held for stop_after_generalized evaluations, then stopped well before the budget
    assert (curve[m.VAL_ACC].tail(3) >= m.ACCURACY_THRESHOLD).all()
    assert trainer.step < 3000
    assert final[m.OBJECTIVE] == gen
    assert curve[m.STEP].diff().dropna().eq(50).all()
    # weight decay shrinks the weights after memorization; the embedding turns Fourier-sparse
    assert curve[m.WEIGHT_NORM].iloc[-1] < curve[m.WEIGHT_NORM].max()
    assert curve[m.FOURIER_SPARSITY].iloc[-1] > 2 * curve[m.FOURIER_SPARSITY].iloc[0]


def test_without_weight_decay_it_only_memorizes_and_is_censored():
    cfg = TrainConfig(**{**TINY, "weight_decay": 0.0, "frac": 0.5, "steps": 800})
    final = Trainer(cfg).run()
    assert final[m.STEPS_TO_MEMORIZE] is not None
    assert final[m.STEPS_TO_GENERALIZE] is None  # censored: never "at the budget"
    assert final[m.STATUS] == m.Status.CENSORED
    assert final[m.STEP] == 800
    assert 800 < final[m.OBJECTIVE] <= 1600


def test_confusion_rule_stops_a_run_that_has_not_memorized():
    cfg = TrainConfig(**{**TINY, "lr": 1e-5, "steps": 2000, "confusion_step": 200})
    final = Trainer(cfg).run()
    assert final[m.STATUS] == m.Status.CENSORED and final[m.STEP] == 200
    assert final[m.STEPS_TO_MEMORIZE] is None


def test_huge_learning_rate_diverges_and_keeps_its_record():
    trainer = Trainer(TrainConfig(**{**TINY, "lr": 1e3, "steps": 1000}))
    final = trainer.run()
    assert final[m.STATUS] == m.Status.DIVERGED
    assert final[m.STEP] < 1000
    assert final[m.OBJECTIVE] == 2000
    assert len(trainer.history) >= 2 and math.isfinite(trainer.history[0][m.TRAIN_LOSS])


def test_batch_size_default_is_min_512_or_half_the_training_set():
    assert Trainer(TrainConfig(**TINY)).batch_size == round(0.6 * 31 * 31) // 2
    big = {**TINY, "p": 47, "frac": 0.5}
    assert Trainer(TrainConfig(**big)).batch_size == 512


@pytest.mark.parametrize(
    "variant",
    [
        {"dropout": 0.1},  # the RNG streams of dropout
        {"n_layers": 2},  # the shared-prefix path (its gather must sum gradients in a fixed order)
    ],
)
def test_checkpoint_round_trip_is_bit_for_bit(tmp_path, variant):
    cfg = TrainConfig(**{**TINY, **variant, "steps": 400, "stop_after_generalized": None})
    whole = Trainer(cfg)
    whole.run()

    class Killed(Exception):
        pass

    def kill_at_200(record, trainer):
        if record[m.STEP] == 200:
            trainer.save(tmp_path / "ckpt.pt")
            raise Killed

    first = Trainer(cfg)
    with pytest.raises(Killed):
        first.run(kill_at_200)
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG state
    resumed = Trainer(cfg)
    resumed.load(tmp_path / "ckpt.pt")
    resumed.run()

    strip = lambda h: [{k: v for k, v in r.items() if k != m.ELAPSED_S} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)
    for (name, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_checkpoint_of_another_config_is_refused(tmp_path):
    a = Trainer(TrainConfig(**{**TINY, "steps": 50}))
    a.save(tmp_path / "a.pt")
    with pytest.raises(ValueError, match="different configuration"):
        Trainer(TrainConfig(**{**TINY, "steps": 50, "lr": 2e-2})).load(tmp_path / "a.pt")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("frac", 1.5, "less than 1"),
        ("lr", 0, "greater than 0"),
        ("op", "x**y", "Input should be 'x+y'"),
        ("p", 8, "p = 8 is not prime"),
        ("n_heads", 3, "not divisible by n_heads"),
        ("dropout", -0.1, "greater than or equal to 0"),
        ("colour", "red", "Extra inputs are not permitted"),
    ],
)
def test_bad_config_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        TrainConfig(**{**({"op": "x/y"} if field == "p" else {}), field: value})
    if field not in ("p", "n_heads"):
        assert field in str(err.value)


def test_cli_writes_curve_and_outcome(tmp_path, capsys):
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert train.main([*args, "--out", str(tmp_path), "--threads", "1"]) == 0
    outcome = json.loads((tmp_path / "outcome.json").read_text())
    curve = pd.read_csv(tmp_path / "curve.csv")
    assert outcome[m.STATUS] == "generalized"
    assert outcome[m.STEPS_TO_GENERALIZE] == curve.loc[curve[m.VAL_ACC] >= 0.99, m.STEP].min()
    assert outcome["num_params"] > 0 and outcome["decayed_params"] == outcome["num_params"]
    assert (tmp_path / "checkpoint.pt").exists()
    assert "generalized: memorized at step" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frac", "1.5"], "--frac: Input should be less than 1"),
        (["--op", "x**y"], "--op: Input should be"),
        (["--op", "x/y", "--p", "8"], "p = 8 is not prime"),
        (["--steps", "ten"], "--steps: Input should be a valid integer"),
    ],
)
def test_cli_bad_values(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        train.main([*args, "--out", str(tmp_path / "run")])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written for a bad command


def test_warmup_from_zero_is_nandas_schedule():
    # Nanda et al.'s LambdaLR(min(step / 10, 1)): lr 0 at step 0, lr at step 10
    seen = []
    for from_zero in (True, False):
        cfg = TrainConfig(**{**TINY, "warmup_from_zero": from_zero, "steps": 3, "eval_every": 1})
        trainer = Trainer(cfg)
        trainer.run(lambda record, t, z=from_zero: seen.append((z, record[m.STEP], record[m.LR])))
    lrs = {(z, s): lr for z, s, lr in seen if s > 0}
    assert lrs[(True, 1)] == 0.0 and lrs[(True, 3)] == pytest.approx(5e-3 * 2 / 10)
    assert lrs[(False, 1)] == pytest.approx(5e-3 / 10)


def test_extra_classes_widen_the_head_and_are_never_a_target():
    trainer = Trainer(TrainConfig(**{**TINY, "extra_classes": 1, "steps": 50}))
    assert trainer.model.head.out_features == 32 and trainer.layout.num_classes == 31
    assert int(trainer.train_data.y.max()) < 31
    final = trainer.run()
    assert final[m.STEP] == 50
