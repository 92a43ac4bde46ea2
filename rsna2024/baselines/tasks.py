"""The seed baselines as tasks of the fold trainer: ``s0_image_classifier``, ``s1_condition_cnn``,
``s2_level_embedding`` and ``s3_coordinate_resnet`` (kit-guide section 3; images by the rules of
:mod:`rsna2024.baselines.data`, models in :mod:`rsna2024.baselines.models`).

Per fold (the calls: :mod:`rsna2024.training.task`):

- training: the training folds' targets (S3: studies) on the TRUE points (``data.train_points``);
- validation after each epoch: the held-out studies on ``data.valid_points`` (true points by default). The
  reported ``score`` is the competition metric of the fold over all 25 rows of every held-out study: the
  model's rows from the model, the rest (targets without an image, conditions outside ``data.conditions``)
  from the prior fitted on the training folds; ``score_<term>`` are its four terms. The best checkpoint is the
  epoch with the lowest ``score`` (S3's plateau schedule watches it too);
- ``write_oof``: with the best checkpoint, the held-out studies on stage 1's PREDICTED points
  (``data.oof_points``, default ``{runs}/coords_oof.csv``) -> ``oof_fold{k}.csv``, and on the true points ->
  ``oof_true_points_fold{k}.csv``; after the last fold the merged ``oof.csv`` / ``oof_true_points.csv``.
  Format, ``source`` column and merging: :mod:`rsna2024.classifiers.oof` (one implementation for every stage).

Points files: ``true`` is ``<data>/train_label_coordinates.csv``; any other value is a path in which ``{runs}``
(the parent of the run folder) and ``{data}`` (the data folder) are replaced.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F

from rsna2024.baselines.data import ImageRule, ImageSettings, StudyDataset, TargetDataset
from rsna2024.classifiers.point_task import DEFAULT_OOF_POINTS, TRUE_POINTS, PointTask
from rsna2024.constants import CLASS_WEIGHTS, CONDITIONS
from rsna2024.errors import ConfigError
from rsna2024.training.losses import severity_loss
from rsna2024.training.task import FoldContext, register_task
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)


# --------------------------------------------------------------------------- configs (the ``data:`` sections)
@dataclass(kw_only=True)
class BaselineData(ImageSettings):
    """Shared ``data:`` settings: image handling (:class:`~rsna2024.baselines.data.ImageSettings`), points, loss."""

    train_points: str = TRUE_POINTS  # points whose images train the model
    valid_points: str = TRUE_POINTS  # points of the per-epoch validation (checkpoint selection)
    oof_points: str = DEFAULT_OOF_POINTS  # stage 1's predicted points for the OOF files
    class_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # cross-entropy weights
    cache: str | None = None  # preprocessing cache folder; default: the default-parameter folder of the trainer's root

    def __post_init__(self) -> None:
        if len(self.class_weights) != 3 or min(self.class_weights) <= 0:
            raise ConfigError(f"data.class_weights: three positive weights expected, got {self.class_weights}")
        if self.image_size < 8 or self.channels < 1:
            raise ConfigError(f"data.image_size must be at least 8 and data.channels at least 1, got "
                              f"{self.image_size}, {self.channels}")


@dataclass(kw_only=True)
class TargetData(BaselineData):
    """A per-target baseline: which conditions it learns and predicts (the others are the prior in its OOF)."""

    conditions: list[str] = field(default_factory=lambda: list(CONDITIONS))

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad or not self.conditions or len(set(self.conditions)) != len(self.conditions):
            raise ConfigError(f"data.conditions: distinct names from {list(CONDITIONS)} expected, got "
                              f"{self.conditions}")


@dataclass(kw_only=True)
class S1Data(TargetData):
    eight_bit: bool = True
    upsample: bool = True  # repeat minority classes of each column up to its majority count
    upsample_max_factor: float | None = None  # at most this many times a class's own count (None: no limit)


@dataclass(kw_only=True)
class S2Data(TargetData):
    channels: int = 3
    imagenet_norm: bool = True
    hflip: float = 0.5
    rotate_degrees: float = 15.0
    class_weights: list[float] = field(default_factory=lambda: list(CLASS_WEIGHTS))
    freeze_epochs: int = 5  # epochs with the whole backbone frozen (head and embedding train)
    unfreeze_last: int | None = 32  # then the backbone's last N parameter tensors train (None: all of them)


@dataclass(kw_only=True)
class S3Data(BaselineData):
    class_weights: list[float] = field(default_factory=lambda: list(CLASS_WEIGHTS))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.channels != 1:
            raise ConfigError(f"data.channels: S3's image is one channel (the coordinates make the second), got "
                              f"{self.channels}")


# --------------------------------------------------------------------------- shared task logic
class BaselineTask(PointTask):
    """Loss and predictions shared by S0-S3 (data, OOF files and scores: :class:`PointTask`); subclasses build
    the dataset (:meth:`points_dataset`) and call the model."""

    DataConfig = TargetData

    @property
    def conditions(self) -> tuple[str, ...]:
        return tuple(getattr(self.data, "conditions", CONDITIONS))

    # ----------------------------------------------------------------- data
    def samples(self, studies, spec: str) -> pd.DataFrame:
        """Per-target rows of ``studies`` (label, -1 where missing or for a test study, and the point in mm) on
        the points ``spec`` names."""
        return self.target_samples(studies, self.points(spec, studies))

    def target_samples(self, studies, points_mm: pd.DataFrame) -> pd.DataFrame:
        """Per-target rows of ``studies`` at ``points_mm``."""
        from rsna2024.classifiers.samples import split_samples

        return split_samples(self.labels(studies), points_mm, self.conditions)

    def build_datasets(self, ctx: FoldContext):
        self._setup(ctx)
        train = self.dataset(ctx.train_studies(), self.data.train_points, train=True)
        valid = self.dataset(ctx.valid_studies(), self.data.valid_points)
        if train.skipped:
            log.info("%s fold %d: %d training target(s) have no label or no image and are skipped", self.cfg.name,
                     ctx.fold, train.skipped)
        return train, valid

    # ----------------------------------------------------------------- steps
    def loss(self, outputs, batch) -> torch.Tensor:
        return severity_loss(outputs, batch["target"], self.data.class_weights)

    def predict(self, outputs, batch) -> dict[str, torch.Tensor]:
        return {"probs": F.softmax(outputs.float().reshape(outputs.shape[0], -1, 3), dim=-1)}

    def image_model_params(self) -> dict:
        """``cfg.model.params`` with the input channels and image size of the data settings."""
        return {"in_chans": self.data.channels, "image_size": self.data.image_size, **self.cfg.model.params}


class TargetTask(BaselineTask):
    """One sample per target, its image chosen by :attr:`rule`."""

    rule: ImageRule = "point"

    def points_dataset(self, studies, points_mm: pd.DataFrame, train: bool = False, memo: bool = False,
                       ) -> TargetDataset:
        return TargetDataset(self.target_samples(studies, points_mm), self.store, self.rule, self.data, train=train,
                             conditions=self.conditions, upsample=train and getattr(self.data, "upsample", False),
                             upsample_max_factor=getattr(self.data, "upsample_max_factor", None))


# --------------------------------------------------------------------------- the four baselines
@register_task("s0_image_classifier")
class S0ImageClassifierTask(TargetTask):
    """S0: one 3-class image classifier for every target, on the whole slice of the target's point."""

    def model_params(self) -> dict:
        return {**self.image_model_params(), "num_classes": 3}


