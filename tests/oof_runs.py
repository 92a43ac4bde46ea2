"""Test helper (not a test module): fabricated classifier run folders in the runner's layout (``config.yaml``,
``oof_fold{k}.csv`` and the merged ``oof.csv``) over a labels table drawn from known per-row class probabilities,
so that ``rsna2024 evaluate`` and the OOF notebook run without training."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from rsna2024.classifiers.oof import merge_folds
from rsna2024.constants import CLASS_WEIGHTS, LABELS, PRED_COLUMNS, TARGET_COLUMNS, study_row_ids


def write_data(folder: Path, studies: int = 90, folds: int = 3, seed: int = 0) -> tuple[Path, pd.DataFrame]:
    """``train.csv`` and ``folds.csv`` (study i in fold i % folds) in ``folder``; labels drawn per row from a
    Dirichlet(1, 1, 1) class distribution ``q``, a few left missing. Returns the folder and the table of ``q``
    (``row_id`` + the three columns; study ids 100, 101, ...)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.arange(100, 100 + studies)
    rows = [r for s in ids for r in study_row_ids(s)]
    q = rng.dirichlet([1.0, 1.0, 1.0], size=len(rows))
    label = np.array([rng.choice(3, p=p) for p in q])
    cells = np.array(LABELS, dtype=object)[label].reshape(studies, len(TARGET_COLUMNS))
    cells[rng.random(cells.shape) < 0.02] = np.nan
    wide = pd.DataFrame(cells, columns=list(TARGET_COLUMNS))
    wide.insert(0, "study_id", ids)
    wide.to_csv(folder / "train.csv", index=False)
    pd.DataFrame({"study_id": ids, "fold": np.arange(studies) % folds}).to_csv(folder / "folds.csv", index=False)
    truth = pd.DataFrame(q, columns=list(PRED_COLUMNS))
    truth.insert(0, "row_id", rows)
    return folder, truth


def calibrated(q: np.ndarray) -> np.ndarray:
    """The prediction minimising the metric's class-weighted log loss when labels follow ``q``: ``q * (1, 2, 4)``
    renormalised."""
    p = np.asarray(q) * np.asarray(CLASS_WEIGHTS)
    return p / p.sum(axis=1, keepdims=True)


def write_run(runs: Path, name: str, task: str, table: pd.DataFrame, data: Path) -> Path:
    """A run folder ``<runs>/<name>`` whose OOF files hold ``table`` (``row_id``, the three columns and
    ``source``), split by the folds of ``<data>/folds.csv`` and merged as the runner does."""
    run = runs / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": name, "task": task}))
    folds = pd.read_csv(data / "folds.csv")
    study = table["row_id"].str.split("_", n=1).str[0].astype(int)
    fold = study.map(dict(zip(folds["study_id"], folds["fold"])))
    for k in sorted(folds["fold"].unique()):
        table[fold == k].to_csv(run / f"oof_fold{k}.csv", index=False)
    merge_folds(run, int(folds["fold"].max()) + 1)
    return run


def run_table(row_ids, probs: np.ndarray, model=None, other: np.ndarray | None = None) -> pd.DataFrame:
    """An OOF table: ``probs`` on the rows where ``model`` (a boolean mask; default every row) holds, ``other``
    (default 1/3 each) with source ``prior`` elsewhere."""
    model = np.ones(len(row_ids), bool) if model is None else np.asarray(model)
    other = np.full((len(row_ids), 3), 1 / 3) if other is None else other
    values = np.where(model[:, None], probs, other)
    table = pd.DataFrame(values / values.sum(axis=1, keepdims=True), columns=list(PRED_COLUMNS))
    table.insert(0, "row_id", list(row_ids))
    table["source"] = np.where(model, "model", "prior")
    return table


NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "oof_ensemble.ipynb"


def run_oof_notebook(data: Path, runs: Path, monkeypatch) -> list[dict]:
    """Execute ``notebooks/oof_ensemble.ipynb`` with nbclient on ``data`` and ``runs`` (through ``RSNA2024_DATA``
    and ``RSNA2024_RUNS``, the checkout first on the kernel's path); returns the code cells' outputs."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("RSNA2024_DATA", str(data))
    monkeypatch.setenv("RSNA2024_RUNS", str(runs))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(NOTEBOOK.parents[1]), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
                   ).execute()
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def notebook_text(outputs: list[dict]) -> str:
    """The printed text and Markdown of notebook outputs."""
    return "".join(o.get("text", "") + str(o.get("data", {}).get("text/markdown", "")) for o in outputs)


def notebook_images(outputs: list[dict]) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)
