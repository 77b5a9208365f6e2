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

Numbers may be written as YAML 1.2 reads them: ``1e-3`` is the number 0.001 (PyYAML, a YAML 1.1
reader, would read it as a string). Where a setting expects a number, a quoted number (``"7"``,
``"1e-3"``) means that number too, as it does on the command line, where every value is text;
every value is stored, passed to trials and written to Parquet as the setting's own type.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
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
from grok_tune.cli import did_you_mean
from grok_tune.config import TrainConfig, strict_value
from grok_tune.regions import REGIONS

# inf and nan pass here so that the setting's own check names them in one line ("a finite
# number"), instead of four lines from the union's members
Scalar = bool | int | Annotated[float, Field(allow_inf_nan=True)] | str | None


class _Yaml12Numbers(yaml.SafeLoader):
    """A safe loader that also reads ``1e-3`` and ``1E5`` as floats, as YAML 1.2 does."""


_Yaml12Numbers.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _no_duplicate_keys(loader: _Yaml12Numbers, node: yaml.MappingNode, deep: bool = False) -> Any:
    """A mapping whose key appears twice is refused: YAML keeps the last one silently, so
    `p: 7` written twice in a long file would run whichever came last."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} given twice (lines {seen[key]} and {line})",
                key_node.start_mark,
            )  # fmt: skip
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_Yaml12Numbers.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)


def load_yaml(text: str) -> Any:
    """Parse YAML text (a study file, a stored study.yaml) with YAML 1.2's numbers."""
    return yaml.load(text, Loader=_Yaml12Numbers)  # a SafeLoader: no arbitrary objects


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

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


# p goes up to 1000: every integer range a study can hold in a table is enumerated whole
INT_RANGE_ENUMERATED = 1001


class IntRange(_Dist):
    int: tuple[int, int]  # both ends included

    @field_validator("int")
    @classmethod
    def _range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not v[0] <= v[1]:
            raise ValueError(f"the range is inverted: {v[0]} is above {v[1]}")
        return v

    def candidates(self) -> list[Scalar]:
        # every value a range can produce, when there are few enough to try them all: a rule
        # such as "p is prime" (division) can fail between two valid ends
        lo, hi = self.int
        return list(range(lo, hi + 1)) if hi - lo < INT_RANGE_ENUMERATED else [lo, hi]


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


SEED = "seed"  # the setting a repeat changes
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
BOUNDARY_KEYS = ("initial", "depth", "max_trials", "same", "trace")
# Settings of the study that --resume may change: how trials run, never what they compute.
RESUMABLE = ("max_concurrent", "cpus_per_trial", "gpus_per_trial", "checkpoint_every")


# Top-level keys that only some modes read: elsewhere they would do nothing, silently.
MODE_ONLY = {
    "seed": ("random", "optuna"),
    "objective": ("optuna",),
    "n_startup_trials": ("optuna",),
}
MODE_ONLY_WHY = {
    "seed": "the sampler's seed (a trial's own seed is params.seed)",
    "objective": "what the sampler optimizes",
    "n_startup_trials": "TPE's random start-up",
}


