#!/usr/bin/env python
"""One GPU session as two commands (``bash benchmarks/device_session.sh 1`` and ``... 2``), and the helper that
turns what they return into ``reproductions/paper/`` (``unpack``). benchmarks/DEVICE.md says how to call them.

``call1`` (the machine carries part a of the CIFAR-10 pack): decode part a into ``.data/``; versions and
``nvidia-smi``; ``gpu_check.py`` with the sections in the order device, sync_debug (host syncs inside one
epoch), profile (GPU busy time against wall time), tests (the ``gpu`` tests, the CUDA precision tests among
them, then ``tests/test_train.py`` on CUDA), benchmark (official pipeline against bkd_core at the same precision
and layout, full pass) and paper_runs (eager, fp32 and compiled epochs of the ``paper`` profile), within
its time budget.

``call2`` (part b, sent right after call 1): decode part b, rebuild ``cifar10.npz`` and check it against the
manifest; then the ``paper`` profile (seed 0) with ``stop_after_detection`` on worst, aggre, rand1, rand2,
rand3 and clean, two or three at a time on the one GPU (call 1's busy fraction decides), then, if time is
left, the cross-entropy baseline on worst for as many epochs as BKD's phase 1 took. No run starts when too
little time is left, and a running one ends cleanly before the call's deadline (it skips the epoch that would
not finish in time and writes its outputs; ``stopped_by`` says why it ended).

Both write under ``$OUT`` after every step, at most 8 files (the log, ``session{1,2}.json``, ``gpu_check.json``,
one ``paper-<split>.tar.gz`` per split), and never assume a GPU. ``BKD_DEVICE_DRY_RUN=1`` runs either call on
a CPU at tiny sizes (a small CNN on a few hundred images, a tipping fallback so that every run detects), with
the same steps and files. ``BKD_SESSION_BUDGET`` (seconds) overrides a call's budget, ``BKD_SESSION_JOBS``
the number of runs at once. A run's folder in a split's archive has the layout of a ``reproduce`` batch
(``metrics.json`` with ``methods``, ``bkd/metrics.json``, ``bkd/config.json``), plus the per-epoch curves and
the agreement histogram at the tipping epoch in ``metrics.json``, and the per-image agreement scores at the
tipping epoch (float16, compressed) in ``bkd/tipping_scores.npz``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

DRY = os.environ.get("BKD_DEVICE_DRY_RUN", "") not in ("", "0")
SPLITS = ("worst", "aggre", "rand1", "rand2", "rand3", "clean")
SEED = 0
#: Seconds of work per call (its internal deadline); the run tool's timeout_s leaves a margin above these.
BUDGET = {"1": 230.0, "2": 430.0} if not DRY else {"1": 150.0, "2": 120.0}
#: A run (split) is not started with less than this many seconds left before the call's deadline.
MIN_START_S = 100.0 if not DRY else 15.0
#: Seconds kept after the runs' deadline for their outputs, the archives and the session record.
FINISH_MARGIN_S = 25.0 if not DRY else 8.0
#: Estimated length of a run's first epoch (process start, data, cuDNN autotuning) before one was measured.
FIRST_EPOCH_S = 25.0 if not DRY else 3.0
#: The histogram of the agreement scores at the tipping epoch (chapter 05): bins over [0, 1].
HIST_BINS = 50
#: What the unpack step accepts from an archive: the batch layout's files.
RUN_FILES = ("metrics.json", "bkd/metrics.json", "bkd/config.json", "bkd/tipping_scores.npz", "bkd/progress.json",
             "ce/metrics.json", "ce/config.json", "ce/progress.json", "unfinished.json", "worker.log")


def _now() -> float:
    return time.time()


def work_dir() -> Path:
    """Where the calls keep state between them (decoded data, runs): ``.data/`` on the device (git-ignored,
    kept on a warm machine), a temporary folder in a dry run (``BKD_SESSION_WORK`` overrides both)."""
    if os.environ.get("BKD_SESSION_WORK"):
        return Path(os.environ["BKD_SESSION_WORK"])
    return Path(tempfile.gettempdir()) / "bkd-device-session-dry" if DRY else ROOT / ".data"


def packs_dir() -> Path:
    """The folder holding ``.pack-a``/``.pack-b``: the repository (as carried), or ``BKD_SESSION_PACKS``."""
    return Path(os.environ.get("BKD_SESSION_PACKS") or ROOT)


def out_dir() -> Path:
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="bkd-device-out-"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


class Session:
    """A call's record, ``$OUT/session{call}.json``, rewritten after every step."""

    def __init__(self, call: str, out: Path) -> None:
        self.call, self.out = call, out
        self.started = _now()
        budget = float(os.environ.get("BKD_SESSION_BUDGET") or BUDGET[call])
        self.deadline = self.started + budget
        self.record: dict[str, Any] = {"call": int(call), "dry_run": DRY, "budget_s": budget,
                                       "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": {}}
        self.write()

    def left(self) -> float:
        return self.deadline - _now()

    def write(self) -> None:
        self.record["elapsed_s"] = round(_now() - self.started, 1)
        _write_json(self.out / f"session{self.call}.json", self.record)

    def step(self, name: str, fn: Callable[[], dict[str, Any]], *, need: float = 0.0) -> dict[str, Any]:
        if self.left() < need:
            result = {"status": "skipped", "reason": f"{self.left():.0f} s left, {need:.0f} s needed"}
        else:
            start = _now()
            print(f"[session {self.call}] {name} ...", flush=True)
            try:
                result = fn()
                result.setdefault("status", "ok")
            except Exception as exc:  # noqa: BLE001 - one failed step must not hide the others
                result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000],
                          "traceback": traceback.format_exc()[-3000:]}
            result["seconds"] = round(_now() - start, 1)
        self.record["steps"][name] = result
        self.write()
        print(f"[session {self.call}] {name}: {result['status']} ({result.get('seconds', 0)} s)", flush=True)
        return result


