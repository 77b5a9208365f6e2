"""t-SNE of the output layer's weights, one point per answer: Power et al.'s Figure 3.

    python -m analysis.embeddings STUDY_DIR [--trial ID] [--mod K] [--perplexity P]

The rows of ``head.weight`` in a trial's latest checkpoint (default: the trial with the best
validation accuracy). For Z_p each residue c is coloured by c mod K (default 8, the paper's),
labelled with c, and joined by a faint line to c + K; ``--mod auto`` picks the K whose pairs
(c, c + K) lie nearest in the weights, which traces the rings a generalized network forms.
For S5 each permutation is coloured by its right coset Hx = {h·x : h in H} (h·x = h after x,
grok_tune.tasks.tables's composition) of the subgroup H = <(0 3)(1 4), (1 2)(3 4)> (order 10, a
dihedral group D5: 12 cosets), and the figure says how far the rows really cluster by cosets
(``coset_agreement``): Power et al. saw clusters that are cosets of H "or its conjugates",
without saying which side, so every conjugate gHg⁻¹ (6 of them) and both sides (Hx and xH) are
tried and the best-matching labelling is reported: the share of each row's nearest neighbours
(as many as a coset has other members, 9) in its own coset, beside what random vectors score
(the rows shuffled among the elements, the best labelling picked likewise).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from sklearn.manifold import TSNE

from analysis.common import (
    FRAC,
    MODULUS,
    OP,
    AnalysisError,
    Drawn,
    Study,
    base_parser,
    figure_path,
    new_figure,
    run_command,
    save,
)
from grok_tune import metrics as m
from grok_tune.results import MEMBER
from grok_tune.study_files import STATE_FILE, TRIAL_ID
from grok_tune.tasks.tables import S5_ELEMENTS, Perm, compose, is_s5

HEAD = "head.weight"  # grok_tune.model.Transformer's output layer: one row per answer class
# (0 3)(1 4) and (1 2)(3 4) in one-line notation (i -> perm[i]), the paper's generators
H_GENERATORS: tuple[Perm, ...] = ((3, 4, 2, 0, 1), (0, 2, 1, 4, 3))
DEFAULT_MOD = 8  # the paper's, for its network
AUTO = "auto"


def subgroup(generators: Sequence[Perm]) -> frozenset[Perm]:
    """The subgroup generated: closure of the generators under composition."""
    group = {tuple(range(len(generators[0])))}
    frontier = set(generators)
    while frontier:
        group |= frontier
        frontier = {compose(a, b) for a in group for b in group} - group
    return frozenset(group)


def right_cosets(group: frozenset[Perm]) -> list[int]:
    """For each S5 element x (class order), the index of its coset Hx, numbered by first x."""
    index = {g: i for i, g in enumerate(S5_ELEMENTS)}
    labels: dict[int, int] = {}
    out = []
    for x in S5_ELEMENTS:
        smallest = min(index[compose(h, x)] for h in group)
        out.append(labels.setdefault(smallest, len(labels)))
    return out


def conjugates(group: frozenset[Perm]) -> list[frozenset[Perm]]:
    """The distinct conjugates gHg⁻¹ of ``group`` in S5, ``group`` first."""
    found = [group]
    for g in S5_ELEMENTS:
        inverse = tuple(sorted(range(len(g)), key=g.__getitem__))
        conjugate = frozenset(compose(compose(g, h), inverse) for h in group)
        if conjugate not in found:
            found.append(conjugate)
    return found


def left_cosets(group: frozenset[Perm]) -> list[int]:
    """For each S5 element x (class order), the index of its left coset xH, numbered by first x."""
    index = {g: i for i, g in enumerate(S5_ELEMENTS)}
    labels: dict[int, int] = {}
    return [
        labels.setdefault(min(index[compose(x, h)] for h in group), len(labels))
        for x in S5_ELEMENTS
    ]


SHUFFLES = 200  # random labellings for the baseline: its mean is steady to about 0.002


@dataclass(frozen=True)
class CosetAgreement:
    """How well the rows cluster by the cosets of the best-matching conjugate and side."""

    agreement: float  # mean share of a row's k nearest neighbours in its own coset
    conjugate: int  # which conjugate of H (0: H itself, as conjugates() orders them)
    side: str  # "right" (Hx) or "left" (xH)
    neighbours: int  # k: the other members of a coset
    chance: float  # one labelling, rows at random: (k) / (n - 1) of a row's neighbours
    shuffled: float  # the best of all labellings on shuffled rows, mean over SHUFFLES
    shuffled_p95: float  # ... and its 95th percentile
    labels: tuple[int, ...]  # each element's coset in the best-matching labelling

    @property
    def labelling(self) -> str:
        """The best-matching labelling: 'right cosets Hx of conjugate 5 of H'."""
        which = "H" if self.conjugate == 0 else f"conjugate {self.conjugate} of H"
        return f"{self.side} cosets {'Hx' if self.side == 'right' else 'xH'} of {which}"

    def describe(self, sep: str = "; ") -> str:
        return (
            f"coset agreement {self.agreement:.2f} ({self.labelling}){sep}share of "
            f"{self.neighbours} nearest neighbours in the own coset; random rows "
            f"{self.shuffled:.2f} (95%: {self.shuffled_p95:.2f})"
        )


def coset_agreement(
    weights: np.ndarray, generators: Sequence[Perm] = H_GENERATORS, seed: int = 0
) -> CosetAgreement:
    """Nearest-neighbour agreement of the rows of ``weights`` (one per S5 element, class
    order) with the cosets of the subgroup ``generators`` make, and of its conjugates, on
    either side: the best of those labellings (see the module docstring). Euclidean distance
    between rows, as the t-SNE drawn beside it uses."""
    if len(weights) != len(S5_ELEMENTS):
        raise AnalysisError(f"{len(weights)} rows: the coset check needs S5's 120")
    group = subgroup(generators)
    k = len(group) - 1
    labellings, names = [], []
    for i, h in enumerate(conjugates(group)):
        for side, labels in (("right", right_cosets(h)), ("left", left_cosets(h))):
            labellings.append(labels)
            names.append((i, side))
    labels = np.array(labellings)  # (labellings, 120)
    w = np.asarray(weights, dtype=np.float64)
    distance = ((w[:, None, :] - w[None, :, :]) ** 2).sum(axis=-1)
    np.fill_diagonal(distance, np.inf)
    nearest = np.argsort(distance, axis=1, kind="stable")[:, :k]  # (120, k)

    def scores(order: np.ndarray) -> np.ndarray:
        """Each labelling's agreement when element e has the row of element order[e]."""
        neighbours = np.argsort(order)[nearest[order]]  # (120, k), as elements
        return (labels[:, neighbours] == labels[:, :, None]).mean(axis=(1, 2))

    n = len(w)
    observed = scores(np.arange(n))
    best = int(np.argmax(observed))
    rng = np.random.default_rng(seed)
    shuffled = np.array([scores(rng.permutation(n)).max() for _ in range(SHUFFLES)])
    return CosetAgreement(
        agreement=float(observed[best]),
        conjugate=names[best][0],
        side=names[best][1],
        neighbours=k,
        chance=k / (n - 1),
        shuffled=float(shuffled.mean()),
        shuffled_p95=float(np.quantile(shuffled, 0.95)),
        labels=tuple(int(c) for c in labels[best]),
    )


