"""The 2.5D ROI classifier family (stage 2): a 2D timm backbone per slice window, a GRU over the slices, a head.

Input ``(B, R, S, H, W)``: R regions of S slices (the cache's [0, 1] intensities, standardised with ImageNet's
mean and deviation before the backbone). Each slice ``s`` of each region (or every
``window_stride``-th) is seen by the backbone through a window of ``in_chans`` neighbouring slices centred on
it (edge slices repeated), giving one feature vector per window; a bidirectional GRU runs over them and its
outputs are averaged. The R region vectors are concatenated and a linear head gives ``num_outputs`` logits: 3
for a split model (one condition), 15 = 5 conditions x 3 for the global model (reshaped by the task to (5, 3)).
``head_groups`` (one list of region indices per group of 3 outputs) restricts each output group to its own
regions (a block-sparse head): the global model's ``head: own_region`` gives each condition the regions cut for
it, so one misplaced region no longer spoils the other conditions, while backbone and GRU stay shared.
``region_backbones`` (one backbone index per region) gives regions of different series their own backbone (the
global model's ``backbones: per_series``: Sag T2, Sag T1 and axial regions each through one of three backbones of
the same kind; the GRU and head stay shared), so one small backbone need not serve three contrasts.
Given the samples' levels, the buffer ``level_logits`` (levels x outputs, saved with the weights) is added:
the tasks set it to the log of the training folds' prior, and the head starts at zero, so an untrained model
predicts the prior and training learns what the images add to it.

Registered: ``roi25d`` (any backbone of :mod:`rsna2024.models.backbones`: a timm model, default resnet18, or the
kit's ``plain_cnn``) and the tiny CPU variants ``roi25d_tiny_cnn`` (``plain_cnn``, the demo and bench configs'
choice: it learns from scratch on 48 px regions), ``roi25d_tiny`` (resnet10t) and ``roi25d_tiny_mobilenet``
(mobilenetv3_small_050), for tests and CPU configs at 32-64 px.
``pretrained``: ``none``, ``imagenet`` (timm's normal download, or a clear error naming the file to
provide) or a local weights file/folder (:mod:`rsna2024.models.pretrained`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rsna2024.constants import LEVELS
from rsna2024.errors import ConfigError
from rsna2024.models.backbones import build_backbone
from rsna2024.models.registry import register_model

LEVEL_COUNT = len(LEVELS)
# ImageNet's mean and standard deviation averaged over RGB (the channels here are slices, all alike)
IMAGENET_MEAN, IMAGENET_STD = 0.449, 0.226


def slice_windows(x: torch.Tensor, width: int, stride: int = 1) -> torch.Tensor:
    """``(N, S, H, W)`` -> ``(N, n, width, H, W)``: windows of ``width`` slices centred on every ``stride``-th
    slice (n = ceil(S / stride) centres, placed symmetrically in the stack; each window starts ``(width - 1) // 2``
    before its centre), the stack's end slices repeated beyond its ends."""
    s = x.shape[1]
    centres = torch.arange(0, s, stride, device=x.device)
    centres = centres + (s - 1 - int(centres[-1])) // 2
    before, after = (width - 1) // 2, width // 2
    idx = centres[:, None] + torch.arange(-before, after + 1, device=x.device)
    return x[:, idx.clamp(0, s - 1)]


def _check_sizes(in_chans: int, regions: int, num_outputs: int, hidden: int, window_stride: int = 1) -> None:
    if min(in_chans, regions, num_outputs, hidden, window_stride) < 1:
        raise ConfigError(f"roi25d: in_chans, regions, num_outputs, hidden and window_stride must be positive "
                          f"(got {in_chans}, {regions}, {num_outputs}, {hidden}, {window_stride})")


