"""The runner's closing table: out-of-fold scores of every classifier experiment, of the model families and of
the image-free prior, on the same folds.

Each experiment is scored on its ``oof_fold{k}.csv`` files (stage 1's predicted points: the CV Kaggle will see)
and, beside it, on ``oof_true_points_fold{k}.csv`` (true points: what stage 1 costs). A family row averages, per
row id, the predictions of its experiments whose ``source`` is ``model`` (``rsna2024.classifiers.oof.blend_oof``:
a split model predicts one condition group; rows no member predicts keep the training folds' prior);
``split+global`` is the mean of the two family predictions, the recipe's final blend. The prior row is
:func:`rsna2024.baselines.prior.prior_oof` on the same studies.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from rsna2024.constants import PRED_COLUMNS
from rsna2024.metric import SCORE_KEYS
from rsna2024.utils.io import atomic_write_text
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)
TABLE_FILE = "oof_scores.csv"
TABLE_COLUMNS = ("experiment", "family", "models", *SCORE_KEYS, "true_points_total", "vs_prior", "studies", "note")
FAMILIES = ("split", "global")


def read_oof(run_dir: Path, folds: Sequence[int], points: str = "predicted") -> pd.DataFrame | None:
    """The fold files of ``run_dir`` for ``folds`` concatenated (None when one is missing)."""
    from rsna2024.classifiers.oof import oof_name

    files = [Path(run_dir) / oof_name(points, k) for k in folds]
    if not all(f.is_file() for f in files):
        return None
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


def mean_of(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per row id the plain mean of ``tables`` (a blend of family blends), renormalised."""
    cols = list(PRED_COLUMNS)
    out = pd.concat(tables, ignore_index=True).groupby("row_id")[cols].mean().reset_index()
    out[cols] = out[cols].div(out[cols].sum(axis=1), axis=0)
    return out.assign(source="model")


def oof_table(data_dir: str | Path, runs_dir: str | Path, experiments: Sequence[tuple[str, str]],
              folds: pd.DataFrame, fold_ids: Sequence[int], unfinished: dict[str, str] | None = None
              ) -> pd.DataFrame:
    """The table (:data:`TABLE_COLUMNS`) for ``experiments`` (``(name, family)`` pairs, run folders in
    ``runs_dir``) over the studies of ``fold_ids``. An experiment lacking a fold file, or named in
    ``unfinished`` (name -> why: its jobs failed in this run, so its files may be stale), gets a note and no
    score, and stays out of the family means."""
    from rsna2024.baselines.prior import prior_oof
    from rsna2024.classifiers.oof import blend_oof, score_oof
    from rsna2024.data.contract import load_labels_wide

    wide = load_labels_wide(data_dir)
    studies = set(folds.loc[folds["fold"].isin(list(fold_ids)), "study_id"].astype(int))
    rows: list[dict] = []
    members: dict[str, dict[str, list[pd.DataFrame]]] = {f: {"predicted": [], "true": []} for f in FAMILIES}

    def row(name, family, models, pred, true, note=""):
        scores = score_oof(pred, wide) if pred is not None else {}
        true_total = score_oof(true, wide)["total"] if true is not None else math.nan
        rows.append({"experiment": name, "family": family, "models": models,
                     **{k: scores.get(k, math.nan) for k in SCORE_KEYS}, "true_points_total": true_total,
                     "studies": len(studies) if pred is not None else 0, "note": note})

    for name, family in experiments:
        if name in (unfinished or {}):
            row(name, family, 1, None, None, unfinished[name])
            continue
        pred = read_oof(Path(runs_dir) / name, fold_ids)
        true = read_oof(Path(runs_dir) / name, fold_ids, "true")
        if pred is None:
            missing = [k for k in fold_ids if read_oof(Path(runs_dir) / name, [k]) is None]
            row(name, family, 1, None, None, f"no OOF file for fold(s) {', '.join(map(str, missing))}")
            continue
        row(name, family, 1, pred, true)
        if family in members:
            members[family]["predicted"].append(pred)
            if true is not None:
                members[family]["true"].append(true)
    blends: dict[str, dict[str, pd.DataFrame | None]] = {}
    for family, got in members.items():
        if not got["predicted"]:
            continue
        n = len(got["predicted"])
        true = blend_oof(got["true"]) if len(got["true"]) == n else None
        blends[family] = {"predicted": blend_oof(got["predicted"]), "true": true}
        row(f"{family} (mean)", family, n, blends[family]["predicted"], true)
    if len(blends) == len(FAMILIES):
        pred = mean_of([b["predicted"] for b in blends.values()])
        trues = [b["true"] for b in blends.values()]
        true = mean_of(trues) if all(t is not None for t in trues) else None
        row("split+global (mean)", "both", sum(len(m["predicted"]) for m in members.values()), pred, true)
    prior = prior_oof(wide, folds)
    prior = prior[prior["row_id"].map(lambda r: int(r.split("_", 1)[0])).isin(studies)]
    row("image-free prior", "prior", 0, prior.assign(source="prior"), None)
    table = pd.DataFrame(rows, columns=[c for c in TABLE_COLUMNS if c != "vs_prior"])
    table["vs_prior"] = table["total"] / table["total"].iloc[-1]
    return table[list(TABLE_COLUMNS)]


