"""2-D image backbones by name for the classifier families: any timm model, or the kit's own ``plain_cnn``.

:func:`build_backbone` returns a headless module (pooled features, ``num_features`` wide) with ``pretrained``
weights: ``none``, ``imagenet`` (timm's normal download, or a clear error naming the file to provide) or a
local weights file/folder (:mod:`rsna2024.models.pretrained`).

``plain_cnn`` is a VGG-style stack (two 3x3 convolutions with batch norm and ReLU per stage, then 2x2 max
pooling; ``width`` channels doubling per stage; global average pooling). Trained from scratch on small CPU
inputs (48 px regions of a few hundred studies) it learns far faster than timm's mobile networks, whose
early stride and squeeze-excitation suit ImageNet-sized inputs and pretrained weights; the demo and bench
configs use it. It has no ImageNet weights: ``pretrained: imagenet`` is an error, a local file loads.
"""
from __future__ import annotations

from torch import nn

from rsna2024.errors import ConfigError
from rsna2024.models.pretrained import imagenet_unavailable, load_local_weights, parse_pretrained


class PlainCnn(nn.Module):
    """``stages`` x (conv3x3-BN-ReLU x 2, maxpool 2) with ``width * 2**k`` channels, global average pooling."""

    def __init__(self, in_chans: int = 3, width: int = 16, stages: int = 4):
        super().__init__()
        if min(in_chans, width, stages) < 1:
            raise ConfigError(f"plain_cnn: in_chans, width and stages must be positive, got {in_chans}, {width}, "
                              f"{stages}")
        layers: list[nn.Module] = []
        channels = in_chans
        for k in range(stages):
            out = width * 2 ** k
            for c in (channels, out):
                layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = channels

    def forward(self, x):
        return self.pool(self.features(x)).flatten(1)


#: the kit's own backbones: name -> constructor(in_chans, **params)
KIT_BACKBONES = {"plain_cnn": PlainCnn}


def _timm_backbone(name: str, in_chans: int, image_size: int | None, pretrained: bool, params: dict) -> nn.Module:
    """A headless timm model (``num_classes=0``: pooled features); ``img_size`` only for models that take it."""
    import timm

    kwargs = dict(params)
    if image_size is not None:
        kwargs.setdefault("img_size", image_size)
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_chans, **kwargs)
    except TypeError as exc:
        if "img_size" in str(exc) and "img_size" not in params:
            kwargs.pop("img_size")
            return timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_chans, **kwargs)
        raise ConfigError(f"backbone {name!r}: {exc}") from exc
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ConfigError(f"unknown backbone {name!r}: neither one of the kit's ({', '.join(KIT_BACKBONES)}) "
                              f"nor a timm model ({exc})") from exc
        raise


def _kit_backbone(name: str, in_chans: int, params: dict) -> nn.Module:
    try:
        return KIT_BACKBONES[name](in_chans=in_chans, **params)
    except TypeError as exc:
        raise ConfigError(f"backbone {name!r}: {exc}") from exc


def build_backbone(name: str, in_chans: int, image_size: int | None, pretrained, params: dict | None = None,
                   ) -> nn.Module:
    """The backbone ``name`` (a kit backbone or a timm model) with ``pretrained`` weights: ``none``,
    ``imagenet`` or a local file/folder; ``params``: keywords of the backbone's constructor."""
    params = dict(params or {})
    weights = parse_pretrained(pretrained)
    if name in KIT_BACKBONES:
        if weights == "imagenet":
            raise ConfigError(f"backbone {name!r} is the kit's own and has no ImageNet weights: set "
                              f"model.pretrained to none or to a local weights file")
        backbone = _kit_backbone(name, in_chans, params)
    elif weights != "imagenet":
        backbone = _timm_backbone(name, in_chans, image_size, False, params)
    else:
        import timm

        try:
            return _timm_backbone(name, in_chans, image_size, True, params)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - network, offline mode, missing cache: all mean "provide a file"
            cfg = timm.models.get_pretrained_cfg(name)
            raise imagenet_unavailable(f"backbone {name!r}", getattr(cfg, "hf_hub_id", None),
                                       [name, name.split(".")[0]], exc) from exc
    if weights is not None:
        load_local_weights(backbone, weights, [name, name.split(".")[0]])
    return backbone
