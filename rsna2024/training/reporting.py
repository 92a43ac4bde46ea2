"""What a fold reports: ``metrics.jsonl`` lines, the training-curve PNG, and wandb when the config asks.

``metrics.jsonl`` holds one JSON object per epoch and fold: ``fold, epoch, train_loss, lr`` (of the epoch's
last optimizer step), ``seconds, images, images_per_s``, every validation metric (``valid_loss`` and the
task's) and ``best`` (whether this epoch became the best checkpoint). Folds training at once into one run folder
(``main.py --gpus``) share the file: appends and a resumed fold's truncation hold an exclusive lock on
``.metrics.lock`` beside it, so a truncation (read, filter, replace) never drops a line another fold appends.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rsna2024.errors import ConfigError
from rsna2024.utils.io import atomic_path, atomic_write_text
from rsna2024.utils.logging import get_logger

log = get_logger(__name__)
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".metrics.lock"


@contextmanager
def metrics_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder's metrics file (POSIX ``flock``; a no-op where there is none)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: folds of one run folder are not trained at once there
        yield
        return
    fd = os.open(Path(run_dir) / LOCK_FILE, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def read_metrics(run_dir: Path, fold: int | None = None) -> list[dict]:
    """The records of ``metrics.jsonl`` (of one fold when given). A line that is not a whole JSON object (a
    write cut short by a kill) is left out with a warning naming the file and line."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            log.warning("%s line %d: not a whole JSON record (a write cut short?); left out", path, i)
            continue
        records.append(record)
    return [r for r in records if fold is None or r.get("fold") == fold]


def append_metrics(run_dir: Path, record: dict) -> None:
    """Append one record as one ``write`` to a file opened for appending, under :func:`metrics_lock` (folds
    training at once into one run folder each add whole lines, and none is lost to a resumed fold's truncation)."""
    data = (json.dumps(record) + "\n").encode()
    with metrics_lock(run_dir):
        fd = os.open(Path(run_dir) / METRICS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)


def truncate_metrics(run_dir: Path, fold: int, before_epoch: int) -> None:
    """Drop the fold's records of epochs ``>= before_epoch`` (written after the checkpoint a resume starts from)
    and any line cut short by a kill; the file is rewritten only when something is dropped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    with metrics_lock(run_dir):
        keep = [r for r in read_metrics(run_dir) if r.get("fold") != fold or r["epoch"] < before_epoch]
        text = "".join(json.dumps(r) + "\n" for r in keep)
        if text != path.read_text():
            atomic_write_text(path, text)


def plot_curves(records: list[dict], path: Path, metric: str, title: str = "") -> Path:
    """Loss (train, valid), the selection metric and the learning rate against epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(epochs, [r["train_loss"] for r in records], "o-", label="train")
    axes[0].plot(epochs, [r.get("valid_loss", math.nan) for r in records], "o-", label="valid")
    axes[0].set_title("loss")
    axes[0].legend()
    axes[1].plot(epochs, [r.get(metric, math.nan) for r in records], "o-", color="C2")
    axes[1].set_title(metric)
    axes[2].plot(epochs, [r["lr"] for r in records], "o-", color="C3")
    axes[2].set_title("learning rate (last step of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return Path(path)


class WandbRun:
    """A wandb run per fold when ``cfg.wandb.enabled`` (wandb imported only then); otherwise does nothing."""

    def __init__(self, cfg, fold: int, run_dir: Path, enabled: bool = True):
        self.run = None
        if not (cfg.wandb.enabled and enabled):
            return
        try:
            import wandb
        except ImportError as exc:
            raise ConfigError("wandb.enabled is true but wandb is not installed: `pip install wandb` "
                              "(or the kit's extra: pip install -e '.[wandb]'), or set wandb.enabled: false") from exc
        from rsna2024.training.config import config_to_dict

        w = cfg.wandb
        self.run = wandb.init(project=w.project, entity=w.entity, mode=w.mode, group=cfg.name, tags=w.tags or None,
                              name=f"{cfg.name}-fold{fold}", id=f"{cfg.name}-fold{fold}", resume="allow",
                              dir=str(run_dir), config={**config_to_dict(cfg), "fold": fold})

    def log(self, record: dict) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["epoch"])

    def finish(self, summary: dict | None = None) -> None:
        if self.run is not None:
            if summary:
                self.run.summary.update(summary)
            self.run.finish()
            self.run = None
