"""The preprocessing cache: contents equal the reader's, failures listed, idempotent, safe to interrupt,
keyed by the data folder, re-reading changed series, and refusing a missing data folder."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rsna2024.cli import main as cli_main
from rsna2024.dicom import read_series
from rsna2024.dicom.cache import (
    CacheParams,
    cache_dir,
    data_key,
    default_cache_root,
    load_cache_index,
    load_cached_series,
    preprocess,
)
from rsna2024.dicom.normalize import NormalizeParams, normalize
from rsna2024.errors import DataError, DicomError, RsnaError
from rsna2024.synthetic.dicom_writer import SliceGeometry, write_mr_slice

GOOD = [("train", 1, 11, "Sagittal T1"), ("train", 1, 12, "Axial T2"), ("test", 3, 31, "Sagittal T2/STIR")]


def _write_series(folder: Path, study: int, series: int, description: str, n: int = 4) -> None:
    rng = np.random.default_rng(series)
    for k in range(n):
        write_mr_slice(folder / f"{n - k}.dcm", rng.integers(0, 3000, (12, 10)),
                       SliceGeometry((k * 3.0, 0, 0), (0, 1, 0), (0, 0, -1), (0.8, 0.9), 3.0),
                       instance_number=n - k, series_description=description, study_id=study, series_id=series)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """Three good series, one whose only file is garbage and one listed without a folder."""
    data = tmp_path / "data"
    for split, study, series, desc in GOOD:
        _write_series(data / f"{split}_images" / str(study) / str(series), study, series, desc)
    broken = data / "train_images" / "2" / "21"
    broken.mkdir(parents=True)
    (broken / "1.dcm").write_bytes(b"garbage")
    rows = {"train": [(1, 11, "Sagittal T1"), (1, 12, "Axial T2"), (2, 21, "Sagittal T2/STIR"), (2, 22, "Axial T2")],
            "test": [(3, 31, "Sagittal T2/STIR")]}
    for split, r in rows.items():
        pd.DataFrame(r, columns=["study_id", "series_id", "series_description"]).to_csv(
            data / f"{split}_series_descriptions.csv", index=False)
    return data


def test_cache_holds_the_readers_series_and_lists_failures(data_dir, tmp_path):
    index_path = preprocess(data_dir, cache_root=tmp_path / "cache")
    assert index_path == cache_dir(tmp_path / "cache", data_dir) / "index.csv"
    index = load_cache_index(index_path).set_index(["study_id", "series_id"])
    assert index["status"].to_dict() == {(1, 11): "ok", (1, 12): "ok", (2, 21): "failed", (2, 22): "failed",
                                         (3, 31): "ok"}
    assert index.loc[(2, 21), "error"].startswith("DicomError: series 2/21: no readable DICOM slice")
    assert "1.dcm: unreadable DICOM file" in index.loc[(2, 21), "error"]
    assert "does not exist" in index.loc[(2, 22), "error"]
    assert index.loc[(1, 11), "dropped_slices"] == 0 and pd.isna(index.loc[(2, 21), "dropped_slices"])
    assert index.loc[(3, 31), "split"] == "test"
    assert index.loc[(1, 11), ["n_slices", "rows", "columns"]].tolist() == [4, 12, 10]
    assert index.loc[(1, 11), ["row_spacing", "col_spacing", "slice_spacing"]].tolist() == pytest.approx([0.8, 0.9, 3])

    for split, study, series, desc in GOOD:
        direct = read_series(data_dir / f"{split}_images" / str(study) / str(series))
        cached = load_cached_series(index_path, study, series)
        assert isinstance(cached.pixels, np.memmap) and cached.pixels.dtype == np.float16
        np.testing.assert_array_equal(cached.pixels, normalize(direct.pixels, dtype="float16"))
        for name in ("instance_numbers", "positions", "row_dirs", "col_dirs", "spacings"):
            np.testing.assert_array_equal(getattr(cached, name), getattr(direct, name))
        assert (cached.study_id, cached.series_id, cached.description) == (study, series, desc)
        np.testing.assert_allclose(cached.to_patient(2, 3, 4), direct.to_patient(2, 3, 4))

    slices = pd.read_csv(index_path.parent / "slices.csv")
    assert len(slices) == 12 and slices.groupby("series_id")["slice_index"].max().tolist() == [3, 3, 3]
    with pytest.raises(RsnaError, match="2/21 is not in the cache"):
        load_cached_series(index_path, 2, 21)


def test_rerun_skips_finished_series_and_resumes_an_interrupted_one(data_dir, tmp_path):
    index_path = preprocess(data_dir, cache_root=tmp_path / "cache", split="train")
    folder = index_path.parent
    npy, meta = folder / "series/1/11.npy", folder / "series/1/11.json"
    before = npy.stat().st_mtime_ns
    # simulate an interruption of series 1/12: its pixel file was written, its record was not
    (folder / "series/1/12.json").unlink()
    (folder / "series/1/.12.npy.abc.tmp").write_bytes(b"partial")
    preprocess(data_dir, cache_root=tmp_path / "cache", split="train")
    assert npy.stat().st_mtime_ns == before and meta.exists()
    assert (folder / "series/1/12.json").exists()
    assert load_cache_index(folder)["status"].value_counts().to_dict() == {"ok": 2, "failed": 2}
    # a later test-split run keeps the train rows of the index
    preprocess(data_dir, cache_root=tmp_path / "cache", split="test")
    assert sorted(load_cache_index(folder)["split"].unique()) == ["test", "train"]


def test_a_run_over_some_studies_keeps_the_others_rows(data_dir, tmp_path):
    folder = preprocess(data_dir, cache_root=tmp_path / "cache", split="train", studies=[1]).parent
    assert sorted(load_cache_index(folder)["series_id"]) == [11, 12]
    assert not (folder / "series" / "2").exists()  # study 2 was not read
    with pytest.raises(DicomError, match="every series failed"):  # study 2's series are all broken
        preprocess(data_dir, cache_root=tmp_path / "cache", split="train", studies=[2])
    index = load_cache_index(folder).set_index(["study_id", "series_id"])["status"].to_dict()
    assert index == {(1, 11): "ok", (1, 12): "ok", (2, 21): "failed", (2, 22): "failed"}
    with pytest.raises(DataError, match="none of the studies"):
        preprocess(data_dir, cache_root=tmp_path / "cache", split="train", studies=[99])


def test_parameters_key_the_folder_and_parallel_run_matches(data_dir, tmp_path):
    params = CacheParams(normalize=NormalizeParams(low_percentile=1, high_percentile=99), dtype="float32")
    assert cache_dir(tmp_path, data_dir, params) != cache_dir(tmp_path, data_dir, CacheParams())
    assert CacheParams().key() == CacheParams().key()
    index_path = preprocess(data_dir, cache_root=tmp_path / "cache", workers=2, params=params)
    stored = json.loads((index_path.parent / "params.json").read_text())
    assert stored["normalize"]["low_percentile"] == 1 and stored["data_dir"] == str(data_dir.resolve())
    assert load_cached_series(index_path, 1, 11).pixels.dtype == np.float32
    assert (load_cache_index(index_path)["status"] == "ok").sum() == 3


def test_default_cache_root_is_beside_the_data_folder(tmp_path):
    assert default_cache_root(tmp_path / "data") == tmp_path / "cache"


def test_cli_preprocess_command(data_dir, tmp_path, capsys):
    assert cli_main(["preprocess", "--data", str(data_dir), "--cache", str(tmp_path / "c"), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "cache ready" in out and "(1 series: 1 ok, 0 failed; 0 slices dropped)" in out
    assert load_cache_index(cache_dir(tmp_path / "c", data_dir))["series_id"].tolist() == [31]


def test_not_a_cache_folder_is_a_clear_error(tmp_path):
    with pytest.raises(RsnaError, match="not a preprocessing cache"):
        load_cache_index(tmp_path)


# --------------------------------------------------------------------------- data folder identity and changes
def test_two_data_folders_beside_each_other_never_share_entries(data_dir, tmp_path):
    other = Path(shutil.copytree(data_dir, tmp_path / "other"))
    for f in (other / "train_images" / "1" / "11").glob("*.dcm"):
        f.write_bytes(b"broken in this copy only")
    good = preprocess(data_dir)  # default root: <tmp_path>/cache, shared by both folders
    bad = preprocess(other)
    assert good.parent.parent == bad.parent.parent == tmp_path / "cache" and good != bad
    assert bad.parent.name.endswith(data_key(other)) and data_key(other) != data_key(data_dir)
    status = load_cache_index(bad).set_index(["study_id", "series_id"])["status"]
    assert status[(1, 11)] == "failed" and status[(1, 12)] == "ok"  # not served from the good folder's copy
    assert load_cache_index(good).set_index(["study_id", "series_id"])["status"][(1, 11)] == "ok"
    assert data_key(tmp_path / "x" / ".." / "data") == data_key(data_dir)  # the resolved path is the identity


def test_a_series_whose_files_changed_is_read_again(data_dir, tmp_path):
    index_path = preprocess(data_dir, cache_root=tmp_path / "cache", split="train")
    folder = index_path.parent
    kept = {p: p.stat().st_mtime_ns for p in folder.glob("series/*/*.npy")}
    # one slice of 1/12 rewritten with other pixels (size equal, modification time later)
    path = data_dir / "train_images" / "1" / "12" / "2.dcm"
    write_mr_slice(path, np.full((12, 10), 7), SliceGeometry((6.0, 0, 0), (0, 1, 0), (0, 0, -1), (0.8, 0.9), 3.0),
                   instance_number=2, series_description="Axial T2", study_id=1, series_id=12)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    preprocess(data_dir, cache_root=tmp_path / "cache", split="train")
    changed = folder / "series/1/12.npy"
    assert changed.stat().st_mtime_ns != kept[changed]
    assert {p: p.stat().st_mtime_ns for p in kept if p != changed} == {p: t for p, t in kept.items() if p != changed}
    np.testing.assert_array_equal(load_cached_series(folder, 1, 12).pixels,
                                  normalize(read_series(path.parent).pixels, dtype="float16"))
    # a series whose files broke after caching is not served from its stale copy
    for f in (data_dir / "train_images" / "1" / "11").glob("*.dcm"):
        f.write_bytes(b"broken now")
    index = load_cache_index(preprocess(data_dir, cache_root=tmp_path / "cache", split="train"))
    assert index.set_index("series_id").loc[11, "status"] == "failed"
    with pytest.raises(RsnaError, match="1/11 is not in the cache"):
        load_cached_series(folder, 1, 11)


def test_rebuild_reads_every_series_again(data_dir, tmp_path, capsys):
    args = ["preprocess", "--data", str(data_dir), "--cache", str(tmp_path / "c"), "--split", "train"]
    assert cli_main(args) == 0
    folder = cache_dir(tmp_path / "c", data_dir)
    first = {p: p.stat().st_mtime_ns for p in folder.glob("series/*/*.npy")}
    assert len(first) == 2
    assert cli_main(args) == 0  # unchanged: skipped
    assert {p: p.stat().st_mtime_ns for p in first} == first
    assert cli_main([*args, "--rebuild"]) == 0
    assert all(p.stat().st_mtime_ns != t for p, t in first.items())
    assert "4 series: 2 ok, 2 failed; 0 slices dropped" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing folder", "empty folder", "missing CSV", "missing images", "empty CSV"])
def test_no_data_is_an_error_that_touches_no_cache(data_dir, tmp_path, capsys, case):
    index_path = preprocess(data_dir, cache_root=tmp_path / "cache")
    before = {p: p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    target, split, expected = tmp_path / "data", "all", ""
    if case == "missing folder":
        target, expected = tmp_path / "nowhere", "folder not found"
    elif case == "empty folder":
        target = tmp_path / "empty"
        target.mkdir()
        expected = "no series to preprocess; expected train_series_descriptions.csv listing series in train_images/"
    elif case == "missing CSV":
        (data_dir / "train_series_descriptions.csv").unlink()
        split, expected = "train", "train_series_descriptions.csv: file not found"
    elif case == "missing images":
        shutil.rmtree(data_dir / "train_images")
        split, expected = "train", "train_images: images folder not found"
    else:
        for name in ("train", "test"):
            (data_dir / f"{name}_series_descriptions.csv").write_text("study_id,series_id,series_description\n")
        expected = "no series to preprocess"
    code = cli_main(["preprocess", "--data", str(target), "--cache", str(tmp_path / "cache"), "--split", split])
    assert code == 2 and expected in capsys.readouterr().err
    after = {p: p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert after == before and index_path in after  # byte-equal, nothing added
    with pytest.raises(DataError, match=expected.split(";")[0]):
        preprocess(target, cache_root=tmp_path / "cache", split=split)


def test_every_series_failing_is_a_non_zero_exit_with_the_index_written(data_dir, tmp_path, capsys):
    for f in (data_dir / "test_images").rglob("*.dcm"):
        f.write_bytes(b"x")
    code = cli_main(["preprocess", "--data", str(data_dir), "--cache", str(tmp_path / "c"), "--split", "test"])
    err = capsys.readouterr().err
    assert code == 2 and "every series failed (this run: 1 series: 0 ok, 1 failed; 0 slices dropped)" in err
    assert "3/31: DicomError: series 3/31: no readable DICOM slice" in err and "error column" in err
    index = load_cache_index(cache_dir(tmp_path / "c", data_dir))
    assert index["status"].tolist() == ["failed"]
    with pytest.raises(DicomError, match="every series failed"):
        preprocess(data_dir, cache_root=tmp_path / "c", split="test")


def test_any_exception_inside_one_series_is_recorded_and_the_run_goes_on(data_dir, tmp_path, monkeypatch):
    """Fault injection: an unexpected exception type (not DicomError/OSError) raised while reading 1/12."""
    from rsna2024.dicom import cache

    real = cache.read_series

    def flaky(folder, description=""):
        if Path(folder).name == "12":
            raise ZeroDivisionError("injected")
        return real(folder, description=description)

    monkeypatch.setattr(cache, "read_series", flaky)
    index = load_cache_index(preprocess(data_dir, cache_root=tmp_path / "c")).set_index("series_id")
    assert index.loc[12, ["status", "error"]].tolist() == ["failed", "ZeroDivisionError: injected"]
    assert index.loc[[11, 31], "status"].tolist() == ["ok", "ok"]
