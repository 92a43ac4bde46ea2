"""The seed baselines S0-S3: tiny models forward/backward, the S2 freeze schedule, the S3 coordinate channel, the
image rules on the phantom (hand-checked slices and coordinates), minority upsampling, and one tiny fold of each
demo config on the session phantom writing OOF files in submission format."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from toy_task import one_thread  # noqa: F401 - one_thread: pytestmark

from rsna2024.baselines.data import (
    IGNORE_INDEX,
    ImageSettings,
    StudyDataset,
    TargetDataset,
    model_input,
    upsample_indices,
)
from rsna2024.baselines.tasks import S2LevelEmbeddingTask
from rsna2024.classifiers.dataset import SeriesStore
from rsna2024.classifiers.samples import label_table, load_points, points_in_mm, split_samples
from rsna2024.constants import (
    CONDITION_NAMES,
    CONDITIONS,
    LEVELS,
    PRED_COLUMNS,
    SAGITTAL_T1,
    SAGITTAL_T2,
    study_row_ids,
)
from rsna2024.data.contract import load_labels_wide
from rsna2024.data.folds import assign_folds
from rsna2024.errors import ConfigError
from rsna2024.models import create_model
from rsna2024.training.config import config_from_dict, load_config
from rsna2024.training.trainer import train_fold

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "experiments" / "demo"
S2_BACKBONES = {"vit_b16": "vit_base_patch16_224", "swin_b": "swin_base_patch4_window7_224",
                "beit_b": "beit_base_patch16_224", "efficientnetv2_m": "tf_efficientnetv2_m",
                "resnet152": "resnet152", "convnext_base": "convnext_base"}

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- models
def _inputs(name: str, b: int = 4, size: int = 64):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(b, 3 if name.startswith("s2") else 1, size, size, generator=g)
    if name.startswith("s1"):
        return image, torch.tensor([0, 0, 3, 4]), torch.tensor([0, 2, 4, 1])
    if name.startswith("s2"):
        return image, torch.tensor([0, 1, 2, 4])
    if name.startswith("s3"):
        return image, torch.rand(b, 75, generator=g)
    return (image,)


@pytest.mark.parametrize("name, outputs", [("s0_image_classifier_tiny", 3), ("s1_condition_cnn_tiny", 3),
                                           ("s2_level_embedding_tiny", 3), ("s3_coordinate_resnet_tiny", 75)])
def test_tiny_models_forward_and_backward(name, outputs):
    torch.manual_seed(0)
    model = create_model(name, image_size=64)
    out = model(*_inputs(name))
    assert out.shape == (4, outputs) and torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing  # S1: the CNNs of conditions absent from the batch still get (zero) gradients


def test_s1_routes_each_sample_to_its_condition_cnn_and_level_head():
    torch.manual_seed(0)
    model = create_model("s1_condition_cnn_tiny").eval()
    image = torch.rand(2, 1, 32, 32)
    out = model(image, torch.tensor([1, 3]), torch.tensor([4, 0]))
    with torch.no_grad():
        direct = [model.heads[c](model.cnns[c](image[i:i + 1])).reshape(5, 3)[lv] for i, (c, lv) in
                  enumerate([(1, 4), (3, 0)])]
    torch.testing.assert_close(out, torch.stack(direct))


def test_s1_refuses_an_image_size_whose_feature_map_is_one_pixel():
    model = create_model("s1_condition_cnn_tiny", image_size=48).train()  # a 2 x 2 map: one sample per condition
    model(torch.rand(2, 1, 48, 48), torch.tensor([0, 1]), torch.tensor([0, 0])).sum().backward()
    with pytest.raises(ConfigError, match="image_size 32 .* 1 x 1"):
        create_model("s1_condition_cnn_tiny", image_size=32)


def test_s2_head_shapes_follow_the_recipe():
    model = create_model("s2_level_embedding_tiny")
    assert model.level_embedding.weight.shape == (5, 256)
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64 + 256, 512), (512, 256), (256, 3)]
    kinds = [type(m).__name__ for m in model.head]
    assert kinds == ["Linear", "LayerNorm", "GELU", "Dropout"] * 2 + ["Linear"]
    assert all(m.p == 0.1 for m in model.head if isinstance(m, torch.nn.Dropout))


def test_s2_freeze_then_unfreeze_changes_requires_grad_and_training():
    torch.manual_seed(0)
    cfg = config_from_dict({"name": "s2", "task": "s2_level_embedding", "model": {"name": "s2_level_embedding_tiny"},
                            "data": {"image_size": 64, "freeze_epochs": 2, "unfreeze_last": 32}})
    task = S2LevelEmbeddingTask(cfg)
    model = task.build_model()
    backbone = list(model.backbone.parameters())
    assert len(backbone) > 32
    task.on_epoch_start(model, 1, None)
    assert not any(p.requires_grad for p in backbone)
    assert all(p.requires_grad for p in [*model.head.parameters(), *model.level_embedding.parameters()])
    # one optimizer step while frozen moves the head, not the backbone
    before = [p.detach().clone() for p in backbone]
    head_before = model.head[0].weight.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(*_inputs("s2")).logsumexp(1).sum().backward()
    opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, backbone))
    assert not torch.equal(head_before, model.head[0].weight)
    task.on_epoch_start(model, 2, None)
    assert [p.requires_grad for p in backbone] == [False] * (len(backbone) - 32) + [True] * 32
    assert model.set_backbone_trainable(None) == len(backbone) and all(p.requires_grad for p in backbone)


def test_s3_coordinate_channel_changes_the_output():
    torch.manual_seed(0)
    model = create_model("s3_coordinate_resnet_tiny").eval()
    image = torch.rand(2, 1, 64, 64)
    coords = torch.rand(2, 75)
    moved = coords.clone()
    moved[:, 0] += 0.3  # one point's x
    with torch.no_grad():
        a, b = model(image, coords), model(image, moved)
        channel = model.coordinate_channel(coords, (64, 64))
    assert channel.shape == (2, 1, 64, 64)
    assert not torch.allclose(a, b, atol=1e-6)
    with torch.no_grad():  # the same coordinates give the same output (no randomness in eval)
        torch.testing.assert_close(model(image, coords), a)


def test_s3_head_follows_the_recipe():
    model = create_model("s3_coordinate_resnet")  # resnet18, random weights
    assert model.backbone.conv1.in_channels == 2
    assert model.reduce[0].in_channels == 512 and model.reduce[0].out_channels == 256
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(256, 128), (128, 75)]
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in model.head)
    assert model.coord_fc.in_features == 75


def test_unknown_backbone_fails_naming_it():
    with pytest.raises(ConfigError, match="no_such_net"):
        create_model("s0_image_classifier", backbone="no_such_net")


# --------------------------------------------------------------------------- data rules
def test_upsampling_balances_each_column_hand_computed():
    labels = np.array([0, 0, 0, 0, 1, 2, 0, 0, 1])
    groups = np.array(["a"] * 6 + ["b"] * 3)
    idx = upsample_indices(labels, groups)
    counts = pd.crosstab(groups[idx], labels[idx])
    assert counts.loc["a"].tolist() == [4, 4, 4] and counts.loc["b", 0] == 2 and counts.loc["b", 1] == 2
    capped = upsample_indices(labels, groups, max_factor=2.0)
    assert np.bincount(labels[capped][groups[capped] == "a"]).tolist() == [4, 2, 2]
    assert set(idx) == set(range(9))  # every sample stays


def test_model_input_eight_bit_and_imagenet_norm():
    image = torch.tensor([[[0.0, 0.5, 1.0 / 510, 1.0]]])
    eight = model_input(image, ImageSettings(eight_bit=True), train=False)
    torch.testing.assert_close(eight, torch.tensor([[[0.0, 128 / 255, 0.0, 1.0]]]))
    norm = model_input(image, ImageSettings(channels=3, imagenet_norm=True), train=False)
    assert norm.shape == (3, 1, 4)
    torch.testing.assert_close(norm[2, 0, 3], torch.tensor((1.0 - 0.406) / 0.225))


@pytest.fixture(scope="module")
def phantom_samples(phantom_dir, phantom_cache):
    store = SeriesStore(phantom_cache)
    wide = load_labels_wide(phantom_dir)
    points = points_in_mm(load_points(phantom_dir / "train_label_coordinates.csv"), store.load)
    samples = split_samples(label_table(wide, wide["study_id"]), points, CONDITIONS)
    return store, samples, pd.read_csv(phantom_dir / "train_label_coordinates.csv")


def test_point_rule_takes_the_labelled_slice(phantom_samples):
    store, samples, coords = phantom_samples
    ds = TargetDataset(samples, store, "point", ImageSettings(image_size=32))
    assert len(ds) and ds.skipped == int((~np.isfinite(samples["x_mm"])).sum())
    for row, (study, series_id, index) in zip(ds.samples.itertuples(), ds.sources):
        label = coords[(coords["study_id"] == study) & (coords["condition"] == CONDITION_NAMES[row.condition])
                       & (coords["level"].str.lower().str.replace("/", "_") == row.level)].iloc[0]
        series = store.load(study, series_id)
        assert series_id == label.series_id and index == series.index_of(int(label.instance_number))
    item = ds[0]
    assert item["image"].shape == (1, 32, 32) and 0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1


def test_sagittal_t1_rule_takes_the_nearest_t1_slice(phantom_samples):
    store, samples, coords = phantom_samples
    ds = TargetDataset(samples, store, "sagittal_t1", ImageSettings(image_size=32))
    by_row = dict(zip(ds.samples["row_id"], ds.sources))
    checked = set()
    for row in ds.samples.itertuples():
        study, series_id, index = by_row[row.row_id]
        point = np.array([row.x_mm, row.y_mm, row.z_mm])
        t1 = store.series_of(study, SAGITTAL_T1)
        assert series_id in {int(s.series_id) for s in t1}
        series = store.load(study, series_id)
        distance = np.abs(series.plane_coordinates(point)[2])
        assert distance[index] == pytest.approx(distance.min(), abs=1e-6)
        if row.condition.endswith("foraminal_narrowing"):  # labelled on Sagittal T1: its own slice
            assert series_id == row.series_id and distance[index] < 1e-6
        checked.add(row.condition)
    assert checked == set(CONDITIONS)
    lacking = [s for s in samples["study_id"].unique() if not store.series_of(s, SAGITTAL_T1)]
    assert not set(lacking) & set(ds.samples["study_id"])  # no Sagittal T1: no sample


def test_study_rule_projects_the_points_on_the_mid_sagittal_t2_slice(phantom_samples):
    store, samples, _ = phantom_samples
    ds = StudyDataset(samples, store, ImageSettings(image_size=32))
    lacking = [s for s in samples["study_id"].unique() if not store.series_of(s, SAGITTAL_T2)]
    assert len(ds) and ds.skipped == len(lacking)  # a study without Sagittal T2/STIR gives no sample

    def spinal_points(study):
        rows = samples[samples["study_id"] == study].set_index(["condition", "level"])
        return rows, rows.loc["spinal_canal_stenosis", ["x_mm", "y_mm", "z_mm"]].to_numpy(dtype=float)

    i = next(i for i, s in enumerate(ds.studies) if np.isfinite(spinal_points(s)[1]).all())  # all 5 spinal points
    rows, spinal = spinal_points(ds.studies[i])
    series_id, index = ds.sources[i]
    series = store.load(ds.studies[i], series_id)
    assert index == series.nearest_slice(spinal[np.isfinite(spinal).all(1)].mean(0))[0]
    coords = ds.coords[i].reshape(5, 5, 3)
    point = spinal[2]  # L3/L4, labelled on this series: its canonical pixel over the image size
    _, x, y, _ = series.nearest_slice(point)
    assert coords[0, 2, 2] == 1.0
    np.testing.assert_allclose(coords[0, 2, :2], [x / series.pixels.shape[2], y / series.pixels.shape[1]], atol=1e-5)
    item = ds[i]
    assert item["coords"].shape == (75,) and item["target"].shape == (25,)
    labels = rows["label"].reindex(pd.MultiIndex.from_product([CONDITIONS, LEVELS])).to_numpy()
    assert item["target"].tolist() == [v if v >= 0 else IGNORE_INDEX for v in labels]


# --------------------------------------------------------------------------- configs
def test_full_configs_load_with_the_published_settings():
    s2 = {p.stem: load_config(p) for p in sorted((ROOT / "experiments").glob("s2_level_embedding_*.yaml"))}
    assert {n.removeprefix("s2_level_embedding_") for n in s2} == set(S2_BACKBONES)
    import timm

    for name, cfg in s2.items():
        assert cfg.model.params["backbone"] == S2_BACKBONES[name.removeprefix("s2_level_embedding_")]
        assert timm.is_model(cfg.model.params["backbone"])
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 1e-4, 0.02)
        assert (cfg.batch_size, cfg.epochs, cfg.data.unfreeze_last, cfg.data.class_weights) == (32, 30, 32, [1, 2, 4])
        assert cfg.data.imagenet_norm and cfg.data.hflip > 0 and cfg.data.rotate_degrees > 0
    s0 = load_config(ROOT / "experiments" / "s0_efficientnetv2_s.yaml")
    assert (s0.model.params["backbone"], s0.data.image_size, s0.data.channels, s0.optim.name) == \
        ("tf_efficientnetv2_s", 224, 1, "adam")
    s1 = load_config(ROOT / "experiments" / "s1_condition_cnn.yaml")
    assert s1.data.eight_bit and s1.data.upsample
    s3 = load_config(ROOT / "experiments" / "s3_coordinate_resnet18.yaml")
    assert (s3.optim.name, s3.optim.lr, s3.schedule.name, s3.schedule.patience, s3.grad_clip, s3.epochs,
            s3.batch_size, s3.data.image_size, s3.data.class_weights) == \
        ("adam", 0.01, "plateau", 2, 1.0, 10, 64, 224, [1, 2, 4])
    names = [yaml.safe_load(p.read_text()).get("name", p.stem) for p in (ROOT / "experiments").glob("s[0-3]_*.yaml")]
    names += [p.stem for p in DEMO.glob("s[0-3]_*.yaml")]
    assert names and all(n[:3] in ("s0_", "s1_", "s2_", "s3_") for n in names)


def test_bad_data_settings_fail_naming_the_key():
    with pytest.raises(ConfigError, match="data.conditions"):
        config_from_dict({"name": "x", "task": "s0_image_classifier", "data": {"conditions": ["spine"]}})
    with pytest.raises(ConfigError, match="freeze_epochs"):
        config_from_dict({"name": "x", "task": "s0_image_classifier", "data": {"freeze_epochs": 1}})
    with pytest.raises(ConfigError, match="channels"):
        config_from_dict({"name": "x", "task": "s3_coordinate_resnet", "data": {"channels": 3}})


def test_classifiers_imported_first_still_register_the_baselines():
    """``classifiers.oof`` imports the prior from this package, whose tasks use ``classifiers.oof``: the cycle
    must resolve from that side too (this session imported the baselines first)."""
    code = ("import rsna2024.classifiers; from rsna2024.training.task import list_tasks; "
            "assert {'split_spinal', 's3_coordinate_resnet'} <= set(list_tasks())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-800:]


# --------------------------------------------------------------------------- one fold of each demo config
@pytest.fixture(scope="module")
def runs(phantom_dir, tmp_path_factory):
    """2 folds of the phantom's studies and stage 1's 'predicted' points (true ones moved ~1.5 px, one foraminal
    point of a fold-0 study left empty) at the runner's default path."""
    root = tmp_path_factory.mktemp("baselines")
    wide = load_labels_wide(phantom_dir)
    folds = assign_folds(wide["study_id"], np.zeros(len(wide)), n_folds=2, seed=1)
    folds.to_csv(root / "folds.csv", index=False)
    coords = pd.read_csv(phantom_dir / "train_label_coordinates.csv")
    coords[["x", "y"]] += np.random.default_rng(5).normal(0, 1.5, (len(coords), 2))
    valid0 = set(folds.loc[folds["fold"] == 0, "study_id"])
    blank = coords.index[coords["study_id"].isin(valid0) & coords["condition"].str.contains("Foraminal")][0]
    blank_row = (f"{coords.loc[blank, 'study_id']}_{coords.loc[blank, 'condition'].lower().replace(' ', '_')}_"
                 f"{coords.loc[blank, 'level'].lower().replace('/', '_')}")
    coords.loc[blank, ["series_id", "instance_number", "x", "y"]] = np.nan
    (root / "runs").mkdir()
    coords.to_csv(root / "runs" / "coords_oof.csv", index=False)
    return {"root": root, "runs": root / "runs", "folds": folds, "blank_row": blank_row}


