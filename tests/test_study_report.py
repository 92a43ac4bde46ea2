"""``rsna2024 report``: one study's self-contained HTML page, from tiny runs trained for real on the session
phantom (fold 0 of 2, one epoch): the images with points and regions, the 25 rows beside the labels, the
confidences and warnings, a missing series type, points only, the command line."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from rsna2024.cli import main as cli_main
from rsna2024.constants import AXIAL_T2, LABELS, PRED_COLUMNS, study_row_ids
from rsna2024.data.folds import assign_folds
from rsna2024.dicom.series import Series
from rsna2024.inference.study_report import SIDE_COLOURS, build_study_report, draw_slice, render_html
from rsna2024.training.config import config_from_dict
from rsna2024.training.trainer import train_fold

pytestmark = pytest.mark.usefixtures("one_thread")
KEYPOINT_TASKS = ("keypoint_sagt2", "keypoint_sagt1", "keypoint_axial")
VOID = {"meta", "img", "br", "hr", "link", "input"}


def _keypoint_config(task: str):
    return config_from_dict({
        "name": task, "task": task, "folds": 2, "epochs": 1, "batch_size": 4, "workers": 0, "device": "cpu",
        "seed": 3, "model": {"name": "keypoint_tiny"}, "optim": {"lr": 3e-3},
        "data": {"image_size": 32, "slices": 5 if task == "keypoint_sagt2" else 3, "sigma": 1.5}})


def _classifier_config(task: str):
    return config_from_dict({
        "name": task, "task": task, "folds": 2, "epochs": 1, "batch_size": 8, "workers": 0, "device": "cpu",
        "seed": 3, "model": {"name": "roi25d_tiny_mobilenet", "params": {"hidden": 8}},
        "data": {"roi": {"size_mm": 40.0, "out_size": 32, "slices": 3}, "oof_points": "true"}})


@pytest.fixture(scope="module")
def trained(phantom_dir, phantom_cache, tmp_path_factory):
    """Fold 0 of the three keypoint runs, a global and a split subarticular classifier (2 folds)."""
    root = tmp_path_factory.mktemp("report_runs")
    studies = pd.read_csv(phantom_dir / "train.csv")["study_id"]
    folds = assign_folds(studies, np.zeros(len(studies)), n_folds=2, seed=0)
    folds.to_csv(root / "folds.csv", index=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        configs = [_keypoint_config(t) for t in KEYPOINT_TASKS] + \
            [_classifier_config(t) for t in ("global", "split_subarticular")]
        for cfg in configs:
            train_fold(cfg, phantom_dir, 0, out=root / "runs", cache=phantom_cache.parent,
                       folds_file=root / "folds.csv")
    finally:
        torch.set_num_threads(threads)
    runs = root / "runs"
    return {"folds_file": root / "folds.csv", "folds": folds, "keypoints": [runs / t for t in KEYPOINT_TASKS],
            "classifiers": [runs / "global", runs / "split_subarticular"]}


def _quirk_study(phantom_dir, key: str, split: str = "train") -> int:
    """The first study of ``split`` whose phantom quirk ``key`` is set."""
    for study in json.loads((phantom_dir / "phantom" / "studies.json").read_text()):
        if study["split"] == split and study["quirks"][key]:
            return int(study["study_id"])
    raise AssertionError(f"the test phantom has no {split} study with quirk {key}")


class _Page(HTMLParser):
    """The page's elements: images, cells with a row id, end tags matched against start tags."""

    def __init__(self, text: str):
        super().__init__()
        self.stack, self.errors, self.images, self.cells, self.tags = [], [], [], {}, []
        self._cell = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs)
        if tag == "td" and "data-row-id" in attrs:
            self._cell = attrs["data-row-id"]
            self.cells.setdefault(self._cell, [])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()
        if tag == "td":
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self.cells[self._cell].append(data)

    def cell(self, rid: str) -> str:
        return " ".join(self.cells[rid])


def _check_self_contained(text: str) -> _Page:
    page = _Page(text)
    assert page.errors == [] and page.stack == []
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"(src|href)\s*=\s*\"(?!data:)", text)  # no http, no relative file
    assert "<script" not in text and "<link" not in text and "url(" not in text
    for img in page.images:
        assert img["src"].startswith("data:image/png;base64,")
        png = Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1])))
        assert png.format == "PNG" and min(png.size) >= 100
    return page


