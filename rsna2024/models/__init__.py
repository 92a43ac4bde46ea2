"""Models by name: ``create_model(name, **cfg)``, ``list_models()``, ``register_model``.

Families: :mod:`rsna2024.models.keypoint` (stage-1 heatmap encoder-decoders); later stages add theirs
through :data:`rsna2024.models.registry.MODEL_MODULES`. Pretrained weights (``none | imagenet | path``):
:mod:`rsna2024.models.pretrained`.
"""
from rsna2024.models.registry import MODEL_MODULES, create_model, list_models, model_params, register_model

__all__ = ["MODEL_MODULES", "create_model", "list_models", "model_params", "register_model"]
