"""Tests of bkd_core.method, each against an independent computation (the official formulas)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bkd_core.method import (
    GROUP_ALPHAS,
    OTSU_VARIANCE_FLOOR,
    Detection,
    OtsuSplit,
    TippingPoint,
    agreement_probability,
    assign_groups,
    bkd_step,
    blind_distillation_loss,
    detect,
    find_tipping_point,
    group_alpha,
    no_peak_fallback,
    otsu_split,
    robust_targets,
    soft_cross_entropy,
    tipping_point,
)

CUDA = pytest.param(
    "cuda",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ],
)
# The loss / agreement / target checks run on the CPU and, marked `gpu`, repeat on CUDA.
DEVICES = ["cpu", CUDA]


def _logits(batch: int, classes: int, seed: int, device: str, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    t = (scale * torch.randn(batch, classes, generator=g, dtype=torch.float64)).to(device)
    s = (scale * torch.randn(batch, classes, generator=g, dtype=torch.float64)).to(device)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    return t, s, y


# --------------------------------------------------------------------------------------------
# blind distillation loss
# --------------------------------------------------------------------------------------------
def _blind_loss_loop(t, s, y, denominator):
    t, s, y = t.cpu().tolist(), s.cpu().tolist(), y.cpu().tolist()
    total = 0.0
    for i in range(len(y)):
        for c in range(len(t[i])):
            if c != y[i]:
                total += (t[i][c] - s[i][c]) ** 2
    return total / denominator


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch,classes", [(1, 2), (5, 7), (16, 10), (3, 100)])
def test_blind_loss_matches_double_loop(device, batch, classes):
    t, s, y = _logits(batch, classes, seed=batch * 1000 + classes, device=device)
    official = blind_distillation_loss(t, s, y)
    mean = blind_distillation_loss(t, s, y, reduction="mean")
    assert official.shape == () and official.device.type == device
    assert official.item() == pytest.approx(_blind_loss_loop(t, s, y, batch * classes - 1), rel=1e-12)
    assert mean.item() == pytest.approx(_blind_loss_loop(t, s, y, batch * (classes - 1)), rel=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_blind_loss_mean_vs_official_ratio(device):
    batch, classes = 8, 10
    t, s, y = _logits(batch, classes, seed=3, device=device)
    ratio = blind_distillation_loss(t, s, y) / blind_distillation_loss(t, s, y, reduction="mean")
    assert ratio.item() == pytest.approx(batch * (classes - 1) / (batch * classes - 1), rel=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_blind_loss_gradient_is_zero_on_label_logit_for_both_networks(device):
    batch, classes = 6, 10
    t, s, y = _logits(batch, classes, seed=4, device=device)
    t.requires_grad_(True)
    s.requires_grad_(True)
    blind_distillation_loss(t, s, y).backward()
    on_label = torch.zeros(batch, classes, dtype=torch.bool, device=device)
    on_label[torch.arange(batch, device=device), y] = True
    for grad in (t.grad, s.grad):
        assert torch.all(grad[on_label] == 0.0)  # exactly zero, not approximately
        assert torch.all(grad[~on_label] != 0.0)
    # analytic gradient: d/dz_T = 2 (z_T - z_S) / (B C - 1) off the label, and the opposite for z_S
    expected = 2 * (t - s).detach() / (batch * classes - 1)
    expected[on_label] = 0.0
    torch.testing.assert_close(t.grad, expected)
    torch.testing.assert_close(s.grad, -expected)


@pytest.mark.parametrize("device", DEVICES)
def test_blind_loss_detach_teacher_sends_gradient_to_student_only(device):
    t, s, y = _logits(4, 5, seed=5, device=device)
    t.requires_grad_(True)
    s.requires_grad_(True)
    loss = blind_distillation_loss(t, s, y, detach_teacher=True)
    loss.backward()
    assert t.grad is None or torch.all(t.grad == 0)
    assert s.grad is not None and torch.any(s.grad != 0)
    # same student gradient and value as without detaching
    s2 = s.detach().clone().requires_grad_(True)
    loss2 = blind_distillation_loss(t.detach().clone().requires_grad_(True), s2, y)
    loss2.backward()
    torch.testing.assert_close(s.grad, s2.grad)
    assert loss.item() == pytest.approx(loss2.item())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["official", "mean"])
def test_student_seeing_the_label_changes_its_target_exactly_at_the_label_logit(device, reduction):
    batch, classes = 6, 10
    t, s, y = _logits(batch, classes, seed=7, device=device)
    on_label = torch.zeros(batch, classes, dtype=torch.bool, device=device)
    on_label[torch.arange(batch, device=device), y] = True
    grads = {}
    for blind in (True, False):
        tb, sb = t.clone().requires_grad_(True), s.clone().requires_grad_(True)
        blind_distillation_loss(tb, sb, y, reduction=reduction, blind=blind).backward()
        grads[blind] = (tb.grad, sb.grad)
    for blind_grad, seeing_grad in zip(grads[True], grads[False]):
        assert torch.all(blind_grad[on_label] == 0.0) and torch.all(seeing_grad[on_label] != 0.0)
        if reduction == "official":  # the same denominator: off the label the gradients are the same bits
            assert torch.equal(blind_grad[~on_label], seeing_grad[~on_label])
    # plain distillation's loss is the squared difference over every logit: B*C - 1 (official) or B*C (mean)
    denominator = batch * classes - 1 if reduction == "official" else batch * classes
    expected = (t - s).pow(2).sum().item() / denominator
    assert blind_distillation_loss(t, s, y, reduction=reduction, blind=False).item() == pytest.approx(expected,
                                                                                                    rel=1e-12)
    # bkd_step's switch is this loss and changes nothing else of the step
    blind_step, seeing_step = (bkd_step(t, s, y, reduction=reduction, student_sees_label=sees) for sees in (0, 1))
    torch.testing.assert_close(seeing_step.compensation,
                               blind_distillation_loss(t, s, y, reduction=reduction, blind=False), rtol=0, atol=0)
    torch.testing.assert_close(seeing_step.cross_entropy, blind_step.cross_entropy, rtol=0, atol=0)
    torch.testing.assert_close(seeing_step.agreement, blind_step.agreement, rtol=0, atol=0)


@pytest.mark.parametrize("phase", [1, 2])
def test_the_default_step_is_the_blind_step_bit_for_bit(phase):
    """The default (``student_sees_label=False``) computes what BKD's step computed before the switch existed:
    the label entry filled with zero, divided by B*C - 1, value and gradients the same bits."""
    batch, classes = 5, 4
    t, s, y = _logits(batch, classes, seed=11, device="cpu")
    alpha = None if phase == 1 else torch.tensor([0.3, 0.45, 0.55, 0.7, 0.3], dtype=torch.float64)

    def before(t, s):  # the step as it was written before the switch
        mask = torch.zeros(t.shape, dtype=torch.bool).scatter_(1, y.unsqueeze(1), True)
        compensation = (t - s).pow(2).masked_fill(mask, 0.0).sum() / (batch * classes - 1)
        ce = (F.cross_entropy(t, y) if alpha is None
              else soft_cross_entropy(t, robust_targets(y, s.softmax(1), alpha)))
        return ce + compensation

    results = []
    for step in (lambda a, b: bkd_step(a, b, y, alpha=alpha).loss,
                 lambda a, b: bkd_step(a, b, y, alpha=alpha, student_sees_label=False).loss, before):
        a, b = t.clone().requires_grad_(True), s.clone().requires_grad_(True)
        loss = step(a, b)
        loss.backward()
        results.append((loss.detach(), a.grad, b.grad))
    for other in results[1:]:
        for x, z in zip(results[0], other):
            assert torch.equal(x, z)


def test_blind_loss_rejects_bad_arguments():
    t, s, y = _logits(4, 5, seed=6, device="cpu")
    with pytest.raises(ValueError, match="official.*mean"):
        blind_distillation_loss(t, s, y, reduction="sum")
    with pytest.raises(ValueError, match="same shape"):
        blind_distillation_loss(t, s[:, :4], y)
    with pytest.raises(ValueError, match="shape"):
        blind_distillation_loss(t, s, y[:3])
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        blind_distillation_loss(t, s, torch.tensor([0, 1, 2, 5]))
    with pytest.raises(ValueError, match="integer"):
        blind_distillation_loss(t, s, y.double())


def test_blind_loss_float32_and_zero_when_networks_agree():
    t, s, y = _logits(4, 10, seed=7, device="cpu")
    t32 = t.float()
    # only the label entry differs -> loss is exactly 0
    s32 = t32.clone()
    s32[torch.arange(4), y] += 5.0
    assert blind_distillation_loss(t32, s32, y).item() == 0.0
    assert blind_distillation_loss(t32, s.float(), y).dtype == torch.float32


# --------------------------------------------------------------------------------------------
# agreement probability
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_agreement_equals_normalized_product_of_softmaxes(device):
    t, s, _ = _logits(32, 10, seed=8, device=device)
    p = agreement_probability(t, s)
    product = torch.softmax(t, 1) * torch.softmax(s, 1)
    explicit = product / product.sum(1, keepdim=True)
    assert p.shape == (32, 10) and p.device.type == device
    torch.testing.assert_close(p, explicit, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(p.sum(1), torch.ones(32, dtype=p.dtype, device=device))
    assert torch.all(p >= 0) and torch.all(p <= 1)


@pytest.mark.parametrize("device", DEVICES)
def test_agreement_is_stable_for_large_logits(device):
    # teacher sure of class 1, student sure of class 0: each softmax is exactly 0 where the other is
    # 1, so the plain product is 0 in every class (0/0 = NaN). The normalized product is [1/2, 1/2, 0]
    # (the two log-probabilities are -1000 each; class 2 has -2000).
    t = torch.tensor([[0.0, 1000.0, 0.0], [1000.0, 0.0, -1000.0]], device=device)
    s = torch.tensor([[1000.0, 0.0, 0.0], [1000.0, 0.0, 1000.0]], device=device)
    naive = torch.softmax(t, 1) * torch.softmax(s, 1)
    assert torch.isnan(naive / naive.sum(1, keepdim=True)).any()  # the naive formula fails
    p = agreement_probability(t, s)
    assert torch.isfinite(p).all()
    expected = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], device=device)
    torch.testing.assert_close(p, expected)
    torch.testing.assert_close(p.sum(1), torch.ones(2, device=device))


def test_agreement_rejects_shape_mismatch_and_has_gradients():
    t, s, _ = _logits(4, 5, seed=9, device="cpu")
    with pytest.raises(ValueError):
        agreement_probability(t, s[:3])
    with pytest.raises(ValueError):
        agreement_probability(t[0], s[0])
    t.requires_grad_(True)
    agreement_probability(t, s)[:, 0].sum().backward()
    assert t.grad is not None and torch.any(t.grad != 0)


# --------------------------------------------------------------------------------------------
# robust targets and soft cross-entropy
# --------------------------------------------------------------------------------------------
def _robust_loop(labels, probs, alphas):
    out = []
    for y, row, a in zip(labels, probs, alphas):
        r = [((1 - a) * (1.0 if c == y else 0.0) + a * q) ** (1 + a) for c, q in enumerate(row)]
        z = sum(r)
        out.append([v / z for v in r])
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_robust_targets_match_formula_and_sum_to_one(device):
    _, s, y = _logits(12, 10, seed=10, device=device)
    probs = torch.softmax(s, 1)
    alpha = torch.tensor(GROUP_ALPHAS * 3, dtype=torch.float64, device=device)
    r = robust_targets(y, probs, alpha)
    assert r.shape == (12, 10) and r.device.type == device and r.dtype == probs.dtype
    expected = _robust_loop(y.tolist(), probs.tolist(), alpha.tolist())
    torch.testing.assert_close(r, torch.tensor(expected, dtype=r.dtype, device=device))
    torch.testing.assert_close(r.sum(1), torch.ones(12, dtype=r.dtype, device=device))
    assert torch.all(r >= 0)


@pytest.mark.parametrize("device", DEVICES)
def test_robust_targets_alpha_zero_is_onehot_and_scalar_alpha(device):
    _, s, y = _logits(6, 5, seed=11, device=device)
    probs = torch.softmax(s, 1)
    onehot = F.one_hot(y, 5).to(probs.dtype)
    torch.testing.assert_close(robust_targets(y, probs, torch.zeros(6, device=device)), onehot)
    torch.testing.assert_close(robust_targets(y, probs, 0.0), onehot)
    # alpha = 1: the student's distribution squared and renormalized (label plays no role)
    sq = probs**2
    torch.testing.assert_close(robust_targets(y, probs, 1.0), sq / sq.sum(1, keepdim=True))
    # a scalar and a constant per-sample alpha agree
    torch.testing.assert_close(
        robust_targets(y, probs, 0.45), robust_targets(y, probs, torch.full((6,), 0.45, device=device))
    )


@pytest.mark.parametrize("device", DEVICES)
def test_robust_targets_gradient_reaches_student_unless_detached(device):
    t, s, y = _logits(8, 10, seed=12, device=device)
    alpha = torch.full((8,), 0.55, dtype=torch.float64, device=device)
    for detach, expect_grad in ((False, True), (True, False)):
        student = s.clone().requires_grad_(True)
        teacher = t.clone().requires_grad_(True)
        targets = robust_targets(y, torch.softmax(student, 1), alpha, detach_student=detach)
        soft_cross_entropy(teacher, targets).backward()
        assert teacher.grad is not None
        if expect_grad:
            assert student.grad is not None and torch.any(student.grad != 0)
        else:
            assert student.grad is None


def test_robust_targets_rejects_bad_arguments():
    _, s, y = _logits(4, 5, seed=13, device="cpu")
    probs = torch.softmax(s, 1)
    with pytest.raises(ValueError):
        robust_targets(y, probs, torch.zeros(3))
    with pytest.raises(ValueError):
        robust_targets(y, probs, 1.5)
    with pytest.raises(ValueError):
        robust_targets(y[:2], probs, 0.3)


@pytest.mark.parametrize("device", DEVICES)
def test_soft_cross_entropy_matches_cross_entropy(device):
    t, s, y = _logits(16, 10, seed=14, device=device)
    onehot = F.one_hot(y, 10).to(t.dtype)
    torch.testing.assert_close(soft_cross_entropy(t, onehot), F.cross_entropy(t, y))
    # soft targets: explicit per-sample formula
    targets = torch.softmax(s, 1)
    logp = torch.log_softmax(t, 1).tolist()
    expected = sum(-sum(q * lp for q, lp in zip(tr, lr)) for tr, lr in zip(targets.tolist(), logp)) / 16
    assert soft_cross_entropy(t, targets).item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError):
        soft_cross_entropy(t, targets[:, :5])


# --------------------------------------------------------------------------------------------
# tipping point
# --------------------------------------------------------------------------------------------
RISE_FALL = [0.20, 0.35, 0.50, 0.62, 0.70, 0.68, 0.66, 0.69, 0.64]


def _official_rule(x):
    """The official rule: first i >= 2 with x[i] > x[i-2], x[i-1], x[i+1], x[i+2]; needs >= 6 values."""
    if len(x) < 6:
        return None
    for i in range(2, len(x) - 2):
        if x[i] > x[i - 1] and x[i] > x[i - 2] and x[i] > x[i + 1] and x[i] > x[i + 2]:
            return i
    return None


def test_tipping_point_rise_then_fall():
    assert find_tipping_point(RISE_FALL) == 4
    # it is only seen two epochs later: with the peak as the second-to-last value, no point yet
    assert find_tipping_point(RISE_FALL[:6]) is None
    assert find_tipping_point(RISE_FALL[:7]) == 4
    assert find_tipping_point(torch.tensor(RISE_FALL)) == 4
    assert find_tipping_point(np.array(RISE_FALL)) == 4


def test_tipping_point_plateau_is_not_a_peak():
    assert find_tipping_point([0.1, 0.2, 0.5, 0.5, 0.4, 0.3, 0.2]) is None
    assert find_tipping_point([0.3] * 10) is None
    # a plateau followed by a real peak: the real peak is found
    assert find_tipping_point([0.1, 0.5, 0.5, 0.4, 0.45, 0.6, 0.5, 0.4]) == 5


def test_tipping_point_never_peaking():
    assert find_tipping_point([0.1 * i for i in range(20)]) is None  # rising
    assert find_tipping_point([1 - 0.05 * i for i in range(20)]) is None  # falling
    assert find_tipping_point([0.5, 0.4, 0.3, 0.35, 0.45, 0.6, 0.7]) is None  # valley only


def test_tipping_point_too_short():
    assert find_tipping_point([]) is None
    assert find_tipping_point([0.9]) is None
    # five values with a clear peak in the middle: the official rule waits for a sixth epoch
    assert find_tipping_point([0.1, 0.2, 0.9, 0.3, 0.2]) is None
    assert find_tipping_point([0.1, 0.2, 0.9, 0.3, 0.2, 0.1]) == 2
    # pure window rule (min_length=0): five values suffice, four never do
    assert find_tipping_point([0.1, 0.2, 0.9, 0.3, 0.2], min_length=0) == 2
    assert find_tipping_point([0.1, 0.9, 0.3, 0.2], min_length=0) is None


def test_tipping_point_other_windows():
    curve = [0.1, 0.2, 0.5, 0.3, 0.2, 0.6, 0.4, 0.3, 0.2, 0.1]
    assert find_tipping_point(curve, window=2) == 2
    assert find_tipping_point(curve, window=3) == 5
    assert find_tipping_point([0.1, 0.3, 0.2, 0.4, 0.1], window=1) == 1
    assert find_tipping_point([0.1, 0.3, 0.3, 0.4, 0.1], window=1) == 3


def test_tipping_point_first_of_two_peaks():
    assert find_tipping_point([0.1, 0.2, 0.5, 0.3, 0.2, 0.3, 0.7, 0.3, 0.2]) == 2


def test_tipping_point_nan_and_bad_window():
    assert find_tipping_point([0.1, 0.2, float("nan"), 0.3, 0.2, 0.1]) is None
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError):
            find_tipping_point(RISE_FALL, window=bad)


def test_tipping_point_matches_official_rule_on_random_curves():
    rng = np.random.default_rng(0)
    for _ in range(200):
        curve = np.round(rng.random(rng.integers(0, 15)), 1).tolist()  # rounding creates ties
        for end in range(len(curve) + 1):
            assert find_tipping_point(curve[:end]) == _official_rule(curve[:end])


def test_tipping_point_peak_rule_is_find_tipping_point():
    assert tipping_point(RISE_FALL) == TippingPoint(epoch=4, rule="peak")
    assert tipping_point(RISE_FALL[:6]) is None
    # the peak rule wins over a fallback that would also fire at this length
    assert tipping_point(RISE_FALL[:7], fallback=5) == TippingPoint(epoch=4, rule="peak")
    curve = [0.1, 0.2, 0.5, 0.3, 0.2, 0.6, 0.4, 0.3, 0.2, 0.1]
    assert tipping_point(curve, window=3) == TippingPoint(5, "peak")
    assert tipping_point(torch.tensor(RISE_FALL)).epoch == 4


def test_tipping_point_fallback_fires_only_at_fallback_plus_window_epochs():
    rising = [0.1 * i for i in range(12)]
    # fallback=3, window=2: taken when the 5th value arrives, where a peak at 3 would have been seen
    got = [tipping_point(rising[:end], fallback=3) for end in range(12)]
    assert got[5] == TippingPoint(epoch=3, rule="fallback")
    assert all(g is None for i, g in enumerate(got) if i != 5)  # asked only once, so only then
    assert tipping_point(rising[:4], window=1, fallback=3) == TippingPoint(3, "fallback")  # tip = last epoch
    assert tipping_point(rising[:2], fallback=0) == TippingPoint(0, "fallback")
    assert tipping_point(rising[:5]) is None  # no fallback: the official rule alone


def test_tipping_point_sequence_matches_the_training_loop_rule_on_random_curves():
    """Called epoch by epoch as the trainer does, the first point is the peak rule's or else the fallback."""
    rng = np.random.default_rng(1)
    for _ in range(100):
        curve = np.round(rng.random(rng.integers(0, 14)), 1).tolist()
        window, fallback = int(rng.integers(1, 3)), [None, 0, 3, 6][int(rng.integers(0, 4))]
        first = next((tp for end in range(1, len(curve) + 1)
                      if (tp := tipping_point(curve[:end], window=window, fallback=fallback)) is not None), None)
        peak_at = next((end for end in range(1, len(curve) + 1)
                        if find_tipping_point(curve[:end], window) is not None), None)
        fallback_at = None if fallback is None or fallback + window > len(curve) else fallback + window
        if peak_at is not None and (fallback_at is None or peak_at <= fallback_at):
            assert first == TippingPoint(find_tipping_point(curve[:peak_at], window), "peak")
        elif fallback_at is not None:
            assert first == TippingPoint(fallback, "fallback")
        else:
            assert first is None


