"""Predicted coordinates of every study of a split, from trained keypoint runs: the file stage 2 reads.

Columns: those of ``train_label_coordinates.csv`` (``study_id, series_id, instance_number, condition, level,
x, y``: the stored grid of the DICOM file) plus ``confidence`` (heatmap peak), ``fold`` and the patient point
``x_mm, y_mm, z_mm``. Every study gets its 25 rows; a row the models could not fill keeps empty coordinates and
its cause is logged as a warning naming the study.

- ``train``: out of fold. A study is predicted by the model of its fold in ``folds.csv`` (which never saw it).
- ``test``: every fold model predicts; the points are averaged in patient mm, then projected back onto the
  series' nearest slice (its InstanceNumber and stored x, y); ``fold`` is -1 and ``confidence`` the mean.

A run whose ``data.slice_search_mm`` is above 0 predicts each point on every slice within that distance of its
usual centre slice (sagittal: along the normal; axial: along it within the level's block, never past a neighbouring
level's slice) and keeps the surest.

Sagittal T2 runs first: its predicted spinal points choose the axial slice of each level for the axial model.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rsna2024.constants import AXIAL_T2, CONDITION_NAMES, CONDITIONS, LEVEL_FROM_NAME, LEVEL_NAMES, LEVELS
from rsna2024.data.contract import load_series_descriptions
from rsna2024.data.folds import load_folds
from rsna2024.errors import ConfigError, RsnaError
from rsna2024.keypoints.datasets import KeypointDataset
from rsna2024.keypoints.predict import POINT_COLUMNS, decode_to_canonical, predict_heatmaps, sample_rows
from rsna2024.keypoints.samples import Sample, axial_samples, neighbour_samples, study_samples
from rsna2024.keypoints.studies import StudySeries, require_split_cache
from rsna2024.keypoints.tasks import TASKS, KeypointTask
from rsna2024.utils.io import atomic_to_csv, check_overwrite
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)

COORDS_COLUMNS = ["study_id", "series_id", "instance_number", "condition", "level", "x", "y", "confidence", "fold",
                  "x_mm", "y_mm", "z_mm"]


@dataclass
class KeypointRun:
    """One trained keypoint experiment: its task and its fold models (fold -> model, eval mode)."""

    run_dir: Path
    task: KeypointTask
    models: dict[int, torch.nn.Module]

    @property
    def kind(self) -> str:
        return self.task.kind


def resolve_device(device: str = "auto") -> torch.device:
    return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                        ("cpu" if device == "auto" else device))


def load_run(run_dir: str | Path, device: torch.device, folds: Sequence[int] | None = None) -> KeypointRun:
    """The fold models of a keypoint run folder (``fold{k}_best.pt``; every fold found, or ``folds``)."""
    from rsna2024.training.checkpoint import load_run_models
    from rsna2024.training.task import create_task

    cfg, models = load_run_models(run_dir, device, folds)
    task = create_task(cfg)
    if not isinstance(task, KeypointTask):
        raise ConfigError(f"{run_dir}: task {cfg.task!r} is not a keypoint task ({', '.join(TASKS.values())})")
    return KeypointRun(Path(run_dir), task, models)


def _empty_rows(study_id: int, conditions, levels=LEVELS) -> list[dict]:
    return [{"study_id": study_id, "condition": CONDITION_NAMES[c], "level": LEVEL_NAMES[lv]}
            for c in conditions for lv in levels]


class CoordinatePredictor:
    """Runs the keypoint runs over the studies of a split and collects their rows."""

    def __init__(self, runs: Sequence[KeypointRun], studies: StudySeries, study_folds: dict[int, int] | None,
                 device: torch.device, batch_size: int = 8, report: Callable[[int, str], None] | None = None):
        self.runs = {r.kind: r for r in runs}
        if len(self.runs) != len(runs):
            raise ConfigError(f"two runs of the same keypoint task among {[str(r.run_dir) for r in runs]}")
        if "axial" in self.runs and "sagt2" not in self.runs:
            raise ConfigError("the axial keypoint run needs a Sagittal T2 run beside it (its predicted spinal "
                              "points choose the axial slices)")
        self.studies = studies
        self.study_folds = study_folds  # None: test split, average every fold
        self.device = device
        self.batch_size = batch_size
        self.rows: list[dict] = []
        self.level_points: dict[int, dict[str, np.ndarray]] = {}
        self.report = report  # also told of each study's problems: report(study_id, message)

    def _warn(self, study_id: int, what: str, cause: str) -> None:
        log.warning("study %s: no %s coordinates: %s", study_id, what, cause)
        if self.report is not None:
            self.report(int(study_id), f"no {what} coordinates: {cause}")

    def _predict(self, run: KeypointRun, samples: list[Sample]) -> pd.DataFrame:
        """Rows of ``samples`` (POINT_COLUMNS + fold): per fold model out of fold, or averaged over folds."""
        if not samples:
            return pd.DataFrame(columns=POINT_COLUMNS + ["fold"])
        data = run.task.data
        tables = []
        for fold, model in sorted(run.models.items()):
            chosen = samples if self.study_folds is None else \
                [s for s in samples if self.study_folds.get(s.study_id) == fold]
            if not chosen:
                continue
            ds = KeypointDataset(chosen, self.studies, data.image_size, data.sigma)
            maps = run.task.heatmaps(predict_heatmaps(model, ds, self.device, self.batch_size))
            rows = []
            for sample, m in zip(chosen, maps):
                series = self.studies.load(sample.study_id, sample.series_id)
                points, conf = decode_to_canonical(m, ds.size, series.pixels.shape[1:])
                rows.extend(sample_rows(sample, series, points, conf))
            tables.append(pd.DataFrame(rows, columns=POINT_COLUMNS).assign(fold=fold))
        if not tables:
            return pd.DataFrame(columns=POINT_COLUMNS + ["fold"])
        return pd.concat(tables, ignore_index=True)

    def _combine(self, table: pd.DataFrame, one_slice_per_level: bool = False) -> pd.DataFrame:
        """One row per (study, condition, level): on the test split the fold models' points averaged in mm per
        candidate slice and projected onto the series' nearest slice; then, where a slice search gave several
        candidates, the surest one (highest confidence). ``one_slice_per_level`` (axial): the level's conditions
        share one slice, the candidate with the highest summed confidence over them."""
        if table.empty:
            return table
        if self.study_folds is None:
            keys = ["study_id", "series_id", "slice_index", "condition", "level"]
            table = table.groupby(keys, as_index=False).agg(
                x_mm=("x_mm", "mean"), y_mm=("y_mm", "mean"), z_mm=("z_mm", "mean"),
                confidence=("confidence", "mean")).assign(fold=-1)
            projected = [self.studies.load(int(r.study_id), int(r.series_id)).from_patient(
                np.array([r.x_mm, r.y_mm, r.z_mm])) for r in table.itertuples(index=False)]
            table["instance_number"] = [p.instance_number for p in projected]
            table["x"] = [p.x for p in projected]
            table["y"] = [p.y for p in projected]
        if one_slice_per_level:
            where = ["study_id", "level", "series_id", "slice_index"]
            table = table.assign(_sum=table.groupby(where)["confidence"].transform("sum"))
            chosen = table.loc[table.groupby(["study_id", "level"])["_sum"].idxmax(), where]
            table = table.merge(chosen, on=where).drop(columns="_sum")
        best = table.groupby(["study_id", "condition", "level"])["confidence"].idxmax()
        return table.loc[best].reset_index(drop=True)

    def _study_samples(self, kind: str, study_id: int) -> list[Sample]:
        """The inference samples of one study (warning, and none, when its series is missing or unreadable)."""
        data = self.runs[kind].task.data
        what = {"sagt2": "Sagittal T2/STIR", "sagt1": "Sagittal T1", "axial": "Axial T2"}[kind]
        try:
            if kind != "axial":
                found, why = study_samples(kind, self.studies, study_id, None, n_slices=data.slices,
                                           offset_mm=data.offset_mm)
                if why is not None:
                    self._warn(study_id, what, why)
                if data.slice_search_mm > 0:
                    found = [c for s in found for c in neighbour_samples(
                        self.studies.load(s.study_id, s.series_id), s, data.slice_search_mm)]
                return found
            why = self.studies.problem(study_id, AXIAL_T2)
            if why is not None:
                self._warn(study_id, what, why)
                return []
            found, missing = axial_samples(self.studies.series(study_id, AXIAL_T2),
                                           self.level_points.get(study_id, {}), data.slices, data.max_distance_mm,
                                           search_mm=data.slice_search_mm)
            for level, why in missing.items():
                self._warn(study_id, f"{what} {LEVEL_NAMES[level]}", why)
            return found
        except (OSError, ValueError, KeyError, RsnaError) as exc:
            self._warn(study_id, what, f"cannot read its series from the cache: {exc}")
            return []

    def run_task(self, kind: str, study_ids: Sequence[int]) -> None:
        """Predict ``kind``'s points of every study and keep the rows (Sag T2 also keeps the level points)."""
        samples = [s for sid in study_ids for s in self._study_samples(kind, sid)]
        table = self._combine(self._predict(self.runs[kind], samples), one_slice_per_level=kind == "axial")
        if kind == "sagt2":
            for r in table.itertuples(index=False):
                self.level_points.setdefault(int(r.study_id), {})[LEVEL_FROM_NAME[r.level]] = \
                    np.array([r.x_mm, r.y_mm, r.z_mm])
        self.rows.extend(table[COORDS_COLUMNS].to_dict("records"))

    def predict(self, study_ids: Sequence[int]) -> pd.DataFrame:
        """Every run's points of ``study_ids`` (Sagittal T2 first: it places the axial slices), as :meth:`table`."""
        for kind in ("sagt2", "sagt1", "axial"):
            if kind in self.runs:
                self.run_task(kind, study_ids)
        return self.table(study_ids)

    def table(self, study_ids: Sequence[int]) -> pd.DataFrame:
        """All rows (25 per study), empty coordinates where nothing was predicted."""
        full = pd.DataFrame([r for sid in study_ids for r in _empty_rows(sid, CONDITIONS)])
        pred = pd.DataFrame(self.rows, columns=COORDS_COLUMNS)
        out = full.merge(pred, on=["study_id", "condition", "level"], how="left", validate="one_to_one")
        out = out[COORDS_COLUMNS].astype({"series_id": "Int64", "instance_number": "Int64", "fold": "Int64"})
        return out.sort_values(["study_id", "condition", "level"], ignore_index=True)