@pytest.mark.parametrize("config", sorted(p.name for p in DEMO.glob("s[0-3]_*.yaml")))
def test_demo_baseline_trains_a_fold_and_writes_oof_files(config, phantom_dir, phantom_cache, runs):
    cfg = load_config(DEMO / config, ["folds=2", "device=cpu"])
    assert cfg.name[:3] in ("s0_", "s1_", "s2_", "s3_")
    result = train_fold(cfg, phantom_dir, 0, out=runs["runs"], cache=phantom_cache.parent,
                        folds_file=runs["root"] / "folds.csv")
    assert result.metric == "score" and np.isfinite(result.best_value)
    run = runs["runs"] / cfg.name
    assert run.name.startswith(cfg.name[:3])
    valid = runs["folds"].loc[runs["folds"]["fold"] == 0, "study_id"]
    expected = sorted(r for s in valid for r in study_row_ids(s))
    pred, true = pd.read_csv(run / "oof_fold0.csv"), pd.read_csv(run / "oof_true_points_fold0.csv")
    for table in (pred, true):
        assert sorted(table["row_id"]) == expected
        np.testing.assert_allclose(table[list(PRED_COLUMNS)].sum(axis=1), 1.0, atol=1e-9)
        assert (table[list(PRED_COLUMNS)] > 0).all().all()
        assert (table["source"] == "model").mean() > 0.5
    blank = runs["blank_row"]
    if cfg.task != "s3_coordinate_resnet":  # a target without its predicted point falls back to the prior
        assert pred.set_index("row_id").loc[blank, "source"] == "fallback"
        assert true.set_index("row_id").loc[blank, "source"] == "model"
    both = ((pred["source"] == "model") & (true["source"] == "model")).to_numpy()
    same = np.allclose(pred.loc[both, list(PRED_COLUMNS)], true.loc[both, list(PRED_COLUMNS)])
    # S0 and S2 see the whole slice of the point, which a point moved in-plane keeps; S3's coordinate channel moves
    # with the points (S1's nearest Sagittal T1 slice may or may not change)
    if cfg.task in ("s0_image_classifier", "s2_level_embedding", "s3_coordinate_resnet"):
        assert same == (cfg.task != "s3_coordinate_resnet")


