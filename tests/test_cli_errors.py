"""Bad input at the command line: each case is answered by one clear line (``error: ...``) that names
what is wrong and how to fix it, a non-zero exit status, no traceback, and nothing half-written.

Training cases run the real ``train`` / ``train-ce`` commands on a tiny synthetic data set (the data
loader is replaced; the data-file errors have their own tests in test_data.py)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import bkd_core.cli as cli
from bkd_core.synthetic import make_synthetic_cifar_n

pd = pytest.importorskip("pandas")  # a book package: absent on a training-only machine

TINY_SET = ["model_widths=(4,8,8)", "train_size=None", "test_size=None", "batch_size=64", "epochs=2",
            "tipping_fallback=0"]


@pytest.fixture
def tiny(monkeypatch):
    data = make_synthetic_cifar_n(n_train=120, n_test=30, noise_rate=0.3, seed=4)
    monkeypatch.setattr(cli, "load_cifar_n", lambda *a, **k: data)
    return data


def _train(out: Path, *extra: str, command: str = "train") -> list[str]:
    args = [command, "--split", "worst", "--out", str(out), "--no-progress"]
    for pair in TINY_SET:
        args += ["--set", pair]
    return args + list(extra)


def _fails(argv, capsys, *fragments, code=2):
    """Run the CLI; assert a non-zero exit with one ``error:`` line that holds every fragment."""
    try:
        got = cli.main(argv)
    except SystemExit as exc:  # argparse-level and --set errors exit through SystemExit(message)
        got = exc.code if isinstance(exc.code, int) else 1
        err = (str(exc.code) if not isinstance(exc.code, int) else "") + capsys.readouterr().err
    else:
        err = capsys.readouterr().err
    assert got == code or (code == 2 and got == 1), (got, err)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _finished(out: Path, capsys, *extra: str, command: str = "train") -> None:
    assert cli.main(_train(out, *extra, command=command)) == 0
    capsys.readouterr()


# -- refused run folders -------------------------------------------------------------------------------


def test_a_refused_run_folder_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    """Each kind of refusal of a run folder (test_rundir.py holds every case) reaches the command line as one
    line, exit 2: a damaged checkpoint, one that would run code, the folder of another run, a file, a read-only
    folder."""
    out = tmp_path / "run"
    _finished(out, capsys)
    (out / "metrics.json").unlink()  # so that a rerun resumes from the checkpoint
    ckpt = out / "checkpoint.pt"
    good = ckpt.read_bytes()
    ckpt.write_bytes(b"garbage")
    _fails(_train(out), capsys, "is damaged", str(ckpt), "Delete it to restart this run")
    marker = tmp_path / "code-ran"

    class Shell:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"identity": Shell()}, ckpt)
    _fails(_train(out), capsys, "refused as unsafe", "nothing in it was run")
    assert not marker.exists()
    ckpt.write_bytes(good)
    _fails(_train(out, "--set", "lr=0.05"), capsys, "belongs to a different run")
    path = tmp_path / "file"
    path.write_text("x")
    _fails(_train(path), capsys, "is a file, not a folder")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # a non-root user in a read-only folder
    _fails(_train(tmp_path / "read-only"), capsys, "is not writable")


# -- the disk ----------------------------------------------------------------------------------------------


def test_disk_full_while_writing(tiny, tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez_compressed", full)
    _fails(_train(tmp_path / "run"), capsys, "No space left on device", "free some space")
    assert not list((tmp_path / "run").rglob("*.tmp"))  # nothing half-written


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real file system of 32 KiB (tmpfs): room for a run's first small files, not for its checkpoint."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for a real full disk needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)  # also while a failed test holds a file


def test_a_real_full_disk_inside_torch_save_is_one_line(tiny, small_tmpfs, capsys):
    """torch.save reports a full disk as a RuntimeError from its zip writer: answered as ENOSPC, one line
    naming the checkpoint, and no temporary file left behind."""
    line = _fails(_train(small_tmpfs / "run"), capsys, "No space left on device", "checkpoint.pt", "free some space")
    assert "RuntimeError" not in line and "enforce fail" not in line
    assert not list(small_tmpfs.rglob("*.tmp"))


# -- settings --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pair, fragment", [
    ("batch_size=2.5", "batch_size must be an integer, got 2.5"),
    ("epochs=2.5", "epochs must be an integer, got 2.5"),
    ("epochs=abc", "epochs must be an integer, got 'abc'"),
    ("lr=nan", "lr must be a finite number, got 'nan'"),
    ("lr=float('inf')", "lr must be a finite number"),
    ("seed=abc", "seed must be an integer, got 'abc'"),
    ("momentum=abc", "momentum must be a finite number, got 'abc'"),
    ("device=tpu", "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
])
def test_invalid_setting_names_the_field(tiny, tmp_path, capsys, pair, fragment):
    _fails(_train(tmp_path / "run", "--set", pair), capsys, fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_gpu(tiny, tmp_path, capsys):
    _fails(_train(tmp_path / "run", "--set", "device=cuda"), capsys, "no CUDA device", "'auto' or 'cpu'")


def test_train_size_larger_than_the_data(tiny, tmp_path, capsys):
    _fails(_train(tmp_path / "run", "--set", "train_size=100000"), capsys, "train_size=100,000 is larger than the 120")


def test_bkd_only_field_on_a_ce_run(tiny, tmp_path, capsys):
    _fails(_train(tmp_path / "run", "--set", "otsu_criterion=classic", command="train-ce"), capsys,
           "otsu_criterion", "only BKD uses")


def test_diverging_run_exits_with_error(tiny, tmp_path, capsys):
    _fails(_train(tmp_path / "run", "--set", "lr=1e6", "--set", "epochs=4"), capsys, "training diverged in epoch",
           "learning rate too high")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_ctrl_c_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    import bkd_core.train as train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_bkd", interrupted)
    assert cli.main(_train(tmp_path / "run")) == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted: rerun the same command to resume from the last finished epoch"


@pytest.mark.parametrize("flag, value, fragment", [("--threads", "0", "--threads must be >= 1"),
                                                   ("--jobs", "0", "--jobs must be >= 1"),
                                                   ("--folds", "1", "--folds must be >= 2")])
def test_reproduce_rejects_bad_counts(tmp_path, capsys, flag, value, fragment):
    _fails(["reproduce", "--out", str(tmp_path / "batch"), "--splits", "worst", flag, value], capsys, fragment)
    assert not (tmp_path / "batch").exists()


# -- results of a batch -------------------------------------------------------------------------------------


def _batch_run(tmp_path: Path, metrics) -> Path:
    run = tmp_path / "batch" / "cifar10-worst-seed0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


@pytest.mark.parametrize("metrics, fragment", [([1, 2], "holds a list, not a run's metrics"),
                                               ({"split": "worst", "seed": 0, "methods": {}}, "lacks dataset"),
                                               ({"dataset": "cifar10", "split": "worst", "seed": 0, "methods": []},
                                                "'methods' holds a list")])
def test_results_over_a_broken_metrics_json(tmp_path, capsys, metrics, fragment):
    run = _batch_run(tmp_path, metrics)
    _fails(["results", str(tmp_path / "batch")], capsys, str(run / "metrics.json"), fragment)


def test_a_nan_score_names_column_line_and_sample():
    from bkd_core.book.results import ranking_aucs

    samples = pd.DataFrame({"index": [0, 1, 2], "given_label": [1, 2, 3], "clean_label": [1, 0, 3],
                            "bkd_quality": [0.5, float("nan"), 0.7]})
    with pytest.raises(ValueError, match="column bkd_quality has 1 NaN .*first on line 3, sample index 1"):
        ranking_aucs(samples)
