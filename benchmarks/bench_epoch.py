#!/usr/bin/env python
"""Throughput of a BKD training epoch: the official pipeline (reconstructed) vs. bkd_core's.

One run, one machine, side by side. Both pipelines train the same network pair
(teacher + student, ``bkd_core/models.py``) with batch 128 and one SGD optimizer over both
networks (lr 0.02, momentum 0.9, weight decay 5e-4), on the same images:

(a) ``official``: the reconstruction of the official code's pipeline in ``official_pipeline.py``
    (written from a description of it, not copied): a PIL-based CIFAR-10 ``Dataset`` with torchvision's
    flip/reflect-crop/normalize transforms, ``DataLoader(batch_size=128, shuffle=True,
    num_workers=<cores>)`` with fresh workers every epoch, fp32 NCHW, the official per-batch work
    and one host synchronisation (``loss.item()``) per batch; see that module's docstring.
(b) ``bkd_core``: ``bkd_core.train.BKDTrainer.train_epoch()`` itself, the loop of public
    ``train_step`` calls every run uses (device-resident uint8
    images, batched flip/crop by index arithmetic, on-device normalization, channels_last, scores
    accumulated on the device, no host synchronisation inside the epoch), augmentation on.

Each pipeline runs in its own worker subprocess (so each has its own process environment, thread
pools and allocator; the official worker does not import the ``bkd_core`` package, only
``bkd_core/models.py`` by path, so nothing bkd_core does at import time leaks into it). The parent
interleaves the timed passes (a, b, a, b, ...) and reports the median, so that load from other
processes on a shared machine affects both alike. ``--variant LABEL=PIPELINE:KEY=VALUE,...`` adds
pipelines run with extra environment variables (e.g. ``OMP_WAIT_POLICY=PASSIVE``); ``--passive``
adds that variant of both pipelines.

On CUDA (``--device cuda``) the comparison is like for like: both pipelines run the precision the
``paper`` profile resolves to there (bf16 autocast, or fp16 with a gradient scaler on GPUs without
bf16) and channels_last networks; two more rows show the official pipeline as published (fp32, NCHW)
and bkd_core in fp32, i.e. what precision adds. A pass is a full epoch of the ``paper`` profile's
45,000 training rows by default (short passes are dominated by the DataLoader's worker start-up).
``BENCH_PRECISION=fp32|bf16|fp16`` and ``BENCH_CHANNELS_LAST=0|1`` set a variant's precision and layout,
``BENCH_COMPILE=1`` compiles bkd_core's networks (``torch.compile``).

Also reported: model FLOPs of one training step (``torch.utils.flop_counter.FlopCounterMode``)
turned into achieved FLOP/s, against the measured matmul peak of the device the passes ran on (on
CUDA in the pass's precision, an 8192^3 product); the peak RSS of a
run of :data:`SMALL_CNN` (own subprocess); with ``--profile`` a torch.profiler table and a per-phase
wall-time breakdown of one bkd_core epoch (``train_epoch`` itself, its calls wrapped with timers).
``tests/test_bench_epoch.py`` runs one tiny repeat of all of it except the matmul peak and the RSS run.

Usage (from the repository root)::

    BKD_DATA_DIR=/work/data .venv/bin/python benchmarks/bench_epoch.py --model small_cnn --passive
    BKD_DATA_DIR=/work/data .venv/bin/python benchmarks/bench_epoch.py --model small_cnn --batch-size 32 --passive
    BKD_DATA_DIR=/work/data .venv/bin/python benchmarks/bench_epoch.py --model preresnet18 --passive
    BKD_DATA_DIR=/work/data .venv/bin/python benchmarks/bench_epoch.py --model whitened_cnn --images 4096 --no-rss \
        --variant bkd_core_bf16=bkd_core:BENCH_PRECISION=bf16
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

# this script's folder is on sys.path when it runs as a script (and in its workers)
from official_pipeline import OfficialPipeline, sync

ROOT = Path(__file__).resolve().parents[1]
RESULT = "@@RESULT "
#: A small CNN on a 5,000-image subset: the settings of the retired ``cpu`` profile, which the small_cnn rows and
#: the peak-RSS run of the measured logs (benchmarks/README.md) used; applied over the ``cnn`` profile.
SMALL_CNN: dict[str, Any] = dict(model="small_cnn", model_widths=(16, 32, 64), epochs=24, batch_size=32,
                                 train_size=5000, test_size=1000, augment=False, lr_step=None, tipping_fallback=16,
                                 detach_robust_target=True, eval_batch_size=128)
#: the caller's own OMP_WAIT_POLICY, read before anything imports ``bkd_core`` (which sets a default
#: in this process's environment): workers start from it, so the official pipeline runs as it would
#: outside this benchmark, and a variant's ``env`` is what changes it
_CALLER_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")


def _status_kib(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------------------------------------
# data (parent): real CIFAR-10N or random images, written to an npz for the workers
# ------------------------------------------------------------------------------------------------
def load_subset(n_images: int, seed: int = 0) -> tuple[dict[str, np.ndarray], str]:
    """``n_images`` training images (uint8 [n, 32, 32, 3]) and labels: a seeded subset of CIFAR-10N
    worst from $BKD_DATA_DIR, else random uint8 images (with a printed note)."""
    if os.environ.get("BKD_DATA_DIR"):
        sys.path.insert(0, str(ROOT))
        from bkd_core.data import load_cifar_n

        data = load_cifar_n("cifar10", "worst").subset(n_images, seed=seed)
        source = f"CIFAR-10N worst (real images) from BKD_DATA_DIR={os.environ['BKD_DATA_DIR']}"
        arrays = {"images": data.train_images, "labels": data.train_labels, "clean": data.clean_labels}
    else:
        print("NOTE: BKD_DATA_DIR is not set: using random uint8 images and labels (throughput does not "
              "depend on pixel values; set BKD_DATA_DIR=/path/to/data for real CIFAR-10N)", flush=True)
        rng = np.random.default_rng(seed)
        clean = rng.integers(0, 10, n_images).astype(np.int64)
        noisy = np.where(rng.random(n_images) < 0.4, rng.integers(0, 10, n_images), clean).astype(np.int64)
        arrays = {"images": rng.integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8), "labels": noisy,
                  "clean": clean}
        source = "random uint8 images (BKD_DATA_DIR unset)"
    if len(arrays["labels"]) < n_images:
        raise SystemExit(f"asked for {n_images} images, the data has only {len(arrays['labels'])}")
    return arrays, source


# ------------------------------------------------------------------------------------------------
# (b) bkd_core's pipeline
# ------------------------------------------------------------------------------------------------
class BKDCorePipeline:
    """``BKDTrainer.train_epoch()`` on all given images (val_ratio 0), augmentation on."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, clean: np.ndarray, model: str,
                 widths: tuple[int, int, int], batch_size: int, run_dir: Path, device: str = "cpu",
                 seed: int = 0) -> None:
        sys.path.insert(0, str(ROOT))
        from bkd_core.config import resolve
        from bkd_core.data import NoisyCIFAR
        from bkd_core.train import BKDTrainer

        data = NoisyCIFAR(train_images=images, train_labels=labels, clean_labels=clean,
                          test_images=images[:64], test_labels=labels[:64], num_classes=10, dataset="cifar10",
                          split="worst")
        cfg = resolve("cnn", dict(SMALL_CNN, model=model, model_widths=widths, batch_size=batch_size, train_size=None,
                                  val_ratio=0.0, test_size=None, augment=True, seed=seed, device=device))
        if os.environ.get("BENCH_PRECISION"):
            cfg = cfg.replace(precision=os.environ["BENCH_PRECISION"])
        if os.environ.get("BENCH_CHANNELS_LAST") in ("0", "1"):
            cfg = cfg.replace(channels_last=os.environ["BENCH_CHANNELS_LAST"] == "1")
        if os.environ.get("BENCH_COMPILE") == "1":
            cfg = cfg.replace(compile=True)
        self.trainer = BKDTrainer(data, cfg, run_dir, progress=False)
        self.device = self.trainer.device

    def run(self, n_images: int | None = None) -> int:
        """One ``train_epoch()`` over the first ``n_images`` training rows (all by default)."""
        t = self.trainer
        for net in t.networks.values():  # as Trainer.run() before each epoch
            net.train()
        out = t.train_epoch(n_images)  # a warm-up trains on the first n_images rows
        _ = {k: v.float().cpu() for k, v in out.per_sample.items()}  # what run() does at the epoch end
        _ = {k: float(v) for k, v in out.scalars.items()}
        sync(self.device)
        return t.n_train if n_images is None else n_images

    def data_only(self) -> int:
        """One pass of the input pipeline alone (gather, flip/crop, normalize; no networks)."""
        t = self.trainer
        for pos, _ in t.training_batches():
            t.batch_inputs(t.train_rows[pos], augment=True)
            _ = t.train_labels[pos]
        sync(self.device)
        return t.n_train

    def profile(self, rows: int) -> dict[str, float]:
        """Print a torch.profiler table of one epoch, then time its phases; returns the phase times."""
        from torch.profiler import ProfilerActivity, profile

        self.run()  # warm-up
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            self.run()
        averages = prof.key_averages()
        sort = "self_device_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        print(averages.table(sort_by=sort, row_limit=rows))
        total = sum(e.self_cpu_time_total for e in averages)
        groups: dict[str, float] = {}
        for e in averages:
            groups[_op_category(e.key)] = groups.get(_op_category(e.key), 0.0) + e.self_cpu_time_total
        print("\nself CPU time of one bkd_core epoch by operator category (torch.profiler):")
        print("| category | ms | share |\n| --- | ---: | ---: |")
        for g, v in sorted(groups.items(), key=lambda kv: -kv[1]):
            print(f"| {g} | {v / 1e3:.1f} | {100 * v / total:.1f}% |")
        phases = self.phase_times()
        wall = sum(phases.values())
        print(f"\nwall time of one bkd_core epoch by phase ({self.trainer.n_train} images, {wall:.2f} s; "
              "train_epoch with its calls timed):")
        print("| phase | s | share |\n| --- | ---: | ---: |")
        for k, v in phases.items():
            print(f"| {k} | {v:.3f} | {100 * v / wall:.1f}% |")
        return phases

    def phase_times(self) -> dict[str, float]:
        """Wall time per phase of one ``train_epoch()`` (phase 1), the trainer's own epoch loop.

        The trainer's calls are wrapped for the epoch, each timed between two device synchronisations:
        its input step (``batch_inputs``), the networks' forward passes, ``optimizer_step`` without the
        SGD step (zero_grad and backward) and the SGD step itself. The rest of the epoch, i.e. the losses,
        agreement scores and sums, is the epoch's wall time minus those.
        """
        t = self.trainer
        times = dict.fromkeys(PHASES, 0.0)
        open_children: list[float] = []  # per open timed call: the time spent in timed calls inside it

        def timed(phase: str, fn: Callable) -> Callable:
            def call(*args: Any, **kwargs: Any) -> Any:
                sync(t.device)
                start = time.perf_counter()
                open_children.append(0.0)
                try:
                    return fn(*args, **kwargs)
                finally:
                    sync(t.device)
                    elapsed = time.perf_counter() - start
                    times[phase] += elapsed - open_children.pop()
                    if open_children:
                        open_children[-1] += elapsed
            return call

        patches = [(t, "batch_inputs", timed(PHASES[0], t.batch_inputs)),
                   (t, "forward", {name: timed(PHASES[1], net) for name, net in t.forward.items()}),
                   (t, "optimizer_step", timed(PHASES[2], t.optimizer_step)),
                   (t.optimizer, "step", timed(PHASES[3], t.optimizer.step))]
        saved = [(obj, name, vars(obj).get(name, _MISSING)) for obj, name, _ in patches]
        for obj, name, value in patches:
            setattr(obj, name, value)
        try:
            for net in t.networks.values():
                net.train()
            sync(t.device)
            start = time.perf_counter()
            t.train_epoch()
            sync(t.device)
            wall = time.perf_counter() - start
        finally:
            for obj, name, value in saved:
                if value is _MISSING:
                    delattr(obj, name)
                else:
                    setattr(obj, name, value)
        times[PHASES[4]] = wall - sum(times.values())
        return times


