import hashlib
import itertools
import re

import pytest
import torch

from grok_tune import data
from grok_tune.config import TrainConfig
from grok_tune.tasks.tables import (
    OPERATIONS,
    S5_ELEMENTS,
    TableTask,
    equations,
    is_s5,
    split_mask,
)

P = 7


def table(op: str, p: int = P) -> dict[tuple[int, int], int]:
    return {(a, b): c for a, b, c in equations(op, p).tolist()}


@pytest.mark.parametrize(
    ("op", "formula"),
    [
        ("x+y", lambda x, y: (x + y) % P),
        ("x-y", lambda x, y: (x - y) % P),
        ("x^2+y^2", lambda x, y: (x * x + y * y) % P),
        ("x^2+xy+y^2", lambda x, y: (x * x + x * y + y * y) % P),
        ("x^2+xy+y^2+x", lambda x, y: (x * x + x * y + y * y + x) % P),
        ("x^3+xy", lambda x, y: (x**3 + x * y) % P),
        ("x^3+xy^2+y", lambda x, y: (x**3 + x * y * y + y) % P),
    ],
)
def test_polynomial_operations(op, formula):
    t = table(op)
    assert len(t) == P * P
    assert all(t[x, y] == formula(x, y) for x, y in itertools.product(range(P), repeat=2))


def test_division_is_inverse_of_multiplication():
    t = table("x/y")
    assert len(t) == P * (P - 1)  # y = 0 has no equation
    assert all((c * y) % P == x for (x, y), c in t.items())
    assert (3, 0) not in t


def test_division_if_odd_else_subtraction():
    t = table("x/y_if_y_odd_else_x-y")
    assert len(t) == P * P
    for (x, y), c in t.items():
        assert (c * y) % P == x if y % 2 else c == (x - y) % P


def make_task(op: str, p: int, frac: float, seed: int, **more) -> TableTask:
    return TableTask(TrainConfig(op=op, p=p, frac=frac, seed=seed, **more))


def perm(i: int) -> tuple[int, ...]:
    return S5_ELEMENTS[i]


def test_s5_product_is_a_group():
    t = table("S5:x*y")
    assert len(t) == 120 * 120
    e = S5_ELEMENTS.index((0, 1, 2, 3, 4))
    assert all(t[e, g] == g and t[g, e] == g for g in range(120))  # identity
    assert all(any(t[g, h] == e for h in range(120)) for g in range(120))  # inverses
    rng = torch.Generator().manual_seed(0)
    for a, b, c in torch.randint(0, 120, (300, 3), generator=rng).tolist():  # associativity
        assert t[t[a, b], c] == t[a, t[b, c]]
    # composition convention: (x·y)(i) = x(y(i))
    x, y = 5, 17
    assert perm(t[x, y]) == tuple(perm(x)[perm(y)[i]] for i in range(5))


def test_s5_conjugation_and_xyx():
    prod, conj, xyx = table("S5:x*y"), table("S5:x*y*x^-1"), table("S5:x*y*x")
    e = S5_ELEMENTS.index((0, 1, 2, 3, 4))
    inv = {g: next(h for h in range(120) if prod[g, h] == e) for g in range(120)}
    for x, y in itertools.product(range0 := range(0, 120, 7), range0):
        assert conj[x, y] == prod[prod[x, y], inv[x]]
        assert xyx[x, y] == prod[prod[x, y], x]
        # conjugates share the cycle type
        assert sorted(cycle_type(perm(conj[x, y]))) == sorted(cycle_type(perm(y)))


def cycle_type(p: tuple[int, ...]) -> list[int]:
    seen, lengths = set(), []
    for s in range(5):
        n, i = 0, s
        while i not in seen:
            seen.add(i)
            i, n = p[i], n + 1
        if n:
            lengths.append(n)
    return lengths


def test_split_is_deterministic_disjoint_and_nested():
    a = split_mask("x+y", 11, 0.5, seed=3)
    assert torch.equal(a, split_mask("x+y", 11, 0.5, seed=3))
    assert int(a.sum()) == round(0.5 * 121)
    assert not torch.equal(a, split_mask("x+y", 11, 0.5, seed=4))
    small = split_mask("x+y", 11, 0.3, seed=3)
    assert bool((small & ~a).sum() == 0)  # the smaller training set lies inside the larger
    task = make_task("x+y", 11, 0.5, seed=3)
    train = {tuple(r) for r in task.training.x.tolist()}
    val = {tuple(r) for r in task.validation.x.tolist()}
    assert not train & val and len(train) + len(val) == 121


def test_split_is_the_same_everywhere():
    # the split comes from blake2b, not a framework RNG: these bytes must never change
    mask = split_mask("x/y", 97, 0.5, seed=0)
    assert hashlib.sha256(bytes(mask.tolist())).hexdigest()[:16] == GOLDEN_SPLIT


GOLDEN_SPLIT = "043492b19cf8fa74"


