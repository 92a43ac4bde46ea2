"""Main job of the kit: train every experiment across the folds and print the out-of-fold scores.

``python main.py`` runs the configs of ``experiments/`` on ``data/raw``; ``python main.py --demo`` generates the
synthetic phantom when absent and runs ``experiments/demo/`` into ``runs/demo``. Both validate the data, write
``folds.csv``, fill the preprocessing cache, train the keypoint models, predict their coordinates, train the
classifiers on them and end with the OOF table beside the image-free prior (``<runs>/oof_scores.csv``), then
``rsna2024 predict`` on the data folder's test split (``<runs>/submission.csv``) and the command that packages the
runs for Kaggle. A second run skips what is finished and resumes what was interrupted. The same runs:
``rsna2024 run``. A CSV that breaks the contract stops the run; a broken study or series is a warning naming it
and the run goes on without it (only a cache in which every series failed stops it).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def parse_args(argv=None):
    from rsna2024.training.runner import add_run_arguments

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", action="store_true", help="run experiments/demo/ on the synthetic phantom (generated "
                   "when absent) into runs/demo")
    p.add_argument("--data", type=Path, default=None, help="data folder in Kaggle layout (default: data/raw, "
                   "or data/phantom with --demo)")
    p.add_argument("--cache", type=Path, default=None, help="preprocessing cache root (default: <data>/../cache)")
    p.add_argument("--workers", type=int, default=2, help="processes for the phantom and the preprocessing")
    p.add_argument("--demo-studies", type=int, default=60, help="training studies of the demo phantom")
    add_run_arguments(p, experiments_default="experiments/, or experiments/demo/ with --demo",
                      runs_default="runs, or runs/demo with --demo")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from rsna2024.errors import RsnaError
    from rsna2024.training.runner import options_from_args, run_pipeline
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
    try:
        experiments = ROOT / "experiments" / "demo" if args.demo else ROOT / "experiments"
        opts = options_from_args(args, data, experiments, runs=Path("runs/demo" if args.demo else "runs"))
        setup_logging(log_file=opts.runs / "main.log")
        return run_pipeline(opts)
    except (RsnaError, FileExistsError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
