"""`rsna2024 train` in-process, and under torchrun with 2 CPU processes (DDP over gloo)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from toy_task import one_thread, write_toy_data  # noqa: F401 - one_thread: pytestmark

from rsna2024.cli import main
from rsna2024.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TOY = {"task": "toy_task:ToyPointTask", "epochs": 2, "batch_size": 2, "folds": 2, "workers": 0, "device": "cpu",
       "seed": 3, "model": {"name": "keypoint_tiny"}, "optim": {"lr": 3.0e-3}}



def _config(tmp_path, **changes) -> Path:
    path = tmp_path / "toy_exp.yaml"
    path.write_text(yaml.safe_dump({**TOY, **changes}))
    return path


def test_train_command_runs_a_fold_and_applies_overrides(tmp_path, capsys):
    data = write_toy_data(tmp_path / "data", studies=8)
    args = ["train", "--config", str(_config(tmp_path)), "--data", str(data), "--fold", "1", "--out",
            str(tmp_path / "runs"), "--set", "epochs=1", "--set", "data.image_size=64"]
    assert main(args) == 0
    assert "toy_exp fold 1 done: best point_error" in capsys.readouterr().out
    written = yaml.safe_load((tmp_path / "runs/toy_exp/config.yaml").read_text())
    assert written["epochs"] == 1 and written["data"]["image_size"] == 64
    assert main(args) == 0
    assert "already finished" in capsys.readouterr().out


def test_train_command_reports_config_errors_without_traceback(tmp_path, capsys):
    data = write_toy_data(tmp_path / "data", studies=8)
    base = ["train", "--data", str(data), "--fold", "0", "--out", str(tmp_path / "runs")]
    assert main([*base, "--config", str(_config(tmp_path, optimizer={"lr": 1}))]) == 2
    err = capsys.readouterr().err
    assert "rsna2024 train: error" in err and "unknown key 'optimizer'" in err and "valid keys: name, task" in err
    assert main([*base, "--config", str(_config(tmp_path)), "--set", "optim.lr=fast"]) == 2
    assert "optim.lr: expected a number, got 'fast'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def _torchrun_fold0(tmp_path, studies: int, data: dict):
    """``torchrun --nproc_per_node 2 rsna2024 train`` of the toy experiment's fold 0 (2 epochs, batch 2 per rank)
    on ``studies`` toy studies; returns the finished process and the run folder."""
    folder = write_toy_data(tmp_path / "data", studies=studies)
    config = _config(tmp_path, epochs=2, batch_size=2, data=data)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "rsna2024.cli", "train", "--config", str(config), "--data", str(folder), "--fold", "0",
           "--out", str(tmp_path / "runs")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, tmp_path / "runs" / "toy_exp"


def test_ddp_two_cpu_processes_see_different_samples_and_end_with_equal_weights(tmp_path):
    """torchrun --nproc_per_node 2 rsna2024 train: gloo, DistributedSampler, gathered validation."""
    proc, run = _torchrun_fold0(tmp_path, studies=16, data={"trace": True})
    seen = [[int(s) for line in (run / f"trace_rank{r}.txt").read_text().split("\n") for s in line.split()]
            for r in (0, 1)]
    # 8 training studies, batch 2 per rank: each epoch every rank takes 4 studies, the two halves disjoint
    assert len(seen[0]) == len(seen[1]) == 8
    for epoch in (0, 1):
        a, b = set(seen[0][4 * epoch:4 * epoch + 4]), set(seen[1][4 * epoch:4 * epoch + 4])
        assert not a & b and len(a | b) == 8
    for epoch in (0, 1):
        w0 = torch.load(run / f"weights_rank0_epoch{epoch}.pt")
        w1 = torch.load(run / f"weights_rank1_epoch{epoch}.pt")
        assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert torch.equal(load_checkpoint(run / "fold0_last.pt")["model"]["segmentation_head.0.weight"],
                       w0["segmentation_head.0.weight"])
    # validation gathered all 8 held-out studies once (ToyPointTask.validate asserts the order), one log line
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert proc.stdout.count("toy_exp fold 0 done") == 1


def test_ddp_trains_a_model_whose_layers_freeze_and_unfreeze_between_epochs(tmp_path):
    """The S2 baseline's schedule under torchrun: the encoder frozen in epoch 0, trained in epoch 1."""
    _, run = _torchrun_fold0(tmp_path, studies=8, data={"trace": True, "freeze_epochs": 1})
    w = {(r, e): torch.load(run / f"weights_rank{r}_epoch{e}.pt") for r in (0, 1) for e in (0, 1)}
    assert all(torch.equal(w[0, e][k], w[1, e][k]) for e in (0, 1) for k in w[0, e])  # ranks stay in step
    encoder = [k for k in w[0, 0] if k.startswith("encoder.") and k.endswith("weight")]
    assert encoder and any(not torch.equal(w[0, 0][k], w[0, 1][k]) for k in encoder)  # it trained in epoch 1


def _bench_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_bench_gpu_smoke_run_on_cpu_and_no_cuda_message(tmp_path, capsys):
    data = write_toy_data(tmp_path / "data", studies=8)
    bench = _bench_main()
    config = _config(tmp_path, batch_size=2)
    out = tmp_path / "gpu.md"
    assert bench([str(config), "--data", str(data), "--device", "cpu", "--limit-steps", "1", "--out", str(out)]) == 0
    table = out.read_text()
    assert "| toy_exp | keypoint_tiny | 2 | none | 2 |" in table and "1 optimizer steps per config" in table
    assert not (tmp_path / "runs").exists()
    if not torch.cuda.is_available():
        capsys.readouterr()
        assert bench([str(config), "--data", str(data)]) == 0
        assert "no CUDA device" in capsys.readouterr().out
