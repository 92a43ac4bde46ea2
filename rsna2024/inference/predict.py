"""``rsna2024 predict``: a submission from trained run folders for every study of a split (the test split).

A chunk of studies at a time (a progress bar counts the studies):

1. preprocessing: the chunk's series are decoded into the cache (:func:`rsna2024.dicom.cache.preprocess`). The
   data folder is only read (it is read-only on Kaggle): the cache goes to ``cache`` (kept, and reused by a
   later run) or, by default, to a temporary folder; a temporary cache, or ``clean_cache``, holds one chunk at a
   time (each chunk's folder is deleted once predicted), so the disk never holds the whole test set decoded;
2. stage 1: the keypoint runs (tasks ``keypoint_*``) predict the chunk's points, each point the mean of the
   run's fold models in patient mm (:func:`rsna2024.keypoints.coords.predict_points`);
3. stage 2: every classifier run (``split_*``, ``global``) and seed baseline (``s0_`` .. ``s3_``) predicts the
   chunk at those points with each fold model, through the code path of its OOF files
   (:meth:`~rsna2024.classifiers.point_task.PointTask.points_dataset` and
   :meth:`~rsna2024.classifiers.point_task.PointTask.predicted_rows`); a run's table is the mean over its fold
   models and, with ``tta``, over the input and its left-right mirror (:func:`rsna2024.dicom.geometry.mirror_series`,
   points mirrored, left and right swapped back in the rows; tasks whose mirror is the same input are skipped);
4. blend: the runs' tables per row id (:func:`rsna2024.inference.ensemble.blend`: equal weights, or a weights file
   with per-run weights and per-condition temperatures).

A row no run predicts gets the prior of the training labels: that of ``<data>/train.csv`` when the folder has it,
else the ``prior.csv`` the classifier runs stored at training time, else uniform (warned). Problems are warned
about naming the study and the cause (a missing series type, a series folder missing or unreadable, slices
dropped from a truncated file, no point found); the run ends with a summary table of those studies (study, rows
from the prior, cause). A chunk that fails unexpectedly is retried study by study; a study that still fails gets
the prior for all its rows. The file holds the 25 rows of every study of ``<split>_series_descriptions.csv``
(whether or not ``sample_submission.csv`` exists), each summing to 1, and is written atomically.
"""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from rsna2024.constants import LEVELS, MIRRORED_CONDITION, PRED_COLUMNS, SAMPLE_SUBMISSION_FILE, study_row_ids
from rsna2024.errors import ConfigError, DicomError, RsnaError
from rsna2024.inference.ensemble import EnsembleWeights, blend, load_weights
from rsna2024.utils.io import atomic_to_csv, check_overwrite
from rsna2024.utils.logging import get_logger
from rsna2024.utils.messages import describe_items

log = get_logger(__name__)
SUMMARY_COLUMNS = ("study_id", "rows_from_prior", "cause")
_SIDE = re.compile(r"_(left|right)_")


# --------------------------------------------------------------------------- run folders
@dataclass
class RunFolder:
    """A run folder as ``predict`` sees it before loading it: its task, kind and trained folds."""

    path: Path
    task: str
    kind: str  # keypoint | classifier | baseline
    folds: list[int]

    @property
    def name(self) -> str:
        return self.path.resolve().name


def inspect_run(path: str | Path) -> RunFolder:
    """The task and trained folds of a run folder; a clear error when it is not a trained keypoint, classifier or
    baseline run (no folder, no config.yaml, another task, no ``fold*_best.pt``)."""
    from rsna2024.training.checkpoint import run_folds, run_task
    from rsna2024.training.runner import task_kind

    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"--runs: {path}: run folder not found")
    try:
        task = run_task(path)
    except ConfigError as exc:
        raise ConfigError(f"--runs: {exc}") from None
    kind = task_kind(task)
    if kind == "other":
        raise ConfigError(f"--runs: {path} is a {task!r} run; predict takes keypoint runs (keypoint_*), classifier "
                          "runs (split_*, global) and seed baselines (s0_ .. s3_)")
    folds = run_folds(path)
    if not folds:
        raise ConfigError(f"--runs: {path} has no fold model (no fold*_best.pt): train it first "
                          f"(`rsna2024 train --config ... --fold K`)")
    return RunFolder(path, task, kind, folds)