class Roi25d(nn.Module):
    """Backbone per slice window -> bidirectional GRU over slices (mean) -> concatenated regions -> linear."""

    def __init__(self, backbone: nn.Module, in_chans: int, regions: int, num_outputs: int, hidden: int = 256,
                 dropout: float = 0.2, window_stride: int = 1, input_mean: float = IMAGENET_MEAN,
                 input_std: float = IMAGENET_STD, head_groups: Sequence[Sequence[int]] | None = None,
                 extra_backbones: Sequence[nn.Module] = (), region_backbones: Sequence[int] | None = None):
        super().__init__()
        _check_sizes(in_chans, regions, num_outputs, hidden, window_stride)
        if input_std <= 0:
            raise ConfigError(f"roi25d: input_std must be positive, got {input_std}")
        self.input_mean, self.input_std = float(input_mean), float(input_std)
        self.backbone = backbone
        # regions read by backbone k > 0 (extra_backbones[k - 1]); None: every region through ``backbone``
        self.extra_backbones = nn.ModuleList(extra_backbones)
        self.region_backbones = _check_region_backbones(region_backbones, regions, 1 + len(self.extra_backbones))
        self.in_chans = in_chans
        self.window_stride = window_stride
        self.regions = regions
        self.num_outputs = num_outputs
        features = getattr(backbone, "head_hidden_size", None) or backbone.num_features  # after a conv head
        self.gru = nn.GRU(features, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(regions * 2 * hidden, num_outputs))
        nn.init.zeros_(self.head[1].weight)  # an untrained model predicts softmax(level_logits)
        nn.init.zeros_(self.head[1].bias)
        # per level, logits added to the head's output (the task fills them with the training prior's log)
        self.register_buffer("level_logits", torch.zeros(LEVEL_COUNT, num_outputs))
        # which region features each output reads (None: all of them, the dense head)
        self.register_buffer("head_mask", None if head_groups is None else
                             head_mask(head_groups, regions, num_outputs, 2 * hidden), persistent=False)

    def forward(self, x: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, num_outputs)`` of regions ``x``; with ``level`` (B,) indices into the levels, plus
        :attr:`level_logits` of each sample's level."""
        if x.ndim != 5 or x.shape[1] != self.regions:
            raise ValueError(f"roi25d expects (batch, regions={self.regions}, slices, H, W), got {tuple(x.shape)}")
        b, r, s, h, w = x.shape
        x = (x - self.input_mean) / self.input_std  # the cache's [0, 1] intensities, standardised as for ImageNet
        windows = slice_windows(x.reshape(b * r, s, h, w), self.in_chans, self.window_stride)
        n = windows.shape[1]
        feats = self._features(windows.reshape(b, r, n, self.in_chans, h, w)).reshape(b * r, n, -1)
        seq, _ = self.gru(feats)
        pooled = self.head[0](seq.mean(dim=1).reshape(b, -1))
        weight = self.head[1].weight if self.head_mask is None else self.head[1].weight * self.head_mask
        out = F.linear(pooled, weight, self.head[1].bias)
        return out if level is None else out + self.level_logits[level]

    def _features(self, windows: torch.Tensor) -> torch.Tensor:
        """``(B, R, n, C, H, W)`` slice windows -> ``(B, R, n, F)`` backbone features, each region through its
        own backbone (:attr:`region_backbones`)."""
        b, r, n = windows.shape[:3]
        if self.region_backbones is None:
            return self.backbone(windows.flatten(0, 2)).reshape(b, r, n, -1)
        out = None
        for k, net in enumerate([self.backbone, *self.extra_backbones]):
            idx = [i for i, g in enumerate(self.region_backbones) if g == k]
            feats = net(windows[:, idx].flatten(0, 2)).reshape(b, len(idx), n, -1)
            if out is None:
                out = feats.new_zeros(b, r, n, feats.shape[-1])
            out[:, idx] = feats
        return out


def _check_region_backbones(groups: Sequence[int] | None, regions: int, backbones: int) -> list[int] | None:
    """``groups`` (a backbone index per region, every backbone used) checked; None stays None."""
    if groups is None:
        if backbones > 1:
            raise ConfigError("roi25d: extra backbones given without region_backbones")
        return None
    groups = [int(g) for g in groups]
    if len(groups) != regions or sorted(set(groups)) != list(range(backbones)):
        raise ConfigError(f"roi25d: region_backbones needs one backbone index per region ({regions}), using each "
                          f"of 0..{backbones - 1}, got {groups}")
    return groups


