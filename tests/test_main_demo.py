"""``python main.py --demo`` end to end in a subprocess, as a newcomer runs it, and its resumption."""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _run_demo(tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "main.py", "--demo", "--data", str(tmp_path / "phantom"), "--cache",
           str(tmp_path / "cache"), "--demo-studies", "6", "--workers", "1"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_demo_generates_validates_folds_caches_and_scores_the_floor(tmp_path):
    first = _run_demo(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    data = tmp_path / "phantom"
    assert (data / "train.csv").is_file() and (data / "train_images").is_dir()
    folds = pd.read_csv(data / "folds.csv")
    assert sorted(folds["study_id"]) == sorted(pd.read_csv(data / "train.csv")["study_id"])
    index_files = list((tmp_path / "cache").glob("*/index.csv"))
    assert len(index_files) == 1
    index = pd.read_csv(index_files[0])
    described = pd.concat([pd.read_csv(data / f"{s}_series_descriptions.csv") for s in ("train", "test")])
    assert len(index) == len(described) and (index["status"] == "ok").all()
    total = re.search(r"total\s+([0-9.]+)", first.stdout)
    assert total, first.stdout
    assert 0.3 < float(total.group(1)) < 2.0  # a prior on 6 studies: finite, not degenerate

    # A second run finds everything done: it must not regenerate, rewrite the folds or redecode.
    watched = [data / "train.csv", data / "folds.csv", index_files[0].parent / "series"]
    stamp = {p: p.stat().st_mtime_ns for p in watched}
    npy_times = {p: p.stat().st_mtime_ns for p in index_files[0].parent.glob("series/*/*.npy")}
    second = _run_demo(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    assert {p: p.stat().st_mtime_ns for p in npy_times} == npy_times
    assert re.search(r"total\s+([0-9.]+)", second.stdout).group(1) == total.group(1)


def test_main_without_data_says_what_to_do(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "main.py"), "--data", str(tmp_path / "nothing")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "train.csv" in out.stderr and "--demo" in out.stderr


def _main_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("rsna2024_main", ROOT / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_broken_study_is_a_warning_and_the_run_goes_on(phantom_dir, tmp_path, capsys, caplog):
    data = Path(shutil.copytree(phantom_dir, tmp_path / "data"))
    desc = pd.read_csv(data / "train_series_descriptions.csv")
    study, series = (int(v) for v in desc.iloc[0][["study_id", "series_id"]])
    for f in (data / "train_images" / str(study) / str(series)).glob("*.dcm"):
        f.write_bytes(b"broken")
    with caplog.at_level(logging.WARNING):
        code = _main_module().main(["--data", str(data), "--cache", str(tmp_path / "cache"), "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"train_images/{study}/{series}: no usable slice in" in out and "unreadable DICOM file" in out
    assert "result: OK" in out and re.search(r"total\s+[0-9.]+", out)
    assert f"study {study}, series {series} left out (preprocessing failed): DicomError" in caplog.text
    index = pd.read_csv(next((tmp_path / "cache").glob("*/index.csv")))
    assert index.loc[index["status"] == "failed", "series_id"].tolist() == [series]
    assert (index["status"] == "ok").sum() == len(index) - 1 and (data / "folds.csv").is_file()


def test_main_stops_on_a_contract_error_or_when_every_series_failed(phantom_dir, tmp_path, capsys, caplog):
    main = _main_module().main
    data = Path(shutil.copytree(phantom_dir, tmp_path / "data"))
    for f in data.glob("*_images/*/*/*.dcm"):
        f.write_bytes(b"broken")
    with caplog.at_level(logging.ERROR):
        assert main(["--data", str(data), "--cache", str(tmp_path / "cache"), "--workers", "1"]) == 1
    assert "every series failed" in caplog.text
    desc = pd.read_csv(data / "train_series_descriptions.csv")
    desc.loc[0, "series_description"] = "Coronal"
    desc.to_csv(data / "train_series_descriptions.csv", index=False)
    assert main(["--data", str(data), "--cache", str(tmp_path / "cache"), "--workers", "1"]) == 1
    assert "unknown series_description value(s) Coronal" in capsys.readouterr().out