def test_unlabelled_test_studies_get_every_target_row(phantom_dir, phantom_cache):
    """A test study (not in train.csv) gets all 25 target rows, each unlabelled, so a test-time dataset can be
    built from stage 1's predicted points; without points it has no sample and its rows fall back to the prior."""
    from rsna2024.data.contract import load_series_descriptions
    from rsna2024.training.task import FoldContext, create_task

    cfg = load_config(DEMO / "s0_efficientnetv2_s.yaml", ["folds=2", "device=cpu"])
    wide = load_labels_wide(phantom_dir)
    folds = assign_folds(wide["study_id"], np.zeros(len(wide)), n_folds=2, seed=1)
    task = create_task(cfg)
    task._setup(FoldContext(cfg=cfg, data_dir=phantom_dir, cache_root=phantom_cache.parent, folds=folds, fold=0,
                            run_dir=phantom_dir / "unused", device=torch.device("cpu"), task=task))
    test_ids = sorted(load_series_descriptions(phantom_dir, "test")["study_id"].unique())
    samples = task.samples([*test_ids, int(wide["study_id"].iloc[0])], "true")
    test_rows = samples[samples["study_id"].isin(test_ids)]
    assert len(test_rows) == 25 * len(test_ids) and (test_rows["label"] == -1).all()
    assert sorted(test_rows["row_id"]) == sorted(r for s in test_ids for r in study_row_ids(s))
    assert (samples.loc[~samples["study_id"].isin(test_ids), "label"] >= 0).any()
    assert len(task.dataset(test_ids, "true")) == 0  # no points for them in the label file
