"""CPU time of the seed baselines' demo configs over every fold, and their comparison table.

Writes a small phantom (``--studies``, size small) with ``folds.csv`` and its preprocessing cache into ``--work``
(kept between runs: an existing phantom is reused), puts stand-in stage-1 points at ``runs/coords_oof.csv``
(the true label points moved by N(0, ``--jitter`` px), so the bench does not depend on the keypoint stage),
trains each config over all folds with the fold trainer (``rsna2024 train``'s code path, one process) and prints
the seconds per config, then ``rsna2024 compare`` over the runs. Run folders are rebuilt each time.

    python bench/baselines.py --studies 24 --work /tmp/bench_baselines
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="*", type=Path,
                   default=sorted((ROOT / "experiments" / "demo").glob("s[0-3]_*.yaml")))
    p.add_argument("--work", type=Path, required=True, help="working folder (phantom, cache, runs)")
    p.add_argument("--studies", type=int, default=24)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jitter", type=float, default=2.0, help="stand-in stage-1 error, px (standard deviation)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return p.parse_args(argv)


def prepare(args) -> tuple[Path, Path]:
    """The phantom data folder (with folds.csv) and its cache root, made once."""
    from rsna2024.data.folds import make_folds
    from rsna2024.dicom.cache import preprocess
    from rsna2024.synthetic.generate import generate_dataset

    data, cache = args.work / "data", args.work / "cache"
    if not (data / "folds.csv").is_file():
        generate_dataset(data, studies=args.studies, test_studies=0, seed=args.seed, size="small", workers=1,
                         overwrite=True)
        make_folds(data, n_folds=args.folds, overwrite=True)
    preprocess(data, cache_root=cache, split="train")
    return data, cache


def stand_in_points(data: Path, runs: Path, jitter: float, seed: int) -> Path:
    import numpy as np
    import pandas as pd

    coords = pd.read_csv(data / "train_label_coordinates.csv")
    coords[["x", "y"]] += np.random.default_rng(seed).normal(0, jitter, (len(coords), 2))
    runs.mkdir(parents=True, exist_ok=True)
    coords.to_csv(runs / "coords_oof.csv", index=False)
    return runs / "coords_oof.csv"


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from rsna2024.baselines.compare import compare_runs, format_markdown
    from rsna2024.training.config import load_config
    from rsna2024.training.trainer import train_fold
    from rsna2024.utils.logging import setup_logging

    setup_logging("WARNING")
    if args.threads:
        torch.set_num_threads(args.threads)
    data, cache = prepare(args)
    runs = args.work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    stand_in_points(data, runs, args.jitter, args.seed)
    rows, run_dirs = [], []
    for path in args.configs:
        cfg = load_config(path, [f"folds={args.folds}", "device=cpu"])
        start, cpu = time.perf_counter(), time.process_time()
        for k in range(args.folds):
            result = train_fold(cfg, data, k, out=runs, cache=cache)
        rows.append((cfg.name, cfg.model.name, cfg.epochs, time.perf_counter() - start, time.process_time() - cpu))
        run_dirs.append(result.run_dir)
    print(f"{args.studies} studies, {args.folds} folds, CPU, {torch.get_num_threads()} thread(s); wall and CPU "
          "seconds (CPU time: this process's user + system time, what an idle machine's wall time approaches)")
    print(f"{'experiment':<24} {'model':<26} {'epochs':>6} {'wall s':>7} {'CPU s':>7} {'CPU s/fold':>10}")
    for name, model, epochs, wall, cpu in rows:
        print(f"{name:<24} {model:<26} {epochs:>6} {wall:>7.1f} {cpu:>7.1f} {cpu / args.folds:>10.1f}")
    print(f"{'total':<24} {'':<26} {'':>6} {sum(r[3] for r in rows):>7.1f} {sum(r[4] for r in rows):>7.1f}")
    print()
    print(format_markdown(compare_runs(data, run_dirs, out_dir=args.work / "compare")), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
