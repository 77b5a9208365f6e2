"""The operation tables of Power et al. (2022): ``a ∘ b = c`` over Z_p or S5.

Each equation becomes the tokens ``[a, ∘, b, =]`` (Nanda et al.'s ``[a, b, =]`` with
``operator_token: false``) with the answer ``c`` predicted at the last position. Element tokens
are ``0 .. n-1`` (residues mod p, or the 120 permutations of S5 in lexicographic order), then
the operator's token (when present) and ``=``'s.

The split ranks equations by a hash of (seed, a, b), not by a framework's RNG: the same on
every machine and every torch/numpy version, and for one seed a smaller fraction's training set
lies inside a larger one's, which keeps fraction sweeps comparable. ``split: shuffle`` is Nanda
et al.'s own split instead (his ``gen_train_test``), so that his run can be rerun on his data;
``split_seed`` holds the data fixed while ``seed`` moves the initialisation.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import sys
from collections.abc import Callable, Iterator
from functools import cache, cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, Field

from grok_tune import metrics as m
from grok_tune.tasks import Layout, Split, Task

if TYPE_CHECKING:
    import torch
    from torch import nn

    from grok_tune.config import TrainConfig

S5_PREFIX = "S5:"
# The whole table is built in memory (p² equations): p = 1000 takes about 4 s and 0.5 GB here,
# and the largest p the paper's experiments need is 113.
P_MAX = 1000

# Operations over Z_p: name -> (c(x, y, p) or None where undefined, needs an inverse mod p).
_ZP_OPS: dict[str, tuple[Callable[[int, int, int], int | None], bool]] = {
    "x+y": (lambda x, y, p: (x + y) % p, False),
    "x-y": (lambda x, y, p: (x - y) % p, False),
    # not one of Power et al.'s: the operation Grokfast's code trains (its docstring says x/y),
    # over y != 0 as there
    "x*y": (lambda x, y, p: x * y % p if y else None, False),
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
    # not modular: a + b over 0..p-1, answers 0..2p-2 (Liu et al.'s toy task, 2p - 1 classes)
    "x+y_int": (lambda x, y, p: x + y, False),
}

# operations whose answers are not elements: their number of answer classes
_CLASSES: dict[str, Callable[[int], int]] = {"x+y_int": lambda p: 2 * p - 1}

# operations whose table leaves out y = 0
_NO_ZERO_Y = ("x/y", "x*y")

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


def num_classes(op: str, p: int) -> int:
    """Number of answer classes: the elements, or (integer addition) every possible sum."""
    return _CLASSES[op](p) if op in _CLASSES else num_elements(op, p)


def table_size(op: str, p: int) -> int:
    """Number of equations, without building the table (division skips y = 0)."""
    if is_s5(op):
        return len(S5_ELEMENTS) ** 2
    return p * (p - 1) if op in _NO_ZERO_Y else p * p


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


def split_mask(op: str, p: int, frac: float, seed: int, split: str = "hash") -> torch.Tensor:
    """Boolean mask over ``equations(op, p)``: True = training.

    ``hash``: equations are ranked by a hash of (seed, a, b), not by a framework's RNG, so the
    split is the same on every machine and every torch/numpy version; for one seed a smaller
    fraction's training set is a subset of a larger one's, which keeps fraction sweeps
    comparable.

    ``shuffle``: Nanda et al.'s ``gen_train_test`` (progress-measures-paper, transformers.py):
    the a-major pairs shuffled by Python's ``random.seed(seed); random.shuffle(pairs)``, the
    first ``int(frac * N)`` for training. Python's Mersenne Twister and its shuffle have been
    stable since 3.2, so seed 0 is his training set, pair for pair.
    """
    import torch

    check_split(op, p, frac)
    table = _table(op, p)
    if split == "shuffle":
        order = list(range(len(table)))
        rng = random.Random(seed)  # random.seed(seed) then random.shuffle: the same draws
        rng.shuffle(order)
    else:
        order = sorted(range(len(table)), key=lambda i: _split_key(seed, table[i][0], table[i][1]))
    mask = torch.zeros(len(table), dtype=torch.bool)
    mask[order[: n_training(len(table), frac, split)]] = True
    return mask


def n_training(n: int, frac: float, split: str) -> int:
    """Training equations out of n: Nanda's code floors (``int(frac_train * len(pairs))``)."""
    return int(frac * n) if split == "shuffle" else round(frac * n)


class TableSettings(BaseModel):
    op: Literal[OPERATIONS] = "x/y"  # type: ignore[valid-type]
    p: int = Field(
        97, ge=2, le=P_MAX, description="modulus (ignored for S5 operations); the table is p²"
    )
    frac: float = Field(0.5, gt=0, lt=1, description="training fraction of all equations")
    operator_token: bool = Field(True, description="'a ∘ b =' (Power et al.) or 'a b =' (Nanda)")
    split: Literal["hash", "shuffle"] = Field(
        "hash",
        description="how the training set is drawn: hash of (seed, a, b) (a smaller fraction's "
        "set inside a larger one's), or shuffle: Nanda et al.'s gen_train_test (Python's "
        "random.shuffle of the pairs, seed 0 is his split)",
    )
    split_seed: int | None = Field(
        None,
        ge=0,
        description="the split's seed (default: seed): fixes the data while seed moves the "
        "initialisation and the batches",
    )


