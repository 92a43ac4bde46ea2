"""Keypoint family (stage 1): an encoder-decoder that outputs one heatmap per point.

Any segmentation_models_pytorch architecture (``DeepLabV3Plus``, ``Unet``, ``FPN`` ...) over any encoder
smp knows: its own (``resnet34``) and timm's through the ``tu-`` prefix (``tu-convnext_nano``). Input:
``in_channels`` slices as channels; output: ``classes`` maps at the input resolution (logits; the task
chooses the loss). The sides of the input must be divisible by the encoder's output stride (32 for
depth 5, 16 for depth 4).

Registered: ``keypoint`` (the recipe's DeepLabV3Plus + resnet34 by default, everything configurable) and
two tiny variants that train on CPU at 128 px in seconds (``keypoint_tiny``, ``keypoint_tiny_deeplab``).
"""
from __future__ import annotations

from torch import nn

from rsna2024.errors import ConfigError
from rsna2024.models.pretrained import imagenet_unavailable, load_local_weights, parse_pretrained
from rsna2024.models.registry import register_model


def _encoder_names(encoder: str) -> list[str]:
    """Names a weights folder may use for this encoder: ``tu-convnext_nano.in12k`` -> the timm name, its
    architecture without the tag, and the smp name."""
    name = encoder[3:] if encoder.startswith("tu-") else encoder
    names = [name, name.split(".")[0], encoder]
    return list(dict.fromkeys(names))


def _imagenet_source(encoder: str) -> str | None:
    """The Hugging Face repository the normal timm/smp way downloads the encoder's ImageNet weights from."""
    if encoder.startswith("tu-"):
        import timm

        cfg = timm.models.get_pretrained_cfg(encoder[3:])
        return getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    import segmentation_models_pytorch as smp

    settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {})
    if "imagenet" not in settings:
        raise ConfigError(f"encoder {encoder!r} has no imagenet weights in smp (it has: {sorted(settings) or 'none'})")
    return settings["imagenet"]["repo_id"]


def load_imagenet_encoder(model: nn.Module, encoder: str, in_channels: int, depth: int) -> None:
    """Copy the encoder's ImageNet weights (fetched the normal smp/timm way) into ``model.encoder``."""
    import segmentation_models_pytorch as smp

    hub_id = _imagenet_source(encoder)
    try:
        weights = True if encoder.startswith("tu-") else "imagenet"
        source = smp.encoders.get_encoder(encoder, in_channels=in_channels, depth=depth, weights=weights)
    except Exception as exc:  # noqa: BLE001 - network, offline mode, missing cache: all mean "provide a file"
        raise imagenet_unavailable(f"encoder {encoder!r}", hub_id, _encoder_names(encoder), exc) from exc
    model.encoder.load_state_dict(source.state_dict())


@register_model("keypoint")
def keypoint_model(arch: str = "DeepLabV3Plus", encoder: str = "resnet34", in_channels: int = 5, classes: int = 5,
                   pretrained: str | None = "none", encoder_depth: int = 5, decoder_channels=None,
                   arch_params: dict | None = None) -> nn.Module:
    """An smp ``arch`` over ``encoder`` with ``in_channels`` inputs and ``classes`` heatmaps.

    ``pretrained``: ``none``, ``imagenet`` or a local weights file/folder for the encoder (see
    :mod:`rsna2024.models.pretrained`). ``decoder_channels``: smp's setting of that name (a list for
    ``Unet``, an int for ``DeepLabV3Plus``); ``arch_params``: any other keyword of the smp architecture.
    """
    import segmentation_models_pytorch as smp

    kwargs = dict(arch_params or {})
    if decoder_channels is not None:
        kwargs["decoder_channels"] = decoder_channels
    try:
        model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, encoder_depth=encoder_depth,
                                 in_channels=in_channels, classes=classes, **kwargs)
    except KeyError as exc:  # smp's unknown architecture / encoder messages list the valid names
        raise ConfigError(f"keypoint model: {exc.args[0] if exc.args else exc}") from exc
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"keypoint model {arch} + {encoder}: {exc}") from exc
    weights = parse_pretrained(pretrained)
    if weights == "imagenet":
        load_imagenet_encoder(model, encoder, in_channels, encoder_depth)
    elif weights is not None:
        load_local_weights(model.encoder, weights, _encoder_names(encoder))
    return model


@register_model("keypoint_tiny")
def keypoint_tiny(arch: str = "Unet", encoder: str = "tu-mobilenetv3_small_050", in_channels: int = 5,
                  classes: int = 5, pretrained: str | None = "none", encoder_depth: int = 5,
                  decoder_channels=(32, 16, 16, 8, 8), arch_params: dict | None = None) -> nn.Module:
    """Tiny Unet (0.4 M parameters) for tests and CPU demo configs."""
    return keypoint_model(arch, encoder, in_channels, classes, pretrained, encoder_depth, decoder_channels,
                          arch_params)


@register_model("keypoint_tiny_deeplab")
def keypoint_tiny_deeplab(arch: str = "DeepLabV3Plus", encoder: str = "tu-resnet10t", in_channels: int = 5,
                          classes: int = 5, pretrained: str | None = "none", encoder_depth: int = 4,
                          decoder_channels: int = 32, arch_params: dict | None = None) -> nn.Module:
    """Small DeepLabV3Plus (1.3 M parameters; the recipe's architecture) for CPU demo configs."""
    return keypoint_model(arch, encoder, in_channels, classes, pretrained, encoder_depth, decoder_channels,
                          arch_params)
