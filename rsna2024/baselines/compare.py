"""``rsna2024 compare``: one table ranking runs on the same studies and folds.

Rows, in this order:

- ``prior``: the image-free weight-aware prior (:func:`rsna2024.baselines.prior.prior_oof`), fitted per fold on
  the other folds of ``folds.csv``;
- one row per run folder: its out-of-fold file in submission format (``oof.csv``, or its ``oof_fold{k}.csv``
  files when not every fold is there; ``points="true"`` reads the ``oof_true_points`` files instead). Its
  ``kind`` comes from the ``task`` of the run's ``config.yaml``: ``s0`` ... ``s3`` for the seed baselines,
  ``split`` (tasks ``split_*``) or ``global`` for the two-stage classifiers, else ``run``;
- ``split`` and ``global`` families: :func:`rsna2024.classifiers.oof.blend_oof` of the family's runs (per row id
  the mean over the runs that predict it, ``source == model``; a file without a ``source`` column counts every
  row; rows no run of the family predicts keep the mean of the files, i.e. the prior);
- ``split+global``: the mean of the two family tables (only when both families are there).

Every row is scored on the studies that every run covers (a run covering fewer studies narrows the table, and
a warning names it). Columns: the competition ``total`` and its four terms; ``accuracy`` and ``macro_f1`` of the
argmax class over the labelled rows (macro F1: the mean over the classes present in the labels or the
predictions of ``2 TP / (2 TP + FP + FN)``); ``rows`` (labelled rows scored) and ``studies``. A confusion-matrix
PNG per row (true class down, argmax class across) and the table as CSV and Markdown go to ``out_dir``.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from rsna2024.classifiers.oof import blend_oof, oof_name
from rsna2024.constants import LABELS, PRED_COLUMNS, SUBMISSION_COLUMNS
from rsna2024.errors import RsnaError
from rsna2024.metric import SCORE_KEYS
from rsna2024.utils.io import atomic_path, atomic_write_text
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)
TABLE_COLUMNS = ("model", "kind", "runs", *SCORE_KEYS, "accuracy", "macro_f1", "rows", "studies")
FAMILIES = ("split", "global")
ENSEMBLE = "split+global"
BASELINE_KINDS = {"s0_image_classifier": "s0", "s1_condition_cnn": "s1", "s2_level_embedding": "s2",
                  "s3_coordinate_resnet": "s3"}
CSV_FILE, MARKDOWN_FILE = "compare.csv", "compare.md"


class CompareError(RsnaError):
    """A run folder cannot be compared (no config, no OOF file, no study in common)."""


# --------------------------------------------------------------------------- runs
def run_kind(task: str) -> str:
    """``s0`` ... ``s3``, ``split``, ``global`` or ``run`` for a config's ``task``."""
    if task in BASELINE_KINDS:
        return BASELINE_KINDS[task]
    if task.startswith("split_"):
        return "split"
    return "global" if task == "global" else "run"


def read_run(run_dir: str | Path, points: str = "predicted") -> tuple[str, str, pd.DataFrame]:
    """``(name, kind, oof)`` of a run folder: the config's name and kind, and its OOF table (with ``source``)."""
    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise CompareError(f"{run_dir} is not a run folder: no config.yaml (pass folders like runs/<experiment>)")
    raw = yaml.safe_load(config.read_text()) or {}
    name, task = str(raw.get("name") or run_dir.name), str(raw.get("task", ""))
    merged = run_dir / oof_name(points)
    stem = oof_name(points, 0).removesuffix("0.csv")
    files = [merged] if merged.is_file() else sorted(
        p for p in run_dir.glob(f"{stem}*.csv") if re.fullmatch(rf"{re.escape(stem)}\d+\.csv", p.name))
    if not files:
        raise CompareError(f"{run_dir}: no out-of-fold file ({merged.name} or {stem}<k>.csv); has the run "
                           "finished a fold?")
    oof = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    missing = [c for c in SUBMISSION_COLUMNS if c not in oof.columns]
    if missing:
        raise CompareError(f"{files[0]}: missing column(s) {missing}; expected the submission format")
    if "source" not in oof.columns:
        oof["source"] = "model"
    return name, run_kind(task), oof