@dataclass
class ClassifierRun:
    """A stage-2 or baseline run loaded for inference: its task (a PointTask) and fold models."""

    folder: RunFolder
    task: object
    models: dict[int, torch.nn.Module]


def load_classifier_run(folder: RunFolder, device: torch.device) -> ClassifierRun:
    from rsna2024.classifiers.point_task import PointTask
    from rsna2024.training.checkpoint import load_run_models
    from rsna2024.training.task import create_task

    cfg, models = load_run_models(folder.path, device, folder.folds)
    task = create_task(cfg)
    if not isinstance(task, PointTask):
        raise ConfigError(f"{folder.path}: task {folder.task!r} does not predict targets at keypoints")
    return ClassifierRun(folder, task, models)


# --------------------------------------------------------------------------- the prior
def training_prior(data: str | Path, runs: Sequence[RunFolder]) -> tuple[pd.DataFrame, str]:
    """The prior of the training labels (``condition, level`` + the three columns) and where it comes from:
    ``<data>/train.csv``, else the first ``prior.csv`` among ``runs``, else uniform (with a warning)."""
    from rsna2024.baselines.prior import PRIOR_FILE, fit_prior, load_prior
    from rsna2024.constants import CONDITIONS, LABELS_FILE
    from rsna2024.data.contract import labels_long, load_labels_wide

    if (Path(data) / LABELS_FILE).is_file():
        return fit_prior(labels_long(load_labels_wide(data))), str(Path(data) / LABELS_FILE)
    for run in runs:
        if (run.path / PRIOR_FILE).is_file():
            return load_prior(run.path / PRIOR_FILE), str(run.path / PRIOR_FILE)
    log.warning("no %s in %s and no %s in the classifier runs (%s): rows no model predicts get 1/3 each", LABELS_FILE,
                data, PRIOR_FILE, ", ".join(r.name for r in runs) or "none")
    grid = pd.MultiIndex.from_product([CONDITIONS, LEVELS], names=["condition", "level"]).to_frame(index=False)
    return grid.assign(**{c: 1 / 3 for c in PRED_COLUMNS}), "uniform"


# --------------------------------------------------------------------------- problems per study
@dataclass
class StudyProblems:
    """What went wrong per study (causes, in order, each once)."""

    causes: dict[int, list[str]] = field(default_factory=dict)

    def add(self, study_id: int, cause: str, warn: bool = False) -> None:
        found = self.causes.setdefault(int(study_id), [])
        if cause not in found:
            found.append(cause)
            if warn:
                log.warning("study %s: %s", study_id, cause)

    def cause(self, study_id: int) -> str:
        return "; ".join(self.causes.get(int(study_id), []))


def index_problems(index: pd.DataFrame, listed: pd.DataFrame, store, problems: StudyProblems) -> None:
    """Warn about the chunk's series that preprocessing could not read, or read with slices dropped."""
    status = index.set_index(["study_id", "series_id"])
    for row in listed.itertuples(index=False):
        key = (int(row.study_id), int(row.series_id))
        what = f"series {row.series_id} ({row.series_description})"
        if key not in status.index:
            problems.add(row.study_id, f"{what} was not preprocessed", warn=True)
        elif status.loc[key, "status"] != "ok":
            problems.add(row.study_id, f"{what} unreadable: {status.loc[key, 'error']}", warn=True)
        elif int(pd.to_numeric(status.loc[key, "dropped_slices"], errors="coerce") or 0) > 0:
            dropped = store.load(*key).dropped
            problems.add(row.study_id, f"{what}: {len(dropped)} slice(s) dropped ({describe_items(dropped, 2)})",
                         warn=True)


