"""``python -m grok_tune.search``: a study of grokking trials on Ray Tune.

    python -m grok_tune.search --space search_spaces/default.yaml [--name NAME]
        [--storage DIR_OR_URI] [--num-samples N] [--max-concurrent N] [--cpus-per-trial C]
        [--gpus-per-trial G] [--address ADDR] [--resume] [--dry-run]

The study directory STORAGE/NAME holds the study file, Ray Tune's experiment state, the Optuna
journal, every trial's checkpoints and TensorBoard files, trials.parquet and curves.parquet
(grok_tune/layout.py). Everything that can be checked is checked before Ray starts: the study
file and the flags, every point the study can produce, the storage location, the cluster's
address; on local Ray, whether the machine can hold one trial at all. ``--dry-run`` stops there
and prints what the study would run.

Exit status: 0 when every trial ran to its end, 1 when the study ended with failed trials
(recorded with status 'error' and their message), 2 for input it refused (nothing was
written), 130 when Ctrl-C interrupted it and 143 when SIGTERM did (it says how to
``--resume``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from grok_tune import metrics as m
from grok_tune import study_state
from grok_tune.cli import Parser
from grok_tune.config import PACK, VARIANT, strict_value
from grok_tune.layout import (
    DEFAULT_STORAGE,
    OPTUNA_FILE,
    STUDY_FILE,
    analysis_command,
    folder_problem,
    is_uri,
    study_uri,
    tensorboard_command,
)
from grok_tune.regions import REGION, REGIONS
from grok_tune.space import (
    RESUMABLE,
    SEED,
    Distribution,
    Grid,
    Overrides,
    SpecError,
    StudySpec,
    load_yaml,
    parse_spec,
    read_study_file,
)

AUTOSCALE_CONCURRENCY = 8
# An unreachable cluster address must fail fast: Ray's own connection retries take minutes.
CONNECT_TIMEOUT_S = 15.0
TCP_TIMEOUT_S = 10.0
RAY_DEFAULT_PORT = 6379
# on a cluster: how often to say that trials still wait for a node (the tests shorten it)
WAIT_NOTICE_S = float(os.environ.get("GROK_TUNE_WAIT_NOTICE_S", "30"))
INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C (128 + SIGINT)
TERMINATED = 143  # ... and by SIGTERM (128 + SIGTERM)
TRIALS_FAILED = 1  # the study ran to its end, and some trials failed (their error is recorded)

# The flags that override a study file's keys, by key.
FLAGS = {
    "num_samples": "--num-samples",
    "max_concurrent": "--max-concurrent",
    "cpus_per_trial": "--cpus-per-trial",
    "gpus_per_trial": "--gpus-per-trial",
    "members_per_trial": "--members-per-trial",
}


def build_parser() -> Parser:
    p = Parser(
        prog="python -m grok_tune.search",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--space", type=Path, help="study file (search_spaces/*.yaml)")
    p.add_argument("--name", help="study name (default: the file's `name`, else its file name)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="folder or s3://, gs:// URI")
    p.add_argument("--num-samples", help="grid: repeats of the grid; else: number of trials")
    p.add_argument("--max-concurrent", help="trials at once (default CPUs // cpus-per-trial)")
    p.add_argument("--cpus-per-trial")
    p.add_argument("--gpus-per-trial", help="fractions let trials share a GPU, e.g. 0.25")
    p.add_argument(
        "--members-per-trial", help="configurations trained as one population per trial (GPU)"
    )
    p.add_argument("--address", help="a running Ray cluster (host:port or 'auto'); default: local")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study")
    p.add_argument(
        "--no-analysis",
        action="store_true",
        default=os.environ.get("GROK_TUNE_ANALYSIS") == "off",  # the test suite's studies
        help="skip `python -m analysis` at the end (its figures and summary.txt)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the file and flags, print the plan, run nothing",
    )
    return p


class Refused(Exception):
    """Input the study cannot run with; the message names what and why. Exit status 2."""


# --- the search space for Tune -------------------------------------------------------------------
def _tune_domain(dist: Distribution) -> Any:
    from ray import tune

    if isinstance(dist, Grid):
        return tune.grid_search(dist.grid)
    kind = next(iter(type(dist).model_fields))
    value = getattr(dist, kind)
    return {
        "loguniform": lambda: tune.loguniform(*value),
        "uniform": lambda: tune.uniform(*value),
        "int": lambda: tune.randint(value[0], value[1] + 1),  # Tune's upper bound is exclusive
        "choice": lambda: tune.choice(value),
    }[kind]()


def param_space(spec: StudySpec) -> dict[str, Any]:
    from ray import tune

    space = {**spec.fixed, **{k: _tune_domain(d) for k, d in spec.distributions.items()}}
    if spec.variants:  # a trial's settings: its variant's merged in (grok_tune.trainable)
        space[VARIANT] = tune.grid_search(spec.variants)
    seeds = spec.repeat_seeds()
    if seeds:  # the repeats, as Tune's slowest grid axis (last): repeat r is the r-th pass
        space.pop(SEED, None)
        space[SEED] = tune.grid_search(seeds)
    return space


def tune_samples(spec: StudySpec) -> int:
    """Tune's num_samples: the repeats, unless they are the seed axis of the space."""
    return 1 if spec.repeat_seeds() else spec.num_samples


