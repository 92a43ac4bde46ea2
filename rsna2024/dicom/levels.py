"""Which axial slice shows each disc level: axial series split into blocks, levels assigned in spine order.

An axial series is either one continuous stack or one short stack per disc, each tilted to its disc (real
studies have both, and a study may hold several axial series). :func:`axial_blocks` splits a series into
blocks of contiguous, parallel slices: a new block starts where the slice orientation changes or the step to
the next slice is much larger than the series' typical step.

:func:`level_slices` gives each level (level -> LPS point, e.g. the predicted Sagittal T2 spinal points) a
slice, jointly for all levels of a series (a small dynamic programme over its slices), such that

- the levels keep their order along the spine (L1/L2 above L2/L3 ...), consecutive levels at least half a level
  spacing apart (the spacing of the level points themselves, kept within a plausible adult range);
- a short block (thinner than the level spacing: one disc's stack) holds at most one level, and a level may
  take a block up to 1.5 level spacings from its point; a slice of a long block (a continuous stack) only within
  ``max_distance_mm`` or half a level spacing, whichever is larger;
- a slice costs the distance from the level point to its plane (counted up to one level spacing), leaving a
  level out costs two level spacings, and the assignment of least total cost is taken: a level goes without a
  slice only where the order leaves none within its reach.

In a per-disc series this is the assignment of blocks to levels in spine order: a shared offset of the points
(of up to about half a level spacing, more with every block present) does not move a level off its own block, a
missing block leaves only its own level without one, and a level point farther than ``max_distance_mm`` from
every slice still gets the block that belongs to it. In a continuous stack it is the nearest slice to each
point, unless two points crowd onto the same part of the stack.

Where a study has several axial series, the one that gives the most levels a slice (then the longest) gives every
level it has; the others fill in the rest (one acquisition for a study's levels where one covers them).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from rsna2024.constants import LEVELS
from rsna2024.dicom.geometry import lps_oriented_normal
from rsna2024.dicom.series import Series

DEFAULT_LEVEL_SPACING_MM = 35.0  # adult lumbar disc-to-disc distance: the spacing with fewer than two level points
SPACING_RANGE = (0.75, 1.5)  # the spacing of the level points is kept within these multiples of the default
PARALLEL_DEG = 0.5  # neighbouring slices whose normals differ by more than this are not one stack
GAP_FACTOR = 2.0  # a step to the next slice larger than this many typical steps starts a new block
ONE_LEVEL_EXTENT = 0.8  # a block thinner than this many level spacings holds at most one level
BLOCK_REACH = 1.5  # a level point takes a one-level block at most this many level spacings away
MIN_SEPARATION = 0.5  # consecutive levels' slices lie at least this many level spacings apart along the spine
SKIP_COST = 2.0  # leaving a level without a slice costs this many level spacings (a slice costs at most one)


class LevelSlice(NamedTuple):
    """The slice of one level: the series' position in ``axials``, its canonical slice index, the distance
    (mm) of the level point from that slice's plane, and ``window``: the slices of its block that the level may
    move to without passing a neighbouring level's slice (for a slice search around it)."""

    series: int
    index: int
    distance_mm: float
    window: tuple[int, ...]


def axial_blocks(series: Series, parallel_deg: float = PARALLEL_DEG, gap_factor: float = GAP_FACTOR,
                 ) -> list[np.ndarray]:
    """The canonical slice indices of each block of contiguous, parallel slices of ``series``, in slice order.

    A block ends where the next slice's normal turns by more than ``parallel_deg`` or the step to it along the
    slice normal exceeds ``gap_factor`` times the typical step (the median step between parallel neighbours).
    """
    n = len(series.instance_numbers)
    if n < 2:
        return [np.arange(n)]
    normals = series.normals
    steps = np.abs(np.einsum("ij,ij->i", np.diff(series.centers, axis=0), normals[:-1]))
    cos = np.clip(np.einsum("ij,ij->i", normals[:-1], normals[1:]), -1.0, 1.0)
    turned = np.rad2deg(np.arccos(cos)) > parallel_deg
    parallel = steps[~turned & (steps > 1e-3)]  # (coincident slices say nothing about the step)
    typical = float(np.median(parallel)) if len(parallel) else float(np.median(steps))
    breaks = turned | (steps > gap_factor * typical)
    return np.split(np.arange(n), np.flatnonzero(breaks) + 1)


def level_spacing(level_points: Mapping[str, np.ndarray], levels: Sequence[str] = LEVELS) -> float:
    """Median distance (mm) between the points of neighbouring levels (per level step where one is missing),
    kept within :data:`SPACING_RANGE` times :data:`DEFAULT_LEVEL_SPACING_MM`; that default with fewer than two."""
    known = [(k, np.asarray(level_points[lv], dtype=np.float64)) for k, lv in enumerate(levels)
             if lv in level_points and np.isfinite(level_points[lv]).all()]
    steps = [np.linalg.norm(b - a) / (kb - ka) for (ka, a), (kb, b) in zip(known, known[1:])]
    if not steps:
        return DEFAULT_LEVEL_SPACING_MM
    lo, hi = (DEFAULT_LEVEL_SPACING_MM * f for f in SPACING_RANGE)
    return float(np.clip(np.median(steps), lo, hi))


