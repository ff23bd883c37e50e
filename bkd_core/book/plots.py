"""The book's figures. Each function takes plain arrays (numpy) and returns a matplotlib Figure.

Conventions: epochs on the x axis are counted from 1 (``history[...][e]`` is drawn at ``e + 1``,
see :func:`bkd_core.book.analysis.epoch_number`); truly clean samples are blue, truly mislabelled ones
vermillion (Okabe-Ito colours, readable with colour-blindness); missing values (NaN, e.g. test
accuracy of the ``paper`` profile, measured every 10 epochs) are skipped, not drawn as gaps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

from .analysis import clean_noisy_means

__all__ = [
    "CLEAN", "NOISY", "TEACHER", "STUDENT", "BKD", "CE",
    "use_style",
    "show_examples",
    "plot_noise_rates",
    "plot_transition_matrix",
    "plot_memorization",
    "draw_bkd_diagram",
    "plot_teacher_student",
    "plot_teacher_student_scatter",
    "plot_tipping",
    "plot_window_sensitivity",
    "plot_score_histogram",
    "plot_groups",
    "plot_precision_recall",
    "plot_robust_targets",
    "plot_test_accuracy",
    "plot_detection_by_split",
    "plot_detection_by_batch",
    "plot_estimate_error_vs_accuracy",
    "plot_accuracy_by_split",
    "plot_ablations",
    "plot_noise_estimates",
    "show_label_issues",
    "plot_estimate_bias",
    "plot_seen_vs_held_out",
    "plot_detection_by_confusion",
    "plot_detection_by_epoch",
    "plot_blindness",
    "plot_student_curves",
    "plot_auc_by_epoch",
    "plot_fit_by_epoch",
]

CLEAN = "#0072B2"  # blue
NOISY = "#D55E00"  # vermillion
TEACHER = "#CC79A7"  # reddish purple
STUDENT = "#009E73"  # bluish green
BKD = "#009E73"
CE = "#666666"
ACCENT = "#E69F00"  # orange: markers of detected epochs / thresholds
GROUP_COLOURS = {1: "#0072B2", 2: "#56B4E9", 3: "#F0E442", 4: "#D55E00"}


def use_style() -> None:
    """The book's matplotlib style (call once per notebook)."""
    plt.rcParams.update({
        "figure.dpi": 100, "savefig.dpi": 150, "figure.facecolor": "white",
        "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
        "axes.spines.top": False, "axes.spines.right": False,
        "axes.grid": True, "grid.alpha": 0.3, "legend.frameon": False,
        "figure.constrained_layout.use": True,
    })
    try:  # sharp PNGs in notebooks and in the book (displayed at their nominal size)
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        if get_ipython() is not None:
            set_matplotlib_formats("retina")
    except ImportError:  # pragma: no cover
        pass


def _epochs(n: int) -> np.ndarray:
    return np.arange(1, n + 1)


def _line(ax, values, **kwargs):
    """Plot a per-epoch curve at epochs 1..E, skipping non-finite values."""
    y = np.asarray(values, dtype=np.float64)
    x = _epochs(len(y))
    ok = np.isfinite(y)
    return ax.plot(x[ok], y[ok], **kwargs)


def _mark_epoch(ax, index: int | None, label: str, colour: str = ACCENT, style: str = "--") -> None:
    """A vertical line at the 0-based epoch ``index`` (drawn at index + 1)."""
    if index is not None:
        ax.axvline(int(index) + 1, color=colour, linestyle=style, linewidth=1.2, label=label)


def _shade_phase2(ax, found_at: int | None, n_epochs: int, label: str | None = "phase 2") -> None:
    """Shade the epochs after the tipping point was detected (phase 2 starts at epoch found_at + 2)."""
    if found_at is not None and found_at + 1 < n_epochs:
        ax.axvspan(found_at + 1.5, n_epochs + 0.5, color="0.9", zorder=0, label=label)


def _legend_below(fig: Figure, axes, ncols: int = 2) -> None:
    """One legend under the figure with the unique entries of all ``axes``."""
    handles: dict[str, object] = {}
    for ax in np.atleast_1d(axes).flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label and not label.startswith("_"):
                handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center", ncols=ncols)


def _swatch(colour: str, label: str, alpha: float = 1.0) -> Rectangle:
    """An empty patch that only carries a legend entry (seaborn draws with ``legend=False``, and
    :func:`_legend_below` collects labelled artists)."""
    return Rectangle((0, 0), 0, 0, facecolor=colour, alpha=alpha, label=label, linewidth=0)


def _integer_epochs(ax) -> None:
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


# --------------------------------------------------------------------------------------------
# Chapter 1: data
# --------------------------------------------------------------------------------------------


def show_examples(images: np.ndarray, clean: np.ndarray, given: np.ndarray, names: Sequence[str],
                  ncols: int = 6) -> Figure:
    """A grid of images (uint8 [n, 32, 32, 3]) titled with their clean and human labels.

    Mislabelled images get a vermillion frame and title.
    """
    titles = [f"true: {names[int(c)]}\nhuman: {names[int(g)]}" for c, g in zip(clean, given)]
    return _image_grid(images, titles, np.asarray(clean) != np.asarray(given), ncols, (1.15, 1.45), 8.5)


def _image_grid(images: np.ndarray, titles: Sequence[str], wrong: np.ndarray, ncols: int,
                cell_inches: tuple[float, float], fontsize: float) -> Figure:
    """Images (uint8 [n, 32, 32, 3]) in rows of ``ncols``, each titled; ``wrong`` (bool [n]) ones
    get a vermillion frame and title."""
    n = len(images)
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell_inches[0] * ncols, cell_inches[1] * nrows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(images[i], interpolation="nearest")
        ax.set_title(titles[i], fontsize=fontsize, color=NOISY if wrong[i] else "black", linespacing=1.1)
        if wrong[i]:
            ax.add_patch(Rectangle((-0.5, -0.5), 32, 32, fill=False, edgecolor=NOISY, linewidth=3))
    return fig


def plot_noise_rates(table) -> Figure:
    """Horizontal bars of the noise rate of every CIFAR-N split (``analysis.noise_rate_table``)."""
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(table) + 1.0))
    labels = [f"{d} {s}" for d, s in zip(table["dataset"], table["split"])]
    rates = 100 * table["noise rate"].to_numpy()
    colours = [CE if r == 0 else NOISY for r in rates]
    ax.barh(labels, rates, color=colours)
    for y, r in enumerate(rates):
        ax.text(r + 0.5, y, f"{r:.2f}%", va="center", fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("training labels that differ from the clean label (%)")
    ax.set_ylabel("label set")
    ax.set_xlim(0, max(50.0, rates.max() + 8))
    ax.grid(axis="y", visible=False)
    return fig


def plot_transition_matrix(matrix: np.ndarray, names: Sequence[str], title: str = "") -> Figure:
    """Heatmap of ``P(human label | true label)`` in percent, with the off-diagonal mass written in."""
    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    pct = 100 * np.asarray(matrix)
    im = ax.imshow(pct, cmap="Oranges", vmin=0, vmax=100)
    for i in range(len(names)):
        for j in range(len(names)):
            if pct[i, j] >= 1.0:
                ax.text(j, i, f"{pct[i, j]:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if pct[i, j] > 60 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("human label")
    ax.set_ylabel("true label")
    ax.grid(False)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="% of the true class", shrink=0.8)
    return fig


# --------------------------------------------------------------------------------------------
# Chapter 2: memorization
# --------------------------------------------------------------------------------------------


def plot_memorization(p_label: np.ndarray, predicts_label: np.ndarray, is_noisy: np.ndarray,
                      test_acc: np.ndarray, onset: int | None = None, peak: int | None = None) -> Figure:
    """Three stacked panels over the epochs of a cross-entropy run (shared epoch axis).

    Parameters
    ----------
    p_label : np.ndarray
        float [E, n] probability of the given label in the training pass.
    predicts_label : np.ndarray
        [E, n] 1 where the training-pass prediction equals the given label.
    is_noisy : np.ndarray
        bool [n] truth for the same columns.
    test_acc : np.ndarray
        [E] test accuracy in %.
    onset, peak : int | None
        0-based epochs to mark (memorization onset, best test accuracy).
    """
    fig, axes = plt.subplots(3, 1, figsize=(7, 8.2), sharex=True)
    p_clean, p_noisy = clean_noisy_means(p_label, is_noisy)
    m_clean, m_noisy = clean_noisy_means(predicts_label, is_noisy)
    ax = axes[0]
    _line(ax, p_clean, color=CLEAN, marker="o", ms=3, label="truly clean images")
    _line(ax, p_noisy, color=NOISY, marker="o", ms=3, label="mislabelled images")
    ax.set(title="Probability of the given label (training pass)", ylabel="mean p(given label)", ylim=(0, 1.02))
    ax = axes[1]
    _line(ax, 100 * m_clean, color=CLEAN, marker="o", ms=3, label="truly clean images")
    _line(ax, 100 * m_noisy, color=NOISY, marker="o", ms=3, label="mislabelled images")
    ax.set(title="Images predicted as their given label", ylabel="% of images", ylim=(0, 102))
    ax = axes[2]
    _line(ax, test_acc, color=CE, marker="o", ms=3, label="test accuracy")
    ax.set(title="Accuracy on the clean test set", xlabel="epoch", ylabel="test accuracy (%)")
    for ax in axes:
        _mark_epoch(ax, onset, "memorization takes off", ACCENT, "--")
        _mark_epoch(ax, peak, "best test accuracy", "black", ":")
    _integer_epochs(axes[2])
    _legend_below(fig, axes, ncols=3)
    return fig


# --------------------------------------------------------------------------------------------
# Chapter 3: the blind teacher
# --------------------------------------------------------------------------------------------


def _box(ax, xy, w, h, text, colour, fontsize=10):
    ax.add_patch(FancyBboxPatch(xy, w, h, boxstyle="round,pad=0.02,rounding_size=0.04", facecolor=colour,
                                edgecolor="black", linewidth=1.0, alpha=0.9))
    ax.text(xy[0] + w / 2, xy[1] + h / 2, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, start, end, text=None, colour="black", style="-|>", offset=(0, 0.03), **kwargs):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, color=colour, linewidth=1.2,
                                 **kwargs))
    if text:
        ax.text((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1], text, ha="center",
                va="bottom", fontsize=8.5, color=colour)


