"""TrainConfig: every knob of one run, validated (pydantic names the failing field)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from grok_tune.data import OPERATIONS, P_MAX, check_operation, check_split

# Which parameters AdamW's weight decay touches is a research variable, not a detail:
#   all                         every parameter, as in Power et al.'s AdamW(model.parameters())
#   matrices                    2-D weights incl. embeddings, not biases or norm gains (nanoGPT)
#   matrices_except_embeddings  2-D weights of the blocks and the head only
DecayScope = Literal["all", "matrices", "matrices_except_embeddings"]


class TrainConfig(BaseModel):
    """Every knob of one run: the same names in study files, the CLI, Parquet and TensorBoard."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # task
    op: Literal[OPERATIONS] = "x/y"  # type: ignore[valid-type]
    p: int = Field(
        97, ge=2, le=P_MAX, description="modulus (ignored for S5 operations); the table is p²"
    )
    frac: float = Field(0.5, gt=0, lt=1, description="training fraction of all equations")
    seed: int = Field(0, ge=0, description="split, initialisation, batches and dropout")
    # optimizer
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1.0, ge=0)
    decay_scope: DecayScope = "all"
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.98, ge=0, lt=1)
    warmup_steps: int = Field(10, ge=0)
    batch_size: int | None = Field(None, gt=0, description="None: min(512, half the train set)")
    steps: int = Field(100_000, gt=0, description="step budget")
    eval_every: int = Field(100, gt=0, description="steps between full-split evaluations")
    # model
    n_layers: int = Field(2, ge=1)
    d_model: int = Field(128, ge=1)
    n_heads: int = Field(4, ge=1)
    d_mlp: int = Field(512, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    layer_norm: bool = True
    init_scale: float = Field(1.0, gt=0)
    # stopping: neither ever stops a run for low validation accuracy alone
    stop_after_generalized: int | None = Field(
        3, ge=1, description="stop once validation stayed >= threshold this many evaluations"
    )
    confusion_step: int | None = Field(
        None, ge=1, description="stop a run that has not memorized by this step"
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        check_operation(self.op, self.p)
        check_split(self.op, self.p, self.frac)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model = {self.d_model} is not divisible by n_heads = {self.n_heads}"
            )
        return self
