"""Phantom score ceiling: what a classifier that measured each structure's narrowing would score.

A phantom's severity is anatomy (``rsna2024.synthetic.anatomy``): each labelled structure loses a fraction of its
size drawn uniformly from its class's range (``NARROWING_RANGES``, overlapping a little). This script reads the
true fractions from ``<data>/phantom/studies.json`` and scores, with the competition metric over every labelled
row of ``train.csv``, the prediction of a reader who knows the per-target class frequencies and sees each fraction
with a Gaussian error of ``--noise`` (0: exact): the posterior times the metric's class weights, which minimises
the weighted log loss. The best any model can do on that phantom, and how the score degrades as the
measurement blurs (the prior's class frequencies are fitted on all labels: a ceiling, not a CV score). Put a
model's OOF total beside the table to read how precisely it measures.

    .venv/bin/python bench/phantom_ceiling.py --data /tmp/phantom_cv/data
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import erf

from rsna2024.baselines.prior import fit_prior
from rsna2024.constants import PRED_COLUMNS
from rsna2024.data.contract import labels_long
from rsna2024.metric import score_labelled_rows
from rsna2024.synthetic.anatomy import NARROWING_RANGES


def _likelihood(fraction: np.ndarray, noise: float) -> np.ndarray:
    """(N, 3) density of the observed fractions under each class's uniform range blurred by ``noise``."""
    out = []
    for lo, hi in NARROWING_RANGES:
        if noise == 0:
            out.append(((fraction >= lo) & (fraction <= hi)) / (hi - lo))
        else:
            z = noise * math.sqrt(2)
            out.append(0.5 * (erf((hi - fraction) / z) - erf((lo - fraction) / z)) / (hi - lo))
    return np.stack(out, axis=1)


def true_fractions(data: Path, long: pd.DataFrame) -> np.ndarray:
    """(N,) the fraction each labelled row's structure lost, from ``<data>/phantom/studies.json``."""
    studies = json.loads((data / "phantom" / "studies.json").read_text())
    lost = {(s["study_id"], c, lv): v for s in studies for c, per in s["anatomy"]["narrowing"].items()
            for lv, v in per.items()}
    return np.array([lost[(r.study_id, r.condition, r.level)] for r in long.itertuples()])


def ceiling(long: pd.DataFrame, lost: np.ndarray, prior: np.ndarray, noise: float, seed: int = 0) -> dict[str, float]:
    """Scores of the posterior reader at one ``noise`` (fraction units) over the labelled rows ``long``, given
    their true ``lost`` fractions and the weighted ``prior`` per row (:func:`_weighted_prior`)."""
    seen = lost + np.random.default_rng(seed).normal(0.0, noise, len(lost)) if noise > 0 else lost
    return _score(long, prior * _likelihood(seen, noise))


def _weighted_prior(long: pd.DataFrame) -> np.ndarray:
    """(N, 3) per labelled row the class frequencies times the class weights, normalised (the kit's prior)."""
    prior = fit_prior(long).set_index(["condition", "level"])[list(PRED_COLUMNS)]
    return prior.loc[list(zip(long["condition"], long["level"]))].to_numpy()


def _score(long: pd.DataFrame, probs: np.ndarray) -> dict[str, float]:
    probs = probs / probs.sum(axis=1, keepdims=True)
    sub = pd.DataFrame(probs, columns=list(PRED_COLUMNS)).assign(row_id=long["row_id"].to_numpy())
    return score_labelled_rows(long, sub[["row_id", *PRED_COLUMNS]])[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="a phantom data folder (holding phantom/studies.json)")
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.03, 0.06, 0.1, 0.15],
                   help="measurement errors to score (standard deviations, in fraction lost)")
    args = p.parse_args(argv)
    if not (args.data / "phantom" / "studies.json").is_file():
        print(f"{args.data}: no phantom/studies.json (not a phantom data folder)", file=sys.stderr)
        return 2
    long = labels_long(pd.read_csv(args.data / "train.csv"))
    lost, prior = true_fractions(args.data, long), _weighted_prior(long)
    baseline = _score(long, prior)
    rows = [{"noise": n, **ceiling(long, lost, prior, n)} for n in args.noise]
    table = pd.DataFrame(rows).assign(vs_prior=lambda t: t["total"] / baseline["total"])
    print(f"posterior reader of the true narrowing fractions, {args.data} (prior total {baseline['total']:.4f})")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
