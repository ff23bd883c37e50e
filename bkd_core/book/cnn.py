"""The `cnn` profile's committed evidence, read for the chapters (nothing here trains).

Three sources, all committed to the repository (the batches run by run, as their runs finish):

- the diagnostic runs (:data:`DIAGNOSTICS`): BKD on `worst` and `aggre` kept in phase 1 past the tipping rule, with
  the official protocol and without augmentation (:data:`PHASE1_RUNS`, written by
  ``benchmarks/cnn_diagnostics.py --json``), and cross-entropy on the clean labels (:data:`CE_CLEAN`), each with its
  per-epoch curves (:func:`bkd_core.metrics.epoch_curves`). :func:`read_diagnostics` checks every field and answers
  a file that is not what it should be with one sentence naming it.
- the reproduction batch (:data:`BATCH`), read through :class:`bkd_core.batch.BatchFolder` by :func:`batch_state`:
  while it runs, or before it is there, the state says how many of its planned runs have finished; a finished
  run's curves, results and tipping-epoch scores are read from it, and :func:`tipping_detection` splits those scores
  as the run did. Each method of a run is committed as soon as it has trained, before the run has finished:
  :meth:`BatchState.stage` reads one (:class:`Stage`, :func:`read_stage`, which reads a run folder of the chapters'
  cache as well), and :func:`pixel_check` sets a run's BKD and cross-entropy beside the `features` proxy.
- the batch without augmentation (:data:`NOAUG_BATCH`), the switch that runs beside the official protocol:
  :func:`augment_comparison` sets its BKD detections beside the official batch's, split by split.

Epochs are indices from 0 here, as everywhere in ``bkd_core`` (``tipping`` of a run is such an index); the curves'
own ``epoch`` entry counts from 1, as the book does.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..batch import BatchFolder
from ..batch.files import curve_arrays, read_run_json
from ..batch.folder import STOPPED_AT_DETECTION, COLUMNS, MethodStage, read_method_stage, run_name, shown_metrics
from ..config import PROFILES, BKDConfig
from ..errors import DamagedFileError
from ..method import Detection, detect, find_tipping_point
from ..metrics import detection_scores, flag_all_f1
from .chapter import repository_paths

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DIAGNOSTICS", "PHASE1_RUNS", "CE_CLEAN", "BATCH", "OFFICIAL", "NO_AUGMENT", "NO_AUGMENT_AGGRE",
    "CURVE_KEYS", "WINDOW", "FALL_EPOCHS", "DiagnosticRun", "Diagnostics", "find_evidence", "read_diagnostics",
    "diagnostics",
    "BatchState", "batch_state", "TippingDetection", "tipping_detection",
    "Stage", "read_stage", "PIXEL_CHECK_ROWS", "ESTIMATE_TOLERANCE", "pixel_check",
    "NOAUG_BATCH", "PROTOCOLS", "AUGMENT_SPLITS", "AUGMENT_COLUMNS", "TURN_FALL", "TIE_F1", "TIE_POINTS",
    "RUN_FULL", "RUN_STOPPED", "RUN_NO_TIPPING", "RUN_NOT_YET", "BATCH_NOT_HERE", "augment_comparison",
    "augment_comparison_text", "augment_comparison_shown",
]

#: The diagnostic runs' folder, relative to the repository.
DIAGNOSTICS = "reproductions/cnn-diagnostics"
#: ... its BKD runs kept in phase 1 (a list of runs) ...
PHASE1_RUNS = "phase1_runs.json"
#: ... and cross-entropy on the clean labels (one run's curves).
CE_CLEAN = "ce_clean_curves.json"
#: The `cnn` reproduction batch, relative to the repository.
BATCH = "reproductions/cnn"
#: The splits each method of :data:`BATCH` is planned on: BKD on all six CIFAR-10N splits (on rand1-3 stopped right
#: after its detection), cross-entropy and confident learning on clean, aggre and worst (docs/profiles.md, "The
#: `cnn` batch: plan and budget").
BATCH_PLAN: dict[str, tuple[str, ...]] = {"bkd": ("clean", "aggre", "rand1", "rand2", "rand3", "worst"),
                                          "ce": ("clean", "aggre", "worst"), "cleanlab": ("clean", "aggre", "worst")}
#: Names of the diagnostic runs: the official protocol on `worst`; without augmentation on `worst` and `aggre`.
OFFICIAL, NO_AUGMENT, NO_AUGMENT_AGGRE = "off-worst", "noaug-worst", "noaug-aggre"
#: Curves every diagnostic BKD run holds, one value (or null) per epoch.
CURVE_KEYS = ("epoch", "mean_max_student", "val_acc", "test_acc", "fit_mislabelled", "fit_clean", "agreement_auc")
#: Curves the cross-entropy run holds.
CE_CURVE_KEYS = ("epoch", "val_acc", "test_acc", "fit_clean")
#: Numbers a diagnostic run records about the epoch the official rule picks (when it picks one).
DETECTION_KEYS = ("found_at_epoch", "fall_within_5", "estimated_noise_rate", "true_noise_rate", "g4_f1",
                  "below_threshold_f1", "flag_all_f1", "auc_at_tip", "test_acc_at_tip")
#: The official rule's window (epochs on each side, the `cnn` profile's), which the diagnostic runs' recorded
#: tipping epochs come from.
WINDOW = PROFILES["cnn"].tipping_window
#: How many epochs after the tipping epoch ``fall_within_5`` looks at (how far the student's curve falls there).
FALL_EPOCHS = 5
#: What restores a damaged file of the diagnostic runs.
_RESTORE = "restore it from the repository (git checkout) or rewrite it with benchmarks/cnn_diagnostics.py --json"


def find_evidence(path: str | os.PathLike) -> Path | None:
    """The folder ``path`` from any working directory (:func:`bkd_core.book.chapter.repository_paths`).

    Returns
    -------
    Path or None
        The folder, resolved; None when it is in none of those places (e.g. in Colab, where the repository is not
        cloned).
    """
    return next((c.resolve() for c in repository_paths(path) if c.is_dir()), None)


# --------------------------------------------------------------------------------------------
# The diagnostic runs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiagnosticRun:
    """One BKD run kept in phase 1 past the tipping rule, as :data:`PHASE1_RUNS` records it.

    ``curves`` maps each curve's name to float64 ``[epochs]`` (NaN where an epoch has no value); ``tipping`` is the
    0-based epoch the official rule (window :data:`WINDOW`) picks on ``mean_max_student``, ``found_at`` where it
    sees it, None when it picks none; ``detection`` holds the numbers of :data:`DETECTION_KEYS` measured at ``tipping``
    (noise rates and F1 as fractions, test accuracy in %; empty without a tipping point); ``best_auc_epoch`` is
    the 0-based epoch whose agreement scores rank mislabelled against clean images best.
    """

    name: str
    split: str
    augment: bool
    widths: tuple[int, ...]
    weight_decay: float
    curves: dict[str, np.ndarray]
    tipping: int | None
    found_at: int | None
    best_auc_epoch: int
    best_auc: float
    epoch_time_s: float = math.nan
    detection: dict[str, float] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        """How many epochs the run trained in phase 1."""
        return len(self.curves["epoch"])

    @property
    def protocol(self) -> str:
        """``"official protocol"`` or ``"no augmentation"``, as a label."""
        return "official protocol" if self.augment else "no augmentation"

    def at(self, key: str, epoch: int | None) -> float:
        """Curve ``key`` at the 0-based ``epoch`` (NaN for None)."""
        return math.nan if epoch is None else float(self.curves[key][epoch])


@dataclass(frozen=True)
class Diagnostics:
    """The diagnostic runs (:data:`PHASE1_RUNS`, by name) and cross-entropy on the clean labels (:data:`CE_CLEAN`:
    curve name -> float64 ``[epochs]``), read from ``folder``."""

    folder: Path
    runs: dict[str, DiagnosticRun]
    ce_clean: dict[str, np.ndarray]

    def run(self, name: str) -> DiagnosticRun:
        """The run called ``name`` (e.g. :data:`OFFICIAL`).

        Raises
        ------
        KeyError
            No such run (names the ones there are).
        """
        if name not in self.runs:
            raise KeyError(f"{self.folder / PHASE1_RUNS} holds no run {name!r}; it holds {', '.join(self.runs)}")
        return self.runs[name]


def _damaged(path: Path, what: str, fix: str = _RESTORE) -> DamagedFileError:
    return DamagedFileError(f"{path}: {what}; {fix}")


def _number(value: Any, allow_none: bool = False) -> bool:
    if value is None:
        return allow_none
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _index(value: Any, epochs: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < epochs


def _run(raw: Any, path: Path, i: int) -> DiagnosticRun:
    where = f"run {i}"
    if not isinstance(raw, dict):
        raise _damaged(path, f"{where} holds a {type(raw).__name__}, not a run")
    required = ("run", "split", "augment", "widths", "weight_decay", "curves", "tipping_epoch", "best_auc_epoch",
                "best_auc")
    missing = [k for k in required if k not in raw]
    if missing:
        raise _damaged(path, f"{where} lacks {', '.join(missing)}")
    settings = {
        "run": (lambda v: isinstance(v, str) and bool(v), "a name"),
        "split": (lambda v: isinstance(v, str) and bool(v), "a split's name"),
        "augment": (lambda v: isinstance(v, bool), "true or false"),
        "widths": (lambda v: isinstance(v, list) and bool(v) and all(_index(w, 1 << 16) and w > 0 for w in v),
                   "a list of channel counts"),
        "weight_decay": (_number, "a number"),
    }
    for key, (valid, what) in settings.items():
        if not valid(raw[key]):
            raise _damaged(path, f"{where}: {key} {raw[key]!r} is not {what}")
    name = raw["run"]
    where = f"run {name!r}"
    curves = curve_arrays(raw["curves"], path, required=CURVE_KEYS, where=f"{where}: curves", fix=_RESTORE)
    n = len(curves["epoch"])
    tipping = raw["tipping_epoch"]
    if tipping is not None and not _index(tipping, n):
        raise _damaged(path, f"{where}: tipping_epoch {tipping!r} is not an epoch of its {n} (counted from 0) or null")
    rule = find_tipping_point(curves["mean_max_student"], WINDOW)
    if rule != tipping:
        raise _damaged(path, f"{where} records the tipping epoch {tipping!r}, but the official rule (window {WINDOW}) "
                       f"finds {rule!r} on its recorded curve")
    detection = {}
    if tipping is not None:
        missing = [k for k in DETECTION_KEYS if k not in raw]
        if missing:
            raise _damaged(path, f"{where} has a tipping epoch but lacks {', '.join(missing)}")
        bad = next((k for k in DETECTION_KEYS if not _number(raw[k])), None)
        if bad is not None:
            raise _damaged(path, f"{where}: {bad} {raw[bad]!r} is not a finite number")
        if raw["found_at_epoch"] != tipping + WINDOW:
            raise _damaged(path, f"{where}: found_at_epoch {raw['found_at_epoch']!r} is not its tipping epoch + "
                           f"{WINDOW}")
        after = curves["mean_max_student"][tipping + 1: tipping + 1 + FALL_EPOCHS]
        fall = float(curves["mean_max_student"][tipping] - np.nanmin(after)) if np.isfinite(after).any() else None
        if fall is None or abs(raw["fall_within_5"] - fall) > 1e-9:
            raise _damaged(path, f"{where}: fall_within_5 {raw['fall_within_5']!r} is not how far its recorded curve "
                           f"falls in the {FALL_EPOCHS} epochs after its tipping epoch")
        detection = {k: float(raw[k]) for k in DETECTION_KEYS if k != "found_at_epoch"}
    auc = curves["agreement_auc"]
    best = raw["best_auc_epoch"]
    if not (_index(best, n) and _number(raw["best_auc"]) and np.isfinite(auc).any()
            and best == int(np.nanargmax(auc)) and abs(raw["best_auc"] - auc[best]) < 1e-9):
        raise _damaged(path, f"{where}: best_auc_epoch {best!r} and best_auc are not the epoch (from 0) and value "
                       "of the highest agreement_auc")
    return DiagnosticRun(
        name=name, split=raw["split"], augment=raw["augment"], widths=tuple(raw["widths"]),
        weight_decay=float(raw["weight_decay"]), curves=curves, tipping=tipping,
        found_at=None if tipping is None else tipping + WINDOW, best_auc_epoch=best, best_auc=float(raw["best_auc"]),
        epoch_time_s=float(raw["epoch_time_s"]) if _number(raw.get("epoch_time_s")) else math.nan,
        detection=detection)


def read_diagnostics(folder: str | os.PathLike) -> Diagnostics:
    """The diagnostic runs in ``folder`` (:data:`PHASE1_RUNS` and :data:`CE_CLEAN`), read safely and checked.

    Every run must have a name of its own, its settings, the curves :data:`CURVE_KEYS` (one value or null per
    epoch), a tipping epoch that the official rule finds again on its recorded curve, the numbers of its detection
    there (:data:`DETECTION_KEYS`) and the epoch of its best agreement AUC; the cross-entropy run the curves
    ``epoch``, ``val_acc``, ``test_acc`` and ``fit_clean``.

    Parameters
    ----------
    folder
        The folder holding both files.

    Returns
    -------
    Diagnostics
        The runs by name, each curve float64 ``[epochs]``.

    Raises
    ------
    FileNotFoundError
        A file is not there (names it).
    bkd_core.errors.DamagedFileError
        A file is not valid JSON, not a regular file, or not what it should be (one sentence naming the file, the
        field, and how to restore it).
    """
    folder = Path(folder)
    path = folder / PHASE1_RUNS
    raw = read_run_json(path)
    if not isinstance(raw, list) or not raw:
        raise _damaged(path, f"holds a {type(raw).__name__}, not a list of runs")
    runs: dict[str, DiagnosticRun] = {}
    for i, entry in enumerate(raw):
        run = _run(entry, path, i)
        if run.name in runs:
            raise _damaged(path, f"two runs are called {run.name!r}")
        runs[run.name] = run
    ce_path = folder / CE_CLEAN
    ce = curve_arrays(read_run_json(ce_path), ce_path, required=CE_CURVE_KEYS, fix=_RESTORE)
    return Diagnostics(folder=folder, runs=runs, ce_clean=ce)


def diagnostics(folder: str | os.PathLike = DIAGNOSTICS) -> Diagnostics | None:
    """:func:`read_diagnostics` of ``folder`` found from any working directory (:func:`find_evidence`), or None
    when the folder is not there (a chapter outside a clone of the repository says so instead).

    Raises
    ------
    FileNotFoundError, bkd_core.errors.DamagedFileError
        The folder is there, but a file of it is missing or damaged (:func:`read_diagnostics`).
    """
    found = find_evidence(folder)
    return None if found is None else read_diagnostics(found)


# --------------------------------------------------------------------------------------------
# The reproduction batch
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchState:
    """How far the `cnn` batch is: the runs its summary plans, those finished and those failed (run folder names).

    ``folder`` is None when the batch is not there at all. A run counts as finished when its ``metrics.json``
    holds every method the batch trains (:meth:`bkd_core.batch.BatchFolder.is_finished`); a run of the folder that
    the summary does not list counts as planned too.
    """

    folder: Path | None
    planned: tuple[str, ...] = ()
    finished: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Has every planned run finished (and is there one)?"""
        return bool(self.planned) and len(self.finished) == len(self.planned)

    def text(self) -> str:
        """The state as a sentence (plain text): not here, not finished yet (k of n runs, which), or finished."""
        if self.folder is None or not self.planned:
            return "The cnn batch is not here yet: none of its runs has finished."
        k, n = len(self.finished), len(self.planned)
        if self.complete:
            return f"The cnn batch has finished: {n} of {n} runs."
        done = f" ({', '.join(self.finished)})" if self.finished else ""
        failed = f"; failed: {', '.join(self.failed)}" if self.failed else ""
        return f"The cnn batch is not finished yet: {k} of {n} runs{done}{failed}."

    def _folder(self) -> BatchFolder:
        if self.folder is None:
            raise FileNotFoundError(f"the cnn batch is not here; {self.text()}")
        return BatchFolder(self.folder)

    def results_table(self) -> "pd.DataFrame":
        """One row per finished run and method (:meth:`bkd_core.batch.BatchFolder.results_table`), only the runs
        counted as finished; an empty table when none is."""
        if self.folder is None:
            import pandas as pd

            return pd.DataFrame(columns=list(COLUMNS))
        table = self._folder().results_table()
        return table[table["run"].isin(self.finished)].reset_index(drop=True)

    def run_of(self, split: str, seed: int = 0, dataset: str = "cifar10") -> str | None:
        """The finished run of ``split`` and ``seed``, by folder name, or None when it has not finished."""
        name = run_name(dataset, split, seed)
        return name if name in self.finished else None

    def curves(self, split: str, method: str = "bkd", seed: int = 0) -> dict[str, np.ndarray] | None:
        """The per-epoch curves of ``method`` in the finished run of ``split`` (float64 per curve, NaN for null),
        or None when that run has not finished or records none."""
        name = self.run_of(split, seed)
        return None if name is None else self._folder().method_curves(name, method)

    def run_metrics(self, split: str, seed: int = 0) -> dict[str, Any] | None:
        """The ``metrics.json`` of the finished run of ``split`` (its configuration and every method's metrics,
        :meth:`bkd_core.batch.BatchFolder.run`), or None when that run has not finished."""
        name = self.run_of(split, seed)
        return None if name is None else self._folder().run(name)

    def tipping_scores(self, split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
        """BKD's agreement scores (float32 [N]) and the truth (bool [N]) at the tipping epoch of the finished run of
        ``split`` (:meth:`bkd_core.batch.BatchFolder.method_tipping_scores`), or None."""
        name = self.run_of(split, seed)
        return None if name is None else self._folder().method_tipping_scores(name, "bkd")

    def stages(self) -> dict[str, tuple[str, ...]]:
        """The stages committed so far (:meth:`bkd_core.batch.BatchFolder.stages`): run folder name -> the methods
        that have finished there, in the order of :data:`bkd_core.batch.folder.METHOD_ORDER` (runs sorted by name;
        ``{}`` without the batch). A stage counts whether its run has finished or not, as :meth:`stage` reads it."""
        return {} if self.folder is None else self._folder().stages()

    def stage(self, split: str, method: str = "bkd", seed: int = 0, dataset: str = "cifar10") -> "Stage | None":
        """``method``'s stage of the run of ``split`` and ``seed`` (:meth:`bkd_core.batch.BatchFolder.method_stage`,
        read as :func:`read_stage` reads it), committed as soon as that method has trained, whether the run has
        finished or not; None when it is not here yet (or ended at its deadline, to be resumed).

        Raises
        ------
        bkd_core.errors.DamagedFileError
            the stage is there but a file of it is damaged (names it).
        """
        if self.folder is None:
            return None
        found = self._folder().method_stage(run_name(dataset, split, seed), method)
        return None if found is None or found.stopped_by_deadline else _stage(found)


def batch_state(folder: str | os.PathLike = BATCH, *,
                plan: Mapping[str, Sequence[str]] | None = BATCH_PLAN) -> BatchState:
    """How far the batch in ``folder`` (found from any working directory, :func:`find_evidence`) is.

    Never fails on a batch that is missing, not started or partial: that is a state (:meth:`BatchState.text`).

    Parameters
    ----------
    folder : str | os.PathLike
        the batch folder.
    plan : Mapping[str, Sequence[str]] | None
        the splits each method is planned on (:data:`BATCH_PLAN`): a run is finished when it holds the methods
        planned for its split (BKD alone on rand1-3), and the runs planned for the seeds the summary lists count
        as planned even before a command for them has started. None: every method of the summary on every run,
        and only the runs the summary lists or the folder holds.

    Raises
    ------
    bkd_core.errors.DamagedFileError
        The batch's summary or a run's metrics is there but damaged (names it).
    """
    found = find_evidence(folder)
    if found is None:
        return BatchState(folder=None)
    batch = BatchFolder(found)
    summary = batch.summary()  # {"options": {}, "runs": []} while the batch has written none
    methods = summary["options"].get("methods")
    methods = list(methods) if isinstance(methods, list) else []
    runs = {r["name"]: r["status"] for r in summary["runs"]}
    present = batch.run_names()
    # written atomically, so read in full here: a damaged one is named now, not in a figure
    split_of = {name: batch.run(name)["split"] for name in present}

    def planned_methods(name: str) -> list[str]:
        split = split_of[name]
        return [m for m in methods if plan is None or split in plan.get(m, (split,))]

    finished = [n for n in present if not methods or batch.is_finished(n, planned_methods(n))]
    planned = list(dict.fromkeys([*runs, *present]))
    if plan is not None:  # the runs of the plan's other splits, for every dataset and seed the summary lists
        named = [m.groups() for m in map(_RUN_NAME.match, planned) if m]
        for dataset, seed in dict.fromkeys((d, s) for d, _, s in named):
            planned += [n for n in (run_name(dataset, split, int(seed)) for m in methods for split in plan.get(m, ()))
                        if n not in planned]
    failed = [n for n, status in runs.items() if status == "failed" and n not in finished]
    return BatchState(folder=found, planned=tuple(planned), finished=tuple(n for n in planned if n in finished),
                      failed=tuple(failed))


#: A run's folder name (:func:`bkd_core.batch.folder.run_name`): dataset, split, seed.
_RUN_NAME = re.compile(r"^(.+?)-(.+)-seed(\d+)$")


@dataclass(frozen=True)
class TippingDetection:
    """BKD's detection in a finished run of the batch, from its committed tipping-epoch scores.

    ``scores`` float32 [N] and ``is_noisy`` bool [N] as the run stored them; ``detection`` is
    :func:`bkd_core.method.detect` of the scores with the run's own Otsu settings, so its numbers are the run's;
    ``tipping`` is the run's 0-based tipping epoch and ``rule`` what set it (``"peak"`` or ``"fallback"``).
    """

    run: str
    scores: np.ndarray
    is_noisy: np.ndarray
    tipping: int
    rule: str | None
    detection: Detection

    def text(self) -> str:
        """What the detection found, as a sentence (plain text) with its numbers."""
        true = float(self.is_noisy.mean())
        found = f"G4 F1 {detection_scores(self.detection.label_issues, self.is_noisy)['f1']:.3f} (flagging every " \
                f"image: {flag_all_f1(true):.3f}); " if self.is_noisy.any() else "no label is wrong here; "
        how = "the peak rule's" if self.rule == "peak" else f"the {self.rule}'s" if self.rule else "its"
        return (f"In the cnn batch's run {self.run}, at {how} tipping epoch {self.tipping + 1}, the official "
                f"criterion puts the threshold at {self.detection.split.threshold:.3f}: {found}estimated noise "
                f"{100 * self.detection.estimated_noise_rate:.1f}% against the true {100 * true:.1f}%.")


def tipping_detection(state: BatchState, split: str, seed: int = 0) -> TippingDetection | None:
    """:class:`TippingDetection` of the finished run of ``split`` and ``seed`` in ``state``; None when that run has
    not finished, or its BKD found no tipping point (it then stored no scores)."""
    run = state.run_metrics(split, seed)
    stored = state.tipping_scores(split, seed)
    if run is None or stored is None:
        return None
    bkd = run["methods"].get("bkd", {})
    config = BKDConfig.from_dict(run["config"]) if isinstance(run.get("config"), dict) else BKDConfig()
    scores, is_noisy = stored
    tipping = bkd.get("tipping_epoch")
    if not isinstance(tipping, int):
        return None
    return TippingDetection(run=str(state.run_of(split, seed)), scores=scores, is_noisy=is_noisy, tipping=tipping,
                            rule=bkd.get("tipping_rule"),
                            detection=detect(scores, bins=config.otsu_bins, criterion=config.otsu_criterion,
                                             noisy_groups=config.noisy_groups))


# --------------------------------------------------------------------------------------------
# One method's stage of a run, and the proxy beside it
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One method's finished training, read from its folder: a stage of a batch run (``RUN/METHOD/``) or a run
    folder of the chapters' cache (:func:`bkd_core.book.cache.cached_run`), which hold the same files.

    ``metrics`` is its ``metrics.json`` and ``config`` the configuration it trained with (``config.json``);
    ``curves`` maps each per-epoch curve (:func:`bkd_core.metrics.epoch_curves`) to float64 ``[epochs]``, NaN where
    an epoch has none (empty when the folder holds no curves); ``scores`` float32 [N] and ``is_noisy`` bool [N] are
    BKD's agreement scores at its tipping epoch and the truth (None without a tipping point, or for another method).
    """

    path: Path
    metrics: dict[str, Any]
    config: BKDConfig
    curves: dict[str, np.ndarray]
    scores: np.ndarray | None = field(default=None, repr=False)
    is_noisy: np.ndarray | None = field(default=None, repr=False)

    @property
    def method(self) -> str:
        """The method that trained (``metrics["kind"]``: ``"bkd"``, ``"ce"``, ...)."""
        return str(self.metrics.get("kind"))

    @property
    def tipping(self) -> int | None:
        """BKD's 0-based tipping epoch (None without one, or for another method)."""
        value = self.metrics.get("tipping_epoch")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def found_at(self) -> int | None:
        """The 0-based epoch where the rule saw the tipping point (phase 2 starts after it), or None."""
        value = self.metrics.get("tipping_found_at_epoch")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def rule(self) -> str | None:
        """What set the tipping point: ``"peak"`` (the official rule), ``"fallback"``, or None."""
        value = self.metrics.get("tipping_rule")
        return value if isinstance(value, str) else None

    def number(self, key: str) -> float:
        """``metrics[key]`` as a float (NaN when it is missing or not a finite number, and for a phase-2 number of a
        stage that stopped at its detection: :func:`bkd_core.batch.folder.shown_metrics`)."""
        value = shown_metrics(self.metrics).get(key)
        return float(value) if _number(value) else math.nan

    def curve(self, key: str) -> np.ndarray | None:
        """The per-epoch curve ``key`` (float64 ``[epochs]``), or None when the stage records none."""
        return self.curves.get(key)

    def detection(self) -> Detection | None:
        """:func:`bkd_core.method.detect` of the tipping-epoch scores with the stage's own Otsu settings (its
        numbers are the run's), or None without scores."""
        if self.scores is None:
            return None
        return detect(self.scores, bins=self.config.otsu_bins, criterion=self.config.otsu_criterion,
                      noisy_groups=self.config.noisy_groups)


def _stage(found: MethodStage) -> Stage:
    """The :class:`Stage` of a checked method folder, with its curves and tipping-epoch scores read."""
    tipping = found.tipping_scores()
    scores, is_noisy = (None, None) if tipping is None else tipping
    return Stage(path=found.path, metrics=found.metrics, config=found.config, curves=found.curves() or {},
                 scores=scores, is_noisy=is_noisy)


def read_stage(folder: str | os.PathLike) -> Stage:
    """The :class:`Stage` in ``folder`` (:func:`bkd_core.batch.folder.read_method_stage`: its ``metrics.json`` and
    ``config.json``, checked), with its ``curves.json`` and ``tipping_scores.npz`` when it has them, read safely and
    checked.

    Raises
    ------
    FileNotFoundError
        ``folder`` holds no ``metrics.json`` (the method has not finished there).
    bkd_core.errors.DamagedFileError
        a file is not what it should be, or ``config.json`` is missing (one sentence naming the file and the fix).
    """
    return _stage(read_method_stage(folder))


#: Rows of :func:`pixel_check`, in order.
PIXEL_CHECK_ROWS = ("BKD tipping epoch (from 1)", "BKD estimated noise rate, true rate (%)",
                    "BKD F1, G4 (flag every image)", "BKD F1, below the threshold",
                    "test accuracy, last epoch (%): BKD / cross-entropy")
#: Points within which a noise estimate counts as right (the targets of the `cnn` batch).
ESTIMATE_TOLERANCE = 5.0


def _sign_word(value: float, above: str = "above", below: str = "below") -> str:
    return above if value >= 0 else below


def pixel_check(features: "pd.DataFrame | None", bkd: Stage, ce: Stage | None = None, *, split: str,
                missing_ce: str = "not here yet (the batch is still running)") -> "pd.DataFrame":
    """The `features` proxy beside a `cnn` run on the same split, row by row (:data:`PIXEL_CHECK_ROWS`), each
    with one sentence saying whether the proxy tells the same story.

    Parameters
    ----------
    features
        :func:`bkd_core.book.results.summarize` of the `features` batch (means over its seeds), or None when it is
        not there.
    bkd, ce
        The `cnn` run's BKD and cross-entropy stages (``ce`` None while it is not there).
    split
        The split both are about.
    missing_ce
        What to say about a missing ``ce`` (after "the CNN run's cross-entropy is ").

    Returns
    -------
    pandas.DataFrame
        Index :data:`PIXEL_CHECK_ROWS`; columns ``"features proxy"`` and ``"cnn"`` (values as text, "–" where
        there is none), ``"same story?"`` (``"yes"``, ``"no"`` or ``"–"``: nothing to compare) and ``"how"``
        (the sentence).
    """
    import pandas as pd

    from .results import mean_of

    def proxy(method: str, metric: str) -> float:
        return math.nan if features is None else mean_of(features, split, method, metric)

    rows: dict[str, tuple[str, str, bool | None, str]] = {}
    true = bkd.number("true_noise_rate")
    no_proxy = "The features batch has no run of this split to compare with."
    # when the rule fires
    f_tip, f_peak, c_tip = proxy("bkd", "tipping_epoch"), proxy("bkd", "tipping_from_peak"), bkd.tipping
    c_cell = "none" if c_tip is None else f"{c_tip + 1}" + ("" if bkd.rule == "peak" else f" ({bkd.rule})")
    if not math.isfinite(f_tip):
        rows[PIXEL_CHECK_ROWS[0]] = ("–", c_cell, None, no_proxy)
    elif c_tip is None:
        rows[PIXEL_CHECK_ROWS[0]] = (f"{f_tip + 1:.1f}", c_cell, False,
                                     "Not the same: the proxy finds a tipping point, the CNN run none.")
    else:
        both_peak = f_peak == 1.0 and bkd.rule == "peak"
        when = (f"the CNN's student peaks {'later' if c_tip > f_tip else 'earlier'} (epoch {c_tip + 1} against "
                f"{f_tip + 1:.1f} on the proxy)")
        rows[PIXEL_CHECK_ROWS[0]] = (
            f"{f_tip + 1:.1f}", c_cell, both_peak,
            f"Same rule: the official peak rule fires in every run of both; {when}." if both_peak else
            f"Not the same: the peak rule sets the tipping point in {100 * f_peak:.0f}% of the proxy's runs and "
            f"{'does' if bkd.rule == 'peak' else 'does not'} in the CNN run; {when}.")
    # the noise estimate
    f_est, c_est = 100 * proxy("bkd", "estimated_noise_rate"), 100 * bkd.number("estimated_noise_rate")
    truth = f", true {100 * true:.1f}"
    no_tip = "The CNN run found no tipping point, so it estimated and flagged nothing."
    if c_tip is None:
        rows[PIXEL_CHECK_ROWS[1]] = ("–" if not math.isfinite(f_est) else f"{f_est:.1f}{truth}", f"none{truth}",
                                     None, no_tip)
    elif not math.isfinite(f_est):
        rows[PIXEL_CHECK_ROWS[1]] = ("–", f"{c_est:.1f}{truth}", None, no_proxy)
    else:
        e_f, e_c = f_est - 100 * true, c_est - 100 * true
        if max(abs(e_f), abs(e_c)) <= ESTIMATE_TOLERANCE:
            same, how = True, (f"Same: both land within {ESTIMATE_TOLERANCE:.0f} points of the truth ({e_f:+.1f} "
                               f"and {e_c:+.1f} points).")
        elif (e_f >= 0) == (e_c >= 0):
            same, how = True, (f"Same direction: both estimate {_sign_word(e_f)} the truth, the proxy by "
                               f"{abs(e_f):.1f} points, the CNN by {abs(e_c):.1f}.")
        else:
            same, how = False, (f"Not the same: the proxy lands {abs(e_f):.1f} points {_sign_word(e_f)} the truth, "
                                f"the CNN {abs(e_c):.1f} points {_sign_word(e_c)}.")
        rows[PIXEL_CHECK_ROWS[1]] = (f"{f_est:.1f}{truth}", f"{c_est:.1f}{truth}", same, how)
    # finding the mislabelled images
    f_g4, c_g4, every = proxy("bkd", "detection_f1"), bkd.number("detection_f1"), bkd.number("flag_all_f1")
    f_below, c_below = proxy("bkd", "below_threshold_f1"), bkd.number("below_threshold_f1")
    if not true > 0:
        nothing = "No label is wrong on this split: there is nothing to find."
        rows[PIXEL_CHECK_ROWS[2]] = ("n/a", "n/a", None, nothing)
        rows[PIXEL_CHECK_ROWS[3]] = ("n/a", "n/a", None, nothing)
    elif c_tip is None:
        rows[PIXEL_CHECK_ROWS[2]] = ("–" if not math.isfinite(f_g4) else f"{f_g4:.3f} ({every:.3f})", "none", None,
                                     no_tip)
        rows[PIXEL_CHECK_ROWS[3]] = ("–" if not math.isfinite(f_below) else f"{f_below:.3f}", "none", None, no_tip)
    elif not math.isfinite(f_g4):
        rows[PIXEL_CHECK_ROWS[2]] = ("–", f"{c_g4:.3f} ({every:.3f})", None, no_proxy)
        rows[PIXEL_CHECK_ROWS[3]] = ("–", f"{c_below:.3f}", None, no_proxy)
    else:
        m_f, m_c = f_g4 - every, c_g4 - every
        if (m_f > 0) == (m_c > 0):
            how = (f"Same: G4 {'beats' if m_c > 0 else 'does not beat'} flagging every image in both, by "
                   f"{m_f:+.3f} F1 on the proxy and {m_c:+.3f} on pixels.")
        else:
            how = (f"Not the same: G4 beats flagging every image {'on pixels' if m_c > 0 else 'on the proxy'} only "
                   f"({m_f:+.3f} F1 on the proxy, {m_c:+.3f} on pixels).")
        rows[PIXEL_CHECK_ROWS[2]] = (f"{f_g4:.3f} ({every:.3f})", f"{c_g4:.3f} ({every:.3f})", (m_f > 0) == (m_c > 0),
                                     how)
        d_f, d_c = f_below - f_g4, c_below - c_g4
        same = (d_f > 0) == (d_c > 0)
        rows[PIXEL_CHECK_ROWS[3]] = (
            f"{f_below:.3f}", f"{c_below:.3f}", same,
            f"Same: flagging every image below the threshold scores {'higher' if d_c > 0 else 'lower'} than G4 "
            f"alone in both ({d_f:+.3f} F1 on the proxy, {d_c:+.3f} on pixels)." if same else
            f"Not the same: flagging every image below the threshold scores higher than G4 alone "
            f"{'on pixels' if d_c > 0 else 'on the proxy'} only ({d_f:+.3f} F1 on the proxy, {d_c:+.3f} on pixels).")
    # where BKD ends against cross-entropy
    f_bkd, f_ce = proxy("bkd", "test_acc"), proxy("ce", "test_acc")
    c_bkd, c_ce = bkd.number("test_acc"), math.nan if ce is None else ce.number("test_acc")
    f_cell = "–" if not math.isfinite(f_bkd) else f"{f_bkd:.1f} / " + (f"{f_ce:.1f}" if math.isfinite(f_ce) else "–")
    c_cell = (f"{c_bkd:.1f}" if math.isfinite(c_bkd) else "–") + " / " + (f"{c_ce:.1f}" if math.isfinite(c_ce) else "–")
    d_f, d_c = f_bkd - f_ce, c_bkd - c_ce
    if not math.isfinite(d_f):
        rows[PIXEL_CHECK_ROWS[4]] = (f_cell, c_cell, None, no_proxy)
    elif bkd.metrics.get("stopped_by") == STOPPED_AT_DETECTION:
        rows[PIXEL_CHECK_ROWS[4]] = (
            f_cell, c_cell, None, f"Not comparable: the CNN run stopped right after its detection, so it has no final "
            f"test accuracy; on the proxy BKD ends {abs(d_f):.1f} points {_sign_word(d_f)} cross-entropy.")
    elif not math.isfinite(d_c):
        rows[PIXEL_CHECK_ROWS[4]] = (
            f_cell, c_cell, None, f"Not comparable yet: the CNN run's cross-entropy is {missing_ce}; on the proxy "
            f"BKD ends {abs(d_f):.1f} points {_sign_word(d_f)} cross-entropy.")
    else:
        same = (d_f >= 0) == (d_c >= 0)
        rows[PIXEL_CHECK_ROWS[4]] = (
            f_cell, c_cell, same,
            f"Same: BKD ends {_sign_word(d_c)} cross-entropy in both, by {abs(d_f):.1f} points on the proxy and "
            f"{abs(d_c):.1f} on pixels." if same else
            f"Not the same: BKD ends {abs(d_f):.1f} points {_sign_word(d_f)} cross-entropy on the proxy and "
            f"{abs(d_c):.1f} points {_sign_word(d_c)} it on pixels.")
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["features proxy", "cnn", "same", "how"])
    table["same"] = table["same"].map(lambda v: "–" if v is None else "yes" if v else "no")
    return table.rename(columns={"same": "same story?"}).reindex(list(PIXEL_CHECK_ROWS))


