"""The reproduction batch (``bkd_core.batch``): confident learning, one run (``run_one``), the batch runner with
its executors (local pool, submitit's local executor), the batch folder, checks of its runs, the results tables
and the CLI.

Batch-runner tests execute a tiny stand-in run notebook (no training) so they take seconds; one test
executes the real run notebook with tiny parameters on real CIFAR-10N (skipped without
``BKD_DATA_DIR``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bkd_core import cli
import bkd_core.batch
from bkd_core.batch import check as batch_check
from bkd_core.batch import runner
from bkd_core.config import BKDConfig
from bkd_core.detectors.confident_learning import stratified_folds, train_confident_learning
from bkd_core.metrics import ranking_auc
from bkd_core.batch.runner import BatchOptions, RunOutcome, RunSpec, parse_splits, plan, run_batch, run_one
from bkd_core.book.results import (HIGHLIGHT_ROWS, SAMPLES, collect_results, disagreements, most_suspicious,
                              read_highlights, read_samples, run_times, summarize)
from bkd_core.synthetic import make_synthetic_cifar_n

nbformat = pytest.importorskip("nbformat")  # book packages: absent on a training-only machine
pd = pytest.importorskip("pandas")

TINY = BKDConfig(model="small_cnn", model_widths=(8, 16, 16), epochs=3, batch_size=32, lr=0.02, lr_step=None,
                 augment=False, val_every=1, test_every=1, seed=0, tipping_fallback=0)
TINY_OVERRIDES = {"model": "small_cnn", "features": None, "model_widths": [8, 16, 16], "epochs": 3, "batch_size": 32,
                  "augment": False, "lr_step": None, "train_size": 120, "test_size": 40, "tipping_fallback": 0}


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic_cifar_n(n_train=240, n_test=60, noise_rate=0.3, seed=3)


# ----------------------------------------------------------------------------------------------
# Confident learning
# ----------------------------------------------------------------------------------------------


def test_stratified_folds_balanced_and_seeded():
    labels = np.repeat(np.arange(4), 30)
    folds = stratified_folds(labels, 3, seed=0)
    assert folds.shape == labels.shape and set(folds) == {0, 1, 2}
    for c in range(4):  # every class spread evenly over the folds
        assert np.bincount(folds[labels == c], minlength=3).tolist() == [10, 10, 10]
    np.testing.assert_array_equal(folds, stratified_folds(labels, 3, seed=0))
    assert not np.array_equal(folds, stratified_folds(labels, 3, seed=1))


def test_stratified_folds_rare_class_and_bad_counts():
    labels = np.array([0] * 20 + [1])  # class 1 has fewer members than folds: plain K-fold
    assert np.bincount(stratified_folds(labels, 3, seed=0)).tolist() == [7, 7, 7]
    with pytest.raises(ValueError, match="folds must be between 2"):
        stratified_folds(labels, 1, seed=0)
    with pytest.raises(ValueError, match="folds must be between 2"):
        stratified_folds(labels, 22, seed=0)


def test_confident_learning_is_out_of_fold_and_detects(synthetic, tmp_path):
    # 8 epochs at lr 0.05: the fold networks learn the synthetic classes (out-of-fold accuracy on the clean
    # labels 0.71-0.75 over data seeds 3-5, native, AVX2 and default kernels), so detection is far above
    # flagging everything (F1 0.76-0.83 against 0.43-0.47) and the ranking AUC 0.93-0.98
    config = TINY.replace(epochs=8, lr=0.05)
    result = train_confident_learning(synthetic, config, tmp_path / "cl", folds=3, progress=False)
    arrays, m = result.arrays, result.metrics
    n = len(synthetic)
    np.testing.assert_allclose(arrays["pred_probs"].sum(1), 1.0, atol=1e-4)
    assert arrays["label_issues"].shape == (n,) and arrays["label_issues"].dtype == bool
    assert sorted(arrays["ranked_indices"]) == list(range(n))
    for k in range(3):  # fold k's network never saw the rows it predicted
        with np.load(tmp_path / "cl" / f"fold_{k}" / "scores.npz") as f:
            seen = set(f["indices"].tolist())
        held_out = set(synthetic.indices[arrays["folds"] == k].tolist())
        assert held_out and not seen & held_out and len(seen) + len(held_out) == n
    assert m["true_noise_rate"] == pytest.approx(synthetic.noise_rate)
    assert m["detection_f1"] > m["flag_all_f1"] + 0.15, m  # the synthetic classes are easy to learn
    assert ranking_auc(arrays["label_quality"], synthetic.is_noisy) > 0.8
    assert m["estimated_noise_rate"] == pytest.approx(arrays["label_issues"].mean())


def test_confident_learning_resumes_and_refuses_another_run(synthetic, tmp_path):
    first = train_confident_learning(synthetic, TINY, tmp_path / "cl", folds=2, progress=False)
    (tmp_path / "cl" / "metrics.json").unlink()  # as if interrupted after the folds
    again = train_confident_learning(synthetic, TINY, tmp_path / "cl", folds=2, progress=False)
    np.testing.assert_array_equal(first.arrays["pred_probs"], again.arrays["pred_probs"])
    with pytest.raises(ValueError, match="belongs to a different run"):
        train_confident_learning(synthetic, TINY, tmp_path / "cl", folds=3, progress=False)


# ----------------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------------


def test_parse_splits_and_plan():
    assert len(parse_splits(["all"])) == 8
    assert parse_splits(["cifar100"]) == [("cifar100", "clean100"), ("cifar100", "noisy100")]
    assert parse_splits(["worse_label", "noisy100", "worst"]) == [("cifar10", "worst"), ("cifar100", "noisy100")]
    with pytest.raises(ValueError, match="unknown split 'bogus'; choose from all, cifar10"):
        parse_splits(["bogus"])
    specs = plan(["worst", "aggre"], [0, 1])
    assert [s.name for s in specs] == ["cifar10-worst-seed0", "cifar10-worst-seed1", "cifar10-aggre-seed0",
                                       "cifar10-aggre-seed1"]
    with pytest.raises(ValueError, match="at least one seed"):
        plan(["worst"], [])


def test_batch_options_checks(tmp_path):
    with pytest.raises(ValueError, match="methods must be a non-empty subset"):
        BatchOptions(out=str(tmp_path), methods=("bkd", "dividemix"))
    with pytest.raises(ValueError, match="folds must be >= 2"):
        BatchOptions(out=str(tmp_path), folds=1)
    assert Path(BatchOptions(out="rel").out).is_absolute()


# ----------------------------------------------------------------------------------------------
# One run, in process, on synthetic data
# ----------------------------------------------------------------------------------------------


def test_run_one_writes_metrics_samples_and_tables(synthetic, tmp_path, monkeypatch, capsys):
    loader = lambda *a, **k: synthetic  # noqa: E731  (the batch's data seam)
    overrides = {**TINY_OVERRIDES, "train_size": None, "test_size": None}  # every synthetic image
    for seed in (0, 1):
        run_dir = tmp_path / "batch" / f"cifar10-synthetic-seed{seed}"
        summary = run_one("cifar10", "synthetic", seed, run_dir, overrides=overrides, folds=2, progress=False,
                          loader=loader)
        assert set(summary["methods"]) == {"bkd", "ce", "cleanlab"}
        assert runner.is_finished(run_dir, ("bkd", "ce", "cleanlab"))
        samples = read_samples(run_dir)
        assert len(samples) == len(synthetic)
        np.testing.assert_array_equal(samples["index"], synthetic.indices)
        np.testing.assert_array_equal(samples["given_label"] != samples["clean_label"], synthetic.is_noisy)
        for method in ("bkd", "ce", "cleanlab"):
            assert samples[f"{method}_issue"].isin([0, 1]).all()
            assert samples[f"{method}_quality"].between(0, 1).all()
        assert samples["bkd_group"].isin([1, 2, 3, 4]).all()
    table = collect_results(tmp_path / "batch")
    assert len(table) == 6 and table["method"].tolist() == ["bkd", "ce", "cleanlab"] * 2
    assert table["seed"].tolist() == [0, 0, 0, 1, 1, 1]
    summary = summarize(table)
    assert summary["seeds"].tolist() == [2, 2, 2]
    bkd = summary[summary["method"] == "bkd"].iloc[0]
    f1 = table[table["method"] == "bkd"]["detection_f1"].astype(float)
    assert bkd["detection_f1_mean"] == pytest.approx(f1.mean())
    assert bkd["detection_f1_std"] == pytest.approx(f1.std(ddof=1))
    samples = read_samples(tmp_path / "batch" / "cifar10-synthetic-seed1")
    from bkd_core.metrics import ranking_auc

    cleanlab_auc = ranking_auc(samples["cleanlab_quality"], samples["given_label"] != samples["clean_label"])
    assert table.iloc[5]["method"] == "cleanlab" and table.iloc[5]["ranking_auc"] == pytest.approx(cleanlab_auc)
    # the committed part of a run is metrics.json and highlights.csv: the full table can go
    highlights = read_highlights(tmp_path / "batch" / "cifar10-synthetic-seed1")
    assert len(highlights) < len(samples)
    for n in (1, 7, HIGHLIGHT_ROWS):
        assert most_suspicious(highlights, n)["index"].tolist() == most_suspicious(samples, n)["index"].tolist()
        for kept, full in zip(disagreements(highlights, n), disagreements(samples, n)):
            assert kept["index"].tolist() == full["index"].tolist()
            np.testing.assert_allclose(kept["rank_gap"], full["rank_gap"])
    with pytest.raises(ValueError, match=f"keeps the top {HIGHLIGHT_ROWS} rows"):
        most_suspicious(highlights, HIGHLIGHT_ROWS + 1)
    for run_dir in (tmp_path / "batch").iterdir():
        (run_dir / SAMPLES).unlink()
    pd.testing.assert_frame_equal(collect_results(tmp_path / "batch"), table)
    # the same table as Markdown, from the command line
    from bkd_core.cli import main

    assert main(["results", str(tmp_path / "batch")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| mean ± std over seeds | synthetic |" and lines[1] == "| --- | --- |"
    f1_row = next(line for line in lines if line.startswith("| BKD F1, G4 (%) |"))
    assert f1_row == f"| BKD F1, G4 (%) | {100 * f1.mean():.1f} ± {100 * f1.std(ddof=1):.1f} |"
    # ... and which training code made the runs: this code, which the reader can check against a stale batch
    assert "by the current training code" in lines[-1] and "other code" not in lines[-1], lines[-1]
    assert main(["results", str(tmp_path / "empty")]) == 2
    assert "no finished run" in capsys.readouterr().err


def test_highlights_of_a_run_without_bkd_keep_each_methods_top_rows():
    """A batch of CE (or cleanlab) runs alone still writes its highlights: each method's own top rows."""
    from bkd_core.book.results import highlights

    rng = np.random.default_rng(0)
    samples = pd.DataFrame({"index": np.arange(100), "given_label": rng.integers(0, 10, 100),
                            "clean_label": rng.integers(0, 10, 100), "ce_quality": rng.random(100),
                            "cleanlab_quality": rng.random(100)})
    kept = highlights(samples, n=5)
    for method in ("ce", "cleanlab"):
        assert most_suspicious(kept, 5, method=method)["index"].tolist() == \
            most_suspicious(samples, 5, method=method)["index"].tolist()
    assert len(kept) <= 10 and "rank_gap" not in kept