def latest_checkpoint(study: Study, trial: pd.Series) -> Path:
    """The trial's newest checkpoint file; trial_dir may point where the study used to be."""

    recorded = Path(str(trial["trial_dir"]))
    for folder in (recorded, study.path / recorded.name):
        found = sorted(folder.glob(f"checkpoint_*/{STATE_FILE}"))
        if found:
            return found[-1]
    raise AnalysisError(f"trial {trial[TRIAL_ID]}: no checkpoint_*/{STATE_FILE} under {recorded}")


def default_trial(study: Study) -> str:
    """The best validation accuracy, then the fastest to generalize, with a checkpoint."""
    ranked = study.trials[study.trials["trial_dir"].notna()].sort_values(
        ["best_val_acc", m.STEPS_TO_GENERALIZE, TRIAL_ID],
        ascending=[False, True, True],
        na_position="last",
    )
    if ranked.empty:
        raise AnalysisError(f"{study.path}: no trial with a trial_dir")
    return str(ranked[TRIAL_ID].iloc[0])


def load_head(path: Path, member: int = 0) -> tuple[np.ndarray, dict, int]:
    """(head.weight as an array, the run's config, the checkpoint's step) of the checkpoint's
    member ``member`` (a packed trial's checkpoint holds its whole population)."""
    import torch  # only here: the rest of analysis/ reads Parquet

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        # a population's checkpoint (grok_tune/population.py): each member's model weights
        head = state["models"][member][HEAD]
        return head.float().numpy(), state["configs"][member], int(state["step"])
    except Exception:  # torch raises many kinds for a file that is not ours
        raise AnalysisError(f"{path}: not a grok_tune checkpoint (it cannot be read)") from None


