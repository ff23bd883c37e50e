"""The book's view of the ``paper`` setting (``reproductions/paper``, filled by a GPU session): one plain sentence
when there is no run, otherwise what the runs are (device, phase 1 only, not bit-reproducible) and the
arguments of the chapters' figures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bkd_core import book


def _write_run(folder, split, *, device="cuda (NVIDIA H200)", with_ce=False):
    run = {"dataset": "cifar10", "split": split, "seed": 0, "profile": "paper",
           "config": {"stop_after_detection": True, "deterministic": False},
           "methods": {"bkd": {"device": device, "tipping_epoch": 3, "tipping_found_at_epoch": 5,
                               "tipping_rule": "peak", "threshold": 0.41}},
           "curves": {"bkd": {"mean_max_student": [0.2, 0.4, 0.5, 0.6, 0.58, 0.57]}},
           "agreement_histogram": {"epoch": 3, "edges": list(np.linspace(0, 1, 6)), "clean": [1, 2, 3, 4, 5],
                                   "noisy": [5, 4, 3, 2, 1]}}
    if with_ce:
        run["methods"]["ce"] = {"device": device}
        run["curves"]["ce"] = {"memorized_noisy": [0.05, 0.06, 0.1, 0.3, 0.5, 0.6],
                               "test_acc": [30.0, None, 50.0, 55.0, 52.0, 50.0]}
    (folder / f"cifar10-{split}-seed0").mkdir(parents=True)
    (folder / f"cifar10-{split}-seed0" / "metrics.json").write_text(json.dumps(run))
    (folder / "summary.json").write_text(json.dumps({"options": {"profile": "paper"}, "runs": []}))


def test_no_paper_runs_gives_one_plain_sentence(tmp_path):
    assert book.paper_runs(tmp_path / "absent") == {}
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "summary.json").write_text("{}")
    assert book.paper_runs(tmp_path / "empty") == {}
    run, note = book.paper_run("worst", results_dir=tmp_path / "absent")
    assert run is None and note == book.paper_setting_note({})
    assert note.startswith("No run of the `paper` setting") and note.count(". ") == 0 and "GPU" in note


def test_paper_runs_say_what_they_are(tmp_path):
    _write_run(tmp_path, "worst", with_ce=True)
    _write_run(tmp_path, "aggre")
    runs = book.paper_runs(tmp_path)
    assert set(runs) == {"worst", "aggre"}
    note = book.paper_setting_note(runs)
    for part in ("NVIDIA H200", "2 split(s) (aggre, worst)", "seed 0", "phase 1 only", "not bit for bit"):
        assert part in note, (part, note)
    run, note = book.paper_run("worst", results_dir=tmp_path)
    assert run["split"] == "worst" and "1 split(s) (worst)" in note
    missing, why = book.paper_run("rand1", results_dir=tmp_path)
    assert missing is None and "none on rand1" in why and "aggre, worst" in why
    assert book.paper_run("noisy100", dataset="cifar100", results_dir=tmp_path)[0] is None


def test_paper_figures_take_the_stored_curves(tmp_path):
    pytest.importorskip("matplotlib")
    from bkd_core.book import plots

    _write_run(tmp_path, "worst", with_ce=True)
    _write_run(tmp_path, "aggre")
    with_ce = book.paper_tipping_args(book.paper_runs(tmp_path)["worst"])
    assert with_ce["tipping"] == 3 and with_ce["found_at"] == 5 and with_ce["rule"] == "peak"
    assert np.isnan(with_ce["ce_test_acc"][1]) and with_ce["ce_peak"] == 3
    assert with_ce["onset"] == 3 and with_ce["ce_noisy_memorized"][-1] == pytest.approx(60.0)
    plots.plot_tipping(**with_ce)
    alone = book.paper_tipping_args(book.paper_runs(tmp_path)["aggre"])
    assert "ce_noisy_memorized" not in alone
    plots.plot_tipping(**alone)
    histogram = book.paper_runs(tmp_path)["worst"]["agreement_histogram"]
    fig = plots.plot_histogram_counts(histogram["edges"], histogram["clean"], histogram["noisy"], 0.41)
    bars = [p.get_height() for p in fig.axes[0].patches if p.get_width() > 0.1]
    assert bars[:5] == [1, 2, 3, 4, 5] and bars[5:10] == [5, 4, 3, 2, 1]
