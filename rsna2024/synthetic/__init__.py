"""The synthetic lumbar-spine phantom: anatomy in mm, slice rendering, DICOM and CSV writing."""
