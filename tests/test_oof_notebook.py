"""``notebooks/oof_ensemble.ipynb`` executed top to bottom with nbclient against fabricated run folders in the demo's
layout (split and global runs with OOF files, plus a keypoint run and a seed baseline it must leave out), and
committed without outputs."""
from __future__ import annotations

import nbformat
import numpy as np
import pytest
from oof_runs import (
    NOTEBOOK,
    calibrated,
    notebook_images,
    notebook_text,
    run_oof_notebook,
    run_table,
    write_data,
    write_run,
)

from rsna2024.inference.evaluate import classifier_runs


@pytest.fixture
def demo_like(tmp_path):
    """``data/`` (30 studies, 3 folds) and ``runs/`` as ``python main.py --demo`` leaves them, OOF files fabricated."""
    data, q = write_data(tmp_path / "data", studies=30, folds=3)
    ids, good = q["row_id"].to_numpy(), calibrated(q[["normal_mild", "moderate", "severe"]].to_numpy())
    rng = np.random.default_rng(1)
    runs = tmp_path / "runs"
    for name in ("spinal", "foraminal", "subarticular"):
        mask = np.array([name in r for r in ids])
        noisy = 0.7 * good + 0.3 * rng.dirichlet([1, 1, 1], len(ids))
        write_run(runs, f"split_{name}", f"split_{name}", run_table(ids, noisy, mask), data)
    write_run(runs, "global", "global", run_table(ids, rng.dirichlet([1, 1, 1], len(ids))), data)
    write_run(runs, "s0_efficientnetv2_s", "s0_image_classifier", run_table(ids, good), data)
    (runs / "keypoint_sagt2").mkdir()
    (runs / "keypoint_sagt2" / "config.yaml").write_text("name: keypoint_sagt2\ntask: keypoint_sagt2\n")
    return data, runs


def test_classifier_runs_picks_split_and_global(demo_like):
    _, runs = demo_like
    assert [r.name for r in classifier_runs(runs)] == ["global", "split_foraminal", "split_spinal",
                                                      "split_subarticular"]
    assert classifier_runs(runs, points="true") == []  # no oof_true_points.csv fabricated


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def test_notebook_runs_top_to_bottom(demo_like, monkeypatch):
    data, runs = demo_like
    text = notebook_text(outputs := run_oof_notebook(data, runs, monkeypatch))
    assert "runs: global, split_foraminal, split_spinal, split_subarticular" in text
    assert "s0_efficientnetv2_s" not in text and "keypoint" not in text
    assert "| ensemble (nested fit) | nested |" in text and "gain:" in text
    assert '"runs": {' in text  # the fitted weights file's content
    assert notebook_images(outputs) == 4  # scores, fits, calibration, confusion matrices
    assert not (runs / "evaluate").exists()  # the notebook writes nothing
