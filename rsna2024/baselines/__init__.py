"""Baselines that models must beat, and the table that ranks every run on the same folds.

Modules: :mod:`~rsna2024.baselines.prior` (the image-free prior), :mod:`~rsna2024.baselines.data` (the images
the seed baselines see, by documented rules), :mod:`~rsna2024.baselines.models` (their models in the registry),
:mod:`~rsna2024.baselines.tasks` (the tasks ``s0_image_classifier``, ``s1_condition_cnn``,
``s2_level_embedding``, ``s3_coordinate_resnet``) and :mod:`~rsna2024.baselines.compare` (``rsna2024 compare``).
The registries import ``models`` and ``tasks`` on first lookup (``MODEL_MODULES``, ``TASK_MODULES``), so
importing the prior alone stays light (no torch).
"""