def _run(cmd: list[str], timeout: float | None = None, **kwargs: Any) -> dict[str, Any]:
    start = _now()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except FileNotFoundError as exc:
        return {"status": "skipped", "reason": f"{cmd[0]} not found ({exc.strerror})"}
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"stopped after {timeout:.0f} s", "command": " ".join(cmd)}
    out = {"returncode": proc.returncode, "seconds": round(_now() - start, 1),
           "output": (proc.stdout[-3000:] + proc.stderr[-2000:]).strip()}
    out["status"] = "ok" if proc.returncode == 0 else "failed"
    return out


def versions() -> dict[str, Any]:
    import numpy as np
    import torch
    import torchvision

    from bkd_core.provenance import code_hash

    info: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable,
                            "torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": np.__version__,
                            "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                            "code_hash": code_hash(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    smi = _run(["nvidia-smi"], timeout=30)
    info["nvidia_smi"] = smi.get("output") or smi.get("reason")
    return info


def decode(part: str, data: Path) -> dict[str, Any]:
    """``devpack.py decode`` (and for part b ``assemble``, which checks every array against the manifest)."""
    pack = packs_dir() / f".pack-{part}"
    if not (pack / "devpack.py").is_file():
        raise FileNotFoundError(f"{pack}/devpack.py is missing: stage the pack (benchmarks/DEVICE.md) and carry it")
    result = {"decode": _run([sys.executable, str(pack / "devpack.py"), "decode", "--pack", str(pack),
                              "--data", str(data)], timeout=120)}
    if part == "b" and result["decode"]["status"] == "ok":
        result["assemble"] = _run([sys.executable, str(pack / "devpack.py"), "assemble", "--pack", str(pack),
                                   "--data", str(data)], timeout=120)
    result["status"] = "ok" if all(r["status"] == "ok" for r in result.values()) else "failed"
    return result


# ------------------------------------------------------------------------------------------------
# call 1
# ------------------------------------------------------------------------------------------------
def start_call(call: str) -> tuple[Path, Session, Path]:
    """``$OUT``, the call's record and the work folder; the versions step done."""
    out = out_dir()
    session = Session(call, out)
    work = work_dir()
    work.mkdir(parents=True, exist_ok=True)
    session.step("versions", versions)
    return out, session, work


