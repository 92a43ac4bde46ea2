"""Patient-space geometry between series: projections, slices at mm offsets, axial level assignment, ROIs.

Everything is in LPS millimetres and works per slice (each slice's own plane), so tilted axial
sub-stacks inside one series are handled. Slice indices and pixels are canonical (the grid of
``Series.pixels``) except where a function says it speaks InstanceNumbers and stored pixels.
Later stages ask these functions for slices and regions; they never multiply by PixelSpacing themselves.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from rsna2024.dicom.series import Projection, Series, canonicalize

DEFAULT_LEVEL_MAX_DISTANCE_MM = 5.0
LEVEL_TABLE_COLUMNS = ("series_id", "slice_index", "instance_number", "level", "distance_mm", "x", "y")


def project_point(src: Series, instance_number: int, x: float, y: float, dst: Series) -> Projection:
    """Project stored pixel (x, y) of slice ``instance_number`` of ``src`` into ``dst``: the nearest ``dst``
    slice's InstanceNumber, the stored pixel there and the distance (mm) from that slice's plane."""
    return dst.from_patient(src.to_patient(instance_number, x, y))


#: The patient's left-right mirror in LPS mm (x -> -x), as a factor per axis.
MIRROR_LR = np.array([-1.0, 1.0, 1.0])


def mirror_series(series: Series) -> Series:
    """The series of the patient mirrored left-right (LPS x -> -x), laid out canonically again: a sagittal
    stack's slice order reverses, an axial slice's columns reverse. A pure re-indexing of the pixels (nothing
    resampled); geometry, InstanceNumbers and ids carry over, the stored grids become the mirror's own."""
    mirrored = Series(pixels=series.pixels, instance_numbers=series.instance_numbers,
                      positions=series.positions * MIRROR_LR, row_dirs=series.row_dirs * MIRROR_LR,
                      col_dirs=series.col_dirs * MIRROR_LR, spacings=series.spacings, study_id=series.study_id,
                      series_id=series.series_id, description=series.description)
    return canonicalize(mirrored)


def lps_oriented_normal(series: Series) -> np.ndarray:
    """The series normal flipped so that its dominant component is positive.

    Positive then means patient Left for sagittal, Posterior for coronal and Superior for axial series
    (for canonical series: the slice order for sagittal and coronal, against it for axial).
    """
    n = series.series_normal
    return n if n[np.argmax(np.abs(n))] > 0 else -n


def middle_slice_index(series: Series) -> int:
    """Index of the slice nearest the middle of the stack along the normal (mid-sagittal for Sag)."""
    z = series.slice_offsets
    return int(np.argmin(np.abs(z - (z[0] + z[-1]) / 2)))


def slices_at_offsets(series: Series, offsets_mm: Sequence[float], reference: int | None = None,
                      ) -> np.ndarray:
    """Indices of the slices nearest ``reference`` + each offset (mm) along :func:`lps_oriented_normal`.

    ``reference`` is a slice index (default: :func:`middle_slice_index`). For a sagittal series a
    positive offset is towards the patient's left, so ``[-16.8, 16.8]`` gives right and left foramina.
    Offsets beyond the stack give its end slices.
    """
    ref = middle_slice_index(series) if reference is None else int(reference)
    direction = lps_oriented_normal(series)
    along = (series.centers - series.centers[ref]) @ direction
    offsets = np.asarray(offsets_mm, dtype=np.float64)
    return np.argmin(np.abs(along[None, :] - offsets[:, None]), axis=1)


def slice_window(series: Series, center: int, count: int, step: int = 1) -> np.ndarray:
    """``count`` slice indices centred on ``center`` (``step`` apart), clipped to the stack's ends."""
    half = (count - 1) / 2
    idx = np.round(center + (np.arange(count) - half) * step).astype(int)
    return np.clip(idx, 0, len(series.instance_numbers) - 1)