def _bars(ax, origin, values, highlight: int, colour: str, masked: bool, width=0.018, height=0.15):
    """Tiny bar chart of ``values`` (a logit vector) drawn at ``origin`` in axes coordinates."""
    x0, y0 = origin
    values = np.asarray(values, dtype=float)
    scale = height / values.max()
    for i, v in enumerate(values):
        face, hatch = colour, None
        if i == highlight:
            face, hatch = ("white", "////") if masked else (NOISY, None)
        ax.add_patch(Rectangle((x0 + i * width * 1.25, y0), width, v * scale, facecolor=face, edgecolor="black",
                               linewidth=0.6, hatch=hatch))
    return x0 + len(values) * width * 1.25


def draw_bkd_diagram() -> Figure:
    """Schematic of Blind Knowledge Distillation: two networks, the masked (blind) loss, the score.

    The bars are illustrative logits over 10 classes. The given label y is red in the teacher's
    logits (the teacher is trained to fit it) and hatched in the student's (the compensation loss
    ignores it).
    """
    fig, ax = plt.subplots(figsize=(7.6, 4.9), layout="constrained")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.12, 0.95)
    ax.axis("off")
    y = 4  # index of the given label in the illustration
    t_logits = np.array([0.8, 0.5, 1.6, 2.6, 3.8, 3.4, 0.6, 1.1, 0.4, 0.5])
    s_logits = np.array([0.9, 0.6, 1.5, 2.5, 0.3, 3.2, 0.7, 1.0, 0.5, 0.4])
    _box(ax, (0.0, 0.40), 0.13, 0.18, "image x\ngiven\nlabel y", "0.92", 10.5)
    _box(ax, (0.18, 0.70), 0.13, 0.15, "teacher\nT", TEACHER, 11)
    _box(ax, (0.18, 0.12), 0.13, 0.15, "student\nS", STUDENT, 11)
    _arrow(ax, (0.13, 0.52), (0.18, 0.75))
    _arrow(ax, (0.13, 0.46), (0.18, 0.22))
    end = _bars(ax, (0.36, 0.70), t_logits, y, TEACHER, masked=False)
    _bars(ax, (0.36, 0.12), s_logits, y, STUDENT, masked=True)
    ax.text(0.36, 0.88, "teacher logits $z_T$", fontsize=10.5)
    ax.text(0.36, 0.05, "student logits $z_S$", fontsize=10.5)
    _arrow(ax, (0.31, 0.775), (0.355, 0.775))
    _arrow(ax, (0.31, 0.195), (0.355, 0.195))
    # the blind loss, between the two sets of logits
    _box(ax, (0.33, 0.38), 0.29, 0.20,
         "compensation loss, blind to y\n$\\sum_{c \\neq y} (z_T[c] - z_S[c])^2 / (BC - 1)$\ntrains both networks",
         "#fff3d6", 10)
    _arrow(ax, (0.475, 0.695), (0.475, 0.585))
    _arrow(ax, (0.475, 0.28), (0.475, 0.375))
    # teacher's cross-entropy and the agreement score
    _box(ax, (0.70, 0.70), 0.29, 0.17, "cross-entropy with y\n$-\\log\\, \\mathrm{softmax}(z_T)_y$\ntrains the teacher",
         "#f4e1ee", 10)
    _box(ax, (0.70, 0.14), 0.30, 0.25,
         "agreement score\n$\\propto (\\mathrm{softmax}(z_T)\\odot\\mathrm{softmax}(z_S))_y$"
         "\nhigh: clean\nlow: mislabelled?", "#e3f1fb", 10)
    _arrow(ax, (end + 0.005, 0.78), (0.70, 0.785))
    _arrow(ax, (end + 0.005, 0.71), (0.70, 0.36), colour="0.3")
    _arrow(ax, (end + 0.005, 0.20), (0.70, 0.25), colour="0.3")
    ax.text(0.0, -0.11, "red bar: the given label y, which the teacher learns to predict (even when y is wrong);\n"
            "hatched bar: the same class for the student, which gets no signal for it", fontsize=9.5, color="0.3",
            va="bottom")
    return fig


def plot_teacher_student(teacher_p: np.ndarray, student_p: np.ndarray, is_noisy: np.ndarray,
                         found_at: int | None = None, threshold: float = 0.5) -> Figure:
    """Teacher vs student on the given label over the epochs, clean vs mislabelled (two stacked panels).

    Parameters
    ----------
    teacher_p, student_p : np.ndarray
        float [E, n] training-pass probability of the given label.
    is_noisy : np.ndarray
        bool [n].
    found_at : int | None
        0-based epoch at which the tipping point was detected (later epochs are shaded).
    threshold : float
        a mislabelled image counts as memorized when p(given label) > threshold.
    """
    n_epochs = len(teacher_p)
    fig, axes = plt.subplots(2, 1, figsize=(7, 6.2), sharex=True)
    t_clean, t_noisy = clean_noisy_means(teacher_p, is_noisy)
    s_clean, s_noisy = clean_noisy_means(student_p, is_noisy)
    ax = axes[0]
    _line(ax, t_clean, color=CLEAN, linestyle="--", marker="s", ms=3, label="teacher, clean images")
    _line(ax, s_clean, color=CLEAN, marker="o", ms=3, label="student, clean images")
    _line(ax, t_noisy, color=NOISY, linestyle="--", marker="s", ms=3, label="teacher, mislabelled")
    _line(ax, s_noisy, color=NOISY, marker="o", ms=3, label="student, mislabelled")
    ax.set(title="Mean probability of the given label", ylabel="mean p(given label)", ylim=(0, 1.02))
    ax = axes[1]
    noisy = np.asarray(is_noisy, dtype=bool)
    with np.errstate(invalid="ignore"):
        t_mem = 100 * (np.asarray(teacher_p, np.float64)[:, noisy] > threshold).mean(1)
        s_mem = 100 * (np.asarray(student_p, np.float64)[:, noisy] > threshold).mean(1)
    _line(ax, t_mem, color=TEACHER, linestyle="--", marker="s", ms=3, label="teacher")
    _line(ax, s_mem, color=STUDENT, marker="o", ms=3, label="student")
    ax.set(title=f"Mislabelled images memorized (p(given label) > {threshold:g})", xlabel="epoch",
           ylabel="% of mislabelled images", ylim=(0, 102))
    _shade_phase2(axes[0], found_at, n_epochs)
    _shade_phase2(axes[1], found_at, n_epochs, label=None)
    _legend_below(fig, axes, ncols=3)
    _integer_epochs(axes[1])
    return fig


