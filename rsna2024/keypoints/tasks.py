"""The three keypoint tasks on the trainer's Task interface: ``keypoint_sagt2``, ``keypoint_sagt1``, ``keypoint_axial``.

Each trains a heatmap model on its series type with the masked MSE loss (or, ``data.loss: spatial_ce``, a
cross-entropy over each map's pixels: :func:`~rsna2024.keypoints.heatmaps.spatial_cross_entropy`), picks the
best epoch by the median 3-D point error in mm on the fold's valid studies (lower is better) and writes
``oof_fold{k}.csv``: the fold's held-out studies' predicted points (columns of
:data:`rsna2024.keypoints.predict.POINT_COLUMNS` plus ``fold``).
The axial task's own OOF file places its level slices with the TRUE Sagittal T2 points; ``rsna2024 coords`` is
the end-to-end path that uses predicted ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
import torch

from rsna2024.data.contract import load_coordinates, load_series_descriptions
from rsna2024.errors import ConfigError
from rsna2024.keypoints.augment import AugmentConfig, KeypointAugment
from rsna2024.keypoints.datasets import KeypointDataset, image_size
from rsna2024.keypoints.heatmaps import (
    LOSSES,
    decode_heatmaps,
    masked_mse,
    resize_points,
    spatial_cross_entropy,
    to_heatmaps,
)
from rsna2024.keypoints.predict import POINT_COLUMNS, sample_rows
from rsna2024.keypoints.samples import AXIAL_FLIP_PAIRS, Sample, study_samples
from rsna2024.keypoints.studies import StudySeries, resolve_cache
from rsna2024.training.task import FoldContext, Task, register_task
from rsna2024.utils.io import atomic_to_csv
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)


@dataclass(kw_only=True)
class KeypointData:
    """The ``data:`` section of a keypoint experiment."""

    image_size: int | list[int] = 512  # model input (rows, cols), or one int for a square
    slices: int = 5  # channels: slices around the centre slice
    sigma: float = 10.0  # Gaussian sigma of the targets, px on the input grid
    peak_weight: float = 0.0  # loss weight 1 + peak_weight * target per pixel (0: plain MSE, as the recipe)
    loss: Literal["mse", "spatial_ce"] = "mse"  # mse on heatmaps (the recipe), or cross-entropy over the pixels
    offset_mm: float = 16.8  # Sagittal T1: centre slices this far left and right of the middle
    max_distance_mm: float = 5.0  # Axial: farthest level point from a continuous stack's slice (at least half a
    # level spacing; per-disc blocks are assigned in spine order, see rsna2024.dicom.levels)
    slice_search_mm: float = 0.0  # inference (coords): try every slice within this distance (axial: inside the
    # level's block), keep the surest
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        rows, cols = image_size(self.image_size)
        if rows < 8 or cols < 8 or self.slices < 1 or self.sigma <= 0 or self.peak_weight < 0:
            raise ConfigError(f"data: image_size {self.image_size}, slices {self.slices}, sigma {self.sigma} and "
                              f"peak_weight {self.peak_weight} must be at least 8 px, 1 slice, above 0 and 0 or more")
        if self.loss not in LOSSES:
            raise ConfigError(f"data.loss must be one of {list(LOSSES)}, got {self.loss!r}")
        if self.slice_search_mm < 0:
            raise ConfigError(f"data.slice_search_mm must be 0 (off) or more, got {self.slice_search_mm}")


class KeypointTask(Task):
    """Shared by the three keypoint tasks; a subclass sets :attr:`kind`, :attr:`n_maps` and :attr:`flip_pairs`."""

    kind: ClassVar[str] = ""
    n_maps: ClassVar[int] = 5
    flip_pairs: ClassVar[tuple] = ()
    DataConfig = KeypointData
    metric = "median_error_mm"
    mode = "min"

    def __init__(self, cfg):
        super().__init__(cfg)
        if self.data.augment.hflip > 0 and not self.flip_pairs:
            raise ConfigError(f"{cfg.task}: data.augment.hflip must be 0 (a flip of a sagittal image swaps "
                              f"anterior and posterior); only keypoint_axial flips, swapping left and right")
        self._studies: StudySeries | None = None
        self._labels: pd.DataFrame | None = None

    # ----------------------------------------------------------------- data
    def studies(self, ctx: FoldContext) -> StudySeries:
        """The cached training series (``ctx.cache_root``: a cache root or parameter folder)."""
        if self._studies is None:
            descriptions = load_series_descriptions(ctx.data_dir, "train")
            self._studies = StudySeries(resolve_cache(ctx.data_dir, ctx.cache_root), descriptions, "train")
            self._labels = load_coordinates(ctx.data_dir, descriptions)
        return self._studies

    def samples(self, ctx: FoldContext, study_ids, labelled_only: bool) -> list[Sample]:
        """Samples of ``study_ids`` with their true targets; studies lacking the series type are skipped and
        counted in the log (and, with ``labelled_only``, samples without any target)."""
        studies = self.studies(ctx)
        labels = self._labels.groupby("study_id")
        out, skipped = [], {}
        for sid in study_ids:
            rows = labels.get_group(sid) if sid in labels.groups else self._labels.iloc[:0]
            samples, why = study_samples(self.kind, studies, int(sid), rows, n_slices=self.data.slices,
                                         offset_mm=self.data.offset_mm, max_distance_mm=self.data.max_distance_mm)
            if why is not None:
                skipped[why] = skipped.get(why, 0) + 1
            out.extend(s for s in samples if s.has_targets or not labelled_only)
        for why, n in skipped.items():
            log.info("%s fold %d: %d stud%s skipped: %s", self.name, ctx.fold, n, "y" if n == 1 else "ies", why)
        return out

    def dataset(self, ctx: FoldContext, samples, train: bool) -> KeypointDataset:
        augment = KeypointAugment(self.data.augment, self.flip_pairs) if train else None
        return KeypointDataset(samples, self.studies(ctx), self.data.image_size, self.data.sigma, augment)

    def build_datasets(self, ctx: FoldContext):
        train = self.samples(ctx, ctx.train_studies(), labelled_only=True)
        valid = self.samples(ctx, ctx.valid_studies(), labelled_only=True)
        if not train:
            raise ConfigError(f"{self.name} fold {ctx.fold}: no training sample (no cached "
                              f"{self.kind} series with label points among {len(ctx.train_studies())} studies)")
        log.info("%s fold %d: %d training and %d validation samples", self.name, ctx.fold, len(train), len(valid))
        return self.dataset(ctx, train, True), self.dataset(ctx, valid, False)

    # ----------------------------------------------------------------- model and steps
    def model_params(self) -> dict:
        return {**self.cfg.model.params, "in_channels": self.data.slices, "classes": self.n_maps}

    def loss(self, outputs, batch) -> torch.Tensor:
        if self.data.loss == "spatial_ce":
            return spatial_cross_entropy(outputs, batch["target"], batch["mask"])
        return masked_mse(outputs, batch["target"], batch["mask"], self.data.peak_weight)

    def heatmaps(self, outputs):
        """The heatmaps (peak about 1 at a point) of the model's ``outputs``, whichever its loss."""
        return to_heatmaps(outputs, self.data.loss, self.data.sigma)

    def predict(self, outputs, batch) -> dict[str, torch.Tensor]:
        points, confidence = decode_heatmaps(self.heatmaps(outputs))
        return {"points": points, "confidence": confidence}

    def canonical_points(self, dataset: KeypointDataset, points: np.ndarray) -> list[np.ndarray]:
        """Input-grid points (N, K, 2) of ``dataset`` mapped to canonical pixels of each sample's centre slice."""
        out = []
        for sample, p in zip(dataset.samples, points):
            shape = dataset.studies.load(sample.study_id, sample.series_id).pixels.shape[1:]
            out.append(resize_points(p, dataset.size, shape))
        return out

    def validate(self, preds, dataset, ctx: FoldContext) -> dict[str, float]:
        errors = []
        order = np.asarray(preds["index"])
        canonical = self.canonical_points(dataset, np.asarray(preds["points"]))
        for i, p in zip(order, canonical):
            sample = dataset.samples[int(i)]
            series = dataset.studies.load(sample.study_id, sample.series_id)
            mm = np.asarray(series.pixel_to_patient(sample.centre, p[:, 0], p[:, 1]))
            err = np.linalg.norm(mm - sample.truth_mm, axis=1)
            errors.extend(err[np.isfinite(err)])
        if not errors:
            return {"median_error_mm": float("nan")}
        errors = np.asarray(errors)
        return {"median_error_mm": float(np.median(errors)), "mean_error_mm": float(errors.mean()),
                "p90_error_mm": float(np.quantile(errors, 0.9))}

    def write_oof(self, model, ctx: FoldContext):
        """``oof_fold{k}.csv``: predicted points of every held-out study with this series type."""
        samples = self.samples(ctx, ctx.valid_studies(), labelled_only=False)
        dataset = self.dataset(ctx, samples, train=False)
        rows = []
        if samples:
            preds = ctx.predict(model, dataset)
            canonical = self.canonical_points(dataset, np.asarray(preds["points"]))
            for i, p, conf in zip(np.asarray(preds["index"]), canonical, np.asarray(preds["confidence"])):
                sample = samples[int(i)]
                rows.extend(sample_rows(sample, dataset.studies.load(sample.study_id, sample.series_id), p, conf))
        table = pd.DataFrame(rows, columns=POINT_COLUMNS).assign(fold=ctx.fold)
        path = ctx.path(f"oof_fold{ctx.fold}.csv")
        atomic_to_csv(table, path)
        return [path]


@register_task("keypoint_sagt2")
class SagT2Keypoints(KeypointTask):
    """Sagittal T2/STIR: slices around the middle, 5 spinal canal points."""

    kind, n_maps = "sagt2", 5


@register_task("keypoint_sagt1")
class SagT1Keypoints(KeypointTask):
    """Sagittal T1: one sample per side at +-offset_mm, 5 foraminal points of that side."""

    kind, n_maps = "sagt1", 5


@register_task("keypoint_axial")
class AxialKeypoints(KeypointTask):
    """Axial T2: per level, slices around the slice nearest the level's Sag T2 point; left and right
    subarticular points (a horizontal flip swaps the two maps)."""

    kind, n_maps, flip_pairs = "axial", 2, AXIAL_FLIP_PAIRS


TASKS = {"sagt2": "keypoint_sagt2", "sagt1": "keypoint_sagt1", "axial": "keypoint_axial"}
