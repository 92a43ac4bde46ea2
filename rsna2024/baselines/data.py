"""What the seed baselines see: one sample per target (S0-S2) or per study (S3), each image chosen by a rule.

A target is one ``(study, condition, level)`` row of the submission. Its point is the labelled one
(``train_label_coordinates.csv``) for training and validation, and stage 1's predicted one for the
out-of-fold files and the test set; points are compared in patient mm, so any series of the study can be
asked for its slice nearest a point. The rules (``ImageRule``):

- ``point`` (S0, S2): the canonical slice of the point's own series nearest the point (for a label, its
  own slice), the whole slice resized to ``image_size`` squared;
- ``sagittal_t1`` (S1): the study's Sagittal T1 slice nearest the target's point (over every Sagittal T1 series
  of the study; for the foramina this is the labelled slice, for the spinal canal the mid-sagittal one), the
  whole slice resized;
- S3 (:class:`StudyDataset`): per study, the Sagittal T2/STIR slice nearest the centroid of the study's
  spinal-canal points (the middle slice when it has none), plus the 25 targets' points projected on that
  slice as ``x / columns, y / rows, 1`` (``0, 0, 0`` for a target without a point): 75 numbers.

A target without a point, or whose series is not in the cache, has no sample: its rows of the OOF file are
the training folds' prior, marked ``fallback`` (:mod:`rsna2024.classifiers.oof`). Pixels come from the
preprocessing cache (per-series percentile scaling to [0, 1]); ``eight_bit`` rounds them to 256 levels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from rsna2024.classifiers.dataset import SeriesStore
from rsna2024.classifiers.samples import MM_COLUMNS
from rsna2024.constants import CONDITIONS, LEVELS, PRED_COLUMNS, SAGITTAL_T1, SAGITTAL_T2
from rsna2024.dicom.geometry import middle_slice_index
from rsna2024.training.losses import IGNORE_INDEX

ImageRule = Literal["point", "sagittal_t1"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LEVEL_INDEX = {lv: i for i, lv in enumerate(LEVELS)}
SPINAL = CONDITIONS[0]


@dataclass(kw_only=True)
class ImageSettings:
    """How a chosen slice becomes the model's input."""

    image_size: int = 224
    channels: int = 1  # the grayscale slice repeated to this many channels
    imagenet_norm: bool = False  # (x - ImageNet mean) / std per channel, else [0, 1]
    eight_bit: bool = False  # round to 256 grey levels (the 16-bit -> 8-bit conversion)
    hflip: float = 0.0  # training only: probability of a left-right flip
    vflip: float = 0.0  # training only: probability of an up-down flip
    rotate_degrees: float = 0.0  # training only: rotation drawn uniformly in +- this many degrees


