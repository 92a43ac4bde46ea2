"""Regions of interest: square patches in patient mm around a point, a few slices as channels.

A region is cut by :func:`cut_region` from one series through :mod:`rsna2024.dicom.geometry`
(``crop_roi`` resamples a ``size_mm`` square centred on the point's projection onto each slice;
``slices_at_offsets`` picks the slices in mm along the series normal), so nothing here multiplies by
PixelSpacing. Output: ``(slices, out_size, out_size)`` float32, rows and columns along the slices'
(canonical) rows and columns.

Which slices, per condition (kit-guide section 2; :func:`condition_region` applies these rules):

- spinal canal (Sagittal T2/STIR): ``slices`` slices around the slice nearest the point, ordered patient
  right to left;
- foramina (Sagittal T1): by default (``foraminal_slices: offset``) the window is centred at the recipe's
  level-dependent offset from the middle of the stack (:data:`FORAMINAL_OFFSETS_MM`; patient left positive,
  right negative), the point giving only the in-plane centre; with ``point`` around the point's own slice.
  Ordered medial to lateral on both sides, so one model serves both;
- subarticular recesses (Axial T2): around the slice nearest the point, ordered head to foot; the right
  side is mirrored left-right (:func:`mirror_left_right`) so it looks like a left one;
- the level's axial slices for the spinal model (optional): around the axial slice nearest the spinal point.

Training jitter (:class:`Jitter`) moves the centre in the slice plane (mm) and the window along the normal
(whole slices), to mimic the error of stage-1 points. Only a window placed by the point moves across slices, and
only in the planes of ``jitter.slice_planes``: a foraminal window at the recipe's offsets does not depend on the
point, so stage 1 cannot move it and neither does the jitter.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from rsna2024.constants import LEVELS
from rsna2024.dicom.geometry import crop_roi, lps_oriented_normal, slices_at_offsets
from rsna2024.dicom.series import Series
from rsna2024.errors import ConfigError

# Recipe: Sagittal T1 slice offsets (mm from the middle) of the foramina at L1/L2 .. L5/S1.
FORAMINAL_OFFSETS_MM: tuple[float, ...] = (14.9, 15.7, 16.7, 17.8, 18.9)
FORAMINAL_SLICE_MODES = ("offset", "point")
PLANES = ("sagittal", "axial")
SPINAL = "spinal_canal_stenosis"
SIDES = ("left", "right")


def side_of(condition: str) -> str | None:
    """``left``/``right`` for a sided condition, None for the spinal canal."""
    return next((s for s in SIDES if condition.startswith(f"{s}_")), None)


@dataclass(frozen=True)
class Jitter:
    """Training-time perturbation: the centre moves by a Gaussian of ``mm`` (standard deviation, in the
    slice plane) and the slice window by up to ``slices`` whole slices either way, in regions cut from a plane
    of ``slice_planes`` (``sagittal``, ``axial``) whose window is placed by the point."""

    mm: float = 0.0
    slices: int = 0
    slice_planes: tuple[str, ...] = PLANES

    def __post_init__(self) -> None:
        if self.mm < 0 or self.slices < 0:
            raise ConfigError(f"roi.jitter: mm and slices must be >= 0, got mm={self.mm}, slices={self.slices}")
        object.__setattr__(self, "slice_planes", tuple(self.slice_planes))  # a YAML list arrives as a list
        unknown = [p for p in self.slice_planes if p not in PLANES]
        if unknown:
            raise ConfigError(f"roi.jitter.slice_planes: expected some of {list(PLANES)}, "
                              f"got {list(self.slice_planes)}")

    @property
    def active(self) -> bool:
        return self.mm > 0 or self.slices > 0


@dataclass(frozen=True)
class RoiConfig:
    """How regions are cut: ``size_mm`` square, ``out_size`` pixels, ``slices`` slices ``slice_step``
    slice spacings apart; the foraminal slice rule and offsets; whether the spinal model also sees the
    level's axial slices (``spinal_axial``, matched within ``axial_max_distance_mm``)."""

    size_mm: float = 50.0
    out_size: int = 128
    slices: int = 5
    slice_step: float = 1.0
    foraminal_slices: Literal["offset", "point"] = "offset"
    foraminal_offsets_mm: tuple[float, ...] = FORAMINAL_OFFSETS_MM
    spinal_axial: bool = False
    axial_max_distance_mm: float = 10.0
    jitter: Jitter = field(default_factory=Jitter)

    def __post_init__(self) -> None:
        if self.size_mm <= 0 or self.out_size < 1 or self.slices < 1 or self.slice_step <= 0:
            raise ConfigError(f"roi: size_mm, out_size, slices and slice_step must be positive, got {self}")
        if self.foraminal_slices not in FORAMINAL_SLICE_MODES:
            raise ConfigError(f"roi.foraminal_slices must be one of {list(FORAMINAL_SLICE_MODES)}, "
                             f"got {self.foraminal_slices!r}")
        if len(self.foraminal_offsets_mm) != len(LEVELS):
            raise ConfigError(f"roi.foraminal_offsets_mm needs one offset per level ({len(LEVELS)}), "
                             f"got {list(self.foraminal_offsets_mm)}")

    def foraminal_offset(self, level: str, side: str) -> float:
        """Offset (mm, patient left positive) of the foramen of ``side`` at ``level`` from the middle slice."""
        offset = self.foraminal_offsets_mm[LEVELS.index(level)]
        return offset if side == "left" else -offset


