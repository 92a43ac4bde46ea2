"""One canonical orientation for every series, and the exact way back to each stored pixel.

The kit's canonical layout (LPS patient coordinates; "image x" is the column index, increasing along
a slice's row direction, "image y" the row index, increasing along its column direction):

============  ================================  ==============================  =============================
plane         image x (row direction)           image y (column direction)      slice index increases
============  ================================  ==============================  =============================
sagittal      +y: anterior on the image left    -z: head up                     +x: patient right to left
coronal       +x: patient right on image left   -z: head up                     +y: anterior to posterior
axial         +x: patient right on image left   +y: anterior up                 -z: head to foot
============  ================================  ==============================  =============================

The plane is the dominant axis of the series normal (x: sagittal, y: coronal, z: axial); oblique
series get the nearest of these layouts. Canonicalising is a pure re-indexing of the pixels (each
in-plane axis possibly reversed, rows and columns possibly swapped, the slice order possibly
reversed): nothing is resampled. :class:`Orientation` records that transform; the functions below
apply it to pixels, to slice geometry and to pixel coordinates.

Pixel coordinates of a slice are related in three grids: the *stored* grid of its DICOM file, the
*grid* (the series' majority size, in the stored orientation: a slice of another size is resampled
onto it covering the same field of view) and the *canonical* grid (the grid flipped and transposed).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import numpy as np

from rsna2024.errors import DicomError

PLANES: tuple[str, ...] = ("sagittal", "coronal", "axial")  # by the dominant axis of the slice normal
# plane -> (canonical row direction, canonical column direction, direction of increasing slice index)
CANONICAL_AXES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}
# A slice whose normal or row direction is farther than this from the series' median is dropped.
# Per-disc axial sub-stacks follow the lordosis (discs L1/L2 to L5/S1 differ by 40 degrees and more),
# so each lies up to about 25-35 degrees from the median and stays; a localizer or a slice of another
# plane (90 degrees) or a mirrored slice (180 degrees) goes.
MAX_SLICE_ANGLE_DEG = 45.0


@dataclass(frozen=True)
class Orientation:
    """How a series' canonical pixels come from its stored ones.

    Canonical pixels = stored pixels with the columns reversed (``flip_x``: x -> columns - 1 - x)
    and the rows reversed (``flip_y``), then rows and columns swapped (``transpose``: canonical x is
    the stored y). ``reversed`` says that the canonical slice order runs against the InstanceNumbers
    (the last canonical slice has a lower InstanceNumber than the first). ``plane`` is one of :data:`PLANES`.
    """

    plane: str
    flip_x: bool = False
    flip_y: bool = False
    transpose: bool = False
    reversed: bool = False

    def __post_init__(self) -> None:
        if self.plane not in PLANES:
            raise ValueError(f"Orientation.plane must be one of {list(PLANES)}, got {self.plane!r}")

    @property
    def in_plane_identity(self) -> bool:
        """True when the canonical pixels of each slice are its (grid) pixels unchanged."""
        return not (self.flip_x or self.flip_y or self.transpose)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Orientation:
        return cls(plane=str(d["plane"]), flip_x=bool(d["flip_x"]), flip_y=bool(d["flip_y"]),
                   transpose=bool(d["transpose"]), reversed=bool(d["reversed"]))

    def grid_shape(self, canonical_shape: tuple[int, int]) -> tuple[int, int]:
        """(rows, columns) of the grid in the stored orientation, given the canonical (rows, columns)."""
        rows, cols = canonical_shape
        return (cols, rows) if self.transpose else (rows, cols)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """The canonical view of grid pixels (``(..., rows, columns)``; a view, no copy)."""
        out = pixels[..., ::-1 if self.flip_y else 1, ::-1 if self.flip_x else 1]
        return np.swapaxes(out, -1, -2) if self.transpose else out


def plane_of(normal) -> str:
    """The plane whose canonical layout a series with this slice normal gets."""
    return PLANES[int(np.argmax(np.abs(np.asarray(normal, dtype=np.float64))))]


def _unit_mean(vectors: np.ndarray, what: str) -> np.ndarray:
    mean = np.asarray(vectors, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    norm = np.linalg.norm(mean)
    if norm < 1e-6:
        raise DicomError(f"the {what} of the series cancel out; cannot orient the slices")
    return mean / norm


def unit_normals(row_dirs, col_dirs) -> np.ndarray:
    """(S, 3) unit slice normals row_dir x col_dir."""
    n = np.cross(np.asarray(row_dirs, dtype=np.float64), np.asarray(col_dirs, dtype=np.float64))
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def series_normal(row_dirs: np.ndarray, col_dirs: np.ndarray) -> np.ndarray:
    """Unit mean of the per-slice normals row_dir x col_dir."""
    return _unit_mean(unit_normals(row_dirs, col_dirs), "slice normals")


def slice_centers(positions: np.ndarray, row_dirs: np.ndarray, col_dirs: np.ndarray, spacings: np.ndarray,
                  shape: tuple[int, int]) -> np.ndarray:
    """(S, 3) image centres of slices of ``shape`` = (rows, columns): the sort key of a series
    (centres rather than first-pixel corners, so tilted sub-stacks are ordered by where they are)."""
    rows, cols = shape
    return (np.asarray(positions) + (cols - 1) / 2 * np.asarray(spacings)[:, 1:2] * row_dirs
            + (rows - 1) / 2 * np.asarray(spacings)[:, 0:1] * col_dirs)


def choose_orientation(row_dir, col_dir) -> Orientation:
    """The in-plane transform that brings a slice with these (series-typical) directions to the canonical
    layout (``reversed`` is left False: it depends on the InstanceNumbers, see :func:`canonical_layout`)."""
    row_dir, col_dir = np.asarray(row_dir, dtype=np.float64), np.asarray(col_dir, dtype=np.float64)
    normal = np.cross(row_dir, col_dir)
    plane = plane_of(normal)
    tx, ty, _ = (np.asarray(a) for a in CANONICAL_AXES[plane])
    transpose = abs(col_dir @ tx) + abs(row_dir @ ty) > abs(row_dir @ tx) + abs(col_dir @ ty)
    if transpose:  # canonical x comes from the stored y axis and canonical y from the stored x axis
        flip_y, flip_x = bool(col_dir @ tx < 0), bool(row_dir @ ty < 0)
    else:
        flip_x, flip_y = bool(row_dir @ tx < 0), bool(col_dir @ ty < 0)
    return Orientation(plane, flip_x=flip_x, flip_y=flip_y, transpose=bool(transpose))


def misoriented_slices(row_dirs: np.ndarray, col_dirs: np.ndarray,
                       max_angle_deg: float = MAX_SLICE_ANGLE_DEG) -> list[tuple[int, str]]:
    """(slice position, reason) of every slice whose normal or row direction lies more than
    ``max_angle_deg`` from the median over the series (component-wise median, made unit)."""
    row_dirs = np.asarray(row_dirs, dtype=np.float64)
    normals = unit_normals(row_dirs, col_dirs)
    limit = np.cos(np.deg2rad(max_angle_deg))
    bad: dict[int, str] = {}
    for what, vectors in (("slice normal", normals), ("row direction", row_dirs)):
        median = np.median(vectors, axis=0)
        norm = np.linalg.norm(median)
        cos = vectors @ (median / norm) if norm > 1e-6 else np.full(len(vectors), -1.0)  # no consensus at all
        for i in np.flatnonzero(cos < limit):
            angle = np.rad2deg(np.arccos(np.clip(cos[i], -1.0, 1.0)))
            bad.setdefault(int(i), f"its {what} is {angle:.1f} degrees from the series' median "
                                   f"(limit {max_angle_deg:g})")
    return sorted(bad.items())


class Layout(NamedTuple):
    """A series' canonical layout: the transform, the slice order and the canonical grid geometry.

    ``order[k]`` is the input slice that becomes canonical slice k; the geometry arrays are in
    canonical order and describe canonical pixels; ``shape`` is the canonical (rows, columns).
    """

    orientation: Orientation
    order: np.ndarray
    positions: np.ndarray
    row_dirs: np.ndarray
    col_dirs: np.ndarray
    spacings: np.ndarray
    shape: tuple[int, int]


def canonical_layout(positions, row_dirs, col_dirs, spacings, shape: tuple[int, int],
                     instance_numbers) -> Layout:
    """The canonical layout of slices given on one grid of ``shape`` = (rows, columns), stored orientation.

    The transform follows the mean row and column directions; slices are ordered by their image
    centres along the mean normal signed towards the plane's slice direction (InstanceNumber breaks ties).
    """
    positions, row_dirs, col_dirs, spacings = (np.asarray(a, dtype=np.float64)
                                               for a in (positions, row_dirs, col_dirs, spacings))
    orientation = choose_orientation(_unit_mean(row_dirs, "row directions"), _unit_mean(col_dirs, "column directions"))
    axis = series_normal(row_dirs, col_dirs)
    if axis @ np.asarray(CANONICAL_AXES[orientation.plane][2]) < 0:
        axis = -axis
    centers = slice_centers(positions, row_dirs, col_dirs, spacings, shape)
    instance_numbers = np.asarray(instance_numbers)
    order = np.lexsort((instance_numbers, np.round(centers @ axis, 4)))
    orientation = replace(orientation, reversed=bool(instance_numbers[order[-1]] < instance_numbers[order[0]]))
    geometry = orient_geometry(orientation, positions[order], row_dirs[order], col_dirs[order], spacings[order],
                               shape)
    rows, cols = shape
    return Layout(orientation, order, *geometry, (cols, rows) if orientation.transpose else (rows, cols))


def orient_geometry(orientation: Orientation, positions, row_dirs, col_dirs, spacings, shape: tuple[int, int],
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(positions, row_dirs, col_dirs, spacings) of the canonical pixels of slices on a grid of
    ``shape`` = (rows, columns) with the given geometry (stored orientation)."""
    rows, cols = shape
    pos, r, c, sp = (np.array(a, dtype=np.float64) for a in (positions, row_dirs, col_dirs, spacings))
    if orientation.flip_x:
        pos, r = pos + (cols - 1) * sp[:, 1:2] * r, -r
    if orientation.flip_y:
        pos, c = pos + (rows - 1) * sp[:, 0:1] * c, -c
    if orientation.transpose:
        r, c, sp = c, r, sp[:, ::-1].copy()
    return pos, r, c, sp


