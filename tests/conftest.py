"""One local Ray for the whole test session (about 4 s to start), shared by every study test."""

import os

import pytest

# Tests exercise grok_tune on a private local cluster only
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


# A task that memorizes, then generalizes, in about 2 s on one core: lr 5e-3, as 1e-2 sits at
# the edge of stability here (train accuracy collapses and recovers) and its outcome then
# changes with the float rounding of the thread count
TINY_PARAMS = {
    "op": "x+y",
    "p": 23,
    "lr": 5e-3,
    "n_layers": 1,
    "d_model": 64,
    "d_mlp": 256,
    "eval_every": 50,
}
