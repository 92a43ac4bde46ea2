"""Competition constants: conditions, levels, series types, labels and row ids.

Everything else in the package spells these names through this module, so the
strings of the competition's CSV files live in exactly one place.
"""
from __future__ import annotations

# Conditions in the column order of ``train.csv`` (snake case, as in row ids).
CONDITIONS: tuple[str, ...] = (
    "spinal_canal_stenosis",
    "left_neural_foraminal_narrowing",
    "right_neural_foraminal_narrowing",
    "left_subarticular_stenosis",
    "right_subarticular_stenosis",
)
# The strings of ``train_label_coordinates.csv``'s ``condition`` column.
CONDITION_NAMES: dict[str, str] = {
    "spinal_canal_stenosis": "Spinal Canal Stenosis",
    "left_neural_foraminal_narrowing": "Left Neural Foraminal Narrowing",
    "right_neural_foraminal_narrowing": "Right Neural Foraminal Narrowing",
    "left_subarticular_stenosis": "Left Subarticular Stenosis",
    "right_subarticular_stenosis": "Right Subarticular Stenosis",
}
CONDITION_FROM_NAME: dict[str, str] = {v: k for k, v in CONDITION_NAMES.items()}

# Each condition seen in the patient's left-right mirror: left and right swap, the spinal canal stays.
MIRRORED_CONDITION: dict[str, str] = {
    c: c.replace("left_", "right_", 1) if c.startswith("left_") else c.replace("right_", "left_", 1)
    for c in CONDITIONS
}

# The metric's three condition groups (left and right sides are scored together).
CONDITION_GROUPS: dict[str, tuple[str, ...]] = {
    "spinal": ("spinal_canal_stenosis",),
    "foraminal": ("left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing"),
    "subarticular": ("left_subarticular_stenosis", "right_subarticular_stenosis"),
}
GROUP_OF_CONDITION: dict[str, str] = {c: g for g, cs in CONDITION_GROUPS.items() for c in cs}

LEVELS: tuple[str, ...] = ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")
# The strings of ``train_label_coordinates.csv``'s ``level`` column.
LEVEL_NAMES: dict[str, str] = {
    "l1_l2": "L1/L2",
    "l2_l3": "L2/L3",
    "l3_l4": "L3/L4",
    "l4_l5": "L4/L5",
    "l5_s1": "L5/S1",
}
LEVEL_FROM_NAME: dict[str, str] = {v: k for k, v in LEVEL_NAMES.items()}

# Severity labels as written in ``train.csv`` and the submission's probability columns.
LABELS: tuple[str, ...] = ("Normal/Mild", "Moderate", "Severe")
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(LABELS)}
PRED_COLUMNS: tuple[str, ...] = ("normal_mild", "moderate", "severe")
# The metric's sample weights per class (normal_mild, moderate, severe).
CLASS_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 4.0)

# Series descriptions of ``*_series_descriptions.csv``.
SAGITTAL_T1 = "Sagittal T1"
SAGITTAL_T2 = "Sagittal T2/STIR"
AXIAL_T2 = "Axial T2"
SERIES_TYPES: tuple[str, ...] = (SAGITTAL_T1, SAGITTAL_T2, AXIAL_T2)
# Which series type radiologists marked each condition on.
CONDITION_SERIES: dict[str, str] = {
    "spinal_canal_stenosis": SAGITTAL_T2,
    "left_neural_foraminal_narrowing": SAGITTAL_T1,
    "right_neural_foraminal_narrowing": SAGITTAL_T1,
    "left_subarticular_stenosis": AXIAL_T2,
    "right_subarticular_stenosis": AXIAL_T2,
}

# The 25 target columns of ``train.csv``, in file order.
TARGET_COLUMNS: tuple[str, ...] = tuple(f"{c}_{lv}" for c in CONDITIONS for lv in LEVELS)

# The competition's files (Kaggle layout) and their columns; the data contract reads them, the phantom writes them.
SPLITS: tuple[str, ...] = ("train", "test")
LABELS_FILE = "train.csv"
COORDINATES_FILE = "train_label_coordinates.csv"
SAMPLE_SUBMISSION_FILE = "sample_submission.csv"
SERIES_DESCRIPTIONS_FILE = "{split}_series_descriptions.csv"  # .format(split=...)
IMAGES_DIR = "{split}_images"  # .format(split=...): <study_id>/<series_id>/<instance_number>.dcm
SERIES_COLUMNS: tuple[str, ...] = ("study_id", "series_id", "series_description")
COORDINATE_COLUMNS: tuple[str, ...] = ("study_id", "series_id", "instance_number", "condition", "level", "x", "y")
SUBMISSION_COLUMNS: tuple[str, ...] = ("row_id", *PRED_COLUMNS)

