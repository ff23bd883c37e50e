"""Tests of bkd_core.models: the official PreResNet18, the whitened (airbench-class) CNN, the small CNN, the MLP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bkd_core.models import (
    MLP,
    MODEL_NAMES,
    OfficialPreResNet18,
    PreActBlock,
    SmallCNN,
    WhitenedCNN,
    build_model,
    count_parameters,
)


STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))


def _conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k  # bias=False everywhere


def _bn(c: int) -> int:
    return 2 * c  # weight and bias (running stats are buffers)


def _expected_preresnet18(num_classes: int) -> int:
    """Sum of layer shapes of the official network, computed without the model.

    conv3x3 3->64 + BN stem; per stage two pre-activation blocks (BN(in), conv3x3 in->out with
    the stage stride, BN(out), conv3x3 out->out, 1x1 conv in->out without BN when the shape
    changes); no final BN; linear 512->C with bias.
    """
    total = _conv(3, 64, 3) + _bn(64)
    c_in = 64
    for c_out, stride in STAGES:
        for block in range(2):
            s = stride if block == 0 else 1
            total += _bn(c_in) + _conv(c_in, c_out, 3) + _bn(c_out) + _conv(c_out, c_out, 3)
            if s != 1 or c_in != c_out:
                total += _conv(c_in, c_out, 1)
            c_in = c_out
    return total + 512 * num_classes + num_classes


def test_expected_count_formula_by_hand():
    # the same sum written out, to guard the helper above against a slip
    stem = 1728 + 128
    layer1 = 2 * (128 + 36864 + 128 + 36864)
    layer2 = (128 + 73728 + 256 + 147456 + 8192) + (256 + 147456 + 256 + 147456)
    layer3 = (256 + 294912 + 512 + 589824 + 32768) + (512 + 589824 + 512 + 589824)
    layer4 = (512 + 1179648 + 1024 + 2359296 + 131072) + (1024 + 2359296 + 1024 + 2359296)
    assert stem + layer1 + layer2 + layer3 + layer4 + 5130 == _expected_preresnet18(10)


@pytest.mark.parametrize("num_classes, pinned", [(10, 11_171_274), (100, 11_217_444)])
def test_preresnet18_parameter_count(num_classes, pinned):
    model = build_model("preresnet18", num_classes)
    assert isinstance(model, OfficialPreResNet18)
    assert _expected_preresnet18(num_classes) == pinned
    assert count_parameters(model) == pinned
    # 11,173,962 is the *standard* post-activation ResNet18 (BN in the shortcuts, BN after each
    # conv); the official hybrid has 2,688 fewer parameters.
    assert count_parameters(model) != 11_173_962


def test_preresnet18_structure():
    model = OfficialPreResNet18(10)
    top = dict(model.named_children())
    assert list(top) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "linear"]
    assert isinstance(model.bn1, nn.BatchNorm2d) and model.bn1.num_features == 64  # stem has BN
    assert model.conv1.in_channels == 3 and model.conv1.out_channels == 64 and model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1) and model.conv1.bias is None
    # 1 stem BN + 2 per block * 8 blocks; none at the top level besides the stem's
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 17
    c_in = 64
    for (c_out, stride), layer in zip(STAGES, (model.layer1, model.layer2, model.layer3, model.layer4)):
        assert len(layer) == 2
        for i, block in enumerate(layer):
            assert isinstance(block, PreActBlock)
            s = stride if i == 0 else 1
            assert block.bn1.num_features == c_in and block.bn2.num_features == c_out
            assert block.conv1.stride == (s, s) and block.conv2.stride == (1, 1)
            if s != 1 or c_in != c_out:
                sc = block.shortcut
                assert isinstance(sc, nn.Conv2d), "shape-changing shortcut must be a bare 1x1 conv (no BN)"
                assert sc.kernel_size == (1, 1) and sc.stride == (s, s) and sc.bias is None
                assert (sc.in_channels, sc.out_channels) == (c_in, c_out)
            else:
                assert isinstance(block.shortcut, nn.Identity)
            c_in = c_out
    assert model.linear.in_features == 512 and model.linear.out_features == 10


def _randomize_bn(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))


@torch.no_grad()
def test_preresnet18_forward_stem_bn_relu_and_no_final_bn():
    torch.manual_seed(0)
    model = OfficialPreResNet18(10).eval()
    _randomize_bn(model, 1)
    seen = {}
    model.layer1.register_forward_hook(lambda m, inp, out: seen.__setitem__("layer1_in", inp[0]))
    model.layer4.register_forward_hook(lambda m, inp, out: seen.__setitem__("layer4_out", out))
    x = torch.randn(1, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (1, 10) and logits.dtype == torch.float32  # output shape, 10 classes
    # stem: conv -> BN -> ReLU
    stem = F.relu(F.batch_norm(F.conv2d(x, model.conv1.weight, padding=1), model.bn1.running_mean,
                               model.bn1.running_var, model.bn1.weight, model.bn1.bias, False, 0.0, model.bn1.eps))
    torch.testing.assert_close(seen["layer1_in"], stem)
    # head: the last block's output goes straight into 4x4 average pooling and the linear layer
    feats = seen["layer4_out"]
    assert feats.shape == (1, 512, 4, 4)
    assert (feats < 0).any(), "no ReLU after layer4: negative features must reach the pooling"
    expected = feats.mean(dim=(2, 3)) @ model.linear.weight.T + model.linear.bias
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("c_in, c_out, stride", [(16, 16, 1), (16, 32, 2), (16, 32, 1)])
def test_preact_block_matches_official_forward(c_in, c_out, stride):
    """out = conv2(relu(bn2(conv1(a)))) + shortcut(a) with a = relu(bn1(x)).

    As in the official models/resnet.py, the shortcut (identity or 1x1 conv) is applied to the
    *pre-activated* input a, not to x.
    """
    torch.manual_seed(2)
    block = PreActBlock(c_in, c_out, stride).eval()
    _randomize_bn(block, 3)
    x = torch.randn(3, c_in, 8, 8)

    def bn(t, m):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    a = F.relu(bn(x, block.bn1))
    h = F.conv2d(a, block.conv1.weight, stride=stride, padding=1)
    h = F.conv2d(F.relu(bn(h, block.bn2)), block.conv2.weight, padding=1)
    shortcut = a if (stride == 1 and c_in == c_out) else F.conv2d(a, block.shortcut.weight, stride=stride)
    torch.testing.assert_close(block(x), h + shortcut)
    assert block(x).shape == (3, c_out, 8 // stride, 8 // stride)


def test_preresnet18_head_size_follows_num_classes():
    # the forward pass is checked with 10 classes above; the head is the only class-dependent part
    for k in (2, 100):
        assert build_model("preresnet18", k).linear.out_features == k


@pytest.mark.parametrize("num_classes", [10, 100])
def test_small_cnn_output_shape_channels_last_and_gradients(num_classes):
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes, (8, 16, 16)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        out_cl = model(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == (3, num_classes) and out.dtype == torch.float32
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-4)
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_small_cnn_structure_and_count():
    w0, w1, w2 = 8, 16, 24
    model = build_model("small_cnn", 7, (w0, w1, w2))
    assert isinstance(model, SmallCNN)
    expected = (_conv(3, w0, 3) + _bn(w0) + _conv(w0, w1, 3) + _bn(w1) + _conv(w1, w2, 3) + _bn(w2)
                + _conv(w2, w2, 3) + _bn(w2) + w2 * 7 + 7)
    assert count_parameters(model) == expected
    assert count_parameters(build_model("small_cnn", 10)) == 242_474  # default widths (32, 64, 128)
    seen = {}
    model.linear.register_forward_hook(lambda m, inp, out: seen.__setitem__("in", inp[0]))
    model.eval()(torch.randn(2, 3, 32, 32))
    assert seen["in"].shape == (2, w2)


@pytest.mark.parametrize("widths", [(32, 64), (8, 16, 32, 64), (0, 16, 32), (8, -1, 32), ()])
def test_small_cnn_rejects_bad_widths(widths):
    with pytest.raises(ValueError, match="three positive"):
        SmallCNN(10, widths)
    with pytest.raises(ValueError, match="three positive"):
        build_model("small_cnn", 10, widths)


def test_build_model_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as exc:
        build_model("resnet50", 10)
    message = str(exc.value)
    assert "resnet50" in message
    for name in ("preresnet18", "small_cnn", "mlp"):
        assert name in message
    assert set(MODEL_NAMES) == {"preresnet18", "whitened_cnn", "small_cnn", "mlp"}


def test_count_parameters_counts_only_trainable():
    model = build_model("small_cnn", 10, (4, 4, 4))
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == total
    model.linear.weight.requires_grad_(False)
    assert count_parameters(model) == total - model.linear.weight.numel()


# --------------------------------------------------------------------------------------------
# the MLP over feature vectors
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("widths", [(), (7,), (16, 8), (5, 5, 5)])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_mlp_shapes_structure_and_count(widths, batch_norm):
    model = build_model("mlp", 4, widths, in_features=12, batch_norm=batch_norm)
    assert isinstance(model, MLP)
    dims = (12, *widths)
    expected = sum(a * b + b for a, b in zip(dims[:-1], dims[1:])) + dims[-1] * 4 + 4
    expected += 2 * sum(widths) if batch_norm else 0
    assert count_parameters(model) == expected
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == list(zip(dims, (*widths, 4)))
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == (len(widths) if batch_norm else 0)
    x = torch.randn(5, 12)
    model.train()
    out = model(x)
    assert out.shape == (5, 4) and out.dtype == torch.float32
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_mlp_default_widths_and_count():
    model = MLP(512, 10)
    assert count_parameters(model) == 512 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10 == 530_442
    with torch.no_grad():
        assert model.eval()(torch.randn(3, 512)).shape == (3, 10)


def test_mlp_without_hidden_layers_is_linear():
    torch.manual_seed(0)
    model = build_model("mlp", 3, (), in_features=6).eval()
    x, y = torch.randn(4, 6), torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(x + y) - model(y), model(x) - model(torch.zeros(1, 6)))


def test_mlp_fits_a_separable_problem():
    """Two classes split by a non-linear rule (XOR of two coordinates' signs): an MLP with the
    official optimiser fits it; a linear model cannot (about half right)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 10, generator=g)
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()
    x[:, :2] += torch.sign(x[:, :2]) * 0.5  # a margin around both axes
    accuracy = {}
    for widths in ((), (64, 64)):
        torch.manual_seed(0)
        model = build_model("mlp", 2, widths, in_features=10)
        opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
        for _ in range(30):  # 1.0 by epoch 30 for seeds 0-2, the linear model 0.54-0.57
            perm = torch.randperm(512, generator=g)
            for idx in perm.split(128):
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
        with torch.no_grad():
            accuracy[widths] = (model.eval()(x).argmax(1) == y).float().mean().item()
    assert accuracy[(64, 64)] >= 0.97
    assert accuracy[()] <= 0.75


