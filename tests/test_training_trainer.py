"""The fold trainer on a small real task (tests/toy_task.py): run folder, skip, bitwise resume, schedules."""
from __future__ import annotations

import json
import math
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import dead_pid, stale_temporary
from toy_task import one_thread, toy_config, write_toy_data  # noqa: F401 - one_thread: pytestmark

from rsna2024.errors import ConfigError
from rsna2024.training.checkpoint import load_checkpoint, load_fold_model
from rsna2024.training.config import ScheduleConfig, config_to_dict
from rsna2024.training.optim import LRSchedule
from rsna2024.training.trainer import TrainingError, resolve_amp, resolve_device, train_fold

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return write_toy_data(tmp_path_factory.mktemp("toy") / "data")


class Interrupt(Exception):
    pass


def _stop_after(stop_epoch):
    def cb(epoch, record):
        if epoch == stop_epoch:
            raise Interrupt(f"killed after epoch {epoch}")
    return cb


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fold_writes_the_run_folder_and_a_finished_fold_is_skipped(toy_data, tmp_path):
    cfg = toy_config(epochs=2)
    result = train_fold(cfg, toy_data, 1, out=tmp_path)
    run = tmp_path / "toy"
    for name in ["config.yaml", "log.txt", "metrics.jsonl", "fold1_curves.png", "fold1_last.pt", "fold1_best.pt",
                 "fold1_done.json", "oof_fold1.csv"]:
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "config.yaml").read_text()) == config_to_dict(cfg)
    assert (run / "fold1_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    for r in records:
        assert {"fold", "epoch", "train_loss", "lr", "seconds", "valid_loss", "point_error"} <= r.keys()
        assert r["images"] == 8 and r["fold"] == 1
    assert records[1]["train_loss"] < records[0]["train_loss"]  # the optimizer steps
    best = min(records, key=lambda r: r["point_error"])
    assert result.best_epoch == best["epoch"] and result.best_value == pytest.approx(best["point_error"])
    assert load_checkpoint(run / "fold1_best.pt")["epoch"] == best["epoch"]
    assert "epoch 2/2" in (run / "log.txt").read_text()
    oof = pd.read_csv(run / "oof_fold1.csv")
    folds = pd.read_csv(toy_data / "folds.csv")
    assert sorted(oof["study_id"]) == sorted(folds.loc[folds["fold"] == 1, "study_id"])

    # inference: the best model rebuilt from its checkpoint alone predicts what the OOF file holds
    model, loaded_cfg = load_fold_model(run, 1)
    assert loaded_cfg == cfg and not model.training
    from toy_task import ToyDataset, decode

    sample = ToyDataset([int(oof["study_id"][0])], cfg.data, train=False)[0]
    with torch.no_grad():
        point = decode(model(sample["image"][None]))[0]
    assert point.tolist() == oof.loc[0, ["x", "y"]].tolist()

    stamp = (run / "fold1_best.pt").stat().st_mtime_ns
    again = train_fold(cfg, toy_data, 1, out=tmp_path)
    assert again.skipped and again.best_epoch == result.best_epoch and again.best_value == result.best_value
    assert (run / "fold1_best.pt").stat().st_mtime_ns == stamp
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("workers", [0, 1])
def test_interrupted_fold_resumes_to_bitwise_equal_weights(toy_data, tmp_path, workers):
    cfg = toy_config(workers=workers)
    straight = train_fold(cfg, toy_data, 0, out=tmp_path / "a")
    with pytest.raises(Interrupt):
        train_fold(cfg, toy_data, 0, out=tmp_path / "b", callbacks=[_stop_after(0)])
    assert not (tmp_path / "b/toy/fold0_done.json").exists()
    assert load_checkpoint(tmp_path / "b/toy/fold0_last.pt")["epoch"] == 0
    # what a SIGKILL amid epoch 1's files leaves: its metrics line cut short, a half-written checkpoint temporary
    with open(tmp_path / "b/toy/metrics.jsonl", "a") as fh:
        fh.write('{"fold": 0, "epoch": 1, "train_lo')
    half = stale_temporary(tmp_path / "b/toy", "fold0_last.pt", dead_pid())
    resumed = train_fold(cfg, toy_data, 0, out=tmp_path / "b")
    assert "resuming" in (tmp_path / "b/toy/log.txt").read_text() and not half.exists()
    for name in ["fold0_last.pt", "fold0_best.pt"]:
        a, b = load_checkpoint(tmp_path / "a/toy" / name), load_checkpoint(tmp_path / "b/toy" / name)
        assert _states_equal(a["model"], b["model"]), name
    a, b = load_checkpoint(tmp_path / "a/toy/fold0_last.pt"), load_checkpoint(tmp_path / "b/toy/fold0_last.pt")
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
    lines_a = (tmp_path / "a/toy/metrics.jsonl").read_text().splitlines()
    lines_b = (tmp_path / "b/toy/metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}
             for line in lines_a + lines_b]
    assert strip[:3] == strip[3:]  # one line per epoch, identical losses and metrics
    assert resumed.best_value == straight.best_value


def test_changed_config_in_the_same_run_folder_is_refused(toy_data, tmp_path):
    train_fold(toy_config(epochs=1), toy_data, 0, out=tmp_path)
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        train_fold(toy_config(epochs=1, **{"optim.lr": 0.1}), toy_data, 1, out=tmp_path)
    # runtime keys (device, workers, wandb) may differ between folds
    train_fold(toy_config(epochs=1, workers=1), toy_data, 0, out=tmp_path)
    # a config.yaml written before the kit grew a key (here: without schedule.patience) still matches
    path = tmp_path / "toy/config.yaml"
    old = yaml.safe_load(path.read_text())
    del old["schedule"]["patience"], old["grad_accum"]
    path.write_text(yaml.safe_dump(old))
    assert train_fold(toy_config(epochs=1), toy_data, 0, out=tmp_path).skipped


def test_gradient_accumulation_steps_the_schedule_per_optimizer_step(toy_data, tmp_path):
    cfg = toy_config(epochs=2, batch_size=2, grad_accum=3, grad_clip=1.0)
    train_fold(cfg, toy_data, 0, out=tmp_path)
    ckpt = load_checkpoint(tmp_path / "toy/fold0_last.pt")
    assert ckpt["schedule"]["step_count"] == 2 * math.ceil(4 / 3)  # 8 samples / batch 2 = 4 micro-batches


def test_missing_folds_file_and_wrong_fold_are_clear_errors(toy_data, tmp_path):
    with pytest.raises(ConfigError, match="rsna2024 folds"):
        train_fold(toy_config(), tmp_path / "nodata", 0, out=tmp_path)
    with pytest.raises(ConfigError, match="fold 5 does not exist"):
        train_fold(toy_config(), toy_data, 5, out=tmp_path)
    with pytest.raises(ConfigError, match="2 folds but the config says folds: 5"):
        train_fold(toy_config(folds=5), toy_data, 0, out=tmp_path)


def test_device_and_amp_resolve_to_cpu_float32_here():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_amp("auto", torch.device("cpu")) is None
    assert resolve_amp("bf16", torch.device("cpu")) is None
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            resolve_device("cuda")


def _factors(cfg: ScheduleConfig, steps_per_epoch=10, epochs=4, metrics=None):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = LRSchedule(opt, cfg, steps_per_epoch, epochs)
    out = []
    for step in range(steps_per_epoch * epochs):
        out.append(opt.param_groups[0]["lr"])
        sched.step()
        if metrics is not None and (step + 1) % steps_per_epoch == 0:
            sched.epoch_end(metrics[(step + 1) // steps_per_epoch - 1])
    return np.array(out)


def test_cosine_schedule_warms_up_linearly_then_decays_to_the_floor():
    lr = _factors(ScheduleConfig(name="cosine", warmup_epochs=1, min_lr_ratio=0.1))
    assert lr[:10] == pytest.approx(np.arange(1, 11) / 10)
    assert lr[10] == pytest.approx(1.0)
    assert np.all(np.diff(lr[10:]) <= 1e-12)
    assert lr[25] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 15 / 30)))
    assert lr[-1] > 0.1 and lr[-1] == pytest.approx(0.1, abs=0.01)