def call1() -> int:
    out, session, work = start_call("1")
    if DRY and not (packs_dir() / ".pack-a" / "devpack.py").is_file():
        session.record["steps"]["decode_a"] = {"status": "skipped", "reason": "dry run without .pack-a"}
    else:
        session.step("decode_a", lambda: decode("a", work / "data" if DRY else ROOT / ".data"))

    def check() -> dict[str, Any]:
        budget = max(10.0, session.left() - 10.0)
        sections = "device,sync_debug,profile,tests,benchmark,paper_runs"
        env = {k: v for k, v in os.environ.items() if k != "BKD_DATA_DIR"}  # part a only: synthetic images
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("BKD_CHECK_THREADS", "1" if DRY else "8")
        result = _run([sys.executable, str(HERE / "gpu_check.py"), "--out", str(out / "gpu_check.json"),
                       "--budget", f"{budget:.0f}", "--sections", sections], timeout=budget + 20, cwd=ROOT, env=env)
        report = json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").is_file() else {}
        sections_done = report.get("sections", {})
        result["sections"] = {k: v.get("status") for k, v in sections_done.items()}
        profile = sections_done.get("profile", {})
        hint = {"gpu_busy_fraction": profile.get("gpu_busy_fraction"), "at": _now()}
        _write_json(work / "call1.json", hint)  # call 2 picks its number of concurrent runs from it
        result["gpu_busy_fraction"] = hint["gpu_busy_fraction"]
        if result.get("status") == "ok":
            result.pop("output", None)  # the report holds it; kept when gpu_check itself failed
        return result

    session.step("gpu_check", check, need=10.0)
    session.record["status"] = "done"
    session.write()
    return 0


# ------------------------------------------------------------------------------------------------
# call 2: the paper-profile runs
# ------------------------------------------------------------------------------------------------
def run_config(method: str, epochs: int | None = None) -> Any:
    from bkd_core.config import get_profile

    overrides: dict[str, Any] = {"seed": SEED, "checkpoint_every": 10**6}  # one checkpoint, at the end
    if method == "bkd":
        overrides["stop_after_detection"] = True
    if DRY:
        overrides.update(model="small_cnn", model_widths=(8, 16, 16), train_size=500, test_size=200, batch_size=64,
                         eval_batch_size=250, epochs=8, lr_step=None, augment=False, device="cpu")
        if method == "bkd":
            overrides["tipping_fallback"] = 1  # a tiny run detects by the fallback: the dry run tests the plumbing
    if epochs is not None:
        overrides["epochs"] = epochs
    return get_profile("paper", **overrides)


def _deadline_trainer(base: type) -> type:
    """``base`` (a trainer class) that also ends before an epoch that would not finish by its deadline,
    and writes its per-epoch scalars to ``progress.json`` after every epoch."""

    class DeadlineTrainer(base):  # type: ignore[misc, valid-type]
        deadline = float("inf")
        stopped_by_deadline = False
        _decided: tuple[int, bool] = (-1, False)

        def stops_early(self) -> bool:
            if super().stops_early():
                return True
            done = len(self.history.get("loss", []))  # epochs whose scalars are recorded
            if done == 0:
                return False
            if self._decided[0] != done:  # once per epoch: the end-of-epoch checks agree
                times = [t for t in self.history.get("epoch_time", []) if t == t]
                estimate = max(times[-3:]) if times else FIRST_EPOCH_S
                stop = _now() + 1.2 * estimate > self.deadline
                self._decided = (done, stop)
                self.stopped_by_deadline = stop
                _write_json(self.rundir.path / "progress.json", {"epochs": done, "history": self.history})
            return self._decided[1]

    return DeadlineTrainer


def _curves(history: dict[str, Any]) -> dict[str, list[float | None]]:
    import numpy as np

    curves = {}
    for key, values in history.items():
        arr = np.asarray(values)
        if arr.ndim == 1:
            curves[key] = [None if not np.isfinite(v) else round(float(v), 6) for v in arr.astype(np.float64)]
    return curves


