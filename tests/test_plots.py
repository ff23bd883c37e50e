"""The chapters' analysis (bkd_core.book.analysis), helpers (bkd_core.book) and figures (bkd_core.book.plots) on
small made-up arrays.

Every figure function must return a Figure with labelled axes, a legend where there is more than
one series, and cope with the cases a run can produce (no tipping point, NaN epochs).
"""

from __future__ import annotations

import pytest

matplotlib = pytest.importorskip("matplotlib")  # a book package: absent on a training-only machine
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bkd_core import book  # noqa: E402
from bkd_core.book import analysis, plots  # noqa: E402
from bkd_core import data as D  # noqa: E402
from bkd_core.config import CNN, FEATURES  # noqa: E402
from bkd_core.method import otsu_split  # noqa: E402

RNG = np.random.default_rng(0)
E, N = 8, 120
IS_NOISY = RNG.random(N) < 0.4


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _labelled(fig):
    """Every axes with data has x and y labels (or is an image / diagram without axis)."""
    for ax in fig.axes:
        if not ax.axison or not (ax.lines or ax.patches or ax.collections):
            continue
        shared_y = ax.get_shared_y_axes().get_siblings(ax)
        assert any(a.get_ylabel() for a in shared_y), ax.get_title()
        shared_x = ax.get_shared_x_axes().get_siblings(ax)
        assert any(a.get_xlabel() for a in shared_x), ax.get_title()


def _has_legend(fig):
    return bool(fig.legends) or any(ax.get_legend() for ax in fig.axes)


def _per_sample(low, high):
    """[E, N] float16 probabilities rising from low to high (noisy rows rise later)."""
    t = np.linspace(0, 1, E)[:, None]
    base = np.where(IS_NOISY[None, :], low + (high - low) * t**3, low + (high - low) * np.sqrt(t))
    return np.clip(base + RNG.normal(0, 0.02, (E, N)), 0, 1).astype(np.float16)


# ----------------------------------------------------------------------------------------------
# book helpers
# ----------------------------------------------------------------------------------------------


def test_chapter_config_reads_the_profile():
    assert book.chapter_config() == FEATURES  # the book's default profile, seed 0
    cfg = book.chapter_config("cnn", seed=3)
    assert cfg.epochs == CNN.epochs and cfg.train_size == CNN.train_size and cfg.seed == 3
    cfg = book.chapter_config("cnn", epochs=5, train_size=100, overrides={"model_widths": [8, 8, 8]})
    assert cfg.epochs == 5 and cfg.train_size == 100 and cfg.model_widths == (8, 8, 8)
    same = book.chapter_config("cnn", epochs=5, train_size=100, device="cpu", overrides={"model_widths": [8, 8, 8]})
    assert cfg.fingerprint() == same.fingerprint()  # the device does not change the cached run
    table = book.config_table(cfg)
    assert list(table.columns) == ["this run (cnn)", "paper"]
    assert table.loc["model_widths", "paper"] == "(fixed)" and table.loc["model_widths", "this run (cnn)"] != "(fixed)"
    with pytest.raises(ValueError):
        book.chapter_config("cnn", overrides={"no_such_field": 1})


def test_load_data_synthetic():
    data = book.load_data("synthetic")
    assert len(data) == 2000 and data.num_classes == 10 and 0.3 < data.noise_rate < 0.5