#: the phases of :meth:`BKDCorePipeline.phase_times`, the last one what is left of the epoch
PHASES = ("augment + normalize", "forward (2 nets)", "backward (zero_grad + backward)", "optimizer step",
          "losses + score bookkeeping (the rest)")
_MISSING = object()


def _op_category(name: str) -> str:
    if any(k in name for k in ("convolution", "conv2d", "Convolution", "mkldnn_conv")):
        return "convolution (fwd+bwd)"
    if "batch_norm" in name or "BatchNorm" in name:
        return "batch norm (fwd+bwd)"
    if any(k in name for k in ("relu", "threshold", "Relu", "Threshold", "clamp_min")):
        return "relu (fwd+bwd)"
    if "pool" in name or "Pool" in name:
        return "pooling (fwd+bwd)"
    if any(k in name for k in ("addmm", "aten::mm", "MmBackward", "AddmmBackward", "aten::t")):
        return "linear layer"
    if any(k in name for k in ("sgd", "Optimizer", "_foreach", "zero_grad")):
        return "optimizer (SGD step, zero_grad)"
    if any(k in name for k in ("index", "gather", "remainder", "where", "randint", "rand", "randperm",
                               "permute", "IndexBackward")):
        return "indexing / augmentation / RNG"
    if any(k in name for k in ("copy_", "contiguous", "clone", "aten::to", "empty", "_to_copy")):
        return "copies / layout conversion / allocation"
    return "other (losses, softmax, elementwise, autograd bookkeeping)"


