"""A study on a two-node Ray cluster on this machine; run by tests/test_cluster.py as a script.

    python tests/multinode_study.py SPACE STORAGE [--kill-worker]

Starts a head and a worker node (``ray.cluster_utils.Cluster``, one CPU each), runs the study
against them with ``--address``, optionally kills the worker's raylet and processes once a trial
on it has a checkpoint, and always tears the nodes down. Prints one JSON line: node ids, whether
the worker was killed, the study's exit code.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

from ray.cluster_utils import Cluster


def trial_with_checkpoint_on(node_id: str, study: Path) -> bool:
    for trial_dir in study.glob("t[0-9]*"):  # grok_tune/naming.py
        result = trial_dir / "result.json"
        if list(trial_dir.glob("checkpoint_*")) and result.exists():
            last = _last_record(result.read_text())
            if last and last.get("node_id") == node_id and not last.get("done_training"):
                return True
    return False


def _last_record(text: str) -> dict | None:
    """The last whole line of a result.json that Tune may be writing: a half-flushed last
    line would raise in the watcher's thread, and the worker would never be killed."""
    for line in reversed(text.splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("space")
    parser.add_argument("storage")
    parser.add_argument("--kill-worker", action="store_true")
    args = parser.parse_args()

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    killed = threading.Event()
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        head_id, worker_id = cluster.head_node.node_id, worker.node_id
        study = Path(args.storage) / Path(args.space).stem

        def kill_when_busy() -> None:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if trial_with_checkpoint_on(worker_id, study):
                    cluster.remove_node(worker, allow_graceful=False)
                    killed.set()
                    return
                time.sleep(0.05)

        if args.kill_worker:
            threading.Thread(target=kill_when_busy, daemon=True).start()

        from grok_tune import search

        code = search.main(
            ["--space", args.space, "--storage", args.storage, "--address", cluster.address]
        )
        print(json.dumps({"head": head_id, "worker": worker_id, "killed": killed.is_set(),
                          "exit": code}))  # fmt: skip
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
