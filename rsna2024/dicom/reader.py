"""Read a folder of single-frame DICOM slices into a canonical :class:`~rsna2024.dicom.series.Series`.

Slices are ordered by their position along the series normal (never by file name or InstanceNumber
alone) and laid out as :mod:`rsna2024.dicom.orientation` says; RescaleSlope/RescaleIntercept are
applied; uncompressed, RLE, JPEG 2000 and JPEG lossless pixel data decode through pydicom + pylibjpeg,
JPEG-LS through pyjpegls where installed.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from rsna2024.dicom.orientation import MAX_SLICE_ANGLE_DEG, canonical_layout, misoriented_slices
from rsna2024.dicom.series import Series, StoredGeometry
from rsna2024.errors import DicomError
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)

# Tags every slice must carry for patient-space geometry.
GEOMETRY_TAGS: tuple[str, ...] = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                                  "InstanceNumber")


@dataclass
class _Slice:
    path: Path
    pixels: np.ndarray
    instance_number: int
    position: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    spacing: np.ndarray
    slope: float
    intercept: float
    description: str


def _tag_name(keyword: str) -> str:
    t = Tag(keyword)
    return f"{keyword} ({t.group:04X},{t.element:04X})"


def _floats(ds: pydicom.Dataset, keyword: str, count: int, where: str) -> np.ndarray:
    value = ds.get(keyword)
    if value is None or value == "":
        raise DicomError(f"{where}: missing geometry tag {_tag_name(keyword)}")
    try:
        arr = np.array([float(v) for v in (value if count > 1 else [value])], dtype=np.float64)
    except (TypeError, ValueError):
        raise DicomError(f"{where}: tag {_tag_name(keyword)} = {value!r} is not numeric") from None
    if arr.shape != (count,):
        raise DicomError(f"{where}: tag {_tag_name(keyword)} has {arr.size} values, expected {count}")
    return arr


def _unit(v: np.ndarray, keyword: str, where: str) -> np.ndarray:
    norm = np.linalg.norm(v)
    if not 0.5 < norm < 1.5:
        raise DicomError(f"{where}: tag {_tag_name(keyword)} holds a non-unit direction {v.tolist()}")
    return v / norm


_NATIVE_LE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}


def decode_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """The stored pixel values of a single-frame slice.

    Native little-endian grayscale data whose BitsStored fills BitsAllocated is viewed straight from
    the PixelData bytes (no copy, none of pydicom's per-call set-up); everything else (compressed,
    big-endian, packed bits, colour, multi-frame) goes through ``ds.pixel_array``.
    """
    bits = ds.get("BitsAllocated")
    if (ds.file_meta.get("TransferSyntaxUID") in _NATIVE_LE and bits in (8, 16)
            and ds.get("BitsStored") == bits and ds.get("SamplesPerPixel", 1) == 1
            and int(ds.get("NumberOfFrames", 1) or 1) == 1 and "PixelData" in ds):
        dtype = np.dtype(f"<{'i' if ds.get('PixelRepresentation', 0) else 'u'}{bits // 8}")
        rows, cols = int(ds.Rows), int(ds.Columns)
        data = ds.PixelData
        if len(data) >= rows * cols * dtype.itemsize:
            return np.frombuffer(data, dtype=dtype, count=rows * cols).reshape(rows, cols)
    return ds.pixel_array


def _read_slice(path: Path, series_name: str) -> _Slice | None:
    """One slice, or None (with a warning naming the file) if the file is unreadable.

    A readable file without the geometry tags raises DicomError: the series cannot be placed in space.
    """
    try:
        ds = pydicom.dcmread(path)
        pixels = decode_pixels(ds)
    except Exception as exc:  # noqa: BLE001 - any decoding failure makes the file unusable
        log.warning("series %s: skipping unreadable DICOM file %s (%s: %s)", series_name, path,
                    type(exc).__name__, exc)
        return None
    if pixels.ndim != 2:
        log.warning("series %s: skipping %s: expected one 2-D grayscale frame, got pixel shape %s",
                    series_name, path, pixels.shape)
        return None
    where = f"series {series_name}, file {path}"
    orientation = _floats(ds, "ImageOrientationPatient", 6, where)
    return _Slice(
        path=path,
        pixels=pixels,
        instance_number=int(_floats(ds, "InstanceNumber", 1, where)[0]),
        position=_floats(ds, "ImagePositionPatient", 3, where),
        row_dir=_unit(orientation[:3], "ImageOrientationPatient", where),
        col_dir=_unit(orientation[3:], "ImageOrientationPatient", where),
        spacing=_floats(ds, "PixelSpacing", 2, where),
        slope=float(ds.get("RescaleSlope", 1.0) or 1.0),
        intercept=float(ds.get("RescaleIntercept", 0.0) or 0.0),
        description=str(ds.get("SeriesDescription", "")),
    )


def _resample_slice(s: _Slice, shape: tuple[int, int], series_name: str) -> tuple[np.ndarray, np.ndarray,
                                                                                     np.ndarray]:
    """``s``'s pixels resampled to ``shape`` over the same field of view, with the position and spacing
    of that new grid: (pixels, position, spacing). ``s`` itself keeps its stored grid."""
    from scipy.ndimage import zoom

    rows, cols = s.pixels.shape
    log.warning("series %s: %s is %dx%d, resampled to the majority size %dx%d", series_name, s.path,
                rows, cols, *shape)
    factors = (shape[0] / rows, shape[1] / cols)
    pixels = zoom(s.pixels.astype(np.float32), factors, order=1, grid_mode=True, mode="nearest")
    spacing = s.spacing / np.array(factors)
    # The field of view's corner stays put: position = corner + half a (new) pixel.
    corner = s.position - 0.5 * s.spacing[1] * s.row_dir - 0.5 * s.spacing[0] * s.col_dir
    return pixels, corner + 0.5 * spacing[1] * s.row_dir + 0.5 * spacing[0] * s.col_dir, spacing


def _drop_misoriented(slices: list[_Slice], series_name: str) -> list[_Slice]:
    """``slices`` without those oriented far from the rest of the series (a warning names each file)."""
    if len(slices) < 2:
        return slices
    bad = dict(misoriented_slices(np.stack([s.row_dir for s in slices]), np.stack([s.col_dir for s in slices])))
    if len(bad) == len(slices):
        raise DicomError(f"series {series_name}: no two slices share an orientation (slice normals or row "
                         f"directions more than {MAX_SLICE_ANGLE_DEG:g} degrees from the median)")
    for i, reason in bad.items():
        log.warning("series %s: dropping %s: %s", series_name, slices[i].path, reason)
    return [s for i, s in enumerate(slices) if i not in bad]


def series_files(folder: Path) -> list[Path]:
    """The ``*.dcm`` files of a series folder (any regular file if none ends in ``.dcm``)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dcm")
    if not files:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return files


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def read_series(folder: str | Path, description: str = "") -> Series:
    """Read every DICOM slice of ``folder`` into a float32 ``Series`` in the canonical layout
    (:mod:`rsna2024.dicom.orientation`), each slice keeping its stored grid for label coordinates.

    ``study_id`` and ``series_id`` are taken from the folder names (Kaggle layout
    ``<study>/<series>/<instance>.dcm``); ``description`` defaults to the SeriesDescription tag.
    Corrupt files are skipped with a warning; so are slices oriented more than ``MAX_SLICE_ANGLE_DEG``
    (45) degrees away from the rest of the series; slices of another size are resampled to the
    majority size with a warning (in the volume only: their stored grid stays theirs). Raises
    DicomError if no slice is readable, a geometry tag is missing or no two slices share an orientation.
    """
    folder = Path(folder)
    name = f"{folder.parent.name}/{folder.name}"
    if not folder.is_dir():
        raise DicomError(f"series {name}: folder {folder} does not exist")
    slices = [s for s in (_read_slice(p, name) for p in series_files(folder)) if s is not None]
    if not slices:
        raise DicomError(f"series {name}: no readable DICOM slice in {folder}")
    slices = _drop_misoriented(slices, name)

    shape = Counter(s.pixels.shape for s in slices).most_common(1)[0][0]
    grids = [(s.pixels, s.position, s.spacing) if s.pixels.shape == shape else _resample_slice(s, shape, name)
             for s in slices]
    row_dirs = np.stack([s.row_dir for s in slices])
    col_dirs = np.stack([s.col_dir for s in slices])
    instance_numbers = np.array([s.instance_number for s in slices], dtype=np.int64)
    layout = canonical_layout(np.stack([g[1] for g in grids]), row_dirs, col_dirs, np.stack([g[2] for g in grids]),
                              shape, instance_numbers)
    order = layout.order

    pixels = np.empty((len(slices), *layout.shape), dtype=np.float32)
    for out, i in zip(pixels, order):
        s = slices[i]
        np.copyto(out, layout.orientation.apply(grids[i][0]), casting="unsafe")
        if s.slope != 1.0:
            out *= s.slope
        if s.intercept != 0.0:
            out += s.intercept
    stored = StoredGeometry(positions=np.stack([s.position for s in slices]), row_dirs=row_dirs, col_dirs=col_dirs,
                            spacings=np.stack([s.spacing for s in slices]),
                            shapes=[s.pixels.shape for s in slices]).take(order)
    return Series(
        pixels=pixels,
        instance_numbers=instance_numbers[order],
        positions=layout.positions,
        row_dirs=layout.row_dirs,
        col_dirs=layout.col_dirs,
        spacings=layout.spacings,
        study_id=_int_or_none(folder.parent.name),
        series_id=_int_or_none(folder.name),
        description=description or slices[order[0]].description,
        orientation=layout.orientation,
        stored=stored,
    )
