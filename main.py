"""Main job of the kit. ``python main.py --demo`` runs the whole pipeline on the synthetic phantom.

Today it generates the phantom when absent, validates it (DICOM headers included), writes the folds,
fills the preprocessing cache and prints the image-free floor; training stages join as they land.
A CSV that breaks the contract stops the run; a broken study or series is a warning naming it and the
run goes on without it (only a cache in which every series failed stops it).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", action="store_true", help="run on the synthetic phantom (generated when absent)")
    p.add_argument("--data", type=Path, default=None, help="data folder in Kaggle layout (default: data/raw, "
                   "or data/phantom with --demo)")
    p.add_argument("--cache", type=Path, default=None, help="preprocessing cache root (default: <data>/../cache)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--demo-studies", type=int, default=24, help="training studies of the demo phantom")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from rsna2024.baselines.prior import evaluate_prior
    from rsna2024.data.folds import make_folds
    from rsna2024.data.validate import validate_data
    from rsna2024.dicom.cache import load_cache_index, preprocess, summarize_index
    from rsna2024.errors import RsnaError
    from rsna2024.metric import format_scores
    from rsna2024.utils.logging import get_logger, setup_logging

    args = parse_args(argv)
    setup_logging()
    log = get_logger("main")
    data = args.data or Path("data/phantom" if args.demo else "data/raw")
    if args.demo and not (data / "train.csv").exists():
        from rsna2024.synthetic.generate import generate_dataset

        log.info("generating the phantom dataset in %s", data)
        generate_dataset(data, studies=args.demo_studies, test_studies=2, seed=0, size="small",
                         workers=args.workers)
    if not (data / "train.csv").exists():
        log.error("no train.csv in %s: put the competition data there (Kaggle layout) or run with --demo", data)
        return 2

    report = validate_data(data, images=True, workers=args.workers)
    print(report.format())
    if not report.ok:  # a CSV breaks the contract; image problems are only warnings
        return 1
    folds = data / "folds.csv"
    if not folds.exists():
        make_folds(data, out=folds)
    log.info("folds: %s", folds)
    try:
        index = preprocess(data, cache_root=args.cache, split="all", workers=args.workers)
    except RsnaError as exc:
        log.error("%s", exc)
        return 1
    table = load_cache_index(index)
    failed = table[table["status"] == "failed"]
    log.info("cache index: %s (%s)", index, summarize_index(table))
    for row in failed.itertuples(index=False):
        log.warning("study %s, series %s left out (preprocessing failed): %s", row.study_id, row.series_id, row.error)
    print(format_scores(evaluate_prior(data, folds_path=folds), title="image-free prior, 5-fold CV"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
