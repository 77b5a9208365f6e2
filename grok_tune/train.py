"""One grokking run: ``Trainer``, a population of one, and its command line. Knows nothing of Ray.

``Trainer(cfg).run(on_eval)`` is grok_tune/population.py's loop for one member, under a run's
own names (``model``, ``history``, ``status``, ``phases()``): the one-trial CLI below and the
tests drive it; a study's trials drive the population itself.

``python -m grok_tune.train --op x/y --p 97 --frac 0.5 --steps 100000 --out DIR`` runs one trial
with a progress bar and writes DIR/curve.csv, DIR/outcome.json and DIR/checkpoint.pt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from grok_tune import metrics as m
from grok_tune.cli import Parser
from grok_tune.config import TrainConfig
from grok_tune.events import RunEvents
from grok_tune.member import Member, Record, model_config
from grok_tune.model import Model
from grok_tune.population import Population
from grok_tune.tasks import Layout, Split, Task

__all__ = ["Record", "TrainConfig", "Trainer", "model_config"]


class Trainer:
    """One run: a population of one. ``state_dict``/``load_state_dict`` resume it bit for bit.

    On the per-member path (the default) ``member`` is the run's model, optimizer, loss and
    remedy hooks (grok_tune/member.py); ``stacked=True`` runs it on the stacked path, the one a
    population of several takes on a GPU.
    """

    def __init__(
        self, cfg: TrainConfig, device: str | torch.device = "cpu", stacked: bool | None = None
    ) -> None:
        self.population = Population([cfg], device, stacked=stacked)

    # --- the run's own names for its population's member 0 ---------------------------------------
    @property
    def cfg(self) -> TrainConfig:
        return self.population.cfgs[0]

    @property
    def device(self) -> torch.device:
        return self.population.device

    @property
    def task(self) -> Task:
        return self.population.tasks[0]

    @property
    def layout(self) -> Layout:
        return self.population.layout

    @property
    def train_data(self) -> Split:
        return self.population.train[0]

    @property
    def val_data(self) -> Split:
        return self.population.val[0]

    @property
    def batch_size(self) -> int:
        return self.population.batch_size

    @property
    def step(self) -> int:
        return self.population.step

    @property
    def elapsed_s(self) -> float:
        return self.population.elapsed_s

    @property
    def history(self) -> list[Record]:
        return self.population.histories[0]

    @property
    def events(self) -> RunEvents:
        return self.population.events[0]

    @property
    def status(self) -> str:
        return self.events.status

    @property
    def member(self) -> Member:
        path = self.population.path
        if self.population.stacked:
            raise AttributeError("a run on the stacked path has no model of its own")
        return path.members[0]  # type: ignore[union-attr]

    @property
    def model(self) -> Model:
        """The run's model (on the stacked path: a copy of its weights now)."""
        if self.population.stacked:
            return self.population.member_model(0)
        return self.member.model

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return self.member.params

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.member.optimizer

    @property
    def decayed_params(self) -> int:
        return self.population.path.decayed_params(0)

    # --- the run ---------------------------------------------------------------------------------
    def run(self, on_eval: Callable[[Record, Trainer], None] | None = None) -> Record:
        """Train until generalized-and-held, diverged, a stopping rule or the budget.

        ``on_eval`` gets every evaluation record (the last one has the final status). Returns it.
        """
        hook = None if on_eval is None else lambda records, _: on_eval(records[0], self)
        return self.population.run(hook)[0]

    def phases(self) -> Record:
        """The run's largest phase changes of the training and validation loss so far, and
        where Nanda's three phases ended (grok_tune/progress.py)."""
        return self.population.phases(0)

    def summary(self) -> Record:
        """Facts of the run that are not curves: recorded with its outcome."""
        return self.population.summary(0)

    def state_dict(self) -> dict[str, Any]:
        return self.population.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.population.load_state_dict(state)

    def save(self, path: str | os.PathLike) -> None:
        self.population.save(path)

    def load(self, path: str | os.PathLike) -> None:
        self.population.load(path)


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# --- CLI ----------------------------------------------------------------------------------
def _cli_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
OUTCOME_FILE = "outcome.json"


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m grok_tune.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, field in TrainConfig.model_fields.items():
        # strings on the command line; TrainConfig converts and validates them all at once
        parser.add_argument(
            _cli_flag(name),
            dest=name,
            default=None,
            metavar="V",
            help=f"{field.description or ''} (default {field.default})".strip(),
        )
    parser.add_argument("--out", type=Path, required=True, help="output directory (new or empty)")
    parser.add_argument("--device", default=default_device(), help="cpu or cuda[:N]")
    parser.add_argument("--threads", type=_positive_int, default=available_cpus())
    parser.add_argument(
        "--resume",
        action="store_true",
        help=f"continue the run in OUT from OUT/{CHECKPOINT_FILE}, with OUT/{CONFIG_FILE}'s "
        "settings (settings given again must match)",
    )
    parser.add_argument("--checkpoint-every", type=_positive_int, default=1000, metavar="STEPS")
    return parser