def window_offsets(count: int, spacing: float, step: float = 1.0) -> np.ndarray:
    """``count`` offsets (mm) ``step`` x ``spacing`` apart, centred on 0, increasing."""
    return (np.arange(count) - (count - 1) / 2) * step * spacing


def mirror_left_right(roi: np.ndarray, series: Series, slice_index: int) -> np.ndarray:
    """Mirror a region across the patient's sagittal plane: flip the image axis that runs most nearly
    along patient left-right on slice ``slice_index`` (the columns of a canonical axial slice)."""
    row_dir, col_dir = series.row_dirs[slice_index], series.col_dirs[slice_index]
    axis = -1 if abs(row_dir[0]) >= abs(col_dir[0]) else -2
    return np.ascontiguousarray(np.flip(roi, axis=axis))


def slice_jitter(cfg: RoiConfig, plane: str, anchored: bool = False) -> int:
    """How many slices the training jitter may move a region's window either way: ``cfg.jitter.slices`` for a
    window placed by the point in a plane of ``jitter.slice_planes``, 0 for others and for an ``anchored`` one."""
    return 0 if anchored or plane not in cfg.jitter.slice_planes else cfg.jitter.slices


def _window(series: Series, center, cfg: RoiConfig, anchor_mm: float | None, descending: bool,
            rng: np.random.Generator | None, plane: str = "sagittal") -> tuple[np.ndarray, np.ndarray]:
    """The (possibly jittered) centre and the slice indices of a region (see :func:`cut_region`)."""
    center = np.asarray(center, dtype=np.float64).reshape(3)
    spacing = series.slice_spacing or 1.0
    offsets = window_offsets(cfg.slices, spacing, cfg.slice_step)
    if descending:
        offsets = offsets[::-1]
    if rng is not None and cfg.jitter.active:
        normal = lps_oriented_normal(series)
        shift = rng.normal(0.0, cfg.jitter.mm, 3) if cfg.jitter.mm > 0 else np.zeros(3)
        center = center + shift - (shift @ normal) * normal
        moves = slice_jitter(cfg, plane, anchored=anchor_mm is not None)
        offsets = offsets + int(rng.integers(-moves, moves + 1)) * spacing
    if anchor_mm is None:
        return center, slices_at_offsets(series, offsets, reference=series.nearest_slice(center)[0])
    return center, slices_at_offsets(series, offsets + anchor_mm)


def cut_region(series: Series, center, cfg: RoiConfig, *, anchor_mm: float | None = None,
               descending: bool = False, mirror: bool = False, plane: str = "sagittal",
               rng: np.random.Generator | None = None) -> np.ndarray:
    """The region of ``series`` around the LPS point ``center`` (mm): ``(cfg.slices, out, out)`` float32.

    The slice window is centred on the slice nearest ``center`` or, when ``anchor_mm`` is given, on
    the slice ``anchor_mm`` from the middle of the stack along the series normal oriented towards
    patient left / posterior / superior; slices run along that direction, or against it when
    ``descending``. ``mirror`` flips the region left-right (:func:`mirror_left_right`). With ``rng``
    the training jitter of ``cfg.jitter`` is applied.
    """
    center, slices = _window(series, center, cfg, anchor_mm, descending, rng, plane)
    roi = crop_roi(series, center, cfg.size_mm, cfg.out_size, slices=slices)
    if mirror:
        roi = mirror_left_right(roi, series, int(slices[len(slices) // 2]))
    return roi


def condition_window(condition: str, level: str, cfg: RoiConfig) -> dict:
    """The :func:`cut_region` options (``anchor_mm``, ``descending``, ``mirror``, ``plane``) of one condition at
    one level, by the rules of the module docstring."""
    side = side_of(condition)
    if condition == SPINAL:
        return {"anchor_mm": None, "descending": False, "mirror": False, "plane": "sagittal"}
    if "foraminal" in condition:
        anchor = cfg.foraminal_offset(level, side) if cfg.foraminal_slices == "offset" else None
        return {"anchor_mm": anchor, "descending": side == "right", "mirror": False, "plane": "sagittal"}
    if "subarticular" in condition:
        return {"anchor_mm": None, "descending": True, "mirror": side == "right", "plane": "axial"}
    raise ValueError(f"unknown condition {condition!r}")


def condition_region(series: Series, condition: str, level: str, point, cfg: RoiConfig,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """The region of one condition at one level, by the rules of the module docstring.

    ``series`` is the series the condition is read on (Sagittal T2 for the spinal canal, Sagittal T1 for the
    foramina, Axial T2 for the recesses); ``point`` the condition's LPS point at ``level``.
    """
    return cut_region(series, point, cfg, rng=rng, **condition_window(condition, level, cfg))


def condition_slices(series: Series, condition: str, level: str, point, cfg: RoiConfig) -> np.ndarray:
    """The canonical slice indices :func:`condition_region` cuts (no jitter), in the region's channel order."""
    window = condition_window(condition, level, cfg)
    return _window(series, point, cfg, window["anchor_mm"], window["descending"], None, window["plane"])[1]


def axial_region(axials: Sequence[Series], point, cfg: RoiConfig,
                 rng: np.random.Generator | None = None) -> np.ndarray | None:
    """The level's axial region around the spinal ``point`` (head to foot), from whichever axial series has
    a slice within ``cfg.axial_max_distance_mm`` of it; None when none has."""
    from rsna2024.dicom.geometry import nearest_axial_slice

    found = nearest_axial_slice(axials, point, max_distance_mm=cfg.axial_max_distance_mm)
    if found is None:
        return None
    return cut_region(axials[found[0]], point, cfg, descending=True, plane="axial", rng=rng)
