"""benchmarks/gpu_check.sh in its CPU mode: it runs to the end without a GPU and writes one JSON report
whose every section ran or says why it was skipped (so CI keeps the first-device script working)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_runs_on_the_cpu_and_writes_one_report(tmp_path):
    out = tmp_path / "report.json"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}  # never a GPU here
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert set(sections) == {"device", "tests", "sync_debug", "paper_runs", "benchmark", "profile"}
    failed = {k: v for k, v in sections.items() if v["status"] == "failed"}
    assert not failed, json.dumps(failed, indent=1)[:4000]
    assert proc.returncode == 0 and report["status"] == "ok"
    assert sections["device"]["device"] == "cpu" and sections["device"]["paper_precision_auto"] == "fp32"
    assert sections["sync_debug"]["status"] == "skipped" and "CUDA" in sections["sync_debug"]["reason"]
    assert sum(run["counts"].get("passed", 0) for run in sections["tests"]["runs"]) >= 5
    runs = sections["paper_runs"]["runs"]
    measured = [r for r in runs.values() if r["status"] == "ok"]
    assert len(measured) == 2 and all(len(r["epoch_seconds"]) == 2 and min(r["epoch_seconds"]) > 0 for r in measured)
    assert {r["precision"] for r in measured} == {"fp32"}
    assert sections["benchmark"]["medians_images_per_s"]["bkd_core"] > 0
    assert sections["profile"]["wall_seconds"] > 0
