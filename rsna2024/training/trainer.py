"""The fold trainer: one fold of one experiment, resumable, the same code on CPU, one GPU or ``torchrun``.

Entry point: :func:`train_fold`. Run folder ``<out>/<experiment>/``::

    config.yaml            the resolved config (a second fold with a different config is refused)
    log.txt                the log of every fold run in this folder
    metrics.jsonl          one JSON line per fold and epoch
    fold{k}_curves.png     loss, selection metric and lr per epoch
    fold{k}_last.pt        full training state after the latest epoch (resume point)
    fold{k}_best.pt        the model of the best epoch by the task's metric (for inference)
    fold{k}_done.json      written last: the fold is finished and will be skipped
    ...                    the task's out-of-fold files (e.g. oof_fold{k}.csv)

Reproducibility: a fold seeds python/numpy/torch with ``seed + fold``; each epoch's shuffling and DataLoader
worker seeds come from a generator seeded by (seed, fold, epoch, rank), and the checkpoint holds the global
RNG states, so a fold interrupted and resumed on CPU ends with bitwise the same weights as an
uninterrupted one.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from rsna2024.errors import ConfigError, RsnaError
from rsna2024.training import distributed as ddp
from rsna2024.training.checkpoint import (
    CONFIG_FILE,
    best_path,
    done_path,
    last_path,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap,
)
from rsna2024.training.config import (
    ExperimentConfig,
    config_differences,
    config_from_dict,
    config_to_dict,
    save_config,
)
from rsna2024.training.optim import LRSchedule, build_optimizer
from rsna2024.training.reporting import WandbRun, append_metrics, plot_curves, read_metrics, truncate_metrics
from rsna2024.training.task import FoldContext, Task, create_task
from rsna2024.utils.io import atomic_write_text, clean_stale_temporaries
from rsna2024.utils.logging import ensure_logging, get_logger

log = get_logger(__name__)
LOG_FILE = "log.txt"
SYNC_EVERY = 10  # batches between reads of the running loss (each read waits for the GPU)
PLOT_EVERY_S = 60.0  # the curves PNG is redrawn at most this often during a fold, and at its end


class TrainingError(RsnaError):
    """Training cannot go on (a non-finite loss, a metric the task did not report, an empty dataset)."""


@dataclass
class FoldResult:
    """What :func:`train_fold` returns (and ``fold{k}_done.json`` holds)."""

    experiment: str
    fold: int
    run_dir: Path
    metric: str
    best_epoch: int
    best_value: float
    metrics: dict = field(default_factory=dict)  # the best epoch's record
    outputs: list[str] = field(default_factory=list)  # files written by the task's write_oof
    skipped: bool = False


# --------------------------------------------------------------------------- small helpers
def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when present, else CPU; under torchrun each process takes GPU ``LOCAL_RANK``."""
    if spec == "cuda" or (spec == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device: cuda was asked for but no CUDA device is available (use device: auto or cpu)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def resolve_amp(spec: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: mixed precision runs on CUDA only (``auto``: bf16 where supported, else fp16)."""
    if device.type != "cuda" or spec == "none":
        if spec in ("bf16", "fp16") and device.type != "cuda":
            log.warning("amp: %s asked for on %s; mixed precision runs on CUDA only, training in float32", spec, device)
        return None
    if spec == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[spec]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(1, np.uint64)[0] % 2**63)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: numpy and ``random`` seeded from the worker's torch seed."""
    seed = torch.initial_seed()
    np.random.seed(seed % 2**32)
    random.seed(seed)
    ensure_logging()


def to_device(batch, device: torch.device):
    """Tensors of a (nested dict/list/tuple) batch moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def batch_len(batch) -> int:
    """Samples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for v in values:
        n = batch_len(v)
        if n:
            return n
    return 0


def _to_numpy(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach()
        if t.is_floating_point() and t.dtype != torch.float64:
            t = t.float()
        return t.cpu().numpy()
    return np.asarray(t)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value < best if mode == "min" else value > best


@contextlib.contextmanager
def _log_to(path: Path | None):
    """Also send the kit's log records to ``path`` (appending) while the block runs."""
    if path is None:
        yield
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger("rsna2024")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


# --------------------------------------------------------------------------- inference
def _loader(task: Task, dataset, batch_size: int, workers: int, sampler=None, shuffle=False, generator=None,
            drop_last=False, device: torch.device | None = None) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
        num_workers=workers, collate_fn=task.collate_fn, pin_memory=device is not None and device.type == "cuda",
        drop_last=drop_last, worker_init_fn=seed_worker, generator=generator)


def _run_inference(task: Task, model: nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None,
                   with_loss: bool):
    """Predictions (lists of numpy arrays per key), loss sum and sample count over ``loader``."""
    model.eval()
    preds: dict[str, list[np.ndarray]] = {}
    loss_sum, count = 0.0, 0
    with torch.no_grad(), _autocast(device, amp_dtype):
        for batch in loader:
            batch = to_device(batch, device)
            outputs = task.forward(model, batch)
            n = batch_len(batch)
            if with_loss:
                loss_sum += float(task.loss(outputs, batch)) * n
            count += n
            for key, value in (task.predict(outputs, batch) or {}).items():
                preds.setdefault(key, []).append(_to_numpy(value))
    return preds, loss_sum, count


def _concat(parts: dict[str, list[np.ndarray]], index: np.ndarray) -> dict[str, np.ndarray]:
    out = {k: np.concatenate(v) for k, v in parts.items()}
    for k, v in out.items():
        if len(v) != len(index):
            raise TrainingError(f"task.predict()['{k}'] gave {len(v)} rows for {len(index)} samples; each value "
                                "must have the batch as its first dimension")
    out["index"] = index
    return out


def predict_on(task: Task, model: nn.Module, dataset, device: torch.device, amp_dtype: torch.dtype | None = None,
               batch_size: int = 16, workers: int = 0) -> dict[str, np.ndarray]:
    """``task.forward`` + ``task.predict`` over ``dataset`` (eval mode, no grad, autocast to ``amp_dtype`` when
    given), concatenated in dataset order, plus ``index``: inference outside a fold (``rsna2024 predict``)."""
    loader = _loader(task, dataset, batch_size, workers, device=device)
    parts, _, _ = _run_inference(task, model, loader, device, amp_dtype, with_loss=False)
    return _concat(parts, np.arange(len(dataset)))


def predict_dataset(task: Task, model: nn.Module, dataset, ctx: FoldContext,
                    batch_size: int | None = None) -> dict[str, np.ndarray]:
    """``task.predict`` outputs over ``dataset`` on this process, in dataset order, plus ``index``."""
    cfg = ctx.cfg
    return predict_on(task, model, dataset, ctx.device, ctx.amp_dtype,
                      batch_size or cfg.valid_batch_size or cfg.batch_size, cfg.workers)


# --------------------------------------------------------------------------- the fold trainer
class FoldTrainer:
    """The state of one fold's training. :func:`train_fold` drives it; ``bench/gpu.py`` uses
    :meth:`setup` and :meth:`train_epoch` alone."""

    def __init__(self, cfg: ExperimentConfig, data_dir: str | Path, fold: int, out: str | Path = "runs",
                 cache: str | Path | None = None, folds_file: str | Path | None = None):
        self.cfg, self.fold = cfg, int(fold)
        self.data_dir = Path(data_dir)
        self.run_dir = Path(out) / cfg.name
        self.cache_root = Path(cache) if cache is not None else _default_cache_root(self.data_dir)
        self.folds_file = Path(folds_file) if folds_file is not None else self.data_dir / "folds.csv"
        self.dist = ddp.dist_from_env()
        self.task: Task = create_task(cfg)
        self.start_epoch = 0
        self.best_value: float | None = None
        self.best_epoch = -1
        self.best_record: dict = {}
        self.folds = self.load_folds()

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    # ----------------------------------------------------------------- setup
    def load_folds(self):
        from rsna2024.data.folds import load_folds

        if not self.folds_file.is_file():
            raise ConfigError(f"no folds file {self.folds_file}: run `rsna2024 folds --data {self.data_dir}` first")
        folds = load_folds(self.folds_file)
        n = int(folds["fold"].max()) + 1
        if n != self.cfg.folds:
            raise ConfigError(f"{self.folds_file} has {n} folds but the config says folds: {self.cfg.folds}")
        if not 0 <= self.fold < n:
            raise ConfigError(f"fold {self.fold} does not exist: {self.folds_file} has folds 0..{n - 1}")
        return folds

    def setup(self) -> None:
        """Device, seeds, datasets, loaders, model, optimizer, schedule and scaler (no files written)."""
        cfg = self.cfg
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        self.created_group = ddp.init_distributed(self.dist, self.device)
        self.amp_dtype = resolve_amp(cfg.amp, self.device)
        seed_everything(cfg.seed + self.fold)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.ctx = FoldContext(cfg=cfg, data_dir=self.data_dir, cache_root=self.cache_root, folds=self.folds,
                               fold=self.fold, run_dir=self.run_dir, device=self.device, amp_dtype=self.amp_dtype,
                               rank=self.dist.rank, world_size=self.dist.world_size, task=self.task)
        self.train_ds, self.valid_ds = self.task.build_datasets(self.ctx)
        if len(self.train_ds) == 0 or len(self.valid_ds) == 0:
            raise TrainingError(f"fold {self.fold}: empty dataset (train {len(self.train_ds)}, valid "
                                f"{len(self.valid_ds)} samples)")
        model = self.task.build_model().to(self.device)
        self.model = model
        if self.dist.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.task.frozen_parameters)
            seed_everything(_derived_seed(cfg.seed + self.fold, self.dist.rank))  # ranks augment differently
        self.generator = torch.Generator()
        if self.dist.enabled:
            self.train_sampler = torch.utils.data.DistributedSampler(
                self.train_ds, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True,
                seed=cfg.seed + self.fold)
        else:
            self.train_sampler = torch.utils.data.RandomSampler(self.train_ds, generator=self.generator)
        per_rank = len(self.train_sampler)
        self.train_loader = _loader(self.task, self.train_ds, cfg.batch_size, cfg.workers, sampler=self.train_sampler,
                                    generator=self.generator, drop_last=per_rank >= cfg.batch_size, device=self.device)
        self.valid_sampler = ddp.ShardSampler(len(self.valid_ds), self.dist.rank, self.dist.world_size)
        self.valid_loader = _loader(self.task, self.valid_ds, cfg.valid_batch_size or cfg.batch_size, cfg.workers,
                                    sampler=self.valid_sampler, device=self.device)
        self.optimizer = build_optimizer(self.task.param_groups(unwrap(self.model)), cfg.optim)
        self.steps_per_epoch = math.ceil(len(self.train_loader) / cfg.grad_accum)
        self.schedule = LRSchedule(self.optimizer, cfg.schedule, self.steps_per_epoch, cfg.epochs, self.task.mode)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def resume(self) -> None:
        """Restore the state saved after the last finished epoch, if any."""
        path = last_path(self.run_dir, self.fold)
        if not path.is_file():
            return
        ckpt = load_checkpoint(path)
        unwrap(self.model).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        self.scaler.load_state_dict(ckpt["scaler"])
        states = ckpt["rng"]
        if len(states) == self.dist.world_size:
            set_rng_state(states[self.dist.rank])
        else:
            log.warning("resuming with %d processes from a checkpoint of %d: random streams are not restored",
                        self.dist.world_size, len(states))
        self.start_epoch = ckpt["epoch"] + 1
        self.best_value, self.best_epoch = ckpt["best"]["value"], ckpt["best"]["epoch"]
        self.best_record = ckpt["best"].get("record", {})
        log.info("fold %d: resuming from %s (epoch %d of %d done)", self.fold, path, self.start_epoch, self.cfg.epochs)

    # ----------------------------------------------------------------- one epoch
    def train_epoch(self, epoch: int, limit_steps: int | None = None) -> dict:
        """Train one epoch; returns ``train_loss``, ``lr`` (of its last optimizer step), ``seconds``, ``images`` and
        ``images_per_s``."""
        cfg, task, model = self.cfg, self.task, self.model
        self.generator.manual_seed(_derived_seed(cfg.seed, self.fold, epoch, self.dist.rank))
        if isinstance(self.train_sampler, torch.utils.data.DistributedSampler):
            self.train_sampler.set_epoch(epoch)
        task.on_epoch_start(unwrap(model), epoch, self.ctx)
        model.train()
        n_batches = len(self.train_loader) if limit_steps is None else min(len(self.train_loader),
                                                                              limit_steps * cfg.grad_accum)
        full_groups_end = (n_batches // cfg.grad_accum) * cfg.grad_accum
        count, lr = 0, self.schedule.current_lr()
        loss_acc = torch.zeros((), dtype=torch.float64, device=self.device)  # read every SYNC_EVERY batches only
        self.optimizer.zero_grad(set_to_none=True)
        bar = tqdm(total=n_batches, desc=f"{cfg.name} fold {self.fold} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not self.is_main, leave=False, dynamic_ncols=True,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0)
        start = time.perf_counter()
        for i, batch in enumerate(self.train_loader):
            if i >= n_batches:
                break
            batch = to_device(batch, self.device)
            step_now = (i + 1) % cfg.grad_accum == 0 or i + 1 == n_batches
            group = cfg.grad_accum if i < full_groups_end else n_batches - full_groups_end
            sync = contextlib.nullcontext() if step_now or not self.dist.enabled else model.no_sync()
            with sync:
                with _autocast(self.device, self.amp_dtype):
                    outputs = task.forward(model, batch)
                    loss = task.loss(outputs, batch)
                self.scaler.scale(loss / group).backward()
            if step_now:
                lr = self.schedule.current_lr()
                if cfg.grad_clip:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.schedule.step()
            n = batch_len(batch)
            loss_acc += loss.detach().double() * n
            count += n
            bar.update(1)
            if (i + 1) % SYNC_EVERY == 0 or i + 1 == n_batches:
                loss_sum = float(loss_acc)
                if not math.isfinite(loss_sum):
                    raise TrainingError(f"fold {self.fold} epoch {epoch}: the loss became {loss_sum} by batch {i} "
                                        f"(lr {lr:.3g}); lower optim.lr, set grad_clip or check the targets")
                bar.set_postfix(loss=f"{loss_sum / max(count, 1):.4g}", refresh=False)
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        loss_sum, count = ddp.sum_numbers(float(loss_acc), count)
        return {"train_loss": loss_sum / max(count, 1), "lr": lr, "seconds": seconds,
                "images": int(count), "images_per_s": count / seconds if seconds > 0 else math.nan}

    def validate(self) -> dict:
        """``valid_loss`` and the task's metrics over the whole valid set (gathered across ranks)."""
        parts, loss_sum, count = _run_inference(self.task, self.model, self.valid_loader, self.device,
                                                   self.amp_dtype, with_loss=True)
        gathered = ddp.gather_objects((parts, self.valid_sampler.indices, loss_sum, count))
        index = np.concatenate([np.asarray(g[1], dtype=np.int64) for g in gathered])
        merged: dict[str, list[np.ndarray]] = {}
        for g in gathered:
            for key, value in g[0].items():
                merged.setdefault(key, []).extend(value)
        preds = _concat(merged, index)
        order = np.argsort(preds["index"], kind="stable")
        preds = {k: v[order] for k, v in preds.items()}
        metrics = {"valid_loss": sum(g[2] for g in gathered) / max(1, sum(g[3] for g in gathered))}
        for key, value in (self.task.validate(preds, self.valid_ds, self.ctx) or {}).items():
            metrics[key] = float(value)
        if self.task.metric not in metrics:
            raise TrainingError(f"task {self.task.name!r} selects checkpoints by {self.task.metric!r} but its "
                                f"validation reported only {', '.join(metrics)}")
        return metrics

    # ----------------------------------------------------------------- files
    def save(self, epoch: int, record: dict, improved: bool) -> None:
        """Best checkpoint (when improved) and the last checkpoint; RNG states of every rank."""
        rngs = ddp.gather_objects(rng_state())
        if not self.is_main:
            return
        cfg_dict = config_to_dict(self.cfg)
        state = unwrap(self.model).state_dict()
        if improved:
            save_checkpoint(best_path(self.run_dir, self.fold), model=state, epoch=epoch, metrics=record,
                            config=cfg_dict)
        save_checkpoint(last_path(self.run_dir, self.fold), model=state, optimizer=self.optimizer.state_dict(),
                        schedule=self.schedule.state_dict(), scaler=self.scaler.state_dict(), rng=rngs, epoch=epoch,
                        best={"value": self.best_value, "epoch": self.best_epoch, "record": self.best_record},
                        config=cfg_dict)


def _default_cache_root(data_dir: Path) -> Path:
    from rsna2024.dicom.cache import default_cache_root

    return default_cache_root(data_dir)


def prepare_run_dir(cfg: ExperimentConfig, run_dir: Path) -> None:
    """Create the run folder and write ``config.yaml``; refuse a folder written by a different config."""
    path = run_dir / CONFIG_FILE
    if path.exists():
        import yaml

        old = yaml.safe_load(path.read_text()) or {}
        try:  # through today's schema, so keys added to the kit since (with their defaults) do not count
            old = config_to_dict(config_from_dict(old, where=str(path)))
        except ConfigError:
            pass
        diffs = config_differences(old, config_to_dict(cfg))
        if diffs:
            raise ConfigError(f"{path} was written by a different config ({'; '.join(diffs[:5])}); "
                              "use another experiment name or --out, or remove the run folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, path)


def _plot(run_dir: Path, fold: int, name: str, metric: str) -> Path:
    return plot_curves(read_metrics(run_dir, fold), run_dir / f"fold{fold}_curves.png", metric,
                       title=f"{name} fold {fold}")


def _format_record(record: dict, metric: str) -> str:
    keys = ["train_loss", "valid_loss"] + [k for k in record if k not in
                                           ("fold", "epoch", "train_loss", "valid_loss", "lr", "seconds",
                                            "images", "images_per_s", "best")]
    text = " ".join(f"{k} {record[k]:.5g}" for k in keys if k in record)
    return (f"{text} lr {record['lr']:.3g} ({record['seconds']:.1f} s, {record['images_per_s']:.1f} img/s)"
            + (f" best {metric}" if record.get("best") else ""))


def train_fold(cfg: ExperimentConfig, data_dir: str | Path, fold: int, out: str | Path = "runs",
               cache: str | Path | None = None, folds_file: str | Path | None = None,
               callbacks: Iterable[Callable[[int, dict], None]] = ()) -> FoldResult:
    """Train fold ``fold`` of experiment ``cfg`` into ``<out>/<cfg.name>/`` and return its result.

    A fold with ``fold{k}_done.json`` is skipped (its result is returned); one with ``fold{k}_last.pt``
    resumes after that epoch. ``folds_file`` defaults to ``<data_dir>/folds.csv`` and ``cache`` to the
    default cache root beside the data. ``callbacks`` are called as ``cb(epoch, record)`` on every rank
    after each epoch's checkpoint is written (an exception there stops training, as a kill would).
    Under ``torchrun`` every process calls this; only rank 0 writes files.
    """
    trainer = FoldTrainer(cfg, data_dir, fold, out=out, cache=cache, folds_file=folds_file)
    run_dir, k = trainer.run_dir, trainer.fold
    if trainer.is_main:
        prepare_run_dir(cfg, run_dir)
        clean_stale_temporaries(run_dir, recursive=False)
    done = done_path(run_dir, k)
    if done.is_file():
        info = json.loads(done.read_text())
        log.info("%s fold %d is finished (%s): skipped", cfg.name, k, done)
        known = {f for f in FoldResult.__dataclass_fields__ if f not in ("run_dir", "skipped")}
        return FoldResult(**{key: v for key, v in info.items() if key in known}, run_dir=run_dir, skipped=True)
    with _log_to(run_dir / LOG_FILE if trainer.is_main else None):
        wandb = WandbRun(cfg, k, run_dir, enabled=trainer.is_main)
        try:
            return _train(trainer, callbacks, wandb)
        finally:
            wandb.finish()
            ddp.cleanup(getattr(trainer, "created_group", False))


def _train(trainer: FoldTrainer, callbacks, wandb: WandbRun) -> FoldResult:
    cfg, k, run_dir, task = trainer.cfg, trainer.fold, trainer.run_dir, trainer.task
    started = time.perf_counter()
    trainer.setup()
    log.info("%s fold %d: task %s, model %s, %d train / %d valid samples, device %s, amp %s, %d process(es)",
             cfg.name, k, task.name, cfg.model.name, len(trainer.train_ds), len(trainer.valid_ds), trainer.device,
             trainer.amp_dtype or "none", trainer.dist.world_size)
    trainer.resume()
    if trainer.is_main:
        truncate_metrics(run_dir, k, trainer.start_epoch)
    last_plot = time.perf_counter()
    for epoch in range(trainer.start_epoch, cfg.epochs):
        record = {"fold": k, "epoch": epoch, **trainer.train_epoch(epoch)}
        record.update(trainer.validate())
        value = record[task.metric]
        improved = _is_better(value, trainer.best_value, task.mode)
        if improved:
            trainer.best_value, trainer.best_epoch, trainer.best_record = value, epoch, dict(record)
        record["best"] = improved
        trainer.schedule.epoch_end(value)
        task.on_epoch_end(unwrap(trainer.model), epoch, record, trainer.ctx)
        if trainer.is_main:
            append_metrics(run_dir, record)
            if time.perf_counter() - last_plot > PLOT_EVERY_S:
                _plot(run_dir, k, cfg.name, task.metric)
                last_plot = time.perf_counter()
            wandb.log(record)
        log.info("%s fold %d epoch %d/%d: %s", cfg.name, k, epoch + 1, cfg.epochs, _format_record(record, task.metric))
        trainer.save(epoch, record, improved)
        for cb in callbacks:
            cb(epoch, record)
    ddp.barrier()
    result = FoldResult(experiment=cfg.name, fold=k, run_dir=run_dir, metric=task.metric, best_epoch=trainer.best_epoch,
                        best_value=trainer.best_value, metrics=trainer.best_record)
    if trainer.is_main:
        _plot(run_dir, k, cfg.name, task.metric)
        model = unwrap(trainer.model)
        model.load_state_dict(load_checkpoint(best_path(run_dir, k))["model"])
        model.eval()
        result.outputs = [str(p) for p in task.write_oof(model, trainer.ctx) or []]
        info = {key: value for key, value in result.__dict__.items() if key not in ("run_dir", "skipped")}
        atomic_write_text(done_path(run_dir, k), json.dumps(
            {**info, "seconds": round(time.perf_counter() - started, 1)}, indent=1, default=str))
        wandb.finish({f"best_{task.metric}": trainer.best_value, "best_epoch": trainer.best_epoch})
        log.info("%s fold %d done: best %s %.5g at epoch %d", cfg.name, k, task.metric, trainer.best_value,
                 trainer.best_epoch + 1)
    ddp.barrier()
    return result
