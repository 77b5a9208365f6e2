"""The anchors' setups as settings: ``preset: nanda2023`` fills in a paper's whole run.

A preset fills in the task layout, the model (its initialisation and which biases exist), the
optimizer, the batch, the budget and the accuracy threshold of the run that produced an anchor's
reported numbers; settings written beside it override it, and every record (trials.parquet,
TensorBoard) shows the resolved values and the preset's name. Where an anchor's code differs
from its paper, the preset follows the code that produced the numbers, and says so below.

The anchors' own models: ``liu2022`` and ``prieto2025_mlp`` run on ``architecture: mlp``
(grok_tune/model.py's ``MLP``), the models their claims were drawn on; ``prieto2025`` is their
figure-6 transformer, approximated (pre-norm here, post-norm there).
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
        "unembedding also scores '=' (114 classes, never the answer: extra_classes 1) and their "
        "warm-up starts at lr 0 (min(step/10, 1): warmup_from_zero); their 'high precision' "
        "cross-entropy is float64 log-softmax in the notebook, float32 here by default "
        "(loss_dtype: float64 to follow it); each is a variant of "
        "search_spaces/ablate_nanda.yaml: the extra class is what delays his clean-up (1.5x "
        "alone on seed 0; the three together 1.1-2.1x over seeds 0-3, README); his split is "
        "split: shuffle with split_seed 0 (search_spaces/ablate_nanda_split.yaml); his code "
        "seeds no initialisation, so no seed here is his run",
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
        "their attention is nn.MultiheadAttention (attn_init: xavier), their blocks normalise "
        "the stream before the attention (block_norm: stream), their head scores '=' and '∘' "
        "too (extra_classes: 2), their warm-up starts at lr 0 (warmup_from_zero): each is a "
        "variant of search_spaces/ablate_grokfast_ma.yaml",
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
        differences="their transformer reads the two operands without '=' and is "
        "nn.TransformerEncoderLayer's default: post-norm (block_norm: post), MLP 2048, dropout "
        "0.1; this preset keeps the project's pre-norm transformer of width 512 without "
        "dropout (set those beside it to follow theirs). Their headline StableMax results are "
        "on an MLP: preset prieto2025_mlp",
        reported={
            "⊥Grad, wd 0": "generalizes without weight decay and without delay",
            "AdamW, wd 0": "no generalization (Softmax Collapse)",
        },
    ),
    "prieto2025_mlp": Preset(
        settings={
            "task": "table",
            "op": "x+y",
            "p": 113,
            "frac": 0.4,
            "operator_token": False,
            "architecture": "mlp",
            "mlp_input": "one_hot",
            "n_layers": 2,
            "d_mlp": 200,
            "activation": "relu",
            "mlp_bias": False,
            "init": "pytorch",
            "optimizer": "adamw",
            "lr": 0.01,
            "weight_decay": 0.0,
            "beta1": 0.9,
            "beta2": 0.99,
            "adam_eps": 1e-25,
            "warmup_steps": 0,
            "batch_size": 100_000,
            "steps": 80_000,
            "threshold": 0.99,
        },
        source="Prieto et al. 2025, 'Grokking at the edge of numerical stability', Figure 1; "
        "github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability (models.py MLP, "
        "utils.py get_model/get_optimizer/parse_args: hidden_sizes [200, 200], bias=False, "
        "AdamW betas (0.9, beta2), eps 1e-25; grokking_experiments.py full batch; "
        "run_main_experiments.sh figure 1)",
        differences="the split is grok_tune's hash of (seed, a, b), theirs torch's random_split "
        "with seed 42; their Figure 1 StableMax run uses beta2 0.999 (set it beside the preset), "
        "the ⊥Grad run beta2 0.99 for 300 epochs, plain float64 cross-entropy 80k epochs; "
        "one epoch is one step here too (full batch)",
        reported={
            "StableMax, wd 0": "generalizes without weight decay (Figure 1, 80k epochs)",
            "⊥Grad, wd 0": "generalizes within 300 epochs (Figure 1)",
            "cross-entropy, wd 0": "no generalization: Softmax Collapse stops learning",
        },
    ),
    "liu2022": Preset(
        settings={
            "task": "table",
            "op": "x+y_int",
            "p": 10,
            "frac": 0.8,
            "operator_token": False,
            "architecture": "mlp",
            "mlp_input": "embedding",
            "d_model": 1,
            "n_layers": 2,
            "d_mlp": 200,
            "activation": "tanh",
            "mlp_bias": True,
            "init": "uniform_embeddings",
            "optimizer": "adamw",
            "lr": 1e-3,
            "embedding_lr": 1e-3,
            "weight_decay": 0.0,
            "decay_scope": "all_except_embeddings",
            "beta1": 0.9,
            "beta2": 0.999,
            "adam_eps": 1e-8,
            "warmup_steps": 0,
            "batch_size": 100_000,
            "steps": 10_000,
            "eval_every": 50,
            "threshold": 0.9,
        },
        source="Liu et al. 2022, 'Towards understanding grokking: an effective theory of "
        "representation learning', the toy model's phase diagrams (decoder lr x decoder weight "
        "decay, cross-entropy); github.com/ejmichaud/grokking-squared (toy/train_add.py DEC, "
        "NET, train_add; toy/produce_figure_data.py train_many_fig5c: eta_dec 1e-5..1e-2, "
        "weight_decay_dec 0..10, 1e4 steps, seed 1)",
        differences="their task, integer addition a + b of p = 10 symbols with 19 answer "
        "classes (op x+y_int), uses the 55 unordered pairs a <= b, 45 of them for training; "
        "here the 100 ordered pairs, 80% for training, so that a held-out pair's mirror b + a "
        "is often in training (the summed embeddings answer it for free); their accuracy is "
        "measured every step, here every eval_every steps",
        reported={
            "phase diagram": "memorization at low weight decay, comprehension at moderate weight "
            "decay, confusion at large weight decay (and the largest lr), grokking in a band "
            "between memorization and comprehension",
        },
    ),
}

PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def preset_settings(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    return dict(PRESETS[name].settings)
