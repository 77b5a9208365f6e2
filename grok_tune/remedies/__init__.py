"""The field's grokking remedies, one registry entry each: everything the rest of grok_tune
knows of a remedy is its ``Remedy`` in ``REMEDIES`` below.

- **Grokfast** (Lee et al. 2024, "Grokfast: Accelerated Grokking by Amplifying Slow Gradients",
  github.com/ironjr/grokfast): grokfast.py. Between ``loss.backward()`` and ``optimizer.step()``.
- **StableMax** and float64 cross-entropy (Prieto et al. 2025, "Grokking at the Edge of Numerical
  Stability", github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability): losses.py.
  The loss.
- **⊥Grad** (same paper and repository): orthogonal.py. Between ``backward`` and ``step``, after
  any gradient filter.
- **Weight-norm control** (Liu et al. 2023, "Omnigrok: Grokking Beyond Algorithmic Data",
  github.com/KindXiaoming/Omnigrok): weight_norm.py. After ``optimizer.step()``.

An entry holds the remedy's settings (a small pydantic model: ``TrainConfig`` inherits its
fields, with their validation and descriptions, so the YAML files, the CLI, Parquet and
TensorBoard show the same names), the defaults that follow other settings, the settings a run
does not read, whether members of one population may differ in it, its label in figures, and
how it attaches to the loop's seams: a factory for a run's own model (grok_tune/member.py) and
a part of the stacked path (grok_tune/stacked.py), or none (members then run per member).
Adding a remedy is a module here and one entry below; nothing else changes.

This module is torch-free (the study driver and analysis read the registry); the tensor code
lives in the remedy modules, imported when a run attaches a remedy. ``remedies.GrokfastEMA``
and the other tensor functions are importable from here too (loaded on first use).

Where the papers' code differs from their text, the modules follow the code and say so at the
spot: the first EMA step (``GrokfastEMA``), ⊥Grad's norm guard and dtype, Omnigrok's target norm.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

Seam = Literal["loss", "grad", "step"]


def setting(settings: Any, name: str) -> Any:
    """A setting of a run's config, its settings dict or its row of trials.parquet (where a
    missing value is None or NaN)."""
    value = settings.get(name) if hasattr(settings, "get") else getattr(settings, name, None)
    return None if isinstance(value, float) and math.isnan(value) else value


def _true(value: Any) -> bool:
    return value is True or value == 1


@dataclass(frozen=True)
class Remedy:
    """One remedy, as the rest of grok_tune sees it."""

    name: str
    settings: type[BaseModel]  # its TrainConfig fields (the first one switches it on)
    on: Callable[[Any], bool]  # whether a run's settings (config, dict or row) use it
    label: Callable[[Any], str]  # its words in figures and summaries: "grokfast ema"
    seam: Seam  # where it acts: the loss, the gradients before the step, the weights after
    # "module:factory" in this package: factory(cfg, params) -> the loss function (seam
    # "loss") or a hook called with the parameters (seams "grad", "step")
    member: str
    # "module:class": its part of the stacked path (grok_tune/stacked.py ``StackedPart``);
    # None: the stacked path cannot run it (members that use it run per member)
    stacked: str | None = None
    may_differ: bool = True  # whether members of one population may differ in its settings
    # defaults of its settings that follow other settings (given the raw settings dict)
    defaults: Callable[[dict[str, Any]], dict[str, Any]] = field(default=lambda data: {})
    # its settings a run with these settings does not read (blank in the run's record)
    unread: Callable[[Any], set[str]] = field(default=lambda settings: set())

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.settings.model_fields)

    @property
    def switch(self) -> str:
        return self.fields[0]

    def attach(self, factory: Literal["member", "stacked"]) -> Any:
        """The function or class named by ``member`` / ``stacked`` (imports torch)."""
        module, name = str(getattr(self, factory)).split(":")
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)


# --- Grokfast -----------------------------------------------------------------------------------
class GrokfastSettings(BaseModel):
    grad_filter: Literal["none", "ema", "ma"] = Field(
        "none", description="Grokfast: amplify the gradients' slow part (Lee et al. 2024)"
    )
    grokfast_alpha: float = Field(0.98, ge=0, lt=1, description="EMA filter's momentum α")
    grokfast_lamb: float | None = Field(
        None, ge=0, description="amplification λ; unset: the filter's default (EMA 2, MA 5)"
    )
    grokfast_window: int = Field(100, ge=1, description="MA filter's window w")


# Lee et al.'s λ: 2 for the EMA filter, 5 for the MA filter
GROKFAST_LAMB = {"ema": 2.0, "ma": 5.0}
# the Grokfast settings each filter reads
FILTER_READS: dict[str, tuple[str, ...]] = {
    "none": (),
    "ema": ("grokfast_alpha", "grokfast_lamb"),
    "ma": ("grokfast_window", "grokfast_lamb"),
}
GROKFAST = Remedy(
    name="grokfast",
    settings=GrokfastSettings,
    on=lambda s: setting(s, "grad_filter") not in (None, "none"),
    label=lambda s: f"grokfast {setting(s, 'grad_filter')}",
    seam="grad",
    member="grokfast:member_filter",
    stacked="grokfast:StackedFilters",
    defaults=lambda data: (
        {"grokfast_lamb": GROKFAST_LAMB[data["grad_filter"]]}
        if data.get("grad_filter") in GROKFAST_LAMB
        else {}
    ),
    unread=lambda s: (
        set(GrokfastSettings.model_fields)
        - {"grad_filter", *FILTER_READS[setting(s, "grad_filter") or "none"]}
    ),
)


# --- StableMax and the loss's dtype -------------------------------------------------------------
class LossSettings(BaseModel):
    loss: Literal["cross_entropy", "stablemax"] = Field(
        "cross_entropy", description="StableMax: Prieto et al. 2025"
    )
    loss_dtype: Literal["float32", "float64"] | None = Field(
        None, description="where the loss is computed; unset: cross_entropy 32, stablemax 64"
    )


# Prieto et al. computed StableMax in float64; cross-entropy is float32 unless asked
LOSS_DTYPE = {"cross_entropy": "float32", "stablemax": "float64"}
LOSS = Remedy(
    name="loss",
    settings=LossSettings,
    on=lambda s: setting(s, "loss") == "stablemax" or setting(s, "loss_dtype") == "float64",
    label=lambda s: "stablemax" if setting(s, "loss") == "stablemax" else "float64 loss",
    seam="loss",
    member="losses:member_loss",
    stacked="losses:member_loss",  # one loss for the whole stack: members share it
    may_differ=False,
    defaults=lambda data: (
        {"loss_dtype": LOSS_DTYPE[data.get("loss", "cross_entropy")]}
        if data.get("loss", "cross_entropy") in LOSS_DTYPE
        else {}
    ),
)


# --- ⊥Grad --------------------------------------------------------------------------------------
class OrthogonalGradSettings(BaseModel):
    orthogonal_grad: bool = Field(
        False, description="⊥Grad: drop each gradient's component along its weights"
    )


ORTHOGONAL_GRAD = Remedy(
    name="orthogonal_grad",
    settings=OrthogonalGradSettings,
    on=lambda s: _true(setting(s, "orthogonal_grad")),
    label=lambda s: "⊥grad",
    seam="grad",
    member="orthogonal:member_hook",
    stacked="orthogonal:StackedOrthogonal",
)


# --- Omnigrok's weight-norm control -------------------------------------------------------------
class FixedWeightNormSettings(BaseModel):
    fixed_weight_norm: bool = Field(
        False, description="hold the total weight norm at its initial value (Omnigrok)"
    )


FIXED_WEIGHT_NORM = Remedy(
    name="fixed_weight_norm",
    settings=FixedWeightNormSettings,
    on=lambda s: _true(setting(s, "fixed_weight_norm")),
    label=lambda s: "fixed norm",
    seam="step",
    member="weight_norm:member_hook",
    stacked="weight_norm:StackedWeightNorm",
)


# The registry, in the order the remedies act at a seam (a filter first, then ⊥Grad on what
# the optimizer will see: Prieto et al. wrap the whole optimizer step) and are named in labels.
REMEDIES: tuple[Remedy, ...] = (GROKFAST, LOSS, ORTHOGONAL_GRAD, FIXED_WEIGHT_NORM)
# the settings that switch a remedy on, and every remedy setting
REMEDY_SETTINGS: tuple[str, ...] = tuple(r.switch for r in REMEDIES)
ALL_REMEDY_SETTINGS: tuple[str, ...] = tuple(f for r in REMEDIES for f in r.fields)
SETTINGS_MODELS: tuple[type[BaseModel], ...] = tuple(r.settings for r in REMEDIES)


def remedy_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """Defaults of remedy settings that follow other settings (Grokfast's λ by filter, the
    loss's dtype by loss)."""
    out: dict[str, Any] = {}
    for remedy in REMEDIES:
        out |= remedy.defaults(data)
    return out


def unread_settings(settings: Any) -> set[str]:
    return {name for remedy in REMEDIES for name in remedy.unread(settings)}


def remedy_name(settings: Any) -> str:
    """A run's remedies in words: 'baseline', 'grokfast ema', 'stablemax + ⊥grad', ..."""
    return " + ".join(r.label(settings) for r in REMEDIES if r.on(settings)) or "baseline"


def __getattr__(name: str) -> Any:
    """The remedies' tensor code by its old names (``remedies.GrokfastEMA``): imports torch."""
    for module in ("grokfast", "losses", "orthogonal", "weight_norm"):
        loaded = importlib.import_module(f"{__name__}.{module}")
        if hasattr(loaded, name) and not name.startswith("_"):
            return getattr(loaded, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
