"""Data of the generated tasks: counter-based streams, n-digit addition, repeated subsequences."""

import itertools
import time

import numpy as np
import pytest

from grok_tune.tasks import addition as add
from grok_tune.tasks import repeated_subsequence as rs
from grok_tune.tasks import streams


def _splitmix64(state: int, n: int) -> list[int]:
    """SplitMix64 in plain Python integers: the reference the numpy version must match."""
    out = []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) % 2**64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
        out.append(z ^ (z >> 31))
    return out


def _fastest_ms(fn, repeats: int = 20) -> float:
    fn()  # first call: caches (validation set) and imports
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def _rows(x: np.ndarray) -> set[tuple[int, ...]]:
    return set(map(tuple, x.tolist()))


# ---------------------------------------------------------------- streams


def test_splitmix64_published_values():
    # Vigna's splitmix64.c seeded with 1234567 (the usual published test vector)
    assert _splitmix64(1234567, 3) == [
        6457827717110365317,
        3203168211198807973,
        9817491932198370423,
    ]
    z = (np.arange(3, dtype=np.uint64) + np.uint64(1)) * streams.GAMMA + np.uint64(1234567)
    assert streams.mix64(z).tolist() == _splitmix64(1234567, 3)


def test_stream_is_splitmix64_from_a_hashed_key():
    key = streams.stream_key(7, "train")
    assert streams.random_u64(7, "train", np.arange(50)).tolist() == _splitmix64(key, 50)


def test_stream_golden_values():
    # any change of the generator, the key hash or the range reduction changes these
    assert streams.stream_key(0, "train") == 17582477718607430748
    assert streams.random_u64(0, "golden", [0, 1]).tolist() == [
        10191245552740622642,
        1428999678456232301,
    ]
    assert streams.uniform_ints(0, "golden", 0, 6, 1000).tolist() == [642, 301, 137, 129, 272, 823]


def test_stream_determinism_and_independence():
    a = streams.uniform_ints(3, "train", 0, 1000, 10**6)
    assert np.array_equal(a, streams.uniform_ints(3, "train", 0, 1000, 10**6))
    assert a.dtype == np.int64
    assert not np.array_equal(a, streams.uniform_ints(4, "train", 0, 1000, 10**6))
    assert not np.array_equal(a, streams.uniform_ints(3, "val", 0, 1000, 10**6))


@pytest.mark.parametrize(("i", "j"), [(0, 1), (5, 17), (999, 1000), (123, 1000)])
def test_stream_skip_ahead(i, j):
    full = streams.uniform_ints(1, "s", 0, j, 97)
    assert np.array_equal(streams.uniform_ints(1, "s", i, j - i, 97), full[i:j])
    assert np.array_equal(
        streams.uniform_ints_at(1, "s", np.arange(i, j)[::-1], 97), full[i:j][::-1]
    )


def test_uniform_rows_depend_on_their_row_alone():
    full = streams.uniform_rows(2, "r", np.arange(10), 7, 50)
    assert full.shape == (10, 7)
    assert np.array_equal(full.reshape(-1), streams.uniform_ints(2, "r", 0, 70, 50))
    assert np.array_equal(streams.uniform_rows(2, "r", [8, 3], 7, 50), full[[8, 3]])
    per_column = streams.uniform_rows(2, "r", np.arange(2000), 3, np.array([1, 2, 5]))
    assert (per_column[:, 0] == 0).all()
    assert set(per_column[:, 1].tolist()) == {0, 1}
    assert set(per_column[:, 2].tolist()) == set(range(5))


def test_uniform_ints_is_exactly_uniform_for_large_high():
    # high = 3 * 2^61: 2^64 mod high = 2^62, so plain modulo would give [0, 2^62) three raw
    # values each and the rest two (mass 3/4 instead of 2/3); a quarter of raw values are redrawn
    high = 3 * 2**61
    x = streams.uniform_ints(0, "big", 0, 40_000, high)
    assert x.min() >= 0 and x.max() < high
    assert abs((x < 2**62).mean() - 2 / 3) < 0.015  # sd 0.0024
    # the redraw is itself a fixed function of the counter
    assert np.array_equal(x[100:200], streams.uniform_ints(0, "big", 100, 100, high))