# --------------------------------------------------------------------------------------------
# The official protocol beside training without augmentation
# --------------------------------------------------------------------------------------------

#: The `cnn` profile trained without augmentation (``--set augment=false``), BKD alone up to its detection, relative to
#: the repository: the switch that runs beside the official protocol (:data:`BATCH`).
NOAUG_BATCH = "reproductions/cnn-noaug"
#: The protocols :func:`augment_comparison` sets side by side, in order.
PROTOCOLS = ("official", "no augmentation")
#: The splits both batches train BKD on.
AUGMENT_SPLITS = ("worst", "aggre", "clean")
#: What a row of :func:`augment_comparison` holds (its ``status``): a run with its phase 2, one stopped right after
#: its detection, one whose rule never fired, a split whose BKD has not trained yet, a batch folder that is not here.
RUN_FULL, RUN_STOPPED, RUN_NO_TIPPING, RUN_NOT_YET, BATCH_NOT_HERE = (
    "full run", "stopped at its detection", "no tipping point", "not run yet", "not here")
#: How far the student's curve must fall within :data:`FALL_EPOCHS` epochs after the tipping epoch for a turn rather
#: than a plateau (the `cnn` batch's target: a peak, not a wobble).
TURN_FALL = 0.02
#: Differences within which :func:`augment_comparison_text` calls two runs' G4 F1, and their estimates' distances
#: from the truth (in points), a tie: about what two runs of the same setting and seed differ by (the run without
#: augmentation on `worst` in :data:`NOAUG_BATCH` and its diagnostic run: 0.004 F1, 0.7 points).
TIE_F1, TIE_POINTS = 0.01, 1.0
#: Columns of :func:`augment_comparison`, in order.
AUGMENT_COLUMNS = ("split", "protocol", "status", "tipping_epoch", "found_at_epoch", "fall", "fall_epochs",
                   "auc_at_tip", "best_auc", "best_auc_epoch", "g4_f1", "flag_all_f1", "estimated_noise",
                   "true_noise", "epochs", "minutes")
