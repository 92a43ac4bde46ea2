"""The 2.5D ROI classifier family: slice windows, every tiny variant forward/backward, pretrained weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_task import one_thread  # noqa: F401 - used by pytestmark

from rsna2024.classifiers.models import class_probabilities, slice_windows
from rsna2024.errors import ConfigError
from rsna2024.models import create_model, list_models

TINY = ["roi25d_tiny", "roi25d_tiny_mobilenet", "roi25d_tiny_cnn"]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_slice_windows_are_centred_and_repeat_the_end_slices():
    x = torch.arange(5.0).reshape(1, 5, 1, 1).expand(1, 5, 2, 2)
    w = slice_windows(x, 3)
    assert w.shape == (1, 5, 3, 2, 2)
    assert w[0, :, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]]
    assert slice_windows(x, 1)[0, :, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]
    assert slice_windows(x, 2)[0, :, :, 0, 0].tolist() == [[0, 1], [1, 2], [2, 3], [3, 4], [4, 4]]
    assert slice_windows(x, 3, stride=2)[0, :, :, 0, 0].tolist() == [[0, 0, 1], [1, 2, 3], [3, 4, 4]]
    assert slice_windows(x, 5, stride=5)[0, :, :, 0, 0].tolist() == [[0, 1, 2, 3, 4]]  # all slices as channels
    assert slice_windows(x[:, :3], 3, stride=3)[0, :, :, 0, 0].tolist() == [[0, 1, 2]]


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("regions,outputs", [(1, 3), (5, 15)])
def test_tiny_models_forward_and_backward(name, regions, outputs):
    assert name in list_models()
    torch.manual_seed(0)
    model = create_model(name, regions=regions, num_outputs=outputs, image_size=32)
    x = torch.randn(2, regions, 5, 32, 32)
    out = model(x)
    assert out.shape == (2, outputs)
    target = torch.tensor([[0, 2, 1, 0, -100][: outputs // 3], [1, 0, -100, 2, 0][: outputs // 3]])
    assert torch.equal(out, torch.zeros_like(out))  # the head starts at zero: softmax(level_logits) = the prior
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):  # the zero head gets gradients first, the backbone from the second step on
        opt.zero_grad()
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, 3), target.reshape(-1), ignore_index=-100)
        loss.backward()
        opt.step()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads[:3])  # the backbone's first layers learn too
    model.eval()
    model.level_logits[3] = torch.arange(outputs, dtype=torch.float32)
    shifted = model(x, torch.tensor([3, 0])) - model(x)
    assert torch.allclose(shifted[0], model.level_logits[3]) and torch.allclose(shifted[1], torch.zeros(outputs))
    probs = class_probabilities(out.detach())
    assert probs.shape == (2, outputs // 3, 3) and torch.allclose(probs.sum(-1), torch.ones(2, outputs // 3))
    with pytest.raises(ValueError, match="regions"):
        model(torch.randn(2, regions + 1, 5, 32, 32))
    one_window = create_model(name, regions=regions, num_outputs=outputs, in_chans=5, window_stride=5)
    assert one_window(x).shape == (2, outputs)


def test_swin_backbone_takes_the_image_size():
    model = create_model("roi25d", backbone="swin_tiny_patch4_window7_224", hidden=8, image_size=64,
                         backbone_params={"depths": [1, 1, 1, 1], "embed_dim": 24, "num_heads": [1, 1, 1, 1],
                                          "window_size": 2})
    assert model(torch.randn(1, 1, 3, 64, 64)).shape == (1, 3)


def test_unknown_backbone_and_bad_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="not_a_backbone"):
        create_model("roi25d", backbone="not_a_backbone")
    with pytest.raises(ConfigError, match="in_chans"):
        create_model("roi25d_tiny", in_chans=0)


def test_pretrained_from_a_local_file_loads_those_weights(tmp_path):
    import timm

    source = timm.create_model("resnet10t", num_classes=10, in_chans=3)  # a head to ignore, 3 channels to adapt
    torch.save(source.state_dict(), tmp_path / "resnet10t.pth")
    model = create_model("roi25d_tiny", in_chans=5, pretrained=str(tmp_path))
    conv = model.backbone.conv1[0].weight
    expected = source.conv1[0].weight[:, [0, 1, 2, 0, 1]] * 3 / 5
    assert torch.allclose(conv, expected)
    last = [k for k in source.state_dict() if k.startswith("layer4") and k.endswith("weight")][-1]
    assert torch.equal(model.backbone.state_dict()[last], source.state_dict()[last])


def test_imagenet_without_network_says_which_file_to_provide(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    with pytest.raises(ConfigError) as err:
        create_model("roi25d_tiny", pretrained="imagenet")
    text = str(err.value)
    assert "timm/resnet10t" in text and "model.pretrained" in text and "model.safetensors" in text


def test_plain_cnn_backbone_shapes_weights_and_errors(tmp_path):
    from rsna2024.models.backbones import PlainCnn, build_backbone

    net = build_backbone("plain_cnn", 5, 48, "none", {"width": 8, "stages": 3})
    assert isinstance(net, PlainCnn) and net.num_features == 32
    assert net(torch.randn(2, 5, 48, 48)).shape == (2, 32)
    torch.save(net.state_dict(), tmp_path / "plain.pth")
    again = build_backbone("plain_cnn", 5, 48, str(tmp_path / "plain.pth"), {"width": 8, "stages": 3})
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        build_backbone("plain_cnn", 3, 48, "imagenet")
    with pytest.raises(ConfigError, match="plain_cnn"):
        build_backbone("plain_cnn", 3, 48, "none", {"depth": 3})
    with pytest.raises(ConfigError, match="plain_cnn"):  # the error lists the kit's backbones
        build_backbone("plain_cnnn", 3, 48, "none")


def test_tiny_cnn_learns_the_size_of_a_narrowed_structure():
    """The demo's classifier tells a wide bright canal from a narrowed one within a few dozen steps."""
    torch.manual_seed(0)
    n, size = 64, 32
    label = torch.arange(n) % 2
    depth = torch.where(label == 1, 3, 8)  # rows of "CSF" at the centre: narrowed (1) or not (0)
    rows = torch.arange(size)[None, :, None]
    image = ((rows >= size // 2 - depth[:, None, None] // 2) & (rows < size // 2 + (depth[:, None, None] + 1) // 2))
    x = image.float()[:, None, None].expand(n, 1, 3, size, size) + 0.3 * torch.randn(n, 1, 3, size, size)
    model = create_model("roi25d_tiny_cnn", in_chans=3, window_stride=3, hidden=8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), label)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == label).float().mean() > 0.95


