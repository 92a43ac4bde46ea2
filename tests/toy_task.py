"""Test helper (not a test module): a small real task for the fold trainer.

``toy_points``: each study is a synthetic image (a bright Gaussian blob at a point drawn from the study id,
plus noise drawn from numpy's global generator when training, so augmentation randomness is exercised);
the model regresses the blob's heatmap; validation decodes the argmax and reports the mean point error in
pixels. ``write_oof`` writes ``oof_fold{k}.csv``. With ``data.trace: true`` every rank appends the study
ids it trained on to ``trace_rank{r}.txt`` and saves its weights after each epoch (for the DDP test).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from rsna2024.training.task import FoldContext, Task, register_task
from rsna2024.utils.io import atomic_to_csv


@pytest.fixture
def one_thread():
    """One intra-op thread while a test trains: on a busy 2-core machine two threads oversubscribe the cores
    and a tiny model trains ten times slower; it also keeps the bitwise comparisons independent of the core count."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@dataclass(kw_only=True)
class ToyData:
    image_size: int = 32
    sigma: float = 2.0
    noise: float = 0.2
    trace: bool = False
    freeze_epochs: int = 0  # epochs with the encoder frozen (the S2 baseline's schedule, for the DDP test)


def _blob(size: int, x: float, y: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)).astype(np.float32)


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, studies, data: ToyData, train: bool):
        self.studies, self.data, self.train = [int(s) for s in studies], data, train

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, i: int) -> dict:
        sid, size = self.studies[i], self.data.image_size
        x, y = np.random.default_rng(sid).uniform(4, size - 4, 2)
        heat = _blob(size, x, y, self.data.sigma)
        image = heat.copy()
        if self.train:
            image += np.random.normal(0, self.data.noise, image.shape).astype(np.float32)
        return {"image": torch.from_numpy(image[None]), "target": torch.from_numpy(heat[None]),
                "point": torch.tensor([x, y], dtype=torch.float32), "study_id": torch.tensor(sid)}


def decode(heatmaps: torch.Tensor) -> torch.Tensor:
    """Argmax (x, y) of each single-channel map."""
    flat = heatmaps.flatten(1).argmax(1)
    w = heatmaps.shape[-1]
    return torch.stack([flat % w, flat // w], 1).float()


@register_task("toy_points")
class ToyPointTask(Task):
    DataConfig = ToyData
    metric = "point_error"
    mode = "min"

    def build_datasets(self, ctx: FoldContext):
        self.ctx = ctx
        return ToyDataset(ctx.train_studies(), self.data, True), ToyDataset(ctx.valid_studies(), self.data, False)

    def model_params(self) -> dict:
        return {**self.cfg.model.params, "in_channels": 1, "classes": 1}

    def loss(self, outputs, batch):
        if self.data.trace and outputs.requires_grad:
            with open(self.ctx.run_dir / f"trace_rank{self.ctx.rank}.txt", "a") as fh:
                fh.write(" ".join(str(int(s)) for s in batch["study_id"]) + "\n")
        return F.mse_loss(outputs.float(), batch["target"])

    def predict(self, outputs, batch):
        return {"point": decode(outputs), "true": batch["point"], "study_id": batch["study_id"]}

    def validate(self, preds, dataset, ctx):
        assert list(preds["study_id"]) == dataset.studies  # every valid sample once, in dataset order
        return {"point_error": float(np.linalg.norm(preds["point"] - preds["true"], axis=1).mean())}

    @property
    def frozen_parameters(self) -> bool:
        return self.data.freeze_epochs > 0

    def on_epoch_start(self, model, epoch, ctx):
        for p in model.encoder.parameters():
            p.requires_grad_(epoch >= self.data.freeze_epochs)

    def on_epoch_end(self, model, epoch, metrics, ctx):
        if self.data.trace:
            torch.save(model.state_dict(), ctx.run_dir / f"weights_rank{ctx.rank}_epoch{epoch}.pt")

    def write_oof(self, model, ctx) -> list[Path]:
        ds = ToyDataset(ctx.valid_studies(), self.data, False)
        preds = ctx.predict(model, ds)
        table = pd.DataFrame({"study_id": preds["study_id"], "x": preds["point"][:, 0], "y": preds["point"][:, 1],
                              "true_x": preds["true"][:, 0], "true_y": preds["true"][:, 1]})
        return [atomic_to_csv(table, ctx.path(f"oof_fold{ctx.fold}.csv"))]


def write_toy_data(folder: Path, studies: int = 16, folds: int = 2) -> Path:
    """A data folder holding only ``folds.csv`` (the toy task draws its images from the study ids)."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.arange(1000, 1000 + studies)
    pd.DataFrame({"study_id": ids, "fold": np.arange(studies) % folds}).to_csv(folder / "folds.csv", index=False)
    return folder


def toy_config(**overrides):
    """An ExperimentConfig of the toy task (CPU, tiny Unet), with top-level or dotted overrides."""
    from rsna2024.training.config import apply_overrides, config_from_dict

    raw = {"name": "toy", "task": "toy_points", "epochs": 3, "batch_size": 4, "folds": 2, "workers": 0,
           "device": "cpu", "seed": 7, "model": {"name": "keypoint_tiny"},
           "optim": {"lr": 3e-3}, "schedule": {"name": "cosine", "warmup_epochs": 0.5}}
    return config_from_dict(apply_overrides(raw, [f"{k}={v}" for k, v in overrides.items()]))