def test_shuffle_split_is_nandas_gen_train_test():
    # his code, as it is in progress-measures-paper's transformers.py (p the '=' token)
    import random

    def gen_train_test(frac_train, num, seed=0):
        pairs = [(i, j, num) for i in range(num) for j in range(num)]
        random.seed(seed)
        random.shuffle(pairs)
        div = int(frac_train * len(pairs))
        return pairs[:div], pairs[div:]

    for p, frac, seed in [(113, 0.3, 0), (13, 0.5, 4)]:
        his, _ = gen_train_test(frac, p, seed)
        mask = split_mask("x+y", p, frac, seed, split="shuffle")
        ours = {(a, b) for a, b, _ in equations("x+y", p)[mask].tolist()}
        assert ours == {(a, b) for a, b, _ in his} and int(mask.sum()) == len(his)
        cfg = TrainConfig(op="x+y", p=p, frac=frac, seed=seed, split="shuffle")
        assert TableTask.training_examples(cfg) == len(his)  # floors, as he does: 3830 of 12769
    assert TableTask.training_examples(TrainConfig(op="x+y", p=113, frac=0.3)) == 3831


def test_split_seed_holds_the_data_while_seed_moves():
    rows = lambda task: {tuple(r) for r in task.training.x.tolist()}  # noqa: E731
    base = dict(op="x+y", p=11, frac=0.5)
    fixed = [TableTask(TrainConfig(**base, seed=s, split_seed=7)) for s in (0, 1)]
    moving = [TableTask(TrainConfig(**base, seed=s)) for s in (0, 1)]
    assert rows(fixed[0]) == rows(fixed[1]) == rows(TableTask(TrainConfig(**base, seed=7)))
    assert rows(moving[0]) != rows(moving[1])


def test_tokens():
    task = make_task("x-y", 5, 0.6, seed=0)
    layout, train = task.layout, task.training
    assert layout.vocab_size == 7 and layout.num_classes == 5
    assert layout.n_positions == 4 and layout.n_predict == 1 and layout.shared_prefix == 2
    assert train.x.shape[1] == 4 and train.y.shape[1] == 1
    assert set(train.x[:, 1].tolist()) == {5} and set(train.x[:, 3].tolist()) == {6}
    for (a, _, b, _), (c,) in zip(train.x.tolist(), train.y.tolist(), strict=True):
        assert c == (a - b) % 5


def test_tokens_without_the_operator():
    # Nanda et al.'s layout: 'a b =', the same split
    task = make_task("x-y", 5, 0.6, seed=0, operator_token=False)
    with_op = make_task("x-y", 5, 0.6, seed=0)
    layout = task.layout
    assert (layout.vocab_size, layout.n_positions, layout.shared_prefix) == (6, 3, 1)
    assert set(task.training.x[:, 2].tolist()) == {5}
    assert torch.equal(task.training.x, with_op.training.x[:, [0, 2, 3]] - torch.tensor([0, 0, 1]))
    assert torch.equal(task.training.y, with_op.training.y)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope", 7, 0.5), "unknown operation 'nope'; allowed: x+y"),
        (("x/y", 8, 0.5), "p = 8 is not prime"),
        (("x/y_if_y_odd_else_x-y", 9, 0.5), "p = 9 is not prime"),
        (("x+y", 7, 0.0), "frac = 0.0"),
        (("x+y", 7, 1.0), "strictly in (0, 1)"),
        (("x+y", 3, 0.05), "leaves 0 for training"),
        (("x+y", 3, 0.97), "and 0 for validation"),
    ],
)
def test_bad_input(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        split_mask(*args, seed=0)


def test_integer_addition_has_every_sum_as_a_class():
    # Liu et al.'s toy task: a + b without a modulus, 2p - 1 answers
    t = table("x+y_int", 10)
    assert len(t) == 100 and all(c == a + b for (a, b), c in t.items())
    task = make_task("x+y_int", 10, 0.8, 0)
    assert task.layout.num_classes == 19 and task.layout.vocab_size == 12
    assert int(task.training.y.max()) <= 18


def test_non_prime_modulus_is_fine_without_inverses():
    assert len(table("x+y", 8)) == 64


def test_every_operation_builds():
    for op in OPERATIONS:
        task = make_task(op, 5 if not is_s5(op) else 97, 0.5, 0)
        total = len(task.training) + len(task.validation)
        assert total == (14400 if is_s5(op) else len(table(op, 5)))


def test_cli_table_and_csv(capsys):
    assert data.main(["--op", "x/y", "--p", "5", "--frac", "0.5", "--seed", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    cells = [row.split("|")[1].split() for row in out[3:]]
    assert sum(c == "?" for row in cells for c in row) == 20 - round(0.5 * 20)
    data.main(["--op", "S5:x*y", "--frac", "0.5", "--format", "csv"])
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "a,b,c,split" and len(rows) == 14401
    assert rows[1] == "01234,01234,01234," + rows[1].split(",")[3]


def test_cli_bad_input(capsys):
    with pytest.raises(SystemExit) as exit_:
        data.main(["--op", "x/y", "--p", "8"])
    assert exit_.value.code == 2
    assert "p = 8 is not prime" in capsys.readouterr().err