def plot_teacher_student_scatter(teacher_p: np.ndarray, student_p: np.ndarray, is_noisy: np.ndarray,
                                 epoch: int, max_points: int = 4000, seed: int = 0) -> Figure:
    """Per image, the teacher's against the student's probability of the given label in one epoch.

    Parameters
    ----------
    teacher_p, student_p : np.ndarray
        float [n] (one epoch of the training-pass history).
    is_noisy : np.ndarray
        bool [n].
    epoch : int
        the 0-based epoch, for the title.
    max_points : int
        at most this many images per panel, drawn at random (seeded) when there are more (a
        cloud of 45,000 points is a solid blot); the title says how many of how many are shown.
    """
    noisy = np.asarray(is_noisy, dtype=bool)
    tp = np.asarray(teacher_p, np.float64)
    sp = np.asarray(student_p, np.float64)
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.7), sharex=True, sharey=True)
    sampled = False
    for ax, mask, colour, name in ((axes[0], ~noisy, CLEAN, "truly clean images"),
                                   (axes[1], noisy, NOISY, "mislabelled images")):
        rows = np.flatnonzero(mask)
        if len(rows) > max_points:
            rows = np.sort(rng.choice(rows, max_points, replace=False))
            sampled = True
            name = f"{name}\n(a random {max_points:,} of {int(mask.sum()):,})"
        ax.scatter(tp[rows], sp[rows], s=4, alpha=0.3, color=colour, rasterized=True)
        ax.plot([0, 1], [0, 1], color="0.4", linewidth=0.8)
        ax.set(title=name, xlabel="teacher p(given label)", xlim=(0, 1), ylim=(0, 1), aspect="equal")
    axes[0].set_ylabel("student p(given label)")
    fig.suptitle(f"Per image, epoch {epoch + 1} (below the diagonal: the student doubts the label more)"
                 + (", a sample" if sampled else ""), fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# Chapter 4: the tipping point
# --------------------------------------------------------------------------------------------


def plot_tipping(mean_max_student: np.ndarray, tipping: int | None, found_at: int | None,
                 ce_noisy_memorized: np.ndarray | None = None, ce_test_acc: np.ndarray | None = None,
                 onset: int | None = None, ce_peak: int | None = None, rule: str | None = "peak") -> Figure:
    """The student's mean max probability with the tipping point, above the CE run's dynamics.

    Parameters
    ----------
    mean_max_student : np.ndarray
        [E] the BKD epoch statistic.
    tipping, found_at : int | None
        0-based epochs of the peak and of its detection.
    rule : str | None
        the run's ``tipping_rule``: ``"peak"`` (the official rule) or ``"fallback"`` (labelled as such).
    ce_noisy_memorized : np.ndarray | None
        [E'] % of mislabelled samples the CE network reproduces.
    ce_test_acc : np.ndarray | None
        [E'] CE test accuracy (%).
    onset, ce_peak : int | None
        0-based epochs where CE memorization takes off and where its test accuracy peaks.
    """
    with_ce = ce_noisy_memorized is not None
    fig, axes = plt.subplots(2 if with_ce else 1, 1, figsize=(7, 6.4 if with_ce else 3.4), sharex=True,
                             squeeze=False)
    ax = axes[0, 0]
    curve = np.asarray(mean_max_student, dtype=np.float64)
    _line(ax, curve, color=STUDENT, marker="o", ms=4, label="student: mean max probability")
    if tipping is not None:
        ax.plot([tipping + 1], [curve[tipping]], marker="*", ms=16, color=ACCENT, linestyle="none",
                markeredgecolor="black", label=f"tipping point (epoch {tipping + 1}"
                + (", fallback: no peak)" if rule == "fallback" else ")"))
    detected = "fallback fired" if rule == "fallback" else "detected (window of 2 epochs)"
    _mark_epoch(ax, found_at, detected if found_at is not None else "", "0.4", ":")
    _shade_phase2(ax, found_at, len(curve))
    ax.set(title="BKD: the student's confidence", ylabel="mean max softmax of S")
    if with_ce:
        ax = axes[1, 0]
        _line(ax, ce_noisy_memorized, color=NOISY, marker="o", ms=4, label="mislabelled images reproduced (%)")
        if ce_test_acc is not None:
            _line(ax, ce_test_acc, color=CE, marker="s", ms=4, label="test accuracy (%)")
        _mark_epoch(ax, onset, "memorization takes off", NOISY, "--")
        _mark_epoch(ax, ce_peak, "best test accuracy", "black", ":")
        if tipping is not None:
            ax.axvline(tipping + 1, color=ACCENT, linewidth=2, alpha=0.6, label="BKD tipping point")
        ax.set(title="Cross-entropy baseline, same data and budget", ylabel="%", ylim=(0, 102))
    axes[-1, 0].set_xlabel("epoch")
    _integer_epochs(axes[-1, 0])
    _legend_below(fig, axes, ncols=2)
    return fig


def plot_window_sensitivity(mean_max_student: np.ndarray, tipping_by_window: Mapping[int, int | None]) -> Figure:
    """The student's curve with the tipping point each window size would pick (0-based epochs).

    Markers of different windows at the same epoch are stacked above the curve.
    """
    fig, ax = plt.subplots(figsize=(7, 3.6))
    curve = np.asarray(mean_max_student, dtype=np.float64)
    _line(ax, curve, color=STUDENT, marker="o", ms=4, label="student: mean max probability")
    span = float(np.nanmax(curve) - np.nanmin(curve)) or 1.0
    markers = ["v", "*", "D", "P", "X", "s"]
    colours = [CLEAN, ACCENT, NOISY, TEACHER, "black", CE]
    stacked: dict[int, int] = {}
    for k, (w, tip) in enumerate(sorted(tipping_by_window.items())):
        style = dict(linestyle="none", marker=markers[k % len(markers)], ms=9, color=colours[k % len(colours)],
                     markeredgecolor="black")
        if tip is None:
            ax.plot([], [], label=f"window {w}: no peak", **{**style, "color": "white"})
            continue
        level = stacked.get(tip, 0)
        stacked[tip] = level + 1
        ax.plot([tip + 1], [curve[tip] + span * 0.08 * (level + 1)], label=f"window {w}: epoch {tip + 1}", **style)
    ax.set(xlabel="epoch", ylabel="mean max softmax of S", title="Tipping point by window size")
    ax.margins(y=0.15)
    _integer_epochs(ax)
    _legend_below(fig, ax, ncols=3)
    return fig


# --------------------------------------------------------------------------------------------
# Chapter 5: Otsu
# --------------------------------------------------------------------------------------------


def plot_score_histogram(scores: np.ndarray, is_noisy: np.ndarray, splits: Mapping[str, object],
                         bins: int = 50, groups_of: str | None = None) -> Figure:
    """Stacked histogram of agreement scores, clean vs mislabelled, with Otsu thresholds.

    Parameters
    ----------
    scores : np.ndarray
        float [N] in [0, 1].
    is_noisy : np.ndarray
        bool [N].
    splits : Mapping[str, object]
        name -> :class:`~bkd_core.method.OtsuSplit` (thresholds drawn as vertical lines).
    groups_of : str | None
        name of the split whose four groups are marked along the top.
    """
    fig, ax = plt.subplots(figsize=(7, 3.8))
    scores = np.asarray(scores, dtype=np.float64)
    noisy = np.asarray(is_noisy, dtype=bool)
    edges = np.linspace(0, 1, bins + 1)
    kind = np.where(noisy, "mislabelled", "truly clean")
    sns.histplot(x=scores, hue=kind, hue_order=["mislabelled", "truly clean"], multiple="stack", bins=edges,
                 palette={"truly clean": CLEAN, "mislabelled": NOISY}, alpha=0.85, linewidth=0.3, legend=False, ax=ax)
    # (seaborn stacks the last hue level at the bottom: clean images below, mislabelled on top, as before)
    for label, colour in (("truly clean", CLEAN), ("mislabelled", NOISY)):  # seaborn's legend is not collected
        ax.add_patch(_swatch(colour, label, alpha=0.85))
    styles = ["-", "--", "-.", ":"]
    for k, (name, split) in enumerate(splits.items()):
        ax.axvline(split.threshold, color="black", linestyle=styles[k % 4], linewidth=1.5,
                   label=f"{name} threshold {split.threshold:.3f}")
    if groups_of is not None:
        split = splits[groups_of]
        top = ax.get_ylim()[1]
        bounds = [(0.0, split.lower_mean, "G4"), (split.lower_mean, split.threshold, "G3"),
                  (split.threshold, split.upper_mean, "G2"), (split.upper_mean, 1.0, "G1")]
        for lo, hi, name in bounds:
            g = int(name[1])
            ax.axvspan(lo, hi, ymin=0.94, ymax=1.0, color=GROUP_COLOURS[g], alpha=0.8)
            ax.text((lo + hi) / 2, top * 0.97, name, ha="center", va="center", fontsize=8)
    ax.set(xlabel="agreement score of the given label", ylabel="images", xlim=(0, 1))
    _legend_below(fig, ax, ncols=2)
    return fig


def plot_histogram_counts(edges: Sequence[float], clean: Sequence[int], noisy: Sequence[int],
                          threshold: float | None = None, title: str = "") -> Figure:
    """Stacked histogram from counts, clean below and mislabelled on top (as :func:`plot_score_histogram`),
    for scores stored as a histogram (``agreement_histogram`` of a ``paper``-setting run).

    Parameters
    ----------
    edges : Sequence[float]
        [B + 1] bin edges on [0, 1].
    clean, noisy : Sequence[int]
        [B] counts per bin.
    threshold : float | None
        a vertical line (the run's Otsu threshold), if given.
    """
    fig, ax = plt.subplots(figsize=(7, 3.8))
    edges = np.asarray(edges, dtype=np.float64)
    clean, noisy = np.asarray(clean, dtype=np.float64), np.asarray(noisy, dtype=np.float64)
    widths, lefts = np.diff(edges), edges[:-1]
    ax.bar(lefts, clean, widths, align="edge", color=CLEAN, alpha=0.85, linewidth=0.3, edgecolor="white",
           label="truly clean")
    ax.bar(lefts, noisy, widths, bottom=clean, align="edge", color=NOISY, alpha=0.85, linewidth=0.3,
           edgecolor="white", label="mislabelled")
    if threshold is not None:
        ax.axvline(threshold, color="black", linewidth=1.5, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="agreement score of the given label", ylabel="images", xlim=(0, 1), title=title)
    _legend_below(fig, ax, ncols=3)
    return fig


def plot_groups(groups: np.ndarray, is_noisy: np.ndarray) -> Figure:
    """Stacked bars: how many truly clean and mislabelled samples fall in each group G1..G4."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    groups = np.asarray(groups)
    noisy = np.asarray(is_noisy, dtype=bool)
    names = ["G1", "G2", "G3", "G4"]
    n_clean = np.array([np.sum((groups == g) & ~noisy) for g in (1, 2, 3, 4)])
    n_noisy = np.array([np.sum((groups == g) & noisy) for g in (1, 2, 3, 4)])
    ax.bar(names, n_clean, color=CLEAN, label="truly clean")
    ax.bar(names, n_noisy, bottom=n_clean, color=NOISY, label="mislabelled")
    for i, (c, m) in enumerate(zip(n_clean, n_noisy)):
        if c + m:
            ax.text(i, c + m, f"{100 * m / (c + m):.0f}% wrong", ha="center", va="bottom", fontsize=8)
    ax.set(xlabel="group (G1 most confident, G4 least)", ylabel="images", title="Who is in each group")
    ax.margins(y=0.12)
    ax.legend()
    return fig


def plot_precision_recall(scores: np.ndarray, is_noisy: np.ndarray,
                          points: Mapping[str, tuple[float, float]] | None = None) -> Figure:
    """Precision-recall curve of the (negated) score as a detector of mislabelled samples.

    ``points``: name -> (recall, precision) operating points to mark (e.g. flagging G4).
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    noisy = np.asarray(is_noisy, dtype=bool)
    score = -np.asarray(scores, dtype=np.float64)
    precision, recall, _ = precision_recall_curve(noisy, score)
    ap = average_precision_score(noisy, score)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.plot(recall, precision, color=BKD, label=f"low score = mislabelled (AP {ap:.3f})")
    ax.axhline(noisy.mean(), color="0.5", linestyle=":", label=f"flag at random ({100 * noisy.mean():.1f}%)")
    markers = ["o", "s", "D", "^"]
    colours = [ACCENT, TEACHER, CLEAN, "black"]
    # open markers, each smaller than the one before: points that coincide stay visible
    for k, (name, (r, p)) in enumerate((points or {}).items()):
        ax.plot([r], [p], marker=markers[k % 4], ms=13 - 3 * (k % 4), linestyle="none", markerfacecolor="none",
                markeredgewidth=2, markeredgecolor=colours[k % 4], label=name, zorder=3 + k)
    ax.set(xlabel="recall (share of mislabelled images flagged)", ylabel="precision (share of flags that are right)",
           xlim=(0, 1.01), ylim=(0, 1.02), title="Detecting mislabelled images")
    _legend_below(fig, ax, ncols=2)
    return fig


# --------------------------------------------------------------------------------------------
# Chapter 6: robust training
# --------------------------------------------------------------------------------------------


def plot_robust_targets(label: int, student_probs: np.ndarray, targets: Mapping[str, np.ndarray],
                        names: Sequence[str]) -> Figure:
    """Bars per class: the student's prediction and the phase-2 targets of each group.

    Parameters
    ----------
    label : int
        the given label y.
    student_probs : np.ndarray
        float [C].
    targets : Mapping[str, np.ndarray]
        name -> float [C].
    """
    student_probs = np.asarray(student_probs, dtype=np.float64)
    targets = {name: np.asarray(t, dtype=np.float64) for name, t in targets.items()}
    k = len(targets) + 1
    fig, axes = plt.subplots(1, k, figsize=(1.5 * k, 3.3), sharey=True)
    c = len(student_probs)
    colours = [NOISY if i == label else STUDENT for i in range(c)]
    axes[0].bar(range(c), student_probs, color=colours)
    axes[0].set_title("student\nprediction", fontsize=9.5)
    for ax, (name, target) in zip(axes[1:], targets.items()):
        ax.bar(range(c), target, color=[NOISY if i == label else CLEAN for i in range(c)])
        ax.set_title(f"target\n{name}", fontsize=9.5)
    for ax in axes:
        ax.set_xticks(range(c), names, rotation=90, fontsize=8)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("probability (red: given label)")
    return fig


def plot_test_accuracy(curves: Mapping[str, np.ndarray], tipping: int | None = None,
                       found_at: int | None = None, colours: Mapping[str, str] | None = None) -> Figure:
    """Test accuracy (%) per epoch of several runs, with BKD's tipping point and phase 2 marked."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    default = [BKD, CE, ACCENT, CLEAN]
    n = 0
    for k, (name, curve) in enumerate(curves.items()):
        colour = (colours or {}).get(name, default[k % len(default)])
        _line(ax, curve, color=colour, marker="o", ms=3.5, label=name)
        n = max(n, len(curve))
    if tipping is not None:
        ax.axvline(tipping + 1, color=ACCENT, linestyle="--", label=f"BKD tipping point (epoch {tipping + 1})")
    _shade_phase2(ax, found_at, n, label="BKD phase 2")
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Accuracy on the clean test set")
    _legend_below(fig, ax, ncols=2)
    _integer_epochs(ax)
    return fig


# --------------------------------------------------------------------------------------------
# Results chapter: the reproduction batch
# --------------------------------------------------------------------------------------------

#: Detectors of the results chapter: (label, method, metric column prefix, colour).
DETECTORS = (
    ("BKD, G4", "bkd", "detection_f1", BKD),
    ("BKD, below threshold", "bkd", "below_threshold_f1", "#56B4E9"),
    ("cleanlab (confident learning)", "cleanlab", "detection_f1", ACCENT),
    ("CE, prediction differs", "ce", "detection_f1", CE),
    ("kNN label voting", "knn", "detection_f1", TEACHER),
)


def _detectors(table) -> tuple:
    """:data:`DETECTORS` whose method has runs in ``table`` (a batch without kNN runs gets no kNN bar or row)."""
    present = set(table["method"])
    return tuple(d for d in DETECTORS if d[1] in present)


def _per_run(table, columns: Sequence[tuple[str, str, str]], scale: float = 100.0):
    """Long table of one row per (run, series): split, seed, series label and value (times ``scale``),
    from :func:`bkd_core.book.results.collect_results` and ``(label, method, column)`` triples."""
    import pandas as pd

    parts = []
    for label, method, column in columns:
        rows = table[table["method"] == method]
        parts.append(pd.DataFrame({"split": rows["split"].to_numpy(), "seed": rows["seed"].to_numpy(), "series": label,
                                   "value": scale * pd.to_numeric(rows[column], errors="coerce").to_numpy()}))
    return pd.concat(parts, ignore_index=True)


def _bars_over_seeds(table, series: Sequence[tuple[str, str, str, str]], ax, scale: float = 100.0) -> list[str]:
    """Grouped bars per split of each series' mean over seeds, with the standard deviation over seeds
    as error bars (seaborn's ``barplot(errorbar="sd")``; none for a single seed). Returns the splits."""
    from .results import ordered_splits

    splits = ordered_splits(table["split"])
    long = _per_run(table, [(label, method, column) for label, method, column, _ in series], scale)
    long = long.dropna(subset=["value"])
    sns.barplot(data=long, x="split", y="value", hue="series", order=splits, hue_order=[s[0] for s in series],
                palette={label: colour for label, _, _, colour in series}, errorbar="sd", capsize=0.1,
                err_kws={"linewidth": 0.8}, legend=False, ax=ax)
    for label, _, _, colour in series:  # legend entries for _legend_below
        ax.add_patch(_swatch(colour, label))
    return splits


def plot_detection_by_split(table) -> Figure:
    """Detection F1 (%) per split for each detector: the mean over seeds as bars, the standard deviation
    over seeds as error bars, the F1 of flagging everything marked as the floor.
    ``table``: one row per run and method, :func:`bkd_core.book.results.collect_results`."""
    fig, ax = plt.subplots(figsize=(8, 4))
    splits = _bars_over_seeds(table, _detectors(table), ax)
    bkd = table[table["method"] == "bkd"].assign(flag_all_f1=lambda t: t["flag_all_f1"].astype(float))
    floor = bkd.groupby("split")["flag_all_f1"].mean().reindex(splits).to_numpy()
    x = np.arange(len(splits))
    ax.hlines(100 * floor, x - 0.45, x + 0.45, colors="black", linestyles="--", label="flag everything (floor)")
    truth = bkd.assign(true_noise_rate=lambda t: t["true_noise_rate"].astype(float)).groupby("split")[
        "true_noise_rate"].mean().reindex(splits).to_numpy()
    for k in np.flatnonzero(truth == 0):  # a split where no label is wrong has no F1 to draw
        ax.text(k, 3, "no wrong label:\nno F1", ha="center", va="bottom", fontsize=8, color="0.35")
    ax.set(xlabel="CIFAR-10N split", ylabel="detection F1 (%)", title="Finding the mislabelled images", ylim=(0, 100))
    _legend_below(fig, ax, ncols=3)
    return fig


def plot_accuracy_by_split(table) -> Figure:
    """Last-epoch test accuracy (%) per split of BKD and the cross-entropy baseline: mean over seeds,
    standard deviation as error bars. ``table``: :func:`bkd_core.book.results.collect_results`."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    series = (("BKD", "bkd", "test_acc", BKD), ("cross-entropy", "ce", "test_acc", CE))
    _bars_over_seeds(table, series, ax, scale=1.0)  # test_acc is in % already
    ax.set(xlabel="CIFAR-10N split", ylabel="test accuracy, last epoch (%)", title="Accuracy on the clean test set")
    _legend_below(fig, ax, ncols=2)
    return fig


#: Series of :func:`plot_ablations`: column of :func:`bkd_core.book.ablations.ablation_runs` -> (label, colour, marker).
ABLATION_SERIES = {
    "bkd_last": ("BKD, last epoch", BKD, "o"),
    "bkd_switch": ("BKD at its switch (phase 1 only)", "#56B4E9", "D"),
    "ce_val_pick": ("CE, best noisy-validation epoch", TEACHER, "s"),
    "ce_last": ("CE, last epoch", CE, "v"),
    "ce_best": ("CE, best test epoch (bound on early stopping)", ACCENT, "^"),
}


def plot_ablations(summary, *, run: Mapping[str, float] | None = None, run_split: str | None = None,
                   run_label: str = "one run") -> Figure:
    """Test accuracy (%) per split of BKD's last epoch and the alternatives a reader would run instead: mean over
    seeds as a marker, standard deviation over seeds as an error bar; a series with no value (a batch without
    per-epoch curves) is left out. ``summary``: :func:`bkd_core.book.ablations.ablation_summary`.

    ``run``: values of one run on ``run_split`` (column of :data:`ABLATION_SERIES` -> test accuracy), drawn as
    open markers with ``run_label`` in their legend entry, for the series the batch cannot show."""
    from .results import ordered_splits

    fig, ax = plt.subplots(figsize=(8, 3.8))
    splits = ordered_splits(summary["split"])
    shown = [c for c in ABLATION_SERIES if summary.loc[summary["column"] == c, "seeds"].sum() > 0
             or (run and np.isfinite(run.get(c, np.nan)) and run_split in splits)]
    x = np.arange(len(splits))
    for k, column in enumerate(shown):
        label, colour, marker = ABLATION_SERIES[column]
        rows = summary[summary["column"] == column].set_index("split").reindex(splits)
        offset = (k - (len(shown) - 1) / 2) * 0.14
        if rows["seeds"].sum() > 0:
            ax.errorbar(x + offset, rows["mean"], yerr=rows["std"].fillna(0), fmt=marker, color=colour, ms=6,
                        capsize=2.5, elinewidth=1, label=label)
        else:  # the run's value alone
            ax.errorbar([splits.index(run_split) + offset], [run[column]], fmt=marker, color=colour, ms=7,
                        mfc="white", mew=1.5, label=f"{label}, {run_label}")
    ax.set_xticks(x, splits)
    ax.set(xlabel="CIFAR-10N split", ylabel="test accuracy (%)", title="BKD against early stopping")
    _legend_below(fig, ax, ncols=2)
    return fig


def plot_f1_heatmap(table) -> Figure:
    """Detection F1 (%) as a detector x split heatmap (mean over seeds, annotated), the flag-everything
    floor as the last row. Splits without a wrong label (no F1) are left out.
    ``table``: :func:`bkd_core.book.results.collect_results`."""
    from .results import ordered_splits

    floor = (("flag everything", "bkd", "flag_all_f1"),)
    detectors = _detectors(table)
    table = table[table["true_noise_rate"].astype(float) > 0]
    long = _per_run(table, [(label, method, column) for label, method, column, _ in detectors] + list(floor))
    grid = long.pivot_table(index="series", columns="split", values="value", aggfunc="mean")
    grid = grid.reindex(index=[d[0] for d in detectors] + [floor[0][0]],
                        columns=[s for s in ordered_splits(long["split"]) if s in grid.columns])
    grid = grid.dropna(axis=1, how="all")
    fig, ax = plt.subplots(figsize=(1.2 * max(len(grid.columns), 2) + 3.2, 3.4))
    sns.heatmap(grid, annot=True, fmt=".1f", cmap="cividis", vmin=0, vmax=100, linewidths=0.5,
                cbar_kws={"label": "detection F1 (%)"}, ax=ax)
    ax.set(xlabel="CIFAR-10N split", ylabel="detector", title="Detection F1 by detector and split (mean over seeds)")
    return fig


def plot_estimate_error_vs_accuracy(tables: Mapping[str, object], *, tolerance: float = 5.0,
                                    colours: Mapping[str, str] | None = None) -> Figure:
    """Does a more accurate network estimate the noise better? BKD's signed noise-estimate error (estimated - true,
    points) against its network's test accuracy: one small point per run and one colour per batch, each split's
    mean over seeds as a large labelled marker, and the same split's means of consecutive batches joined by a line,
    so that each line reads as "this split, with a more (or less) accurate network".

    Parameters
    ----------
    tables : Mapping[str, object]
        label -> :func:`bkd_core.book.results.collect_results` (or ``collect_stages``) of a batch, in the order the
        lines join them; empty tables are skipped. The error is :func:`bkd_core.book.results.estimate_errors`'
        ``signed_error``; the accuracy is the run's recorded BKD ``test_acc`` at its last epoch (a run stopped after
        its detection has none in the table, and is left out).
    tolerance : float
        a shaded band of ``+- tolerance`` points around an exact estimate.
    colours : Mapping[str, str] | None
        label -> colour of a batch (e.g. the colour another figure of the page gives it); others take the palette's.
    """
    from .results import estimate_errors, ordered_splits

    fig, ax = plt.subplots(figsize=(6.6, 4.4))
    palette, markers = (BKD, CE, NOISY, CLEAN), ("o", "s", "^", "D")
    ax.axhspan(-tolerance, tolerance, color="0.92", zorder=0, label=f"within {tolerance:g} points")
    ax.axhline(0, color="0.4", linewidth=0.8, zorder=1)
    means = {}
    for i, (label, table) in enumerate(tables.items()):
        rows = estimate_errors(table)
        if not len(rows):
            continue
        colour, marker = (colours or {}).get(label, palette[i % len(palette)]), markers[i % len(markers)]
        ax.scatter(rows["test_acc"], rows["signed_error"], s=14, alpha=0.45, color=colour, marker=marker, zorder=2)
        split_means = rows.groupby("split", sort=False)[["test_acc", "signed_error"]].mean()
        split_means = split_means.reindex([s for s in ordered_splits(split_means.index)])
        ax.scatter(split_means["test_acc"], split_means["signed_error"], s=60, color=colour, marker=marker,
                   edgecolor="black", linewidth=0.5, zorder=4,
                   label=f"{label}: {len(rows)} runs (small), split means (large)")
        means[label] = split_means
    labels = list(means)
    for a, b in zip(labels, labels[1:]):  # the same split with the next batch's network
        for split in means[a].index.intersection(means[b].index):
            ax.annotate("", xy=(means[b].loc[split, "test_acc"], means[b].loc[split, "signed_error"]),
                        xytext=(means[a].loc[split, "test_acc"], means[a].loc[split, "signed_error"]),
                        arrowprops={"arrowstyle": "-|>", "color": "0.45", "linewidth": 0.9, "shrinkA": 4,
                                    "shrinkB": 5}, zorder=3)
    low, high = ax.get_ylim()
    left, right = ax.get_xlim()
    gap = 0.05 * (high - low)  # labels of one batch at least this far apart, so that close splits do not overprint
    for k, split_means in enumerate(means.values()):
        side = -1 if k == 0 and len(means) > 1 else 1  # the first batch's labels to the left, the others' to the right
        placed: list[float] = []
        for split, row in split_means.sort_values("signed_error").iterrows():
            y = row["signed_error"] if not placed else max(row["signed_error"], placed[-1] + gap)
            placed.append(y)
            ax.annotate(split, (row["test_acc"], row["signed_error"]),
                        xytext=(row["test_acc"] + side * 0.04 * (right - left), y), textcoords="data",
                        fontsize=7.5, color="0.25", va="center", ha="right" if side < 0 else "left",
                        arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.6, "shrinkB": 4})
    ax.set(xlabel="BKD's test accuracy, last epoch (%)", ylabel="estimated - true noise rate (points)",
           title="Does a more accurate network estimate the noise better?")
    _legend_below(fig, ax, ncols=1)
    return fig


def plot_detection_by_batch(tables: Mapping[str, object], *, splits: Sequence[str] | None = None) -> Figure:
    """BKD's G4 F1 (%) per split, one bar per batch (mean over seeds; the standard deviation over seeds as an error
    bar where there are two or more), with the F1 of flagging everything as each split's floor; a split a batch has
    no run on yet is marked "not here yet" where its bar would be.

    Parameters
    ----------
    tables : Mapping[str, object]
        label -> :func:`bkd_core.book.results.collect_stages` (or ``collect_results``) of a batch, in bar order.
    splits : Sequence[str] | None
        the splits shown, in order; None: those with a wrong label in any batch.
    """
    import pandas as pd

    from .results import ordered_splits

    bkd = {label: t[t["method"] == "bkd"] if len(t) else t for label, t in tables.items()}
    if splits is None:
        found = pd.concat([t for t in bkd.values() if len(t)], ignore_index=True) if any(len(t) for t in bkd.values()) \
            else pd.DataFrame(columns=["split", "true_noise_rate"])
        splits = ordered_splits(found.loc[pd.to_numeric(found["true_noise_rate"], errors="coerce") > 0, "split"])
    splits = list(splits)
    fig, ax = plt.subplots(figsize=(8, 3.9))
    x = np.arange(len(splits))
    width = 0.8 / max(len(bkd), 1)
    colours = (BKD, CE, NOISY, CLEAN)
    floors = {}
    for i, (label, rows) in enumerate(bkd.items()):
        offset = (i - (len(bkd) - 1) / 2) * width
        colour = colours[i % len(colours)]
        for k, split in enumerate(splits):
            values = 100 * pd.to_numeric(rows.loc[rows["split"] == split, "detection_f1"], errors="coerce").dropna() \
                if len(rows) else pd.Series(dtype=float)
            floor = pd.to_numeric(rows.loc[rows["split"] == split, "flag_all_f1"], errors="coerce").dropna() \
                if len(rows) else pd.Series(dtype=float)
            if len(floor):
                floors.setdefault(split, 100 * float(floor.mean()))
            if not len(values):
                ax.text(k + offset, 2, "not here yet", rotation=90, ha="center", va="bottom", fontsize=7.5,
                        color="0.35")
                continue
            sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            ax.bar(k + offset, float(values.mean()), width * 0.92, color=colour, yerr=sd if len(values) > 1 else None,
                   capsize=2.5, error_kw={"linewidth": 0.8})
        ax.add_patch(_swatch(colour, label))
    shown = [k for k, s in enumerate(splits) if s in floors]
    ax.hlines([floors[splits[k]] for k in shown], [k - 0.45 for k in shown], [k + 0.45 for k in shown],
              colors="black", linestyles="--", label="flag everything (floor)")
    ax.set_xticks(x, splits)
    ax.set(xlabel="CIFAR-10N split", ylabel="BKD's G4 F1 (%)", ylim=(0, 100),
           title="Finding the mislabelled images: BKD's official mask against flagging everything")
    _legend_below(fig, ax, ncols=2)
    return fig


def _label_splits(ax, x, y, splits, min_gap: float = 0.045) -> None:
    """One label per split at the mean of its points, to the right, moved apart vertically so that no two labels
    overprint (``min_gap``: the least distance between labels, as a share of the y range), each with a thin line
    to its points."""
    import pandas as pd

    means = pd.DataFrame({"x": np.asarray(x, float), "y": np.asarray(y, float), "split": list(splits)}).dropna()
    means = means.groupby("split", sort=False)[["x", "y"]].mean().sort_values("y")
    if means.empty:
        return
    ax.figure.canvas.draw_idle()
    low, high = float(means["y"].min()), float(means["y"].max())
    gap = min_gap * max(high - low, 1.0) if len(means) > 1 else 0.0
    gap = max(gap, min_gap * 50)  # at least min_gap of a 50-point range
    placed: list[float] = []
    for split, row in means.iterrows():
        target = row["y"] if not placed else max(row["y"], placed[-1] + gap)
        placed.append(target)
        ax.annotate(split, (row["x"], row["y"]), xytext=(row["x"] + 4, target), textcoords="data", fontsize=7.5,
                    color="0.25", va="center", arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.6})


def plot_noise_estimates(table) -> Figure:
    """Estimated against true noise rate (%), one point per run: BKD (below the Otsu threshold),
    cleanlab (flagged share) and, when the batch has kNN runs, kNN label voting (flagged share), with the
    diagonal. ``table``: :func:`bkd_core.book.results.collect_results`."""
    fig, ax = plt.subplots(figsize=(5, 4.4))
    for label, method, colour, marker in (("BKD (below threshold)", "bkd", BKD, "o"),
                                          ("cleanlab (flagged)", "cleanlab", ACCENT, "s"),
                                          ("kNN voting (flagged)", "knn", TEACHER, "^")):
        rows = table[table["method"] == method]
        if rows.empty:
            continue
        true = 100 * rows["true_noise_rate"].astype(float)
        est = 100 * rows["estimated_noise_rate"].astype(float)
        ax.scatter(true, est, color=colour, marker=marker, label=label, edgecolor="black", linewidth=0.5, zorder=3)
        if method == "bkd":
            _label_splits(ax, true, est, rows["split"])
    top = max(5.0, float(np.nanmax(100 * table["estimated_noise_rate"].astype(float).to_numpy(), initial=0)),
              float(np.nanmax(100 * table["true_noise_rate"].astype(float).to_numpy(), initial=0))) * 1.08
    ax.plot([0, top], [0, top], color="0.5", linestyle=":", label="estimate = truth")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="true noise rate (%)", ylabel="estimated noise rate (%)",
           title="How many labels are wrong?")
    _legend_below(fig, ax, ncols=2)
    return fig


def show_label_issues(images: np.ndarray, given: np.ndarray, clean: np.ndarray, predicted: np.ndarray,
                      names: Sequence[str], notes: Sequence[str] | None = None, ncols: int = 6,
                      title: str | None = None) -> Figure:
    """A grid of training images (uint8 [n, 32, 32, 3]) titled with the given (human) label, the clean
    label and a method's prediction, plus an optional note each (a score, a rank). Truly mislabelled
    images get a vermillion frame; ``title`` goes above the grid."""
    given, clean, predicted = (np.asarray(a) for a in (given, clean, predicted))
    titles = [f"given: {names[int(g)]}\nclean: {names[int(c)]}\nBKD: {names[int(p)]}"
              + (f"\n{notes[i]}" if notes is not None else "")
              for i, (g, c, p) in enumerate(zip(given, clean, predicted))]
    fig = _image_grid(images, titles, clean != given, ncols, (1.3, 1.95), 7.5)
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------
# Questions a reader of the paper asks
# --------------------------------------------------------------------------------------------


def plot_estimate_bias(biases: Mapping[str, object]) -> Figure:
    """BKD's signed noise-estimate error against the true noise rate, one point per run and one colour per batch,
    with each batch's model ``(1 - r) * c`` (the threshold flags every wrong label plus the share ``c`` of the
    clean ones that it flags on the clean split) as a line.

    ``biases``: label -> :func:`bkd_core.book.analysis.estimate_bias` of a batch (e.g. ``{"features": ...}``);
    a second batch adds its points and its line.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colours, markers = (BKD, CE, NOISY, CLEAN), ("o", "s", "^", "D")
    for i, (label, bias) in enumerate(biases.items()):
        colour = colours[i % len(colours)]
        ax.scatter(bias["true"], bias["error"], color=colour, marker=markers[i % len(markers)], s=30, alpha=0.8,
                   edgecolor="black", linewidth=0.4, zorder=3, label=f"{label}: measured")
        control = bias.attrs.get("control_rate", float("nan"))
        if np.isfinite(control):
            r = np.linspace(0, max(50.0, float(np.nanmax(bias["true"])) + 5), 50)
            ax.plot(r, (100 - r) * control / 100, color=colour, linestyle="--",
                    label=f"{label}: model, {control:.1f}% of clean images flagged")
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.set(xlabel="true noise rate (%)", ylabel="estimated - true noise rate (points)",
           title="Why the noise estimate is too high")
    _legend_below(fig, ax, ncols=1)
    return fig


