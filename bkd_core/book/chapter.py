"""Small non-plotting helpers for the book's chapters (``chapters/*.ipynb``), re-exported as ``bkd_core.book``.

The chapters stay thin: they load data, ask :func:`bkd_core.book.cache.cached_run` for a run, call a
helper from here or :mod:`bkd_core.book.plots` and explain the result. Everything a chapter states as
a number is computed here (or in the chapter) and glued into the prose with :func:`glue`, or written into
one of the chapter's conclusions, shown with its numbers in the book and in the notebook alike (:func:`conclusion`).

What a chapter measures on a run (curves, the tipping point's robustness, detection tables) is in
:mod:`bkd_core.book.analysis`; what a batch shows, in :mod:`bkd_core.book.results`. This module is the
plumbing: Colab set-up, data and configuration, the run's settings as prose, tables, glue and conclusions.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PROFILES, BKDConfig, parse_assignments, resolve
from ..data import NoisyCIFAR, load_cifar_n
from .results import summary_cell, table_rows

__all__ = [
    "in_colab",
    "setup_colab",
    "colab_note",
    "load_data",
    "chapter_config",
    "parse_overrides",
    "repository_root",
    "find_results_dir",
    "batch_summary",
    "COMPARISON_ROWS",
    "profile_comparison",
    "peak_rule_runs",
    "config_table",
    "setup_text",
    "departures_text",
    "table",
    "GLUED",
    "CONCLUSION_METADATA",
    "glue",
    "render_conclusion",
    "conclusion",
    "hide_injected_parameters",
]

# Without ipywidgets, tqdm.auto warns on import inside a notebook and falls back to a text bar (on
# stderr, which the chapters' training cells hide). The warning would otherwise appear in the book.
warnings.filterwarnings("ignore", message="IProgress not found")

#: Settings shown side by side for the chosen profile and the paper profile.
CONFIG_FIELDS: tuple[str, ...] = ("model", "model_widths", "epochs", "train_size", "test_size", "val_ratio",
                                  "batch_size", "lr", "lr_step", "augment", "seed")


# --------------------------------------------------------------------------------------------
# Running the chapters
# --------------------------------------------------------------------------------------------


def in_colab() -> bool:
    """True inside Google Colab (its ``google.colab`` module is loaded in every Colab kernel)."""
    return "google.colab" in sys.modules


#: Where Colab keeps runs and data unless told otherwise (both are deleted with the runtime).
COLAB_DATA, COLAB_RUNS = "/content/data", "/content/runs"
#: Where runs go when a Colab reader keeps them on Google Drive.
COLAB_DRIVE, COLAB_DRIVE_RUNS = "/content/drive", "/content/drive/MyDrive/bkd-book/runs"
#: Where Colab keeps the label-free feature vectors (the ``features`` profile), on the runtime or on Drive.
COLAB_FEATURES, COLAB_DRIVE_FEATURES = "/content/features", "/content/drive/MyDrive/bkd-book/features"
#: The book's repository (as ``repository.url`` in ``_config.yml``) and where Colab clones it for its committed results.
REPOSITORY_URL, COLAB_CLONE = "https://github.com/bkd-book/bkd-book", "/content/bkd-book"


def setup_colab(images: Sequence[str] = ("cifar10",), labels: Sequence[str] = (), *, trains: bool = True,
                keep_runs_on_drive: bool = False, features: bool = False, results: bool = False) -> dict[str, str]:
    """The Colab set-up cell of a chapter: data folders, the run cache, downloads, and a note to the reader.

    Sets ``$BKD_DATA_DIR`` (default ``/content/data``) and, for a chapter that trains (``trains``),
    ``$BKD_RUN_CACHE``: ``/content/runs``, which Colab deletes with the runtime, or with
    ``keep_runs_on_drive`` Google Drive (mounted at ``/content/drive``; runs in ``MyDrive/bkd-book/runs``),
    where they outlive the runtime and a later session reuses them. A value set before is kept.
    Downloads the images with their CIFAR-N labels of ``images`` and the label files alone of
    ``labels`` (staged and checked, :func:`bkd_core.data.ensure_data`), then shows where everything is and how to
    keep the runs.

    With ``features`` (a chapter whose default profile is ``features``) it also sets ``$BKD_FEATURE_CACHE``,
    where the first training run keeps the label-free feature vectors it computes once (a few minutes):
    ``/content/features``, or ``MyDrive/bkd-book/features`` on Google Drive with ``keep_runs_on_drive``.

    With ``results`` (a chapter that reads the repository's committed batches) it clones the repository
    (:data:`REPOSITORY_URL`, shallow) into ``/content/bkd-book`` unless it is there, and works in its
    ``chapters`` folder, where the chapter's relative ``results_dir`` is found.

    Returns the folders used: ``{"data": ..., "runs": ..., "features": ..., "results": ...}`` (``runs`` only
    when ``trains``, ``features`` only with ``features``, ``results`` only with ``results``).

    Outside Colab it refuses at once, before anything is written, downloaded or cloned: on your own machine the
    data folder is yours to choose (``BKD_DATA_DIR``, ``python -m bkd_core data``).

    Raises
    ------
    RuntimeError
        not inside Google Colab; or with ``results``, the repository could not be cloned (says
        what to check).
    """
    if not in_colab():
        raise RuntimeError("setup_colab() sets up a Google Colab runtime (it writes into /content) and runs only "
                           "inside Colab; on your own machine, set BKD_DATA_DIR to a data folder and run "
                           "`python -m bkd_core data` (or `make book`)")
    from ..data import ensure_data

    on_drive = trains and keep_runs_on_drive and "BKD_RUN_CACHE" not in os.environ
    if on_drive:
        from google.colab import drive  # only inside Colab

        drive.mount(COLAB_DRIVE)
        os.environ["BKD_RUN_CACHE"] = COLAB_DRIVE_RUNS
    folders = {"data": os.environ.setdefault("BKD_DATA_DIR", COLAB_DATA)}
    if trains:
        folders["runs"] = os.environ.setdefault("BKD_RUN_CACHE", COLAB_RUNS)
        Path(folders["runs"]).mkdir(parents=True, exist_ok=True)
    if trains and features:
        folders["features"] = os.environ.setdefault("BKD_FEATURE_CACHE",
                                                    COLAB_DRIVE_FEATURES if on_drive else COLAB_FEATURES)
    if results:
        folders["results"] = _clone_repository()
    ensure_data(images=images, labels=labels)
    _show_markdown(colab_note(folders, images, labels))
    return folders


def _clone_repository() -> str:
    """Clone :data:`REPOSITORY_URL` into :data:`COLAB_CLONE` (unless it is there) and work in its chapters."""
    import subprocess

    clone = Path(COLAB_CLONE)
    if not (clone / "_toc.yml").is_file():
        subprocess.run(["git", "clone", "-q", "--depth", "1", REPOSITORY_URL, str(clone)], check=False)
    if not (clone / "chapters").is_dir():
        raise RuntimeError(f"could not clone {REPOSITORY_URL} into {clone}: this chapter reads the committed results "
                           "kept there; check the runtime's internet connection and run the cell again")
    os.chdir(clone / "chapters")  # the chapter's relative results_dir is found in the clone
    return str(clone / "reproductions")


def colab_note(folders: dict[str, str], images: Sequence[str] = ("cifar10",), labels: Sequence[str] = ()) -> str:
    """What :func:`setup_colab` tells the reader (Markdown): where the data and the runs are, and how to keep
    the runs."""
    names = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
    got = [f"{names.get(d, d)} with its CIFAR-N labels" for d in images]
    got += [f"the {names.get(d, d)}N labels" for d in labels if d not in images]
    lines = [f"Data: {', '.join(got) or 'none'} in `{folders['data']}`."]
    runs = folders.get("runs")
    if runs is None:
        lines.append("This chapter trains nothing: it reads the repository's committed results"
                     + (f" (cloned into `{folders['results']}`)." if folders.get("results") else "."))
    elif runs.startswith(COLAB_DRIVE):
        lines.append(f"Training runs go to `{runs}` on your Google Drive: they outlive this runtime, and the other "
                     "chapters (with the same parameters) reuse them.")
    else:
        lines.append(f"Training runs go to `{runs}`, which Colab deletes when the runtime ends. To keep them, set "
                     "`KEEP_RUNS_ON_DRIVE = True` in the set-up cell (mounts Google Drive; runs go to "
                     f"`{COLAB_DRIVE_RUNS}`), or set `BKD_RUN_CACHE` to a folder of your own before it runs.")
    if folders.get("features"):
        lines.append("With the default profile, `features`, the first training run computes label-free feature vectors "
                     "of the 60,000 images once (about 3-5 minutes on 2 cores) and caches them in "
                     f"`{folders['features']}`; later runs and chapters reuse them.")
    return "\n\n".join(lines)


def _show_markdown(text: str, metadata: dict | None = None) -> None:
    from IPython.display import Markdown, display

    display(Markdown(text), metadata=metadata)


def load_data(dataset: str = "cifar10", split: str = "worst", data_dir: str | os.PathLike | None = None,
              *, download: bool | None = None) -> NoisyCIFAR:
    """The chapter's data: :func:`bkd_core.data.load_cifar_n`, or a synthetic stand-in.

    Parameters
    ----------
    dataset : str
        ``"cifar10"`` / ``"cifar100"``, or ``"synthetic"`` for
        :func:`bkd_core.synthetic.make_synthetic_cifar_n` (2,000 training and 500 test images,
        40% of the labels flipped; ``split`` is ignored): lets every chapter run without CIFAR.
    split : str
        CIFAR-N split (``"worst"``, ``"aggre"``, ..., ``"noisy100"``).
    data_dir : str | os.PathLike | None
        data folder; None means ``$BKD_DATA_DIR``, else ``~/.cache/bkd_core/data``.
    download : bool | None
        fetch missing files first; None (default) means only inside Colab.
    """
    if dataset == "synthetic":
        from ..synthetic import make_synthetic_cifar_n

        return make_synthetic_cifar_n(n_train=2000, n_test=500, noise_rate=0.4, seed=0)
    return load_cifar_n(dataset, split, data_dir, download=in_colab() if download is None else download)


def chapter_config(profile: str = "features", *, seed: int = 0, train_size: int | None = None,
                   epochs: int | None = None, device: str = "auto",
                   overrides: dict[str, Any] | str | Sequence[str] | None = None) -> BKDConfig:
    """The run configuration of a chapter: the named profile with the parameters cell's overrides.

    ``train_size`` / ``epochs`` None keep the profile's values; ``overrides`` may set any other
    :class:`~bkd_core.config.BKDConfig` field (lists are accepted for tuples), as a dict or as JSON
    text (what ``papermill -p overrides '{"otsu_criterion": "classic"}'`` passes), or as ``FIELD=VALUE``
    assignments as the command line's ``--set`` takes them. The one resolver, :func:`bkd_core.config.resolve`,
    checks every field. Chapters that pass the same arguments get the same configuration, hence the same cached
    runs.
    """
    changes: dict[str, Any] = {"seed": seed, "device": device}
    if train_size is not None:
        changes["train_size"] = train_size
    if epochs is not None:
        changes["epochs"] = epochs
    return resolve(profile, {**changes, **parse_overrides(overrides)})


def parse_overrides(overrides: dict[str, Any] | str | Sequence[str] | None) -> dict[str, Any]:
    """``overrides`` of a parameters cell as a dict: a dict as it is, JSON text (papermill's ``-p``
    passes text) parsed, a list of ``FIELD=VALUE`` assignments typed by
    :func:`bkd_core.config.parse_assignments`, None or ``""`` as ``{}``.

    Raises
    ------
    ValueError
        text that is not a JSON object, a bad assignment, or another type (says what was given).
    """
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    if isinstance(overrides, (list, tuple)) and all(isinstance(pair, str) for pair in overrides):
        return parse_assignments(overrides, option="overrides")
    if isinstance(overrides, str):
        if not overrides.strip():
            return {}
        try:
            parsed = json.loads(overrides)
        except json.JSONDecodeError as exc:
            raise ValueError("overrides must be a dict or a JSON object such as "
                             f"'{{\"otsu_criterion\": \"classic\"}}', got {overrides!r} ({exc})") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"overrides must be a JSON object (field: value), got {overrides!r}")
        return parsed
    raise ValueError("overrides must be a dict or JSON text (or a list of FIELD=VALUE assignments), got "
                     f"{type(overrides).__name__}: {overrides!r}")


def _package_dir() -> Path:
    """The folder of this ``bkd_core`` package (this module is ``bkd_core/book/chapter.py``)."""
    return Path(__file__).resolve().parents[1]


def repository_root(start: str | os.PathLike | None = None) -> Path | None:
    """The book's repository (the folder holding ``_toc.yml``): searched upwards from ``start`` (default:
    the working directory), then from this ``bkd_core`` package's folder (a checkout or an editable
    install). None when neither lies inside one (e.g. ``bkd_core`` installed from PyPI or git)."""
    for origin in (Path(start or os.getcwd()).resolve(), _package_dir()):
        for folder in (origin, *origin.parents):
            if (folder / "_toc.yml").is_file() and (folder / "bkd_core").is_dir():
                return folder
    return None


def repository_paths(path: str | os.PathLike) -> list[Path]:
    """Where a folder ``path`` named for the book may be, in the order to look: ``path`` itself when absolute;
    else in the working directory, then in the repository (:func:`repository_root`) when there is one."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return [path]
    root = repository_root()
    return [Path.cwd() / path] + ([root / path] if root is not None else [])


