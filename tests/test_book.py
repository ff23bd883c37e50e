"""The chapters' helpers for papermill and Colab readers: overrides as JSON, the results folder from
any working directory, and conclusions shown with their numbers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bkd_core import book
from bkd_core.book import chapter

nbformat = pytest.importorskip("nbformat")  # a book package: absent on a training-only machine

ROOT = Path(__file__).resolve().parents[1]
COMMITTED_BATCH = ROOT / "reproductions" / "features"
#: A small CNN on a 5,000-image subset (the retired cpu profile's settings): runs recorded with it are still read.
SMALL_CNN = {"model": "small_cnn", "features": None, "model_widths": (16, 32, 64), "epochs": 24, "batch_size": 32,
             "train_size": 5000, "test_size": 1000, "augment": False, "lr_step": None, "tipping_fallback": 16,
             "detach_robust_target": True}


# -- overrides ---------------------------------------------------------------------------------

@pytest.mark.parametrize("given", [{"otsu_criterion": "classic", "model_widths": [8, 16, 16]},
                                   '{"otsu_criterion": "classic", "model_widths": [8, 16, 16]}',
                                   ["otsu_criterion=classic", "model_widths=8,16,16"]])
def test_overrides_as_dict_or_json_text(given):
    config = book.chapter_config("cnn", overrides=given)
    assert config.otsu_criterion == "classic" and config.model_widths == (8, 16, 16)
    assert config.fingerprint() == book.chapter_config("cnn", overrides={"otsu_criterion": "classic",
                                                                         "model_widths": (8, 16, 16)}).fingerprint()


@pytest.mark.parametrize("empty", [None, {}, "", "  "])
def test_empty_overrides(empty):
    assert book.parse_overrides(empty) == {}
    assert book.chapter_config("features", overrides=empty) == book.chapter_config("features")


@pytest.mark.parametrize(("given", "message"), [("otsu_criterion=classic", "JSON object such as"),
                                                ("[1, 2]", "must be a JSON object"), (3, "dict or JSON text")])
def test_bad_overrides_say_what_is_expected(given, message):
    with pytest.raises(ValueError, match=message):
        book.parse_overrides(given)


# -- the results folder ------------------------------------------------------------------------

@pytest.mark.skipif(not (COMMITTED_BATCH / "summary.json").is_file(), reason="no committed batch")
@pytest.mark.parametrize("cwd", [ROOT, ROOT / "chapters", "tmp"])
def test_results_dir_found_from_any_working_directory(cwd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path if cwd == "tmp" else cwd)
    assert book.find_results_dir("reproductions/features") == COMMITTED_BATCH.resolve()
    assert book.find_results_dir(str(COMMITTED_BATCH)) == COMMITTED_BATCH.resolve()


def test_results_dir_in_the_working_directory_comes_first(tmp_path, monkeypatch):
    (tmp_path / "reproductions" / "features").mkdir(parents=True)
    (tmp_path / "reproductions" / "features" / "summary.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert book.find_results_dir("reproductions/features") == (tmp_path / "reproductions" / "features").resolve()


def test_missing_results_dir_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no reproduction batch .*looked in .*papermill -p results_dir"):
        book.find_results_dir("nowhere/batch")
    # bkd_core installed outside a checkout, run outside one: says so
    monkeypatch.setattr(chapter, "__file__", str(tmp_path / "site-packages" / "bkd_core" / "book" / "chapter.py"))
    assert book.repository_root() is None
    with pytest.raises(FileNotFoundError, match="no repository found"):
        book.find_results_dir("reproductions/features")


def test_repository_root_from_a_checkout(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert book.repository_root() == ROOT  # from bkd_core's own location
    assert book.repository_root(ROOT / "chapters") == ROOT


# -- conclusions: written once, shown with their numbers -----------------------------------------

def test_render_conclusion_fills_every_field_with_its_format():
    values = {"rate": 40.2123, "split": "worst", "n": 3}
    text = "On {split} {rate:.1f}% are wrong ({n} runs, {n:,}); `{{literal}}` stays."
    assert book.render_conclusion(text, values) == "On worst 40.2% are wrong (3 runs, 3); `{literal}` stays."
    with pytest.raises(KeyError, match="'missing' is not glued"):
        book.render_conclusion("{missing:.1f}", values)


def test_glue_records_the_value():
    import numpy as np

    book.glue("_test_value", np.float32(0.25))
    assert book.GLUED["_test_value"] == 0.25 and type(book.GLUED["_test_value"]) is float


def test_a_notebook_executed_with_papermill_shows_the_conclusion_with_its_number(tmp_path):
    """A small notebook as the chapters are written: a value glued in one cell, the conclusion written once
    in a cell whose input the book removes, one value passed to it directly. Executed with papermill, the
    cell's Markdown output is the sentence with its numbers, as the HTML book shows it."""
    import papermill as pm

    sentence = "The noise rate is {rate:.1f}% on {split}, {runs} runs."
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [
        nbformat.v4.new_code_cell("rate = 0.0", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("from bkd_core import book\nbook.glue('rate', rate)\nbook.glue('split', 'worst')"),
        nbformat.v4.new_code_cell(f'book.conclusion("""{sentence}""", runs=3)', metadata={"tags": ["remove-input"]}),
    ]
    source, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, source)
    env = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env]))  # the kernel imports this bkd_core
    try:
        pm.execute_notebook(str(source), str(out), parameters={"rate": 40.21}, kernel_name="python3",
                            progress_bar=False, cwd=str(tmp_path))
    finally:
        if env is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = env
    done = nbformat.read(out, as_version=4)
    shown = [o["data"]["text/markdown"] for c in done.cells if c.cell_type == "code"
             for o in c.outputs if "text/markdown" in o.get("data", {})]
    assert shown == ["The noise rate is 40.2% on worst, 3 runs."]
    # the book build still gets the glued values (MyST-NB's scrapbook outputs) for the prose's glue roles
    glued = {o["metadata"]["scrapbook"]["name"] for c in done.cells if c.cell_type == "code"
             for o in c.outputs if "scrapbook" in o.get("metadata", {})}
    assert glued == {"rate", "split"}