def test_tipping_point_rejects_bad_arguments():
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="fallback"):
            tipping_point(RISE_FALL, fallback=bad)
    with pytest.raises(ValueError, match="window"):
        tipping_point(RISE_FALL, window=0)


def test_no_peak_fallback_rules():
    flat = [0.5, 0.6, 0.7, 0.7, 0.65, 0.7, 0.7]  # no strict peak with window 2
    assert find_tipping_point(flat, 2) is None
    # integer: at fallback + window epochs (or later when final), else never
    assert no_peak_fallback(flat[:5], window=2, fallback=3) == TippingPoint(3, "fallback")
    assert no_peak_fallback(flat, window=2, fallback=3) is None
    assert no_peak_fallback(flat, window=2, fallback=3, final=True) == TippingPoint(3, "fallback")
    assert no_peak_fallback(flat[:4], window=2, fallback=3, final=True) is None
    # "highest": only at the end, the first epoch of the highest value
    assert no_peak_fallback(flat, window=2, fallback="highest") is None
    assert no_peak_fallback(flat, window=2, fallback="highest", final=True) == TippingPoint(2, "highest")
    # None (official): never
    assert no_peak_fallback(flat, window=2, fallback=None, final=True) is None
    # tipping_point takes a peak first, the fallback only without one
    assert tipping_point(RISE_FALL, fallback="highest", final=True).rule == "peak"
    assert tipping_point(flat, fallback="highest", final=True) == TippingPoint(2, "highest")
    for bad in ("max", 2.5, -1, True):
        with pytest.raises(ValueError, match="fallback"):
            no_peak_fallback(flat, fallback=bad)


