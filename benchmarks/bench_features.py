#!/usr/bin/env python
"""Label-free features (``bkd_core.features``): extraction time and memory, and how well a linear
classifier and the MLP do with them on the *clean* CIFAR-10 labels.

Measured, in one process:

1. extraction of the train and test features with the given settings (wall time, CPU time,
   peak RSS of the process: ``VmHWM``, which includes ``import torch`` and the images);
2. a linear classifier (``build_model("mlp", 10, ())``) and the MLP (widths 512-512) trained on the
   clean labels of all training images with BKD's optimiser (SGD lr 0.02, momentum 0.9, weight
   decay 5e-4, batch 128, constant learning rate), test accuracy after every epoch (last and best
   reported; the last is the honest number, the best is the optimistic one);
3. the time of one BKD-shaped epoch over 45,000 vectors: teacher and student MLPs, forward and
   backward of both, one SGD step over both, batch 128; plus scoring all 50,000 vectors in eval
   mode (what the trainer does every phase-1 epoch).

Usage (from the repository root)::

    BKD_DATA_DIR=/work/data .venv/bin/python benchmarks/bench_features.py --threads 1
    BKD_DATA_DIR=/work/data .venv/bin/python benchmarks/bench_features.py --threads 2 --skip-classifiers
    BKD_DATA_DIR=/work/data .venv/bin/python benchmarks/bench_features.py --set n_atoms=1024 pool_grid=3

``--set`` overrides fields of :class:`~bkd_core.features.PatchFeatureSettings`. ``--train-size``
and ``--test-size`` take the first images only (quick comparisons; the README's numbers use all).
``--cache DIR`` keeps the features with :func:`~bkd_core.features.cached_features` and reuses them
on the next run (then the time shown is the time to read them).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def train_classifier(xtr, ytr, xte, yte, widths, *, epochs, seed=0, batch_norm=False):
    """Test accuracy after each epoch of a ``build_model("mlp", ...)`` with BKD's optimiser."""
    import torch
    import torch.nn.functional as F

    from bkd_core.models import build_model

    torch.manual_seed(seed)
    net = build_model("mlp", 10, widths, in_features=xtr.shape[1], batch_norm=batch_norm)
    opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    xtr, xte = torch.from_numpy(xtr), torch.from_numpy(xte)
    ytr, yte = torch.from_numpy(ytr).long(), torch.from_numpy(yte).long()
    generator = torch.Generator().manual_seed(seed)
    accuracies = []
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(xtr), generator=generator).split(128):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(xtr[idx]), ytr[idx]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            accuracies.append((net(xte).argmax(1) == yte).float().mean().item())
    return accuracies


def pair_epoch_seconds(dim: int, *, n_train: int = 45_000, n_score: int = 50_000, repeats: int = 2):
    """(train epoch, scoring pass) seconds of a teacher+student MLP pair over random vectors."""
    import torch
    import torch.nn.functional as F

    from bkd_core.method import agreement_probability, blind_distillation_loss
    from bkd_core.models import build_model

    torch.manual_seed(0)
    teacher = build_model("mlp", 10, (512, 512), in_features=dim)
    student = build_model("mlp", 10, (512, 512), in_features=dim)
    opt = torch.optim.SGD([*teacher.parameters(), *student.parameters()], lr=0.02, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(n_score, dim)
    y = torch.randint(0, 10, (n_score,))
    train_times, score_times = [], []
    for _ in range(repeats):
        teacher.train(), student.train()
        start = time.perf_counter()
        for idx in torch.randperm(n_train).split(128):
            zt, zs = teacher(x[idx]), student(x[idx])
            loss = F.cross_entropy(zt, y[idx]) + blind_distillation_loss(zt, zs, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        train_times.append(time.perf_counter() - start)
        teacher.eval(), student.eval()
        start = time.perf_counter()
        with torch.no_grad():
            for idx in torch.arange(n_score).split(1024):
                agreement_probability(teacher(x[idx]), student(x[idx]))
        score_times.append(time.perf_counter() - start)
    return min(train_times), min(score_times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="PatchFeatureSettings overrides, e.g. n_atoms=1024 pool_grid=3")
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--test-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=30, help="classifier epochs (default 30)")
    parser.add_argument("--skip-classifiers", action="store_true")
    parser.add_argument("--skip-epoch", action="store_true", help="skip the MLP pair epoch timing")
    parser.add_argument("--cache", default=None, help="feature cache folder (reuse cached features)")
    parser.add_argument("--data-dir", default=None, help="data folder (default $BKD_DATA_DIR)")
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sys.path.insert(0, str(ROOT))
    import bkd_core  # noqa: F401  (first: it sets OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from bkd_core.data import load_cifar_n
    from bkd_core.config import parse_assignments
    from bkd_core.features import PatchFeatureSettings, cached_features, extract_features

    try:
        changes = parse_assignments(args.set, fields=PatchFeatureSettings)
    except ValueError as exc:
        parser.error(str(exc))
    settings = dataclasses.replace(PatchFeatureSettings(), **changes)
    data = load_cifar_n("cifar10", "clean", args.data_dir)
    ntr = args.train_size or len(data.train_images)
    nte = args.test_size or len(data.test_images)
    xtr_img, ytr = data.train_images[:ntr], data.clean_labels[:ntr]
    xte_img, yte = data.test_images[:nte], data.test_labels[:nte]
    rss_before = _peak_rss_mib()
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    from_cache = False
    if args.cache:
        from bkd_core.features import feature_cache_path

        from_cache = feature_cache_path((xtr_img, xte_img), settings=settings, root=args.cache).is_file()
        wall, cpu = time.perf_counter(), time.process_time()
        train, test = cached_features((xtr_img, xte_img), settings=settings, root=args.cache)
    else:
        train, test = extract_features(xtr_img, xte_img, settings=settings)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = _peak_rss_mib()
    load_after = os.getloadavg()[0]

    rows = [("machine",
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"),
            ("threads", str(args.threads)),
            ("load average (1 min) before / after extraction", f"{load:.1f} / {load_after:.1f}"),
            ("images (train + test)", f"{ntr:,} + {nte:,}"),
            ("settings", ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(settings).items())),
            ("pooled values per image / output dim D", f"{settings.pooled_dim:,} / {train.shape[1]}"),
            ("extraction wall / CPU time" + (" (read from the cache)" if from_cache else ""),
             f"{wall:.1f} s / {cpu:.1f} s"),
            ("peak RSS before / after extraction", f"{rss_before:.0f} MiB / {peak:.0f} MiB")]
    if not args.skip_classifiers:
        for name, widths in (("linear", ()), ("MLP 512-512", (512, 512))):
            start = time.perf_counter()
            acc = train_classifier(train, ytr, test, yte, widths, epochs=args.epochs)
            rows.append((f"{name}: test accuracy last / best of {args.epochs} epochs",
                         f"{100 * acc[-1]:.2f}% / {100 * max(acc):.2f}% (epoch {int(np.argmax(acc)) + 1}); "
                         f"{time.perf_counter() - start:.0f} s"))
    if not args.skip_epoch:
        train_s, score_s = pair_epoch_seconds(train.shape[1])
        rows.append(("teacher+student MLP epoch over 45,000 vectors / scoring 50,000",
                     f"{train_s:.2f} s / {score_s:.2f} s"))
    width = max(len(k) for k, _ in rows)
    print(f"| {'quantity'.ljust(width)} | value |\n| {'-' * width} | --- |")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