class StudySpec(BaseModel):
    """A study: what to search, how, and with which resources."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(pattern=NAME_PATTERN, description="the study's folder under the storage")
    description: str = ""
    mode: Literal["grid", "random", "optuna", "boundary"]
    num_samples: int = Field(1, ge=1, description="grid: repeats of the grid; else: trials")
    seed: int = Field(0, ge=0, description="seed of the random or Optuna sampler")
    objective: Objective = Objective()
    max_concurrent: int | None = Field(None, ge=1, description="None: CPUs // cpus_per_trial")
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0, description="fractions share a GPU")
    checkpoint_every: int = Field(1000, ge=1, description="steps between trial checkpoints")
    max_failures: int = Field(1, ge=0, description="retries of a crashed trial from a checkpoint")
    members_per_trial: int = Field(
        1, ge=1, le=4096,
        description="grid/random: configurations trained as one population per trial (a GPU "
        "runs many at once; 1 on CPU, where it gains nothing)",
    )  # fmt: skip
    # mode boundary (grok_tune/boundary.py): refine one or two ranges where the region changes
    initial: int = Field(5, ge=2, le=65, description="boundary: points per axis to start with")
    depth: int = Field(3, ge=0, le=10, description="boundary: levels of refinement")
    max_trials: int | None = Field(None, ge=1, description="boundary: at most this many trials")
    same: list[list[Literal[tuple(str(r) for r in REGIONS)]]] = Field(  # type: ignore[valid-type]
        default_factory=list,
        description="boundary: regions counted as one label, e.g. [[grok, generalize]]",
    )
    trace: bool = Field(False, description="boundary: follow a region seen between corners")
    # mode optuna: TPE samples at random until it has this many complete trials (Optuna's own
    # default is 10: a 6-trial study never used TPE at all)
    n_startup_trials: int = Field(10, ge=0, description="optuna: TPE's random start-up trials")
    params: dict[str, Param] = Field(default_factory=dict)
    # mode grid: bundles of settings, each crossed with the grid (one remedy each, say); a
    # variant's keys are settings the params do not name
    variants: list[dict[str, Scalar]] = Field(default_factory=list)

    @field_validator(
        "num_samples", "seed", "max_concurrent", "cpus_per_trial", "gpus_per_trial",
        "checkpoint_every", "max_failures", "members_per_trial", "initial", "depth",
        "max_trials", "trace", "n_startup_trials", mode="before",
    )  # fmt: skip
    @classmethod
    def _strict(cls, value: Any, info: Any) -> Any:
        return strict_value(value, cls.model_fields[info.field_name].annotation)

    @model_validator(mode="before")
    @classmethod
    def _preset_is_a_setting(cls, data: Any) -> Any:
        """``preset: nanda2023`` at the top of a file: the same as in params."""
        if isinstance(data, dict) and "preset" in data:
            params = data.get("params") or {}
            if isinstance(params, dict) and "preset" in params:
                raise ValueError("preset: given twice (top level and params): name it once")
            rest = {k: v for k, v in data.items() if k != "preset"}
            return {
                **rest,
                "params": {
                    "preset": data["preset"],
                    **(params if isinstance(params, dict) else {}),
                },
            }
        return data

    @field_validator("variants", mode="before")
    @classmethod
    def _known_variant_settings(cls, variants: Any) -> Any:
        if isinstance(variants, list):
            for i, variant in enumerate(variants):
                if isinstance(variant, dict):
                    unknown = [k for k in variant if k not in TrainConfig.model_fields]
                    if unknown:
                        raise ValueError(
                            f"[{i}]: "
                            + "; ".join(
                                unknown_key(k, TrainConfig.model_fields, "setting") for k in unknown
                            )
                        )
        return variants

    @field_validator("params", mode="before")
    @classmethod
    def _known_settings(cls, params: Any) -> Any:
        if isinstance(params, dict):
            unknown = [k for k in params if k not in TrainConfig.model_fields]
            if unknown:
                raise ValueError(
                    "; ".join(unknown_key(k, TrainConfig.model_fields, "setting") for k in unknown)
                )
        return params

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_or_share(cls, gpus: float) -> float:
        if gpus > 1 and not gpus.is_integer():
            raise ValueError(f"{gpus:g}: a share of one GPU (below 1) or a whole number of GPUs")
        return gpus

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        for key, param in self.params.items():
            if isinstance(param, Grid) and self.mode not in ("grid", "boundary"):
                raise ValueError(
                    f"params.{key}: grid needs mode: grid (use choice with {self.mode})"
                )
        has_grid = any(isinstance(p, Grid) for p in self.params.values())
        if self.mode == "grid" and not (has_grid or self.variants):
            raise ValueError("mode grid needs at least one param given as {grid: [...]}")
        if self.variants and self.mode != "grid":
            raise ValueError(f"variants need mode: grid, not {self.mode}")
        for i, variant in enumerate(self.variants):
            both = sorted(set(variant) & set(self.params))
            if both:
                raise ValueError(
                    f"variants[{i}]: {', '.join(both)} also in params: name a setting in one place"
                )
        fields = type(self).model_fields
        for key, modes in MODE_ONLY.items():
            default = fields[key].get_default(call_default_factory=True)
            if self.mode not in modes and getattr(self, key) != default:
                raise ValueError(
                    f"{key}: {MODE_ONLY_WHY[key]}, used by mode {' and '.join(modes)} only; "
                    f"mode {self.mode} would ignore it"
                )
        if self.mode == "optuna" and not self.distributions:
            raise ValueError("mode optuna needs at least one param given as a distribution")
        if self.members_per_trial > 1 and self.mode not in ("grid", "random"):
            raise ValueError(
                f"members_per_trial: packs grid and random studies; mode {self.mode} asks for "
                "one trial at a time"
            )
        if self.mode == "boundary":
            self._check_boundary()
        else:
            changed = [
                k
                for k in BOUNDARY_KEYS
                if getattr(self, k) != fields[k].get_default(call_default_factory=True)
            ]
            if changed:
                raise ValueError(f"{', '.join(changed)}: only for mode boundary")
        return self

    def _check_boundary(self) -> None:
        axes = self.axes
        if not 1 <= len(axes) <= 2:
            raise ValueError(
                "mode boundary needs one or two params given as {uniform: [lo, hi]} or "
                f"{{loguniform: [lo, hi]}} (its axes), got {len(axes)}"
            )
        for key, param in self.distributions.items():
            if not isinstance(param, Uniform | LogUniform | Grid):
                raise ValueError(
                    f"params.{key}: mode boundary takes ranges (the axes), grids (one map "
                    f"each) and fixed values, not {_kind(param)}"
                )
        for key in axes:
            annotation = TrainConfig.model_fields[key].annotation
            if annotation is not float:
                raise ValueError(f"params.{key}: a boundary axis must be a real-valued setting")

    @property
    def axes(self) -> dict[str, Uniform | LogUniform]:
        """mode boundary: the ranges refined (one or two)."""
        return {k: d for k, d in self.distributions.items() if isinstance(d, Uniform | LogUniform)}

    @property
    def fixed(self) -> dict[str, Scalar]:
        return {k: v for k, v in self.params.items() if not isinstance(v, _Dist)}

    @property
    def distributions(self) -> dict[str, Distribution]:
        return {k: v for k, v in self.params.items() if isinstance(v, _Dist)}

    def grid_points(self) -> list[dict[str, Scalar]]:
        """Every combination of the grid settings (one trial each per repeat), in Tune's order:
        the last grid setting varies slowest."""
        grids = {k: d.grid for k, d in self.distributions.items() if isinstance(d, Grid)}
        combos = itertools.product(self.variants or [{}], *reversed(grids.values()))
        return [
            {
                **variant,
                **{k: dict(zip(reversed(grids), combo, strict=True))[k] for k in grids},
            }
            for variant, *combo in combos
        ]

    def repeat_seeds(self) -> list[int] | None:
        """The seeds of a grid or random study's repeats (``num_samples``): repeat r runs with
        params.seed (its fixed value, else 0) + r, so that repeats repeat the experiment, not
        the run (the same seed gives the same run, bit for bit on CPU). None when there is
        nothing to give: one sample, or seeds that params or the variants choose themselves."""
        if self.mode not in ("grid", "random") or self.num_samples == 1:
            return None
        if SEED in self.distributions or any(SEED in v for v in self.variants):
            return None
        base = int(self.fixed.get(SEED) or 0)
        return [base + r for r in range(self.num_samples)]

    def startup_note(self) -> str:
        """How much of an Optuna study TPE itself chose: its first trials are random."""
        n, total = self.startup_trials(), self.num_trials()
        if n >= total:
            return (
                f"all {total} trials are TPE's random start-up (n_startup_trials "
                f"{self.n_startup_trials}): a random search; more trials, or a smaller "
                "n_startup_trials, let TPE model the objective"
            )
        return f"the first {n} of {total} trials are TPE's random start-up (n_startup_trials)"

    def startup_trials(self) -> int:
        """mode optuna: how many of its trials TPE draws at random, before it models anything."""
        return min(self.n_startup_trials, self.num_trials())

    def num_trials(self) -> int:
        """The trials the study runs (mode boundary: the most it may run)."""
        if self.mode == "boundary":
            dense = ((self.initial - 1) * 2**self.depth + 1) ** len(self.axes)
            most = len(self.grid_points()) * dense * self.num_samples
            return min(most, self.max_trials) if self.max_trials else most
        return self.num_samples * (len(self.grid_points()) if self.mode == "grid" else 1)


class SpecError(ValueError):
    """A study file that cannot run; the message names the file, the key and what is allowed."""


# Names researchers reach for first, mapped to grok_tune's.
ALIASES = {
    "learning_rate": "lr", "wd": "weight_decay", "decay": "weight_decay",
    "fraction": "frac", "train_frac": "frac", "train_fraction": "frac",
    "training_fraction": "frac", "data_fraction": "frac", "modulus": "p", "prime": "p",
    "operation": "op", "layers": "n_layers", "num_layers": "n_layers", "heads": "n_heads",
    "num_heads": "n_heads", "width": "d_model", "d_ff": "d_mlp", "max_steps": "steps",
    "num_steps": "steps", "budget": "steps", "batch": "batch_size", "warmup": "warmup_steps",
    "samples": "num_samples", "trials": "num_samples", "concurrency": "max_concurrent",
    "space": "params", "parameters": "params", "search_space": "params",
}  # fmt: skip


def unknown_key(key: str, allowed: Mapping[str, Any] | list[str], what: str = "key") -> str:
    """ "unknown setting 'learning_rate' (did you mean 'lr'?); allowed: ..."."""
    names = list(allowed)
    guess = did_you_mean(key, names, ALIASES)
    hint = f" (did you mean {guess!r}?)" if guess else ""
    return f"unknown {what} {key!r}{hint}; allowed: {', '.join(names)}"


def _message(e: dict[str, Any], model: type[BaseModel] | None) -> str:
    """pydantic's message, minus its "Value error, " prefix, with the allowed keys for an
    unknown one and plain words for the study name's pattern."""
    loc = e["loc"]
    if e["type"] == "extra_forbidden" and model is not None:
        owner = model
        for part in loc[:-1]:  # nested models (objective.*)
            field = owner.model_fields.get(str(part))
            annotation = field.annotation if field else None
            owner = annotation if isinstance(annotation, type) else owner
        return unknown_key(str(loc[-1]), owner.model_fields)
    if e["type"] == "string_pattern_mismatch" and loc == ("name",):
        return (
            f"{e['input']!r} cannot name a study folder: letters, digits, '_', '.' and '-' "
            "only, beginning with a letter or a digit"
        )
    return str(e["msg"]).removeprefix("Value error, ")


