"""Stage-2 tasks on the fold trainer, on the session phantom: a tiny split and a tiny global model train one
epoch, validate with the competition score, and write OOF files (predicted and true points) in submission format."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from toy_task import one_thread  # noqa: F401 - used by pytestmark

from rsna2024.classifiers.oof import fold_prior
from rsna2024.constants import CONDITION_GROUPS, CONDITION_NAMES, CONDITIONS, PRED_COLUMNS, study_row_ids
from rsna2024.data.contract import load_labels_long, load_labels_wide, load_submission
from rsna2024.data.folds import assign_folds
from rsna2024.errors import ConfigError
from rsna2024.metric import score_labelled_rows
from rsna2024.training.config import config_from_dict
from rsna2024.training.trainer import train_fold

FORAMINAL = CONDITION_GROUPS["foraminal"]
pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def stage2(phantom_dir, tmp_path_factory):
    """A runs folder with stage 1's 'predicted' points (the true ones jittered by ~1.5 px, one point left
    empty) at the default path, and 2 folds of the phantom's studies."""
    root = tmp_path_factory.mktemp("stage2")
    wide = load_labels_wide(phantom_dir)
    folds = assign_folds(wide["study_id"], np.zeros(len(wide)), n_folds=2, seed=1)
    folds.to_csv(root / "folds.csv", index=False)
    coords = pd.read_csv(phantom_dir / "train_label_coordinates.csv")
    rng = np.random.default_rng(5)
    coords[["x", "y"]] += rng.normal(0, 1.5, (len(coords), 2))
    valid0 = set(folds.loc[folds["fold"] == 0, "study_id"])
    blank = coords.index[coords["study_id"].isin(valid0)
                         & (coords["condition"] == CONDITION_NAMES[FORAMINAL[0]])][0]
    coords.loc[blank, ["series_id", "instance_number", "x", "y"]] = np.nan
    (root / "runs").mkdir()
    coords.to_csv(root / "runs" / "coords_oof.csv", index=False)
    blank_row = f"{coords.loc[blank, 'study_id']}_{FORAMINAL[0]}_{coords.loc[blank, 'level'].lower().replace('/', '_')}"
    return {"root": root, "runs": root / "runs", "folds": folds, "wide": wide, "blank_row": blank_row}


def _config(task: str, name: str, epochs: int = 1, **data):
    raw = {"name": name, "task": task, "epochs": epochs, "batch_size": 8, "workers": 0, "device": "cpu", "folds": 2,
           "seed": 3, "model": {"name": "roi25d_tiny_mobilenet", "params": {"hidden": 8}},
           "data": {"roi": {"out_size": 32, "slices": 3, "jitter": {"mm": 2.0, "slices": 1}}, **data}}
    return config_from_dict(raw)


def _train(cfg, phantom_dir, phantom_cache, stage2, fold):
    return train_fold(cfg, phantom_dir, fold, out=stage2["runs"], cache=phantom_cache.parent,
                      folds_file=stage2["root"] / "folds.csv")


def _check_submission(oof: pd.DataFrame, studies) -> None:
    expected = sorted(r for s in studies for r in study_row_ids(s))
    assert sorted(oof["row_id"]) == expected
    np.testing.assert_allclose(oof[list(PRED_COLUMNS)].sum(axis=1), 1.0, atol=1e-9)
    assert (oof[list(PRED_COLUMNS)] > 0).all().all()