# --------------------------------------------------------------------------- mirror test-time augmentation
def swap_sides(row_ids: pd.Series) -> pd.Series:
    """Row ids with left and right swapped (``..._left_subarticular_...`` <-> ``..._right_...``)."""
    return row_ids.str.replace(_SIDE, lambda m: "_right_" if m.group(1) == "left" else "_left_", n=1, regex=True)


def mirror_points(points_mm: pd.DataFrame) -> pd.DataFrame:
    """Points of the patient's mirror: x negated, each point now that of the other side's condition."""
    from rsna2024.dicom.geometry import MIRROR_LR

    out = points_mm.copy()
    out[["x_mm", "y_mm", "z_mm"]] = out[["x_mm", "y_mm", "z_mm"]].to_numpy(dtype=float) * MIRROR_LR
    out["condition"] = out["condition"].map(MIRRORED_CONDITION)
    return out


class MirroredStore:
    """A series store whose series are those of ``store`` mirrored left-right (each mirrored once, on demand)."""

    def __init__(self, store):
        self.base = store
        self.described = store.described
        self._mirrored: dict[tuple[int, int], object] = {}

    def has(self, study_id, series_id) -> bool:
        return self.base.has(study_id, series_id)

    def load(self, study_id: int, series_id: int):
        from rsna2024.dicom.geometry import mirror_series

        key = (int(study_id), int(series_id))
        if key not in self._mirrored:
            self._mirrored[key] = mirror_series(self.base.load(*key))
        return self._mirrored[key]

    def series_of(self, study_id: int, description: str) -> list:
        ids = sorted(s for (st, s), d in self.described.items() if st == int(study_id) and d == description)
        return [self.load(study_id, s) for s in ids]


# --------------------------------------------------------------------------- the predictor
@dataclass
class PredictResult:
    """What :func:`predict_submission` made: the submission, each run's table (rows it predicted, mean over its
    folds and TTA), the summary of studies with problems, where the prior came from, the file written."""

    submission: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    summary: pd.DataFrame
    prior_source: str
    out: Path | None = None
    seconds: float = 0.0  # the whole call
    load_seconds: float = 0.0  # of which loading the fold models

    @property
    def studies(self) -> int:
        return len(self.submission) // 25

    def format_summary(self) -> str:
        """The summary table of studies with problems (or a line saying there are none)."""
        if self.summary.empty:
            return f"every row of the {self.studies} studies was predicted by a model"
        rows = int(self.summary["rows_from_prior"].sum())
        head = (f"{len(self.summary)} of {self.studies} studies had problems; {rows} of {len(self.submission)} rows "
                f"from the prior ({self.prior_source}):")
        with pd.option_context("display.max_colwidth", 300, "display.width", 300):
            return head + "\n" + self.summary.to_string(index=False)


