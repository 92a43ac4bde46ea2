"""One DICOM slice's header, checked and parsed: the single implementation of every per-slice check,
shared by the reader (which drops a bad slice with a warning) and ``rsna2024 validate --images``
(which reports it without decoding any pixels).

A slice is unusable (:class:`SliceError`, naming the file and the tag) when:

- a geometry tag (:data:`GEOMETRY_TAGS`) is missing, not numeric or not finite;
- PixelSpacing is zero, negative or beyond :data:`MAX_PIXEL_SPACING_MM`, or ImagePositionPatient
  lies beyond :data:`MAX_POSITION_MM` (float64 geometry would lose the millimetres);
- an ImageOrientationPatient vector is not unit length or the two are not orthogonal
  (tolerance :data:`DIRECTION_TOLERANCE`);
- InstanceNumber is not an integer of the IS range (32 bits);
- RescaleSlope/RescaleIntercept are present but not finite numbers, the slope is 0, or they scale
  the stored values beyond float32;
- it is not one grayscale frame, or Rows/Columns are not positive integers;
- BitsAllocated, BitsStored, PixelRepresentation or PhotometricInterpretation do not describe grayscale
  integers (see :func:`_bits_stored`);
- its TransferSyntaxUID is missing or unknown, or its PixelData is encapsulated (compressed) where the
  syntax says native or the other way round;
- its native PixelData is shorter than Rows x Columns x BitsAllocated needs (compressed data is checked
  when decoded);
- a tag's value cannot be decoded at all (wrong length for its VR, a file ending inside it).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from rsna2024.errors import DicomError

T = TypeVar("T")

# Tags every slice must carry for patient-space geometry.
GEOMETRY_TAGS: tuple[str, ...] = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                                  "InstanceNumber")
# Allowed |norm - 1| of each ImageOrientationPatient vector and |cosine| between the two (real headers
# round the direction cosines to about 6 digits; a larger error means a broken header).
DIRECTION_TOLERANCE = 1e-2
# Plausible geometry (mm): beyond these, float64 arithmetic between patient and pixel space loses the
# millimetres (a 1e300 mm pixel swamps the position), so such a header is broken rather than exotic.
MAX_POSITION_MM = 1e5
MAX_PIXEL_SPACING_MM = 1e3
# InstanceNumber is an IS: a signed 32-bit integer.
INSTANCE_RANGE = (-2**31, 2**31 - 1)
# Values larger than this stay on disk when a header is read for checking (the pixel data).
_DEFER_BYTES = 1024


class SliceError(DicomError):
    """One slice file is unusable; ``reason`` names the tag at fault, ``path`` the file."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class SliceHeader:
    """The checked header of one slice (geometry as in :mod:`rsna2024.dicom.series`)."""

    path: Path
    instance_number: int
    position: np.ndarray  # (3,) ImagePositionPatient, mm
    row_dir: np.ndarray  # (3,) unit, increasing column index x
    col_dir: np.ndarray  # (3,) unit, increasing row index y
    spacing: np.ndarray  # (2,) (row spacing, column spacing), mm, > 0
    slope: float  # the rescale, negated for MONOCHROME1 (whose lowest value is displayed white)
    intercept: float
    rows: int
    columns: int
    description: str


def tag_name(keyword: str) -> str:
    """``'PixelSpacing (0028,0030)'``: a tag's keyword and number, for messages."""
    t = Tag(keyword)
    return f"{keyword} ({t.group:04X},{t.element:04X})"


def tag_value(ds: pydicom.Dataset, keyword: str, path: str | Path, default=None):
    """The value of tag ``keyword`` (``default`` if absent); SliceError naming the file and the tag if pydicom
    cannot decode it (a value of the wrong length for its VR, a file that ends inside it, ...)."""
    try:
        with warnings.catch_warnings():  # pydicom warns about a malformed value; the checks after this say it
            warnings.simplefilter("ignore", UserWarning)
            return ds.get(keyword, default)
    except Exception as exc:  # noqa: BLE001 - pydicom may fail converting a malformed value
        first = str(exc).split(". ")[0].strip()
        raise SliceError(path, f"tag {tag_name(keyword)} cannot be read ({type(exc).__name__}: {first})") from None