def _resample_factors(stored_shapes: np.ndarray, grid_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Grid pixels per stored pixel along x (columns) and y (rows)."""
    stored_shapes = np.asarray(stored_shapes, dtype=np.float64)
    return grid_shape[1] / stored_shapes[..., 1], grid_shape[0] / stored_shapes[..., 0]


def stored_to_canonical_xy(orientation: Orientation, stored_shapes, grid_shape: tuple[int, int], x, y,
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (x, y) of stored pixel coordinates (x, y) of slices with ``stored_shapes`` (rows, columns).

    A slice of another size than ``grid_shape`` (the series' size in the stored orientation) maps
    field of view onto field of view (pixel edges on pixel edges), as the reader resamples it.
    Exact for slices of the grid's size (only integer flips and swaps).
    """
    fx, fy = _resample_factors(stored_shapes, grid_shape)
    rows, cols = grid_shape
    x = np.asarray(x, dtype=np.float64) * fx + (fx - 1) / 2
    y = np.asarray(y, dtype=np.float64) * fy + (fy - 1) / 2
    if orientation.flip_x:
        x = (cols - 1) - x
    if orientation.flip_y:
        y = (rows - 1) - y
    return (y, x) if orientation.transpose else (x, y)


def canonical_to_stored_xy(orientation: Orientation, stored_shapes, grid_shape: tuple[int, int], x, y,
                           ) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`stored_to_canonical_xy`."""
    fx, fy = _resample_factors(stored_shapes, grid_shape)
    rows, cols = grid_shape
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if orientation.transpose:
        x, y = y, x
    if orientation.flip_x:
        x = (cols - 1) - x
    if orientation.flip_y:
        y = (rows - 1) - y
    return (x - (fx - 1) / 2) / fx, (y - (fy - 1) / 2) / fy