_NUMBERS = AUGMENT_COLUMNS[3:]


def _phase1_after(curves: Mapping[str, np.ndarray], tipping: int) -> int:
    """How many phase-1 epochs after ``tipping`` have a value of the student's curve (what :func:`peak_fall` of
    :mod:`bkd_core.book.results` looks at)."""
    student = curves["mean_max_student"]
    phase = curves.get("phase")
    return sum(1 for e in range(tipping + 1, len(student))
               if (phase is None or len(phase) == 0 or phase[e] == 1) and math.isfinite(student[e]))


def _protocol_row(state: BatchState, split: str, seed: int, protocol: str) -> dict[str, Any]:
    """One row of :func:`augment_comparison`: ``protocol``'s BKD stage of ``split`` in ``state``."""
    from .results import peak_fall

    row: dict[str, Any] = {"split": split, "protocol": protocol, **dict.fromkeys(_NUMBERS, math.nan)}
    if state.folder is None:
        return {**row, "status": BATCH_NOT_HERE}
    stage = state.stage(split, "bkd", seed)
    if stage is None:
        return {**row, "status": RUN_NOT_YET}
    augment = protocol == PROTOCOLS[0]
    if bool(stage.config.augment) != augment:
        raise ValueError(f"{stage.path} trained {'with' if stage.config.augment else 'without'} augmentation, but it "
                         f"is read as the {protocol} protocol: pass that protocol's batch folder")
    true = stage.number("true_noise_rate")
    row["true_noise"] = 100 * true
    tipping, found_at = stage.tipping, stage.found_at
    if tipping is None or found_at is None:
        return {**row, "status": RUN_NO_TIPPING}
    stopped = stage.metrics.get("stopped_by") == STOPPED_AT_DETECTION
    row.update(status=RUN_STOPPED if stopped else RUN_FULL, tipping_epoch=tipping + 1, found_at_epoch=found_at + 1,
               estimated_noise=100 * stage.number("estimated_noise_rate"), epochs=found_at + 1)
    if true > 0:  # a split without a wrong label has no F1 to find them with
        row.update(g4_f1=stage.number("detection_f1"), flag_all_f1=stage.number("flag_all_f1"))
    curves = stage.curves
    if "mean_max_student" in curves and tipping < len(curves["mean_max_student"]):
        row.update(fall=peak_fall(curves, tipping), fall_epochs=_phase1_after(curves, tipping))
    auc = curves.get("agreement_auc")
    if auc is not None and tipping < len(auc):
        phase = curves.get("phase")
        phase1 = np.where(np.asarray(phase) == 1, auc, np.nan) if phase is not None and len(phase) == len(auc) else auc
        row["auc_at_tip"] = float(auc[tipping])
        if np.isfinite(phase1).any():
            best = int(np.nanargmax(phase1))
            row.update(best_auc=float(phase1[best]), best_auc_epoch=best + 1)
    seconds = curves.get("epoch_time")
    if seconds is not None and len(seconds) > found_at and np.isfinite(seconds[: found_at + 1]).all():
        row["minutes"] = float(np.sum(seconds[: found_at + 1])) / 60
    elif stopped:
        row["minutes"] = stage.number("wall_time_s") / 60
    return row


