"""Test helper (not a test module) for the Kaggle side: a tiny trained run, placeholder credentials, and a
process without network (a new network namespace where the machine allows it)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def train_toy_run(out: Path) -> Path:
    """One fold of the toy task (tests/toy_task.py), one epoch: the run folder ``<out>/toy``."""
    from toy_task import toy_config, write_toy_data

    from rsna2024.training.trainer import train_fold

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train_fold(toy_config(epochs=1), write_toy_data(out / "data"), 0, out=out / "runs")
    finally:
        torch.set_num_threads(threads)
    return result.run_dir


def placeholder_credentials(home: Path) -> dict:
    """The environment of a process with dummy Kaggle credentials, HOME in ``home`` and no PYTHONPATH leaking
    another checkout (the kit's own checkout is put first)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), KAGGLE_USERNAME="placeholder", KAGGLE_KEY="0" * 32, PYTHONPATH=str(ROOT))
    return env


def _can_unshare() -> bool:
    if not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip")):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


UNSHARE = _can_unshare()


def offline(cmd: list) -> list[str]:
    """``cmd`` run in a new network namespace holding only loopback (up, for Jupyter's sockets) when the machine
    allows it (root and unshare); else ``cmd`` as is (the callers also set offline pip settings)."""
    cmd = [str(c) for c in cmd]
    if not UNSHARE:
        return cmd
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', *cmd]


def python_cmd(*args) -> list[str]:
    return [sys.executable, *map(str, args)]
