"""The engine's runs, as recorded before it last changed (bench/reference_runs.py, at the
commit named in tests/data/reference_runs.json): every evaluation record and each member's final
weights, equal bit for bit. One per task, data regime, architecture and remedy seam; single runs
and populations on both paths. Under a second in all, one thread."""

import json
from pathlib import Path

import pytest

from bench.reference_runs import cases, run

RECORDED = json.loads((Path(__file__).parent / "data" / "reference_runs.json").read_text())


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the references were taken on one thread
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("name", "path"), cases(), ids=[f"{n}/{p}" for n, p in cases()])
def test_the_run_is_the_one_recorded(name, path):
    recorded = RECORDED["runs"][f"{name}/{path}"]
    now = run(name, path)
    assert now["weights"] == recorded["weights"]
    for member, (got, want) in enumerate(zip(now["records"], recorded["records"], strict=True)):
        assert len(got) == len(want), f"member {member}: {len(got)} evaluations, {len(want)}"
        for a, b in zip(got, want, strict=True):
            differ = {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
            assert not differ, f"member {member} at step {b.get('step')}: {differ}"
