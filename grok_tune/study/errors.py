"""The study command's one error: input it cannot run with (exit status 2)."""

from __future__ import annotations


class Refused(Exception):
    """Input the study cannot run with; the message names what and why. Exit status 2."""