def member_configs(spec: StudySpec) -> list[dict[str, Any]]:
    """A grid or random study's configurations, one per trial it would run unpacked: the grid's
    points (each repeat in turn), or ``num_samples`` draws from the distributions."""
    seeds = spec.repeat_seeds() or [None] * spec.num_samples
    if spec.mode == "grid":
        return [_seeded({**spec.fixed, **p}, s) for s in seeds for p in spec.grid_points()]
    import numpy as np

    rng = np.random.default_rng(spec.seed)

    def draw(dist: Distribution) -> Any:
        kind = next(iter(type(dist).model_fields))
        value = getattr(dist, kind)
        if kind == "uniform":
            return float(rng.uniform(*value))
        if kind == "loguniform":
            return float(np.exp(rng.uniform(np.log(value[0]), np.log(value[1]))))
        if kind == "int":
            return int(rng.integers(value[0], value[1] + 1))
        return value[int(rng.integers(len(value)))]

    return [
        _seeded({**spec.fixed, **{k: draw(d) for k, d in spec.distributions.items()}}, s)
        for s in seeds
    ]


def _seeded(config: dict[str, Any], seed: int | None) -> dict[str, Any]:
    return config if seed is None else {**config, SEED: seed}


def packs_of(spec: StudySpec) -> list[list[dict[str, Any]]]:
    """The study's configurations packed into populations of at most ``members_per_trial``
    (grok_tune/packing.py: members share the task, the model's shape and the schedule)."""
    from grok_tune.config import TrainConfig, flat_settings
    from grok_tune.packing import population_groups

    configs = member_configs(spec)
    groups = population_groups(
        [TrainConfig(**flat_settings(c)) for c in configs], spec.members_per_trial
    )
    return [[configs[i] for i in group] for group in groups]


def _concurrency(spec: StudySpec) -> int:
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


def _optuna_storage(spec: StudySpec, uri: str) -> Any:
    import optuna

    if is_uri(uri):  # a journal needs a local file: keep it beside the driver, copy it at the end
        path = Path("~/.grok_tune/optuna").expanduser() / f"{spec.name}.journal"
    else:
        path = Path(uri) / OPTUNA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def _limited(cls: type) -> type:
    """A Tune search algorithm whose concurrency limit is the one it was given now.

    Tune saves a search algorithm's whole state, limit included, and restores it on --resume,
    where a new --max-concurrent must win: the limit is how trials run, not what they compute.
    """

    class Limited(cls):  # type: ignore[misc, valid-type]
        def set_state(self, state: dict[str, Any]) -> None:
            limit = self.max_concurrent
            super().set_state(state)
            self.max_concurrent = limit

    Limited.__name__ = Limited.__qualname__ = f"Limited{cls.__name__}"
    return Limited


def _search_alg(spec: StudySpec, uri: str, concurrency: int) -> Any:
    if spec.mode == "optuna":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(
            metric=spec.objective.metric,
            mode=spec.objective.mode,
            sampler=optuna.samplers.TPESampler(
                seed=spec.seed, n_startup_trials=spec.n_startup_trials
            ),
            storage=_optuna_storage(spec, uri),
            study_name=spec.name,
        )
        # without a limit Tune keeps one Optuna trial pending at a time
        return _limited(ConcurrencyLimiter)(searcher, max_concurrent=concurrency)
    if spec.mode == "boundary":
        from ray.tune.search import ConcurrencyLimiter

        from grok_tune.boundary import searcher_for

        return _limited(ConcurrencyLimiter)(searcher_for(spec), max_concurrent=concurrency)
    from ray.tune.search import BasicVariantGenerator

    # Tune ignores TuneConfig's max_concurrent_trials for a generator that is not a Searcher
    return _limited(BasicVariantGenerator)(random_state=spec.seed, max_concurrent=concurrency)


