"""``python -m grok_tune.search``: a study of grokking trials on Ray Tune.

    python -m grok_tune.search --space search_spaces/default.yaml [--name NAME]
        [--storage DIR_OR_URI] [--num-samples N] [--max-concurrent N] [--cpus-per-trial C]
        [--gpus-per-trial G] [--address ADDR] [--resume]

The study directory STORAGE/NAME holds the study file, Ray Tune's experiment state, the Optuna
journal, every trial's checkpoints and TensorBoard files, trials.parquet and curves.parquet.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from grok_tune import metrics as m
from grok_tune.regions import REGION, REGIONS
from grok_tune.space import Distribution, Grid, SpecError, StudySpec, load_spec, parse_spec

DEFAULT_STORAGE = "~/grok_tune_results"
STUDY_FILE = "study.yaml"
OPTUNA_FILE = "optuna.journal"
AUTOSCALE_CONCURRENCY = 8


def is_uri(storage: str) -> bool:
    return "://" in storage


def study_uri(storage: str, name: str) -> str:
    if is_uri(storage):
        return f"{storage.rstrip('/')}/{name}"
    return str(Path(storage).expanduser().resolve() / name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m grok_tune.search",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--space", type=Path, help="study file (search_spaces/*.yaml)")
    p.add_argument("--name", help="study name (default: the file's name)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="folder or s3://, gs:// URI")
    p.add_argument("--num-samples", help="grid: repeats of the grid; else: number of trials")
    p.add_argument("--max-concurrent", help="trials at once (default CPUs // cpus-per-trial)")
    p.add_argument("--cpus-per-trial")
    p.add_argument("--gpus-per-trial", help="fractions let trials share a GPU, e.g. 0.25")
    p.add_argument("--address", help="a running Ray cluster ('auto'); default: local Ray")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study")
    return p


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
    return {**spec.fixed, **{k: _tune_domain(d) for k, d in spec.distributions.items()}}


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


def make_tuner(spec: StudySpec, storage: str, resume: bool) -> Any:
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from grok_tune.trainable import grokking_trial

    uri = study_uri(storage, spec.name)
    trainable = tune.with_resources(
        tune.with_parameters(grokking_trial, checkpoint_every=spec.checkpoint_every),
        {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial},
    )
    if resume:
        return tune.Tuner.restore(uri, trainable, resume_unfinished=True, resume_errored=True)

    objective = spec.objective
    concurrency = _concurrency(spec)
    if spec.mode == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(
            metric=objective.metric,
            mode=objective.mode,
            sampler=optuna.samplers.TPESampler(seed=spec.seed),
            storage=_optuna_storage(spec, uri),
            study_name=spec.name,
        )
        metric = mode = None  # OptunaSearch owns them; Tune refuses them twice
    else:
        from ray.tune.search import BasicVariantGenerator

        # Tune ignores max_concurrent_trials for a search algorithm that is not a Searcher
        search_alg = BasicVariantGenerator(random_state=spec.seed, max_concurrent=concurrency)
        metric, mode = objective.metric, objective.mode

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
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            metric=metric,
            mode=mode,
            num_samples=spec.num_samples,
            # without it Tune keeps one Optuna trial pending at a time
            max_concurrent_trials=concurrency if spec.mode == "optuna" else None,
            # one process per concurrent slot, reused by the next trial: no spawn and no torch
            # import per trial
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=storage if is_uri(storage) else str(Path(storage).expanduser().resolve()),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            # the trial directory's TensorBoard files go to the (cloud) storage with the results
            sync_config=tune.SyncConfig(sync_artifacts=True),
            # Tune's TensorBoard logger is replaced by grok_tune's own (same tags as Parquet);
            # the JSON and CSV loggers stay: Ray's results read them
            callbacks=[JsonLoggerCallback(), CSVLoggerCallback()],
            progress_reporter=reporter,
            verbose=1,
        ),
    )


def _write_text(uri: str, text: str) -> None:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(text.encode())


def _read_text(uri: str) -> str | None:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def _fail(parser: argparse.ArgumentParser, message: str) -> None:
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def _resolve_spec(parser: argparse.ArgumentParser, args: argparse.Namespace) -> StudySpec:
    overrides = {
        "num_samples": args.num_samples,
        "max_concurrent": args.max_concurrent,
        "cpus_per_trial": args.cpus_per_trial,
        "gpus_per_trial": args.gpus_per_trial,
    }
    try:
        if args.resume and args.name:
            stored = _read_text(f"{study_uri(args.storage, args.name)}/{STUDY_FILE}")
            if stored is None:
                _fail(parser, f"--resume: no study {args.name!r} in {args.storage}")
            spec = parse_spec(yaml.safe_load(stored), f"{args.name}/{STUDY_FILE}")
            if args.space and load_spec(args.space, name=args.name) != spec:
                _fail(parser, f"--space {args.space} differs from the study being resumed")
            return spec
        if not args.space:
            _fail(parser, "--space FILE is required (or --resume --name NAME)")
        name = args.name or args.space.stem
        return load_spec(args.space, **{"name": name, **overrides})
    except SpecError as err:
        _fail(parser, "invalid study\n" + str(err).replace("\n", "\n  ").join(["  ", ""]))
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    spec = _resolve_spec(parser, args)
    uri = study_uri(args.storage, spec.name)

    from ray import tune

    exists = tune.Tuner.can_restore(uri)
    if args.resume and not exists:
        _fail(parser, f"--resume: no study state at {uri}")
    if not args.resume and exists:
        _fail(parser, f"study {spec.name!r} already exists at {uri}: --resume it or pick --name")

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the CLIReporter's table, not Train's
    import ray

    if not ray.is_initialized():
        # trials' own output repeats what the progress table shows; errors reach Tune regardless
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
    if not args.resume:
        _write_text(f"{uri}/{STUDY_FILE}", yaml.safe_dump(spec.model_dump(mode="json")))

    tuner = make_tuner(spec, args.storage, args.resume)
    results = tuner.fit()

    from grok_tune.results import write_results

    paths = write_results(results, uri)
    if spec.mode == "optuna" and is_uri(uri):
        journal = Path("~/.grok_tune/optuna").expanduser() / f"{spec.name}.journal"
        _write_text(f"{uri}/{OPTUNA_FILE}", journal.read_text())
    _print_summary(spec, uri, paths)
    return 0


def _print_summary(spec: StudySpec, uri: str, paths: dict[str, str]) -> None:
    from grok_tune.results import read_trials

    trials = read_trials(uri)
    counts = trials[REGION].value_counts()
    regions = ", ".join(f"{r}: {counts[r]}" for r in REGIONS if r in counts) or "none"
    status = trials[m.STATUS].value_counts().to_dict()
    print(f"\nstudy {spec.name}: {len(trials)} trials; regions: {regions}; status: {status}")
    if m.Status.RUNNING in status:
        print(f"  interrupted: continue with --resume --name {spec.name}")
    print(f"  results:     {paths['trials']}\n               {paths['curves']}")
    print(f"  TensorBoard: tensorboard --logdir {uri}")


if __name__ == "__main__":
    sys.exit(main())