def _numbers(ds: pydicom.Dataset, keyword: str, count: int, path: Path, required: bool = True) -> np.ndarray | None:
    """The ``count`` finite numbers of tag ``keyword``; None if absent and not ``required``."""
    value = tag_value(ds, keyword, path)
    if value is None or value == "":
        if required:
            raise SliceError(path, f"missing tag {tag_name(keyword)}")
        return None
    items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    try:
        arr = np.array([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError):
        shown = [str(v) for v in items] if len(items) > 1 else str(items[0])
        raise SliceError(path, f"tag {tag_name(keyword)} = {shown!r} is not numeric") from None
    if arr.shape != (count,):
        raise SliceError(path, f"tag {tag_name(keyword)} has {arr.size} value(s), expected {count}")
    if not np.isfinite(arr).all():
        raise SliceError(path, f"tag {tag_name(keyword)} = {arr.tolist()} is not finite")
    return arr


def _directions(ds: pydicom.Dataset, path: Path) -> tuple[np.ndarray, np.ndarray]:
    keyword = "ImageOrientationPatient"
    v = _numbers(ds, keyword, 6, path)
    row, col = v[:3], v[3:]
    for name, d in (("row", row), ("column", col)):
        if abs(np.linalg.norm(d) - 1.0) > DIRECTION_TOLERANCE:
            raise SliceError(path, f"tag {tag_name(keyword)} = {v.tolist()}: the {name} direction is not a unit "
                                   f"vector (length {np.linalg.norm(d):.4g})")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    if abs(row @ col) > DIRECTION_TOLERANCE:
        raise SliceError(path, f"tag {tag_name(keyword)} = {v.tolist()}: the row and column directions are not "
                               f"orthogonal (cosine {row @ col:.4g})")
    return row, col


def _bits_stored(ds: pydicom.Dataset, path: Path) -> int:
    """BitsStored of a grayscale slice whose pixel description is consistent; SliceError naming the tag if not:
    BitsAllocated 1, 8, 16, 32 or 64; BitsStored (default BitsAllocated) from 1 to BitsAllocated;
    PixelRepresentation (default 0) 0 or 1; PhotometricInterpretation (default MONOCHROME2) MONOCHROME1 or 2."""
    allocated = tag_value(ds, "BitsAllocated", path)
    if not isinstance(allocated, int) or allocated not in (1, 8, 16, 32, 64):
        raise SliceError(path, f"tag {tag_name('BitsAllocated')} = {allocated!r} is not 1, 8, 16, 32 or 64")
    stored = tag_value(ds, "BitsStored", path, allocated)
    if not isinstance(stored, int) or not 1 <= stored <= allocated:
        raise SliceError(path, f"tag {tag_name('BitsStored')} = {stored!r} is not a whole number from 1 to "
                               f"{tag_name('BitsAllocated')} = {allocated}")
    representation = tag_value(ds, "PixelRepresentation", path, 0)
    if not isinstance(representation, int) or representation not in (0, 1):
        raise SliceError(path, f"tag {tag_name('PixelRepresentation')} = {representation!r} is not 0 (unsigned) "
                               f"or 1 (signed)")
    photometric = tag_value(ds, "PhotometricInterpretation", path, "MONOCHROME2")
    if str(photometric).strip() not in ("MONOCHROME1", "MONOCHROME2"):
        raise SliceError(path, f"tag {tag_name('PhotometricInterpretation')} = {str(photometric)!r} is not "
                               f"MONOCHROME1 or MONOCHROME2 (grayscale)")
    return stored


def _pixel_data_problem(ds: pydicom.Dataset, rows: int, columns: int, path: Path) -> str | None:
    """Why the stored PixelData cannot hold one Rows x Columns frame in its transfer syntax, or None
    (compressed data is only checked to be encapsulated; its content is checked when decoded)."""
    element = ds.get_item("PixelData", keep_deferred=True)
    if element is None:
        return f"missing tag {tag_name('PixelData')}"
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None:
        return f"missing tag {tag_name('TransferSyntaxUID')} in the file meta: the pixel data cannot be decoded"
    if not syntax.is_transfer_syntax:
        return f"tag {tag_name('TransferSyntaxUID')} = {syntax} is not a transfer syntax the reader knows"
    raw = isinstance(element, RawDataElement)
    encapsulated = element.length == 0xFFFFFFFF if raw else bool(element.is_undefined_length)
    if syntax.is_compressed != encapsulated:
        return (f"tag {tag_name('PixelData')} is {'' if encapsulated else 'not '}encapsulated, but "
                f"{tag_name('TransferSyntaxUID')} = {syntax} ({syntax.name}) is a "
                f"{'compressed' if syntax.is_compressed else 'native'} syntax")
    if encapsulated:
        return None  # checked when decoded
    if raw and element.value is None:  # deferred: the value stayed on disk, and the file may end before it does
        length = min(element.length, path.stat().st_size - element.value_tell)
    else:
        length = len(element.value or b"")
    bits = ds.BitsAllocated  # checked by _bits_stored
    expected = (rows * columns * bits + 7) // 8
    if length < expected:  # longer is trailing padding, which decoders ignore
        return (f"tag {tag_name('PixelData')} holds {length} bytes, but Rows x Columns = {rows} x {columns} at "
                f"{bits} bits needs {expected}")
    return None


def parse_header(ds: pydicom.Dataset, path: str | Path) -> SliceHeader:
    """Check and parse the header of one slice (read fully or with deferred pixel data); SliceError
    naming the file and the tag if the slice is unusable (see the module docstring)."""
    path = Path(path)
    frames = tag_value(ds, "NumberOfFrames", path, 1) or 1
    samples = tag_value(ds, "SamplesPerPixel", path, 1)
    if str(frames).strip() not in ("1", "") or samples != 1:
        raise SliceError(path, f"expected one grayscale frame; {tag_name('NumberOfFrames')} = {frames}, "
                               f"{tag_name('SamplesPerPixel')} = {samples}")
    size = {}
    for keyword in ("Rows", "Columns"):
        value = tag_value(ds, keyword, path)
        if not isinstance(value, int) or value <= 0:
            raise SliceError(path, f"tag {tag_name(keyword)} = {value!r} is not a positive integer")
        size[keyword] = value
    bits = _bits_stored(ds, path)
    problem = _pixel_data_problem(ds, size["Rows"], size["Columns"], path)
    if problem:
        raise SliceError(path, problem)
    instance = _numbers(ds, "InstanceNumber", 1, path)[0]
    if instance != round(instance):
        raise SliceError(path, f"tag {tag_name('InstanceNumber')} = {instance:g} is not an integer")
    if not INSTANCE_RANGE[0] <= instance <= INSTANCE_RANGE[1]:
        raise SliceError(path, f"tag {tag_name('InstanceNumber')} = {instance:g} is outside the 32-bit range of "
                               f"an IS value")
    spacing = _numbers(ds, "PixelSpacing", 2, path)
    if (spacing <= 0).any():
        raise SliceError(path, f"tag {tag_name('PixelSpacing')} = {spacing.tolist()} is zero or negative")
    if (spacing > MAX_PIXEL_SPACING_MM).any():
        raise SliceError(path, f"tag {tag_name('PixelSpacing')} = {spacing.tolist()} is beyond "
                               f"{MAX_PIXEL_SPACING_MM:g} mm (not a plausible pixel spacing)")
    position = _numbers(ds, "ImagePositionPatient", 3, path)
    if (np.abs(position) > MAX_POSITION_MM).any():
        raise SliceError(path, f"tag {tag_name('ImagePositionPatient')} = {position.tolist()} lies beyond "
                               f"{MAX_POSITION_MM:g} mm of the origin (not a plausible position)")
    row_dir, col_dir = _directions(ds, path)
    slope = _numbers(ds, "RescaleSlope", 1, path, required=False)
    if slope is not None and slope[0] == 0:
        raise SliceError(path, f"tag {tag_name('RescaleSlope')} = 0")
    slope = 1.0 if slope is None else float(slope[0])
    intercept = _numbers(ds, "RescaleIntercept", 1, path, required=False)
    intercept = 0.0 if intercept is None else float(intercept[0])
    if abs(slope) * 2.0 ** int(bits) + abs(intercept) > float(np.finfo(np.float32).max):
        raise SliceError(path, f"tags {tag_name('RescaleSlope')} = {slope:g} and {tag_name('RescaleIntercept')} = "
                               f"{intercept:g} take {bits}-bit values beyond float32")
    if str(tag_value(ds, "PhotometricInterpretation", path, "MONOCHROME2")).strip() == "MONOCHROME1":
        slope, intercept = -slope, -intercept  # minimum is white: negated, bright stays bright after normalising
    return SliceHeader(
        path=path, instance_number=int(instance), position=position,
        row_dir=row_dir, col_dir=col_dir, spacing=spacing, slope=slope, intercept=intercept,
        rows=size["Rows"], columns=size["Columns"],
        description=str(tag_value(ds, "SeriesDescription", path, "")),
    )


def read_dataset(path: str | Path, defer_size: int | None = None) -> pydicom.FileDataset:
    """``pydicom.dcmread`` without pydicom's warnings about malformed values (the checks name what matters);
    SliceError naming the file if it does not parse as DICOM."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return pydicom.dcmread(path, defer_size=defer_size)
    except Exception as exc:  # noqa: BLE001 - any parsing failure makes the file unusable
        raise SliceError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from None


def read_header(path: str | Path) -> SliceHeader:
    """Read and check one file's header without loading its pixel data; SliceError if unusable."""
    return parse_header(read_dataset(path, defer_size=_DEFER_BYTES), path)


def duplicate_instances(slices: Sequence) -> list[tuple[int, int]]:
    """(dropped, kept) index pairs for slices sharing an InstanceNumber (labels name slices by it).

    ``slices`` have ``path``, ``instance_number``, ``position``, ``row_dir`` and ``col_dir``. Of each
    group the slice whose file is named ``<InstanceNumber>.dcm`` (the Kaggle layout, which the
    label files refer to) is kept, else the first along the mean slice normal (then by file name).
    """
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(slices):
        groups.setdefault(s.instance_number, []).append(i)
    pairs = []
    for instance, members in groups.items():
        if len(members) < 2:
            continue
        normal = np.cross(np.mean([slices[i].row_dir for i in members], axis=0),
                          np.mean([slices[i].col_dir for i in members], axis=0))
        members = sorted(members, key=lambda i: (slices[i].path.stem != str(instance),
                                                 round(float(slices[i].position @ normal), 4), slices[i].path.name))
        pairs += [(i, members[0]) for i in members[1:]]
    return sorted(pairs)


def collect_slices(files: Sequence[Path], read: Callable[[Path], T]) -> tuple[list[T], list[str]]:
    """``read`` every file; return the usable results and ``"file: reason"`` for each file dropped.

    A file whose ``read`` raises SliceError is dropped, and so is every slice that repeats another's
    InstanceNumber except the one :func:`duplicate_instances` keeps. ``read`` returns objects with the
    attributes :func:`duplicate_instances` uses (:class:`SliceHeader` or the reader's slices).
    """
    kept, dropped = [], []
    for path in files:
        try:
            kept.append(read(path))
        except SliceError as exc:
            dropped.append(f"{Path(path).name}: {exc.reason}")
    duplicates = duplicate_instances(kept)
    for i, first in duplicates:
        dropped.append(f"{kept[i].path.name}: duplicate {tag_name('InstanceNumber')} {kept[i].instance_number}; "
                       f"kept {kept[first].path.name}")
    drop = {i for i, _ in duplicates}
    return [s for i, s in enumerate(kept) if i not in drop], dropped