# -- the Colab set-up cell ---------------------------------------------------------------------

@pytest.fixture()
def colab(monkeypatch, tmp_path):
    """A stand-in for Colab: downloads recorded, Drive "mounted" into tmp_path, /content in tmp_path."""
    import sys
    import types

    from bkd_core import data

    calls = []
    def ensure_data(root=None, *, images, labels):
        calls.extend([("images", d) for d in images] + [("labels", d) for d in labels if d not in images])

    monkeypatch.setattr(data, "ensure_data", ensure_data)
    # setup_colab writes these into os.environ itself: set them first so that the fixture's undo removes
    # them again (a delenv of an unset variable records nothing, and the value would leak into later tests)
    for name in ("BKD_DATA_DIR", "BKD_RUN_CACHE", "BKD_FEATURE_CACHE"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setattr(chapter, "COLAB_DATA", str(tmp_path / "content" / "data"))
    monkeypatch.setattr(chapter, "COLAB_RUNS", str(tmp_path / "content" / "runs"))
    monkeypatch.setattr(chapter, "COLAB_DRIVE_RUNS", str(tmp_path / "drive" / "MyDrive" / "bkd-book" / "runs"))
    monkeypatch.setattr(chapter, "COLAB_DRIVE", str(tmp_path / "drive"))
    drive = types.SimpleNamespace(mounted=[])
    drive.mount = lambda path: drive.mounted.append(path)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", types.SimpleNamespace(drive=drive))
    shown = []
    monkeypatch.setattr(chapter, "_show_markdown", shown.append)
    return types.SimpleNamespace(calls=calls, drive=drive, shown=shown, tmp=tmp_path)


def test_setup_colab_fetches_what_the_chapter_needs_and_says_where_runs_go(colab):
    folders = book.setup_colab(images=["cifar10"], labels=["cifar100"])
    assert colab.calls == [("images", "cifar10"), ("labels", "cifar100")]
    assert folders == {"data": os.environ["BKD_DATA_DIR"], "runs": os.environ["BKD_RUN_CACHE"]}
    assert folders["runs"] == chapter.COLAB_RUNS and Path(folders["runs"]).is_dir() and not colab.drive.mounted
    note = colab.shown[-1]
    assert "CIFAR-100N labels" in note and "deletes when the runtime ends" in note and "KEEP_RUNS_ON_DRIVE" in note


def test_setup_colab_keeps_runs_on_drive(colab):
    folders = book.setup_colab(keep_runs_on_drive=True)
    assert colab.drive.mounted == [chapter.COLAB_DRIVE]
    assert folders["runs"] == chapter.COLAB_DRIVE_RUNS == os.environ["BKD_RUN_CACHE"]
    assert "on your Google Drive" in colab.shown[-1]


def test_setup_colab_keeps_a_run_cache_the_reader_set(colab, monkeypatch):
    monkeypatch.setenv("BKD_RUN_CACHE", str(colab.tmp / "mine"))
    assert book.setup_colab(keep_runs_on_drive=True)["runs"] == str(colab.tmp / "mine")
    assert not colab.drive.mounted


def test_setup_colab_says_where_the_features_are_cached(colab, monkeypatch):
    monkeypatch.delenv("BKD_FEATURE_CACHE", raising=False)
    monkeypatch.setattr(chapter, "COLAB_FEATURES", str(colab.tmp / "content" / "features"))
    folders = book.setup_colab(features=True)
    assert folders["features"] == chapter.COLAB_FEATURES == os.environ["BKD_FEATURE_CACHE"]
    assert "computes label-free feature vectors" in colab.shown[-1] and chapter.COLAB_FEATURES in colab.shown[-1]
    assert "3-5 minutes" in colab.shown[-1]


def test_setup_colab_keeps_the_features_on_drive_with_the_runs(colab, monkeypatch):
    monkeypatch.delenv("BKD_FEATURE_CACHE", raising=False)
    monkeypatch.setattr(chapter, "COLAB_DRIVE_FEATURES", str(colab.tmp / "drive" / "MyDrive" / "bkd-book" / "features"))
    folders = book.setup_colab(keep_runs_on_drive=True, features=True)
    assert folders["features"] == chapter.COLAB_DRIVE_FEATURES == os.environ["BKD_FEATURE_CACHE"]


def test_setup_colab_without_features_says_nothing_of_them(colab, monkeypatch):
    monkeypatch.delenv("BKD_FEATURE_CACHE", raising=False)
    folders = book.setup_colab()
    assert "features" not in folders and "BKD_FEATURE_CACHE" not in os.environ
    assert "feature vectors" not in colab.shown[-1]


def test_setup_colab_for_a_chapter_that_trains_nothing(colab):
    folders = book.setup_colab(images=["cifar10"], trains=False)
    assert "runs" not in folders and "trains nothing" in colab.shown[-1]


def test_setup_colab_clones_the_committed_results_and_works_in_the_chapters(colab, monkeypatch):
    import subprocess

    clone = colab.tmp / "content" / "bkd-book"
    monkeypatch.setattr(chapter, "COLAB_CLONE", str(clone))
    cloned = []

    def fake_clone(command, check):  # git clone URL FOLDER: a repository with chapters/ and reproductions/
        cloned.append(command)
        (Path(command[-1]) / "chapters").mkdir(parents=True)
        (Path(command[-1]) / "_toc.yml").write_text("")

    monkeypatch.setattr(subprocess, "run", fake_clone)
    monkeypatch.chdir(colab.tmp)
    folders = book.setup_colab(trains=False, results=True)
    assert cloned and cloned[0][:2] == ["git", "clone"] and chapter.REPOSITORY_URL in cloned[0]
    assert Path.cwd() == clone / "chapters" and folders["results"] == str(clone / "reproductions")
    assert "cloned into" in colab.shown[-1]
    book.setup_colab(trains=False, results=True)  # a second run of the cell reuses the clone
    assert len(cloned) == 1


def test_setup_colab_says_when_the_clone_failed(colab, monkeypatch):
    import subprocess

    monkeypatch.setattr(chapter, "COLAB_CLONE", str(colab.tmp / "content" / "bkd-book"))
    monkeypatch.setattr(subprocess, "run", lambda command, check: None)  # no network: nothing cloned
    monkeypatch.chdir(colab.tmp)
    with pytest.raises(RuntimeError, match="could not clone .*internet connection"):
        book.setup_colab(trains=False, results=True)


# -- the run's setting, in words -----------------------------------------------------------------

def test_setup_text_describes_each_profile():
    from bkd_core.config import get_profile

    features = book.setup_text(get_profile("features"), n_images=50_000)
    assert features == ("MLPs with one hidden layer of 1,024 units on label-free feature vectors of all 50,000 "
                        "training images, 30 epochs, no augmentation, a constant learning rate")
    small = book.setup_text(get_profile("features", **SMALL_CNN))
    assert small.startswith("small CNNs (16/32/64 channels) on the pixels of a random 5,000-image subset")
    assert "24 epochs" in small
    paper = book.setup_text(get_profile("paper"), n_images=50_000)
    assert paper.startswith("the official PreResNet18 on the pixels of all 50,000") and "with augmentation" in paper
    assert "a step learning rate" in paper
    # a run's metrics.json holds the configuration as a dict: the same words
    assert book.setup_text(get_profile("features").to_dict(), n_images=50_000) == features
    older = {k: v for k, v in get_profile("features", **SMALL_CNN).to_dict().items()
             if k not in ("features", "drop_last")}
    assert book.setup_text(older) == small  # runs recorded before a field existed: its default
    two = book.setup_text(get_profile("features", model_widths=(512, 512)))
    assert two.startswith("MLPs with 2 hidden layers of 512/512 units") and "all training images" in two


def test_departures_text_names_the_switched_quirks():
    from bkd_core.config import get_profile

    small = book.departures_text(get_profile("features", **SMALL_CNN))
    assert "quirk 2" in small and "epoch 17 as the tipping point when none was found after 18 epochs" in small
    official = book.departures_text(get_profile("features"))
    assert official.startswith("It follows the official code") and "without a fallback" in official
    assert book.departures_text(get_profile("paper").to_dict()) == official
    only_fallback = book.departures_text(get_profile("features", tipping_fallback=7))
    assert "quirk 2" not in only_fallback and "epoch 8" in only_fallback


def test_config_table_shows_the_input_and_the_mlp_widths():
    from bkd_core.config import get_profile

    table = book.config_table(get_profile("features"))
    assert list(table.columns) == ["this run (features)", "paper"]
    assert table.loc["input"].tolist() == ["feature vectors (patches)", "pixels"]
    assert table.loc["model_widths"].tolist() == ["1024", "(fixed)"]
    assert table.loc["train_size", "this run (features)"] == "all 50,000"


def test_mean_of_a_summary():
    import math

    import pandas as pd

    from bkd_core.book import results

    rows = [{"dataset": "cifar10", "split": "worst", "seed": s, "method": "bkd", "tipping_rule": "peak",
             "true_noise_rate": 0.4, "detection_f1": f1} for s, f1 in ((0, 0.6), (1, 0.7))]
    summary = results.summarize(pd.DataFrame(rows, columns=list(results.COLUMNS)))
    assert results.mean_of(summary, "worst", "bkd", "detection_f1") == pytest.approx(0.65)
    assert math.isnan(results.mean_of(summary, "worst", "knn", "detection_f1"))  # a method the batch did not run
    assert math.isnan(results.mean_of(summary, "aggre", "bkd", "detection_f1"))  # a split it did not run
    assert math.isnan(results.mean_of(pd.DataFrame(), "worst", "bkd", "detection_f1"))  # an empty batch


# -- a chapter's run beside the committed batches -------------------------------------------------

def _batch_table():
    import pandas as pd

    from bkd_core.book import results

    rows = []
    for seed, rule in ((0, "peak"), (1, "fallback"), (2, "peak")):
        rows.append({"dataset": "cifar10", "split": "worst", "seed": seed, "method": "bkd", "tipping_rule": rule,
                     "tipping_epoch": 14 + seed, "true_noise_rate": 0.40, "estimated_noise_rate": 0.60,
                     "detection_f1": 0.60 + seed / 100, "flag_all_f1": 0.57, "test_acc": 50.0})
        rows.append({"dataset": "cifar10", "split": "worst", "seed": seed, "method": "ce", "true_noise_rate": 0.40,
                     "test_acc": 30.0, "best_test_acc": 45.0})
    return results.summarize(pd.DataFrame(rows, columns=list(results.COLUMNS)))


def test_peak_rule_runs():
    summary = _batch_table()
    assert book.peak_rule_runs(summary, "worst") == (2, 3)
    assert book.peak_rule_runs(summary, "aggre") is None and book.peak_rule_runs(None, "worst") is None


def test_profile_comparison_puts_the_run_beside_each_batch():
    run = {"bkd": {"true_noise_rate": 0.41, "estimated_noise_rate": 0.7, "tipping_epoch": 16,
                   "tipping_rule": "fallback", "detection_f1": 0.55, "flag_all_f1": 0.58, "test_acc": 48.0},
           "ce": {"test_acc": 20.0, "best_test_acc": 44.0}}
    table = book.profile_comparison(run, {"cnn batch": _batch_table(), "features batch": None}, "worst")
    assert list(table.columns) == ["this run", "cnn batch", "features batch"]
    assert list(table.index) == [row[0] for row in book.COMPARISON_ROWS]
    assert table.loc["BKD tipping point from the peak rule (runs)"].tolist() == ["no: fallback", "2 of 3", "–"]
    assert table.loc["BKD tipping epoch (from 1)", "this run"] == "17"  # counted from 1
    assert table.loc["BKD tipping epoch (from 1)", "cnn batch"] == "16.0 ± 1.0"
    assert table.loc["BKD estimated noise rate (%)"].tolist() == ["70.0", "60.0 ± 0.0", "–"]
    assert table.loc["CE test accuracy, best epoch (%, optimistic)", "this run"] == "44.0"
    no_tip = {"bkd": {**run["bkd"], "tipping_epoch": None, "tipping_rule": None}, "ce": run["ce"]}
    assert book.profile_comparison(no_tip, {}, "worst").loc["BKD tipping point from the peak rule (runs)",
                                                            "this run"] == "no tipping point"
    # another split than the batch's: its cells are empty, not another split's numbers
    assert set(book.profile_comparison(run, {"cnn batch": _batch_table()}, "aggre")["cnn batch"]) == {"–"}


def test_batch_summary_of_a_missing_folder_is_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert book.batch_summary(tmp_path / "nothing") is None


@pytest.mark.skipif(not (COMMITTED_BATCH / "summary.json").is_file(), reason="no committed batch")
def test_batch_summary_of_the_committed_features_batch():
    summary = book.batch_summary("reproductions/features", "worst")
    assert summary is not None and book.peak_rule_runs(summary, "worst")[1] == 3
    assert book.batch_summary("reproductions/features", "no-such-split") is None


def test_claims_table_says_each_claim_with_its_numbers_negatives_included():
    """Chapter 01's claim -> finding table, on the committed features batch: wins, ties and losses in the same
    words (bkd_core.book.verdict), one column per batch."""
    pytest.importorskip("pandas")
    from bkd_core.book import analysis, results

    table = results.collect_results(book.find_results_dir("reproductions/features"))
    found = analysis.claim_findings(table)
    assert set(found) == set(analysis.CLAIMS)
    assert "loses on 1 (worst: 68.0 against 73.2)" in found["detection"]  # confident learning on worst
    assert "ties on 1 (aggre: 76.2 against 76.0) and loses on 1 (clean: 76.9 against 78.6)" in found["robust"]
    assert "and on the clean split too" in found["tipping"] and "18 of 18" in found["tipping"]
    assert "Above the true noise rate on 6 of 6 splits" in found["estimate"]
    claims = analysis.claims_table({"features": table, "again": table})
    assert list(claims.columns) == ["claim", "features", "again"] and len(claims) == len(analysis.CLAIMS)


def test_the_readme_verdict_quotes_the_committed_batch():
    """The README's first lines say what chapter 01's claim table says: the same losses and ties, the same numbers."""
    pytest.importorskip("pandas")
    import re
    from pathlib import Path

    from bkd_core.book import analysis, results

    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    found = analysis.claim_findings(results.collect_results(book.find_results_dir("reproductions/features")))
    for key, pattern in (("detection", r"loses on 1 \(worst: ([\d.]+ against [\d.]+)\)"),
                         ("robust", r"ties on 1 \(aggre: ([\d.]+ against [\d.]+)\)"),
                         ("robust", r"loses on 1 \(clean: ([\d.]+ against [\d.]+)\)"),
                         ("memorization", r"peaks at ([\d.]+%) and ends at"),
                         ("tipping", r"fires in (\d+ of \d+) runs")):
        quoted = re.search(pattern, found[key]).group(1)
        assert quoted in readme, (key, quoted)
    assert "**loses**" in readme and "**ties**" in readme


def test_the_readme_verdict_quotes_the_committed_cnn_batch():
    """Every number of chapter 01's cnn column (read from the committed runs) is in the README's first lines."""
    pytest.importorskip("pandas")
    import re
    from pathlib import Path

    from bkd_core.book import results, verdict

    root = Path(__file__).resolve().parents[1]
    if not (root / "reproductions" / "cnn").is_dir():
        pytest.skip("no committed cnn batch")
    readme = " ".join((root / "README.md").read_text().split("## Results")[0].split())
    table = results.collect_stages(root / "reproductions" / "cnn")
    found = verdict.claim_findings(table, falls=results.peak_falls(root / "reproductions" / "cnn", table))
    for key in ("memorization", "tipping", "estimate", "detection", "robust"):
        for number in re.findall(r"\d+\.\d+", found[key]):
            assert number in readme, (key, number, found[key])
