"""TrainConfig: every setting of one run, validated (pydantic names the failing field).

The one owner of the settings and their defaults: study files, the one-trial command, Parquet
columns and TensorBoard hparams all use these names, and the model's config dataclass
(grok_tune/model.py) takes its defaults from here. Loads without torch.
"""

from __future__ import annotations

import math
import re
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from grok_tune.metrics import ACCURACY_THRESHOLD
from grok_tune.presets import PRESET_NAMES, PRESETS, preset_settings
from grok_tune.remedies import SETTINGS_MODELS, remedy_defaults, unread_settings
from grok_tune.tasks import (
    INFINITE,
    TASK_NAMES,
    TASK_SETTINGS_MODELS,
    task_class,
    task_settings,
)

# Which parameters AdamW's weight decay touches is a research variable, not a detail:
#   all                         every parameter, as in Power et al.'s AdamW(model.parameters())
#   matrices                    2-D weights incl. embeddings, not biases or norm gains (nanoGPT)
#   matrices_except_embeddings  2-D weights of the blocks and the head only
#   all_except_embeddings       every parameter but the embeddings (Liu et al.'s toy model
#                               decays its decoder, biases included, and not its representation)
DecayScope = Literal["all", "matrices", "matrices_except_embeddings", "all_except_embeddings"]
# the batch of infinite data when none is set
INFINITE_BATCH = 512

# the key of a study's trial config holding its variant's settings (a study file's `variants`)
VARIANT = "variant"
# the key of a packed study's trial config: the index of its population (members_per_trial)
PACK = "pack"
# the key of a packed trial's reports holding each member's record, by member index
MEMBERS = "members"


def flat_settings(config: dict[str, Any]) -> dict[str, Any]:
    """A Tune trial config as settings: its variant's settings merged in."""
    variant = config.get(VARIANT) or {}
    return {**{k: v for k, v in config.items() if k != VARIANT}, **variant}


_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def _kinds(annotation: Any) -> set[type]:
    """The plain types a field's annotation admits (bool, int, float, str)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return set().union(*(_kinds(a) for a in typing.get_args(annotation)))
    if typing.get_origin(annotation) is typing.Literal:
        return {type(a) for a in typing.get_args(annotation)}
    return {annotation} if isinstance(annotation, type) else set()


def strict_value(value: Any, annotation: Any) -> Any:
    """A value as its setting's type where YAML or a flag wrote it loosely, or ValueError where
    pydantic would quietly change its meaning.

    - a boolean is not a number: ``steps: true`` would run 1 step, ``weight_decay: yes`` 1.0;
    - a number is not a boolean (``layer_norm: 0``);
    - a whole number written as text or in exponent form is that whole number (``"1e5"``,
      ``--steps 1e2``), as a fractional one is refused where a whole one belongs.
    """
    kinds = _kinds(annotation)
    if isinstance(value, bool):
        if bool not in kinds:
            word = "true/yes/on" if value else "false/no/off"
            raise ValueError(f"{word} reads as a boolean, not a {_kind_word(kinds)}")
        return value
    if isinstance(value, int | float) and bool in kinds and not kinds & {int, float}:
        raise ValueError(f"{value!r} is a number: write true or false")
    if int in kinds and float not in kinds and isinstance(value, str) and _NUMBER.match(value):
        number = float(value)
        if math.isfinite(number) and number.is_integer():
            return int(number)
    return value


def _kind_word(kinds: set[type]) -> str:
    if int in kinds and float not in kinds:
        return "whole number"
    return "number" if float in kinds else "name"


# The settings only one architecture reads: given at a value of their own for the other, they
# are refused; unread, they are None in a run's record (``used``).
ARCHITECTURE_SETTINGS: dict[str, tuple[str, ...]] = {
    "transformer": (
        "n_heads",
        "layer_norm",
        "attn_bias",
        "head_bias",
        "dropout",
        "block_norm",
        "attn_init",
    ),
    "mlp": ("mlp_input", "mlp_bias"),
}
# what the MLP does not read with one-hot input: it has no embedding
ONE_HOT_UNREAD = ("d_model", "embedding_lr")
# the initialisations each architecture knows
ARCHITECTURE_INITS = {
    "transformer": ("pytorch", "width_scaled"),
    "mlp": ("pytorch", "uniform_embeddings"),
}


class _Which(BaseModel):
    """What a run is: the first settings of every record, the task's own right after them."""

    # an anchor's whole setup (grok_tune/presets.py); the settings given beside it win
    preset: Literal[PRESET_NAMES] | None = Field(  # type: ignore[valid-type]
        None, description=f"a paper's setup: {', '.join(PRESET_NAMES)}"
    )
    # task (grok_tune/tasks/): each task reads the general settings and its own
    task: Literal[TASK_NAMES] = Field("table", description="what the model learns")  # type: ignore[valid-type]


