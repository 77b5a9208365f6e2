"""Outcomes per task and data regime (grok_tune/regions.py): a region says what a run learned,
and reads true on the tables, on addition with limited or unlimited data, and on induction."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from grok_tune import metrics as m
from grok_tune.regions import INDUCTION_LOSS_SHARE, REGION, Region, classify_trials

INF = math.inf
BASE = math.log(128)  # the unigram baseline of vocab 128


def row(**values) -> dict:
    return {"trial_id": "t", m.STATUS: "censored", m.STEPS_TO_MEMORIZE: None,
            m.STEPS_TO_GENERALIZE: None, **values}  # fmt: skip


INDUCTION = {"task": "repeated_subsequence", "vocab": 128}
CASES = [
    # tables: today's four regions, unchanged
    ("table grok", row(task="table", steps_to_memorize=200, steps_to_generalize=2000), "grok"),
    ("table memorize", row(task="table", steps_to_memorize=200), "memorize"),
    # addition, limited data: train and validation differ, the four regions apply
    ("addition 750 memorize", row(task="addition", train_size=750.0, steps_to_memorize=300,
                                   val_phase_step=58.0), "memorize"),
    # addition, unlimited data: no memorization to speak of
    ("addition inf learned", row(task="addition", train_size=INF, steps_to_memorize=900,
                                  steps_to_generalize=900), "learned"),
    ("addition inf digits", row(task="addition", train_size=INF, steps_to_generalize_digit0=550),
     "partial"),
    ("addition inf cliff", row(task="addition", train_size=INF, val_phase_step=1888.0), "partial"),
    ("addition inf nothing", row(task="addition", train_size=INF), "confusion"),
    # induction: the heads formed (a cliff, and the loss far below ln vocab) or not
    ("2 layers", row(**INDUCTION, train_size=INF, val_loss=0.3, train_loss=0.3,
                     val_phase_step=411.0), "induction"),
    ("1 layer, smooth", row(**INDUCTION, train_size=INF, val_loss=2.3, train_loss=2.3),
     "confusion"),
    ("cliff, loss high", row(**INDUCTION, train_size=INF, val_loss=0.5 * BASE,
                             val_phase_step=300.0), "confusion"),
    ("256 sequences", row(**INDUCTION, train_size=256.0, val_loss=5.5, train_loss=0.2),
     "memorize"),
    ("diverged", row(**INDUCTION, status="diverged"), "diverged"),
]  # fmt: skip


@pytest.mark.parametrize(("trial", "region"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_task_reads_its_own_outcome(trial, region):
    assert classify_trials(pd.DataFrame([trial]))[REGION].iloc[0] == Region(region)


def test_induction_line_is_a_share_of_the_unigram_baseline():
    just_below = row(**INDUCTION, train_size=INF, val_phase_step=300.0,
                     val_loss=INDUCTION_LOSS_SHARE * BASE * 0.99)  # fmt: skip
    just_above = {**just_below, "val_loss": INDUCTION_LOSS_SHARE * BASE * 1.01}
    regions = classify_trials(pd.DataFrame([just_below, just_above]))[REGION]
    assert list(regions) == [Region.INDUCTION, Region.CONFUSION]
    # a larger vocabulary raises the baseline, and the line with it
    bigger = {**just_above, "vocab": 1024}
    assert classify_trials(pd.DataFrame([bigger]))[REGION].iloc[0] == Region.INDUCTION