# --------------------------------------------------------------------------------------------
# one BKD step
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", [1, 2])
def test_bkd_step_is_the_documented_sum_of_the_losses(phase):
    t, s, y = _logits(6, 5, seed=3, device="cpu")
    t.requires_grad_(True), s.requires_grad_(True)
    alpha = None if phase == 1 else torch.tensor([0.3, 0.45, 0.55, 0.7, 0.3, 0.7], dtype=torch.float64)
    out = bkd_step(t, s, y, alpha=alpha)
    compensation = blind_distillation_loss(t, s, y)
    ce = (F.cross_entropy(t, y) if alpha is None
          else soft_cross_entropy(t, robust_targets(y, s.softmax(1), alpha)))
    torch.testing.assert_close(out.compensation, compensation, rtol=0, atol=0)
    torch.testing.assert_close(out.cross_entropy, ce, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, ce + compensation, rtol=0, atol=0)
    rows = torch.arange(6)
    torch.testing.assert_close(out.agreement, agreement_probability(t, s)[rows, y].detach())
    torch.testing.assert_close(out.teacher_p, t.softmax(1)[rows, y].detach())
    torch.testing.assert_close(out.student_p, s.softmax(1)[rows, y].detach())
    torch.testing.assert_close(out.student_confidence, s.softmax(1).max(1).values.detach())
    assert not (out.agreement.requires_grad or out.student_confidence.requires_grad)
    out.loss.backward()  # the student gets a gradient through the compensation loss (and phase 2's targets)
    assert s.grad is not None and t.grad is not None
    # phase 2 with a detached robust target: the student's gradient is the compensation loss's alone
    if phase == 2:
        s2 = s.detach().clone().requires_grad_(True)
        bkd_step(t.detach(), s2, y, alpha=alpha, detach_robust_target=True).loss.backward()
        s3 = s.detach().clone().requires_grad_(True)
        blind_distillation_loss(t.detach(), s3, y).backward()
        torch.testing.assert_close(s2.grad, s3.grad)


