"""The anchors' presets: each resolves, validates, runs a short trial, and is recorded."""

from __future__ import annotations

import pytest
import yaml

from grok_tune import metrics as m
from grok_tune import search
from grok_tune.config import TrainConfig
from grok_tune.presets import PRESETS
from grok_tune.results import read_trials
from grok_tune.train import Trainer


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_resolves_validates_and_runs(name):
    preset = PRESETS[name]
    cfg = TrainConfig(preset=name, steps=20, eval_every=10)
    for key, value in preset.settings.items():
        if key not in ("steps", "eval_every"):
            assert getattr(cfg, key) == value, key
    assert preset.source and preset.reported
    trainer = Trainer(cfg)
    final = trainer.run()
    assert final[m.STEP] == 20 and final[m.STATUS] != m.Status.DIVERGED
    if cfg.architecture == "mlp":  # the anchors' own MLP, its biases as theirs
        assert type(trainer.model).__name__ == "MLP"
        assert (trainer.model.head.bias is not None) == cfg.mlp_bias
        return
    if not cfg.attn_bias:
        assert trainer.model.blocks[0].attn.qkv.bias is None
    if not cfg.head_bias:
        assert trainer.model.head.bias is None


def test_settings_beside_a_preset_win():
    cfg = TrainConfig(preset="nanda2023", p=23, frac=0.5)
    assert (cfg.p, cfg.frac, cfg.op, cfg.init) == (23, 0.5, "x+y", "width_scaled")
    with pytest.raises(ValueError, match=r"preset"):
        TrainConfig(preset="nanda2022")


def test_width_scaled_init_is_nandas():
    trainer = Trainer(TrainConfig(preset="nanda2023", p=23, steps=1))
    model = trainer.model
    # every matrix N(0, 1/d_model), the output layer N(0, 1/classes): check the spread
    assert model.tok_emb.weight.std().item() == pytest.approx(128**-0.5, rel=0.1)
    assert model.blocks[0].mlp[0].weight.std().item() == pytest.approx(128**-0.5, rel=0.05)
    assert model.head.weight.std().item() == pytest.approx(23**-0.5, rel=0.15)
    assert float(model.blocks[0].mlp[0].bias.detach().abs().max()) == 0.0
    pytorch = Trainer(TrainConfig(preset="nanda2023", p=23, steps=1, init="pytorch")).model
    assert pytorch.tok_emb.weight.std().item() == pytest.approx(1.0, rel=0.1)


def test_a_study_records_the_preset_and_its_resolved_values(tmp_path, ray_session):
    spec = {
        "name": "anchored",
        "mode": "grid",
        "preset": "nanda2023",
        "params": {"p": 23, "steps": 30, "eval_every": 10, "seed": {"grid": [0, 1]}},
    }
    space = tmp_path / "anchored.yaml"
    space.write_text(yaml.safe_dump(spec))
    assert search.main(["--space", str(space), "--storage", str(tmp_path)]) == 0
    trials = read_trials(str(tmp_path / "anchored"))
    assert (trials["preset"] == "nanda2023").all()
    assert (trials["init"] == "width_scaled").all() and (trials["p"] == 23).all()
    assert (~trials["operator_token"]).all() and (trials["batch_size"] == 100_000).all()
    assert (trials["effective_batch_size"] == round(0.3 * 23 * 23)).all()  # full batch


def test_an_explicit_null_beside_a_preset_wins():
    """`stop_after_generalized: null` (or --stop-after-generalized none) with a preset runs the
    whole budget: a setting given beside the preset wins, null included."""
    from grok_tune.config import TrainConfig

    assert TrainConfig(preset="nanda2023").stop_after_generalized == 3
    whole_budget = TrainConfig(preset="nanda2023", stop_after_generalized=None)
    assert whole_budget.stop_after_generalized is None