PRUNE_EVERY_S = 5.0  # how often the driver deletes checkpoints no resume can need


def _callbacks(spec: StudySpec, uri: str, on_cluster: bool) -> list[Any]:
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    class Resources(tune.Callback):
        """Trials waiting to start take the resources asked for now (--resume may change them:
        Tune would keep those saved with the study); on a cluster, say how long trials have
        waited for a node and for what."""

        def __init__(self) -> None:
            self.request = {"CPU": spec.cpus_per_trial, "GPU": spec.gpus_per_trial}
            self.waiting_since: float | None = None
            self.said = 0.0

        def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
            from ray.tune.experiment import Trial

            wanted = tune.PlacementGroupFactory([{k: v for k, v in self.request.items() if v}])
            for trial in trials:
                if trial.status == Trial.PENDING and trial.placement_group_factory != wanted:
                    trial.update_resources(wanted)

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            import ray
            from ray.tune.experiment import Trial

            pending = any(t.status == Trial.PENDING for t in trials)
            if not on_cluster or not pending or any(t.status == Trial.RUNNING for t in trials):
                self.waiting_since = None
                return
            now = time.monotonic()
            self.waiting_since = self.waiting_since or now
            if now - self.waiting_since >= WAIT_NOTICE_S and now - self.said >= WAIT_NOTICE_S:
                self.said = now
                free = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
                print(
                    f"waited {now - self.waiting_since:.0f} s for a node with room for a trial "
                    f"({_resources_text(spec)}); free now: {free or 'nothing'}. An autoscaling "
                    "cluster adds nodes for waiting trials; Ctrl-C and --resume with other "
                    "--cpus-per-trial / --gpus-per-trial to ask for less",
                    flush=True,
                )

    class Prune(tune.Callback):
        """Tune keeps every checkpoint (it would delete them out of step with its saved state:
        grok_tune/study_state.py); every few seconds, those no resume can need go."""

        def __init__(self) -> None:
            self.last = time.monotonic()

        def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
            if time.monotonic() - self.last >= PRUNE_EVERY_S:
                self.last = time.monotonic()
                study_state.prune(uri)

    from grok_tune.tensorboard_log import StudyLog

    # Tune's TensorBoard logger is replaced by grok_tune's own (trials' runs, the study's HParams
    # config: grok_tune/tensorboard_log.py); the JSON and CSV loggers stay: Ray's results read them
    packs = packs_of(spec) if spec.members_per_trial > 1 else None
    return [
        JsonLoggerCallback(), CSVLoggerCallback(), Resources(), Prune(), StudyLog(spec, packs)
    ]  # fmt: skip


def _scheduler(uri: str) -> Any:
    """Tune's first-in-first-out scheduler, which also places each new trial in the study's
    folder as it is now: Tune's search algorithm saves the study's path of when it began, and
    the trials it creates after a copied or moved study is resumed would write into the old
    folder (Ray re-places only the trials it restores)."""
    import copy

    import pyarrow.fs as pafs
    from ray.tune.schedulers import FIFOScheduler

    class StudyScheduler(FIFOScheduler):
        def __init__(self, study: str) -> None:
            super().__init__()
            self.study = study

        def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
            fs, path = pafs.FileSystem.from_uri(self.study)
            storage_path, _, name = path.rstrip("/").rpartition("/")
            if (trial.storage.storage_fs_path, trial.storage.experiment_dir_name) != (
                storage_path,
                name,
            ):
                moved = copy.copy(trial.storage)
                moved.storage_filesystem = fs
                moved.storage_fs_path = storage_path
                moved.experiment_dir_name = name
                trial.set_storage(moved)
            super().on_trial_add(tune_controller, trial)

    return StudyScheduler(uri)


def _refit_restored(tuner: Any, spec: StudySpec, uri: str, concurrency: int, on_cluster: bool):
    """What a resume changes in Tune's restored study, through private attributes: Tune offers
    no public way (Ray is pinned, and tests/test_bad_input.py and tests/test_resume.py fail if
    this stops working). Ray 2.60 restores the search algorithm pickled when the study began,
    with its limit (``Limited`` keeps the one set here through its saved state), the callbacks
    of back then, and the scheduler that places new trials in the study's folder of back then."""
    tune_config = tuner._local_tuner._tune_config
    tune_config.search_alg.max_concurrent = concurrency
    tune_config.scheduler = _scheduler(uri)
    tuner._local_tuner._run_config.callbacks = _callbacks(spec, uri, on_cluster)
    return tuner