# --------------------------------------------------------------------------------------------
# Otsu split
# --------------------------------------------------------------------------------------------
def _bimodal(n: int, seed: int, noisy_fraction: float = 0.3) -> np.ndarray:
    """Scores like BKD's: clean ones piled up near 1, noisy ones spread over the low range."""
    rng = np.random.default_rng(seed)
    n_noisy = int(n * noisy_fraction)
    low = rng.beta(2.0, 6.0, n_noisy)
    high = rng.beta(8.0, 1.5, n - n_noisy)
    return np.concatenate([low, high])


def _brute_force_otsu(scores: np.ndarray, bins: int, floor: float, criterion: str = "bkd"):
    """Straight from the official Otsu criterion, one split at a time (no cumulative sums)."""
    hist, _ = np.histogram(scores, bins=bins, range=(0, 1))
    values = np.arange(bins) / bins  # bin left edges
    mu = scores.mean()
    best, best_q = None, -math.inf
    for s in range(2, bins - 2):
        h1, v1, h2, v2 = hist[:s], values[:s], hist[s:], values[s:]
        n1, n2 = h1.sum(), h2.sum()
        if n1 == 0 or n2 == 0:
            continue
        mu1, mu2 = (h1 * v1).sum() / n1, (h2 * v2).sum() / n2
        sigma1 = math.sqrt(max((h1 * (v1 - mu1) ** 2).sum() / n1, floor))
        sigma2 = math.sqrt(max((h2 * (v2 - mu2) ** 2).sum() / n2, floor))
        numerator = n1 * (mu1 - mu) ** 2 + n2 * (mu2 - mu) ** 2
        if criterion == "classic":
            q = numerator
        else:
            if n1 * sigma1 + n2 * sigma2 == 0:
                continue
            q = numerator / (n1 * sigma1 + n2 * sigma2)
        if q > best_q:  # strict: the first maximum wins
            best, best_q = (s / bins, mu1, mu2, sigma1, sigma2), q
    return best