# ------------------------------------------------------------------------------------------------
# worker subprocess: one pipeline, driven by commands on stdin
# ------------------------------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    if args.worker == "bkd_core":
        # import bkd_core before torch, as `python -m bkd_core` does, so that anything the package
        # sets up before torch (and its OpenMP runtime) loads takes effect here too
        sys.path.insert(0, str(ROOT))
        import bkd_core  # noqa: F401
    import torch

    with np.load(args.data) as f:
        images, labels, clean = f["images"], f["labels"], f["clean"]
    widths = tuple(args.widths)
    with tempfile.TemporaryDirectory() as tmp:
        if args.worker == "official":
            pipe: Any = OfficialPipeline(images, labels, args.model, widths, args.batch_size, args.workers, args.device)
        else:
            pipe = BKDCorePipeline(images, labels, clean, args.model, widths, args.batch_size, Path(tmp) / "run",
                                   args.device)
        info = {"torch_threads": torch.get_num_threads(), "pid": os.getpid(),
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)")}
        if args.worker == "official":
            info.update(loader_workers=pipe.workers, channels_last=pipe.channels_last)
        print(RESULT + json.dumps(info), flush=True)
        for line in sys.stdin:
            cmd = line.split()
            if not cmd:
                continue
            if cmd[0] == "quit":
                print(RESULT + json.dumps({"vmhwm_kib": _status_kib("VmHWM")}), flush=True)
                return
            start, cpu0, children0 = time.perf_counter(), time.process_time(), _children_cpu()
            if cmd[0] == "run":
                seen = pipe.run(int(cmd[1]) if len(cmd) > 1 else None)
                # CPU time of this process plus its reaped children (the official DataLoader workers,
                # joined at the end of each epoch)
                out = {"images": seen, "seconds": time.perf_counter() - start,
                       "cpu_seconds": time.process_time() - cpu0 + _children_cpu() - children0,
                       "loadavg": os.getloadavg()[0]}
            elif cmd[0] == "data":
                seen = pipe.data_only()
                out = {"images": seen, "seconds": time.perf_counter() - start}
            elif cmd[0] == "profile":
                out = {"phases": pipe.profile(int(cmd[1]))}
            else:
                out = {"error": f"unknown command {cmd}"}
            print(RESULT + json.dumps(out), flush=True)


