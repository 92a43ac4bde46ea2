"""The phantom dataset as written: Kaggle layout, real DICOM, geometry round trip, quirks, validation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import PHANTOM_TEST_STUDIES, PHANTOM_TRAIN_STUDIES

from rsna2024.constants import (
    AXIAL_T2,
    CONDITION_FROM_NAME,
    CONDITION_NAMES,
    LABELS,
    LEVEL_FROM_NAME,
    LEVEL_NAMES,
    LEVELS,
    SAGITTAL_T1,
    SAGITTAL_T2,
    SERIES_TYPES,
    TARGET_COLUMNS,
    study_row_ids,
)
from rsna2024.synthetic.anatomy import STRUCTURES
from rsna2024.synthetic.generate import generate_dataset

REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture(scope="module")
def headers(phantom_dir) -> pd.DataFrame:
    """One row per written file: ids from the path, geometry and size from the header (pixels decoded)."""
    rows = []
    for path in sorted(phantom_dir.glob("*_images/*/*/*.dcm")):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        iop = np.array(ds.ImageOrientationPatient, float)
        rows.append(dict(
            split=path.parts[-4].split("_")[0], study_id=int(path.parts[-3]), series_id=int(path.parts[-2]),
            file=path.name, instance=int(ds.InstanceNumber), description=str(ds.SeriesDescription),
            rows=int(ds.Rows), cols=int(ds.Columns), shape=pixels.shape, dtype=str(pixels.dtype),
            position=np.array(ds.ImagePositionPatient, float), row_dir=iop[:3], col_dir=iop[3:],
            spacing=np.array(ds.PixelSpacing, float), gap=float(ds.SpacingBetweenSlices),
            thickness=float(ds.SliceThickness), sop_class=str(ds.SOPClassUID), bits=int(ds.BitsAllocated),
            study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID),
        ))
    return pd.DataFrame(rows)


def _csv(phantom_dir: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(phantom_dir / name)


def test_kaggle_layout_and_exact_columns(phantom_dir):
    expected = {
        "train.csv": ["study_id", *TARGET_COLUMNS],
        "train_label_coordinates.csv": ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"],
        "train_series_descriptions.csv": ["study_id", "series_id", "series_description"],
        "test_series_descriptions.csv": ["study_id", "series_id", "series_description"],
        "sample_submission.csv": ["row_id", "normal_mild", "moderate", "severe"],
    }
    for name, columns in expected.items():
        assert list(_csv(phantom_dir, name).columns) == columns, name
        if REAL.is_dir():  # the real files' headers, where the real files are at hand
            real = REAL / ("train_label_coordinates_reconstructed.csv" if name.startswith("train_label") else name)
            assert list(pd.read_csv(real, nrows=0).columns) == columns, name
    train = _csv(phantom_dir, "train.csv")
    assert len(train) == PHANTOM_TRAIN_STUDIES and train.study_id.is_unique
    assert set(train[list(TARGET_COLUMNS)].stack().dropna().unique()) <= set(LABELS)
    coords = _csv(phantom_dir, "train_label_coordinates.csv")
    assert set(coords.condition) == set(CONDITION_NAMES.values())
    assert set(coords.level) == set(LEVEL_NAMES.values())
    assert coords.instance_number.dtype.kind == "i" and coords.x.dtype.kind == "f"
    for name, split, n in (("train_series_descriptions.csv", "train", PHANTOM_TRAIN_STUDIES),
                           ("test_series_descriptions.csv", "test", PHANTOM_TEST_STUDIES)):
        desc = _csv(phantom_dir, name)
        assert set(desc.series_description) == set(SERIES_TYPES)
        assert desc.study_id.nunique() == n and desc.series_id.is_unique
        on_disk = {(int(p.parent.name), int(p.name)) for p in (phantom_dir / f"{split}_images").glob("*/*")}
        assert on_disk == set(zip(desc.study_id, desc.series_id))
    test_ids = _csv(phantom_dir, "test_series_descriptions.csv").study_id.unique()
    sub = _csv(phantom_dir, "sample_submission.csv")
    assert list(sub.row_id) == sorted(r for s in test_ids for r in study_row_ids(s))
    assert np.allclose(sub[["normal_mild", "moderate", "severe"]].sum(axis=1), 1.0)
    assert not set(test_ids) & set(train.study_id)


def test_every_file_is_a_readable_mr_slice(phantom_dir, headers):
    desc = pd.concat([_csv(phantom_dir, "train_series_descriptions.csv"),
                      _csv(phantom_dir, "test_series_descriptions.csv")])
    n_files = len(list(phantom_dir.glob("*_images/*/*/*.dcm")))
    assert len(headers) == n_files > 300
    assert (headers.sop_class == MR_IMAGE_STORAGE).all() and (headers.bits == 16).all()
    assert (headers.dtype == "uint16").all()
    assert all(shape == (r, c) for shape, r, c in zip(headers["shape"], headers["rows"], headers["cols"]))
    assert (headers.file == headers.instance.astype(str) + ".dcm").all()  # real naming: <InstanceNumber>.dcm
    merged = headers.merge(desc, on=["study_id", "series_id"], how="left")
    assert (merged.description == merged.series_description).all()
    assert headers.groupby("study_id").study_uid.nunique().eq(1).all()
    assert headers.groupby("series_id").series_uid.nunique().eq(1).all()
    assert headers.series_uid.nunique() == headers.series_id.nunique()
    spacing = headers.spacing.map(lambda s: s[0])
    assert spacing.between(0.75, 4.0).all() and spacing.nunique() > 10  # small: 96-192 px over 160-440 mm
    rows_, cols_ = np.stack(headers.row_dir), np.stack(headers.col_dir)  # oblique cosines kept orthonormal
    assert np.abs(np.linalg.norm(rows_, axis=1) - 1).max() < 1e-10
    assert np.abs(np.linalg.norm(cols_, axis=1) - 1).max() < 1e-10
    assert np.abs(np.einsum("ij,ij->i", rows_, cols_)).max() < 1e-10
    sag = headers[headers.description != AXIAL_T2]
    assert sag.groupby("series_id").size().between(13, 25).all()
    assert sag.gap.between(3.0, 4.5).all() and (sag.thickness <= sag.gap).all()
    assert headers.groupby("series_id").rows.median().nunique() >= 3  # matrix sizes vary between series


def test_coordinates_round_trip_to_true_landmarks(phantom_dir, headers):
    """Each coordinate row, mapped to patient space by its instance's header, hits the model's landmark."""
    coords = _csv(phantom_dir, "train_label_coordinates.csv")
    marks = _csv(phantom_dir, "phantom/landmarks.csv").set_index(["study_id", "structure", "level"])
    by_file = headers[headers.split == "train"].set_index(["study_id", "series_id", "instance"])
    assert len(coords) > 150
    for row in coords.itertuples():
        h = by_file.loc[(row.study_id, row.series_id, row.instance_number)]
        assert 0 <= row.x <= h.cols - 1 and 0 <= row.y <= h.rows - 1
        # PixelSpacing = [row spacing, column spacing]; x runs along the row direction (columns).
        point = h.position + row.x * h.spacing[1] * h.row_dir + row.y * h.spacing[0] * h.col_dir
        true = marks.loc[(row.study_id, CONDITION_FROM_NAME[row.condition], LEVEL_FROM_NAME[row.level])]
        diff = true[["x_mm", "y_mm", "z_mm"]].to_numpy(float) - point
        normal = np.cross(h.row_dir, h.col_dir)
        out_of_plane = abs(diff @ normal)
        in_plane = np.linalg.norm(diff - (diff @ normal) * normal)
        assert in_plane <= 0.5 * min(h.spacing), (row, in_plane)
        assert out_of_plane <= 0.5 * h.gap + 1e-3, (row, out_of_plane)


def test_landmarks_cover_every_study_structure_and_level(phantom_dir):
    marks = _csv(phantom_dir, "phantom/landmarks.csv")
    assert list(marks.columns) == ["study_id", "structure", "level", "x_mm", "y_mm", "z_mm"]
    assert set(marks.structure) == set(STRUCTURES) and len(STRUCTURES) == 6
    assert marks.study_id.nunique() == PHANTOM_TRAIN_STUDIES + PHANTOM_TEST_STUDIES
    assert len(marks) == marks.study_id.nunique() * len(STRUCTURES) * len(LEVELS)
    assert not marks.duplicated(["study_id", "structure", "level"]).any()
    wide = marks.set_index(["study_id", "level", "structure"]).x_mm.unstack()
    # LPS: +x is patient left, so every left landmark lies at larger x than its right partner.
    assert (wide.left_neural_foraminal_narrowing > wide.right_neural_foraminal_narrowing + 10).all()
    assert (wide.left_subarticular_stenosis > wide.right_subarticular_stenosis + 5).all()
    z = marks[marks.structure == "disc_center"].set_index(["study_id", "level"]).z_mm.unstack()[list(LEVELS)]
    assert (np.diff(z.to_numpy(), axis=1) < -20).all()  # L1/L2 above L2/L3 above ... L5/S1 (LPS +z is head)


_OPPOSITE = {"left": "right", "posterior": "anterior", "superior": "inferior"}
_OPPOSITE.update({v: k for k, v in _OPPOSITE.items()})
_LPS = {"left": (0, 1), "right": (0, -1), "posterior": (1, 1), "anterior": (1, -1), "superior": (2, 1),
        "inferior": (2, -1)}


def _toward(v: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(v)))
    return next(name for name, (a, sign) in _LPS.items() if a == axis and sign == np.sign(v[axis]))


@pytest.fixture(scope="module")
def orientations(phantom_dir) -> dict[int, dict]:
    """series_id -> the series' record in phantom/studies.json (role, orientation, ...)."""
    studies = json.loads((phantom_dir / "phantom" / "studies.json").read_text())
    return {s["series_id"]: s for st in studies for s in st["series"]}


