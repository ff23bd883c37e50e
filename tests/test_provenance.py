"""The code version of runs: ``provenance.code_hash``, the run cache's key, and the batch's record of it."""

from __future__ import annotations

import shutil

import pytest

from bkd_core import provenance
from bkd_core.book import cache
from bkd_core.config import BKDConfig
from bkd_core.provenance import TRAINING_MODULES, code_hash, normalized_source
from bkd_core.synthetic import make_synthetic_cifar_n

TINY = BKDConfig(model="small_cnn", model_widths=(4, 8, 8), epochs=1, batch_size=64, lr=0.02, lr_step=None,
                 augment=False, train_size=120, test_size=40, eval_batch_size=256, seed=0)


@pytest.fixture()
def package_copy(tmp_path):
    """A copy of the training modules of bkd_core, to edit."""
    folder = tmp_path / "bkd_core"
    folder.mkdir()
    for name in TRAINING_MODULES:
        source = provenance.PACKAGE_DIR / f"{name}.py"
        if source.is_file():
            (folder / f"{name}.py").parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, folder / f"{name}.py")
    return folder


def test_hash_is_stable_and_covers_the_training_modules(package_copy):
    value = code_hash()
    assert len(value) == 12 and int(value, 16) >= 0
    assert code_hash() == value == code_hash(package_copy)
    present = [m for m in TRAINING_MODULES if (provenance.PACKAGE_DIR / f"{m}.py").is_file()]
    assert {"method", "train", "models", "augment", "data", "config", "detectors/confident_learning",
            "detectors/knn", "detectors/registry"} <= set(present)


def test_comments_docstrings_and_layout_do_not_count(package_copy):
    before = code_hash(package_copy)
    method = package_copy / "method.py"
    text = method.read_text()
    text = text.replace('"""', '"""Another docstring line.\n\n', 1)  # the module docstring
    text = text.replace("\ndef ", "\n# a new comment\n\n\ndef ", 3)
    text += "\n\n# trailing comment\n"
    method.write_text(text)
    assert code_hash(package_copy) == before
    assert normalized_source("x = 1  # one\n\n\n") == normalized_source("x = (1)\n")
    assert normalized_source('def f():\n    "doc"\n    return 1\n') == normalized_source("def f():\n    return 1\n")
    assert normalized_source('def f():\n    "doc"\n') == normalized_source("def f():\n    pass\n")


@pytest.mark.parametrize("module", ["method", "train", "config"])
def test_a_code_change_changes_the_hash(package_copy, module):
    before = code_hash(package_copy)
    path = package_copy / f"{module}.py"
    path.write_text(path.read_text() + "\n_CHANGED = 1\n")
    assert code_hash(package_copy) != before


def test_modules_outside_the_list_do_not_count(package_copy):
    before = code_hash(package_copy)
    (package_copy / "plots.py").write_text("x = 2\n")
    assert code_hash(package_copy) == before


def test_no_module_found_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="none of the modules"):
        code_hash(tmp_path)


def test_run_key_holds_the_code_hash(monkeypatch):
    data = make_synthetic_cifar_n(n_train=60, n_test=20, noise_rate=0.3, seed=0)
    key = cache.run_key("bkd", data, TINY)
    assert key == f"bkd-{data.dataset}-{data.split}-{TINY.fingerprint()}-code{code_hash()}"
    monkeypatch.setattr(cache, "code_hash", lambda: "0123456789ab")
    assert cache.run_key("bkd", data, TINY).endswith("-code0123456789ab")


def test_a_code_change_retrains_a_cached_run(tmp_path, monkeypatch):
    """The same configuration with other code: a new run folder is trained, the old run is not reused;
    back on the old code, the old run is returned without training."""
    from bkd_core import train as train_module

    data = make_synthetic_cifar_n(n_train=160, n_test=40, noise_rate=0.3, seed=0)
    first = cache.cached_run("ce", data, TINY, tmp_path, progress=False)
    assert first.run_dir.parent == tmp_path and first.run_dir.name.endswith(f"-code{code_hash()}")

    monkeypatch.setattr(cache, "code_hash", lambda: "feedfacecafe")  # as after an edit of method.py
    second = cache.cached_run("ce", data, TINY, tmp_path, progress=False)
    assert second.run_dir != first.run_dir and second.run_dir.name.endswith("-codefeedfacecafe")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.run_dir.name, second.run_dir.name])

    monkeypatch.undo()
    monkeypatch.setattr(train_module.CETrainer, "train_epoch", lambda self: pytest.fail("retrained"))
    again = cache.cached_run("ce", data, TINY, tmp_path, progress=False)
    assert again.run_dir == first.run_dir and again.metrics == first.metrics


