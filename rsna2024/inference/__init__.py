"""Inference: :mod:`~rsna2024.inference.predict` (``rsna2024 predict``: stage-1 points and classifier predictions
for a split, blended into ``submission.csv``), :mod:`~rsna2024.inference.ensemble` (the weights file), OOF
evaluation."""
