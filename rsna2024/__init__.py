"""rsna2024: a solution kit for the RSNA 2024 Lumbar Spine Degenerative Classification challenge.

From DICOM studies in Kaggle layout to a scored ``submission.csv``: DICOM ingestion with
patient-space geometry, a synthetic phantom dataset, the official metric, folds, keypoint and
region-of-interest models, out-of-fold evaluation, ensembling and Kaggle packaging.
"""
__version__ = "0.1.0"