def format_table(table: pd.DataFrame, title: str) -> str:
    """The table as fixed-width text under ``title`` (4 decimals; ``-`` where a value is missing)."""
    shown = table.rename(columns={"any_severe_spinal": "any_severe", "true_points_total": "true_pts",
                                  "subarticular": "subartic"}).drop(columns=["studies"])
    if not shown["note"].astype(bool).any():
        shown = shown.drop(columns=["note"])
    shown["experiment"] = shown["experiment"].str.ljust(int(shown["experiment"].str.len().max()))
    text = shown.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4f}")
    return f"{title}\n{text}"


def write_table(table: pd.DataFrame, runs_dir: str | Path) -> Path:
    """``<runs_dir>/oof_scores.csv``, written atomically, and only when its content changes."""
    path = Path(runs_dir) / TABLE_FILE
    text = table.to_csv(index=False, float_format="%.6f")
    if path.is_file() and path.read_text() == text:
        log.info("%s unchanged", path)
        return path
    atomic_write_text(path, text)
    log.info("wrote %s", path)
    return path


def keypoint_errors(data_dir: str | Path, coords: Path, out: Path, cache: str | Path | None) -> str | None:
    """The keypoint OOF 3-D errors per series type (all levels; :func:`rsna2024.keypoints.report.keypoint_report`
    into ``out``, redone when ``coords`` is newer), as text; None without a coordinates file."""
    if not Path(coords).is_file():
        return None
    errors_csv = Path(out) / "errors.csv"
    if not errors_csv.is_file() or errors_csv.stat().st_mtime_ns < Path(coords).stat().st_mtime_ns:
        from rsna2024.keypoints.report import keypoint_report
        from rsna2024.keypoints.studies import resolve_cache

        keypoint_report(data_dir, coords, out, resolve_cache(data_dir, cache))
    table = pd.read_csv(errors_csv)
    overall = table[table["level"] == "all"].drop(columns=["level"])
    text = overall.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.2f}")
    return f"Keypoint OOF 3-D error (mm) of {coords.name}, all levels (per level: {errors_csv})\n{text}"


def comparison(data_dir: str | Path, run_dirs: Sequence[Path], out: Path, folds_file: Path | None = None) -> str | None:
    """``rsna2024 compare`` of the finished ``run_dirs`` (seed baselines and two-stage classifiers) written to
    ``out`` and returned as Markdown with a title; None (with a warning) when they cannot be compared."""
    from rsna2024.baselines.compare import CompareError, compare_runs, format_markdown

    try:
        table = compare_runs(data_dir, run_dirs, out_dir=out, folds_file=folds_file)
    except (CompareError, OSError) as exc:
        log.warning("no comparison table: %s", exc)
        return None
    return (f"Comparison on the same folds and stage-1 points (rsna2024 compare; {out / 'compare.md'}, "
            f"confusion matrices beside it)\n{format_markdown(table)}")
