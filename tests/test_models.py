"""Model registry and the keypoint family: names, tiny variants forward/backward, pretrained weights."""
from __future__ import annotations

import pytest
import torch
from toy_task import one_thread  # noqa: F401 - used by pytestmark

from rsna2024.errors import ConfigError
from rsna2024.models import create_model, list_models, model_params, register_model
from rsna2024.models.pretrained import find_weights_file, load_weights, parse_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["keypoint_tiny", "keypoint_tiny_deeplab"]



def test_registry_lists_the_keypoint_family_and_rejects_unknown_names():
    names = list_models()
    assert {"keypoint", "keypoint_tiny", "keypoint_tiny_deeplab"} <= set(names)
    with pytest.raises(ConfigError) as err:
        create_model("keypoint_tinny")
    assert "unknown model 'keypoint_tinny'" in str(err.value)
    assert all(name in str(err.value) for name in names)


def test_unknown_setting_names_the_valid_settings():
    with pytest.raises(ConfigError, match="no setting 'encoder_name'; valid settings: arch, encoder, in_channels"):
        create_model("keypoint_tiny", encoder_name="resnet18")
    assert model_params("keypoint")["arch"] == "DeepLabV3Plus" and model_params("keypoint")["encoder"] == "resnet34"


def test_smp_errors_become_config_errors_listing_choices():
    with pytest.raises(ConfigError, match="Wrong architecture .*deeplabv3plus"):
        create_model("keypoint", arch="DeepLabV9", encoder="resnet18")
    with pytest.raises(ConfigError, match="Wrong encoder name .*resnet34"):
        create_model("keypoint", encoder="resnet35")


def test_register_model_refuses_a_second_factory_under_a_taken_name():
    with pytest.raises(ConfigError, match="already registered"):
        register_model("keypoint_tiny")(lambda: None)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("size", [64, 128])
def test_tiny_models_forward_and_backward(name, size):
    torch.manual_seed(0)
    model = create_model(name, in_channels=3, classes=2)
    x = torch.randn(2, 3, size, size)
    y = model(x)
    assert y.shape == (2, 2, size, size)
    ((y - 1) ** 2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def _encoder_state(model):
    return {k: v.clone() for k, v in model.encoder.state_dict().items()}


def test_pretrained_from_a_local_file_loads_those_weights(tmp_path):
    torch.manual_seed(1)
    source = create_model("keypoint_tiny", in_channels=5, classes=3)
    torch.save(source.encoder.state_dict(), tmp_path / "enc.pth")
    torch.manual_seed(2)
    fresh = create_model("keypoint_tiny", in_channels=5, classes=3)
    assert not torch.equal(fresh.encoder.state_dict()["model.conv_stem.weight"],
                           source.encoder.state_dict()["model.conv_stem.weight"])
    loaded = create_model("keypoint_tiny", in_channels=5, classes=3, pretrained=str(tmp_path / "enc.pth"))
    want = _encoder_state(source)
    got = loaded.encoder.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_pretrained_from_a_folder_with_timm_keys_and_3_channels_adapts_the_first_conv(tmp_path):
    """A timm-style ImageNet file (no ``model.`` prefix, a classifier head, 3 input channels) in a folder."""
    from safetensors.torch import save_file

    torch.manual_seed(3)
    source = create_model("keypoint_tiny", in_channels=3, classes=1)
    timm_keys = {k.removeprefix("model."): v.contiguous() for k, v in source.encoder.state_dict().items()}
    timm_keys["classifier.weight"] = torch.zeros(10, 1024)
    (tmp_path / "weights").mkdir()
    save_file(timm_keys, str(tmp_path / "weights" / "mobilenetv3_small_050.safetensors"))
    model = create_model("keypoint_tiny", in_channels=5, classes=1, pretrained=str(tmp_path / "weights"))
    got = model.encoder.state_dict()
    w3 = timm_keys["conv_stem.weight"]
    expected = torch.cat([w3, w3[:, :2]], 1) * (3 / 5)  # channels repeated, scaled by 3 / in_channels
    assert torch.equal(got["model.conv_stem.weight"], expected)
    assert torch.equal(got["model.blocks.0.0.conv_dw.weight"], timm_keys["blocks.0.0.conv_dw.weight"])


def test_pretrained_file_of_another_model_fails_naming_missing_keys(tmp_path):
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"does not fit the model: \d+ of \d+ tensors missing .*conv_stem"):
        create_model("keypoint_tiny", pretrained=str(tmp_path / "other.pt"))
    with pytest.raises(ConfigError, match="neither 'none', 'imagenet' nor an existing file"):
        create_model("keypoint_tiny", pretrained=str(tmp_path / "absent.pth"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no weights file in folder .*mobilenetv3_small_050.safetensors"):
        create_model("keypoint_tiny", pretrained=str(tmp_path / "empty"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read weights file"):
        create_model("keypoint_tiny", pretrained=str(tmp_path / "junk.pth"))


def test_load_weights_reports_shape_mismatch():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(4, 2)
    with pytest.raises(ConfigError, match=r"weight has shape \(2, 4\), the model needs \(2, 3\)"):
        load_weights(a, b.state_dict())


def test_parse_pretrained_and_hub_layout_lookup(tmp_path):
    assert parse_pretrained("none") is None and parse_pretrained(None) is None and parse_pretrained(False) is None
    assert parse_pretrained("imagenet") == "imagenet" and parse_pretrained(True) == "imagenet"
    hub = tmp_path / "resnet34" / "model.safetensors"
    hub.parent.mkdir()
    hub.write_bytes(b"")
    assert find_weights_file(tmp_path, ["resnet34"]) == hub


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """No network and an empty Hugging Face cache, as on Kaggle's scoring run (HF_HUB_OFFLINE=1)."""
    import huggingface_hub.constants as hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))


@pytest.mark.parametrize("name,encoder,hub_id", [
    ("keypoint_tiny", "tu-mobilenetv3_small_050", "timm/mobilenetv3_small_050.lamb_in1k"),
    ("keypoint", "resnet18", "smp-hub/resnet18.imagenet"),
])
def test_imagenet_without_network_says_which_file_to_provide(offline_hub, name, encoder, hub_id):
    with pytest.raises(ConfigError) as err:
        create_model(name, encoder=encoder, arch="Unet", decoder_channels=[16, 8, 8, 8, 8], pretrained="imagenet")
    text = str(err.value)
    assert hub_id in text and "model.safetensors" in text and "model.pretrained" in text
    assert "--set model.pretrained=" in text and "Kaggle" in text and "3 input channels" in text