class TableTask(Task):
    """``task: table``: one of the 12 operations, a fraction of its table for training."""

    name = "table"
    Settings = TableSettings
    MEASURES: ClassVar[tuple[str, ...]] = (m.FOURIER_SPARSITY, *m.NANDA_MEASURES)
    fixed_operands: ClassVar[bool] = True
    prints_table: ClassVar[bool] = True

    @classmethod
    def training_examples(cls, cfg: TrainConfig) -> int:
        return n_training(table_size(cfg.op, cfg.p), cfg.frac, cfg.split)  # split_mask's rule

    @classmethod
    def describe(cls, settings: Any) -> str:
        op, p = settings.get("op"), settings.get("p")
        return str(op) if is_s5(str(op)) else f"{op} mod {p}"

    @classmethod
    def csv_rows(cls, cfg: TrainConfig, stream_rows: int) -> Iterator[str]:
        return csv_rows(cfg.op, cfg.p, _mask(cfg))

    @classmethod
    def print_table(cls, cfg: TrainConfig) -> None:
        print_table(cfg.op, cfg.p, _mask(cfg))

    @classmethod
    def check(cls, cfg: TrainConfig) -> None:
        check_operation(cfg.op, cfg.p)
        check_split(cfg.op, cfg.p, cfg.frac)

    @cached_property
    def layout(self) -> Layout:
        n = num_elements(self.cfg.op, self.cfg.p)
        with_op = self.cfg.operator_token
        return Layout(
            vocab_size=n + 1 + with_op,
            num_classes=num_classes(self.cfg.op, self.cfg.p),
            n_positions=3 + with_op,
            n_predict=1,
            # 'a ∘' (or 'a' alone) depends on a only: at most n distinct prefixes a batch
            shared_prefix=1 + with_op,
            # 'a ∘ b =' or 'a b =': a first, b after the operator when there is one
            operands=(0, 1 + with_op),
            operand_vocab=n,
        )

    @cached_property
    def _splits(self) -> tuple[Split, Split]:
        import torch

        cfg = self.cfg
        eq = equations(cfg.op, cfg.p)
        mask = _mask(cfg)
        n = num_elements(cfg.op, cfg.p)
        a, b = eq[:, 0], eq[:, 1]
        columns = [a, torch.full_like(a, n), b] if cfg.operator_token else [a, b]
        x = torch.stack([*columns, torch.full_like(a, n + cfg.operator_token)], dim=1)
        y = eq[:, 2:3]
        return Split(x[mask], y[mask]), Split(x[~mask], y[~mask])

    @property
    def training(self) -> Split:
        return self._splits[0]

    @property
    def validation(self) -> Split:
        return self._splits[1]

    @cached_property
    def _grid(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Nanda's measures' inputs (grok_tune/progress.py): the token rows of every pair on
        the grid [a, j] (a-major), its answers a + j mod p and its training mask, where column
        j holds b = j for x+y and b = -j mod p for x-y; None where they do not apply."""
        import torch

        from grok_tune.progress import ADDITIVE_OPS, P_MAX

        cfg = self.cfg
        if cfg.op not in ADDITIVE_OPS or cfg.p > P_MAX:
            return None
        p, sign = cfg.p, ADDITIVE_OPS[cfg.op]
        j = torch.arange(p)
        a, col = j.repeat_interleave(p), j.repeat(p)
        b = (sign * col) % p
        columns = [a, torch.full_like(a, p), b] if cfg.operator_token else [a, b]
        x = torch.stack([*columns, torch.full_like(a, p + cfg.operator_token)], dim=1)
        # equations() lists (a, b) a-major with every b: row a * p + b
        train = _mask(cfg)[a * p + b].view(p, p)
        return x, ((a + col) % p).view(p, p), train

    def measures(self, model: nn.Module) -> dict[str, float | None]:
        from grok_tune.progress import measures, operand_embedding

        if is_s5(self.cfg.op):
            return {}
        embedding = operand_embedding(model)[: num_elements(self.cfg.op, self.cfg.p)]
        out: dict[str, float | None] = {m.FOURIER_SPARSITY: m.fourier_sparsity(embedding)}
        grid = self._grid
        if grid is None:  # not additive (or too large): recorded as None, never absent
            return out | dict.fromkeys(m.NANDA_MEASURES)
        device = embedding.device
        if grid[0].device != device:  # moved once, with the model
            grid = self.__dict__["_grid"] = tuple(t.to(device) for t in grid)
        return out | measures(model, *grid, self.cfg.p)


# --- printing a table (python -m grok_tune.data) ---------------------------------------------
def _mask(cfg: TrainConfig) -> torch.Tensor:
    """The run's training mask over ``equations``: its split, drawn with its split's seed."""
    seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    return split_mask(cfg.op, cfg.p, cfg.frac, seed, cfg.split)


def print_table(op: str, p: int, mask: torch.Tensor) -> None:
    """The operation table with held-out cells as '?'."""
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


def csv_rows(op: str, p: int, mask: torch.Tensor) -> Iterator[str]:
    """Every equation as ``a,b,c,split`` (a header first)."""
    yield "a,b,c,split"
    for (a, b, c), trains in zip(_table(op, p), mask.tolist(), strict=True):
        names = [element_name(op, v) for v in (a, b, c)]
        yield ",".join([*names, "train" if trains else "val"])
