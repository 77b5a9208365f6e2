"""The region rules at their boundaries, and every analysis on synthetic and on real studies."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from analysis import __main__ as analysis_all
from analysis import curves, embeddings, fraction_curve, importance, phase_map, summary
from analysis.common import (
    BUDGET,
    CONFIG_COLUMNS,
    FRAC,
    MODULUS,
    OP,
    SEED,
    AnalysisError,
    load_study,
    reclassify,
)
from grok_tune import metrics as m
from grok_tune import search
from grok_tune.regions import (
    REGION,
    Region,
    RegionRule,
    classify_trials,
    first_step_reaching,
)
from grok_tune.results import CURVES_SCHEMA, TRIALS_SCHEMA
from grok_tune.study_files import (
    CURVES_FILE,
    OPTUNA_FILE,
    STATE_FILE,
    STUDY_FILE,
    TRIAL_ID,
    TRIALS_FILE,
)
from grok_tune.tasks.tables import S5_ELEMENTS, compose
from grok_tune.train import TrainConfig

from .conftest import TINY_PARAMS

pytestmark = pytest.mark.usefixtures("ray_session")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


# --- hand-made trials and curves ---------------------------------------------------------------
EVAL_EVERY = 100


def curve(trial_id: str, mem: int | None, gen: int | None, budget: int) -> pd.DataFrame:
    """Accuracy that climbs linearly to 1 at the event step (stays at 0.5 if it never happens)."""
    steps = np.arange(0, budget + 1, EVAL_EVERY)

    def acc(event: int | None) -> np.ndarray:
        return np.full(len(steps), 0.5) if event is None else np.minimum(1.0, steps / event)

    return pd.DataFrame(
        {TRIAL_ID: trial_id, m.STEP: steps, m.TRAIN_ACC: acc(mem), m.VAL_ACC: acc(gen)}
    )


def trial_row(trial_id: str, mem: int | None, gen: int | None, **settings: Any) -> dict:
    status = settings.pop(m.STATUS, None) or (
        m.Status.GENERALIZED if gen is not None else m.Status.CENSORED
    )
    config = {**TrainConfig().model_dump(), BUDGET: 1000, **settings}
    return {
        TRIAL_ID: trial_id,
        **config,
        m.STATUS: str(status),
        m.STEPS_TO_MEMORIZE: mem,
        m.STEPS_TO_GENERALIZE: gen,
        "best_val_acc": 1.0 if gen is not None else 0.5,
        m.VAL_ACC: 1.0 if gen is not None else 0.5,
    }


def write_study(folder: Path, rows: list[dict], spec: dict | None = None) -> Path:
    """trials.parquet and curves.parquet (the real schemas) for hand-made trials."""
    folder.mkdir(parents=True, exist_ok=True)
    trials = pd.DataFrame(rows)
    curves_df = pd.concat(
        [
            curve(r[TRIAL_ID], r[m.STEPS_TO_MEMORIZE], r[m.STEPS_TO_GENERALIZE], r[BUDGET])
            for r in rows
        ],
        ignore_index=True,
    ).reindex(columns=CURVES_SCHEMA.names)
    trials = classify_trials(trials.reindex(columns=TRIALS_SCHEMA.names), curves_df)

    def table(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
        objects = df.astype(object).where(df.notna(), None)
        return pa.Table.from_pandas(objects, schema=schema, preserve_index=False)

    pq.write_table(table(trials, TRIALS_SCHEMA), folder / TRIALS_FILE)
    pq.write_table(table(curves_df, CURVES_SCHEMA), folder / CURVES_FILE)
    if spec:
        (folder / STUDY_FILE).write_text(yaml.safe_dump(spec))
    return folder


def events(region: Region) -> tuple[int | None, int | None]:
    return {
        Region.CONFUSION: (None, None),
        Region.MEMORIZE: (100, None),
        Region.GROK: (100, 800),
        Region.GENERALIZE: (200, 300),
    }[region]


# lr x weight decay x 3 seeds; every cell unanimous but one (2 grok, 1 memorize), one error
LRS, WDS, SEEDS = (1e-3, 1e-2, 1e-1), (0.0, 0.1, 1.0), (0, 1, 2)
GRID_REGIONS = {
    (1e-3, 0.0): Region.CONFUSION,
    (1e-3, 0.1): Region.CONFUSION,
    (1e-3, 1.0): Region.MEMORIZE,
    (1e-2, 0.0): Region.MEMORIZE,
    (1e-2, 0.1): Region.GROK,
    (1e-2, 1.0): Region.GENERALIZE,
    (1e-1, 0.0): Region.MEMORIZE,
    (1e-1, 0.1): Region.GROK,
    (1e-1, 1.0): Region.GENERALIZE,
}
MIXED = (1e-2, 0.1)


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory) -> Path:
    rows = []
    for i, (lr, wd, seed) in enumerate(itertools.product(LRS, WDS, SEEDS)):
        region = GRID_REGIONS[(lr, wd)]
        if (lr, wd) == MIXED and seed == 2:
            region = Region.MEMORIZE
        mem, gen = events(region)
        if region == Region.GROK:
            gen += 100 * seed  # medians to check: 800, 900
        rows.append(trial_row(f"t{i:03d}", mem, gen, lr=lr, weight_decay=wd, seed=seed))
    rows.append(trial_row("err", None, None, lr=1e-1, weight_decay=1.0, status=m.Status.ERROR))
    return write_study(tmp_path_factory.mktemp("synthetic") / "grid", rows)


# --- the region rules at their boundaries ------------------------------------------------------
def test_threshold_is_inclusive():
    steps = pd.Series([0, 100, 200])
    assert first_step_reaching(steps, pd.Series([0.5, 0.99, 1.0]), 0.99) == 100
    assert first_step_reaching(steps, pd.Series([0.5, 0.9899, 0.9899]), 0.99) is None


@pytest.mark.parametrize(
    ("rule", "mem", "gen", "region"),
    [
        (RegionRule(gap="ratio", min_ratio=3), 100, 300, Region.GENERALIZE),  # exactly 3x
        (RegionRule(gap="ratio", min_ratio=3), 100, 301, Region.GROK),
        (RegionRule(gap="steps", min_gap_steps=1000), 100, 1100, Region.GENERALIZE),  # exactly
        (RegionRule(gap="steps", min_gap_steps=1000), 100, 1101, Region.GROK),
        (RegionRule(), 500, 300, Region.GENERALIZE),  # validation first
        (RegionRule(), 300, 300, Region.GENERALIZE),
        (RegionRule(), None, 300, Region.GENERALIZE),
        (RegionRule(), 100, None, Region.MEMORIZE),  # censored stays censored
        (RegionRule(), None, None, Region.CONFUSION),
        (RegionRule(), 100, float("nan"), Region.MEMORIZE),
    ],
)
def test_gap_rule_boundaries(rule, mem, gen, region):
    assert rule.classify(mem, gen, diverged=False) == region


def test_diverged_error_and_censored_trials():
    rows = [
        trial_row("div", 100, 800, status=m.Status.DIVERGED),
        trial_row("err", None, None, status=m.Status.ERROR),
        trial_row("cens", 100, None),
    ]
    trials = pd.DataFrame(rows)
    regions = classify_trials(trials).set_index(TRIAL_ID)[REGION]
    assert regions["div"] == Region.DIVERGED
    assert pd.isna(regions["err"])
    assert regions["cens"] == Region.MEMORIZE


def test_threshold_0_9_is_rederived_from_the_curves():
    # recorded at 0.99: memorized at 1000, generalized at 2000 (ratio 2: generalize)
    trials = pd.DataFrame([trial_row("a", 1000, 2000, steps=3000)])
    steps = np.arange(0, 3001, 100)
    curves_df = pd.DataFrame(
        {
            TRIAL_ID: "a",
            m.STEP: steps,
            # train crosses 0.9 at 200, validation at 1500: ratio 7.5 -> grok at 0.9
            m.TRAIN_ACC: np.where(steps >= 200, 0.95, 0.5) + np.where(steps >= 1000, 0.045, 0),
            m.VAL_ACC: np.where(steps >= 1500, 0.92, 0.1) + np.where(steps >= 2000, 0.075, 0),
        }
    )
    assert classify_trials(trials, curves_df)[REGION].iloc[0] == Region.GENERALIZE
    again = reclassify(trials, curves_df, RegionRule(threshold=0.9))
    assert again[REGION].iloc[0] == Region.GROK
    assert again[m.STEPS_TO_MEMORIZE].iloc[0] == 200
    assert again[m.STEPS_TO_GENERALIZE].iloc[0] == 1500
    # a stricter threshold than the run ever reached leaves it censored, never at its budget
    strict = reclassify(trials, curves_df, RegionRule(threshold=0.999))
    assert pd.isna(strict[m.STEPS_TO_MEMORIZE].iloc[0])
    assert strict[REGION].iloc[0] == Region.CONFUSION


def test_special_settings_are_train_config_fields():
    assert {SEED, FRAC, OP, MODULUS, BUDGET} <= set(CONFIG_COLUMNS)


# --- phase map ---------------------------------------------------------------------------------
def test_phase_map_cells_majority_and_medians(grid_dir):
    study = load_study(grid_dir)
    assert phase_map.default_axes(study) == ("lr", "weight_decay")  # seeds are repeats
    table = phase_map.cells(study, "lr", "weight_decay")
    assert len(table) == 9
    mixed = table[MIXED]
    assert (mixed.region, mixed.agree, mixed.n) == (Region.GROK, 2, 3)
    assert mixed.median_steps == 850  # of the two that generalized: 800 and 900
    assert table[(1e-3, 0.0)].median_steps is None  # "cens."
    assert table[(1e-1, 1.0)].n == 3  # the errored trial does not vote
    drawn = phase_map.plot_phase_map(study)
    assert_png(drawn.path)
    assert drawn.path.parent == grid_dir / "figures"
    assert (drawn.n_cells, drawn.n_points) == (9, 0)


def test_phase_map_scatter_for_sampled_points(grid_dir, tmp_path):
    study = load_study(grid_dir)
    drawn = phase_map.plot_phase_map(study, "lr", "weight_decay", scatter=True, out=tmp_path)
    assert_png(drawn.path)
    assert (drawn.n_cells, drawn.n_points) == (0, 27)
    rng = np.random.default_rng(0)
    rows = [
        trial_row(f"r{i}", *events(region), lr=float(lr), frac=float(frac))
        for i, (lr, frac, region) in enumerate(
            zip(
                10 ** rng.uniform(-4, -1, 12),
                rng.uniform(0.2, 0.8, 12),
                itertools.cycle([Region.MEMORIZE, Region.GROK, Region.GENERALIZE]),
                strict=False,
            )
        )
    ]
    sampled = load_study(write_study(tmp_path / "sampled", rows))
    drawn = phase_map.plot_phase_map(sampled, "lr", "frac")
    assert_png(drawn.path)
    assert (drawn.n_cells, drawn.n_points) == (0, 12)


def test_phase_map_follows_the_study_file(tmp_path):
    spec = {"name": "s", "mode": "optuna", "params": {"lr": {"loguniform": [1e-4, 1e-1]}}}
    rows = [trial_row(f"r{i}", 100, None, lr=lr) for i, lr in enumerate([1e-3, 1e-3, 1e-2] * 2)]
    study = load_study(write_study(tmp_path / "s", rows, spec))
    assert study.searched() == ["lr"] and not study.is_discrete("lr")
    drawn = phase_map.plot_phase_map(study)  # one axis, sampled: points on a line
    assert (drawn.n_cells, drawn.n_points) == (0, 6)


def test_region_options_reclassify(grid_dir, tmp_path, capsys):
    out = tmp_path / "figs"
    assert phase_map.main([str(grid_dir), "--gap", "steps", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "phase_map_lr_weight_decay.png")
    study = load_study(grid_dir, RegionRule(gap="steps"))
    # gaps of 700-800 steps are under Liu et al.'s 1000: no grok any more
    assert (study.trials[REGION] != Region.GROK).all()
    assert study.trials["region_rule"].iloc[0] == "acc>=0.99,gap>1000"


# --- bad input ----------------------------------------------------------------------------------
def test_missing_results_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        phase_map.main([str(tmp_path)])
    assert exit_.value.code == 2
    assert "no trials.parquet: run python -m grok_tune.search first" in capsys.readouterr().err
    with pytest.raises(AnalysisError, match=r"no trials\.parquet"):
        load_study(tmp_path / "nowhere")


def test_unknown_axis_lists_the_allowed_columns(grid_dir, capsys):
    with pytest.raises(SystemExit) as exit_:
        phase_map.main([str(grid_dir), "--x", "learning_rate", "--y", "weight_decay"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown column 'learning_rate'" in err and "allowed: preset, task, op, p, frac," in err
    with pytest.raises(AnalysisError, match="unknown trial 'nope'"):
        curves.plot_curves(load_study(grid_dir), ["nope"])


def test_bad_rule_option_exits_2(grid_dir, capsys):
    with pytest.raises(SystemExit) as exit_:
        summary.main([str(grid_dir), "--threshold", "1.5"])
    assert exit_.value.code == 2
    assert "threshold = 1.5" in capsys.readouterr().err


# --- fraction curve -----------------------------------------------------------------------------
def test_censored_median():
    med = fraction_curve.censored_median
    assert med(pd.Series([100.0, 200.0, np.nan])) == 200  # the censored one is the latest
    assert med(pd.Series([100.0, 300.0])) == 200
    assert np.isinf(med(pd.Series([100.0, np.nan])))  # half censored: beyond the budget
    assert np.isinf(med(pd.Series([np.nan])))


@pytest.fixture(scope="module")
def fraction_dir(tmp_path_factory) -> Path:
    # x-y: every fraction generalizes; x+y: 0.3 all censored, 0.5 two of three censored
    gen = {
        ("x-y", 0.3): [900, 1000, 800],
        ("x-y", 0.5): [500, 600, 700],
        ("x+y", 0.3): [None, None, None],
        ("x+y", 0.5): [400, None, None],
        ("x+y", 0.7): [250, 280, None],  # memorized at 100: generalize, not grok
    }
    rows = [
        trial_row(f"{op}-{frac}-{seed}", 100, g, op=op, frac=frac, seed=seed, p=23)
        for (op, frac), steps in gen.items()
        for seed, g in enumerate(steps)
    ]
    return write_study(tmp_path_factory.mktemp("fraction") / "fraction", rows)


def test_fraction_curve_table_and_censoring(fraction_dir, capsys):
    study = load_study(fraction_dir)
    table = fraction_curve.fraction_table(study).set_index([OP, FRAC])
    assert table.loc[("x-y", 0.3), fraction_curve.MEDIAN] == 900
    assert table.loc[("x+y", 0.7), fraction_curve.MEDIAN] == 280
    assert np.isinf(table.loc[("x+y", 0.3), fraction_curve.MEDIAN])
    assert np.isinf(table.loc[("x+y", 0.5), fraction_curve.MEDIAN])
    assert table.loc[("x+y", 0.5), fraction_curve.N_GENERALIZED] == 1
    assert (table[fraction_curve.N_TRIALS] == 3).all()
    assert fraction_curve.main([str(fraction_dir)]) == 0
    printed = capsys.readouterr().out
    assert "censored" in printed and "fraction_curve.png" in printed
    drawn = fraction_curve.plot_fraction_curve(study)
    assert_png(drawn.path)
    assert (drawn.n_lines, drawn.n_points, drawn.n_censored) == (2, 5, 2)


def test_fraction_curve_needs_fractions(grid_dir):
    with pytest.raises(AnalysisError, match="fraction does not vary"):
        fraction_curve.plot_fraction_curve(load_study(grid_dir))


# --- curves and summary -------------------------------------------------------------------------
def test_curves_one_per_cell_of_the_map(grid_dir):
    # every cell of the lr x weight-decay map, not one trial per region: 9 panels, each the
    # cell's first seed, titled by what tells the trials apart
    study = load_study(grid_dir)
    chosen, groups = curves.default_trials(study)
    picked = study.trials.set_index(TRIAL_ID).loc[chosen]
    assert groups == 9 and len(chosen) == 9
    assert sorted(zip(picked["lr"], picked["weight_decay"], strict=True)) == sorted(GRID_REGIONS)
    assert (picked["seed"] == 0).all()
    drawn = curves.plot_curves(study)
    assert_png(drawn.path)
    assert drawn.trials == tuple(chosen) and drawn.n_lines == 18


def test_summary_counts_fastest_grok_and_boundary(fraction_dir, grid_dir, tmp_path):
    text = summary.summarize(load_study(grid_dir))
    assert "confusion 6, memorize 10, grok 5, generalize 6, diverged 0, error 1" in text
    assert "fastest grok: trial t012" in text and "generalized at step 800" in text
    assert "does not vary the training fraction" in text
    study = load_study(fraction_dir)
    path = summary.write_summary(study, tmp_path)
    text = path.read_text()
    assert path == tmp_path / summary.SUMMARY_FILE
    # x+y: 0.3 and 0.5 memorize by majority, 0.7 generalizes
    assert (
        "op=x+y: largest fraction still 'memorize' 0.5, smallest that 'grok'/'generalize' 0.7"
        in text
    )
    assert "op=x-y: no 'memorize' at any fraction; smallest 'grok'/'generalize' 0.3" in text


# --- importance ---------------------------------------------------------------------------------
def optuna_study(folder: Path, n_trials: int) -> Path:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = [trial_row(f"o{i}", 100, 500) for i in range(max(n_trials, 1))]
    write_study(folder, rows)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / OPTUNA_FILE))
    )
    ot = optuna.create_study(
        study_name=folder.name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=0)
    )

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        dropout = trial.suggest_float("dropout", 0.0, 0.3)
        return 1000 * np.log10(lr) + dropout  # lr matters, dropout hardly

    ot.optimize(objective, n_trials=n_trials)
    return folder


def test_importance_from_the_journal(tmp_path):
    study = load_study(optuna_study(tmp_path / "tpe", 12))
    drawn = importance.plot_importance(study)
    assert_png(drawn.path)
    assert drawn.n_points == 2
    assert list(drawn.importances) == ["lr", "dropout"]


def test_importance_needs_an_optuna_study(grid_dir, tmp_path):
    with pytest.raises(AnalysisError, match="mode: optuna"):
        importance.plot_importance(load_study(grid_dir))
    with pytest.raises(AnalysisError, match="at least 2"):
        importance.plot_importance(load_study(optuna_study(tmp_path / "one", 1)))


# --- embeddings ---------------------------------------------------------------------------------
def test_s5_subgroup_and_right_cosets():
    group = embeddings.subgroup(embeddings.H_GENERATORS)
    assert len(group) == 10
    cosets = embeddings.right_cosets(group)
    assert sorted(np.bincount(cosets)) == [10] * 12
    index = {g: i for i, g in enumerate(S5_ELEMENTS)}
    for x in S5_ELEMENTS[:20]:
        assert {cosets[index[compose(h, x)]] for h in group} == {cosets[index[x]]}


def test_s5_embedding_from_a_checkpoint(tmp_path):
    import torch

    study_dir = tmp_path / "s5"
    trial_dir = study_dir / "trial_s5"
    write_study(study_dir, [trial_row("s5", 100, 500, op="S5:x*y", trial_dir=str(trial_dir))])
    (trial_dir / "checkpoint_000000").mkdir(parents=True)
    head = torch.randn(len(S5_ELEMENTS), 16)
    config = TrainConfig(op="S5:x*y").model_dump()
    torch.save(
        {"configs": [config], "models": [{embeddings.HEAD: head}], "step": 500},
        trial_dir / "checkpoint_000000" / STATE_FILE,
    )
    drawn = embeddings.plot_embeddings(load_study(study_dir))
    assert_png(drawn.path)
    assert drawn.n_points == len(S5_ELEMENTS)
    assert drawn.caption.startswith("coset agreement")  # printed with the figure


def test_conjugates_and_left_cosets_of_h():
    group = embeddings.subgroup(embeddings.H_GENERATORS)
    found = embeddings.conjugates(group)
    # H = <(0 3)(1 4), (1 2)(3 4)> is dihedral of order 10; its normalizer in S5 has order 20
    assert found[0] == group and len(found) == 120 // 20
    assert all(len(h) == 10 and tuple(range(5)) in h for h in found)
    left = embeddings.left_cosets(group)
    index = {g: i for i, g in enumerate(S5_ELEMENTS)}
    for x in S5_ELEMENTS[:20]:
        assert {left[index[compose(x, h)]] for h in group} == {left[index[x]]}
    assert left != embeddings.right_cosets(group)  # H is not normal: the two sides differ


def _clustered(labels: list[int], noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(labels) + 1, 16))
    return centres[labels] + noise * rng.normal(size=(len(labels), 16))


def test_coset_agreement_of_vectors_that_cluster_by_cosets_is_one():
    group = embeddings.subgroup(embeddings.H_GENERATORS)
    found = embeddings.coset_agreement(_clustered(embeddings.right_cosets(group), 0.05))
    assert (found.agreement, found.conjugate, found.side) == (1.0, 0, "right")
    assert found.neighbours == 9 and found.chance == pytest.approx(9 / 119)
    # a conjugate's left cosets are found as such
    third = embeddings.conjugates(group)[3]
    found = embeddings.coset_agreement(_clustered(embeddings.left_cosets(third), 0.05))
    assert (found.agreement, found.conjugate, found.side) == (1.0, 3, "left")
    assert found.shuffled < 0.15 and "coset agreement 1.00" in found.describe()
    # the figure colours by that labelling: each colour one left coset of the conjugate
    assert list(found.labels) == embeddings.left_cosets(third)
    assert found.labelling == "left cosets xH of conjugate 3 of H"


def test_the_summary_gives_every_s5_trials_coset_agreement(tmp_path):
    import torch

    study_dir = tmp_path / "s5"
    group = embeddings.subgroup(embeddings.H_GENERATORS)
    heads = {  # one trial whose rows cluster by H's right cosets, one at random
        "clustered": _clustered(embeddings.right_cosets(group), 0.05),
        "random": np.random.default_rng(5).normal(size=(len(S5_ELEMENTS), 16)),
    }
    rows = []
    for name, head in heads.items():
        trial_dir = study_dir / f"trial_{name}"
        # the random one generalized sooner: the default figure's trial
        gen = 400 if name == "random" else 500
        rows.append(trial_row(name, 100, gen, op="S5:x*y", trial_dir=str(trial_dir)))
        (trial_dir / "checkpoint_000000").mkdir(parents=True)
        torch.save(
            {
                "configs": [TrainConfig(op="S5:x*y").model_dump()],
                "models": [{embeddings.HEAD: torch.tensor(head, dtype=torch.float32)}],
                "step": 500,
            },
            trial_dir / "checkpoint_000000" / STATE_FILE,
        )
    write_study(study_dir, rows)
    paths = analysis_all.run_all(load_study(study_dir))
    # the default trial's figure, and the one of the run that clusters most by cosets
    assert paths["embeddings"].name == "embeddings_random.png"
    assert paths["embeddings (best coset agreement)"].name == "embeddings_clustered.png"
    text = (study_dir / "summary.txt").read_text()
    assert "S5 coset check" in text
    line = {n: next(x for x in text.splitlines() if f"  {n} S5:x*y" in x) for n in heads}
    assert "coset agreement 1.00 (right cosets Hx of H)" in line["clustered"]
    assert "coset agreement 0.0" in line["random"] or "coset agreement 0.1" in line["random"]


def test_coset_agreement_of_random_vectors_is_near_the_baseline():
    rows = np.random.default_rng(5).normal(size=(len(S5_ELEMENTS), 16))
    found = embeddings.coset_agreement(rows)
    # the best of 12 labellings on random rows: a little above one labelling's 9/119
    assert found.chance < found.shuffled < 0.12
    assert found.agreement <= found.shuffled_p95 + 0.02
    with pytest.raises(AnalysisError, match="120"):
        embeddings.coset_agreement(rows[:100])


def test_perplexity_must_be_below_the_points():
    with pytest.raises(AnalysisError, match="perplexity"):
        embeddings.embed_2d(np.zeros((5, 3)), 5.0)
    assert embeddings.embed_2d(np.random.default_rng(0).normal(size=(5, 3)), None).shape == (5, 2)


# --- a real tiny study, end to end ---------------------------------------------------------------
TINY_STUDY = {
    "name": "tiny",
    "mode": "grid",
    "max_concurrent": 2,
    "checkpoint_every": 400,
    "params": {
        **TINY_PARAMS,
        "steps": 800,
        "frac": {"grid": [0.3, 0.7]},
        "weight_decay": {"grid": [0.0, 1.0]},
    },
}


@pytest.fixture(scope="module")
def real_study(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("real")
    space = tmp / "tiny.yaml"
    space.write_text(yaml.safe_dump(TINY_STUDY))
    assert search.main(["--space", str(space), "--storage", str(tmp)]) == 0
    return tmp / "tiny"


def test_every_figure_of_a_real_study(real_study, capsys):
    assert analysis_all.main([str(real_study)]) == 0
    printed = capsys.readouterr().out
    figures = real_study / "figures"
    expected = [
        real_study / "summary.txt",
        figures / "phase_map_frac_weight_decay.png",
        figures / "curves.png",
        figures / "fraction_curve.png",
    ]
    for path in expected:
        assert str(path) in printed
    assert f"tensorboard --logdir {real_study}" in printed
    for path in expected[1:]:
        assert_png(path)
    assert len(list(figures.glob("embeddings_*.png"))) == 1
    assert "importance" not in printed  # a grid study has no Optuna journal


def test_real_study_counts(real_study):
    study = load_study(real_study)
    assert study.searched() == ["frac", "weight_decay"]
    assert phase_map.plot_phase_map(study).n_cells == 4
    assert phase_map.plot_phase_map(study, scatter=True).n_points == 4
    drawn = fraction_curve.plot_fraction_curve(study)
    assert (drawn.n_lines, drawn.n_points) == (2, 4)
    assert embeddings.plot_embeddings(study).n_points == TINY_PARAMS["p"]
    trials = study.trials
    assert trials[REGION].notna().all()
    # censored trials are never read as generalized at the budget
    censored = trials[trials[m.STATUS] == m.Status.CENSORED]
    assert censored[m.STEPS_TO_GENERALIZE].isna().all()


# --- every study shape (issue 17): variants, sampled axes beside the fraction --------------------
def test_a_variants_study_maps_over_its_variants(tmp_path, capsys):
    variants = [{}, {"grad_filter": "ema"}, {"loss": "stablemax"}]
    rows = []
    for i, (variant, seed) in enumerate(itertools.product(variants, (0, 1))):
        region = [Region.GROK, Region.GENERALIZE, Region.MEMORIZE][variants.index(variant)]
        rows.append(trial_row(f"v{i}", *events(region), seed=seed, **variant))
    spec = {"name": "variants", "mode": "grid", "params": {"seed": {"grid": [0, 1]}},
            "variants": variants}  # fmt: skip
    study = load_study(write_study(tmp_path / "variants", rows, spec))
    assert list(study.trials.sort_values(TRIAL_ID)["variant"]) == [
        "as is", "as is", "grad_filter=ema", "grad_filter=ema", "loss=stablemax", "loss=stablemax"
    ]  # fmt: skip
    assert phase_map.default_axes(study) == ("variant", None)
    drawn = phase_map.plot_phase_map(study)
    assert drawn.n_cells == 3 and drawn.path.name == "phase_map_variant.png"
    chosen, groups = curves.default_trials(study)
    assert groups == 3 and len(chosen) == 3  # one panel per variant


def test_a_sampled_axis_beside_the_fraction_takes_no_majority(tmp_path):
    # a random study over frac and weight decay: no majority over weight decays per fraction
    rows = [
        trial_row(f"r{i}", *events(region), frac=frac, weight_decay=wd)
        for i, (frac, wd, region) in enumerate(
            [(0.3, 0.13, Region.MEMORIZE), (0.3, 2.7, Region.GROK), (0.6, 0.2, Region.MEMORIZE),
             (0.6, 1.9, Region.GENERALIZE), (0.6, 0.01, Region.MEMORIZE)]
        )
    ]  # fmt: skip
    params = {"frac": {"choice": [0.3, 0.6]}, "weight_decay": {"loguniform": [0.01, 3]}}
    spec = {"name": "sampled", "mode": "random", "num_samples": 5, "params": params}
    text = summary.summarize(load_study(write_study(tmp_path / "s", rows, spec)))
    assert "no 'grok'/'generalize' at any fraction" not in text
    assert "the fraction varies together with weight_decay (sampled)" in text


def test_a_study_is_read_at_its_trials_own_threshold():
    # a preset's 0.9 (liu2022): its learners must not be relabelled at the default 0.99
    from grok_tune.regions import trials_rule

    trials = pd.DataFrame({"threshold": [0.9, 0.9, None]})
    assert trials_rule(trials).threshold == 0.9
    assert trials_rule(pd.DataFrame({"threshold": [0.9, 0.99]})).threshold == 0.99
    assert trials_rule(pd.DataFrame({"seed": [0]})).threshold == 0.99
