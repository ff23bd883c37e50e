"""``python -m bkd_core data`` (the first step of ``make book``): download what is missing, check what is there.

Offline: a local HTTP server on 127.0.0.1 serves a tiny CIFAR-10 archive in torchvision's format and
CIFAR-N label files; torchvision's URL and checksums and the label URLs point at it. Nothing here
reaches the internet.
"""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
import torchvision.datasets
from test_data import N_TEST, N_TRAIN, make_arrays, make_labels, write_labels, write_npz

from bkd_core import data as D
from bkd_core.cli import main
from bkd_core.data import STAGING

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(D, "CIFAR_TRAIN_SIZE", N_TRAIN)
    monkeypatch.setattr(D, "CIFAR_TEST_SIZE", N_TEST)


def _md5(payload: bytes) -> str:
    return hashlib.md5(payload).hexdigest()


def _cifar10_archive(arrays: dict) -> tuple[bytes, dict[str, str]]:
    """A cifar-10-python.tar.gz of ``arrays`` in torchvision's format, and the md5 of each member."""
    def batch(x, y):  # torchvision's layout: rows of 3072 uint8 in CHW order
        return pickle.dumps({"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), "labels": [int(v) for v in y]})

    chunks = np.array_split(np.arange(len(arrays["x_train"])), len(TRAIN_FILES))
    members = {name: batch(arrays["x_train"][rows], arrays["y_train"][rows]) for name, rows in zip(TRAIN_FILES, chunks)}
    members["test_batch"] = batch(arrays["x_test"], arrays["y_test"])
    members["batches.meta"] = pickle.dumps({"label_names": D.class_names("cifar10")})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue(), {name: _md5(payload) for name, payload in members.items()}


def _label_bytes(dataset: str, clean: np.ndarray) -> bytes:
    buf = io.BytesIO()
    torch.save(make_labels(dataset, clean), buf)
    return buf.getvalue()


@pytest.fixture
def server(tmp_path, small, monkeypatch):
    """A local server of a tiny CIFAR-10 archive and both label files; yields (folder served, requested paths)."""
    served = tmp_path / "served"
    served.mkdir()
    arrays = make_arrays("cifar10")
    archive, md5s = _cifar10_archive(arrays)
    (served / "cifar-10-python.tar.gz").write_bytes(archive)
    (served / "CIFAR-10_human.pt").write_bytes(_label_bytes("cifar10", arrays["y_train"]))
    (served / "CIFAR-100_human.pt").write_bytes(_label_bytes("cifar100", make_arrays("cifar100")["y_train"]))
    requested: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requested.append(self.path)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "url", f"{base}/cifar-10-python.tar.gz")
    monkeypatch.setattr(cls, "tgz_md5", _md5(archive))
    monkeypatch.setattr(cls, "train_list", [[n, md5s[n]] for n in TRAIN_FILES])
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5s["test_batch"]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5s["batches.meta"]})
    monkeypatch.setattr(D, "LABEL_URLS", {d: f"{base}/{f}" for d, f in D.LABEL_FILES.items()})
    yield served, requested, arrays
    httpd.shutdown()
    httpd.server_close()


def test_downloads_into_an_empty_folder_then_does_nothing(tmp_path, server, capsys):
    _, requested, arrays = server
    root = tmp_path / "fresh" / "data"
    assert main(["data", "--data-dir", str(root)]) == 0
    out, err = capsys.readouterr()
    assert f"data ready in {root}" in out
    assert str(root) in err and "BKD_DATA_DIR" in err  # says where, and how to use a local copy instead
    assert sorted(p.name for p in root.iterdir()) == ["CIFAR-100_human.pt", "CIFAR-10_human.pt", "cifar-10-batches-py"]
    d = D.load_cifar_n("cifar10", "worst", root)
    np.testing.assert_array_equal(d.train_images, arrays["x_train"])
    assert set(requested) == {"/CIFAR-100_human.pt", "/CIFAR-10_human.pt", "/cifar-10-python.tar.gz"}

    # everything there: checked, nothing fetched
    fetched = len(requested)
    assert main(["data", "--data-dir", str(root)]) == 0
    assert len(requested) == fetched


def test_uses_bkd_data_dir(tmp_path, server, monkeypatch):
    monkeypatch.setenv("BKD_DATA_DIR", str(tmp_path / "env"))
    assert main(["data"]) == 0
    assert (tmp_path / "env" / "cifar-10-batches-py").is_dir()


