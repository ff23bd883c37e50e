"""Time whole phase-1 epochs of the `cnn` profile: the number its speed target is about.

Claim (measured on the project's 2-core AMD EPYC, see benchmarks/README.md): one phase-1 epoch of the `cnn`
profile (teacher and student trained on 45,000 images, then all 50,000 training images scored, plus the validation
and test passes) takes the time in the table below with both cores and nothing else running.

Each variant trains BKD with the `cnn` profile for ``--epochs`` epochs (phase 1 only: the tipping rule needs six
epochs) on ``--split``, in a fresh temporary run folder, one variant after another in this process, and reports
every epoch's wall time as the trainer records it (``epoch_time`` of the run's history). The first epoch of a
compiled variant includes the compilation; the last epoch is the steady one. Variants:

- ``fp32``: the profile as it is on a CPU (``precision="auto"``);
- ``bf16``: ``precision="bf16"`` (bfloat16 autocast; fast on CPUs with AVX512-BF16 or AMX);
- ``fp32+compile`` and ``bf16+compile``: the same with ``compile=True`` (``torch.compile`` of both networks).

Usage::

    BKD_DATA_DIR=... python benchmarks/cnn_epoch.py --epochs 2 --variants fp32 bf16 fp32+compile
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "fp32": {},
    "bf16": {"precision": "bf16"},
    "fp32+compile": {"compile": True},
    "bf16+compile": {"precision": "bf16", "compile": True},
}


def load_average() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # not on every platform
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="worst")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per variant (at most 5: phase 1 only)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["fp32", "bf16"])
    parser.add_argument("--train-size", type=int, default=None,
                        help="a random training subset, for a quick check (the target is about all 50,000 images)")
    parser.add_argument("--synthetic", type=int, default=None, metavar="N",
                        help="N generated training images instead of CIFAR-10 (checks the script; times nothing real)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: every core)")
    args = parser.parse_args()
    if not 1 <= args.epochs <= 5:
        parser.error(f"--epochs {args.epochs}: give 1 to 5, so that every timed epoch is a phase-1 epoch")

    import torch

    from bkd_core.config import get_profile
    from bkd_core.batch.runner import cpu_model
    from bkd_core.data import load_cifar_n
    from bkd_core.synthetic import make_synthetic_cifar_n
    from bkd_core.train import train_bkd

    torch.set_num_threads(args.threads)
    data = (make_synthetic_cifar_n(n_train=args.synthetic, n_test=max(args.synthetic // 4, 10))
            if args.synthetic else load_cifar_n("cifar10", args.split))
    print(f"machine: {os.cpu_count()} cores ({cpu_model() or platform.processor()}), torch {torch.__version__}, "
          f"{args.threads} threads; split {data.split}, {args.train_size or 'all'} training images, "
          f"{args.epochs} epochs per variant")
    print("| variant | epoch times (s) | last epoch (s) | run with set-up (s) | load average before -> after |")
    print("| --- | --- | ---: | ---: | --- |")
    for name in args.variants:
        config = get_profile("cnn", epochs=args.epochs, train_size=args.train_size, **VARIANTS[name])
        before = load_average()
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="bkd-cnn-epoch-") as tmp:
            result = train_bkd(data, config, Path(tmp) / "run", progress=False)
            times = [float(t) for t in result.history["epoch_time"]]
        print(f"| {name} | {', '.join(f'{t:.1f}' for t in times)} | {times[-1]:.1f} | "
              f"{time.perf_counter() - started:.0f} | {before} -> {load_average()} |", flush=True)


if __name__ == "__main__":
    main()
