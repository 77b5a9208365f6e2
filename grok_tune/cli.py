"""What every command shares: a refused input is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

USAGE_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse, minus the usage block in front of an error: the error line says what is wrong,
    and ``--help`` shows the usage for whoever wants it."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see --help)\n")

    def fail(self, message: str) -> NoReturn:
        """Refuse input that argparse accepted (a value out of range, a missing file, ...)."""
        sys.stderr.flush()
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")