def augment_comparison(official: str | os.PathLike = BATCH, no_augment: str | os.PathLike = NOAUG_BATCH, *,
                       splits: Sequence[str] = AUGMENT_SPLITS, seed: int = 0) -> "pd.DataFrame":
    """BKD's detection with the official protocol beside the one without augmentation, split by split, read from the
    two committed batches (nothing is trained).

    Each batch is found from any working directory (:func:`batch_state`) and each split's BKD stage is read as soon
    as it has trained (:meth:`BatchState.stage`), so a batch that is partial, still running or not here gives rows
    that say so (``status``, numbers NaN) rather than an error.

    Parameters
    ----------
    official, no_augment
        The batch folders of the official protocol (:data:`BATCH`) and of the one without augmentation
        (:data:`NOAUG_BATCH`).
    splits
        The CIFAR-10N splits, in order.
    seed
        The seed of the runs read.

    Returns
    -------
    pandas.DataFrame
        One row per split and protocol (:data:`PROTOCOLS`), columns :data:`AUGMENT_COLUMNS`: ``status`` (one of
        :data:`RUN_FULL`, :data:`RUN_STOPPED`, :data:`RUN_NO_TIPPING`, :data:`RUN_NOT_YET`, :data:`BATCH_NOT_HERE`);
        ``tipping_epoch`` and ``found_at_epoch`` the epoch (from 1) the official rule picks and the one it sees it
        at; ``fall`` how far the student's curve falls in the ``fall_epochs`` phase-1 epochs the run has after its
        tipping epoch (:func:`bkd_core.book.results.peak_fall`: 2, the rule's window, in a run of these batches,
        where phase 2 or the stop follows; :data:`FALL_EPOCHS` is what the diagnostic runs look at);
        ``auc_at_tip`` the ROC-AUC of the agreement score (mislabelled against clean images) at the tipping epoch,
        ``best_auc`` the best of phase 1 and ``best_auc_epoch`` its epoch (from 1); ``g4_f1`` and ``flag_all_f1`` as
        fractions (NaN on a split with no wrong label); ``estimated_noise`` and ``true_noise`` in %; ``epochs``
        trained up to the detection and the ``minutes`` they took (NaN when the run records no time).

    Raises
    ------
    ValueError
        A folder's runs were not trained with the protocol they are read as (``augment`` in their configuration).
    bkd_core.errors.DamagedFileError
        A file of a batch is there but damaged (names it).
    """
    import pandas as pd

    states = {PROTOCOLS[0]: batch_state(official, plan=None), PROTOCOLS[1]: batch_state(no_augment, plan=None)}
    rows = [_protocol_row(states[p], split, seed, p) for split in splits for p in PROTOCOLS]
    table = pd.DataFrame(rows, columns=list(AUGMENT_COLUMNS))
    table[list(_NUMBERS)] = table[list(_NUMBERS)].astype(float)
    return table