def find_results_dir(results_dir: str | os.PathLike) -> Path:
    """The reproduction batch folder ``results_dir`` (holding a batch summary) from any working directory.

    An absolute path is used as it is; a relative one is looked up in the working directory first,
    then in the repository (:func:`repository_root`), so the results chapter's default
    ``reproductions/features`` works with papermill from the repository, from ``chapters/`` or elsewhere.

    Raises
    ------
    FileNotFoundError
        no batch summary there; says where it looked and how to fix it.
    """
    candidates = repository_paths(results_dir)
    from ..batch import SUMMARY, BatchFolder

    for candidate in candidates:
        if BatchFolder(candidate).has_summary():
            return candidate.resolve()
    looked = ", ".join(str(c) for c in candidates)
    hint = "" if repository_root() is not None else (
        f" (no repository found from the working directory or from bkd_core's location {_package_dir()}: clone it, "
        "or pass an absolute path)")
    raise FileNotFoundError(f"no reproduction batch ({SUMMARY}) for results_dir={str(results_dir)!r}: looked in "
                            f"{looked}{hint}. Pass the folder written by `bkd reproduce --out DIR`, e.g. "
                            f"papermill -p results_dir /path/to/reproductions/features")


def batch_summary(results_dir: str | os.PathLike, split: str | None = None):
    """:func:`bkd_core.book.results.summarize` of the reproduction batch ``results_dir`` (found as
    :func:`find_results_dir` finds it), or None when there is no such batch, no finished run in it, or (with
    ``split``) no run of that split: for a chapter that compares with a committed batch when it is there."""
    from .results import collect_results, summarize

    try:
        folder = find_results_dir(results_dir)
    except FileNotFoundError:
        return None
    summary = summarize(collect_results(folder))
    if not len(summary) or (split is not None and split not in set(summary["split"])):
        return None
    return summary