def test_recorded_orientation_matches_the_headers(headers, orientations):
    """Each series' orientation record in studies.json agrees with its files: the directions image x and y run
    toward, and the stack order by InstanceNumber (right/left for sagittal, head/foot for axial)."""
    for series_id, df in headers.groupby("series_id"):
        record = orientations[series_id]["orientation"]
        assert {_toward(v) for v in df.row_dir} == {record["x_toward"]}, series_id
        assert {_toward(v) for v in df.col_dir} == {record["y_toward"]}, series_id
        sagittal = df.description.iloc[0] != AXIAL_T2
        standard = ("posterior", "inferior") if sagittal else ("left", "posterior")
        x, y = (standard[1], standard[0]) if record["transposed"] else standard
        x = _OPPOSITE[x] if record["flipped_rows"] else x
        y = _OPPOSITE[y] if record["flipped_columns"] else y
        assert (record["x_toward"], record["y_toward"]) == (x, y), (series_id, record)
        ends = df.sort_values("instance").iloc[[0, -1]]
        centres = [r.position + (r.cols - 1) / 2 * r.spacing[1] * r.row_dir + (r.rows - 1) / 2 * r.spacing[0]
                   * r.col_dir for r in ends.itertuples()]
        step = centres[1] - centres[0]
        if sagittal:  # LPS: +x is patient left, +z is head
            assert record["stack_order"] == ("right_to_left" if step[0] > 0 else "left_to_right"), series_id
        else:
            assert record["stack_order"] == ("foot_to_head" if step[2] > 0 else "head_to_foot"), series_id
        assert record["reversed_stack"] == (record["stack_order"] in ("left_to_right", "foot_to_head"))


