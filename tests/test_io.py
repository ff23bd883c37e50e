"""Tests of bkd_core.io: complete files or the previous version, never a half-written one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import bkd_core.io as bio
from bkd_core.io import atomic_save_npz, atomic_torch_save, atomic_write_json, read_json


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- JSON


def test_atomic_write_json_serialises_numpy_and_paths(tmp_path):
    data = {
        "int": np.int64(7),
        "int32": np.int32(-3),
        "float": np.float32(0.25),
        "float64": np.float64(1e-3),
        "bool": np.bool_(True),
        "array": np.arange(6, dtype=np.int16).reshape(2, 3),
        "farray": np.array([0.5, 1.5], dtype=np.float32),
        "path": tmp_path / "x" / "y.txt",
        "tuple": (1, np.int64(2), (3.0, None)),
        3: "int key",
        "nested": [{"a": np.float64(2.5), "b": [np.bool_(False)]}],
        "plain": {"s": "text", "n": None, "f": 1.5},
    }
    target = tmp_path / "out.json"
    atomic_write_json(target, data)
    text = target.read_text()
    assert text.endswith("}\n")
    assert json.loads(text) == {
        "int": 7,
        "int32": -3,
        "float": 0.25,
        "float64": 1e-3,
        "bool": True,
        "array": [[0, 1, 2], [3, 4, 5]],
        "farray": [0.5, 1.5],
        "path": str(tmp_path / "x" / "y.txt"),
        "tuple": [1, 2, [3.0, None]],
        "3": "int key",
        "nested": [{"a": 2.5, "b": [False]}],
        "plain": {"s": "text", "n": None, "f": 1.5},
    }
    loaded = json.loads(text)
    assert type(loaded["int"]) is int and type(loaded["bool"]) is bool and type(loaded["float"]) is float
    assert list(loaded) == [str(k) for k in data]  # key order kept
    assert read_json(target) == loaded
    assert _listing(tmp_path) == ["out.json"]


def test_atomic_write_json_creates_parent_folders_and_overwrites(tmp_path):
    target = tmp_path / "a" / "b" / "metrics.json"
    atomic_write_json(target, {"v": 1})
    atomic_write_json(target, {"v": 2, "w": [1, 2]})
    assert json.loads(target.read_text()) == {"v": 2, "w": [1, 2]}
    assert _listing(target.parent) == ["metrics.json"]
    atomic_write_json(str(target), [1, 2, 3])  # str paths too
    assert json.loads(target.read_text()) == [1, 2, 3]


def test_atomic_write_json_unserialisable_value_keeps_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"old": True})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"new": object()})
    assert json.loads(target.read_text()) == {"old": True}
    assert _listing(tmp_path) == ["metrics.json"]


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_atomic_write_json_failure_mid_write_keeps_old_file(tmp_path, monkeypatch, exc_type):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"old": 1})

    def broken_write_text(self, text, *args, **kwargs):
        with open(self, "w") as fh:
            fh.write(text[: len(text) // 2])  # half of the new file reaches the disk...
        raise exc_type("disk full")  # ...then the write fails

    monkeypatch.setattr(Path, "write_text", broken_write_text)
    with pytest.raises(exc_type):
        atomic_write_json(target, {"new": list(range(100))})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": 1}
    assert _listing(tmp_path) == ["metrics.json"]


def test_atomic_write_json_dumps_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    atomic_write_json(target, {"old": 1})

    def boom(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(bio.json, "dumps", boom)
    with pytest.raises(ValueError, match="boom"):
        atomic_write_json(target, {"new": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": 1}
    assert _listing(tmp_path) == ["config.json"]


def test_read_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"a": 1,')  # truncated
    with pytest.raises(ValueError) as exc:
        read_json(bad)
    assert str(bad) in str(exc.value)
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError) as exc:
        read_json(missing)
    assert "nope.json" in str(exc.value)


@pytest.mark.parametrize("writer", ["json", "npz", "torch"])
def test_atomic_writes_respect_umask(tmp_path, writer):
    old = os.umask(0o022)
    try:
        target = tmp_path / f"out.{writer}"
        if writer == "json":
            atomic_write_json(target, {"a": 1})
        elif writer == "npz":
            atomic_save_npz(target, a=np.zeros(2))
        else:
            atomic_torch_save(target, {"a": 1})
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------- NPZ


def test_atomic_save_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "label_issues": rng.random(50) < 0.3,
        "label_quality": rng.random(50).astype(np.float32),
        "ranked_indices": rng.permutation(50).astype(np.int64),
        "history": rng.random((4, 50)).astype(np.float16),
    }
    target = tmp_path / "run" / "scores.npz"
    atomic_save_npz(target, **arrays)
    assert _listing(target.parent) == ["scores.npz"]
    with np.load(target) as z:
        assert sorted(z.files) == sorted(arrays)
        for k, v in arrays.items():
            assert z[k].dtype == v.dtype and np.array_equal(z[k], v)


def test_atomic_save_npz_keeps_exact_path(tmp_path):
    # written through a file handle, so numpy does not append ".npz" to another suffix
    target = tmp_path / "scores.partial"
    atomic_save_npz(target, a=np.arange(3))
    assert _listing(tmp_path) == ["scores.partial"]
    with np.load(target) as z:
        assert np.array_equal(z["a"], np.arange(3))


def test_atomic_save_npz_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "scores.npz"
    atomic_save_npz(target, a=np.arange(5))
    real = np.savez_compressed

    def broken(file, **arrays):
        real(file, **arrays)  # a complete archive goes to the temp file,
        file.seek(100)
        file.truncate()  # gets truncated,
        raise OSError("disk full")  # and the write fails

    monkeypatch.setattr(bio.np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_save_npz(target, a=np.arange(1000), b=np.ones(1000))
    monkeypatch.undo()
    with np.load(target) as z:
        assert z.files == ["a"] and np.array_equal(z["a"], np.arange(5))
    assert _listing(tmp_path) == ["scores.npz"]


# ----------------------------------------------------------------------------- torch


def test_atomic_torch_save_round_trip(tmp_path):
    obj = {"epoch": 3, "state": {"w": torch.arange(6.0).view(2, 3)}, "rng": torch.get_rng_state()}
    target = tmp_path / "ckpt" / "last.pt"
    atomic_torch_save(target, obj)
    assert _listing(target.parent) == ["last.pt"]
    loaded = torch.load(target, weights_only=True)
    assert loaded["epoch"] == 3
    assert torch.equal(loaded["state"]["w"], obj["state"]["w"])
    assert torch.equal(loaded["rng"], obj["rng"])


def test_atomic_torch_save_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    atomic_torch_save(target, {"epoch": 1})

    def broken(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("killed")

    monkeypatch.setattr(bio.torch, "save", broken)
    with pytest.raises(RuntimeError, match="killed"):
        atomic_torch_save(target, {"epoch": 2})
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert _listing(tmp_path) == ["last.pt"]


def test_atomic_torch_save_first_write_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken(obj, f, *args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(bio.torch, "save", broken)
    with pytest.raises(RuntimeError):
        atomic_torch_save(tmp_path / "new.pt", {"epoch": 1})
    monkeypatch.undo()
    assert _listing(tmp_path) == []


def test_every_user_cache_folder_follows_xdg_cache_home(tmp_path, monkeypatch):
    from bkd_core.data import resolve_data_dir
    from bkd_core.features import feature_cache_dir
    from bkd_core.io import user_cache_dir

    for var in ("BKD_DATA_DIR", "BKD_FEATURE_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert resolve_data_dir() == tmp_path / "bkd_core" / "data" == user_cache_dir("data")
    assert feature_cache_dir() == tmp_path / "bkd_core" / "features"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache_dir("runs") == tmp_path / "home" / ".cache" / "bkd_core" / "runs"