def test_mlp_arguments_are_checked():
    with pytest.raises(ValueError, match="in_features"):
        build_model("mlp", 10, (32,))
    for bad in (dict(in_features=0), dict(num_classes=0), dict(widths=(8, 0))):
        kwargs = dict(in_features=4, num_classes=3, widths=(8,)) | bad
        with pytest.raises(ValueError, match="positive"):
            MLP(**kwargs)
    model = MLP(4, 3, (8,))
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        model(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        model(torch.randn(2, 3, 32, 32))  # images instead of feature vectors


def _whitened(widths=(8, 16, 24), num_classes=10, seed=0):
    torch.manual_seed(seed)
    model = build_model("whitened_cnn", num_classes, widths)
    model.init_whitening(torch.randn(64, 3, 32, 32) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1))
    return model


def test_whitened_cnn_structure_and_count():
    w0, w1, w2 = 8, 16, 24
    model = _whitened((w0, w1, w2), num_classes=7)
    assert isinstance(model, WhitenedCNN)
    whiten = 24 * 3 * 2 * 2 + 24  # 24 filters of 2x2x3 (12 whitening directions and their negatives) and a bias
    groups = sum(_conv(a, b, 3) + _bn(b) + _conv(b, b, 3) + _bn(b) for a, b in ((24, w0), (w0, w1), (w1, w2)))
    assert sum(p.numel() for p in model.parameters()) == whiten + groups + w2 * 7 + 7
    assert count_parameters(model) == whiten + groups + w2 * 7 + 7 - 24 * 12  # the filters are not trained
    assert sum(p.numel() for p in build_model("whitened_cnn", 10).parameters()) == 295_106  # widths (32, 64, 128)
    seen = {}
    model.linear.register_forward_hook(lambda m, inp, out: seen.__setitem__("in", inp[0]))
    out = model.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7) and out.dtype == torch.float32 and seen["in"].shape == (2, w2)