def plot_seen_vs_held_out(table) -> Figure:
    """Precision, recall and F1 of a detector on the images the networks trained on against the held-out ones.
    ``table``: :func:`bkd_core.book.analysis.seen_vs_held_out`."""
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    metrics = ["precision", "recall", "F1"]
    x = np.arange(len(metrics))
    for k, (name, colour) in enumerate(zip(table.index, (CE, BKD))):
        values = [float(table.loc[name, m]) for m in metrics]
        bars = ax.bar(x + (k - 0.5) * 0.38, values, width=0.36, color=colour,
                      label=f"{name} ({int(table.loc[name, 'images']):,} images)")
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set(xticks=x, xticklabels=metrics, ylim=(0, 1.08), ylabel="G4 as a detector", xlabel="measure",
           title="Detection on images trained on vs held out")
    _legend_below(fig, ax, ncols=2)
    return fig


def plot_detection_by_confusion(table) -> Figure:
    """Per human confusion (true class labelled as another), the share of its mislabelled images a detector finds,
    beside the share of correctly labelled images of the given class it flags. ``table``:
    :func:`bkd_core.book.analysis.detection_by_confusion`."""
    fig, ax = plt.subplots(figsize=(7.0, 0.42 * max(len(table), 2) + 1.4))
    y = np.arange(len(table))[::-1]
    ax.barh(y + 0.2, 100 * table["found"], height=0.38, color=NOISY, label="mislabelled images found (recall)")
    ax.barh(y - 0.2, 100 * table["clean flagged"], height=0.38, color=CLEAN,
            label="correct labels of the given class flagged")
    ax.set(yticks=y, yticklabels=[f"{c} ({n:,})" for c, n in zip(table["confusion"], table["images"])],
           xlabel="%", ylabel="true class labelled as (mislabelled images)", xlim=(0, 100),
           title="Which human confusions BKD finds")
    _legend_below(fig, ax, ncols=1)
    return fig


