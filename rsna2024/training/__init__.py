"""Training: typed experiment configs, the task interface, the fold trainer, checkpoints, DDP.

- :mod:`~rsna2024.training.config`: ``load_config(path, overrides)`` -> :class:`ExperimentConfig`.
- :mod:`~rsna2024.training.task`: :class:`Task` (what a stage provides), ``register_task``, :class:`FoldContext`.
- :mod:`~rsna2024.training.trainer`: ``train_fold(cfg, data_dir, fold, out, cache)`` -> :class:`FoldResult`.
- :mod:`~rsna2024.training.checkpoint`: ``load_fold_model(run_dir, fold)`` for inference.
- :mod:`~rsna2024.training.optim`, :mod:`~rsna2024.training.distributed`, :mod:`~rsna2024.training.reporting`.
"""
from rsna2024.training.checkpoint import load_fold_model
from rsna2024.training.config import ExperimentConfig, load_config
from rsna2024.training.task import FoldContext, Task, create_task, list_tasks, register_task, task_class
from rsna2024.training.trainer import FoldResult, train_fold

__all__ = ["ExperimentConfig", "FoldContext", "FoldResult", "Task", "create_task", "list_tasks", "load_config",
           "load_fold_model", "register_task", "task_class", "train_fold"]
