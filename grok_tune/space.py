"""The search-space schema: a study file (YAML) -> a validated ``StudySpec``.

A study file names every training setting it changes, each either fixed or a distribution::

    name: demo
    mode: grid                    # grid | random | optuna
    params:
      op: x+y                     # fixed
      frac: {grid: [0.3, 0.5]}    # grid: every value (mode grid)
      lr: {loguniform: [1e-4, 1e-2]}
      dropout: {uniform: [0.0, 0.2]}
      d_model: {choice: [64, 128]}
      n_layers: {int: [1, 3]}     # integers, both ends included

Settings not named keep ``TrainConfig``'s defaults (the paper's). Everything is checked before
anything runs; errors name the file, the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from grok_tune import metrics as m
from grok_tune.config import TrainConfig

Scalar = bool | int | float | str | None


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def candidates(self) -> list[Scalar]:
        """Values that must each be valid settings: the bounds, or every listed value."""
        raise NotImplementedError


class LogUniform(_Dist):
    loguniform: tuple[float, float]

    @field_validator("loguniform")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if lo <= 0:
            raise ValueError(f"a log range needs a lower bound > 0, got {lo}")
        if not lo < hi:
            raise ValueError(f"the range is empty or inverted: {lo} is not below {hi}")
        return v

    def candidates(self) -> list[Scalar]:
        return list(self.loguniform)


class Uniform(_Dist):
    uniform: tuple[float, float]

    @field_validator("uniform")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError(f"the range is empty or inverted: {v[0]} is not below {v[1]}")
        return v

    def candidates(self) -> list[Scalar]:
        return list(self.uniform)


class IntRange(_Dist):
    int: tuple[int, int]  # both ends included

    @field_validator("int")
    @classmethod
    def _range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not v[0] <= v[1]:
            raise ValueError(f"the range is inverted: {v[0]} is above {v[1]}")
        return v

    def candidates(self) -> list[Scalar]:
        return list(self.int)


class Choice(_Dist):
    choice: Annotated[list[Scalar], Field(min_length=1)]

    def candidates(self) -> list[Scalar]:
        return self.choice


class Grid(_Dist):
    grid: Annotated[list[Scalar], Field(min_length=1)]

    def candidates(self) -> list[Scalar]:
        return self.grid


Distribution = LogUniform | Uniform | IntRange | Choice | Grid
_KINDS = {"loguniform": LogUniform, "uniform": Uniform, "int": IntRange, "choice": Choice,
          "grid": Grid}  # fmt: skip


def _kind(value: Any) -> str:
    if isinstance(value, _Dist):
        return next(iter(type(value).model_fields))
    if isinstance(value, dict):
        return next(iter(value)) if len(value) == 1 else "several keys"
    return "a list" if isinstance(value, list) else "fixed"


# A setting is a fixed value or a one-key mapping naming its distribution.
Param = Annotated[
    Annotated[Scalar, Tag("fixed")]
    | Union[tuple(Annotated[cls, Tag(kind)] for kind, cls in _KINDS.items())],  # noqa: UP007
    Discriminator(
        _kind,
        custom_error_type="setting",
        custom_error_message="a setting is a value or one of {loguniform: [lo, hi]}, "
        "{uniform: [lo, hi]}, {int: [lo, hi]}, {choice: [...]}, {grid: [...]}",
    ),
]

# Metrics Optuna may optimize; "objective" is steps-to-generalize with censoring defined.
OBJECTIVE_METRICS = (m.OBJECTIVE, m.VAL_ACC, m.VAL_LOSS, m.TRAIN_ACC, m.TRAIN_LOSS, m.WEIGHT_NORM)


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    metric: Literal[OBJECTIVE_METRICS] = m.OBJECTIVE  # type: ignore[valid-type]
    mode: Literal["min", "max"] = "min"


class StudySpec(BaseModel):
    """A study: what to search, how, and with which resources."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    mode: Literal["grid", "random", "optuna"]
    num_samples: int = Field(1, ge=1, description="grid: repeats of the grid; else: trials")
    seed: int = Field(0, ge=0, description="seed of the random or Optuna sampler")
    objective: Objective = Objective()
    max_concurrent: int | None = Field(None, ge=1, description="None: CPUs // cpus_per_trial")
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0, description="fractions share a GPU")
    checkpoint_every: int = Field(1000, ge=1, description="steps between trial checkpoints")
    max_failures: int = Field(1, ge=0, description="retries of a crashed trial from a checkpoint")
    params: dict[str, Param] = Field(default_factory=dict)

    @field_validator("params", mode="before")
    @classmethod
    def _known_settings(cls, params: Any) -> Any:
        if isinstance(params, dict):
            unknown = sorted(set(params) - set(TrainConfig.model_fields))
            if unknown:
                raise ValueError(
                    f"unknown setting {', '.join(map(repr, unknown))}; "
                    f"allowed: {', '.join(TrainConfig.model_fields)}"
                )
        return params

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        for key, param in self.params.items():
            if isinstance(param, Grid) and self.mode != "grid":
                raise ValueError(
                    f"params.{key}: grid needs mode: grid (use choice with {self.mode})"
                )
        if self.mode == "grid" and not any(isinstance(p, Grid) for p in self.params.values()):
            raise ValueError("mode grid needs at least one param given as {grid: [...]}")
        if self.mode == "optuna" and not self.distributions:
            raise ValueError("mode optuna needs at least one param given as a distribution")
        return self

    @property
    def fixed(self) -> dict[str, Scalar]:
        return {k: v for k, v in self.params.items() if not isinstance(v, _Dist)}

    @property
    def distributions(self) -> dict[str, Distribution]:
        return {k: v for k, v in self.params.items() if isinstance(v, _Dist)}

    def trial_config(self, sampled: dict[str, Any]) -> TrainConfig:
        return TrainConfig(**{**self.fixed, **sampled})


