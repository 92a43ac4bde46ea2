"""Stage-2 tasks on the fold trainer: ``split_spinal``, ``split_foraminal``, ``split_subarticular`` and ``global``.

Per fold (see :mod:`rsna2024.training.task` for the order of the calls):

- training samples: the training folds' (study, level, condition) rows with a label and a region, cut
  around the TRUE points (``data.train_points``) with the jitter of ``data.roi.jitter``;
- model: ``model.name`` from the registry with the regions and outputs of the task; with ``data.prior_logits``
  (default) its ``level_logits`` hold the log of the training folds' weight-aware prior per level, added to the
  logits of each sample's level, so the model starts from the prior and learns what the images add;
- ``model.params.head``: ``dense`` (each output reads every region) or ``own_region`` (the global model's
  conditions each read their own region: :meth:`RoiTask.head_groups`);
- ``model.params.backbones``: ``shared`` (one backbone for every region) or ``per_series`` (one backbone per
  series type the regions come from: :meth:`RoiTask.region_backbones`);
- loss: cross-entropy with class weights ``data.class_weights`` (1, 2, 4 as the metric), missing labels
  ignored (``ignore_index``); the global model's 15 outputs are 5 conditions x 3 classes;
- validation after each epoch: the held-out fold's studies on ``data.valid_points`` (true points by
  default). The reported ``score`` is the competition metric of that fold over all 25 rows of every
  held-out study: the model's rows from the model, every other row (other condition groups, and the
  model's rows whose point or series is missing) from the prior fitted on the training folds, so the
  total is always defined and moves only with the model's rows. ``score_<term>`` give the four terms.
  The best checkpoint is the epoch with the lowest ``score``;
- ``write_oof``: with the best checkpoint, the held-out studies are predicted on stage 1's PREDICTED
  points (``data.oof_points``, default ``{runs}/coords_oof.csv``) -> ``oof_fold{k}.csv``, and on the true
  points -> ``oof_true_points_fold{k}.csv`` (format and ``source`` column: :mod:`rsna2024.classifiers.oof`);
  after the last fold the merged ``oof.csv`` / ``oof_true_points.csv`` and ``oof_scores.json``.

Point files: ``true`` means ``<data>/train_label_coordinates.csv``; any other value is a path in which
``{runs}`` (the runs folder, parent of the experiment's run folder) and ``{data}`` (the data folder) are
replaced.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from rsna2024.classifiers.dataset import RoiDataset, region_count, region_series
from rsna2024.classifiers.models import class_logits, class_probabilities
from rsna2024.classifiers.point_task import DEFAULT_OOF_POINTS, TRUE_POINTS, PointTask, default_cache_folder
from rsna2024.classifiers.roi import SPINAL, RoiConfig, side_of
from rsna2024.classifiers.samples import global_samples, split_samples
from rsna2024.constants import CLASS_WEIGHTS, CONDITION_GROUPS, CONDITIONS, LEVELS, PRED_COLUMNS
from rsna2024.errors import ConfigError
from rsna2024.training.losses import severity_loss
from rsna2024.training.task import FoldContext, register_task
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)
HEADS = ("dense", "own_region")  # model.params.head of the stage-2 tasks
BACKBONES = ("shared", "per_series")  # model.params.backbones of the stage-2 tasks
__all__ = ["DEFAULT_OOF_POINTS", "TRUE_POINTS", "ClassifierData", "RoiTask", "default_cache_folder"]


@dataclass(kw_only=True)
class ClassifierData:
    """The ``data:`` section of a stage-2 experiment."""

    roi: RoiConfig = field(default_factory=RoiConfig)
    train_points: str | bool = TRUE_POINTS  # points the training regions are cut around
    valid_points: str | bool = TRUE_POINTS  # points of the per-epoch validation (checkpoint selection)
    oof_points: str | bool = DEFAULT_OOF_POINTS  # stage 1's predicted points for the OOF files
    class_weights: list[float] = field(default_factory=lambda: list(CLASS_WEIGHTS))
    keep_regions: bool = False  # keep regions in memory once cut (float16; with workers: 0, e.g. CPU demos)
    prior_logits: bool = True  # start from the training folds' prior per level (the model's level_logits)
    cache: str | None = None  # preprocessing cache folder; default: the default-parameter folder of the trainer's root

    def __post_init__(self) -> None:
        for name in ("train_points", "valid_points", "oof_points"):
            value = getattr(self, name)
            if value is False or value == "":
                raise ConfigError(f"data.{name}: expected 'true' (the true points) or a coordinates file, "
                                  f"got {value!r}")
            if value is True:
                setattr(self, name, TRUE_POINTS)
        if len(self.class_weights) != 3 or min(self.class_weights) <= 0:
            raise ConfigError(f"data.class_weights: three positive weights expected, got {self.class_weights}")


class RoiTask(PointTask):
    """Shared logic of the four stage-2 tasks; subclasses set :attr:`conditions`."""

    DataConfig = ClassifierData

    # ----------------------------------------------------------------- data
    def points_dataset(self, studies, points_mm: pd.DataFrame, train: bool = False, memo: bool = False) -> RoiDataset:
        """Regions of ``studies`` around ``points_mm``; training keeps the samples with a label and a region."""
        labels = self.labels(studies)
        samples = global_samples(labels, points_mm) if self.is_global else \
            split_samples(labels, points_mm, self.conditions)
        ds = RoiDataset(samples, self.store, self.data.roi, self.conditions, train=train, memo=memo)
        if train:
            keep = ds.usable()
            if not keep.all():
                log.info("%s: %d of %d training samples have no label or no region and are skipped",
                         self.name, int((~keep).sum()), len(keep))
            ds = RoiDataset(ds.samples[keep], self.store, self.data.roi, self.conditions, train=True, memo=memo)
        return ds

    def dataset(self, studies, spec: str, train: bool = False, memo: bool = False) -> RoiDataset:
        return self.points_dataset(studies, self.points(spec, studies), train=train, memo=memo)

    def build_datasets(self, ctx: FoldContext):
        self._setup(ctx)
        oof_points = self.points_file(self.data.oof_points, ctx)
        if not oof_points.is_file():  # needed by write_oof only: a resumed fold goes straight there once it exists
            log.warning("%s: the OOF points file %s does not exist yet; the fold trains, but writing its OOF files "
                        "will fail until `rsna2024 coords` writes it", self.cfg.name, oof_points)
        memo = self.data.keep_regions
        train = self.dataset(ctx.train_studies(), self.data.train_points, train=True, memo=memo)
        valid = self.dataset(ctx.valid_studies(), self.data.valid_points, memo=memo)
        self._valid = (self.points_file(self.data.valid_points, ctx), valid)  # write_oof reuses it (and its regions)
        return train, valid

    def oof_dataset(self, studies, spec: str, ctx: FoldContext) -> RoiDataset:
        same = getattr(self, "_valid", (None, None))
        return same[1] if same[0] == self.points_file(spec, ctx) else self.dataset(studies, spec)

    # ----------------------------------------------------------------- model and steps
    def level_logits(self) -> torch.Tensor:
        """(levels, outputs): per level the log of the training folds' weight-aware prior of the model's
        conditions (a split model over two sides gets the mean of their priors)."""
        prior = self.prior.set_index(["condition", "level"])
        rows = []
        for level in LEVELS:
            probs = [prior.loc[(c, level), list(PRED_COLUMNS)].to_numpy(dtype=float) for c in self.conditions]
            rows.append(np.concatenate(probs) if self.is_global else np.mean(probs, axis=0))
        return torch.log(torch.as_tensor(np.array(rows), dtype=torch.float32))

    def build_model(self, pretrained: bool = True):
        model = super().build_model(pretrained)
        if self.data.prior_logits and getattr(self, "prior", None) is not None:
            with torch.no_grad():
                model.level_logits.copy_(self.level_logits())
        return model

    @property
    def is_global(self) -> bool:
        return len(self.conditions) == len(CONDITIONS)

    @property
    def mirror_invariant(self) -> bool:
        """A split model of one sided condition group sees each side as a left one (regions ordered medial to
        lateral, the right recess mirrored): the patient's mirror only swaps its samples."""
        return not self.is_global and all(side_of(c) for c in self.conditions)

    def head_groups(self, head: str) -> list[list[int]] | None:
        """The regions each output group reads for ``model.params.head``: ``dense`` (default; None: every region)
        or ``own_region`` (global: each condition its own region, spinal also the axial one of ``spinal_axial``;
        a split model has one group, which reads all its regions either way)."""
        if head not in HEADS:
            raise ConfigError(f"model.params.head: expected one of {', '.join(HEADS)}, got {head!r}")
        if head == "dense" or not self.is_global:
            return None
        groups = [[k] for k in range(len(CONDITIONS))]
        if region_count(self.conditions, self.data.roi) > len(CONDITIONS):
            groups[CONDITIONS.index(SPINAL)].append(len(CONDITIONS))
        return groups

    def region_backbones(self, backbones: str) -> list[int] | None:
        """The backbone index of each region for ``model.params.backbones``: ``shared`` (default; None) or
        ``per_series`` (regions of one series type share a backbone, numbered in order of appearance; None when
        every region comes from one series type)."""
        if backbones not in BACKBONES:
            raise ConfigError(f"model.params.backbones: expected one of {', '.join(BACKBONES)}, got {backbones!r}")
        series = region_series(self.conditions, self.data.roi)
        kinds = list(dict.fromkeys(series))
        if backbones == "shared" or len(kinds) == 1:
            return None
        return [kinds.index(s) for s in series]

    def model_params(self) -> dict:
        params = dict(self.cfg.model.params)
        groups = self.head_groups(params.pop("head", "dense"))
        backbones = self.region_backbones(params.pop("backbones", "shared"))
        return {**params, "regions": region_count(self.conditions, self.data.roi),
                "num_outputs": 3 * (len(CONDITIONS) if self.is_global else 1),
                "image_size": self.data.roi.out_size, **({"head_groups": groups} if groups else {}),
                **({"region_backbones": backbones} if backbones else {})}

    def forward(self, model, batch):
        return model(batch["image"], batch["level"] if self.data.prior_logits else None)

    def loss(self, outputs, batch) -> torch.Tensor:
        return severity_loss(class_logits(outputs), batch["target"], self.data.class_weights)

    def predict(self, outputs, batch) -> dict[str, torch.Tensor]:
        return {"probs": class_probabilities(outputs)}

    def predict_studies(self, model, store, studies, points_mm: pd.DataFrame | None,
                        device: str | torch.device = "cpu", batch_size: int = 16) -> pd.DataFrame:
        """``row_id`` + the three class columns of ``studies`` from ``model`` (a trained fold model) on regions
        cut from ``store`` around ``points_mm``; rows without a region (point or series missing) are left out.
        Needs no fold context (the study report)."""
        from rsna2024.training.trainer import predict_on

        self.use_store(store)
        dataset = self.points_dataset(studies, points_mm)
        return self.predicted_rows(model, dataset, lambda m, ds: predict_on(self, m.eval(), ds, torch.device(device),
                                                                            batch_size=batch_size))


@register_task("split_spinal")
class SplitSpinalTask(RoiTask):
    """Spinal canal stenosis from Sagittal T2/STIR (+ the level's axial slices with ``roi.spinal_axial``)."""

    conditions = (SPINAL,)


@register_task("split_foraminal")
class SplitForaminalTask(RoiTask):
    """Neural foraminal narrowing from Sagittal T1, one model for both sides."""

    conditions = CONDITION_GROUPS["foraminal"]


@register_task("split_subarticular")
class SplitSubarticularTask(RoiTask):
    """Subarticular stenosis from Axial T2, the right side mirrored to look like the left."""

    conditions = CONDITION_GROUPS["subarticular"]


@register_task("global")
class GlobalTask(RoiTask):
    """All five conditions of a level from all its regions at once (15 outputs)."""

    conditions = CONDITIONS
