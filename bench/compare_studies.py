"""Two runs of the same study, compared trial by trial: the outcomes and every curve value.

Run by hand, after running a shipped study with the code before a change and after it (each
into its own ``--storage``)::

    .venv/bin/python bench/compare_studies.py BEFORE/default AFTER/default

Trials are matched by their settings (the study's varying ones); outcomes compare exactly, NaN
equal to NaN; curves compare every evaluation's every value (the clock left out). Exit 1 where
anything differs.
"""

from __future__ import annotations

import sys

import pandas as pd

from grok_tune import metrics as m
from grok_tune.regions import REGION
from grok_tune.results import read_curves, read_trials

OUTCOMES = [
    m.STATUS, REGION, m.STEPS_TO_MEMORIZE, m.STEPS_TO_GENERALIZE, m.STEP, m.TRAIN_ACC,
    m.VAL_ACC, m.TRAIN_LOSS, m.VAL_LOSS, m.WEIGHT_NORM, *m.PHASE_OUTCOMES, *m.NANDA_PHASES,
]  # fmt: skip


def compare(before: str, after: str) -> bool:
    b, a = read_trials(before), read_trials(after)
    if len(b) != len(a):
        print(f"{before}: {len(b)} trials, {after}: {len(a)}")
        return False
    keys = [c for c in b.columns if c in a.columns and c not in OUTCOMES and b[c].nunique() > 1]
    keys = [c for c in keys if not any(s in c for s in ("trial", "time", "node", "elapsed"))]
    b, a = (t.sort_values(keys).reset_index(drop=True) for t in (b, a))
    cols = [c for c in OUTCOMES if c in b and c in a]
    differ = ~((b[cols] == a[cols]) | (b[cols].isna() & a[cols].isna())).all(axis=1)
    cb, ca = (read_curves(s).drop(columns=[m.ELAPSED_S, "trial_id"]) for s in (before, after))
    shared = [c for c in cb.columns if c in ca.columns]
    rows_b, rows_a = (sorted(map(repr, c[shared].values.tolist())) for c in (cb, ca))
    same_curves = rows_b == rows_a
    regions = {str(k): int(v) for k, v in b[REGION].value_counts().items()}
    print(
        f"{after}: {len(b)} trials, outcomes equal in {int((~differ).sum())}/{len(b)} "
        f"(regions {regions}); curves equal: {same_curves} ({len(cb)} evaluations)"
    )
    if differ.any():
        print(pd.concat([b.loc[differ, keys + cols], a.loc[differ, cols]], axis=1).to_string())
    return not differ.any() and same_curves


if __name__ == "__main__":
    sys.exit(0 if compare(*sys.argv[1:3]) else 1)
