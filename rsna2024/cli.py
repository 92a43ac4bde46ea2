"""The ``rsna2024`` command: thin argument parsing over the package's modules.

Each subcommand is a pair: ``_add_<name>`` declares its arguments (typed by ``rsna2024.utils.command``, so a
bad value is refused by argparse naming the argument), ``_run_<name>`` imports the module that does the work
(lazily, so ``rsna2024 --help`` stays fast) and calls it. Every failure ends in one line on stderr: exit code 2
for bad input (an argument, or a file or folder that cannot be read or written, named), 130 for Ctrl-C, 1 for
an unexpected error; ``validate`` exits 1 when it finds problems. ``--debug`` also prints the traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rsna2024.utils.command import (
    existing_dir,
    existing_file,
    int_at_least,
    non_negative_int,
    positive_int,
    run_guarded,
    writable_dir,
    writable_file,
)


# --------------------------------------------------------------------------- synth
def _add_synth(sub):
    p = sub.add_parser("synth", help="write a synthetic phantom dataset in the competition's Kaggle layout")
    p.add_argument("--out", type=writable_dir, required=True, help="output folder (Kaggle layout)")
    p.add_argument("--studies", type=positive_int, default=20, help="number of training studies")
    p.add_argument("--test-studies", type=non_negative_int, default=2, help="number of test studies")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--size", choices=["small", "full"], default="small",
                   help="small: ~128 px CI-sized images; full: real-sized 384-512 px")
    p.add_argument("--workers", type=positive_int, default=1, help="parallel processes (joblib)")
    p.add_argument("--preview", type=writable_file, default=None, help="also draw a montage of one study to this PNG")
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
    p.add_argument("--data", type=existing_dir, required=True, help="data folder in Kaggle layout")
    p.add_argument("--images", action="store_true",
                   help="also read every DICOM header (no pixels) and report broken series and label points "
                        "outside their image or on a missing slice (warnings naming study, series, file, tag)")
    return p


def _run_validate(args):
    from rsna2024.data.validate import validate_data

    report = validate_data(args.data, images=args.images)
    print(report.format())
    return 0 if report.ok else 1


# --------------------------------------------------------------------------- folds
def _add_folds(sub):
    p = sub.add_parser("folds", help="write folds.csv (study_id, fold): stratified, grouped by study")
    p.add_argument("--data", type=existing_dir, required=True)
    p.add_argument("--out", type=writable_file, default=None, help="default: <data>/folds.csv")
    p.add_argument("--n-folds", type=int_at_least(2), default=5)
    p.add_argument("--seed", type=non_negative_int, default=42)
    p.add_argument("--overwrite", action="store_true")
    return p


def _run_folds(args):
    from rsna2024.data.folds import make_folds

    path = make_folds(args.data, out=args.out, n_folds=args.n_folds, seed=args.seed, overwrite=args.overwrite)
    print(f"folds written to {path}")


# --------------------------------------------------------------------------- prior
def _add_prior(sub):
    p = sub.add_parser("prior", help="score the image-free class-prior predictor in k-fold CV")
    p.add_argument("--data", type=existing_dir, required=True)
    p.add_argument("--folds", type=existing_file, default=None,
                   help="default: <data>/folds.csv, or the default folds computed in memory when absent")
    return p


def _run_prior(args):
    from rsna2024.baselines.prior import evaluate_prior
    from rsna2024.metric import format_scores

    print(format_scores(evaluate_prior(args.data, folds_path=args.folds), title="image-free prior, k-fold CV"))


# --------------------------------------------------------------------------- score
def _add_score(sub):
    p = sub.add_parser("score", help="score a submission-format file against a data folder's labels")
    p.add_argument("--data", type=existing_dir, required=True, help="data folder whose train.csv holds the labels")
    p.add_argument("--submission", type=existing_file, required=True,
                   help="submission-format CSV (an OOF file, say); scored over the row ids it holds")
    p.add_argument("--require-all", action="store_true",
                   help="fail (exit 2) unless the file predicts every labelled row of train.csv")
    return p


def _run_score(args):
    from rsna2024.constants import LABELS_FILE
    from rsna2024.data.contract import load_labels_long, load_submission
    from rsna2024.metric import format_scores, score_labelled_rows

    scores, coverage = score_labelled_rows(load_labels_long(args.data), load_submission(args.submission),
                                           name=str(args.submission), labels_name=str(args.data / LABELS_FILE),
                                           require_all=args.require_all)
    print(format_scores(scores, title=str(args.submission)))
    print(coverage.format())


# --------------------------------------------------------------------------- preprocess
def _add_preprocess(sub):
    p = sub.add_parser("preprocess", help="decode every DICOM series once into the preprocessing cache")
    p.add_argument("--data", type=existing_dir, required=True)
    p.add_argument("--cache", type=writable_dir, default=None,
                   help="cache root (default: <data>/../cache); a subfolder is keyed by the preprocessing parameters "
                        "and the data folder")
    p.add_argument("--split", choices=["train", "test", "all"], default="all")
    p.add_argument("--workers", type=positive_int, default=1)
    p.add_argument("--rebuild", action="store_true",
                   help="read every series again, even finished ones whose files are unchanged")
    return p


def _run_preprocess(args):
    from rsna2024.dicom.cache import load_cache_index, preprocess, summarize_index

    index = preprocess(args.data, cache_root=args.cache, split=args.split, workers=args.workers,
                       rebuild=args.rebuild)
    print(f"cache ready: {index} ({summarize_index(load_cache_index(index))})")


# --------------------------------------------------------------------------- train
def _add_train(sub):
    p = sub.add_parser("train", help="train one fold of one experiment (resumes an interrupted fold, skips a "
                       "finished one); run it under torchrun for several GPUs")
    p.add_argument("--config", type=existing_file, required=True, help="experiment YAML (see experiments/)")
    p.add_argument("--data", type=existing_dir, required=True, help="data folder in Kaggle layout, with folds.csv")
    p.add_argument("--fold", type=non_negative_int, required=True)
    p.add_argument("--out", type=writable_dir, default="runs", help="runs root: writes <out>/<experiment>/")
    p.add_argument("--cache", type=writable_dir, default=None,
                   help="preprocessing cache root (default: <data>/../cache)")
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


# --------------------------------------------------------------------------- kaggle
def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _add_kaggle(sub):
    from rsna2024.kaggle import DEFAULT_ACCELERATOR, DEFAULT_EXCLUDE

    p = sub.add_parser("kaggle", help="package runs for Kaggle's offline kernel, push it, submit it, follow it")
    ksub = p.add_subparsers(dest="kaggle_command", required=True, metavar="ACTION")

    pk = ksub.add_parser("package", help="build <out>/dataset (runs' best weights and configs, the kit's wheel and "
                         "its dependencies' wheels) and <out>/kernel (the offline inference notebook)")
    pk.add_argument("--runs", type=existing_dir, nargs="+", required=True, metavar="RUN_DIR",
                    help="run folders (runs/<experiment>/): each one's config.yaml and fold*_best.pt are packaged")
    pk.add_argument("--name", required=True, help="title of the Kaggle dataset and kernel (6-50 characters); "
                    "their slug is its lowercase-dashed form")
    pk.add_argument("--out", type=writable_dir, default="kernels/build", help="where dataset/ and kernel/ go")
    pk.add_argument("--user", default=None, help="Kaggle user owning both (default: KAGGLE_USERNAME, or the "
                    "username of ~/.kaggle/kaggle.json)")
    pk.add_argument("--exclude", type=_comma_list, default=list(DEFAULT_EXCLUDE), metavar="PATTERN,...",
                    help="dependencies not packaged, fnmatch patterns replacing the default "
                         f"{','.join(DEFAULT_EXCLUDE)} (Kaggle's image has its own torch; pip keeps an installed "
                         "package that satisfies the requirement); '' packages everything")
    pk.add_argument("--no-deps-wheels", action="store_true",
                    help="package the kit's wheel only (the kernel then needs every dependency preinstalled)")
    pk.add_argument("--python-version", default=None, metavar="X.Y",
                    help="fetch dependency wheels for this CPython on manylinux x86_64 (default: this interpreter; "
                         "check Kaggle's with !python --version)")
    pk.add_argument("--overwrite", action="store_true", help="replace existing <out>/dataset and <out>/kernel")

    pp = ksub.add_parser("push", help="upload the dataset (create, or a new version) and wait until it is ready, "
                         "then push the kernel (which runs it)")
    pp.add_argument("--dataset", type=existing_dir, default=None, help="dataset folder (e.g. kernels/build/dataset)")
    pp.add_argument("--kernel", type=existing_dir, default=None, help="kernel folder (e.g. kernels/build/kernel)")
    pp.add_argument("--accelerator", default=DEFAULT_ACCELERATOR,
                    help="the kernel's machine ('' for the client's default GPU)")
    pp.add_argument("-m", "--message", default=None, help="the dataset version's notes")
    pp.add_argument("--wait", type=positive_int, default=900, metavar="SECONDS",
                    help="how long to wait for the uploaded dataset to be ready before pushing the kernel")

    ps = ksub.add_parser("submit", help="submit a version of the kernel to the competition (scored on the hidden "
                         "test set)")
    ps.add_argument("--kernel", required=True, metavar="USER/SLUG")
    ps.add_argument("--version", type=positive_int, required=True, help="kernel version (printed by push)")
    ps.add_argument("-m", "--message", required=True, help="submission description")

    pt = ksub.add_parser("status", help="state of the kernel's latest run")
    pt.add_argument("--kernel", required=True, metavar="USER/SLUG")
    for action in (pk, pp, ps, pt):
        _common_options(action, argparse.SUPPRESS)
    return p


def _run_kaggle(args):
    if args.kaggle_command == "package":
        from rsna2024.kaggle.package import build_package

        result = build_package(args.runs, args.name, out=args.out, user=args.user, exclude=args.exclude,
                               deps_wheels=not args.no_deps_wheels, python_version=args.python_version,
                               overwrite=args.overwrite)
        print(result.format())
        return
    from rsna2024.kaggle import api

    if args.kaggle_command == "push":
        print(api.push(args.dataset, args.kernel, accelerator=args.accelerator or None, message=args.message,
                       wait_s=args.wait).format())
    elif args.kaggle_command == "submit":
        print(api.submit(args.kernel, args.version, args.message))
    else:
        print(api.status(args.kernel))


# --------------------------------------------------------------------------- coords
def _add_coords(sub):
    p = sub.add_parser("coords", help="predicted keypoint coordinates of every study of a split from trained "
                                      "keypoint runs (train: out of fold; test: mean of the fold models)")
    p.add_argument("--data", type=existing_dir, required=True)
    p.add_argument("--runs", type=existing_dir, nargs="+", required=True,
                   help="keypoint run folders (runs/<experiment>), any of keypoint_sagt2, _sagt1, _axial; "
                        "the axial run needs the Sag T2 run")
    p.add_argument("--split", choices=["train", "test"], required=True)
    p.add_argument("--out", type=writable_file, required=True, help="coordinates CSV to write")
    p.add_argument("--cache", type=Path, default=None,
                   help="preprocessing cache root or parameter folder (default: <data>/../cache)")
    p.add_argument("--folds", type=existing_file, default=None,
                   help="train split: folds.csv (default: <data>/folds.csv)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--batch-size", type=positive_int, default=8)
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


# --------------------------------------------------------------------------- predict
def _add_predict(sub):
    p = sub.add_parser("predict", help="submission.csv for every study of a split from trained runs: keypoint runs "
                       "give the points, classifier runs (fold models averaged) the predictions, blended over runs")
    p.add_argument("--data", type=existing_dir, required=True,
                   help="data folder in Kaggle layout (may be read-only): <split>_series_descriptions.csv and "
                        "<split>_images/")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--runs", type=existing_dir, nargs="+", required=True, metavar="RUN_DIR",
                   help="run folders (runs/<experiment>): keypoint_* runs for the points, split_*/global runs and "
                        "seed baselines (s0_..s3_) for the predictions; each one's fold*_best.pt are averaged")
    p.add_argument("--out", type=writable_file, required=True, help="submission CSV to write")
    p.add_argument("--weights", type=existing_file, default=None,
                   help="ensemble weights file (runs and per-condition temperatures, written by rsna2024 evaluate); "
                        "default: every run weighs the same")
    p.add_argument("--cache", type=writable_dir, default=None,
                   help="preprocessing cache root, kept and reused (default: a temporary folder holding one chunk "
                        "of studies at a time, deleted at the end); never beside the data")
    p.add_argument("--clean-cache", action="store_true",
                   help="with --cache: delete each chunk's decoded series once predicted (bounded disk use)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present")
    p.add_argument("--tta", action="store_true",
                   help="flip test-time augmentation: also predict the patient's left-right mirror (sides swapped "
                        "back) and average")
    p.add_argument("--batch-size", type=positive_int, default=16, help="model inputs per forward pass")
    p.add_argument("--chunk-studies", type=positive_int, default=8,
                   help="studies preprocessed and predicted together (more: larger GPU batches, more disk)")
    p.add_argument("--workers", type=positive_int, default=1, help="preprocessing processes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def _run_predict(args):
    from rsna2024.inference.predict import predict_submission

    result = predict_submission(args.data, args.runs, args.out, split=args.split, weights=args.weights,
                                cache=args.cache, device=args.device, tta=args.tta, overwrite=args.overwrite,
                                batch_size=args.batch_size, chunk_studies=args.chunk_studies, workers=args.workers,
                                clean_cache=args.clean_cache)
    print(result.format_summary())
    print(f"submission written to {result.out} ({result.studies} studies, {len(result.submission)} rows)")


# --------------------------------------------------------------------------- keypoint-report
def _add_keypoint_report(sub):
    p = sub.add_parser("keypoint-report", help="3-D error (mm) of predicted coordinates against the true ones, "
                                               "axial slice choice and overlays")
    p.add_argument("--data", type=existing_dir, required=True)
    p.add_argument("--coords", type=existing_file, required=True,
                   help="a coordinates CSV of `rsna2024 coords --split train`")
    p.add_argument("--out", type=writable_dir, required=True, help="report folder")
    p.add_argument("--cache", type=Path, default=None,
                   help="preprocessing cache root or parameter folder (default: <data>/../cache)")
    p.add_argument("--overlays", type=non_negative_int, default=4, help="studies drawn (largest median error first)")
    return p


def _run_keypoint_report(args):
    from rsna2024.keypoints.report import keypoint_report
    from rsna2024.keypoints.studies import resolve_cache

    tables = keypoint_report(args.data, args.coords, args.out, resolve_cache(args.data, args.cache),
                             overlays=args.overlays)
    print(tables["errors"].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(tables["axial_slices"].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"report written to {args.out / 'report.md'}")


# --------------------------------------------------------------------------- report
def _add_report(sub):
    p = sub.add_parser("report", help="one study as a self-contained HTML page: its series with the predicted and "
                       "true points and regions, the axial slices per level, the 5x5 predicted severities beside "
                       "the labels, the keypoint confidences and the warnings met")
    p.add_argument("--data", type=existing_dir, required=True, help="data folder in Kaggle layout")
    p.add_argument("--study", type=non_negative_int, required=True, help="study_id")
    p.add_argument("--runs", type=existing_dir, nargs="+", required=True, metavar="RUN_DIR",
                   help="run folders (runs/<experiment>): keypoint runs predict the points, classifier runs "
                        "(split_*, global) the severities; points only without classifier runs")
    p.add_argument("--out", type=writable_file, required=True, help="the HTML file to write")
    p.add_argument("--cache", type=Path, default=None,
                   help="preprocessing cache root or parameter folder (default: <data>/../cache)")
    p.add_argument("--split", choices=["train", "test"], default=None,
                   help="the split listing the study (default: the one whose series descriptions list it)")
    p.add_argument("--folds", type=existing_file, default=None,
                   help="train split: folds.csv choosing each run's out-of-fold model (default: <data>/folds.csv)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return p


def _run_report(args):
    from rsna2024.inference.study_report import write_study_report
    from rsna2024.keypoints.studies import resolve_cache

    report = write_study_report(args.data, args.study, args.runs, args.out, resolve_cache(args.data, args.cache),
                                split=args.split, device=args.device, overwrite=args.overwrite,
                                folds_path=args.folds)
    print(f"study {report.study_id} ({report.split}): {len(report.panels)} images, "
          f"{'no' if report.predictions is None else len(report.predictions)} predicted rows, "
          f"{len(report.warnings)} warning(s); written to {args.out}")


# --------------------------------------------------------------------------- compare
def _add_compare(sub):
    p = sub.add_parser("compare", help="rank runs on the same folds: prior, seed baselines S0-S3, the split and "
                       "global families and their ensemble (score, its terms, accuracy, macro F1)")
    p.add_argument("--data", type=existing_dir, required=True, help="data folder whose train.csv holds the labels")
    p.add_argument("--runs", type=existing_dir, nargs="+", required=True, metavar="RUN_DIR",
                   help="run folders (runs/<experiment>) holding config.yaml and OOF files")
    p.add_argument("--folds", type=existing_file, default=None, help="default: <data>/folds.csv")
    p.add_argument("--points", choices=["predicted", "true"], default="predicted",
                   help="which OOF files: on stage 1's predicted points (oof*.csv) or the true ones")
    p.add_argument("--out", type=writable_dir, default=None,
                   help="folder for compare.csv, compare.md and the confusion PNGs (default: <runs' parent>/compare)")
    return p


def _run_compare(args):
    from rsna2024.baselines.compare import CSV_FILE, compare_runs, format_markdown

    out = args.out if args.out is not None else args.runs[0].absolute().parent / "compare"
    table = compare_runs(args.data, args.runs, out_dir=out, folds_file=args.folds, points=args.points)
    print(format_markdown(table), end="")
    print(f"table and confusion matrices written to {out} ({CSV_FILE}, ...)")


# --------------------------------------------------------------------------- evaluate
def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="OOF tables of classifier runs per condition group and level, of their "
                       "ensemble and of the prior; optionally ensemble weights and per-condition temperatures fitted "
                       "with a nested split, written as the weights file `predict --weights` reads")
    p.add_argument("--data", type=existing_dir, required=True, help="data folder whose train.csv holds the labels")
    p.add_argument("--runs", type=existing_dir, nargs="+", required=True, metavar="RUN_DIR",
                   help="run folders (runs/<experiment>) holding config.yaml and OOF files; the weights file names "
                        "them by folder name")
    p.add_argument("--folds", type=existing_file, default=None, help="default: <data>/folds.csv")
    p.add_argument("--points", choices=["predicted", "true"], default="predicted",
                   help="which OOF files: on stage 1's predicted points (oof.csv) or the true ones")
    p.add_argument("--fit-weights", action="store_true",
                   help="fit one weight >= 0 per run (summing to 1) minimising the score")
    p.add_argument("--fit-temperature", action="store_true",
                   help="fit one temperature per condition (p ** (1/T), renormalised) minimising the score")
    p.add_argument("--out", type=writable_dir, default=None,
                   help="folder for the tables (default: <first run's parent>/evaluate)")
    p.add_argument("--weights-out", type=writable_file, default=None,
                   help="the weights file fitted on all folds (default: <out>/ensemble_weights.json)")
    p.add_argument("--overwrite", action="store_true", help="replace a weights file holding other weights")
    return p


def _run_evaluate(args):
    from rsna2024.inference.evaluate import evaluate_runs

    out = args.out if args.out is not None else args.runs[0].absolute().parent / "evaluate"
    result = evaluate_runs(args.data, args.runs, points=args.points, fit_weights=args.fit_weights,
                           fit_temperature=args.fit_temperature, out_dir=out, weights_out=args.weights_out,
                           folds_file=args.folds, overwrite=args.overwrite)
    print(result.format(), end="")
    print(f"tables written to {out}")
    if result.weights is not None:
        print(f"weights file (for predict --weights): {result.files[-1]}")


# --------------------------------------------------------------------------- run
def _add_run(sub):
    from rsna2024.training.runner import add_run_arguments

    p = sub.add_parser("run", help="what main.py does: validate, folds, cache, then every experiment across the folds "
                       "in dependency order (keypoints, coordinates, classifiers) and the OOF table")
    p.add_argument("--data", type=existing_dir, required=True, help="data folder in Kaggle layout")
    p.add_argument("--cache", type=writable_dir, default=None,
                   help="preprocessing cache root (default: <data>/../cache)")
    p.add_argument("--workers", type=positive_int, default=2, help="preprocessing processes")
    add_run_arguments(p)
    return p


def _run_run(args):
    from rsna2024.training.runner import options_from_args, run_pipeline

    return run_pipeline(options_from_args(args, args.data, Path("experiments")))


COMMANDS = {
    "synth": (_add_synth, _run_synth),
    "validate": (_add_validate, _run_validate),
    "folds": (_add_folds, _run_folds),
    "prior": (_add_prior, _run_prior),
    "score": (_add_score, _run_score),
    "preprocess": (_add_preprocess, _run_preprocess),
    "train": (_add_train, _run_train),
    "kaggle": (_add_kaggle, _run_kaggle),
    "coords": (_add_coords, _run_coords),
    "predict": (_add_predict, _run_predict),
    "keypoint-report": (_add_keypoint_report, _run_keypoint_report),
    "report": (_add_report, _run_report),
    "compare": (_add_compare, _run_compare),
    "evaluate": (_add_evaluate, _run_evaluate),
    "run": (_add_run, _run_run),
}


def _common_options(parser: argparse.ArgumentParser, default) -> argparse.ArgumentParser:
    """``-v`` and ``--debug``, accepted before and after the command (``default`` SUPPRESS on subparsers keeps
    a flag given before the command)."""
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")
    parser.add_argument("--debug", action="store_true", default=default,
                        help="print the traceback of an error (besides its one-line message)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _common_options(argparse.ArgumentParser(prog="rsna2024", description=__doc__.splitlines()[0]), False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, run in COMMANDS.values():
        _common_options(add(sub), argparse.SUPPRESS).set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code (see the module docstring)."""
    from rsna2024.utils.logging import setup_logging

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a bad argument (argparse printed the usage and the message)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    setup_logging("DEBUG" if args.verbose else "INFO")
    return run_guarded(f"rsna2024 {args.command}", lambda: args._run(args), debug=args.debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