def trial_head(study: Study, trial: pd.Series) -> tuple[np.ndarray, dict, int]:
    """``load_head`` of the trial's newest checkpoint, for its member of a packed trial."""
    member = trial.get(MEMBER)
    return load_head(latest_checkpoint(study, trial), 0 if pd.isna(member) else int(member))


def embed_2d(weights: np.ndarray, perplexity: float | None) -> np.ndarray:
    n = len(weights)
    # sklearn needs perplexity < points; a third of them keeps tiny tables (p = 5) meaningful
    perplexity = perplexity if perplexity is not None else min(30.0, max(1.0, (n - 1) / 3))
    if not 0 < perplexity < n:
        raise AnalysisError(f"--perplexity {perplexity:g}: must be in (0, {n}), the points drawn")
    # exact: a few hundred points at most, and Barnes-Hut's OpenMP threads took 40 s for 59 of
    # them on a 2-core machine where exact takes 0.3 s
    tsne = TSNE(2, perplexity=perplexity, init="pca", method="exact", random_state=0)
    return tsne.fit_transform(weights)


def nearest_step(weights: np.ndarray) -> int:
    """The d (1 <= d <= p/2) whose pairs (c, c+d) have the most similar rows on average.

    A grokked Z_p network lays residues out along a few key frequencies; stepping by d walks
    its rings (the paper's 8 was that step for its network, not for every one).
    """
    p = len(weights)
    unit = weights / np.maximum(np.linalg.norm(weights, axis=1, keepdims=True), 1e-12)
    similarity = [
        (unit * np.roll(unit, -d, axis=0)).sum(axis=1).mean() for d in range(1, p // 2 + 1)
    ]
    return 1 + int(np.argmax(similarity)) if similarity else 1


def _draw_zp(ax: Axes, xy: np.ndarray, mod: int) -> str:
    p = len(xy)
    cmap = colormaps["tab10" if mod <= 10 else "tab20"]
    for c in range(p):
        d = (c + mod) % p
        ax.plot(*zip(xy[c], xy[d], strict=True), color="grey", alpha=0.3, linewidth=0.7, zorder=1)
    residues = np.arange(p) % mod
    ax.scatter(xy[:, 0], xy[:, 1], c=[cmap(r % cmap.N) for r in residues], s=60, zorder=2)
    for c, (x, y) in enumerate(xy):
        ax.annotate(str(c), (x, y), fontsize=7, ha="center", va="center", zorder=3)
    return f"colour: residue mod {mod}; lines: c -> c+{mod}"


def _draw_s5(ax: Axes, xy: np.ndarray, fit: CosetAgreement) -> str:
    # coloured by the labelling the score names: clusters that are cosets of a conjugate of H
    # (the paper's "or its conjugates") show as one colour each
    cosets = np.array(fit.labels)
    cmap = colormaps["tab20"]
    for k in range(cosets.max() + 1):
        mine = cosets == k
        ax.scatter(xy[mine, 0], xy[mine, 1], color=cmap(k % cmap.N), s=40, label=str(k))
    title = "coset " + ("Hx" if fit.side == "right" else "xH")
    ax.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1), title=title)
    return f"colour: {fit.labelling}, H = <(0 3)(1 4), (1 2)(3 4)>"