def make_tuner(spec: StudySpec, storage: str, resume: bool, on_cluster: bool = False) -> Any:
    from ray import tune

    from grok_tune.naming import TrialDirname, varying_settings
    from grok_tune.trainable import grokking_trial

    uri = study_uri(storage, spec.name)
    packed = spec.members_per_trial > 1
    if packed:
        from grok_tune.trainable import population_trial

        packs = packs_of(spec)
        function = tune.with_parameters(
            population_trial, packs=packs, checkpoint_every=spec.checkpoint_every
        )
    else:
        function = tune.with_parameters(grokking_trial, checkpoint_every=spec.checkpoint_every)
    trainable = tune.with_resources(
        function, {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial}
    )
    concurrency = _concurrency(spec)
    if resume:
        tuner = tune.Tuner.restore(uri, trainable, resume_unfinished=True, resume_errored=True)
        return _refit_restored(tuner, spec, uri, concurrency, on_cluster)

    objective = spec.objective
    optuna = spec.mode == "optuna"
    shown = list(spec.distributions) or list(spec.fixed)
    reporter = tune.CLIReporter(
        parameter_columns=shown,
        metric_columns={
            m.STEP: m.STEP,
            m.TRAIN_ACC: m.TRAIN_ACC,
            m.VAL_ACC: m.VAL_ACC,
            m.STATUS: "outcome",
        },
        max_report_frequency=30,
        # "Current best trial" only where a best means something: the objective Optuna optimizes
        metric=objective.metric if optuna else None,
        mode=objective.mode if optuna else None,
    )
    return tune.Tuner(
        trainable,
        # a boundary search makes every trial's settings itself (grok_tune/boundary.py); a
        # packed study's trial is its index into the packs
        param_space=(
            {}
            if spec.mode == "boundary"
            else {PACK: tune.grid_search(list(range(len(packs))))}
            if packed
            else param_space(spec)
        ),
        tune_config=tune.TuneConfig(
            search_alg=_search_alg(spec, uri, concurrency),
            scheduler=_scheduler(uri),
            # OptunaSearch owns metric and mode (Tune refuses them twice); no other mode has a
            # best trial to pick
            metric=None,
            mode=None,
            # boundary: trials until the searcher says it is done (repeats are its own); packs
            # hold the repeats
            num_samples=-1 if spec.mode == "boundary" else 1 if packed else tune_samples(spec),
            # one process per concurrent slot, reused by the next trial: no spawn and no torch
            # import per trial
            reuse_actors=True,
            # t00003_frac=0.5_weight_decay=1 (grok_tune/naming.py): TensorBoard's run names;
            # a packed trial's members carry the values
            trial_dirname_creator=TrialDirname(() if packed else varying_settings(spec)),
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=storage if is_uri(storage) else str(Path(storage).expanduser().resolve()),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            # Tune deletes nothing: its retention is out of step with its saved state, and
            # the Prune callback deletes only what no resume can need (grok_tune/study_state.py)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            # the trial directory's TensorBoard files go to the (cloud) storage with the results
            sync_config=tune.SyncConfig(sync_artifacts=True),
            callbacks=_callbacks(spec, uri, on_cluster),
            progress_reporter=reporter,
            verbose=1,
        ),
    )