def worker_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment with the caller's OMP_WAIT_POLICY restored, plus ``extra``."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if _CALLER_OMP_WAIT_POLICY is not None:
        env["OMP_WAIT_POLICY"] = _CALLER_OMP_WAIT_POLICY
    return {**env, **extra}


class Worker:
    """Parent-side handle of a worker subprocess."""

    def __init__(self, label: str, pipeline: str, env: dict[str, str], args: argparse.Namespace, data: Path) -> None:
        self.label, self.pipeline, self.env = label, pipeline, env
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", pipeline, "--data", str(data),
               "--model", args.model, "--widths", *map(str, args.widths), "--batch-size", str(args.batch_size),
               "--workers", str(args.workers), "--device", args.device]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=worker_env(env), cwd=ROOT)
        self.info = self._result()

    def _result(self) -> dict[str, Any]:
        for line in self.proc.stdout:
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT):])
            print(f"[{self.label}] {line}", end="", flush=True)
        raise RuntimeError(f"worker {self.label} exited with code {self.proc.wait()}")

    def call(self, command: str) -> dict[str, Any]:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._result()

    def close(self) -> dict[str, Any]:
        out = self.call("quit")
        self.proc.wait(timeout=60)
        return out


# ------------------------------------------------------------------------------------------------
# FLOPs, matmul peak, memory
# ------------------------------------------------------------------------------------------------
def step_flops(model: str, widths: tuple[int, int, int], batch_size: int) -> float:
    """Model FLOPs of one training step (forward + backward of teacher and student) at ``batch_size``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    zeros = np.zeros((batch_size, 32, 32, 3), np.uint8)
    pipe = OfficialPipeline(zeros, np.zeros(batch_size, np.int64), model, widths, batch_size, 0)
    x, y = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))
    counter = FlopCounterMode(display=False)
    with counter:
        pipe.step(x, y, torch.arange(batch_size))
    return float(counter.get_total_flops())


def gpu_matmul_peak(device: str, n: int = 8192, reps: int = 10, trials: int = 3) -> dict[str, float]:
    """Measured matmul FLOP/s of a CUDA device per dtype ("fp32" without TF32, "bf16" where supported,
    "fp16"): best of ``trials`` x ``reps`` n^3 products."""
    import torch

    dev = torch.device(device)
    dtypes = {"fp32": torch.float32, "fp16": torch.float16}
    if torch.cuda.is_bf16_supported(including_emulation=False):
        dtypes["bf16"] = torch.bfloat16
    out: dict[str, float] = {}
    for name, dtype in dtypes.items():
        a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
        torch.mm(a, b)
        torch.cuda.synchronize(dev)
        best = 0.0
        for _ in range(trials):
            start = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b)
            torch.cuda.synchronize(dev)
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
        out[name] = best
        del a, b
    return out


def matmul_peak(n: int = 2048, reps: int = 8, trials: int = 4) -> dict[int, float]:
    """Measured fp32 matmul FLOP/s per torch thread count (best of ``trials`` x ``reps`` n^3 products)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    before = torch.get_num_threads()
    out: dict[int, float] = {}
    for threads in sorted({1, before}):
        torch.set_num_threads(threads)
        torch.mm(a, b)
        best = 0.0
        for _ in range(trials):
            start = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b)
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
        out[threads] = best
    torch.set_num_threads(before)
    return out