def test_whitening_filters_whiten_the_patches_they_were_computed_from():
    torch.manual_seed(0)
    mix = torch.randn(3, 3) + 2 * torch.eye(3)  # correlated colour channels
    images = torch.einsum("dc,nchw->ndhw", mix, torch.randn(200, 3, 32, 32))
    images = images + 0.5 * images.roll(1, dims=3)  # and correlated neighbouring pixels
    model = build_model("whitened_cnn", 10, (8, 8, 8))
    model.init_whitening(images)
    weight = model.whiten.weight.detach()
    assert not model.whiten.weight.requires_grad and torch.equal(weight[:12], -weight[12:])
    with torch.no_grad():
        responses = model.whiten(images)[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = responses.T @ responses / len(responses)
    # unit variance along each whitening direction, uncorrelated (eps = 5e-4 shrinks the variances slightly)
    torch.testing.assert_close(cov, torch.eye(12, dtype=torch.float64), atol=0.03, rtol=0)
    assert torch.equal(model.whiten.bias, torch.zeros(24))


def test_whitened_cnn_channels_last_gradients_and_training_leaves_filters():
    model = _whitened()
    filters = model.whiten.weight.detach().clone()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = model.eval()(x)
        torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), out, rtol=1e-4, atol=1e-4)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
    assert model.whiten.weight.grad is None and torch.equal(model.whiten.weight, filters)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_whitened_cnn_is_deterministic_and_restores_from_its_state():
    a, b = _whitened(seed=3), _whitened(seed=3)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(a.eval()(x), b.eval()(x))
    c = build_model("whitened_cnn", 10, (8, 16, 24))  # other initial weights, no whitening yet
    c.load_state_dict(a.state_dict())
    assert torch.equal(c.eval()(x), a(x))


@pytest.mark.parametrize("widths", [(32, 64), (0, 16, 32)])
def test_whitened_cnn_rejects_bad_widths_and_images(widths):
    with pytest.raises(ValueError, match="three positive"):
        build_model("whitened_cnn", 10, widths)
    with pytest.raises(ValueError, match="normalized images"):
        build_model("whitened_cnn", 10).init_whitening(torch.zeros(4, 32, 32))