def test_split_model_trains_scores_and_writes_oof_files(phantom_dir, phantom_cache, stage2):
    cfg = _config("split_foraminal", "split_foraminal_tiny")
    results = [_train(cfg, phantom_dir, phantom_cache, stage2, fold) for fold in (0, 1)]
    run = stage2["runs"] / cfg.name
    folds = stage2["folds"]
    record = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][0]
    assert np.isfinite(record["score"]) and np.isfinite(record["score_foraminal"])
    assert results[0].metric == "score" and results[0].best_value == pytest.approx(record["score"])

    valid0 = folds.loc[folds["fold"] == 0, "study_id"]
    pred, true = pd.read_csv(run / "oof_fold0.csv"), pd.read_csv(run / "oof_true_points_fold0.csv")
    for table in (pred, true):
        _check_submission(table, valid0)
    group = pred["row_id"].str.contains("neural_foraminal")
    assert set(pred.loc[~group, "source"]) == {"prior"} and set(pred.loc[group, "source"]) <= {"model", "fallback"}
    # the point stage 1 left empty falls back to the prior; on the true points the model predicts it
    blank = stage2["blank_row"]
    assert pred.set_index("row_id").loc[blank, "source"] == "fallback"
    assert true.set_index("row_id").loc[blank, "source"] == "model"
    # predicted and true points give different regions, hence different predictions
    model_rows = (pred["source"] == "model") & (true["source"] == "model")
    assert not np.allclose(pred.loc[model_rows, list(PRED_COLUMNS)], true.loc[model_rows, list(PRED_COLUMNS)])
    # rows the model does not cover hold the training folds' prior
    prior = fold_prior(stage2["wide"], folds.loc[folds["fold"] == 1, "study_id"]).set_index(["condition", "level"])
    row = pred[pred["row_id"].str.endswith("spinal_canal_stenosis_l4_l5")].iloc[0]
    np.testing.assert_allclose(row[list(PRED_COLUMNS)].to_numpy(dtype=float),
                               prior.loc[("spinal_canal_stenosis", "l4_l5")].to_numpy(dtype=float))

    merged = pd.read_csv(run / "oof.csv")
    _check_submission(merged, folds["study_id"])
    _check_submission(pd.read_csv(run / "oof_true_points.csv"), folds["study_id"])
    scores = json.loads((run / "oof_scores.json").read_text())
    assert set(scores) == {"predicted", "true"}
    rescored, _ = score_labelled_rows(load_labels_long(phantom_dir), load_submission(run / "oof.csv"))
    assert scores["predicted"]["total"] == pytest.approx(rescored["total"])


def test_global_model_covers_every_condition(phantom_dir, phantom_cache, stage2):
    cfg = _config("global", "global_tiny")
    result = _train(cfg, phantom_dir, phantom_cache, stage2, 1)
    assert np.isfinite(result.best_value)
    run = stage2["runs"] / cfg.name
    oof = pd.read_csv(run / "oof_fold1.csv")
    _check_submission(oof, stage2["folds"].loc[stage2["folds"]["fold"] == 1, "study_id"])
    assert "prior" not in set(oof["source"]) and (oof["source"] == "model").mean() > 0.8
    assert not (run / "oof.csv").exists()  # fold 0 is not trained: nothing to merge yet


def test_predict_studies_repeats_the_oof_rows_without_a_fold_context(phantom_dir, phantom_cache, stage2):
    from rsna2024.classifiers.dataset import SeriesStore
    from rsna2024.classifiers.samples import load_points, points_in_mm
    from rsna2024.training.checkpoint import load_fold_model
    from rsna2024.training.task import create_task

    cfg = _config("global", "global_tiny")
    _train(cfg, phantom_dir, phantom_cache, stage2, 1)  # skipped when the test above trained it
    run = stage2["runs"] / cfg.name
    model, saved = load_fold_model(run, 1)
    store = SeriesStore(phantom_cache)
    studies = stage2["folds"].loc[stage2["folds"]["fold"] == 1, "study_id"].to_numpy()
    points = points_in_mm(load_points(stage2["runs"] / "coords_oof.csv"), store.load)
    rows = create_task(saved).predict_studies(model, store, studies, points, batch_size=5).set_index("row_id")
    oof = pd.read_csv(run / "oof_fold1.csv").set_index("row_id")
    model_rows = oof.index[oof["source"] == "model"]
    assert sorted(rows.index) == sorted(model_rows)  # the rows without a region are left out, as in the OOF file
    np.testing.assert_allclose(rows.loc[model_rows, list(PRED_COLUMNS)], oof.loc[model_rows, list(PRED_COLUMNS)],
                               atol=1e-5)


