"""Mixed precision on the CPU: the classifier head stays float32 under autocast (issue 15, defect 3),
the precision setting resolves as documented, and the fp16 + GradScaler path trains and resumes."""

from __future__ import annotations

import copy

import pytest
import torch

from bkd_core.method import blind_distillation_loss
from bkd_core.models import build_model


def _net(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, 10, (8, 16, 16)).eval()


@pytest.mark.parametrize("name", ["small_cnn", "preresnet18"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_head_is_float32_under_autocast(name, dtype):
    net = _net(name)
    x = torch.randn(4, 3, 32, 32)
    seen = {}
    net.linear.register_forward_hook(lambda m, inp, out: seen.update(features=inp[0], logits=out))
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        logits = net(x)
    assert logits.dtype == torch.float32
    assert seen["features"].dtype == torch.float32
    # the head's output is the float32 linear map of the (half-precision-computed) features
    expected = torch.nn.functional.linear(seen["features"].double(), net.linear.weight.double(),
                                          net.linear.bias.double())
    torch.testing.assert_close(logits.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["small_cnn", "preresnet18"])
def test_teacher_minus_student_difference_survives_bf16_autocast(name):
    """Teacher = student with its head's bias shifted by 0.03 and logits scaled to about 10: the
    difference the blind distillation loss sees must be 0.03, not a multiple of bf16's spacing
    (0.0625 between 8 and 16, which is what a bf16 head gave)."""
    student = _net(name)
    with torch.no_grad():
        student.linear.bias.add_(10.0)
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        teacher.linear.bias.add_(0.03)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        z_t, z_s = teacher(x), student(x)
    assert z_t.abs().min() > 8  # the regime where bf16 rounds to multiples of 0.0625
    gap = z_t - z_s
    assert (gap - 0.03).abs().max() < 1e-4, (gap - 0.03).abs().max()
    # and the loss built from them matches the loss of float32 forwards closely
    with torch.no_grad():
        f_t, f_s = teacher(x), student(x)
    y = torch.zeros(8, dtype=torch.long)
    loss_bf16 = blind_distillation_loss(z_t, z_s, y)
    loss_fp32 = blind_distillation_loss(f_t, f_s, y)
    assert loss_bf16.dtype == torch.float32
    torch.testing.assert_close(loss_bf16, loss_fp32, rtol=0.05, atol=1e-4)
