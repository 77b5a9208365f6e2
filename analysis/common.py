"""What every analysis command shares: loading a study, the region-rule options, colours, output.

A command is ``python -m analysis.NAME STUDY_DIR [--out DIR] [region-rule options] ...``: it
writes PNGs into ``STUDY_DIR/figures`` (or ``--out``) and prints their paths. Bad input (no
results, an unknown column or trial) raises ``AnalysisError``; the commands turn it into exit
status 2 with the message.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from grok_tune import metrics as m
from grok_tune.cli import Parser
from grok_tune.events import DEFAULT_PHASE_RULE
from grok_tune.regions import (
    DEFAULT_RULE,
    REGION,
    REGION_RULE,
    REGIONS,
    Region,
    RegionRule,
    classify_trials,
    trials_rule,
)
from grok_tune.results import (
    CONFIG_SCHEMA,
    HEADLINE_COLUMNS,
    PHASE_RULE,
    phase_rows,
    read_curves,
    read_phases,
    read_trials,
)
from grok_tune.space import (
    Choice,
    Grid,
    IntRange,
    LogUniform,
    SpecError,
    StudySpec,
    Uniform,
    load_yaml,
    parse_spec,
)
from grok_tune.study_files import (
    CURVES_FILE,
    FIGURES_DIR,
    OPTUNA_FILE,
    PHASES_FILE,
    STUDY_FILE,
    TRIAL_ID,
    TRIALS_FILE,
)

CONFIG_COLUMNS: tuple[str, ...] = tuple(name for name, _ in CONFIG_SCHEMA)
# TrainConfig fields the analyses treat specially (tests check they are fields)
SEED = "seed"  # repeats of a setting, never an axis of its own by default
FRAC = "frac"
OP = "op"
MODULUS = "p"
BUDGET = "steps"
# an axis with more distinct values than this is drawn as points, not as cells
MAX_CATEGORIES = 15

# Colour-blind-safe (ColorBrewer PuOr/Dark2 picks); grey for no learning, dark for broken runs.
REGION_COLORS: dict[Region, str] = {
    Region.CONFUSION: "#bababa",
    Region.MEMORIZE: "#e66101",
    Region.GROK: "#5e3c99",
    Region.GENERALIZE: "#1b9e77",
    # unlimited data and induction (grok_tune/regions.py): lighter and darker kin of the above
    Region.PARTIAL: "#c2e699",
    Region.LEARNED: "#66c2a5",
    Region.INDUCTION: "#b2abd2",
    Region.DIVERGED: "#404040",
}
# the regions whose trials reached the threshold on validation data
LEARNED = (Region.GROK, Region.GENERALIZE, Region.LEARNED)
NO_RESULT_COLOR = "#ffffff"  # a cell whose trials all errored or are still running


class AnalysisError(ValueError):
    """Input an analysis cannot use; the message says what is wrong and what is allowed."""


@dataclass(frozen=True)
class Drawn:
    """A figure written, with what it shows, so that callers and tests can check it."""

    path: Path
    n_cells: int = 0
    n_points: int = 0
    n_lines: int = 0
    caption: str = ""  # a measure the figure states (the S5 coset agreement), as printed


@dataclass
class Study:
    path: Path
    trials: pd.DataFrame
    spec: StudySpec | None
    rule: RegionRule = DEFAULT_RULE

    @property
    def name(self) -> str:
        return self.spec.name if self.spec else self.path.name

    @property
    def is_optuna(self) -> bool:
        return (self.path / OPTUNA_FILE).exists()

    @cached_property
    def curves(self) -> pd.DataFrame:
        """Read on first use: most figures need only the trials."""
        if not (self.path / CURVES_FILE).is_file():
            raise AnalysisError(
                f"{self.path}: no {CURVES_FILE}: run python -m grok_tune.search first"
            )
        return _read_table(self.path, CURVES_FILE, read_curves)

    @cached_property
    def phases(self) -> pd.DataFrame:
        """Every phase change of every trial (phases.parquet; load_study finds them again from
        the curves when the study was written under another phase rule); empty for a study
        without."""
        if not (self.path / PHASES_FILE).is_file():
            return pd.DataFrame(columns=[TRIAL_ID, "curve", "step", "size"])
        return _read_table(self.path, PHASES_FILE, read_phases)

    @property
    def stale_phases(self) -> bool:
        """Whether the study's phase changes were found under another rule than today's."""
        recorded = self.trials.get(PHASE_RULE)
        return recorded is not None and (recorded != DEFAULT_PHASE_RULE.describe()).any()

    @property
    def finished(self) -> pd.DataFrame:
        """Trials with a final region: not errored, not still running."""
        done = self.trials[REGION].notna() & (self.trials[m.STATUS] != m.Status.RUNNING)
        return self.trials[done]

    def varying(self) -> list[str]:
        """Settings that take more than one value among the trials, in TrainConfig's order."""
        return [c for c in CONFIG_COLUMNS if c in self.trials and self.trials[c].nunique() > 1]

    def searched(self) -> list[str]:
        """The study file's distributions, or (without one) every setting that varies."""
        if self.spec is None:
            return self.varying()
        return [c for c in self.spec.distributions if c in self.trials]

    def distinguishing(self) -> list[str]:
        """What tells the trials apart, to name in panel titles and rows: every setting that
        varies (a variant's settings and the repeats' seeds included), the seed last."""
        names = [c for c in self.varying() if c != SEED]
        return names + ([SEED] if SEED in self.varying() else [])

    def axes(self) -> list[str]:
        """The settings a map may take as axes, most telling first: the searched ones, the
        variants as one axis (a ``variant`` column), then anything else that varies; seeds
        only when nothing else varies."""
        searched = [c for c in self.searched() if c != SEED]
        if VARIANT in self.trials:
            searched.append(VARIANT)
        others = [c for c in self.varying() if c != SEED and c not in searched]
        if self.spec is not None and self.spec.variants and VARIANT in self.trials:
            others = []  # a variant's settings are the variant axis
        return searched + others or ([SEED] if SEED in self.varying() else [])

    def is_discrete(self, name: str) -> bool:
        """Whether a setting's values are a few categories (cells) or a continuum (points)."""
        column = self.trials[name]
        if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            return True
        dist = self.spec.params.get(name) if self.spec else None
        if isinstance(dist, Grid | Choice):
            return True
        if isinstance(dist, IntRange):
            return dist.int[1] - dist.int[0] < MAX_CATEGORIES
        if isinstance(dist, LogUniform | Uniform):
            return False
        if self.spec is not None and name in self.spec.params:
            return True  # fixed
        n = column.nunique()
        # without the study file: a grid repeats its values, a sampler does not
        return n <= MAX_CATEGORIES and 2 * n <= len(column)

    def check_columns(
        self, names: Sequence[str], allowed: Sequence[str] = (*CONFIG_COLUMNS, "variant")
    ) -> None:
        unknown = [n for n in names if n not in allowed or n not in self.trials]
        if unknown:
            raise AnalysisError(
                f"unknown column {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(a for a in allowed if a in self.trials)}"
            )

    def groups(self, exclude: Sequence[str]) -> list[str]:
        """Discrete varying settings other than ``exclude`` and the seed: one line or row each."""
        return [c for c in self.varying() if c not in (*exclude, SEED) and self.is_discrete(c)]