# --------------------------------------------------------------------------- images
def resize_slice(pixels: np.ndarray, size: int) -> torch.Tensor:
    """A 2-D slice as a (1, size, size) float32 tensor (bilinear, antialiased when shrinking)."""
    t = torch.from_numpy(np.asarray(pixels, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def model_input(image: torch.Tensor, s: ImageSettings, train: bool) -> torch.Tensor:
    """(1, H, W) in [0, 1] -> the model's (channels, H, W): 8-bit rounding, augmentation (training; torch's
    global generator, which the trainer seeds), channel repeat, ImageNet normalisation."""
    if s.eight_bit:
        image = torch.round(image.clamp(0, 1) * 255) / 255
    if train:
        image = augment(image, s)
    image = image.expand(s.channels, -1, -1)
    if s.imagenet_norm:
        mean = torch.tensor((IMAGENET_MEAN * s.channels)[:s.channels]).view(-1, 1, 1)
        std = torch.tensor((IMAGENET_STD * s.channels)[:s.channels]).view(-1, 1, 1)
        image = (image - mean) / std
    return image.contiguous()


def augment(image: torch.Tensor, s: ImageSettings) -> torch.Tensor:
    """Random flips and rotation of a (C, H, W) image (outside the image: 0)."""
    if s.hflip and torch.rand(()) < s.hflip:
        image = image.flip(-1)
    if s.vflip and torch.rand(()) < s.vflip:
        image = image.flip(-2)
    if s.rotate_degrees:
        from torchvision.transforms.v2 import functional as TF

        angle = float((torch.rand(()) * 2 - 1) * s.rotate_degrees)
        image = TF.rotate(image, angle, interpolation=TF.InterpolationMode.BILINEAR)
    return image


def nearest_slice_of(store: SeriesStore, study_id: int, description: str, point) -> tuple[int, int] | None:
    """(series_id, canonical slice index) of the slice nearest ``point`` over the study's series of
    ``description`` (None without such a series)."""
    best, best_d = None, np.inf
    for series in store.series_of(study_id, description):
        i, _, _, d = series.nearest_slice(point)
        if d < best_d:
            best, best_d = (int(series.series_id), i), d
    return best


# --------------------------------------------------------------------------- per-target samples
def upsample_indices(labels: np.ndarray, groups: np.ndarray, max_factor: float | None = None) -> np.ndarray:
    """Indices that repeat minority classes: within each group (a ``train.csv`` column), every class is cycled
    up to the group's majority count (at most ``max_factor`` times its own count). Deterministic."""
    out = []
    for g in pd.unique(groups):
        members = np.flatnonzero(groups == g)
        classes = [members[labels[members] == c] for c in np.unique(labels[members])]
        top = max(len(m) for m in classes)
        for m in classes:
            n = top if max_factor is None else min(top, int(round(len(m) * max_factor)))
            out.append(np.resize(m, max(n, len(m))))
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


class TargetDataset(Dataset):
    """One item per target row of ``samples`` (:func:`rsna2024.classifiers.samples.split_samples`) that has an
    image under ``rule``: ``{"image": (C, H, W), "target": label or IGNORE_INDEX, "condition", "level",
    "index"}`` (``condition``: the position in ``conditions``). Training keeps labelled rows only and, with
    ``upsample``, repeats minority classes per column."""

    def __init__(self, samples: pd.DataFrame, store: SeriesStore, rule: ImageRule, settings: ImageSettings,
                 train: bool = False, conditions=CONDITIONS, upsample: bool = False,
                 upsample_max_factor: float | None = None):
        self.store, self.rule, self.settings, self.train = store, rule, settings, train
        self.condition_index = {c: i for i, c in enumerate(conditions)}
        samples = samples.reset_index(drop=True)
        sources = [self._source(r) for r in samples.itertuples(index=False)]
        keep = np.array([s is not None for s in sources], dtype=bool)
        if train:
            keep &= samples["label"].to_numpy() >= 0
        self.samples = samples[keep].reset_index(drop=True)
        self.sources = [s for s, k in zip(sources, keep) if k]
        self.skipped = int((~keep).sum())
        self.order = np.arange(len(self.samples))
        if train and upsample and len(self.samples):
            columns = (self.samples["condition"] + "_" + self.samples["level"]).to_numpy()
            self.order = upsample_indices(self.samples["label"].to_numpy(), columns, upsample_max_factor)

    def _source(self, row) -> tuple[int, int, int] | None:
        """(study_id, series_id, slice index) of the row's image, or None."""
        point = np.array([getattr(row, c) for c in MM_COLUMNS], dtype=float)
        if not np.isfinite(point).all():
            return None
        if self.rule == "sagittal_t1":
            found = nearest_slice_of(self.store, row.study_id, SAGITTAL_T1, point)
        elif self.store.has(row.study_id, row.series_id):
            series = self.store.load(row.study_id, row.series_id)
            found = (int(row.series_id), series.nearest_slice(point)[0])
        else:
            found = None
        return None if found is None else (int(row.study_id), *found)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict:
        j = int(self.order[i])
        study, series_id, index = self.sources[j]
        pixels = self.store.load(study, series_id).pixels[index]
        row = self.samples.iloc[j]
        label = int(row["label"])
        return {"image": model_input(resize_slice(pixels, self.settings.image_size), self.settings, self.train),
                "target": torch.tensor(label if label >= 0 else IGNORE_INDEX),
                "condition": torch.tensor(self.condition_index[row["condition"]]),
                "level": torch.tensor(LEVEL_INDEX[row["level"]]), "index": torch.tensor(j)}

    def prediction_rows(self, probs: np.ndarray) -> pd.DataFrame:
        """``row_id`` + the three columns from per-item probabilities ((N, 3) or (N, 1, 3), dataset order)."""
        probs = np.asarray(probs, dtype=float).reshape(len(self), 3)
        rows = pd.DataFrame(probs, columns=list(PRED_COLUMNS))
        rows.insert(0, "row_id", self.samples["row_id"].to_numpy()[self.order])
        return rows.groupby("row_id", sort=False).mean().reset_index()


# --------------------------------------------------------------------------- per-study samples (S3)
def study_coordinates(series, index: int, points: np.ndarray) -> np.ndarray:
    """(25, 3): each target's LPS point projected on slice ``index`` of ``series`` as ``x / columns,
    y / rows, 1``; ``0, 0, 0`` where the point is missing (NaN)."""
    out = np.zeros((len(points), 3), dtype=np.float32)
    rows, cols = series.pixels.shape[1:]
    for t, p in enumerate(points):
        if np.isfinite(p).all():
            xs, ys, _ = series.plane_coordinates(p)
            out[t] = (xs[index] / cols, ys[index] / rows, 1.0)
    return out


class StudyDataset(Dataset):
    """One item per study with a Sagittal T2/STIR series (the S3 rule of the module docstring):
    ``{"image": (1, H, W), "coords": (75,), "target": (25,) labels or IGNORE_INDEX, "index"}``, targets in
    ``CONDITIONS`` x ``LEVELS`` order. Training keeps studies with at least one label."""

    def __init__(self, samples: pd.DataFrame, store: SeriesStore, settings: ImageSettings, train: bool = False):
        self.store, self.settings, self.train = store, settings, train
        grid = pd.MultiIndex.from_product([sorted(samples["study_id"].unique()), CONDITIONS, LEVELS],
                                          names=["study_id", "condition", "level"])
        full = samples.set_index(["study_id", "condition", "level"]).reindex(grid).reset_index()
        self.studies, self.row_ids, self.labels, self.sources, self.coords = [], [], [], [], []
        self.skipped = 0
        for study, rows in full.groupby("study_id", sort=True):
            labels = rows["label"].fillna(-1).to_numpy(dtype=np.int64)
            points = rows[list(MM_COLUMNS)].to_numpy(dtype=float)
            source = self._source(int(study), points, rows["condition"].to_numpy() == SPINAL)
            if source is None or (train and not (labels >= 0).any()):
                self.skipped += 1
                continue
            self.studies.append(int(study))
            self.row_ids.append([f"{int(study)}_{c}_{lv}" for c, lv in zip(rows["condition"], rows["level"])])
            self.labels.append(np.where(labels >= 0, labels, IGNORE_INDEX))
            self.sources.append(source)
            self.coords.append(study_coordinates(self.store.load(int(study), source[0]), source[1], points))

    def _source(self, study: int, points: np.ndarray, spinal: np.ndarray) -> tuple[int, int] | None:
        sagittal = self.store.series_of(study, SAGITTAL_T2)
        if not sagittal:
            return None
        series = sagittal[0]
        known = spinal & np.isfinite(points).all(axis=1)
        index = series.nearest_slice(points[known].mean(axis=0))[0] if known.any() else middle_slice_index(series)
        return int(series.series_id), index

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, i: int) -> dict:
        series_id, index = self.sources[i]
        pixels = self.store.load(self.studies[i], series_id).pixels[index]
        image = model_input(resize_slice(pixels, self.settings.image_size), self.settings, self.train)
        return {"image": image, "coords": torch.from_numpy(self.coords[i].reshape(-1)),
                "target": torch.from_numpy(self.labels[i]), "index": torch.tensor(i)}

    def prediction_rows(self, probs: np.ndarray) -> pd.DataFrame:
        """``row_id`` + the three columns from (N, 25, 3) probabilities in dataset order."""
        probs = np.asarray(probs, dtype=float).reshape(len(self) * len(CONDITIONS) * len(LEVELS), 3)
        rows = pd.DataFrame(probs, columns=list(PRED_COLUMNS))
        rows.insert(0, "row_id", [r for ids in self.row_ids for r in ids])
        return rows