#: Rows of :func:`profile_comparison`: those of :data:`bkd_core.book.results.SPLIT_TABLE_ROWS` with these labels.
COMPARISON_ROWS = table_rows((
    "true noise rate (%)", "BKD estimated noise rate (%)", "BKD tipping point from the peak rule (runs)",
    "BKD tipping epoch (from 1)", "BKD F1, G4 (%)", "flag everything F1 (%)", "BKD test accuracy, last epoch (%)",
    "CE test accuracy, last epoch (%)", "CE test accuracy, best epoch (%, optimistic)"))


def profile_comparison(run_metrics: Mapping[str, Mapping[str, Any]], batches: Mapping[str, Any], split: str,
                       run_label: str = "this run"):
    """One run of a chapter beside reproduction batches on the same split, as a table of formatted cells.

    Parameters
    ----------
    run_metrics : Mapping[str, Mapping[str, Any]]
        ``{"bkd": metrics, "ce": metrics}`` of the chapter's runs (``RunResult.metrics``).
    batches : Mapping[str, Any]
        column label -> :func:`batch_summary` of a batch (None: the batch is not there, its column
        shows "–"), e.g. ``{"cnn batch": ..., "features batch": ...}``.
    split : str
        the split whose batch rows are shown.
    run_label : str
        the run's column label.

    Rows :data:`COMPARISON_ROWS`; a batch cell is :func:`~bkd_core.book.results.summary_cell` ("mean ± std" over
    its seeds, the peak-rule row "k of n"), the run's own cell its value (the peak-rule row "yes",
    "no: fallback" or "no tipping point").
    """
    import pandas as pd

    from .results import mean_std

    def run_cell(method: str, metric: str, scale, digits: int) -> str:
        metrics = run_metrics.get(method, {})
        if metric == "tipping_from_peak":
            rule = metrics.get("tipping_rule")
            if metrics.get("tipping_epoch") is None:
                return "no tipping point"
            return "yes" if rule == "peak" else f"no: {rule}"
        value = metrics.get(metric)
        if value is None:
            return "–"
        if metric == "tipping_epoch":
            return str(int(value) + 1)  # one run: an epoch, counted from 1
        return mean_std(float(value), float("nan"), scale, digits)

    def batch_cell(summary, method: str, metric: str, scale, digits: int) -> str:
        return "–" if summary is None else summary_cell(summary, split, method, metric, scale, digits)

    columns = {run_label: {label: run_cell(m, k, sc, d) for label, m, k, sc, d in COMPARISON_ROWS}}
    for name, summary in batches.items():
        columns[name] = {label: batch_cell(summary, m, k, sc, d) for label, m, k, sc, d in COMPARISON_ROWS}
    return pd.DataFrame(columns)


