"""Models by name: ``register_model`` decorates a factory, ``create_model(name, **cfg)`` calls it.

A factory is a function returning an ``nn.Module`` whose keyword arguments are the model's settings
(the ``model.params`` of an experiment config, plus ``pretrained``). ``create_model`` checks the given
keywords against the factory's signature, so a misspelt setting fails naming the valid ones.

Families register themselves when their module is imported. Modules listed in :data:`MODEL_MODULES`
are imported on the first lookup (a listed module that does not exist yet is skipped), so
``list_models()`` shows every family of the kit without the caller importing them.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable

from rsna2024.errors import ConfigError

#: Modules (or packages whose ``__init__`` imports their model modules) that register models, imported lazily
#: on the first lookup; one that does not exist (yet) is skipped. Stages add theirs here.
MODEL_MODULES: list[str] = ["rsna2024.models.keypoint", "rsna2024.classifiers", "rsna2024.baselines"]

_MODELS: dict[str, Callable] = {}
_imported = False


def register_model(name: str | None = None) -> Callable[[Callable], Callable]:
    """Decorator: register ``factory`` under ``name`` (default: the function's name).

    Registering a second, different factory under a taken name is an error.
    """
    def deco(factory: Callable) -> Callable:
        key = name or factory.__name__
        old = _MODELS.get(key)
        if old is not None and old.__qualname__ != factory.__qualname__:
            raise ConfigError(f"model {key!r} is already registered (by {old.__module__}.{old.__qualname__})")
        _MODELS[key] = factory
        return factory
    return deco


def import_optional(modules) -> None:
    """Import each dotted module name that exists; a missing one (or a missing parent package) is skipped,
    but an error raised while importing an existing module propagates."""
    for mod in modules:
        try:
            spec = importlib.util.find_spec(mod)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            importlib.import_module(mod)


def _load_families() -> None:
    global _imported
    if not _imported:
        _imported = True
        import_optional(MODEL_MODULES)


def list_models() -> list[str]:
    """Sorted names of every registered model."""
    _load_families()
    return sorted(_MODELS)


def get_model_factory(name: str) -> Callable:
    """The factory registered as ``name``; an unknown name raises :class:`ConfigError` listing the valid ones."""
    if name not in _MODELS:
        _load_families()
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _MODELS[name]


def model_params(name: str) -> dict:
    """The settings a model takes, with their defaults (``inspect.Parameter.empty`` when required)."""
    sig = inspect.signature(get_model_factory(name))
    return {p.name: p.default for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD}


def create_model(name: str, **cfg):
    """Build the model registered as ``name`` with settings ``cfg``.

    Raises :class:`ConfigError` for an unknown name (listing the registered ones) or an unknown setting
    (listing the settings that model takes).
    """
    factory = get_model_factory(name)
    sig = inspect.signature(factory)
    if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        unknown = sorted(set(cfg) - set(sig.parameters))
        if unknown:
            raise ConfigError(f"model {name!r} has no setting {', '.join(map(repr, unknown))}; "
                              f"valid settings: {', '.join(sig.parameters)}")
    return factory(**cfg)
