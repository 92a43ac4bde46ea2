"""Checkpoints of a fold: written atomically, read back for resuming and for inference.

``fold{k}_last.pt`` (after every epoch) holds everything a resume needs: ``model``, ``optimizer``,
``schedule``, ``scaler``, ``rng`` (python, numpy, torch, cuda), ``epoch``, ``best`` and the ``config``.
``fold{k}_best.pt`` holds ``model``, ``epoch``, ``metrics`` and ``config``: all inference needs.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rsna2024.errors import ConfigError, RsnaError
from rsna2024.utils.io import atomic_path

CHECKPOINT_FORMAT = 1
CONFIG_FILE = "config.yaml"  # the resolved config in every run folder


def last_path(run_dir: Path, fold: int) -> Path:
    return Path(run_dir) / f"fold{fold}_last.pt"


def best_path(run_dir: Path, fold: int) -> Path:
    return Path(run_dir) / f"fold{fold}_best.pt"


def done_path(run_dir: Path, fold: int) -> Path:
    """The marker of a finished fold (JSON: best epoch and metrics, files written)."""
    return Path(run_dir) / f"fold{fold}_done.json"


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) \
        else model


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, **content) -> Path:
    """``torch.save`` ``content`` (plus the format version) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **content}, tmp)
    return Path(path)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """A checkpoint written by :func:`save_checkpoint` (it holds RNG states and config dicts, so it is read
    with ``weights_only=False``: load only checkpoints you made)."""
    return torch.load(path, map_location=map_location, weights_only=False)


def load_fold_model(run_dir: str | Path, fold: int, device: str | torch.device = "cpu", which: str = "best"):
    """``(model, cfg)``: a fold's ``best`` (or ``last``) model rebuilt from the config stored in its checkpoint,
    in eval mode on ``device``. No pretrained weights are fetched (the checkpoint replaces them)."""
    from rsna2024.training.config import config_from_dict
    from rsna2024.training.task import create_task

    path = (best_path if which == "best" else last_path)(Path(run_dir), fold)
    if not path.is_file():
        raise FileNotFoundError(f"no {which} checkpoint of fold {fold} in {run_dir} ({path.name})")
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"], where=str(path))
    model = create_task(cfg).build_model(pretrained=False)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg


def run_task(run_dir: str | Path) -> str:
    """The task named by a run folder's ``config.yaml``; a ConfigError naming the folder or file when it is not a
    run folder (no config), or the file is not valid YAML or names no task."""
    import yaml

    config = Path(run_dir) / CONFIG_FILE
    if not config.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no {CONFIG_FILE}; run folders are written by "
                          "`rsna2024 train` / `rsna2024 run`)")
    try:
        raw = yaml.safe_load(config.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config}: not valid YAML ({exc})") from None
    task = raw.get("task") if isinstance(raw, dict) else None
    if not isinstance(task, str):
        raise ConfigError(f"{config}: not an experiment config (no task)")
    return task


def run_folds(run_dir: str | Path) -> list[int]:
    """The folds of a run folder that have a best checkpoint (``fold{k}_best.pt``), sorted."""
    found = (re.fullmatch(r"fold(\d+)_best\.pt", p.name) for p in Path(run_dir).glob("fold*_best.pt"))
    return sorted(int(m.group(1)) for m in found if m)


def load_run_models(run_dir: str | Path, device: str | torch.device = "cpu", folds=None):
    """``(cfg, {fold: model})``: the best models of a run folder (every fold found, or ``folds``), eval mode.
    A run without any best checkpoint, or without one of the ``folds`` asked for, is an error naming it."""
    run_dir = Path(run_dir)
    folds = run_folds(run_dir) if folds is None else list(folds)
    if not folds:
        raise RsnaError(f"{run_dir}: no fold*_best.pt checkpoint; train the run first (`rsna2024 train`)")
    models, cfg = {}, None
    for k in folds:
        if not best_path(run_dir, k).is_file():
            raise RsnaError(f"{run_dir}: fold {k} has no best checkpoint ({best_path(run_dir, k).name})")
        models[k], cfg = load_fold_model(run_dir, k, device=device)
    return cfg, models