def test_missing_predicted_points_file_says_what_to_run(phantom_dir, phantom_cache, stage2, caplog):
    cfg = _config("split_spinal", "split_spinal_nofile", oof_points="{runs}/nowhere.csv")
    with pytest.raises(ConfigError, match="nowhere.csv.*rsna2024 coords"):
        _train(cfg, phantom_dir, phantom_cache, stage2, 0)
    assert "nowhere.csv does not exist yet" in caplog.text  # said before training too
    run = stage2["runs"] / cfg.name
    assert (run / "fold0_best.pt").is_file() and not (run / "fold0_done.json").exists()
    (stage2["runs"] / "nowhere.csv").write_bytes((stage2["runs"] / "coords_oof.csv").read_bytes())
    result = _train(cfg, phantom_dir, phantom_cache, stage2, 0)  # resumes after the last epoch: OOF files only
    assert not result.skipped and (run / "oof_fold0.csv").is_file()


def test_every_classifier_config_loads_with_the_recipe_figures():
    from pathlib import Path

    from rsna2024.training.config import load_config

    root = Path(__file__).resolve().parents[1] / "experiments"
    full = sorted(p for p in root.glob("*.yaml") if p.stem.startswith(("split_", "global_")))
    assert len(full) == 12
    for path in full:
        cfg = load_config(path)
        backbone = cfg.model.params["backbone"]
        assert cfg.model.name == "roi25d" and cfg.model.pretrained == "imagenet"
        assert cfg.data.roi.size_mm == 50.0 and cfg.data.roi.slices == 5 and cfg.data.class_weights == [1, 2, 4]
        assert cfg.data.roi.out_size == (128 if backbone == "resnet18" else 224), path.name
        assert cfg.batch_size * cfg.grad_accum == 16 and 3 <= cfg.epochs <= 5 and cfg.optim.name == "adamw"
        assert cfg.data.oof_points == "{runs}/coords_oof.csv" and cfg.data.train_points == "true"
        if backbone == "resnet18":
            schedule = (cfg.schedule.name, cfg.schedule.step_size, cfg.schedule.gamma)
            assert cfg.optim.lr == 1e-3 and schedule == ("step", 2, 0.1)
    demo = sorted((root / "demo").glob("*.yaml"))
    for path in (p for p in demo if p.stem.startswith(("split_", "global"))):
        cfg = load_config(path)
        assert cfg.device == "cpu" and cfg.model.pretrained == "none" and cfg.model.name.startswith("roi25d_tiny")


def test_an_untrained_model_predicts_the_training_folds_prior(phantom_dir, phantom_cache, stage2):
    from rsna2024.training.task import FoldContext, create_task

    cfg = _config("global", "global_prior")
    task = create_task(cfg)
    ctx = FoldContext(cfg=cfg, data_dir=phantom_dir, cache_root=phantom_cache.parent, folds=stage2["folds"], fold=0,
                      run_dir=stage2["runs"] / cfg.name, device=torch.device("cpu"), task=task)
    _, valid = task.build_datasets(ctx)
    model = task.build_model().eval()
    batch = torch.utils.data.default_collate([valid[i] for i in range(6)])
    with torch.no_grad():
        probs = task.predict(task.forward(model, batch), batch)["probs"].numpy()
    prior = fold_prior(stage2["wide"], ctx.train_studies()).set_index(["condition", "level"])
    for i in range(6):
        level = valid.rows[i]["level"]
        expected = np.stack([prior.loc[(c, level), list(PRED_COLUMNS)].to_numpy(dtype=float) for c in CONDITIONS])
        np.testing.assert_allclose(probs[i], expected, rtol=1e-5)


