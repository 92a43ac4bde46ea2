"""The ``rsna2024`` command: thin argument parsing over the package's modules.

Each subcommand is a pair: ``_add_<name>`` declares its arguments, ``_run_<name>`` imports the
module that does the work (lazily, so ``rsna2024 --help`` stays fast) and calls it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rsna2024.errors import RsnaError


# --------------------------------------------------------------------------- synth
def _add_synth(sub):
    p = sub.add_parser("synth", help="write a synthetic phantom dataset in the competition's Kaggle layout")
    p.add_argument("--out", type=Path, required=True, help="output folder (Kaggle layout)")
    p.add_argument("--studies", type=int, default=20, help="number of training studies")
    p.add_argument("--test-studies", type=int, default=2, help="number of test studies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=["small", "full"], default="small",
                   help="small: ~128 px CI-sized images; full: real-sized 384-512 px")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (joblib)")
    p.add_argument("--preview", type=Path, default=None, help="also draw a montage of one study to this PNG")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    return p


def _run_synth(args):
    from rsna2024.synthetic.generate import generate_dataset

    generate_dataset(args.out, studies=args.studies, test_studies=args.test_studies, seed=args.seed,
                     size=args.size, workers=args.workers, preview=args.preview, overwrite=args.overwrite)
    print(f"phantom dataset written to {args.out}")


# --------------------------------------------------------------------------- validate
def _add_validate(sub):
    p = sub.add_parser("validate", help="check a data folder against the competition's data contract")
    p.add_argument("--data", type=Path, required=True, help="data folder in Kaggle layout")
    return p


def _run_validate(args):
    from rsna2024.data.validate import validate_data

    report = validate_data(args.data)
    print(report.format())
    return 0 if report.ok else 1


# --------------------------------------------------------------------------- folds
def _add_folds(sub):
    p = sub.add_parser("folds", help="write folds.csv (study_id, fold): stratified, grouped by study")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, default=None, help="default: <data>/folds.csv")
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--overwrite", action="store_true")
    return p


def _run_folds(args):
    from rsna2024.data.folds import make_folds

    path = make_folds(args.data, out=args.out, n_folds=args.n_folds, seed=args.seed, overwrite=args.overwrite)
    print(f"folds written to {path}")


# --------------------------------------------------------------------------- prior
def _add_prior(sub):
    p = sub.add_parser("prior", help="score the image-free class-prior predictor in k-fold CV")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--folds", type=Path, default=None,
                   help="default: <data>/folds.csv, or the default folds computed in memory when absent")
    return p


def _run_prior(args):
    from rsna2024.data.prior import evaluate_prior
    from rsna2024.metric import format_scores

    print(format_scores(evaluate_prior(args.data, folds_path=args.folds), title="image-free prior, k-fold CV"))


# --------------------------------------------------------------------------- score
def _add_score(sub):
    p = sub.add_parser("score", help="score a submission-format file against a data folder's labels")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--submission", type=Path, required=True)
    return p


def _run_score(args):
    from rsna2024.metric import format_scores, score_submission_file

    print(format_scores(score_submission_file(args.data, args.submission), title=str(args.submission)))


# --------------------------------------------------------------------------- preprocess
def _add_preprocess(sub):
    p = sub.add_parser("preprocess", help="decode every DICOM series once into the preprocessing cache")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--cache", type=Path, default=None,
                   help="cache root (default: <data>/../cache); a subfolder is keyed by the preprocessing parameters")
    p.add_argument("--split", choices=["train", "test", "all"], default="all")
    p.add_argument("--workers", type=int, default=1)
    return p


def _run_preprocess(args):
    from rsna2024.dicom.cache import preprocess

    index = preprocess(args.data, cache_root=args.cache, split=args.split, workers=args.workers)
    print(f"cache ready: {index}")


# --------------------------------------------------------------------------- train
def _add_train(sub):
    p = sub.add_parser("train", help="train one fold of one experiment (resumes an interrupted fold, skips a "
                       "finished one); run it under torchrun for several GPUs")
    p.add_argument("--config", type=Path, required=True, help="experiment YAML (see experiments/)")
    p.add_argument("--data", type=Path, required=True, help="data folder in Kaggle layout, with folds.csv")
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--out", type=Path, default=Path("runs"), help="runs root: writes <out>/<experiment>/")
    p.add_argument("--cache", type=Path, default=None, help="preprocessing cache root (default: <data>/../cache)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=3e-4 --set data.image_size=256 (repeatable)")
    return p


def _run_train(args):
    import os

    from rsna2024.training.config import load_config
    from rsna2024.training.trainer import train_fold

    cfg = load_config(args.config, args.overrides)
    result = train_fold(cfg, args.data, args.fold, out=args.out, cache=args.cache)
    state = "already finished" if result.skipped else "done"
    if os.environ.get("RANK", "0") == "0":  # under torchrun: print once
            print(f"{cfg.name} fold {result.fold} {state}: best {result.metric} {result.best_value:.5g} "
              f"at epoch {result.best_epoch + 1} ({result.run_dir})")


# --------------------------------------------------------------------------- coords
def _add_coords(sub):
    p = sub.add_parser("coords", help="predicted keypoint coordinates of every study of a split from trained "
                                      "keypoint runs (train: out of fold; test: mean of the fold models)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--runs", type=Path, nargs="+", required=True,
                   help="keypoint run folders (runs/<experiment>), any of keypoint_sagt2, _sagt1, _axial; "
                        "the axial run needs the Sag T2 run")
    p.add_argument("--split", choices=["train", "test"], required=True)
    p.add_argument("--out", type=Path, required=True, help="coordinates CSV to write")
    p.add_argument("--cache", type=Path, default=None,
                   help="preprocessing cache root or parameter folder (default: <data>/../cache)")
    p.add_argument("--folds", type=Path, default=None, help="train split: folds.csv (default: <data>/folds.csv)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--slice-search-mm", type=float, default=None,
                   help="try every slice within this distance of each point's usual slice and keep the surest "
                        "(default: each run's data.slice_search_mm; 0: off)")
    p.add_argument("--overwrite", action="store_true")
    return p


def _run_coords(args):
    from rsna2024.keypoints.coords import write_coordinates
    from rsna2024.keypoints.studies import resolve_cache

    path = write_coordinates(args.data, args.runs, args.split, args.out, resolve_cache(args.data, args.cache),
                             overwrite=args.overwrite, device=args.device, batch_size=args.batch_size,
                             folds_path=args.folds, slice_search_mm=args.slice_search_mm)
    print(f"coordinates written to {path}")


# --------------------------------------------------------------------------- keypoint-report
def _add_keypoint_report(sub):
    p = sub.add_parser("keypoint-report", help="3-D error (mm) of predicted coordinates against the true ones, "
                                               "axial slice choice and overlays")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--coords", type=Path, required=True, help="a coordinates CSV of `rsna2024 coords --split train`")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--cache", type=Path, default=None,
                   help="preprocessing cache root or parameter folder (default: <data>/../cache)")
    p.add_argument("--overlays", type=int, default=4, help="studies drawn (largest median error first)")
    return p


def _run_keypoint_report(args):
    from rsna2024.keypoints.report import keypoint_report
    from rsna2024.keypoints.studies import resolve_cache

    tables = keypoint_report(args.data, args.coords, args.out, resolve_cache(args.data, args.cache),
                             overlays=args.overlays)
    print(tables["errors"].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(tables["axial_slices"].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"report written to {args.out / 'report.md'}")


COMMANDS = {
    "synth": (_add_synth, _run_synth),
    "validate": (_add_validate, _run_validate),
    "folds": (_add_folds, _run_folds),
    "prior": (_add_prior, _run_prior),
    "score": (_add_score, _run_score),
    "preprocess": (_add_preprocess, _run_preprocess),
    "train": (_add_train, _run_train),
    "coords": (_add_coords, _run_coords),
    "keypoint-report": (_add_keypoint_report, _run_keypoint_report),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsna2024", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, run in COMMANDS.values():
        add(sub).set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from rsna2024.utils.logging import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging("DEBUG" if args.verbose else "INFO")
    try:
        return int(args._run(args) or 0)
    except (RsnaError, FileExistsError, FileNotFoundError) as exc:
        print(f"rsna2024 {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
