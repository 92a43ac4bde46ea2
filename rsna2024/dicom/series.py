"""The ``Series`` object: a canonical volume of slices, each with its patient-space geometry and its way
back to the stored DICOM slice.

Conventions (DICOM, LPS patient coordinates in mm):

- ``row_dirs[i]`` is the direction of increasing column index x, ``col_dirs[i]`` that of increasing
  row index y; ``positions[i]`` is the centre of pixel (x=0, y=0); ``spacings[i]`` is (row spacing,
  column spacing). A pixel (x, y) of slice i lies at ``positions[i] + x * spacings[i, 1] * row_dirs[i]
  + y * spacings[i, 0] * col_dirs[i]``.
- Two pixel grids. The **canonical** grid is that of ``pixels`` (slice index, x, y), laid out as
  :mod:`rsna2024.dicom.orientation` describes; ``positions``, ``row_dirs``, ``col_dirs`` and
  ``spacings`` describe it. The **stored** grid of a slice is that of its DICOM file (InstanceNumber,
  x, y), the grid of ``train_label_coordinates.csv``; ``stored`` holds its geometry. ``to_patient``,
  ``from_patient`` and ``canonical_to_stored`` speak the stored grid, everything else the canonical one.
- Each slice keeps its own plane, so a series made of tilted sub-stacks (axial blocks angled per disc)
  is handled exactly; only the slice *order* uses one series-wide normal (see ``series_normal``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from rsna2024.dicom.orientation import (
    Orientation,
    canonical_layout,
    canonical_to_stored_xy,
    plane_of,
    series_normal,
    slice_centers,
    stored_to_canonical_xy,
    unit_normals,
)
from rsna2024.errors import DicomError

__all__ = ["Projection", "Series", "StoredGeometry", "canonicalize", "series_normal", "slice_centers"]


class Projection(NamedTuple):
    """A patient-space point seen from one series: nearest slice's InstanceNumber, the pixel (x, y)
    in that slice's stored grid, and the distance (mm) from the slice plane."""

    instance_number: int
    x: float
    y: float
    distance: float


_VECTOR_FIELDS = (("positions", 3), ("row_dirs", 3), ("col_dirs", 3), ("spacings", 2))


def _checked(obj, n: int, owner: str) -> None:
    for name, width in _VECTOR_FIELDS:
        arr = np.asarray(getattr(obj, name), dtype=np.float64)
        if arr.shape != (n, width):
            raise ValueError(f"{owner}.{name} must have shape ({n}, {width}), got {arr.shape}")
        setattr(obj, name, arr)


def _plane_xy(positions, row_dirs, col_dirs, spacings, point) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """In-plane pixel (x, y) of ``point`` on each given plane, and its signed distance along row x col."""
    d = np.asarray(point, dtype=np.float64)[None, :] - positions
    x = np.einsum("ij,ij->i", d, row_dirs) / spacings[:, 1]
    y = np.einsum("ij,ij->i", d, col_dirs) / spacings[:, 0]
    z = np.einsum("ij,ij->i", d, unit_normals(row_dirs, col_dirs))
    return x, y, z


def _plain(*arrays) -> tuple:
    """Python scalars when every array is 0-d, else the arrays broadcast to one shape."""
    if all(np.ndim(a) == 0 for a in arrays):
        return tuple(a.item() for a in map(np.asarray, arrays))
    return tuple(np.array(a) for a in np.broadcast_arrays(*arrays))


@dataclass
class StoredGeometry:
    """Per-slice geometry of the stored DICOM grids, in the series' (canonical) slice order:
    ImagePositionPatient, the two ImageOrientationPatient directions, PixelSpacing and (Rows, Columns)."""

    positions: np.ndarray  # (S, 3)
    row_dirs: np.ndarray  # (S, 3)
    col_dirs: np.ndarray  # (S, 3)
    spacings: np.ndarray  # (S, 2)
    shapes: np.ndarray  # (S, 2) int64 (rows, columns)

    def __post_init__(self) -> None:
        self.shapes = np.asarray(self.shapes, dtype=np.int64).reshape(-1, 2)
        _checked(self, len(self.shapes), "StoredGeometry")

    def take(self, order) -> StoredGeometry:
        """The geometry of slices ``order`` (an index array), in that order."""
        return StoredGeometry(*(np.asarray(getattr(self, n))[order]
                                for n in ("positions", "row_dirs", "col_dirs", "spacings", "shapes")))


