"""The seed baselines' models (kit-guide section 3), registered by name; blocks first, then models, then factories.

- ``s0_image_classifier``: a timm image classifier (EfficientNetV2-S by default) on one grayscale slice, 3 classes.
- ``s1_condition_cnn``: one CNN per condition; each has one 3-class head per level ("per column"), and a sample
  is scored by the head of its own condition and level.
- ``s2_level_embedding``: a headless timm backbone whose pooled features are concatenated with a learned 256-d
  embedding of the level, then the MLP features+256 -> 512 -> 256 -> 3 (LayerNorm + GELU + dropout 0.1 after
  each hidden layer). :meth:`LevelEmbeddingNet.set_backbone_trainable` freezes the backbone and unfreezes its
  last N parameter tensors.
- ``s3_coordinate_resnet``: ResNet18 over 2 channels, the image and a coordinate channel that a small linear
  layer makes from the 25 points (75 numbers, upsampled from a ``coord_grid`` square); conv 512 -> 256, global
  average pooling, 256 -> 128 (batch norm) -> 75 logits = 5 conditions x 5 levels x 3 classes.

Each has a ``*_tiny`` variant (timm's ``test_*`` backbones) that trains on CPU at 64 px in seconds.
``pretrained``: ``none``, ``imagenet`` or a local weights file/folder (:mod:`rsna2024.models.pretrained`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rsna2024.constants import CONDITIONS, LEVELS
from rsna2024.errors import ConfigError
from rsna2024.models.registry import register_model

N_TARGETS = len(CONDITIONS) * len(LEVELS)  # 25 per study
COORD_FEATURES = 3  # per target: x, y (fractions of the image's width and height) and 1 if the point is known


def _backbone(name: str, in_chans: int, image_size: int | None, pretrained, params: dict | None) -> nn.Module:
    """A headless timm model (pooled features unless ``params`` sets ``global_pool: ''``)."""
    from rsna2024.models.backbones import build_backbone

    return build_backbone(name, in_chans, image_size, pretrained, params)


def _features(backbone: nn.Module) -> int:
    return getattr(backbone, "head_hidden_size", None) or backbone.num_features


# --------------------------------------------------------------------------- blocks
def mlp_head(in_features: int, hidden: tuple[int, ...], out_features: int, dropout: float) -> nn.Sequential:
    """Linear -> LayerNorm -> GELU -> Dropout per hidden size, then a linear output layer."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout)]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, out_features))


def zero_touch(modules) -> torch.Tensor:
    """0 times the sum of every parameter of ``modules``: added to an output so that modules a batch did not
    use still take part in the graph (DistributedDataParallel requires every parameter to get a gradient)."""
    return sum(p.sum() for m in modules for p in m.parameters()) * 0.0


# --------------------------------------------------------------------------- models
class ImageClassifier(nn.Module):
    """Backbone (pooled features) -> dropout -> linear ``num_classes``."""

    def __init__(self, backbone: nn.Module, num_classes: int = 3, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(_features(backbone), num_classes))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(image))


class ConditionCNN(nn.Module):
    """One CNN per condition, each with ``levels`` 3-class heads (one per ``train.csv`` column of its condition).

    ``forward(image, condition, level)``: sample i goes through CNN ``condition[i]`` and is scored by head
    ``level[i]``; returns (B, 3) logits.
    """

    def __init__(self, backbones: list[nn.Module], levels: int = len(LEVELS), dropout: float = 0.0):
        super().__init__()
        self.cnns = nn.ModuleList(backbones)
        self.levels = levels
        self.heads = nn.ModuleList(nn.Sequential(nn.Dropout(dropout), nn.Linear(_features(b), levels * 3))
                                   for b in backbones)

    def forward(self, image: torch.Tensor, condition: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        out = image.new_zeros(image.shape[0], 3)
        unused = []
        for c, (cnn, head) in enumerate(zip(self.cnns, self.heads)):
            idx = torch.nonzero(condition == c).flatten()
            if len(idx) == 0:
                unused += [cnn, head]
                continue
            logits = head(cnn(image[idx])).reshape(len(idx), self.levels, 3)
            out = out.index_put((idx,), logits[torch.arange(len(idx), device=idx.device), level[idx]].to(out.dtype))
        return out + zero_touch(unused) if unused and self.training else out


class LevelEmbeddingNet(nn.Module):
    """Backbone features ++ a learned level embedding -> MLP head -> ``num_classes`` logits."""

    def __init__(self, backbone: nn.Module, levels: int = len(LEVELS), embed_dim: int = 256,
                 hidden: tuple[int, ...] = (512, 256), num_classes: int = 3, dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.level_embedding = nn.Embedding(levels, embed_dim)
        self.head = mlp_head(_features(backbone) + embed_dim, tuple(hidden), num_classes, dropout)

    def forward(self, image: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.backbone(image), self.level_embedding(level)], dim=1))

    def set_backbone_trainable(self, last: int | None) -> int:
        """Freeze the backbone, then unfreeze its last ``last`` parameter tensors (in ``named_parameters``
        order, i.e. the layers nearest the head; ``None``: the whole backbone trains). The embedding and the
        head always train. Returns the number of trainable backbone tensors."""
        params = list(self.backbone.parameters())
        keep = len(params) if last is None else max(0, min(int(last), len(params)))
        for i, p in enumerate(params):
            p.requires_grad_(i >= len(params) - keep)
        return keep