def test_a_training_study_shows_points_regions_severities_beside_labels_and_warnings(phantom_dir, phantom_cache,
                                                                                       trained):
    study = _quirk_study(phantom_dir, "odd_slice_size")  # a slice of another size: the reader warns
    fold = int(trained["folds"].set_index("study_id").loc[study, "fold"])
    report = build_study_report(phantom_dir, study, trained["keypoints"] + trained["classifiers"], phantom_cache,
                                folds_path=trained["folds_file"])
    text = render_html(report)
    page = _check_self_contained(text)

    assert report.split == "train" and report.points_source == "predicted" and report.missing == {}
    # each run used its fold 0 model: out of fold when the study is in fold 0, else with a warning
    assert all(("fold 0 (out of fold)" if fold == 0 else "mean of folds 0") in line for line in report.runs)
    assert (fold == 0) != any("has no fold 1 model" in w for w in report.warnings)
    assert any("resampled to the majority size" in w for w in report.warnings)
    assert "resampled to the majority size" in text

    # 3 sagittal panels and one axial panel per level; 25 cells in the severity and the confidence tables
    titles = [p.title for p in report.panels]
    assert titles[:3] == ["Sagittal T2/STIR: spinal canal", "Sagittal T1: left foramina", "Sagittal T1: right foramina"]
    assert len([t for t in titles if t.startswith("Axial T2")]) == 5
    assert len(page.images) == sum(p.png is not None for p in report.panels) >= 4
    assert sorted(page.cells) == sorted(study_row_ids(study))
    assert text.count("data-row-id=") == 50

    labels = pd.read_csv(phantom_dir / "train.csv").set_index("study_id").loc[study]
    preds = report.predictions.set_index("row_id")
    assert len(preds) >= 15 and (preds["runs"] >= 1).all()
    np.testing.assert_allclose(preds[list(PRED_COLUMNS)].sum(axis=1), 1.0, atol=1e-6)
    for rid in study_row_ids(study):
        label = labels[rid.split("_", 1)[1]]
        cell = page.cell(rid)
        if isinstance(label, str):
            assert f"label: {label}" in cell
        if rid in preds.index:
            probs = preds.loc[rid, list(PRED_COLUMNS)].to_numpy(dtype=float)
            assert LABELS[int(np.argmax(probs))] in cell and " / ".join(f"{p:.2f}" for p in probs) in cell

    # stage 1: every sagittal point predicted, with its confidence, region slices and distance to the truth
    points = report.points.set_index("row_id")
    sag = points[~points["condition"].str.contains("subarticular")]
    assert sag["confidence"].notna().all() and sag["roi_instances"].str.count(",").eq(2).all()
    assert sag["error_mm"].notna().all() and (sag["error_mm"] >= 0).all()


def test_points_only_with_a_missing_series_type(phantom_dir, phantom_cache, trained):
    study = _quirk_study(phantom_dir, "missing_series")
    report = build_study_report(phantom_dir, study, trained["keypoints"], phantom_cache,
                                folds_path=trained["folds_file"])
    text = render_html(report)
    page = _check_self_contained(text)
    (absent, why), = report.missing.items()
    assert why == f"no {absent} series"
    assert f"{absent} not shown: no {absent} series" in text
    assert any(w.startswith(f"{absent}:") for w in report.warnings)
    assert not any(p.title.startswith(absent) for p in report.panels)
    assert any(p.title.startswith(AXIAL_T2) and p.png for p in report.panels)  # the other series still drawn
    assert report.predictions is None and sorted(page.cells) == sorted(study_row_ids(study))
    assert all("no classifier run" in page.cell(rid) for rid in study_row_ids(study))


def _study_without_axial(phantom_dir, study: int, dest):
    """A data folder holding one training study of the phantom, its Axial T2 series removed."""
    dest.mkdir()
    series = pd.read_csv(phantom_dir / "train_series_descriptions.csv")
    keep = series[(series["study_id"] == study) & (series["series_description"] != AXIAL_T2)]
    keep.to_csv(dest / "train_series_descriptions.csv", index=False)
    coords = pd.read_csv(phantom_dir / "train_label_coordinates.csv")
    coords[coords["series_id"].isin(keep["series_id"])].to_csv(dest / "train_label_coordinates.csv", index=False)
    wide = pd.read_csv(phantom_dir / "train.csv")
    wide[wide["study_id"] == study].to_csv(dest / "train.csv", index=False)
    for sid in keep["series_id"]:
        folder = Path("train_images") / str(study) / str(sid)
        shutil.copytree(phantom_dir / folder, dest / folder)
    return dest


