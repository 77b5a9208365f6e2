"""``python -m grok_tune.search``: the study command's entry point (grok_tune/study/cli.py has
its usage, flags and exit statuses; grok_tune/study/ one module per job)."""

from __future__ import annotations

import sys

from grok_tune.study.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
