"""Does the two-stage recipe beat the prior? OOF score of keypoints -> ROI classifiers on a 200-study phantom.

On a small phantom (default 200 training studies, seed 2024: a seed the tests do not use; the keypoint bench's
data) this script generates the data when absent, writes folds and the cache, then:

1. stage 1: trains the keypoint configs (``--stage1``, default ``bench/configs/keypoint_*.yaml``) x 5 folds and
   predicts out-of-fold coordinates into ``<work>/runs/coords_oof.csv`` (``rsna2024 coords``), unless
   ``--coords FILE`` gives them;
2. stage 2: trains the classifier configs (``--stage2``, default ``bench/configs/{split_*,global}.yaml``) x 5
   folds; each writes its OOF files on the predicted points and on the true points;
3. prints every experiment's OOF score, the split family (per row the split model that predicts it), the
   global family and the two-stage mean (per row the mean of the two families' predictions), each on predicted
   and on true points, beside the image-free prior on the same folds.

Target: two-stage mean OOF total on predicted points <= 0.5 x the prior's. Reruns reuse the data, cache,
finished folds and coordinates in ``--work`` (delete ``<work>/runs`` to retrain).

    .venv/bin/python bench/phantom_cv.py --work /tmp/phantom_cv
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench/keypoints.py's data preparation

from keypoints import CONFIGS as KEYPOINT_CONFIGS  # noqa: E402
from keypoints import prepare_data  # noqa: E402

from rsna2024.baselines.prior import prior_oof  # noqa: E402
from rsna2024.classifiers.oof import blend_oof, oof_name, score_oof  # noqa: E402
from rsna2024.data.contract import load_labels_wide  # noqa: E402
from rsna2024.data.folds import load_folds  # noqa: E402
from rsna2024.training.config import load_config  # noqa: E402
from rsna2024.training.trainer import train_fold  # noqa: E402
from rsna2024.utils.logging import setup_logging  # noqa: E402

CLASSIFIERS = {"split_spinal": "split", "split_foraminal": "split", "split_subarticular": "split",
               "global": "global"}
TARGET = 0.5


def train_all(cfg, data: Path, work: Path) -> float:
    """Every fold of ``cfg`` (finished folds are skipped); the seconds it took."""
    t0 = time.perf_counter()
    for fold in range(cfg.folds):
        train_fold(cfg, data, fold, out=work / "runs", cache=work / "cache")
    return time.perf_counter() - t0


def stage1(args, data: Path, cache: Path) -> tuple[Path, dict[str, float]]:
    """The OOF coordinates file (trained and written when absent) and the training seconds per config."""
    from rsna2024.keypoints.coords import write_coordinates

    out = args.work / "runs" / "coords_oof.csv"
    seconds: dict[str, float] = {}
    if args.coords is not None:
        return args.coords, seconds
    folder = args.stage1
    if not (folder / f"{KEYPOINT_CONFIGS[0]}.yaml").is_file():
        folder = HERE.parent / "experiments" / "demo"
        print(f"no keypoint configs in {args.stage1}: stage 1 uses {folder} (learns little: expect a weak stage 1)")
    runs = []
    for name in KEYPOINT_CONFIGS:
        cfg = load_config(folder / f"{name}.yaml", args.set_stage1)
        seconds[f"train {name}"] = train_all(cfg, data, args.work)
        runs.append(args.work / "runs" / cfg.name)
    if not out.is_file():
        t0 = time.perf_counter()
        write_coordinates(data, runs, "train", out, cache)
        seconds["coords (OOF)"] = time.perf_counter() - t0
    return out, seconds


def stage1_errors(data: Path, cache: Path, coords: Path) -> pd.Series:
    """Median 3-D distance (mm) of the predicted points from the true ones, per series type of the condition."""
    from rsna2024.classifiers.dataset import SeriesStore
    from rsna2024.classifiers.samples import MM_COLUMNS, load_points, points_in_mm
    from rsna2024.constants import CONDITION_SERIES

    store = SeriesStore(cache)
    keys = ["study_id", "condition", "level"]
    true = points_in_mm(load_points(data / "train_label_coordinates.csv"), store.load)
    pred = points_in_mm(load_points(coords), store.load)
    both = true.merge(pred, on=keys, suffixes=("_true", "_pred"))
    dist = sum((both[f"{c}_true"] - both[f"{c}_pred"]) ** 2 for c in MM_COLUMNS) ** 0.5
    return dist.groupby(both["condition"].map(CONDITION_SERIES)).median().rename("median error mm")


def read_oof(run: Path, folds: int, points: str) -> pd.DataFrame:
    return pd.concat([pd.read_csv(run / oof_name(points, k)) for k in range(folds)], ignore_index=True)


def score_table(work: Path, data: Path, experiments: dict[str, tuple[str, int]]) -> pd.DataFrame:
    """Rows: each experiment, each family, the two-stage mean and the prior; columns: the metric's terms on
    predicted points, the total on true points and the ratio to the prior."""
    wide = load_labels_wide(data)
    rows, families = [], {"split": {"predicted": [], "true": []}, "global": {"predicted": [], "true": []}}

    def add(name, pred, true):
        s = score_oof(pred, wide)
        rows.append({"experiment": name, **s, "true_points_total": score_oof(true, wide)["total"] if true is not None
                     else float("nan")})

    for name, (family, folds) in experiments.items():
        tables = {p: read_oof(work / "runs" / name, folds, p) for p in ("predicted", "true")}
        add(name, tables["predicted"], tables["true"])
        for p, t in tables.items():
            families[family][p].append(t)
    blends = {}
    for family, got in families.items():
        if got["predicted"]:
            blends[family] = {p: blend_oof(t) for p, t in got.items()}
            add(f"{family} family", blends[family]["predicted"], blends[family]["true"])
    if len(blends) == 2:
        add("two-stage mean", blend_oof([b["predicted"] for b in blends.values()]),
            blend_oof([b["true"] for b in blends.values()]))
    prior = prior_oof(wide, load_folds(data / "folds.csv")).assign(source="prior")
    add("image-free prior", prior, None)
    table = pd.DataFrame(rows)
    table["vs_prior"] = table["total"] / table["total"].iloc[-1]
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/phantom_cv"), help="data, cache and runs folder")
    p.add_argument("--studies", type=int, default=200)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--workers", type=int, default=2, help="processes for the phantom and the cache")
    p.add_argument("--stage1", type=Path, default=HERE / "configs", help="folder of the keypoint configs")
    p.add_argument("--stage2", type=Path, default=HERE / "configs", help="folder of the classifier configs")
    p.add_argument("--coords", type=Path, default=None, help="use this OOF coordinates file instead of stage 1")
    p.add_argument("--set-stage1", action="append", default=[], help="override for every keypoint config")
    p.add_argument("--set", dest="set_stage2", action="append", default=[],
                   help="override for every classifier config (e.g. epochs=2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 on a shared machine)")
    p.add_argument("--baselines", nargs="*", type=Path, default=None, metavar="CONFIG",
                   help="also train the seed baselines (default with no file: experiments/demo/s[0-3]_*.yaml) on the "
                        "same points x 5 folds and print `rsna2024 compare` over every run (written to <work>/compare)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    setup_logging("WARNING")
    start = time.perf_counter()
    data, cache = prepare_data(args.work, args.studies, args.seed, args.workers)
    seconds = {"data + cache": time.perf_counter() - start}
    coords, s1 = stage1(args, data, cache)
    seconds.update(s1)
    experiments = {}
    for name, family in CLASSIFIERS.items():
        cfg = load_config(args.stage2 / f"{name}.yaml", [f"data.oof_points={coords}", *args.set_stage2])
        seconds[f"train {cfg.name}"] = train_all(cfg, data, args.work)
        experiments[cfg.name] = (family, cfg.folds)
    table = score_table(args.work, data, experiments)

    print(f"\nphantom CV: {args.studies} phantom studies (seed {args.seed}), 5 folds, OOF; stage-1 points: {coords}")
    print(stage1_errors(data, cache, coords).round(2).to_string())
    print(table.rename(columns={"any_severe_spinal": "any_severe", "true_points_total": "true_pts"})
          .to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    two = table.set_index("experiment")
    ok = "two-stage mean" in two.index and two.loc["two-stage mean", "vs_prior"] <= TARGET
    ratio = two.loc["two-stage mean", "vs_prior"] if "two-stage mean" in two.index else float("nan")
    print(f"target: two-stage mean on predicted points <= {TARGET} x prior: {ratio:.3f} "
          f"({'met' if ok else 'MISSED'})")
    if args.baselines is not None:
        seconds.update(compare_with_baselines(args, data, coords, list(experiments)))
    seconds["total"] = time.perf_counter() - start
    print(pd.Series(seconds).round(1).to_string())
    return 0 if ok else 1


def compare_with_baselines(args, data: Path, coords: Path, classifiers: list[str]) -> dict[str, float]:
    """Train the seed baselines on the same folds and stage-1 points, merge every run's fold files and print
    the comparison table (``rsna2024 compare``) of the prior, S0-S3, the two-stage families and their ensemble."""
    from rsna2024.baselines.compare import compare_runs, format_markdown
    from rsna2024.classifiers.oof import merge_folds

    configs = args.baselines or sorted((HERE.parent / "experiments" / "demo").glob("s[0-3]_*.yaml"))
    seconds, names = {}, []
    for path in configs:
        cfg = load_config(path, [f"data.oof_points={coords}"])
        seconds[f"train {cfg.name}"] = train_all(cfg, data, args.work)
        names.append(cfg.name)
    wide = load_labels_wide(data)
    runs = [args.work / "runs" / n for n in [*names, *classifiers]]
    for run in runs:
        merge_folds(run, 5, wide)
    table = compare_runs(data, runs, out_dir=args.work / "compare")
    print(f"\ncomparison on the same folds and stage-1 points ({args.work / 'compare' / 'compare.md'}):")
    print(format_markdown(table))
    return seconds


if __name__ == "__main__":
    raise SystemExit(main())