def _assert_same_split(scores: np.ndarray, ours: float, expected: float, bins: int = 1000):
    """The same partition of the scores: equal thresholds, or only empty bins between them.

    A run of empty bins gives the same two classes, so mathematically equal criteria; the brute
    force's numpy sums (pairwise summation over arrays of different lengths) break such ties by
    rounding noise, while otsu_split keeps them exact and takes the first. Outside such runs the
    thresholds must be identical.
    """
    hist, _ = np.histogram(scores, bins=bins, range=(0, 1))
    a, b = sorted((round(ours * bins), round(expected * bins)))
    assert hist[a:b].sum() == 0, (ours, expected)


@pytest.mark.parametrize(
    "seed,n,noisy_fraction,floor",
    [(0, 20000, 0.3, OTSU_VARIANCE_FLOOR), (1, 5000, 0.1, OTSU_VARIANCE_FLOOR), (2, 3000, 0.45, 0.0),
     (3, 2000, 0.2, 0.0)],
)
def test_otsu_bkd_matches_brute_force(seed, n, noisy_fraction, floor):
    scores = _bimodal(n, seed, noisy_fraction)
    split = otsu_split(scores, variance_floor=floor)
    t, mu1, mu2, sd1, sd2 = _brute_force_otsu(scores, 1000, floor)
    _assert_same_split(scores, split.threshold, t)
    assert split.lower_mean == pytest.approx(mu1, rel=1e-9)
    assert split.upper_mean == pytest.approx(mu2, rel=1e-9)
    assert split.lower_std == pytest.approx(sd1, rel=1e-9)
    assert split.upper_std == pytest.approx(sd2, rel=1e-9)
    assert split.lower_mean < split.threshold <= split.upper_mean