# Real-data class frequencies per target (Normal/Mild, Moderate, Severe), measured on the
# competition's train.csv (1,975 studies). The phantom draws its labels from these.
REAL_CLASS_FREQUENCIES: dict[str, tuple[float, float, float]] = {
    "spinal_canal_stenosis_l1_l2": (0.9554, 0.0339, 0.0106),
    "spinal_canal_stenosis_l2_l3": (0.8967, 0.0765, 0.0268),
    "spinal_canal_stenosis_l3_l4": (0.8217, 0.1165, 0.0618),
    "spinal_canal_stenosis_l4_l5": (0.7508, 0.1201, 0.1292),
    "spinal_canal_stenosis_l5_s1": (0.9645, 0.0258, 0.0096),
    "left_neural_foraminal_narrowing_l1_l2": (0.9671, 0.0319, 0.0010),
    "left_neural_foraminal_narrowing_l2_l3": (0.9078, 0.0867, 0.0056),
    "left_neural_foraminal_narrowing_l3_l4": (0.7714, 0.2083, 0.0203),
    "left_neural_foraminal_narrowing_l4_l5": (0.6102, 0.3188, 0.0710),
    "left_neural_foraminal_narrowing_l5_s1": (0.6320, 0.2636, 0.1044),
    "right_neural_foraminal_narrowing_l1_l2": (0.9614, 0.0320, 0.0066),
    "right_neural_foraminal_narrowing_l2_l3": (0.9115, 0.0854, 0.0031),
    "right_neural_foraminal_narrowing_l3_l4": (0.7687, 0.2105, 0.0208),
    "right_neural_foraminal_narrowing_l4_l5": (0.6141, 0.3198, 0.0661),
    "right_neural_foraminal_narrowing_l5_s1": (0.6512, 0.2522, 0.0966),
    "left_subarticular_stenosis_l1_l2": (0.9332, 0.0514, 0.0155),
    "left_subarticular_stenosis_l2_l3": (0.8214, 0.1347, 0.0438),
    "left_subarticular_stenosis_l3_l4": (0.6714, 0.2302, 0.0984),
    "left_subarticular_stenosis_l4_l5": (0.4498, 0.3164, 0.2338),
    "left_subarticular_stenosis_l5_s1": (0.7169, 0.2082, 0.0748),
    "right_subarticular_stenosis_l1_l2": (0.9261, 0.0606, 0.0132),
    "right_subarticular_stenosis_l2_l3": (0.8331, 0.1284, 0.0386),
    "right_subarticular_stenosis_l3_l4": (0.6700, 0.2301, 0.0998),
    "right_subarticular_stenosis_l4_l5": (0.4516, 0.3153, 0.2331),
    "right_subarticular_stenosis_l5_s1": (0.7109, 0.2012, 0.0879),
}


def row_id(study_id: int, condition: str, level: str) -> str:
    """Build a submission ``row_id`` such as ``44036939_spinal_canal_stenosis_l3_l4``.

    ``condition`` and ``level`` may be given in snake case or as the coordinate file's
    strings ("Spinal Canal Stenosis", "L3/L4").
    """
    condition = CONDITION_FROM_NAME.get(condition, condition)
    level = LEVEL_FROM_NAME.get(level, level)
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; expected one of {list(CONDITIONS)}")
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {list(LEVELS)}")
    return f"{int(study_id)}_{condition}_{level}"


def parse_row_id(rid: str) -> tuple[int, str, str]:
    """Split a ``row_id`` into ``(study_id, condition, level)``; conditions contain underscores."""
    study, sep, rest = str(rid).partition("_")
    level = rest[-5:]
    condition = rest[:-6]
    if not sep or not study.isdigit() or level not in LEVELS or rest[-6:-5] != "_" or condition not in CONDITIONS:
        raise ValueError(
            f"malformed row_id {rid!r}: expected '<study_id>_<condition>_<level>' with a condition "
            f"from {list(CONDITIONS)} and a level from {list(LEVELS)}"
        )
    return int(study), condition, level


def study_row_ids(study_id: int) -> list[str]:
    """The 25 row ids of one study, in ``train.csv`` column order."""
    return [f"{int(study_id)}_{t}" for t in TARGET_COLUMNS]
