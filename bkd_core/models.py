"""Networks: the official code's hybrid "PreResNet18", an airbench-class CNN with a patch-whitening first layer
(the ``cnn`` profile: all 50,000 images' pixels on a CPU), a small fast CNN, and an MLP over precomputed feature
vectors (``bkd_core.features``); and a run's networks and optimizer built from its configuration
(:func:`build_networks`, :func:`build_optimizer`), shared by the trainer and :func:`bkd_core.find_label_issues`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # no import of the package at run time: the benchmarks load this file on its own
    from .config import BKDConfig


def fp32_head(linear: nn.Linear, features: torch.Tensor) -> torch.Tensor:
    """The classifier head ``linear(features)`` in float32, also under autocast.

    Under bf16 or fp16 autocast the last Linear layer would emit half-precision logits: at logits
    near 10 the bf16 spacing is 0.0625, so a teacher-minus-student difference of 0.03 (what the blind
    distillation loss is made of) would be rounded away. The head is cheap (one small matmul), so it
    runs with autocast disabled on float32 features; without autocast this is the plain layer.
    """
    with torch.autocast(device_type=features.device.type, enabled=False):
        return linear(features.float())


class PreActBlock(nn.Module):
    """Pre-activation residual block: BN-ReLU-conv-BN-ReLU-conv, 1x1 conv shortcut (no BN) on shape change."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class OfficialPreResNet18(nn.Module):
    """The network the official BKD code calls ``PreResNet18`` (the book's chapter 08, section 9).

    A hybrid: a post-activation stem (conv3x3-BN-ReLU, 64 channels), then four stages of two
    pre-activation blocks (64, 128, 256, 512 channels; strides 1, 2, 2, 2), then 4x4 average
    pooling and a linear layer, with *no* final BN-ReLU after the last block. The linear layer runs in
    float32 also under autocast (:func:`fp32_head`).

    Input: float [B, 3, 32, 32] (normalized). Output: logits [B, num_classes].
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages = []
        in_planes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4).flatten(1)
        return fp32_head(self.linear, out)


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """A small, fast CNN for quick runs on a CPU.

    Four conv3x3-BN-ReLU layers: ``widths[0]`` at 32x32, then ``widths[1]``, ``widths[2]`` and
    ``widths[2]`` again, the last three each followed by 2x2 max pooling (to 16, 8 and 4 pixels),
    then global average pooling and a linear layer. With widths (32, 64, 128): 242,474 parameters.
    (Global *max* pooling made the blind distillation loss blow up in the first steps at lr 0.02.)

    Input: float [B, 3, 32, 32]. Output: float32 logits [B, num_classes] (head in float32: :func:`fp32_head`).
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"SmallCNN needs three positive channel widths, got {tuple(widths)}")
        w0, w1, w2 = (int(w) for w in widths)
        self.features = nn.Sequential(
            *_conv_bn_relu(3, w0),
            *_conv_bn_relu(w0, w1), nn.MaxPool2d(2),
            *_conv_bn_relu(w1, w2), nn.MaxPool2d(2),
            *_conv_bn_relu(w2, w2), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.linear = nn.Linear(w2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp32_head(self.linear, self.features(x))


def _conv_bn_gelu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()]


class WhitenedCNN(nn.Module):
    """An airbench-class CNN: a fixed patch-whitening layer, then three conv groups.

    The architecture follows airbench's (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU",
    arXiv 2404.00498; github.com/KellerJordan/cifar10-airbench), written here from its description:

    - a 2x2 convolution without padding (32 -> 31 pixels) whose 24 filters whiten image patches: the
      eigenvectors of the 2x2x3 patch covariance scaled by ``1/sqrt(eigenvalue + eps)``, and their negatives.
      They are set once from training images (:meth:`init_whitening`; label-free) and not trained; the
      layer's bias is trained. Then GELU;
    - three groups ``conv3x3 - maxpool 2 - BN - GELU - conv3x3 - BN - GELU`` of ``widths`` channels
      (31 -> 15 -> 7 -> 3 pixels);
    - 3x3 max pooling to one pixel and a linear layer (float32 logits: :func:`fp32_head`).

    With widths (32, 64, 128): 295,106 parameters (312 of them the whitening layer's). airbench's own widths
    are 64/256/256 (94% on clean CIFAR-10 with its own training recipe) and 64/128/128 (airbench93).
    Here the networks train with the official BKD optimiser instead (SGD, lr 0.02, momentum 0.9,
    weight decay 5e-4), so airbench's accuracy is not to be expected.

    Input: float [B, 3, 32, 32] (normalized). Output: float32 logits [B, num_classes].
    """

    #: side of the whitened patches
    patch = 2

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"WhitenedCNN needs three positive channel widths, got {tuple(widths)}")
        w0, w1, w2 = (int(w) for w in widths)
        k = 2 * 3 * self.patch**2
        self.whiten = nn.Conv2d(3, k, self.patch, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.features = nn.Sequential(
            nn.GELU(),
            *self._group(k, w0), *self._group(w0, w1), *self._group(w1, w2),
            nn.MaxPool2d(3), nn.Flatten(),
        )
        self.linear = nn.Linear(w2, num_classes)

    @staticmethod
    def _group(c_in: int, c_out: int) -> list[nn.Module]:
        conv1, bn1, act1 = _conv_bn_gelu(c_in, c_out)
        return [conv1, nn.MaxPool2d(2), bn1, act1, *_conv_bn_gelu(c_out, c_out)]

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters from normalized images [N, 3, 32, 32] (a few thousand suffice).

        The covariance of all 2x2x3 patches is computed in float64 (so the filters do not depend on the
        order of a float32 sum); its eigenvectors ``v`` with eigenvalues ``l`` give the filters
        ``v / sqrt(l + eps)`` and ``-v / sqrt(l + eps)``, with the layer's bias set to zero.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"init_whitening expects normalized images [N, 3, H, W], got {tuple(images.shape)}")
        k = 3 * self.patch**2
        cov = torch.zeros(k, k, dtype=torch.float64)
        count = 0
        for chunk in images.split(512):
            patches = F.unfold(chunk.float(), self.patch).transpose(1, 2).reshape(-1, k).double().cpu()
            cov += patches.T @ patches
            count += len(patches)
        cov /= count
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).reshape(k, 3, self.patch, self.patch)
        weight = torch.cat([filters, -filters]).to(self.whiten.weight)
        self.whiten.weight.copy_(weight)
        self.whiten.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp32_head(self.linear, self.features(self.whiten(x)))