def test_step_and_plateau_schedules():
    lr = _factors(ScheduleConfig(name="step", step_size=2, gamma=0.1))
    assert lr[:20] == pytest.approx([1.0] * 20) and lr[20:] == pytest.approx([0.1] * 20)
    lr = _factors(ScheduleConfig(name="plateau", patience=1, gamma=0.5), steps_per_epoch=1, epochs=6,
                  metrics=[1.0, 0.9, 0.95, 0.95, 0.95, 0.8])
    # no improvement in epochs 3 and 4 (more than patience 1) -> halved from epoch 5 on
    assert lr.tolist() == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5]


def test_wandb_asked_for_but_not_installed_is_a_clear_error(toy_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError, as when not installed
    with pytest.raises(ConfigError, match=r"wandb.enabled is true but wandb is not installed: `pip install wandb`"):
        train_fold(toy_config(**{"wandb.enabled": True}), toy_data, 0, out=tmp_path)
    assert not (tmp_path / "toy/fold0_last.pt").exists()


def test_wandb_offline_records_the_fold(toy_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train_fold(toy_config(epochs=1, **{"wandb.enabled": True}), toy_data, 0, out=tmp_path)
    runs = list((tmp_path / "toy" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_a_non_finite_loss_stops_training_with_a_clear_error(toy_data, tmp_path):
    with pytest.raises(TrainingError, match="fold 0 epoch 0: the loss became nan by batch 1 .*lower optim.lr"):
        train_fold(toy_config(epochs=1, **{"data.noise": ".nan"}), toy_data, 0, out=tmp_path)
    assert not (tmp_path / "toy/fold0_last.pt").exists()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_path_runs_with_cpu_autocast(toy_data, tmp_path, monkeypatch, dtype):
    """On CUDA, amp uses autocast plus (fp16) a GradScaler; CPU autocast runs the same code here."""
    import rsna2024.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "resolve_amp", lambda spec, device: dtype)
    result = train_fold(toy_config(epochs=1, grad_clip=1.0, grad_accum=2), toy_data, 0, out=tmp_path)
    ckpt = load_checkpoint(tmp_path / "toy/fold0_last.pt")
    assert math.isfinite(result.best_value)
    assert bool(ckpt["scaler"]) == (dtype == torch.float16)  # the scaler's state is saved when it is used
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())