def plot_detection_by_epoch(by_epoch, *, tipping: int | None = None, val_pick: int | None = None,
                            fixed: int | None = None) -> Figure:
    """Ranking ROC-AUC and G4 F1 of every epoch's scores, with the epochs a rule would pick marked.

    Parameters
    ----------
    by_epoch : pd.DataFrame
        :func:`bkd_core.book.analysis.detection_by_epoch` (epochs from 1).
    tipping, val_pick, fixed : int | None
        0-based epochs picked by the peak rule, by the best noisy-validation accuracy,
        and a fixed epoch; None: not marked.
    """
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    ax.plot(by_epoch["epoch"], by_epoch["auc"], color=BKD, marker="o", ms=3, label="ranking ROC-AUC")
    ax.plot(by_epoch["epoch"], by_epoch["f1"], color=NOISY, marker="s", ms=3, label="F1 of G4")
    for index, label, colour, style in ((tipping, "tipping point (peak rule)", ACCENT, "--"),
                                        (val_pick, "best noisy-validation accuracy", CLEAN, ":"),
                                        (fixed, "a fixed epoch", "0.4", "-.")):
        if index is not None:
            ax.axvline(index + 1, color=colour, linestyle=style, label=f"{label}: epoch {index + 1}")
    ax.set(xlabel="epoch", ylabel="detection", title="Detection at every epoch, the pair kept in phase 1")
    _integer_epochs(ax)
    _legend_below(fig, ax, ncols=2)
    return fig


