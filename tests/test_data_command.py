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
from bkd_core.cli import STAGING, main

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
    assert main(["data", "--root", str(root)]) == 0
    out, err = capsys.readouterr()
    assert f"data ready in {root}" in out
    assert str(root) in err and "BKD_DATA_DIR" in err  # says where, and how to use a local copy instead
    assert sorted(p.name for p in root.iterdir()) == ["CIFAR-100_human.pt", "CIFAR-10_human.pt", "cifar-10-batches-py"]
    d = D.load_cifar_n("cifar10", "worst", root)
    np.testing.assert_array_equal(d.train_images, arrays["x_train"])
    assert set(requested) == {"/CIFAR-100_human.pt", "/CIFAR-10_human.pt", "/cifar-10-python.tar.gz"}

    # everything there: checked, nothing fetched
    fetched = len(requested)
    assert main(["data", "--root", str(root)]) == 0
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
    assert main(["data", "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "cifar10" in err[-1]
    assert sorted(p.name for p in root.iterdir()) == [STAGING, "mine.txt"]  # nothing half-written in place

    archive.write_bytes(good)
    assert main(["data", "--root", str(root)]) == 0
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
    assert main(["data", "--root", str(tmp_path)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_a_missing_optional_label_file_is_a_warning(tmp_path, small, monkeypatch, capsys):
    def offline(url, timeout=None):
        raise D.urllib.error.URLError("no network")

    monkeypatch.setattr(D.urllib.request, "urlopen", offline)
    arrays = make_arrays("cifar10")
    write_npz(tmp_path / "cifar10.npz", arrays)
    write_labels(tmp_path / "CIFAR-10_human.pt", make_labels("cifar10", arrays["y_train"]))
    assert main(["data", "--root", str(tmp_path)]) == 0
    assert "warning: " in capsys.readouterr().err
    assert not (tmp_path / "CIFAR-100_human.pt").exists()


def test_a_damaged_local_copy_is_reported_not_replaced(tmp_path, small, capsys):
    arrays = make_arrays("cifar10")
    arrays["y_train"] = (arrays["y_train"] + 1) % 10  # images in another order than the labels
    write_npz(tmp_path / "cifar10.npz", arrays)
    write_labels(tmp_path / "CIFAR-10_human.pt", make_labels("cifar10", make_arrays("cifar10")["y_train"]))
    write_labels(tmp_path / "CIFAR-100_human.pt", make_labels("cifar100", make_arrays("cifar100")["y_train"]))
    before = (tmp_path / "cifar10.npz").read_bytes()
    assert main(["data", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "cifar10" in err[0]
    assert (tmp_path / "cifar10.npz").read_bytes() == before
