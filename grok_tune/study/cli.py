"""``python -m grok_tune.search``: a study of grokking trials on Ray Tune.

    python -m grok_tune.search --space search_spaces/default.yaml [--name NAME]
        [--storage DIR_OR_URI] [--num-samples N] [--max-concurrent N] [--cpus-per-trial C]
        [--gpus-per-trial G] [--members-per-trial K] [--address ADDR] [--resume] [--dry-run]
        [--no-analysis]

The study directory STORAGE/NAME holds the study file, Ray Tune's experiment state, the Optuna
journal, every trial's checkpoints and TensorBoard files, trials.parquet, curves.parquet and
phases.parquet (grok_tune/study_files.py). Everything that can be checked is checked before Ray
starts: the study file and the flags, every point the study can produce, the storage location,
the cluster's address; on local Ray, whether the machine can hold one trial at all.
``--dry-run`` stops there and prints what the study would run. A study that ends runs its
analysis (figures, summary.txt) unless ``--no-analysis``, and prints the next commands.

Exit status: 0 when every trial ran to its end, 1 when the study ended with failed trials
(recorded with status 'error' and their message), 2 for input it refused (nothing was
written), 130 when Ctrl-C interrupted it and 143 when SIGTERM did (it says how to
``--resume``).

The other rooms of grok_tune/study/ do one job each: configs (what a grid or random study runs),
plan (the dry run), tuner (Ray Tune), cluster (where it runs), resume, storage, flags.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from grok_tune import metrics as m
from grok_tune import study_state
from grok_tune.cli import Parser
from grok_tune.regions import REGION, REGIONS
from grok_tune.space import SpecError, StudySpec, parse_spec, read_study_file
from grok_tune.study.cluster import (
    check_address,
    check_local_resources,
    machine_resources,
    start_ray,
)
from grok_tune.study.configs import member_configs, packs_of
from grok_tune.study.errors import Refused
from grok_tune.study.flags import default_name, overrides, sources
from grok_tune.study.plan import plan
from grok_tune.study.resume import check_resumable, resolve_resume
from grok_tune.study.storage import check_storage, write_text
from grok_tune.study.tuner import make_tuner, study_exists
from grok_tune.study_files import (
    DEFAULT_STORAGE,
    OPTUNA_FILE,
    STUDY_FILE,
    analysis_command,
    is_uri,
    study_uri,
    tensorboard_command,
)

INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C (128 + SIGINT)

TERMINATED = 143  # ... and by SIGTERM (128 + SIGTERM)

TRIALS_FAILED = 1  # the study ran to its end, and some trials failed (their error is recorded)


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


def resolve(args: argparse.Namespace) -> StudySpec:
    if args.resume:
        return resolve_resume(args, args.storage)
    if args.space is None:
        raise Refused("--space FILE is required (or --resume --name NAME)")
    name = args.name or default_name(args.space)
    label = "--name" if args.name else f"the study's name (from the file name {args.space.name})"
    given = {**overrides(args), "name": (name, label)}
    return parse_spec(read_study_file(args.space), str(args.space), given)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    refuse = parser.fail

    try:
        spec = resolve(args)
        uri = study_uri(args.storage, spec.name)
        check_storage(args.storage)
        exists = study_exists(uri)
        if args.dry_run and args.address is None:  # what the real run would refuse, first
            check_local_resources(spec, sources(args), machine_resources())
        elif args.dry_run:
            check_address(args.address)
        if args.dry_run:
            try:
                print(plan(spec, uri, exists, args.address))
            except BrokenPipeError:  # `| head` closed the pipe: not an error of ours
                sys.stderr.close()
            return 0
        if args.resume:
            check_resumable(spec, uri)
        if not args.resume and exists:
            raise Refused(
                f"study {spec.name!r} already exists at {uri}: --resume it or pick --name"
            )
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the CLIReporter's table, not Train's
        start_ray(args.address)
        if args.address is None:
            check_local_resources(spec, sources(args))
    except SpecError as err:
        return refuse("invalid study\n" + str(err).replace("\n", "\n  ").join(["  ", ""]))
    except Refused as err:
        return refuse(str(err))

    # the study file as it runs: a resume records the resources it changed
    write_text(f"{uri}/{STUDY_FILE}", yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
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
        write_text(f"{uri}/{OPTUNA_FILE}", journal.read_text())
    return _print_summary(spec, uri, paths, args, stop.status)


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