def test_uniform_ints_limits():
    assert (streams.uniform_ints(0, "one", 0, 10, 1) == 0).all()
    assert streams.uniform_ints(0, "max", 0, 10, 2**63).min() >= 0
    with pytest.raises(ValueError, match="high"):
        streams.uniform_ints(0, "s", 0, 10, 0)
    with pytest.raises(ValueError, match="high"):
        streams.uniform_ints(0, "s", 0, 10, 2**63 + 1)
    with pytest.raises(ValueError, match="counters"):
        streams.uniform_ints_at(0, "s", [-1], 10)


def test_hash_rows():
    x = np.array([[1, 2, 3], [3, 2, 1], [1, 2, 3], [0, 0, 0], [0, 0, 1]])
    h = streams.hash_rows(x)
    assert h[0] == h[2]
    assert len(set(h.tolist())) == 4
    assert streams.hash_rows(np.array([[1, 2, 3], [3, 2, 1]])).tolist() == [
        4863308823566477807,
        16319784209477603929,
    ]


# ---------------------------------------------------------------- addition


def test_addition_golden_values():
    d = add.AdditionData(train_size=None, val_size=100, seed=0)
    assert d.validation.a[:4].tolist() == [39342, 7166, 15425, 90719]
    assert d.validation.b[:4].tolist() == [98312, 6387, 93746, 53838]
    batch, _ = d.batch(0, 4)
    assert batch.a.tolist() == [61389, 15387, 40823, 68962]
    assert batch.b.tolist() == [71076, 11795, 33509, 22547]
    # the finite training set is the stream's first distinct pairs outside validation
    finite = add.AdditionData(train_size=750, val_size=100, seed=0).training
    assert finite.a[:4].tolist() == batch.a.tolist()


def test_addition_encoding_layout():
    tokens = add.encode([12345], [67890], 5)
    assert tokens.tolist() == [[1, 2, 3, 4, 5, 10, 6, 7, 8, 9, 0, 11, 0, 8, 0, 2, 3, 5]]
    assert tokens.dtype == np.int64
    assert add.encode([0], [0], 5)[0, add.answer_slice(5)].tolist() == [0] * 6
    carry = add.encode([99999], [99999], 5)[0]
    assert carry[add.answer_slice(5)].tolist() == [1, 9, 9, 9, 9, 8]
    assert add.answer_digits([99999, 0], [99999, 0], 5).tolist() == [[1, 9, 9, 9, 9, 8], [0] * 6]
    assert (add.PLUS, add.EQUALS, add.VOCAB_SIZE) == (10, 11, 12)


@pytest.mark.parametrize("digits", [1, 2, 5, 9])
def test_addition_round_trip(digits):
    top = 10**digits - 1
    a = np.r_[streams.uniform_ints(0, "a", 0, 500, top + 1), 0, top, top, 0]
    b = np.r_[streams.uniform_ints(0, "b", 0, 500, top + 1), 0, top, 0, top]
    tokens = add.encode(a, b, digits)
    assert tokens.shape == (a.size, add.sequence_length(digits)) == (a.size, 3 * digits + 3)
    da, db, dc = add.decode(tokens, digits)
    assert np.array_equal(da, a) and np.array_equal(db, b) and np.array_equal(dc, a + b)
    ex = add.Examples(a, b, tokens, digits)
    assert np.array_equal(ex.targets, add.answer_digits(a, b, digits))


def test_addition_encoding_errors():
    with pytest.raises(ValueError, match="a must"):
        add.encode([100000], [0], 5)
    with pytest.raises(ValueError, match="b must"):
        add.encode([0], [-1], 5)
    with pytest.raises(ValueError, match="digits"):
        add.encode([0], [0], 10)
    bad = add.encode([1], [2], 2)
    bad[0, 2] = add.EQUALS
    with pytest.raises(ValueError, match="not rows of digits"):
        add.decode(bad, 2)


def test_addition_determinism_and_seeds():
    a = add.AdditionData(train_size=200, val_size=300, seed=1)
    b = add.AdditionData(train_size=200, val_size=300, seed=1)
    c = add.AdditionData(train_size=200, val_size=300, seed=2)
    for part in ("a", "b", "tokens"):
        assert np.array_equal(getattr(a.training, part), getattr(b.training, part))
        assert np.array_equal(getattr(a.validation, part), getattr(b.validation, part))
    assert not np.array_equal(a.validation.a, c.validation.a)
    assert not np.array_equal(a.training.a, c.training.a)


