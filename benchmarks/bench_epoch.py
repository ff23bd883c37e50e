#!/usr/bin/env python
"""Throughput of a BKD training epoch: the official pipeline (reconstructed) vs. bkd_core's.

One run, one machine, side by side (issue 4). Both pipelines train the same network pair
(teacher + student, ``bkd_core.models.build_model``) with batch 128 and one SGD optimizer over
both networks, on the same images:

(a) ``official``: a reconstruction of the official code's pipeline, written from method.md (not
    copied): a CIFAR-10 ``Dataset`` that turns each uint8 HWC array into a PIL image with
    ``Image.fromarray`` (as ``torchvision.datasets.CIFAR10.__getitem__``) and applies
    ``Compose([RandomHorizontalFlip(), RandomCrop(32, 4, padding_mode="reflect"), ToTensor(),
    Normalize(mean, std)])``; a ``DataLoader(batch_size=128, shuffle=True, num_workers=<cores>)``
    (new worker processes every epoch, as there); fp32, NCHW; teacher and student forward passes
    separately; per batch the compensation loss (masked squared difference / (B*C - 1)), the
    agreement softmax, per-sample scores written into device containers by dataset index, the
    sum of the student's max probability, cross-entropy on the teacher, and one host
    synchronisation (``loss.item()``, as the official code's python-side loss accumulator).
(b) ``bkd_core``: ``bkd_core.train._BKDTrainer.train_epoch()`` itself (device-resident uint8
    images, batched flip/crop by index arithmetic, on-device normalization, channels_last, scores
    accumulated on the device, no host synchronisation inside the epoch), with augmentation on.

Runs are interleaved a, b, a, b, ... and the median is reported, so that load from other
processes on this shared machine affects both alike. Also reported: model FLOPs of one training
step (``torch.utils.flop_counter.FlopCounterMode``) turned into achieved FLOP/s, against this
machine's measured fp32 matmul peak; the peak RSS of a ``cpu``-profile run (in a subprocess);
optionally (``--profile``) a torch.profiler breakdown of one bkd_core epoch.

Usage (from the repository root)::

    BKD_DATA_DIR=/work/data .venv/bin/python benchmarks/bench_epoch.py --model small_cnn
    BKD_DATA_DIR=/work/data .venv/bin/python benchmarks/bench_epoch.py --model preresnet18
    BKD_DATA_DIR=/work/data .venv/bin/python benchmarks/bench_epoch.py --model small_cnn --profile --repeats 0

Without ``BKD_DATA_DIR`` the images are random uint8 (a note is printed); speed does not depend
on the pixel values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bkd_core.augment import NORMALIZATION  # noqa: E402
from bkd_core.config import get_profile  # noqa: E402
from bkd_core.data import NoisyCIFAR  # noqa: E402
from bkd_core.models import build_model  # noqa: E402


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def load_data(seed: int = 0) -> tuple[NoisyCIFAR, str]:
    """Real CIFAR-10N (worst) from $BKD_DATA_DIR, else random uint8 images of the same shape."""
    if os.environ.get("BKD_DATA_DIR"):
        from bkd_core.data import load_cifar_n

        return load_cifar_n("cifar10", "worst"), f"CIFAR-10N worst from {os.environ['BKD_DATA_DIR']}"
    print("NOTE: BKD_DATA_DIR is not set: using random uint8 images and labels (throughput does not "
          "depend on pixel values; set BKD_DATA_DIR=/path/to/data for real CIFAR-10N)", flush=True)
    rng = np.random.default_rng(seed)
    n, n_test = 50_000, 1_000
    clean = rng.integers(0, 10, n).astype(np.int64)
    noisy = np.where(rng.random(n) < 0.4, rng.integers(0, 10, n), clean).astype(np.int64)
    return NoisyCIFAR(
        train_images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), train_labels=noisy,
        clean_labels=clean, test_images=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        test_labels=rng.integers(0, 10, n_test).astype(np.int64), num_classes=10, dataset="cifar10",
        split="worst", indices=np.arange(n, dtype=np.int64)), "random uint8 images (BKD_DATA_DIR unset)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------
# (a) the official pipeline, reconstructed
# ------------------------------------------------------------------------------------------------
class OfficialCIFAR10Train(Dataset):
    """CIFAR-10 training set as torchvision's ``CIFAR10``: uint8 HWC arrays -> PIL -> transform.

    Returns ``(image, target, index)``: the official training loop needs each sample's dataset
    index to write its score into the per-sample containers.
    """

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.data = images_hwc  # uint8 [N, 32, 32, 3]
        self.targets = [int(t) for t in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        img, target = self.data[index], self.targets[index]
        img = Image.fromarray(img)  # as torchvision.datasets.CIFAR10.__getitem__
        img = self.transform(img)
        return img, target, index


def official_transform() -> Callable:
    from torchvision import transforms

    mean, std = NORMALIZATION["cifar10"]
    return transforms.Compose([
        transforms.RandomHorizontalFlip(),
        transforms.RandomCrop(32, padding=4, padding_mode="reflect"),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


class OfficialPipeline:
    """Teacher + student trained as in the official loop, fed by a PIL DataLoader."""

    def __init__(self, data: NoisyCIFAR, model: str, widths: tuple[int, int, int], batch_size: int,
                 workers: int, device: torch.device, seed: int = 0) -> None:
        self.device = device
        self.dataset = OfficialCIFAR10Train(data.train_images, data.train_labels, official_transform())
        self.batch_size, self.workers = batch_size, workers
        self.num_classes = data.num_classes
        torch.manual_seed(seed)
        self.teacher = build_model(model, self.num_classes, widths).to(device)
        self.student = build_model(model, self.num_classes, widths).to(device)
        params = list(self.teacher.parameters()) + list(self.student.parameters())
        self.optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=5e-4)
        n = len(self.dataset)
        # per-sample containers on the device, indexed by dataset index
        self.agreement = torch.zeros(n, device=device)
        self.teacher_p = torch.zeros(n, device=device)
        self.student_p = torch.zeros(n, device=device)

    def loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=True, num_workers=self.workers,
                          pin_memory=self.device.type == "cuda", drop_last=False)

    def step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One official training step; returns (loss, sum of the student's max probability) on the device."""
        b, c = x.shape[0], self.num_classes
        z_t = self.teacher(x)
        z_s = self.student(x)
        mask = 1.0 - F.one_hot(y, c).float()  # all classes except the given label
        compensation = (((z_t - z_s) ** 2) * mask).sum() / (b * c - 1)  # not detached (quirk 1)
        p_t = F.softmax(z_t, dim=1)
        p_s = F.softmax(z_s, dim=1)
        agree = p_t * p_s
        agree = agree / agree.sum(dim=1, keepdim=True)
        rows = torch.arange(b, device=x.device)
        self.agreement[idx] = agree[rows, y].detach()
        self.teacher_p[idx] = p_t[rows, y].detach()
        self.student_p[idx] = p_s[rows, y].detach()
        max_student = p_s.max(dim=1)[0].sum().detach()
        ce = F.cross_entropy(z_t, y)
        loss = ce + compensation
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss, max_student

    def run(self, n_images: int | None = None) -> int:
        """One epoch over the first ``n_images`` samples (all by default); returns images seen."""
        dataset = self.dataset if n_images is None else torch.utils.data.Subset(self.dataset, range(n_images))
        self.teacher.train()
        self.student.train()
        loss_sum, max_sum, seen = 0.0, torch.zeros((), device=self.device), 0
        for x, y, idx in self.loader(dataset):
            x, y, idx = (t.to(self.device, non_blocking=True) for t in (x, y, idx))
            loss, max_student = self.step(x, y, idx)
            loss_sum += loss.item() * x.shape[0]  # per-batch host synchronisation, as the official code
            max_sum += max_student
            seen += x.shape[0]
        _ = float(max_sum) / max(seen, 1)  # epoch statistic (mean max student probability)
        sync(self.device)
        return seen


