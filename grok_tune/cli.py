"""What every command shares: a refused input is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

USAGE_ERROR = 2


def did_you_mean(key: str, names: Sequence[str], aliases: Mapping[str, str] | None = None) -> str:
    """The allowed name a mistyped or other-tool name most likely meant ('' for none)."""
    guess = (aliases or {}).get(key)
    if guess not in names:
        guess = next(iter(difflib.get_close_matches(key, names, n=1, cutoff=0.7)), None)
    return guess or ""


class Parser(argparse.ArgumentParser):
    """argparse, minus the usage block in front of an error: the error line says what is wrong,
    and ``--help`` shows the usage for whoever wants it."""

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            message += self._hints(message.removeprefix(prefix).split())
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see --help)\n")

    def _hints(self, unknown: list[str]) -> str:
        """'--learning-rate' -> ' (did you mean --lr?)': the settings' aliases, then spelling."""
        from grok_tune.space import ALIASES  # the settings' other names; pydantic, so lazily

        flags = {o[2:].replace("-", "_"): o for o in self._option_string_actions if o[:2] == "--"}
        hints = []
        for arg in unknown:
            if arg.startswith("--"):
                key = arg[2:].split("=")[0].replace("-", "_")
                if guess := did_you_mean(key, list(flags), ALIASES):
                    hints.append(f"{arg.split('=')[0]}: did you mean {flags[guess]}?")
        return f" ({'; '.join(hints)})" if hints else ""

    def fail(self, message: str) -> NoReturn:
        """Refuse input that argparse accepted (a value out of range, a missing file, ...)."""
        sys.stderr.flush()
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")