def test_a_bad_download_leaves_the_folder_unchanged_and_a_rerun_finishes(tmp_path, server, capsys):
    served, _, _ = server
    archive = served / "cifar-10-python.tar.gz"
    good = archive.read_bytes()
    archive.write_bytes(good[: len(good) // 2])  # a truncated transfer: fails torchvision's checksum
    root = tmp_path / "data"
    root.mkdir()
    (root / "mine.txt").write_text("kept")
    assert main(["data", "--data-dir", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "cifar10" in err[-1]
    # nothing half-written in place: the checked label file, the staging folder kept for a rerun
    assert sorted(p.name for p in root.iterdir()) == [STAGING, "CIFAR-10_human.pt", "mine.txt"]
    assert str(root) in err[-1] and STAGING not in err[-1]

    archive.write_bytes(good)
    assert main(["data", "--data-dir", str(root)]) == 0
    assert sorted(p.name for p in root.iterdir()) == ["CIFAR-100_human.pt", "CIFAR-10_human.pt",
                                                      "cifar-10-batches-py", "mine.txt"]


def test_local_copy_is_checked_without_network(tmp_path, small, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise AssertionError("no download when the data is there")

    monkeypatch.setattr(D.urllib.request, "urlopen", offline)
    arrays = make_arrays("cifar10")
    write_npz(tmp_path / "cifar10.npz", arrays)
    write_labels(tmp_path / "CIFAR-10_human.pt", make_labels("cifar10", arrays["y_train"]))
    write_labels(tmp_path / "CIFAR-100_human.pt", make_labels("cifar100", make_arrays("cifar100")["y_train"]))
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert main(["data", "--data-dir", str(tmp_path)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_a_missing_optional_label_file_is_a_warning(tmp_path, small, monkeypatch, capsys):
    def offline(url, timeout=None):
        raise D.urllib.error.URLError("no network")

    monkeypatch.setattr(D.urllib.request, "urlopen", offline)
    arrays = make_arrays("cifar10")
    write_npz(tmp_path / "cifar10.npz", arrays)
    write_labels(tmp_path / "CIFAR-10_human.pt", make_labels("cifar10", arrays["y_train"]))
    assert main(["data", "--data-dir", str(tmp_path)]) == 0
    assert "warning: " in capsys.readouterr().err
    assert not (tmp_path / "CIFAR-100_human.pt").exists()


def test_a_damaged_local_copy_is_reported_not_replaced(tmp_path, small, capsys):
    arrays = make_arrays("cifar10")
    arrays["y_train"] = (arrays["y_train"] + 1) % 10  # images in another order than the labels
    write_npz(tmp_path / "cifar10.npz", arrays)
    write_labels(tmp_path / "CIFAR-10_human.pt", make_labels("cifar10", make_arrays("cifar10")["y_train"]))
    write_labels(tmp_path / "CIFAR-100_human.pt", make_labels("cifar100", make_arrays("cifar100")["y_train"]))
    before = (tmp_path / "cifar10.npz").read_bytes()
    assert main(["data", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "cifar10" in err[0]
    assert (tmp_path / "cifar10.npz").read_bytes() == before


# -- the staging folder and the lock: never a folder bkd_core did not make, one writer per data folder ----------


def test_a_users_download_folder_is_left_alone(tmp_path, server, capsys):
    root = tmp_path / "data"
    (root / ".download").mkdir(parents=True)  # the staging name of older versions: now the user's own folder
    (root / ".download" / "notes.txt").write_text("mine")
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / ".download" / "link").symlink_to(outside)
    assert main(["data", "--data-dir", str(root)]) == 0
    assert sorted(p.name for p in (root / ".download").iterdir()) == ["link", "notes.txt"]
    assert (root / ".download" / "notes.txt").read_text() == "mine" and list(outside.iterdir()) == []
    assert not (root / STAGING).exists()  # its own staging folder is gone once the data is in place


@pytest.mark.parametrize("kind", ["symlink", "users-folder", "file"])
def test_a_staging_name_bkd_core_did_not_make_is_refused_untouched(tmp_path, server, capsys, kind):
    _, requested, _ = server
    root = tmp_path / "data"
    root.mkdir()
    target = tmp_path / "elsewhere"
    target.mkdir()
    staging = root / STAGING
    if kind == "symlink":
        staging.symlink_to(target)
    elif kind == "users-folder":
        staging.mkdir()
        (staging / "thesis.tex").write_text("mine")
    else:
        staging.write_text("mine")
    assert main(["data", "--data-dir", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and f"{staging} is in the way" in err[-1] and "move or rename it" in err[-1]
    assert "/cifar-10-python.tar.gz" not in requested  # nothing downloaded through it
    assert list(target.iterdir()) == []  # nothing written through the link
    if kind == "users-folder":
        assert [p.name for p in staging.iterdir()] == ["thesis.tex"] and (staging / "thesis.tex").read_text() == "mine"
    elif kind == "file":
        assert staging.read_text() == "mine"
    else:
        assert staging.is_symlink()


def test_a_second_data_run_waits_for_the_first(tmp_path, small):
    """A real second process on a data folder another one holds: it says so in one line, touches nothing, and
    finishes once the first is done, never calling the first's half-staged download corrupt."""
    import fcntl
    import os
    import select
    import subprocess
    import sys

    root = tmp_path / "data"
    root.mkdir()
    held = os.open(root, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # the first `data` run, half-way through its download
    staging = root / STAGING
    staging.mkdir()
    (staging / D.STAGING_MARK).write_text("")
    (staging / "cifar-10-python.tar.gz").write_bytes(b"half an archive")
    script = ("import sys; from bkd_core import data as D; from bkd_core.cli import main; "
              f"D.CIFAR_TRAIN_SIZE, D.CIFAR_TEST_SIZE = {N_TRAIN}, {N_TEST}; "
              f"sys.exit(main(['data', '--data-dir', {str(root)!r}]))")
    second = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        ready, _, _ = select.select([second.stderr], [], [], 300)  # a safety net, not a timing
        assert ready, "the second run neither waited nor said so"
        line = second.stderr.readline()
        assert line.strip() == f"another process is fetching data into {root}; waiting for it to finish"
        assert sorted(p.name for p in root.iterdir()) == [STAGING]
        assert (staging / "cifar-10-python.tar.gz").read_bytes() == b"half an archive"
        # the first run finishes: its checked files in place, its staging folder removed, the lock released
        arrays = make_arrays("cifar10")
        write_npz(root / "cifar10.npz", arrays)
        write_labels(root / "CIFAR-10_human.pt", make_labels("cifar10", arrays["y_train"]))
        write_labels(root / "CIFAR-100_human.pt", make_labels("cifar100", make_arrays("cifar100")["y_train"]))
        for path in staging.iterdir():
            path.unlink()
        staging.rmdir()
    finally:
        os.close(held)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert out.strip() == f"data ready in {root}" and "corrupt" not in err and "error" not in err