def _describe(
    err: ValidationError,
    where: str,
    prefix: tuple = (),
    model: type[BaseModel] | None = None,
    flags: Mapping[str, str] | None = None,
) -> list[str]:
    """One line per error: 'where: key.path: message', or '--flag: message' for a key that
    came from the command line."""
    lines = []
    for e in err.errors(include_url=False):
        loc: list[str] = []
        for part in map(str, (*prefix, *e["loc"])):
            if not loc or loc[-1] != part:  # the union's tag repeats the distribution's key
                loc.append(part)
        message = _message(e, model)
        if e["type"] == "extra_forbidden":
            loc = loc[:-1]  # the message names the key itself
        # a rule between keys names its key first ("members_per_trial: ..."): a flag's value
        # is blamed on the flag, not on the file
        named = message.split(":", 1)[0] if not e["loc"] else None
        if flags and named in flags:
            lines.append(f"{flags[named]}{message[len(named) :]}")
        elif flags and e["loc"] and str(e["loc"][0]) in flags:
            given = f" {e['input']!r}" if repr(e["input"]) not in message else ""
            lines.append(f"{flags[str(e['loc'][0])]}{given}: {message}")
        else:
            lines.append(f"{where}: {'.'.join(loc) or '(top level)'}: {message}")
    return list(dict.fromkeys(lines))