def test_cached_run_trains_the_registry_methods_of_a_single_run(tmp_path, monkeypatch):
    from bkd_core.detectors import METHODS, Method

    assert cache.cached_methods() == ("bkd", "ce")  # the registry's single runs: folds and knn are not
    data = make_synthetic_cifar_n(n_train=40, n_test=10, noise_rate=0.3, seed=0)
    for kind in ("cleanlab", "knn"):
        with pytest.raises(ValueError, match=rf"not '{kind}'.*METHODS\['{kind}'\]\.train"):
            cache.cached_run(kind, data, TINY, tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        cache.cached_run("nope", data, TINY, tmp_path, progress=False)
    assert not list(tmp_path.iterdir())  # nothing was trained or written

    # a new single-run entry in the registry is cached with no change to the cache
    calls = []
    fake = Method("fake", "a fake detector", lambda *args, **kwargs: calls.append((args, kwargs)) or "result",
                  single_run=True)
    monkeypatch.setitem(METHODS, "fake", fake)
    assert cache.cached_methods() == ("bkd", "ce", "fake")
    assert cache.cached_run("fake", data, TINY, tmp_path, progress=False) == "result"
    (args, kwargs), = calls
    assert args == (data, TINY, tmp_path / cache.run_key("fake", data, TINY)) and kwargs["progress"] is False


def test_an_edited_source_file_changes_the_cache_key(package_copy, monkeypatch):
    """Not only a patched function: editing a module's file gives the run another folder."""
    data = make_synthetic_cifar_n(n_train=60, n_test=20, noise_rate=0.3, seed=0)
    monkeypatch.setattr(cache, "code_hash", lambda: provenance.code_hash(package_copy))
    before = cache.run_key("bkd", data, TINY)
    path = package_copy / "method.py"
    path.write_text(path.read_text().replace("\ndef ", "\n# only a comment\ndef ", 1))
    assert cache.run_key("bkd", data, TINY) == before
    path.write_text(path.read_text() + "\nEPS = 1e-9\n")
    assert cache.run_key("bkd", data, TINY) != before


def test_reproduce_records_the_code_hash_and_results_tell_other_code(tmp_path, monkeypatch):
    import json

    from bkd_core.batch import run_one
    from bkd_core.book import results

    data = make_synthetic_cifar_n(n_train=160, n_test=40, noise_rate=0.3, seed=0)
    overrides = {"model_widths": (4, 8, 8), "epochs": 1, "augment": False, "lr_step": None, "train_size": None,
                 "test_size": 40}
    for seed in (0, 1, 2):
        summary = run_one("cifar10", "synthetic", seed, tmp_path / f"cifar10-synthetic-seed{seed}",
                          overrides=overrides, methods=("ce",), progress=False, loader=lambda *a, **k: data)
        assert summary["code_hash"] == code_hash()
    # seed 1 as if made by older code, seed 2 as if made before the hash was recorded
    for seed, change in ((1, "0123456789ab"), (2, None)):
        path = tmp_path / f"cifar10-synthetic-seed{seed}" / "metrics.json"
        run = json.loads(path.read_text())
        if change:
            run["code_hash"] = change
        else:
            del run["code_hash"]
        path.write_text(json.dumps(run))
    versions = results.code_versions(tmp_path)
    assert versions["code"].tolist() == [results.CODE_CURRENT, results.CODE_OTHER, results.CODE_UNKNOWN]
    text = results.code_version_text(versions)
    assert "1 of 3 runs were produced by the current training code" in text
    assert "1 of 3 by other code" in text and "cifar10-synthetic-seed1" in text
    assert "code version not recorded" in text


def test_the_committed_batch_reports_the_code_that_made_it_and_what_checked_it():
    from pathlib import Path

    from bkd_core.book import results

    batch = Path(__file__).resolve().parents[1] / "reproductions" / "features"
    if not (batch / "summary.json").is_file():
        pytest.skip("no committed batch")
    versions = results.code_versions(batch)
    assert len(versions) == 18
    assert set(versions["code"]) <= {results.CODE_UNKNOWN, results.CODE_CURRENT, results.CODE_OTHER,
                                     results.CODE_REPRODUCED, results.CODE_TOLERANCE, results.CODE_REPLAYED}
    text = results.code_version_text(versions)
    if versions["code_hash"].isna().all():  # made before runs recorded their code: not claimed as current
        assert "18 of 18 were made before runs recorded their code version" in text
    if (versions["code"] == results.CODE_REPRODUCED).all():  # rerun in full by the current code: said so
        assert "all 18 of them came out identical, bit for bit" in text and "may be stale" not in text
