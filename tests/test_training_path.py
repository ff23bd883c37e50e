"""The training path runs where only torch, torchvision, numpy, Pillow and tqdm are installed (a GPU machine's
image): with every book package blocked, bkd_core's training modules import (without ``bkd_core.book``), BKD
and the cross-entropy baseline train through the API and the command line, and the test suite still collects
(the tests that need a book package are skipped)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Packages only the book, the batch and the baselines use (``pip install .[book]``).
BOOK_PACKAGES = ("nbformat", "papermill", "cleanlab", "submitit", "jupyter_book", "IPython", "ipykernel", "pandas",
                 "matplotlib", "seaborn", "sklearn")

# A None entry in sys.modules is how Python spells "not installed" to both `import` (ModuleNotFoundError) and
# importlib.util.find_spec (None), which torch uses to probe for optional packages.
BLOCKER = textwrap.dedent(f"""
    import sys
    BLOCKED = set({BOOK_PACKAGES!r})
    for name in BLOCKED:
        sys.modules[name] = None
""")

TRAIN = textwrap.dedent("""
    import importlib, json, sys, tempfile
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    modules = ["config", "method", "train", "models", "augment", "data", "features", "rundir", "metrics",
               "label_issues", "cli", "synthetic", "provenance"]
    for name in modules:
        importlib.import_module(f"bkd_core.{name}")
    from bkd_core import cli
    from bkd_core.config import BKDConfig
    from bkd_core.synthetic import make_synthetic_cifar_n
    from bkd_core.train import train_bkd, train_ce
    data = make_synthetic_cifar_n(n_train=120, n_test=30, noise_rate=0.3, seed=0)
    cfg = BKDConfig(model="small_cnn", model_widths=(4, 8, 8), epochs=5, batch_size=32, lr_step=None,
                    tipping_fallback=0, stop_after_detection=True, val_every=1, test_every=1, device="cpu")
    tmp = Path(tempfile.mkdtemp())
    bkd = train_bkd(data, cfg, tmp / "bkd", progress=False)
    ce = train_ce(data, cfg.replace(stop_after_detection=False, epochs=2), tmp / "ce", progress=False)
    cli.load_cifar_n = lambda *a, **k: data
    code = cli.main(["train", "--profile", "cnn", "--out", str(tmp / "cli"), "--epochs", "1", "--device", "cpu",
                     "--no-progress", "--set", "train_size=None", "--set", "test_size=None",
                     "--set", "model_widths=(4,8,8)"])
    blocked = sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in BLOCKED)
    print("RESULT " + json.dumps({"bkd_epochs": bkd.metrics["epochs"],
                                  "bkd_found": bkd.metrics["tipping_found_at_epoch"],
                                  "ce_epochs": ce.metrics["epochs"], "cli": code, "loaded": blocked,
                                  "book": sorted(m for m in sys.modules if m.startswith("bkd_core.book"))}))
""")


def _python(code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def test_training_path_imports_and_trains_without_book_packages():
    proc = _python(BLOCKER + TRAIN)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert result["loaded"] == []
    assert result["book"] == []  # the training path never imports the book's subpackage
    assert result["bkd_found"] is not None and result["bkd_epochs"] == result["bkd_found"] + 1 < 5  # stopped
    assert result["ce_epochs"] == 2 and result["cli"] == 0


def test_gpu_tests_collect_without_book_packages():
    """``pytest -m gpu tests`` on a machine without the book packages: collection succeeds, the modules that
    need a book package are skipped, and the ``gpu`` tests are selected."""
    code = BLOCKER + textwrap.dedent("""
        import pytest, sys
        sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests"]))
    """)
    proc = _python(code)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    selected = [ln for ln in proc.stdout.splitlines() if "::" in ln]
    assert len(selected) >= 10, proc.stdout[-3000:]
    assert any("test_precision.py" in ln for ln in selected) and any("test_train.py" in ln for ln in selected)
    assert "error" not in proc.stdout.splitlines()[-1].lower(), proc.stdout[-2000:]