# ------------------------------------------------------------------------------------------------
# (b) bkd_core's pipeline
# ------------------------------------------------------------------------------------------------
class BKDCorePipeline:
    """``_BKDTrainer.train_epoch()``, on a subset of ``n`` images with augmentation on."""

    def __init__(self, data: NoisyCIFAR, model: str, widths: tuple[int, int, int], batch_size: int,
                 run_dir: Path, device: str, seed: int = 0, **overrides: Any) -> None:
        from bkd_core.train import _BKDTrainer

        cfg = get_profile("cpu", model=model, model_widths=widths, batch_size=batch_size, train_size=None,
                          val_ratio=0.0, test_size=100, augment=True, seed=seed, device=device, **overrides)
        self.trainer = _BKDTrainer(data, cfg, run_dir, progress=False)
        self.device = self.trainer.device

    def run(self, n_images: int | None = None) -> int:
        t = self.trainer
        full = (t.train_rows, t.train_labels, t.n_train)
        if n_images is not None:  # warm-up on a prefix of the rows
            t.train_rows, t.train_labels, t.n_train = full[0][:n_images], full[1][:n_images], n_images
        try:
            for net in t.networks.values():
                net.train()
            out = t.train_epoch()
            _ = {k: v.float().cpu() for k, v in out.items()}  # what run() does at the epoch end
            sync(self.device)
            return t.n_train
        finally:
            t.train_rows, t.train_labels, t.n_train = full