def test_collect_results_of_empty_folder(tmp_path):
    assert len(collect_results(tmp_path)) == 0 and len(summarize(collect_results(tmp_path))) == 0


# ----------------------------------------------------------------------------------------------
# The batch runner with a stand-in run notebook (no training)
# ----------------------------------------------------------------------------------------------

STAND_IN = '''
import json, os, pathlib
if split == "rand2":
    raise RuntimeError("deliberate failure of rand2")
metrics = {"kind": "bkd", "detection_f1": 0.5 + seed / 10, "true_noise_rate": 0.4, "test_acc": 50.0,
           "wall_time_s": 1.0, "threads": os.environ.get("OMP_NUM_THREADS")}
summary = pathlib.Path(out_dir).parent / "summary.json"  # what the batch's summary says while this run goes
seen = {r["name"]: r["status"] for r in json.loads(summary.read_text())["runs"]} if summary.is_file() else None
pathlib.Path(out_dir, "metrics.json").write_text(json.dumps(
    {"dataset": dataset, "split": split, "seed": seed, "profile": profile, "methods": {m: metrics for m in methods},
     "summary_seen": seen}))
'''


@pytest.fixture
def stand_in(tmp_path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        'dataset = "cifar10"\nsplit = "worst"\nseed = 0\nout_dir = "."\nprofile = "features"\noverrides = {}\n'
        'methods = ["bkd"]\nfolds = 3\ndata_dir = None\ndownload = False\ndevice = "auto"\nthreads = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(STAND_IN)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "stand_in.ipynb"
    nbformat.write(nb, path)
    data = tmp_path / "data"  # CIFAR-10 "present" (only existence is checked before a run), CIFAR-100 not
    data.mkdir()
    (data / "cifar10.npz").write_bytes(b"")
    (data / "CIFAR-10_human.pt").write_bytes(b"")
    return path, data


@pytest.mark.parametrize("executor", ["local", "submitit-local"])
def test_batch_failure_skips_resume_and_summary(stand_in, tmp_path, executor):
    template, data = stand_in
    out = tmp_path / "out"
    options = BatchOptions(out=str(out), methods=("bkd", "ce"), data_dir=str(data), template=str(template))
    specs = plan(["worst", "rand2", "noisy100"], [0, 1])
    outcomes = run_batch(specs, options, jobs=2, executor=executor, progress=False)
    status = {o.name: o.status for o in outcomes}
    assert [o.name for o in outcomes] == [s.name for s in specs]
    assert status == {"cifar10-worst-seed0": "done", "cifar10-worst-seed1": "done", "cifar10-rand2-seed0": "failed",
                      "cifar10-rand2-seed1": "failed", "cifar100-noisy100-seed0": "skipped",
                      "cifar100-noisy100-seed1": "skipped"}
    failed = next(o for o in outcomes if o.status == "failed")
    assert "deliberate failure of rand2" in failed.reason
    assert (out / "cifar10-rand2-seed0" / "error.txt").is_file()
    assert "cifar100" in next(o for o in outcomes if o.status == "skipped").reason
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"done": 2, "finished-before": 0, "skipped": 2, "failed": 2, "pending": 0}
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4 and set(results["split"]) == {"worst"}
    assert (out / "cifar10-worst-seed0" / "run.ipynb").is_file()
    if executor == "local":  # one thread pool per run, sized to its share of the cores
        threads = json.loads((out / "cifar10-worst-seed0" / "metrics.json").read_text())["methods"]["bkd"]["threads"]
        assert threads == str(max(1, (os.cpu_count() or 1) // 2))
    again = run_batch(specs, options, jobs=2, executor=executor, progress=False)
    assert [o.status for o in again][:2] == ["finished-before", "finished-before"]
    assert [o.status for o in again][2:4] == ["failed", "failed"]


def test_interrupted_batch_leaves_a_true_summary(stand_in, tmp_path):
    """summary.json is rewritten after every run: while a run goes (or if the batch dies) it says which
    runs are done and which are still pending."""
    template, data = stand_in
    out = tmp_path / "out"
    options = BatchOptions(out=str(out), methods=("bkd",), data_dir=str(data), template=str(template))
    run_batch(plan(["worst", "noisy100"], [0, 1]), options, jobs=1, progress=False)
    first = json.loads((out / "cifar10-worst-seed0" / "metrics.json").read_text())["summary_seen"]
    second = json.loads((out / "cifar10-worst-seed1" / "metrics.json").read_text())["summary_seen"]
    assert first == {"cifar10-worst-seed0": "pending", "cifar10-worst-seed1": "pending",
                     "cifar100-noisy100-seed0": "skipped", "cifar100-noisy100-seed1": "skipped"}
    assert second == {**first, "cifar10-worst-seed0": "done"}
    runs = run_times(out)
    assert runs["status"].tolist() == ["done", "done", "skipped", "skipped"]


def _fake_epochs(folder: Path, n: int) -> None:
    (folder / "epochs").mkdir(parents=True, exist_ok=True)
    for k in range(n):
        (folder / "epochs" / f"epoch_{k:03d}.npz").write_bytes(b"")


def test_run_work_counts_network_epochs_from_disk(tmp_path):
    run = tmp_path / "cifar10-worst-seed0"
    assert runner.run_work(run, 4) == (0.0, 20.0)  # bkd 2 x 4, ce 1 x 4, cleanlab 3 folds x 2/3 x 4
    _fake_epochs(run / "bkd", 3)
    (run / "ce").mkdir(parents=True)
    (run / "ce" / "metrics.json").write_text("{}")
    (run / "cleanlab" / "fold_0").mkdir(parents=True)
    (run / "cleanlab" / "fold_0" / "metrics.json").write_text("{}")
    _fake_epochs(run / "cleanlab" / "fold_1", 2)
    done, total = runner.run_work(run, 4)
    assert total == pytest.approx(20.0) and done == pytest.approx(2 * 3 + 4 + 4 * 2 / 3 + 2 * 2 / 3)
    assert runner.run_work(run, 4, methods=("ce",)) == (4.0, 4.0)
    (run / "cleanlab" / "metrics.json").write_text("{}")  # a finished method counts in full
    assert runner.run_work(run, 4, methods=("cleanlab",)) == pytest.approx((8.0, 8.0))


def test_time_left_from_the_rate_since_the_batch_started(tmp_path, monkeypatch):
    clock = iter([100.0, 100.0, 160.0, 160.0, 160.0, 160.0])
    monkeypatch.setattr(runner.time, "perf_counter", lambda: next(clock))
    first, second = tmp_path / "a", tmp_path / "b"
    _fake_epochs(first / "bkd", 2)  # resumed: 4 of its network-epochs were done before this batch
    left = runner.TimeLeft([first, second], 10, ("bkd",), 3)  # 40 network-epochs in all
    assert str(left) == ""  # no work done since the start: no estimate
    _fake_epochs(first / "bkd", 5)  # 6 more in 60 s: 30 left at 6 per minute
    assert left.minutes() == pytest.approx(5.0)
    assert str(left) == "~5 min left"
    assert runner.TimeLeft([first], None, ("bkd",), 3).minutes() is None


def test_cli_reproduce_exit_status(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_run_batch(specs, options, **kwargs):
        seen.update(specs=specs, options=options, **kwargs)
        return [RunOutcome(specs[0].name, "done", 60.0), RunOutcome(specs[1].name, "failed", 1.0, "boom")]

    monkeypatch.setattr(bkd_core.batch, "run_batch", fake_run_batch)
    argv = ["reproduce", "--splits", "worst", "--seeds", "0", "1", "--out", str(tmp_path), "--jobs", "2",
            "--set", "epochs=5", "--executor", "slurm", "--slurm", "slurm_partition=gpu", "--slurm", "timeout_min=600"]
    assert cli.main(argv) == 1
    assert [s.name for s in seen["specs"]] == ["cifar10-worst-seed0", "cifar10-worst-seed1"]
    assert seen["options"].overrides == {"epochs": 5} and seen["jobs"] == 2 and seen["executor"] == "slurm"
    assert seen["submitit_parameters"] == {"slurm_partition": "gpu", "timeout_min": 600}
    out = capsys.readouterr().out
    assert "1 done, 0 finished-before, 0 skipped, 1 failed" in out and "boom" in out
    assert cli.main(["reproduce", "--out", str(tmp_path), "--set", "epochs=0"]) == 2  # input errors: status 2
    assert "invalid BKDConfig: epochs must be >= 1" in capsys.readouterr().err
    assert cli.main(["reproduce", "--out", str(tmp_path), "--splits", "bogus"]) == 2
    assert "unknown split" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# The real run notebook on real CIFAR-10N
# ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not os.environ.get("BKD_DATA_DIR"), reason="BKD_DATA_DIR is unset: no real CIFAR-10N here")
def test_real_run_notebook_on_cifar10n(tmp_path):
    options = BatchOptions(out=str(tmp_path / "out"), overrides=dict(TINY_OVERRIDES), folds=2)
    outcomes = run_batch([RunSpec("cifar10", "worst", 0)], options, jobs=1, progress=False)
    assert [o.status for o in outcomes] == ["done"], outcomes
    run_dir = tmp_path / "out" / "cifar10-worst-seed0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"bkd", "ce", "cleanlab"}
    assert metrics["config"]["epochs"] == 3 and metrics["config"]["model_widths"] == [8, 16, 16]
    assert 0.3 < metrics["methods"]["bkd"]["true_noise_rate"] < 0.55  # worst: about 40% noisy
    samples = read_samples(run_dir)
    assert len(samples) == 120 and samples["index"].between(0, 49_999).all()
    executed = nbformat.read(run_dir / "run.ipynb", as_version=4)
    assert not [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                if o.get("output_type") == "error"]
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert table["method"].tolist() == ["bkd", "ce", "cleanlab"]


def test_split_table_formats_mean_std_and_undefined_detection(tmp_path):
    from bkd_core.io import atomic_write_json
    from bkd_core.book.results import split_table

    for split, noise, f1s in (("clean", 0.0, (0.0, 0.0)), ("worst", 0.4, (0.5, 0.7))):
        for seed, f1 in enumerate(f1s):
            metrics = {"true_noise_rate": noise, "detection_f1": f1, "flag_all_f1": 2 * noise / (1 + noise),
                       "tipping_epoch": 9 + seed, "test_acc": 40.0 + seed,
                       "tipping_rule": "fallback" if (split, seed) == ("worst", 1) else "peak"}
            atomic_write_json(tmp_path / f"cifar10-{split}-seed{seed}" / "metrics.json",
                              {"dataset": "cifar10", "split": split, "seed": seed, "methods": {"bkd": metrics}})
    table = split_table(summarize(collect_results(tmp_path)))
    assert list(table.columns) == ["clean", "worst"]
    assert table.loc["seeds"].tolist() == ["2", "2"]
    assert table.loc["BKD F1, G4 (%)"].tolist() == ["n/a", "60.0 ± 14.1"]
    assert table.loc["flag everything F1 (%)"].tolist() == ["n/a", "57.1 ± 0.0"]
    assert table.loc["BKD tipping epoch (from 1)"].tolist() == ["10.5 ± 0.7", "10.5 ± 0.7"]  # counted from 1
    assert table.loc["BKD tipping point from the peak rule (runs)"].tolist() == ["2 of 2", "1 of 2"]
    assert table.loc["BKD test accuracy, last epoch (%)", "worst"] == "40.5 ± 0.7"
    assert table.loc["cleanlab F1 (%)"].tolist() == ["–", "–"]  # no cleanlab run in this batch
    assert table.loc["BKD ranking ROC-AUC"].tolist() == ["n/a", "–"]  # no samples.csv: no ranking to score


def test_finished_run_of_another_configuration_is_reported_not_reused(tmp_path):
    from bkd_core.config import get_profile
    from bkd_core.io import atomic_write_json

    spec = RunSpec("cifar10", "worst", 0)
    options = BatchOptions(out=str(tmp_path), methods=("bkd", "ce"), overrides={"epochs": 5})
    metrics = tmp_path / spec.name / "metrics.json"
    this_batch = get_profile("features", seed=0, epochs=5).fingerprint()  # the batch's default profile
    atomic_write_json(metrics, {"methods": {"bkd": {}, "ce": {}}, "fingerprint": this_batch})
    assert runner._settled(spec, options).status == "finished-before"
    atomic_write_json(metrics, {"methods": {"bkd": {}, "ce": {}},
                                "fingerprint": get_profile("features", seed=0).fingerprint()})
    outcome = runner._settled(spec, options)
    assert outcome.status == "failed"
    assert "another configuration" in outcome.reason and this_batch in outcome.reason and "--out" in outcome.reason


def test_split_table_shows_knn_rows_only_for_a_batch_with_knn_runs(tmp_path):
    from bkd_core.io import atomic_write_json
    from bkd_core.book.results import split_table

    bkd = {"true_noise_rate": 0.4, "detection_f1": 0.6, "flag_all_f1": 0.57}
    atomic_write_json(tmp_path / "a" / "cifar10-worst-seed0" / "metrics.json",
                      {"dataset": "cifar10", "split": "worst", "seed": 0, "methods": {"bkd": bkd}})
    without = split_table(summarize(collect_results(tmp_path / "a")))
    assert not any("kNN" in label for label in without.index)
    assert without.loc["cleanlab F1 (%)"].tolist() == ["–"]  # a trained method's missing run still shows
    atomic_write_json(tmp_path / "b" / "cifar10-worst-seed0" / "metrics.json",
                      {"dataset": "cifar10", "split": "worst", "seed": 0,
                       "methods": {"bkd": bkd, "knn": {"true_noise_rate": 0.4, "detection_f1": 0.72,
                                                       "estimated_noise_rate": 0.52}}})
    with_knn = split_table(summarize(collect_results(tmp_path / "b")))
    assert with_knn.loc["kNN label voting F1 (%)"].tolist() == ["72.0"]
    assert with_knn.loc["kNN estimated noise rate (%)"].tolist() == ["52.0"]


def test_check_run_reruns_a_run_and_records_whether_it_is_identical(synthetic, tmp_path, monkeypatch):
    from bkd_core.book import results
    from bkd_core.provenance import code_hash

    loader = lambda *a, **k: synthetic  # noqa: E731  (the batch's data seam)
    out = tmp_path / "batch"
    overrides = {**TINY_OVERRIDES, "train_size": None, "test_size": None}
    run_one("cifar10", "synthetic", 0, out / "cifar10-synthetic-seed0", overrides=overrides, methods=("bkd", "ce"),
            threads=1, progress=False, loader=loader)
    (out / "summary.json").write_text(json.dumps({"options": {"overrides": overrides, "threads": 1}, "runs": []}))
    # as if an older training code had made the run: the rerun with this code tells whether it still holds
    path = out / "cifar10-synthetic-seed0" / "metrics.json"
    stored = json.loads(path.read_text())
    stored["config"]["extra"] = {}  # a field retired since, at its one value: not a difference
    path.write_text(json.dumps({**stored, "code_hash": "0123456789ab"}))
    assert results.code_versions(out)["code"].tolist() == [results.CODE_OTHER]

    check = batch_check.check_run(out, "cifar10-synthetic-seed0", progress=False, loader=loader)
    assert check["differences"] == [] and check["identical"] and check["code_hash"] == code_hash()
    assert check["recorded_code_hash"] == "0123456789ab"
    versions = results.code_versions(out)
    assert versions["code"].tolist() == [results.CODE_REPRODUCED]
    assert "came out identical" in results.code_version_text(versions)
    # the same from a batch already rerun into another folder: compared, not trained again
    other = tmp_path / "other"
    run_one("cifar10", "synthetic", 0, other / "cifar10-synthetic-seed0", overrides=overrides, methods=("bkd", "ce"),
            threads=1, progress=False, loader=loader)
    (out / "code_checks.json").unlink()
    assert cli.main(["check", str(out), "--rerun", str(other)]) == 0
    assert results.code_versions(out)["code"].tolist() == [results.CODE_REPRODUCED]
    assert cli.main(["check", str(out)]) == 2  # neither a run nor --rerun: a clear error, not a traceback

    # a recorded number that the code no longer gives is found, named, and the run is not claimed
    run = json.loads(path.read_text())
    run["methods"]["bkd"]["detection_f1"] += 0.01
    path.write_text(json.dumps(run))
    bkd_metrics = out / "cifar10-synthetic-seed0" / "bkd" / "metrics.json"
    stored = json.loads(bkd_metrics.read_text())
    stored["test_acc"] += 1.0
    bkd_metrics.write_text(json.dumps(stored))
    check = batch_check.check_run(out, "cifar10-synthetic-seed0", progress=False, loader=loader)
    assert not check["identical"]
    assert any(line.startswith("metrics.json: methods.bkd.detection_f1:") for line in check["differences"])
    assert any(line.startswith("bkd/metrics.json: test_acc:") for line in check["differences"])
    assert "bkd/scores.npz" in check["compared"] and "highlights.csv" in check["compared"]
    assert len(results.read_code_checks(out)) == 1  # the same run and code: the newer check replaces the older
    assert results.code_versions(out)["code"].tolist() == [results.CODE_OTHER]
    with pytest.raises(FileNotFoundError, match="not a finished run"):
        batch_check.check_run(out, "cifar10-synthetic-seed9", progress=False, loader=loader)


def test_check_side_by_side_chains_code_versions_across_machines(synthetic, tmp_path, monkeypatch):
    """A run made on another machine differs here in its last digits whatever the code; older and current code
    rerun side by side here compare exactly, and with the older code's check on the first machine the current
    code is credited through the chain, and only through it."""
    import shutil

    from bkd_core.book import results
    from bkd_core.provenance import code_hash

    loader = lambda *a, **k: synthetic  # noqa: E731  (the batch's data seam)
    overrides = {**TINY_OVERRIDES, "train_size": None, "test_size": None}
    name = "cifar10-synthetic-seed0"
    run_one("cifar10", "synthetic", 0, tmp_path / "older" / name, overrides=overrides, methods=("bkd", "ce"),
            threads=1, progress=False, loader=loader)
    for folder in ("out", "now"):
        shutil.copytree(tmp_path / "older", tmp_path / folder)
    summary = json.dumps({"options": {"overrides": overrides, "threads": 1}, "runs": []})
    for folder in ("out", "older", "now"):
        (tmp_path / folder / "summary.json").write_text(summary)

    def stamp(folder, code, bump=0.0):
        path = tmp_path / folder / name / "metrics.json"
        run = json.loads(path.read_text())
        run["methods"]["bkd"]["test_acc"] += bump
        path.write_text(json.dumps({**run, "code_hash": code}))

    stamp("out", "aaaaaaaaaaaa", bump=0.01)  # made on another CPU: its last digits differ from any rerun here
    stamp("older", "bbbbbbbbbbbb")
    out = tmp_path / "out"
    # a direct check against the current code here: differs, and credits nothing
    assert cli.main(["check", str(out), "--rerun", str(tmp_path / "now")]) == 1
    assert results.code_versions(out)["code"].tolist() == [results.CODE_OTHER]
    # side by side: the older code's rerun and the current code's, both made here
    assert cli.main(["check", str(out), "--rerun", str(tmp_path / "now"), "--reference", str(tmp_path / "older")]) == 0
    checks = results.read_code_checks(out)
    assert len(checks) == 2 and checks[-1]["side_by_side"] and checks[-1]["identical"]
    assert (checks[-1]["recorded_code_hash"], checks[-1]["code_hash"]) == ("bbbbbbbbbbbb", code_hash())
    assert results.code_versions(out)["code"].tolist() == [results.CODE_OTHER]  # no link from aaaa to bbbb yet
    # the older code's own check on the machine that made the run closes the chain
    stored = json.loads((out / "code_checks.json").read_text())
    stored["checks"].insert(0, {"run": name, "recorded_code_hash": "aaaaaaaaaaaa", "code_hash": "bbbbbbbbbbbb",
                                "identical": True})
    (out / "code_checks.json").write_text(json.dumps(stored))
    versions = results.code_versions(out)
    assert versions["code"].tolist() == [results.CODE_REPRODUCED] and versions["chained"].tolist() == [True]
    assert "through a chain of such checks" in results.code_version_text(versions)
    # a reference that is not a finished run, or one without --rerun, is refused with one sentence
    assert cli.main(["check", str(out), name, "--reference", str(tmp_path / "older")]) == 2
    assert cli.main(["check", str(out), name, "--rerun", str(tmp_path / "now"), "--reference",
                     str(tmp_path / "missing")]) == 2
    assert len(results.read_code_checks(out)) == 3


def test_code_version_text_names_the_reproduced_runs_unless_all_were():
    from bkd_core.book import results

    rows = [{"run": f"r{i}", "code_hash": "0123456789ab", "code": results.CODE_REPRODUCED} for i in range(3)]
    every = results.code_version_text(pd.DataFrame(rows), current="ba9876543210")
    assert "all 3 of them came out identical" in every and "r1" not in every
    rows[2]["code"] = results.CODE_OTHER
    some = results.code_version_text(pd.DataFrame(rows), current="ba9876543210")
    assert "2 of them (r0, r1) came out identical" in some and "the other 1 (r2) were not reproduced" in some


def test_a_second_batch_on_the_same_out_is_refused_at_once(stand_in, tmp_path, capsys):
    """Two ``reproduce`` processes on one --out: the second is refused before it runs (or marks) anything."""
    from bkd_core.errors import RunDirError
    from bkd_core.rundir import folder_lock

    template, data = stand_in
    out = tmp_path / "out"
    out.mkdir()
    options = BatchOptions(out=str(out), methods=("bkd",), data_dir=str(data), template=str(template))
    with folder_lock(out):  # the first batch (flock locks are per open file: this holds against this process too)
        with pytest.raises(RunDirError, match=r"another process \(pid \d+\) is running a batch into"):
            run_batch(plan(["worst"], [0]), options, progress=False)
        assert cli.main(["reproduce", "--splits", "worst", "--seeds", "0", "--methods", "bkd", "--out", str(out),
                         "--data-dir", str(data), "--no-progress"]) == 2
        assert "running a batch into" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # no summary.json, no run marked failed
    assert [o.status for o in run_batch(plan(["worst"], [0]), options, progress=False)] == ["done"]


def test_a_finished_run_replaces_an_earlier_failed_status_in_the_summary(stand_in, tmp_path):
    template, data = stand_in
    out = tmp_path / "out"
    options = BatchOptions(out=str(out), methods=("bkd",), data_dir=str(data), template=str(template))
    specs = plan(["worst"], [0, 1])
    run_batch(specs, options, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    summary["runs"][0].update(status="failed", reason="another process was writing to it")  # what a race left
    (out / "summary.json").write_text(json.dumps(summary))
    run_batch(specs, options, progress=False)
    runs = {r["name"]: r for r in json.loads((out / "summary.json").read_text())["runs"]}
    assert runs["cifar10-worst-seed0"]["status"] == "finished-before" and not runs["cifar10-worst-seed0"]["reason"]
    assert runs["cifar10-worst-seed1"]["status"] == "done"  # a run done earlier keeps its entry (and its time)
    assert run_times(out)["status"].tolist() == ["finished-before", "done"]


def test_batch_runs_do_not_log_the_kernels_tcp_warning(stand_in, tmp_path, capfd):
    """Jupyter's "Kernel is running over TCP without encryption" is not printed for every run of a batch."""
    template, data = stand_in
    options = BatchOptions(out=str(tmp_path / "out"), methods=("bkd",), data_dir=str(data), template=str(template))
    assert [o.status for o in run_batch(plan(["worst"], [0]), options, progress=False)] == ["done"]
    captured = capfd.readouterr()
    assert "without encryption" not in captured.err + captured.out


# ----------------------------------------------------------------------------------------------
# The batch folder against hostile inputs: hand-made runs (no training), real FIFOs and links
# ----------------------------------------------------------------------------------------------

RUN = "cifar10-worst-seed0"


def _fake_run(folder, name=RUN, *, seed=0, cpu="CPU model A", threads=1, **config_changes):
    """A finished run as the batch writes it, by hand: its metrics.json with a valid recorded configuration."""
    from bkd_core.config import get_profile
    from bkd_core.io import atomic_write_json

    config = get_profile("cnn", seed=seed, **{"epochs": 3, **config_changes})
    methods = {m: {"detection_f1": 0.5, "estimated_noise_rate": 0.4, "test_acc": 60.0, "ranking_auc": 0.8,
                   "wall_time_s": 1.0, "device": f"cpu (x86_64, {threads} threads)"} for m in ("bkd", "cleanlab")}
    methods["cleanlab"]["cleanlab"] = "2.9.0"  # the library's version: volatile at this path only
    run = {"dataset": "cifar10", "split": "worst", "seed": seed, "profile": "cnn", "fingerprint": config.fingerprint(),
           "code_hash": "aaaaaaaaaaaa", "config": config.to_dict(), "folds": 3, "threads": threads,
           "machine": {"arch": "x86_64", "cpu": cpu, "cores": 2}, "methods": methods}
    atomic_write_json(Path(folder) / name / "metrics.json", run)
    return Path(folder) / name / "metrics.json"


def _edit(path, change):
    run = json.loads(Path(path).read_text())
    change(run)
    Path(path).write_text(json.dumps(run))


@pytest.mark.parametrize("kind", ["fifo", "dev-zero-link", "folder", "oversized"])
def test_a_run_file_that_is_no_regular_file_is_named_by_every_reader(tmp_path, kind, capsys):
    """A real FIFO (reading it would wait forever), a real link to /dev/zero (reading it would fill the memory),
    a folder, a file over the size cap: each reader of a batch folder answers with one sentence naming it."""
    from bkd_core.batch import BatchFolder, open_run_file
    from bkd_core.book import chapter, results

    out = tmp_path / "out"
    _fake_run(out, "cifar10-worst-seed1", seed=1)  # a good run after it
    path = out / RUN / "metrics.json"
    path.parent.mkdir(parents=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero-link":
        path.symlink_to("/dev/zero")
    elif kind == "folder":
        path.mkdir()
    else:
        with open(path, "wb") as f:  # sparse: 65 MiB without writing them
            f.truncate(65 * 2**20)
    (out / "summary.json").write_text(json.dumps({"options": {}, "runs": [{"name": RUN, "status": "done"}]}))
    what = {"fifo": "a FIFO", "dev-zero-link": "a symbolic link", "folder": "a folder", "oversized": "bytes, more"}
    with pytest.raises(ValueError, match=f"{path}.*{what[kind]}"):
        open_run_file(path).close()
    for read in (lambda: results.collect_results(out), lambda: results.batch_problems(out),
                 lambda: results.run_times(out), lambda: results.code_versions(out),
                 lambda: chapter.batch_summary(out), lambda: BatchFolder(out).first_config()):
        with pytest.raises(ValueError, match=str(path)):
            read()
    for argv in (["results", str(out)], ["check", str(out), RUN]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert str(path) in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["summary.json", "code_checks.json", "cifar10-aggre-seed0/highlights.csv"])
def test_a_fifo_among_the_batch_files_is_refused_not_waited_on(tmp_path, name):
    from bkd_core.book import results

    out = tmp_path / "out"
    _fake_run(out, "cifar10-aggre-seed0")
    os.mkfifo(out / name)
    read = {"summary.json": results.read_batch_summary, "code_checks.json": results.read_code_checks,
            "cifar10-aggre-seed0/highlights.csv": lambda o: results.read_highlights(o / "cifar10-aggre-seed0")}[name]
    with pytest.raises(ValueError, match="a FIFO"):
        read(out)


def test_check_rerun_pairs_must_rerun_the_recorded_runs(tmp_path, capsys):
    """OUT made with epochs=3; NEW and OLD with epochs=2 by two code versions are not reruns of OUT's runs:
    refused with one sentence, exit 2, nothing recorded. With OUT's configuration and seed they are compared."""
    out, new, old = tmp_path / "out", tmp_path / "new", tmp_path / "old"
    _fake_run(out)
    for folder, code in ((new, "cccccccccccc"), (old, "bbbbbbbbbbbb")):
        _edit(_fake_run(folder, epochs=2), lambda run: run.update(code_hash=code))
    for argv in (["check", str(out), "--rerun", str(new), "--reference", str(old)],
                 ["check", str(out), "--rerun", str(new)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "is not a rerun of" in err and "configuration fingerprint" in err and len(err.splitlines()) == 1
    assert not (out / "code_checks.json").exists()
    _fake_run(new, seed=1)  # the seed of another run
    assert cli.main(["check", str(out), "--rerun", str(new)]) == 2
    assert "seed 1 instead of 0" in capsys.readouterr().err
    _fake_run(new)
    _fake_run(old)
    assert cli.main(["check", str(out), "--rerun", str(new), "--reference", str(old)]) == 0
    assert "1 of 1 identical" in capsys.readouterr().out


@pytest.mark.parametrize("reference", ["missing", "file", "empty"])
def test_check_refuses_a_reference_that_is_no_batch(tmp_path, reference, capsys):
    out, new = tmp_path / "out", tmp_path / "new"
    _fake_run(out)
    _fake_run(new)
    path = tmp_path / reference
    if reference == "file":
        path.write_text("{}")
    elif reference == "empty":
        path.mkdir()
    assert cli.main(["check", str(out), "--rerun", str(new), "--reference", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"--reference {path}" in err and len(err.strip().splitlines()) == 1
    assert not (out / "code_checks.json").exists()
    assert cli.main(["check", str(out), "--rerun", str(path)]) == 2  # the same for --rerun


def test_check_on_another_cpu_gives_the_tolerance_verdict_with_its_tolerances(tmp_path, capsys):
    """Float sums differ between CPU models: a rerun there that agrees within the stated tolerances is
    "reproduced within tolerance" (exit 1: not identical), one beyond them "differs", and the same CPU gives
    no tolerance at all."""
    from bkd_core.batch import DIFFERS, TOLERANCES, WITHIN_TOLERANCE, run_verdicts
    from bkd_core.book import results

    assert TOLERANCES["test_acc"] == 1.0 and TOLERANCES["estimated_noise_rate"] == 0.03
    assert TOLERANCES["detection_f1"] == 0.01 and TOLERANCES["ranking_auc"] == 0.01
    out, new = tmp_path / "out", tmp_path / "new"
    _fake_run(out)
    rerun = _fake_run(new, cpu="CPU model B")
    _edit(rerun, lambda run: run.update(code_hash="cccccccccccc"))
    _edit(rerun, lambda run: run["methods"]["bkd"].update(test_acc=60.6, detection_f1=0.505))
    assert cli.main(["check", str(out), "--rerun", str(new)]) == 1
    assert "0 of 1 identical, 1 reproduced within tolerance" in capsys.readouterr().out
    check = results.read_code_checks(out)[-1]
    assert check["verdict"] == WITHIN_TOLERANCE and check["tolerances"] == TOLERANCES
    assert run_verdicts(out, current="cccccccccccc") == {RUN: WITHIN_TOLERANCE}
    assert results.code_versions(out, current="cccccccccccc")["code"].tolist() == [results.CODE_TOLERANCE]
    _edit(rerun, lambda run: run["methods"]["bkd"].update(test_acc=61.5))  # 1.5 points: beyond 1.0
    assert cli.main(["check", str(out), "--rerun", str(new)]) == 1
    assert results.read_code_checks(out)[-1]["verdict"] == DIFFERS
    assert run_verdicts(out, current="cccccccccccc") == {RUN: ""}
    _edit(rerun, lambda run: run.update(machine={"cpu": "CPU model A"}, methods={
        **run["methods"], "bkd": {**run["methods"]["bkd"], "test_acc": 60.6}}))
    assert cli.main(["check", str(out), "--rerun", str(new)]) == 1  # same CPU: no tolerance
    assert results.read_code_checks(out)[-1]["verdict"] == DIFFERS


def test_compare_runs_compares_cleanlab_and_skips_only_the_volatile_paths(tmp_path):
    from bkd_core.batch import compare_runs

    a, b = tmp_path / "a", tmp_path / "b"
    _fake_run(a)
    path = _fake_run(b, cpu="elsewhere", threads=1)
    _edit(path, lambda run: (run["methods"]["cleanlab"].update(cleanlab="3.0", wall_time_s=9.0, device="x"),
                             run.update(code_hash="dddddddddddd", wall_time_s=99.0)))
    assert compare_runs(a / RUN, b / RUN)[1] == []  # versions, times, the machine: not results
    _edit(path, lambda run: run["methods"]["cleanlab"].update(detection_f1=0.51))
    assert compare_runs(a / RUN, b / RUN)[1] == ["metrics.json: methods.cleanlab.detection_f1: 0.5 != 0.51"]
    _edit(path, lambda run: run["methods"]["cleanlab"].update(detection_f1=0.5))
    _edit(path, lambda run: run["methods"]["bkd"].update(cleanlab="3.0"))  # "cleanlab" elsewhere is compared
    assert compare_runs(a / RUN, b / RUN)[1] == ["metrics.json: methods.bkd.cleanlab: None != '3.0'"]


def test_results_warns_on_an_edited_ranking_auc_of_any_method(tmp_path, capsys):
    from bkd_core.batch import BatchFolder, RunOutcome
    from bkd_core.book import results

    out = tmp_path / "out"
    path = _fake_run(out)
    for method in ("bkd", "cleanlab"):  # each method's own metrics.json, as its run wrote it
        own = {k: v for k, v in json.loads(path.read_text())["methods"][method].items() if k != "ranking_auc"}
        (out / RUN / method).mkdir()
        (out / RUN / method / "metrics.json").write_text(json.dumps(own))
    BatchFolder(out).write_summary([RunOutcome(RUN, "done", 1.0)], {}, ("done",))
    assert results.batch_problems(out) == []
    _edit(path, lambda run: run["methods"]["cleanlab"].update(ranking_auc=0.95))
    problems = results.batch_problems(out)
    assert len(problems) == 1 and "methods.cleanlab.ranking_auc is 0.95 but 0.8 in results.csv" in problems[0]
    assert cli.main(["results", str(out)]) == 0
    assert "ranking_auc" in capsys.readouterr().err


def test_check_takes_threads_from_structured_fields_bounded_by_the_cores(tmp_path):
    from bkd_core.batch import recorded_run

    out = tmp_path / "out"
    path = _fake_run(out, threads=64)
    _edit(path, lambda run: run["methods"]["bkd"].update(device="cpu (x86_64, 640 threads)"))
    assert recorded_run(out, RUN)["threads"] == min(64, os.cpu_count())
    _edit(path, lambda run: run.pop("threads"))  # an older run: the batch's threads option
    (out / "summary.json").write_text(json.dumps({"options": {"threads": 1}, "runs": []}))
    assert recorded_run(out, RUN)["threads"] == 1
    (out / "summary.json").write_text(json.dumps({"options": {"threads": "64 threads"}, "runs": []}))
    assert recorded_run(out, RUN)["threads"] == 1  # not a number: one thread


def test_check_of_a_run_without_methods_is_one_sentence(tmp_path, capsys):
    out = tmp_path / "out"
    _edit(_fake_run(out), lambda run: run.pop("methods"))
    assert cli.main(["check", str(out), RUN]) == 2
    err = capsys.readouterr().err
    assert "lacks methods" in err and "metrics.json" in err and len(err.strip().splitlines()) == 1


def test_a_bad_scores_npz_is_named(tmp_path, capsys):
    out, new = tmp_path / "out", tmp_path / "new"
    for folder in (out, new):
        _fake_run(folder)
        (folder / RUN / "bkd").mkdir()
        (folder / RUN / "bkd" / "scores.npz").write_bytes(b"not an npz")
    assert cli.main(["check", str(out), "--rerun", str(new)]) == 2
    err = capsys.readouterr().err
    assert str(out / RUN / "bkd" / "scores.npz") in err and len(err.strip().splitlines()) == 1


def test_code_version_text_names_the_runs_reproduced_within_tolerance():
    from bkd_core.book import results

    rows = [{"run": "r0", "code_hash": "0123456789ab", "code": results.CODE_TOLERANCE},
            {"run": "r1", "code_hash": "0123456789ab", "code": results.CODE_OTHER}]
    text = results.code_version_text(pd.DataFrame(rows), current="ba9876543210")
    assert "2 of 2 by other code" in text and "1 (r0) were reproduced by the current code within tolerance" in text
    assert "test accuracy within 1 point, noise estimate within 3 points" in text and "bit for bit" in text


def test_a_batch_reads_a_runs_committed_curves_and_tipping_scores_safely(tmp_path):
    """What the trainer writes beside a method's metrics is read back through the batch folder, through the safe
    reader (a link to /dev/zero is refused), and a run without the files reads as None."""
    from bkd_core.batch import BatchFolder
    from bkd_core.errors import DamagedFileError
    from bkd_core.io import atomic_save_npz, atomic_write_json

    run = tmp_path / "cifar10-worst-seed0" / "bkd"
    run.mkdir(parents=True)
    folder = BatchFolder(tmp_path)
    assert folder.method_curves("cifar10-worst-seed0", "bkd") is None
    assert folder.method_tipping_scores("cifar10-worst-seed0") is None
    atomic_write_json(run / "curves.json", {"epoch": [1.0, 2.0], "mean_max_student": [0.2, 0.3]})
    truth = np.array([True, False, False, True, True])
    atomic_save_npz(run / "tipping_scores.npz", agreement=np.linspace(0, 1, 5).astype(np.float16),
                    is_noisy=np.packbits(truth), num_samples=np.int64(5))
    curves = folder.method_curves("cifar10-worst-seed0", "bkd")
    assert curves["mean_max_student"].dtype == np.float64
    np.testing.assert_array_equal(curves["mean_max_student"], [0.2, 0.3])
    scores, is_noisy = folder.method_tipping_scores("cifar10-worst-seed0")
    np.testing.assert_array_equal(is_noisy, truth)
    np.testing.assert_allclose(scores, np.linspace(0, 1, 5), atol=1e-3)
    (run / "curves.json").unlink()
    (run / "curves.json").symlink_to("/dev/zero")
    with pytest.raises(DamagedFileError, match="curves.json"):
        folder.method_curves("cifar10-worst-seed0", "bkd")


def test_a_runs_curves_read_as_float_arrays_with_nan_for_an_epoch_without_a_value(tmp_path):
    from bkd_core.batch import BatchFolder
    from bkd_core.io import atomic_write_json

    atomic_write_json(tmp_path / "cifar10-worst-seed0" / "ce" / "curves.json",
                      {"epoch": [1, 2, 3], "test_acc": [61, None, 62.5], "phase": [1.0, 1.0, 1.0]})
    curves = BatchFolder(tmp_path).method_curves("cifar10-worst-seed0", "ce")
    assert sorted(curves) == ["epoch", "phase", "test_acc"]
    assert all(c.dtype == np.float64 and c.shape == (3,) for c in curves.values())
    np.testing.assert_array_equal(curves["epoch"], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(curves["test_acc"], [61.0, np.nan, 62.5])


#: A damaged curves.json -> what its one sentence says is wrong.
DAMAGED_CURVES = {
    "not a dict": ([1.0, 2.0], "holds a list, not a dict of per-epoch curves"),
    "a curve that is not a list": ({"epoch": [1.0, 2.0], "test_acc": "61.0"}, "test_acc holds a str, not a list"),
    "a list of strings": ({"epoch": [1.0, 2.0], "test_acc": ["61.0", "62.0"]}, "test_acc holds '61.0' at epoch 1"),
    "unequal lengths": ({"epoch": [1.0, 2.0], "test_acc": [61.0]}, "test_acc is not a list of 2 values"),
    "a boolean": ({"epoch": [1.0, 2.0], "test_acc": [61.0, True]}, "test_acc holds True at epoch 2"),
    "NaN as text": ({"epoch": [1.0, 2.0], "val_acc": [40.0, "NaN"]}, "val_acc holds 'NaN' at epoch 2"),
    "NaN as a number": ({"epoch": [1.0, 2.0], "val_acc": [40.0, float("nan")]}, "val_acc holds nan at epoch 2"),
    "no epoch": ({"test_acc": [61.0]}, "lacks the curves epoch"),
    "epochs that do not count from 1": ({"epoch": [0.0, 1.0]}, "epoch is not 1, 2, ..."),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_CURVES))
def test_a_damaged_curves_file_is_one_sentence_naming_it(tmp_path, case):
    from bkd_core.batch import BatchFolder
    from bkd_core.errors import DamagedFileError
    from bkd_core.io import atomic_write_json

    raw, expected = DAMAGED_CURVES[case]
    path = tmp_path / "cifar10-worst-seed0" / "bkd" / "curves.json"
    atomic_write_json(path, raw)
    with pytest.raises(DamagedFileError) as info:
        BatchFolder(tmp_path).method_curves("cifar10-worst-seed0", "bkd")
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message, message
    assert "\n" not in message and "rerun the batch" in message


def test_the_committed_curves_read_as_their_json_says():
    """Each curve of the committed batches' curves.json is its JSON list, null as NaN, read by one checked reader."""
    from bkd_core.batch import BatchFolder

    root = Path(__file__).resolve().parents[1] / "reproductions"
    files = sorted(root.glob("*/*/*/curves.json"))
    assert files, "the committed cnn batch holds curves"
    for path in files:
        run_dir = path.parent.parent
        curves = BatchFolder(run_dir.parent).method_curves(run_dir.name, path.parent.name)
        raw = json.loads(path.read_text())
        assert list(curves) == list(raw) and "epoch" in curves
        assert ("phase" in curves) == (path.parent.name == "bkd")  # only BKD has two phases
        for key, values in raw.items():
            expected = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            np.testing.assert_array_equal(curves[key], expected, err_msg=f"{path}: {key}")