def test_head_groups_make_each_output_group_read_its_own_regions_only():
    torch.manual_seed(0)
    groups = [[0, 5], [1], [2], [3], [4]]  # the global model with spinal_axial: spinal also reads region 5
    model = create_model("roi25d_tiny_cnn", regions=6, num_outputs=15, head_groups=groups).eval()
    torch.nn.init.normal_(model.head[1].weight)  # a trained-looking head (it starts at zero)
    x = torch.rand(2, 6, 3, 32, 32)
    base = model(x).reshape(2, 5, 3)
    for region, readers in [(0, {0}), (2, {2}), (5, {0})]:
        moved = x.clone()
        moved[:, region] = torch.rand_like(moved[:, region])
        changed = (model(moved).reshape(2, 5, 3) - base).abs().amax(dim=(0, 2)) > 1e-6
        assert set(np.flatnonzero(changed.numpy())) == readers, region
    dense = create_model("roi25d_tiny_cnn", regions=6, num_outputs=15).eval()
    torch.nn.init.normal_(dense.head[1].weight)
    moved = x.clone()
    moved[:, 2] = torch.rand_like(moved[:, 2])
    assert ((dense(moved) - dense(x)).reshape(2, 5, 3).abs().amax(dim=(0, 2)) > 1e-6).all()  # dense: all change
    assert "head_mask" not in model.state_dict()  # derived from the config, so older checkpoints still load
    for bad in ([[0], [1]], [[0], [1], [2], [3], [6]], [[0], [], [2], [3], [4]]):
        with pytest.raises(ConfigError, match="head_groups"):
            create_model("roi25d_tiny_cnn", regions=6, num_outputs=15, head_groups=bad)


def test_region_backbones_send_each_region_through_its_own_backbone():
    torch.manual_seed(0)
    model = create_model("roi25d_tiny_cnn", regions=5, num_outputs=15, region_backbones=[0, 1, 1, 2, 2]).eval()
    assert len(model.extra_backbones) == 2
    image = torch.rand(2, 1, 3, 32, 32)
    x = image.expand(2, 5, 3, 32, 32).contiguous()  # the same image in every region
    with torch.no_grad():
        windows = x.reshape(2, 5, 1, 3, 32, 32)
        feats = model._features(windows)
        # regions of one backbone see the same features, regions of different backbones do not
        assert torch.allclose(feats[:, 1], feats[:, 2]) and torch.allclose(feats[:, 3], feats[:, 4])
        assert not torch.allclose(feats[:, 0], feats[:, 1]) and not torch.allclose(feats[:, 1], feats[:, 3])
        assert torch.allclose(feats[:, 3], model.extra_backbones[1](image[:, 0]).unsqueeze(1))
        assert model(x).shape == (2, 15)
    shared = create_model("roi25d_tiny_cnn", regions=5, num_outputs=15)
    assert len(shared.extra_backbones) == 0 and shared.region_backbones is None
    for bad in ([0, 1, 1, 2], [0, 2, 2, 2, 2]):  # a region without an index; backbone 1 unused
        with pytest.raises(ConfigError, match="region_backbones"):
            create_model("roi25d_tiny_cnn", regions=5, num_outputs=15, region_backbones=bad)
