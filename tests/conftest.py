"""Shared fixtures: a small phantom dataset generated once per test session."""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from fuzz_helpers import fuzz_summary, register_profiles

from rsna2024.synthetic.generate import generate_dataset
from rsna2024.synthetic.quirks import TEST_QUIRKS

PHANTOM_TRAIN_STUDIES = 8
PHANTOM_TEST_STUDIES = 2

register_profiles()  # hypothesis profile from HYPOTHESIS_PROFILE: default, or long (nightly; see bench/README.md)


def pytest_terminal_summary(terminalreporter):
    """How many fuzz cases ran, and how long they took (shown by ``pytest -q`` too)."""
    line = fuzz_summary()
    if line:
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A small phantom (8 train + 2 test studies, size small, seed 0) in Kaggle layout.

    Quirk rates are raised (``TEST_QUIRKS``, with ``ensure_each``) so the dataset holds at least one
    study with a second Axial T2, one training study lacking a series type, one series with a slice
    of a different size, instance numbers not starting at 1 and instance numbers (file names) not
    in position order. Ground truth lies in ``phantom/`` (``landmarks.csv``, ``labels.csv``,
    ``studies.json``). Treat it as read-only: it is shared by the whole session.
    """
    out = tmp_path_factory.mktemp("phantom") / "data"
    return generate_dataset(out, studies=PHANTOM_TRAIN_STUDIES, test_studies=PHANTOM_TEST_STUDIES, seed=0,
                            size="small", workers=1, quirks=TEST_QUIRKS)


@pytest.fixture(scope="session")
def phantom_cache(phantom_dir, tmp_path_factory) -> Path:
    """The preprocessing cache folder (default parameters) of :func:`phantom_dir`, both splits. Read-only."""
    from rsna2024.dicom.cache import preprocess

    return preprocess(phantom_dir, cache_root=tmp_path_factory.mktemp("phantom_cache"), split="all").parent


@pytest.fixture
def one_thread():
    """One torch intra-op thread: on a busy 2-core machine two threads oversubscribe and run far slower."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def dead_pid() -> int:
    """The pid of a process that has ended (a killed writer's)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def stale_temporary(folder: Path, name: str, pid: int, age_s: float = 3600.0) -> Path:
    """A temporary of the atomic writers beside ``folder/name`` as process ``pid`` of this host left it ``age_s``
    seconds ago (half written)."""
    import os
    import time

    from rsna2024.utils.io import TEMP_PATTERN, _temp_prefix

    path = folder / (_temp_prefix(name).replace(f".{os.getpid()}.", f".{pid}.") + "abcd1234.tmp")
    assert TEMP_PATTERN.match(path.name), path.name
    path.write_bytes(b"half")
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


@pytest.fixture(scope="session")
def demo_runs(phantom_dir, tmp_path_factory) -> SimpleNamespace:
    """Every demo experiment (``experiments/demo``) trained by ``rsna2024 run`` on a copy of :func:`phantom_dir`:
    2 folds, one epoch, CPU (about 80 s on 2 cores). The runner ends with ``predict`` on the test split
    (``<runs>/submission.csv``). Fields: ``data``, ``cache`` (root), ``runs`` (the runs folder), ``run_dirs``
    (every run folder). Read-only: shared by the session."""
    import torch

    from rsna2024.cli import main

    root = tmp_path_factory.mktemp("demo_runs")
    data = shutil.copytree(phantom_dir, root / "data")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["run", "--data", str(data), "--cache", str(root / "cache"), "--experiments",
                     str(Path(__file__).resolve().parents[1] / "experiments" / "demo"), "--runs", str(root / "runs"),
                     "--set", "folds=2", "--set", "epochs=1", "--device", "cpu", "--workers", "1"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return SimpleNamespace(data=data, cache=root / "cache", runs=root / "runs",
                           run_dirs=sorted(p.parent for p in (root / "runs").glob("*/config.yaml")))