def test_addition_prefixes():
    # validation depends on val_size alone, and a smaller set is a prefix of a larger one
    small = add.AdditionData(train_size=50, val_size=40, seed=0, digits=2)
    large = add.AdditionData(train_size=None, val_size=80, seed=0, digits=2)
    assert np.array_equal(large.validation.a[:40], small.validation.a)
    assert np.array_equal(large.validation.b[:40], small.validation.b)
    more = add.AdditionData(train_size=500, val_size=40, seed=0, digits=2)
    assert np.array_equal(more.training.a[:50], small.training.a)


def _pairs(ex: add.Examples) -> list[tuple[int, int]]:
    return list(zip(ex.a.tolist(), ex.b.tolist(), strict=True))


@pytest.mark.parametrize(("digits", "train_size", "val_size"), [(1, 60, 40), (2, 3000, 500)])
def test_addition_split_disjoint_and_distinct(digits, train_size, val_size):
    d = add.AdditionData(digits=digits, train_size=train_size, val_size=val_size, seed=5)
    train, val = _pairs(d.training), _pairs(d.validation)
    assert len(train) == len(set(train)) == train_size
    assert len(val) == len(set(val)) == val_size
    assert not set(train) & set(val)
    assert np.array_equal(add.encode(d.training.a, d.training.b, digits), d.training.tokens)
    if train_size + val_size == 10 ** (2 * digits):  # the whole table
        assert set(train) | set(val) == set(itertools.product(range(10), repeat=2))


def test_addition_stream_avoids_validation():
    d = add.AdditionData(digits=1, train_size=None, val_size=90, seed=3)
    val = set(_pairs(d.validation))
    counter, seen = 0, []
    for _ in range(50):
        batch, new = d.batch(counter, 64)
        assert len(batch) == 64 and new > counter
        assert not set(_pairs(batch)) & val
        assert np.array_equal(batch.tokens, add.encode(batch.a, batch.b, 1))
        seen += _pairs(batch)
        counter = new
    # uniform over the 10 pairs left (3200 draws: 320 each, sd ~17)
    counts = np.unique(np.array(seen), axis=0, return_counts=True)[1]
    assert counts.size == 10 and counts.min() > 220 and counts.max() < 420
    # the counter is the whole state: one large batch equals the chain of small ones
    whole, end = d.batch(0, 640)
    chained, counter = [], 0
    for _ in range(10):
        batch, counter = d.batch(counter, 64)
        chained += _pairs(batch)
    assert chained == _pairs(whole) and counter == end


