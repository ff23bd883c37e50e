"""A batch folder (``python -m bkd_core reproduce --out OUT``): the one place that knows its files and their schema.

Layout of ``OUT``:

- ``OUT/{dataset}-{split}-seed{seed}/``: one run (:data:`METRICS`, the per-sample tables of
  :mod:`bkd_core.batch.samples`, the executed ``run.ipynb``, one run folder per method, a *stage*: its
  :data:`METHOD_METRICS` and :data:`METHOD_CONFIG` as soon as the method has trained, before the run has finished;
  :class:`MethodStage`);
- :data:`SUMMARY`: the batch's options and each run's outcome (:meth:`BatchFolder.write_summary`);
- :data:`RESULTS`: one row per finished run and method (:meth:`BatchFolder.results_table`);
- :data:`CODE_CHECKS`: reruns of its runs by later code (:mod:`bkd_core.batch.check`).

Every file is read through :mod:`bkd_core.batch.files` (no links, FIFOs or devices, a size cap) and checked
against its schema, with errors that name the file and the fix; every file is written atomically.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from ..detectors import METHODS
from ..errors import DamagedFileError
from ..io import atomic_path, atomic_write_json, is_folder_name
from ..rundir import CONFIG, CURVES, TIPPING_SCORES, decode_tipping_scores
from .files import curve_arrays, lexists, load_run_arrays, read_run_json
from .samples import write_tables

if TYPE_CHECKING:
    import pandas as pd

    from ..config import BKDConfig

#: A run's metrics (every method's, with its ranking AUC, and the run's configuration), in its run folder.
METRICS = "metrics.json"
#: The batch's options and each run's outcome.
SUMMARY = "summary.json"
#: One row per finished run and method (:data:`COLUMNS`).
RESULTS = "results.csv"
#: Reruns of the batch's runs by later code, and their verdicts.
CODE_CHECKS = "code_checks.json"
#: What a failed run left (its error and traceback), in its run folder.
ERROR = "error.txt"
#: The executed run notebook, in its run folder.
NOTEBOOK = "run.ipynb"
#: What a run's own folder of a method holds beside its per-epoch files: its metrics, the configuration it trained
#: with (``{"config": ..., "identity": ...}``, :mod:`bkd_core.rundir`), its scores ...
METHOD_METRICS = "metrics.json"
METHOD_CONFIG = CONFIG
METHOD_SCORES = "scores.npz"
#: ... and, written by the trainer and committed with the batch, its per-epoch curves and detection scores
METHOD_CURVES = CURVES
METHOD_TIPPING_SCORES = TIPPING_SCORES

#: Columns of :data:`RESULTS` (one row per dataset, split, seed and method), in this order.
COLUMNS = (
    "dataset", "split", "seed", "method", "profile", "num_samples", "epochs", "true_noise_rate",
    "estimated_noise_rate", "tipping_epoch", "tipping_rule", "detection_precision", "detection_recall", "detection_f1",
    "below_threshold_precision", "below_threshold_recall", "below_threshold_f1", "flag_all_f1", "ranking_auc",
    "test_acc", "best_test_acc", "wall_time_s", "stopped_by", "device", "configuration", "run",
)
#: Why a method's training ended (its metrics' ``stopped_by``) when ``stop_after_detection`` ended a BKD run right
#: after its detection: phase 2 never ran.
STOPPED_AT_DETECTION = "detection"
#: Columns of :data:`RESULTS` that only a run's phase 2 gives: missing (NaN) for a run that stopped at its detection,
#: whose recorded test accuracies are those of the epoch it stopped at, not of a trained network's last epoch.
PHASE_2_COLUMNS = ("test_acc", "best_test_acc")
#: The methods whose training takes the batch's folds (confident learning's cross-validation); the others ignore them.
FOLD_METHODS = frozenset({"cleanlab"})
SPLIT_ORDER = ("clean", "aggre", "rand1", "rand2", "rand3", "worst", "clean100", "noisy100")
METHOD_ORDER = tuple(METHODS)  # bkd_core.detectors: the registry's order
#: Keys every run's :data:`METRICS` holds.
RUN_KEYS = ("dataset", "split", "seed", "methods")
#: Keys of a run's per-method metrics that its method's own ``metrics.json`` does not hold.
BATCH_ONLY_KEYS = frozenset({"ranking_auc"})

_FIX = ("it is not a run written by 'python -m bkd_core reproduce': move it out of the batch folder, "
        "or delete its folder and rerun the batch")


def run_name(dataset: str, split: str, seed: int) -> str:
    """A run's folder name in its batch: ``"cifar10-worst-seed0"``."""
    return f"{dataset}-{split}-seed{seed}"


