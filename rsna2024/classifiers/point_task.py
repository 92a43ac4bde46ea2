"""What every task that classifies targets at keypoints shares (stage 2's ROI classifiers in
:mod:`rsna2024.classifiers.tasks` and the seed baselines in :mod:`rsna2024.baselines.tasks`).

One code path predicts held-out studies during training and unseen studies at inference:

- :meth:`PointTask.points_dataset`: the task's dataset of some studies at some points (``study_id, condition,
  level, series_id, x_mm, y_mm, z_mm``; a target without a row has no point), built over :attr:`store`;
- :meth:`PointTask.predicted_rows`: a model over such a dataset -> ``row_id`` + the three class columns of
  every target it predicts (targets without a point or a series are left out: the caller fills them).

``write_oof`` (training, stage 1's out-of-fold points) and ``rsna2024 predict`` (the test split, the fold models'
mean points: :mod:`rsna2024.inference.predict`, after :meth:`PointTask.use_store`) both go through them.

Point files (``data.train_points``, ``valid_points``, ``oof_points``): ``true`` means
``<data>/train_label_coordinates.csv``; any other value is a path in which ``{runs}`` (the runs folder, parent of
the experiment's run folder) and ``{data}`` (the data folder) are replaced.

Each finished fold also writes ``prior.csv`` into the run folder: the weight-aware prior of every labelled study
of ``train.csv`` (``condition, level`` + the three columns), what ``rsna2024 predict`` gives a target no model
can predict when the data folder holds no ``train.csv`` (a test-only folder).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from rsna2024.classifiers import oof as stage_oof
from rsna2024.constants import PRED_COLUMNS
from rsna2024.errors import ConfigError
from rsna2024.metric import SCORE_KEYS
from rsna2024.training.task import FoldContext, Task
from rsna2024.utils.io import atomic_to_csv
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)
TRUE_POINTS = "true"
DEFAULT_OOF_POINTS = "{runs}/coords_oof.csv"
#: ``predict(model, dataset) -> {"probs": (N, K, 3)}`` in dataset order, e.g. ``FoldContext.predict``.
Predictor = Callable[[object, object], dict]


def default_cache_folder(cache_root: str | Path, data_dir: str | Path) -> Path:
    """The default-parameter cache folder of ``data_dir`` inside ``cache_root``."""
    from rsna2024.dicom.cache import cache_dir

    return cache_dir(cache_root, data_dir)


def write_prior(run_dir: str | Path, wide: pd.DataFrame) -> Path:
    """``<run_dir>/prior.csv``: the weight-aware prior of every labelled study of ``wide`` (rewritten only when
    its content changes)."""
    from rsna2024.baselines.prior import PRIOR_FILE, save_prior

    return save_prior(stage_oof.fold_prior(wide, wide["study_id"]), Path(run_dir) / PRIOR_FILE)


class PointTask(Task):
    """Data, OOF files and scores of a task whose samples are targets (or studies) at keypoints. Subclasses set
    ``conditions`` (the conditions the model predicts) and implement :meth:`points_dataset`."""

    metric = "score"
    mode = "min"
    conditions: tuple[str, ...] = ()
    #: True when the patient's left-right mirror gives the model the same inputs (sides swapped): a flip
    #: test-time augmentation then adds nothing (``rsna2024 predict --tta`` skips the task).
    mirror_invariant: bool = False

    # ----------------------------------------------------------------- data
    def _setup(self, ctx: FoldContext) -> None:
        from rsna2024.classifiers.dataset import SeriesStore
        from rsna2024.data.contract import load_labels_wide

        self.ctx = ctx
        cache = Path(self.data.cache) if self.data.cache else default_cache_folder(ctx.cache_root, ctx.data_dir)
        self.use_store(SeriesStore(cache), load_labels_wide(ctx.data_dir))
        self.prior = stage_oof.fold_prior(self.wide, ctx.train_studies())

    def use_store(self, store, wide: pd.DataFrame | None = None) -> None:
        """Read series from ``store`` (a :class:`~rsna2024.classifiers.dataset.SeriesStore`) with the labels
        ``wide`` (``train.csv``; None: every study unlabelled, as at test time). The setup of inference."""
        self.store, self.wide = store, wide
        self._points: dict[str, pd.DataFrame] = {}

    def points_file(self, spec: str, ctx: FoldContext) -> Path:
        """The coordinates file a ``*_points`` setting names (see the module docstring)."""
        from rsna2024.data.contract import COORDINATES_FILE

        if spec == TRUE_POINTS:
            return Path(ctx.data_dir) / COORDINATES_FILE
        return Path(spec.format(runs=Path(ctx.run_dir).parent, data=ctx.data_dir))

    def points(self, spec: str, studies) -> pd.DataFrame:
        """Points in patient mm of ``studies`` from the file ``spec`` names (read once per task); a ConfigError
        saying how to make the file when it is missing."""
        from rsna2024.classifiers.samples import load_points

        path = self.points_file(spec, self.ctx)
        if not path.is_file():
            raise ConfigError(f"points file {path} (from {spec!r}) not found: run the keypoint stage's "
                              f"`rsna2024 coords` first, or set data.oof_points: true to predict on the true points")
        if str(path) not in self._points:
            self._points[str(path)] = load_points(path)
        return self.points_in_mm(self._points[str(path)], studies)

    def points_in_mm(self, table: pd.DataFrame, studies) -> pd.DataFrame:
        """The rows of ``studies`` of a checked coordinates table (``load_points``) in patient mm."""
        from rsna2024.classifiers.samples import points_in_mm

        return points_in_mm(table[table["study_id"].isin([int(s) for s in studies])], self.store.load)

    def labels(self, studies) -> pd.DataFrame:
        """Long labels of ``studies`` (``study_id, condition, level, row_id, label``); a study without labels (a
        test study) gets all 25 rows unlabelled (-1)."""
        from rsna2024.classifiers.samples import label_table

        studies = [int(s) for s in studies]
        labelled = set() if self.wide is None else set(self.wide["study_id"].astype(int))
        known = [s for s in studies if s in labelled]
        parts = [label_table(self.wide, known)] if known else []
        unlabelled = [s for s in studies if s not in labelled]
        if unlabelled or not parts:
            parts.append(label_table(None, unlabelled))
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]

    def points_dataset(self, studies, points_mm: pd.DataFrame, train: bool = False, memo: bool = False):
        """The task's dataset of ``studies`` at ``points_mm`` (see the module docstring); ``memo``: keep what
        each item cuts from the series once cut (where the dataset can), e.g. for several fold models."""
        raise NotImplementedError

    def dataset(self, studies, spec: str, train: bool = False):
        """The dataset of ``studies`` on the points the setting ``spec`` names."""
        return self.points_dataset(studies, self.points(spec, studies), train=train)

    # ----------------------------------------------------------------- evaluation
    def predicted_rows(self, model, dataset, predict: Predictor) -> pd.DataFrame:
        """``row_id`` + the three class columns of every target ``model`` predicts on ``dataset``."""
        if len(dataset) == 0:
            return pd.DataFrame(columns=["row_id", *PRED_COLUMNS])
        return dataset.prediction_rows(predict(model, dataset)["probs"])

    def oof_table(self, dataset, probs: np.ndarray, studies) -> pd.DataFrame:
        """The submission-format table of ``studies`` (all 25 rows each) from the model's ``probs``."""
        return stage_oof.assemble_oof(studies, dataset.prediction_rows(probs), self.prior, self.conditions)

    def validate(self, preds, dataset, ctx) -> dict[str, float]:
        scores = stage_oof.score_oof(self.oof_table(dataset, preds["probs"], ctx.valid_studies()), self.wide)
        return {"score": scores["total"], **{f"score_{k}": scores[k] for k in SCORE_KEYS if k != "total"}}

    def oof_dataset(self, studies, spec: str, ctx: FoldContext):
        """The dataset ``write_oof`` predicts on the points ``spec`` names (subclasses may reuse one)."""
        return self.dataset(studies, spec)

    def write_oof(self, model, ctx: FoldContext) -> list[Path]:
        studies = ctx.valid_studies()
        written = []
        for points, spec in (("predicted", self.data.oof_points), ("true", TRUE_POINTS)):
            rows = self.predicted_rows(model, self.oof_dataset(studies, spec, ctx), ctx.predict)
            oof = stage_oof.assemble_oof(studies, rows, self.prior, self.conditions)
            log.info("%s fold %d OOF on %s points (%s): total %.4f", self.cfg.name, ctx.fold, points,
                     self.points_file(spec, ctx), stage_oof.score_oof(oof, self.wide)["total"])
            written.append(atomic_to_csv(oof, ctx.path(stage_oof.oof_name(points, ctx.fold))))
        written.append(write_prior(ctx.run_dir, self.wide))
        written += stage_oof.merge_folds(ctx.run_dir, self.cfg.folds, self.wide).values()
        return written