def worker(args: argparse.Namespace) -> int:
    """One run (``--method`` bkd or ce on ``--split``) into ``--run-dir``, ending by ``--deadline``."""
    import numpy as np
    import torch

    from bkd_core.train import BKDTrainer, CETrainer

    torch.set_num_threads(args.threads)
    if os.environ.get("BKD_DATA_DIR"):
        from bkd_core.data import load_cifar_n

        data = load_cifar_n("cifar10", args.split)
    else:
        from bkd_core.synthetic import make_synthetic_cifar_n

        data = make_synthetic_cifar_n(n_train=600, n_test=200, noise_rate=0.3, seed=SPLITS.index(args.split))
    config = run_config(args.method, args.epochs)
    cls = _deadline_trainer(BKDTrainer if args.method == "bkd" else CETrainer)
    trainer = cls(data, config, args.run_dir, False)
    trainer.deadline = args.deadline
    start = _now()
    result = trainer.run()
    run_dir = Path(args.run_dir)
    metrics = result.metrics
    is_noisy = result.arrays["given_labels"] != result.arrays["clean_labels"]
    base = BKDTrainer if args.method == "bkd" else CETrainer
    summary: dict[str, Any] = {"wall_s": round(_now() - start, 1), "curves": _curves(result.history),
                               "stopped_by": ("detection" if base.stops_early(trainer) else
                                              "deadline" if trainer.stopped_by_deadline else "epochs")}
    try:
        from bkd_core.metrics import ranking_auc

        summary["ranking_auc"] = ranking_auc(result.label_quality, is_noisy)
    except ImportError as exc:  # scikit-learn absent
        summary["ranking_auc"] = None
        summary["ranking_auc_note"] = f"not computed ({exc})"
    if args.method == "bkd" and metrics.get("tipping_epoch") is not None:
        scores = result.label_quality.astype(np.float64)  # the eval-pass agreement at the tipping epoch
        edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
        summary["agreement_histogram"] = {
            "epoch": metrics["tipping_epoch"], "edges": [round(float(e), 4) for e in edges],
            "clean": np.histogram(scores[~is_noisy], edges)[0].tolist(),
            "noisy": np.histogram(scores[is_noisy], edges)[0].tolist()}
        np.savez_compressed(run_dir / "tipping_scores.npz", agreement=result.label_quality.astype(np.float16),
                            is_noisy=is_noisy, indices=result.indices.astype(np.int32))
    if args.method == "ce":  # memorisation: the share of training rows whose given label is predicted
        predicts = result.history["train_predicts_label"].astype(np.float64)  # [E, n_train]
        noisy_train = is_noisy[result.arrays["train_rows"]]
        summary["curves"]["memorized_noisy"] = [round(float(v), 6) for v in predicts[:, noisy_train].mean(1)] \
            if noisy_train.any() else []
        summary["curves"]["fit_clean"] = [round(float(v), 6) for v in predicts[:, ~noisy_train].mean(1)]
    _write_json(run_dir / "summary.json", summary)
    print(f"[worker] {args.method} {args.split}: {metrics['epochs']} epochs, tipping {metrics.get('tipping_epoch')}, "
          f"stopped by {summary['stopped_by']}, {summary['wall_s']} s", flush=True)
    return 0


def run_folder(split: str) -> str:
    return f"cifar10-{split}-seed{SEED}"


def assemble_run(work: Path, split: str, session_info: dict[str, Any]) -> Path:
    """The batch-layout folder of one split from its method runs: ``metrics.json`` as ``reproduce`` writes it
    (``methods`` with each method's metrics and ``ranking_auc``), plus curves, histogram and the session's
    notes; each method's ``metrics.json``, ``config.json`` (and BKD's tipping scores)."""
    from bkd_core.provenance import code_hash

    runs = work / "runs" / run_folder(split)
    dest = work / "paper" / run_folder(split)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    methods, curves, extra = {}, {}, {}
    config = None
    for method in ("bkd", "ce"):
        src = runs / method
        if not src.is_dir():
            continue
        (dest / method).mkdir()
        for name in ("metrics.json", "config.json", "tipping_scores.npz", "progress.json"):
            if (src / name).is_file():
                shutil.copyfile(src / name, dest / method / name)
        summary = json.loads((src / "summary.json").read_text()) if (src / "summary.json").is_file() else {}
        if (src / "metrics.json").is_file():
            metrics = json.loads((src / "metrics.json").read_text())
            methods[method] = {**metrics, "ranking_auc": summary.get("ranking_auc")}
            curves[method] = summary.get("curves", {})
            extra[method] = {k: summary.get(k) for k in ("stopped_by", "wall_s", "ranking_auc_note") if k in summary}
            if method == "bkd" and "agreement_histogram" in summary:
                extra["agreement_histogram"] = summary["agreement_histogram"]
            if config is None and (src / "config.json").is_file():
                config = json.loads((src / "config.json").read_text()).get("config")
    if (runs / "worker.log").is_file():
        shutil.copyfile(runs / "worker.log", dest / "worker.log")
    record = {"dataset": "cifar10", "split": split, "seed": SEED, "profile": "paper", "code_hash": code_hash(),
              "config": config, "wall_time_s": round(sum(m.get("wall_time_s", 0) for m in methods.values()), 2),
              "methods": methods, "curves": curves,
              "agreement_histogram": extra.pop("agreement_histogram", None),
              "device_session": {**session_info, "methods": extra, "dry_run": DRY}}
    if config is not None:
        from bkd_core.config import BKDConfig

        record["fingerprint"] = BKDConfig.from_dict(config).fingerprint()
    if methods:
        _write_json(dest / "metrics.json", record)
    else:
        _write_json(dest / "unfinished.json", record)
    return dest


