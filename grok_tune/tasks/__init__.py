"""Tasks: what a trial learns. One module per task family, behind one small protocol.

A task owns its vocabulary, its sequence layout, which positions are predicted, how examples
are made, how training and validation data are chosen, and its own progress measures. The loop
(grok_tune/population.py), the search service and analysis see only what is defined here:

- ``Layout``: the model's side of the task (tokens in, classes out, sequence length, how many
  trailing positions carry a prediction and what each is called);
- ``Split``: token rows ``x`` (N, seq_len) and targets ``y`` (N, n_predict), ``IGNORE`` where a
  position predicts nothing in that row;
- ``Task``: the validation split, the training split (finite data) or a stream of fresh batches
  (infinite data, its state one counter), and measures of the model beyond loss and accuracy.

Adding a task is a module with a ``Task`` subclass registered in ``_registry`` below (its
data, its CSV rows, its description in summaries, its measures and their names), and its
settings as fields of ``TrainConfig``; nothing else names a task.

Nothing here imports torch at module level: the settings are checked (``check``) where torch is
not loaded (the search driver, analysis).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    import torch
    from torch import nn

    from grok_tune.config import TrainConfig

# targets of positions that predict nothing in a row (torch's cross-entropy default)
IGNORE = -100
INFINITE = "infinite"
# a number of training examples, or a fresh batch every step
Size = int | Literal["infinite"]


@dataclass(frozen=True)
class Layout:
    vocab_size: int  # input tokens
    num_classes: int  # answer classes at each predicted position
    n_positions: int  # model input length
    n_predict: int  # trailing positions with a prediction (the model's last layer runs on them)
    # per predicted position, a name for its own metrics; () when the positions are one group
    position_names: tuple[str, ...] = ()
    # the first `shared_prefix` positions take few distinct values across rows, and causal
    # attention makes them depend on nothing else: the model may run them once per distinct
    # prefix (0: no such prefix)
    shared_prefix: int = 0
    # accuracy counts a row as right only when every predicted position is (an answer of
    # several digits); otherwise each predicted position counts on its own (tokens)
    exact_match: bool = True
    # the positions of the operands, for a model that reads them alone (the MLP of
    # architecture: mlp), and how many tokens an operand may be (ids 0 .. operand_vocab - 1);
    # () and 0 where the task has no fixed operands (the MLP refuses such a task)
    operands: tuple[int, ...] = ()
    operand_vocab: int = 0


@dataclass(frozen=True)
class Split:
    """Token rows and their targets, on one device."""

    x: torch.Tensor  # (N, seq_len) token ids
    y: torch.Tensor  # (N, n_predict) target classes, IGNORE where nothing is predicted

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))

    def rows(self, index: torch.Tensor) -> Split:
        return Split(self.x[index], self.y[index])


class Task(ABC):
    """One task with its settings resolved: data for one run."""

    name: ClassVar[str]
    # the task's own settings, with their validation and descriptions: TrainConfig inherits
    # them (grok_tune/config.py)
    Settings: ClassVar[type[BaseModel]]
    # their names: the TrainConfig fields this task reads (others of other tasks are refused,
    # or left blank in the records)
    settings: ClassVar[tuple[str, ...]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Settings" in cls.__dict__:
            cls.settings = tuple(cls.Settings.model_fields)

    # the outcome rule the task's runs are read by (grok_tune/regions.py: "accuracy", read by
    # the data regime, or "induction")
    outcome: ClassVar[str] = "accuracy"
    # the names of the measures ``measures`` may record (grok_tune/metrics.py): columns of
    # trials.parquet and curves.parquet, TensorBoard scalars
    MEASURES: ClassVar[tuple[str, ...]] = ()
    # whether every row holds two operands at fixed positions (``Layout.operands``): what the
    # MLP of architecture mlp reads
    fixed_operands: ClassVar[bool] = False
    # whether the data prints as a table (``print_table``): ``python -m grok_tune.data``'s default
    prints_table: ClassVar[bool] = False

    @classmethod
    def baseline_loss(cls, settings: Any) -> float:
        """The loss of a model that knows only the targets' frequencies (the induction rule's
        yardstick); ``settings``: a trial's row or config."""
        raise NotImplementedError(f"task {cls.name} has no baseline loss")

    @classmethod
    @abstractmethod
    def training_examples(cls, cfg: TrainConfig) -> int:
        """The size of the finite training set, without building the data (torch-free)."""

    @classmethod
    def describe(cls, settings: Any) -> str:
        """The task of a trial's row (or config) in words, for summaries."""
        return cls.name

    @classmethod
    @abstractmethod
    def csv_rows(cls, cfg: TrainConfig, stream_rows: int) -> Iterable[str]:
        """The task's data as CSV lines, header first (``python -m grok_tune.data``); infinite
        data: the first ``stream_rows`` rows of the stream."""

    @classmethod
    def print_table(cls, cfg: TrainConfig) -> None:
        """The data as a table on standard output, where the task has one."""
        raise ValueError(f"only operation tables print as a table (task {cls.name})")

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    @classmethod
    @abstractmethod
    def check(cls, cfg: TrainConfig) -> None:
        """Raise ValueError unless the settings make a task that can run (torch-free)."""

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Values of this task's settings where the study left them unset (None)."""
        return {}

    @property
    @abstractmethod
    def layout(self) -> Layout: ...

    @property
    @abstractmethod
    def validation(self) -> Split:
        """A fixed, seeded validation split, disjoint from the training data."""

    @property
    @abstractmethod
    def training(self) -> Split:
        """Finite data: the training split. Infinite data: a fixed probe drawn from the training
        stream, on which train loss and accuracy are measured."""

    @property
    def infinite(self) -> bool:
        return False

    def stream(self, counter: int, batch_size: int) -> tuple[Split, int]:
        """Infinite data: a fresh batch from the training stream at ``counter``, and the next
        counter (the stream's whole state)."""
        raise NotImplementedError(f"task {self.name} has finite training data")

    def measures(self, model: nn.Module) -> dict[str, float | None]:
        """Task-specific progress measures of the model (named in ``MEASURES``), logged every
        evaluation."""
        return {}


