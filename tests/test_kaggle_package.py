"""rsna2024 kaggle package / push / submit / status: the folders, their metadata as the kaggle client checks it,
the kit's wheel, the packaged checkpoints, and one-line failures without credentials, client or network."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
import torch
from conftest import dead_pid, stale_temporary
from kaggle_helpers import ROOT, offline, placeholder_credentials, python_cmd, train_toy_run
from packaging.requirements import Requirement

from rsna2024 import __version__
from rsna2024.cli import main
from rsna2024.errors import ConfigError
from rsna2024.kaggle import COMPETITION, DEFAULT_EXCLUDE
from rsna2024.kaggle import api as kapi
from rsna2024.kaggle.metadata import check_name, slugify
from rsna2024.kaggle.notebook import load_template, render_notebook
from rsna2024.kaggle.package import MANIFEST, build_package
from rsna2024.kaggle.wheels import dependency_pins
from rsna2024.training.checkpoint import load_checkpoint, load_fold_model

NAME = "RSNA toy package"
SLUG = "rsna-toy-package"
KERNEL_FILES = ["kernel-metadata.json", f"{SLUG}.ipynb"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    return train_toy_run(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def package(toy_run, tmp_path_factory):
    """``rsna2024 kaggle package`` of the toy run (kit wheel only), through the command line."""
    out = tmp_path_factory.mktemp("package") / "build"
    out.mkdir()
    killed = stale_temporary(out, "package", dead_pid())  # the work folder of a packaging killed earlier
    killed.unlink()
    (killed / "dataset").mkdir(parents=True)
    os.utime(killed, (killed.stat().st_atime - 3600, killed.stat().st_mtime - 3600))
    before = {p: p.exists() for p in (ROOT / "build", ROOT / "rsna2024.egg-info")}
    code = main(["kaggle", "package", "--runs", str(toy_run), "--name", NAME, "--out", str(out), "--user", "tester",
                 "--no-deps-wheels"])
    assert code == 0
    assert {p: p.exists() for p in before} == before  # the wheel is built from a copy: the checkout stays clean
    assert sorted(p.name for p in out.iterdir()) == ["dataset", "kernel"]  # neither this run's nor the killed one's
    return out


def test_dataset_folder_holds_runs_kit_wheel_and_metadata(package, toy_run):
    dataset = package / "dataset"
    assert json.loads((dataset / "dataset-metadata.json").read_text()) == {
        "title": NAME, "id": f"tester/{SLUG}", "licenses": [{"name": "CC0-1.0"}]}
    assert sorted(p.name for p in (dataset / "runs" / "toy").iterdir()) == ["config.yaml", "fold0_best.pt"]
    assert (dataset / "runs/toy/config.yaml").read_bytes() == (toy_run / "config.yaml").read_bytes()
    wheel = f"rsna2024-{__version__}-py3-none-any.whl"
    assert [p.name for p in (dataset / "wheels").iterdir()] == [wheel]
    manifest = json.loads((dataset / MANIFEST).read_text())
    assert manifest["runs"] == {"toy": [0]} and manifest["kit_wheel"] == wheel
    assert manifest["dependency_wheels"] == [] and manifest["kit_version"] == __version__


def test_packaged_checkpoint_loads_and_predicts_like_the_original(package, toy_run):
    packaged, cfg = load_fold_model(package / "dataset/runs/toy", 0)
    original, original_cfg = load_fold_model(toy_run, 0)
    assert cfg == original_cfg and cfg.task == "toy_points"
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(packaged(x), original(x))
    assert load_checkpoint(package / "dataset/runs/toy/fold0_best.pt")["epoch"] == 0


def test_kit_wheel_installs_offline_and_holds_the_checkout_modules(package, tmp_path):
    (wheel,) = (package / "dataset/wheels").glob("*.whl")
    target = tmp_path / "site"
    pip = subprocess.run(offline(python_cmd("-m", "pip", "install", "--no-index", "--no-deps", "--target", target,
                                            "--disable-pip-version-check", wheel)),
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-2000:]
    installed = {p.relative_to(target).as_posix() for p in (target / "rsna2024").rglob("*.py")}
    checkout = {p.relative_to(ROOT).as_posix() for p in (ROOT / "rsna2024").rglob("*.py")}
    assert installed == checkout
    with zipfile.ZipFile(wheel) as zf:
        requires = [line for n in zf.namelist() if n.endswith("METADATA")
                    for line in zf.read(n).decode().splitlines() if line.startswith("Requires-Dist: torch")]
    assert requires  # the kit declares torch: pip keeps Kaggle's own
    run = subprocess.run([sys.executable, "-c", "import rsna2024.kaggle.package as p; print(p.__file__)"],
                         env={"PYTHONPATH": str(target), "PATH": ""}, capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.startswith(str(target)), run.stderr


def test_kernel_folder_metadata_and_notebook(package):
    kernel = package / "kernel"
    assert sorted(p.name for p in kernel.iterdir()) == sorted(KERNEL_FILES)
    assert json.loads((kernel / "kernel-metadata.json").read_text()) == {
        "id": f"tester/{SLUG}", "title": NAME, "code_file": f"{SLUG}.ipynb", "language": "python",
        "kernel_type": "notebook", "is_private": "true", "enable_gpu": "true", "enable_internet": "false",
        "dataset_sources": [f"tester/{SLUG}"], "competition_sources": [COMPETITION], "kernel_sources": [],
        "model_sources": []}
    text = (kernel / f"{SLUG}.ipynb").read_text()
    nbformat.validate(nbformat.reads(text, as_version=4))
    assert "{{" not in text
    nb = json.loads(text)
    sources = ["".join(c["source"]) for c in nb["cells"]]
    assert f'"/kaggle/input/{SLUG}"' in sources[1] and f'"/kaggle/input/{COMPETITION}"' in sources[1]
    assert '"/kaggle/working"' in sources[1]
    assert "--no-index" in sources[2] and f"rsna2024=={__version__}" in sources[2]
    assert nb["cells"][-1]["metadata"]["tags"] == ["predict"]
    assert '"rsna2024.cli", "predict", "--data", DATA, "--split", "test", "--runs", *RUNS' in sources[-1]
    assert all(c.get("outputs", []) == [] for c in nb["cells"])


def test_existing_package_is_kept_unless_overwrite(package, toy_run, capsys):
    stamp = (package / "kernel/kernel-metadata.json").stat().st_mtime_ns
    args = ["kaggle", "package", "--runs", str(toy_run), "--name", NAME, "--out", str(package), "--user", "tester",
            "--no-deps-wheels"]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (package / "kernel/kernel-metadata.json").stat().st_mtime_ns == stamp


def test_kaggle_client_accepts_the_folders_and_fails_only_at_the_network(package, tmp_path):
    """The kaggle client's own checks (title, slug, code file, language, sources, licence) pass: with placeholder
    credentials and no network, each upload fails at the connection."""
    env = placeholder_credentials(tmp_path / "home")
    for args in (["kernels", "push", "-p", package / "kernel"], ["datasets", "create", "-p", package / "dataset"]):
        out = subprocess.run(offline(python_cmd("-m", "kaggle", *args)), env=env, capture_output=True, text=True,
                             timeout=120)
        text = out.stdout + out.stderr
        assert out.returncode != 0, text
        assert any(s in text for s in ("Failed to resolve", "Max retries exceeded", "ConnectionError")), text
        for refusal in ("metadata", "invalid", "must", "not found", "does not resolve", "detected"):
            assert refusal not in text.lower(), text


def _cli(args, env, tmp_path):
    return subprocess.run(offline(python_cmd("-m", "rsna2024.cli", *args)), env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)


def test_push_and_status_fail_in_one_line_at_the_network(package, tmp_path):
    env = placeholder_credentials(tmp_path / "home")
    for args, step in ((["push", "--kernel", package / "kernel"], "kaggle kernels push"),
                       (["push", "--dataset", package / "dataset", "--kernel", package / "kernel"],
                        "kaggle datasets status tester/"),
                       (["status", "--kernel", f"tester/{SLUG}"], "kaggle kernels status"),
                       (["submit", "--kernel", f"tester/{SLUG}", "--version", "1", "-m", "x"],
                        "kaggle competitions submit")):
        out = _cli(["kaggle", *args], env, tmp_path)
        assert out.returncode == 2, out.stderr
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("rsna2024 kaggle: error: " + step) and "cannot reach Kaggle" in last, out.stderr


def test_without_credentials_kaggle_is_not_imported_and_the_message_says_how(tmp_path, monkeypatch, capsys):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    imported = "kaggle" in sys.modules
    assert main(["kaggle", "status", "--kernel", "someone/some-kernel"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rsna2024 kaggle: error: no Kaggle credentials") and "kaggle.json" in err
    assert "KAGGLE_USERNAME" in err and len(err.splitlines()) == 1
    assert ("kaggle" in sys.modules) == imported


def test_without_the_client_the_message_says_how_to_install(tmp_path):
    env = placeholder_credentials(tmp_path / "home")
    code = ("import sys; sys.modules['kaggle'] = None; from rsna2024.cli import main; "
            "sys.exit(main(['kaggle', 'status', '--kernel', 'someone/some-kernel']))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == ('rsna2024 kaggle: error: the kaggle client is not installed: '
                                  'pip install -e ".[kaggle]"')


def test_credentials_are_found_where_the_client_reads_them(tmp_path, monkeypatch):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    assert kapi.credentials_source() is None and kapi.configured_username() is None
    (tmp_path / "kaggle.json").write_text(json.dumps({"username": "alice", "key": "k"}))
    assert kapi.credentials_source() == str(tmp_path / "kaggle.json") and kapi.configured_username() == "alice"
    monkeypatch.setenv("KAGGLE_USERNAME", "bob")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    assert kapi.credentials_source() == "KAGGLE_USERNAME/KAGGLE_KEY" and kapi.configured_username() == "bob"


def test_push_refuses_a_kernel_that_does_not_attach_the_dataset(package, tmp_path):
    kernel = tmp_path / "kernel"
    kernel.mkdir()
    meta = json.loads((package / "kernel/kernel-metadata.json").read_text())
    (kernel / "kernel-metadata.json").write_text(json.dumps({**meta, "dataset_sources": ["tester/other-data"]}))
    with pytest.raises(kapi.KaggleError, match="dataset_sources do not hold the dataset tester/rsna-toy-package"):
        kapi.push(package / "dataset", kernel)


@pytest.mark.parametrize("title", ["RSNA 2024 Lumbar — v2.1 (ensemble)", "Ünïcode spine_ensemble", "  a  b__c..d  "])
def test_slug_is_the_kaggle_clients(title):
    from slugify import slugify as client_slugify  # python-slugify, the kaggle client's dependency

    assert slugify(title) == client_slugify(title)


def test_names_kaggle_refuses_are_refused_before_building(toy_run, tmp_path):
    assert check_name("Spine v1") == "spine-v1"
    with pytest.raises(ConfigError, match="6 to 50"):
        check_name("ab c")
    with pytest.raises(ConfigError, match="6 to 50"):
        check_name("x" * 51)
    with pytest.raises(ConfigError, match="not a run folder"):
        build_package([tmp_path], NAME, out=tmp_path / "out", user="tester", deps_wheels=False)
    assert not (tmp_path / "out").exists()


def test_dependency_closure_leaves_out_torch_and_follows_markers():
    pins, excluded = dependency_pins([Requirement("timm>=0.9")])
    names = {p.split("==")[0] for p in pins}
    assert {"timm", "huggingface-hub", "safetensors", "pyyaml"} <= names
    assert not {"torch", "torchvision", "triton"} & names and not any(n.startswith("nvidia") for n in names)
    assert excluded == ["torch", "torchvision"] and all("==" in p for p in pins)
    import importlib.metadata

    assert f"timm=={importlib.metadata.version('timm')}" in pins
    everything, none_excluded = dependency_pins([Requirement("timm>=0.9")], exclude=[])
    assert f"torch=={torch.__version__.split('+')[0]}" in everything and none_excluded == []
    old = Requirement('tomli>=1.1; python_version < "3.11"')
    assert dependency_pins([old], python_version="3.11")[0] == []
    assert dependency_pins([old], python_version="3.10")[0] == ["tomli>=1.1"]
    assert DEFAULT_EXCLUDE == ("torch", "torchvision", "nvidia-*", "triton")


def _template(tmp_path, cells) -> Path:
    path = tmp_path / "t.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_template_needs_a_last_predict_cell_and_known_fields(tmp_path):
    code = {"cell_type": "code", "metadata": {}, "source": "x = 1", "outputs": [], "execution_count": 3}
    tagged = {**code, "metadata": {"tags": ["predict"]}, "source": "print('{{dataset_slug}}')"}
    with pytest.raises(ConfigError, match="tagged 'predict'"):
        load_template(_template(tmp_path, [tagged, code]))
    with pytest.raises(ConfigError, match=r"unknown template fields \['slug'\]"):
        load_template(_template(tmp_path, [{**code, "source": "{{slug}}"}, tagged]))
    values = {"title": "t", "kit_version": "1", "dataset_id": "u/s", "dataset_slug": "my-slug", "competition": "c"}
    nb = render_notebook(_template(tmp_path, [code, tagged]), values)
    assert "".join(nb["cells"][1]["source"]) == "print('my-slug')" and nb["cells"][0]["execution_count"] is None
