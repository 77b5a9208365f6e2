"""The study command, ``python -m grok_tune.search``, as rooms with one job each (cli.py says
which)."""