def parse_config(
    parser: Parser, args: argparse.Namespace, base: dict[str, Any] | None = None
) -> TrainConfig:
    given = {k: v for k, v in vars(args).items() if k in TrainConfig.model_fields and v is not None}
    for key in ("batch_size", "stop_after_generalized", "confusion_step"):
        if isinstance(given.get(key), str) and given[key].lower() in ("none", "null"):
            given[key] = None
    try:
        return TrainConfig(**{**(base or {}), **given})
    except ValidationError as err:
        problems = []
        for e in err.errors(include_url=False):
            where = _cli_flag(str(e["loc"][0])) if e["loc"] else "settings"
            problems.append(f"{where}: {str(e['msg']).removeprefix('Value error, ')}")
        parser.fail("; ".join(problems))


def check_device(device: str) -> str | None:
    """Why ``device`` cannot run a trial here, or None."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        return f"--device {device}: not a device name (cpu, cuda, cuda:N)"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return f"--device {device}: torch sees no CUDA device here; use --device cpu"
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"--device {device}: there are {torch.cuda.device_count()} CUDA devices"
    elif dev.type != "cpu":
        return f"--device {device}: grok_tune runs on cpu or cuda"
    return None


def _stored_config(parser: Parser, out: Path) -> dict[str, Any]:
    path = out / CONFIG_FILE
    if not path.is_file():
        parser.fail(f"--resume: no run to resume in {out} (no {CONFIG_FILE})")
    try:
        stored = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        parser.fail(f"--resume: {path} cannot be read: {err}")
    if not isinstance(stored, dict):
        parser.fail(f"--resume: {path} is not a run's settings")
    return stored


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from grok_tune.study_files import folder_problem

    parser = build_parser()
    args = parser.parse_args(argv)
    out: Path = args.out
    problem = folder_problem(out)
    if problem:
        parser.fail(f"--out {out}: {problem}")
    if not args.resume and out.is_dir() and any(out.iterdir()):
        parser.fail(f"--out {out}: not empty: --resume the run there, or choose another folder")
    cfg = parse_config(parser, args, _stored_config(parser, out) if args.resume else None)
    problem = check_device(args.device)
    if problem:
        parser.fail(problem)
    torch.set_num_threads(args.threads)
    trainer = Trainer(cfg, args.device)
    ckpt = out / CHECKPOINT_FILE
    if args.resume and ckpt.exists():
        try:
            trainer.load(ckpt)
        except ValueError as err:  # another run's checkpoint: say which settings differ
            parser.fail(f"--resume: {ckpt}: {err}")
        except Exception:
            parser.fail(f"--resume: {ckpt} is not a grok_tune checkpoint (it cannot be read)")
    elif args.resume and (out / OUTCOME_FILE).exists():  # a finished run is never overwritten
        parser.fail(
            f"--resume: {out} holds a finished run ({OUTCOME_FILE}) but no {CHECKPOINT_FILE} to "
            "continue from: nothing to resume (train again into another --out)"
        )
    elif args.resume:
        print(f"no {CHECKPOINT_FILE} in {out} yet: starting the run from step 0")
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused command leaves nothing behind
    (out / CONFIG_FILE).write_text(json.dumps(cfg.model_dump(), indent=2) + "\n")

    bar = tqdm(total=cfg.steps, initial=trainer.step, unit="step", dynamic_ncols=True)

    def on_eval(record: Record, t: Trainer) -> None:
        bar.update(record[m.STEP] - bar.n)
        bar.set_postfix(train=f"{record[m.TRAIN_ACC]:.3f}", val=f"{record[m.VAL_ACC]:.3f}")
        if record[m.DONE] or record[m.STEP] % args.checkpoint_every == 0:
            t.save(ckpt)

    final = trainer.run(on_eval)
    bar.close()
    import pandas as pd

    pd.DataFrame(trainer.history).to_csv(out / "curve.csv", index=False)
    outcome = {**cfg.used(), **trainer.summary(), **final, **trainer.phases()}
    (out / OUTCOME_FILE).write_text(json.dumps(outcome, indent=2) + "\n")
    print(
        f"{final[m.STATUS]}: memorized at step {final[m.STEPS_TO_MEMORIZE]}, generalized at step "
        f"{final[m.STEPS_TO_GENERALIZE]} (None = not within {trainer.step} steps); "
        f"{trainer.step / max(final[m.ELAPSED_S], 1e-9):.1f} steps/s; results in {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