def _detected(row: Any) -> bool:
    return row["status"] in (RUN_FULL, RUN_STOPPED)



def _split_sentence(split: str, off: Any, aug: Any) -> str:
    """The clause comparing one split's two detections (both rows of :func:`augment_comparison`)."""
    words = []
    if math.isfinite(off["g4_f1"]) and math.isfinite(aug["g4_f1"]):
        diff = off["g4_f1"] - aug["g4_f1"]
        who = (f"a tie (within {TIE_F1})" if abs(diff) < TIE_F1 else
               f"{'the official protocol' if diff > 0 else 'the run without augmentation'} higher")
        words.append(f"G4 F1 {off['g4_f1']:.3f} against {aug['g4_f1']:.3f}, {who} (flagging every image: "
                     f"{off['flag_all_f1']:.3f})")
    elif not off["true_noise"] > 0:
        words.append("no label is wrong, so nothing to find")
    e_off, e_aug = abs(off["estimated_noise"] - off["true_noise"]), abs(aug["estimated_noise"] - aug["true_noise"])
    diff = e_off - e_aug
    who = (f"a tie (their errors within {TIE_POINTS:.0f} point of each other)" if abs(diff) < TIE_POINTS else
           f"{'the run without augmentation' if diff > 0 else 'the official protocol'} closer to the truth by "
           f"{abs(diff):.1f} points")
    words.append(f"estimated noise {off['estimated_noise']:.1f}% against {aug['estimated_noise']:.1f}% (true "
                 f"{off['true_noise']:.1f}%), {who}")
    time = f" ({off['minutes']:.0f} against {aug['minutes']:.0f} minutes)" if \
        math.isfinite(off["minutes"]) and math.isfinite(aug["minutes"]) else ""
    words.append(f"detected after {off['epochs']:.0f} against {aug['epochs']:.0f} epochs{time}")
    return f"on {split}, " + "; ".join(words)


