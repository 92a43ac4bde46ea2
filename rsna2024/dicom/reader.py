"""Read a folder of single-frame DICOM slices into a :class:`~rsna2024.dicom.series.Series`.

Slices are ordered by their position along the series normal (never by file name or InstanceNumber
alone); RescaleSlope/RescaleIntercept are applied; uncompressed, RLE, JPEG 2000 and JPEG lossless
pixel data decode through pydicom + pylibjpeg, JPEG-LS through pyjpegls where installed.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from rsna2024.dicom.header import SliceError, collect_slices, parse_header
from rsna2024.dicom.series import Series, series_normal, slice_centers
from rsna2024.errors import DicomError
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)


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


def _read_slice(path: Path) -> _Slice:
    """One slice; SliceError naming the file and the tag if it is unreadable or its header is invalid
    (the checks of :func:`rsna2024.dicom.header.parse_header`) or its pixels do not decode."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - any parsing failure makes the file unusable
        raise SliceError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from None
    h = parse_header(ds, path)
    try:
        pixels = decode_pixels(ds)
    except Exception as exc:  # noqa: BLE001 - any decoding failure makes the file unusable
        raise SliceError(path, f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from None
    if pixels.shape != (h.rows, h.columns):
        raise SliceError(path, f"decoded pixels have shape {pixels.shape}, but Rows x Columns = "
                               f"{h.rows} x {h.columns}")
    return _Slice(path=path, pixels=pixels, instance_number=h.instance_number, position=h.position,
                  row_dir=h.row_dir, col_dir=h.col_dir, spacing=h.spacing, slope=h.slope, intercept=h.intercept,
                  description=h.description)


def _read_slices(folder: Path, name: str) -> tuple[list[_Slice], list[str]]:
    """The usable slices of a series folder and ``"file: reason"`` of each dropped one (warned; see
    :func:`~rsna2024.dicom.header.collect_slices`). DicomError naming the folder when none is left."""
    slices, dropped = collect_slices(series_files(folder), _read_slice)
    for entry in dropped:
        log.warning("series %s: dropped slice %s/%s", name, folder, entry)
    if not slices:
        raise DicomError(f"series {name}: no readable DICOM slice with valid geometry in {folder} "
                         + (f"({len(dropped)} file(s) dropped, e.g. {dropped[0]})" if dropped else "(no files)"))
    return slices, dropped


def _resample_slice(s: _Slice, shape: tuple[int, int], series_name: str) -> None:
    """Resample ``s`` in place to ``shape`` covering the same field of view; fix spacing and position."""
    from scipy.ndimage import zoom

    rows, cols = s.pixels.shape
    log.warning("series %s: %s is %dx%d, resampled to the majority size %dx%d", series_name, s.path,
                rows, cols, *shape)
    factors = (shape[0] / rows, shape[1] / cols)
    s.pixels = zoom(s.pixels.astype(np.float32), factors, order=1, grid_mode=True, mode="nearest")
    new_spacing = s.spacing / np.array(factors)
    # The field of view's corner stays put: position = corner + half a (new) pixel.
    corner = s.position - 0.5 * s.spacing[1] * s.row_dir - 0.5 * s.spacing[0] * s.col_dir
    s.position = corner + 0.5 * new_spacing[1] * s.row_dir + 0.5 * new_spacing[0] * s.col_dir
    s.spacing = new_spacing


def series_files(folder: Path) -> list[Path]:
    """The ``*.dcm`` files of a series folder (any regular file if none ends in ``.dcm``)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dcm")
    if not files:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return files


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def read_series(folder: str | Path, description: str = "") -> Series:
    """Read every DICOM slice of ``folder`` into a float32 ``Series`` sorted along the slice normal.

    ``study_id`` and ``series_id`` are taken from the folder names (Kaggle layout
    ``<study>/<series>/<instance>.dcm``); ``description`` defaults to the SeriesDescription tag.
    A slice that is unreadable or has an invalid header (see :mod:`rsna2024.dicom.header`), or repeats
    another's InstanceNumber, is dropped with a warning and listed in ``Series.dropped``; slices of
    another size are resampled to the majority size with a warning. Raises DicomError naming the
    folder if no usable slice is left.
    """
    folder = Path(folder)
    name = f"{folder.parent.name}/{folder.name}"
    if not folder.is_dir():
        raise DicomError(f"series {name}: folder {folder} does not exist")
    slices, dropped = _read_slices(folder, name)

    shape = Counter(s.pixels.shape for s in slices).most_common(1)[0][0]
    for s in slices:
        if s.pixels.shape != shape:
            _resample_slice(s, shape, name)

    row_dirs = np.stack([s.row_dir for s in slices])
    col_dirs = np.stack([s.col_dir for s in slices])
    positions = np.stack([s.position for s in slices])
    spacings = np.stack([s.spacing for s in slices])
    normal = series_normal(row_dirs, col_dirs)
    instance_numbers = np.array([s.instance_number for s in slices], dtype=np.int64)
    centers = slice_centers(positions, row_dirs, col_dirs, spacings, shape)
    order = np.lexsort((instance_numbers, np.round(centers @ normal, 4)))

    pixels = np.empty((len(slices), *shape), dtype=np.float32)
    for out, i in zip(pixels, order):
        s = slices[i]
        np.copyto(out, s.pixels, casting="unsafe")
        if s.slope != 1.0:
            out *= s.slope
        if s.intercept != 0.0:
            out += s.intercept
    return Series(
        pixels=pixels,
        instance_numbers=instance_numbers[order],
        positions=positions[order],
        row_dirs=row_dirs[order],
        col_dirs=col_dirs[order],
        spacings=spacings[order],
        study_id=_int_or_none(folder.parent.name),
        series_id=_int_or_none(folder.name),
        description=description or slices[order[0]].description,
        dropped=dropped,
    )
