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

Exit status: 0 when the study ran to its end, 2 for input it refused (nothing was written),
130 when it was interrupted (it says how to ``--resume``).
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
from grok_tune.cli import Parser
from grok_tune.config import PACK, VARIANT
from grok_tune.layout import (
    DEFAULT_STORAGE,
    OPTUNA_FILE,
    STUDY_FILE,
    folder_problem,
    is_uri,
    study_uri,
)
from grok_tune.regions import REGION, REGIONS
from grok_tune.space import (
    RESUMABLE,
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
INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C

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
    return space


def member_configs(spec: StudySpec) -> list[dict[str, Any]]:
    """A grid or random study's configurations, one per trial it would run unpacked: the grid's
    points (each repeat in turn), or ``num_samples`` draws from the distributions."""
    if spec.mode == "grid":
        return [{**spec.fixed, **p} for _ in range(spec.num_samples) for p in spec.grid_points()]
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
        {**spec.fixed, **{k: draw(d) for k, d in spec.distributions.items()}}
        for _ in range(spec.num_samples)
    ]


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
            sampler=optuna.samplers.TPESampler(seed=spec.seed),
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


def _callbacks(spec: StudySpec, on_cluster: bool) -> list[Any]:
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

    from grok_tune.tensorboard_log import StudyLog

    # Tune's TensorBoard logger is replaced by grok_tune's own (trials' runs, the study's HParams
    # config: grok_tune/tensorboard_log.py); the JSON and CSV loggers stay: Ray's results read them
    packs = packs_of(spec) if spec.members_per_trial > 1 else None
    return [JsonLoggerCallback(), CSVLoggerCallback(), Resources(), StudyLog(spec, packs)]


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
        # Ray 2.60 restores the search algorithm pickled when the study began, and its state;
        # Limited keeps the limit set here through the state (private attribute: Ray is pinned,
        # and tests/test_bad_input.py fails if this stops working)
        tuner._local_tuner._tune_config.search_alg.max_concurrent = concurrency
        tuner._local_tuner._run_config.callbacks = _callbacks(spec, on_cluster)
        return tuner

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
            # OptunaSearch owns metric and mode; Tune refuses them twice;
            # a packed trial reports its members' metrics nested: Tune checks no metric then
            metric=None if optuna or packed else objective.metric,
            mode=None if optuna or packed else objective.mode,
            # boundary: trials until the searcher says it is done (repeats are its own); packs
            # hold the repeats
            num_samples=-1 if spec.mode == "boundary" else 1 if packed else spec.num_samples,
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
            # Tune deletes the oldest kept checkpoint when a new one registers, but snapshots
            # the study's state only now and then: a driver killed in between resumes a trial
            # from a checkpoint already deleted (seen with several checkpoints a second). Three
            # kept make that window three checkpoints wide.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
            # the trial directory's TensorBoard files go to the (cloud) storage with the results
            sync_config=tune.SyncConfig(sync_artifacts=True),
            callbacks=_callbacks(spec, on_cluster),
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


def start_ray(address: str | None) -> None:
    """Start local Ray, or join the cluster at ``address`` within about CONNECT_TIMEOUT_S."""
    import ray

    host_port = None if address is None else _address_host_port(address)
    if host_port:
        try:  # Ray retries a dead address for minutes, deaf to SIGTERM: a plain TCP look first
            socket.create_connection(host_port, timeout=TCP_TIMEOUT_S).close()
        except OSError as err:
            reason = "timed out" if isinstance(err, TimeoutError) else err.strerror or str(err)
            raise Refused(f"--address {address}: no Ray cluster answers there ({reason})") from None
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


def check_local_resources(spec: StudySpec, sources: dict[str, str]) -> None:
    """On local Ray a trial that the machine cannot hold would wait forever: refuse it."""
    import ray

    have = ray.cluster_resources()
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
    stored = parse_spec(load_yaml(stored_text), where)
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
        if getattr(args, key) is not None:
            raise Refused(
                f"{FLAGS[key]}: cannot change on --resume (how the study's configurations are "
                "laid out in trials is fixed when it began)"
            )
    overrides = {key: (getattr(args, key), flag) for key, flag in FLAGS.items() if key in RESUMABLE}
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
        if args.dry_run:
            try:
                print(plan(spec, uri, exists, args.address))
            except BrokenPipeError:  # `| head` closed the pipe: not an error of ours
                sys.stderr.close()
            return 0
        if args.resume and not exists:
            raise Refused(f"--resume: no study state at {uri} (it never started a trial)")
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
    try:
        results = tuner.fit()
    except KeyboardInterrupt:  # a second Ctrl-C: Tune saved its state at the first
        print(f"\nstudy {spec.name}: interrupted; {_resume_command(spec, args)}", file=sys.stderr)
        return INTERRUPTED

    from grok_tune.results import write_results

    paths = write_results(
        results, uri, packs=packs_of(spec) if spec.members_per_trial > 1 else None
    )
    if spec.mode == "optuna" and is_uri(uri):
        journal = Path("~/.grok_tune/optuna").expanduser() / f"{spec.name}.journal"
        _write_text(f"{uri}/{OPTUNA_FILE}", journal.read_text())
    return _print_summary(spec, uri, paths, args)


def _resume_command(spec: StudySpec, args: argparse.Namespace) -> str:
    address = f" --address {args.address}" if args.address else ""
    return (
        "continue with: python -m grok_tune.search --resume "
        f"--name {spec.name} --storage {args.storage}{address}"
    )


def _print_summary(
    spec: StudySpec, uri: str, paths: dict[str, str], args: argparse.Namespace
) -> int:
    from grok_tune.results import read_trials

    trials = read_trials(uri)
    counts = trials[REGION].value_counts()
    regions = ", ".join(f"{r}: {counts[r]}" for r in REGIONS if r in counts) or "none"
    status = trials[m.STATUS].value_counts().to_dict()
    running = int(status.get(m.Status.RUNNING, 0))
    # trials that never started (a boundary search decides its number as it goes: only its
    # running trials count as unfinished)
    never = 0 if spec.mode == "boundary" else max(0, spec.num_trials() - len(trials))
    unfinished = running + never
    finished = len(trials) - running
    planned = f"at most {spec.num_trials()}" if spec.mode == "boundary" else spec.num_trials()
    print(f"\nstudy {spec.name}: {finished} of {planned} trials finished")
    print(f"  regions: {regions}; status: {status}")
    print(f"  results:     {paths['trials']}\n               {paths['curves']}")
    print(f"  TensorBoard: tensorboard --logdir {uri}")
    if unfinished:
        print(
            f"  interrupted: {unfinished} trials unfinished (no region); "
            f"{_resume_command(spec, args)}"
        )
        return INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
