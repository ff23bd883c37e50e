#!/usr/bin/env python
"""One command for the first device: check and measure bkd_core's GPU path, write one JSON report.

Run it as ``bash benchmarks/gpu_check.sh [--out REPORT.json]`` from the repository (the shell script
picks the first GPU and the project's Python). Sections, each recorded with its status (``ok``,
``failed``, ``skipped`` with a reason) and duration, so one failure does not hide the rest:

``device``      torch, CUDA, cuDNN, driver-visible device name, capability, memory, bf16 support, and
                the precision ``precision="auto"`` picks there;
``tests``       the ``gpu``-marked tests and ``tests/test_train.py`` on CUDA (a pytest subprocess; its
                same-seed and resume tests run with ``deterministic=True``); on the CPU a quick subset;
``sync_debug``  one training epoch under ``torch.cuda.set_sync_debug_mode("warn")``: the number of
                host synchronisations inside the epoch (there should be none) and where they happen;
                skipped on the CPU;
``paper_runs``  the ``paper`` profile for 2 epochs on CIFAR-10N ``worst`` (real data with
                ``BKD_DATA_DIR``, else synthetic images of the same size), per-epoch times, with the
                resolved precision + channels_last, with fp32 NCHW, and with compile + drop_last; on
                the CPU tiny sizes (a small CNN on a few hundred images) and no compile;
``benchmark``   ``benchmarks/bench_epoch.py`` at full pass length (45,000 images on CUDA), both
                pipelines with the same precision and layout, plus a fp32 row;
``profile``     torch.profiler over one epoch: GPU busy time (sum of kernel time) against wall time.

On a GPU it is meant to finish in at most 8 minutes (``--budget``: a section that would start after
the budget is spent is skipped and says so, and the pytest and benchmark subprocesses are stopped at
it); on the CPU it runs in about a minute. It never assumes a GPU: without one every CUDA-only
measurement is skipped with a note. ``--sections`` picks the sections and their order. The report is
rewritten after every section (and every run of ``paper_runs``), so a command stopped from outside
leaves what it measured so far.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


class Skip(Exception):
    """A section that does not apply here (its message says why)."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------
# sections
# ------------------------------------------------------------------------------------------------
def device_info(device: torch.device) -> dict[str, Any]:
    import torchvision

    from bkd_core import __version__
    from bkd_core.config import PAPER

    info: dict[str, Any] = {
        "device": str(device), "bkd_core": __version__, "torch": torch.__version__,
        "torchvision": torchvision.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "paper_precision_auto": PAPER.resolved_precision(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                    bf16_supported=torch.cuda.is_bf16_supported(including_emulation=False),
                    device_count=torch.cuda.device_count())
    return info


def run_tests(device: torch.device, quick: bool, deadline: float | None = None) -> dict[str, Any]:
    """The gpu-marked tests and tests/test_train.py on CUDA; a quick CPU subset otherwise. A pytest run
    still going at ``deadline`` (time.monotonic) is stopped and recorded as timed out."""
    if device.type == "cuda":
        targets = [["-m", "gpu", "tests"], ["tests/test_train.py"]]
    else:
        targets = [["tests/test_precision.py",
                    "tests/test_train.py::test_checkpoint_is_loaded_on_the_cpu_whatever_the_device"]]
    if quick and device.type == "cuda":
        targets = targets[:1]
    out: dict[str, Any] = {"runs": []}
    failed = False
    for target in targets:
        start = time.perf_counter()
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout < 5:
            out["runs"].append({"args": target, "status": "skipped", "reason": "time budget spent"})
            continue
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *target],
                                  capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                                  env={**os.environ,
                                       # deterministic cuBLAS needs this before CUDA starts in the process
                                       "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG", ":4096:8"),
                                       "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")})
        except subprocess.TimeoutExpired as exc:
            text = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
            out["runs"].append({"args": target, "status": "timed out", "seconds": round(time.perf_counter() - start, 1),
                                "output_tail": text[-3000:]})
            continue
        summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", summary)}
        run = {"args": target, "returncode": proc.returncode, "summary": summary, "counts": counts,
               "seconds": round(time.perf_counter() - start, 1)}
        if proc.returncode not in (0, 5):  # 5: nothing collected
            failed = True
            run["output_tail"] = proc.stdout[-4000:] + proc.stderr[-2000:]
        out["runs"].append(run)
    incomplete = any(run.get("status") in ("skipped", "timed out") for run in out["runs"])
    out["status"] = "failed" if failed else "incomplete" if incomplete else "ok"
    return out