def majority(regions: pd.Series) -> tuple[Region, int]:
    """The most common region among repeats, ties to the first in REGIONS order, and its count."""
    counts = regions.value_counts()
    best = int(counts.max())
    return next(r for r in REGIONS if counts.get(r, 0) == best), best


def load_study(
    path: str | Path, rule: RegionRule = DEFAULT_RULE, own_threshold: bool = False
) -> Study:
    """Read a study directory's trials (and its study file), with regions under ``rule``;
    ``own_threshold``: at the trials' own accuracy threshold where they share one."""
    path = Path(path)
    if not (path / TRIALS_FILE).is_file():
        raise AnalysisError(
            f"{path}: no {TRIALS_FILE}: run python -m grok_tune.search first"
            + ("" if path.is_dir() else " (no such directory)")
        )
    trials = _read_table(path, TRIALS_FILE, read_trials)
    rule = trials_rule(trials, rule) if own_threshold else rule
    study = Study(path, trials, _read_spec(path), rule)
    if study.spec is not None and study.spec.variants:
        study.trials[VARIANT] = variant_labels(study.trials, study.spec.variants)
    if rule != DEFAULT_RULE or (study.trials[REGION_RULE] != rule.describe()).any():
        study.trials = reclassify(study.trials, study.curves, rule)
    if study.stale_phases:  # every phase change and the headline columns, by today's rule
        study.phases, headline = phase_rows(study.curves)
        for name in HEADLINE_COLUMNS:
            study.trials[name] = [headline.get(t, {}).get(name) for t in study.trials[TRIAL_ID]]
    return study


# what analysis needs of a trials table; a file without them is not grok_tune's
REQUIRED_COLUMNS = (TRIAL_ID, m.STATUS, m.STEPS_TO_MEMORIZE, m.STEPS_TO_GENERALIZE, REGION)


def _read_table(path: Path, name: str, read: Callable[[str], pd.DataFrame]) -> pd.DataFrame:
    """A study's Parquet file, or AnalysisError naming it when it is damaged or foreign."""
    try:
        table = read(str(path))
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AnalysisError(f"{path / name}: not a readable Parquet file ({reason})") from None
    if name == TRIALS_FILE:
        missing = [c for c in REQUIRED_COLUMNS if c not in table]
        if missing:
            raise AnalysisError(
                f"{path / name}: not a grok_tune trials table (no column {', '.join(missing)})"
            )
    return table