def test_a_study_whose_axial_series_was_removed_renders_with_a_note(phantom_dir, trained, tmp_path):
    from rsna2024.dicom.cache import preprocess

    study = int(trained["folds"].loc[trained["folds"]["fold"] == 0, "study_id"].iloc[0])
    data = _study_without_axial(phantom_dir, study, tmp_path / "data")
    cache = preprocess(data, cache_root=tmp_path / "cache", split="train").parent
    report = build_study_report(data, study, trained["keypoints"] + trained["classifiers"], cache,
                                folds_path=trained["folds_file"])
    text = render_html(report)
    page = _check_self_contained(text)
    assert report.missing == {AXIAL_T2: "no Axial T2 series"}
    assert "Axial T2 not shown: no Axial T2 series" in text
    assert [p.title for p in report.panels] == ["Sagittal T2/STIR: spinal canal", "Sagittal T1: left foramina",
                                                "Sagittal T1: right foramina"]
    assert any("no Axial T2" in w for w in report.warnings)
    preds = report.predictions.set_index("row_id")
    for rid in study_row_ids(study):
        if "subarticular" in rid:
            assert rid not in preds.index and "no prediction" in page.cell(rid)
        else:
            assert rid in preds.index  # the sagittal conditions are still predicted
    assert report.axial_levels["instances"].eq("none").all()


def test_draw_slice_puts_marks_and_squares_on_the_canonical_pixels():
    pixels = np.zeros((1, 32, 32), dtype=np.float32)
    pixels[0, 0, 0] = 1.0
    series = Series(pixels=pixels, instance_numbers=[1], positions=[[0.0, 0.0, 0.0]], row_dirs=[[0.0, 1.0, 0.0]],
                    col_dirs=[[0.0, 0.0, -1.0]], spacings=[[1.0, 1.0]])
    left, right = SIDE_COLOURS["left"], SIDE_COLOURS["right"]
    png = draw_slice(series, 0, [(10.0, 20.0, "pred", left, "")], [((4.5, 4.5, 14.5, 14.5), right)])
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert img.shape == (320, 320, 3)  # 32 px enlarged 10 times: pixel k spans [10 k, 10 k + 10)

    def near(y, x, colour):
        return np.abs(img[y, x] - colour).max() <= 12

    assert near(205, 105, left)  # the x's centre: pixel (10, 20) -> (105, 205)
    assert near(202, 102, left) and near(208, 108, left) and near(202, 108, left)  # its two diagonals
    assert near(100, 50, right) and near(50, 100, right)  # the square's left and top edges at pixel edge 5
    assert near(100, 150, right) and near(150, 100, right)  # right and bottom at 15
    assert not near(100, 100, right) and not near(100, 100, left)  # inside the square: the image


def test_report_command_writes_once_and_names_bad_input(phantom_dir, phantom_cache, trained, tmp_path, capsys):
    study = _quirk_study(phantom_dir, "second_axial", split="test")
    out = tmp_path / "study.html"
    args = ["report", "--data", str(phantom_dir), "--study", str(study), "--cache", str(phantom_cache),
            "--runs", *map(str, trained["keypoints"] + trained["classifiers"][:1]), "--out", str(out)]
    assert cli_main(args) == 0
    assert f"study {study} (test)" in capsys.readouterr().out
    text = out.read_text()
    page = _check_self_contained(text)
    assert "label:" not in text and sorted(page.cells) == sorted(study_row_ids(study))
    assert "mean of folds 0" in text
    assert cli_main(args) == 2 and "--overwrite" in capsys.readouterr().err  # never replaced silently
    assert cli_main(args + ["--overwrite"]) == 0
    bad = ["report", "--data", str(phantom_dir), "--cache", str(phantom_cache), "--out", str(tmp_path / "x.html")]
    assert cli_main(bad + ["--study", "123", "--runs", str(trained["keypoints"][0])]) == 2
    assert "study 123 is not listed" in capsys.readouterr().err
    assert cli_main(bad + ["--study", str(study), "--runs", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()