def test_otsu_bkd_brute_force_with_narrow_classes_where_the_floor_matters():
    # the upper class sits in 3 bins (variance ~1e-6 < floor): the floor changes sigma2
    rng = np.random.default_rng(4)
    scores = np.concatenate([rng.uniform(0.05, 0.6, 400), rng.choice([0.990, 0.991, 0.992], 1600)])
    for floor in (OTSU_VARIANCE_FLOOR, 0.0):
        split = otsu_split(scores, variance_floor=floor)
        expected = _brute_force_otsu(scores, 1000, floor)
        _assert_same_split(scores, split.threshold, expected[0])
        assert split.threshold == 0.6  # the first of the tied empty bins 600..990
        assert split.upper_std == pytest.approx(expected[4], rel=1e-9)
    assert otsu_split(scores).upper_std == pytest.approx(math.sqrt(OTSU_VARIANCE_FLOOR))


def test_otsu_classic_matches_brute_force_between_class_variance():
    scores = _bimodal(4000, 5)
    _assert_same_split(scores, otsu_split(scores, criterion="classic").threshold,
                       _brute_force_otsu(scores, 1000, OTSU_VARIANCE_FLOOR, "classic")[0])


def test_otsu_classic_matches_skimage_on_the_same_histogram():
    skimage_filters = pytest.importorskip("skimage.filters")
    for seed in range(3):
        scores = _bimodal(20000, seed)
        counts, _ = np.histogram(scores, bins=1000, range=(0, 1))
        left_edges = np.arange(1000) / 1000
        # skimage returns the value of the LAST bin of the lower class (class 1 = bins <= idx);
        # ours is the left edge of the FIRST bin of the upper class (lower = bins < s). With left
        # edges as skimage's bin values the two are one bin apart for the same split. skimage sums
        # its counts in float32, so allow one more bin for rounding in near-ties.
        sk = skimage_filters.threshold_otsu(hist=(counts, left_edges))
        ours = otsu_split(scores, criterion="classic").threshold
        assert abs(ours - (sk + 1 / 1000)) <= 1 / 1000 + 1e-12


