"""Bad input, as a new user gives it: every case is refused before anything runs, with exit
status 2 and a message that names the offending key or value, no traceback, and nothing left
behind (no study directory, no run folder, no figures).

Each row is (id, command, study file contents or None, what the message must contain). The
commands run in-process on the test session's local Ray (2 CPUs, no GPU).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from grok_tune import data, search, train

from .conftest import TINY_PARAMS

pytestmark = pytest.mark.usefixtures("ray_session")

GOOD = {
    "name": "bad",
    "mode": "grid",
    "params": {**TINY_PARAMS, "steps": 100, "frac": 0.5, "seed": {"grid": [0, 1]}},
}


def study(**changes: Any) -> dict:
    """GOOD with top-level keys changed (None removes one)."""
    out = {**GOOD, **changes}
    return {k: v for k, v in out.items() if v is not None}


def params(**changes: Any) -> dict:
    """GOOD with settings changed (None removes one)."""
    merged = {**GOOD["params"], **changes}
    return {**GOOD, "params": {k: v for k, v in merged.items() if v is not None}}


# (id, extra search flags, study file contents (dict -> YAML, str/bytes as is), expected)
SEARCH_CASES: list[tuple[str, list[str], Any, list[str]]] = [
    # the file itself
    ("binary garbage", [], b"\x89PNG\r\n\x1a\n\x00\xff\xfe garbage", ["not a text file"]),
    ("empty file", [], "", ["the study file is empty"]),
    ("yaml syntax", [], "name: x\nmode: grid\nparams: {frac: [0.3,\n", ["not valid YAML", "line"]),
    ("a list", [], "[1, 2]", ["a study file is a mapping"]),
    ("params a list", [], study(params=[1, 2]), ["params"]),
    # keys
    ("unknown key", [], study(colour=1), ["unknown key 'colour'", "allowed: name,"]),
    ("misspelt key", [], study(num_sample=2), ["'num_sample'", "did you mean 'num_samples'"]),
    ("alias", [], params(learning_rate=1e-3), ["'learning_rate'", "did you mean 'lr'"]),
    ("misspelt setting", [], params(weigth_decay=1), ["did you mean 'weight_decay'"]),
    ("objective key", [], study(objective={"metrik": "x"}), ["objective", "'metrik'"]),
    ("mode", [], study(mode="sweep"), ["mode", "'grid', 'random', 'optuna' or 'boundary'"]),
    ("name pattern", [], study(name="../x"), ["'../x' cannot name a study folder"]),
    # types and values
    ("word for a number", [], params(p="seven"), ["params.p", "integer"]),
    ("fraction for an int", [], params(p=7.5), ["params.p", "fractional"]),
    ("word for a bool", [], params(layer_norm="maybe"), ["params.layer_norm", "boolean"]),
    ("number for a name", [], params(op=7), ["params.op"]),
    ("unknown op", [], params(op="x**y"), ["params.op", "'x+y'"]),
    ("fraction above 1", [], params(frac=1.5), ["params.frac", "less than 1"]),
    ("fraction 0", [], params(frac=0), ["params.frac", "greater than 0"]),
    ("p too large", [], params(p=100_000), ["params.p", "less than or equal to 1000"]),
    ("p not prime", [], params(op="x/y", p=8), ["p = 8 is not prime"]),
    ("heads", [], params(n_heads=3), ["d_model = 64 is not divisible by n_heads = 3"]),
    ("steps 0", [], params(steps=0), ["params.steps", "greater than 0"]),
    ("batch 0", [], params(batch_size=0), ["params.batch_size"]),
    ("infinite lr", [], params(lr=float("inf")), ["params.lr", "finite"]),
    ("nan in a range", [], params(lr={"uniform": [float("nan"), 1]}), ["params.lr.uniform"]),
    ("negative seed", [], study(seed=-1), ["seed", "greater than or equal to 0"]),
    # distributions
    ("grid of words", [], params(lr={"grid": ["abc"]}), ["params.lr.grid[0] = 'abc'"]),
    ("range beyond", [], params(frac={"uniform": [0.1, 1.5]}), ["params.frac.uniform[1] = 1.5"]),
    ("log range at 0", [], params(lr={"loguniform": [0, 1e-2]}), ["lower bound > 0, got 0"]),
    ("inverted", [], params(lr={"loguniform": [1e-2, 1e-3]}), ["0.01 is not below 0.001"]),
    ("inverted int", [], params(n_layers={"int": [3, 1]}), ["params.n_layers.int", "inverted"]),
    ("empty choice", [], params(d_model={"choice": []}), ["params.d_model.choice"]),
    ("word in a range", [], params(dropout={"uniform": ["a", 0.5]}), ["params.dropout.uniform"]),
    ("unknown kind", [], params(lr={"logunifrom": [1e-4, 1e-2]}), ["params.lr: a setting is"]),
    ("twice in a grid", [], params(lr={"grid": [1e-3, 0.001]}), ["params.lr.grid: 0.001 listed"]),
    ("grid with optuna", [], study(mode="optuna"), ["params.seed: grid needs mode: grid"]),
    ("grid of nothing", [], params(seed=0), ["mode grid needs at least one"]),
    ("optuna of nothing", [], {**params(seed=0), "mode": "optuna"}, ["needs at least one"]),
    ("objective", [], study(objective={"metric": "speed"}), ["objective.metric"]),
    # values that each pass alone but cannot run together
    ("no training data", [], params(p=3, frac={"grid": [0.01, 0.5]}), ["frac = 0.01 of 9"]),
    (
        "a grid combination",
        [],
        params(p={"grid": [3, 23]}, frac={"grid": [0.05, 0.5]}),
        ["the combination", "p = 3", "frac = 0.05"],
    ),
    # values whose meaning would change silently (issue 16)
    (
        "uniform for a whole number",
        [],
        params(steps={"uniform": [100, 150]}),
        ["params.steps.uniform: steps is a whole number", "{int: [lo, hi]}"],
    ),
    (
        "non-prime inside an int range",
        [],
        {**params(op="x/y", p={"int": [11, 13]}, seed=None), "mode": "random"},
        ["params.p.int: 12 (in [11, 13])", "not prime"],
    ),
    ("a boolean for steps", [], params(steps=True), ["params.steps", "reads as a boolean"]),
    (
        "yes for a number",
        [],
        "name: b\nmode: grid\nparams: {weight_decay: yes, seed: {grid: [0, 1]}}",
        ["params.weight_decay", "reads as a boolean, not a number"],
    ),
    (
        "a number for a boolean",
        [],
        params(layer_norm=0),
        ["params.layer_norm", "write true or false"],
    ),
    (
        "duplicate key",
        [],
        "name: b\nmode: grid\nname: c\nparams: {seed: {grid: [0, 1]}}",
        ["key 'name' given twice (lines 1 and 3)"],
    ),
    (
        "duplicate setting",
        [],
        "name: b\nmode: grid\nparams:\n  p: 7\n  p: 11\n  seed: {grid: [0, 1]}",
        ["key 'p' given twice (lines 4 and 5)"],
    ),
    (
        "1e400",
        [],
        "name: b\nmode: grid\nparams: {lr: 1e400, seed: {grid: [0, 1]}}",
        ["params.lr: Input should be a finite number"],
    ),
    (
        ".nan",
        [],
        "name: b\nmode: grid\nparams: {lr: .nan, seed: {grid: [0, 1]}}",
        ["params.lr: Input should be a finite number"],
    ),
    (
        ".inf in a grid",
        [],
        params(lr={"grid": [float("inf"), 1e-3]}),
        ["params.lr.grid[0] = inf: Input should be a finite number"],
    ),
    (
        "top-level seed in a grid",
        [],
        study(seed=3),
        ["seed: the sampler's seed", "mode grid would ignore it"],
    ),
    (
        "objective in a grid",
        [],
        study(objective={"metric": "val_acc", "mode": "max"}),
        ["objective: what the sampler optimizes", "used by mode optuna only"],
    ),
    (
        "bad region in same",
        [],
        study(mode="boundary", same=[["grok", "grokk"]]),
        ["'confusion', 'memorize'"],
    ),
    ("--storage ''", ["--storage", ""], GOOD, ["--storage '': empty"]),
    (
        "--members-per-trial on optuna",
        ["--members-per-trial", "2"],
        {**params(seed=None, lr={"loguniform": [1e-3, 1e-2]}), "mode": "optuna"},
        ["--members-per-trial: packs grid and random studies"],
    ),
    (
        "preset with another task",
        [],
        params(preset="nanda2023", task="addition", p=None, op=None),
        ["preset nanda2023 is set up for task table", "come from it"],
    ),
    # resources in the file
    ("cpus 0 in file", [], study(cpus_per_trial=0), ["cpus_per_trial", "greater than 0"]),
    ("gpus 1.5 in file", [], study(gpus_per_trial=1.5), ["gpus_per_trial", "1.5"]),
    # flags: named as flags, not blamed on the file
    ("--num-samples", ["--num-samples", "0"], GOOD, ["--num-samples 0: Input should be greater"]),
    ("--cpus-per-trial", ["--cpus-per-trial", "-1"], GOOD, ["--cpus-per-trial '-1'"]),
    ("--gpus-per-trial", ["--gpus-per-trial", "half"], GOOD, ["--gpus-per-trial 'half'"]),
    ("--max-concurrent", ["--max-concurrent", "0"], GOOD, ["--max-concurrent 0: Input"]),
    ("--name", ["--name", "a b"], GOOD, ["--name: 'a b' cannot name a study folder"]),
    ("--storage scheme", ["--storage", "foo://bar"], GOOD, ["--storage foo://bar"]),
    ("--address refused", ["--address", "127.0.0.1:1"], GOOD, ["--address 127.0.0.1:1"]),
    ("--address port", ["--address", "host:port"], GOOD, ["--address host:port", "host:port"]),
    # what the machine cannot give (local Ray: refused, not queued forever)
    ("--cpus-per-trial 64", ["--cpus-per-trial", "64"], GOOD, ["asks for 64 CPU", "gives Ray 2"]),
    ("--gpus-per-trial 1", ["--gpus-per-trial", "1"], GOOD, ["asks for 1 GPU", "has none"]),
    ("cpus in the file", [], study(cpus_per_trial=8), ["cpus_per_trial in", "asks for 8 CPU"]),
]


def run(main: Callable[[list[str]], int], argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return exit_.value.code, captured.err


def assert_refused(code: int, err: str, expected: list[str]) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, f"{text!r} not in: {err}"


def snapshot(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*")}


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry run"])
@pytest.mark.parametrize(
    ("flags", "contents", "expected"),
    [case[1:] for case in SEARCH_CASES],
    ids=[case[0] for case in SEARCH_CASES],
)
def test_search_refuses_bad_input(tmp_path, capsys, flags, contents, expected, dry_run):
    # the dry run checks what the real run checks (issue 16: it passed 64 CPUs per trial)
    flags = [*flags, "--dry-run"] if dry_run else flags
    space = tmp_path / "bad.yaml"
    if isinstance(contents, bytes):
        space.write_bytes(contents)
    else:
        space.write_text(contents if isinstance(contents, str) else yaml.safe_dump(contents))
    before = snapshot(tmp_path)
    argv = ["--space", space, "--storage", tmp_path / "store", *flags]
    code, err = run(search.main, argv, capsys)
    assert_refused(code, err, expected)
    assert snapshot(tmp_path) == before  # no study directory, no storage folder, nothing


def test_search_refuses_storage_that_is_a_file(tmp_path, capsys):
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump(GOOD))
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    for storage, expected in ((blocker, "is a file"), (blocker / "sub", "lies under the file")):
        code, err = run(search.main, ["--space", space, "--storage", storage], capsys)
        assert_refused(code, err, [f"--storage {storage}", expected])
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--space", "missing.yaml"], ["missing.yaml: cannot read the study file"]),
        (["--space", "."], ["is a folder, not a study file"]),
        ([], ["--space FILE is required"]),
        (["--resume", "--name", "nope"], ["--resume: no study 'nope'"]),
        (["--resume"], ["--resume needs --name"]),
    ],
    ids=["missing file", "a folder", "no file", "resume nothing", "resume no name"],
)
def test_search_refuses_missing_things(tmp_path, capsys, monkeypatch, argv, expected):
    monkeypatch.chdir(tmp_path)
    code, err = run(search.main, [*argv, "--storage", tmp_path / "store"], capsys)
    assert_refused(code, err, expected)
    assert not (tmp_path / "store").exists()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    space = tmp_path / "plan.yaml"
    plan = params(frac={"grid": [0.5, 0.7]}, lr={"grid": [1e-3, 3e-3]}, seed=None)
    space.write_text(yaml.safe_dump({**plan, "num_samples": 2}))
    store = tmp_path / "store"
    assert search.main(["--space", str(space), "--storage", str(store), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "study bad (grid): 8 trials" in out
    assert "frac=0.5, lr=0.001" in out and "frac=0.7, lr=0.003" in out
    assert "x 2 repeats" in out and "1 CPU per trial" in out
    assert f"study directory: {store / 'bad'} (new)" in out
    assert not store.exists()


def test_numbers_written_as_yaml_1_2_and_quoted_numbers_are_numbers(tmp_path):
    from grok_tune.space import load_spec

    space = tmp_path / "n.yaml"
    space.write_text(
        "name: n\nmode: grid\nparams:\n  lr: {grid: [1e-3, 3E-2, '1e-4']}\n  p: '23'\n"
        "  weight_decay: 1e0\n  steps: 1e3\n"
    )
    spec = load_spec(space)
    assert spec.params["lr"].grid == [0.001, 0.03, 0.0001]
    assert all(type(v) is float for v in spec.params["lr"].grid)
    assert spec.fixed == {"p": 23, "weight_decay": 1.0, "steps": 1000}
    assert type(spec.fixed["p"]) is int and type(spec.fixed["steps"]) is int
    # a whole number in exponent form, quoted or given as a flag, is that whole number
    space.write_text("name: n\nmode: grid\nparams: {steps: '1e5', seed: {grid: ['1e0', 2]}}\n")
    assert load_spec(space).fixed == {"steps": 100_000}
    assert load_spec(space).params["seed"].grid == [1, 2]
    parser = train.build_parser()
    args = parser.parse_args(["--steps", "1e2", "--out", str(tmp_path / "run")])
    assert train.parse_config(parser, args).steps == 100


# --- python -m grok_tune.train -------------------------------------------------------------------
TRAIN_CASES: list[tuple[str, list[str], list[str]]] = [
    ("--threads 0", ["--threads", "0"], ["--threads", "must be at least 1"]),
    ("--checkpoint-every 0", ["--checkpoint-every", "0"], ["--checkpoint-every", "at least 1"]),
    ("--checkpoint-every x", ["--checkpoint-every", "x"], ["'x' is not a whole number"]),
    ("--device tpu", ["--device", "tpu"], ["--device tpu"]),
    ("--frac", ["--frac", "1.5"], ["--frac: Input should be less than 1"]),
    ("--op", ["--op", "x**y"], ["--op: Input should be"]),
    ("--lr inf", ["--lr", "inf"], ["--lr: Input should be a finite number"]),
    ("--steps", ["--steps", "ten"], ["--steps: Input should be a valid integer"]),
    ("no data", ["--op", "x+y", "--p", "3", "--frac", "0.01"], ["frac = 0.01 of 9 equations"]),
    ("--colour", ["--colour", "red"], ["unrecognized arguments: --colour"]),
    ("--learning-rate", ["--learning-rate", "1e-3"], ["--learning-rate: did you mean --lr?"]),
    ("--wieght-decay=", ["--wieght-decay=1"], ["--wieght-decay: did you mean --weight-decay?"]),
]


@pytest.mark.parametrize(
    ("flags", "expected"), [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES]
)
def test_train_refuses_bad_input(tmp_path, capsys, flags, expected):
    code, err = run(train.main, [*flags, "--out", tmp_path / "run"], capsys)
    assert_refused(code, err, expected)
    assert not (tmp_path / "run").exists()


def test_train_refuses_cuda_without_a_gpu(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, err = run(train.main, ["--device", "cuda", "--out", tmp_path / "run"], capsys)
    assert_refused(code, err, ["--device cuda: torch sees no CUDA device"])
    assert not (tmp_path / "run").exists()


def test_train_refuses_out_that_is_a_file_or_holds_a_run(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, err = run(train.main, ["--out", a_file], capsys)
    assert_refused(code, err, [f"--out {a_file}: is a file"])
    full = tmp_path / "full"
    full.mkdir()
    (full / "outcome.json").write_text("{}")
    code, err = run(train.main, ["--out", full], capsys)
    assert_refused(code, err, [f"--out {full}: not empty", "--resume"])
    assert [p.name for p in full.iterdir()] == ["outcome.json"]
    code, err = run(train.main, ["--resume", "--out", tmp_path / "none"], capsys)
    assert_refused(code, err, ["--resume: no run to resume", "config.json"])


def test_train_resume_never_overwrites_a_finished_run(tmp_path, capsys):
    tiny = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_PARAMS.items()]
    run_dir = tmp_path / "run"
    assert train.main([*tiny, "--steps", "50", "--out", str(run_dir), "--threads", "1"]) == 0
    capsys.readouterr()
    (run_dir / "checkpoint.pt").unlink()
    before = snapshot(run_dir)
    code, err = run(train.main, ["--resume", "--out", run_dir], capsys)
    assert_refused(code, err, ["holds a finished run (outcome.json)", "nothing to resume"])
    assert snapshot(run_dir) == before


def test_train_resume_refuses_a_garbage_checkpoint_without_unsafe_advice(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"op": "x+y", "p": 23}))
    (run_dir / "checkpoint.pt").write_bytes(b"\x80\x04garbage" * 50)
    before = snapshot(run_dir)
    code, err = run(train.main, ["--resume", "--out", run_dir], capsys)
    assert_refused(code, err, ["checkpoint.pt is not a grok_tune checkpoint"])
    assert "weights_only" not in err
    assert snapshot(run_dir) == before


def test_train_resume_names_the_settings_that_differ(tmp_path, capsys):
    tiny = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_PARAMS.items()]
    run_dir = tmp_path / "run"
    assert train.main([*tiny, "--steps", "50", "--out", str(run_dir), "--threads", "1"]) == 0
    capsys.readouterr()
    code, err = run(train.main, ["--resume", "--out", run_dir, "--lr", "0.02"], capsys)
    assert_refused(code, err, ["different configuration", "lr 0.005 there, 0.02 here"])


# --- python -m grok_tune.data and python -m analysis ---------------------------------------------
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--op", "x**y"], ["--op: Input should be 'x+y'"]),
        (["--op", "x+y", "--p", "100000"], ["--p: Input should be less than or equal to 1000"]),
        (["--op", "x+y", "--frac", "0"], ["--frac: Input should be greater than 0"]),
        (["--op", "x+y", "--p", "abc"], ["--p: Input should be a valid integer"]),
        (["--op", "x+y", "--seed", "-1"], ["--seed: Input should be greater than or equal to 0"]),
        (["--task", "addition", "--frac", "0.3"], ["frac: a setting of task table"]),
        (["--task", "addition", "--digits", "1", "--train-size", "95"], ["exceeds the 100"]),
        (["--task", "addition", "--format", "table"], ["--format table: only operation"]),
        (["--task", "sudoku"], ["--task: Input should be 'table'"]),
    ],
    ids=["op", "p", "frac", "p word", "seed", "foreign", "too small", "format", "task"],
)
def test_data_refuses_bad_input(capsys, argv, expected):
    code, err = run(data.main, argv, capsys)
    assert_refused(code, err, expected)


def test_analysis_refuses_damaged_and_foreign_results(tmp_path, capsys):
    import pandas as pd

    from analysis.__main__ import main as analyse

    code, err = run(analyse, [tmp_path / "nothing"], capsys)
    assert_refused(code, err, ["no trials.parquet", "no such directory"])
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "trials.parquet").write_bytes(b"PAR1 this is not parquet")
    code, err = run(analyse, [corrupt], capsys)
    assert_refused(code, err, ["trials.parquet: not a readable Parquet file"])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    pd.DataFrame({"a": [1, 2]}).to_parquet(foreign / "trials.parquet")
    code, err = run(analyse, [foreign], capsys)
    assert_refused(code, err, ["not a grok_tune trials table", "trial_id"])
    code, err = run(analyse, [foreign, "--threshold", "2"], capsys)
    assert_refused(code, err, ["threshold = 2.0"])
    for folder in (corrupt, foreign):
        assert not (folder / "figures").exists()
