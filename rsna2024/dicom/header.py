"""One DICOM slice's header, checked and parsed: the single implementation of every per-slice check,
shared by the reader (which drops a bad slice with a warning) and ``rsna2024 validate --images``
(which reports it without decoding any pixels).

A slice is unusable (:class:`SliceError`, naming the file and the tag) when:

- a geometry tag (:data:`GEOMETRY_TAGS`) is missing, not numeric or not finite;
- PixelSpacing is zero or negative;
- an ImageOrientationPatient vector is not unit length or the two are not orthogonal
  (tolerance :data:`DIRECTION_TOLERANCE`);
- InstanceNumber is not an integer;
- RescaleSlope/RescaleIntercept are present but not finite numbers, the slope is 0, or they scale
  the stored values beyond float32;
- it is not one grayscale frame, or Rows/Columns are not positive integers;
- its PixelData is shorter than Rows x Columns x BitsAllocated needs (native transfer syntaxes;
  compressed data is checked when decoded).
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
# A slice whose normal or row direction lies farther than this from its series' median is misoriented.
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
    slope: float
    intercept: float
    rows: int
    columns: int
    description: str


def tag_name(keyword: str) -> str:
    """``'PixelSpacing (0028,0030)'``: a tag's keyword and number, for messages."""
    t = Tag(keyword)
    return f"{keyword} ({t.group:04X},{t.element:04X})"


def _numbers(ds: pydicom.Dataset, keyword: str, count: int, path: Path, required: bool = True) -> np.ndarray | None:
    """The ``count`` finite numbers of tag ``keyword``; None if absent and not ``required``."""
    try:
        with warnings.catch_warnings():  # pydicom warns about a malformed number; the SliceError below says it
            warnings.simplefilter("ignore", UserWarning)
            value = ds.get(keyword)
    except Exception as exc:  # noqa: BLE001 - pydicom may fail converting a malformed value
        raise SliceError(path, f"tag {tag_name(keyword)} cannot be read ({type(exc).__name__}: {exc})") from None
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


def _pixel_data_problem(ds: pydicom.Dataset, rows: int, columns: int, path: Path) -> str | None:
    """Why the stored PixelData cannot hold one Rows x Columns frame, or None (not checkable: compressed)."""
    element = ds.get_item("PixelData", keep_deferred=True)
    if element is None:
        return f"missing tag {tag_name('PixelData')}"
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    deferred = isinstance(element, RawDataElement) and element.value is None
    if (syntax is not None and syntax.is_compressed) or (deferred and element.length == 0xFFFFFFFF):
        return None  # encapsulated: checked when decoded
    if deferred:  # the value stayed on disk, and the file may end before it does
        length = min(element.length, path.stat().st_size - element.value_tell)
    else:
        length = len(element.value or b"")
    bits = ds.get("BitsAllocated")
    if not isinstance(bits, int) or bits not in (1, 8, 16, 32, 64):
        return f"tag {tag_name('BitsAllocated')} = {bits!r} is not 1, 8, 16, 32 or 64"
    expected = (rows * columns * bits + 7) // 8
    if length < expected:  # longer is trailing padding, which decoders ignore
        return (f"tag {tag_name('PixelData')} holds {length} bytes, but Rows x Columns = {rows} x {columns} at "
                f"{bits} bits needs {expected}")
    return None


def parse_header(ds: pydicom.Dataset, path: str | Path) -> SliceHeader:
    """Check and parse the header of one slice (read fully or with deferred pixel data); SliceError
    naming the file and the tag if the slice is unusable (see the module docstring)."""
    path = Path(path)
    frames = ds.get("NumberOfFrames", 1) or 1
    samples = ds.get("SamplesPerPixel", 1)
    if str(frames).strip() not in ("1", "") or samples != 1:
        raise SliceError(path, f"expected one grayscale frame; {tag_name('NumberOfFrames')} = {frames}, "
                               f"{tag_name('SamplesPerPixel')} = {samples}")
    size = {}
    for keyword in ("Rows", "Columns"):
        value = ds.get(keyword)
        if not isinstance(value, int) or value <= 0:
            raise SliceError(path, f"tag {tag_name(keyword)} = {value!r} is not a positive integer")
        size[keyword] = value
    problem = _pixel_data_problem(ds, size["Rows"], size["Columns"], path)
    if problem:
        raise SliceError(path, problem)
    instance = _numbers(ds, "InstanceNumber", 1, path)[0]
    if instance != round(instance):
        raise SliceError(path, f"tag {tag_name('InstanceNumber')} = {instance:g} is not an integer")
    spacing = _numbers(ds, "PixelSpacing", 2, path)
    if (spacing <= 0).any():
        raise SliceError(path, f"tag {tag_name('PixelSpacing')} = {spacing.tolist()} is zero or negative")
    row_dir, col_dir = _directions(ds, path)
    slope = _numbers(ds, "RescaleSlope", 1, path, required=False)
    if slope is not None and slope[0] == 0:
        raise SliceError(path, f"tag {tag_name('RescaleSlope')} = 0")
    slope = 1.0 if slope is None else float(slope[0])
    intercept = _numbers(ds, "RescaleIntercept", 1, path, required=False)
    intercept = 0.0 if intercept is None else float(intercept[0])
    bits = ds.get("BitsStored") or ds.get("BitsAllocated") or 16
    if abs(slope) * 2.0 ** int(bits) + abs(intercept) > float(np.finfo(np.float32).max):
        raise SliceError(path, f"tags {tag_name('RescaleSlope')} = {slope:g} and {tag_name('RescaleIntercept')} = "
                               f"{intercept:g} take {bits}-bit values beyond float32")
    return SliceHeader(
        path=path, instance_number=int(instance), position=_numbers(ds, "ImagePositionPatient", 3, path),
        row_dir=row_dir, col_dir=col_dir, spacing=spacing, slope=slope, intercept=intercept,
        rows=size["Rows"], columns=size["Columns"], description=str(ds.get("SeriesDescription", "")),
    )


def read_header(path: str | Path) -> SliceHeader:
    """Read and check one file's header without loading its pixel data; SliceError if unusable."""
    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
    except Exception as exc:  # noqa: BLE001 - any parsing failure makes the file unusable
        raise SliceError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from None
    return parse_header(ds, path)


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
