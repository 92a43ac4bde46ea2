"""Write single MR slices as real DICOM files (MR Image Storage, 16-bit, full geometry tags).

Used by the phantom generator and by tests that need hand-made series with known geometry.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pydicom.valuerep import format_number_as_ds

_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's documented example root, for generated UIDs
_IMPLEMENTATION_UID = f"{_UID_ROOT}0.1"  # fixed: identical inputs give identical files


@dataclass(frozen=True)
class SliceGeometry:
    """Geometry of one slice in LPS patient mm.

    ``position`` is the centre of the first transmitted pixel (row 0, column 0); ``row_dir`` is
    the direction of increasing column index (x), ``col_dir`` that of increasing row index (y),
    as in DICOM's ImageOrientationPatient; ``spacing`` is (row spacing, column spacing) in mm.
    """

    position: Sequence[float]
    row_dir: Sequence[float]
    col_dir: Sequence[float]
    spacing: Sequence[float]
    thickness: float
    spacing_between_slices: float | None = None


def _ds(values: Sequence[float]) -> list[str]:
    """Decimal String values with as many digits as DS's 16 characters allow.

    Full precision keeps oblique direction cosines orthonormal to about 1e-13, so geometry computed
    from the headers matches the plan the pixels were rendered on.
    """
    return [format_number_as_ds(float(v)) for v in values]


def write_mr_slice(
    path: str | Path,
    pixels: np.ndarray,
    geometry: SliceGeometry,
    *,
    instance_number: int,
    series_description: str,
    study_id: int | str,
    series_id: int | str,
    study_uid: str | None = None,
    series_uid: str | None = None,
    rescale: tuple[float, float] | None = None,
    signed: bool = False,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Path:
    """Write ``pixels`` (rows x columns, stored integers) as one MR slice and return its path.

    ``rescale`` = (slope, intercept) adds RescaleSlope/RescaleIntercept; ``signed`` stores int16
    (PixelRepresentation 1) instead of uint16. UIDs default to values derived from the ids so the
    same study and series always get the same UIDs.
    """
    path = Path(path)
    arr = np.asarray(pixels)
    if arr.ndim != 2:
        raise ValueError(f"pixels must be 2-D (rows x columns), got shape {arr.shape}")
    arr = arr.astype(np.int16 if signed else np.uint16)
    study_uid = study_uid or f"{_UID_ROOT}1.{int(study_id)}"
    series_uid = series_uid or f"{_UID_ROOT}2.{int(study_id)}.{int(series_id)}"
    sop_uid = f"{series_uid}.{int(instance_number)}"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "MR"
    ds.PatientID = str(study_id)
    ds.StudyID = str(study_id)[-16:]
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = int(series_id) % 100000
    ds.SeriesDescription = series_description
    ds.InstanceNumber = int(instance_number)
    ds.FrameOfReferenceUID = f"{study_uid}.0"
    ds.ImagePositionPatient = _ds(geometry.position)
    ds.ImageOrientationPatient = _ds(list(geometry.row_dir) + list(geometry.col_dir))
    ds.PixelSpacing = _ds(geometry.spacing)
    ds.SliceThickness = _ds([geometry.thickness])[0]
    if geometry.spacing_between_slices is not None:
        ds.SpacingBetweenSlices = _ds([geometry.spacing_between_slices])[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    if rescale is not None:
        ds.RescaleSlope = _ds([rescale[0]])[0]
        ds.RescaleIntercept = _ds([rescale[1]])[0]
        ds.RescaleType = "US"
    ds.PixelData = arr.tobytes()
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax)  # needs an encoder plugin (e.g. RLE is native)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def read_back(path: str | Path) -> pydicom.Dataset:
    """Read a written slice (convenience for tests)."""
    return pydicom.dcmread(path)