def _data(size: int | None, *, tiny: bool) -> tuple[Any, str]:
    """CIFAR-10N worst (BKD_DATA_DIR) or synthetic images; ``size`` training images."""
    if os.environ.get("BKD_DATA_DIR"):
        from bkd_core.data import load_cifar_n

        return load_cifar_n("cifar10", "worst"), "CIFAR-10N worst"
    from bkd_core.synthetic import make_synthetic_cifar_n

    n = size or 50_000
    return make_synthetic_cifar_n(n_train=n, n_test=min(10_000, max(200, n // 5)), noise_rate=0.4, seed=0), \
        f"synthetic ({n} images; BKD_DATA_DIR unset)"


def _configs(device: torch.device, tiny: bool) -> dict[str, Any]:
    from bkd_core.config import resolve

    base = dict(device=str(device), epochs=2, seed=0)
    if tiny:  # a minute on the CPU: small CNN, a few hundred images (cf. --set train_size=..., model=small_cnn)
        base.update(model="small_cnn", model_widths=(8, 16, 16), train_size=600, test_size=200, batch_size=64,
                    eval_batch_size=200)
    paper = resolve("paper", base)
    return {"paper (resolved precision, channels_last)": paper,
            "fp32, NCHW": paper.replace(precision="fp32", channels_last=False),
            "compile + drop_last": paper.replace(compile=True, drop_last=True)}


def sync_debug(device: torch.device, tiny: bool, data: Any) -> dict[str, Any]:
    """Count the host synchronisations of one training epoch (after a warm-up epoch)."""
    if device.type != "cuda":
        raise Skip("no CUDA device: torch.cuda.set_sync_debug_mode has nothing to watch on the CPU")
    from bkd_core.train import BKDTrainer

    cfg = _configs(device, tiny)["paper (resolved precision, channels_last)"].replace(train_size=min(10_000, len(data)))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = BKDTrainer(data, cfg, Path(tmp) / "run", False)
        for net in trainer.networks.values():
            net.train()
        trainer.train_epoch()  # warm-up: cuDNN autotuning, allocator
        _sync(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                start = time.perf_counter()
                out = trainer.train_epoch()
            finally:
                torch.cuda.set_sync_debug_mode("default")
            _sync(device)
            seconds = time.perf_counter() - start
            _ = {k: v.cpu() for k, v in {**out.per_sample, **out.scalars}.items()}  # the epoch end syncs, outside
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    places: dict[str, int] = {}
    for w in syncs:
        key = f"{Path(w.filename).name}:{w.lineno}"
        places[key] = places.get(key, 0) + 1
    return {"status": "ok" if not syncs else "failed", "train_rows": trainer.n_train,
            "epoch_seconds": round(seconds, 2),
            "precision": trainer.precision, "syncs_in_epoch": len(syncs), "sync_places": places,
            "first_messages": [str(w.message)[:200] for w in syncs[:3]]}


def paper_runs(device: torch.device, tiny: bool, data: Any, source: str, deadline: float,
               progress: Callable[[dict[str, Any]], None] = lambda runs: None) -> dict[str, Any]:
    """``progress(runs)`` is called after every run (the report is rewritten there)."""
    from bkd_core.train import train_bkd

    runs: dict[str, Any] = {}
    for label, cfg in _configs(device, tiny).items():
        if label.startswith("compile") and device.type != "cuda":
            runs[label] = {"status": "skipped", "reason": "on the CPU compile needs a C++ toolchain and minutes; "
                                                          "measured on CUDA only"}
            continue
        if time.monotonic() > deadline:
            runs[label] = {"status": "skipped", "reason": "time budget spent"}
            continue
        start = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                result = train_bkd(data, cfg, Path(tmp) / "run", progress=False)
                checkpoint_mb = (Path(tmp) / "run" / "checkpoint.pt").stat().st_size / 2**20
        except Exception as exc:  # noqa: BLE001 - recorded in the report
            runs[label] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:1000],
                           "traceback": traceback.format_exc()[-3000:]}
            continue
        times = [round(float(t), 3) for t in result.history["epoch_time"]]
        runs[label] = {"status": "ok", "config": {k: getattr(cfg, k) for k in (
            "model", "epochs", "batch_size", "train_size", "precision", "channels_last", "compile", "drop_last")},
            "precision": cfg.resolved_precision(device), "epoch_seconds": times,
            "wall_seconds": round(time.perf_counter() - start, 1), "checkpoint_mib": round(checkpoint_mb, 1),
            "test_acc": result.metrics["test_acc"], "num_train": result.metrics["num_train"]}
        progress(runs)
    failed = any(r["status"] == "failed" for r in runs.values())
    return {"status": "failed" if failed else "ok", "data": source, "runs": runs}


def benchmark(device: torch.device, tiny: bool, deadline: float | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out_json = Path(tmp) / "bench.json"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_epoch.py"), "--device", str(device), "--no-rss",
               "--json", str(out_json)]
        if tiny:
            cmd += ["--model", "small_cnn", "--widths", "8", "16", "16", "--images", "512", "--repeats", "1",
                    "--warmup", "1", "--data-only-repeats", "0", "--workers", "1", "--no-flops"]
        else:  # full pass length: one epoch of the paper profile's training rows
            cmd += ["--model", "preresnet18", "--images", "45000", "--repeats", "1", "--data-only-repeats", "1"]
        env = dict(os.environ)
        if tiny:  # random images: loading CIFAR-10N for 512 images would take longer than the passes
            env.pop("BKD_DATA_DIR", None)
        start = time.perf_counter()
        timeout = None if deadline is None else max(1.0, deadline - time.monotonic())
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "command": " ".join(cmd[1:]),
                    "error": f"stopped at the time budget after {time.perf_counter() - start:.0f} s"}
        if proc.returncode:
            return {"status": "failed", "command": cmd, "output_tail": proc.stdout[-3000:] + proc.stderr[-3000:]}
        report = json.loads(out_json.read_text())
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    return {"status": "ok", "command": " ".join(cmd[1:]), "seconds": round(time.perf_counter() - start, 1),
            "medians_images_per_s": report.get("medians"), "step_flops": report.get("step_flops"),
            "peaks": report.get("matmul_peaks"), "variants": report.get("variants"), "table": table}


def profile_epoch(device: torch.device, tiny: bool, data: Any) -> dict[str, Any]:
    """torch.profiler over one epoch: GPU kernel time vs wall time (CPU: operator self time vs wall)."""
    from torch.profiler import ProfilerActivity, profile

    from bkd_core.train import BKDTrainer

    cfg = _configs(device, tiny)["paper (resolved precision, channels_last)"]
    if not tiny:
        cfg = cfg.replace(train_size=min(10_000, len(data)))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = BKDTrainer(data, cfg, Path(tmp) / "run", False)
        for net in trainer.networks.values():
            net.train()
        trainer.train_epoch()  # warm-up
        _sync(device)
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            trainer.train_epoch()
            _sync(device)
            wall = time.perf_counter() - start
    events = prof.key_averages()
    cpu_self = sum(e.self_cpu_time_total for e in events) / 1e6
    out: dict[str, Any] = {"status": "ok", "train_rows": trainer.n_train, "wall_seconds": round(wall, 3),
                           "cpu_op_self_seconds": round(cpu_self, 3)}
    if device.type == "cuda":
        busy = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in events) / 1e6
        top = sorted(events, key=lambda e: -getattr(e, "self_device_time_total", 0))[:8]
        out.update(gpu_busy_seconds=round(busy, 3), gpu_busy_fraction=round(busy / wall, 3),
                   top_kernels_ms={e.key[:80]: round(getattr(e, "self_device_time_total", 0) / 1e3, 2) for e in top})
    else:
        out["note"] = "no CUDA device: CPU operator self time against wall time"
    return out