def study_of(row_ids: pd.Series) -> np.ndarray:
    return row_ids.astype(str).str.split("_", n=1).str[0].astype(np.int64).to_numpy()


def load_labels_and_folds(data_dir: str | Path, folds_file: str | Path | None = None
                          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``train.csv`` (wide) of ``data_dir`` and the folds of ``folds_file`` (default ``<data_dir>/folds.csv``),
    checked to hold the same studies."""
    from rsna2024.data.contract import load_labels_wide
    from rsna2024.data.folds import load_folds

    wide = load_labels_wide(data_dir)
    folds_file = Path(folds_file) if folds_file is not None else Path(data_dir) / "folds.csv"
    if not folds_file.is_file():
        raise CompareError(f"no folds file {folds_file}: run `rsna2024 folds --data {data_dir}` first")
    return wide, load_folds(folds_file, study_ids=wide["study_id"])


def common_studies(wide: pd.DataFrame, folds: pd.DataFrame, oofs: dict[str, pd.DataFrame]) -> set[int]:
    """The studies of ``folds`` and the labels that every OOF table (run name -> table) covers; a warning names
    each run covering fewer. Raises CompareError when none is left."""
    studies = set(folds["study_id"].astype(int)) & set(wide["study_id"].astype(int))
    for name, oof in oofs.items():
        covered = set(study_of(oof["row_id"]))
        if studies - covered:
            log.warning("%s covers %d of %d studies; the table is narrowed to the studies every run covers",
                        name, len(studies & covered), len(studies))
        studies &= covered
    if not studies:
        raise CompareError("the runs have no study in common with the folds and labels")
    return studies


# --------------------------------------------------------------------------- metrics
def classification_metrics(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Accuracy, macro F1 (classes present in either) and the 3 x 3 confusion matrix (true down, predicted across)."""
    matrix = np.zeros((3, 3), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    if not len(truth):
        return math.nan, math.nan, matrix
    tp = np.diag(matrix).astype(float)
    fp, fn = matrix.sum(axis=0) - tp, matrix.sum(axis=1) - tp
    present = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    f1 = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
    return float(tp.sum() / len(truth)), float(f1.mean()), matrix


def evaluate(oof: pd.DataFrame, long: pd.DataFrame) -> tuple[dict, np.ndarray]:
    """Scores, accuracy, macro F1, rows and studies of ``oof`` against long labels of the same studies."""
    from rsna2024.metric import score, solution_from_long

    sub = oof[list(SUBMISSION_COLUMNS)]
    scores = score(solution_from_long(long), sub)
    labelled = long[long["label_index"] >= 0]
    probs = sub.set_index("row_id").loc[labelled["row_id"], list(PRED_COLUMNS)].to_numpy(dtype=float)
    accuracy, f1, matrix = classification_metrics(labelled["label_index"].to_numpy(), probs.argmax(axis=1))
    return {**scores, "accuracy": accuracy, "macro_f1": f1, "rows": len(labelled),
            "studies": int(long["study_id"].nunique())}, matrix


def draw_confusion(ax, matrix: np.ndarray, title: str) -> None:
    """Draw a 3 x 3 confusion matrix on a matplotlib axis: counts, shaded by the share of each true class."""
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(3):
        for j in range(3):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(3), LABELS)
    ax.set_yticks(range(3), LABELS)
    ax.set_xlabel("predicted (argmax)")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)