def peak_rule_runs(summary, split: str) -> tuple[int, int] | None:
    """``(k, n)``: in ``k`` of the ``n`` BKD runs of ``split`` in a batch's :func:`batch_summary` the tipping point
    came from the official peak rule (the others took the fallback or found none); None without such runs."""
    if summary is None or not len(summary):
        return None
    row = summary[(summary["split"] == split) & (summary["method"] == "bkd")]
    if row.empty or not np.isfinite(row["tipping_from_peak_mean"].iloc[0]):
        return None
    n = int(row["seeds"].iloc[0])
    return round(float(row["tipping_from_peak_mean"].iloc[0]) * n), n


def config_table(config: BKDConfig, fields: Sequence[str] = CONFIG_FIELDS):
    """A pandas DataFrame of the settings that matter: this run's and the ``paper`` profile's."""
    import pandas as pd

    paper = PROFILES["paper"]

    def show(cfg: BKDConfig, f: str) -> str:
        if f == "model_widths" and cfg.model == "preresnet18":  # the only network without configurable widths
            return "(fixed)"
        return _show(f, getattr(cfg, f))

    def inputs(cfg: BKDConfig) -> str:
        return f"feature vectors ({cfg.features})" if cfg.features else "pixels"

    rows = {"input": [inputs(config), inputs(paper)]}
    rows.update({f: [show(config, f), show(paper, f)] for f in fields})
    rows["device"] = [str(config.resolved_device()), "a GPU"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=[f"this run ({config.profile})", "paper"])


