"""Binary-operation tables of Power et al. (2022) and their train/validation split.

Each equation ``a ∘ b = c`` becomes the token sequence ``[a, ∘, b, =]`` with target ``c``.
Element tokens are ``0 .. n-1`` (residues mod p, or the 120 permutations of S5 in
lexicographic order), then one token for the operator and one for ``=``.

``python -m grok_tune.data --op x/y --p 7 --frac 0.5 --seed 0`` prints the table with held-out
cells as ``?``; ``--format csv`` prints every equation as ``a,b,c,split``.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from grok_tune.cli import Parser

if TYPE_CHECKING:
    import torch

S5_PREFIX = "S5:"
# The whole table is built in memory (p² equations): p = 1000 takes about 4 s and 0.5 GB here,
# and the largest p the paper's experiments need is 113.
P_MAX = 1000

# Operations over Z_p: name -> (c(x, y, p) or None where undefined, needs an inverse mod p).
_ZP_OPS: dict[str, tuple[Callable[[int, int, int], int | None], bool]] = {
    "x+y": (lambda x, y, p: (x + y) % p, False),
    "x-y": (lambda x, y, p: (x - y) % p, False),
    "x/y": (lambda x, y, p: x * pow(y, -1, p) % p if y else None, True),
    "x/y_if_y_odd_else_x-y": (
        lambda x, y, p: x * pow(y, -1, p) % p if y % 2 else (x - y) % p,
        True,
    ),
    "x^2+y^2": (lambda x, y, p: (x * x + y * y) % p, False),
    "x^2+xy+y^2": (lambda x, y, p: (x * x + x * y + y * y) % p, False),
    "x^2+xy+y^2+x": (lambda x, y, p: (x * x + x * y + y * y + x) % p, False),
    "x^3+xy": (lambda x, y, p: (x**3 + x * y) % p, False),
    "x^3+xy^2+y": (lambda x, y, p: (x**3 + x * y * y + y) % p, False),
}

Perm = tuple[int, ...]


def compose(f: Perm, g: Perm) -> Perm:
    """(f·g)(i) = f(g(i)): g acts first, as in function composition."""
    return tuple(f[i] for i in g)


def _inverse(f: Perm) -> Perm:
    inv = [0] * len(f)
    for i, fi in enumerate(f):
        inv[fi] = i
    return tuple(inv)


_S5_OPS: dict[str, Callable[[Perm, Perm], Perm]] = {
    "x*y": lambda x, y: compose(x, y),
    "x*y*x^-1": lambda x, y: compose(compose(x, y), _inverse(x)),
    "x*y*x": lambda x, y: compose(compose(x, y), x),
}

OPERATIONS: tuple[str, ...] = (*_ZP_OPS, *(S5_PREFIX + name for name in _S5_OPS))
S5_ELEMENTS: tuple[Perm, ...] = tuple(itertools.permutations(range(5)))


def is_s5(op: str) -> bool:
    return op.startswith(S5_PREFIX)


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def check_operation(op: str, p: int) -> None:
    """Raise ValueError naming the bad value and what is allowed."""
    if op not in OPERATIONS:
        raise ValueError(f"unknown operation {op!r}; allowed: {', '.join(OPERATIONS)}")
    if is_s5(op):
        return
    if p < 2:
        raise ValueError(f"p = {p}: the modulus must be at least 2")
    if p > P_MAX:
        raise ValueError(f"p = {p}: at most {P_MAX} (the table of p² equations is built in memory)")
    if _ZP_OPS[op][1] and not is_prime(p):
        raise ValueError(f"p = {p} is not prime: operation {op!r} needs an inverse mod p")


def num_elements(op: str, p: int) -> int:
    """Number of element tokens (and of answer classes)."""
    return len(S5_ELEMENTS) if is_s5(op) else p


def table_size(op: str, p: int) -> int:
    """Number of equations, without building the table (division skips y = 0)."""
    if is_s5(op):
        return len(S5_ELEMENTS) ** 2
    return p * (p - 1) if op == "x/y" else p * p


def check_split(op: str, p: int, frac: float) -> None:
    """Raise ValueError unless ``frac`` leaves at least one equation on each side."""
    if not 0.0 < frac < 1.0:
        raise ValueError(f"frac = {frac}: the training fraction must lie strictly in (0, 1)")
    total = table_size(op, p)
    n_train = round(frac * total)
    if not 0 < n_train < total:
        where = op if is_s5(op) else f"{op}, p = {p}"
        raise ValueError(
            f"frac = {frac} of {total} equations ({where}) leaves {n_train} for training "
            f"and {total - n_train} for validation: both need at least one"
        )


def element_name(op: str, i: int) -> str:
    """An element as printed: a residue, or a permutation of 0..4 in one-line notation."""
    return "".join(map(str, S5_ELEMENTS[i])) if is_s5(op) else str(i)


@cache
def _table(op: str, p: int) -> tuple[tuple[int, int, int], ...]:
    check_operation(op, p)
    if is_s5(op):
        fn = _S5_OPS[op.removeprefix(S5_PREFIX)]
        index = {g: i for i, g in enumerate(S5_ELEMENTS)}
        return tuple(
            (i, j, index[fn(x, y)])
            for (i, x), (j, y) in itertools.product(enumerate(S5_ELEMENTS), repeat=2)
        )
    fn = _ZP_OPS[op][0]
    rows = ((x, y, fn(x, y, p)) for x, y in itertools.product(range(p), repeat=2))
    return tuple((x, y, c) for x, y, c in rows if c is not None)


def equations(op: str, p: int) -> torch.Tensor:
    """All equations of the operation as an (N, 3) tensor of (a, b, c), a-major order."""
    import torch

    return torch.tensor(_table(op, p), dtype=torch.long)


def _split_key(seed: int, a: int, b: int) -> bytes:
    return hashlib.blake2b(f"{seed}:{a}:{b}".encode(), digest_size=8).digest()


def split_mask(op: str, p: int, frac: float, seed: int) -> torch.Tensor:
    """Boolean mask over ``equations(op, p)``: True = training.

    Equations are ranked by a hash of (seed, a, b), not by a framework's RNG, so the split is the
    same on every machine and every torch/numpy version; for one seed a smaller fraction's
    training set is a subset of a larger one's, which keeps fraction sweeps comparable.
    """
    import torch

    check_split(op, p, frac)
    table = _table(op, p)
    n_train = round(frac * len(table))
    order = sorted(range(len(table)), key=lambda i: _split_key(seed, table[i][0], table[i][1]))
    mask = torch.zeros(len(table), dtype=torch.bool)
    mask[order[:n_train]] = True
    return mask


@dataclass(frozen=True)
class Dataset:
    """Token sequences and answers of one split pair, ready for the model."""

    train_x: torch.Tensor  # (N_train, 4) token ids: a, op, b, =
    train_y: torch.Tensor  # (N_train,) answer ids
    val_x: torch.Tensor
    val_y: torch.Tensor
    vocab_size: int
    num_classes: int

    def to(self, device: torch.device | str) -> Dataset:
        move = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "val_x", "val_y")}
        return Dataset(**move, vocab_size=self.vocab_size, num_classes=self.num_classes)


def make_dataset(op: str, p: int, frac: float, seed: int) -> Dataset:
    import torch

    eq = equations(op, p)
    mask = split_mask(op, p, frac, seed)
    n = num_elements(op, p)
    op_token, eq_token = n, n + 1
    x = torch.stack(
        [
            eq[:, 0],
            torch.full_like(eq[:, 0], op_token),
            eq[:, 1],
            torch.full_like(eq[:, 0], eq_token),
        ],
        dim=1,
    )
    return Dataset(x[mask], eq[mask, 2], x[~mask], eq[~mask, 2], vocab_size=n + 2, num_classes=n)


def _print_table(op: str, p: int, mask: torch.Tensor) -> None:
    out = sys.stdout
    n = num_elements(op, p)
    cells = {(a, b): (c, m) for (a, b, c), m in zip(_table(op, p), mask.tolist(), strict=True)}
    w = max(len(element_name(op, i)) for i in range(n))
    out.write(f"{op} ({'S5' if is_s5(op) else f'mod {p}'}); ? = held out for validation\n")
    out.write(" " * w + " | " + " ".join(element_name(op, j).rjust(w) for j in range(n)) + "\n")
    out.write("-" * w + "-+-" + "-" * ((w + 1) * n - 1) + "\n")
    for i in range(n):
        row = []
        for j in range(n):
            c, train = cells.get((i, j), (None, False))
            text = "" if c is None else element_name(op, c) if train else "?"
            row.append(text.rjust(w))
        out.write(element_name(op, i).rjust(w) + " | " + " ".join(row) + "\n")


def _print_csv(op: str, p: int, mask: torch.Tensor) -> None:
    out = sys.stdout
    out.write("a,b,c,split\n")
    for (a, b, c), m in zip(_table(op, p), mask.tolist(), strict=True):
        names = [element_name(op, v) for v in (a, b, c)]
        out.write(",".join([*names, "train" if m else "val"]) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m grok_tune.data", description=__doc__)
    parser.add_argument("--op", required=True, help=f"one of: {', '.join(OPERATIONS)}")
    parser.add_argument("--p", type=int, default=97, help="modulus (ignored for S5)")
    parser.add_argument("--frac", type=float, default=0.5, help="training fraction in (0, 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("table", "csv"), default="table")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.fail(f"--seed {args.seed}: seeds are 0 or more")
    try:
        mask = split_mask(args.op, args.p, args.frac, args.seed)
    except ValueError as err:
        parser.fail(str(err))
    try:
        (_print_csv if args.format == "csv" else _print_table)(args.op, args.p, mask)
    except BrokenPipeError:  # `| head` closed the pipe: not an error of ours
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
