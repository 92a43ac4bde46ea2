"""Stage 1: keypoint models, one heatmap model per series type, and the predicted coordinates stage 2 reads.

Modules: ``heatmaps`` (Gaussian targets, sub-pixel decoding, masked MSE), ``augment`` (train-time
augmentation), ``studies`` (a split's cached series per study), ``samples`` (slices and targets of a sample per
series type), ``datasets`` (the torch dataset), ``predict`` (model output -> stored and patient points),
``tasks`` (the registered tasks ``keypoint_sagt2``, ``keypoint_sagt1``, ``keypoint_axial``), ``coords``
(``rsna2024 coords``), ``report`` (``rsna2024 keypoint-report``), ``baseline`` (the image-free mean-position
baseline). Importing the package registers the tasks.
"""
from rsna2024.keypoints import tasks  # noqa: F401  (registers the keypoint tasks)
