"""Tests of bkd_core.augment against references built from torch.nn.functional.pad, slicing and flip.

The official CIFAR-10 pipeline (blind_knowledge_dist_training.py) flips, then takes a 32x32 random crop of
the 4-pixel *reflect*-padded image; CIFAR-100 takes the crop of the *zero*-padded image, then flips.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bkd_core.augment import (
    NORMALIZATION,
    OFFICIAL_AUGMENT,
    AugmentSpec,
    Normalizer,
    augment_batch,
    flip_and_crop,
    ordered_batches,
    shuffled_batches,
    to_device_images,
)


CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")],
)
DEVICES = ["cpu", CUDA]
SPECS = [pytest.param(OFFICIAL_AUGMENT["cifar10"], id="cifar10"),
         pytest.param(OFFICIAL_AUGMENT["cifar100"], id="cifar100")]


def _images(b: int, h: int = 32, w: int = 32, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8).to(device)


def _reference(images: torch.Tensor, spec: AugmentSpec, dy, dx, flip) -> torch.Tensor:
    """One image at a time: F.pad (reflect or zeros) + slicing + torch.flip, in the spec's order."""
    _, _, h, w = images.shape
    p = spec.crop_padding
    out = []
    for i in range(images.shape[0]):
        img = images[i : i + 1].double()  # reflect padding needs a floating dtype

        def do_flip(t: torch.Tensor) -> torch.Tensor:
            return t.flip(-1) if flip is not None and bool(flip[i]) else t

        def pad_crop(t: torch.Tensor) -> torch.Tensor:
            if spec.pad_mode == "reflect":
                padded = F.pad(t, (p, p, p, p), mode="reflect")
            else:
                padded = F.pad(t, (p, p, p, p), mode="constant", value=0.0)
            y, x = int(dy[i]), int(dx[i])
            return padded[..., y : y + h, x : x + w]

        t = pad_crop(do_flip(img)) if spec.order == "flip_crop" else do_flip(pad_crop(img))
        out.append(t[0].round().to(torch.uint8))
    return torch.stack(out)


def test_official_specs_and_constants_match_method_md():
    c10, c100 = OFFICIAL_AUGMENT["cifar10"], OFFICIAL_AUGMENT["cifar100"]
    assert (c10.flip, c10.crop_padding, c10.pad_mode, c10.order) == (True, 4, "reflect", "flip_crop")
    assert (c100.flip, c100.crop_padding, c100.pad_mode, c100.order) == (True, 4, "constant", "crop_flip")
    assert NORMALIZATION["cifar10"] == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert NORMALIZATION["cifar100"] == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spec", SPECS)