def configuration_of(run: dict, path: str | Path = METRICS) -> str:
    """What a batch run (its :data:`METRICS` as read) was trained with, apart from its seed: the fingerprint
    of its recorded configuration at seed 0 and without ``stop_after_detection``
    (:meth:`bkd_core.config.BKDConfig.fingerprint`), with ``-folds{k}`` for confident learning's folds other than 3;
    ``""`` for a run that records no configuration.

    ``stop_after_detection`` only ends a run right after its detection, which is computed exactly as in a full run:
    such a run is a full run's first part, with the same configuration, whose phase-2 numbers are missing
    (:data:`PHASE_2_COLUMNS`, masked by :meth:`BatchFolder.results_table`), not different. A run that trained no
    method of :data:`FOLD_METHODS` takes its folds from the runs beside it in :meth:`BatchFolder.results_table`.
    This identity says which runs are summarised together; whether a finished run can stand for the run a batch
    asks for, or is rerun by a check, still compares its whole recorded fingerprint (``stop_after_detection``
    included: a run stopped at its detection is not a full run), :func:`bkd_core.batch.check.rerun_key`.

    Raises
    ------
    ValueError
        the recorded configuration is not a valid one (names ``path``).
    """
    from ..config import BKDConfig

    config = run.get("config")
    if not isinstance(config, dict):
        return ""
    try:
        key = BKDConfig.from_dict({**config, "seed": 0, "stop_after_detection": False}).fingerprint()
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} records an invalid configuration ({exc}); restore the file, or delete the run's "
                         "folder and rerun the batch") from None
    return _with_folds(key, run.get("folds", 3))


def _with_folds(key: str, folds: Any) -> str:
    """A configuration's fingerprint ``key`` with confident learning's ``folds`` when they are not the default 3."""
    return key if folds in (None, 3) else f"{key}-folds{folds}"


def shown_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A method's recorded ``metrics`` as :data:`RESULTS` shows them: those of a run that stopped at its detection
    (``stopped_by`` :data:`STOPPED_AT_DETECTION`) without its :data:`PHASE_2_COLUMNS` (None), since phase 2 never
    ran; its detection (F1, ROC-AUC, estimate, tipping epoch) stays. Other runs' metrics are returned as they are."""
    if metrics.get("stopped_by") != STOPPED_AT_DETECTION:
        return metrics
    return {**metrics, **{key: None for key in PHASE_2_COLUMNS}}


def _same(a: object, b: object) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b))


#: What to do about a damaged file of a method's folder.
_RERUN = "restore it, or delete the run's folder and run the batch's command again to retrain that run"


def _method_curves(folder: Path) -> dict[str, np.ndarray] | None:
    """The per-epoch curves in a method's ``folder`` (:data:`METHOD_CURVES`), read safely and checked; None without."""
    path = folder / METHOD_CURVES
    if not lexists(path):
        return None
    return curve_arrays(read_run_json(path), path, required=("epoch",))


