"""Nanda's n-digit addition: the data (pure numpy; the Task wrapper turns it into tensors).

An example is a pair ``(a, b)``, both uniform in ``[0, 10^n)``. Its tokens: the n digits of
``a`` (most significant first, zero-padded), ``+``, the n digits of ``b``, ``=``, then the
n + 1 digits of ``a + b``, carry first: ``3n + 3`` tokens (18 for n = 5). Digits are tokens
0-9, ``+`` is 10 and ``=`` is 11.

Data regimes (``AdditionData``), all drawn from counter-based streams (``streams.py``), so the
same examples come out on every machine and numpy version:

- validation: ``val_size`` distinct pairs, the first distinct ones of the seed's "val" stream
  (it depends on nothing else: a smaller ``val_size`` gives a prefix of a larger one);
- the training stream: uniform pairs from the seed's "train" stream, those in validation
  skipped, so ``batch(counter, batch_size)`` is a fresh batch every step with the counter its
  whole state. It is uniform over the pairs outside validation and may repeat a pair, which
  for small n (10^(2n) pairs) happens often;
- a finite training set: the first ``train_size`` distinct pairs of that stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import Field

from grok_tune.tasks import GeneratedSettings, GeneratedTask, Layout, Split, _size
from grok_tune.tasks.streams import I64, U64, check_size, draw, uniform_ints_at

if TYPE_CHECKING:
    from grok_tune.config import TrainConfig

PLUS = 10
EQUALS = 11
VOCAB_SIZE = 12
MAX_DIGITS = 9  # 10^(2n) pair indices must fit in int64


def check_digits(digits: int) -> None:
    if not isinstance(digits, int) or not 1 <= digits <= MAX_DIGITS:
        raise ValueError(f"digits = {digits!r}: must be an integer in [1, {MAX_DIGITS}]")


def sequence_length(digits: int) -> int:
    return 3 * digits + 3


def answer_slice(digits: int) -> slice:
    """Where the n + 1 answer digits sit in a token row."""
    return slice(2 * digits + 2, 3 * digits + 3)


def _digit_columns(x: I64, width: int) -> I64:
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return x[:, None] // powers % 10


def _encode(a: I64, b: I64, digits: int) -> I64:
    out = np.empty((a.size, sequence_length(digits)), dtype=np.int64)
    out[:, :digits] = _digit_columns(a, digits)
    out[:, digits] = PLUS
    out[:, digits + 1 : 2 * digits + 1] = _digit_columns(b, digits)
    out[:, 2 * digits + 1] = EQUALS
    out[:, answer_slice(digits)] = _digit_columns(a + b, digits + 1)
    return out


def _operands(a: ArrayLike, b: ArrayLike, digits: int) -> tuple[I64, I64]:
    check_digits(digits)
    a_, b_ = (np.asarray(v, dtype=np.int64).reshape(-1) for v in (a, b))
    if a_.shape != b_.shape:
        raise ValueError(f"a and b differ in length: {a_.size} and {b_.size}")
    for name, v in (("a", a_), ("b", b_)):
        if v.size and (v.min() < 0 or v.max() >= 10**digits):
            raise ValueError(f"{name} must lie in [0, 10^{digits}), got {v.min()} .. {v.max()}")
    return a_, b_


def encode(a: ArrayLike, b: ArrayLike, digits: int) -> I64:
    """Token rows ``(N, 3n + 3)`` of the pairs ``(a[i], b[i])``."""
    a_, b_ = _operands(a, b, digits)
    return _encode(a_, b_, digits)


def answer_digits(a: ArrayLike, b: ArrayLike, digits: int) -> I64:
    """The n + 1 digits of ``a + b``, carry first: the targets, ``(N, n + 1)``."""
    a_, b_ = _operands(a, b, digits)
    return _digit_columns(a_ + b_, digits + 1)


def decode(tokens: ArrayLike, digits: int) -> tuple[I64, I64, I64]:
    """``(a, b, c)`` read back from token rows; ValueError if a row is not a well-formed sum."""
    check_digits(digits)
    t = np.asarray(tokens, dtype=np.int64)
    if t.ndim != 2 or t.shape[1] != sequence_length(digits):
        raise ValueError(f"tokens must be (N, {sequence_length(digits)}), got {t.shape}")
    digit_cols = np.r_[0:digits, digits + 1 : 2 * digits + 1, answer_slice(digits)]
    if t.size and (
        (t[:, digit_cols] > 9).any()
        or (t < 0).any()
        or (t[:, digits] != PLUS).any()
        or (t[:, 2 * digits + 1] != EQUALS).any()
    ):
        raise ValueError("tokens are not rows of digits, '+', digits, '=', digits")

    def number(cols: slice) -> I64:
        part = t[:, cols]
        return part @ (10 ** np.arange(part.shape[1] - 1, -1, -1, dtype=np.int64))

    return (
        number(slice(0, digits)),
        number(slice(digits + 1, 2 * digits + 1)),
        number(answer_slice(digits)),
    )


@dataclass(frozen=True)
class Examples:
    """Addition examples: operands and their token rows."""

    a: I64  # (N,)
    b: I64  # (N,)
    tokens: I64  # (N, 3n + 3)
    digits: int

    def __len__(self) -> int:
        return self.a.size

    @property
    def c(self) -> I64:
        return self.a + self.b

    @property
    def targets(self) -> I64:
        """The answer digits, ``(N, n + 1)``: the tokens the loss is taken on."""
        return self.tokens[:, answer_slice(self.digits)]

    def keys(self) -> U64:
        """The pair's index ``a * 10^n + b``: equal pairs, equal keys, and no collisions."""
        return (self.a * 10**self.digits + self.b).astype(np.uint64)

    def take(self, index: NDArray[np.intp]) -> Examples:
        return Examples(self.a[index], self.b[index], self.tokens[index], self.digits)