#: The two students of :func:`plot_blindness`: column suffix of :func:`bkd_core.book.ablations.blindness_runs`
#: -> (legend label, colour, marker).
BLINDNESS_SERIES = {
    "": ("blind student (BKD)", BKD, "o"),
    "_sees": ("student sees the label (plain distillation)", TEACHER, "s"),
}
#: Panel titles of :func:`plot_blindness`, by measure of :data:`bkd_core.book.ablations.BLINDNESS_MEASURES`.
BLINDNESS_TITLES = {
    "g4_f1": "Finding the mislabelled images",
    "noise_estimate": "How many labels are wrong?",
    "tipping_epoch": "When the tipping point is found",
    "test_acc": "Accuracy on the clean test set",
}


def plot_blindness(runs, *, summary=None, splits: Sequence[str] | None = None,
                   measures: Sequence[str] | None = None) -> Figure:
    """BKD's blind student against a student that sees the given label (plain distillation), one panel per measure
    (detection F1 of the G4 mask, the noise estimate, the tipping epoch, the last epoch's test accuracy): per split
    the two side by side, each seed a dot, the mean over seeds a short line, plus or minus one standard deviation
    over seeds (ddof 1) a bar, so that a difference outside the seeds' spread shows as such. References: the F1 of
    flagging every image (the F1 panel) and the true noise rate (the noise panel), as dashed lines. Under each split
    of a judged measure, the blind student's :func:`~bkd_core.book.verdict.verdict` against the other ("beats",
    "ties", "loses"; "1 seed" where one seed allows none).

    Parameters
    ----------
    runs : pd.DataFrame
        :func:`bkd_core.book.ablations.blindness_runs`: one row per split and seed, ``true_noise`` and
        ``flag_all_f1`` in %, each measure ``m`` as ``m`` (blind) and ``m_sees``.
    summary : pd.DataFrame | None
        :func:`bkd_core.book.ablations.blindness_summary` of ``runs`` (its means, spreads and verdicts);
        None: computed here.
    splits : Sequence[str] | None
        the splits shown, in order; a split without a pair of runs is marked "not here yet". None: those of
        ``runs``, in CIFAR-N order.
    measures : Sequence[str] | None
        the panels, keys of :data:`~bkd_core.book.ablations.BLINDNESS_MEASURES`; None: all four, in a 2 x 2 grid.

    Returns
    -------
    Figure
        one panel (axes) per measure.
    """
    import pandas as pd

    from .ablations import BLINDNESS_MEASURES, blindness_summary
    from .results import ordered_splits
    from .verdict import NOT_HERE

    summary = blindness_summary(runs) if summary is None else summary
    splits = list(ordered_splits(runs["split"]) if splits is None else splits)
    measures = list(BLINDNESS_MEASURES if measures is None else measures)
    unknown = [m for m in measures if m not in BLINDNESS_MEASURES]
    if unknown:
        raise ValueError(f"plot_blindness cannot draw {unknown}: choose measures among {list(BLINDNESS_MEASURES)}")
    ncols = 2 if len(measures) > 1 else 1
    nrows = -(-len(measures) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(8.4, 3.1 * nrows + 0.6), squeeze=False)
    for ax in axes.flat[len(measures):]:  # an odd number of panels leaves one cell of the grid empty
        ax.remove()
    judged = summary.set_index(["split", "measure"])["verdict"] if len(summary) else pd.Series(dtype=str)
    x = np.arange(len(splits))
    half = 0.19  # each student's distance from the split's centre
    for ax, measure in zip(axes.flat, measures):
        ticks = []
        for k, split in enumerate(splits):
            rows = runs[runs["split"] == split].sort_values("seed")
            if not len(rows):
                ax.text(k, 0.02, NOT_HERE, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                        fontsize=8, color="0.35")
                ticks.append(split)
                continue
            seeds = 0
            for j, (suffix, (label, colour, marker)) in enumerate(BLINDNESS_SERIES.items()):
                values = pd.to_numeric(rows[measure + suffix], errors="coerce").dropna().to_numpy(dtype=float)
                seeds = max(seeds, len(values))
                if not len(values):
                    continue
                centre = k + (2 * j - 1) * half
                jitter = np.linspace(-0.05, 0.05, len(values)) if len(values) > 1 else np.zeros(1)
                ax.scatter(centre + jitter, values, s=22, color=colour, marker=marker, alpha=0.85,
                           edgecolor="black", linewidth=0.4, zorder=3, label=label)
                ax.hlines(values.mean(), centre - 0.13, centre + 0.13, colors=colour, linewidth=2.4, zorder=4)
                if len(values) > 1:
                    ax.errorbar(centre, values.mean(), yerr=values.std(ddof=1), fmt="none", ecolor="black",
                                elinewidth=1.0, capsize=3, zorder=5)
            if not seeds and measure == "g4_f1":  # a split without a wrong label has no F1
                ax.text(k, 0.02, "no wrong label", transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                        fontsize=8, color="0.35")
            reference = {"g4_f1": ("flag_all_f1", "flag every image (F1 floor)", "--"),
                         "noise_estimate": ("true_noise", "true noise rate", ":")}.get(measure)
            if reference and seeds:
                column, label, style = reference
                level = pd.to_numeric(rows[column], errors="coerce").mean()
                if np.isfinite(level) and (measure != "g4_f1" or level > 0):
                    ax.hlines(level, k - 0.42, k + 0.42, colors="black", linestyles=style, linewidth=1.3, zorder=2,
                              label=label)
            said = judged.get((split, measure), "")
            if seeds == 1 and measure in ("g4_f1", "test_acc"):
                said = "1 seed"
            ticks.append(f"{split}\n{said}" if said else split)
        ax.set_xticks(x, ticks)
        ax.set_xlim(-0.6, len(splits) - 0.4)
        low, high = ax.get_ylim()
        if measure != "test_acc":  # a rate or an epoch: from zero; accuracies are read by their differences
            ax.set_ylim(0, max(high, 1.0) * 1.05)
        if measure == "tipping_epoch":
            ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set(title=BLINDNESS_TITLES.get(measure, measure), ylabel=BLINDNESS_MEASURES[measure][3],
               xlabel="CIFAR-10N split" + ("; under it, the blind student's verdict"
                                           if measure in ("g4_f1", "test_acc") else ""))
        ax.grid(axis="x", visible=False)
    axes.flat[0].errorbar([np.nan], [np.nan], yerr=[1.0], fmt="_", ms=14, mew=2.4, color="0.35", ecolor="black",
                          elinewidth=1.0, capsize=3, label="mean over seeds (line), one standard deviation either side")
    _legend_below(fig, axes, ncols=2)
    return fig


