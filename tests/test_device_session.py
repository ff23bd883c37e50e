"""benchmarks/device_session.sh, the two prepared GPU calls, in their dry-run mode on the CPU: each runs end to
end at tiny sizes within its time limit and writes the files a device call returns (at most 8, each small, no
deeper than two folders); what call 2 returns unpacks into a batch folder that the results table reads. And the
pieces the dry run cannot reach by itself: a run ends cleanly at its deadline, and unpacking keeps only the run
files of an archive."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_session.sh"
SPLITS = ("worst", "aggre", "rand1", "rand2", "rand3", "clean")


def _module():
    spec = importlib.util.spec_from_file_location("device_session", ROOT / "benchmarks" / "device_session.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dry_run(call: int, out: Path, work: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "BKD_DEVICE_DRY_RUN": "1", "OUT": str(out),
           "BKD_SESSION_WORK": str(work), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("BKD_SESSION_PACKS", None)
    env.pop("BKD_SESSION_BUDGET", None)
    return subprocess.run(["bash", str(SCRIPT), str(call)], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=180)


def _returned(out: Path) -> list[Path]:
    """What a device call would bring back: every file under $OUT (checked against the tool's limits)."""
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files
    for path in files:
        assert path.stat().st_size <= 16 * 2**20 and len(path.relative_to(out).parts) <= 3, path
    return files


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_both_device_calls_run_dry_on_the_cpu_and_unpack(tmp_path, capsys):
    work = tmp_path / "work"
    start = time.monotonic()
    first = _dry_run(1, tmp_path / "out1", work)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    names = {p.name for p in _returned(tmp_path / "out1")}
    assert names == {"session1.json", "session1.log", "gpu_check.json"}
    session = json.loads((tmp_path / "out1" / "session1.json").read_text())
    assert session["status"] == "done" and session["steps"]["gpu_check"]["status"] == "ok", session
    report = json.loads((tmp_path / "out1" / "gpu_check.json").read_text())
    failed = {k: v for k, v in report["sections"].items() if v["status"] == "failed"}
    assert not failed, json.dumps(failed)[:3000]
    assert list(report["sections"]) == ["device", "sync_debug", "profile", "tests", "benchmark", "paper_runs"]

    second = _dry_run(2, tmp_path / "out2", work)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert time.monotonic() - start < 360  # each call well inside its 3 minutes
    names = {p.name for p in _returned(tmp_path / "out2")}
    assert names == {"session2.json", "session2.log", *(f"paper-{s}.tar.gz" for s in SPLITS)}
    runs = json.loads((tmp_path / "out2" / "session2.json").read_text())["steps"]["runs"]
    assert runs["status"] == "ok" and runs["splits_finished"] == 6
    assert {k: v["status"] for k, v in runs["runs"].items()} == {**{f"{s}/bkd": "ok" for s in SPLITS}, "worst/ce": "ok"}
    assert all(runs["runs"][f"{s}/bkd"]["stopped_by"] == "detection" for s in SPLITS)

    dest = tmp_path / "reproductions" / "paper"
    written = _module().unpack(tmp_path / "out2", dest)
    assert sorted(p.name for p in written) == sorted(f"cifar10-{s}-seed0" for s in SPLITS)
    worst = json.loads((dest / "cifar10-worst-seed0" / "metrics.json").read_text())
    assert set(worst["methods"]) == {"bkd", "ce"} and worst["profile"] == "paper"
    bkd = worst["methods"]["bkd"]
    for key in ("tipping_epoch", "tipping_rule", "threshold", "estimated_noise_rate", "true_noise_rate",
                "detection_f1", "below_threshold_f1", "flag_all_f1", "ranking_auc", "test_acc", "device", "versions"):
        assert key in bkd, key
    assert worst["code_hash"] and len(worst["curves"]["bkd"]["mean_max_student"]) == bkd["epochs"]
    assert len(worst["curves"]["ce"]["memorized_noisy"]) == worst["methods"]["ce"]["epochs"]
    histogram = worst["agreement_histogram"]
    assert sum(histogram["clean"]) + sum(histogram["noisy"]) == bkd["num_samples"]
    with np.load(dest / "cifar10-worst-seed0" / "bkd" / "tipping_scores.npz") as scores:
        assert scores["agreement"].dtype == "float16" and len(scores["agreement"]) == bkd["num_samples"]
    assert (dest / "device" / "session2.json").is_file()
    batch = json.loads((dest / "summary.json").read_text())
    assert batch["options"]["profile"] == "paper" and len(batch["runs"]) == 6

    pytest.importorskip("pandas")
    from bkd_core.cli import main

    assert main(["results", str(dest)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0] == "| mean ± std over seeds | clean | aggre | rand1 | rand2 | rand3 | worst |"


def test_a_run_ends_cleanly_at_its_deadline(tmp_path):
    """A run whose next epoch would end after its deadline stops before it and writes complete outputs (no
    tipping point yet: nothing flagged, the note says so)."""
    from bkd_core.config import BKDConfig
    from bkd_core.synthetic import make_synthetic_cifar_n
    from bkd_core.train import BKDTrainer

    session = _module()
    data = make_synthetic_cifar_n(n_train=120, n_test=30, noise_rate=0.3, seed=0)
    config = BKDConfig(model="small_cnn", model_widths=(4, 8, 8), epochs=50, batch_size=32, lr_step=None,
                       val_every=10, test_every=10, stop_after_detection=True, device="cpu")
    trainer = session._deadline_trainer(BKDTrainer)(data, config, tmp_path / "run", False)
    trainer.deadline = time.time() + 1e-3  # past after the first epoch: the second would not finish in time
    result = trainer.run()
    assert result.metrics["epochs"] == 1 and trainer.stopped_by_deadline
    assert result.metrics["tipping_epoch"] is None and "no tipping point" in result.metrics["note"]
    assert result.history["test_acc"].shape == (1,) and result.history["test_acc"][0] >= 0  # the last epoch's
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert progress["epochs"] == 1 and len(progress["history"]["loss"]) == 1


def test_unpack_keeps_only_the_run_files_and_refuses_other_names(tmp_path):
    session = _module()
    source = tmp_path / "back"
    source.mkdir()
    with tarfile.open(source / "paper-worst.tar.gz", "w:gz") as tar:
        for name, text in (("cifar10-worst-seed0/metrics.json", "{}"), ("cifar10-worst-seed0/bkd/metrics.json", "{}"),
                           ("../escape.txt", "x"), ("cifar10-worst-seed0/checkpoint.pt", "weights"),
                           ("/abs/file", "x")):
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text.encode()))
    dest = tmp_path / "paper"
    session.unpack(source, dest)
    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and "back" not in p.parts)
    assert found == ["paper/cifar10-worst-seed0/bkd/metrics.json", "paper/cifar10-worst-seed0/metrics.json",
                     "paper/summary.json"]
    (source / "paper-worst.tar.gz").rename(source / "paper-other.tar.gz")
    with pytest.raises(ValueError, match="not a CIFAR-10N split"):
        session.unpack(source, dest)
    with pytest.raises(FileNotFoundError, match="holds no paper"):
        session.unpack(tmp_path / "nothing", dest)
