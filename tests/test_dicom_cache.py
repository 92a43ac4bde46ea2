"""The preprocessing cache: contents equal the reader's, failures listed, idempotent, safe to interrupt."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rsna2024.cli import main as cli_main
from rsna2024.dicom import read_series
from rsna2024.dicom.cache import (
    CacheParams,
    cache_dir,
    default_cache_root,
    load_cache_index,
    load_cached_series,
    preprocess,
)
from rsna2024.dicom.normalize import NormalizeParams, normalize
from rsna2024.errors import RsnaError
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
    assert index_path == cache_dir(tmp_path / "cache") / "index.csv"
    index = load_cache_index(index_path).set_index(["study_id", "series_id"])
    assert index["status"].to_dict() == {(1, 11): "ok", (1, 12): "ok", (2, 21): "failed", (2, 22): "failed",
                                         (3, 31): "ok"}
    assert "2/21" in index.loc[(2, 21), "error"] and "no readable" in index.loc[(2, 21), "error"]
    assert "does not exist" in index.loc[(2, 22), "error"]
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


def test_parameters_key_the_folder_and_parallel_run_matches(data_dir, tmp_path):
    params = CacheParams(normalize=NormalizeParams(low_percentile=1, high_percentile=99), dtype="float32")
    assert cache_dir(tmp_path, params) != cache_dir(tmp_path, CacheParams())
    assert CacheParams().key() == CacheParams().key()
    index_path = preprocess(data_dir, cache_root=tmp_path / "cache", workers=2, params=params)
    assert json.loads((index_path.parent / "params.json").read_text())["normalize"]["low_percentile"] == 1
    assert load_cached_series(index_path, 1, 11).pixels.dtype == np.float32
    assert (load_cache_index(index_path)["status"] == "ok").sum() == 3


def test_default_cache_root_is_beside_the_data_folder(tmp_path):
    assert default_cache_root(tmp_path / "data") == tmp_path / "cache"


def test_cli_preprocess_command(data_dir, tmp_path, capsys):
    assert cli_main(["preprocess", "--data", str(data_dir), "--cache", str(tmp_path / "c"), "--split", "test"]) == 0
    assert "cache ready" in capsys.readouterr().out
    assert load_cache_index(cache_dir(tmp_path / "c"))["series_id"].tolist() == [31]


def test_not_a_cache_folder_is_a_clear_error(tmp_path):
    with pytest.raises(RsnaError, match="not a preprocessing cache"):
        load_cache_index(tmp_path)