def test_addition_settings_errors():
    with pytest.raises(ValueError, match=r"train_size \+ val_size.*100"):
        add.AdditionData(digits=1, train_size=61, val_size=40)
    with pytest.raises(ValueError, match=r"val_size.*100"):
        add.AdditionData(digits=1, train_size=None, val_size=100)
    with pytest.raises(ValueError, match="digits"):
        add.AdditionData(digits=0, train_size=None, val_size=10)
    with pytest.raises(ValueError, match="train_size"):
        add.AdditionData(train_size=0, val_size=10)
    with pytest.raises(ValueError, match="val_size"):
        add.AdditionData(train_size=10, val_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        add.AdditionData(train_size=None, val_size=10).batch(0, 0)
    with pytest.raises(ValueError, match="train_size"):
        add.AdditionData(train_size=10, val_size=10).batch(0, 4)
    with pytest.raises(ValueError, match="train_size"):
        _ = add.AdditionData(train_size=None, val_size=10).training


def test_addition_csv_rows():
    rows = list(add.csv_rows(digits=2, train_size=30, val_size=20, seed=0))
    assert rows[0] == "a,b,c,split"
    body = [r.split(",") for r in rows[1:]]
    assert [s for *_, s in body].count("train") == 30 and len(body) == 50
    assert all(int(a) + int(b) == int(c) for a, b, c, _ in body)
    stream = list(add.csv_rows(digits=2, train_size=None, val_size=20, seed=0, stream_rows=7))
    assert len(stream) == 1 + 7 + 20


def test_addition_batch_speed():
    d = add.AdditionData(train_size=None, val_size=1000, seed=0)
    assert _fastest_ms(lambda: d.batch(12345, 64)) < 20


# ---------------------------------------------------------------- repeated subsequence


def test_subsequence_golden_values():
    d = rs.RepeatedSubsequenceData(train_size=None, val_size=100, seed=0)
    v = d.validation
    assert v.tokens[0, :12].tolist() == [91, 8, 5, 90, 1, 40, 21, 120, 30, 81, 114, 39]
    assert v.starts[0].tolist() == [17, 43, 63]
    batch, _ = d.batch(0, 2)
    assert batch.tokens[0, :12].tolist() == [103, 83, 46, 14, 105, 74, 114, 30, 46, 125, 47, 87]
    assert batch.starts[0].tolist() == [3, 40, 69]


def _check_structure(ex: rs.Examples, seq_len: int, sub_len: int, repeats: int, vocab: int):
    n = len(ex)
    assert ex.tokens.shape == ex.mask.shape == (n, seq_len) and ex.tokens.dtype == np.int64
    assert ex.mask.dtype == np.bool_ and ex.starts.shape == (n, repeats)
    assert ex.tokens.min() >= 0 and ex.tokens.max() < vocab
    s = ex.starts
    assert (s[:, 0] >= 0).all() and (s[:, -1] + sub_len <= seq_len).all()
    assert (np.diff(s, axis=1) >= sub_len).all()  # non-overlapping, ascending
    assert (ex.mask.sum(axis=1) == (repeats - 1) * (sub_len - 1)).all()
    for i in range(n):
        occ = [ex.tokens[i, p : p + sub_len] for p in s[i]]
        assert all(np.array_equal(o, occ[0]) for o in occ[1:])
        expected = np.zeros(seq_len, dtype=bool)
        for p in s[i, 1:]:
            expected[p + 1 : p + sub_len] = True
        assert np.array_equal(ex.mask[i], expected)


@pytest.mark.parametrize(
    ("seq_len", "sub_len", "repeats", "vocab"), [(85, 16, 3, 128), (10, 2, 2, 3), (12, 3, 4, 5)]
)
def test_subsequence_structure(seq_len, sub_len, repeats, vocab):
    d = rs.RepeatedSubsequenceData(
        seq_len=seq_len, sub_len=sub_len, repeats=repeats, vocab=vocab, train_size=None, val_size=50
    )
    _check_structure(d.validation, seq_len, sub_len, repeats, vocab)
    _check_structure(d.batch(0, 300)[0], seq_len, sub_len, repeats, vocab)


def test_subsequence_placement_is_uniform():
    # seq_len 10, two occurrences of 2 tokens: C(8, 2) = 28 non-overlapping placements
    d = rs.RepeatedSubsequenceData(
        seq_len=10, sub_len=2, repeats=2, vocab=50, train_size=None, val_size=10
    )
    starts = d.batch(0, 14_000)[0].starts
    placements, counts = np.unique(starts, axis=0, return_counts=True)
    allowed = {(p, q) for p in range(9) for q in range(p + 2, 9)}
    assert _rows(placements) == allowed and len(allowed) == rs.num_placements(10, 2, 2) == 28
    assert counts.min() > 380 and counts.max() < 620  # 500 each, sd ~22
    # Nanda's setting: 9880 placements; the first occurrence at 0 in C(39, 2) of them (7.5%),
    # the last at the end as often
    big = rs.RepeatedSubsequenceData(train_size=None, val_size=10).batch(0, 4000)[0].starts
    assert 0.05 < (big[:, 0] == 0).mean() < 0.10
    assert 0.05 < (big[:, -1] == 85 - 16).mean() < 0.10
    middle = np.bincount(big[:, 1] - 16, minlength=85 - 48 + 1)
    assert (middle > 0).all()  # the middle occurrence reaches every position it can


def test_subsequence_determinism_and_seeds():
    kw = {"seq_len": 30, "sub_len": 4, "repeats": 3, "vocab": 16, "train_size": 64, "val_size": 64}
    a = rs.RepeatedSubsequenceData(seed=1, **kw)
    b = rs.RepeatedSubsequenceData(seed=1, **kw)
    c = rs.RepeatedSubsequenceData(seed=2, **kw)
    for part in ("tokens", "mask", "starts"):
        assert np.array_equal(getattr(a.training, part), getattr(b.training, part))
        assert np.array_equal(getattr(a.validation, part), getattr(b.validation, part))
    assert not np.array_equal(a.validation.tokens, c.validation.tokens)


def test_subsequence_split_disjoint_and_distinct():
    # 54 distinct sequences exist here (counted by brute force): collisions are everywhere
    kw = {"seq_len": 6, "sub_len": 2, "repeats": 2, "vocab": 2}
    d = rs.RepeatedSubsequenceData(train_size=20, val_size=20, seed=0, **kw)
    train, val = _rows(d.training.tokens), _rows(d.validation.tokens)
    assert len(train) == len(d.training) == 20 and len(val) == len(d.validation) == 20
    assert not train & val
    _check_structure(d.training, 6, 2, 2, 2)
    big = rs.RepeatedSubsequenceData(train_size=800, val_size=100, seed=0)
    train, val = _rows(big.training.tokens), _rows(big.validation.tokens)
    assert len(train) == 800 and len(val) == 100 and not train & val


def test_subsequence_all_sequences_reachable():
    # seq_len 5, sub_len 2, 2 repeats, vocab 2: exactly 18 distinct sequences
    kw = {"seq_len": 5, "sub_len": 2, "repeats": 2, "vocab": 2}
    d = rs.RepeatedSubsequenceData(train_size=9, val_size=9, seed=0, **kw)
    assert len(_rows(d.training.tokens) | _rows(d.validation.tokens)) == 18
    # 20 pass the up-front bound (24) but cannot be found: the draw gives up with a clear error
    with pytest.raises(ValueError, match="train_size = 10 and val_size = 10"):
        _ = rs.RepeatedSubsequenceData(train_size=10, val_size=10, seed=0, **kw).training


def test_subsequence_stream_avoids_validation():
    kw = {"seq_len": 6, "sub_len": 2, "repeats": 2, "vocab": 2}
    d = rs.RepeatedSubsequenceData(train_size=None, val_size=40, seed=4, **kw)
    val = _rows(d.validation.tokens)
    counter, seen = 0, set()
    for _ in range(30):
        batch, counter = d.batch(counter, 32)
        rows = _rows(batch.tokens)
        assert len(batch) == 32 and not rows & val
        _check_structure(batch, 6, 2, 2, 2)
        seen |= rows
    assert len(seen) == 54 - 40  # everything outside validation turns up
    whole, end = d.batch(0, 320)
    chained, counter = [], 0
    for _ in range(10):
        batch, counter = d.batch(counter, 32)
        chained.append(batch.tokens)
    assert np.array_equal(np.concatenate(chained), whole.tokens) and counter == end


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"seq_len": 0}, "seq_len"),
        ({"sub_len": 1}, "sub_len"),
        ({"repeats": 1}, "repeats"),
        ({"vocab": 1}, "vocab"),
        ({"seq_len": 47}, "seq_len = 47"),  # 3 * 16 = 48 tokens of occurrences
        ({"train_size": 0}, "train_size"),
        ({"val_size": 0}, "val_size"),
        ({"seq_len": 4, "sub_len": 2, "repeats": 2, "vocab": 2, "train_size": 3}, "train_size"),
        ({"seq_len": 4, "sub_len": 2, "repeats": 2, "vocab": 2, "val_size": 4}, "val_size"),
    ],
)
def test_subsequence_settings_errors(settings, name):
    kw = {"train_size": None, "val_size": 2, **settings}
    with pytest.raises(ValueError, match=name):
        rs.RepeatedSubsequenceData(**kw)


def test_subsequence_regime_errors():
    with pytest.raises(ValueError, match="train_size"):
        rs.RepeatedSubsequenceData(train_size=10, val_size=10).batch(0, 4)
    with pytest.raises(ValueError, match="train_size"):
        _ = rs.RepeatedSubsequenceData(train_size=None, val_size=10).training
    with pytest.raises(ValueError, match="batch_size"):
        rs.RepeatedSubsequenceData(train_size=None, val_size=10).batch(0, 0)


def test_subsequence_csv_rows():
    rows = list(rs.csv_rows(seq_len=20, sub_len=3, train_size=5, val_size=4, seed=0))
    assert rows[0] == "sequence,split" and len(rows) == 10
    seq, split = rows[1].split(",")
    assert split == "train" and len(seq.split(" ")) == 20
    assert rows[-1].endswith(",val")
    stream = list(rs.csv_rows(train_size=None, val_size=4, seed=0, stream_rows=3))
    assert len(stream) == 1 + 3 + 4 and len(stream[1].split(",")[0].split(" ")) == 85


def test_subsequence_batch_speed():
    d = rs.RepeatedSubsequenceData(train_size=None, val_size=1000, seed=0)
    assert _fastest_ms(lambda: d.batch(12345, 128)) < 20