def _generator(seed: int, source: str, digits: int) -> Callable[[U64], Examples]:
    stream = f"addition/{source}"
    base = 10**digits

    def generate(counters: U64) -> Examples:
        # one draw per example: the pair's index, uniform over all 10^(2n) pairs
        a, b = np.divmod(uniform_ints_at(seed, stream, counters, base * base), base)
        return Examples(a, b, _encode(a, b, digits), digits)

    return generate


@dataclass(frozen=True, kw_only=True)
class AdditionData:
    """The data of one addition trial: validation set, and a finite set or an infinite stream.

    ``train_size=None`` is the infinite regime (Nanda: a fresh batch of 64 every step); an int is
    the finite one (Nanda: 750 examples, full batch).
    """

    digits: int = 5
    train_size: int | None
    val_size: int
    seed: int = 0

    def __post_init__(self) -> None:
        check_digits(self.digits)
        check_size("train_size", self.train_size, optional=True)
        check_size("val_size", self.val_size)
        pairs = self.num_pairs
        if self.train_size is not None and self.train_size + self.val_size > pairs:
            raise ValueError(
                f"train_size + val_size = {self.train_size} + {self.val_size} exceeds the "
                f"{pairs} distinct pairs of {self.digits}-digit numbers"
            )
        if self.train_size is None and self.val_size >= pairs:
            raise ValueError(
                f"val_size = {self.val_size} leaves none of the {pairs} distinct pairs of "
                f"{self.digits}-digit numbers for the training stream: at most {pairs - 1}"
            )

    @property
    def num_pairs(self) -> int:
        return 10 ** (2 * self.digits)

    @cached_property
    def validation(self) -> Examples:
        gen = _generator(self.seed, "val", self.digits)
        empty = np.empty(0, dtype=np.uint64)
        return draw(gen, 0, self.val_size, exclude=empty, distinct=True)[0]

    @cached_property
    def _val_keys(self) -> U64:
        return np.sort(self.validation.keys())

    @cached_property
    def training(self) -> Examples:
        """The finite training set: the first ``train_size`` distinct pairs of the stream."""
        if self.train_size is None:
            raise ValueError(
                "train_size = None: the infinite regime has no training set; use batch"
            )
        gen = _generator(self.seed, "train", self.digits)
        return draw(gen, 0, self.train_size, exclude=self._val_keys, distinct=True)[0]

    def batch(self, counter: int, batch_size: int) -> tuple[Examples, int]:
        """The infinite stream: ``batch_size`` pairs from ``counter`` on, none in validation, and
        the counter to pass next time (the stream's whole state)."""
        if self.train_size is not None:
            raise ValueError(
                f"train_size = {self.train_size}: batch is the infinite stream; "
                "sample from training instead"
            )
        check_size("batch_size", batch_size)
        gen = _generator(self.seed, "train", self.digits)
        return draw(gen, counter, batch_size, exclude=self._val_keys, distinct=False)


def csv_rows(
    *, digits: int, train_size: int | None, val_size: int, seed: int, stream_rows: int = 1000
) -> Iterator[str]:
    """Lines of CSV ``a,b,c,split`` (header first): the training set, or with
    ``train_size=None`` the first ``stream_rows`` examples of the stream, then validation."""
    data = AdditionData(digits=digits, train_size=train_size, val_size=val_size, seed=seed)
    check_size("stream_rows", stream_rows)
    train = data.training if train_size is not None else data.batch(0, stream_rows)[0]
    yield "a,b,c,split"
    for split, ex in (("train", train), ("val", data.validation)):
        for a, b, c in zip(ex.a.tolist(), ex.b.tolist(), ex.c.tolist(), strict=True):
            yield f"{a},{b},{c},{split}"


# --- the task -------------------------------------------------------------------------------
class AdditionSettings(GeneratedSettings):
    digits: int = Field(5, ge=1, le=9, description="digits of each operand")


class AdditionTask(GeneratedTask):
    """``task: addition``: ``a + b =`` and the n + 1 answer digits, all predicted at once.

    The model reads the sequence up to the last answer digit (teacher forcing: answer digit k is
    predicted from '=' and the digits before it), so the last n + 1 positions each predict one
    answer digit. Their metrics go by ``digit0`` (the carry, the most significant) to ``digitN``
    (the units). Accuracy counts an example right when all its digits are.
    """

    name = "addition"
    Settings = AdditionSettings

    @classmethod
    def describe(cls, settings: Any) -> str:
        return f"{settings.get('digits')}-digit addition, train_size {_size(settings)}"

    @classmethod
    def csv_rows(cls, cfg: TrainConfig, stream_rows: int) -> Iterator[str]:
        return csv_rows(**cls.data_settings(cfg), stream_rows=stream_rows)

    DEFAULT_TRAIN_SIZE = 750  # Nanda's finite regime

    @classmethod
    def make_data(cls, cfg: TrainConfig) -> AdditionData:
        return AdditionData(**cls.data_settings(cfg))

    @cached_property
    def layout(self) -> Layout:
        n = self.cfg.digits
        return Layout(
            vocab_size=VOCAB_SIZE,
            num_classes=10,
            n_positions=sequence_length(n) - 1,
            n_predict=n + 1,
            position_names=tuple(f"digit{k}" for k in range(n + 1)),
        )

    def to_split(self, examples: Examples) -> Split:
        import torch

        tokens = torch.from_numpy(examples.tokens)
        return Split(tokens[:, :-1].contiguous(), torch.from_numpy(examples.targets).clone())