def assign_axial_levels(axials: Sequence[Series], level_points: Mapping[str, Sequence[float]],
                        max_distance_mm: float = DEFAULT_LEVEL_MAX_DISTANCE_MM) -> pd.DataFrame:
    """Give each slice of every axial series the nearest disc level in patient space.

    ``level_points`` maps a level name to an LPS point (e.g. the Sagittal T2 spinal-canal points
    converted with ``Series.to_patient``). Only levels whose point projects inside the slice's image
    count; the distance is from the point to the slice's own plane. A slice whose nearest such level
    is farther than ``max_distance_mm`` (or that has none) gets a missing level (None). Returns one
    row per slice: series_id, slice_index (canonical), instance_number, level, distance_mm (NaN if no
    level point falls inside the image), x, y (the level point's canonical pixel on that slice).
    """
    if not level_points:
        raise ValueError("assign_axial_levels needs at least one level point")
    names = list(level_points)
    points = np.asarray([level_points[k] for k in names], dtype=np.float64).reshape(len(names), 3)
    tables = []
    for series in axials:
        # each (levels, slices): in-plane x, y and signed distance of each level point to each slice plane
        x, y, z = (np.stack(c) for c in zip(*(series.plane_coordinates(p) for p in points)))
        dist_all = np.where(series.contains(x, y), np.abs(z), np.inf)
        best = np.argmin(dist_all, axis=0)
        cols = np.arange(len(series.instance_numbers))
        dist = dist_all[best, cols]
        ok = dist <= max_distance_mm
        tables.append(pd.DataFrame({
            "series_id": series.series_id, "slice_index": cols, "instance_number": series.instance_numbers,
            "level": np.where(ok, np.asarray(names, dtype=object)[best], None),
            "distance_mm": np.where(np.isfinite(dist), dist, np.nan),
            "x": np.where(ok, x[best, cols], np.nan), "y": np.where(ok, y[best, cols], np.nan),
        }))
    if not tables:
        return pd.DataFrame(columns=LEVEL_TABLE_COLUMNS)
    return pd.concat(tables, ignore_index=True)[list(LEVEL_TABLE_COLUMNS)]


def nearest_axial_slice(axials: Sequence[Series], point: Sequence[float],
                        max_distance_mm: float = DEFAULT_LEVEL_MAX_DISTANCE_MM) -> tuple[int, int, float] | None:
    """(series position in ``axials``, canonical slice index, distance mm) of the axial slice nearest
    ``point`` over all axial series of a study, or None if none is within ``max_distance_mm``.

    Slices whose image contains the projected point win over nearer slices that do not.
    """
    best, best_key = None, None
    for s_idx, series in enumerate(axials):
        i, x, y, d = series.nearest_slice(point)
        key = (not bool(series.contains(x, y)), d)
        if d <= max_distance_mm and (best_key is None or key < best_key):
            best, best_key = (s_idx, i, d), key
    return best


def roi_square(series: Series, center: Sequence[float], size_mm: float,
               index: int) -> tuple[float, float, float, float]:
    """The edges ``(x0, y0, x1, y1)`` in canonical pixels of slice ``index`` of the ``size_mm`` square that
    :func:`crop_roi` samples there: centred on the projection of the LPS point ``center`` onto that slice's
    plane, aligned with its rows and columns (pixel centres at whole numbers, so a pixel spans +-0.5)."""
    xs, ys, _ = series.plane_coordinates(center)
    x, y = xs[index], ys[index]
    row_sp, col_sp = series.spacings[index]
    half_x, half_y = size_mm / 2 / col_sp, size_mm / 2 / row_sp
    return float(x - half_x), float(y - half_y), float(x + half_x), float(y + half_y)


def crop_roi(series: Series, center: Sequence[float], size_mm: float, out_size: int,
             slices: Sequence[int] | None = None, order: int = 1) -> np.ndarray:
    """A ``size_mm`` x ``size_mm`` square centred on the LPS point ``center``, resampled to
    ``out_size`` x ``out_size`` on each canonical slice of ``slices`` (default: the slice nearest ``center``).

    The point is projected onto each slice's own plane; the square is aligned with the slice's canonical
    rows and columns (so it shows the canonical view). Interpolation ``order`` 1 (bilinear); outside
    the image is 0. Returns (len(slices), out_size, out_size) float32.
    """
    from scipy.ndimage import map_coordinates

    if slices is None:
        slices = [series.nearest_slice(center)[0]]
    steps = (np.arange(out_size) + 0.5) / out_size  # sample centres of the out grid, as fractions of the side
    out = np.zeros((len(slices), out_size, out_size), dtype=np.float32)
    margin = order + 2  # pixels beyond the samples that bilinear (or nearest) interpolation may read
    for j, i in enumerate(slices):
        x0, y0, x1, y1 = roi_square(series, center, size_mm, int(i))
        ys, xs = y0 + steps * (y1 - y0), x0 + steps * (x1 - x0)
        h, w = series.pixels[i].shape
        # only the pixels the samples can reach are converted (a region is small next to a whole slice); a
        # window clipped at the slice's edges leaves what lies outside it outside the image, as before. Spline
        # orders above 1 prefilter the whole array they get, so they get the whole slice.
        r0, r1, c0, c1 = 0, h, 0, w
        if order <= 1:
            r0, r1 = max(int(np.floor(ys.min())) - margin, 0), min(int(np.ceil(ys.max())) + margin + 1, h)
            c0, c1 = max(int(np.floor(xs.min())) - margin, 0), min(int(np.ceil(xs.max())) + margin + 1, w)
        if r0 >= r1 or c0 >= c1:
            continue  # the square lies wholly outside the slice: zeros
        window = np.asarray(series.pixels[i][r0:r1, c0:c1], dtype=np.float32)
        yy, xx = np.meshgrid(ys - r0, xs - c0, indexing="ij")
        out[j] = map_coordinates(window, [yy, xx], order=order, mode="constant", cval=0.0)
    return out