def _whole_numbers_only(key: str) -> bool:
    """A setting that takes whole numbers and no fractions (steps, p, seed...)."""
    from grok_tune.config import _kinds

    kinds = _kinds(TrainConfig.model_fields[key].annotation)
    return int in kinds and float not in kinds


def _kind_name(dist: _Dist) -> str:
    return next(iter(type(dist).model_fields))


def _normalize(spec: StudySpec, where: str) -> tuple[StudySpec, list[str]]:
    """Every fixed value and every bound or listed value checked as a TrainConfig setting, and
    replaced by its value as that setting's type ("1e-3" -> 0.001, "7" -> 7), so that Tune,
    the trials and Parquet only ever see the setting's own type."""
    fixed, problems = dict(spec.fixed), []
    try:
        params: dict[str, Any] = {k: getattr(TrainConfig(**fixed), k) for k in fixed}
    except ValidationError as err:
        problems = _describe(err, where, ("params",))
        if any(not e["loc"] for e in err.errors()):
            return spec, problems  # a rule between settings: every candidate would repeat it
        # the distributions are still checked, beside the fixed values that are valid, so that
        # one run of the command names every bad value
        bad = {str(e["loc"][0]) for e in err.errors()}
        fixed = {k: v for k, v in fixed.items() if k not in bad}
        try:
            TrainConfig(**fixed)  # the rules between settings, which pydantic skipped
        except ValidationError as err:
            return spec, problems + _describe(err, where, ("params",))
        params = dict(spec.fixed)
    for key, dist in spec.distributions.items():
        kind, values = _kind_name(dist), []
        if isinstance(dist, Uniform | LogUniform) and _whole_numbers_only(key):
            problems.append(
                f"{where}: params.{key}.{kind}: {key} is a whole number, and a {kind} range "
                f"draws fractions: use {{int: [lo, hi]}}, or a choice or grid of whole numbers"
            )
            params[key] = dist
            continue
        for i, value in enumerate(dist.candidates()):
            # an int range is tried whole (IntRange.candidates): name the value, not its index
            at = f"{kind}: {value!r} (in {list(dist.int)})" if kind == "int" else f"{kind}[{i}]"
            at = at if kind == "int" else f"{at} = {value!r}"
            try:
                values.append(getattr(TrainConfig(**{**fixed, key: value}), key))
            except ValidationError as err:
                for e in err.errors(include_url=False):
                    msg = _message(e, None)
                    problems.append(
                        f"{where}: params.{key}.{at}: {msg}"
                        if e["loc"] in ((key,), ())
                        else f"{where}: params.{'.'.join(map(str, e['loc']))}: {msg}"
                    )
        repeated = sorted({repr(v) for v in values if values.count(v) > 1})
        if isinstance(dist, Grid | Choice) and repeated:
            problems.append(f"{where}: params.{key}.{kind}: {', '.join(repeated)} listed twice")
        if isinstance(dist, Grid | Choice) and len(values) == len(dist.candidates()):
            params[key] = type(dist)(**{kind: values})
        else:
            params[key] = dist
    variants = []
    for i, variant in enumerate(spec.variants):
        try:
            cfg = TrainConfig(**{**fixed, **variant})
        except ValidationError as err:
            problems += [f"{where}: variants[{i}]: {_message(e, None)}" for e in err.errors()]
            continue
        variants.append({k: getattr(cfg, k) for k in variant})
    update = {"params": params, "variants": variants if not problems else spec.variants}
    return spec.model_copy(update=update), problems