def _read_spec(path: Path) -> StudySpec | None:
    file = path / STUDY_FILE
    if not file.is_file():
        return None
    try:
        return parse_spec(load_yaml(file.read_text()), str(file))
    except (SpecError, yaml.YAMLError, OSError, UnicodeDecodeError):
        return None  # an older or hand-edited file: fall back to what the trials show


def reclassify(trials: pd.DataFrame, curves: pd.DataFrame, rule: RegionRule) -> pd.DataFrame:
    """Regions (and, at another threshold, the events they rest on) under ``rule``."""
    return classify_trials(trials, curves, rule)


# --- the commands' shared parts -----------------------------------------------------------------
def base_parser(prog: str, description: str | None) -> Parser:
    parser = Parser(
        prog=f"python -m {prog}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("study", type=Path, metavar="STUDY_DIR", help="a study directory")
    parser.add_argument("--out", type=Path, help=f"output folder (default STUDY_DIR/{FIGURES_DIR})")
    add_rule_options(parser)
    return parser


def add_rule_options(parser: argparse.ArgumentParser) -> None:
    d = DEFAULT_RULE
    rule = parser.add_argument_group("region rule (grok_tune.regions)")
    rule.add_argument(
        "--threshold", type=float, default=None,
        help="accuracy that counts as memorized / generalized (default: the trials' own "
        f"where they share one, else {d.threshold:g}); another value re-derives both events "
        "from the curves",
    )  # fmt: skip
    rule.add_argument(
        "--gap", choices=("ratio", "steps"), default=d.gap,
        help=f"grok: generalized more than --min-ratio times as late as memorized (ratio), or "
        f"more than --min-gap-steps later (steps); default {d.gap}",
    )  # fmt: skip
    rule.add_argument("--min-ratio", type=float, default=d.min_ratio, help=f"default {d.min_ratio}")
    rule.add_argument(
        "--min-gap-steps", type=int, default=d.min_gap_steps, help=f"default {d.min_gap_steps}"
    )


def rule_from_args(args: argparse.Namespace) -> RegionRule:
    return RegionRule(
        threshold=DEFAULT_RULE.threshold if args.threshold is None else args.threshold,
        gap=args.gap,
        min_gap_steps=args.min_gap_steps,
        min_ratio=args.min_ratio,
    )


def run_command(
    parser: Parser,
    argv: Sequence[str] | None,
    body: Callable[[Study, argparse.Namespace], Sequence[Path]],
) -> int:
    """Parse, load the study, run ``body``, print the paths it wrote; errors exit with 2."""
    args = parser.parse_args(argv)
    try:
        rule = rule_from_args(args)
    except ValueError as err:  # RegionRule's own checks, naming the option's value
        parser.fail(str(err))
    try:
        paths = body(load_study(args.study, rule, own_threshold=args.threshold is None), args)
    except AnalysisError as err:
        parser.fail(str(err))
    for path in paths:
        print(path)
    return 0


def figure_path(study: Study, out: Path | None, name: str) -> Path:
    folder = out if out is not None else study.path / FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


# --- drawing ------------------------------------------------------------------------------------
def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas: no pyplot, so no GUI backend and no global figure list."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    return path


def plain_log_axis(axis: Axis, steps: bool = False) -> None:
    """A log axis labelled with plain numbers (1,000, not 10³), with 2s and 5s within 2 decades.

    Call it once the data are drawn: the ticks follow the view's range at that moment.
    """
    lo, hi = sorted(axis.get_view_interval())
    narrow = lo > 0 and hi / lo < 100
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if narrow else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if steps else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def text_color(background: str) -> str:
    r, g, b = to_rgb(background)
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def fmt(value: Any) -> str:
    """A setting's value as labels show it."""
    if isinstance(value, float):
        if value == float("inf"):
            return "infinite"  # train_size: a fresh batch every step
        return f"{value:.4g}"  # sampled values: 0.7818, not 0.781831
    return str(value)


VARIANT = "variant"  # a variants study's derived column: which variant a trial ran


def variant_labels(trials: pd.DataFrame, variants: Sequence[dict]) -> pd.Series:
    """Each trial's variant in words: the settings its variant set ("grad_filter=ema"), "as is"
    for the empty one. A trial ran the most specific variant whose every value it shows."""

    def matches(row: pd.Series, variant: dict) -> bool:
        return all(k in row and fmt(row[k]) == fmt(v) for k, v in variant.items())

    def label(row: pd.Series) -> str:
        mine = [v for v in variants if matches(row, v)]
        best = max(mine, key=len, default=None)
        if best is None:
            return "?"
        return ", ".join(f"{k}={fmt(v)}" for k, v in best.items()) or "as is"

    return trials.apply(label, axis=1) if len(trials) else pd.Series([], dtype=str)


def describe_settings(row: pd.Series, names: Sequence[str]) -> str:
    return ", ".join(f"{n}={fmt(row[n])}" for n in names)


def title(study: Study, what: str) -> str:
    return f"{study.name}: {what}\nregions: {study.rule.describe()}"
