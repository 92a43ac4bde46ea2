"""``rsna2024 validate``: check a Kaggle-layout data folder against the contract and summarise it.

Contract violations (see :mod:`rsna2024.data.contract`) are errors; inconsistencies that the real
competition data itself has (labels without a coordinate row, studies lacking a series type, ...)
are warnings. Files and folders the contract does not name (``folds.csv``, caches, ...) are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import pandas as pd

from rsna2024.constants import LABELS, SERIES_TYPES
from rsna2024.data.contract import (
    COORDINATES_FILE,
    images_dir,
    join_keys,
    labels_long,
    list_image_folders,
    load_coordinates,
    load_labels_wide,
    load_series_descriptions,
    series_descriptions_file,
    series_type_mismatches,
)
from rsna2024.errors import DataError
from rsna2024.utils.messages import count_and_examples

T = TypeVar("T")


@dataclass
class ValidationReport:
    """What :func:`validate_data` found: ``errors`` break the contract, ``warnings`` do not."""

    data_dir: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def attempt(self, load: Callable[[], T]) -> T | None:
        """Run a loader; record its DataError as an error and return None."""
        try:
            return load()
        except DataError as exc:
            self.errors.append(str(exc))
            return None

    def warn_if(self, items, message: str) -> None:
        """Add ``message`` with a count and the first few ``items`` as a warning when there are any."""
        items = list(items)
        if items:
            self.warnings.append(count_and_examples(message, items))

    def format(self) -> str:
        """The summary ``rsna2024 validate`` prints."""
        lines = [f"data folder: {self.data_dir}"]
        lines += [f"  {key}: {value}" for key, value in self.summary.items()]
        lines.append(f"warnings ({len(self.warnings)}):" if self.warnings else "warnings: none")
        lines += [f"  - {w}" for w in self.warnings]
        lines.append(f"problems found ({len(self.errors)}):" if self.errors else "problems found: none")
        lines += [f"  - {e}" for e in self.errors]
        lines.append("result: OK" if self.ok else "result: FAILED")
        return "\n".join(lines)


def _series_summary(descriptions: pd.DataFrame) -> str:
    counts = descriptions["series_description"].value_counts()
    return f"{len(descriptions)} in {descriptions['study_id'].nunique()} studies (" + ", ".join(
        f"{t} {int(counts.get(t, 0))}" for t in SERIES_TYPES) + ")"


def _check_labels(report: ValidationReport, long: pd.DataFrame) -> None:
    present = long[long["label_index"] >= 0]
    counts = present["label"].value_counts()
    missing = long[long["label_index"] < 0]
    report.summary["studies"] = f"{long['study_id'].nunique()} (train.csv)"
    report.summary["labels"] = f"{len(present)} present (" + ", ".join(
        f"{lab} {int(counts.get(lab, 0))}" for lab in LABELS) + ")"
    report.summary["missing labels"] = f"{len(missing)} in {missing['study_id'].nunique()} studies"


def _check_series(report: ValidationReport, long: pd.DataFrame | None, descriptions: pd.DataFrame) -> None:
    report.summary["series"] = _series_summary(descriptions)
    per_study = descriptions.groupby("study_id")["series_description"].agg(set)
    for series_type in SERIES_TYPES:
        report.warn_if(per_study.index[[series_type not in s for s in per_study]],
                       f"studies without a {series_type} series")
    if long is not None:
        labelled, described = set(long["study_id"]), set(descriptions["study_id"])
        report.warn_if(sorted(labelled - described), "studies of train.csv without a series description")
        report.warn_if(sorted(described - labelled), "studies of train_series_descriptions.csv not in train.csv")


def _check_coordinates(report: ValidationReport, long: pd.DataFrame | None, coords: pd.DataFrame) -> None:
    report.summary["coordinates"] = f"{len(coords)} points on {coords['series_id'].nunique()} series"
    mismatch = series_type_mismatches(coords)
    report.warn_if(mismatch["row_id"] + " on " + mismatch["series_description"],
                   "coordinate rows on a series type other than their condition's")
    if long is not None:
        labelled = set(long.loc[long["label_index"] >= 0, "row_id"])
        pointed = set(coords["row_id"])
        report.warn_if(sorted(labelled - pointed), "labels without a coordinate row")
        report.warn_if(sorted(pointed - labelled), "coordinate rows without a label (missing in train.csv)")


def _check_images(report: ValidationReport, split: str, descriptions: pd.DataFrame | None) -> bool:
    """Check ``<split>_images`` if present; returns whether it was there."""
    root = images_dir(report.data_dir, split)
    if not root.is_dir():
        return False
    listing = report.attempt(lambda: list_image_folders(report.data_dir, split))
    if listing is None:
        return True
    report.summary[f"{split} images"] = (f"{listing['study_id'].nunique()} studies, {len(listing)} series, "
                                         f"{int(listing['n_files'].sum())} .dcm files")
    report.warn_if(join_keys(listing[listing["n_files"] == 0], ["study_id", "series_id"]),
                   f"series folders under {root.name} without a .dcm file")
    if descriptions is not None:
        on_disk = set(zip(listing["study_id"], listing["series_id"]))
        described = set(zip(descriptions["study_id"], descriptions["series_id"]))
        report.warn_if([f"{a}/{b}" for a, b in sorted(described - on_disk)],
                       f"described series without a folder under {root.name}")
        report.warn_if([f"{a}/{b}" for a, b in sorted(on_disk - described)],
                       f"series folders under {root.name} not in {split}_series_descriptions.csv")
    return True


def validate_data(data_dir: str | Path) -> ValidationReport:
    """Check every contract file of ``data_dir`` (and the image tree when present) and summarise it."""
    data_dir = Path(data_dir)
    report = ValidationReport(data_dir)
    if not data_dir.is_dir():
        report.errors.append(f"{data_dir}: data folder not found")
        return report
    wide = report.attempt(lambda: load_labels_wide(data_dir))
    long = labels_long(wide) if wide is not None else None
    if long is not None:
        _check_labels(report, long)
    descriptions = report.attempt(lambda: load_series_descriptions(data_dir, "train"))
    if descriptions is not None:
        _check_series(report, long, descriptions)
        coords = report.attempt(lambda: load_coordinates(data_dir, descriptions))
        if coords is not None:
            _check_coordinates(report, long, coords)
    else:
        report.warnings.append(f"{COORDINATES_FILE} not checked: it needs valid train series descriptions")
    test = None
    if series_descriptions_file(data_dir, "test").is_file():
        test = report.attempt(lambda: load_series_descriptions(data_dir, "test"))
        if test is not None:
            report.summary["test series"] = _series_summary(test)
    else:
        report.warnings.append(f"{series_descriptions_file(data_dir, 'test').name} not found (test split not checked)")
    checked = [split for split, desc in (("train", descriptions), ("test", test)) if _check_images(report, split, desc)]
    if not checked:
        report.summary["images"] = "not checked (no train_images/ or test_images/ folder; CSV files only)"
    return report