class _Interrupt(Exception):
    pass


def _stop_after_first_epoch(epoch, record):
    raise _Interrupt


def test_interrupted_fold_resumes_to_the_same_oof(phantom_dir, phantom_cache, stage2, tmp_path):
    """Jittered training regions and dropout draw from the generators the trainer saves, so a fold killed after
    an epoch and resumed writes the same OOF file as an uninterrupted one."""
    cfg = _config("split_subarticular", "split_subarticular_resume", epochs=2)
    runs = {}
    for name in ("straight", "resumed"):
        out = tmp_path / name
        out.mkdir()
        (out / "coords_oof.csv").write_bytes((stage2["runs"] / "coords_oof.csv").read_bytes())
        runs[name] = out
    kwargs = dict(cache=phantom_cache.parent, folds_file=stage2["root"] / "folds.csv")
    train_fold(cfg, phantom_dir, 0, out=runs["straight"], **kwargs)
    with pytest.raises(_Interrupt):
        train_fold(cfg, phantom_dir, 0, out=runs["resumed"], callbacks=[_stop_after_first_epoch], **kwargs)
    train_fold(cfg, phantom_dir, 0, out=runs["resumed"], **kwargs)
    a, b = (pd.read_csv(runs[n] / cfg.name / "oof_fold0.csv") for n in ("straight", "resumed"))
    pd.testing.assert_frame_equal(a, b)


def test_own_region_head_routes_each_condition_to_its_regions(phantom_dir, phantom_cache, stage2):
    from rsna2024.training.task import create_task

    def groups(task, head, spinal_axial=False):
        cfg = _config(task, f"{task}_head", roi={"out_size": 32, "slices": 3, "spinal_axial": spinal_axial})
        cfg.model.params["head"] = head
        return create_task(cfg).model_params().get("head_groups")

    assert groups("global", "own_region") == [[0], [1], [2], [3], [4]]
    assert groups("global", "own_region", spinal_axial=True)[CONDITIONS.index("spinal_canal_stenosis")] == [0, 5]
    assert groups("global", "dense") is None and groups("split_foraminal", "own_region") is None
    with pytest.raises(ConfigError, match="model.params.head"):
        groups("global", "per_level")
    cfg = _config("global", "global_own", epochs=1)
    cfg.model.params["head"] = "own_region"
    cfg.model.params["backbones"] = "per_series"  # Sag T2, Sag T1 and axial regions: three backbones
    result = _train(cfg, phantom_dir, phantom_cache, stage2, 1)
    assert np.isfinite(result.best_value)
    model = torch.load(stage2["runs"] / cfg.name / "fold1_best.pt", weights_only=False)["model"]
    assert "head_mask" not in model
    assert any(k.startswith("extra_backbones.1.") for k in model)


def test_per_series_backbones_follow_the_series_of_the_regions():
    from rsna2024.training.task import create_task

    def backbones(task, value, spinal_axial=False):
        cfg = _config(task, f"{task}_bb", roi={"out_size": 32, "slices": 3, "spinal_axial": spinal_axial})
        cfg.model.params["backbones"] = value
        return create_task(cfg).model_params().get("region_backbones")

    # global regions: spinal (Sag T2), 2 foraminal (Sag T1), 2 subarticular (Axial T2), then the spinal axial one
    assert backbones("global", "per_series") == [0, 1, 1, 2, 2]
    assert backbones("global", "per_series", spinal_axial=True) == [0, 1, 1, 2, 2, 2]
    assert backbones("split_spinal", "per_series", spinal_axial=True) == [0, 1]
    assert backbones("split_foraminal", "per_series") is None  # one series type: one backbone
    assert backbones("global", "shared") is None
    with pytest.raises(ConfigError, match="model.params.backbones"):
        backbones("global", "per_region")