def pack(folder: Path, out: Path) -> Path:
    """``folder`` as ``$OUT/paper-<split>.tar.gz`` (written to a temporary name, then renamed)."""
    split = folder.name.split("-")[1]
    target = out / f"paper-{split}.tar.gz"
    tmp = out / f".paper-{split}.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    os.replace(tmp, target)
    return target


def _jobs(work: Path) -> tuple[int, str]:
    if os.environ.get("BKD_SESSION_JOBS"):
        return int(os.environ["BKD_SESSION_JOBS"]), "BKD_SESSION_JOBS"
    if DRY:
        return 2, "dry run"
    hint = work / "call1.json"
    busy = json.loads(hint.read_text()).get("gpu_busy_fraction") if hint.is_file() else None
    if busy is None:
        return 3, "no busy fraction from call 1"
    return (2 if busy >= 0.8 else 3), f"call 1's GPU busy fraction {busy:.2f}"


def _gpu_sample() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=5)
        return proc.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def run_splits(session: Session, work: Path, out: Path, data_dir: Path | None) -> dict[str, Any]:
    """Start the split runs (BKD, then CE on worst) as slots free up; stop starting when too little time is
    left; give each worker the call's deadline; pack each split when its runs are done."""
    import torch

    jobs, why = _jobs(work)
    deadline = session.deadline - FINISH_MARGIN_S
    threads = 1 if DRY else max(1, (os.cpu_count() or 4) // jobs)
    queue: list[tuple[str, str]] = [(split, "bkd") for split in SPLITS] + [("worst", "ce")]
    running: dict[tuple[str, str], tuple[subprocess.Popen, float, Any]] = {}
    state: dict[str, Any] = {"jobs": jobs, "jobs_from": why, "threads_per_run": threads, "runs": {},
                             "gpu_samples": []}
    session.record["steps"]["runs"] = state
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if data_dir is not None:
        env["BKD_DATA_DIR"] = str(data_dir)
    info = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "jobs": jobs}
    started = _now()
    last_sample = 0.0

    def start(split: str, method: str) -> None:
        run_dir = work / "runs" / run_folder(split) / method
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: no state of an earlier session is resumed
        run_dir.mkdir(parents=True)
        epochs = None
        if method == "ce":  # as many epochs as BKD's phase 1 on worst took
            bkd = state["runs"].get("worst/bkd", {})
            epochs = bkd.get("epochs") or (20 if not DRY else 4)
        cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--split", split, "--method", method,
               "--run-dir", str(run_dir), "--deadline", str(deadline), "--threads", str(threads)]
        if epochs:
            cmd += ["--epochs", str(epochs)]
        log = open(work / "runs" / run_folder(split) / "worker.log", "a")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=False)
        running[(split, method)] = (proc, _now(), log)
        state["runs"][f"{split}/{method}"] = {"status": "running", "start_s": round(_now() - started, 1),
                                              "epochs_requested": epochs}
        session.write()

    def finish(split: str, method: str, returncode: int) -> None:
        proc, t0, log = running.pop((split, method))
        log.close()
        run_dir = work / "runs" / run_folder(split) / method
        entry = state["runs"][f"{split}/{method}"]
        entry.update(returncode=returncode, end_s=round(_now() - started, 1), wall_s=round(_now() - t0, 1))
        metrics_path = run_dir / "metrics.json"
        if metrics_path.is_file():
            m = json.loads(metrics_path.read_text())
            summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
            entry.update(status="ok", epochs=m.get("epochs"), tipping_epoch=m.get("tipping_epoch"),
                         tipping_rule=m.get("tipping_rule"), stopped_by=summary.get("stopped_by"),
                         estimated_noise_rate=m.get("estimated_noise_rate"), true_noise_rate=m.get("true_noise_rate"),
                         detection_f1=m.get("detection_f1"), flag_all_f1=m.get("flag_all_f1"),
                         test_acc=m.get("test_acc"))
        else:
            entry["status"] = "failed"
            log_text = (work / "runs" / run_folder(split) / "worker.log").read_text()[-1500:]
            entry["log_tail"] = log_text
        try:
            packed = pack(assemble_run(work, split, info), out)
            entry["archive"] = packed.name
        except Exception as exc:  # noqa: BLE001 - recorded; the other splits go on
            entry["archive_error"] = f"{type(exc).__name__}: {exc}"
        session.write()

    while queue or running:
        for key, (proc, t0, log) in list(running.items()):
            code = proc.poll()
            if code is not None:
                finish(*key, code)
            elif _now() > deadline + 20:  # the worker did not end by itself: stop it
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                finish(*key, proc.returncode)
        while queue and len(running) < jobs:
            split, method = queue[0]
            if method == "ce" and any(k[0] == "worst" for k in running):
                break  # CE on worst takes BKD's epochs on worst: wait for it
            if deadline - _now() < MIN_START_S:
                for s, m in queue:
                    state["runs"][f"{s}/{m}"] = {"status": "not started",
                                                 "reason": f"{deadline - _now():.0f} s left before the runs' "
                                                           f"deadline, {MIN_START_S:.0f} s needed"}
                queue.clear()
                session.write()
                break
            queue.pop(0)
            start(split, method)
        if _now() - last_sample > 5:
            sample = _gpu_sample()
            if sample:
                state["gpu_samples"].append([round(_now() - started, 1), sample])
            last_sample = _now()
            session.write()
        time.sleep(0.5)
    state["wall_s"] = round(_now() - started, 1)
    bkd = [r for k, r in state["runs"].items() if k.endswith("/bkd") and r.get("status") == "ok"]
    state["splits_finished"] = len(bkd)
    state["splits_detected_by_peak"] = sum(r.get("tipping_rule") == "peak" and r.get("stopped_by") == "detection"
                                           for r in bkd)
    return {"status": "ok" if len(bkd) == len(SPLITS) else "incomplete", **state}