# ------------------------------------------------------------------------------------------------
# FLOPs, peak, memory
# ------------------------------------------------------------------------------------------------
def step_flops(model: str, widths: tuple[int, int, int], batch_size: int, num_classes: int = 10) -> float:
    """Model FLOPs of one official training step (forward + backward of teacher and student)."""
    from torch.utils.flop_counter import FlopCounterMode

    data = NoisyCIFAR(
        train_images=np.zeros((batch_size, 32, 32, 3), np.uint8), train_labels=np.zeros(batch_size, np.int64),
        clean_labels=np.zeros(batch_size, np.int64), test_images=np.zeros((1, 32, 32, 3), np.uint8),
        test_labels=np.zeros(1, np.int64), num_classes=num_classes, dataset="cifar10", split="worst",
        indices=np.arange(batch_size, dtype=np.int64))
    pipe = OfficialPipeline(data, model, widths, batch_size, 0, torch.device("cpu"))
    x = torch.randn(batch_size, 3, 32, 32)
    y = torch.randint(0, num_classes, (batch_size,))
    counter = FlopCounterMode(display=False)
    with counter:
        pipe.step(x, y, torch.arange(batch_size))
    return float(counter.get_total_flops())


def matmul_peak(n: int = 2048, reps: int = 10, trials: int = 5) -> float:
    """Measured fp32 matmul FLOP/s (best of ``trials`` timings of ``reps`` n x n @ n x n products)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        torch.mm(a, b)
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def rss_child(epochs: int) -> None:
    """Run a ``cpu``-profile BKD training (``epochs`` epochs) and print peak RSS as one JSON line."""
    from bkd_core.train import train_bkd

    base = _status_kib("VmRSS")
    data, source = load_data()
    after_load = _status_kib("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:
        train_bkd(data, get_profile("cpu", epochs=epochs), tmp, progress=False)
    print(json.dumps({"vmhwm_kib": _status_kib("VmHWM"),
                      "maxrss_kib": __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss,
                      "rss_after_imports_kib": base, "rss_after_data_kib": after_load, "epochs": epochs,
                      "source": source}))


def measure_rss(epochs: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--rss-child", "--rss-epochs", str(epochs)],
                         capture_output=True, text=True, check=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# profile of one bkd_core epoch
# ------------------------------------------------------------------------------------------------
MODEL_OP_PREFIXES = (
    "aten::conv", "aten::_convolution", "aten::mkldnn_convolution", "aten::convolution_backward",
    "aten::_slow_conv2d", "aten::thnn_conv2d",
    "aten::batch_norm", "aten::_batch_norm", "aten::native_batch_norm", "aten::cudnn_batch_norm",
    "aten::relu", "aten::threshold_backward", "aten::max_pool2d", "aten::adaptive_max_pool2d",
    "aten::avg_pool2d", "aten::linear", "aten::addmm", "aten::mm", "aten::t", "aten::add_", "aten::add",
    "autograd::engine::evaluate_function: ConvolutionBackward", "autograd::engine::evaluate_function: NativeBatchNorm",
)


def profile_bkd_epoch(pipe: BKDCorePipeline, top: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    pipe.run()  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        pipe.run()
    averages = prof.key_averages()
    print(averages.table(sort_by="self_cpu_time_total", row_limit=top))
    total = sum(e.self_cpu_time_total for e in averages)
    groups: dict[str, float] = {}
    for e in averages:
        name = e.key
        if any(k in name for k in ("convolution", "conv2d", "Convolution", "mkldnn_conv")):
            g = "convolution (fwd+bwd)"
        elif "batch_norm" in name or "BatchNorm" in name:
            g = "batch norm (fwd+bwd)"
        elif any(k in name for k in ("relu", "threshold", "Relu", "Threshold", "clamp_min")):
            g = "relu (fwd+bwd)"
        elif "pool" in name or "Pool" in name:
            g = "pooling (fwd+bwd)"
        elif any(k in name for k in ("addmm", "aten::mm", "MmBackward", "AddmmBackward")):
            g = "linear layer"
        elif any(k in name for k in ("sgd", "Optimizer", "_foreach", "zero_grad")):
            g = "optimizer (SGD step, zero_grad)"
        elif any(k in name for k in ("index", "gather", "remainder", "where", "randint", "rand", "randperm",
                                     "permute", "IndexBackward")):
            g = "indexing / augmentation / RNG"
        elif any(k in name for k in ("copy_", "contiguous", "clone", "to_", "aten::to", "empty", "_to_copy")):
            g = "copies / layout conversion / allocation"
        else:
            g = "other (losses, softmax, elementwise, autograd bookkeeping)"
        groups[g] = groups.get(g, 0.0) + e.self_cpu_time_total
    print("\nself CPU time of one bkd_core epoch by category (torch.profiler, all threads summed):")
    print("| category | ms | share |\n| --- | ---: | ---: |")
    for g, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"| {g} | {t / 1e3:.1f} | {100 * t / total:.1f}% |")


def breakdown_bkd_epoch(pipe: BKDCorePipeline) -> dict[str, float]:
    """Wall time of one bkd_core epoch split by phase: the same calls as ``train_epoch``, timed one by one."""
    from bkd_core.augment import shuffled_batches
    from bkd_core.method import agreement_probability, blind_distillation_loss

    t = pipe.trainer
    cfg, dev = t.config, t.device
    times = {"augment + normalize": 0.0, "forward (2 nets)": 0.0, "losses": 0.0, "backward": 0.0,
             "optimizer step": 0.0, "score bookkeeping": 0.0}
    for net in t.networks.values():
        net.train()
    agree = torch.zeros(t.n_train, device=dev)
    clock = time.perf_counter
    for pos in shuffled_batches(t.n_train, cfg.batch_size, t.generator, dev):
        s0 = clock()
        x = t.batch_inputs(t.train_rows[pos], augment=True)
        y = t.train_labels[pos]
        s1 = clock()
        z_t = t.forward["teacher"](x)
        z_s = t.forward["student"](x)
        s2 = clock()
        comp = blind_distillation_loss(z_t, z_s, y)
        probs_s = z_s.softmax(1)
        loss = F.cross_entropy(z_t, y) + comp
        s3 = clock()
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        s4 = clock()
        t.optimizer.step()
        s5 = clock()
        with torch.no_grad():
            rows = torch.arange(len(y), device=dev)
            agree[pos] = agreement_probability(z_t, z_s)[rows, y]
            _ = probs_s.detach().max(1).values.sum()
        s6 = clock()
        for key, a, b in zip(times, (s0, s1, s2, s3, s4, s5), (s1, s2, s3, s4, s5, s6)):
            times[key] += b - a
    return times


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
def machine_description() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "?"
    import torchvision

    return {"nproc": str(os.cpu_count()), "cpu": cpu, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "torch_threads": str(torch.get_num_threads()),
            "python": platform.python_version(), "loadavg": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("small_cnn", "preresnet18"), default="small_cnn")
    parser.add_argument("--widths", type=int, nargs=3, default=(32, 64, 128), help="small_cnn widths")
    parser.add_argument("--images", type=int, default=None,
                        help="images per timed pass (default: 4000 = one epoch of the cpu profile's subset "
                             "for small_cnn; batches*batch_size for preresnet18)")
    parser.add_argument("--batches", type=int, default=10, help="preresnet18: timed batches per pass")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up batches per pipeline (untimed)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed passes per pipeline, interleaved a,b,a,b (default 3 small_cnn, 2 preresnet18)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers of (a)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-flops", action="store_true", help="skip FLOP count and matmul peak")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocess")
    parser.add_argument("--rss-epochs", type=int, default=3, help="epochs of the cpu-profile run measured for RSS")
    parser.add_argument("--profile", action="store_true", help="also profile one bkd_core epoch (torch.profiler)")
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.rss_child:
        rss_child(args.rss_epochs)
        return

    machine = machine_description()
    repeats = args.repeats if args.repeats is not None else (3 if args.model == "small_cnn" else 2)
    n_images = args.images or (4000 if args.model == "small_cnn" else args.batches * args.batch_size)
    warm = args.warmup * args.batch_size
    widths = tuple(args.widths)
    device = torch.device(args.device)
    print(f"machine: {machine}", flush=True)

    full, source = load_data()
    data = full.subset(n_images, seed=0)
    print(f"data: {source}; {len(data.train_labels)} training images per pass, model {args.model}, "
          f"batch {args.batch_size}, official workers {args.workers}, {repeats} interleaved repeats", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        pipes: dict[str, Any] = {
            "official": OfficialPipeline(data, args.model, widths, args.batch_size, args.workers, device),
            "bkd_core": BKDCorePipeline(data, args.model, widths, args.batch_size, Path(tmp) / "run", args.device),
        }
        for name, pipe in pipes.items():  # warm-up: allocator, oneDNN primitive caches, worker start-up
            start = time.perf_counter()
            pipe.run(min(warm, n_images))
            print(f"warm-up {name}: {min(warm, n_images)} images in {time.perf_counter() - start:.1f} s", flush=True)

        speeds: dict[str, list[float]] = {name: [] for name in pipes}
        for r in range(repeats):
            for name, pipe in pipes.items():
                start = time.perf_counter()
                seen = pipe.run()
                elapsed = time.perf_counter() - start
                speeds[name].append(seen / elapsed)
                print(f"repeat {r + 1}/{repeats} {name}: {seen} images in {elapsed:.2f} s = {seen / elapsed:.1f} img/s",
                      flush=True)

        breakdown = None
        if args.profile:
            print("\n## profile of one bkd_core epoch", flush=True)
            profile_bkd_epoch(pipes["bkd_core"], args.profile_rows)
            breakdown = breakdown_bkd_epoch(pipes["bkd_core"])
            total = sum(breakdown.values())
            print(f"\nwall time of one bkd_core epoch by phase (same calls as train_epoch, timed one by one; "
                  f"{n_images} images, {total:.2f} s):")
            print("| phase | s | share |\n| --- | ---: | ---: |")
            for k, v in breakdown.items():
                print(f"| {k} | {v:.3f} | {100 * v / total:.1f}% |")

    flops = peak = None
    if not args.no_flops:
        flops = step_flops(args.model, widths, args.batch_size)
        peak = matmul_peak()
    rss = None if args.no_rss else measure_rss(args.rss_epochs)

    med = {name: statistics.median(v) for name, v in speeds.items()} if repeats else {}
    machine_after = machine_description()["loadavg"]
    print(f"\n## {args.model}: {n_images} images per pass, batch {args.batch_size}, median of {repeats} "
          f"interleaved passes")
    print(f"machine: {machine['nproc']} cores ({machine['cpu']}), torch {machine['torch']}, "
          f"{machine['torch_threads']} torch threads; load average before/after: {machine['loadavg']} / {machine_after}")
    print(f"data: {source}\n")
    print("| pipeline | images/s (median) | all passes | achieved GFLOP/s | % of fp32 matmul peak |")
    print("| --- | ---: | --- | ---: | ---: |")
    for name in pipes:
        if not repeats:
            break
        row = f"| {name} | {med[name]:.1f} | {', '.join(f'{s:.1f}' for s in speeds[name])} |"
        if flops:
            achieved = flops / args.batch_size * med[name]
            row += f" {achieved / 1e9:.1f} | {100 * achieved / peak:.1f}% |"
        else:
            row += " | |"
        print(row)
    if flops:
        print(f"\nmodel FLOPs of one training step (forward + backward, teacher + student, batch {args.batch_size}): "
              f"{flops / 1e9:.2f} GFLOP = {flops / args.batch_size / 1e6:.1f} MFLOP per image; "
              f"measured fp32 matmul peak (2048^3 torch.mm): {peak / 1e9:.1f} GFLOP/s")
    if rss:
        print(f"peak RSS of a cpu-profile run ({rss['epochs']} epochs, subprocess): VmHWM {rss['vmhwm_kib'] / 1024:.0f} MiB "
              f"(after imports {rss['rss_after_imports_kib'] / 1024:.0f} MiB, after loading the data "
              f"{rss['rss_after_data_kib'] / 1024:.0f} MiB)")
    if repeats:
        ratio = med["bkd_core"] / med["official"]
        print(f"\nspeed-up bkd_core / official ({args.model}): {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "model": args.model, "images": n_images,
                                         "speeds": speeds, "median": med, "step_flops": flops, "matmul_peak": peak,
                                         "rss": rss, "breakdown": breakdown, "source": source}, indent=2))


if __name__ == "__main__":
    main()
