"""``python main.py --demo`` end to end in a subprocess, as a newcomer runs it: a second run that rewrites nothing,
and a run killed in the middle of a classifier fold that, started again, ends with the same OOF table."""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from rsna2024.constants import study_row_ids
from rsna2024.metric import check_submission
from rsna2024.training.runner import COORDS_FILES, discover_experiments, plan_experiments

ROOT = Path(__file__).resolve().parents[1]
# 10 studies in 2 folds, 2 epochs per fold: every stage of the demo, small enough for the test suite.
SMALL = ["--demo-studies", "10", "--workers", "1", "--set", "folds=2", "--set", "epochs=2"]
FAMILY_ROWS = ["split (mean)", "global (mean)", "split+global (mean)", "image-free prior"]


def _demo_cmd(root: Path, runs: Path) -> list[str]:
    return [sys.executable, "main.py", "--demo", "--data", str(root / "phantom"), "--cache", str(root / "cache"),
            "--runs", str(runs), *SMALL]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(cmd, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=_env())


def _demo_plan():
    return plan_experiments(discover_experiments(ROOT / "experiments" / "demo"))


def _files(folder: Path, skip=("main.log",)) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name not in skip
            and "logs" not in p.parts}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    first = _run(_demo_cmd(root, root / "runs"))
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-4000:]
    return root, first


def test_demo_runs_every_stage_and_prints_the_oof_table(demo):
    root, first = demo
    data, runs = root / "phantom", root / "runs"
    assert (data / "train.csv").is_file() and (data / "train_images").is_dir()
    folds = pd.read_csv(data / "folds.csv")
    assert sorted(folds["study_id"]) == sorted(pd.read_csv(data / "train.csv")["study_id"])
    assert sorted(folds["fold"].unique()) == [0, 1]
    index_files = list((root / "cache").glob("*/index.csv"))
    assert len(index_files) == 1
    index = pd.read_csv(index_files[0])
    described = pd.concat([pd.read_csv(data / f"{s}_series_descriptions.csv") for s in ("train", "test")])
    assert len(index) == len(described) and (index["status"] == "ok").all()

    plan = _demo_plan()
    keypoints = [e.name for e in plan.experiments if e.kind == "keypoint"]
    classifiers = [e for e in plan.experiments if e.kind == "classifier"]
    assert keypoints and {e.family for e in classifiers} == {"split", "global"}
    for name in keypoints + [e.name for e in classifiers]:
        assert all((runs / name / f"fold{k}_done.json").is_file() for k in (0, 1)), name
    coords = pd.read_csv(runs / COORDS_FILES["train"])
    assert set(coords["study_id"]) == set(folds["study_id"]) and coords["x"].notna().mean() > 0.5
    assert set(pd.read_csv(runs / COORDS_FILES["test"])["study_id"]) == \
        set(pd.read_csv(data / "test_series_descriptions.csv")["study_id"])

    table = pd.read_csv(runs / "oof_scores.csv")
    assert list(table["experiment"]) == [e.name for e in classifiers] + FAMILY_ROWS
    assert table["total"].between(0.05, 3.0).all() and table["vs_prior"].iloc[-1] == 1.0
    scored = table[table["family"] != "prior"]
    assert scored["true_points_total"].notna().all() and (scored["studies"] == 10).all()
    # the printed table holds the same figures as the file
    assert "OOF scores, folds 0,1 (10 studies)" in first.stdout
    for row in table.itertuples():
        assert re.search(rf"{re.escape(row.experiment)}\s+\S+\s+{row.models}\s+{row.total:.4f}", first.stdout), \
            row.experiment
    assert "Keypoint OOF 3-D error (mm)" in first.stdout
    # the comparison of the seed baselines with the recipe on the same folds, printed and written
    baselines = [e.name for e in plan.experiments if e.kind == "baseline"]
    assert baselines and "Comparison on the same folds and stage-1 points" in first.stdout
    compare = pd.read_csv(runs / "compare" / "compare.csv")
    assert {"prior", *baselines, *(e.name for e in classifiers), "split+global"} <= set(compare["model"])
    for row in compare.itertuples():
        assert f"| {row.model} | {row.kind} | {row.runs} | {row.total:.4f} |" in first.stdout, row.model
    assert re.search(r"keypoint_sagt2 fold 1: done in [0-9.]+ (s|min)", first.stderr)
    # then predict on the test split: the submission, and how to package the runs for Kaggle
    test_ids = sorted(pd.read_csv(data / "test_series_descriptions.csv")["study_id"].unique())
    check_submission(pd.read_csv(runs / "submission.csv"),
                     expected_row_ids=[r for s in test_ids for r in study_row_ids(int(s))])
    assert f"submission: {runs / 'submission.csv'}" in first.stdout
    assert "rsna2024 kaggle package --runs" in first.stdout


