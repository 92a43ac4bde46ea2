"""``rsna2024 predict`` on the demo runs (the session fixture ``demo_runs``: every demo experiment, 2 folds, one
epoch): a complete submission from a read-only, test-only data folder holding three damaged studies (no axial
series, a truncated DICOM file, a listed series folder missing), the weights file's blend checked by hand, the
flip test-time augmentation against hand-mirrored series, and the errors for run folders predict cannot use."""
from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from fuzz_helpers import EveryFile, PixelBytes, RemoveTag, apply_mutations

from rsna2024.baselines.prior import PRIOR_FILE, fit_prior, load_prior
from rsna2024.cli import main
from rsna2024.constants import AXIAL_T2, CONDITIONS, MIRRORED_CONDITION, PRED_COLUMNS, SAGITTAL_T1, study_row_ids
from rsna2024.data.contract import labels_long, load_labels_wide
from rsna2024.dicom.geometry import mirror_series
from rsna2024.dicom.series import Series
from rsna2024.inference.predict import mean_rows, predict_submission, swap_sides
from rsna2024.metric import check_submission
from rsna2024.training.runner import SUBMISSION_FILE, SUBMISSION_INPUTS
from rsna2024.utils.logging import captured_warnings

NO_AXIAL, TRUNCATED, MISSING, NO_IMAGES = 900001, 900002, 900003, 900004
NO_POSITION, SHORT_PIXELS = 900005, 900006  # damaged by the fuzz suite's mutations, every file of one series
POINT_BASELINES = ("s0_", "s1_", "s2_")  # S3 predicts every row of a study from one slice: left out here


def _runs(demo_runs, baselines=POINT_BASELINES) -> list[Path]:
    return [p for p in demo_runs.run_dirs if p.name.startswith(("keypoint_", "split_", "global", *baselines))]


def _listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _set_writable(folder: Path, writable: bool) -> None:
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~bits)


def _damaged_test_folder(phantom: Path, root: Path) -> Path:
    """A test-only data folder (no train.csv, no sample_submission.csv): the phantom's test studies, plus three
    training studies copied under new ids and damaged: NO_AXIAL lacks its Axial T2 series (not listed, no folder),
    TRUNCATED has a truncated DICOM file in its Sagittal T2/STIR series, MISSING lists a Sagittal T1 series whose
    folder is absent, NO_IMAGES lists three series and has no folder at all; with the fuzz suite's mutations,
    NO_POSITION's Sagittal T2/STIR files lack ImagePositionPatient and SHORT_PIXELS's Axial T2 files have their
    PixelData cut short."""
    data = root / "data"
    listed = [pd.read_csv(phantom / "test_series_descriptions.csv")]
    shutil.copytree(phantom / "test_images", data / "test_images")
    train = pd.read_csv(phantom / "train_series_descriptions.csv")
    damaged = (NO_AXIAL, TRUNCATED, MISSING, NO_IMAGES, NO_POSITION, SHORT_PIXELS)
    for new, old in zip(damaged, sorted(train["study_id"].unique())[:len(damaged)]):
        if new != NO_IMAGES:
            shutil.copytree(phantom / "train_images" / str(old), data / "test_images" / str(new))
        listed.append(train[train["study_id"] == old].assign(study_id=new))
    desc = pd.concat(listed, ignore_index=True)
    folder = lambda study, kind: data / "test_images" / str(study) / str(  # noqa: E731
        desc.loc[(desc["study_id"] == study) & (desc["series_description"] == kind), "series_id"].iloc[0])
    for series in desc.loc[(desc["study_id"] == NO_AXIAL) & (desc["series_description"] == AXIAL_T2), "series_id"]:
        shutil.rmtree(data / "test_images" / str(NO_AXIAL) / str(series))
    desc = desc[~((desc["study_id"] == NO_AXIAL) & (desc["series_description"] == AXIAL_T2))]
    victim = sorted(folder(TRUNCATED, "Sagittal T2/STIR").glob("*.dcm"))[1]
    victim.write_bytes(victim.read_bytes()[:-1000])
    shutil.rmtree(folder(MISSING, SAGITTAL_T1))
    apply_mutations(folder(NO_POSITION, "Sagittal T2/STIR"), [EveryFile(0, RemoveTag(0, "ImagePositionPatient"))])
    apply_mutations(folder(SHORT_PIXELS, AXIAL_T2), [EveryFile(0, PixelBytes(0, -100))])
    desc.to_csv(data / "test_series_descriptions.csv", index=False)
    return data


