"""Optimizer and learning-rate schedule of the fold trainer.

The schedule is a factor on each param group's base lr, updated after every optimizer step: a linear
warm-up over ``warmup_epochs``, then ``cosine`` (to ``min_lr_ratio``), ``step`` (x ``gamma`` every
``step_size`` epochs), ``constant``, or ``plateau`` (x ``gamma`` when the selection metric has not
improved for ``patience`` epochs; told at each epoch end). Its state is a few numbers, saved in checkpoints.
"""
from __future__ import annotations

import math

import torch

from rsna2024.training.config import OptimConfig, ScheduleConfig


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (or Adam) over ``params`` (parameters or param-group dicts)."""
    cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[cfg.name]
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))


class LRSchedule:
    """Per-step learning-rate factor; call :meth:`step` after each optimizer step and :meth:`epoch_end` after
    each validation."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int, epochs: int,
                 mode: str = "min"):
        self.optimizer, self.cfg, self.mode = optimizer, cfg, mode
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total_steps = self.steps_per_epoch * epochs
        self.warmup_steps = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.step_count = 0
        self.plateau_factor = 1.0
        self.plateau_best: float | None = None
        self.plateau_bad_epochs = 0
        self._apply()

    def factor(self, step: int | None = None) -> float:
        """The lr multiplier at optimizer step ``step`` (default: the current one)."""
        s = self.step_count if step is None else step
        cfg = self.cfg
        warm = min(1.0, (s + 1) / self.warmup_steps) if self.warmup_steps and s < self.warmup_steps else 1.0
        if cfg.name == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, max(0.0, (s - self.warmup_steps) / span))
            main = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        elif cfg.name == "step":
            main = cfg.gamma ** math.floor(s / (cfg.step_size * self.steps_per_epoch) + 1e-9)
        elif cfg.name == "plateau":
            main = self.plateau_factor
        else:
            main = 1.0
        return warm * main

    def _apply(self) -> None:
        f = self.factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def epoch_end(self, metric: float | None) -> None:
        """Tell the schedule the epoch's selection metric (only ``plateau`` uses it)."""
        if self.cfg.name != "plateau" or metric is None or not math.isfinite(metric):
            return
        better = self.plateau_best is None or (metric < self.plateau_best if self.mode == "min"
                                               else metric > self.plateau_best)
        if better:
            self.plateau_best, self.plateau_bad_epochs = metric, 0
        else:
            self.plateau_bad_epochs += 1
            if self.plateau_bad_epochs > self.cfg.patience:
                self.plateau_factor *= self.cfg.gamma
                self.plateau_bad_epochs = 0
        self._apply()

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "plateau_factor": self.plateau_factor,
                "plateau_best": self.plateau_best, "plateau_bad_epochs": self.plateau_bad_epochs,
                "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = state["step_count"]
        self.plateau_factor = state["plateau_factor"]
        self.plateau_best = state["plateau_best"]
        self.plateau_bad_epochs = state["plateau_bad_epochs"]
        self.base_lrs = list(state["base_lrs"])
        self._apply()
