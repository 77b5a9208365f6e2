"""Where a study runs: local Ray of its own, or a cluster at an address; what a trial may ask.

Without an address a study always starts a Ray of its own (``address="local"``): a bare
``ray.init()`` would join any Ray already running on the machine. An address is checked with a
plain TCP look first, and Ray's own connection gets a watchdog: Ray retries a dead address for
minutes, deaf to SIGTERM.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from typing import Any

from grok_tune.space import StudySpec
from grok_tune.study.errors import Refused

AUTOSCALE_CONCURRENCY = 8

# An unreachable cluster address must fail fast: Ray's own connection retries take minutes.
CONNECT_TIMEOUT_S = 15.0

TCP_TIMEOUT_S = 10.0

RAY_DEFAULT_PORT = 6379

# on a cluster: how often to say that trials still wait for a node (the tests shorten it)
WAIT_NOTICE_S = float(os.environ.get("GROK_TUNE_WAIT_NOTICE_S", "30"))


def _address_host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a cluster address, or None for 'auto' (Ray finds it itself)."""
    if address == "auto":
        return None
    bare = address.split("://", 1)[-1].rstrip("/")
    host, _, port = bare.rpartition(":")
    if not host:
        return bare, RAY_DEFAULT_PORT
    if not port.isdigit():
        raise Refused(f"--address {address}: not host:port (or 'auto')")
    return host.strip("[]"), int(port)


def check_address(address: str | None) -> None:
    """Refuse a cluster address that is malformed or where nothing answers."""
    host_port = None if address is None else _address_host_port(address)
    if host_port:
        try:  # Ray retries a dead address for minutes, deaf to SIGTERM: a plain TCP look first
            socket.create_connection(host_port, timeout=TCP_TIMEOUT_S).close()
        except OSError as err:
            reason = "timed out" if isinstance(err, TimeoutError) else err.strerror or str(err)
            raise Refused(f"--address {address}: no Ray cluster answers there ({reason})") from None


def start_ray(address: str | None) -> None:
    """Start local Ray, or join the cluster at ``address`` within about CONNECT_TIMEOUT_S."""
    import ray

    check_address(address)
    if ray.is_initialized():  # a caller's session (the tests'): use it
        return
    # trials' own output repeats what the progress table shows; errors reach Tune regardless
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address is None:
        # "local" starts a Ray of the study's own: a bare ray.init() would join any cluster
        # already running on the machine (someone else's, another test's)
        ray.init(address="local", **options)
        return

    def give_up() -> None:
        sys.stderr.write(
            f"python -m grok_tune.search: error: --address {address}: no answer from a Ray "
            f"cluster within {CONNECT_TIMEOUT_S:.0f} s\n"
        )
        sys.stderr.flush()
        os._exit(2)  # ray.init blocks in native code: nothing else can stop it

    watchdog = threading.Timer(CONNECT_TIMEOUT_S, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        ray.init(address=address, **options)
    except ConnectionError as err:
        raise Refused(f"--address {address}: {str(err).splitlines()[0]}") from None
    finally:
        watchdog.cancel()


def resources_text(spec: StudySpec) -> str:
    gpus = f", {spec.gpus_per_trial:g} GPU" if spec.gpus_per_trial else ""
    return f"{spec.cpus_per_trial:g} CPU{gpus} per trial"


def machine_resources() -> dict[str, float]:
    """The CPUs and GPUs local Ray would find on this machine, without starting it (the dry
    run checks what the real run will). Ray's own detection, a private API: Ray is pinned."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource
        from ray._private.utils import get_num_cpus

        gpus = get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
        return {"CPU": float(get_num_cpus()), "GPU": float(gpus)}
    except (ImportError, AttributeError):  # another Ray: the machine's count, no GPU known
        return {"CPU": float(local_cpus()), "GPU": 0.0}


def check_local_resources(
    spec: StudySpec, sources: dict[str, str], have: dict[str, float] | None = None
) -> None:
    """On local Ray a trial that the machine cannot hold would wait forever: refuse it.
    ``have``: what the machine offers (default: what the running local Ray has)."""
    import ray

    have = have if have is not None else ray.cluster_resources()
    for key, unit in (("cpus_per_trial", "CPU"), ("gpus_per_trial", "GPU")):
        asked, present = getattr(spec, key), have.get(unit, 0.0)
        if asked > present and not present:
            raise Refused(
                f"{sources[key]}: each trial asks for {asked:g} {unit}; this machine has none "
                f"for Ray (local Ray). Ask for 0, or run on a cluster that has them (--address)"
            )
        if asked > present:
            raise Refused(
                f"{sources[key]}: each trial asks for {asked:g} {unit}; this machine gives Ray "
                f"{present:g} (local Ray). Ask for at most {present:g}, or run on a cluster "
                "that has them (--address)"
            )


def local_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def trial_concurrency(spec: StudySpec) -> int:
    """Trials at once: what fits the cluster now, or what may fit one that scales up."""
    import ray

    if spec.max_concurrent:
        return spec.max_concurrent
    resources = ray.cluster_resources()
    slots = int(resources.get("CPU", 0) // spec.cpus_per_trial)
    if spec.gpus_per_trial:
        slots = min(slots, int(resources.get("GPU", 0) // spec.gpus_per_trial))
    if slots == 0:
        # nothing fits yet: an autoscaling cluster adds nodes for trials that wait, so let some
        # wait (--max-concurrent sets the number)
        print(f"no node fits a trial yet: queueing {AUTOSCALE_CONCURRENCY} (set --max-concurrent)")
        return AUTOSCALE_CONCURRENCY
    return slots
