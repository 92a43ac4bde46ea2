"""DICOM series ingestion with patient-space geometry, and the preprocessing cache."""