def test_every_orientation_variant_is_in_the_test_phantom(phantom_dir, orientations):
    """TEST_QUIRKS (ensure_each) gives the round-trip tests every variant on a labelled sagittal and axial series,
    and both stack orders of each plane."""
    labelled = set(_csv(phantom_dir, "train_label_coordinates.csv").series_id)
    records = [(s["role"].startswith("sag"), s["orientation"]) for sid, s in orientations.items() if sid in labelled]
    for kind in ("reversed_stack", "flipped_rows", "flipped_columns", "transposed"):
        for sagittal in (True, False):
            assert any(o[kind] for sag, o in records if sag == sagittal), (kind, sagittal)
    orders = {o["stack_order"] for _, o in records}
    assert orders == {"right_to_left", "left_to_right", "head_to_foot", "foot_to_head"}
    plain = [o for _, o in records if not (o["flipped_rows"] or o["flipped_columns"] or o["transposed"])]
    assert {(o["x_toward"], o["y_toward"]) for o in plain} == {("posterior", "inferior"), ("left", "posterior")}


def test_axial_coordinates_put_patient_left_where_the_series_says(phantom_dir, orientations):
    """On every axial series, the left subarticular point lies further toward the image axis' "left" end:
    on the image right for the standard view, on the image left when mirrored, along y when transposed."""
    coords = _csv(phantom_dir, "train_label_coordinates.csv")
    sub = coords[coords.condition.str.endswith("Subarticular Stenosis")]
    checked = set()
    for axis in ("x", "y"):
        wide = sub.pivot_table(index=["study_id", "series_id", "level"], columns="condition", values=axis).dropna()
        for (_, series_id, _), r in wide.iterrows():
            toward = orientations[series_id]["orientation"][f"{axis}_toward"]
            if toward in ("left", "right"):
                sign = 1 if toward == "left" else -1
                assert sign * (r["Left Subarticular Stenosis"] - r["Right Subarticular Stenosis"]) > 0, series_id
                checked.add((series_id, toward, axis))
    assert len(checked) >= 4 and {t for _, t, _ in checked} == {"left", "right"}