def _plane_heights(series: Series, points: np.ndarray) -> np.ndarray:
    """(S,) height (mm, towards the head) at which each slice plane crosses the vertical line through the mean
    of the finite ``points``: tilted planes are compared where the spine is, not at their image centres."""
    up = lps_oriented_normal(series)
    finite = np.isfinite(points).all(axis=1)
    centre = points[finite].mean(axis=0) if finite.any() else series.centers.mean(axis=0)
    _, _, z = series.plane_coordinates(centre)
    rise = series.normals @ up
    steep = np.abs(rise) < 0.2  # a plane within 80 degrees of vertical (no axial slice): its image centre's height
    return np.where(steep, series.centers @ up, centre @ up - z / np.where(steep, 1.0, rise))


def _series_assignment(series: Series, points: np.ndarray, max_distance_mm: float, spacing: float,
                       ) -> tuple[dict[int, LevelSlice], np.ndarray]:
    """Level position -> its :class:`LevelSlice` in one series (``series`` field 0), by the rules of the module
    docstring, and per level whether any slice was within its reach. ``points`` (L, 3) are ordered superior to
    inferior, NaN where a level has no point."""
    blocks = axial_blocks(series)
    block_of = np.concatenate([np.full(len(b), k) for k, b in enumerate(blocks)])
    height = _plane_heights(series, points)
    one_level = np.array([np.ptp(height[b]) for b in blocks]) < ONE_LEVEL_EXTENT * spacing
    gate = np.where(one_level[block_of], BLOCK_REACH * spacing, max(max_distance_mm, spacing / 2))  # per slice
    n_levels, n_slices = len(points), len(height)
    cost = np.full((n_levels, n_slices), np.inf)
    dist = np.full((n_levels, n_slices), np.nan)
    for lv, p in enumerate(points):
        if np.isfinite(p).all():
            x, y, z = series.plane_coordinates(p)
            dist[lv] = np.abs(z)
            cost[lv] = np.where(series.contains(x, y) & (dist[lv] <= gate), np.minimum(dist[lv], spacing), np.inf)
    # follows[k, i]: slice i may hold a level below (inferior to) the one slice k holds
    same_short_block = (block_of[:, None] == block_of[None, :]) & one_level[block_of][:, None]
    follows = (height[:, None] - height[None, :] >= MIN_SEPARATION * spacing) & ~same_short_block
    skip = SKIP_COST * spacing
    # best[k]: cost of the levels so far with slice k the last one taken; best_none: none taken yet
    best, best_none = np.full(n_slices, np.inf), 0.0
    back = []  # per level: whether it took slice k, and the slice taken before (-1: none)
    cols = np.arange(n_slices)
    for lv in range(n_levels):
        prev = np.where(follows, best[:, None], np.inf)  # (from k, to i)
        came = np.argmin(prev, axis=0)
        from_none = best_none <= prev[came, cols]
        take = cost[lv] + np.where(from_none, best_none, prev[came, cols])
        keep = best + skip
        took = take < keep
        back.append((took, np.where(from_none, -1, came)))
        best = np.where(took, take, keep)
        best_none += skip
    chosen: dict[int, int] = {}
    k = int(np.argmin(best)) if np.isfinite(best).any() and best.min() < best_none else -1
    for lv in range(n_levels - 1, -1, -1):
        if k < 0:
            break
        took, came = back[lv]
        if took[k]:
            chosen[lv] = k
            k = int(came[k])
    out = {}
    for lv, i in chosen.items():
        hi = min((height[chosen[a]] for a in chosen if a < lv), default=np.inf)
        lo = max((height[chosen[b]] for b in chosen if b > lv), default=-np.inf)
        window = tuple(int(j) for j in blocks[block_of[i]] if lo < height[j] < hi)
        out[lv] = LevelSlice(0, int(i), float(dist[lv, i]), window)
    return out, np.isfinite(cost).any(axis=1)


def level_slices(axials: Sequence[Series], level_points: Mapping[str, np.ndarray], levels: Sequence[str] = LEVELS,
                 max_distance_mm: float = 5.0) -> tuple[dict[str, LevelSlice], dict[str, str]]:
    """Per level of ``levels`` (ordered superior to inferior) with a point in ``level_points`` (LPS mm), its
    axial slice over all ``axials``; and level -> reason for each level with a point but no slice.

    The rules are those of the module docstring. A level point lies at most 1.5 level spacings from a per-disc
    block it is given, and at most ``max_distance_mm`` or half a level spacing (the larger) from a slice of a
    continuous stack.
    """
    spacing = level_spacing(level_points, levels)
    points = np.array([level_points.get(lv, (np.nan,) * 3) for lv in levels], dtype=np.float64).reshape(-1, 3)
    per_series, reachable = [], np.zeros(len(levels), dtype=bool)
    for s in axials:
        assigned, reach = _series_assignment(s, points, max_distance_mm, spacing)
        per_series.append(assigned)
        reachable |= reach
    extent = [np.ptp(s.slice_offsets) for s in axials]
    order = sorted(range(len(axials)), key=lambda s: (-len(per_series[s]), -extent[s],
                                                        sum(v.distance_mm for v in per_series[s].values())))
    found: dict[str, LevelSlice] = {}
    for s in order:
        for lv, hit in sorted(per_series[s].items()):
            found.setdefault(levels[lv], hit._replace(series=s))
    missing = {}
    for lv, name in enumerate(levels):
        if name not in found and np.isfinite(points[lv]).all():
            missing[name] = ("its nearest axial slices hold neighbouring levels (spine order)" if reachable[lv] else
                             f"no axial slice shows the level point within {BLOCK_REACH * spacing:.0f} mm (a "
                             f"per-disc block) or {max(max_distance_mm, spacing / 2):.0f} mm (a continuous stack)")
    return found, missing