class SpecError(ValueError):
    """A study file that cannot run; the message names the file, the key and what is allowed."""


def _describe(err: ValidationError, where: str, prefix: tuple = ()) -> list[str]:
    lines = []
    for e in err.errors(include_url=False):
        loc: list[str] = []
        for part in map(str, (*prefix, *e["loc"])):
            if not loc or loc[-1] != part:  # the union's tag repeats the distribution's key
                loc.append(part)
        lines.append(f"{where}: {'.'.join(loc) or '(top level)'}: {e['msg']}")
    return list(dict.fromkeys(lines))


def _check_values(spec: StudySpec, where: str) -> list[str]:
    """Every fixed value and every bound or listed value must be a valid TrainConfig setting."""
    try:
        TrainConfig(**spec.fixed)
    except ValidationError as err:
        return _describe(err, where, ("params",))
    problems = []
    for key, dist in spec.distributions.items():
        for i, value in enumerate(dist.candidates()):
            try:
                TrainConfig(**{**spec.fixed, key: value})
            except ValidationError as err:
                kind = next(iter(type(dist).model_fields))
                for e in err.errors(include_url=False):
                    problems.append(
                        f"{where}: params.{key}.{kind}[{i}] = {value!r}: {e['msg']}"
                        if e["loc"] in ((key,), ())
                        else f"{where}: params.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                    )
    return problems


def parse_spec(data: Any, where: str = "<study>", **overrides: Any) -> StudySpec:
    """Validate a study's data (and CLI overrides, same names) -> StudySpec, or SpecError."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: a study file is a mapping of keys to values, got {data!r}")
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as err:
        raise SpecError("\n".join(_describe(err, where))) from None
    problems = _check_values(spec, where)
    if problems:
        raise SpecError("\n".join(problems))
    return spec


def load_spec(path: str | Path, **overrides: Any) -> StudySpec:
    path = Path(path)
    try:
        with path.open() as f:
            data = yaml.safe_load(f)
    except OSError as err:
        raise SpecError(f"{path}: cannot read the study file: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    return parse_spec(data, str(path), **overrides)


def is_log_scale(name: str) -> bool:
    """Settings whose natural axis is logarithmic (plots, grids)."""
    return name in ("lr", "weight_decay", "init_scale")