# ------------------------------------------------------------------------------------------------
SECTIONS = ("device", "tests", "sync_debug", "paper_runs", "benchmark", "profile")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="report path (default: gpu_check-<device>-<time>.json in the current folder)")
    parser.add_argument("--device", default="auto", help="auto (the first GPU, else the CPU), cpu or cuda:N")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds; later sections are skipped past it")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes also on CUDA (the CPU always uses them)")
    parser.add_argument("--skip", action="append", default=[], choices=SECTIONS[1:], help="leave a section out")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated sections in the order to run them (default {','.join(SECTIONS)}); "
                             "'device' always runs first")
    args = parser.parse_args(argv)
    order = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(order) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    torch.set_num_threads(1 if os.environ.get("BKD_CHECK_THREADS") is None else int(os.environ["BKD_CHECK_THREADS"]))
    device = torch.device("cuda:0" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch finds no CUDA device here; use --device cpu or auto")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    tiny = args.tiny or device.type != "cuda"
    started = time.monotonic()
    deadline = started + args.budget
    report: dict[str, Any] = {"tool": "benchmarks/gpu_check.py", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "mode": "tiny (CPU)" if tiny else "full (GPU)", "budget_seconds": args.budget,
                              "sections": {}}
    sections = report["sections"]
    out = args.out or Path(f"gpu_check-{device.type}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def write_report() -> None:
        report["total_seconds"] = round(time.monotonic() - started, 1)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str))
        os.replace(tmp, out)

    def section(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        if name in args.skip:
            sections[name] = {"status": "skipped", "reason": "--skip"}
            return
        if time.monotonic() > deadline:
            sections[name] = {"status": "skipped", "reason": f"time budget of {args.budget:.0f} s spent"}
            return
        start = time.perf_counter()
        try:
            out = fn()
            out.setdefault("status", "ok")
        except Skip as exc:
            out = {"status": "skipped", "reason": str(exc)}
        except Exception as exc:  # noqa: BLE001 - one failed section must not hide the others
            out = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:1000],
                   "traceback": traceback.format_exc()[-3000:]}
        out["seconds"] = round(time.perf_counter() - start, 1)
        sections[name] = out
        write_report()
        print(f"[gpu_check] {name}: {out['status']} ({out['seconds']} s)", flush=True)

    def runs_so_far(runs: dict[str, Any]) -> None:
        sections["paper_runs"] = {"status": "running", "runs": runs}
        write_report()

    write_report()
    data_holder: dict[str, Any] = {}

    def data() -> tuple[Any, str]:
        if not data_holder:
            data_holder["value"] = _data(None if not tiny else 800, tiny=tiny)
        return data_holder["value"]

    work = {"device": lambda: device_info(device),
            "tests": lambda: run_tests(device, quick=False, deadline=deadline),
            "sync_debug": lambda: sync_debug(device, tiny, data()[0]),
            "paper_runs": lambda: paper_runs(device, tiny, *data(), deadline, progress=runs_so_far),
            "benchmark": lambda: benchmark(device, tiny, deadline=deadline),
            "profile": lambda: profile_epoch(device, tiny, data()[0])}
    for name in ["device", *(n for n in order if n != "device")]:
        section(name, work[name])
    report["status"] = "failed" if any(s["status"] == "failed" for s in sections.values()) else "ok"
    write_report()
    print(json.dumps(report, indent=2, default=str))
    print(f"[gpu_check] report written to {out} ({report['status']}, {report['total_seconds']} s)", flush=True)
    return 0 if report["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