def augment_comparison_text(table: "pd.DataFrame", *, evidence: Diagnostics | None = None) -> str:
    """What :func:`augment_comparison` shows, as sentences (plain text): per split, which protocol's G4 F1 is higher
    and whose noise estimate is closer to the truth (one seed each, so no verdict; differences within
    :data:`TIE_F1` and :data:`TIE_POINTS` are ties), how long each took to its detection, which splits are not
    here yet; then how far the student's curve falls after each tipping epoch, and, with ``evidence`` (the
    diagnostic runs, kept in phase 1 past the rule), whether it falls like a turn or stays on a plateau over
    :data:`FALL_EPOCHS` epochs (:data:`TURN_FALL`).
    """
    from .results import _listed

    by = {(r["split"], r["protocol"]): r for r in table.to_dict("records")}
    splits = list(dict.fromkeys(table["split"]))
    if all(r["status"] == BATCH_NOT_HERE for r in by.values()):
        return "Neither batch is here: they are committed to the repository, so run the chapter in a clone of it."
    both = [s for s in splits if all(_detected(by[(s, p)]) for p in PROTOCOLS)]
    parts = []
    if both:
        parts.append("One seed each, so no verdict (the official protocol's number first): " + "; ".join(
            _split_sentence(s, by[(s, PROTOCOLS[0])], by[(s, PROTOCOLS[1])]) for s in both) + ".")
    missing: dict[str, list[str]] = {}  # what is missing -> the splits it is missing on
    for s in splits:
        if s not in both:
            said = "; ".join(f"{p}: {by[(s, p)]['status']}" for p in PROTOCOLS if not _detected(by[(s, p)]))
            missing.setdefault(said, []).append(s)
    if missing:
        parts.append(f"Not compared{' yet' if both else ''}: " + "; ".join(
            f"{_listed(ss)} ({said})" for said, ss in missing.items()) + ".")
    falls = [(s, by[(s, PROTOCOLS[0])], by[(s, PROTOCOLS[1])]) for s in both]
    falls = [(s, o, a) for s, o, a in falls if math.isfinite(o["fall"]) and math.isfinite(a["fall"])]
    if falls:
        counts = sorted({int(r["fall_epochs"]) for _, o, a in falls for r in (o, a)})
        if len(falls) == 1:
            s, o, a = falls[0]
            shown = f"{o['fall']:.4f} with the official protocol and {a['fall']:.4f} without augmentation on {s}"
        else:
            shown = ", ".join(f"{o['fall']:.4f} and {a['fall']:.4f} on {s}" for s, o, a in falls) + \
                " (the official protocol first)"
        epochs = f"{_listed([str(c) for c in counts])} phase-1 epoch{'' if counts == [1] else 's'}"
        parts.append(f"In the {epochs} each of these runs has after its tipping epoch (the rule's window: phase 2, or "
                     f"the stop, follows), the student's curve falls by {shown}" +
                     (f": too few epochs to tell a plateau from a turn, which falls by {TURN_FALL} or more within "
                      f"{FALL_EPOCHS}." if max(counts) < FALL_EPOCHS else "."))
    if evidence is not None:
        protocols = {True: "with the official protocol", False: "without augmentation"}
        said: dict[bool, list[str]] = {}
        for run in evidence.runs.values():
            if run.tipping is not None:
                fall = run.detection["fall_within_5"]
                said.setdefault(run.augment, []).append(
                    f"{fall:.4f} on {run.split} ({'a turn' if fall >= TURN_FALL else 'a plateau'})")
        if said:
            parts.append(f"The diagnostic runs, kept in phase 1 past the rule, tell the two apart: in the "
                         f"{FALL_EPOCHS} epochs after the tipping epoch the curve falls by " + ", and by ".join(
                             f"{_listed(items)} {protocols[augment]}" for augment, items in said.items()) + ".")
    return " ".join(parts)