_NONE_MEANS = {"train_size": "all 50,000", "test_size": "all 10,000", "lr_step": "none (constant lr)"}


def _show(field: str, value: Any) -> str:
    if value is None:
        return _NONE_MEANS.get(field, "none")
    if isinstance(value, tuple):
        return "/".join(str(v) for v in value)
    return str(value)


def _field(config: BKDConfig | Mapping[str, Any], name: str) -> Any:
    """A field of a BKDConfig or of its dict; a dict written before the field existed gets its default."""
    if isinstance(config, Mapping):
        return config[name] if name in config else BKDConfig.__dataclass_fields__[name].default
    return getattr(config, name)


def setup_text(config: BKDConfig | Mapping[str, Any], n_images: int | None = None) -> str:
    """What a run of ``config`` trains on what, as a phrase for the prose (plain text, for ``{glue:text}``).

    ``config``: a :class:`~bkd_core.config.BKDConfig` or its dict (a run's ``metrics.json``);
    ``n_images``: the size of the full training set, for "all 50,000 training images". For example
    ``"MLPs with one hidden layer of 1,024 units on label-free feature vectors of all 50,000 training
    images, 30 epochs, no augmentation, a constant learning rate"``.
    """
    model, widths = _field(config, "model"), tuple(_field(config, "model_widths"))
    if model == "mlp":
        layers = "one hidden layer" if len(widths) == 1 else f"{len(widths)} hidden layers"
        net = f"MLPs with {layers} of {'/'.join(f'{w:,}' for w in widths)} units"
    elif model == "small_cnn":
        net = f"small CNNs ({'/'.join(str(w) for w in widths)} channels)"
    elif model == "preresnet18":
        net = "the official PreResNet18"
    elif model == "whitened_cnn":
        net = f"airbench-class CNNs ({'/'.join(str(w) for w in widths)} channels after a fixed whitening layer)"
    else:
        net = f"{model} networks"
    inputs = "label-free feature vectors" if _field(config, "features") else "the pixels"
    size = _field(config, "train_size")
    if size is None:
        images = f"all {n_images:,} training images" if n_images else "all training images"
    else:
        images = f"a random {size:,}-image subset of the training images"
    augment = "with augmentation" if _field(config, "augment") else "no augmentation"
    lr = "a constant learning rate" if _field(config, "lr_step") is None else "a step learning rate"
    return f"{net} on {inputs} of {images}, {_field(config, 'epochs')} epochs, {augment}, {lr}"


