"""Hostile inputs: what a new user (or a damaged copy of the project) hands the package, and the one clear
answer each gets. docs/hostile_inputs.md lists every case with the test that holds it."""

from __future__ import annotations

import gc
import os
import warnings
import zipfile

import numpy as np
import pytest

from bkd_core import features as feat
from bkd_core.detectors import knn
from bkd_core.config import BKDConfig, get_profile
from bkd_core.features import FeatureCacheError, PatchFeatureSettings, cached_features, feature_cache_path

TINY = PatchFeatureSettings(n_patches=4000, n_atoms=32, kmeans_iters=3, out_dim=16, pca_fit_size=200,
                            chunk_size=64)


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))


def _count_extractions(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = feat.extract_features

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(feat, "extract_features", counting)
    return calls


# -- seeds (config) ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [-1, 2**63, 2**70, -(2**63)])
def test_a_seed_outside_0_to_2_63_is_refused_naming_the_seed(seed):
    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\*\*63\)"):
        BKDConfig(seed=seed)
    with pytest.raises(ValueError, match="seed"):
        get_profile("features", seed=seed)


@pytest.mark.parametrize("seed", [0, 1, 2**63 - 1])
def test_seeds_at_the_bounds_are_accepted(seed):
    assert BKDConfig(seed=seed).seed == seed


# -- the feature cache ---------------------------------------------------------------------------------

