"""The torch dataset of stage 2: regions of interest cut from the cache around each sample's points.

An item is ``{"image": (R, S, H, W) float32, "target": (K,) int64, "level": int, "index": i}``: R regions of
S slices, K labels (``IGNORE_INDEX`` where the label or the condition's point is missing). Split models:
K = 1 and R = 1 (2 for the spinal model with ``roi.spinal_axial``: the Sagittal T2 region and the level's
axial one). Global model: K = 5 (the conditions in :data:`rsna2024.constants.CONDITIONS` order) and
R = 5 regions in the same order (+1 axial with ``spinal_axial``); a region whose point or series is
missing is all zeros.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from rsna2024.classifiers.roi import (
    SPINAL,
    Jitter,
    RoiConfig,
    axial_region,
    condition_region,
    condition_window,
    slice_jitter,
)
from rsna2024.classifiers.samples import MM_COLUMNS, has_point
from rsna2024.constants import AXIAL_T2, CONDITION_SERIES, CONDITIONS, LEVELS, PRED_COLUMNS
from rsna2024.dicom.series import Series
from rsna2024.training.losses import IGNORE_INDEX


class SeriesStore:
    """Cached series by (study_id, series_id), memory-mapped and kept in a small LRU, and the list of
    each study's readable series per description (from the cache index)."""

    def __init__(self, cache: str | Path | None = None, max_loaded: int = 32):
        self.cache = Path(cache) if cache is not None else None
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[tuple[int, int], Series] = OrderedDict()
        self._fixed: dict[tuple[int, int], Series] = {}
        self.described: dict[tuple[int, int], str] = {}
        if cache is not None:
            from rsna2024.dicom.cache import load_cache_index

            index = load_cache_index(cache)
            ok = index[index["status"] == "ok"]
            self.described = {(int(r.study_id), int(r.series_id)): str(r.series_description)
                              for r in ok.itertuples(index=False)}

    @classmethod
    def from_series(cls, series: list[Series]) -> SeriesStore:
        """A store over in-memory series (each with ``study_id``, ``series_id`` and ``description``)."""
        store = cls()
        for s in series:
            key = (int(s.study_id), int(s.series_id))
            store._fixed[key] = s
            store.described[key] = s.description
        return store

    def has(self, study_id: int, series_id) -> bool:
        return not pd.isna(series_id) and (int(study_id), int(series_id)) in self.described

    def load(self, study_id: int, series_id: int) -> Series:
        key = (int(study_id), int(series_id))
        if key in self._fixed:
            return self._fixed[key]
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        if self.cache is None or key not in self.described:
            raise KeyError(f"series {key[0]}/{key[1]} is not in the cache {self.cache}")
        from rsna2024.dicom.cache import load_cached_series

        series = self._loaded[key] = load_cached_series(self.cache, *key)
        if len(self._loaded) > self.max_loaded:
            self._loaded.popitem(last=False)
        return series

    def series_of(self, study_id: int, description: str) -> list[Series]:
        """The readable series of ``description`` of a study, loaded (may be empty)."""
        ids = sorted(s for (st, s), d in self.described.items() if st == int(study_id) and d == description)
        return [self.load(study_id, s) for s in ids]

    def __getstate__(self):  # DataLoader workers start with an empty LRU
        state = self.__dict__.copy()
        state["_loaded"] = OrderedDict()
        return state


def _condition_slots(conditions) -> list[str]:
    """The condition of each slot region of an item: all five (global) or, for a split model, its first (the
    conditions of one split model share one rule)."""
    return list(CONDITIONS) if len(conditions) == len(CONDITIONS) else [conditions[0]]


def _axial_extras(conditions, cfg: RoiConfig) -> int:
    """Regions after the slots: 1 for the spinal model's axial region (``roi.spinal_axial``), else 0."""
    return int(cfg.spinal_axial and SPINAL in conditions)


def region_count(conditions, cfg: RoiConfig) -> int:
    """Regions per item: one per condition slot (split models: 1), +1 for the spinal axial region."""
    return len(_condition_slots(conditions)) + _axial_extras(conditions, cfg)


def region_series(conditions, cfg: RoiConfig) -> list[str]:
    """The series type each region of an item is cut from (:func:`region_count` order)."""
    return [CONDITION_SERIES[c] for c in _condition_slots(conditions)] + [AXIAL_T2] * _axial_extras(conditions, cfg)


