"""A StudySpec as a Ray Tune study: the search space, the search algorithm (grid and random
generator, OptunaSearch, the boundary searcher) behind a concurrency limit, the scheduler, the
callbacks (resources, pruning, TensorBoard), and the Tuner, new or restored."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from grok_tune import metrics as m
from grok_tune import study_state
from grok_tune.config import PACK, VARIANT
from grok_tune.space import SEED, Distribution, Grid, StudySpec
from grok_tune.study.cluster import WAIT_NOTICE_S, resources_text, trial_concurrency
from grok_tune.study.configs import member_configs, packs_of
from grok_tune.study_files import OPTUNA_FILE, is_uri, study_uri


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
    if seeds and spec.mode == "grid":  # the repeats: Tune's slowest grid axis (last)
        space.pop(SEED, None)
        space[SEED] = tune.grid_search(seeds)
    elif seeds:  # random: each point brings its seed (random_points); Tune wants the key here
        space[SEED] = seeds[0]
    return space


def tune_samples(spec: StudySpec) -> int:
    """Tune's num_samples: a grid's repeats, unless they are the seed axis of the space."""
    return 1 if spec.mode == "grid" and spec.repeat_seeds() else spec.num_samples


def random_points(spec: StudySpec) -> list[dict[str, Any]]:
    """A random study's points as Tune runs them (``points_to_evaluate``): drawn once, by the
    study's one sampler (grok_tune/study/configs.py), so that packing them into populations
    can never change which configurations the study runs."""
    sampled = [*spec.distributions, SEED]
    return [{k: v for k, v in c.items() if k in sampled} for c in member_configs(spec)]


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
    # a packed study's trials are its packs, drawn by the same sampler (configs.packs_of)
    points = random_points(spec) if spec.mode == "random" and spec.members_per_trial == 1 else None
    return _limited(BasicVariantGenerator)(
        points_to_evaluate=points, random_state=spec.seed, max_concurrent=concurrency
    )


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
                    f"({resources_text(spec)}); free now: {free or 'nothing'}. An autoscaling "
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
    concurrency = trial_concurrency(spec)
    if resume:
        tuner = tune.Tuner.restore(uri, trainable, resume_unfinished=True, resume_errored=True)
        return refit_restored(tuner, spec, uri, concurrency, on_cluster)

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


def study_exists(uri: str) -> bool:
    from ray import tune

    return tune.Tuner.can_restore(uri)


def refit_restored(tuner: Any, spec: StudySpec, uri: str, concurrency: int, on_cluster: bool):
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
