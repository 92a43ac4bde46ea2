"""Pretrained weights: ``pretrained: none | imagenet | <path to a local file or folder>``.

``imagenet`` is fetched the normal timm/smp way (Hugging Face hub, or its local cache); where that is
impossible (no internet, ``HF_HUB_OFFLINE=1``, Kaggle's scoring run) the family raises
:func:`imagenet_unavailable` naming the file to provide. A local path is read by :func:`read_state_dict`
and loaded by :func:`load_weights`, which tolerates the usual key prefixes (``module.``, ``model.``,
``encoder.``), ignores extra tensors (a classifier head) and adapts a 3-channel first convolution to more
or fewer input channels the way timm and smp do (channels repeated, scaled by 3 / in_channels).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from rsna2024.errors import ConfigError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
_STRIP = ("", "module.", "model.", "encoder.", "backbone.")  # prefixes a saved file may carry
_ADD = ("", "model.")  # prefixes the module may need (smp wraps timm encoders as ``model.``)
FORMAT_HELP = ("a PyTorch state dict (.safetensors, .pth, .pt or .bin; a checkpoint holding it under "
               "'state_dict' or 'model' also works) of the ImageNet model for 3 input channels; the first "
               "convolution is adapted to the model's input channels")


def parse_pretrained(value) -> str | Path | None:
    """``None`` for no weights, ``'imagenet'``, or the :class:`Path` of an existing file or folder."""
    if value is None or value is False or str(value).strip().lower() in ("", "none", "false"):
        return None
    if value is True or str(value).strip().lower() == "imagenet":
        return "imagenet"
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise ConfigError(f"pretrained: {value!r} is neither 'none', 'imagenet' nor an existing file or folder")
    return path


def find_weights_file(path: str | Path, names: Sequence[str] = ()) -> Path:
    """``path`` itself when it is a file; in a folder the first of ``<name><suffix>``, ``<name>/<hub file>``
    and ``<hub file>`` (hub files: ``model.safetensors``, ``pytorch_model.bin``) for each of ``names``."""
    path = Path(path)
    if path.is_file():
        return path
    candidates = [path / f"{n}{s}" for n in names for s in WEIGHT_SUFFIXES]
    candidates += [path / n / f for n in names for f in HUB_FILES] + [path / f for f in HUB_FILES]
    for c in candidates:
        if c.is_file():
            return c
    shown = ", ".join(str(c.relative_to(path)) for c in candidates)
    raise ConfigError(f"pretrained: no weights file in folder {path}; looked for {shown}")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``torch.save``d state dict (unwrapping ``state_dict``/``model``)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear message
        raise ConfigError(f"pretrained: cannot read weights file {path}: {exc}; expected {FORMAT_HELP}") from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"pretrained: {path} does not hold a state dict of tensors; expected {FORMAT_HELP}")
    return state


def _adapt_first_conv(src: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """A conv weight for ``shape[1]`` input channels made from ``src``, or None when the shapes differ otherwise."""
    if src.ndim != 4 or src.shape[0] != shape[0] or src.shape[2:] != shape[2:]:
        return None
    cin, cout = src.shape[1], shape[1]
    if cout == 1:
        return src.sum(1, keepdim=True)
    idx = torch.arange(cout) % cin
    return src[:, idx] * (cin / cout)


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Load ``state`` into ``module``: best-matching key prefix, extra tensors ignored, first conv adapted.

    Every tensor of ``module`` (except BatchNorm counters) must be found, else :class:`ConfigError` names
    the missing keys and the keys expected.
    """
    target = module.state_dict()
    wanted = {k for k in target if not k.endswith("num_batches_tracked")}
    best: dict[str, torch.Tensor] = {}
    for strip in _STRIP:
        for add in _ADD:
            mapped = {add + k[len(strip):]: v for k, v in state.items() if k.startswith(strip)}
            if len(wanted & mapped.keys()) > len(wanted & best.keys()):
                best = mapped
    missing = [k for k in target if k in wanted and k not in best]  # in the model's order
    if missing:
        raise ConfigError(f"pretrained: {source} does not fit the model: {len(missing)} of {len(wanted)} tensors "
                          f"missing (e.g. {', '.join(missing[:4])}); its keys look like "
                          f"{', '.join(list(state)[:4])}; expected {FORMAT_HELP}")
    new = {}
    for key, ref in target.items():
        if key not in best:
            new[key] = ref
            continue
        value = best[key]
        if value.shape != ref.shape:
            adapted = _adapt_first_conv(value, ref.shape)
            if adapted is None:
                raise ConfigError(f"pretrained: {source}: tensor {key} has shape {tuple(value.shape)}, "
                                  f"the model needs {tuple(ref.shape)}")
            value = adapted
        new[key] = value.to(ref.dtype)
    module.load_state_dict(new, strict=True)


def load_local_weights(module: nn.Module, path: str | Path, names: Sequence[str] = ()) -> Path:
    """Find (see :func:`find_weights_file`), read and load a local weights file into ``module``; returns the file."""
    file = find_weights_file(path, names)
    load_weights(module, read_state_dict(file), source=str(file))
    return file


def imagenet_unavailable(what: str, hub_id: str | None, names: Sequence[str], cause: BaseException) -> ConfigError:
    """The error raised when ImageNet weights cannot be fetched: which file to provide and how."""
    name = names[0] if names else "weights"
    fetch = (f"on a machine with internet run `huggingface-cli download {hub_id} model.safetensors "
             f"--local-dir weights/{name}`" if hub_id else "download the ImageNet weights file of this model")
    return ConfigError(
        f"pretrained: imagenet: the ImageNet weights of {what} could not be loaded here (no internet, or "
        f"HF_HUB_OFFLINE=1; cause: {type(cause).__name__}: {str(cause)[:200]}). Provide them as a local file: "
        f"{fetch}, bring the folder along (on Kaggle: as a dataset) and set `model.pretrained: weights/{name}` "
        f"(in the YAML, or `--set model.pretrained=weights/{name}`). Expected: {FORMAT_HELP}; a folder is searched "
        f"for {name}.safetensors/.pth/.pt/.bin, {name}/model.safetensors and model.safetensors. "
        f"Or set `model.pretrained: none` to start from random weights.")