def test_otsu_classic_matches_skimage_on_raw_scores():
    skimage_filters = pytest.importorskip("skimage.filters")
    for seed in range(3):
        # add exact 0 and 1 so that skimage's histogram (on [min, max]) has our bins on [0, 1]
        scores = np.concatenate([_bimodal(20000, seed + 10), [0.0, 1.0]])
        sk = skimage_filters.threshold_otsu(scores, nbins=1000)
        ours = otsu_split(scores, criterion="classic").threshold
        # skimage reports the CENTRE of the last lower bin, (idx + 0.5)/1000; ours is the left edge
        # of the next bin, (idx + 1)/1000: half a bin apart for the same split, plus one bin of
        # tolerance for float32 rounding in skimage.
        assert abs(ours - (sk + 0.5 / 1000)) <= 1 / 1000 + 1e-12


def test_otsu_inputs_tensor_float32_float16_and_edges():
    scores = _bimodal(10000, 6)
    reference = otsu_split(scores)
    assert otsu_split(torch.tensor(scores)) == reference
    assert otsu_split(scores.tolist()) == reference
    s32 = torch.tensor(scores, dtype=torch.float32)
    assert otsu_split(s32) == otsu_split(s32.double().numpy())
    s16 = torch.tensor(scores, dtype=torch.float16)
    assert otsu_split(s16).threshold == pytest.approx(reference.threshold, abs=0.01)
    # exactly 1.0 counts in the last bin, exactly 0.0 in the first (np.histogram semantics)
    split = otsu_split(np.array([0.0] * 10 + [1.0] * 30))
    assert split.lower_mean == 0.0 and split.upper_mean == pytest.approx(0.999)
    assert split.threshold == 2 / 1000  # first maximum: all splits between are ties


def test_otsu_is_fast_for_50000_scores():
    scores = torch.tensor(_bimodal(50000, 7), dtype=torch.float32)
    otsu_split(scores)
    start = time.perf_counter()
    otsu_split(scores)
    otsu_split(scores, criterion="classic")
    # ~10 ms here; the bound is loose because the test machines are shared
    assert time.perf_counter() - start < 2.0


def test_otsu_rejects_bad_input():
    good = _bimodal(1000, 8)
    for bad in ([], [0.2, float("nan"), 0.9], [0.2, 1.01], [-0.001, 0.5], np.ones((3, 3)) / 2):
        with pytest.raises(ValueError):
            otsu_split(bad)
    with pytest.raises(ValueError, match="bkd.*classic"):
        otsu_split(good, criterion="fisher")
    with pytest.raises(ValueError):
        otsu_split(good, bins=4)
    # no split with two non-empty classes: one bin, or everything at the ends
    for degenerate in ([0.5] * 100, [0.0, 0.001] * 50, [0.999, 1.0] * 50):
        with pytest.raises(ValueError, match="non-empty"):
            otsu_split(degenerate)


# --------------------------------------------------------------------------------------------
# groups and alphas
# --------------------------------------------------------------------------------------------
def test_assign_groups_boundaries_are_exact():
    split = OtsuSplit(threshold=0.5, lower_mean=0.25, upper_mean=0.75, lower_std=0.1, upper_std=0.1)
    scores = torch.tensor([0.0, 0.2499, 0.25, 0.4999, 0.5, 0.7499, 0.75, 1.0], dtype=torch.float64)
    groups = assign_groups(scores, split)
    assert groups.dtype == torch.int64
    assert groups.tolist() == [4, 4, 3, 3, 2, 2, 1, 1]
    assert assign_groups(scores.numpy(), split).tolist() == [4, 4, 3, 3, 2, 2, 1, 1]


def test_assign_groups_on_a_real_split_with_values_on_the_boundaries():
    split = otsu_split(_bimodal(5000, 9))
    lo, t, up = split.lower_mean, split.threshold, split.upper_mean
    below = np.nextafter
    values = [below(lo, 0.0), lo, below(t, 0.0), t, below(up, 0.0), up]
    assert assign_groups(torch.tensor(values, dtype=torch.float64), split).tolist() == [4, 3, 3, 2, 2, 1]
    # float32 scores are compared in float32 (as in the official code): float32(t) counts as >= t
    f32 = torch.tensor([lo, t, up], dtype=torch.float32)
    assert assign_groups(f32, split).tolist() == [3, 2, 1]