def _method_tipping_scores(folder: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The tipping epoch's agreement scores and the truth in a method's ``folder``, read safely; None without."""
    path = folder / METHOD_TIPPING_SCORES
    if not lexists(path):
        return None
    return decode_tipping_scores(load_run_arrays(path), path)


@dataclass(frozen=True)
class MethodStage:
    """One method's finished training in its own folder (:func:`read_method_stage`): a stage of a batch run
    (``RUN/METHOD/``, written as soon as the method has trained) or any run folder the trainer wrote (e.g. one of
    the chapters' cache), which hold the same files.

    ``metrics`` is its :data:`METHOD_METRICS` (a dict with the method's ``kind``) and ``config`` the configuration
    it trained with (its :data:`METHOD_CONFIG`), both checked; its curves and tipping-epoch scores are read when
    asked for.
    """

    path: Path
    metrics: dict[str, Any]
    config: "BKDConfig"

    @property
    def method(self) -> str:
        """The method that trained (``metrics["kind"]``: ``"bkd"``, ``"ce"``, ...)."""
        return str(self.metrics["kind"])

    @property
    def stopped_by_deadline(self) -> bool:
        """Did the method end at its deadline (``config.deadline_s``)? It then goes on when the batch is run again,
        so it is not a result yet."""
        return self.metrics.get("stopped_by") == "deadline"

    def curves(self) -> dict[str, np.ndarray] | None:
        """Its per-epoch curves (:meth:`BatchFolder.method_curves`): float64 ``[epochs]`` each, NaN where an epoch
        has none; None when the folder holds none."""
        return _method_curves(self.path)

    def tipping_scores(self) -> tuple[np.ndarray, np.ndarray] | None:
        """BKD's agreement scores (float32 [N]) and the truth (bool [N], mislabelled) at its tipping epoch; None
        without them (no tipping point, or another method)."""
        return _method_tipping_scores(self.path)


def read_method_stage(folder: str | os.PathLike) -> MethodStage:
    """The :class:`MethodStage` in ``folder``: its :data:`METHOD_METRICS` and :data:`METHOD_CONFIG`, read safely
    and checked.

    Raises
    ------
    FileNotFoundError
        ``folder`` holds no :data:`METHOD_METRICS` (the method has not finished there).
    bkd_core.errors.DamagedFileError
        the metrics are not a method's (no ``kind``), or the configuration file is missing, is not a run's or records
        an invalid configuration (one sentence naming the file and the fix).
    """
    from ..config import BKDConfig

    def damaged(path: Path, what: str) -> DamagedFileError:
        return DamagedFileError(f"{path}: {what}; {_RERUN}")

    folder = Path(folder)
    path = folder / METHOD_METRICS
    metrics = read_run_json(path)
    if not isinstance(metrics, dict) or not isinstance(metrics.get("kind"), str):
        raise damaged(path, "is not a method's metrics (no 'kind' of method)")
    path = folder / METHOD_CONFIG
    if not lexists(path):
        raise damaged(path, "is missing, so the configuration the method trained with is unknown")
    stored = read_run_json(path)
    if not isinstance(stored, dict) or not isinstance(stored.get("config"), dict):
        raise damaged(path, "is not a run's config.json (no 'config' record)")
    try:
        config = BKDConfig.from_dict(stored["config"])
    except (ValueError, TypeError) as exc:
        raise damaged(path, f"records an invalid configuration ({exc})") from None
    return MethodStage(path=folder, metrics=metrics, config=config)


class BatchFolder:
    """A batch folder: its runs and their stages, summary, results table, code checks and problems; writes a run and
    the summary.

    Parameters
    ----------
    path
        The folder (``reproduce --out``); it need not exist to be read (it then holds no run).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"BatchFolder({str(self.path)!r})"

    # -- runs -------------------------------------------------------------------------------------
    def run_dir(self, name: str) -> Path:
        """``path/name`` for a run named by its folder name (``"cifar10-worst-seed0"``).

        Raises
        ------
        ValueError
            ``name`` is a path (absolute, with a separator, ``.`` or ``..``), not a folder name.
        """
        if not is_folder_name(name):
            raise ValueError(f"name a run by its folder name in {self.path} (e.g. cifar10-worst-seed0), not by a "
                             f"path; got {name!r}")
        return self.path / name

    def metrics_path(self, name: str) -> Path:
        """Where run ``name`` keeps its :data:`METRICS`."""
        return self.run_dir(name) / METRICS

    def has_run(self, name: str) -> bool:
        """Does run ``name`` have a :data:`METRICS` entry (of any kind: reading it checks the kind)?"""
        return is_folder_name(name) and lexists(self.path / name / METRICS)

    def run_names(self) -> list[str]:
        """The names of the runs with a :data:`METRICS` entry, sorted (``[]`` without the folder)."""
        if not self.path.is_dir():
            return []
        return sorted(entry.name for entry in os.scandir(self.path)
                      if entry.is_dir() and lexists(Path(entry.path) / METRICS))

    def run(self, name: str) -> dict[str, Any]:
        """Run ``name``'s :data:`METRICS`, read safely and checked: a dict with :data:`RUN_KEYS`, whose
        ``methods`` is a dict of dicts.

        Raises
        ------
        FileNotFoundError
            the run has no :data:`METRICS` (it did not finish).
        ValueError
            ``name`` is a path, or the file is not a run's metrics (one sentence naming it).
        """
        path = self.metrics_path(name)
        if not lexists(path):
            raise FileNotFoundError(f"{path.parent} holds no {METRICS}: not a finished run of the batch in "
                                    f"{self.path}; name a run folder the batch finished (e.g. cifar10-worst-seed0)")
        run = read_run_json(path)
        if not isinstance(run, dict):
            raise DamagedFileError(f"{path} holds a {type(run).__name__}, not a run's metrics; {_FIX}")
        missing = [k for k in RUN_KEYS if k not in run]
        if missing:
            raise DamagedFileError(f"{path} lacks {', '.join(missing)}, so it is not a run's metrics; {_FIX}")
        if not isinstance(run["methods"], dict):
            raise DamagedFileError(f"{path}: 'methods' holds a {type(run['methods']).__name__}, not a dict of "
                                   f"methods; {_FIX}")
        for method, metrics in run["methods"].items():
            if not isinstance(metrics, dict):
                raise DamagedFileError(f"{path}: methods.{method} holds a {type(metrics).__name__}, not a method's "
                                       f"metrics; {_FIX}")
        return run

    def runs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(name, metrics)`` of every finished run (:meth:`run_names`, :meth:`run`), in name order."""
        for name in self.run_names():
            yield name, self.run(name)

    def method_metrics(self, name: str, method: str) -> dict[str, Any] | None:
        """The ``metrics.json`` of run ``name``'s own folder of ``method``, read safely; None without one."""
        return self._method_json(name, method, METHOD_METRICS, "a method's metrics")

    def method_curves(self, name: str, method: str) -> dict[str, np.ndarray] | None:
        """The per-epoch curves of run ``name``'s ``method`` (``curves.json``: :func:`bkd_core.metrics.epoch_curves`),
        read safely and checked (:func:`bkd_core.batch.files.curve_arrays`).

        Returns
        -------
        dict of str to ndarray, or None
            Every curve as float64 ``[epochs]`` (``epoch`` counts 1, 2, ...), NaN where an epoch has no value;
            None for a run without them (one trained by older code, or a method that trains nothing).

        Raises
        ------
        bkd_core.errors.DamagedFileError
            The file is not a regular file, not JSON, or not per-epoch curves of one length with numbers or
            nulls only (one sentence naming the file and the fix).
        """
        return _method_curves(self.run_dir(name) / str(method))

    def _method_json(self, name: str, method: str, file: str, what: str) -> dict[str, Any] | None:
        path = self.run_dir(name) / str(method) / file
        if not lexists(path):
            return None
        data = read_run_json(path)
        if not isinstance(data, dict):
            raise DamagedFileError(f"{path} holds a {type(data).__name__}, not {what}; {_FIX}")
        return data

    def method_tipping_scores(self, name: str, method: str = "bkd") -> tuple[np.ndarray, np.ndarray] | None:
        """The detection's agreement scores (float32 [N]) and the truth (bool [N], mislabelled) of run ``name``'s
        ``method`` at its tipping epoch, read safely; None for a run without them."""
        return _method_tipping_scores(self.run_dir(name) / str(method))

    # -- stages: a method's folder, finished before its run -----------------------------------------
    def method_stage(self, name: str, method: str) -> MethodStage | None:
        """Run ``name``'s stage of ``method`` (:func:`read_method_stage` of its folder), whether the run has finished
        or not; None when that method has not finished there.

        Raises
        ------
        ValueError
            ``name`` is a path.
        bkd_core.errors.DamagedFileError
            the stage is there but a file of it is damaged (names it).
        """
        folder = self.run_dir(name) / str(method)
        return read_method_stage(folder) if lexists(folder / METHOD_METRICS) else None

    def stages(self) -> dict[str, tuple[str, ...]]:
        """The stages in the folder: run folder name -> the methods whose :data:`METHOD_METRICS` it holds, in the
        order of :data:`METHOD_ORDER` (runs sorted by name, finished or not; ``{}`` without the folder)."""
        if not self.path.is_dir():
            return {}
        found = {}
        for entry in sorted(os.scandir(self.path), key=lambda e: e.name):
            if not entry.is_dir():
                continue
            methods = tuple(m for m in METHOD_ORDER if lexists(Path(entry.path) / m / METHOD_METRICS))
            if methods:
                found[entry.name] = methods
        return found

    def finished_stages(self) -> Iterator[tuple[str, str, MethodStage]]:
        """``(run, method, stage)`` of every method that has finished in a run that has not (no :data:`METRICS`
        yet: a batch trains a run's methods one after the other and writes the run's metrics after the last), in
        run name and :data:`METHOD_ORDER` order. A method stopped by its deadline (it goes on when the batch is run
        again) is left out.

        Raises
        ------
        bkd_core.errors.DamagedFileError
            a stage's files are damaged (:func:`read_method_stage`), or its metrics lack its run's dataset, split and
            seed (names the folder).
        """
        finished = set(self.run_names())
        for name, methods in self.stages().items():
            if name in finished:
                continue
            for method in methods:
                stage = self.method_stage(name, method)
                if stage is None or stage.stopped_by_deadline:
                    continue
                if any(k not in stage.metrics for k in ("dataset", "split", "seed")):
                    raise DamagedFileError(f"{stage.path} holds a {METHOD_METRICS} without its run's dataset, split "
                                           "and seed; restore the file, or delete the method's folder and run the "
                                           "batch's command again")
                yield name, method, stage

    def is_finished(self, name: str, methods: Sequence[str]) -> bool:
        """Does run ``name`` have a readable :data:`METRICS` whose ``methods`` hold every method of ``methods``, none
        of them stopped by its deadline or after its first epochs? (A batch never trains over such a run; :meth:`run`
        checks the rest of the file when it is read.)"""
        if not self.has_run(name):
            return False
        try:
            run = read_run_json(self.metrics_path(name))
        except (FileNotFoundError, ValueError):
            return False
        if not (isinstance(run, dict) and isinstance(run.get("methods"), dict) and set(methods) <= set(run["methods"])):
            return False
        # a method that ended at its deadline (config.deadline_s) or after its first epochs (stop_after_epochs)
        # goes on when the batch is run again
        return not any(isinstance(m, dict) and m.get("stopped_by") in ("deadline", "stop_after_epochs")
                       for m in run["methods"].values())

    def write_run(self, name: str, metrics: dict[str, Any], samples: "pd.DataFrame") -> None:
        """Write run ``name``'s per-sample tables (:func:`bkd_core.batch.samples.write_tables`), then its
        :data:`METRICS` (last: a run with metrics has its tables), each atomically."""
        run_dir = self.run_dir(name)
        write_tables(run_dir, samples)
        atomic_write_json(run_dir / METRICS, metrics)

    # -- the summary ------------------------------------------------------------------------------
    def has_summary(self) -> bool:
        """Does the folder hold a :data:`SUMMARY` entry (is it a batch folder)?"""
        return lexists(self.path / SUMMARY)

    def summary(self) -> dict[str, Any]:
        """:data:`SUMMARY`, read safely and checked: a dict whose ``runs`` is a list of ``{"name": ...,
        "status": ...}`` and whose ``options`` is a dict; ``{"options": {}, "runs": []}`` without the file.

        Raises
        ------
        ValueError
            the file is not such a summary (names it and the fix).
        """
        path = self.path / SUMMARY
        if not lexists(path):
            return {"options": {}, "runs": []}
        summary = read_run_json(path)
        runs = summary.get("runs") if isinstance(summary, dict) else None
        if not isinstance(runs, list) or not all(isinstance(r, dict) and is_folder_name(r.get("name"))
                                                 and isinstance(r.get("status"), str) for r in runs):
            raise DamagedFileError(
                f"{path} is not a batch summary written by reproduce (no list of runs, each with a run folder's "
                "name and a status); move it away: the next reproduce into this folder writes a new one, and the "
                "runs' own folders are kept")
        summary.setdefault("options", {})
        if not isinstance(summary["options"], dict):
            raise DamagedFileError(f"{path}: 'options' holds a {type(summary['options']).__name__}, not a dict; move "
                                   "it away: the next reproduce into this folder writes a new one")
        return summary

    def options(self) -> dict[str, Any]:
        """The options of the latest batch into the folder (:data:`SUMMARY`), ``{}`` without one."""
        return self.summary()["options"]

    def write_summary(self, outcomes: Sequence[Any], options: dict[str, Any], statuses: Sequence[str]) -> None:
        """:data:`SUMMARY` (``options``, the counts of ``statuses`` among ``outcomes``, and each run's outcome,
        merged with what earlier batches into the folder reported: a run finished before keeps an earlier
        ``done`` entry, with its time, and replaces any other) and :data:`RESULTS` (every finished run).

        ``outcomes``: dataclasses with ``name``, ``status``, ``seconds`` and ``reason``
        (:class:`bkd_core.batch.runner.RunOutcome`).
        """
        runs = {r["name"]: r for r in self.summary()["runs"]}  # what earlier batches reported
        for o in outcomes:
            if o.status != "finished-before" or runs.get(o.name, {}).get("status") not in ("done", "finished-before"):
                runs[o.name] = asdict(o)
        atomic_write_json(self.path / SUMMARY, {
            "options": options, "runs": list(runs.values()),
            "counts": {s: sum(o.status == s for o in outcomes) for s in statuses},
        })
        self.write_results()

    def write_results(self) -> None:
        """:data:`RESULTS` from every finished run in the folder (:meth:`results_table`), written atomically; nothing
        when none has finished. :meth:`write_summary` writes it after each batch; after finished runs of another
        ``reproduce`` command (e.g. other splits, ``--methods bkd --set stop_after_detection=true``) were copied into
        the folder, this writes it again with them."""
        table = self.results_table()
        if len(table):
            with atomic_path(self.path / RESULTS) as tmp:
                table.to_csv(tmp, index=False)

    # -- tables -----------------------------------------------------------------------------------
    def results_table(self, *, stages: bool = False) -> "pd.DataFrame":
        """One row per (dataset, split, seed, method) of every finished run, sorted by split (CIFAR-N order),
        seed and method; columns :data:`COLUMNS` (missing values are NaN): what :data:`RESULTS` holds.

        Every value comes from the runs' :data:`METRICS` as :func:`shown_metrics` shows them: a run that stopped at
        its detection (``stopped_by`` :data:`STOPPED_AT_DETECTION`) has no :data:`PHASE_2_COLUMNS`; ``ranking_auc``
        is what the run computed from its full samples table, NaN on a split with no wrong label;
        ``configuration`` is :func:`configuration_of` the run and ``run`` its folder's name.

        Confident learning's folds belong to a configuration only through the runs that trained it
        (:data:`FOLD_METHODS`): a run without such a method (e.g. BKD alone, from another ``reproduce`` command into
        the same folder) gets the folds of the first finished run of its configuration that has one, else those of
        the batch's options, else its own, so that the two are summarised together.

        Parameters
        ----------
        stages : bool, keyword-only
            Add one row per method finished in a run that has not (:meth:`finished_stages`), read from its own
            :data:`METHOD_METRICS`: its ``ranking_auc`` is NaN (the batch computes it from the finished run's samples
            table), and its ``configuration`` is the one a finished run of the same configuration gets (confident
            learning's own stage: with the folds of the batch's options first), so the two are summarised together.
        """
        import pandas as pd

        default_folds = self.options().get("folds")
        runs = list(self.runs())
        trained: dict[str, Any] = {}  # configuration without its folds -> the folds of a finished run that used them
        recorded: dict[str, Any] = {}  # ... -> the folds any finished run of it records
        for name, run in runs:
            if isinstance(run.get("config"), dict):
                key = configuration_of({"config": run["config"]}, self.metrics_path(name))
                recorded.setdefault(key, run.get("folds", 3))
                if FOLD_METHODS & set(run["methods"]):
                    trained.setdefault(key, run.get("folds", 3))

        def folds_of(key: str, methods: set[str], own: Any) -> Any:
            if FOLD_METHODS & methods:
                return own
            return trained.get(key) or default_folds or own or recorded.get(key, 3)

        rows = []
        for name, run in runs:
            configuration = configuration_of(run, self.metrics_path(name))
            if isinstance(run.get("config"), dict):
                key = configuration_of({"config": run["config"]}, self.metrics_path(name))
                configuration = _with_folds(key, folds_of(key, set(run["methods"]), run.get("folds", 3)))
            for method, metrics in run["methods"].items():
                shown = shown_metrics(metrics)
                row = {key: shown.get(key) for key in COLUMNS}
                row.update(dataset=run["dataset"], split=run["split"], seed=run["seed"], method=method,
                           profile=run.get("profile"), configuration=configuration, run=name)
                rows.append(row)
        if stages:
            for name, method, stage in self.finished_stages():
                key = configuration_of({"config": stage.config.to_dict()}, stage.path / METHOD_CONFIG)
                n_folds = ((default_folds or trained.get(key) or recorded.get(key, 3)) if method in FOLD_METHODS
                           else folds_of(key, {method}, None))
                shown = shown_metrics(stage.metrics)
                row = {column: shown.get(column) for column in COLUMNS}
                row.update(method=method, run=name, configuration=_with_folds(key, n_folds))
                rows.append(row)
        table = pd.DataFrame(rows, columns=list(COLUMNS))
        if len(table):  # CIFAR-N order of splits, then seeds, then methods; unknown splits last
            split_rank = {s: i for i, s in enumerate(SPLIT_ORDER)}
            method_rank = {m: i for i, m in enumerate(METHOD_ORDER)}
            table = table.sort_values(["split", "seed", "method"], key=lambda col: col.map(
                lambda v: (split_rank if col.name == "split" else method_rank if col.name == "method" else {})
                .get(v, 99)) if col.name != "seed" else col, kind="stable").reset_index(drop=True)
        return table

    def first_config(self) -> dict[str, Any]:
        """The recorded configuration (a dict) of the first finished run that has one.

        Raises
        ------
        FileNotFoundError
            no finished run records a configuration.
        """
        for _, run in self.runs():
            if isinstance(run.get("config"), dict):
                return run["config"]
        raise FileNotFoundError(f"no finished run in {self.path} records its configuration; "
                                f"write one with: python -m bkd_core reproduce --out {self.path}")

    # -- code checks ------------------------------------------------------------------------------
    def code_checks(self) -> list[dict[str, Any]]:
        """The reruns recorded in :data:`CODE_CHECKS` (:mod:`bkd_core.batch.check`), oldest first; ``[]``
        without the file.

        Raises
        ------
        ValueError
            the file is not such a record (names it and the fix).
        """
        path = self.path / CODE_CHECKS
        if not lexists(path):
            return []
        stored = read_run_json(path)
        checks = stored.get("checks") if isinstance(stored, dict) else None
        if not isinstance(checks, list) or not all(isinstance(c, dict) and {"run", "code_hash", "identical"} <= set(c)
                                                   for c in checks):
            raise DamagedFileError(f"{path} is not a record of checks written by 'python -m bkd_core check' (a list "
                                   "of checks, each with run, code_hash and identical); move it away and rerun the "
                                   "checks")
        return checks

    def add_code_check(self, check: dict[str, Any]) -> None:
        """Append ``check`` to :data:`CODE_CHECKS`, replacing an earlier check of the same kind (a rerun, or a
        replay of the first epochs) of the same run from the same recorded code by the same code."""
        def key(c: dict[str, Any]) -> tuple[Any, ...]:
            return c["run"], c.get("recorded_code_hash"), c["code_hash"], c.get("kind")

        checks = [c for c in self.code_checks() if key(c) != key(check)]
        atomic_write_json(self.path / CODE_CHECKS, {"checks": [*checks, check]})

    # -- what a table cannot show -----------------------------------------------------------------
    def problems(self) -> list[str]:
        """What a results table of the folder cannot show, one sentence each (``[]`` when there is nothing):

        - runs :data:`SUMMARY` lists as finished (done, finished-before) whose :data:`METRICS` is missing;
        - runs whose :data:`METRICS` was edited: a recorded configuration that no longer gives the recorded
          fingerprint, or any number the results show (each method's metrics, its ``ranking_auc`` included)
          that differs from that method's own ``metrics.json`` beside it, or that it lacks.
        """
        from ..config import BKDConfig

        problems = []
        missing = [r["name"] for r in self.summary()["runs"]
                   if r["status"] in ("done", "finished-before") and not self.has_run(r["name"])]
        if missing:
            problems.append(f"{SUMMARY} lists {len(missing)} finished run(s) that are missing from {self.path}: "
                            f"{', '.join(missing)}; the table leaves them out (restore them, or rerun the batch)")
        shown = set(COLUMNS) - {"dataset", "split", "seed", "method", "profile", "configuration", "run", "device",
                                "wall_time_s"}
        written = self._written_results()
        for name, run in self.runs():
            edited = []
            config, recorded = run.get("config"), run.get("fingerprint")
            if isinstance(config, dict) and recorded is not None:
                try:
                    edited_config = BKDConfig.from_dict(config).fingerprint() != recorded
                except (ValueError, TypeError):
                    edited_config = True
                if edited_config:
                    edited.append("its configuration no longer gives its recorded fingerprint")
            for method, metrics in run["methods"].items():
                own = self.method_metrics(name, method)
                if own is None:
                    continue
                edited += [f"methods.{method}.{key} is {metrics[key]!r} but {own[key]!r} in {method}/{METHOD_METRICS}"
                           for key in sorted(set(metrics) & set(own) - BATCH_ONLY_KEYS, key=str)
                           if not _same(metrics[key], own[key])]
                edited += [f"methods.{method}.{key} is {metrics[key]!r} but {method}/{METHOD_METRICS} has no {key}"
                           for key in sorted(shown & set(metrics) - set(own) - BATCH_ONLY_KEYS, key=str)
                           if metrics[key] is not None]
                edited += _edited_auc(self.run_dir(name), method, metrics)
            for method, metrics in run["methods"].items():
                row, metrics = written.get((name, str(method))), shown_metrics(metrics)  # as RESULTS shows them
                if row is not None:
                    edited += [f"methods.{method}.{key} is {metrics.get(key)!r} but {row[key]!r} in {RESULTS}"
                               for key in sorted(shown, key=str) if key in row and not _same_cell(metrics.get(key),
                                                                                                   row[key])]
            if edited:
                problems.append(f"{self.metrics_path(name)} was edited after the run wrote it ({'; '.join(edited[:3])}"
                                f"{'; ...' if len(edited) > 3 else ''}): its numbers in the table are not the run's")
        return problems

    def _written_results(self) -> dict[tuple[str, str], dict[str, Any]]:
        """:data:`RESULTS` as the batch wrote it, by (run, method); ``{}`` without it or when it cannot be read
        (it is rewritten by the next batch into the folder)."""
        path = self.path / RESULTS
        if not lexists(path):
            return {}
        from .files import read_run_csv

        try:
            table = read_run_csv(path)
        except ValueError:
            return {}
        if not {"run", "method"} <= set(table.columns):
            return {}
        return {(str(row["run"]), str(row["method"])): row for row in table.to_dict("records")}


def _same_cell(value: Any, cell: Any) -> bool:
    """A recorded metric against its cell in :data:`RESULTS` (where None was written as an empty cell)."""
    missing = value is None or (isinstance(value, float) and np.isnan(value))
    empty = cell is None or (isinstance(cell, float) and np.isnan(cell))
    if missing or empty:
        return missing and empty
    if isinstance(value, bool) or isinstance(cell, bool) or isinstance(value, str) or isinstance(cell, str):
        return str(value) == str(cell)
    try:
        return bool(np.isclose(float(value), float(cell), rtol=1e-12, atol=0))
    except (TypeError, ValueError):
        return str(value) == str(cell)


def _edited_auc(run_dir: Path, method: str, metrics: dict[str, Any]) -> list[str]:
    """A method's recorded ``ranking_auc`` against the one its run's full samples table gives (where the run
    still has it: it is not committed), else against its ``scores.npz`` (where it has that), as one sentence."""
    if "ranking_auc" not in metrics:
        return []
    recorded = metrics["ranking_auc"]
    again = _auc_from_files(run_dir, method)
    if again is _UNKNOWN:
        return []
    if recorded is None and again is None:
        return []
    if recorded is None or again is None or not isinstance(recorded, (int, float)) \
            or not np.isclose(float(recorded), again, rtol=0, atol=1e-12):
        return [f"methods.{method}.ranking_auc is {recorded!r} but its run's scores give {again!r}"]
    return []


_UNKNOWN = object()


def _auc_from_files(run_dir: Path, method: str) -> Any:
    from .files import load_run_arrays
    from .samples import ranking_aucs, read_samples, samples_file

    if samples_file(run_dir) is not None:
        samples = read_samples(run_dir)
        if f"{method}_quality" in samples:
            return ranking_aucs(samples[["index", "given_label", "clean_label", f"{method}_quality"]])[method]
    scores = run_dir / str(method) / METHOD_SCORES
    if lexists(scores):
        from ..metrics import ranking_auc

        arrays = load_run_arrays(scores)
        if {"label_quality", "given_labels", "clean_labels"} <= set(arrays):
            is_noisy = arrays["given_labels"] != arrays["clean_labels"]
            auc = ranking_auc(arrays["label_quality"].astype(np.float64), is_noisy)
            return None if np.isnan(auc) else float(auc)
    return _UNKNOWN