def _size(settings: Any) -> str:
    """A generated task's train_size in words: a number, or infinite (stored as inf in Parquet)."""
    size = settings.get("train_size")
    if size == INFINITE or size == float("inf"):
        return INFINITE
    return f"{size:.4g}" if isinstance(size, float) else str(size)


class GeneratedSettings(BaseModel):
    """The data regime of a task whose examples are generated."""

    train_size: Size | None = Field(
        None,
        description="training examples, or 'infinite' (a fresh batch every step); "
        "unset: the task's default (addition 750, repeated_subsequence 512)",
    )
    val_size: int = Field(1000, ge=1, description="validation examples (fresh, fixed, seeded)")


class GeneratedTask(Task):
    """A task whose examples are generated (addition, repeated subsequences): a fixed
    validation set, and a finite training set or an infinite stream, from a data object with
    ``validation``, ``training``, ``batch(counter, size)`` and ``train_size`` (None: infinite).
    A subclass says how to build that object (``make_data``) and how examples become a Split."""

    DEFAULT_TRAIN_SIZE: ClassVar[int]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"train_size": cls.DEFAULT_TRAIN_SIZE}

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        cls.make_data(cfg)  # validates the settings without generating anything

    @classmethod
    def training_examples(cls, cfg: TrainConfig) -> int:
        return int(cfg.train_size)  # its default filled in

    @classmethod
    def data_settings(cls, cfg: TrainConfig) -> dict[str, Any]:
        """The task's settings as its data's keywords (the same names): train_size None for
        infinite data, and the seed."""
        out = {name: getattr(cfg, name) for name in cls.settings} | {"seed": cfg.seed}
        return out | {"train_size": None if cfg.train_size == INFINITE else cfg.train_size}

    @classmethod
    @abstractmethod
    def make_data(cls, cfg: TrainConfig) -> Any: ...

    @abstractmethod
    def to_split(self, examples: Any) -> Split: ...

    @cached_property
    def data(self) -> Any:
        return self.make_data(self.cfg)

    @property
    def infinite(self) -> bool:
        return self.data.train_size is None

    @cached_property
    def validation(self) -> Split:
        return self.to_split(self.data.validation)

    @cached_property
    def training(self) -> Split:
        if self.infinite:  # a fixed probe: the stream's first val_size examples
            return self.to_split(self.data.batch(0, self.cfg.val_size)[0])
        return self.to_split(self.data.training)

    def stream(self, counter: int, batch_size: int) -> tuple[Split, int]:
        examples, counter = self.data.batch(counter, batch_size)
        return self.to_split(examples), counter


def _registry() -> dict[str, type[Task]]:
    from grok_tune.tasks.addition import AdditionTask
    from grok_tune.tasks.repeated_subsequence import RepeatedSubsequenceTask
    from grok_tune.tasks.tables import TableTask

    return {t.name: t for t in (TableTask, AdditionTask, RepeatedSubsequenceTask)}


# derived, so that registering a task is the one step (the modules above are all defined by now)
TASK_NAMES = tuple(_registry())


def task_class(name: str) -> type[Task]:
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown task {name!r}; allowed: {', '.join(registry)}")
    return registry[name]


def make_task(cfg: TrainConfig) -> Task:
    return task_class(cfg.task)(cfg)


# every task's settings, in registry order (TrainConfig inherits them)
TASK_SETTINGS_MODELS: tuple[type[BaseModel], ...] = tuple(
    task.Settings for task in _registry().values()
)
# the measures any task may record, in registry order
TASK_MEASURES: tuple[str, ...] = tuple(
    dict.fromkeys(name for task in _registry().values() for name in task.MEASURES)
)


def task_settings() -> dict[str, tuple[str, ...]]:
    """Every task's own settings, by task."""
    return {name: cls.settings for name, cls in _registry().items()}
