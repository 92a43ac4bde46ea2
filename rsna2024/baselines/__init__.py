"""Baselines that models must beat: the image-free prior today; image-based baselines join here."""
