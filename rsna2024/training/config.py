"""Typed experiment configs: dataclasses loaded from plain YAML, with ``--set a.b=value`` overrides.

Unknown keys are rejected at every level, naming the valid keys; values are type-checked against the
field annotations (an int is accepted for a float, ``1e-3`` written without a dot is read as a float).
The ``data`` section belongs to the task: a task that declares a ``DataConfig`` dataclass gets it
checked and typed the same way (see :mod:`rsna2024.training.task`).

A minimal experiment file::

    name: keypoint_sagt2          # run folder runs/<name>/ (default: the file name without .yaml)
    task: keypoint_sagt2          # a registered task
    data: {image_size: 512, slices: 5, sigma: 10}
    model: {name: keypoint, pretrained: imagenet, params: {arch: DeepLabV3Plus, encoder: resnet34}}
    optim: {lr: 1.0e-3, weight_decay: 1.0e-2}
    schedule: {name: cosine, warmup_epochs: 1}
    epochs: 30
    batch_size: 16
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rsna2024.errors import ConfigError
from rsna2024.utils.io import atomic_write_text

AmpMode = Literal["auto", "bf16", "fp16", "none"]
#: Top-level keys that may differ between folds of one run folder (they do not change the results).
RUNTIME_KEYS = ("device", "workers", "wandb", "description", "depends_on")


@dataclass(kw_only=True)
class ModelConfig:
    """``create_model(name, pretrained=pretrained, **params)``; the task may add settings (channels, classes)."""

    name: str = "keypoint_tiny"
    pretrained: str = "none"  # none | imagenet | path to a weights file or folder
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class OptimConfig:
    name: Literal["adamw", "adam"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass(kw_only=True)
class ScheduleConfig:
    """Learning rate per optimizer step: linear warm-up, then cosine / step / constant / plateau."""

    name: Literal["cosine", "step", "constant", "plateau"] = "cosine"
    warmup_epochs: float = 0.0  # linear ramp from lr / warmup_steps to lr
    min_lr_ratio: float = 0.0  # cosine: the final lr as a fraction of lr
    step_size: float = 1.0  # step: epochs between decays
    gamma: float = 0.1  # step and plateau: decay factor
    patience: int = 2  # plateau: epochs without improvement of the selection metric before a decay


@dataclass(kw_only=True)
class WandbConfig:
    enabled: bool = False
    project: str = "rsna2024"
    entity: str | None = None
    mode: Literal["online", "offline"] | None = None  # None: wandb's default (WANDB_MODE)
    tags: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class ExperimentConfig:
    """One experiment: a task trained over the folds. Sizes are per process (per GPU under torchrun)."""

    name: str
    task: str  # registered task name, or "package.module:Class"
    description: str = ""
    data: Any = field(default_factory=dict)  # the task's DataConfig (a dict for tasks without one)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    epochs: int = 10
    batch_size: int = 16
    valid_batch_size: int | None = None  # default: batch_size
    grad_clip: float | None = None  # max gradient norm; None or 0: off
    grad_accum: int = 1  # micro-batches per optimizer step
    amp: AmpMode = "auto"  # auto: bf16 on CUDA where supported, else fp16; none on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = 2  # DataLoader worker processes
    seed: int = 42  # a fold trains with seed + fold
    folds: int = 5
    wandb: WandbConfig = field(default_factory=WandbConfig)
    depends_on: list[str] = field(default_factory=list)  # experiments whose outputs this one reads


# --------------------------------------------------------------------------- typed conversion
def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value, tp, where: str):
    """``value`` checked against (and lightly coerced to) type ``tp``; ``where`` names it in errors."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {_type_name(tp)}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {k: _convert(v, item, f"{where}.{k}") for k, v in value.items()}
    raise ConfigError(f"{where}: unsupported field type {tp!r}")  # pragma: no cover - a bug in a dataclass


def from_dict(cls, data, where: str = "config"):
    """Build dataclass ``cls`` from a mapping: unknown keys and missing required keys fail naming the valid ones."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                          f"valid keys: {', '.join(fields)}")
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return cls(**{k: _convert(v, hints[k], f"{where}.{k}") for k, v in data.items()})


# --------------------------------------------------------------------------- loading and overrides
def apply_overrides(raw: dict, overrides) -> dict:
    """Apply ``key.path=value`` strings (values parsed as YAML) to a nested dict, in place; returns it."""
    for item in overrides or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (for example optim.lr=3e-4), got {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from exc
        node = raw
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is a value, not a section")
        node[parts[-1]] = value
    return raw


def config_from_dict(raw: dict, where: str = "config") -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a plain mapping, with ``data`` typed by the task's ``DataConfig``."""
    from rsna2024.training.task import task_class

    cfg = from_dict(ExperimentConfig, raw, where)
    data_cls = task_class(cfg.task).DataConfig
    if data_cls is not None:
        cfg.data = from_dict(data_cls, cfg.data, f"{where}.data")
    _check_values(cfg, where)
    return cfg


def _check_values(cfg: ExperimentConfig, where: str) -> None:
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
                "folds": cfg.folds, "valid_batch_size": cfg.valid_batch_size or 1}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{where}.{key}: must be at least 1, got {value}")
    if cfg.folds < 2:
        raise ConfigError(f"{where}.folds: must be at least 2, got {cfg.folds}")
    if cfg.workers < 0:
        raise ConfigError(f"{where}.workers: must be 0 or more, got {cfg.workers}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"{where}.optim.lr: must be positive, got {cfg.optim.lr}")
    if cfg.schedule.step_size <= 0:
        raise ConfigError(f"{where}.schedule.step_size: must be positive, got {cfg.schedule.step_size}")


def load_config(path: str | Path, overrides=()) -> ExperimentConfig:
    """Read an experiment YAML, apply ``--set`` overrides, check and type it.

    ``name`` defaults to the file name without its suffix.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    raw.setdefault("name", path.stem)
    return config_from_dict(apply_overrides(raw, overrides), where=str(path))


# --------------------------------------------------------------------------- writing and comparing
def config_to_dict(cfg) -> dict:
    """The config as plain YAML-able data (nested dicts and lists)."""
    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x
    return plain(dataclasses.asdict(cfg))


def config_to_yaml(cfg) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)


def save_config(cfg, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    return atomic_write_text(path, config_to_yaml(cfg))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(a: dict, b: dict, ignore=RUNTIME_KEYS) -> list[str]:
    """``'key: a_value != b_value'`` for every leaf that differs, skipping the top-level keys in ``ignore``."""
    fa, fb = _flatten(a), _flatten(b)
    keys = sorted((fa.keys() | fb.keys()) - {k for k in fa.keys() | fb.keys() if k.split(".")[0] in ignore})
    return [f"{k}: {fa.get(k, '<absent>')!r} != {fb.get(k, '<absent>')!r}" for k in keys if fa.get(k) != fb.get(k)]