def test_second_demo_run_rewrites_nothing(demo):
    root, first = demo
    data = root / "phantom"
    series = next((root / "cache").glob("*/series"))  # decoded slices (the cache rewrites its index each time)
    watched = {**_files(data), series: series.stat().st_mtime_ns, **_files(series), **_files(root / "runs")}
    second = _run(_demo_cmd(root, root / "runs"))
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in watched} == watched
    assert not re.search(r"(fold \d+|coordinates \(.*\)): running", second.stderr)
    assert re.search(r"split_\w+ fold 1: skipped \(finished earlier\)", second.stderr)
    assert "submission.csv is up to date" in second.stderr
    table = lambda out: out[out.index("OOF scores"):]  # noqa: E731
    assert table(second.stdout).split("Keypoint")[0] == table(first.stdout).split("Keypoint")[0]


def test_demo_killed_in_a_classifier_fold_resumes_to_the_same_table(demo):
    """SIGKILL once the last classifier's fold 1 has its first checkpoint; the rerun trains only what is left
    and ends with the table of the uninterrupted run."""
    root, _ = demo
    runs, again = root / "runs", root / "runs_killed"
    plan = _demo_plan()
    target = [e.name for e in plan.experiments if e.kind == "classifier"][-1]
    # every other experiment and the coordinates as the first run left them: only the target trains again
    shutil.copytree(runs, again, ignore=shutil.ignore_patterns(target, "oof_scores.csv", "main.log", "logs"))
    last, done = again / target / "fold1_last.pt", again / target / "fold1_done.json"

    proc = subprocess.Popen(_demo_cmd(root, again), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert last.exists() and not done.exists(), "the run ended before the kill"
    finished = {p: p.stat().st_mtime_ns for p in again.rglob("fold*_*") if
                (p.parent / f"{p.name.split('_')[0]}_done.json").exists()}
    assert again / target / "fold0_done.json" in finished  # fold 0 of the target was finished before the kill

    resumed = _run(_demo_cmd(root, again))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # no finished fold trained again
    assert f"{target} fold 0: skipped (finished earlier)" in resumed.stderr
    assert re.search(rf"fold 1: resuming from \S*{target}/fold1_last.pt \(epoch 1 of 2 done\)", resumed.stderr)
    assert (again / "oof_scores.csv").read_text() == (runs / "oof_scores.csv").read_text()


def test_evaluate_and_the_oof_notebook_on_the_demo_runs(demo, tmp_path, monkeypatch):
    """``rsna2024 evaluate`` with both fits, and ``notebooks/oof_ensemble.ipynb``, on the demo's classifier runs."""
    from oof_runs import notebook_images, notebook_text, run_oof_notebook

    from rsna2024.cli import main
    from rsna2024.inference.ensemble import load_weights
    from rsna2024.inference.evaluate import classifier_runs

    root, _ = demo
    runs = classifier_runs(root / "runs")
    assert {r.name for r in runs} == {e.name for e in _demo_plan().experiments if e.kind == "classifier"}
    out = tmp_path / "evaluate"
    assert main(["evaluate", "--data", str(root / "phantom"), "--runs", *map(str, runs), "--fit-weights",
                 "--fit-temperature", "--out", str(out)]) == 0
    assert set(load_weights(out / "ensemble_weights.json").runs) == {r.name for r in runs}
    table = pd.read_csv(out / "evaluate_scores.csv")
    assert table["total"].notna().all() and (table["studies"] == 10).all()
    outputs = run_oof_notebook(root / "phantom", root / "runs", monkeypatch)
    assert "nested fit" in notebook_text(outputs) and notebook_images(outputs) == 4


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
    from rsna2024.training.runner import prepare_data  # main.py's data stage (the experiments come after it)

    with caplog.at_level(logging.WARNING):
        ready = prepare_data(data, tmp_path / "cache", workers=1)
    out = capsys.readouterr().out
    assert ready, out
    assert f"train_images/{study}/{series}: no usable slice in" in out and "unreadable DICOM file" in out
    assert "result: OK" in out
    assert f"study {study}, series {series} left out (preprocessing failed): DicomError" in caplog.text
    index = pd.read_csv(next((tmp_path / "cache").glob("*/index.csv")))
    assert index.loc[index["status"] == "failed", "series_id"].tolist() == [series]
    assert (index["status"] == "ok").sum() == len(index) - 1 and (data / "folds.csv").is_file()


def test_main_stops_on_a_contract_error_or_when_every_series_failed(phantom_dir, tmp_path, capsys, caplog):
    main = _main_module().main
    data = Path(shutil.copytree(phantom_dir, tmp_path / "data"))
    for f in data.glob("*_images/*/*/*.dcm"):
        f.write_bytes(b"broken")
    args = ["--data", str(data), "--cache", str(tmp_path / "cache"), "--workers", "1", "--runs", str(tmp_path / "runs")]
    with caplog.at_level(logging.ERROR):
        assert main(args) == 1
    assert "every series failed" in caplog.text
    desc = pd.read_csv(data / "train_series_descriptions.csv")
    desc.loc[0, "series_description"] = "Coronal"
    desc.to_csv(data / "train_series_descriptions.csv", index=False)
    assert main(args) == 1
    assert "unknown series_description value(s) Coronal" in capsys.readouterr().out