def plot_confusion(matrix: np.ndarray, path: Path, title: str) -> Path:
    """The confusion matrix as a PNG (:func:`draw_confusion`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    draw_confusion(ax, matrix, title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return Path(path)


# --------------------------------------------------------------------------- the table
def compare_runs(data_dir: str | Path, run_dirs: Sequence[str | Path], out_dir: str | Path | None = None,
                 folds_file: str | Path | None = None, points: str = "predicted") -> pd.DataFrame:
    """The comparison table (:data:`TABLE_COLUMNS`, module docstring) of ``run_dirs`` against the labels of
    ``data_dir``, on the folds of ``folds_file`` (default ``<data_dir>/folds.csv``). With ``out_dir``, writes
    ``compare.csv``, ``compare.md`` and ``confusion_<model>.png`` there (replacing an earlier table)."""
    from rsna2024.baselines.prior import prior_oof
    from rsna2024.data.contract import labels_long

    if points not in ("predicted", "true"):
        raise ValueError(f"points must be 'predicted' or 'true', got {points!r}")
    wide, folds = load_labels_and_folds(data_dir, folds_file)
    runs = [read_run(d, points) for d in run_dirs]
    names = [n for n, _, _ in runs]
    if len(set(names)) != len(names):
        raise CompareError(f"two run folders hold the same experiment name: {names}")
    studies = common_studies(wide, folds, {name: oof for name, _, oof in runs})

    def restrict(table: pd.DataFrame) -> pd.DataFrame:
        return table[np.isin(study_of(table["row_id"]), list(studies))].reset_index(drop=True)

    entries: list[tuple[str, str, int, pd.DataFrame]] = [("prior", "prior", 0, prior_oof(wide, folds))]
    entries += [(name, kind, 1, oof) for name, kind, oof in runs]
    family = {f: [restrict(oof) for _, kind, oof in runs if kind == f] for f in FAMILIES}
    blends = {f: blend_oof(tables) for f, tables in family.items() if tables}
    entries += [(f, "family", len(family[f]), table) for f, table in blends.items()]
    if len(blends) == len(FAMILIES):
        both = pd.concat(list(blends.values()), ignore_index=True).groupby("row_id")[list(PRED_COLUMNS)].mean()
        entries.append((ENSEMBLE, "ensemble", sum(len(t) for t in family.values()), both.reset_index()))

    long = labels_long(wide[wide["study_id"].isin(studies)])
    rows, matrices = [], {}
    for name, kind, count, table in entries:
        table = restrict(table).drop_duplicates("row_id")
        absent = set(long["row_id"]) - set(table["row_id"])
        if absent:
            raise CompareError(f"{name}: {len(absent)} row id(s) of its studies have no prediction, e.g. "
                               f"{sorted(absent)[0]}; OOF files must hold all 25 rows of each study")
        values, matrices[name] = evaluate(table[table["row_id"].isin(set(long["row_id"]))], long)
        rows.append({"model": name, "kind": kind, "runs": count, **values})
    result = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    if out_dir is not None:
        write_table(result, matrices, Path(out_dir), title_suffix=f"{points} points, {len(studies)} studies")
    return result


def format_markdown(table: pd.DataFrame) -> str:
    """The table as a Markdown pipe table (4 decimals)."""
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(table[c]) else "---" for c in table.columns) + "|"

    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *lines]) + "\n"


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)


def write_table(table: pd.DataFrame, matrices: dict[str, np.ndarray], out_dir: Path, title_suffix: str = "",
                ) -> list[Path]:
    """``compare.csv``, ``compare.md`` and one ``confusion_<model>.png`` per row into ``out_dir``; nothing is
    rewritten when the folder already holds this table and its figures (a rerun of finished runs)."""
    csv, md = out_dir / CSV_FILE, out_dir / MARKDOWN_FILE
    pngs = {name: out_dir / f"confusion_{safe_name(name)}.png" for name in matrices}
    text = table.to_csv(index=False)
    if csv.is_file() and csv.read_text() == text and md.is_file() and all(p.is_file() for p in pngs.values()):
        log.info("compare: %s unchanged", out_dir)
        return [csv, md, *pngs.values()]
    if csv.exists():
        log.info("compare: replacing the table in %s", out_dir)
    files = [atomic_write_text(csv, text), atomic_write_text(md, format_markdown(table))]
    for name, matrix in matrices.items():
        files.append(plot_confusion(matrix, pngs[name], f"{name} ({title_suffix})"))
    return files
