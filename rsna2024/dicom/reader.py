"""Read a folder of single-frame DICOM slices into a canonical :class:`~rsna2024.dicom.series.Series`.

Slices are ordered by their position along the series normal (never by file name or InstanceNumber
alone) and laid out as :mod:`rsna2024.dicom.orientation` says; RescaleSlope/RescaleIntercept are
applied; uncompressed, RLE, JPEG 2000 and JPEG lossless pixel data decode through pydicom + pylibjpeg,
JPEG-LS through pyjpegls where installed.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from rsna2024.dicom.header import SliceError, collect_slices, parse_header, read_dataset, tag_name
from rsna2024.dicom.orientation import MAX_SLICE_ANGLE_DEG, canonical_layout, misoriented_slices
from rsna2024.dicom.series import Series, StoredGeometry
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
            and ds.get("BitsStored", bits) == bits and ds.get("SamplesPerPixel", 1) == 1
            and int(ds.get("NumberOfFrames", 1) or 1) == 1 and "PixelData" in ds):
        dtype = np.dtype(f"<{'i' if ds.get('PixelRepresentation', 0) else 'u'}{bits // 8}")
        rows, cols = int(ds.Rows), int(ds.Columns)
        data = ds.PixelData
        if len(data) >= rows * cols * dtype.itemsize:
            return np.frombuffer(data, dtype=dtype, count=rows * cols).reshape(rows, cols)
    pixels = ds.pixel_array
    # pydicom returns padding that fills whole frames as more frames; the slice is the first, as above
    return pixels[0] if pixels.ndim == 3 else pixels


def _read_slice(path: Path) -> _Slice:
    """One slice; SliceError naming the file and the tag if it is unreadable or its header is invalid
    (the checks of :func:`rsna2024.dicom.header.parse_header`) or its pixels do not decode."""
    ds = read_dataset(path)
    h = parse_header(ds, path)
    try:
        with warnings.catch_warnings():  # pydicom warns about padding it removes; the pixels are still right
            warnings.simplefilter("ignore", UserWarning)
            pixels = decode_pixels(ds)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - any decoding failure makes the file unusable, a decoder's panic too
        # (pylibjpeg's Rust decoders panic on a frame that does not fit Rows x Columns: pyo3's PanicException
        # derives from BaseException, so ``except Exception`` lets it end the whole run)
        syntax = ds.file_meta.get("TransferSyntaxUID")
        named = "missing" if syntax is None else syntax if syntax.name == syntax else f"{syntax} ({syntax.name})"
        raise SliceError(path, f"tag {tag_name('PixelData')} cannot be decoded; {tag_name('TransferSyntaxUID')} = "
                               f"{named} ({type(exc).__name__}: {' '.join(str(exc).split())})") from None
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


def _drop_misoriented(slices: list[_Slice], series_name: str) -> tuple[list[_Slice], list[str]]:
    """``slices`` without those oriented far from the rest of the series (a warning names each file),
    and ``"file: reason"`` of each dropped one."""
    if len(slices) < 2:
        return slices, []
    bad = dict(misoriented_slices(np.stack([s.row_dir for s in slices]), np.stack([s.col_dir for s in slices])))
    if len(bad) == len(slices):
        raise DicomError(f"series {series_name}: no two slices share an orientation (slice normals or row "
                         f"directions more than {MAX_SLICE_ANGLE_DEG:g} degrees from the median)")
    for i, reason in bad.items():
        log.warning("series %s: dropping %s: %s", series_name, slices[i].path, reason)
    return [s for i, s in enumerate(slices) if i not in bad], [f"{slices[i].path.name}: {r}" for i, r in bad.items()]


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
    A slice that is unreadable or has an invalid header (see :mod:`rsna2024.dicom.header`), repeats
    another's InstanceNumber, or is oriented more than ``MAX_SLICE_ANGLE_DEG`` (45) degrees away from the
    rest of the series is dropped with a warning and listed in ``Series.dropped``; slices of another size
    are resampled to the majority size with a warning (in the volume only: their stored grid stays theirs).
    Raises DicomError naming the folder if no usable slice is left or no two slices share an orientation.
    """
    folder = Path(folder)
    name = f"{folder.parent.name}/{folder.name}"
    if not folder.is_dir():
        raise DicomError(f"series {name}: folder {folder} does not exist")
    slices, dropped = _read_slices(folder, name)
    slices, misoriented = _drop_misoriented(slices, name)
    dropped = dropped + misoriented

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
        dropped=dropped,
    )