def call2() -> int:
    out, session, work = start_call("2")
    data_dir: Path | None
    if DRY and not (packs_dir() / ".pack-b" / "devpack.py").is_file():
        session.record["steps"]["decode_b"] = {"status": "skipped", "reason": "dry run without .pack-b"}
        data_dir = Path(os.environ["BKD_DATA_DIR"]) if os.environ.get("BKD_DATA_DIR") else None
    else:
        data_dir = work / "data" if DRY else ROOT / ".data"
        result = session.step("decode_b", lambda: decode("b", data_dir))
        if result["status"] != "ok":
            # a fresh machine lost part a: measure what needs no real data instead (call 1's checks)
            data_dir = None
            session.step("fallback_gpu_check", lambda: _run(
                [sys.executable, str(HERE / "gpu_check.py"), "--out", str(out / "gpu_check.json"),
                 "--budget", f"{max(10.0, session.left() - 20):.0f}",
                 "--sections", "device,paper_runs,benchmark,profile,sync_debug,tests"],
                timeout=max(10.0, session.left() - 5), cwd=ROOT,
                env={**{k: v for k, v in os.environ.items() if k != "BKD_DATA_DIR"},
                     "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}))
            session.record["status"] = "no data: call 1's part a is gone (a fresh machine?)"
            session.write()
            return 0
    session.step("runs", lambda: run_splits(session, work, out, data_dir), need=MIN_START_S)
    session.record["status"] = "done"
    session.write()
    return 0


# ------------------------------------------------------------------------------------------------
# here: what came back -> reproductions/paper
# ------------------------------------------------------------------------------------------------
def unpack(source: Path, dest: Path) -> list[Path]:
    """Extract every ``paper-<split>.tar.gz`` under ``source`` into ``dest/cifar10-<split>-seed0/`` (only the
    files of :data:`RUN_FILES`, nothing outside that folder) and copy the session records into
    ``dest/device/``. Returns the run folders written."""
    archives = sorted(Path(source).glob("paper-*.tar.gz"))
    records = [p for name in ("session1.json", "session2.json", "gpu_check.json", "session1.log", "session2.log")
               for p in [Path(source) / name] if p.is_file()]
    if not archives and not records:
        raise FileNotFoundError(f"{source} holds no paper-*.tar.gz and no session record: pass the folder the "
                                "device call's files were copied into")
    written = []
    for archive in archives:
        split = archive.name[len("paper-"):-len(".tar.gz")]
        if split not in SPLITS:
            raise ValueError(f"{archive.name}: {split!r} is not a CIFAR-10N split ({', '.join(SPLITS)})")
        folder = run_folder(split)
        with tarfile.open(archive, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            target = Path(dest) / folder
            if target.exists():
                shutil.rmtree(target)
            for rel in RUN_FILES:
                member = members.get(f"{folder}/{rel}")
                if member is None:
                    continue
                path = target / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(tar.extractfile(member).read())
        written.append(target)
    if records:
        (Path(dest) / "device").mkdir(parents=True, exist_ok=True)
        for path in records:
            shutil.copyfile(path, Path(dest) / "device" / path.name)
    if written or (Path(dest) / "summary.json").is_file():
        write_batch_summary(Path(dest))
    return written


def write_batch_summary(dest: Path) -> None:
    """``dest/summary.json`` as a ``reproduce`` batch has it (its options, one entry per run), so that the
    book and ``python -m bkd_core results`` find the folder as a batch."""
    runs, devices = [], set()
    for path in sorted(dest.glob("cifar10-*-seed*/metrics.json")):
        run = json.loads(path.read_text())
        bkd = run.get("methods", {}).get("bkd", {})
        devices.add(bkd.get("device", "?"))
        runs.append({"name": path.parent.name, "status": "done", "seconds": run.get("wall_time_s"),
                     "reason": "", "stopped_by": run.get("device_session", {}).get("methods", {}).get("bkd", {})
                     .get("stopped_by")})
    options = {"out": str(dest), "profile": "paper", "overrides": {"stop_after_detection": True},
               "methods": ["bkd", "ce"], "folds": None, "data_dir": None, "download": False,
               "device": ", ".join(sorted(devices)), "threads": None,
               "made_by": "benchmarks/device_session.sh (two device calls), unpacked by device_session.py unpack"}
    _write_json(dest / "summary.json", {"options": options, "runs": runs})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("call1")
    sub.add_parser("call2")
    w = sub.add_parser("worker")
    w.add_argument("--split", choices=SPLITS, required=True)
    w.add_argument("--method", choices=("bkd", "ce"), required=True)
    w.add_argument("--run-dir", required=True)
    w.add_argument("--deadline", type=float, required=True, help="time.time() by which the run must have ended")
    w.add_argument("--epochs", type=int, default=None)
    w.add_argument("--threads", type=int, default=1)
    u = sub.add_parser("unpack", help="what a device call returned -> reproductions/paper/<run>/")
    u.add_argument("source", type=Path, help="the folder the call's files were copied into")
    u.add_argument("--dest", type=Path, default=ROOT / "reproductions" / "paper")
    args = parser.parse_args(argv)
    if args.command == "call1":
        return call1()
    if args.command == "call2":
        return call2()
    if args.command == "worker":
        return worker(args)
    try:
        for folder in unpack(args.source, args.dest):
            print(f"wrote {folder}")
    except (OSError, ValueError, tarfile.TarError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"session records in {args.dest / 'device'}; table: python -m bkd_core results {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
