"""Nanda's repeated-subsequence task (induction heads): the data, as pure numpy.

A sequence holds ``seq_len`` tokens over ``vocab`` token ids. A random subsequence of ``sub_len``
tokens appears ``repeats`` times at random non-overlapping positions; every other token is
uniform. Nanda's runs: 85 tokens, subsequence 16, 3 repeats, vocabulary 128. The mask marks the
positions whose token the context determines: inside the second and later occurrences, after
their first token ((repeats - 1) * (sub_len - 1) per sequence). A random token may happen to be
predictable too (a coincidental repeat); the mask ignores that.

Placement is uniform over all non-overlapping placements. Shrinking each occurrence to one
token maps placements one-to-one onto ``repeats`` distinct slots out of
``seq_len - repeats * (sub_len - 1)``; Floyd's algorithm picks a uniform set of slots, and the
k-th slot in order s_k starts an occurrence at ``s_k + k * (sub_len - 1)``. (Sorting
``repeats`` independent draws instead, and offsetting the k-th by ``k * sub_len``, would give
placements with touching occurrences less weight than the others.)

Regimes as for addition (``RepeatedSubsequenceData``): a validation set of ``val_size``
distinct sequences from the seed's "val" source; an infinite training stream from the "train"
source with validation sequences skipped (``batch(counter, batch_size)``, the counter its whole
state); or a finite training set, the first ``train_size`` distinct sequences of that stream.
Sequences are compared whole, by a 64-bit hash of their tokens: two different sequences
sharing a hash (probability about 2^-64 a pair) would only cost one of them its place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from math import comb
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from grok_tune.tasks import (
    IGNORE,
    GeneratedSettings,
    GeneratedTask,
    Layout,
    Split,
    _size,
)
from grok_tune.tasks.streams import (
    I64,
    U64,
    StreamExhausted,
    check_size,
    draw,
    hash_rows,
    uniform_rows,
)

if TYPE_CHECKING:
    from grok_tune.config import TrainConfig

# Far more draws than any feasible request needs; only reached when the settings allow fewer
# distinct sequences than asked for (a bound below catches most such cases up front).
_DRAWS_PER_EXAMPLE = 1000
_MIN_DRAWS = 100_000


@dataclass(frozen=True)
class Examples:
    """Sequences with the repeated subsequence, and where it sits."""

    tokens: I64  # (N, seq_len)
    mask: NDArray[np.bool_]  # (N, seq_len): True where the token is predictable from context
    starts: I64  # (N, repeats): first position of each occurrence, ascending

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def keys(self) -> U64:
        return hash_rows(self.tokens)

    def take(self, index: NDArray[np.intp]) -> Examples:
        return Examples(self.tokens[index], self.mask[index], self.starts[index])


def check_settings(seq_len: int, sub_len: int, repeats: int, vocab: int) -> None:
    """ValueError naming the first setting out of range."""
    for name, value, low in (
        ("seq_len", seq_len, 1),
        ("sub_len", sub_len, 2),
        ("repeats", repeats, 2),
        ("vocab", vocab, 2),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} = {value!r}: must be an integer >= {low}")
    if repeats * sub_len > seq_len:
        raise ValueError(
            f"repeats * sub_len = {repeats} * {sub_len} = {repeats * sub_len} exceeds "
            f"seq_len = {seq_len}: the occurrences cannot fit without overlapping"
        )
    if vocab > 2**63:
        raise ValueError(f"vocab = {vocab}: must be at most 2^63")


def num_placements(seq_len: int, sub_len: int, repeats: int) -> int:
    return comb(seq_len - repeats * (sub_len - 1), repeats)


def max_distinct(seq_len: int, sub_len: int, repeats: int, vocab: int) -> int:
    """An upper bound on the number of distinct sequences: a placement and its free tokens fix
    one (several placements can give the same sequence, so fewer may exist)."""
    free = seq_len - (repeats - 1) * sub_len
    return vocab**free * num_placements(seq_len, sub_len, repeats)


def placements(u: I64, seq_len: int, sub_len: int) -> I64:
    """Occurrence starts ``(N, repeats)`` from draws ``u[:, k]`` uniform in ``[0, M - r + k]``
    (``M = seq_len - r * (sub_len - 1)`` slots): uniform over non-overlapping placements."""
    n, r = u.shape
    m = seq_len - r * (sub_len - 1)
    chosen = np.empty((n, r), dtype=np.int64)
    for k in range(r):  # Floyd: a slot already taken is replaced by the newly admitted one, j
        j = m - r + k
        taken = (chosen[:, :k] == u[:, k : k + 1]).any(axis=1)
        chosen[:, k] = np.where(taken, j, u[:, k])
    chosen.sort(axis=1)
    return chosen + np.arange(r, dtype=np.int64) * (sub_len - 1)


def _generator(
    seed: int, source: str, seq_len: int, sub_len: int, repeats: int, vocab: int
) -> Callable[[U64], Examples]:
    stream = f"repeated_subsequence/{source}"
    m = seq_len - repeats * (sub_len - 1)
    floyd_high = np.arange(m - repeats + 1, m + 1, dtype=np.int64)
    offsets = np.arange(sub_len, dtype=np.int64)

    def generate(counters: U64) -> Examples:
        tokens = uniform_rows(seed, f"{stream}/tokens", counters, seq_len, vocab)
        sub = uniform_rows(seed, f"{stream}/subsequence", counters, sub_len, vocab)
        u = uniform_rows(seed, f"{stream}/placement", counters, repeats, floyd_high)
        starts = placements(u, seq_len, sub_len)
        pos = starts[:, :, None] + offsets  # (N, repeats, sub_len)
        row = np.arange(len(counters))[:, None, None]
        tokens[row, pos] = sub[:, None, :]
        mask = np.zeros(tokens.shape, dtype=bool)
        mask[row, pos[:, 1:, 1:]] = True
        return Examples(tokens, mask, starts)

    return generate


@dataclass(frozen=True, kw_only=True)
class RepeatedSubsequenceData:
    """The data of one trial: validation set, and a finite set or an infinite stream.

    ``train_size=None`` is the infinite regime (Nanda: phase change by ~6k steps, no grokking);
    an int the finite one (Nanda: 512 sequences, grokking).
    """

    seq_len: int = 85
    sub_len: int = 16
    repeats: int = 3
    vocab: int = 128
    train_size: int | None
    val_size: int
    seed: int = 0

    def __post_init__(self) -> None:
        check_settings(self.seq_len, self.sub_len, self.repeats, self.vocab)
        check_size("train_size", self.train_size, optional=True)
        check_size("val_size", self.val_size)
        bound = max_distinct(self.seq_len, self.sub_len, self.repeats, self.vocab)
        if self.train_size is not None and self.train_size + self.val_size > bound:
            raise ValueError(
                f"train_size + val_size = {self.train_size} + {self.val_size} exceeds the "
                f"{bound} distinct sequences these settings allow at most"
            )
        if self.train_size is None and self.val_size >= bound:
            raise ValueError(
                f"val_size = {self.val_size} leaves none of the at most {bound} distinct "
                f"sequences these settings allow for the training stream: at most {bound - 1}"
            )

    def _generator(self, source: str) -> Callable[[U64], Examples]:
        return _generator(self.seed, source, self.seq_len, self.sub_len, self.repeats, self.vocab)

    def _draw(self, source: str, start: int, count: int, *, distinct: bool) -> tuple[Examples, int]:
        exclude = np.empty(0, dtype=np.uint64) if source == "val" else self._val_keys
        try:
            return draw(
                self._generator(source),
                start,
                count,
                exclude=exclude,
                distinct=distinct,
                max_draws=max(_MIN_DRAWS, _DRAWS_PER_EXAMPLE * count),
            )
        except StreamExhausted as err:
            raise ValueError(
                f"{err}: these settings (seq_len {self.seq_len}, sub_len {self.sub_len}, "
                f"repeats {self.repeats}, vocab {self.vocab}) allow too few distinct sequences "
                f"for train_size = {self.train_size} and val_size = {self.val_size}"
            ) from None

    @cached_property
    def validation(self) -> Examples:
        return self._draw("val", 0, self.val_size, distinct=True)[0]

    @cached_property
    def _val_keys(self) -> U64:
        return np.sort(self.validation.keys())

    @cached_property
    def training(self) -> Examples:
        """The finite training set: the first ``train_size`` distinct sequences of the stream."""
        if self.train_size is None:
            raise ValueError(
                "train_size = None: the infinite regime has no training set; use batch"
            )
        return self._draw("train", 0, self.train_size, distinct=True)[0]

    def batch(self, counter: int, batch_size: int) -> tuple[Examples, int]:
        """The infinite stream: ``batch_size`` sequences from ``counter`` on, none in validation,
        and the counter to pass next time (the stream's whole state)."""
        if self.train_size is not None:
            raise ValueError(
                f"train_size = {self.train_size}: batch is the infinite stream; "
                "sample from training instead"
            )
        check_size("batch_size", batch_size)
        return self._draw("train", counter, batch_size, distinct=False)


def csv_rows(
    *,
    seq_len: int = 85,
    sub_len: int = 16,
    repeats: int = 3,
    vocab: int = 128,
    train_size: int | None,
    val_size: int,
    seed: int,
    stream_rows: int = 1000,
) -> Iterator[str]:
    """Lines of CSV ``sequence,split`` (header first; tokens separated by spaces): the training
    set, or with ``train_size=None`` the first ``stream_rows`` of the stream, then validation."""
    data = RepeatedSubsequenceData(
        seq_len=seq_len,
        sub_len=sub_len,
        repeats=repeats,
        vocab=vocab,
        train_size=train_size,
        val_size=val_size,
        seed=seed,
    )
    check_size("stream_rows", stream_rows)
    train = data.training if train_size is not None else data.batch(0, stream_rows)[0]
    yield "sequence,split"
    for split, ex in (("train", train), ("val", data.validation)):
        for row in ex.tokens.tolist():
            yield f"{' '.join(map(str, row))},{split}"


# --- the task -------------------------------------------------------------------------------
class RepeatedSubsequenceSettings(GeneratedSettings):
    seq_len: int = Field(85, ge=3, le=4096, description="tokens per sequence")
    vocab: int = Field(128, ge=2, le=65536, description="token ids of a sequence")
    sub_len: int = Field(16, ge=2, description="length of the repeated subsequence")
    repeats: int = Field(3, ge=2, description="occurrences of the subsequence")


class RepeatedSubsequenceTask(GeneratedTask):
    """``task: repeated_subsequence``: next-token prediction over whole sequences, the loss and
    accuracy counted only where the context determines the token (see the mask above): the
    token accuracy an induction head raises from chance to 1."""

    name = "repeated_subsequence"
    Settings = RepeatedSubsequenceSettings
    DEFAULT_TRAIN_SIZE = 512  # Nanda's finite regime
    # what a run learned is whether induction heads formed (grok_tune/regions.py), not whether
    # token accuracy reached 0.99: a repeat's token after a collision stays ambiguous
    outcome = "induction"

    @classmethod
    def describe(cls, settings: Any) -> str:
        return f"repeated subsequence, train_size {_size(settings)}"

    @classmethod
    def csv_rows(cls, cfg: TrainConfig, stream_rows: int) -> Iterator[str]:
        return csv_rows(**cls.data_settings(cfg), stream_rows=stream_rows)

    @classmethod
    def baseline_loss(cls, settings: Any) -> float:
        """ln(vocab): the tokens are uniform, so knowing their frequencies is knowing nothing."""
        import math

        return math.log(float(settings["vocab"]))

    @classmethod
    def make_data(cls, cfg: TrainConfig) -> RepeatedSubsequenceData:
        return RepeatedSubsequenceData(**cls.data_settings(cfg))

    @cached_property
    def layout(self) -> Layout:
        n = self.cfg.seq_len - 1  # every position predicts the next token
        return Layout(
            vocab_size=self.cfg.vocab, num_classes=self.cfg.vocab, n_positions=n, n_predict=n,
            exact_match=False,
        )  # fmt: skip

    def to_split(self, examples: Examples) -> Split:
        import torch

        tokens = torch.from_numpy(examples.tokens)
        mask = torch.from_numpy(examples.mask[:, 1:])
        y = torch.where(mask, tokens[:, 1:], torch.full_like(tokens[:, 1:], IGNORE))
        return Split(tokens[:, :-1].contiguous(), y)
