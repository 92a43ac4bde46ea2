"""The synthetic lumbar-spine phantom: anatomy in mm, slice rendering, DICOM and CSV writing.

Modules: ``anatomy`` (per-study spine model and true landmarks), ``labels`` (severity labels from
the real class frequencies), ``render`` (tissues sampled on a slice plane, T1/T2/STIR contrasts),
``series`` (slice plans of sagittal and axial stacks, placed and oriented variously per series),
``quirks`` (real-life series quirks and orientation variants), ``dicom_writer`` (one MR slice as real
DICOM), ``generate`` (the Kaggle-layout dataset writer: ``generate_dataset``), ``spread`` (how widely
label points spread over the image) and ``preview`` (a montage PNG of several studies).
"""
