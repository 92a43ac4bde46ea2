"""The task interface: what one training stage gives the fold trainer, and the task registry.

A stage (keypoints per series type, ROI classifiers, a baseline) is a :class:`Task` subclass registered
by name; an experiment config names it in ``task:``. The trainer (:func:`rsna2024.training.trainer.train_fold`)
owns everything generic: seeding, devices, mixed precision, DataLoaders, the optimizer and schedule,
checkpoints and resuming, logging, DDP. The task owns everything specific to its data.

What the trainer calls, in order, for one fold::

    task = TaskClass(cfg)                               # cfg.data is the task's DataConfig instance
    train_ds, valid_ds = task.build_datasets(ctx)      # torch Datasets of this fold
    model = task.build_model()                          # through the model registry
    for epoch in ...:
        task.on_epoch_start(model, epoch, ctx)
        for batch in train loader:                      # batch: what the DataLoader collates (dicts of tensors)
            outputs = task.forward(model, batch)        # default: model(batch["image"])
            loss = task.loss(outputs, batch)            # scalar mean over the batch
        for batch in valid loader (no grad):
            outputs = task.forward(model, batch)
            loss = task.loss(outputs, batch)            # averaged into metrics["valid_loss"]
            preds = task.predict(outputs, batch)        # per-sample tensors, first dim = batch
        metrics = task.validate(preds, valid_ds, ctx)   # preds concatenated as numpy, dataset order
        task.on_epoch_end(model, epoch, metrics, ctx)
    # the best checkpoint (metrics[task.metric], task.mode) is loaded back, then on rank 0:
    task.write_oof(model, ctx)                          # e.g. runs/<exp>/oof_fold{k}.csv

A minimal task::

    @dataclass(kw_only=True)
    class PointData:                  # the config's `data:` section, unknown keys rejected
        image_size: int = 64

    @register_task("toy_points")
    class PointTask(Task):
        DataConfig = PointData
        metric, mode = "point_error", "min"

        def build_datasets(self, ctx):
            return MyDataset(ctx.train_studies(), self.data), MyDataset(ctx.valid_studies(), self.data)

        def model_params(self):
            return {**self.cfg.model.params, "in_channels": 1, "classes": 1}

        def loss(self, outputs, batch):
            return torch.nn.functional.mse_loss(outputs, batch["target"])

        def predict(self, outputs, batch):
            return {"point": decode(outputs), "true": batch["point"]}

        def validate(self, preds, dataset, ctx):
            return {"point_error": float(np.abs(preds["point"] - preds["true"]).mean())}

Tasks are found by name through :func:`task_class`: a registered name (modules in :data:`TASK_MODULES` are
imported on the first lookup), or ``"package.module:ClassName"`` for a task outside the kit.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from rsna2024.errors import ConfigError
from rsna2024.models.registry import create_model, import_optional

if TYPE_CHECKING:  # pragma: no cover
    from rsna2024.training.config import ExperimentConfig

#: Modules (or packages whose ``__init__`` imports their task module) that register tasks, imported on the
#: first lookup; one that does not exist (yet) is skipped. Stages add theirs here.
TASK_MODULES: list[str] = ["rsna2024.keypoints", "rsna2024.classifiers", "rsna2024.baselines.tasks"]


@dataclass
class FoldContext:
    """Everything about the fold being trained, handed to the task's hooks.

    ``folds`` is ``folds.csv`` (``study_id, fold``); ``cache_root`` the preprocessing cache root (the task
    picks its parameter folder, e.g. ``rsna2024.dicom.cache.cache_dir(ctx.cache_root)``); ``run_dir``
    the experiment's run folder (write there only when ``is_main``); ``amp_dtype`` the autocast dtype
    (None: full precision).
    """

    cfg: ExperimentConfig
    data_dir: Path
    cache_root: Path
    folds: pd.DataFrame
    fold: int
    run_dir: Path
    device: torch.device
    amp_dtype: torch.dtype | None = None
    rank: int = 0
    world_size: int = 1
    task: Task | None = None

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0

    def train_studies(self) -> np.ndarray:
        """Study ids of the training part of this fold (every other fold), sorted."""
        return np.sort(self.folds.loc[self.folds["fold"] != self.fold, "study_id"].to_numpy())

    def valid_studies(self) -> np.ndarray:
        """Study ids held out in this fold, sorted."""
        return np.sort(self.folds.loc[self.folds["fold"] == self.fold, "study_id"].to_numpy())

    def path(self, name: str) -> Path:
        """A file in the run folder, e.g. ``ctx.path(f"oof_fold{ctx.fold}.csv")``."""
        return self.run_dir / name

    def predict(self, model: nn.Module, dataset, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Run ``task.forward`` + ``task.predict`` over ``dataset`` on this process (eval mode, no grad,
        same device and precision as training) and return the concatenated predictions, in dataset order,
        plus ``index``. For :meth:`Task.write_oof` on any dataset (e.g. regions cut at predicted points)."""
        from rsna2024.training.trainer import predict_dataset

        return predict_dataset(self.task, model, dataset, self, batch_size=batch_size)