def departures_text(config: BKDConfig | Mapping[str, Any]) -> str:
    """Where ``config`` departs from the official code in its switchable behaviours (quirks 2 and 5 of the
    appendix), as a sentence (plain text); a BKDConfig or its dict."""
    departures = []
    if _field(config, "detach_robust_target"):
        departures.append("the robust target of phase 2 detached (quirk 2)")
    fallback = _field(config, "tipping_fallback")
    if fallback is not None:
        departures.append(f"a fallback that takes epoch {int(fallback) + 1} as the tipping point when none was found "
                          f"after {int(fallback) + int(_field(config, 'tipping_window'))} epochs (quirk 5)")
    if not departures:
        return ("It follows the official code in both switchable behaviours that the profiles change: the robust "
                "target of phase 2 is not detached (quirk 2), and the tipping point comes from the peak rule alone, "
                "without a fallback (quirk 5).")
    return "Where it departs from the official code (see the appendix): " + "; ".join(departures) + "."


def table(frame, formats: str | dict[str, str] | None = None, *, index: bool = True):
    """``frame`` (a pandas DataFrame) ready for display: number formats, the book theme's table style.

    ``formats``: a format string for all cells or ``{column: format}``; ``index=False`` hides the index.
    Cells and labels are HTML-escaped: a name holding markup (a split, a run) shows as text.
    """
    styler = frame.rename_axis(index=None).style.format(na_rep="–", escape="html")
    if formats is not None:
        styler = styler.format(formats, na_rep="–", escape="html")
    styler = styler.format_index(escape="html", axis=0).format_index(escape="html", axis=1)
    if not index:
        styler = styler.hide(axis="index")
    return styler.set_table_attributes('class="dataframe"')