def rss_child(epochs: int) -> None:
    """Run a :data:`SMALL_CNN` BKD training (``epochs`` epochs) and print the peak RSS as one JSON line."""
    import resource

    sys.path.insert(0, str(ROOT))
    from bkd_core.config import resolve
    from bkd_core.train import train_bkd

    after_imports = _status_kib("VmRSS")
    if os.environ.get("BKD_DATA_DIR"):
        from bkd_core.data import load_cifar_n

        data, source = load_cifar_n("cifar10", "worst"), "CIFAR-10N worst"
    else:  # random data of the real size
        from bkd_core.data import NoisyCIFAR

        rng = np.random.default_rng(0)
        labels = rng.integers(0, 10, 50_000)
        data = NoisyCIFAR(rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8), labels, labels,
                          rng.integers(0, 256, (10_000, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 10_000),
                          10, "cifar10", "worst")
        source = "random images of CIFAR-10's size"
    after_data = _status_kib("VmRSS")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train_bkd(data, resolve("cnn", {**SMALL_CNN, "epochs": epochs}), tmp, progress=False)
    print(json.dumps({"vmhwm_kib": _status_kib("VmHWM"),
                      "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "rss_after_imports_kib": after_imports, "rss_after_data_kib": after_data,
                      "epochs": epochs, "seconds": time.perf_counter() - start, "source": source}))