class Task:
    """Base class of a training stage. Override :meth:`build_datasets` and :meth:`loss`; the rest has defaults.

    Class attributes:
        DataConfig: a dataclass typing the config's ``data:`` section (unknown keys are then rejected
            naming the valid ones), or None to keep it a plain dict.
        metric: key of the validation metrics that picks the best checkpoint (``valid_loss`` is always there).
        mode: ``"min"`` if lower is better, ``"max"`` otherwise.
        collate_fn: the DataLoader's collate function (None: torch's default, which stacks dicts of tensors);
            assign it as ``collate_fn = staticmethod(my_collate)`` so it is not bound to the task.

    ``frozen_parameters`` (property, default False): True when some parameters get no gradient in some epochs
    (:meth:`on_epoch_start` freezes them); under DDP the trainer then lets DistributedDataParallel look for them
    every step (``find_unused_parameters``), which it otherwise refuses.
    """

    name: ClassVar[str] = ""
    DataConfig: ClassVar[type | None] = None
    metric: ClassVar[str] = "valid_loss"
    mode: ClassVar[str] = "min"
    collate_fn: ClassVar[Callable | None] = None

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg

    @property
    def data(self):
        """The config's ``data`` section (an instance of :attr:`DataConfig` when declared)."""
        return self.cfg.data

    # ----------------------------------------------------------------- required
    def build_datasets(self, ctx: FoldContext) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
        """The fold's ``(train, valid)`` datasets, e.g. from ``ctx.train_studies()`` / ``ctx.valid_studies()``.

        Training samples should use random augmentation from numpy/``random``/torch global generators only:
        the trainer seeds them per epoch and per DataLoader worker, so runs and resumed runs repeat exactly.
        """
        raise NotImplementedError

    def loss(self, outputs, batch) -> torch.Tensor:
        """Scalar training loss of one batch (the mean over its samples)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- model
    def model_params(self) -> dict:
        """Keyword settings for ``create_model`` besides ``pretrained``: ``cfg.model.params`` plus whatever the
        task derives from its data config (input channels, number of outputs)."""
        return dict(self.cfg.model.params)

    def build_model(self, pretrained: bool = True) -> nn.Module:
        """``create_model(cfg.model.name, pretrained=..., **model_params())``; ``pretrained=False`` for
        inference from a checkpoint (no download of weights that the checkpoint replaces)."""
        spec = self.cfg.model.pretrained if pretrained else "none"
        return create_model(self.cfg.model.name, pretrained=spec, **self.model_params())

    def param_groups(self, model: nn.Module) -> Iterable:
        """What the optimizer gets: parameters or param-group dicts (optionally with their own ``lr``)."""
        return model.parameters()

    # ----------------------------------------------------------------- steps
    def forward(self, model: nn.Module, batch) -> Any:
        """Model outputs of one batch (already on the device)."""
        return model(batch["image"])

    def predict(self, outputs, batch) -> dict[str, torch.Tensor]:
        """Per-sample validation predictions of one batch, each with the batch as first dimension. Keep
        them small (decode heatmaps to points here): all of them are gathered for :meth:`validate`."""
        return {}

    def validate(self, preds: dict[str, np.ndarray], dataset, ctx: FoldContext) -> dict[str, float]:
        """Metrics of one validation pass (called on every DDP rank with the same inputs). ``preds``:
        :meth:`predict`'s outputs concatenated over the whole valid set (every sample once, in dataset order,
        gathered from all ranks) plus ``index``. Must contain :attr:`metric` unless that is ``valid_loss``,
        which the trainer adds."""
        return {}

    @property
    def frozen_parameters(self) -> bool:
        """Whether some parameters go without a gradient in some epochs (see the class docstring)."""
        return False

    # ----------------------------------------------------------------- hooks
    def on_epoch_start(self, model: nn.Module, epoch: int, ctx: FoldContext) -> None:
        """Called on every rank before each epoch (0-based), also the first one after a resume: put
        epoch-dependent state here (freezing/unfreezing layers) so a resumed run repeats it."""

    def on_epoch_end(self, model: nn.Module, epoch: int, metrics: dict, ctx: FoldContext) -> None:
        """Called on every rank after validation of each epoch."""

    def write_oof(self, model: nn.Module, ctx: FoldContext) -> list[Path]:
        """Write this fold's out-of-fold outputs into ``ctx.run_dir`` from ``model`` (the best checkpoint,
        in eval mode); rank 0 only. Return the files written. ``ctx.predict(model, dataset)`` runs inference."""
        return []


# --------------------------------------------------------------------------- registry
_TASKS: dict[str, type[Task]] = {}
_imported = False


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: register a :class:`Task` subclass under ``name`` (sets ``cls.name``)."""
    def deco(cls: type[Task]) -> type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"register_task({name!r}) expects a Task subclass, got {cls!r}")
        old = _TASKS.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ConfigError(f"task {name!r} is already registered (by {old.__module__}.{old.__qualname__})")
        cls.name = name
        _TASKS[name] = cls
        return cls
    return deco


def list_tasks() -> list[str]:
    """Sorted names of the registered tasks."""
    global _imported
    if not _imported:
        _imported = True
        import_optional(TASK_MODULES)
    return sorted(_TASKS)


def task_class(name: str) -> type[Task]:
    """The task class for a config's ``task:`` value; unknown names fail listing the registered ones."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"task {name!r}: cannot import {attr} from {module}: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise ConfigError(f"task {name!r} is not a Task subclass")
        return cls
    if name not in _TASKS:
        list_tasks()
    if name not in _TASKS:
        raise ConfigError(f"unknown task {name!r}; registered tasks: {', '.join(list_tasks()) or 'none'}")
    return _TASKS[name]


def create_task(cfg: ExperimentConfig) -> Task:
    """An instance of the config's task."""
    return task_class(cfg.task)(cfg)
