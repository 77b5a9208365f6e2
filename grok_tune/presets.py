"""The anchors' setups as settings: ``preset: nanda2023`` fills in a paper's whole run.

A preset fills in the task layout, the model (its initialisation and which biases exist), the
optimizer, the batch, the budget and the accuracy threshold of the run that produced an anchor's
reported numbers; settings written beside it override it, and every record (trials.parquet,
TensorBoard) shows the resolved values and the preset's name. Where an anchor's code differs
from its paper, the preset follows the code that produced the numbers, and says so below.

Not here, and why:
- Liu et al. 2022 ("Towards understanding grokking") and Omnigrok (2023) drew their
  learning-rate x weight-decay phase diagrams with a toy decoder: learned embeddings of the
  two operands summed and fed to an MLP, the embeddings on a learning rate of their own. This
  project's model is a transformer; it would take an ``architecture: mlp`` model and an
  ``embedding_lr`` setting. ``search_spaces/phase_lr_wd.yaml`` draws the diagram on the
  transformer instead.
- Prieto et al. 2025's main results use an MLP on one-hot operands (same remark); their
  figure 6 uses a 1-layer transformer, which ``prieto2025`` approximates (post-norm there,
  pre-norm here; the operands without '=' there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    settings: dict[str, Any]
    source: str  # the paper and the code file that produced its numbers
    differences: str = ""  # where this run is not theirs, and why
    reported: dict[str, str] = field(default_factory=dict)  # the anchor's numbers, in words


PRESETS: dict[str, Preset] = {
    "power2022": Preset(
        settings={
            "task": "table",
            "op": "x/y",
            "p": 97,
            "frac": 0.5,
            "operator_token": True,
            "n_layers": 2,
            "d_model": 128,
            "n_heads": 4,
            "d_mlp": 512,
            "layer_norm": True,
            "activation": "relu",
            "attn_bias": True,
            "head_bias": True,
            "init": "pytorch",
            "dropout": 0.0,
            "optimizer": "adamw",
            "lr": 1e-3,
            "weight_decay": 1.0,
            "beta1": 0.9,
            "beta2": 0.98,
            "adam_eps": 1e-8,
            "warmup_steps": 10,
            "batch_size": None,
            "steps": 100_000,
            "threshold": 0.99,
        },
        source="Power et al. 2022, 'Grokking: generalization beyond overfitting on small "
        "algorithmic datasets', appendix A.1 and Figure 2; github.com/openai/grok "
        "(grok/training.py, grok/transformer.py)",
        differences="their transformer is nn.Transformer-like with their own init; batch "
        "min(512, half the training set) as in the paper",
        reported={
            "x/y at 50% data": "validation accuracy 99% after ~10^3.5-10^4 steps "
            "(Figure 2, with weight decay 1: a few thousand)"
        },
    ),
    "nanda2023": Preset(
        settings={
            "task": "table",
            "op": "x+y",
            "p": 113,
            "frac": 0.3,
            "operator_token": False,
            "n_layers": 1,
            "d_model": 128,
            "n_heads": 4,
            "d_mlp": 512,
            "layer_norm": False,
            "activation": "relu",
            "attn_bias": False,
            "head_bias": False,
            "init": "width_scaled",
            "dropout": 0.0,
            "optimizer": "adamw",
            "lr": 1e-3,
            "weight_decay": 1.0,
            "beta1": 0.9,
            "beta2": 0.98,
            "adam_eps": 1e-8,
            "warmup_steps": 10,
            "batch_size": 100_000,
            "steps": 40_000,
            "threshold": 0.99,
        },
        source="Nanda et al. 2023, 'Progress measures for grokking via mechanistic "
        "interpretability'; github.com/mechanistic-interpretability-grokking/"
        "progress-measures-paper (transformers.py: Config, Embed, Unembed, Attention, MLP, "
        "Trainer)",
        differences="batch_size 100000 is the whole training set (full batch); their "
        "unembedding also scores '=' (114 classes, never the answer) and their warm-up starts "
        "at lr 0 (min(step/10, 1)); their 'high precision' cross-entropy is float64 log-softmax "
        "in the notebook, float32 here by default (loss_dtype: float64 to follow it)",
        reported={
            "memorization": "~1.4k steps",
            "circuit formation": "to ~9.4k steps",
            "clean-up (test loss collapses)": "~13-14k steps",
        },
    ),
    "grokfast2024": Preset(
        settings={
            "task": "table",
            "op": "x*y",
            "p": 97,
            "frac": 0.5,
            "operator_token": True,
            "n_layers": 2,
            "d_model": 128,
            "n_heads": 4,
            "d_mlp": 512,
            "layer_norm": True,
            "activation": "gelu",
            "attn_bias": True,
            "head_bias": False,
            "init": "pytorch",
            "dropout": 0.0,
            "optimizer": "adam",
            "lr": 1e-3,
            "weight_decay": 0.01,
            "beta1": 0.9,
            "beta2": 0.98,
            "adam_eps": 1e-8,
            "warmup_steps": 10,
            "batch_size": 512,
            "steps": 100_000,
            "threshold": 0.95,
            "grad_filter": "ma",
            "grokfast_window": 100,
            "grokfast_lamb": 5.0,
        },
        source="Lee et al. 2024, 'Grokfast: accelerated grokking by amplifying slow "
        "gradients'; github.com/ironjr/grokfast (main.py: Decoder, multiplication_mod_p_data; "
        "grokfast.py: gradfilter_ma, gradfilter_ema)",
        differences="their code computes x*y mod p over y != 0 although its docstring says x/y "
        "(followed: op x*y); torch.optim.Adam, so weight decay is an L2 term (optimizer: "
        "adam); their baseline is grad_filter none with weight_decay 0, their EMA run "
        "grad_filter ema, grokfast_alpha 0.98, grokfast_lamb 2, weight_decay 0.005; "
        "their attention is nn.MultiheadAttention (xavier init), here nn.Linear's default",
        reported={
            "baseline (wd 0)": "95% validation at 39,890 steps",
            "MA (wd 0.01)": "790 steps",
            "EMA (wd 0.005)": "910 steps",
        },
    ),
    "prieto2025": Preset(
        settings={
            "task": "table",
            "op": "x+y",
            "p": 113,
            "frac": 0.4,
            "operator_token": False,
            "n_layers": 1,
            "d_model": 128,
            "n_heads": 4,
            "d_mlp": 512,
            "layer_norm": True,
            "activation": "relu",
            "attn_bias": True,
            "head_bias": True,
            "init": "pytorch",
            "dropout": 0.0,
            "optimizer": "adamw",
            "lr": 1e-3,
            "weight_decay": 0.0,
            "beta1": 0.9,
            "beta2": 0.99,
            "adam_eps": 1e-25,
            "warmup_steps": 0,
            "batch_size": 100_000,
            "steps": 5_000,
            "threshold": 0.99,
            "orthogonal_grad": True,
        },
        source="Prieto et al. 2025, 'Grokking at the edge of numerical stability', Figure 6; "
        "github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability "
        "(run_main_experiments.sh figure 6, utils.py get_model/get_optimizer, orthograd.py)",
        differences="their transformer reads the two operands without '=' and is post-norm "
        "(nn.TransformerEncoderLayer); this is the project's pre-norm transformer: not their "
        "model. Their headline StableMax results are on an MLP (not available here)",
        reported={
            "⊥Grad, wd 0": "generalizes without weight decay and without delay",
            "AdamW, wd 0": "no generalization (Softmax Collapse)",
        },
    ),
}

PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def preset_settings(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    return dict(PRESETS[name].settings)
