"""Do the keypoint models learn? OOF 3-D error of the three keypoint models against an image-free baseline.

On a small phantom (default 200 training studies, seed 2024: a seed the tests do not use) this script
generates the data when absent, writes folds and the cache, trains the bench configs (``bench/configs/``)
x 5 folds, predicts out-of-fold coordinates with ``rsna2024 coords`` (axial slices chosen from the PREDICTED
Sag T2 points) and compares per series type:

- the models' median 3-D error (mm) against the true label points,
- the baseline's: every point at its mean position in the training folds' normalised canonical image grid,
  on the true slice (so the baseline is even given the slice),
- the share of levels whose chosen axial slice is within one slice of the true one.

Targets: model median error <= 1/3 of the baseline's for each series type; axial slice within one slice for
>= 95% of levels. Reruns reuse the data, cache and finished folds in ``--work``.

    .venv/bin/python bench/keypoints.py --work /tmp/kp_bench
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from rsna2024.constants import SERIES_TYPES
from rsna2024.data.contract import load_coordinates, load_series_descriptions
from rsna2024.data.folds import load_folds, make_folds
from rsna2024.dicom.cache import preprocess
from rsna2024.keypoints.baseline import mean_position_baseline
from rsna2024.keypoints.coords import write_coordinates
from rsna2024.keypoints.report import keypoint_report, point_errors
from rsna2024.keypoints.studies import StudySeries, resolve_cache
from rsna2024.synthetic.generate import generate_dataset
from rsna2024.training.config import load_config
from rsna2024.training.trainer import train_fold
from rsna2024.utils.logging import setup_logging

HERE = Path(__file__).parent
CONFIGS = ("keypoint_sagt2", "keypoint_sagt1", "keypoint_axial")


def prepare_data(work: Path, studies: int, seed: int, workers: int) -> tuple[Path, Path]:
    """The phantom (generated when absent), its folds and its cache folder."""
    data = work / "data"
    if not (data / "train.csv").exists():
        generate_dataset(data, studies=studies, test_studies=0, seed=seed, size="small", workers=workers,
                         overwrite=True)
    if not (data / "folds.csv").exists():
        make_folds(data)
    preprocess(data, cache_root=work / "cache", split="train", workers=workers)
    return data, resolve_cache(data, work / "cache")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/kp_bench"), help="data, cache, runs and report folder")
    p.add_argument("--studies", type=int, default=200)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--configs", type=Path, default=HERE / "configs", help="folder of the bench keypoint configs")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="override for every config")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1: on a shared 2-core machine two threads oversubscribe)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    setup_logging("WARNING")
    start = time.perf_counter()
    data, cache = prepare_data(args.work, args.studies, args.seed, args.workers)
    t_data = time.perf_counter() - start

    runs, train_s = [], {}
    for name in CONFIGS:
        cfg = load_config(args.configs / f"{name}.yaml", args.overrides)
        t0 = time.perf_counter()
        for fold in range(cfg.folds):
            train_fold(cfg, data, fold, out=args.work / "runs", cache=args.work / "cache")
        train_s[name] = time.perf_counter() - t0
        runs.append(args.work / "runs" / cfg.name)

    t0 = time.perf_counter()
    coords = write_coordinates(data, runs, "train", args.work / "coords_train.csv", cache, overwrite=True)
    t_coords = time.perf_counter() - t0
    tables = keypoint_report(data, coords, args.work / "report", cache)

    descriptions = load_series_descriptions(data, "train")
    studies = StudySeries(cache, descriptions, "train")
    truth = load_coordinates(data, descriptions)[["study_id", "series_id", "instance_number", "condition", "level",
                                                   "x", "y"]]
    baseline = point_errors(mean_position_baseline(truth, load_folds(data / "folds.csv"), studies), truth, studies)
    model = tables["points"]

    print(f"\nkeypoint bench: {args.studies} phantom studies (seed {args.seed}), 5 folds, OOF")
    print(f"{'series type':<18} {'points':>6} {'model median mm':>16} {'p90':>6} {'baseline median mm':>19} "
          f"{'ratio':>6}  target <= 0.33")
    ok = True
    for st in SERIES_TYPES:
        m = model.loc[model["series_type"] == st, "error_mm"]
        b = baseline.loc[baseline["series_type"] == st, "error_mm"]
        ratio = m.median() / b.median()
        ok &= bool(ratio <= 1 / 3)
        print(f"{st:<18} {len(m):>6} {m.median():>16.2f} {m.quantile(0.9):>6.2f} {b.median():>19.2f} {ratio:>6.2f}  "
              f"{'met' if ratio <= 1 / 3 else 'MISSED'}")
    axial = tables["axial_slices"].set_index("level")
    rate = float(axial.loc["all", "within_one_slice"])
    ok &= rate >= 0.95
    print(f"axial slice within one slice of the true one: {rate:.3f} of {int(axial.loc['all', 'levels'])} levels "
          f"(target >= 0.95: {'met' if rate >= 0.95 else 'MISSED'})")
    per_level = ", ".join(f"{lv} {axial.loc[lv, 'within_one_slice']:.2f}" for lv in axial.index if lv != "all")
    print(f"  per level: {per_level}")
    print(pd.Series({"data + cache": t_data, **{f"train {k} (5 folds)": v for k, v in train_s.items()},
                     "coords (OOF)": t_coords, "total": time.perf_counter() - start}).round(1).to_string())
    print(f"report: {args.work / 'report' / 'report.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
