"""``python -m grok_tune.data``: a task's data as a run sees it (grok_tune/tasks/).

    python -m grok_tune.data --op x/y --p 7 --frac 0.5 --seed 0          # the table, ? = held out
    python -m grok_tune.data --op S5:x*y --frac 0.5 --format csv         # a,b,c,split
    python -m grok_tune.data --task addition --digits 3 --train-size 20 --seed 0   # a,b,c,split
    python -m grok_tune.data --task repeated_subsequence --seq-len 20 --vocab 8 --sub-len 4 \\
        --train-size 5 --val-size 5 --format csv                          # sequence,split

The settings are the runs' own (same names, same checks, same defaults); the rows are the same
on every machine and library version. With ``--train-size infinite`` the first
``--stream-rows`` examples of the training stream stand for the training data.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from pydantic import ValidationError

from grok_tune.cli import Parser
from grok_tune.config import TrainConfig
from grok_tune.tasks import task_class, task_settings

SETTINGS = ("task", *dict.fromkeys(n for names in task_settings().values() for n in names), "seed")


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m grok_tune.data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name in SETTINGS:
        field = TrainConfig.model_fields[name]
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar="V",
            help=f"{field.description or ''} (default {field.default})".strip(),
        )
    parser.add_argument(
        "--format", choices=("table", "csv"), help="table (operation tables only) or csv"
    )
    parser.add_argument("--stream-rows", type=int, default=1000, help="rows of infinite data")
    return parser


def rows(cfg: TrainConfig, stream_rows: int) -> Iterable[str]:
    """The task's data as CSV lines, header first."""
    return task_class(cfg.task).csv_rows(cfg, stream_rows)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    try:
        cfg = TrainConfig(**given)
    except ValidationError as err:
        problems = []
        for e in err.errors(include_url=False):
            where = "--" + str(e["loc"][0]).replace("_", "-") if e["loc"] else "settings"
            problems.append(f"{where}: {str(e['msg']).removeprefix('Value error, ')}")
        parser.fail("; ".join(problems))
    if args.stream_rows < 1:
        parser.fail(f"--stream-rows {args.stream_rows}: must be at least 1")
    task = task_class(cfg.task)
    fmt = args.format or ("table" if task.prints_table else "csv")
    if fmt == "table" and not task.prints_table:
        parser.fail(f"--format table: only operation tables print as a table (task {cfg.task})")
    try:
        if fmt == "table":
            task.print_table(cfg)
        else:
            for line in rows(cfg, args.stream_rows):
                sys.stdout.write(line + "\n")
    except BrokenPipeError:  # `| head` closed the pipe: not an error of ours
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