@register_task("s1_condition_cnn")
class S1ConditionCnnTask(TargetTask):
    """S1: a CNN per condition, a head per column, on the Sagittal T1 slice nearest the target's point (8 bits),
    minority classes of each column upsampled."""

    DataConfig = S1Data
    rule = "sagittal_t1"

    def model_params(self) -> dict:
        return {**self.image_model_params(), "conditions": len(self.conditions)}

    def forward(self, model, batch):
        return model(batch["image"], batch["condition"], batch["level"])


@register_task("s2_level_embedding")
class S2LevelEmbeddingTask(TargetTask):
    """S2: backbone features + level embedding -> MLP, on the whole slice of the target's point; the backbone is
    frozen for ``data.freeze_epochs`` epochs, then its last ``data.unfreeze_last`` parameter tensors train."""

    DataConfig = S2Data

    def model_params(self) -> dict:
        return self.image_model_params()

    def forward(self, model, batch):
        return model(batch["image"], batch["level"])

    @property
    def frozen_parameters(self) -> bool:
        """The backbone is frozen, whole or but its last tensors, in some epochs."""
        return self.data.freeze_epochs > 0 or self.data.unfreeze_last is not None

    def on_epoch_start(self, model, epoch: int, ctx: FoldContext) -> None:
        last = 0 if epoch < self.data.freeze_epochs else self.data.unfreeze_last
        trainable = model.set_backbone_trainable(last)
        log.info("%s epoch %d: %d backbone parameter tensor(s) train", self.cfg.name, epoch + 1, trainable)


@register_task("s3_coordinate_resnet")
class S3CoordinateResnetTask(BaselineTask):
    """S3: one sample per study (Sagittal T2/STIR slice + the 25 points), 75 outputs = 25 targets x 3."""

    DataConfig = S3Data

    def points_dataset(self, studies, points_mm: pd.DataFrame, train: bool = False, memo: bool = False,
                       ) -> StudyDataset:
        return StudyDataset(self.target_samples(studies, points_mm), self.store, self.data, train=train)

    def model_params(self) -> dict:
        params = self.image_model_params()
        params.pop("in_chans")
        return params

    def forward(self, model, batch):
        return model(batch["image"], batch["coords"])