# --------------------------------------------------------------------------------------------
# Runs kept in phase 1 side by side (the `cnn` profile's diagnostic runs, chapters 2 and 4)
# --------------------------------------------------------------------------------------------

#: Colours and line styles of the runs compared in one panel, in order.
RUN_COLOURS = (BKD, TEACHER, CLEAN, ACCENT)
RUN_STYLES = ("-", "--", ":", "-.")


def _run_line(ax: Axes, k: int, values: np.ndarray, label: str, tipping: int | None) -> str:
    """Run ``k``'s curve (values [E], epochs from 1) in its colour and style, its 0-based ``tipping`` epoch starred
    (a legend entry says when there is none); returns the colour."""
    colour = RUN_COLOURS[k % len(RUN_COLOURS)]
    _line(ax, values, color=colour, linestyle=RUN_STYLES[k % len(RUN_STYLES)], marker="o", ms=2.5, label=label)
    if tipping is not None:
        ax.plot([tipping + 1], [values[tipping]], marker="*", ms=15, color=colour, markeredgecolor="black",
                linestyle="none", label=f"{label}: tipping point, epoch {tipping + 1}")
    else:
        ax.plot([], [], linestyle="none", label=f"{label}: no tipping point")
    return colour


def plot_student_curves(panels: Mapping[str, Mapping[str, tuple[Sequence[float], int | None]]]) -> Figure:
    """The student's mean max probability per epoch with the tipping point the official rule picks starred, one
    panel per entry of ``panels`` side by side, each on its own scale.

    Parameters
    ----------
    panels
        Panel title -> {run label: (curve float [E], 0-based tipping epoch or None)}.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (title, runs) in zip(axes[0], panels.items()):
        for k, (label, (curve, tipping)) in enumerate(runs.items()):
            _run_line(ax, k, np.asarray(curve, dtype=np.float64), label, tipping)
        ax.set(title=title, xlabel="epoch", ylabel="mean max softmax of S")
        _integer_epochs(ax)
    _legend_below(fig, axes, ncols=2)
    return fig


def plot_auc_by_epoch(runs: Mapping[str, tuple[Sequence[float], int | None, int | None]]) -> Figure:
    """The ranking ROC-AUC of the agreement score (mislabelled against clean images) per epoch of runs kept in
    phase 1, with the epoch the official rule picks starred and the best epoch ringed.

    Parameters
    ----------
    runs
        Run label -> (AUC per epoch, float [E], NaN where not scored; 0-based tipping epoch or None; 0-based best
        epoch or None).
    """
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for k, (label, (auc, tipping, best)) in enumerate(runs.items()):
        values = np.asarray(auc, dtype=np.float64)
        colour = _run_line(ax, k, values, label, tipping)
        if best is not None:
            ax.plot([best + 1], [values[best]], marker="o", ms=12, markerfacecolor="none", markeredgecolor=colour,
                    markeredgewidth=1.8, linestyle="none", label=f"{label}: best, epoch {best + 1}")
    ax.set(xlabel="epoch", ylabel="ROC-AUC, mislabelled vs clean",
           title="How well each epoch's agreement scores find the mislabelled images")
    _integer_epochs(ax)
    _legend_below(fig, ax, ncols=2)
    return fig


def plot_fit_by_epoch(runs: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                      test_acc: Mapping[str, Sequence[float]] | None = None) -> Figure:
    """Left: the share of correctly labelled (blue) and of mislabelled (vermillion) training images whose given
    label a network predicts in its training pass, per epoch, one line style per run. Right (with ``test_acc``):
    test accuracy per epoch of the runs given there.

    Parameters
    ----------
    runs
        Run label -> (share of the correctly labelled images fitted, float [E]; of the mislabelled ones, float
        [E]), fractions in [0, 1].
    test_acc
        Run label -> test accuracy per epoch, float [E'] in %.
    """
    fig, axes = plt.subplots(1, 2 if test_acc else 1, figsize=(10.5 if test_acc else 6.5, 3.8), squeeze=False)
    ax = axes[0, 0]
    for k, (label, (fit_clean, fit_mislabelled)) in enumerate(runs.items()):
        style = RUN_STYLES[k % len(RUN_STYLES)]
        _line(ax, 100 * np.asarray(fit_clean, dtype=np.float64), color=CLEAN, linestyle=style, marker="o", ms=2.5,
              label=f"{label}: correctly labelled")
        _line(ax, 100 * np.asarray(fit_mislabelled, dtype=np.float64), color=NOISY, linestyle=style, marker="o",
              ms=2.5, label=f"{label}: mislabelled")
    ax.set(xlabel="epoch", ylabel="% of images", ylim=(0, 102),
           title="Training images predicted as their given label")
    _integer_epochs(ax)
    if test_acc:
        ax = axes[0, 1]
        for k, (label, curve) in enumerate(test_acc.items()):
            _line(ax, curve, color=CE, linestyle=RUN_STYLES[k % len(RUN_STYLES)], marker="s", ms=2.5,
                  label=f"{label}: test accuracy")
        ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Accuracy on the clean test set")
        _integer_epochs(ax)
    _legend_below(fig, axes, ncols=2)
    return fig


# --------------------------------------------------------------------------------------------
# Appendix: one run end to end
# --------------------------------------------------------------------------------------------

__all__.append("plot_run_story")


def plot_run_story(bkd: Mapping[str, Sequence[float]], ce: Mapping[str, Sequence[float]] | None = None, *,
                   tipping: int | None = None, found_at: int | None = None) -> Figure:
    """One BKD run from its per-epoch curves (:func:`bkd_core.metrics.epoch_curves`), with the cross-entropy run of
    the same data when there is one: left, the share of correctly labelled (blue) and mislabelled (vermillion)
    training images whose given label the teacher (solid) and cross-entropy (dashed) predict; middle, the student's
    mean max probability in phase 1 with the tipping point starred; right, test accuracy of both. Phase 2 is shaded.

    Parameters
    ----------
    bkd, ce
        Curve name -> values per epoch, float [E] (``fit_clean``, ``fit_mislabelled`` as fractions;
        ``mean_max_student``; ``test_acc`` in %); ``ce`` None: no cross-entropy run to show.
    tipping, found_at
        BKD's 0-based tipping epoch and the epoch the rule saw it (None: no tipping point).
    """
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.9))
    n = len(bkd["mean_max_student"])
    runs = [("BKD teacher", bkd, "-")] + ([("cross-entropy", ce, "--")] if ce is not None else [])
    ax = axes[0]
    for label, curves, style in runs:
        for key, colour, group in (("fit_clean", CLEAN, "correctly labelled"),
                                   ("fit_mislabelled", NOISY, "mislabelled")):
            if key in curves:
                _line(ax, 100 * np.asarray(curves[key], dtype=np.float64), color=colour, linestyle=style, marker="o",
                      ms=2, label=f"{label}: {group}")
    ax.set(xlabel="epoch", ylabel="% of training images", ylim=(0, 102), title="Predicted as their given label")
    ax = axes[1]
    student = np.asarray(bkd["mean_max_student"], dtype=np.float64)
    phase1 = student if found_at is None else student[: found_at + 1]
    _line(ax, phase1, color=STUDENT, marker="o", ms=2.5, label="BKD student, phase 1")
    if tipping is not None and tipping < len(phase1):
        ax.plot([tipping + 1], [phase1[tipping]], marker="*", ms=15, color=ACCENT, markeredgecolor="black",
                linestyle="none", label=f"tipping point, epoch {tipping + 1}")
    ax.set(xlabel="epoch", ylabel="mean max softmax of S", title="The student's confidence (phase 1)")
    ax = axes[2]
    _line(ax, bkd["test_acc"], color=BKD, marker="o", ms=2.5, label="BKD (teacher + student)")
    if ce is not None and "test_acc" in ce:
        _line(ax, ce["test_acc"], color=CE, linestyle="--", marker="s", ms=2.5, label="cross-entropy baseline")
        n = max(n, len(ce["test_acc"]))
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Accuracy on the clean test set")
    for ax in (axes[0], axes[2]):
        _shade_phase2(ax, found_at, n, label="BKD phase 2")
    for ax in axes:
        _integer_epochs(ax)
    _legend_below(fig, axes, ncols=4)
    return fig


# --------------------------------------------------------------------------------------------
# Appendix: the official protocol beside training without augmentation (the `cnn` profile)
# --------------------------------------------------------------------------------------------

__all__.append("plot_augment_comparison")

#: Colour and marker of each protocol of :func:`plot_augment_comparison`, by its name in the table.
PROTOCOL_STYLES = {"official": (CLEAN, "official protocol (crop + flip)"),
                   "no augmentation": (ACCENT, "no augmentation")}


def plot_augment_comparison(table) -> Figure:
    """BKD with the official protocol beside BKD without augmentation, per split, in three panels: the F1 of the G4
    mask with the F1 of flagging every image (dashed, the floor); how far the noise estimate lands from the true
    rate (points), with the batch's 5-point target (dotted); the epochs trained up to the detection, with the
    minutes they took above each bar. A split whose run is not here says so ("not run yet", "not here") under its
    bars; a split without a wrong label has no F1 ("no wrong label").

    Parameters
    ----------
    table : pd.DataFrame
        :func:`bkd_core.book.cnn.augment_comparison`: one row per split and protocol.

    Returns
    -------
    Figure
        three panels (axes), one legend under them.
    """
    from .cnn import ESTIMATE_TOLERANCE, RUN_FULL, RUN_STOPPED

    splits = list(dict.fromkeys(table["split"]))
    rows = {(r["split"], r["protocol"]): r for r in table.to_dict("records")}
    protocols = [p for p in PROTOCOL_STYLES if any(k[1] == p for k in rows)]
    fig, axes = plt.subplots(1, 3, figsize=(12.5, 3.7))
    width = 0.36
    panels = (("g4_f1", "G4 mask: F1", "F1"), ("error", "Noise estimate: distance from the truth", "points"),
              ("epochs", "Epochs trained up to the detection", "epochs"))
    for protocol in protocols:  # first in the legend, even when no run of a protocol is here
        axes[0].add_patch(_swatch(*PROTOCOL_STYLES[protocol]))
    for ax, (measure, title, unit) in zip(axes, panels):
        for k, split in enumerate(splits):
            here = [rows[(split, p)] for p in protocols if (split, p) in rows]
            nothing = measure == "g4_f1" and any(r["true_noise"] == 0 for r in here)  # no F1 without a wrong label
            if nothing:
                ax.text(k, 0.02, "no wrong label", transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                        fontsize=8, color="0.35")
            for j, protocol in enumerate(protocols):
                row = rows.get((split, protocol))
                colour = PROTOCOL_STYLES[protocol][0]
                x = k + (j - (len(protocols) - 1) / 2) * width
                if row is None or row["status"] not in (RUN_FULL, RUN_STOPPED):  # its slot says why it is empty
                    if not nothing:
                        ax.text(x, 0.02, row["status"] if row is not None else "not here", rotation=90,
                                transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8,
                                color=colour)
                    continue
                value = (abs(row["estimated_noise"] - row["true_noise"]) if measure == "error" else row[measure])
                if not np.isfinite(value):
                    continue
                ax.bar(x, value, width=width * 0.92, color=colour, edgecolor="black", linewidth=0.5, zorder=3)
                text = (f"{value:.3f}" if measure == "g4_f1" else f"{value:.1f}" if measure == "error" else
                        f"{row['minutes']:.0f} min" if np.isfinite(row["minutes"]) else "")
                ax.annotate(text, (x, value), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                            fontsize=7)
            floor = [r["flag_all_f1"] for r in here if np.isfinite(r["flag_all_f1"])]
            if measure == "g4_f1" and floor and floor[0] > 0:
                ax.hlines(floor[0], k - 0.45, k + 0.45, colors="black", linestyles="--", linewidth=1.2, zorder=4,
                          label="flag every image (F1 floor)")
        if measure == "error":
            ax.axhline(ESTIMATE_TOLERANCE, color="black", linestyle=":", linewidth=1.2,
                       label=f"target: within {ESTIMATE_TOLERANCE:.0f} points")
        ax.set_xticks(np.arange(len(splits)), splits)
        ax.set_xlim(-0.6, len(splits) - 0.4)
        low, high = ax.get_ylim()
        ax.set_ylim(0, max(high, 1.0) * 1.12)
        ax.set(title=title, ylabel=unit, xlabel="CIFAR-10N split, seed 0")
        ax.grid(axis="x", visible=False)
    axes[2].yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    _legend_below(fig, axes, ncols=4)
    return fig
