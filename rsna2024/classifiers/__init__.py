"""Stage 2: 2.5D classifiers on regions of interest around the (true or predicted) label points.

Modules: :mod:`~rsna2024.classifiers.roi` (cutting regions in patient mm, slice windows, mirroring),
:mod:`~rsna2024.classifiers.samples` (points in mm, split and global sample tables),
:mod:`~rsna2024.classifiers.dataset` (the torch dataset over the cache),
:mod:`~rsna2024.classifiers.oof` (OOF files in submission format, prior fill, merging, scores).
"""