def test_flip_and_crop_matches_pad_slice_flip_reference(spec, device):
    b = 24
    images = _images(b, seed=1, device=device)
    g = torch.Generator().manual_seed(2)
    dy = torch.randint(0, 9, (b,), generator=g)
    dx = torch.randint(0, 9, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    # every extreme combination (0 and 8 on both axes, with and without flip) is in the batch
    corners = [(y, x, f) for y in (0, 8) for x in (0, 8) for f in (False, True)]
    for i, (y, x, f) in enumerate(corners):
        dy[i], dx[i], flip[i] = y, x, f
    out = flip_and_crop(images, spec, dy.to(device), dx.to(device), flip.to(device))
    assert out.dtype == torch.uint8 and out.shape == images.shape and out.device == images.device
    expected = _reference(images.cpu(), spec, dy, dx, flip)
    assert torch.equal(out.cpu(), expected)


@pytest.mark.parametrize("spec", SPECS)
def test_flip_and_crop_without_flip_and_on_rectangular_images(spec):
    # rectangular images catch a swapped height/width; flip=None means "never flip"
    b, h, w = 20, 10, 14
    images = _images(b, h, w, seed=3)
    g = torch.Generator().manual_seed(4)
    dy = torch.randint(0, 9, (b,), generator=g)
    dx = torch.randint(0, 9, (b,), generator=g)
    dy[0], dx[0], dy[1], dx[1] = 0, 8, 8, 0
    assert torch.equal(flip_and_crop(images, spec, dy, dx, None), _reference(images, spec, dy, dx, None))
    flip = torch.ones(b, dtype=torch.bool)
    assert torch.equal(flip_and_crop(images, spec, dy, dx, flip), _reference(images, spec, dy, dx, flip))


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
@pytest.mark.parametrize("order", ["flip_crop", "crop_flip"])
def test_flip_and_crop_other_padding(pad_mode, order):
    spec = AugmentSpec(True, 2, pad_mode, order)
    b = 30
    images = _images(b, seed=5)
    g = torch.Generator().manual_seed(6)
    dy, dx = torch.randint(0, 5, (b,), generator=g), torch.randint(0, 5, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    assert torch.equal(flip_and_crop(images, spec, dy, dx, flip), _reference(images, spec, dy, dx, flip))


def test_order_matters_so_the_reference_checks_it():
    # flip-then-crop and crop-then-flip differ for an off-centre crop of a flipped image
    images = _images(4, seed=7)
    dy = torch.tensor([4, 4, 0, 8])
    dx = torch.tensor([0, 8, 3, 5])
    flip = torch.ones(4, dtype=torch.bool)
    a = flip_and_crop(images, AugmentSpec(True, 4, "constant", "flip_crop"), dy, dx, flip)
    b = flip_and_crop(images, AugmentSpec(True, 4, "constant", "crop_flip"), dy, dx, flip)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("spec", SPECS)
def test_flip_and_crop_does_not_modify_its_input(spec):
    images = _images(8, seed=8)
    before = images.clone()
    flip_and_crop(images, spec, torch.full((8,), 8), torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.bool))
    assert torch.equal(images, before)


def test_no_flip_zero_padding_offset_four_is_identity():
    images = _images(16, seed=9)
    spec = AugmentSpec(flip=False, crop_padding=4, pad_mode="constant", order="crop_flip")
    four = torch.full((16,), 4, dtype=torch.long)
    assert torch.equal(flip_and_crop(images, spec, four, four, None), images)
    # zero padding width and no flip: augment_batch must return the images unchanged
    spec0 = AugmentSpec(flip=False, crop_padding=0, pad_mode="constant", order="flip_crop")
    assert torch.equal(augment_batch(images, spec0, torch.Generator().manual_seed(0)), images)
    # and flipping everything at offset 4 is a plain horizontal flip
    flip = torch.ones(16, dtype=torch.bool)
    for s in (OFFICIAL_AUGMENT["cifar10"], OFFICIAL_AUGMENT["cifar100"]):
        assert torch.equal(flip_and_crop(images, s, four, four, flip), images.flip(-1))


@pytest.mark.parametrize("spec", SPECS)
def test_augment_batch_is_seeded(spec):
    images = _images(64, seed=10)
    a = augment_batch(images, spec, torch.Generator().manual_seed(123))
    b = augment_batch(images, spec, torch.Generator().manual_seed(123))
    c = augment_batch(images, spec, torch.Generator().manual_seed(124))
    assert a.dtype == torch.uint8 and a.shape == images.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # the generator advances: two calls on one generator differ
    gen = torch.Generator().manual_seed(123)
    assert not torch.equal(augment_batch(images, spec, gen), augment_batch(images, spec, gen))


def _coordinate_images(b: int) -> torch.Tensor:
    """Channel 0 = row index, channel 1 = column index, channel 2 = 255 (uint8 [b, 3, 32, 32])."""
    rows = torch.arange(32, dtype=torch.uint8)[:, None].expand(32, 32)
    cols = torch.arange(32, dtype=torch.uint8)[None, :].expand(32, 32)
    one = torch.stack([rows, cols, torch.full((32, 32), 255, dtype=torch.uint8)])
    return one.expand(b, 3, 32, 32).contiguous()


@pytest.mark.parametrize("spec", SPECS)
def test_augment_batch_offsets_uniform_and_flips_half(spec):
    """Recover each image's crop offsets and flip from the output (independent of the draw order)."""
    b, p = 3600, 4
    out = augment_batch(_coordinate_images(b), spec, torch.Generator().manual_seed(11)).long()
    centre_row = out[:, 0, 16, 16]  # source row of output row 16 = 16 + dy - p (never padded)
    dy = centre_row - (16 - p)
    step = out[:, 1, 16, 17] - out[:, 1, 16, 16]  # +1 unflipped, -1 flipped
    assert set(step.tolist()) <= {-1, 1}
    flipped = step == -1
    src_col = out[:, 1, 16, 16]
    if spec.order == "crop_flip":  # output col j <- padded col (31 - j) + dx
        dx = torch.where(flipped, src_col - (31 - 16 - p), src_col - (16 - p))
    else:  # flip first: output col j <- 31 - (j + dx - p)
        dx = torch.where(flipped, (31 - src_col) - (16 - p), src_col - (16 - p))
    for d in (dy, dx):
        assert d.min() >= 0 and d.max() <= 2 * p
        counts = torch.bincount(d, minlength=9)
        # expected 400 each, sd ~19: 250..550 is far beyond chance but catches a wrong range/bias
        assert counts.min() >= 250 and counts.max() <= 550, counts.tolist()
    assert 0.45 < flipped.float().mean().item() < 0.55
    # dy, dx and flip are drawn independently, not shared
    assert 0.8 < (dy != dx).float().mean().item() < 0.98
    assert 0.35 < (flipped & (dy < 4)).float().mean().item() / max((dy < 4).float().mean().item(), 1e-9) < 0.65
    # zero padding: black pixels appear exactly where the crop reaches the padding
    if spec.pad_mode == "constant":
        corner_black = out[:, 2, 0, 0] == 0
        assert corner_black.any() and not corner_black.all()
    else:
        assert (out[:, 2] == 255).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_normalizer_matches_formula(dataset, channels_last, device):
    mean, std = NORMALIZATION[dataset]
    images = _images(5, seed=12, device=device)
    images[0] = 0
    images[1] = 255
    out = Normalizer(mean, std, device, channels_last=channels_last)(images)
    assert out.dtype == torch.float32 and out.shape == images.shape and out.device == images.device
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    expected = (images.cpu().double() / 255.0 - m) / s
    torch.testing.assert_close(out.cpu().double(), expected, atol=1e-6, rtol=0)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert out.stride()[1] == 1
    else:
        assert out.is_contiguous()
        assert out.stride()[-1] == 1 and out.stride()[1] == 32 * 32


def test_to_device_images_layout_and_noncontiguous_input():
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    t = to_device_images(hwc, "cpu")
    assert t.dtype == torch.uint8 and t.shape == (6, 3, 32, 32) and t.is_contiguous()
    assert np.array_equal(t.numpy(), hwc.transpose(0, 3, 1, 2))
    view = hwc[::-1, :, ::-1]  # a negative-stride view
    assert np.array_equal(to_device_images(view, "cpu").numpy(), view.transpose(0, 3, 1, 2))


@pytest.mark.parametrize(
    "array, fragment",
    [
        (np.zeros((2, 32, 32, 3), dtype=np.float32), "float32"),
        (np.zeros((2, 32, 32, 3), dtype=np.int64), "int64"),
        (np.zeros((32, 32, 3), dtype=np.uint8), "(32, 32, 3)"),
        (np.zeros((2, 3, 32, 32), dtype=np.uint8), "(2, 3, 32, 32)"),  # CHW instead of HWC
        (np.zeros((2, 32, 32, 1), dtype=np.uint8), "(2, 32, 32, 1)"),
    ],
)
def test_to_device_images_rejects_bad_input_with_clear_message(array, fragment):
    with pytest.raises(ValueError) as exc:
        to_device_images(array, "cpu")
    message = str(exc.value)
    assert "uint8" in message and "[N, H, W, 3]" in message and fragment in message


@pytest.mark.parametrize("n, batch_size", [(1000, 128), (1024, 128), (5, 128), (1, 1), (7, 3)])
def test_shuffled_batches_cover_every_index_once(n, batch_size):
    batches = shuffled_batches(n, batch_size, torch.Generator().manual_seed(0), "cpu")
    sizes = [len(b) for b in batches]
    assert len(batches) == -(-n // batch_size)
    assert all(s == batch_size for s in sizes[:-1]) and 1 <= sizes[-1] <= batch_size
    assert sum(sizes) == n
    allidx = torch.cat(batches)
    assert allidx.dtype == torch.int64
    assert torch.equal(allidx.sort().values, torch.arange(n))
    assert torch.equal(torch.cat(ordered_batches(n, batch_size, "cpu")), torch.arange(n))
    assert [len(b) for b in ordered_batches(n, batch_size, "cpu")] == sizes


def test_shuffled_batches_seeded_and_shuffled():
    a = torch.cat(shuffled_batches(500, 64, torch.Generator().manual_seed(1), "cpu"))
    b = torch.cat(shuffled_batches(500, 64, torch.Generator().manual_seed(1), "cpu"))
    c = torch.cat(shuffled_batches(500, 64, torch.Generator().manual_seed(2), "cpu"))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, torch.arange(500))
