"""DICOM series ingestion with patient-space geometry, and the preprocessing cache.

``read_series(folder)`` is the one entry point for reading DICOM and returns canonical series
(``rsna2024.dicom.orientation``); later stages read the cache
(``rsna2024.dicom.cache.load_cached_series``) and ask ``rsna2024.dicom.geometry`` for slices and ROIs.
"""
from rsna2024.dicom.orientation import Orientation
from rsna2024.dicom.reader import read_series
from rsna2024.dicom.series import Projection, Series, StoredGeometry, canonicalize

__all__ = ["Orientation", "Projection", "Series", "StoredGeometry", "canonicalize", "read_series"]