#: Every value glued in this kernel, by name (what :func:`conclusion` fills in).
GLUED: dict[str, Any] = {}

#: The key of a conclusion's output metadata, under which :func:`conclusion` records the values passed to it.
CONCLUSION_METADATA = "bkd_core"

#: A field of a conclusion: ``{name}`` or ``{name:spec}`` (``spec`` a format spec such as ``.1f``).
FIELD = re.compile(r"\{(\w+)(?::([^{}]*))?\}")


def glue(name: str, value: Any, display: bool = False) -> None:
    """Glue ``value`` under ``name`` for MyST-NB (``{glue:text}`name:.1f```` in the prose).

    numpy scalars become Python numbers (so format specs work on them). The value is also kept in
    :data:`GLUED`, from which :func:`conclusion` fills in the chapter's sentences with their numbers.
    Without ``myst_nb`` (e.g. Colab) only that is done.
    """
    if isinstance(value, np.generic):
        value = value.item()
    GLUED[name] = value
    try:
        from myst_nb import glue as _glue
    except ImportError:  # pragma: no cover - Colab without myst-nb
        return
    _glue(name, value, display=display)


def render_conclusion(text: str, values: Mapping[str, Any] | None = None) -> str:
    """``text`` (Markdown) with each field ``{name}`` / ``{name:spec}`` replaced by ``format(values[name], spec)``.

    ``values`` defaults to :data:`GLUED` (everything glued so far in this kernel). As in :meth:`str.format`,
    ``{{`` and ``}}`` stand for literal braces; other text stays as it is.

    Raises
    ------
    KeyError
        a field names a value that is not in ``values`` (names it).
    """
    values = GLUED if values is None else values

    def fill(match: re.Match) -> str:
        name, spec = match.group(1), match.group(2)
        if name not in values:
            raise KeyError(f"{name!r} is not glued (yet): glue it with book.glue, or pass it to book.conclusion, "
                           "before the conclusion that quotes it")
        return format(values[name], spec or "")

    protected = text.replace("{{", "\x00").replace("}}", "\x01")
    return FIELD.sub(fill, protected).replace("\x00", "{").replace("\x01", "}")


def conclusion(text: str, **values: Any) -> None:
    """Show a conclusion of the chapter, a sentence with its numbers, as the cell's Markdown output.

    ``text`` is Markdown with fields ``{name}`` / ``{name:spec}``, filled in from the values glued so far
    (:data:`GLUED`) and ``values`` (:func:`render_conclusion`). A chapter writes each conclusion once, in a
    code cell tagged ``remove-input``: the HTML book shows the cell's Markdown output (MyST-NB renders it),
    and so do Colab, Jupyter and a notebook executed with papermill, where glue roles in the prose would stay
    unresolved. A value that only the conclusion quotes is passed in ``values`` rather than glued; these values
    (numbers and strings) are recorded in the output's metadata, ``{CONCLUSION_METADATA: {"values": values}}``,
    so that a test of the executed notebook can check the sentence against them. Returns None, so that the
    cell's value does not show the sentence a second time.
    """
    values = {name: value.item() if isinstance(value, np.generic) else value for name, value in values.items()}
    _show_markdown(render_conclusion(text, {**GLUED, **values}),
                   {CONCLUSION_METADATA: {"values": values}} if values else None)


# --------------------------------------------------------------------------------------------
# Papermill outputs
# --------------------------------------------------------------------------------------------


def hide_injected_parameters(path: str | os.PathLike, tag: str = "remove-cell") -> int:
    """Tag papermill's ``injected-parameters`` cells of a notebook with ``tag`` (in place).

    For building HTML from notebooks executed with papermill: MyST-NB shows every cell unless
    tagged, and papermill's injected cell only carries ``injected-parameters``. The default removes it
    from the page, as the chapters' own parameters cell is, so that nothing stands before a chapter's finding.
    Returns the number of cells tagged.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    count = 0
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and tag not in tags:
            tags.append(tag)
            count += 1
    if count:
        nbformat.write(nb, path)
    return count
