"""Counter-based random numbers, and seeded example sources built on them (pure numpy).

Value ``i`` of stream ``s`` for seed ``k`` is output ``i`` of SplitMix64 (Steele, Lea and Flood
2014) started from a 64-bit key that BLAKE2b hashes from ``(k, s)``:
``mix(key + (i + 1) * 0x9E3779B97F4A7C15)``. numpy's uint64 arithmetic wraps modulo 2^64 on
every platform, so the values are the same on every machine and numpy version (numpy's
``Generator`` streams carry no such promise), value ``i`` costs the same as value 0, and a
stream's whole state is the integer counter ``i``: an infinite data stream is checkpointed by
saving one int.

Streams with different keys walk the same Weyl sequence from different points; two of length
``n`` overlap with probability about ``2n / 2^64``, negligible for any data set here.

``draw`` turns a generator of candidate examples (a function of their counters) into a data
regime: the first ``count`` candidates not in an excluded set (validation) and, for a finite
set, not equal to an earlier one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol, Self, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

GAMMA = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment: 2^64 / golden ratio, odd
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_U64_MAX = np.uint64(2**64 - 1)
MAX_HIGH = 2**63

U64 = NDArray[np.uint64]
I64 = NDArray[np.int64]


def stream_key(seed: int, stream: str) -> int:
    """The 64-bit key of stream ``stream`` for ``seed``: a hashlib digest, never Python's hash(),
    which is salted per process."""
    digest = hashlib.blake2b(f"{int(seed)}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def mix64(z: ArrayLike) -> U64:
    """SplitMix64's output function (Stafford's variant 13): a bijection of uint64."""
    z = np.array(z, dtype=np.uint64)  # a copy: mixed in place below
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def _counters(counters: ArrayLike) -> U64:
    c = np.asarray(counters)
    if c.dtype.kind not in "iu":
        raise TypeError(f"counters must be integers, not {c.dtype}")
    if c.dtype.kind == "i" and c.size and c.min() < 0:
        raise ValueError(f"counters must be >= 0, got {c.min()}")
    return c.astype(np.uint64)


def random_u64(seed: int, stream: str, counters: ArrayLike) -> U64:
    """Values number ``counters`` (any shape) of the stream: uniform over uint64."""
    c = _counters(counters)
    with np.errstate(over="ignore"):
        z = (c + np.uint64(1)) * GAMMA + np.uint64(stream_key(seed, stream))
    return mix64(z)


def uniform_ints_at(seed: int, stream: str, counters: ArrayLike, high: ArrayLike) -> I64:
    """Values number ``counters`` of the stream as int64, uniform in ``[0, high)`` exactly.

    ``high`` (1 .. 2^63) broadcasts against ``counters``. A raw value among the top
    ``2^64 mod high`` would favour small residues, so it is redrawn from stream ``s#1`` (then
    ``s#2`` ...) at the same counter: the result is still a fixed function of (seed, stream,
    counter), and with ``high`` below 2^32 a redraw happens about once in 4 billion values.
    """
    c = _counters(counters)
    h = np.asarray(high)
    if h.dtype.kind not in "iu":
        raise TypeError(f"high must be an integer, not {h.dtype}")
    if h.size and (h.min() < 1 or h.max() > MAX_HIGH):
        raise ValueError(f"high must lie in [1, 2^63], got {h.min()} .. {h.max()}")
    shape = np.broadcast_shapes(c.shape, h.shape)
    c = np.broadcast_to(c, shape).reshape(-1)
    h = np.broadcast_to(h.astype(np.uint64), shape).reshape(-1)
    with np.errstate(over="ignore"):
        accept_max = _U64_MAX - (np.uint64(0) - h) % h  # (2^64 - h) mod h = 2^64 mod h
    x = random_u64(seed, stream, c)
    bad = np.flatnonzero(x > accept_max)
    attempt = 0
    while bad.size:
        attempt += 1
        x[bad] = random_u64(seed, f"{stream}#{attempt}", c[bad])
        bad = bad[x[bad] > accept_max[bad]]
    return (x % h).astype(np.int64).reshape(shape)


def uniform_ints(seed: int, stream: str, start: int, count: int, high: int) -> I64:
    """Values ``start .. start + count - 1`` of the stream, uniform in ``[0, high)``."""
    if start < 0 or count < 0:
        raise ValueError(f"start and count must be >= 0, got {start} and {count}")
    return uniform_ints_at(seed, stream, np.arange(start, start + count, dtype=np.uint64), high)


def uniform_rows(seed: int, stream: str, rows: ArrayLike, cols: int, high: ArrayLike) -> I64:
    """A ``(len(rows), cols)`` array: row ``r``, column ``j`` is value ``r * cols + j``.

    Row ``r`` depends on ``r`` alone, so example number ``r`` of a source can be regenerated
    without the rows before it. ``high`` broadcasts against ``(len(rows), cols)``.
    """
    r = _counters(rows).reshape(-1, 1)
    with np.errstate(over="ignore"):
        counters = r * np.uint64(cols) + np.arange(cols, dtype=np.uint64)
    return uniform_ints_at(seed, stream, counters, high)


def hash_rows(x: ArrayLike) -> U64:
    """A 64-bit hash of each row of a 2-D integer array, the same on every machine.

    Each element is mixed with its column, the results summed (mod 2^64) and mixed again. Equal
    rows always hash equal; two different rows collide with probability about 2^-64.
    """
    v = np.asarray(x)
    if v.ndim != 2 or v.dtype.kind not in "iu":
        raise ValueError(f"hash_rows needs a 2-D integer array, got {v.ndim}-D {v.dtype}")
    with np.errstate(over="ignore"):
        e = mix64(v.astype(np.uint64))
        e += np.arange(1, v.shape[1] + 1, dtype=np.uint64) * GAMMA
        return mix64(mix64(e).sum(axis=1, dtype=np.uint64))


def member(sorted_keys: U64, keys: U64) -> NDArray[np.bool_]:
    """``keys`` found in the sorted array ``sorted_keys``: np.isin without re-sorting."""
    if not sorted_keys.size:
        return np.zeros(keys.shape, dtype=bool)
    i = np.searchsorted(sorted_keys, keys)
    return sorted_keys[np.minimum(i, sorted_keys.size - 1)] == keys


class Candidates(Protocol):
    """Examples generated at a run of counters: what ``draw`` filters."""

    def __len__(self) -> int: ...

    def keys(self) -> U64:
        """One uint64 per example; equal examples have equal keys."""
        ...

    def take(self, index: NDArray[np.intp]) -> Self: ...


C = TypeVar("C", bound=Candidates)


class StreamExhausted(ValueError):
    """``draw`` gave up: the source seems to hold too few acceptable examples."""

    def __init__(self, found: int, wanted: int, draws: int) -> None:
        super().__init__(f"found {found} of {wanted} acceptable examples in {draws} draws")
        self.found, self.wanted, self.draws = found, wanted, draws


_MAX_CHUNK = 1 << 20


def draw(
    generate: Callable[[U64], C],
    start: int,
    count: int,
    *,
    exclude: U64,
    distinct: bool,
    max_draws: int | None = None,
) -> tuple[C, int]:
    """The first ``count`` candidates from counter ``start`` on whose keys are not in ``exclude``
    (sorted) and, with ``distinct``, not equal to an earlier kept one; and the counter after the
    last one taken (the stream's next state).

    Which candidates are kept depends only on their counters, never on how many were drawn at
    once, so a batch is the same however it is computed. Raises StreamExhausted after
    ``max_draws`` candidates (a source whose acceptable examples may run out).
    """
    if count < 1 or start < 0:
        raise ValueError(f"count must be >= 1 and start >= 0, got {count} and {start}")
    kept: list[U64] = []
    n_kept = 0
    seen = np.empty(0, dtype=np.uint64)  # sorted keys kept so far, for `distinct`
    pos = start
    chunk = count
    first: tuple[C, NDArray[np.intp]] | None = None
    while n_kept < count:
        if max_draws is not None and pos - start >= max_draws:
            raise StreamExhausted(n_kept, count, pos - start)
        counters = np.arange(pos, pos + chunk, dtype=np.uint64)
        cand = generate(counters)
        keys = cand.keys()
        ok = ~member(exclude, keys)
        if distinct:
            ok &= ~member(seen, keys)
            # a key's first occurrence in the chunk; later ones repeat it (exclusion is per key,
            # so the first occurrence is also the first acceptable one)
            firsts = np.zeros(len(keys), dtype=bool)
            firsts[np.unique(keys, return_index=True)[1]] = True
            ok &= firsts
        idx = np.flatnonzero(ok)[: count - n_kept]
        if first is None:
            first = (cand, idx)
        kept.append(counters[idx])
        n_kept += idx.size
        if distinct:
            seen = np.sort(np.concatenate([seen, keys[idx]]))
        pos = int(counters[idx[-1]]) + 1 if n_kept == count else pos + chunk
        chunk = min(2 * chunk, max(_MAX_CHUNK, count))  # geometric: few rounds when most fail
    assert first is not None
    if len(kept) == 1:  # the usual case: one chunk was enough, nothing to regenerate
        cand, idx = first
        return (cand if idx.size == len(cand) else cand.take(idx)), pos
    return generate(np.concatenate(kept)), pos


def check_size(name: str, value: int | None, *, optional: bool = False) -> None:
    """A count of examples or rows: a positive integer (None allowed where ``optional``)."""
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} = {value!r}: must be a positive integer")