def test_quirks_of_the_real_data_are_present(phantom_dir, headers):
    desc = _csv(phantom_dir, "train_series_descriptions.csv")
    types = desc.groupby("study_id").series_description.agg(list)
    assert types.map(lambda t: t.count(AXIAL_T2) >= 2).any()  # a second Axial T2
    assert types.map(lambda t: not {SAGITTAL_T1, SAGITTAL_T2} <= set(t)).any()  # a study lacks a series type
    per_series = headers.groupby("series_id")
    assert (per_series.rows.nunique() > 1).any()  # a slice of a different size
    assert (per_series.instance.min() > 1).any()  # instance numbers not starting at 1

    def position_order_broken(df: pd.DataFrame) -> bool:
        normal = np.cross(df.row_dir.iloc[0], df.col_dir.iloc[0])
        along = np.stack(df.sort_values("instance").position) @ normal
        steps = np.diff(along)
        return bool((steps > 0).any() and (steps < 0).any())

    assert any(position_order_broken(df) for _, df in per_series)


def test_rescaled_series_store_the_same_signal_range(phantom_dir, headers):
    studies = json.loads((phantom_dir / "phantom" / "studies.json").read_text())
    rescaled = {s["series_id"]: s["rescale"] for st in studies for s in st["series"] if s["rescale"]}
    assert rescaled
    for series_id, (slope, intercept) in rescaled.items():
        path = next(phantom_dir.glob(f"*_images/*/{series_id}/*.dcm"))
        ds = pydicom.dcmread(path)
        assert float(ds.RescaleSlope) == slope and float(ds.RescaleIntercept) == intercept
        stored = ds.pixel_array.astype(float)
        assert 100 < np.percentile(stored * slope + intercept, 99) < 30000  # the unit signal maps to 300-12000


def test_phantom_passes_the_validator(phantom_dir):
    from rsna2024.data.validate import validate_data

    report = validate_data(phantom_dir)
    assert report.ok, report.format()


def test_deterministic_for_a_seed_and_refuses_to_overwrite(tmp_path):
    a = generate_dataset(tmp_path / "a", studies=1, test_studies=1, seed=7, size="small")
    b = generate_dataset(tmp_path / "b", studies=1, test_studies=1, seed=7, size="small")
    c = generate_dataset(tmp_path / "c", studies=1, test_studies=1, seed=8, size="small")
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    assert (a / "train.csv").read_text() != (c / "train.csv").read_text()
    with pytest.raises(FileExistsError, match="train.csv"):
        generate_dataset(a, studies=1, test_studies=0, seed=7)
    generate_dataset(a, studies=2, test_studies=0, seed=9, overwrite=True)
    assert len(pd.read_csv(a / "train.csv")) == 2
    assert not (a / "test_images").exists() or not any((a / "test_images").iterdir())  # stale studies removed


def test_a_generation_killed_half_way_is_written_again_without_overwrite(tmp_path):
    """``main.py --demo`` generates the phantom when ``train.csv`` is absent: after a SIGKILL amid the DICOM files the
    folder must be written again (not refused as a dataset in the way) and end as a fresh one."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from rsna2024.synthetic.generate import INCOMPLETE

    out = tmp_path / "killed"
    args = dict(studies=2, test_studies=0, seed=7, size="small")
    proc = subprocess.Popen([sys.executable, "-m", "rsna2024.cli", "synth", "--out", str(out), "--studies", "2",
                             "--test-studies", "0", "--seed", "7"], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not any(out.glob("train_images/*/*/*.dcm")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert (out / INCOMPLETE).is_file() and not (out / "train.csv").exists(), "the generation ended before the kill"
    generate_dataset(out, **args)
    fresh = generate_dataset(tmp_path / "fresh", **args)
    names = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert all((out / n).read_bytes() == (fresh / n).read_bytes() for n in names)
    with pytest.raises(FileExistsError, match="train.csv"):  # finished: refused again
        generate_dataset(out, **args)


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        generate_dataset(tmp_path / "x", studies=1, size="huge")
    with pytest.raises(ValueError, match="studies >= 1"):
        generate_dataset(tmp_path / "x", studies=0)
    (tmp_path / "y" / "train_images" / "123").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="train_images is not empty"):
        generate_dataset(tmp_path / "y", studies=1)


def test_cli_synth_writes_dataset_and_preview(tmp_path):
    from rsna2024.cli import main

    out, png = tmp_path / "cli", tmp_path / "preview.png"
    assert main(["synth", "--out", str(out), "--studies", "2", "--test-studies", "1", "--seed", "3",
                 "--preview", str(png)]) == 0
    assert len(pd.read_csv(out / "train.csv")) == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.shape[1] > 0.5 * img.shape[0] and img.std() > 0.05  # a montage with content: 2 studies x 3 rows
    assert main(["synth", "--out", str(out), "--studies", "2"]) == 2  # refuses to overwrite