@dataclass
class Series:
    """A series: canonical ``pixels`` (slices x rows x columns) plus per-slice geometry in the same order.

    ``orientation`` records how the canonical pixels come from the stored ones and ``stored`` the
    stored grids; both default to "as given" (the identity transform, the stored grid being the
    canonical one). :func:`canonicalize` turns such a Series into the canonical layout;
    :func:`~rsna2024.dicom.reader.read_series` returns canonical Series.
    """

    pixels: np.ndarray
    instance_numbers: np.ndarray  # (S,) int64
    positions: np.ndarray  # (S, 3) canonical pixel (0, 0) centres, mm
    row_dirs: np.ndarray  # (S, 3) unit vectors, increasing canonical x (column index)
    col_dirs: np.ndarray  # (S, 3) unit vectors, increasing canonical y (row index)
    spacings: np.ndarray  # (S, 2) canonical (row spacing, column spacing), mm
    study_id: int | None = None
    series_id: int | None = None
    description: str = ""
    orientation: Orientation | None = None
    stored: StoredGeometry | None = None
    _index_of: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.instance_numbers = np.asarray(self.instance_numbers, dtype=np.int64)
        n = len(self.instance_numbers)
        _checked(self, n, "Series")
        if self.pixels.ndim != 3 or self.pixels.shape[0] != n:
            raise ValueError(f"Series.pixels must be (slices={n}, rows, columns), got {self.pixels.shape}")
        if self.orientation is None:
            self.orientation = Orientation(plane_of(series_normal(self.row_dirs, self.col_dirs)))
        if self.stored is None:
            if not self.orientation.in_plane_identity:
                raise ValueError(f"series {self.name}: an orientation with flips or a transpose needs the "
                                 f"stored geometry")
            self.stored = StoredGeometry(self.positions, self.row_dirs, self.col_dirs, self.spacings,
                                         np.tile(self.pixels.shape[1:], (n, 1)))
        if len(self.stored.shapes) != n:
            raise ValueError(f"Series.stored must describe {n} slices, got {len(self.stored.shapes)}")
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
        """Canonical (slices, rows, columns)."""
        return tuple(self.pixels.shape)  # type: ignore[return-value]

    @property
    def normals(self) -> np.ndarray:
        """(S, 3) unit normals row_dir x col_dir of the canonical slices."""
        return unit_normals(self.row_dirs, self.col_dirs)

    @property
    def series_normal(self) -> np.ndarray:
        """The mean slice normal (unit), signed so that the slice index increases along it."""
        n = series_normal(self.row_dirs, self.col_dirs)
        centers = self.centers
        return -n if (centers[-1] - centers[0]) @ n < 0 else n

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
        """Canonical slice index of an InstanceNumber; KeyError naming the series if absent."""
        try:
            return self._index_of[int(instance_number)]
        except KeyError:
            raise KeyError(f"series {self.name} has no InstanceNumber {instance_number}; "
                           f"it has {self.instance_numbers.min()}..{self.instance_numbers.max()}") from None

    def indices_of(self, instance_numbers) -> np.ndarray:
        """Canonical slice indices of InstanceNumbers (any array shape); KeyError naming the first absent one."""
        values = np.asarray(instance_numbers)
        return np.vectorize(self.index_of, otypes=[np.int64])(values) if values.size else values.astype(np.int64)

    def stored_shape(self, instance_number: int) -> tuple[int, int]:
        """(Rows, Columns) of the stored slice ``instance_number``."""
        rows, cols = self.stored.shapes[self.index_of(instance_number)]
        return int(rows), int(cols)

    def contains(self, x, y) -> np.ndarray:
        """Whether canonical pixel coordinates lie inside the image (half a pixel beyond the edge centres)."""
        rows, cols = self.pixels.shape[1:]
        x, y = np.asarray(x), np.asarray(y)
        return (x >= -0.5) & (x <= cols - 0.5) & (y >= -0.5) & (y <= rows - 0.5)

    def slice_affine(self, index: int) -> np.ndarray:
        """4x4 matrix mapping canonical (x, y, 0, 1) of slice ``index`` to LPS mm; column 2 is the unit normal."""
        a = np.eye(4)
        a[:3, 0] = self.row_dirs[index] * self.spacings[index, 1]
        a[:3, 1] = self.col_dirs[index] * self.spacings[index, 0]
        a[:3, 2] = self.normals[index]
        a[:3, 3] = self.positions[index]
        return a

    @property
    def affine(self) -> np.ndarray:
        """4x4 canonical voxel (x, y, slice index, 1) -> LPS mm affine of the whole volume.

        Exact only for a regular stack (parallel, evenly spaced slices); use ``pixel_to_patient`` for
        per-slice exactness. Column 2 is the mean step between consecutive slice positions.
        """
        a = self.slice_affine(0)
        if len(self.instance_numbers) > 1:
            a[:3, 2] = (self.positions[-1] - self.positions[0]) / (len(self.instance_numbers) - 1)
        return a

    # ------------------------------------------------------------------ geometry, canonical grid
    def pixel_to_patient(self, index: int | np.ndarray, x, y) -> np.ndarray:
        """LPS mm of canonical pixel (x, y) on canonical slice ``index`` (all may be arrays that broadcast)."""
        index = np.asarray(index)
        x = np.asarray(x, dtype=np.float64)[..., None]
        y = np.asarray(y, dtype=np.float64)[..., None]
        return (self.positions[index] + x * self.spacings[index, 1, None] * self.row_dirs[index]
                + y * self.spacings[index, 0, None] * self.col_dirs[index])

    def plane_coordinates(self, point) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For every canonical slice: canonical (x, y) in pixels of ``point`` and its signed distance (mm)
        along that slice's own normal. Returns three (S,) arrays."""
        return _plane_xy(self.positions, self.row_dirs, self.col_dirs, self.spacings, point)

    def nearest_slice(self, point) -> tuple[int, float, float, float]:
        """(canonical slice index, canonical x, y, |distance| mm) of the slice plane nearest ``point``.

        Slices whose image contains the projected point are preferred; only if none does is the
        nearest plane overall taken (this matters for tilted sub-stacks, whose extended planes cross).
        """
        x, y, z = self.plane_coordinates(point)
        dist = np.abs(z)
        inside = self.contains(x, y)
        candidates = np.where(inside, dist, np.inf) if inside.any() else dist
        i = int(np.argmin(candidates))
        return i, float(x[i]), float(y[i]), float(dist[i])

    # ------------------------------------------------------------------ stored grid and conversions
    def to_patient(self, instance_number, x, y) -> np.ndarray:
        """LPS point (mm) of pixel column ``x``, row ``y`` in the **stored** grid of slice ``instance_number``
        (the convention of train_label_coordinates.csv); arguments may be arrays that broadcast."""
        i = self.indices_of(instance_number)
        st = self.stored
        x = np.asarray(x, dtype=np.float64)[..., None]
        y = np.asarray(y, dtype=np.float64)[..., None]
        return (st.positions[i] + x * st.spacings[i, 1, None] * st.row_dirs[i]
                + y * st.spacings[i, 0, None] * st.col_dirs[i])

    def from_patient(self, point) -> Projection:
        """The nearest slice (as :meth:`nearest_slice` picks it): its InstanceNumber, the point's pixel
        (x, y) in its **stored** grid and the distance (mm) from its plane."""
        i, _, _, dist = self.nearest_slice(point)
        st = self.stored
        x, y, _ = _plane_xy(st.positions[i:i + 1], st.row_dirs[i:i + 1], st.col_dirs[i:i + 1],
                            st.spacings[i:i + 1], point)
        return Projection(int(self.instance_numbers[i]), float(x[0]), float(y[0]), dist)

    def _grid_shape(self) -> tuple[int, int]:
        return self.orientation.grid_shape(self.pixels.shape[1:])

    def stored_to_canonical(self, instance_number, x, y):
        """(canonical slice index, canonical x, canonical y) of stored pixel (x, y) of ``instance_number``.

        Vectorised: arrays that broadcast give arrays; scalars give Python numbers. Exact for slices
        stored at the series' size; a slice of another size maps field of view onto field of view.
        """
        i = self.indices_of(instance_number)
        xc, yc = stored_to_canonical_xy(self.orientation, self.stored.shapes[i], self._grid_shape(), x, y)
        return _plain(i, xc, yc)

    def canonical_to_stored(self, index, x, y):
        """(InstanceNumber, stored x, stored y) of canonical pixel (x, y) on canonical slice ``index``;
        the inverse of :meth:`stored_to_canonical` (vectorised the same way)."""
        i = np.asarray(index, dtype=np.int64)
        xs, ys = canonical_to_stored_xy(self.orientation, self.stored.shapes[i], self._grid_shape(), x, y)
        return _plain(self.instance_numbers[i], xs, ys)


def canonicalize(series: Series) -> Series:
    """``series`` in the canonical layout, with its stored grids kept: a pure re-indexing of the pixels.

    Takes a series as stored (identity orientation, any slice order); a series that is canonical
    already comes back unchanged.
    """
    layout = canonical_layout(series.positions, series.row_dirs, series.col_dirs, series.spacings,
                              series.pixels.shape[1:], series.instance_numbers)
    if layout.orientation.in_plane_identity and np.array_equal(layout.order, np.arange(len(layout.order))):
        return series
    if not series.orientation.in_plane_identity:
        raise ValueError(f"series {series.name} is re-oriented already ({series.orientation}) but not "
                         f"canonical; canonicalize takes a series as stored")
    return Series(
        pixels=np.ascontiguousarray(layout.orientation.apply(series.pixels[layout.order])),
        instance_numbers=series.instance_numbers[layout.order],
        positions=layout.positions, row_dirs=layout.row_dirs, col_dirs=layout.col_dirs, spacings=layout.spacings,
        study_id=series.study_id, series_id=series.series_id, description=series.description,
        orientation=layout.orientation, stored=series.stored.take(layout.order),
    )