class Predictor:
    """Loaded runs and settings; :meth:`chunk` predicts a list of studies (see the module docstring)."""

    def __init__(self, data: Path, split: str, keypoints: list, classifiers: list[ClassifierRun],
                 device: torch.device, amp_dtype, batch_size: int, tta: bool, workers: int):
        self.data, self.split = data, split
        self.keypoints, self.classifiers = keypoints, classifiers
        self.device, self.amp_dtype, self.batch_size = device, amp_dtype, batch_size
        self.tta, self.workers = tta, workers
        self.problems = StudyProblems()
        self.failed: dict[int, str] = {}  # studies whose prediction raised, and the error

    def _predict(self, task):
        from rsna2024.training.trainer import predict_on

        return lambda model, dataset: predict_on(task, model, dataset, self.device, self.amp_dtype, self.batch_size)

    def chunk(self, study_ids: list[int], listed: pd.DataFrame, cache_root: Path) -> dict[str, pd.DataFrame]:
        """Each run's rows (``row_id`` + the three columns) of the studies ``study_ids`` (``listed``: their rows of
        the series descriptions), the cache in ``cache_root``."""
        from rsna2024.classifiers.dataset import SeriesStore
        from rsna2024.classifiers.samples import POINT_COLUMNS, load_points, points_in_mm
        from rsna2024.dicom.cache import INDEX_FILE, cache_dir, load_cache_index, preprocess
        from rsna2024.keypoints.coords import predict_points
        from rsna2024.keypoints.studies import StudySeries

        quiet = logging.getLogger("rsna2024.dicom.cache")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # one "preprocessing N series" line per chunk is noise under the bar
        try:
            index_path = preprocess(self.data, cache_root=cache_root, split=self.split, workers=self.workers,
                                    studies=study_ids, progress=False)
        except DicomError as exc:  # every series of the chunk failed: the index (written) says why, per series
            log.debug("chunk %s: %s", study_ids, exc)
            index_path = cache_dir(cache_root, self.data) / INDEX_FILE
        finally:
            quiet.setLevel(level)
        cache = index_path.parent
        index = load_cache_index(cache)
        index = index[(index["split"] == self.split) & index["study_id"].isin(study_ids)]
        store = SeriesStore(cache)
        index_problems(index, listed, store, self.problems)

        studies = StudySeries(cache, listed, self.split)
        coords = predict_points(self.keypoints, studies, self.device, self.batch_size,
                                report=lambda study, cause: self.problems.add(study, cause))
        found = coords.dropna(subset=["series_id", "instance_number", "x", "y"])  # empty rows: warned by stage 1
        points = points_in_mm(load_points(found), store.load) if len(found) else \
            pd.DataFrame(columns=list(POINT_COLUMNS))
        mirrored = MirroredStore(store) if self.tta else None  # shared by the runs: each series mirrored once
        return {run.folder.name: self.run_rows(run, study_ids, store, points, mirrored) for run in self.classifiers}

    def run_rows(self, run: ClassifierRun, study_ids, store, points: pd.DataFrame, mirrored=None) -> pd.DataFrame:
        """The rows of ``study_ids`` one run predicts at ``points`` (patient mm) on the series of ``store``: the
        mean over its fold models and, with TTA (``mirrored``: the mirror of ``store``, made when not given),
        over the patient's left-right mirror too, its left and right rows swapped back."""
        task, predict = run.task, self._predict(run.task)
        task.use_store(store)
        dataset = task.points_dataset(study_ids, points, memo=True)
        parts = [task.predicted_rows(model, dataset, predict) for model in run.models.values()]
        if self.tta and not task.mirror_invariant:
            mirrored = mirrored if mirrored is not None else MirroredStore(store)
            task.use_store(mirrored)
            flipped = task.points_dataset(study_ids, mirror_points(points), memo=True)
            for model in run.models.values():
                rows = task.predicted_rows(model, flipped, predict)
                parts.append(rows.assign(row_id=swap_sides(rows["row_id"])))
            task.use_store(store)
        return mean_rows(parts)


