"""TensorBoard as a user sees it: screenshots of a study's HParams and Time Series dashboards.

    .venv/bin/python bench/tensorboard_screenshots.py STUDY_DIR [--out DIR] [--browser chromium]

Starts ``tensorboard --logdir STUDY_DIR`` on 127.0.0.1, waits until it has loaded every trial's
session, and has headless Chromium (the system's package: ``apt-get install chromium``) save
``hparams.png`` and ``time_series.png`` in ``--out`` (default STUDY_DIR/figures). Not part of
the test suite, which reads the same dashboards over TensorBoard's HTTP API
(tests/test_search.py); this is the check by eye: region and status columns, the outcome
metrics ticked, ``acc`` and ``loss`` opening Time Series, runs named ``t00003_frac=0.5_...``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's tests/

from tests.tensorboard_server import post, serve, wait_for

PAGES = {"hparams.png": "#hparams", "time_series.png": "#timeseries"}
STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def screenshot(browser: str, url: str, path: Path, width: int = 1600, height: int = 1000) -> None:
    with tempfile.TemporaryDirectory() as profile:  # no state shared with a user's browser
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={width},{height}",
             # TensorBoard's pages load their data after the page itself
             "--virtual-time-budget=15000", f"--screenshot={path}", url],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, metavar="STUDY_DIR")
    parser.add_argument("--out", type=Path, help="default STUDY_DIR/figures")
    parser.add_argument("--browser", default="chromium")
    args = parser.parse_args(argv)
    browser = shutil.which(args.browser)
    if browser is None:
        parser.error(f"--browser {args.browser}: not found (apt-get install chromium)")
    out = args.out or args.study / "figures"
    out.mkdir(parents=True, exist_ok=True)
    trial_runs = len({p.parent for p in args.study.glob("*/**/events.out.tfevents.*")})
    with serve(args.study) as url:
        body = {"experimentName": "", "allowedStatuses": STATUSES, "sliceSize": 1000}
        groups = wait_for(
            lambda: post(url, "/data/plugin/hparams/session_groups", body),
            lambda r: len(r.get("sessionGroups", [])) >= trial_runs,
        )
        print(f"{url}: {len(groups.get('sessionGroups', []))} sessions of {trial_runs} runs")
        for name, page in PAGES.items():
            screenshot(browser, f"{url}/{page}", out / name)
            print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