def measure_rss(epochs: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--rss-child", "--rss-epochs", str(epochs)],
                         capture_output=True, text=True, env=worker_env({}), cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"RSS child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
def machine_description() -> dict[str, str]:
    import torch
    import torchvision

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "torch_threads": str(torch.get_num_threads()),
            "python": platform.python_version(), "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def parse_variant(text: str) -> tuple[str, str, dict[str, str]]:
    """``LABEL=PIPELINE[:KEY=VALUE,...]`` -> (label, pipeline, env)."""
    label, _, rest = text.partition("=")
    pipeline, _, env_text = rest.partition(":")
    if pipeline not in ("official", "bkd_core") or not label:
        raise argparse.ArgumentTypeError(f"bad --variant {text!r}: expected LABEL=official|bkd_core[:KEY=VALUE,...]")
    env = dict(item.split("=", 1) for item in env_text.split(",") if item)
    return label, pipeline, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("small_cnn", "whitened_cnn", "preresnet18"), default="small_cnn")
    parser.add_argument("--widths", type=int, nargs=3, default=(32, 64, 128), help="small_cnn / whitened_cnn widths")
    parser.add_argument("--images", type=int, default=None,
                        help="images per timed pass (default: 5,000, one epoch of the small CNN's subset, for "
                             "small_cnn; --batches x --batch-size for preresnet18)")
    parser.add_argument("--batches", type=int, default=10, help="preresnet18: timed batches per pass")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up batches per pipeline")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed passes per pipeline, interleaved (default 3 for small_cnn, 2 for preresnet18)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="DataLoader workers of the official pipeline")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", action="append", type=parse_variant, default=[],
                        help="extra pipeline LABEL=official|bkd_core[:KEY=VALUE,...] run with those env variables")
    parser.add_argument("--passive", action="store_true",
                        help="add both pipelines with OMP_WAIT_POLICY=PASSIVE (see benchmarks/README.md)")
    parser.add_argument("--data-only-repeats", type=int, default=3,
                        help="also time each pipeline's input pipeline alone (no networks), this many passes")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count and the matmul peak")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocess")
    parser.add_argument("--rss-epochs", type=int, default=3, help="epochs of the cpu-profile run measured for RSS")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one epoch of the last bkd_core variant (torch.profiler, phase times)")
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--worker", choices=("official", "bkd_core"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        worker(args)
        return
    if args.rss_child:
        rss_child(args.rss_epochs)
        return

    machine = machine_description()
    on_cuda = args.device.startswith("cuda")
    repeats = args.repeats if args.repeats is not None else (3 if args.model == "small_cnn" else 2)
    if args.images is None and on_cuda:  # a full epoch of the paper profile's training rows
        args.images = 45_000
    if args.images is None and args.model == "small_cnn":  # one epoch of the small CNN's subset
        args.images = SMALL_CNN["train_size"]
    n_images = args.images or args.batches * args.batch_size
    warm = min(args.warmup * args.batch_size, n_images)
    variants = [("official", "official", {}), ("bkd_core", "bkd_core", {})]
    precision_of = {"official": "fp32", "bkd_core": "fp32"}
    if on_cuda:  # like for like: the paper profile's precision and channels_last for both, plus fp32 rows
        sys.path.insert(0, str(ROOT))
        import torch
        from bkd_core.config import PAPER

        gpu_precision = PAPER.resolved_precision(torch.device(args.device))
        same = {"BENCH_PRECISION": gpu_precision, "BENCH_CHANNELS_LAST": "1"}
        variants = [("official", "official", same), ("bkd_core", "bkd_core", same),
                    ("bkd_core, fp32 (what precision adds)", "bkd_core",
                     {"BENCH_PRECISION": "fp32", "BENCH_CHANNELS_LAST": "1"}),
                    ("official as published (fp32, NCHW)", "official", {"BENCH_PRECISION": "fp32"})]
        precision_of = {"official": gpu_precision, "bkd_core": gpu_precision}
    if args.passive:
        variants += [("official + OMP_WAIT_POLICY=PASSIVE", "official", {"OMP_WAIT_POLICY": "PASSIVE"}),
                     ("bkd_core + OMP_WAIT_POLICY=PASSIVE", "bkd_core", {"OMP_WAIT_POLICY": "PASSIVE"})]
    variants += args.variant
    print(f"machine: {machine}", flush=True)
    peaks_start = None if args.no_flops or on_cuda else matmul_peak()
    arrays, source = load_subset(n_images)
    print(f"data: {source}; {n_images} training images per pass; model {args.model}; batch {args.batch_size}; "
          f"official DataLoader workers {args.workers}; {repeats} interleaved repeats", flush=True)

    speeds: dict[str, list[float]] = {}
    cpu_per_k: dict[str, list[float]] = {}
    data_speeds: dict[str, list[float]] = {}
    loads: list[float] = []
    phases = None
    workers: list[Worker] = []
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "subset.npz"
        np.savez(data_path, **arrays)
        try:
            for label, pipeline, env in variants:
                w = Worker(label, pipeline, env, args, data_path)
                workers.append(w)
                start = time.perf_counter()
                w.call(f"run {warm}")  # warm-up: allocator, oneDNN primitive caches
                print(f"started {label} ({w.info}); warm-up {warm} images in {time.perf_counter() - start:.1f} s",
                      flush=True)
                speeds[label] = []
            for r in range(repeats):
                for w in workers:
                    out = w.call("run")
                    speeds[w.label].append(out["images"] / out["seconds"])
                    cpu_per_k.setdefault(w.label, []).append(1000 * out["cpu_seconds"] / out["images"])
                    loads.append(out["loadavg"])
                    print(f"repeat {r + 1}/{repeats} {w.label}: {out['images']} images in {out['seconds']:.2f} s "
                          f"= {out['images'] / out['seconds']:.1f} img/s (CPU time {out['cpu_seconds']:.1f} s, "
                          f"load {out['loadavg']:.2f})", flush=True)
            if args.data_only_repeats:
                for r in range(args.data_only_repeats):
                    for w in workers:
                        out = w.call("data")
                        data_speeds.setdefault(w.label, []).append(out["images"] / out["seconds"])
                print("input pipeline alone (images/s): " + "; ".join(
                    f"{k}: {', '.join(f'{v:.0f}' for v in vs)}" for k, vs in data_speeds.items()), flush=True)
            if args.profile:
                w = [w for w in workers if w.pipeline == "bkd_core"][-1]  # the last bkd_core variant
                print(f"\n## profile of one bkd_core epoch ({w.label})", flush=True)
                phases = w.call(f"profile {args.profile_rows}")["phases"]
        finally:
            for w in workers:
                try:
                    w.close()
                except Exception:  # noqa: BLE001 - best effort shutdown
                    w.proc.kill()

    flops = peaks = None
    if not args.no_flops:
        flops = step_flops(args.model, tuple(args.widths), args.batch_size)
        if on_cuda:
            peaks = gpu_matmul_peak(args.device)
        else:
            peaks_end = matmul_peak()  # measured before and after the passes: the best is the least disturbed by load
            peaks = {k: max(peaks_start[k], peaks_end[k]) for k in peaks_end}
    rss = None if args.no_rss else measure_rss(args.rss_epochs)
    peak = max(peaks.values()) if peaks else None

    def row_peak(label: str, env: dict[str, str]) -> float | None:
        if not peaks:
            return None
        if on_cuda:
            return peaks.get(env.get("BENCH_PRECISION", precision_of.get(label, "fp32")), peaks["fp32"])
        return peak
    envs = {label: env for label, _, env in variants}

    medians = {label: statistics.median(v) for label, v in speeds.items() if v}
    print(f"\n## {args.model}: {n_images} images per pass, batch {args.batch_size}, median of {repeats} "
          "interleaved passes")
    print(f"machine: {machine['nproc']} cores ({machine['cpu']}), torch {machine['torch']}, torchvision "
          f"{machine['torchvision']}, {machine['torch_threads']} torch threads; load average at start "
          f"{machine['loadavg']}, during the passes {min(loads, default=0):.2f}-{max(loads, default=0):.2f}")
    print(f"data: {source}\n")
    if medians:
        print("| pipeline | images/s (median) | all passes | CPU s per 1000 images (median) | achieved GFLOP/s "
              f"| % of {'the measured GPU matmul peak in its precision' if on_cuda else 'fp32 matmul peak'} |")
        print("| --- | ---: | --- | ---: | ---: | ---: |")
        for label, med in medians.items():
            row = (f"| {label} | {med:.1f} | {', '.join(f'{s:.1f}' for s in speeds[label])} | "
                   f"{statistics.median(cpu_per_k[label]):.1f} |")
            if flops:
                achieved = flops / args.batch_size * med
                row += f" {achieved / 1e9:.1f} | {100 * achieved / row_peak(label, envs.get(label, {})):.0f}% |"
            else:
                row += " | |"
            print(row)
    if data_speeds:
        print("\ninput pipeline alone (no networks; images/s, median): " + "; ".join(
            f"{k} {statistics.median(v):.0f}" for k, v in data_speeds.items()))
    if flops:
        print(f"\nmodel FLOPs of one training step (forward + backward, teacher + student, batch {args.batch_size}): "
              f"{flops / 1e9:.2f} GFLOP = {flops / args.batch_size / 1e6:.0f} MFLOP per image; "
              + ("measured GPU matmul peak (8192^3 torch.mm): "
                 + ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in peaks.items())
                 + "; the % column uses the peak of the row's precision" if on_cuda else
                 "measured fp32 matmul peak (2048^3 torch.mm, best of before/after the passes): "
                 + ", ".join(f"{v / 1e9:.1f} GFLOP/s with {k} thread(s)" for k, v in peaks.items())
                 + "; the % column uses the best of these"))
    if rss:
        print(f"peak RSS of a cpu-profile run ({rss['epochs']} epochs, {rss['source']}, own subprocess): "
              f"{rss['vmhwm_kib'] / 1024:.0f} MiB (VmHWM; after imports {rss['rss_after_imports_kib'] / 1024:.0f} MiB, "
              f"after loading the data {rss['rss_after_data_kib'] / 1024:.0f} MiB)")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "model": args.model, "images": n_images, "speeds": speeds,
                                         "medians": medians, "cpu_s_per_1000": cpu_per_k, "data_only": data_speeds,
                                         "step_flops": flops, "matmul_peaks": peaks, "rss": rss,
                                         "phases": phases, "source": source, "loads": loads,
                                         "variants": {label: {"pipeline": pipe, "env": env}
                                                      for label, pipe, env in variants},
                                         "device": args.device}, indent=2))
    if "official" in medians:
        for label, med in medians.items():
            if label not in ("official", "bkd_core"):
                print(f"ratio {label} / official: {med / medians['official']:.2f}x")
        if "bkd_core" in medians:
            print(f"\nspeed-up bkd_core / official ({args.model}): {medians['bkd_core'] / medians['official']:.2f}x")


if __name__ == "__main__":
    main()