# --- storage ------------------------------------------------------------------------------------
def _write_text(uri: str, text: str) -> None:
    """Write a small file whole or not at all (aside, then moved), locally or in the cloud."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(f"{path}.tmp") as out:
        out.write(text.encode())
    fs.move(f"{path}.tmp", path)


def _read_text(uri: str) -> str | None:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def check_storage(storage: str) -> None:
    """Refuse a storage location that cannot hold a study, before anything starts or is written:
    an unknown scheme, an unreachable bucket, a file where a folder belongs, a folder that cannot
    be written. Creates nothing."""
    if not storage.strip():  # '' would make the current folder the storage, silently
        raise Refused(f"--storage {storage!r}: empty: name a folder (default {DEFAULT_STORAGE})")
    if is_uri(storage):
        import pyarrow as pa
        import pyarrow.fs as pafs

        try:
            fs, path = pafs.FileSystem.from_uri(storage)
            info = fs.get_file_info(path)
        except (pa.ArrowException, ValueError, OSError) as err:
            raise Refused(
                f"--storage {storage}: cannot use it: {str(err).splitlines()[0]}"
            ) from None
        if info.type == pafs.FileType.File:
            raise Refused(f"--storage {storage}: is a file, not a folder")
        return
    problem = folder_problem(storage)
    if problem:
        raise Refused(f"--storage {storage}: {problem}")


# --- the cluster --------------------------------------------------------------------------------
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


def _resources_text(spec: StudySpec) -> str:
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
        return {"CPU": float(_local_cpus()), "GPU": 0.0}


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


# --- the study file, the flags and resume -------------------------------------------------------
def _overrides(args: argparse.Namespace) -> Overrides:
    return {key: (getattr(args, key), flag) for key, flag in FLAGS.items()}


def _default_name(path: Path) -> str | None:
    """A study's name when --name is not given: the file's `name`, else its file name."""
    data = read_study_file(path)
    named = data.get("name") if isinstance(data, dict) else None
    return None if named else path.stem


def _diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    keys = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += _diff(x, y, f"{prefix}{key}.")
        elif x != y:
            keys.append(f"{prefix}{key}")
    return keys


def _resolve_resume(args: argparse.Namespace, storage: str) -> StudySpec:
    """The stored study, with the settings a resume may change taken from the file and flags."""
    name = args.name
    if name is None and args.space is not None:
        name = _default_name(args.space) or read_study_file(args.space)["name"]
    if name is None:
        raise Refused("--resume needs --name NAME (or --space FILE)")
    where = f"{study_uri(storage, name)}/{STUDY_FILE}"
    stored_text = _read_text(where)
    if stored_text is None:
        raise Refused(f"--resume: no study {name!r} in {storage} (no {where})")
    try:
        stored_data = load_yaml(stored_text)
    except yaml.YAMLError as err:
        raise Refused(f"--resume: {where}: damaged, not valid YAML ({err})") from None
    try:
        stored = parse_spec(stored_data, where)
    except SpecError as err:
        raise Refused(f"--resume: {where}: damaged, not a study file: {err}") from None
    changes: dict[str, Any] = {}
    if args.space is not None:
        given = parse_spec(read_study_file(args.space), str(args.space), {"name": (name, "")})
        fixed = [k for k in _diff(stored.model_dump(), given.model_dump()) if k not in RESUMABLE]
        if fixed:
            raise Refused(
                f"--resume: {args.space} differs from the study being resumed in "
                f"{', '.join(fixed)}: only {', '.join(RESUMABLE)} may change on --resume"
            )
        changes.update({k: getattr(given, k) for k in RESUMABLE})
    for key in ("num_samples", "members_per_trial"):
        given_flag = getattr(args, key)
        if given_flag is not None and strict_value(given_flag, int) != getattr(stored, key):
            raise Refused(
                f"{FLAGS[key]}: cannot change on --resume (how the study's configurations are "
                "laid out in trials is fixed when it began)"
            )
    overrides = {key: (getattr(args, key), flag) for key, flag in FLAGS.items() if key in RESUMABLE}
    # (a flag equal to the stored value is no change: it is taken, and changes nothing)
    return parse_spec({**stored.model_dump(mode="json"), **changes}, where, overrides)


def resolve(args: argparse.Namespace) -> StudySpec:
    if args.resume:
        return _resolve_resume(args, args.storage)
    if args.space is None:
        raise Refused("--space FILE is required (or --resume --name NAME)")
    name = args.name or _default_name(args.space)
    label = "--name" if args.name else f"the study's name (from the file name {args.space.name})"
    overrides = {**_overrides(args), "name": (name, label)}
    return parse_spec(read_study_file(args.space), str(args.space), overrides)


def _sources(args: argparse.Namespace) -> dict[str, str]:
    """Where each resource setting came from, to name it when refusing it."""
    where = "the stored study" if args.resume else str(args.space)
    return {
        k: flag if getattr(args, k) is not None else f"{k} in {where}" for k, flag in FLAGS.items()
    }


# --- dry run --------------------------------------------------------------------------------------
MAX_POINTS_LISTED = 60


def plan(spec: StudySpec, uri: str, exists: bool, address: str | None) -> str:
    """What the study would run, in words: the --dry-run output."""
    most = "at most " if spec.mode == "boundary" else ""
    lines = [f"study {spec.name} ({spec.mode}): {most}{spec.num_trials()} trials"]
    if spec.description:
        lines.append(f"  {spec.description}")
    fixed = ", ".join(f"{k}={v}" for k, v in spec.fixed.items())
    lines.append(f"  fixed: {fixed or 'none'} (every other setting: its default, or its preset's)")
    if spec.mode == "grid":
        points = spec.grid_points()
        grids = ", ".join(
            f"{k} {d.grid}" for k, d in spec.distributions.items() if isinstance(d, Grid)
        )
        repeats = f" x {spec.num_samples} repeats" if spec.num_samples > 1 else ""
        repeats += f" (x {len(spec.variants)} variants)" if spec.variants else ""
        lines.append(f"  grid: {grids}: {len(points)} points{repeats}")
        for point in itertools.islice(points, MAX_POINTS_LISTED):
            lines.append("    " + ", ".join(f"{k}={v}" for k, v in point.items()))
        if len(points) > MAX_POINTS_LISTED:
            lines.append(f"    ... and {len(points) - MAX_POINTS_LISTED} more")
    if spec.mode == "boundary":
        lines += _boundary_plan(spec)
    lines += _seed_plan(spec)
    if spec.members_per_trial > 1:
        lines += _pack_plan(spec)
    others = {k: d for k, d in spec.distributions.items() if not isinstance(d, Grid)}
    for key, dist in others.items() if spec.mode != "boundary" else ():
        lines.append(f"  {key}: {dist.model_dump()} (sampled per trial)")
    if spec.variants:
        lines.append(f"  variants (each crossed with the grid): {len(spec.variants)}")
        lines += [f"    {v or '{} (the settings as they are)'}" for v in spec.variants]
    if spec.mode == "optuna":
        lines.append(
            f"  Optuna TPE (seed {spec.seed}): {spec.objective.mode} {spec.objective.metric}"
        )
        lines.append(f"  {spec.startup_note()}")
    at_once = spec.max_concurrent or (
        "CPUs // cpus_per_trial of the cluster when the study starts"
        if address
        else f"{max(1, int(_local_cpus() // spec.cpus_per_trial))} (this machine's CPUs)"
    )
    lines.append(f"  resources: {_resources_text(spec)}; at most {at_once} at once")
    lines.append(f"  on: {'the Ray cluster at ' + address if address else 'local Ray'}")
    state = "exists: --resume continues it" if exists else "new"
    lines.append(f"  study directory: {uri} ({state})")
    lines.append("dry run: nothing was started or written")
    return "\n".join(lines)


def _pack_plan(spec: StudySpec) -> list[str]:
    """How the configurations are packed into Ray trials, and what keeps any apart."""
    from grok_tune.config import TrainConfig, flat_settings
    from grok_tune.packing import why_apart

    packs = packs_of(spec)
    sizes = sorted((len(p) for p in packs), reverse=True)
    shown = ", ".join(map(str, sizes[:20])) + (", ..." if len(sizes) > 20 else "")
    lines = [
        f"  packed: {sum(sizes)} configurations in {len(packs)} Ray trials of "
        f"{shown} members (members_per_trial {spec.members_per_trial})"
    ]
    apart = why_apart([TrainConfig(**flat_settings(c)) for c in member_configs(spec)])
    if apart:
        lines.append(
            f"    kept in separate populations by {', '.join(apart)}: members of one "
            "population share these (grok_tune/packing.py)"
        )
    return lines


def _seed_plan(spec: StudySpec) -> list[str]:
    """What seeds the trials run with: a repeat that repeats its seed repeats the run."""
    seeds = spec.repeat_seeds()
    if seeds:
        what = "repeat" if spec.mode == "grid" else "trial"
        base = f"params.seed {seeds[0]}" if SEED in spec.fixed else "seed 0"
        return [f"  seeds: {what} r runs with {base} + r: {seeds}"]
    if spec.mode in ("grid", "random") and spec.num_samples > 1:
        return [
            f"  seeds: the {spec.num_samples} repeats take the seeds params.seed or the variants "
            "give: a repeat of a seed is the same run (bit for bit on CPU)"
        ]
    if spec.mode != "boundary" and SEED not in spec.params:
        return ["  seeds: every trial runs with seed 0 (params.seed: {grid: [0, 1, 2]} for more)"]
    return []


def _boundary_plan(spec: StudySpec) -> list[str]:
    from grok_tune.boundary import axes_of, maps_of

    axes, maps = axes_of(spec), maps_of(spec)
    resolution = (spec.initial - 1) * 2**spec.depth + 1
    first = spec.initial ** len(axes) * spec.num_samples
    lines = [
        "  axes, refined where the region changes: "
        + ", ".join(f"{a.name} [{a.lo:g}, {a.hi:g}]{' (log)' if a.log else ''}" for a in axes),
        f"  {len(maps)} map(s), each starting with {spec.initial}^{len(axes)} points x "
        f"{spec.num_samples} repeats = {first} trials, refined {spec.depth} levels deep: the "
        f"resolution of a {resolution}^{len(axes)} grid",
    ]
    grids = {k: d.grid for k, d in spec.distributions.items() if isinstance(d, Grid)}
    if grids:
        lines.append(f"  maps: one per point of {', '.join(f'{k} {v}' for k, v in grids.items())}")
    if spec.same:
        lines.append(
            f"  counted as one label: {', '.join('+'.join(map(str, s)) for s in spec.same)}"
        )
    return lines


def _local_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --- main -----------------------------------------------------------------------------------------
def _exists(uri: str) -> bool:
    from ray import tune

    return tune.Tuner.can_restore(uri)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    refuse = parser.fail

    try:
        spec = resolve(args)
        uri = study_uri(args.storage, spec.name)
        check_storage(args.storage)
        exists = _exists(uri)
        if args.dry_run and args.address is None:  # what the real run would refuse, first
            check_local_resources(spec, _sources(args), machine_resources())
        elif args.dry_run:
            check_address(args.address)
        if args.dry_run:
            try:
                print(plan(spec, uri, exists, args.address))
            except BrokenPipeError:  # `| head` closed the pipe: not an error of ours
                sys.stderr.close()
            return 0
        if args.resume:
            _check_resumable(spec, uri)
        if not args.resume and exists:
            raise Refused(
                f"study {spec.name!r} already exists at {uri}: --resume it or pick --name"
            )
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the CLIReporter's table, not Train's
        start_ray(args.address)
        if args.address is None:
            check_local_resources(spec, _sources(args))
    except SpecError as err:
        return refuse("invalid study\n" + str(err).replace("\n", "\n  ").join(["  ", ""]))
    except Refused as err:
        return refuse(str(err))

    # the study file as it runs: a resume records the resources it changed
    _write_text(
        f"{uri}/{STUDY_FILE}", yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    )
    tuner = make_tuner(spec, args.storage, args.resume, on_cluster=args.address is not None)
    stop = _Stop()
    try:
        with stop.catching(), _without_tunes_resume_hint():
            results = tuner.fit()
    except KeyboardInterrupt:  # a second Ctrl-C: Tune saved its state at the first
        print(f"\nstudy {spec.name}: interrupted; {_resume_command(spec, args)}", file=sys.stderr)
        return stop.status
    study_state.prune(uri)  # Tune's final state is written: what no resume needs goes

    from grok_tune.results import write_results

    paths = write_results(
        results,
        uri,
        packs=packs_of(spec) if spec.members_per_trial > 1 else None,
        planned=member_configs(spec) if spec.mode in ("grid", "random") else None,
    )
    if spec.mode == "optuna" and is_uri(uri):
        journal = Path("~/.grok_tune/optuna").expanduser() / f"{spec.name}.journal"
        _write_text(f"{uri}/{OPTUNA_FILE}", journal.read_text())
    return _print_summary(spec, uri, paths, args, stop.status)


def _check_resumable(spec: StudySpec, uri: str) -> None:
    """Refuse a resume that would run something else than the study: damaged or missing state
    files, or an Optuna study in another folder than the one it began in."""
    if study_state.newest_state_file(uri) is None:
        if _exists(uri):  # Tune would silently start it over, beside what the first run left
            raise Refused(
                f"--resume: {uri} holds no saved progress (stopped before Ray Tune first saved "
                "its state, a second or so after the start): run it anew under another --name, "
                "or delete the folder"
            )
        raise Refused(f"--resume: no study state at {uri} (it never started a trial)")
    try:
        trials = study_state.check_resumable(uri)
    except study_state.DamagedState as err:
        raise Refused(f"--resume: {err}") from None
    old = study_state.moved_from(uri, trials)
    if old and spec.mode == "optuna":
        # Optuna's journal is bound to the path it was opened at, inside Tune's saved searcher
        raise Refused(
            f"--resume: this Optuna study began at {old} and is now at {uri}: its Optuna journal "
            f"would still be written at {old}. Resume it where it began"
        )


class _Stop:
    """SIGTERM (schedulers, `timeout`, `ray stop`, container runtimes) ends a study as Ctrl-C
    does: Tune stops, saves its state, the results are written, the resume command printed,
    with 143 (128 + SIGTERM) as exit status; Ctrl-C gives 130."""

    def __init__(self) -> None:
        self.status = INTERRUPTED

    def catching(self) -> Any:
        import contextlib
        import signal

        @contextlib.contextmanager
        def handler() -> Any:
            def on_term(signum: int, frame: Any) -> None:
                self.status = TERMINATED
                # Tune's own graceful stop listens to SIGUSR1 as to SIGINT (ray.tune.tune)
                os.kill(os.getpid(), signal.SIGUSR1)

            previous = signal.signal(signal.SIGTERM, on_term)
            try:
                yield
            finally:
                signal.signal(signal.SIGTERM, previous)

        return handler()


def _without_tunes_resume_hint() -> Any:
    """Tune's own "Resume experiment with: Tuner.restore(...)" is not how a grok_tune study is
    resumed: ours is printed instead."""
    import contextlib
    import logging

    class Hide(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "Resume experiment with" not in record.getMessage()

    @contextlib.contextmanager
    def hidden() -> Any:
        logger, hide = logging.getLogger("ray.tune.tune"), Hide()
        logger.addFilter(hide)
        try:
            yield
        finally:
            logger.removeFilter(hide)

    return hidden()


def _analyse(uri: str, args: argparse.Namespace) -> None:
    """The study's figures and summary.txt, and the commands to look further: the analysis
    runs here unless --no-analysis (a failure there never fails the study)."""
    lines = []
    if args.no_analysis or is_uri(uri):
        lines.append(f"  analysis:    {analysis_command(uri)}")
    else:
        from analysis.__main__ import main as analyse

        print(f"\nanalysis of {uri} (--no-analysis skips it):", flush=True)
        try:
            status = analyse([uri])
        except SystemExit as err:  # it refused the study (it said why): the study stands
            status = err.code
        except Exception as err:  # whatever fails in a figure, the study's results stand
            status = 1
            print(f"  analysis failed: {type(err).__name__}: {err}")
        again = "again" if status == 0 else "by hand"
        lines.append(f"  analysis ({again}): {analysis_command(uri)}")
    lines.append(f"  TensorBoard: {tensorboard_command(uri)}")
    print("\nnext:\n" + "\n".join(lines))


def _resume_command(spec: StudySpec, args: argparse.Namespace) -> str:
    address = f" --address {args.address}" if args.address else ""
    python = analysis_command("").split(" -m ")[0]  # this environment's python, as typed here
    return (
        f"continue with: {python} -m grok_tune.search --resume "
        f"--name {spec.name} --storage {args.storage}{address}"
    )


def _print_summary(
    spec: StudySpec,
    uri: str,
    paths: dict[str, str],
    args: argparse.Namespace,
    interrupted_status: int = INTERRUPTED,
) -> int:
    """The study's closing lines; the exit status: 0 every trial finished, 1 some failed,
    130/143 interrupted (resume it)."""
    from grok_tune.results import read_trials

    trials = read_trials(uri)
    counts = trials[REGION].value_counts()
    regions = ", ".join(f"{r}: {counts[r]}" for r in REGIONS if r in counts) or "none"
    status = {str(k): int(v) for k, v in trials[m.STATUS].value_counts().items()}
    unstarted = (str(m.Status.RUNNING), str(m.Status.PENDING))
    # an Optuna study's trials that Tune never created (grid and random ones are rows, pending;
    # a boundary search decides its number as it goes)
    never = max(0, spec.num_trials() - len(trials)) if spec.mode == "optuna" else 0
    unfinished = sum(status.get(s, 0) for s in unstarted) + never
    failed = status.get(str(m.Status.ERROR), 0)
    finished = len(trials) - sum(status.get(s, 0) for s in (*unstarted, str(m.Status.ERROR)))
    planned = f"at most {spec.num_trials()}" if spec.mode == "boundary" else spec.num_trials()
    print(f"\nstudy {spec.name}: {finished} of {planned} trials finished")
    print(f"  regions: {regions}; status: {status}")
    print(f"  results:     {paths['trials']}\n               {paths['curves']}")
    if unfinished:
        print(
            f"  interrupted: {unfinished} trials unfinished (no region); "
            f"{_resume_command(spec, args)}"
        )
        print(f"  TensorBoard: {tensorboard_command(uri)}")
        return interrupted_status
    if failed:
        print(
            f"  failed: {failed} trials raised an error (status 'error', the message in the "
            f"'error' column of {paths['trials']}); {_resume_command(spec, args)} retries them"
        )
    _analyse(uri, args)
    return TRIALS_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main())