def mean_rows(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per row id the mean of the tables' three columns (rows renormalised); ``row_id`` + the columns."""
    cols = list(PRED_COLUMNS)
    both = pd.concat([p[["row_id", *cols]] for p in parts], ignore_index=True)
    if both.empty:
        return pd.DataFrame(columns=["row_id", *cols])
    out = both.astype({c: float for c in cols}).groupby("row_id", sort=True)[cols].mean()
    return out.div(out.sum(axis=1), axis=0).reset_index()


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _complete(study_ids: Sequence[int], blended: pd.DataFrame, prior: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """The 25 rows of each study (row order: study, then train.csv's columns): the blend where it has the row,
    else the prior; and per row whether it came from the prior."""
    from rsna2024.classifiers.oof import prior_rows

    table = prior_rows(study_ids, prior).set_index("row_id")
    order = [r for s in study_ids for r in study_row_ids(s)]
    table = table.loc[order]
    pred = blended.set_index("row_id")[list(PRED_COLUMNS)]
    hit = table.index.isin(pred.index)
    table.loc[hit, list(PRED_COLUMNS)] = pred.loc[table.index[hit]].to_numpy(dtype=float)
    values = np.clip(table[list(PRED_COLUMNS)].to_numpy(dtype=float), 0.0, 1.0)
    table[list(PRED_COLUMNS)] = values / values.sum(axis=1, keepdims=True)
    return table[list(PRED_COLUMNS)].reset_index(), pd.Series(~hit, index=table.index)


def predict_submission(data: str | Path, runs: Sequence[str | Path], out: str | Path | None = None,
                       split: str = "test", weights: str | Path | EnsembleWeights | None = None,
                       cache: str | Path | None = None, device: str = "auto", tta: bool = False,
                       overwrite: bool = False, batch_size: int = 16, chunk_studies: int = 8, workers: int = 1,
                       clean_cache: bool = False) -> PredictResult:
    """The submission of every study of ``split`` from the run folders ``runs`` (module docstring), written to
    ``out`` (None: not written) unless it exists and ``overwrite`` is False."""
    from rsna2024.data.contract import load_series_descriptions
    from rsna2024.keypoints.coords import load_run
    from rsna2024.metric import check_submission
    from rsna2024.training.trainer import resolve_amp, resolve_device

    started = time.perf_counter()
    if split not in ("train", "test"):
        raise ConfigError(f"--split must be train or test, got {split!r}")
    if out is not None:
        check_overwrite(out, overwrite)
    data = Path(data)
    folders = [inspect_run(r) for r in runs]
    names = [f.name for f in folders]
    if len(set(names)) != len(names):
        raise ConfigError(f"--runs: two run folders share a name ({', '.join(sorted(names))}); the blend and the "
                          "weights file key runs by folder name")
    keypoint_folders = [f for f in folders if f.kind == "keypoint"]
    classifier_folders = [f for f in folders if f.kind != "keypoint"]
    if not keypoint_folders or not classifier_folders:
        raise ConfigError("--runs: predict needs keypoint runs (keypoint_*: the points) and classifier or baseline "
                          f"runs (the predictions); got {', '.join(f'{f.name} ({f.task})' for f in folders)}")
    if isinstance(weights, (str, Path)):
        weights = load_weights(weights)
    if weights is not None and weights.runs:
        unknown = sorted(set(weights.runs) - {f.name for f in classifier_folders})
        if unknown:
            log.warning("the weights file names runs not among --runs (ignored): %s", ", ".join(unknown))
        if all(weights.weight(f.name) == 0 for f in classifier_folders):
            raise ConfigError(f"the weights file gives every classifier run among --runs weight 0 "
                              f"({', '.join(f.name for f in classifier_folders)})")
    listed = load_series_descriptions(data, split)
    study_ids = sorted(int(s) for s in listed["study_id"].unique())
    prior, prior_source = training_prior(data, classifier_folders)
    _check_sample_submission(data, study_ids)

    dev = resolve_device(device)
    amp = resolve_amp("auto", dev)
    loading = time.perf_counter()
    predictor = Predictor(data, split, [load_run(f.path, dev, f.folds) for f in keypoint_folders],
                          [load_classifier_run(f, dev) for f in classifier_folders], dev, amp, batch_size, tta, workers)
    load_seconds = time.perf_counter() - loading
    log.info("predicting %d %s studies on %s with %d keypoint and %d classifier runs (%s)%s", len(study_ids), split,
             dev, len(keypoint_folders), len(classifier_folders),
             ", ".join(f"{f.name}: folds {','.join(map(str, f.folds))}" for f in folders),
             "; flip TTA" if tta else "")
    tables = {f.name: [] for f in classifier_folders}
    temporary = tempfile.TemporaryDirectory(prefix="rsna2024-predict-") if cache is None else None
    root = Path(temporary.name if temporary is not None else cache)
    transient = temporary is not None or clean_cache
    try:
        with tqdm(total=len(study_ids), desc="predict", unit="study") as bar:
            for chunk in _chunks(study_ids, chunk_studies):
                for name, table in _predict_chunk(predictor, chunk, listed, root, transient).items():
                    tables[name].append(table)
                bar.update(len(chunk))
    finally:
        if temporary is not None:
            temporary.cleanup()

    if study_ids and len(predictor.failed) == len(study_ids):
        study, error = next(iter(predictor.failed.items()))
        raise RsnaError(f"prediction failed for every study (e.g. study {study}: {error}); rerun with --debug and "
                        "-v for the traceback")
    run_tables = {name: mean_rows(parts) if parts else pd.DataFrame(columns=["row_id", *PRED_COLUMNS])
                  for name, parts in tables.items()}
    predicted = {name: t for name, t in run_tables.items()
                 if len(t) and (weights is None or not weights.runs or weights.weight(name) > 0)}
    blended = blend(predicted, weights) if predicted else pd.DataFrame(columns=["row_id", *PRED_COLUMNS])
    submission, from_prior = _complete(study_ids, blended, prior)
    check_submission(submission, expected_row_ids=[r for s in study_ids for r in study_row_ids(s)])
    summary = _summary(study_ids, from_prior, predictor.problems)
    result = PredictResult(submission, run_tables, summary, prior_source, seconds=time.perf_counter() - started,
                           load_seconds=load_seconds)
    if out is not None:
        result.out = atomic_to_csv(submission, out)
    log.info("%d studies predicted in %.1f s (%.2f s per study)%s", len(study_ids), result.seconds,
             result.seconds / max(len(study_ids), 1), f"; submission written to {out}" if out is not None else "")
    return result


def _predict_chunk(predictor: Predictor, chunk: list[int], listed: pd.DataFrame, root: Path,
                   transient: bool) -> dict[str, pd.DataFrame]:
    """One chunk's run tables; a chunk that fails is retried study by study, and a study that still fails keeps
    no row (its rows get the prior) and its cause."""
    folder = Path(tempfile.mkdtemp(prefix="chunk-", dir=root)) if transient else root
    try:
        return predictor.chunk(chunk, listed[listed["study_id"].isin(chunk)], folder)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - one odd study must never end the run
        if len(chunk) == 1:
            predictor.failed[chunk[0]] = f"{type(exc).__name__}: {exc}"
            predictor.problems.add(chunk[0], f"prediction failed ({type(exc).__name__}: {exc})", warn=True)
            log.debug("study %s failed", chunk[0], exc_info=True)  # -v shows the traceback
            if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
                torch.cuda.empty_cache()
            return {}
        log.warning("a chunk of %d studies failed (%s: %s); predicting them one by one", len(chunk),
                    type(exc).__name__, exc)
        tables: dict[str, list[pd.DataFrame]] = {}
        for study in chunk:
            for name, table in _predict_chunk(predictor, [study], listed, root, transient).items():
                tables.setdefault(name, []).append(table)
        return {name: pd.concat(parts, ignore_index=True) for name, parts in tables.items()}
    finally:
        if transient:
            shutil.rmtree(folder, ignore_errors=True)


def _summary(study_ids: Sequence[int], from_prior: pd.Series, problems: StudyProblems) -> pd.DataFrame:
    """One row per study with rows from the prior or a problem: study, rows from the prior, cause."""
    counts = from_prior.groupby(from_prior.index.str.split("_", n=1).str[0].astype(int)).sum()
    rows = []
    for study in study_ids:
        n, cause = int(counts.get(study, 0)), problems.cause(study)
        if n or cause:
            rows.append((study, n, cause or "no model predicted these rows"))
    for study, n, cause in rows:
        if n:
            log.warning("study %s: %d row(s) from the prior: %s", study, n, cause)
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def _check_sample_submission(data: Path, study_ids: Sequence[int]) -> None:
    """Warn when ``sample_submission.csv`` lists studies the series descriptions do not (or the reverse)."""
    path = data / SAMPLE_SUBMISSION_FILE
    if not path.is_file():
        return
    try:
        sample = pd.read_csv(path, usecols=["row_id"])
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); the submission follows the series descriptions", path, exc)
        return
    listed = {int(s) for s in study_ids}
    named = {int(str(r).split("_", 1)[0]) for r in sample["row_id"] if str(r).split("_", 1)[0].isdigit()}
    if named != listed:
        log.warning("%s names %d studies, the series descriptions %d (%d in both); the submission holds the 25 rows "
                    "of every study of the series descriptions", path, len(named), len(listed), len(named & listed))
