"""Fuzzed DICOM: a tiny phantom series mutated at random (tags removed, garbled or changed, pixel data cut or
padded, files cut or replaced, other transfer syntaxes, shuffled, duplicated and deleted files) goes through
``read_series``, ``rsna2024 validate --images`` and ``rsna2024 preprocess``.

Every case ends either in an error naming the series (the reader's DicomError, the cache's failed row, one
error line of the command) or in a series whose geometry and pixels match what the surviving headers say,
computed here independently of the reader; every dropped file is named with its cause, and only files a
mutation may have damaged are dropped (besides duplicates and misoriented slices).
"""
from __future__ import annotations

import re
import shutil
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from fuzz_helpers import (
    FALSE_SYNTAXES,
    FUZZ_COLUMNS,
    FUZZ_ROWS,
    FUZZ_SERIES,
    FUZZ_STATS,
    FUZZ_STUDY,
    FileBytes,
    FuzzHang,
    PixelBytes,
    Reencode,
    SetRaw,
    SetValue,
    apply_mutations,
    dicom_mutations,
    error_line,
    file_names,
    fuzz_case,
    fuzz_settings,
    run_cli,
    write_fuzz_data,
)
from hypothesis import event, example, given
from hypothesis import strategies as st

from rsna2024.data.validate import check_series_headers
from rsna2024.dicom import read_series
from rsna2024.dicom.cache import load_cache_index, load_cached_series
from rsna2024.dicom.reader import series_files
from rsna2024.errors import DicomError
from rsna2024.utils.logging import captured_warnings

DICOM_EXAMPLES = 40
SERIES_NAME = f"{FUZZ_STUDY}/{FUZZ_SERIES}"
TAG = re.compile(r"\([0-9A-F]{4},[0-9A-F]{4}\)")
# Reasons that name no tag but the file as a whole, and the reasons any slice may be dropped for
DUPLICATE, MISORIENTED = "duplicate InstanceNumber", "degrees from the series' median"


@pytest.fixture(scope="module")
def base_data(tmp_path_factory) -> Path:
    return write_fuzz_data(tmp_path_factory.mktemp("fuzz_dicom") / "data")


# ----------------------------------------------------------------------------------- the surviving headers
def _numbers(ds, keyword) -> np.ndarray:
    value = ds[keyword].value
    return np.array([float(v) for v in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue))
                                        else [value])], dtype=np.float64)


class Header:
    """What one kept file's header says, parsed here without the kit."""

    def __init__(self, path: Path):
        with warnings.catch_warnings():  # pydicom warns about values a mutation garbled; the reader kept the file
            warnings.simplefilter("ignore", UserWarning)
            ds = pydicom.dcmread(path)
        self.name = path.name
        self.instance = int(round(float(ds["InstanceNumber"].value)))
        self.position = _numbers(ds, "ImagePositionPatient")
        iop = _numbers(ds, "ImageOrientationPatient")
        self.row_dir, self.col_dir = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
        self.spacing = _numbers(ds, "PixelSpacing")
        self.shape = (int(ds.Rows), int(ds.Columns))
        slope = ds.get("RescaleSlope")
        intercept = ds.get("RescaleIntercept")
        self.slope = 1.0 if slope in (None, "") else float(slope)
        self.intercept = 0.0 if intercept in (None, "") else float(intercept)
        # the reader's defaults for a grayscale slice; the first Rows x Columns values (pydicom returns padding
        # that fills a whole second frame as one)
        if "NumberOfFrames" in ds and not ds.NumberOfFrames:  # present but empty: one frame, as when absent
            del ds.NumberOfFrames
        ds.setdefault("PhotometricInterpretation", "MONOCHROME2")
        ds.setdefault("SamplesPerPixel", 1)
        ds.setdefault("PixelRepresentation", 0)
        ds.setdefault("BitsStored", ds.BitsAllocated)
        with warnings.catch_warnings():  # pydicom warns about padding; the first frame is the slice
            warnings.simplefilter("ignore", UserWarning)
            pixels = ds.pixel_array
        self.values = (pixels[0] if pixels.ndim == 3 else pixels).astype(np.float64) * self.slope + self.intercept

    def point(self, x, y) -> np.ndarray:
        """LPS mm of stored pixel column x, row y."""
        x, y = np.asarray(x, dtype=np.float64)[..., None], np.asarray(y, dtype=np.float64)[..., None]
        return self.position + x * self.spacing[1] * self.row_dir + y * self.spacing[0] * self.col_dir

    @property
    def centre(self) -> np.ndarray:
        return self.point((self.shape[1] - 1) / 2, (self.shape[0] - 1) / 2)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)