def test_memorization_onset_and_peak():
    assert analysis.memorization_onset([0.2, 0.15, 0.2, 0.24, 0.26, 0.5]) == 4
    assert analysis.memorization_onset([0.2, 0.21, 0.22]) is None
    # a clear peak stands out by more than the curve's wobble; a blip on a rising curve does not
    margin, step = analysis.peak_prominence([0.1, 0.2, 0.3, 0.6, 0.3, 0.2, 0.1], 3, window=2)
    assert margin == pytest.approx(0.3) and step == pytest.approx(0.1)
    margin, step = analysis.peak_prominence([0.30, 0.32, 0.34, 0.36, 0.365, 0.362, 0.364, 0.37], 4, window=2)
    assert margin == pytest.approx(0.001) and step == pytest.approx(0.0125)
    with pytest.raises(ValueError, match="index"):
        analysis.peak_prominence([0.1, 0.2], 5)
    assert analysis.memorization_onset([np.nan, 0.1, 0.3]) == 2
    assert analysis.peak_epoch([1.0, np.nan, 3.0, 2.0]) == 2
    assert analysis.peak_epoch([np.nan, np.nan]) is None
    assert analysis.epoch_number(0) == 1 and analysis.epoch_number(None) is None


def test_loss_spikes_are_single_epochs_far_above_the_phase_median():
    # phase 2 from index 6: its first epoch a little higher, index 26 one bad stretch of steps
    loss = [2.0, 1.5, 1.2, 1.0, 0.9, 0.8] + [0.8, 0.6, 0.62, 0.6] * 5 + [3.1, 0.8, 0.7, 0.65, 0.6]
    assert analysis.loss_spikes(loss, start=6) == [26]
    assert analysis.loss_spikes(loss) == [0, 1, 26]  # phase 1's first epochs are high too: pass the phase's start
    assert analysis.loss_spikes(loss, start=6, factor=6.0) == []
    assert analysis.loss_spikes([np.nan, np.nan]) == [] and analysis.loss_spikes([0.5, np.nan, 0.5, 1.2]) == [3]


def test_clean_noisy_means():
    values = np.array([[1.0, 0.0, 1.0], [0.5, 0.5, 0.0]])
    clean, noisy = analysis.clean_noisy_means(values, np.array([False, True, False]))
    np.testing.assert_allclose(clean, [1.0, 0.25])
    np.testing.assert_allclose(noisy, [0.0, 0.5])


