import textwrap

import pytest
import yaml

from grok_tune import search
from grok_tune.space import SpecError, load_spec

GOOD = {
    "name": "ok",
    "mode": "optuna",
    "params": {"op": "x+y", "p": 23, "lr": {"loguniform": [1e-4, 1e-2]}},
}


def write(tmp_path, data, name="study.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def with_params(**params):
    return {**GOOD, "params": {**GOOD["params"], **params}}


def test_shipped_study_files_are_valid():
    from pathlib import Path

    files = sorted(Path(__file__).parent.parent.glob("search_spaces/*.yaml"))
    assert {f.stem for f in files} >= {
        "default", "paper_fraction", "phase_lr_wd", "optuna_fastest_grok"
    }  # fmt: skip
    for f in files:
        assert load_spec(f).name == f.stem


@pytest.mark.parametrize(
    ("data", "messages"),
    [
        ({**GOOD, "colour": 1}, ["(top level): unknown key 'colour'; allowed: name,"]),
        (with_params(colour=1), ["params: unknown setting 'colour'; allowed: preset, task, op"]),
        ({**GOOD, "mode": "sweep"}, ["mode: Input should be 'grid', 'random', 'optuna' or"]),
        ({**GOOD, "num_samples": "many"}, ["num_samples: Input should be a valid integer"]),
        ({**GOOD, "num_samples": 0}, ["num_samples: Input should be greater than or equal to 1"]),
        (with_params(lr={"loguniform": [0, 1e-2]}), ["params.lr.loguniform", "lower bound > 0"]),
        (with_params(lr={"loguniform": [-1, 1e-2]}), ["lower bound > 0, got -1"]),
        (with_params(lr={"loguniform": [1e-2, 1e-3]}), ["empty or inverted: 0.01 is not below"]),
        (with_params(dropout={"uniform": [0.2, 0.2]}), ["params.dropout.uniform", "empty"]),
        (with_params(n_layers={"int": [3, 1]}), ["params.n_layers.int", "inverted"]),
        (with_params(d_model={"choice": []}), ["params.d_model.choice: List should have at"]),
        (with_params(lr={"logunifrom": [1e-4, 1e-2]}), ["params.lr: a setting is a value or"]),
        (
            with_params(frac={"uniform": [0.1, 1.5]}),
            ["params.frac.uniform[1] = 1.5: Input should be less than 1"],
        ),
        (with_params(frac=0), ["params.frac: Input should be greater than 0"]),
        (with_params(op="x**y"), ["params.op: Input should be 'x+y'"]),
        (with_params(op="x/y", p=8), ["p = 8 is not prime"]),
        (with_params(dropout={"uniform": ["a", 0.5]}), ["params.dropout.uniform.0"]),
        (with_params(frac={"grid": [0.3]}), ["grid needs mode: grid"]),
        ({**GOOD, "mode": "grid"}, ["mode grid needs at least one param given as {grid"]),
        ({**GOOD, "objective": {"metric": "speed"}}, ["objective.metric: Input should be"]),
        ({**GOOD, "name": "../x"}, ["name: '../x' cannot name a study folder"]),
        ([1, 2], ["a study file is a mapping"]),
        (  # every bad value named in one run: a fixed one and a grid's
            with_params(weight_decay=-1, frac={"uniform": [0.3, 1.2]}),
            ["params.weight_decay: Input should be greater", "params.frac.uniform[1] = 1.2"],
        ),
    ],
)
def test_malformed_study_is_refused_with_file_key_and_rule(tmp_path, data, messages):
    path = write(tmp_path, data)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    for message in messages:
        assert message in str(err.value)
    assert str(err.value).startswith(str(path))


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "name: x\nmode: grid\nparams: {frac: [0.3,\n")
    with pytest.raises(SpecError, match=r"(?s)not valid YAML.*line 4"):
        load_spec(path)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "none.yaml")


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_:
        search.main([str(a) for a in args])
    return exit_.value.code, capsys.readouterr().err


def test_cli_refuses_a_malformed_file_and_writes_nothing(tmp_path, capsys):
    bad = write(tmp_path, with_params(frac={"grid": [0.3, 1.2]}) | {"mode": "grid"})
    code, err = run_cli(capsys, "--space", bad, "--storage", tmp_path / "out")
    assert code == 2
    assert "params.frac.grid[1] = 1.2: Input should be less than 1" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--num-samples", "0", "--num-samples 0: Input should be greater than or equal to 1"),
        ("--cpus-per-trial", "-1", "--cpus-per-trial '-1': Input should be greater than 0"),
        ("--gpus-per-trial", "half", "--gpus-per-trial 'half': Input should be a valid number"),
        ("--max-concurrent", "0", "--max-concurrent 0: Input should be greater than or equal to"),
        ("--name", "a b", "--name: 'a b' cannot name a study folder"),
    ],
)
def test_cli_bad_values_name_the_setting(tmp_path, capsys, flag, value, message):
    good = write(tmp_path, GOOD)
    code, err = run_cli(capsys, "--space", good, "--storage", tmp_path / "out", flag, value)
    assert code == 2 and message in err
    assert not (tmp_path / "out").exists()


def test_resume_of_a_study_that_does_not_exist(tmp_path, capsys):
    code, err = run_cli(capsys, "--resume", "--name", "nope", "--storage", tmp_path)
    assert code == 2 and "no study 'nope'" in err


def test_docstring_example_is_valid(tmp_path):
    from grok_tune import space

    example = textwrap.dedent(space.__doc__.split("::")[1].split("Settings not")[0])
    spec = load_spec(write(tmp_path, example.replace("name: demo", "name: demo")))
    assert set(spec.distributions) == {"frac", "lr", "dropout", "d_model", "n_layers"}
