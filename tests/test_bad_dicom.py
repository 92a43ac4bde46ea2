"""Bad DICOM input, one case at a time, on a copy of the phantom: each broken slice is named (file and
tag) by the reader, the cache index and ``validate --images``, and every other series is still processed."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from rsna2024.cli import main as cli_main
from rsna2024.data.validate import validate_data
from rsna2024.dicom import read_series
from rsna2024.dicom.cache import load_cache_index, preprocess
from rsna2024.errors import DicomError


def set_raw(path: Path, keyword: str, text: str) -> None:
    """Store ``text`` as the raw value of ``keyword`` (pydicom refuses to set malformed numbers)."""
    ds = pydicom.dcmread(path)
    tag = Tag(keyword)
    value = text.encode() + b" " * (len(text) % 2)
    ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)
    ds.save_as(path)


def raw(keyword: str, text: str):
    return lambda path: set_raw(path, keyword, text)


def edit(**values):
    def apply(path: Path) -> None:
        ds = pydicom.dcmread(path)
        for keyword, value in values.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value(ds) if callable(value) else value)
        ds.save_as(path)
    return apply


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])


# case -> (how a file is broken, what the message says)
CASES = {
    "nan position": (raw("ImagePositionPatient", "nan\\0\\0"),
                     "tag ImagePositionPatient (0020,0032) = [nan, 0.0, 0.0] is not finite"),
    "infinite orientation": (raw("ImageOrientationPatient", "inf\\0\\0\\0\\1\\0"),
                             "tag ImageOrientationPatient (0020,0037) = [inf, 0.0, 0.0, 0.0, 1.0, 0.0] is not finite"),
    "non-unit orientation": (raw("ImageOrientationPatient", "2\\0\\0\\0\\1\\0"),
                             "ImageOrientationPatient (0020,0037) = [2.0, 0.0, 0.0, 0.0, 1.0, 0.0]: the row direction "
                             "is not a unit vector (length 2)"),
    "non-orthogonal orientation": (raw("ImageOrientationPatient", "1\\0\\0\\0.6\\0.8\\0"),
                                   "the row and column directions are not orthogonal (cosine 0.6)"),
    "zero spacing": (raw("PixelSpacing", "0\\0.5"), "tag PixelSpacing (0028,0030) = [0.0, 0.5] is zero or negative"),
    "negative spacing": (raw("PixelSpacing", "-0.5\\0.5"),
                         "tag PixelSpacing (0028,0030) = [-0.5, 0.5] is zero or negative"),
    "nan spacing": (raw("PixelSpacing", "nan\\0.5"), "tag PixelSpacing (0028,0030) = [nan, 0.5] is not finite"),
    "one spacing value": (raw("PixelSpacing", "0.5"), "tag PixelSpacing (0028,0030) has 1 value(s), expected 2"),
    "missing position": (edit(ImagePositionPatient=None), "missing tag ImagePositionPatient (0020,0032)"),
    "non-numeric RescaleSlope": (raw("RescaleSlope", "abc"), "tag RescaleSlope (0028,1053) = 'abc' is not numeric"),
    "zero RescaleSlope": (raw("RescaleSlope", "0"), "tag RescaleSlope (0028,1053) = 0"),
    "overflowing RescaleSlope": (raw("RescaleSlope", "1e300"), "take 16-bit values beyond float32"),
    "non-numeric RescaleIntercept": (raw("RescaleIntercept", "-1O0"),
                                     "tag RescaleIntercept (0028,1052) = '-1O0' is not numeric"),
    "non-numeric InstanceNumber": (raw("InstanceNumber", "x1"), "tag InstanceNumber (0020,0013) = 'x1' is not numeric"),
    "non-integer InstanceNumber": (raw("InstanceNumber", "2.5"),
                                   "tag InstanceNumber (0020,0013) = 2.5 is not an integer"),
    "rows x columns beyond the pixel data": (edit(Rows=lambda ds: ds.Rows * 2),
                                             "tag PixelData (7FE0,0010) holds"),
    "truncated file": (truncate, "tag PixelData (7FE0,0010) holds"),
    "multi-frame": (edit(NumberOfFrames=2), "expected one grayscale frame; NumberOfFrames (0028,0008) = 2"),
    "not DICOM": (lambda path: path.write_bytes(b"not a dicom file"), "unreadable DICOM file"),
}


@pytest.fixture
def data(phantom_dir, tmp_path) -> Path:
    """A private copy of two training studies of the session phantom (CSV rows and images)."""
    out = tmp_path / "data"
    studies = sorted(pd.read_csv(phantom_dir / "train.csv")["study_id"])[:2]
    for name in ("train.csv", "train_series_descriptions.csv", "train_label_coordinates.csv"):
        table = pd.read_csv(phantom_dir / name)
        out.mkdir(exist_ok=True)
        table[table["study_id"].isin(studies)].to_csv(out / name, index=False)
    for study in studies:
        shutil.copytree(phantom_dir / "train_images" / str(study), out / "train_images" / str(study))
    return out


def pick_series(data: Path) -> tuple[tuple[int, int, Path], tuple[int, int]]:
    """(study, series, an unlabelled file) of a series of the first study with 3+ files, and a series of
    another study."""
    desc = pd.read_csv(data / "train_series_descriptions.csv")
    coords = pd.read_csv(data / "train_label_coordinates.csv")
    studies = sorted(desc["study_id"].unique())
    for row in desc[desc["study_id"] == studies[0]].itertuples():
        folder = data / "train_images" / str(row.study_id) / str(row.series_id)
        labelled = set(coords.loc[coords["series_id"] == row.series_id, "instance_number"])
        free = [p for p in sorted(folder.glob("*.dcm")) if int(p.stem) not in labelled]
        if len(list(folder.glob("*.dcm"))) >= 3 and free:
            other = desc[desc["study_id"] == studies[1]].iloc[0]
            return (row.study_id, row.series_id, free[0]), (int(other.study_id), int(other.series_id))
    raise AssertionError("the phantom has no series to break")


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_slice_is_named_and_every_other_series_is_processed(data, tmp_path, case, caplog):
    break_file, message = CASES[case]
    (study, series, victim), (study2, series2) = pick_series(data)
    break_file(victim)
    broken = data / "train_images" / str(study2) / str(series2)
    for path in broken.glob("*.dcm"):  # a whole series of another study broken the same way
        break_file(path)
    n_files = len(list(victim.parent.glob("*.dcm")))

    # the reader drops the slice with a warning naming the file and the tag; the cache keeps the other
    # slices of that series, records the broken series' cause and processes every other series
    with caplog.at_level(logging.WARNING):
        index_path = preprocess(data, cache_root=tmp_path / "cache")
    assert any(str(victim) in r.getMessage() and message in r.getMessage() for r in caplog.records), caplog.text
    index = load_cache_index(index_path).set_index(["study_id", "series_id"])
    assert index.loc[(study, series), ["status", "n_slices", "dropped_slices"]].tolist() == ["ok", n_files - 1, 1]
    record = json.loads((index_path.parent / "series" / str(study) / f"{series}.json").read_text())
    assert len(record["dropped"]) == 1 and record["dropped"][0].startswith(f"{victim.name}: ")
    assert message in record["dropped"][0]
    assert index.loc[(study2, series2), "status"] == "failed"
    assert index.loc[(study2, series2), "error"].startswith(f"DicomError: series {study2}/{series2}")
    assert message in index.loc[(study2, series2), "error"]
    others = index.drop(index=[(study2, series2)])
    assert (others["status"] == "ok").all() and len(others) == len(index) - 1
    assert others["dropped_slices"].sum() == 1

    # validate --images: a warning per broken series naming study, series, file and tag; nothing else
    report = validate_data(data, images=True)
    assert report.ok, report.format()
    flagged = sorted(w for w in report.warnings if w.startswith("train_images/"))
    assert len(flagged) == 2, report.format()
    one = next(w for w in flagged if w.startswith(f"train_images/{study}/{series}: "))
    assert one.startswith(f"train_images/{study}/{series}: 1 problem(s) in {n_files} file(s): {victim.name}: ")
    assert message in one
    whole = next(w for w in flagged if w.startswith(f"train_images/{study2}/{series2}: "))
    assert whole.startswith(f"train_images/{study2}/{series2}: no usable slice in ") and message in whole
    assert "2 series with problems" in report.summary["train image headers"]


def test_a_series_without_a_usable_slice_is_a_reader_error_naming_the_folder(data):
    _, (study2, series2) = pick_series(data)
    folder = data / "train_images" / str(study2) / str(series2)
    for path in folder.glob("*.dcm"):
        set_raw(path, "PixelSpacing", "0\\0")
    with pytest.raises(DicomError, match=rf"series {study2}/{series2}: no readable DICOM slice with valid geometry in "
                                         rf"{folder} \(\d+ file\(s\) dropped, e.g. .*PixelSpacing \(0028,0030\)"):
        read_series(folder)


def test_duplicate_instance_number_keeps_the_file_named_for_it(data, tmp_path, caplog):
    (study, series, victim), _ = pick_series(data)
    folder = victim.parent
    keep = sorted(folder.glob("*.dcm"), key=lambda p: int(p.stem))[-1]  # the copy claims this file's number
    edit(InstanceNumber=int(keep.stem))(victim)
    with caplog.at_level(logging.WARNING):
        s = read_series(folder)
    message = f"{victim.name}: duplicate InstanceNumber (0020,0013) {keep.stem}; kept {keep.name}"
    assert s.dropped == [message] and message in caplog.text
    assert int(keep.stem) in s.instance_numbers and len(s.instance_numbers) == len(list(folder.glob("*.dcm"))) - 1
    ds = pydicom.dcmread(keep)
    expected = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    np.testing.assert_allclose(s.pixels[s.index_of(int(keep.stem))], expected, rtol=1e-6)
    index = load_cache_index(preprocess(data, cache_root=tmp_path / "cache"))
    assert (index["status"] == "ok").all() and index["dropped_slices"].sum() == 1
    report = validate_data(data, images=True)
    assert [w for w in report.warnings if w.startswith("train_images/")] == [
        f"train_images/{study}/{series}: 1 problem(s) in {len(list(folder.glob('*.dcm')))} file(s): {message}"]


def test_misoriented_slice_is_reported_by_validate(data):
    (study, series, victim), _ = pick_series(data)
    ds = pydicom.dcmread(victim)
    row, col = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
    normal = np.cross(row, col)
    edit(ImageOrientationPatient=[f"{v:.6f}" for v in [*normal, *col]])(victim)  # turned 90 degrees
    report = validate_data(data, images=True)
    flagged = [w for w in report.warnings if w.startswith("train_images/")]
    assert len(flagged) == 1 and flagged[0].startswith(f"train_images/{study}/{series}: 1 problem(s)")
    assert f"{victim.name}: its slice normal is 90.0 degrees from the series' median" in flagged[0]


def test_label_points_outside_the_image_or_on_a_missing_slice_are_warned(data):
    coords = pd.read_csv(data / "train_label_coordinates.csv")
    coords.loc[0, "x"] = 5000.0
    coords.loc[1, "instance_number"] = 9999
    coords.to_csv(data / "train_label_coordinates.csv", index=False)
    report = validate_data(data, images=True)
    assert report.ok
    text = "\n".join(report.warnings)
    first, second = coords.iloc[0], coords.iloc[1]
    assert ("label points outside their image (x beyond 0..Columns, y beyond 0..Rows, in pixel centres) under "
            "train_images (1): ") in text
    assert f"on {first.study_id}/{first.series_id} instance {first.instance_number} at (x 5000, y {first.y:g})" in text
    assert (f"label points on an InstanceNumber their series lacks (or whose file is unusable) under train_images (1): "
            f"{second.study_id}_") in text and f"on {second.study_id}/{second.series_id} instance 9999" in text
    assert "0 series with problems" in report.summary["train image headers"]


def test_validate_images_through_the_cli_warns_and_goes_on(data, capsys):
    (study, series, victim), _ = pick_series(data)
    raw("PixelSpacing", "0\\0")(victim)
    empty = data / "train_images" / "123" / "456"
    empty.mkdir(parents=True)
    assert cli_main(["validate", "--data", str(data), "--images"]) == 0
    out = capsys.readouterr().out
    assert f"train_images/{study}/{series}: 1 problem(s)" in out and victim.name in out and "PixelSpacing" in out
    assert "study folders under train_images without any .dcm file (1): 123" in out
    assert "series folders under train_images not in train_series_descriptions.csv (1): 123/456" in out
    assert "result: OK" in out
    assert cli_main(["validate", "--data", str(data)]) == 0  # without --images no header is read
    assert "image headers" not in capsys.readouterr().out