def test_window_sensitivity():
    curve = [0.1, 0.2, 0.3, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    tips = analysis.tipping_by_window(curve, (1, 2, 3, 4))
    assert tips == {1: 3, 2: 3, 3: 3, 4: None}
    table = analysis.window_sensitivity(curve, (1, 2, 3, 4))
    assert list(table["tipping epoch"].astype(object).fillna(0)) == [4, 4, 4, 0]
    assert table["detected at epoch"].iloc[1] == 6  # found window epochs after the peak, counted from 1


def test_scores_at_tipping_and_tables():
    scores = np.clip(np.where(IS_NOISY, RNG.normal(0.2, 0.1, N), RNG.normal(0.7, 0.1, N)), 0, 1)
    history = np.vstack([scores, scores * 0.9, np.full(N, np.nan)])

    class Run:
        metrics = {"tipping_epoch": 1, "tipping_found_at_epoch": 2, "epochs": 3}

    # the scores the run saved are returned, not a row of the history (in a real run they are equal; here
    # they differ, so re-deriving them from the history would fail)
    Run.label_quality = (scores * 0.8).astype(np.float32)
    Run.history = {"eval_agreement": history}
    got, epoch, found = analysis.scores_at_tipping(Run)
    assert epoch == 1 and found and got.dtype == np.float64
    np.testing.assert_array_equal(got, Run.label_quality)
    Run.metrics = {"tipping_epoch": None, "tipping_found_at_epoch": None, "epochs": 3}
    got, epoch, found = analysis.scores_at_tipping(Run)
    assert epoch == 1 and not found  # the last epoch that has scores
    np.testing.assert_array_equal(got, Run.label_quality)
    assert analysis.phase1_epochs(Run) == 3

    comparison = analysis.otsu_comparison(scores, IS_NOISY, bins=100)
    assert list(comparison.columns) == ["bkd", "classic"]
    assert comparison.loc["F1 of flagging G3+G4 (below threshold)", "bkd"] > 0.8
    groups = np.array([1, 2, 3, 4] * (N // 4))
    table = analysis.group_table(groups, IS_NOISY)
    assert list(table.index) == ["G1", "G2", "G3", "G4"] and table["samples"].sum() == N
    detection = analysis.detection_table({"G4": groups == 4}, IS_NOISY)
    assert detection.loc["everything (baseline)", "recall"] == 1.0
    html = book.table(detection, "{:.3f}").to_html()
    assert 'class="dataframe"' in html


def test_noise_rate_table_from_label_files(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "CIFAR_TRAIN_SIZE", 100)
    rng = np.random.default_rng(1)
    clean = rng.integers(0, 10, 100)
    labels = {"clean_label": clean}
    for key, rate in (("aggre_label", 0.1), ("random_label1", 0.2), ("random_label2", 0.2), ("random_label3", 0.2),
                      ("worse_label", 0.4)):
        noisy = clean.copy()
        noisy[: int(rate * 100)] = (noisy[: int(rate * 100)] + 1) % 10
        labels[key] = noisy
    torch.save(labels, tmp_path / "CIFAR-10_human.pt")
    table = analysis.noise_rate_table(tmp_path)
    rates = dict(zip(table["split"], table["noise rate"]))
    assert rates == {"clean": 0.0, "aggre": 0.1, "rand1": 0.2, "rand2": 0.2, "rand3": 0.2, "worst": 0.4}
    assert set(table["dataset"]) == {"CIFAR-10N"}  # no CIFAR-100 file: its rows are left out
    with pytest.raises(FileNotFoundError):
        analysis.noise_rate_table(tmp_path / "empty")


def test_transition_matrix_and_examples():
    data = book.load_data("synthetic")
    matrix = analysis.transition_matrix(data.clean_labels, data.train_labels, 10)
    np.testing.assert_allclose(matrix.sum(1), 1.0)
    assert abs((1 - np.diag(matrix)).mean() - data.noise_rate) < 0.05
    rows = analysis.example_rows(data, n=12, noisy_fraction=0.5)
    assert len(set(rows)) == 12 and data.is_noisy[rows].sum() == 6


# ----------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------


def test_data_figures():
    data = book.load_data("synthetic")
    rows = analysis.example_rows(data, n=8)
    fig = plots.show_examples(data.train_images[rows], data.clean_labels[rows], data.train_labels[rows],
                              [f"c{i}" for i in range(10)], ncols=4)
    assert len([ax for ax in fig.axes if ax.images]) == 8
    # the gallery: one titled image per row given, a frame exactly on the mislabelled ones
    given, clean, predicted = np.array([1, 2, 3]), np.array([1, 0, 3]), np.array([1, 0, 0])
    fig = plots.show_label_issues(data.train_images[:3], given, clean, predicted, [f"c{i}" for i in range(10)],
                                  notes=["a", "b", "c"], ncols=2, title="suspects")
    assert fig._suptitle.get_text() == "suspects"
    shown = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in shown] == ["given: c1\nclean: c1\nBKD: c1\na", "given: c2\nclean: c0\nBKD: c0\nb",
                                                "given: c3\nclean: c3\nBKD: c0\nc"]
    assert [len(ax.patches) for ax in shown] == [0, 1, 0]
    import pandas as pd

    table = pd.DataFrame({"dataset": ["CIFAR-10N"] * 2, "split": ["clean", "worst"], "noise rate": [0.0, 0.4]})
    _labelled(plots.plot_noise_rates(table))
    fig = plots.plot_transition_matrix(np.eye(3), ["a", "b", "c"])
    assert fig.axes[0].get_xlabel() == "human label"


@pytest.mark.parametrize("onset", [None, 3])
def test_memorization_figure(onset):
    test_acc = np.linspace(20, 40, E)
    test_acc[2] = np.nan
    fig = plots.plot_memorization(_per_sample(0.1, 1.0), (_per_sample(0, 1) > 0.5).astype(np.float16), IS_NOISY,
                                  test_acc, onset=onset, peak=int(np.nanargmax(test_acc)))
    _labelled(fig)
    assert _has_legend(fig) and len(fig.axes) == 3


def test_bkd_figures():
    _labelled(plots.draw_bkd_diagram())
    for found_at in (None, 4):
        fig = plots.plot_teacher_student(_per_sample(0.1, 1.0), _per_sample(0.1, 0.6), IS_NOISY, found_at=found_at)
        _labelled(fig)
        assert _has_legend(fig)
    fig = plots.plot_teacher_student_scatter(_per_sample(0.1, 1)[5], _per_sample(0.1, 0.6)[5], IS_NOISY, 5)
    _labelled(fig)


@pytest.mark.parametrize("tipping,found_at", [(None, None), (3, 5)])
def test_tipping_figures(tipping, found_at):
    curve = np.array([0.2, 0.25, 0.3, 0.35, 0.33, 0.32, 0.5, 0.6])
    fig = plots.plot_tipping(curve, tipping, found_at, np.linspace(10, 90, E), np.linspace(30, 20, E), 2, 1)
    _labelled(fig)
    assert _has_legend(fig)
    _labelled(plots.plot_tipping(curve, tipping, found_at))
    fig = plots.plot_window_sensitivity(curve, analysis.tipping_by_window(curve))
    _labelled(fig)
    assert _has_legend(fig)


def test_tipping_figure_says_when_the_fallback_set_the_tipping_point():
    curve = np.array([0.2, 0.25, 0.3, 0.31, 0.31, 0.31, 0.31])
    labels = lambda fig: " ".join(t.get_text() for legend in fig.legends for t in legend.get_texts())  # noqa: E731
    assert "fallback" in labels(plots.plot_tipping(curve, 3, 5, rule="fallback"))
    assert "fallback" not in labels(plots.plot_tipping(curve, 3, 5, rule="peak"))


def test_otsu_figures():
    scores = np.clip(np.where(IS_NOISY, RNG.normal(0.2, 0.1, N), RNG.normal(0.7, 0.1, N)), 0, 1)
    splits = {"official": otsu_split(scores), "classic": otsu_split(scores, criterion="classic")}
    fig = plots.plot_score_histogram(scores, IS_NOISY, splits, groups_of="official")
    _labelled(fig)
    assert _has_legend(fig)
    from bkd_core.method import assign_groups

    _labelled(plots.plot_groups(assign_groups(scores, splits["official"]).numpy(), IS_NOISY))
    fig = plots.plot_precision_recall(scores, IS_NOISY, {"G4": (0.5, 0.9)})
    _labelled(fig)
    assert _has_legend(fig)


def test_teacher_student_scatter_samples_a_large_set():
    rng = np.random.default_rng(1)
    n = 10_000
    noisy = rng.random(n) < 0.4
    fig = plots.plot_teacher_student_scatter(rng.random(n), rng.random(n), noisy, 3, max_points=1000)
    counts = [len(c.get_offsets()) for ax in fig.axes for c in ax.collections]
    assert counts == [1000, 1000]
    assert f"of {int((~noisy).sum()):,}" in fig.axes[0].get_title() and "a sample" in fig._suptitle.get_text()
    plt.close(fig)
    fig = plots.plot_teacher_student_scatter(rng.random(50), rng.random(50), noisy[:50], 3, max_points=1000)
    assert sum(len(c.get_offsets()) for ax in fig.axes for c in ax.collections) == 50  # small sets: every point
    assert "sample" not in fig._suptitle.get_text()
    plt.close(fig)


def test_training_figures():
    student = torch.full((10,), 0.05)
    student[3], student[5] = 0.4, 0.2
    targets = {"G1": np.eye(10)[5], "G4": np.full(10, 0.1)}
    fig = plots.plot_robust_targets(5, student, targets, [str(i) for i in range(10)])
    assert len(fig.axes) == 3
    fig = plots.plot_test_accuracy({"BKD": np.linspace(20, 40, E), "CE": np.full(E, np.nan)}, tipping=3, found_at=5)
    _labelled(fig)
    assert _has_legend(fig)


F1_OF = {"bkd": 0.6, "ce": 0.4, "cleanlab": 0.5, "knn": 0.55}


def _results_table(seeds=(0, 1, 2), methods=("bkd", "ce", "cleanlab")):
    """A results.collect_results-like table: two noisy splits and the clean control, three methods (the
    cpu batch) or four (``methods`` with kNN: the features batch)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for split, rate in (("clean", 0.0), ("aggre", 0.09), ("worst", 0.40)):
        for seed in seeds:
            for method in methods:
                f1 = F1_OF[method]
                rows.append({"dataset": "cifar10", "split": split, "seed": seed, "method": method,
                             "true_noise_rate": rate, "detection_f1": np.nan if rate == 0 else f1 + rng.normal(0, 0.02),
                             "below_threshold_f1": np.nan if rate == 0 else f1 - 0.05 if method == "bkd" else np.nan,
                             "flag_all_f1": 2 * rate / (1 + rate) if rate else np.nan,
                             "estimated_noise_rate": np.nan if method == "ce" else rate + 0.1 + rng.normal(0, 0.02),
                             "test_acc": 50 + 5 * (method == "bkd") + rng.normal(0, 1)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("methods", [("bkd", "ce", "cleanlab"), ("bkd", "ce", "cleanlab", "knn")])
@pytest.mark.parametrize("seeds", [(0, 1, 2), (0,)])
def test_results_bars_over_seeds(seeds, methods):
    table = _results_table(seeds, methods)
    detectors = [d for d in plots.DETECTORS if d[1] in methods]  # no kNN bar for a batch without kNN runs
    assert len(detectors) == len(plots.DETECTORS) - ("knn" not in methods)
    for draw, n_series in ((plots.plot_detection_by_split, len(detectors)), (plots.plot_accuracy_by_split, 2)):
        fig = draw(table)
        _labelled(fig)
        assert _has_legend(fig)
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["clean", "aggre", "worst"]
        bars = [p for p in ax.patches if p.get_width() > 0]
        assert bars and max(p.get_height() for p in bars) <= 100
        spans = [np.nanmax(y) - np.nanmin(y) for y in (np.asarray(line.get_ydata(), float) for line in ax.lines)
                 if np.isfinite(y).any()]
        error_bars = [span for span in spans if span > 0]
        assert bool(error_bars) == (len(seeds) > 1)  # standard deviation over seeds, none for one seed
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert len([x for x in legend if "floor" not in x]) == n_series
        said = [t for t in ax.texts if t.get_text().startswith("no wrong label")]  # clean: no F1, said so
        assert len(said) == (draw is plots.plot_detection_by_split) and (not said or said[0].get_position()[0] == 0)
        plt.close(fig)
    # the bar heights are the means over seeds
    fig = plots.plot_accuracy_by_split(table)
    heights = sorted(round(p.get_height(), 6) for p in fig.axes[0].patches if p.get_width() > 0)
    means = table.groupby(["split", "method"])["test_acc"].mean()
    expected = sorted(round(v, 6) for (s, m), v in means.items() if m in ("bkd", "ce"))
    assert heights == pytest.approx(expected)
    plt.close(fig)


@pytest.mark.parametrize("methods", [("bkd", "ce", "cleanlab"), ("bkd", "ce", "cleanlab", "knn")])
def test_f1_heatmap(methods):
    table = _results_table(methods=methods)
    fig = plots.plot_f1_heatmap(table)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["aggre", "worst"]  # the clean control has no F1
    assert [t.get_text() for t in ax.get_yticklabels()] == [d[0] for d in plots.DETECTORS
                                                            if d[1] in methods] + ["flag everything"]
    annotations = [t.get_text() for t in ax.texts]
    mean_bkd_worst = 100 * table[(table.split == "worst") & (table.method == "bkd")]["detection_f1"].mean()
    assert f"{mean_bkd_worst:.1f}" in annotations
    assert ax.get_xlabel() and ax.get_title() and len(fig.axes) == 2  # with a colour bar
    plt.close(fig)


@pytest.mark.parametrize("methods", [("bkd", "ce", "cleanlab"), ("bkd", "ce", "cleanlab", "knn")])
def test_noise_estimates_one_point_per_run_and_detector(methods):
    table = _results_table(methods=methods)
    fig = plots.plot_noise_estimates(table)
    _labelled(fig)
    ax = fig.axes[0]
    points = [c for c in ax.collections if len(c.get_offsets())]
    estimators = [m for m in methods if m != "ce"]  # CE estimates no noise rate
    assert len(points) == len(estimators)
    assert all(len(c.get_offsets()) == 9 for c in points)  # 3 splits x 3 seeds
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("kNN" in x for x in legend) == ("knn" in methods)
    labels = sorted(ax.texts, key=lambda t: t.xyann[1])
    assert [t.get_text() for t in labels] == ["clean", "aggre", "worst"]  # one label per split, at its mean
    heights = [t.xyann[1] for t in labels]
    assert min(np.diff(heights)) >= 0.045 * 50 - 1e-9  # moved apart: no two labels overprint
    plt.close(fig)


def test_score_histogram_is_stacked_clean_below_noisy():
    from bkd_core.method import otsu_split

    scores = RNG.random(400)
    noisy = RNG.random(400) < 0.4
    fig = plots.plot_score_histogram(scores, noisy, {"official": otsu_split(scores)}, bins=10)
    ax = fig.axes[0]
    bars = [p for p in ax.patches if p.get_width() > 0 and p.get_height() > 0 and p.get_y() < 1e9]
    counts = {matplotlib.colors.to_hex(p.get_facecolor()): 0 for p in bars}
    for p in bars:
        counts[matplotlib.colors.to_hex(p.get_facecolor())] += p.get_height()
    assert counts[plots.CLEAN.lower()] == pytest.approx((~noisy).sum()) \
        and counts[plots.NOISY.lower()] == pytest.approx(noisy.sum())
    bottoms = [p.get_y() for p in bars if matplotlib.colors.to_hex(p.get_facecolor()) == plots.CLEAN.lower()]
    assert max(bottoms) == 0  # clean images at the bottom of each stack
    assert _has_legend(fig)
    plt.close(fig)


def test_estimate_error_vs_accuracy_answers_its_question_per_split():
    """Signed errors (too high above 0) against accuracy; each split's mean per batch, joined from one batch to the
    next on the same split; an empty batch and CE rows are left out."""
    pd = pytest.importorskip("pandas")
    run = {"method": "bkd", "split": "worst", "true_noise_rate": 0.4, "estimated_noise_rate": 0.46, "test_acc": 70.0}
    proxy = pd.DataFrame([run, {**run, "estimated_noise_rate": 0.44, "test_acc": 72.0},
                          {**run, "split": "aggre", "true_noise_rate": 0.1, "estimated_noise_rate": 0.2},
                          {**run, "method": "ce", "estimated_noise_rate": None}])
    pixels = pd.DataFrame([{**run, "estimated_noise_rate": 0.30, "test_acc": 80.0}])
    empty = pd.DataFrame(columns=list(run))
    fig = plots.plot_estimate_error_vs_accuracy({"proxy": proxy, "paper": empty, "pixels": pixels}, tolerance=5,
                                                colours={"pixels": plots.NOISY})
    ax = fig.axes[0]
    runs, means, pixel_runs, pixel_means = ax.collections  # the empty batch draws nothing
    np.testing.assert_allclose(runs.get_offsets(), [[70.0, 6.0], [72.0, 4.0], [70.0, 10.0]], atol=1e-9)
    np.testing.assert_allclose(means.get_offsets(), [[70.0, 10.0], [71.0, 5.0]], atol=1e-9)  # aggre, worst
    np.testing.assert_allclose(pixel_means.get_offsets(), [[80.0, -10.0]], atol=1e-9)  # too low: below 0
    assert matplotlib.colors.to_hex(pixel_means.get_facecolor()[0]) == plots.NOISY.lower()
    arrows = [t for t in ax.texts if t.arrow_patch is not None and not t.get_text()]
    assert len(arrows) == 1 and arrows[0].xy == pytest.approx((80.0, -10.0))  # worst, the split both batches ran
    assert "Does a more accurate network estimate the noise better?" == ax.get_title()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "within 5 points", "proxy: 3 runs (small), split means (large)", "pixels: 1 runs (small), split means (large)"]
    plt.close(fig)


def test_detection_by_batch_marks_what_is_not_here_yet():
    pd = pytest.importorskip("pandas")
    row = {"method": "bkd", "true_noise_rate": 0.4, "flag_all_f1": 0.57}
    seeds = pd.DataFrame([{**row, "split": s, "seed": k, "detection_f1": f} for s, fs in
                          (("aggre", (0.50, 0.52, 0.54)), ("worst", (0.66, 0.68, 0.70))) for k, f in enumerate(fs)])
    one = pd.DataFrame([{**row, "split": "worst", "seed": 0, "detection_f1": 0.767},
                        {**row, "method": "ce", "split": "aggre", "seed": 0, "detection_f1": 0.1}])
    fig = plots.plot_detection_by_batch({"one seed": one, "seeds": seeds})
    ax = fig.axes[0]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches if p.get_height() > 0)
    assert heights == [52.0, 68.0, 76.7]  # BKD only: the CE row of aggre is no bar
    assert [t.get_text() for t in ax.texts] == ["not here yet"]  # the one-seed batch on aggre
    assert [t.get_text() for t in ax.get_xticklabels()] == ["aggre", "worst"]
    assert _has_legend(fig)
    plt.close(fig)


def test_label_splits_moves_close_labels_apart():
    fig, ax = plt.subplots()
    true = [17.2, 17.2, 18.1, 18.1, 17.6, 17.6]
    est = [30.2, 30.3, 30.9, 31.0, 30.5, 30.6]  # three splits within one point: their labels would overprint
    plots._label_splits(ax, true, est, ["rand1", "rand1", "rand2", "rand2", "rand3", "rand3"])
    ys = sorted(t.xyann[1] for t in ax.texts)
    assert len(ys) == 3 and min(np.diff(ys)) >= 0.045 * 50 - 1e-9
    plt.close(fig)


def test_precision_recall_markers_that_coincide_stay_visible():
    scores, noisy = RNG.random(300), RNG.random(300) < 0.3
    fig = plots.plot_precision_recall(scores, noisy, {"G4": (0.5, 0.6), "G3 + G4": (0.5, 0.6), "classic": (0.7, 0.4)})
    markers = [line for line in fig.axes[0].lines if line.get_marker() not in (None, "None", "")]
    sizes = [line.get_markersize() for line in markers]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 3  # each drawn smaller over the one before
    assert all(line.get_markerfacecolor() == "none" for line in markers)  # open: the one below shows through
    plt.close(fig)


def test_seen_vs_held_out_and_its_figure():
    is_noisy = np.array([1, 1, 0, 0, 1, 0, 1, 0], dtype=bool)
    mask = np.array([1, 0, 1, 0, 1, 0, 1, 0], dtype=bool)
    table = analysis.seen_vs_held_out(mask, is_noisy, train_rows=np.arange(4), val_rows=np.arange(4, 8))
    assert list(table.index) == ["trained on", "held out"]
    assert table.loc["trained on", "precision"] == pytest.approx(0.5) and table.loc["trained on", "recall"] == 0.5
    assert table.loc["held out", "F1"] == pytest.approx(1.0) and table.loc["held out", "images"] == 4
    fig = plots.plot_seen_vs_held_out(table)
    _labelled(fig)
    heights = sorted(round(p.get_height(), 6) for p in fig.axes[0].patches)
    assert heights == sorted(round(v, 6) for v in table[["precision", "recall", "F1"]].to_numpy().ravel())
    plt.close(fig)


def test_estimate_bias_against_the_clean_control_model():
    pd = pytest.importorskip("pandas")
    rows = [{"method": "bkd", "split": "clean", "seed": 0, "true_noise_rate": 0.0, "estimated_noise_rate": 0.2},
            {"method": "bkd", "split": "worst", "seed": 0, "true_noise_rate": 0.4, "estimated_noise_rate": 0.52},
            {"method": "ce", "split": "worst", "seed": 0, "true_noise_rate": 0.4, "estimated_noise_rate": None}]
    bias = analysis.estimate_bias(pd.DataFrame(rows))
    assert bias.attrs["control_rate"] == pytest.approx(20.0) and list(bias["split"]) == ["clean", "worst"]
    # worst: 0.4 + 0.6 * 0.2 = 0.52, so the model explains the error exactly
    assert bias["error"].tolist() == pytest.approx([20.0, 12.0])
    assert bias["modelled error"].tolist() == pytest.approx([20.0, 12.0])
    assert analysis.modelled_estimate([0.0, 1.0], 0.3) == pytest.approx([0.3, 1.0])
    fig = plots.plot_estimate_bias({"features": bias, "cnn": bias})  # a second batch: its own points and line
    _labelled(fig)
    models = [line for line in fig.axes[0].lines if line.get_linestyle() == "--"]
    assert len(fig.axes[0].collections) == 2 and len(models) == 2
    plt.close(fig)


def test_detection_by_confusion_finds_each_pair():
    clean = np.array([3] * 6 + [1] * 4 + [5] * 5)
    given = np.array([5] * 6 + [9] * 4 + [5] * 5)  # six cats labelled dog, four cars labelled truck, five right dogs
    mask = np.array([1, 1, 1, 0, 0, 0] + [1, 1, 1, 1] + [1, 0, 0, 0, 0], dtype=bool)
    names = D.class_names("cifar10")
    table = analysis.detection_by_confusion(mask, clean, given, names, min_images=2)
    assert table["confusion"].tolist() == ["cat labelled dog", "automobile labelled truck"]
    assert table["found"].tolist() == pytest.approx([0.5, 1.0])
    assert table["clean flagged"].iloc[0] == pytest.approx(0.2) and np.isnan(table["clean flagged"].iloc[1])
    assert analysis.detection_by_confusion(mask, clean, given, names, min_images=5)["images"].tolist() == [6]
    fig = plots.plot_detection_by_confusion(table)
    _labelled(fig)
    plt.close(fig)


def test_detection_by_epoch_scores_every_recorded_epoch():
    rng = np.random.default_rng(1)
    truth = rng.random(400) < 0.3
    scores = np.full((5, 400), np.nan)
    for e, spread in enumerate((0.5, 0.3, 0.15, 0.05)):  # the last epoch has no scores (phase 2)
        scores[e] = np.clip(np.where(truth, 0.3, 0.7) + rng.normal(0, spread, 400), 0, 1)
    table = analysis.detection_by_epoch(scores, truth)
    assert table["epoch"].tolist() == [1, 2, 3, 4]
    assert table["auc"].iloc[0] < 0.85 and table["auc"].iloc[-1] > 0.99  # the populations part as the spread shrinks
    assert ((0 <= table["f1"]) & (table["f1"] <= 1)).all() and table["f1"].iloc[-1] > table["f1"].iloc[0] + 0.1
    fig = plots.plot_detection_by_epoch(table, tipping=2, val_pick=3, fixed=None)
    _labelled(fig)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "tipping point (peak rule): epoch 3" in legend and "best noisy-validation accuracy: epoch 4" in legend
    assert not any("fixed" in x for x in legend)
    plt.close(fig)