def check_dropped(series_dropped: list[str], names: list[str], damaged: set[str]) -> dict[str, str]:
    """Each dropped entry is ``'<file>: <reason>'`` naming a file of the folder and a tag (or the whole file);
    only damaged files go for other reasons than duplicates and misorientation. Returns {file: reason}."""
    dropped = {}
    for entry in series_dropped:
        name, _, reason = entry.partition(": ")
        assert name in names, entry
        assert TAG.search(reason) or reason.startswith("unreadable DICOM file") or MISORIENTED in reason, entry
        assert name in damaged or DUPLICATE in reason or MISORIENTED in reason, \
            f"{name} was dropped although no mutation damaged it: {entry}"
        dropped[name] = reason
    return dropped


def check_geometry(series, headers: dict[int, Header]) -> None:
    """The series holds exactly the kept files, each slice's stored and canonical geometry and pixels match its
    header, and the slices are ordered along the series normal."""
    assert sorted(series.instance_numbers.tolist()) == sorted(headers), (series.instance_numbers, sorted(headers))
    majority = Counter(h.shape for h in headers.values()).most_common(1)[0][0]
    n_rows, n_cols = series.pixels.shape[1:]
    assert sorted((n_rows, n_cols)) == sorted(majority)
    assert np.isfinite(series.pixels).all()
    ys, xs = np.mgrid[0:n_rows, 0:n_cols]
    for i, instance in enumerate(series.instance_numbers):
        h = headers[int(instance)]
        st = series.stored
        np.testing.assert_allclose(st.positions[i], h.position, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(st.row_dirs[i], h.row_dir, atol=1e-9)
        np.testing.assert_allclose(st.col_dirs[i], h.col_dir, atol=1e-9)
        np.testing.assert_allclose(st.spacings[i], h.spacing, rtol=1e-12)
        assert tuple(st.shapes[i]) == h.shape
        corners = (np.array([0, h.shape[1] - 1, 0, h.shape[1] - 1]), np.array([0, 0, h.shape[0] - 1, h.shape[0] - 1]))
        np.testing.assert_allclose(series.to_patient(int(instance), *corners), h.point(*corners),
                                   rtol=1e-9, atol=1e-6)
        assert abs(abs(series.normals[i] @ h.normal) - 1) < 1e-9
        if h.shape != majority:
            continue  # resampled onto the majority grid: its stored grid is checked above
        # every canonical pixel: where it comes from in the stored grid, where it lies, and its value
        inst, sx, sy = series.canonical_to_stored(i, xs, ys)
        assert (inst == instance).all()
        sx, sy = np.rint(sx).astype(int), np.rint(sy).astype(int)
        assert sorted(zip(sx.ravel(), sy.ravel())) == sorted(np.ndindex(h.shape[1], h.shape[0]))
        np.testing.assert_allclose(series.pixel_to_patient(i, xs, ys), h.point(sx, sy), rtol=1e-9, atol=1e-6)
        np.testing.assert_allclose(series.pixels[i], h.values[sy, sx], rtol=1e-5, atol=1e-3)
    # slice order: the image centres move monotonically along the mean normal of the headers
    normal = np.mean([h.normal for h in headers.values()], axis=0)
    along = np.array([headers[int(k)].centre @ normal for k in series.instance_numbers]) / np.linalg.norm(normal)
    steps = np.diff(along)
    assert (steps >= -1e-3).all() or (steps <= 1e-3).all(), along


def check_reader(folder: Path, damaged: set[str]):
    """``read_series`` on the mutated folder: the series (checked) and {dropped file: reason}, or the DicomError."""
    names = file_names(folder)
    with captured_warnings() as records:
        try:
            series = read_series(folder)
        except DicomError as exc:
            message = str(exc)
            assert message.startswith(f"series {SERIES_NAME}: "), message
            assert "\n" not in message
            return exc, {}
    dropped = check_dropped(series.dropped, names, damaged)
    warned = " ".join(records)
    for name in dropped:
        assert name in warned, f"no warning names the dropped {name}: {warned}"
    kept = [p for p in series_files(folder) if p.name not in dropped]
    headers = {}
    for path in kept:
        h = Header(path)
        assert h.instance not in headers, f"{path.name} and {headers[h.instance].name} share InstanceNumber"
        headers[h.instance] = h
    check_geometry(series, headers)
    return series, dropped


def check_validate(data: Path, folder: Path, outcome, dropped: dict[str, str]) -> None:
    """``validate --images`` passes (the CSV files are fine) and warns about the series exactly when the reader
    dropped a file for a header problem or could not read it; the files it names are the ones the reader drops."""
    code, out, err = run_cli("validate", "--data", data, "--images")
    assert code == 0 and "Traceback" not in out + err, out + err
    sizes, problems, _ = check_series_headers(folder)
    flagged = {p.partition(": ")[0] for p in problems}
    warned = f"train_images/{SERIES_NAME}: " in out
    assert warned == bool(problems), out
    # the label point (x 5.5, y 4.25 on InstanceNumber 3) is warned about when its slice is gone or too small
    if file_names(folder):
        assert ("label points on an InstanceNumber their series lacks" in out) == (3 not in sizes), out
        rows, cols = sizes.get(3, (FUZZ_ROWS, FUZZ_COLUMNS))
        assert ("label points outside their image" in out) == (not (5.5 <= cols - 0.5 and 4.25 <= rows - 0.5)), out
    for problem in problems:
        assert TAG.search(problem) or "unreadable DICOM file" in problem or MISORIENTED in problem, problem
    if isinstance(outcome, DicomError):
        if not file_names(folder):
            assert f"without any .dcm file (1): {FUZZ_STUDY}" in out, out
        else:
            assert problems or "cannot be decoded" in str(outcome), (str(outcome), out)
        return
    header_drops = {n for n, r in dropped.items() if DUPLICATE not in r and "cannot be decoded" not in r
                    and "decoded pixels" not in r}
    assert header_drops <= flagged, (dropped, problems)
    assert {n for n in flagged if n not in dropped} <= {p.partition(": ")[0] for p in problems if DUPLICATE in p}, \
        (dropped, problems)


def check_preprocess(data: Path, cache: Path, outcome, dropped: dict[str, str]) -> None:
    """``preprocess`` caches what the reader read (same geometry) or records the reader's error and ends in one
    error line (exit 2: the only series failed)."""
    code, out, err = run_cli("preprocess", "--data", data, "--cache", cache)
    index_path = next(cache.glob("*/index.csv"))
    row = load_cache_index(index_path).set_index(["study_id", "series_id"]).loc[(FUZZ_STUDY, FUZZ_SERIES)]
    if isinstance(outcome, DicomError):
        assert code == 2, out + err
        assert "1 series: 0 ok, 1 failed" in error_line(err, "rsna2024 preprocess")
        assert row["status"] == "failed" and row["error"] == f"DicomError: {outcome}", row["error"]
        return
    assert code == 0 and "Traceback" not in err, out + err
    assert row["status"] == "ok", row["error"]
    assert (row["n_slices"], row["dropped_slices"]) == (len(outcome.instance_numbers), len(dropped))
    cached = load_cached_series(index_path, FUZZ_STUDY, FUZZ_SERIES)
    np.testing.assert_array_equal(cached.instance_numbers, outcome.instance_numbers)
    for name in ("positions", "row_dirs", "col_dirs", "spacings"):
        np.testing.assert_allclose(getattr(cached, name), getattr(outcome, name), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(getattr(cached.stored, name), getattr(outcome.stored, name), rtol=1e-12, atol=1e-12)
    assert cached.orientation == outcome.orientation and cached.pixels.shape == outcome.pixels.shape
    assert np.isfinite(np.asarray(cached.pixels, dtype=np.float32)).all()


@fuzz_settings(DICOM_EXAMPLES)
@given(mutations=st.lists(dicom_mutations(), min_size=1, max_size=5))
# Regressions: the cases the fuzzing found (each was a raw traceback or a wrong series before its fix).
@example(mutations=[FileBytes(0, "truncate", keep=0.7044513271514106)])  # tag cut by the file's end: struct error
@example(mutations=[SetRaw(0, "BitsStored", b"000")])  # two values: TypeError in the rescale check
@example(mutations=[SetRaw(0, "BitsStored", b"00")])  # 12336 bits: OverflowError in the rescale check
@example(mutations=[Reencode(0, "unknown_uid")])  # ValueError: UID is not a transfer syntax
@example(mutations=[SetRaw(0, "PixelRepresentation", b"\0\0\0")])  # [0, 0] read as signed: wrong pixels
@example(mutations=[SetRaw(0, "PhotometricInterpretation", b"-90", "SL")])  # not grayscale, read as if it were
@example(mutations=[SetRaw(0, "InstanceNumber", b"1e30")])  # OverflowError: beyond int64
@example(mutations=[SetRaw(0, "PixelSpacing", b"1e300\\1e300")])  # canonical positions 43 mm off (cancellation)
@example(mutations=[Reencode(0, "explicit_big_endian"), PixelBytes(0, 240)])  # padding read as a 2nd frame: dropped
@example(mutations=[Reencode(0, "rle"), SetValue(0, "Rows", 4)])  # the RLE decoder panics: BaseException ends the run
def test_mutated_series_is_read_correctly_or_named(base_data, mutations):
    with fuzz_case("dicom"), tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        shutil.copytree(base_data, data)
        folder = data / "train_images" / str(FUZZ_STUDY) / str(FUZZ_SERIES)
        damaged = apply_mutations(folder, mutations)
        outcome, dropped = check_reader(folder, damaged)
        event("reader error" if isinstance(outcome, DicomError) else f"{len(dropped)} dropped, "
              f"{len(outcome.instance_numbers)} read")
        check_validate(data, folder, outcome, dropped)
        check_preprocess(data, Path(tmp) / "cache", outcome, dropped)


def test_the_base_series_reads_with_its_planned_geometry(base_data):
    """Sanity of the fuzz base: unmutated, nothing is dropped and the canonical order runs against the
    InstanceNumbers along the patient's right-to-left axis."""
    series = read_series(base_data / "train_images" / str(FUZZ_STUDY) / str(FUZZ_SERIES))
    assert series.dropped == [] and series.instance_numbers.tolist() == [5, 4, 3, 2, 1]
    assert series.orientation.plane == "sagittal" and series.orientation.reversed
    assert (np.diff(series.centers[:, 0]) > 0).all()
    assert pd.Series(series.pixels.ravel()).notna().all()


@pytest.mark.parametrize("syntax", sorted(FALSE_SYNTAXES))
def test_validate_names_pixel_data_its_transfer_syntax_cannot_decode(base_data, tmp_path, syntax):
    """A file meta claiming another syntax over raw little-endian pixel data: validate --images names the tags
    (before the fuzz suite, only the reader found it, when decoding)."""
    folder = tmp_path / "series"
    shutil.copytree(base_data / "train_images" / str(FUZZ_STUDY) / str(FUZZ_SERIES), folder)
    Reencode(0, syntax).apply(folder, set())
    _, problems, _ = check_series_headers(folder)
    assert len(problems) == 1 and problems[0].startswith("1.dcm: "), problems
    if syntax.endswith("_uid_raw_data"):
        assert "tag PixelData (7FE0,0010) is not encapsulated, but TransferSyntaxUID (0002,0010)" in problems[0]
    else:  # an unknown syntax is named; big endian read over little-endian bytes garbles the tags themselves
        assert TAG.search(problems[0]), problems


def test_a_case_that_hangs_fails_instead_of_blocking_the_suite():
    """The per-case guard: a case running past its limit ends in FuzzHang (and is not counted as a fuzz case)."""
    start = time.perf_counter()
    with pytest.raises(FuzzHang, match="ran past 0.2 s"), fuzz_case("guard self-test", limit_s=0.2):
        time.sleep(5)
    assert time.perf_counter() - start < 2
    FUZZ_STATS.pop("guard self-test")