def test_assign_groups_matches_loop_on_random_scores():
    scores = _bimodal(3000, 10)
    split = otsu_split(scores)

    def group(p):
        if p >= split.upper_mean:
            return 1
        if p >= split.threshold:
            return 2
        if p >= split.lower_mean:
            return 3
        return 4

    groups = assign_groups(torch.tensor(scores), split)
    assert groups.tolist() == [group(p) for p in scores.tolist()]
    assert set(groups.unique().tolist()) == {1, 2, 3, 4}


def test_group_alpha():
    groups = torch.tensor([1, 2, 3, 4, 4, 1])
    alpha = group_alpha(groups)
    assert alpha.dtype == torch.float32
    torch.testing.assert_close(alpha, torch.tensor([0.30, 0.45, 0.55, 0.70, 0.70, 0.30]))
    torch.testing.assert_close(group_alpha(groups, (0.0, 0.1, 0.2, 0.3)),
                               torch.tensor([0.0, 0.1, 0.2, 0.3, 0.3, 0.0]))
    for bad in (torch.tensor([0, 1]), torch.tensor([5]), torch.tensor([1.0])):
        with pytest.raises(ValueError):
            group_alpha(bad)
    with pytest.raises(ValueError):
        group_alpha(groups, (0.3, 0.45, 0.55, 1.7))


@pytest.mark.parametrize("device", DEVICES)
def test_groups_and_alpha_on_device(device):
    scores = torch.tensor(_bimodal(2000, 11), device=device)
    split = otsu_split(scores)
    groups = assign_groups(scores, split)
    assert groups.device.type == device
    alpha = group_alpha(groups)
    assert alpha.device.type == device
    expected = torch.tensor(GROUP_ALPHAS)[groups.cpu() - 1]
    torch.testing.assert_close(alpha.cpu(), expected)


# --------------------------------------------------------------------------------------------
# detection
# --------------------------------------------------------------------------------------------
def test_detect_is_split_groups_and_masks():
    scores = _bimodal(4000, 12)
    det = detect(scores)
    assert isinstance(det, Detection)
    split = otsu_split(scores)
    assert det.split == split
    assert det.groups.dtype == np.int64 and det.groups.shape == scores.shape
    # independent of assign_groups: the group rule written out
    expected = np.select([scores >= split.upper_mean, scores >= split.threshold, scores >= split.lower_mean],
                         [1, 2, 3], 4)
    np.testing.assert_array_equal(det.groups, expected)
    np.testing.assert_array_equal(det.label_issues, expected == 4)
    np.testing.assert_array_equal(det.below_threshold, expected >= 3)  # G3 + G4 lie below the threshold
    assert det.label_issues.dtype == bool and det.below_threshold.dtype == bool
    assert det.estimated_noise_rate == pytest.approx(float(np.mean(scores < split.threshold)))
    assert 0.0 < det.label_issues.mean() < det.estimated_noise_rate < 1.0


def test_detect_options_are_passed_on():
    scores = _bimodal(3000, 13)
    classic = detect(scores, bins=100, criterion="classic", noisy_groups=(3, 4))
    assert classic.split == otsu_split(scores, bins=100, criterion="classic")
    np.testing.assert_array_equal(classic.label_issues, classic.below_threshold)
    np.testing.assert_array_equal(detect(scores, noisy_groups=3).label_issues, detect(scores).groups == 3)


def test_detect_compares_in_the_scores_dtype_and_accepts_tensors():
    scores = _bimodal(2000, 15).astype(np.float32)
    t = detect(scores).split.threshold
    edge = np.float32(t)
    assert float(edge) < t  # seed chosen so: in float64 the edge score lies below the threshold
    scores = np.append(scores, edge)
    det = detect(scores)
    assert det.split.threshold == t
    # compared in float32, as assign_groups does: the edge score is at the threshold (G2), not below it
    assert det.groups[-1] == 2 and not det.below_threshold[-1]
    np.testing.assert_array_equal(det.below_threshold, det.groups >= 3)
    on_tensor = detect(torch.from_numpy(scores))
    assert on_tensor.split == det.split
    for name in ("groups", "label_issues", "below_threshold"):
        np.testing.assert_array_equal(getattr(on_tensor, name), getattr(det, name))


def test_detect_rejects_bad_input():
    scores = _bimodal(500, 15)
    for bad in ((), (0,), (5,), (True,), (4, 7)):
        with pytest.raises(ValueError, match="noisy_groups"):
            detect(scores, noisy_groups=bad)
    with pytest.raises(ValueError, match="NaN"):
        detect(np.array([0.1, np.nan, 0.9]))
    with pytest.raises(ValueError, match="criterion"):
        detect(scores, criterion="fisher")