def augment_comparison_shown(table: "pd.DataFrame") -> "pd.DataFrame":
    """:func:`augment_comparison` as the chapter shows it: one row per split and protocol, its numbers as text ("–"
    where there is none, the row's status instead where the run is not here).

    Returns
    -------
    pandas.DataFrame
        Columns ``"split"``, ``"protocol"``, ``"run"`` (its status), ``"tipping epoch (seen at)"``, ``"fall after
        it (epochs)"``, ``"ROC-AUC at the tip / best in phase 1 (epoch)"``, ``"G4 F1 (flag every image)"``,
        ``"estimated / true noise (%)"``, ``"to the detection"``.
    """
    import pandas as pd

    def number(value: float, spec: str) -> str:
        return format(value, spec) if math.isfinite(value) else "–"

    rows = []
    for r in table.to_dict("records"):
        row = {"split": r["split"], "protocol": r["protocol"], "run": r["status"]}
        if _detected(r):
            time = f", {r['minutes']:.0f} min" if math.isfinite(r["minutes"]) else ""
            row.update({
                "tipping epoch (seen at)": f"{r['tipping_epoch']:.0f} ({r['found_at_epoch']:.0f})",
                "fall after it (epochs)": (f"{r['fall']:.4f} ({r['fall_epochs']:.0f})" if math.isfinite(r["fall"])
                                           else "–"),
                "ROC-AUC at the tip / best in phase 1 (epoch)":
                    f"{number(r['auc_at_tip'], '.3f')} / {number(r['best_auc'], '.3f')}"
                    + (f" ({r['best_auc_epoch']:.0f})" if math.isfinite(r["best_auc_epoch"]) else ""),
                "G4 F1 (flag every image)": (f"{r['g4_f1']:.3f} ({r['flag_all_f1']:.3f})"
                                             if math.isfinite(r["g4_f1"]) else "no wrong label"),
                "estimated / true noise (%)": f"{r['estimated_noise']:.1f} / {r['true_noise']:.1f}",
                "to the detection": f"{r['epochs']:.0f} epochs{time}",
            })
        rows.append(row)
    columns = ["split", "protocol", "run", "tipping epoch (seen at)", "fall after it (epochs)",
               "ROC-AUC at the tip / best in phase 1 (epoch)", "G4 F1 (flag every image)",
               "estimated / true noise (%)", "to the detection"]
    return pd.DataFrame(rows, columns=columns).fillna("–")