def head_mask(groups: Sequence[Sequence[int]], regions: int, num_outputs: int, width: int) -> torch.Tensor:
    """``(num_outputs, regions * width)`` 0/1 mask of the head's weight: output group ``g`` (3 logits) reads the
    features of the regions ``groups[g]`` only."""
    if len(groups) * 3 != num_outputs or any(not g for g in groups) or \
            any(not 0 <= int(r) < regions for g in groups for r in g):
        raise ConfigError(f"roi25d: head_groups needs one non-empty list of region indices (0..{regions - 1}) per "
                          f"3 outputs ({num_outputs // 3} groups), got {groups}")
    mask = torch.zeros(num_outputs, regions, width)
    for g, members in enumerate(groups):
        mask[3 * g:3 * g + 3, [int(r) for r in members]] = 1.0
    return mask.reshape(num_outputs, regions * width)


@register_model("roi25d")
def roi25d(backbone: str = "resnet18", in_chans: int = 3, regions: int = 1, num_outputs: int = 3, hidden: int = 256,
           dropout: float = 0.2, image_size: int | None = None, pretrained: str | None = "none",
           backbone_params: dict | None = None, grad_checkpointing: bool = False, window_stride: int = 1,
           head_groups: Sequence[Sequence[int]] | None = None, region_backbones: Sequence[int] | None = None
           ) -> Roi25d:
    """A 2.5D classifier over any timm ``backbone`` (``in_chans`` slices per window).

    ``image_size`` is passed to backbones that take ``img_size`` (timm's swin needs it when the input is not
    224); ``backbone_params``: any other keyword of the timm model (e.g. ``drop_path_rate``);
    ``grad_checkpointing``: recompute the backbone's activations in the backward pass (less GPU memory);
    ``window_stride``: a window on every n-th slice only (``slices = in_chans = window_stride``: one window
    holding all slices as channels, the cheapest setting); ``head_groups``: the regions each group of 3 outputs
    reads (the tasks fill it from ``head: own_region``); ``region_backbones``: a backbone index per region, one
    ``backbone`` built per index (the tasks fill it from ``backbones: per_series``).
    """
    _check_sizes(in_chans, regions, num_outputs, hidden, window_stride)
    count = 1 if region_backbones is None else len(set(region_backbones))
    nets = [build_backbone(backbone, in_chans, image_size, pretrained, backbone_params) for _ in range(count)]
    if grad_checkpointing:
        for net in nets:
            net.set_grad_checkpointing(True)
    return Roi25d(nets[0], in_chans, regions, num_outputs, hidden, dropout, window_stride, head_groups=head_groups,
                  extra_backbones=nets[1:], region_backbones=region_backbones)


def _register_tiny(name: str, default_backbone: str, default_dropout: float, doc: str) -> None:
    """Register a tiny CPU variant of :func:`roi25d` (GRU 32) with its own default backbone and dropout."""
    def tiny(backbone: str = default_backbone, in_chans: int = 3, regions: int = 1, num_outputs: int = 3,
             hidden: int = 32, dropout: float = default_dropout, image_size: int | None = None,
             pretrained: str | None = "none", backbone_params: dict | None = None, window_stride: int = 1,
             head_groups: Sequence[Sequence[int]] | None = None,
             region_backbones: Sequence[int] | None = None) -> Roi25d:
        return roi25d(backbone, in_chans, regions, num_outputs, hidden, dropout, image_size, pretrained,
                      backbone_params, window_stride=window_stride, head_groups=head_groups,
                      region_backbones=region_backbones)

    tiny.__name__ = tiny.__qualname__ = name
    tiny.__doc__ = doc
    register_model(name)(tiny)


_register_tiny("roi25d_tiny_cnn", "plain_cnn", 0.2,
               "Tiny variant (``plain_cnn`` of width 16, GRU 32) for CPU demo and bench configs: learns from "
               "scratch.")
_register_tiny("roi25d_tiny", "resnet10t", 0.1,
               "Tiny variant (resnet10t, GRU 32) for tests and CPU configs at 32-64 px.")
_register_tiny("roi25d_tiny_mobilenet", "mobilenetv3_small_050", 0.1,
               "Tiny variant (mobilenetv3_small_050, GRU 32) for tests and CPU demo configs.")


def class_logits(outputs: torch.Tensor) -> torch.Tensor:
    """``(B, K * 3)`` logits -> ``(B, K, 3)``."""
    return outputs.reshape(outputs.shape[0], -1, 3)


def class_probabilities(outputs: torch.Tensor) -> torch.Tensor:
    """Softmax over the 3 classes of each of the K outputs: ``(B, K, 3)``."""
    return F.softmax(class_logits(outputs).float(), dim=-1)
