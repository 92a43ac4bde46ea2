"""The ``Series`` object: a volume of slices sorted by position, with each slice's patient-space geometry.

Conventions (DICOM, LPS patient coordinates in mm):

- ``row_dirs[i]`` is the direction of increasing column index x, ``col_dirs[i]`` that of increasing
  row index y (ImageOrientationPatient); ``positions[i]`` is the centre of pixel (x=0, y=0)
  (ImagePositionPatient); ``spacings[i]`` is (row spacing, column spacing) (PixelSpacing).
- A pixel (x, y) of slice i lies at ``positions[i] + x * spacings[i, 1] * row_dirs[i]
  + y * spacings[i, 0] * col_dirs[i]``.
- Each slice keeps its own plane, so a series made of tilted sub-stacks (axial blocks angled per disc)
  is handled exactly; only the slice *order* uses one series-wide normal (see ``series_normal``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from rsna2024.errors import DicomError


class Projection(NamedTuple):
    """A patient-space point seen from one series: nearest slice, in-plane pixel, distance (mm)."""

    instance_number: int
    x: float
    y: float
    distance: float


@dataclass
class Series:
    """A series: ``pixels`` (slices x rows x columns, sorted by position along the slice normal)
    plus per-slice geometry arrays in the same order."""

    pixels: np.ndarray
    instance_numbers: np.ndarray  # (S,) int64
    positions: np.ndarray  # (S, 3) ImagePositionPatient, mm
    row_dirs: np.ndarray  # (S, 3) unit vectors, increasing x (column index)
    col_dirs: np.ndarray  # (S, 3) unit vectors, increasing y (row index)
    spacings: np.ndarray  # (S, 2) (row spacing, column spacing), mm
    study_id: int | None = None
    series_id: int | None = None
    description: str = ""
    dropped: list[str] = field(default_factory=list)  # "file: reason" of each slice the reader dropped
    _index_of: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.instance_numbers = np.asarray(self.instance_numbers, dtype=np.int64)
        n = len(self.instance_numbers)
        for name, width in (("positions", 3), ("row_dirs", 3), ("col_dirs", 3), ("spacings", 2)):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != (n, width):
                raise ValueError(f"Series.{name} must have shape ({n}, {width}), got {arr.shape}")
            setattr(self, name, arr)
        if self.pixels.ndim != 3 or self.pixels.shape[0] != n:
            raise ValueError(f"Series.pixels must be (slices={n}, rows, columns), got {self.pixels.shape}")
        self._index_of = {int(v): i for i, v in enumerate(self.instance_numbers)}
        if len(self._index_of) != n:
            raise DicomError(f"series {self.name}: duplicate InstanceNumber (0020,0013) values")

    # ------------------------------------------------------------------ basic properties
    @property
    def name(self) -> str:
        """``study_id/series_id`` for messages."""
        return f"{self.study_id}/{self.series_id}"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape)  # type: ignore[return-value]

    @property
    def normals(self) -> np.ndarray:
        """(S, 3) unit slice normals, row_dir x col_dir, per slice."""
        n = np.cross(self.row_dirs, self.col_dirs)
        return n / np.linalg.norm(n, axis=1, keepdims=True)

    @property
    def series_normal(self) -> np.ndarray:
        """The mean slice normal (unit): the axis along which slices are ordered."""
        return series_normal(self.row_dirs, self.col_dirs)

    @property
    def centers(self) -> np.ndarray:
        """(S, 3) LPS centre of each slice's image (mm)."""
        return slice_centers(self.positions, self.row_dirs, self.col_dirs, self.spacings, self.pixels.shape[1:])

    @property
    def slice_offsets(self) -> np.ndarray:
        """(S,) position of each slice's centre along ``series_normal`` in mm (increasing)."""
        return self.centers @ self.series_normal

    @property
    def slice_spacing(self) -> float:
        """Median distance between neighbouring slices along the series normal (mm); 0 for one slice."""
        if len(self.instance_numbers) < 2:
            return 0.0
        return float(np.median(np.diff(self.slice_offsets)))

    def index_of(self, instance_number: int) -> int:
        """Slice index (into ``pixels``) of an InstanceNumber; KeyError naming the series if absent."""
        try:
            return self._index_of[int(instance_number)]
        except KeyError:
            raise KeyError(f"series {self.name} has no InstanceNumber {instance_number}; "
                           f"it has {self.instance_numbers.min()}..{self.instance_numbers.max()}") from None

    def slice_affine(self, index: int) -> np.ndarray:
        """4x4 matrix mapping (x, y, 0, 1) of slice ``index`` (pixels) to LPS mm; column 2 is the unit normal."""
        a = np.eye(4)
        a[:3, 0] = self.row_dirs[index] * self.spacings[index, 1]
        a[:3, 1] = self.col_dirs[index] * self.spacings[index, 0]
        a[:3, 2] = self.normals[index]
        a[:3, 3] = self.positions[index]
        return a

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel (x, y, slice index, 1) -> LPS mm affine of the whole volume.

        Exact only for a regular stack (parallel, evenly spaced slices); use ``to_patient`` for
        per-slice exactness. Column 2 is the mean step between consecutive slice positions.
        """
        a = self.slice_affine(0)
        if len(self.instance_numbers) > 1:
            a[:3, 2] = (self.positions[-1] - self.positions[0]) / (len(self.instance_numbers) - 1)
        return a

    # ------------------------------------------------------------------ geometry
    def pixel_to_patient(self, index: int | np.ndarray, x, y) -> np.ndarray:
        """LPS mm of pixel (x, y) on slice ``index`` (all may be arrays that broadcast)."""
        index = np.asarray(index)
        x = np.asarray(x, dtype=np.float64)[..., None]
        y = np.asarray(y, dtype=np.float64)[..., None]
        return (self.positions[index] + x * self.spacings[index, 1, None] * self.row_dirs[index]
                + y * self.spacings[index, 0, None] * self.col_dirs[index])

    def to_patient(self, instance_number: int, x: float, y: float) -> np.ndarray:
        """LPS point (mm) of pixel column ``x``, row ``y`` on the slice with ``instance_number``."""
        return self.pixel_to_patient(self.index_of(instance_number), x, y)

    def plane_coordinates(self, point) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For every slice: in-plane (x, y) in pixels of ``point`` and its signed distance (mm) along
        that slice's own normal. Returns three (S,) arrays."""
        d = np.asarray(point, dtype=np.float64)[None, :] - self.positions
        x = np.einsum("ij,ij->i", d, self.row_dirs) / self.spacings[:, 1]
        y = np.einsum("ij,ij->i", d, self.col_dirs) / self.spacings[:, 0]
        z = np.einsum("ij,ij->i", d, self.normals)
        return x, y, z

    def nearest_slice(self, point) -> tuple[int, float, float, float]:
        """(slice index, x, y, |distance| mm) of the slice plane nearest ``point``.

        Slices whose image contains the projected point are preferred; only if none does is the
        nearest plane overall taken (this matters for tilted sub-stacks, whose extended planes cross).
        """
        x, y, z = self.plane_coordinates(point)
        dist = np.abs(z)
        rows, cols = self.pixels.shape[1:]
        inside = (x >= -0.5) & (x <= cols - 0.5) & (y >= -0.5) & (y <= rows - 0.5)
        candidates = np.where(inside, dist, np.inf) if inside.any() else dist
        i = int(np.argmin(candidates))
        return i, float(x[i]), float(y[i]), float(dist[i])

    def from_patient(self, point) -> Projection:
        """Nearest slice's InstanceNumber, in-plane (x, y) in pixels and the distance (mm) from it."""
        i, x, y, dist = self.nearest_slice(point)
        return Projection(int(self.instance_numbers[i]), x, y, dist)


def series_normal(row_dirs: np.ndarray, col_dirs: np.ndarray) -> np.ndarray:
    """Unit mean of the per-slice normals row_dir x col_dir (the series' ordering axis)."""
    n = np.cross(np.asarray(row_dirs, dtype=np.float64), np.asarray(col_dirs, dtype=np.float64))
    n = n / np.linalg.norm(n, axis=-1, keepdims=True)
    mean = n.reshape(-1, 3).mean(axis=0)
    norm = np.linalg.norm(mean)
    if norm < 1e-6:
        raise DicomError("slice normals of the series cancel out; cannot order the slices")
    return mean / norm


def slice_centers(positions: np.ndarray, row_dirs: np.ndarray, col_dirs: np.ndarray, spacings: np.ndarray,
                  shape: tuple[int, int]) -> np.ndarray:
    """(S, 3) image centres of slices of ``shape`` = (rows, columns); the sort key of a series
    (centres rather than first-pixel corners, so tilted sub-stacks are ordered by where they are)."""
    rows, cols = shape
    return (np.asarray(positions) + (cols - 1) / 2 * np.asarray(spacings)[:, 1:2] * row_dirs
            + (rows - 1) / 2 * np.asarray(spacings)[:, 0:1] * col_dirs)