# Every combination of the candidate values is built as a TrainConfig before anything runs: a
# study's points are the grid's, and a distribution's bounds stand for its range (a setting
# that fails inside a range but not at its ends, e.g. a prime-only p between two primes, is
# caught only when the trial is made). Beyond this many combinations only the first are tried.
MAX_COMBINATIONS = 20_000
MAX_REPORTED = 5


def _check_combinations(spec: StudySpec, where: str) -> list[str]:
    names = list(spec.distributions)
    lists = [d.candidates() for d in spec.distributions.values()]
    variants = spec.variants or [{}]
    if math.prod(map(len, lists)) * len(variants) <= 1:
        return []
    problems: list[str] = []
    failed = 0
    combos = itertools.product(variants, *lists)
    for variant, *combo in itertools.islice(combos, MAX_COMBINATIONS):
        point = {**variant, **dict(zip(names, combo, strict=True))}
        try:
            TrainConfig(**{**spec.fixed, **point})
        except ValidationError as err:
            failed += 1
            if len(problems) < MAX_REPORTED:
                shown = ", ".join(f"{k} = {v!r}" for k, v in point.items())
                reasons = "; ".join(_message(e, None) for e in err.errors(include_url=False))
                problems.append(f"{where}: params: the combination {shown} cannot run: {reasons}")
    if failed > len(problems):
        problems.append(f"{where}: params: and {failed - len(problems)} more such combinations")
    return problems