@pytest.fixture(scope="module")
def damaged(phantom_dir, demo_runs, tmp_path_factory):
    """predict (the Python API) on the read-only damaged test folder with a temporary cache; the warnings
    logged, the data folder's listing before and after."""
    root = tmp_path_factory.mktemp("predict")
    data = _damaged_test_folder(phantom_dir, root)
    before, siblings = _listing(data), sorted(p.name for p in root.iterdir())
    _set_writable(data, False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # one study per chunk: NO_IMAGES alone is a chunk in which every series fails
        with captured_warnings() as messages:
            result = predict_submission(data, _runs(demo_runs), root / "out" / "submission.csv", device="cpu",
                                        chunk_studies=1)
    finally:
        torch.set_num_threads(threads)
        after = _listing(data)
        _set_writable(data, True)
    yield SimpleNamespace(data=data, root=root, result=result, warnings="\n".join(messages), before=before,
                          after=after, siblings=siblings)


def _expected_ids(data: Path) -> list[str]:
    studies = sorted(pd.read_csv(data / "test_series_descriptions.csv")["study_id"].unique())
    return [r for s in studies for r in study_row_ids(int(s))]


def test_submission_is_complete_from_a_read_only_test_only_folder(damaged):
    written = pd.read_csv(damaged.result.out)
    expected = _expected_ids(damaged.data)
    assert len(expected) == 8 * 25 and not (damaged.data / "sample_submission.csv").exists()
    check_submission(written, expected_row_ids=expected)
    assert list(written["row_id"]) == expected
    values = written[list(PRED_COLUMNS)].to_numpy()
    assert ((values >= 0) & (values <= 1)).all() and np.abs(values.sum(axis=1) - 1).max() < 1e-9
    # the data folder was only read; the cache went to a temporary folder (gone), never beside the data
    assert damaged.after == damaged.before
    assert sorted(p.name for p in damaged.root.iterdir()) == sorted([*damaged.siblings, "out"])
    assert sorted(p.name for p in (damaged.root / "out").iterdir()) == ["submission.csv"]


def test_damaged_studies_are_named_with_their_cause_and_get_the_stored_prior(damaged, demo_runs):
    summary = damaged.result.summary.set_index("study_id")
    assert {NO_AXIAL, TRUNCATED, MISSING, NO_IMAGES, NO_POSITION, SHORT_PIXELS} <= set(summary.index)
    assert "ImagePositionPatient" in summary.loc[NO_POSITION, "cause"]
    assert "PixelData" in summary.loc[SHORT_PIXELS, "cause"]
    # (the study may hold a second Axial T2 series, which still places some levels)
    assert summary.loc[NO_POSITION, "rows_from_prior"] >= 5 and summary.loc[SHORT_PIXELS, "rows_from_prior"] >= 1
    assert "unreadable" in summary.loc[SHORT_PIXELS, "cause"]
    assert "no Axial T2 series" in summary.loc[NO_AXIAL, "cause"]
    assert "slice(s) dropped" in summary.loc[TRUNCATED, "cause"] and "PixelData" in summary.loc[TRUNCATED, "cause"]
    assert "does not exist" in summary.loc[MISSING, "cause"]
    for study, cause in (("900001", "no Axial T2 series"), ("900002", "dropped"), ("900003", "does not exist")):
        assert any(study in m and cause in m for m in damaged.warnings.splitlines()), (study, damaged.warnings)
    # no axial series: both subarticular sides at every level; no Sagittal T1: both foraminal sides
    assert summary.loc[NO_AXIAL, "rows_from_prior"] >= 10 and summary.loc[MISSING, "rows_from_prior"] >= 10
    # no series at all: every row; each of its three series named
    assert summary.loc[NO_IMAGES, "rows_from_prior"] == 25
    assert summary.loc[NO_IMAGES, "cause"].count("does not exist") >= 3
    printed = damaged.result.format_summary()
    assert all(str(s) in printed for s in (NO_AXIAL, TRUNCATED, MISSING)) and "rows_from_prior" in printed

    # without train.csv the prior is the one the classifier runs stored: that of the training labels
    assert damaged.result.prior_source.endswith(PRIOR_FILE)
    prior = load_prior(damaged.result.prior_source).set_index(["condition", "level"])
    expected = fit_prior(labels_long(load_labels_wide(demo_runs.data))).set_index(["condition", "level"])
    np.testing.assert_allclose(prior.loc[expected.index].to_numpy(), expected.to_numpy(), atol=1e-12)
    sub = damaged.result.submission.set_index("row_id")
    for rid in study_row_ids(NO_AXIAL):
        if "subarticular" in rid:
            condition, level = rid.split("_", 1)[1][:-6], rid[-5:]
            np.testing.assert_allclose(sub.loc[rid].to_numpy(dtype=float), prior.loc[(condition, level)].to_numpy())


def test_weights_change_the_blend_as_computed_by_hand(damaged, demo_runs, tmp_path, capsys, one_thread):
    weights = {"runs": {"split_spinal": 3.0, "global": 1.0, "split_foraminal": 0.5, "split_subarticular": 2.0},
               "temperature": {"spinal_canal_stenosis": 2.0}}
    (tmp_path / "w.json").write_text(json.dumps(weights))
    out = tmp_path / "weighted.csv"
    _set_writable(damaged.data, False)
    try:
        code = main(["predict", "--data", str(damaged.data), "--runs", *map(str, _runs(demo_runs)), "--out", str(out),
                     "--weights", str(tmp_path / "w.json"), "--device", "cpu"])
    finally:
        _set_writable(damaged.data, True)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert all(str(s) in printed for s in (NO_AXIAL, TRUNCATED, MISSING)) and "submission written to" in printed

    # by hand: per row the weighted mean of the runs that predict it, then p ** (1 / T) renormalised
    tables = damaged.result.tables
    rows = []
    for rid in damaged.result.submission["row_id"]:
        num, den = np.zeros(3), 0.0
        for run, w in weights["runs"].items():
            hit = tables[run][tables[run]["row_id"] == rid]
            if len(hit):
                num += w * hit[list(PRED_COLUMNS)].to_numpy(dtype=float)[0]
                den += w
        rows.append(num / den if den else np.full(3, np.nan))
    hand = np.array(rows)
    spinal = damaged.result.submission["row_id"].str.contains("spinal_canal").to_numpy()
    hand[spinal] = hand[spinal] ** 0.5
    hand = hand / hand.sum(axis=1, keepdims=True)
    got = pd.read_csv(out)
    known = ~np.isnan(hand).any(axis=1)
    assert list(got["row_id"]) == list(damaged.result.submission["row_id"]) and known.sum() > 60
    np.testing.assert_allclose(got.loc[known, list(PRED_COLUMNS)].to_numpy(), hand[known], atol=1e-9)
    # rows no weighted run predicts are the prior, as in the unweighted submission; the weights moved the rest
    unweighted = damaged.result.submission
    prior_rows = ~known & ~unweighted["row_id"].isin(pd.concat(tables.values())["row_id"]).to_numpy()
    np.testing.assert_allclose(got.loc[prior_rows, list(PRED_COLUMNS)].to_numpy(),
                               unweighted.loc[prior_rows, list(PRED_COLUMNS)].to_numpy())
    assert np.abs(got[list(PRED_COLUMNS)].to_numpy() - unweighted[list(PRED_COLUMNS)].to_numpy()).max() > 1e-3


def test_run_folders_predict_cannot_use_are_clear_errors(demo_runs, tmp_path, capsys):
    data, good = str(demo_runs.data), [str(p) for p in _runs(demo_runs, ())]
    untrained = tmp_path / "split_spinal_untrained"
    untrained.mkdir()
    shutil.copy(demo_runs.runs / "split_spinal" / "config.yaml", untrained / "config.yaml")
    broken, taskless = tmp_path / "broken", tmp_path / "taskless"
    for folder, text in ((broken, "task: [unclosed\n"), (taskless, "name: x\nepochs: 1\n")):
        folder.mkdir()
        (folder / "config.yaml").write_text(text)
    cases = {
        str(tmp_path / "nowhere"): "folder not found",
        str(untrained): f"{untrained} has no fold model (no fold*_best.pt)",
        str(demo_runs.runs / "keypoint_report"): "is not a run folder (no config.yaml",
        str(broken): f"{broken / 'config.yaml'}: not valid YAML",
        str(taskless): f"{taskless / 'config.yaml'}: not an experiment config (no task)",
    }
    for run, message in cases.items():
        assert main(["predict", "--data", data, "--runs", *good, run, "--out", str(tmp_path / "s.csv")]) == 2
        assert message in capsys.readouterr().err, run
    keypoints = [g for g in good if Path(g).name.startswith("keypoint_")]
    assert main(["predict", "--data", data, "--runs", *keypoints, "--out", str(tmp_path / "s.csv")]) == 2
    assert "predict needs keypoint runs (keypoint_*: the points) and classifier" in capsys.readouterr().err
    existing = tmp_path / "done.csv"
    existing.write_text("kept")
    assert main(["predict", "--data", data, "--runs", *good, "--out", str(existing)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and existing.read_text() == "kept"


def test_runner_ended_with_the_submission_of_its_classifier_runs(demo_runs):
    submission = pd.read_csv(demo_runs.runs / SUBMISSION_FILE)
    check_submission(submission, expected_row_ids=_expected_ids(demo_runs.data))
    inputs = json.loads((demo_runs.runs / SUBMISSION_INPUTS).read_text())
    classifiers = {p.name for p in demo_runs.run_dirs if p.name.startswith(("keypoint_", "split_", "global"))}
    assert set(inputs["runs"]) == classifiers  # the seed baselines are for comparison, not the submission
    assert all(any(f.endswith("_best.pt") for f in files) for files in inputs["runs"].values())


# --------------------------------------------------------------------------- flip test-time augmentation
def _hand_mirror(series: Series) -> Series:
    """The patient's left-right mirror of a canonical series, by hand: sagittal (slices along +x, patient right to
    left) -> the slice order reverses; axial (image x along +x) -> each slice's columns reverse and its first pixel
    is the old last column's, mirrored."""
    m = np.array([-1.0, 1.0, 1.0])
    if abs(series.series_normal[0]) > 0.7:  # sagittal
        order = slice(None, None, -1)
        return Series(pixels=np.ascontiguousarray(series.pixels[order]),
                      instance_numbers=series.instance_numbers[order], positions=(series.positions * m)[order],
                      row_dirs=(series.row_dirs * m)[order], col_dirs=(series.col_dirs * m)[order],
                      spacings=series.spacings[order], study_id=series.study_id, series_id=series.series_id,
                      description=series.description)
    cols = series.pixels.shape[2]
    last = series.positions + (cols - 1) * series.spacings[:, 1:2] * series.row_dirs
    return Series(pixels=np.ascontiguousarray(series.pixels[:, :, ::-1]), instance_numbers=series.instance_numbers,
                  positions=last * m, row_dirs=-(series.row_dirs * m), col_dirs=series.col_dirs * m,
                  spacings=series.spacings, study_id=series.study_id, series_id=series.series_id,
                  description=series.description)


def _axial(cols: int = 5) -> Series:
    rows, n = 4, 3
    tilt = np.array([0.0, np.sin(0.2), np.cos(0.2)])  # a slightly tilted axial stack, slices head to foot
    col_dir = np.cross(tilt, [1.0, 0.0, 0.0])
    return Series(pixels=np.arange(n * rows * cols, dtype=np.float32).reshape(n, rows, cols),
                  instance_numbers=[7, 8, 9], positions=[[-20.0, -30.0, 10.0 - 4 * k] for k in range(n)],
                  row_dirs=np.tile([1.0, 0.0, 0.0], (n, 1)), col_dirs=np.tile(col_dir, (n, 1)),
                  spacings=np.tile([0.8, 0.6], (n, 1)), study_id=1, series_id=2, description=AXIAL_T2)


def test_mirror_series_puts_every_pixel_at_its_mirrored_place():
    axial = _axial()
    mirrored = mirror_series(axial)
    np.testing.assert_array_equal(mirrored.pixels, axial.pixels[:, :, ::-1])
    s, r, c = np.meshgrid(range(3), range(4), range(5), indexing="ij")
    np.testing.assert_allclose(mirrored.pixel_to_patient(s, c, r),
                               axial.pixel_to_patient(s, 4 - c, r) * [-1, 1, 1], atol=1e-9)
    np.testing.assert_allclose(mirrored.row_dirs, axial.row_dirs)  # still patient right on the image left
    hand = _hand_mirror(axial)
    for name in ("positions", "row_dirs", "col_dirs", "spacings"):
        np.testing.assert_allclose(getattr(mirrored, name), getattr(hand, name), atol=1e-9)
    twice = mirror_series(mirrored)
    np.testing.assert_array_equal(twice.pixels, axial.pixels)
    np.testing.assert_allclose(twice.positions, axial.positions, atol=1e-9)


@pytest.fixture(scope="module")
def test_points(demo_runs):
    """The test split's cached series (the runner's cache) and stage 1's points of it in patient mm."""
    from rsna2024.classifiers.dataset import SeriesStore
    from rsna2024.classifiers.samples import load_points, points_in_mm
    from rsna2024.keypoints.studies import resolve_cache

    store = SeriesStore(resolve_cache(demo_runs.data, demo_runs.cache))
    coords = pd.read_csv(demo_runs.runs / "coords_test.csv").dropna(subset=["x", "y"])
    studies = sorted(coords["study_id"].unique())
    return store, studies, points_in_mm(load_points(coords), store.load)


def _hand_mirrored_store(store, studies):
    from rsna2024.classifiers.dataset import SeriesStore

    return SeriesStore.from_series([_hand_mirror(store.load(st, se)) for st, se in store.described
                                    if st in set(studies)])


def _mirrored_points(points: pd.DataFrame) -> pd.DataFrame:
    out = points.assign(x_mm=-points["x_mm"])
    return out.assign(condition=out["condition"].map(MIRRORED_CONDITION))


def _predictor(demo_runs, names, tta):
    from rsna2024.inference.predict import Predictor, inspect_run, load_classifier_run

    runs = [load_classifier_run(inspect_run(demo_runs.runs / n), torch.device("cpu")) for n in names]
    return Predictor(demo_runs.data, "test", [], runs, torch.device("cpu"), None, 16, tta, 1)


def test_flip_tta_gives_a_hand_mirrored_study_the_same_rows_with_sides_swapped(demo_runs, test_points, one_thread):
    """With --tta a run's rows are the mean over the input and its mirror; so the rows of a hand-mirrored study (its
    points mirrored, sides swapped) must be those of the study with left and right swapped back."""
    store, studies, points = test_points
    hand, hand_points = _hand_mirrored_store(store, studies), _mirrored_points(points)
    predictor = _predictor(demo_runs, ["global", "split_spinal"], tta=True)
    for run in predictor.classifiers:
        assert not run.task.mirror_invariant
        plain = _predictor(demo_runs, [run.folder.name], tta=False)
        for models in (run.models, plain.classifiers[0].models):  # two epochs leave the head near zero: make the
            _randomise_heads(models)  # outputs depend on the images, the same way in both predictors
        rows = predictor.run_rows(run, studies, store, points).set_index("row_id")
        mirrored = predictor.run_rows(run, studies, hand, hand_points)
        mirrored = mirrored.assign(row_id=swap_sides(mirrored["row_id"])).set_index("row_id")
        assert len(rows) >= 10 and sorted(rows.index) == sorted(mirrored.index)
        np.testing.assert_allclose(mirrored.loc[rows.index].to_numpy(), rows.to_numpy(), atol=2e-5)
        alone = plain.run_rows(plain.classifiers[0], studies, store, points).set_index("row_id")
        assert np.abs(alone.loc[rows.index].to_numpy() - rows.to_numpy()).max() > 1e-3  # the mirror counted


def _randomise_heads(models: dict) -> None:
    """Seeded random weights (sd 30) in each fold model's last linear layer (the same for the same fold)."""
    for fold, model in models.items():
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            head.weight.copy_(30 * torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(fold)))


def test_side_normalised_split_models_see_the_mirror_as_the_same_input(demo_runs, test_points, one_thread):
    """split_foraminal / split_subarticular cut each side as a left one, so a mirrored study with sides swapped
    gives their rows unchanged without any TTA: why --tta skips them."""
    store, studies, points = test_points
    hand, hand_points = _hand_mirrored_store(store, studies), _mirrored_points(points)
    predictor = _predictor(demo_runs, ["split_foraminal", "split_subarticular"], tta=False)
    for run in predictor.classifiers:
        assert run.task.mirror_invariant
        rows = predictor.run_rows(run, studies, store, points).set_index("row_id")
        mirrored = predictor.run_rows(run, studies, hand, hand_points)
        mirrored = mirrored.assign(row_id=swap_sides(mirrored["row_id"])).set_index("row_id")
        assert len(rows) > 10 and sorted(rows.index) == sorted(mirrored.index)
        np.testing.assert_allclose(mirrored.loc[rows.index].to_numpy(), rows.to_numpy(), atol=2e-5)


def test_swap_sides_and_mean_rows():
    ids = pd.Series(["7_left_subarticular_stenosis_l1_l2", "7_right_neural_foraminal_narrowing_l5_s1",
                     "7_spinal_canal_stenosis_l3_l4"])
    assert list(swap_sides(ids)) == ["7_right_subarticular_stenosis_l1_l2", "7_left_neural_foraminal_narrowing_l5_s1",
                                     "7_spinal_canal_stenosis_l3_l4"]
    assert {MIRRORED_CONDITION[MIRRORED_CONDITION[c]] for c in CONDITIONS} == set(CONDITIONS)
    a = pd.DataFrame({"row_id": ["x", "y"], "normal_mild": [0.2, 0.5], "moderate": [0.3, 0.5], "severe": [0.5, 0.0]})
    b = pd.DataFrame({"row_id": ["x"], "normal_mild": [0.6], "moderate": [0.3], "severe": [0.1]})
    out = mean_rows([a, b]).set_index("row_id")
    np.testing.assert_allclose(out.loc["x"].to_numpy(), [0.4, 0.3, 0.3])
    np.testing.assert_allclose(out.loc["y"].to_numpy(), [0.5, 0.5, 0.0])