def region_slice_moves(conditions, cfg: RoiConfig) -> np.ndarray:
    """Per region of an item (:func:`region_count` order), how many slices the training jitter may move its
    window either way (:func:`~rsna2024.classifiers.roi.slice_jitter`)."""
    moves = []
    for condition in _condition_slots(conditions):
        window = condition_window(condition, LEVELS[0], cfg)
        moves.append(slice_jitter(cfg, window["plane"], anchored=window["anchor_mm"] is not None))
    moves += [slice_jitter(cfg, "axial")] * _axial_extras(conditions, cfg)
    return np.array(moves, dtype=np.int64)


def crop_margin(cfg: RoiConfig) -> int:
    """Pixels kept on each side of a memoised training region so that its in-plane jitter (up to 3 standard
    deviations of ``cfg.jitter.mm``) is a crop of it."""
    return int(np.ceil(3 * cfg.jitter.mm * cfg.out_size / cfg.size_mm))


class RoiDataset(Dataset):
    """Items of a split (``samples`` from :func:`~rsna2024.classifiers.samples.split_samples`) or global
    (:func:`~rsna2024.classifiers.samples.global_samples`) sample table.

    ``train`` turns on the jitter of ``cfg``; its random draws come from torch's generator, so the
    trainer's saved RNG state makes a resumed epoch see what the uninterrupted one would. ``memo`` keeps each
    item's regions in memory (float16) once cut; it pays off with DataLoader ``workers: 0`` (worker processes
    start empty every epoch). With training jitter the regions are kept with a margin and the jitter is a
    random crop of them, without resampling the series every epoch: in the slice plane a margin of
    :func:`crop_margin` pixels, shifts whole output pixels (``size_mm / out_size``) apart and clipped at 3
    standard deviations; across slices ``jitter.slices`` extra slices at each end of the window, shifts of whole
    slices. Each crop is what a fresh cut at the moved centre and window gives (with ``slice_step`` other than
    1 the slice jitter cannot be a crop, and such regions are cut afresh).
    """

    def __init__(self, samples: pd.DataFrame, store: SeriesStore, cfg: RoiConfig, conditions, train: bool = False,
                 memo: bool = False):
        jitter = train and cfg.jitter.active
        self.crop = memo and jitter and (cfg.jitter.slices == 0 or cfg.slice_step == 1)
        self.memo: dict[int, np.ndarray] | None = {} if memo and (not jitter or self.crop) else None
        self.margin = crop_margin(cfg) if self.crop else 0
        self.slice_margin = cfg.jitter.slices if self.crop else 0
        # what is cut: the region itself, or (crop jitter) the same pixel pitch and slice spacing with the margins
        self.cut_cfg = replace(cfg, size_mm=cfg.size_mm * (cfg.out_size + 2 * self.margin) / cfg.out_size,
                               out_size=cfg.out_size + 2 * self.margin, slices=cfg.slices + 2 * self.slice_margin,
                               jitter=Jitter()) if self.crop else cfg
        self.samples = samples.reset_index(drop=True)
        self.rows = self.samples.to_dict("records")  # plain dicts: pandas row access is slow per item
        self.store = store
        self.cfg = cfg
        self.conditions = tuple(conditions)
        self.is_global = len(self.conditions) == len(CONDITIONS)
        self.train = train
        self.regions = region_count(self.conditions, cfg)
        self.slice_moves = region_slice_moves(self.conditions, cfg)
        slots = list(CONDITIONS) if self.is_global else [None]
        # per row and condition slot: is the region there (point known, series in the cache)?
        self.present = np.stack([self._present(c) for c in slots], axis=1)

    def _present(self, condition: str | None) -> np.ndarray:
        suffix = f"_{condition}" if condition else ""
        known = has_point(self.samples, condition)
        ids = self.samples[f"series_id{suffix}"].to_numpy()
        return known & np.array([self.store.has(st, s) for st, s in zip(self.samples["study_id"], ids)], dtype=bool)

    def __len__(self) -> int:
        return len(self.samples)

    def labels(self, i: int) -> np.ndarray:
        """(K,) labels of item ``i`` with IGNORE_INDEX where the label or the region is missing."""
        row = self.rows[i]
        if self.is_global:
            labels = np.array([row[f"label_{c}"] for c in CONDITIONS], dtype=np.int64)
        else:
            labels = np.array([row["label"]], dtype=np.int64)
        return np.where((labels >= 0) & self.present[i], labels, IGNORE_INDEX)

    @staticmethod
    def _point(row: dict, suffix: str) -> np.ndarray:
        return np.array([row[f"{c}{suffix}"] for c in MM_COLUMNS], dtype=float)

    def _region(self, row: dict, condition: str, suffix: str, cfg: RoiConfig, rng) -> np.ndarray:
        series = self.store.load(row["study_id"], row[f"series_id{suffix}"])
        return condition_region(series, condition, row["level"], self._point(row, suffix), cfg, rng=rng)

    def image(self, i: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """(R, S, H, W) float32 regions of item ``i`` (with ``rng``: jittered as ``cfg.jitter`` says)."""
        return self._cut(i, self.cfg, rng)

    def _crop(self, regions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The crop jitter of the memoised ``regions`` (R, S + 2j, H + 2m, W + 2m): per region a Gaussian shift
        of ``jitter.mm`` in whole output pixels (within the margin m) and a uniform shift of the slice window
        by up to the region's :attr:`slice_moves` (at most j = ``jitter.slices``) slices (a window shifted by k along
        a region's slice order; since the draw is symmetric, the same as a fresh cut's window shifted by k, or by
        -k for a descending region)."""
        m, n, j, s = self.margin, self.cfg.out_size, self.slice_margin, self.cfg.slices
        shifts = np.clip(np.rint(rng.normal(0.0, self.cfg.jitter.mm, (len(regions), 2)) * n / self.cfg.size_mm),
                         -m, m).astype(int)
        moves = self.slice_moves
        ks = rng.integers(-moves, moves + 1) if j else np.zeros(len(regions), dtype=int)
        return np.stack([r[j + k:j + k + s, m + dy:m + dy + n, m + dx:m + dx + n]
                         for r, (dx, dy), k in zip(regions, shifts, ks)])

    def _cut(self, i: int, cfg: RoiConfig, rng: np.random.Generator | None) -> np.ndarray:
        row = self.rows[i]
        out = np.zeros((self.regions, cfg.slices, cfg.out_size, cfg.out_size), dtype=np.float32)
        slots = [(k, c, f"_{c}") for k, c in enumerate(CONDITIONS)] if self.is_global else \
            [(0, row["condition"], "")]
        for k, condition, suffix in slots:
            if self.present[i, k]:
                out[k] = self._region(row, condition, suffix, cfg, rng)
        spinal_k = CONDITIONS.index(SPINAL) if self.is_global else 0
        if self.regions > len(slots) and self.present[i, spinal_k]:
            point = self._point(row, f"_{SPINAL}" if self.is_global else "")
            axial = axial_region(self.store.series_of(row["study_id"], AXIAL_T2), point, cfg, rng=rng)
            if axial is not None:
                out[-1] = axial
        return out

    def __getitem__(self, i: int) -> dict:
        rng = None
        if self.train and self.cfg.jitter.active:
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,)).item()))
        if self.memo is not None:
            image = self.memo.get(i)
            if image is None:
                image = self.memo[i] = self._cut(i, self.cut_cfg, None).astype(np.float16)
            image = (self._crop(image, rng) if self.crop else image).astype(np.float32)
        else:
            image = self.image(i, rng)
        return {"image": torch.from_numpy(image), "target": torch.from_numpy(self.labels(i)),
                "level": LEVELS.index(self.rows[i]["level"]), "index": i}

    def usable(self) -> np.ndarray:
        """Rows with at least one known label on a present region (what training keeps)."""
        return np.array([(self.labels(i) != IGNORE_INDEX).any() for i in range(len(self))], dtype=bool)

    def prediction_rows(self, probs: np.ndarray) -> pd.DataFrame:
        """``row_id`` + the three class columns of every output whose region is present, from ``probs``
        (N, K, 3) in dataset order; outputs without a region are left out (the OOF file falls back)."""
        probs = np.asarray(probs, dtype=float).reshape(len(self), -1, 3)
        if self.is_global:
            ids = self.samples[[f"row_id_{c}" for c in CONDITIONS]].to_numpy()
        else:
            ids = self.samples[["row_id"]].to_numpy()
        keep = self.present
        table = pd.DataFrame(probs[keep], columns=list(PRED_COLUMNS))
        table.insert(0, "row_id", ids[keep])
        return table