class MLP(nn.Module):
    """A multilayer perceptron over feature vectors (e.g. :mod:`bkd_core.features`).

    ``Linear(in_features, widths[0])-[BatchNorm1d]-ReLU-...-Linear(widths[-1], num_classes)``;
    with ``widths=()`` it is a linear classifier. With the defaults (512 inputs, widths (512, 512),
    10 classes): 530,442 parameters.

    Parameters
    ----------
    in_features : int
        Input dimension D.
    num_classes : int
        Number of classes C.
    widths : sequence of int
        Hidden layer widths (any number, each >= 1).
    batch_norm : bool
        Put a ``BatchNorm1d`` after every hidden linear layer. Off by default: on the 512-dim
        patch features it lowered clean-label test accuracy from 78.4% to 77.6%
        (``benchmarks/README.md``).

    Input: float [B, D]. Output: logits [B, C].
    """

    def __init__(self, in_features: int, num_classes: int = 10, widths: Sequence[int] = (512, 512), *,
                 batch_norm: bool = False) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if int(in_features) < 1 or int(num_classes) < 1 or any(w < 1 for w in widths):
            raise ValueError(f"MLP needs positive in_features, num_classes and widths, got "
                             f"{in_features}, {num_classes}, {widths}")
        layers: list[nn.Module] = []
        d = int(in_features)
        for w in widths:
            layers.append(nn.Linear(d, w))
            if batch_norm:
                layers.append(nn.BatchNorm1d(w))
            layers.append(nn.ReLU(inplace=True))
            d = w
        self.in_features = int(in_features)
        self.hidden = nn.Sequential(*layers)
        self.linear = nn.Linear(d, int(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"MLP expects float [B, {self.in_features}] feature vectors, got shape {tuple(x.shape)}")
        return fp32_head(self.linear, self.hidden(x))


MODEL_NAMES = ("preresnet18", "whitened_cnn", "small_cnn", "mlp")


def build_model(name: str, num_classes: int, widths: Sequence[int] = (32, 64, 128), *,
                in_features: int | None = None, batch_norm: bool = False) -> nn.Module:
    """Build a network by name.

    ``"preresnet18"`` (official hybrid; ``widths`` ignored), ``"whitened_cnn"`` (airbench-class, whitening
    filters set later by :meth:`WhitenedCNN.init_whitening`) or ``"small_cnn"`` (``widths`` are their
    three channel widths), or ``"mlp"`` over ``in_features``-dimensional vectors (``widths`` are
    its hidden widths, any number; ``in_features`` is required; ``batch_norm`` adds BatchNorm1d).
    """
    if name == "preresnet18":
        return OfficialPreResNet18(num_classes)
    if name == "small_cnn":
        return SmallCNN(num_classes, widths)
    if name == "whitened_cnn":
        return WhitenedCNN(num_classes, widths)
    if name == "mlp":
        if in_features is None:
            raise ValueError("build_model('mlp', ...) needs in_features (the feature dimension D)")
        return MLP(in_features, num_classes, widths, batch_norm=batch_norm)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_networks(config: BKDConfig, names: tuple[str, ...], num_classes: int, device: torch.device, *,
                   in_features: int | None = None,
                   whitening_images: torch.Tensor | None = None) -> dict[str, nn.Module]:
    """The run's networks, one ``config.model`` per name, initialised in order after seeding torch with
    ``config.seed`` (so a run's initial weights depend on its seed alone); ``in_features``: the feature
    dimension of an MLP; ``whitening_images``: normalized training images [N, 3, H, W] that set a
    ``whitened_cnn``'s whitening filters (required for that model)."""
    torch.manual_seed(config.seed)
    networks: dict[str, nn.Module] = {}
    for name in names:
        net = build_model(config.model, num_classes, config.model_widths, in_features=in_features).to(device)
        if isinstance(net, WhitenedCNN):
            if whitening_images is None:
                raise ValueError("build_networks: a whitened_cnn needs whitening_images (normalized training images)")
            net.init_whitening(whitening_images)
        if config.channels_last and config.features is None:
            net = net.to(memory_format=torch.channels_last)
        networks[name] = net
    return networks


def build_optimizer(config: BKDConfig, networks: Iterable[nn.Module],
                    device: torch.device) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.StepLR]:
    """One SGD over all ``networks`` (as the official code: teacher and student share it) and its step
    schedule (a constant rate when ``config.lr_step`` is None)."""
    params = [p for net in networks for p in net.parameters()]
    # fused SGD on CUDA: one kernel per step, and with the gradient scaler no host sync for its inf check
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                                fused=True if device.type == "cuda" else None)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step or 10**9,
                                                gamma=config.lr_gamma if config.lr_step else 1.0)
    return optimizer, scheduler