class CoordinateResNet(nn.Module):
    """Image channel + coordinate channel -> CNN feature map -> conv -> GAP -> MLP with batch norm -> 75 logits."""

    def __init__(self, backbone: nn.Module, coord_inputs: int = N_TARGETS * COORD_FEATURES, coord_grid: int = 28,
                 conv_channels: int = 256, hidden: int = 128, outputs: int = N_TARGETS * 3):
        super().__init__()
        self.coord_grid = coord_grid
        self.coord_fc = nn.Linear(coord_inputs, coord_grid * coord_grid)
        self.backbone = backbone
        self.reduce = nn.Sequential(nn.Conv2d(_features(backbone), conv_channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(conv_channels), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(conv_channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, outputs))

    def coordinate_channel(self, coords: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, 1, H, W): the coordinates through the linear layer, as a ``coord_grid`` square upsampled to ``size``."""
        grid = self.coord_fc(coords).reshape(-1, 1, self.coord_grid, self.coord_grid)
        return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)

    def forward(self, image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        x = torch.cat([image, self.coordinate_channel(coords, image.shape[-2:]).to(image.dtype)], dim=1)
        features = self.backbone(x)
        if features.ndim != 4:
            raise ValueError(f"s3 backbone must return a feature map (B, C, H, W), got {tuple(features.shape)}")
        return self.head(self.pool(self.reduce(features)).flatten(1))


# --------------------------------------------------------------------------- factories
@register_model("s0_image_classifier")
def s0_image_classifier(backbone: str = "tf_efficientnetv2_s", in_chans: int = 1, num_classes: int = 3,
                        dropout: float = 0.0, image_size: int | None = None, pretrained: str | None = "none",
                        backbone_params: dict | None = None) -> ImageClassifier:
    """S0: a timm classifier of one grayscale slice (``in_chans`` 1; ImageNet weights get their first
    convolution summed over the colour channels)."""
    return ImageClassifier(_backbone(backbone, in_chans, image_size, pretrained, backbone_params), num_classes,
                           dropout)


@register_model("s0_image_classifier_tiny")
def s0_image_classifier_tiny(backbone: str = "test_efficientnet", in_chans: int = 1, num_classes: int = 3,
                             dropout: float = 0.0, image_size: int | None = None, pretrained: str | None = "none",
                             backbone_params: dict | None = None) -> ImageClassifier:
    """S0 with timm's test EfficientNet (0.1 M parameters) for tests and CPU demo configs."""
    return s0_image_classifier(backbone, in_chans, num_classes, dropout, image_size, pretrained, backbone_params)


@register_model("s1_condition_cnn")
def s1_condition_cnn(backbone: str = "resnet18", conditions: int = len(CONDITIONS), levels: int = len(LEVELS),
                     in_chans: int = 1, dropout: float = 0.0, image_size: int | None = None,
                     pretrained: str | None = "none", backbone_params: dict | None = None) -> ConditionCNN:
    """S1: ``conditions`` independent CNNs (timm ``backbone`` each), ``levels`` 3-class heads each."""
    if conditions < 1 or levels < 1:
        raise ConfigError(f"s1_condition_cnn: conditions and levels must be positive, got {conditions}, {levels}")
    nets = [_backbone(backbone, in_chans, image_size, pretrained, backbone_params) for _ in range(conditions)]
    if image_size is not None:
        _check_feature_map(nets[0], in_chans, image_size, "s1_condition_cnn")
    return ConditionCNN(nets, levels, dropout)


def _check_feature_map(net: nn.Module, in_chans: int, image_size: int, name: str) -> None:
    """Refuse an ``image_size`` at which a batch-normalised backbone ends in a 1 x 1 feature map: a batch that
    gives one condition a single sample would then fail in batch norm mid-training."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        return
    was = net.training
    with torch.no_grad():
        fmap = net.eval().forward_features(torch.zeros(1, in_chans, image_size, image_size))
    net.train(was)
    if fmap.ndim == 4 and fmap.shape[-1] * fmap.shape[-2] == 1:
        raise ConfigError(f"{name}: at image_size {image_size} the backbone's last feature map is 1 x 1, so batch "
                          f"norm fails whenever a batch holds one sample of a condition; use a larger "
                          f"data.image_size (e.g. {image_size * 2})")


@register_model("s1_condition_cnn_tiny")
def s1_condition_cnn_tiny(backbone: str = "test_resnet", conditions: int = len(CONDITIONS), levels: int = len(LEVELS),
                          in_chans: int = 1, dropout: float = 0.0, image_size: int | None = None,
                          pretrained: str | None = "none", backbone_params: dict | None = None) -> ConditionCNN:
    """S1 with timm's test ResNet (0.4 M parameters per condition) for tests and CPU demo configs."""
    return s1_condition_cnn(backbone, conditions, levels, in_chans, dropout, image_size, pretrained, backbone_params)


@register_model("s2_level_embedding")
def s2_level_embedding(backbone: str = "vit_base_patch16_224", levels: int = len(LEVELS), embed_dim: int = 256,
                       hidden: tuple[int, ...] = (512, 256), num_classes: int = 3, dropout: float = 0.1,
                       in_chans: int = 3, image_size: int | None = None, pretrained: str | None = "none",
                       backbone_params: dict | None = None) -> LevelEmbeddingNet:
    """S2: any timm ``backbone`` (the six of the recipe: ``vit_base_patch16_224``, ``swin_base_patch4_window7_224``,
    ``beit_base_patch16_224``, ``tf_efficientnetv2_m``, ``resnet152``, ``convnext_base``) + level embedding + MLP."""
    net = _backbone(backbone, in_chans, image_size, pretrained, backbone_params)
    return LevelEmbeddingNet(net, levels, embed_dim, tuple(hidden), num_classes, dropout)


@register_model("s2_level_embedding_tiny")
def s2_level_embedding_tiny(backbone: str = "test_vit", levels: int = len(LEVELS), embed_dim: int = 256,
                            hidden: tuple[int, ...] = (512, 256), num_classes: int = 3, dropout: float = 0.1,
                            in_chans: int = 3, image_size: int | None = 64, pretrained: str | None = "none",
                            backbone_params: dict | None = None) -> LevelEmbeddingNet:
    """S2 with timm's test ViT (0.3 M parameters) at 64 px for tests and CPU demo configs."""
    return s2_level_embedding(backbone, levels, embed_dim, hidden, num_classes, dropout, in_chans, image_size,
                              pretrained, backbone_params)


@register_model("s3_coordinate_resnet")
def s3_coordinate_resnet(backbone: str = "resnet18", coord_grid: int = 28, conv_channels: int = 256,
                         hidden: int = 128, image_size: int | None = None, pretrained: str | None = "none",
                         backbone_params: dict | None = None) -> CoordinateResNet:
    """S3: a timm CNN ``backbone`` (its feature map, 2 input channels) with the coordinate channel."""
    params = {**(backbone_params or {}), "global_pool": ""}
    net = _backbone(backbone, 2, image_size, pretrained, params)
    return CoordinateResNet(net, coord_grid=coord_grid, conv_channels=conv_channels, hidden=hidden)


@register_model("s3_coordinate_resnet_tiny")
def s3_coordinate_resnet_tiny(backbone: str = "test_resnet", coord_grid: int = 8, conv_channels: int = 32,
                              hidden: int = 32, image_size: int | None = None, pretrained: str | None = "none",
                              backbone_params: dict | None = None) -> CoordinateResNet:
    """S3 with timm's test ResNet, an 8 x 8 coordinate grid and narrow layers for tests and CPU demo configs."""
    return s3_coordinate_resnet(backbone, coord_grid, conv_channels, hidden, image_size, pretrained, backbone_params)