def predict_points(runs: Sequence[KeypointRun], studies: StudySeries, device: torch.device, batch_size: int = 8,
                   study_folds: dict[int, int] | None = None,
                   report: Callable[[int, str], None] | None = None) -> pd.DataFrame:
    """The coordinates table of every study of ``studies`` from loaded keypoint runs (``study_folds`` None:
    the mean of every fold model, else each study by the model of its fold); ``report(study_id, message)`` is
    told of each row left empty and why (besides the warning)."""
    return CoordinatePredictor(runs, studies, study_folds, device, batch_size, report=report).predict(studies.study_ids)


def predict_coordinates(data: str | Path, runs: Sequence[str | Path], split: str, cache: str | Path,
                        device: str = "auto", batch_size: int = 8, folds_path: str | Path | None = None,
                        slice_search_mm: float | None = None) -> pd.DataFrame:
    """The coordinates table of every study of ``split`` (``train``: out of fold; ``test``: fold mean).

    ``slice_search_mm`` overrides every run's ``data.slice_search_mm`` (None: keep each run's)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    dev = resolve_device(device)
    require_split_cache(cache, split)
    descriptions = load_series_descriptions(data, split)
    studies = StudySeries(cache, descriptions, split)
    study_ids = studies.study_ids
    study_folds = None
    if split == "train":
        folds = load_folds(folds_path or Path(data) / "folds.csv")
        study_folds = dict(zip(folds["study_id"].astype(int), folds["fold"].astype(int)))
        absent = [s for s in study_ids if s not in study_folds]
        if absent:
            raise RsnaError(f"{len(absent)} training studies are not in folds.csv (e.g. {absent[:3]}); "
                            f"rerun `rsna2024 folds --overwrite`")
    loaded = [load_run(r, dev) for r in runs]
    if slice_search_mm is not None:
        for run in loaded:
            run.task.data.slice_search_mm = float(slice_search_mm)
    if split == "train":
        for run in loaded:
            lacking = sorted(set(study_folds.values()) - set(run.models))
            if lacking:
                raise RsnaError(f"{run.run_dir}: folds {lacking} have no best checkpoint; out-of-fold "
                                f"coordinates need every fold")
    return predict_points(loaded, studies, dev, batch_size, study_folds)


def write_coordinates(data: str | Path, runs: Sequence[str | Path], split: str, out: str | Path, cache: str | Path,
                      overwrite: bool = False, **kwargs) -> Path:
    """:func:`predict_coordinates` written to ``out`` atomically (refusing to replace it without ``overwrite``)."""
    check_overwrite(out, overwrite)
    table = predict_coordinates(data, runs, split, cache, **kwargs)
    empty = int(table["x"].isna().sum())
    log.info("%d coordinate rows of %d studies, %d without coordinates", len(table), table["study_id"].nunique(),
             empty)
    return atomic_to_csv(table, out)