def plot_embeddings(
    study: Study,
    trial_id: str | None = None,
    mod: int | str = DEFAULT_MOD,
    perplexity: float | None = None,
    out: Path | None = None,
) -> Drawn:
    trial_id = trial_id or default_trial(study)
    trials = study.trials.set_index(TRIAL_ID, drop=False)
    if trial_id not in trials.index:
        raise AnalysisError(f"unknown trial {trial_id!r}; allowed: {', '.join(trials.index)}")
    weights, config, step = trial_head(study, trials.loc[trial_id])
    xy = embed_2d(weights, perplexity)
    if not is_s5(config[OP]):
        mod = nearest_step(weights) if mod == AUTO else int(mod)
        if mod < 1:
            raise AnalysisError(f"--mod {mod}: must be at least 1")
    fig = new_figure(7.0, 6.0)
    ax = fig.add_subplot()
    caption = ""
    if is_s5(config[OP]):
        fit = coset_agreement(weights)
        caption = fit.describe()
        colours = f"{_draw_s5(ax, xy, fit)}\n{fit.describe(sep=chr(10))}"  # two lines: fits
    else:
        colours = _draw_zp(ax, xy, mod)
    ax.set_xticks([])
    ax.set_yticks([])
    task = config[OP] if is_s5(config[OP]) else f"{config[OP]} mod {config[MODULUS]}"
    ax.set_title(
        f"{study.name}: t-SNE of output-layer weights, trial {trial_id}, step {step:,}\n"
        f"{task}, frac={config[FRAC]:g}, final val acc {trials.loc[trial_id, m.VAL_ACC]:.3f}\n"
        f"{colours}",
        fontsize=9,
    )
    path = save(fig, figure_path(study, out, f"embeddings_{trial_id}.png"))
    if caption:
        print(f"Figure 3, trial {trial_id} (step {step:,}): {caption}")
    return Drawn(path, n_points=len(xy), caption=caption)


@dataclass(frozen=True)
class CosetFit:
    trial_id: str
    line: str  # the summary's line for it
    fit: CosetAgreement


def coset_fits(study: Study) -> list[CosetFit]:
    """The coset agreement of every S5 trial with a checkpoint (each member of a packed one):
    which runs show the paper's clusters, not only the one drawn. Empty for a study without
    S5."""
    trials = study.trials[study.trials[OP].map(lambda op: is_s5(str(op)))]
    out = []
    for _, trial in trials[trials["trial_dir"].notna()].sort_values(TRIAL_ID).iterrows():
        try:
            weights, config, step = trial_head(study, trial)
        except AnalysisError:
            continue  # a trial without a checkpoint yet: nothing to measure
        fit = coset_agreement(weights)
        line = (
            f"  {trial[TRIAL_ID]} {config[OP]} frac={config[FRAC]:g} step {step:,} "
            f"(val acc {trial[m.VAL_ACC]:.3f}): {fit.describe()}"
        )
        out.append(CosetFit(str(trial[TRIAL_ID]), line, fit))
    return out


def coset_lines(fits: Sequence[CosetFit]) -> list[str]:
    """The summary's lines for ``coset_fits``."""
    if not fits:
        return []
    return ["S5 coset check (Power et al.'s Figure 3; analysis/embeddings.py):"] + [
        f.line for f in fits
    ]


def _mod_arg(value: str) -> int | str:
    if value == AUTO:
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: an integer K or {AUTO!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser("analysis.embeddings", __doc__)
    parser.add_argument("--trial", metavar="ID", help="trial id (default: best val_acc)")
    parser.add_argument(
        "--mod",
        default=DEFAULT_MOD,
        metavar="K",
        type=_mod_arg,
        help=f"Z_p: colour by c mod K and join c to c+K (default {DEFAULT_MOD}); {AUTO}: the "
        "step whose pairs lie nearest in the weights",
    )
    parser.add_argument("--perplexity", type=float, help="t-SNE perplexity (< points)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def body(study: Study, args: argparse.Namespace) -> list[Path]:
        return [plot_embeddings(study, args.trial, args.mod, args.perplexity, args.out).path]

    return run_command(build_parser(), argv, body)


if __name__ == "__main__":
    raise SystemExit(main())
