"""Typed experiment configs: unknown keys, types, --set overrides, the task registry and the written config."""
from __future__ import annotations

import pytest
import toy_task  # noqa: F401 - registers the toy_points task
import yaml

from rsna2024.errors import ConfigError
from rsna2024.training.config import (
    ExperimentConfig,
    apply_overrides,
    config_differences,
    config_to_dict,
    load_config,
    save_config,
)
from rsna2024.training.task import Task, create_task, list_tasks, register_task, task_class

BASE = {"task": "toy_points", "epochs": 2, "model": {"name": "keypoint_tiny"}, "optim": {"lr": 1.0e-3}}


def _write(tmp_path, raw: dict, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_load_types_the_config_and_the_tasks_data_section(tmp_path):
    cfg = load_config(_write(tmp_path, {**BASE, "data": {"image_size": 64}}, "my_exp.yaml"))
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == "my_exp"  # default: the file name
    assert isinstance(cfg.data, toy_task.ToyData) and cfg.data.image_size == 64 and cfg.data.sigma == 2.0
    assert cfg.optim.lr == 1e-3 and cfg.schedule.name == "cosine" and cfg.wandb.enabled is False


@pytest.mark.parametrize("raw,where,valid", [
    ({**BASE, "epochz": 3}, "'epochz'", "epochs, batch_size"),
    ({**BASE, "optim": {"lrr": 0.1}}, "optim: unknown key 'lrr'", "name, lr, weight_decay, betas"),
    ({**BASE, "schedule": {"warmup": 1}}, "schedule: unknown key 'warmup'", "warmup_epochs"),
    ({**BASE, "data": {"sigmaa": 3}}, "data: unknown key 'sigmaa'", "image_size, sigma, noise, trace"),
    ({**BASE, "wandb": {"on": True}}, "wandb: unknown key 'on'", "enabled, project"),
])
def test_unknown_keys_fail_naming_the_valid_ones(tmp_path, raw, where, valid):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, raw))
    assert where in str(err.value) and valid in str(err.value) and "exp.yaml" in str(err.value)


@pytest.mark.parametrize("override,message", [
    ("epochs=abc", "epochs: expected an integer, got 'abc'"),
    ("epochs=2.5", "epochs: expected an integer"),
    ("amp=fp8", "amp: 'fp8' is not one of 'auto', 'bf16', 'fp16', 'none'"),
    ("schedule.name=linear", "schedule.name: 'linear' is not one of"),
    ("wandb.enabled=maybe", "wandb.enabled: expected true or false"),
    ("data.image_size=[1, 2]", "data.image_size: expected an integer"),
    ("optim.lr=fast", "optim.lr: expected a number"),
    ("batch_size=0", "batch_size: must be at least 1"),
    ("epochs", "--set expects key=value"),
    ("epochs.x=1", "epochs is a value, not a section"),
    ("task=nope", "unknown task 'nope'; registered tasks: "),
])
def test_overrides_are_type_checked(tmp_path, override, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(_write(tmp_path, BASE), [override])
    assert message in str(err.value)


def test_overrides_apply_yaml_values_at_any_depth(tmp_path):
    cfg = load_config(_write(tmp_path, BASE), ["optim.lr=3e-4", "data.sigma=5", "grad_clip=1", "amp=bf16",
                                              "model.params.encoder=tu-resnet10t", "valid_batch_size=null",
                                              "depends_on=[keypoint_sagt2, keypoint_axial]", "name=other"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.data.sigma == 5.0 and cfg.grad_clip == 1.0 and cfg.amp == "bf16"
    assert cfg.model.params == {"encoder": "tu-resnet10t"} and cfg.valid_batch_size is None
    assert cfg.depends_on == ["keypoint_sagt2", "keypoint_axial"] and cfg.name == "other"
    # the override wins over the file, the file over the defaults
    assert cfg.epochs == 2 and load_config(_write(tmp_path, BASE), ["epochs=9"]).epochs == 9


def test_written_config_loads_back_equal(tmp_path):
    cfg = load_config(_write(tmp_path, BASE), ["data.image_size=64", "schedule.name=step"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(path)
    assert again == cfg and config_to_dict(again) == config_to_dict(cfg)
    assert yaml.safe_load(path.read_text())["data"]["image_size"] == 64


def test_config_differences_ignore_runtime_keys():
    a = config_to_dict(load_config_dict(BASE))
    b = config_to_dict(load_config_dict({**BASE, "device": "cpu", "workers": 0, "optim": {"lr": 0.1}}))
    assert config_differences(a, b) == ["optim.lr: 0.001 != 0.1"]


def load_config_dict(raw):
    from rsna2024.training.config import config_from_dict

    return config_from_dict({"name": "x", **raw})


def test_task_registry_by_name_and_by_import_path():
    assert "toy_points" in list_tasks()
    assert task_class("toy_points") is toy_task.ToyPointTask
    assert task_class("toy_task:ToyPointTask") is toy_task.ToyPointTask
    assert isinstance(create_task(load_config_dict(BASE)), toy_task.ToyPointTask)
    with pytest.raises(ConfigError, match="registered tasks: .*toy_points"):
        task_class("toy_pointz")
    with pytest.raises(ConfigError, match="cannot import"):
        task_class("toy_task:Nothing")
    with pytest.raises(ConfigError, match="already registered"):
        register_task("toy_points")(type("Other", (Task,), {}))


def test_a_task_without_data_config_keeps_a_dict():
    @register_task("plain_dict_task")
    class Plain(Task):
        pass

    cfg = load_config_dict({"task": "plain_dict_task", "data": {"anything": 1}})
    assert cfg.data == {"anything": 1}


def test_apply_overrides_creates_sections():
    raw = apply_overrides({}, ["a.b.c=1", "a.d=[1, 2]"])
    assert raw == {"a": {"b": {"c": 1}, "d": [1, 2]}}
