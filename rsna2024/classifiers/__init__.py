"""Stage 2: 2.5D classifiers on regions of interest around the (true or predicted) label points.

Modules: :mod:`~rsna2024.classifiers.roi` (cutting regions in patient mm, slice windows, mirroring),
:mod:`~rsna2024.classifiers.samples` (points in mm, split and global sample tables),
:mod:`~rsna2024.classifiers.dataset` (the torch dataset over the cache),
:mod:`~rsna2024.classifiers.oof` (OOF files in submission format, prior fill, merging, scores),
:mod:`~rsna2024.classifiers.models` (the 2.5D models ``roi25d*`` of the registry),
:mod:`~rsna2024.classifiers.tasks` (the tasks ``split_spinal``, ``split_foraminal``,
``split_subarticular`` and ``global``).
"""
from rsna2024.classifiers import tasks  # noqa: E402,F401  (registers the tasks split_* and global)
