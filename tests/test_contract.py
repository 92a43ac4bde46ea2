"""Competition constants (row ids) and the data contract: loaders, their errors, ``validate_data``."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from kaggle_folder import make_tables, remove, write_folder, write_series

from rsna2024.constants import CONDITIONS, LEVELS, TARGET_COLUMNS, parse_row_id, row_id, study_row_ids
from rsna2024.data.contract import (
    list_image_folders,
    load_coordinates,
    load_labels_long,
    load_labels_wide,
    load_series_descriptions,
)
from rsna2024.data.validate import validate_data
from rsna2024.errors import DataError


# --------------------------------------------------------------------------- row ids
def test_row_id_round_trip_for_every_condition_and_level():
    for condition in CONDITIONS:
        for level in LEVELS:
            rid = row_id(44036939, condition, level)
            assert rid == f"44036939_{condition}_{level}"
            assert parse_row_id(rid) == (44036939, condition, level)


def test_row_id_accepts_the_coordinate_file_strings():
    assert row_id(7, "Left Neural Foraminal Narrowing", "L5/S1") == "7_left_neural_foraminal_narrowing_l5_s1"
    assert row_id(np.int64(7), "Spinal Canal Stenosis", "L1/L2") == "7_spinal_canal_stenosis_l1_l2"


def test_study_row_ids_follow_train_csv_columns():
    ids = study_row_ids(12)
    assert len(ids) == 25 and ids == [f"12_{t}" for t in TARGET_COLUMNS]
    assert [parse_row_id(r)[0] for r in ids] == [12] * 25


@pytest.mark.parametrize("bad", [
    "", "44036939", "abc_spinal_canal_stenosis_l1_l2", "-5_spinal_canal_stenosis_l1_l2",
    "44036939_spinal_canal_stenosis_l6_s1", "44036939_spinal_canal_stenosis", "44036939_spinal_stenosis_l1_l2",
    "44036939_spinal_canal_stenosisl1_l2", "44036939__spinal_canal_stenosis_l1_l2",
    "44036939_spinal_canal_stenosis_l1-l2",
])
def test_parse_row_id_rejects_malformed_ids(bad):
    with pytest.raises(ValueError, match="malformed row_id"):
        parse_row_id(bad)


@pytest.mark.parametrize("condition, level, problem", [("spinal", "l1_l2", "unknown condition"),
                                                       ("spinal_canal_stenosis", "L6/S1", "unknown level")])
def test_row_id_rejects_unknown_names(condition, level, problem):
    with pytest.raises(ValueError, match=problem):
        row_id(1, condition, level)


# --------------------------------------------------------------------------- loaders on a valid folder
def test_loaders_return_typed_tables_and_keep_missing_labels(tmp_path):
    tables = make_tables(6)
    tables["train.csv"].loc[2, "spinal_canal_stenosis_l4_l5"] = np.nan
    data = write_folder(tmp_path / "d", tables=tables)
    desc = load_series_descriptions(data)
    assert list(desc.columns) == ["study_id", "series_id", "series_description"]
    assert desc["study_id"].dtype == np.int64 and desc["series_id"].dtype == np.int64 and len(desc) == 18
    assert len(load_series_descriptions(data, "test")) == 3
    wide = load_labels_wide(data)
    assert wide.shape == (6, 26) and pd.isna(wide.loc[2, "spinal_canal_stenosis_l4_l5"])
    long = load_labels_long(data)
    assert len(long) == 150
    row = long[long["row_id"] == f"{wide.loc[2, 'study_id']}_spinal_canal_stenosis_l4_l5"].iloc[0]
    assert pd.isna(row["label"]) and row["label_index"] == -1  # stays missing, never Normal/Mild
    assert (long["label_index"] >= 0).sum() == 149
    coords = load_coordinates(data)
    assert len(coords) == 150 and coords["series_description"].notna().all()
    spinal = coords[coords["condition_key"] == "spinal_canal_stenosis"]
    assert (spinal["series_description"] == "Sagittal T2/STIR").all()
    assert coords["row_id"].iloc[0] == f"{coords['study_id'].iloc[0]}_spinal_canal_stenosis_l1_l2"


def test_list_image_folders_reads_names_only(tmp_path):
    data = write_folder(tmp_path / "d", n_studies=2, images=True)
    (data / "train_images" / "notes").mkdir()  # non-numeric folders are not studies
    listing = list_image_folders(data)
    assert len(listing) == 6 and (listing["n_files"] == 2).all()
    assert listing.dtypes.eq(np.int64).all()


# --------------------------------------------------------------------------- invalid input
def _drop_column(file, column):
    def edit(t):
        t[file] = t[file].drop(columns=column)
    return edit


def _set(file, row, column, value):
    def edit(t):
        t[file][column] = t[file][column].astype(object)
        t[file].loc[row, column] = value
    return edit


def _duplicate_coordinate(t):
    c = t["train_label_coordinates.csv"]
    t["train_label_coordinates.csv"] = pd.concat([c, c.iloc[[7]]], ignore_index=True)


INVALID = {
    "missing target column": (_drop_column("train.csv", "left_subarticular_stenosis_l3_l4"),
                              ["train.csv", "missing column", "left_subarticular_stenosis_l3_l4"]),
    "missing coordinate column": (_drop_column("train_label_coordinates.csv", "x"),
                                  ["train_label_coordinates.csv", "missing column", "'x'"]),
    "missing description column": (_drop_column("train_series_descriptions.csv", "series_description"),
                                   ["train_series_descriptions.csv", "missing column", "series_description"]),
    "unknown label": (_set("train.csv", 3, "spinal_canal_stenosis_l2_l3", "Mild"),
                      ["train.csv", "spinal_canal_stenosis_l2_l3", "Mild", "line(s) 5", "Normal/Mild"]),
    "unknown condition": (_set("train_label_coordinates.csv", 4, "condition", "Spinal Stenosis"),
                          ["train_label_coordinates.csv", "condition", "Spinal Stenosis", "line(s) 6",
                           "Spinal Canal Stenosis"]),
    "unknown level": (_set("train_label_coordinates.csv", 0, "level", "L5/L6"),
                      ["train_label_coordinates.csv", "level", "L5/L6", "line(s) 2", "L5/S1"]),
    "unknown series description": (_set("train_series_descriptions.csv", 1, "series_description", "Sagittal T2"),
                                   ["train_series_descriptions.csv", "Sagittal T2", "line(s) 3",
                                    "Sagittal T2/STIR"]),
    "duplicate coordinates": (_duplicate_coordinate,
                              ["train_label_coordinates.csv", "duplicate (study_id, condition, level)",
                               "1000/Left Neural Foraminal Narrowing/L3/L4", "line(s) 9, 152"]),
    "undescribed series": (_set("train_label_coordinates.csv", 2, "series_id", 424242),
                           ["train_label_coordinates.csv", "line(s) 4", "1000/424242", "does not describe"]),
    "non-integer study id": (_set("train.csv", 0, "study_id", "12a"),
                             ["train.csv", "'study_id' must hold integers", "line(s) 2", "12a"]),
    "repeated study": (_set("train.csv", 1, "study_id", 1000),
                       ["train.csv", "duplicate (study_id) 1000", "line(s) 2, 3"]),
    "non-finite x": (_set("train_label_coordinates.csv", 5, "x", "inf"),
                     ["train_label_coordinates.csv", "'x' must hold finite numbers", "line(s) 7"]),
}


# The loader that reads each file (the coordinates' loader reads the series descriptions first).
LOADER_OF_FILE = {"train.csv": load_labels_wide, "train_series_descriptions.csv": load_series_descriptions,
                  "train_label_coordinates.csv": load_coordinates}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_tables_raise_and_fail_validation(tmp_path, case):
    edit, expected = INVALID[case]
    tables = make_tables(6)
    edit(tables)
    data = write_folder(tmp_path / "d", tables=tables)
    with pytest.raises(DataError) as err:
        LOADER_OF_FILE[expected[0]](data)
    for piece in expected:
        assert piece in str(err.value), (piece, str(err.value))
    report = validate_data(data)
    assert not report.ok and any(expected[0] in e and expected[-1] in e for e in report.errors)
    assert "result: FAILED" in report.format()


def test_missing_file_is_named(tmp_path):
    data = write_folder(tmp_path / "d", n_studies=3)
    (data / "train_label_coordinates.csv").unlink()
    with pytest.raises(DataError, match="train_label_coordinates.csv: file not found"):
        load_coordinates(data)
    assert any("train_label_coordinates.csv: file not found" in e for e in validate_data(data).errors)


def test_study_folder_without_images_is_an_error_of_the_listing_and_a_warning_of_validate(tmp_path):
    data = write_folder(tmp_path / "d", n_studies=3, images=True)
    for series in (data / "train_images" / "1001").iterdir():
        for f in series.glob("*.dcm"):
            f.unlink()
    with pytest.raises(DataError, match=r"train_images: study folder\(s\) 1001 hold no images"):
        list_image_folders(data)
    assert list_image_folders(data, allow_empty_studies=True).groupby("study_id")["n_files"].sum().to_dict() == {
        1000: 6, 1001: 0, 1002: 6}
    report = validate_data(data)  # one broken study never ends the check of the others
    assert report.ok and "study folders under train_images without any .dcm file (1): 1001" in report.warnings
    assert "train images: 3 studies, 9 series, 12 .dcm files" in report.format()


def test_a_series_folder_without_images_is_only_a_warning(tmp_path):
    data = write_folder(tmp_path / "d", n_studies=3, images=True)
    for f in (data / "train_images" / "1001" / "10010").glob("*.dcm"):
        f.unlink()
    report = validate_data(data)
    assert report.ok and any("1001/10010" in w and "without a .dcm file" in w for w in report.warnings)


# --------------------------------------------------------------------------- validate_data
def test_validate_passes_with_images_and_ignores_unknown_files(tmp_path):
    data = write_folder(tmp_path / "d", n_studies=4, images=True)
    (data / "folds.csv").write_text("study_id,fold\n1000,0\n")
    (data / "phantom").mkdir()
    (data / "phantom" / "labels.csv").write_text("anything")
    (data / "cache").mkdir()
    report = validate_data(data)
    assert report.ok, report.format()
    assert report.warnings == []
    text = report.format()
    assert "studies: 4" in text and "train images: 4 studies, 12 series, 24 .dcm files" in text
    assert "test images: 1 studies, 3 series, 6 .dcm files" in text
    assert "missing labels: 0" in text and "problems found: none" in text and "result: OK" in text


def test_csv_only_folder_says_no_images_were_checked(tmp_path):
    report = validate_data(write_folder(tmp_path / "d", n_studies=3))
    assert report.ok
    assert "images: not checked" in report.format()


def test_real_data_inconsistencies_are_warnings(tmp_path):
    tables = make_tables(6)
    desc, coords, train = (tables[k] for k in ("train_series_descriptions.csv", "train_label_coordinates.csv",
                                                "train.csv"))
    # study 1002 lacks its Sagittal T1 series (and so the foraminal points on it)
    lost = desc[(desc["study_id"] == 1002) & (desc["series_description"] == "Sagittal T1")]["series_id"].iloc[0]
    tables["train_series_descriptions.csv"] = desc[desc["series_id"] != lost]
    coords = coords[coords["series_id"] != lost]
    coords = coords.drop(index=coords.index[:2])  # two labels without a point
    tables["train_label_coordinates.csv"] = coords
    train.loc[4, "left_subarticular_stenosis_l1_l2"] = np.nan  # a point without a label
    data = write_folder(tmp_path / "d", tables=tables)
    remove(data / "test_series_descriptions.csv")
    report = validate_data(data)
    assert report.ok, report.format()
    warnings = "\n".join(report.warnings)
    assert "studies without a Sagittal T1 series (1): 1002" in warnings
    assert "labels without a coordinate row (12)" in warnings  # 10 foraminal on the lost series + 2 dropped
    assert ("coordinate rows without a label (missing in train.csv) (1): 1004_left_subarticular_stenosis_l1_l2"
            in warnings)
    assert "test_series_descriptions.csv not found" in warnings
    assert "missing labels: 1 in 1 studies" in report.format()


def test_images_not_described_and_descriptions_without_images_are_warned(tmp_path):
    data = write_folder(tmp_path / "d", n_studies=2, images=True)
    remove(data / "train_images" / "1000" / "10000")
    row = pd.Series({"study_id": 1001, "series_id": 5, "series_description": "Axial T2"})
    write_series(data / "train_images" / "1001" / "5", row)
    report = validate_data(data)
    assert report.ok
    warnings = "\n".join(report.warnings)
    assert "described series without a folder under train_images (1): 1000/10000" in warnings
    assert "series folders under train_images not in train_series_descriptions.csv (1): 1001/5" in warnings


def test_missing_data_folder(tmp_path):
    report = validate_data(tmp_path / "nowhere")
    assert not report.ok and "data folder not found" in report.errors[0]