class _RunSettings(BaseModel):
    """Every knob of one run but the task's and the remedies' (``TrainConfig`` adds theirs)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    seed: int = Field(0, ge=0, description="data, initialisation, batches and dropout")
    # optimizer
    optimizer: Literal["adamw", "adam"] = Field(
        "adamw",
        description="adamw: decoupled weight decay; adam: L2 decay added to the gradient "
        "(torch.optim.Adam, as Grokfast's code runs)",
    )
    lr: float = Field(1e-3, gt=0)
    embedding_lr: float | None = Field(
        None,
        gt=0,
        description="the embeddings' own learning rate (Liu et al.'s representation); unset: lr",
    )
    weight_decay: float = Field(1.0, ge=0)
    decay_scope: DecayScope = "all"
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.98, ge=0, lt=1)
    adam_eps: float = Field(1e-8, gt=0, description="Adam's ε (Prieto et al. used 1e-25)")
    warmup_steps: int = Field(10, ge=0)
    warmup_from_zero: bool = Field(
        False,
        description="warm-up lr·step/warmup_steps from lr 0 at step 0 (Nanda et al.'s "
        "min(step/10, 1)); off: lr·(step+1)/warmup_steps",
    )
    batch_size: int | None = Field(
        None, gt=0, description="None: min(512, half the training set); infinite data: 512"
    )
    steps: int = Field(100_000, gt=0, description="step budget")
    eval_every: int = Field(100, gt=0, description="steps between full-split evaluations")
    # model
    architecture: Literal["transformer", "mlp"] = Field(
        "transformer",
        description="transformer: the decoder-only transformer; mlp: the anchors' MLP over "
        "the table's two operands (Liu et al., Prieto et al.; task table only)",
    )
    n_layers: int = Field(2, ge=1, description="transformer: blocks; mlp: hidden layers")
    d_model: int = Field(
        128, ge=1, description="transformer: residual width; mlp: the embedding's width"
    )
    n_heads: int = Field(4, ge=1)
    d_mlp: int = Field(
        512,
        ge=0,
        description="transformer: a block's MLP width, 0: attention-only blocks; mlp: the "
        "width of every hidden layer",
    )
    dropout: float = Field(0.0, ge=0, lt=1)
    layer_norm: bool = True
    activation: Literal["relu", "gelu", "tanh"] = Field(
        "relu", description="the MLP's nonlinearity (Liu et al.'s toy model: tanh)"
    )
    attn_bias: bool = Field(True, description="biases in the attention's projections")
    head_bias: bool = Field(True, description="a bias in the output layer")
    block_norm: Literal["pre", "post", "stream"] = Field(
        "pre",
        description="where a block's LayerNorms sit: pre: x + f(LN(x)); post: LN(x + f(x)), no "
        "final LayerNorm (nn.TransformerEncoderLayer, Prieto et al.'s transformer); stream: "
        "x = LN(x) before the attention, the MLP pre-norm (Grokfast's Block)",
    )
    attn_init: Literal["pytorch", "xavier"] = Field(
        "pytorch",
        description="xavier: the attention's input projection Xavier-uniform, its biases 0 "
        "(nn.MultiheadAttention's, Grokfast's attention)",
    )
    extra_classes: int = Field(
        0,
        ge=0,
        description="output classes beyond the answers, never a target (Nanda et al.'s "
        "unembedding also scores '=': 1)",
    )
    mlp_input: Literal["embedding", "one_hot"] = Field(
        "embedding",
        description="architecture mlp: embedding: a learned vector per element, the two "
        "operands' summed (Liu et al.); one_hot: the operands' one-hot vectors concatenated "
        "(Prieto et al.)",
    )
    mlp_bias: bool = Field(True, description="architecture mlp: biases in every layer")
    init: Literal["pytorch", "width_scaled", "uniform_embeddings"] = Field(
        "pytorch",
        description="pytorch: PyTorch's defaults (embeddings N(0, 1)); width_scaled: every "
        "matrix N(0, 1/d_model), the output layer N(0, 1/classes), biases 0 (Nanda et al.); "
        "uniform_embeddings: the MLP's embeddings U(-1/2, 1/2), the rest PyTorch's (Liu et al.)",
    )
    init_scale: float = Field(1.0, gt=0, description="multiplies every initial weight (Omnigrok)")
    threshold: float = Field(
        ACCURACY_THRESHOLD,
        gt=0,
        le=1,
        description="accuracy that counts as memorized / generalized",
    )
    # stopping: neither ever stops a run for low validation accuracy alone
    stop_after_generalized: int | None = Field(
        3, ge=1, description="stop once validation stayed >= threshold this many evaluations"
    )
    confusion_step: int | None = Field(
        None, ge=1, description="stop a run that has not memorized by this step"
    )

    @field_validator("*", mode="before")
    @classmethod
    def _strict(cls, value: Any, info: Any) -> Any:
        return strict_value(value, cls.model_fields[info.field_name].annotation)

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        """Fill the task's own defaults for its settings left unset, so that every record
        shows the value a run used."""
        if not isinstance(data, dict):
            return data
        if data.get("preset") in PRESETS:  # the preset first: what is given beside it wins,
            # an explicit null too (stop_after_generalized: null runs the whole budget)
            data = {**preset_settings(data["preset"]), **data}
        name = data.get("task", "table")
        if name not in TASK_NAMES:
            return data  # the field's own check names it
        defaults = {**task_class(name).defaults(), **remedy_defaults(data)}
        filled = {k: v for k, v in defaults.items() if data.get(k) is None}
        return {**data, **filled}

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        own = set(task_settings()[self.task])
        # another task's setting given at a value of its own (its default is what a round trip
        # through model_dump carries along)
        given = {
            n
            for n in self.model_fields_set
            if getattr(self, n) != type(self).model_fields[n].default
        }
        for other, names in task_settings().items():
            foreign = sorted(n for n in given & set(names) if n not in own)
            if other != self.task and foreign:
                from_preset = self.preset and set(foreign) <= set(preset_settings(self.preset))
                raise ValueError(
                    f"preset {self.preset} is set up for task {other} ({', '.join(foreign)} "
                    f"come from it): task {self.task} cannot take it; drop the preset or the task"
                    if from_preset
                    else f"{', '.join(foreign)}: a setting of task {other}, not of task {self.task}"
                )
        task_class(self.task).check(self)
        self._check_architecture(given)
        if self.architecture == "transformer" and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model = {self.d_model} is not divisible by n_heads = {self.n_heads}"
            )
        return self

    def _check_architecture(self, given: set[str]) -> None:
        arch = self.architecture
        foreign = sorted(given & self._unread_model_settings())
        if foreign:
            where = (
                "with one-hot input (it has no embedding)"
                if arch == "mlp" and set(foreign) <= set(ONE_HOT_UNREAD)
                else f"of architecture {arch}"
            )
            raise ValueError(f"{', '.join(foreign)}: not a setting of the model {where}")
        if self.init not in ARCHITECTURE_INITS[arch]:
            raise ValueError(
                f"init {self.init}: architecture {arch} knows {', '.join(ARCHITECTURE_INITS[arch])}"
            )
        if arch != "mlp":
            return
        if not task_class(self.task).fixed_operands:
            raise ValueError(
                f"architecture mlp reads a table's two operands: task {self.task} has none "
                "(use architecture transformer)"
            )
        if self.init == "uniform_embeddings" and self.mlp_input != "embedding":
            raise ValueError("init uniform_embeddings: needs mlp_input embedding")
        if self.d_mlp < 1:
            raise ValueError("d_mlp = 0: the MLP's hidden layers need a width of at least 1")

    def _unread_model_settings(self) -> set[str]:
        """The model settings this run's architecture does not read."""
        other = "mlp" if self.architecture == "transformer" else "transformer"
        unread = set(ARCHITECTURE_SETTINGS[other])
        if self.architecture == "mlp" and self.mlp_input == "one_hot":
            unread |= set(ONE_HOT_UNREAD)
        return unread

    def used(self) -> dict[str, Any]:
        """The settings this run reads: another task's, another architecture's, and a filter's
        when it is off, are None (blank in Parquet, absent from TensorBoard's hparams)."""
        own = set(task_settings()[self.task])
        unused = {n for names in task_settings().values() for n in names} - own
        unused |= unread_settings(self)
        unused |= self._unread_model_settings()
        return {k: (None if k in unused else v) for k, v in self.model_dump().items()}

    @property
    def infinite_data(self) -> bool:
        return self.train_size == INFINITE


class TrainConfig(  # type: ignore[misc]
    *reversed(SETTINGS_MODELS), _RunSettings, *reversed(TASK_SETTINGS_MODELS), _Which
):
    """Every knob of one run: the same names in study files, the CLI, Parquet and TensorBoard.
    Each task's settings come from its class (grok_tune/tasks/), each remedy's from its
    registry entry (grok_tune/remedies/). Pydantic orders the fields of the last base first:
    preset and task, the tasks' settings, the run's, the remedies'."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
