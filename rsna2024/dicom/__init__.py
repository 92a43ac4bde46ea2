"""DICOM series ingestion with patient-space geometry, and the preprocessing cache.

``read_series(folder)`` is the one entry point for reading DICOM; later stages read the cache
(``rsna2024.dicom.cache.load_cached_series``) and ask ``rsna2024.dicom.geometry`` for slices and ROIs.
"""
from rsna2024.dicom.reader import read_series
from rsna2024.dicom.series import Projection, Series

__all__ = ["Projection", "Series", "read_series"]
