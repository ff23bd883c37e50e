"""Mixed precision on the CPU and (marked ``gpu``) on CUDA: the classifier head stays float32 under autocast,
a small teacher-student logit gap survives bf16, and the fp16 gradient scaler skips a step whose gradients
overflow and takes the next one (the training runs that resume under fp16 and bf16 are in test_train.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from bkd_core.method import blind_distillation_loss
from bkd_core.models import build_model


_CUDA = pytest.param("cuda", marks=[pytest.mark.gpu,
                                    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")])
DEVICES = ["cpu", _CUDA]


def _net(name: str, device: str = "cpu") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, 10, (8, 16, 16)).eval().to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["small_cnn", "preresnet18"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_head_is_float32_under_autocast(name, dtype, device):
    net = _net(name, device)
    x = torch.randn(4, 3, 32, 32, device=device)
    seen = {}
    net.linear.register_forward_hook(lambda m, inp, out: seen.update(features=inp[0], logits=out))
    with torch.no_grad(), torch.autocast(device, dtype=dtype):
        logits = net(x)
    assert logits.dtype == torch.float32
    assert seen["features"].dtype == torch.float32
    # the head's output is the float32 linear map of the (half-precision-computed) features
    expected = torch.nn.functional.linear(seen["features"].double(), net.linear.weight.double(),
                                          net.linear.bias.double())
    torch.testing.assert_close(logits.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["small_cnn", "preresnet18"])
def test_teacher_minus_student_difference_survives_bf16_autocast(name, device):
    """Teacher = student with its head's bias shifted by 0.03 and logits scaled to about 10: the
    difference the blind distillation loss sees must be 0.03, not a multiple of bf16's spacing
    (0.0625 between 8 and 16, which is what a bf16 head gave)."""
    student = _net(name, device)
    with torch.no_grad():
        student.linear.bias.add_(10.0)
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        teacher.linear.bias.add_(0.03)
    x = torch.randn(8, 3, 32, 32, device=device)
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        z_t, z_s = teacher(x), student(x)
    assert z_t.abs().min() > 8  # the regime where bf16 rounds to multiples of 0.0625
    gap = z_t - z_s
    assert (gap - 0.03).abs().max() < 1e-4, (gap - 0.03).abs().max()
    # and the loss built from them matches the loss of float32 forwards closely
    with torch.no_grad():
        f_t, f_s = teacher(x), student(x)
    y = torch.zeros(8, dtype=torch.long, device=device)
    loss_bf16 = blind_distillation_loss(z_t, z_s, y)
    loss_fp32 = blind_distillation_loss(f_t, f_s, y)
    assert loss_bf16.dtype == torch.float32
    torch.testing.assert_close(loss_bf16, loss_fp32, rtol=0.05, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_grad_scaler_skips_an_overflowing_step_and_takes_the_next(device):
    """The fp16 path's scaler (as the trainer builds it, with fused SGD on CUDA): a loss whose scaled
    gradients overflow leaves the weights unchanged and halves the scale; a finite one then moves them."""
    from bkd_core.config import BKDConfig
    from bkd_core.models import build_networks, build_optimizer

    cfg = BKDConfig(model="small_cnn", model_widths=(8, 16, 16), device=device, precision="fp16")
    nets = build_networks(cfg, ("teacher", "student"), 10, torch.device(device))
    optimizer, _ = build_optimizer(cfg, nets.values(), torch.device(device))
    scaler = torch.amp.GradScaler(device, enabled=True)
    x = torch.randn(16, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,), device=device)
    before = [p.detach().clone() for net in nets.values() for p in net.parameters()]

    def step(scale_loss: float) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.float16):
            z_t, z_s = nets["teacher"](x), nets["student"](x)
        loss = blind_distillation_loss(z_t.float(), z_s.float(), y) * scale_loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    scale = scaler.get_scale()
    step(float("inf"))  # every gradient is inf or nan: the step is skipped
    assert scaler.get_scale() == scale / 2
    after_skip = [p.detach() for net in nets.values() for p in net.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(after_skip, before))
    step(1.0)
    moved = [p.detach() for net in nets.values() for p in net.parameters()]
    assert all(torch.isfinite(p).all() for p in moved)
    assert sum(not torch.equal(a, b) for a, b in zip(moved, before)) > len(before) // 2