# key -> (value, where it came from: '--cpus-per-trial', ...)
Overrides = Mapping[str, tuple[Any, str]]


def parse_spec(data: Any, where: str = "<study>", overrides: Overrides | None = None) -> StudySpec:
    """Validate a study's data -> StudySpec, or SpecError.

    ``overrides`` maps a key to (value, where it came from, e.g. '--cpus-per-trial'): the value
    replaces the file's, and an error in it is reported under its own name, not the file's.
    """
    if data is None:
        raise SpecError(f"{where}: the study file is empty")
    if not isinstance(data, dict):
        raise SpecError(f"{where}: a study file is a mapping of keys to values, got {data!r}")
    given = {k: v for k, (v, _) in (overrides or {}).items() if v is not None}
    flags = {k: label for k, (v, label) in (overrides or {}).items() if v is not None}
    try:
        spec = StudySpec.model_validate({**data, **given})
    except ValidationError as err:
        raise SpecError("\n".join(_describe(err, where, model=StudySpec, flags=flags))) from None
    spec, problems = _normalize(spec, where)
    problems = problems or _check_combinations(spec, where)
    if problems:
        raise SpecError("\n".join(problems))
    return spec


def read_study_file(path: str | Path) -> Any:
    """A study file's YAML data, or SpecError saying why it cannot be read."""
    path = Path(path)
    try:
        return load_yaml(path.read_bytes().decode("utf-8"))
    except IsADirectoryError:
        raise SpecError(f"{path}: is a folder, not a study file") from None
    except OSError as err:
        raise SpecError(f"{path}: cannot read the study file: {err.strerror}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file (a study file is UTF-8 YAML)") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None


def load_spec(path: str | Path, overrides: Overrides | None = None) -> StudySpec:
    return parse_spec(read_study_file(path), str(path), overrides)


def is_log_scale(name: str) -> bool:
    """Settings whose natural axis is logarithmic (plots, grids)."""
    return name in ("lr", "weight_decay", "init_scale")