def test_an_unwritable_feature_cache_fails_before_extraction_naming_its_variable(images, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("BKD_FEATURE_CACHE", str(blocker / "features"))
    calls = _count_extractions(monkeypatch)
    with pytest.raises(OSError, match="BKD_FEATURE_CACHE") as info:
        cached_features(images, settings=TINY, progress=False)
    assert calls == []  # refused before the (minutes-long) extraction
    assert ".tmp" not in str(info.value)
    assert blocker.read_text() == "not a folder"


def test_an_unwritable_root_argument_is_named(images, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    calls = _count_extractions(monkeypatch)
    with pytest.raises(OSError, match="root argument"):
        cached_features(images, settings=TINY, root=blocker, progress=False)
    assert calls == []


def test_the_default_feature_cache_names_xdg_cache_home(images, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.delenv("BKD_FEATURE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with pytest.raises(OSError, match="XDG_CACHE_HOME"):
        cached_features(images, settings=TINY, progress=False)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_feature_cache_fails_before_extraction(images, tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    calls = _count_extractions(monkeypatch)
    try:
        with pytest.raises(OSError, match="not writable"):
            cached_features(images, settings=TINY, root=folder, progress=False)
    finally:
        folder.chmod(0o755)
    assert calls == []


def test_a_finished_cache_in_a_read_only_place_is_still_read(images, tmp_path, monkeypatch):
    first = cached_features(images, settings=TINY, root=tmp_path, progress=False)
    monkeypatch.setattr(feat, "_check_cache_target", lambda *a, **k: pytest.fail("a cached file was not read"))
    second = cached_features(images, settings=TINY, root=tmp_path, progress=False)
    np.testing.assert_array_equal(first[0], second[0])


def test_a_folder_at_the_cache_file_path_is_refused_before_extraction(images, tmp_path, monkeypatch):
    path = feature_cache_path(images, settings=TINY, root=tmp_path)
    path.mkdir()
    (path / "keep.txt").write_text("mine")
    calls = _count_extractions(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one answer, not a "recomputing" warning first
        with pytest.raises(FeatureCacheError, match="not a file"):
            cached_features(images, settings=TINY, root=tmp_path, progress=False)
    assert calls == [] and (path / "keep.txt").read_text() == "mine"


def _npy_bytes(array: np.ndarray, tmp_path) -> bytes:
    np.save(tmp_path / "plain.npy", array)
    return (tmp_path / "plain.npy").read_bytes()


@pytest.mark.parametrize("content", ["npy", "pickle-npy", "bad-zip", "empty-zip", "empty"])
def test_a_wrong_format_feature_cache_file_is_recovered_or_reported(images, tmp_path, content):
    path = feature_cache_path(images, settings=TINY, root=tmp_path / "cache")
    path.parent.mkdir()
    if content == "npy":
        path.write_bytes(_npy_bytes(np.zeros((200, 16), np.float32), tmp_path))
    elif content == "pickle-npy":
        path.write_bytes(_npy_bytes(np.array([{"a": 1}], dtype=object), tmp_path))
    elif content == "bad-zip":
        path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    elif content == "empty-zip":
        with zipfile.ZipFile(path, "w"):
            pass
    else:
        path.write_bytes(b"")
    gc.collect()  # files other tests left for the collector warn now, not inside the block below
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(FeatureCacheError, match="delete it to recompute"):
            cached_features(images, settings=TINY, root=path.parent, progress=False, on_damaged="raise")
        gc.collect()
    left_open = [w for w in caught if issubclass(w.category, ResourceWarning) and path.name in str(w.message)]
    assert not left_open  # the damaged cache file is closed
    with pytest.warns(RuntimeWarning, match="recomputing"):
        train, _ = cached_features(images, settings=TINY, root=path.parent, progress=False)
    assert train.shape == (200, 16)
    with np.load(path, allow_pickle=False) as archive:
        assert set(archive.files) >= {"train", "test", "fingerprint"}


# -- the neighbour-graph cache -------------------------------------------------------------------------

def _features(n: int = 30) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, 4)).astype(np.float32)


def _graph_path(x: np.ndarray, root, k: int = 5):
    knn.cached_nearest_neighbours(x, k=k, root=root)
    [path] = root.glob(f"knn-*-k{k}-b2048.npy")
    return path


@pytest.mark.parametrize("content", ["zip", "npz-of-graph", "bad-zip", "object-npy", "float-npy", "empty"])
def test_a_wrong_format_neighbour_graph_is_recomputed(tmp_path, content):
    x = _features()
    path = _graph_path(x, tmp_path)
    graph = np.load(path)
    if content == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("a.txt", "hello")
    elif content == "npz-of-graph":
        with open(path, "wb") as handle:
            np.savez(handle, graph=graph)
    elif content == "bad-zip":
        path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    elif content == "object-npy":
        path.write_bytes(_npy_bytes(np.array([{"a": 1}], dtype=object), tmp_path))
    elif content == "float-npy":
        path.write_bytes(_npy_bytes(graph.astype(np.float64), tmp_path))
    else:
        path.write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = knn.cached_nearest_neighbours(x, k=5, root=tmp_path)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]  # no file left open
    assert [w for w in caught if issubclass(w.category, RuntimeWarning) and "recomputing" in str(w.message)]
    np.testing.assert_array_equal(again, graph)
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), graph)  # rewritten


def test_an_unwritable_neighbour_graph_cache_is_named(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("BKD_FEATURE_CACHE", str(blocker))
    monkeypatch.setattr(knn, "_nearest", lambda *a: pytest.fail("computed before the cache folder was checked"))
    with pytest.raises(OSError, match="BKD_FEATURE_CACHE"):
        knn.cached_nearest_neighbours(_features(), k=5)


def test_a_folder_at_the_neighbour_graph_path_is_refused(tmp_path, monkeypatch):
    x = _features()
    path = _graph_path(x, tmp_path)
    path.unlink()
    path.mkdir()
    monkeypatch.setattr(knn, "_nearest", lambda *a: pytest.fail("computed although it cannot be kept"))
    with pytest.raises(ValueError, match="not a file"):
        knn.cached_nearest_neighbours(x, k=5, root=tmp_path)


# -- check: which run, with what, and where ---------------------------------------------------------

TINY_OVERRIDES = {"model": "small_cnn", "features": None, "model_widths": [8, 16, 16], "epochs": 3, "batch_size": 32,
                  "augment": False, "lr_step": None, "train_size": None, "test_size": None, "tipping_fallback": 0}
RUN = "cifar10-synthetic-seed0"


@pytest.fixture(scope="module")
def synthetic():
    from bkd_core.synthetic import make_synthetic_cifar_n

    return make_synthetic_cifar_n(n_train=160, n_test=40, noise_rate=0.3, seed=3)


@pytest.fixture
def batch(synthetic, tmp_path, monkeypatch):
    """A batch folder with one finished run (bkd and ce, 3 epochs, 1 thread), as ``reproduce`` leaves it."""
    import json

    from bkd_core.batch import run_one

    out = tmp_path / "batch"
    run_one("cifar10", "synthetic", 0, out / RUN, overrides=TINY_OVERRIDES, methods=("bkd", "ce"), threads=1,
            progress=False, loader=lambda *a, **k: synthetic)
    (out / "summary.json").write_text(json.dumps({"options": {"overrides": TINY_OVERRIDES, "threads": 1},
                                                  "runs": [{"name": RUN, "status": "done"}]}))
    return out


def _snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("name", ["ABSOLUTE", "../batch/" + RUN, RUN + "/", "./" + RUN, ".", "..", "", "a/b"])
def test_check_names_a_run_by_its_folder_name_only(batch, name):
    from bkd_core.batch import check as reproduce

    before = _snapshot(batch)
    run = str(batch / RUN) if name == "ABSOLUTE" else name
    with pytest.raises(ValueError, match="by its folder name"):
        reproduce.check_run(batch, run, progress=False)
    with pytest.raises(ValueError, match="by its folder name"):
        reproduce.record_check(batch, run, batch / RUN)
    assert _snapshot(batch) == before  # nothing rewritten, no code_checks.json


def test_check_of_an_absolute_path_on_the_command_line_exits_2_and_leaves_the_run(batch, capsys):
    import json

    from bkd_core import cli

    path = batch / RUN / "metrics.json"
    edited = json.loads(path.read_text())
    edited["methods"]["bkd"]["test_acc"] = 99.9  # edited by hand: must never be "reproduced exactly"
    path.write_text(json.dumps(edited))
    before = _snapshot(batch)
    assert cli.main(["check", str(batch), str(batch / RUN), "--no-progress"]) == 2
    assert "folder name" in capsys.readouterr().err
    assert _snapshot(batch) == before


def test_check_never_writes_into_the_recorded_folder(batch):
    from bkd_core.batch import check as reproduce

    before = _snapshot(batch)
    for work_dir in (batch, batch / RUN / "inside"):
        with pytest.raises(ValueError, match="recorded run"):
            reproduce.check_run(batch, RUN, work_dir=work_dir, progress=False)
    with pytest.raises(ValueError, match="recorded run"):
        reproduce.record_check(batch, RUN, batch / RUN)  # a run compared with itself
    assert _snapshot(batch) == before


def test_check_reruns_with_the_runs_own_config_and_threads_not_the_latest_batch(batch, synthetic):
    """seeds 0-1 with epochs=3, then a batch with epochs=4 and other threads into the same folder."""
    import json

    from bkd_core.batch import check as reproduce

    (batch / "summary.json").write_text(json.dumps({
        "options": {"overrides": {**TINY_OVERRIDES, "epochs": 4}, "threads": 2}, "runs": [{"name": RUN}]}))
    check = reproduce.check_run(batch, RUN, progress=False, loader=lambda *a, **k: synthetic)
    assert check["identical"], check["differences"]
    assert check["threads"] == 1


def test_check_refuses_a_run_whose_recorded_config_was_edited(batch):
    import json

    from bkd_core.batch import check as reproduce

    path = batch / RUN / "metrics.json"
    edited = json.loads(path.read_text())
    edited["config"]["epochs"] = 5
    path.write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="edited"):
        reproduce.check_run(batch, RUN, progress=False)


def test_check_rerun_folder_equal_to_the_batch_is_refused(batch):
    from bkd_core import cli

    assert cli.main(["check", str(batch), "--rerun", str(batch)]) == 2
    assert not (batch / "code_checks.json").exists()


# -- results: what a batch folder's table may claim ------------------------------------------------

def _fake_run(out, name, *, seed=0, split="worst", epochs=3, test_acc=50.0, method_files=True, folds=3):
    """A finished batch run as ``reproduce`` writes it (metrics.json, and each method's own metrics.json)."""
    from bkd_core.io import atomic_write_json

    config = get_profile("features", seed=seed, epochs=epochs)
    bkd = {"kind": "bkd", "true_noise_rate": 0.4, "detection_f1": 0.6, "flag_all_f1": 0.57, "test_acc": test_acc}
    atomic_write_json(out / name / "metrics.json", {
        "dataset": "cifar10", "split": split, "seed": seed, "profile": "features", "fingerprint": config.fingerprint(),
        "config": config.to_dict(), "folds": folds, "methods": {"bkd": {**bkd, "ranking_auc": 0.7}}})
    if method_files:
        atomic_write_json(out / name / "bkd" / "metrics.json", bkd)


def _summary_json(out, names, status="done"):
    from bkd_core.io import atomic_write_json

    atomic_write_json(out / "summary.json", {"options": {}, "runs": [{"name": n, "status": status} for n in names]})


def test_results_never_average_runs_of_different_configurations(tmp_path):
    from bkd_core.book import results

    _fake_run(tmp_path, "cifar10-worst-seed0", seed=0, epochs=3, test_acc=40.0)
    _fake_run(tmp_path, "cifar10-worst-seed1", seed=1, epochs=4, test_acc=60.0)  # a later batch with --set epochs=4
    summary = results.summarize(results.collect_results(tmp_path))
    assert len(summary) == 2 and summary["seeds"].tolist() == [1, 1]
    assert sorted(summary["test_acc_mean"]) == [40.0, 60.0]  # never their mean, 50
    with pytest.raises(ValueError, match="2 configurations"):
        results.split_table(summary)
    with pytest.raises(ValueError, match="2 configurations"):
        results.mean_of(summary, "worst", "bkd", "test_acc")
    one = summary[summary["configuration"] == summary["configuration"].iloc[0]]
    assert results.split_table(one).loc["seeds"].tolist() == ["1"]


def test_results_cli_prints_one_table_per_configuration(tmp_path, capsys):
    from bkd_core import cli

    _fake_run(tmp_path, "cifar10-worst-seed0", seed=0, epochs=3, test_acc=40.0)
    _fake_run(tmp_path, "cifar10-worst-seed1", seed=1, epochs=4, test_acc=60.0)
    assert cli.main(["results", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("mean ± std over seeds") == 2 and "50.0" not in printed
    assert "40.0" in printed and "60.0" in printed


def test_results_refuse_a_copied_run_folder_counted_twice(tmp_path, capsys):
    import shutil

    from bkd_core import cli
    from bkd_core.book import results

    _fake_run(tmp_path, "cifar10-worst-seed0", seed=0)
    _fake_run(tmp_path, "cifar10-worst-seed1", seed=1)
    shutil.copytree(tmp_path / "cifar10-worst-seed0", tmp_path / "cifar10-worst-seed0 (copy)")
    with pytest.raises(ValueError, match=r"cifar10-worst-seed0.*copy"):
        results.summarize(results.collect_results(tmp_path))
    assert cli.main(["results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "seed 0" in err and "copy" in err


def test_results_name_runs_summary_lists_that_are_missing(tmp_path, capsys):
    from bkd_core import cli
    from bkd_core.book import results

    _fake_run(tmp_path, "cifar10-worst-seed0", seed=0)
    _summary_json(tmp_path, ["cifar10-worst-seed0", "cifar10-worst-seed1"])  # seed 1 deleted since
    problems = results.batch_problems(tmp_path)
    assert len(problems) == 1 and "cifar10-worst-seed1" in problems[0] and "missing" in problems[0]
    assert cli.main(["results", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "cifar10-worst-seed1" in captured.err
    assert "| seeds | 1 |" in captured.out


@pytest.mark.parametrize("edit", ["metric", "config"])
def test_results_flag_a_metric_or_config_edited_by_hand(tmp_path, edit):
    import json

    from bkd_core.book import results

    _fake_run(tmp_path, "cifar10-worst-seed0", seed=0)
    _fake_run(tmp_path, "cifar10-worst-seed1", seed=1)
    assert results.batch_problems(tmp_path) == []
    path = tmp_path / "cifar10-worst-seed1" / "metrics.json"
    run = json.loads(path.read_text())
    if edit == "metric":
        run["methods"]["bkd"]["test_acc"] = 99.9
    else:
        run["config"]["epochs"] = 30
    path.write_text(json.dumps(run))
    [problem] = results.batch_problems(tmp_path)
    assert "cifar10-worst-seed1" in problem and "edited" in problem
    assert ("test_acc" in problem) == (edit == "metric")


def test_a_batch_of_one_configuration_prints_as_before(tmp_path, capsys):
    from bkd_core import cli

    _fake_run(tmp_path, "cifar10-worst-seed0", seed=0, test_acc=40.0)
    _fake_run(tmp_path, "cifar10-worst-seed1", seed=1, test_acc=60.0)
    _summary_json(tmp_path, ["cifar10-worst-seed0", "cifar10-worst-seed1"])
    assert cli.main(["results", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("mean ± std over seeds") == 1 and "50.0 ± 14.1" in captured.out
    assert captured.err == ""


# -- markup in names: the book's tables and the Markdown of results ------------------------------------

@pytest.mark.parametrize("index", [True, False])
def test_book_tables_escape_html_in_cells_labels_and_index(index):
    import pandas as pd

    from bkd_core import book

    evil = "<script>alert(1)</script>"
    frame = pd.DataFrame({f"<b>{evil}</b>": [evil, 1.5]}, index=[f"<i>{evil}</i>", "a & b"])
    html = book.table(frame, {"x": "{:.1f}"} if not index else None, index=index).to_html()
    assert "<script>" not in html and "<b><script>" not in html and "<i>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    if index:
        assert "a &amp; b" in html
    assert book.table(pd.DataFrame({"x": [0.123]}), "{:.2f}").to_html().count("0.12") == 1  # numbers still formatted


def test_markdown_of_results_escapes_pipes_and_markup(tmp_path):
    import pandas as pd

    from bkd_core.book import results

    frame = pd.DataFrame({"a|b": ["1 | 2"], "<img src=x onerror=alert(1)>": ["x"]}, index=["row|1"])
    text = results.markdown_table(frame, "label|x")
    header, rule, row = text.splitlines()
    assert header.count(" | ") == rule.count(" | ") == row.count(" | ") == 2  # three cells, each line
    assert "a\\|b" in header and "1 \\| 2" in row and "row\\|1" in row and "label\\|x" in header
    assert "<img" not in text and "&lt;img" in text


# -- the command line: exit codes, pipes, kernel noise ------------------------------------------------

def _input_error(argv, capsys, *fragments):
    """The CLI answers an input error with exit status 2 and one ``error:`` line, no traceback."""
    from bkd_core import cli

    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize("extra, fragments", [
    (["--splits", "nosuch"], ["unknown split 'nosuch'"]),
    (["--seeds", "-1"], ["seed must lie in [0, 2**63)"]),
    (["--seeds", "0", str(2**64)], ["seed must lie in [0, 2**63)", str(2**64)]),
    (["--jobs", "0"], ["--jobs must be >= 1"]),
    (["--folds", "1"], ["--folds must be >= 2"]),
    (["--set", "bogus=1"], ["'bogus=1'"]),
    (["--set", "epochs=0"], ["epochs must be >= 1"]),
    (["--set", "seed=3"], ["--seeds"]),
    (["--set", "device=cpu"], ["--device"]),
    (["--slurm", "nokeyvalue"], ["KEY=VALUE"]),
], ids=["splits-nosuch", "seeds-negative", "seed-2**64", "jobs-0", "folds-1", "set-bogus", "set-epochs-0", "set-seed",
        "set-device", "slurm-no-key-value"])
def test_reproduce_input_errors_exit_2_before_anything_is_written(tmp_path, capsys, extra, fragments):
    out = tmp_path / "out"
    _input_error(["reproduce", "--out", str(out), "--no-progress", *extra], capsys, *fragments)
    assert not out.exists()


@pytest.mark.parametrize("extra, fragments", [
    (["--seed", "-1"], ["seed must lie in [0, 2**63)"]),
    (["--set", "bogus=1"], ["'bogus=1'"]),
    (["--set", "epochs=0"], ["epochs must be >= 1"]),
], ids=["seed-negative", "set-bogus", "set-epochs-0"])
def test_train_input_errors_exit_2(tmp_path, capsys, extra, fragments):
    _input_error(["train", "--out", str(tmp_path / "r"), "--no-progress", *extra], capsys, *fragments)
    assert not (tmp_path / "r").exists()


def test_results_of_a_missing_folder_exits_2(tmp_path, capsys):
    _input_error(["results", str(tmp_path / "nosuch")], capsys, "no finished run")


def _many_runs(out, n=40):
    for seed in range(n):
        _fake_run(out, f"cifar10-worst-seed{seed}", seed=seed)


def test_results_into_a_closed_pipe_exits_0_quietly(tmp_path):
    """``python -m bkd_core results OUT | head``: the reader stops early; no "Broken pipe" error, status 0."""
    import subprocess
    import sys

    _many_runs(tmp_path)
    with subprocess.Popen([sys.executable, "-m", "bkd_core", "results", str(tmp_path)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env={**os.environ, "PYTHONWARNINGS": "ignore"}) as proc:
        proc.stdout.close()  # the reader is gone before anything is written
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 0, err
    assert err == ""


def test_results_into_a_broken_pipe_in_process_returns_0(tmp_path, monkeypatch, capsys):
    import io

    from bkd_core import cli

    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    _many_runs(tmp_path, 2)
    monkeypatch.setattr("sys.stdout", Closed())
    assert cli.main(["results", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""


# -- more hostile caches ---------------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["object-array-npz", "dev-zero-link", "wrong-fingerprint-type"])
def test_more_wrong_feature_cache_files_are_recomputed(images, tmp_path, content):
    path = feature_cache_path(images, settings=TINY, root=tmp_path)
    if content == "object-array-npz":
        np.savez(path, train=np.array([{"code": 1}], dtype=object), test=np.zeros(1), fingerprint=np.array("x"))
    elif content == "dev-zero-link":
        path.symlink_to("/dev/zero")
    else:
        np.savez(path, train=np.zeros((200, 16), np.float32), test=np.zeros((40, 16), np.float32),
                 fingerprint=np.zeros(3))
    with pytest.raises(FeatureCacheError):
        cached_features(images, settings=TINY, root=tmp_path, progress=False, on_damaged="raise")
    if content == "dev-zero-link":
        path.unlink()
        return
    with pytest.warns(RuntimeWarning, match="recomputing"):
        assert cached_features(images, settings=TINY, root=tmp_path, progress=False)[0].shape == (200, 16)


def test_an_empty_feature_cache_variable_means_unset(images, tmp_path, monkeypatch):
    monkeypatch.setenv("BKD_FEATURE_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert feature_cache_path(images, settings=TINY).parent == tmp_path / "xdg" / "bkd_core" / "features"


# -- more hostile batch folders --------------------------------------------------------------------------

@pytest.mark.parametrize("summary", ["garbage", "list", "runs-not-list", "name-is-a-path", "options-a-list"])
def test_a_damaged_summary_json_is_named_by_results_and_reproduce(tmp_path, capsys, summary):
    import json

    from bkd_core.book import results

    _fake_run(tmp_path, "cifar10-worst-seed0", seed=0)
    content = {"garbage": "{not json", "list": "[]", "runs-not-list": '{"runs": 3}',
               "name-is-a-path": json.dumps({"runs": [{"name": "../../etc", "status": "done"}]}),
               "options-a-list": json.dumps({"options": [], "runs": []})}[summary]
    (tmp_path / "summary.json").write_text(content)
    with pytest.raises(ValueError, match="summary.json"):
        results.read_batch_summary(tmp_path)
    with pytest.raises(ValueError, match="summary.json"):
        results.run_times(tmp_path)
    _input_error(["results", str(tmp_path)], capsys, "summary.json")
    _input_error(["reproduce", "--splits", "worst", "--seeds", "0", "--out", str(tmp_path), "--data-dir",
                  str(tmp_path / "no-data"), "--no-progress"], capsys, "summary.json")
    assert (tmp_path / "summary.json").read_text() == content  # never overwritten


@pytest.mark.parametrize("content", ["[]", '{"checks": 3}', '{"checks": [1]}', "{nope"])
def test_a_damaged_code_checks_json_is_named(tmp_path, content):
    from bkd_core.book import results

    _fake_run(tmp_path, "cifar10-worst-seed0", seed=0)
    (tmp_path / "code_checks.json").write_text(content)
    with pytest.raises(ValueError, match="code_checks.json"):
        results.code_versions(tmp_path)


def test_a_file_as_the_batch_folder_exits_2(tmp_path, capsys):
    out = tmp_path / "a-file"
    out.write_text("mine")
    _input_error(["reproduce", "--splits", "worst", "--seeds", "0", "--out", str(out), "--no-progress"], capsys,
                 str(out))
    assert out.read_text() == "mine"


@pytest.mark.parametrize("command", [["train"], ["reproduce"], ["results"], ["check"]],
                         ids=["train", "reproduce", "results", "check"])
def test_an_empty_out_is_refused(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    argv = [*command, "--out", ""] if command[0] in ("train", "reproduce") else [*command, ""]
    _input_error([*argv, *(["x"] if command[0] == "check" else [])], capsys, "empty")
    assert list(tmp_path.iterdir()) == []


def test_a_seed_given_twice_runs_once():
    from bkd_core.batch import plan

    assert [s.name for s in plan(["worst"], [1, 0, 1])] == ["cifar10-worst-seed1", "cifar10-worst-seed0"]


def test_check_threads_below_1_exit_2(batch, capsys):
    _input_error(["check", str(batch), RUN, "--threads", "0", "--no-progress"], capsys, "--threads must be >= 1")


def test_check_of_a_run_whose_metrics_json_is_a_list_is_named(batch, capsys):
    (batch / RUN / "metrics.json").write_text("[]")
    _input_error(["check", str(batch), RUN, "--no-progress"], capsys, "metrics.json", "not a run's metrics")


# -- the book's run cache and Colab set-up ---------------------------------------------------------------

CACHED = BKDConfig(model="small_cnn", model_widths=(4, 8, 8), epochs=1, batch_size=64, lr_step=None, augment=False,
                   train_size=120, test_size=40, eval_batch_size=256, seed=0)


@pytest.mark.parametrize("name", ["metrics.json", "scores.npz"])
def test_a_cached_run_whose_outputs_were_edited_is_refused(tmp_path, monkeypatch, name):
    import json

    from bkd_core import train as train_module
    from bkd_core.book import cache
    from bkd_core.errors import RunDirError
    from bkd_core.synthetic import make_synthetic_cifar_n

    data = make_synthetic_cifar_n(n_train=160, n_test=40, noise_rate=0.3, seed=0)
    first = cache.cached_run("ce", data, CACHED, tmp_path, progress=False)
    path = first.run_dir / name
    original = path.read_bytes()
    if name == "metrics.json":
        metrics = json.loads(original)
        metrics["test_acc"] = 0.999  # a better number, by hand
        path.write_text(json.dumps(metrics, indent=2) + "\n")
    else:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        arrays["label_quality"] = arrays["label_quality"][::-1].copy()
        np.savez_compressed(path, **arrays)
    edited = path.read_bytes()
    monkeypatch.setattr(train_module.CETrainer, "train_epoch", lambda self: pytest.fail("retrained"))
    with pytest.raises(RunDirError, match=rf"{name} was changed after the run wrote it .* restore the file, or "
                                          "delete the folder"):
        cache.cached_run("ce", data, CACHED, tmp_path, progress=False)
    assert path.read_bytes() == edited  # nothing overwritten
    path.write_bytes(original)  # restored: returned again, unchanged
    assert cache.cached_run("ce", data, CACHED, tmp_path, progress=False).metrics == first.metrics


def test_setup_colab_outside_colab_writes_downloads_and_clones_nothing(tmp_path, monkeypatch):
    import subprocess
    import sys

    from bkd_core import data
    from bkd_core.book import chapter

    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    for name in ("COLAB_DATA", "COLAB_RUNS", "COLAB_FEATURES", "COLAB_CLONE"):
        monkeypatch.setattr(chapter, name, str(tmp_path / "content" / name.lower()))
    monkeypatch.setattr(data, "ensure_data", lambda *a, **k: pytest.fail("downloaded"))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("cloned"))
    before = {name: os.environ.get(name) for name in ("BKD_DATA_DIR", "BKD_RUN_CACHE", "BKD_FEATURE_CACHE")}
    with pytest.raises(RuntimeError, match=r"runs only inside Colab; on your own machine, set BKD_DATA_DIR"):
        chapter.setup_colab(images=["cifar10"], labels=["cifar100"], features=True, results=True)
    assert not (tmp_path / "content").exists()
    assert {name: os.environ.get(name) for name in before} == before
