"""``rsna2024 validate``: check a Kaggle-layout data folder against the contract and summarise it.

Contract violations (see :mod:`rsna2024.data.contract`) are errors; inconsistencies that the real
competition data itself has (labels without a coordinate row, studies lacking a series type, ...)
are warnings. Files and folders the contract does not name (``folds.csv``, caches, ...) are ignored.

With ``images=True`` every DICOM header is read as well (no pixels; the checks of
:mod:`rsna2024.dicom.header`, the same the reader applies): a broken study is a warning naming the
study, series, file and tag, never an error, because the rest of the data stays usable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import pandas as pd
from tqdm import tqdm

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
from rsna2024.utils.messages import count_and_examples, describe_items

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


def _check_images(report: ValidationReport, split: str, descriptions: pd.DataFrame | None) -> pd.DataFrame | None:
    """Check the folder tree of ``<split>_images`` if present; return its listing (None if absent)."""
    root = images_dir(report.data_dir, split)
    if not root.is_dir():
        return None
    listing = report.attempt(lambda: list_image_folders(report.data_dir, split, allow_empty_studies=True))
    if listing is None:
        return None
    report.summary[f"{split} images"] = (f"{listing['study_id'].nunique()} studies, {len(listing)} series, "
                                         f"{int(listing['n_files'].sum())} .dcm files")
    files_per_study = listing.groupby("study_id")["n_files"].transform("sum")
    report.warn_if(sorted(listing.loc[files_per_study == 0, "study_id"].unique()),
                   f"study folders under {root.name} without any .dcm file")
    report.warn_if(join_keys(listing[(listing["n_files"] == 0) & (files_per_study > 0)], ["study_id", "series_id"]),
                   f"series folders under {root.name} without a .dcm file")
    if descriptions is not None:
        on_disk = set(zip(listing["study_id"], listing["series_id"]))
        described = set(zip(descriptions["study_id"], descriptions["series_id"]))
        report.warn_if([f"{a}/{b}" for a, b in sorted(described - on_disk)],
                       f"described series without a folder under {root.name}")
        report.warn_if([f"{a}/{b}" for a, b in sorted(on_disk - described)],
                       f"series folders under {root.name} not in {split}_series_descriptions.csv")
    return listing


def check_series_headers(folder: Path) -> tuple[dict[int, tuple[int, int]], list[str], int]:
    """Read a series folder's headers: (Rows, Columns) per usable InstanceNumber, ``"file: reason"``
    per problem (what the reader would drop, and slices misoriented against the rest), file count."""
    from rsna2024.dicom.header import collect_slices, read_header
    from rsna2024.dicom.orientation import misoriented_slices
    from rsna2024.dicom.reader import series_files

    try:
        files = series_files(folder)
    except OSError as exc:
        return {}, [f"the folder cannot be listed ({type(exc).__name__}: {exc})"], 0
    headers, problems = collect_slices(files, read_header)
    if headers:
        bad = misoriented_slices([h.row_dir for h in headers], [h.col_dir for h in headers])
        problems += [f"{headers[i].path.name}: {reason}" for i, reason in bad]
    return {h.instance_number: (h.rows, h.columns) for h in headers}, problems, len(files)


def _check_headers(report: ValidationReport, split: str, listing: pd.DataFrame, coords: pd.DataFrame | None,
                   workers: int) -> None:
    """Read every header under ``<split>_images``; warn per broken series and per impossible label point."""
    from joblib import Parallel, delayed

    root = images_dir(report.data_dir, split)
    keys = [(int(a), int(b)) for a, b in zip(listing["study_id"], listing["series_id"])]
    keys = [k for k, n in zip(keys, listing["n_files"]) if n > 0]
    jobs = (delayed(check_series_headers)(root / str(study) / str(series)) for study, series in keys)
    progress = dict(total=len(keys), desc=f"reading {root.name} headers", unit="series", leave=False,
                    disable=len(keys) < 100)
    if workers > 1 and len(keys) >= 100:  # starting worker processes costs more than a few series take
        results = list(tqdm(Parallel(n_jobs=workers, return_as="generator")(jobs), **progress))
    else:
        results = [fn(*a, **kw) for fn, a, kw in tqdm(jobs, **progress)]
    sizes = {}
    for (study, series), (slices, problems, n_files) in zip(keys, results):
        sizes[study, series] = slices
        if problems:
            what = f"{len(problems)} problem(s)" if slices else "no usable slice"
            report.warnings.append(f"{root.name}/{study}/{series}: {what} in {n_files} file(s): "
                                   + describe_items(problems))
    broken = sum(bool(r[1]) for r in results)
    report.summary[f"{split} image headers"] = (f"{sum(r[2] for r in results)} files in {len(keys)} series read; "
                                                f"{broken} series with problems")
    if coords is None:
        return
    missing, outside = [], []
    for r in coords.itertuples(index=False):
        slices = sizes.get((r.study_id, r.series_id))
        if slices is None:
            continue  # no images: warned above as a described series without a folder
        where = f"{r.row_id} on {r.study_id}/{r.series_id} instance {r.instance_number}"
        if r.instance_number not in slices:
            missing.append(where)
            continue
        rows, cols = slices[r.instance_number]
        if not (-0.5 <= r.x <= cols - 0.5 and -0.5 <= r.y <= rows - 0.5):
            outside.append(f"{where} at (x {r.x:g}, y {r.y:g}), image {cols} x {rows}")
    report.warn_if(missing, f"label points on an InstanceNumber their series lacks (or whose file is unusable) "
                            f"under {root.name}")
    report.warn_if(outside, f"label points outside their image (x beyond 0..Columns, y beyond 0..Rows, in pixel "
                            f"centres) under {root.name}")


def validate_data(data_dir: str | Path, images: bool = False, workers: int = 1) -> ValidationReport:
    """Check every contract file of ``data_dir`` (and the image tree when present) and summarise it.

    ``images`` also reads every DICOM header (``workers`` processes) and warns about each broken
    series and each label point outside its image or on a slice the series lacks.
    """
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
    coords = None
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
    checked = False
    for split, desc in (("train", descriptions), ("test", test)):
        checked |= images_dir(data_dir, split).is_dir()
        listing = _check_images(report, split, desc)
        if images and listing is not None:
            _check_headers(report, split, listing, coords if split == "train" else None, workers)
    if not checked:
        report.summary["images"] = "not checked (no train_images/ or test_images/ folder; CSV files only)"
    return report
