"""Checking a batch's runs with other code: rerun, compare, record a verdict, chain identical checks.

A run of a batch (``OUT/RUN``) is rerun with the current code, either here (:func:`check_run`) or as part of
a whole batch rerun into another folder (``reproduce --out NEW``, then :func:`record_check`), and compared
with the recorded run file for file (:func:`compare_runs`). Each check is appended to the batch folder's
record of checks (:meth:`bkd_core.batch.BatchFolder.add_code_check`) with one of three verdicts:

- :data:`IDENTICAL`: every compared value is equal, bit for bit;
- :data:`WITHIN_TOLERANCE`: not identical, but the run and its rerun were made on different CPU models
  (float results differ between CPUs in their last digits, and training amplifies them), and each number
  of :data:`TOLERANCES` agrees within its tolerance;
- :data:`DIFFERS`: anything else.

Two reruns made side by side on one machine by older and by current code compare exactly
(``reference``), and identical checks chain (:func:`identical_codes`): code A made the run, A's rerun on
that machine was identical, and the current code's rerun here was identical to A's rerun here.

A run too long to rerun can be *replayed* instead (:func:`replay_runs`): the current code trains its first
``K`` epochs again (``stop_after_epochs``), on the CPU model that made it, and their per-epoch curves are
compared bit for bit with the recorded run's first ``K``. The verdict :data:`REPLAYED` says that the current
code computes those ``K`` epochs of that run as the recorded code did, and nothing more: not the later
epochs, not the detection, not the methods left out (cleanlab's fold runs are never replayed). A replay never
makes a run identical, and identical checks never chain through one.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..data import load_cifar_n
from .files import MAX_TABLE_BYTES, lexists, load_run_arrays, read_run_bytes, read_run_json
from .folder import METHOD_CURVES, METHOD_METRICS, METHOD_SCORES, METRICS, BatchFolder
from .runner import Loader, cpu_model, run_config, run_one
from .samples import HIGHLIGHTS

IDENTICAL = "identical"
WITHIN_TOLERANCE = "reproduced within tolerance"
#: A replay's verdict: the first epochs of the replayed methods came out identical (:func:`replay_run`).
REPLAYED = "first epochs identical"
DIFFERS = "differs"
#: The verdicts of a check, strongest first.
VERDICTS = (IDENTICAL, WITHIN_TOLERANCE, REPLAYED, DIFFERS)
#: The ``kind`` of a replay's check (a rerun's check has none).
REPLAY = "replay"
#: Per-epoch curves a replay does not compare: times.
CURVES_VOLATILE = frozenset({"epoch_time"})

#: Largest difference of each method's number (in its batch ``metrics.json``) for :data:`WITHIN_TOLERANCE`, in
#: the number's own unit: accuracies are in %, so 1.0 is 1 point; noise estimates and F1 scores are fractions,
#: so 0.03 is 3 points and 0.01 is 1 point; ranking ROC-AUC 0.01.
TOLERANCES: dict[str, float] = {
    "test_acc": 1.0, "best_test_acc": 1.0,
    "estimated_noise_rate": 0.03,
    "detection_f1": 0.01, "below_threshold_f1": 0.01, "flag_all_f1": 0.01,
    "ranking_auc": 0.01,
}

#: Keys of a batch run's ``metrics.json`` that a rerun may change without changing what the run computed.
RUN_VOLATILE = frozenset({"code_hash", "wall_time_s", "machine", "threads"})
#: Keys of each method's metrics (in the run's ``metrics.json`` and in the method's own) that a rerun may change:
#: times, the machine (and the precision it resolved ``"native"`` to), the command line, library versions.
METHOD_VOLATILE = frozenset({"wall_time_s", "elapsed", "epoch_time", "device", "precision", "command", "versions"})
#: ... and per method: the cleanlab version confident learning records under the key ``cleanlab``.
METHOD_VOLATILE_BY_METHOD: dict[str, frozenset[str]] = {"cleanlab": frozenset({"cleanlab"})}
#: Metrics added after runs were recorded, with the value every run recorded before had: a recorded run
#: without the key compares equal to a rerun at that value.
LATER_METRICS: dict[str, Any] = {"stopped_by": "epochs"}


def _volatile(path: tuple[str, ...], method_file: str | None) -> bool:
    """Is the value at ``path`` (keys from the file's top) volatile? ``method_file``: the method whose own
    ``metrics.json`` the path is in, or None for the run's ``metrics.json``."""
    if method_file is None:
        if len(path) == 1:
            return path[0] in RUN_VOLATILE
        if len(path) == 3 and path[0] == "methods":
            method, key = path[1], path[2]
            return key in METHOD_VOLATILE or key in METHOD_VOLATILE_BY_METHOD.get(method, ())
        return False
    return len(path) == 1 and (path[0] in METHOD_VOLATILE or path[0] in METHOD_VOLATILE_BY_METHOD.get(method_file, ()))


def _method_level(path: tuple[str, ...], method_file: str | None) -> bool:
    """Is ``path`` a key of a method's metrics (where :data:`LATER_METRICS` may be absent)?"""
    return (method_file is not None and len(path) == 1) or (method_file is None and len(path) == 3
                                                             and path[0] == "methods")


def compare_runs(recorded: str | os.PathLike, rerun: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Where two runs of one (split, seed) differ: every value of the run's ``metrics.json`` (each method's
    metrics, ranking AUC included), of each method's own ``metrics.json`` (per-epoch histories included),
    ``highlights.csv`` byte for byte, and, where the recorded run still has them (they are not committed),
    each method's ``scores.npz`` array for array; floats compared exactly. Left out: the volatile keys at
    their exact paths (:data:`RUN_VOLATILE`, :data:`METHOD_VOLATILE`, :data:`METHOD_VOLATILE_BY_METHOD`),
    per-epoch times in ``scores.npz``, a configuration field removed since
    (:data:`bkd_core.config.RETIRED_FIELDS`) at its one value, a metric added since (:data:`LATER_METRICS`) at
    its value for older runs, and cleanlab's fold runs (compared through cleanlab's outputs). Every file
    is read safely (:mod:`bkd_core.batch.files`).

    Returns
    -------
    tuple of (list of str, list of str)
        The files compared, and one line per difference (``"bkd/metrics.json: test_acc: 61.2 != 61.3"``),
        ``[]`` when the runs are identical.

    Raises
    ------
    ValueError
        A file of either run is not a regular file, too large, or not readable (one sentence naming it).
    """
    from ..config import without_retired

    recorded, rerun = Path(recorded), Path(rerun)
    missing = object()

    def diff(path: tuple[str, ...], a: Any, b: Any, method_file: str | None) -> list[str]:
        where = ".".join(path)
        if path and _volatile(path, method_file):
            return []
        if _method_level(path, method_file) and path[-1] in LATER_METRICS:
            a = LATER_METRICS[path[-1]] if a is missing else a
            b = LATER_METRICS[path[-1]] if b is missing else b
        if path and path[-1] == "config" and isinstance(a, dict) and isinstance(b, dict):
            a, b = without_retired(a), without_retired(b)  # a field that was removed since, at its one value
        if isinstance(a, dict) and isinstance(b, dict):
            return [line for key in sorted(set(a) | set(b), key=str)
                    for line in diff((*path, str(key)), a.get(key, missing), b.get(key, missing), method_file)]
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            return [line for i, (x, y) in enumerate(zip(a, b))
                    for line in diff((*path[:-1], f"{path[-1]}[{i}]") if path else (f"[{i}]",), x, y, method_file)]
        a = None if a is missing else a
        b = None if b is missing else b
        same = a == b or (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b))
        return [] if same else [f"{where or 'the file'}: {a!r} != {b!r}"]

    def read(folder: Path, name: str) -> Any:
        return read_run_json(folder / name) if lexists(folder / name) else None

    first = read(recorded, METRICS)
    methods = list(first["methods"]) if isinstance(first, dict) and isinstance(first.get("methods"), dict) else []
    names = [METRICS, *(f"{m}/{METHOD_METRICS}" for m in methods if lexists(recorded / m / METHOD_METRICS))]
    found = []
    for name in names:
        method_file = None if name == METRICS else name.split("/")[0]
        found += [f"{name}: {line}" for line in diff((), read(recorded, name), read(rerun, name), method_file)]
    if lexists(recorded / HIGHLIGHTS):
        names.append(HIGHLIGHTS)
        rerun_rows = read_run_bytes(rerun / HIGHLIGHTS, limit=MAX_TABLE_BYTES) if lexists(rerun / HIGHLIGHTS) else b""
        if read_run_bytes(recorded / HIGHLIGHTS, limit=MAX_TABLE_BYTES) != rerun_rows:
            found.append(f"{HIGHLIGHTS}: the rows or their values differ")
    for name in (f"{m}/{METHOD_SCORES}" for m in methods):  # not committed: compared where the recorded run has it
        if lexists(recorded / name):
            names.append(name)
            if not lexists(rerun / name):
                found.append(f"{name}: missing from the rerun")
                continue
            a, b = load_run_arrays(recorded / name), load_run_arrays(rerun / name)
            for key in sorted((set(a) | set(b)) - {"history_epoch_time"}):
                if key not in a or key not in b or not np.array_equal(a[key], b[key], equal_nan=True):
                    found.append(f"{name}: {key} differs")
    return names, found


def within_tolerance(recorded: dict[str, Any], rerun: dict[str, Any]) -> list[str]:
    """Where two runs' numbers (their ``metrics.json`` as read) differ by more than :data:`TOLERANCES`: one line
    per number, ``[]`` when every number of every method agrees within its tolerance."""
    found = []
    for method, metrics in recorded["methods"].items():
        again = rerun["methods"].get(method)
        if not isinstance(again, dict):
            found.append(f"methods.{method}: missing from the rerun")
            continue
        for key, tolerance in TOLERANCES.items():
            a, b = metrics.get(key), again.get(key)
            if a is None and b is None:
                continue
            if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not abs(a - b) <= tolerance:
                found.append(f"methods.{method}.{key}: {a!r} and {b!r} differ by more than {tolerance:g}")
    return found


def rerun_key(run: dict[str, Any], path: str | Path) -> tuple[Any, ...]:
    """What a rerun must share with the run it reruns: dataset, split, seed, folds, methods, and the fingerprint
    of its recorded configuration (every field that can change results; :meth:`bkd_core.config.BKDConfig.fingerprint`).

    Raises
    ------
    ValueError
        the run records no configuration, an invalid one, or one edited since (names ``path``).
    """
    from ..config import BKDConfig

    fix = "restore the file from the batch's copy (e.g. git checkout), or rerun the batch"
    config = run.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{path} records no configuration, so it cannot be told what it reruns; {fix}")
    try:
        fingerprint = BKDConfig.from_dict(config).fingerprint()
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path} records an invalid configuration ({exc}); {fix}") from None
    if run.get("fingerprint") is not None and run["fingerprint"] != fingerprint:
        raise ValueError(f"{path} was edited: its configuration gives fingerprint {fingerprint}, the run recorded "
                         f"{run['fingerprint']}; {fix}")
    return (run["dataset"], run["split"], run["seed"], run.get("folds", 3), tuple(sorted(run["methods"])), fingerprint)


def _require_rerun_of(recorded: dict[str, Any], recorded_path: Path, rerun: dict[str, Any], rerun_path: Path) -> None:
    """Refuse ``rerun`` unless it reruns ``recorded``: the same :func:`rerun_key`."""
    want, got = rerun_key(recorded, recorded_path), rerun_key(rerun, rerun_path)
    if want != got:
        fields = ("dataset", "split", "seed", "folds", "methods", "configuration fingerprint")
        what = "; ".join(f"{name} {g!r} instead of {w!r}" for name, w, g in zip(fields, want, got) if w != g)
        raise ValueError(f"{rerun_path} is not a rerun of {recorded_path} ({what}): rerun the batch with the recorded "
                         "run's options (reproduce --profile, --set, --folds and --methods as recorded) into a new "
                         "folder, and check that one")


def recorded_run(out: str | os.PathLike, run: str) -> dict[str, Any]:
    """What a finished run of a batch was trained with, from its own ``metrics.json`` (not the batch's summary,
    which the latest batch into the folder rewrites): ``dataset``, ``split``, ``seed``, ``profile``,
    ``overrides`` (every field of its recorded configuration but seed and device), ``device``, ``methods``,
    ``folds`` and ``threads``: the run's recorded ``threads``, else the batch's threads per run, else 1,
    at most this machine's cores.

    Raises
    ------
    FileNotFoundError
        ``out/run`` holds no finished run.
    ValueError
        ``run`` is a path, the file is not a run's metrics, or the recorded configuration is
        missing, invalid or was edited (it no longer gives the recorded fingerprint).
    """
    from ..config import BKDConfig

    folder = BatchFolder(out)
    metrics = folder.run(run)
    rerun_key(metrics, folder.metrics_path(run))  # a configuration that is there, valid and not edited
    recorded = metrics["config"]
    config = BKDConfig.from_dict(recorded)
    return {"dataset": metrics["dataset"], "split": metrics["split"], "seed": int(metrics["seed"]),
            "profile": metrics.get("profile", config.profile),
            # every field, those recorded before they existed at their defaults: the profile adds nothing
            "overrides": {k: v for k, v in config.to_dict().items() if k not in ("seed", "device")},
            "device": config.device, "methods": list(metrics["methods"]), "folds": int(metrics.get("folds", 3)),
            "threads": recorded_threads(metrics, {} if "threads" in metrics else folder.options())}


def recorded_threads(metrics: dict[str, Any], options: dict[str, Any], *, at_most_cores: bool = True) -> int:
    """The torch threads a run was made with, from structured fields only: its ``threads`` (recorded by the
    run), else its batch's ``threads`` option; 1 when neither is a positive integer; at most this machine's
    cores (more threads than cores would only slow a rerun down) unless ``at_most_cores`` is False."""
    for value in (metrics.get("threads"), options.get("threads")):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return min(value, os.cpu_count() or 1) if at_most_cores else value
    return 1


def check_run(out: str | os.PathLike, run: str, *, work_dir: str | os.PathLike | None = None,
              data_dir: str | None = None, threads: int | None = None, progress: bool = True,
              loader: Loader = load_cifar_n) -> dict[str, Any]:
    """Rerun one finished run of a batch with the current code and record whether it came out identical.

    The run (``out/run``, named by its folder name) is trained again from scratch with its own recorded
    settings (:func:`recorded_run`: configuration, methods, folds and torch threads, since the number of
    threads changes float sums) into ``work_dir/run`` (default: a temporary folder, deleted afterwards),
    then :func:`record_check`. Nothing in the recorded run's folder is written. ``loader`` loads the data
    (:func:`bkd_core.batch.runner.run_one`).

    Returns
    -------
    dict[str, Any]
        The recorded check (:func:`record_check`).

    Raises
    ------
    FileNotFoundError
        ``out/run`` holds no finished run.
    ValueError
        ``run`` is a path, its recorded configuration was edited, or ``work_dir/run`` is (or
        overlaps) the recorded run's folder.
    """
    import shutil
    import tempfile

    out = Path(out)
    settings = recorded_run(out, run)
    threads = min(threads or settings["threads"], os.cpu_count() or 1)
    if work_dir is not None:
        _refuse_inside(Path(work_dir) / run, out / run)
    scratch = Path(tempfile.mkdtemp(prefix="bkd-check-")) if work_dir is None else Path(work_dir)
    try:
        run_one(settings["dataset"], settings["split"], settings["seed"], scratch / run, profile=settings["profile"],
                overrides=settings["overrides"], methods=settings["methods"], folds=settings["folds"],
                data_dir=data_dir, device=settings["device"], threads=threads, progress=progress, loader=loader)
        return record_check(out, run, scratch / run, threads=threads)
    finally:
        if work_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)


def _refuse_inside(rerun: Path, recorded: Path) -> None:
    """Refuse a rerun folder that is the recorded run's folder, lies inside it, or holds it."""
    a, b = rerun.resolve(), recorded.resolve()
    if a == b or b in a.parents or a in b.parents:
        raise ValueError(f"the rerun folder {rerun} is or overlaps the recorded run {recorded}: a check never writes "
                         "into a recorded run nor compares a run with itself; rerun into another folder")


def require_batch_folder(path: str | os.PathLike, flag: str) -> BatchFolder:
    """``path`` as a batch folder with at least one finished run, for ``check``'s ``flag`` (``--rerun``).

    Raises
    ------
    FileNotFoundError
        ``path`` is missing, a file, or holds no finished run (one sentence).
    """
    folder = BatchFolder(path)
    if not Path(path).is_dir():
        what = "is a file" if Path(path).exists() else "does not exist"
        raise FileNotFoundError(f"{flag} {path} {what}: name a batch folder written by 'python -m bkd_core "
                                "reproduce --out'")
    if not folder.run_names():
        raise FileNotFoundError(f"{flag} {path} holds no finished run: name a batch folder written by "
                                "'python -m bkd_core reproduce --out' that finished at least one run")
    return folder


def record_check(out: str | os.PathLike, run: str, rerun: str | os.PathLike, *,
                 threads: int | None = None, reference: str | os.PathLike | None = None) -> dict[str, Any]:
    """Compare a batch run (``out/run``) with a rerun of it (:func:`compare_runs`), give the verdict and append
    the check to the batch folder's record (:meth:`BatchFolder.add_code_check`), which the results chapter
    reads (:func:`run_verdicts`). The rerun is :func:`check_run`'s, or a run of a whole batch rerun into
    another folder (``reproduce --out NEW`` with the same options, then ``check OUT --rerun NEW``); the check
    is credited to the code that made the rerun (its ``metrics.json``'s ``code_hash``).

    ``reference``: another rerun of the same run, made on this machine by older code; the rerun is compared
    with it instead of with ``out/run``. Float results differ between CPUs in their last digits, so a run
    made on another machine is never reproduced bit for bit here, but two versions of the code can still be
    compared exactly side by side on one machine. The check records that the code of ``reference`` and the
    code of ``rerun`` compute the same (``recorded_code_hash`` is the reference's); identical checks chain
    (:func:`identical_codes`).

    The rerun (and the reference) must be reruns of ``out/run``: the same dataset, split, seed, folds, methods
    and configuration fingerprint (:func:`rerun_key`); anything else is refused before anything is recorded.

    Verdict: :data:`IDENTICAL` when nothing differs; :data:`WITHIN_TOLERANCE` when the compared runs record
    different CPU models (or one records none) and every number of :data:`TOLERANCES` agrees within its
    tolerance; :data:`DIFFERS` otherwise.

    Returns
    -------
    dict[str, Any]
        The recorded check: ``run``, ``recorded_code_hash``, ``code_hash`` (the rerun's), ``identical``,
        ``verdict``, ``compared`` (the files), ``differences`` (at most 20 lines), ``threads``, ``device``,
        ``machine``, ``checked_at`` (and ``tolerances`` with a :data:`WITHIN_TOLERANCE` verdict).

    Raises
    ------
    FileNotFoundError
        ``out/run`` or the rerun is not a finished run.
    ValueError
        ``run`` is a path, the rerun (or the reference) is not a rerun of ``out/run``, or it is
        (or overlaps) the recorded run's folder.
    """

    batch, rerun = BatchFolder(out), Path(rerun)
    _refuse_inside(rerun, batch.run_dir(run))
    original = batch.run(run)
    again_folder = BatchFolder(rerun.parent)
    again = again_folder.run(rerun.name)
    _require_rerun_of(original, batch.metrics_path(run), again, again_folder.metrics_path(rerun.name))
    base, recorded = batch.run_dir(run), original
    if reference is not None:
        base = Path(reference)
        _refuse_inside(base, batch.run_dir(run))
        _refuse_inside(rerun, base)
        recorded = BatchFolder(base.parent).run(base.name)
        _require_rerun_of(original, batch.metrics_path(run), recorded, base / METRICS)
    compared, differences = compare_runs(base, rerun)
    verdict = IDENTICAL if not differences else DIFFERS
    other_cpu = _cpu(recorded) != _cpu(again) or not _cpu(recorded)
    if differences and other_cpu and not within_tolerance(recorded, again):
        verdict = WITHIN_TOLERANCE
    check = {"run": run, "recorded_code_hash": recorded.get("code_hash"), "code_hash": again.get("code_hash"),
             "identical": not differences, "verdict": verdict, "compared": compared, "differences": differences[:20],
             "threads": threads or again.get("threads") or again_folder.options().get("threads"),
             "device": next(iter(again["methods"].values()), {}).get("device", ""),
             **_machine_and_time()}
    if verdict == WITHIN_TOLERANCE:
        check["tolerances"] = dict(TOLERANCES)
        check["cpus"] = [_cpu(recorded) or "not recorded", _cpu(again) or "not recorded"]
    if reference is not None:
        check["side_by_side"] = True  # both codes rerun on this machine; out/run itself was not compared
    batch.add_code_check(check)
    return check


def _machine_and_time() -> dict[str, str]:
    """Where and when a check is made, for its record: ``machine`` (architecture, cores, CPU model) and
    ``checked_at`` (UTC)."""
    import platform

    model = cpu_model()
    return {"machine": f"{platform.machine()}, {os.cpu_count()} cores{', ' + model if model else ''}",
            "checked_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def _cpu(run: dict[str, Any]) -> str:
    """The CPU model a run recorded (``machine.cpu``), ``""`` when it recorded none."""
    machine = run.get("machine")
    return str(machine.get("cpu") or "") if isinstance(machine, dict) else ""


def verdict_of(check: dict[str, Any]) -> str:
    """A recorded check's verdict (checks recorded before verdicts existed: from ``identical``)."""
    verdict = check.get("verdict")
    if verdict in VERDICTS:
        return verdict
    return IDENTICAL if check.get("identical") is True else DIFFERS


def identical_codes(checks: list[dict[str, Any]], run: str, recorded: str,
                    accept: Callable[[dict[str, Any]], bool] | None = None) -> set[str]:
    """Code hashes that computed ``run`` as code ``recorded`` did: reachable from it through checks of the run
    that ``accept`` (default: identical ones). Replays (:data:`REPLAY`) are never links of the chain."""
    accept = accept or (lambda c: verdict_of(c) == IDENTICAL)
    reached, frontier = {recorded}, [recorded]
    while frontier:
        source = frontier.pop()
        for c in checks:
            if c["run"] == run and c.get("kind") != REPLAY and accept(c) and c.get("recorded_code_hash") == source \
                    and c["code_hash"] not in reached:
                reached.add(c["code_hash"])
                frontier.append(c["code_hash"])
    return reached


def run_verdicts(out: str | os.PathLike, current: str | None = None) -> dict[str, str]:
    """The verdict on each finished run of ``out`` for the ``current`` code (default: this package's), by run
    name: :data:`IDENTICAL` when the current code made it or reproduced it bit for bit (directly or through a
    chain of identical checks, :func:`identical_codes`), else :data:`WITHIN_TOLERANCE` when a chain of checks
    each identical or within tolerance reaches the current code, else :data:`REPLAYED` when the current code
    replayed the run's first epochs identically (:func:`replay_of`), else ``""`` (not reproduced by the current
    code, or the code version was not recorded)."""
    from ..provenance import code_hash

    current = current or code_hash()
    folder = BatchFolder(out)
    checks = folder.code_checks()
    verdicts = {}
    for name, run in folder.runs():
        recorded = run.get("code_hash")
        if not recorded:
            verdicts[name] = ""
        elif recorded == current or current in identical_codes(checks, name, recorded):
            verdicts[name] = IDENTICAL
        elif current in identical_codes(checks, name, recorded,
                                        lambda c: verdict_of(c) in (IDENTICAL, WITHIN_TOLERANCE)):
            verdicts[name] = WITHIN_TOLERANCE
        elif replay_of(checks, name, recorded, current) is not None:
            verdicts[name] = REPLAYED
        else:
            verdicts[name] = ""
    return verdicts


def replay_of(checks: list[dict[str, Any]], run: str, recorded: str, current: str) -> dict[str, Any] | None:
    """The replay that vouches for the ``current`` code on ``run`` (made by code ``recorded``): its check with
    verdict :data:`REPLAYED`, or None when there is none, or when a check of the run by the current code
    against the recorded code (a replay or a rerun) differs."""
    mine = [c for c in checks if c["run"] == run and c.get("recorded_code_hash") == recorded
            and c["code_hash"] == current]
    if any(verdict_of(c) == DIFFERS for c in mine):
        return None
    return next((c for c in reversed(mine) if c.get("kind") == REPLAY and verdict_of(c) == REPLAYED), None)


def check_reruns(out: str | os.PathLike, rerun: str | os.PathLike, *, runs: list[str] | None = None,
                 reference: str | os.PathLike | None = None, threads: int | None = None) -> list[dict[str, Any]]:
    """:func:`record_check` for each run of ``runs`` (default: every finished run of ``out`` that ``rerun``, and
    ``reference`` when given, also hold), after checking every pair first: nothing is recorded when any rerun
    (or reference) is not a rerun of its run of ``out``.

    Raises
    ------
    FileNotFoundError
        ``rerun`` or ``reference`` is missing, a file or holds no finished run, or no run of
        ``out`` is in them (one sentence).
    ValueError
        a rerun or a reference is not a rerun of its run of ``out`` (:func:`rerun_key`).
    """
    batch = BatchFolder(out)
    again = require_batch_folder(rerun, "--rerun")
    base = require_batch_folder(reference, "--reference") if reference is not None else None
    if not runs:
        runs = [r for r in again.run_names() if batch.has_run(r) and (base is None or base.has_run(r))]
        if not runs:
            where = f"{rerun}" + (f" and {reference}" if reference is not None else "")
            raise FileNotFoundError(f"no finished run of {out} is in {where}: rerun the batch there first "
                                    f"(reproduce with the same options and --out {rerun})")
    for run in runs:  # every pair first: a refusal records nothing
        original = batch.run(run)
        for folder in (again, base):
            if folder is not None:
                _require_rerun_of(original, batch.metrics_path(run), folder.run(run), folder.metrics_path(run))
    return [record_check(out, run, again.run_dir(run), threads=threads,
                         reference=None if base is None else base.run_dir(run)) for run in runs]


# -- replays: the first epochs of a run, again ----------------------------------------------------

def replay_methods() -> tuple[str, ...]:
    """The methods a replay can replay: those whose run is one run of the training loop
    (``Method.single_run``: BKD and the cross-entropy baseline), which records its per-epoch curves.
    Confident learning's fold runs are not replayed."""
    from ..detectors import METHODS

    return tuple(name for name, method in METHODS.items() if method.single_run)


def _no_value(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _same_value(a: Any, b: Any) -> bool:
    """Equal bit for bit: numbers by their float64 bits (``-0.0`` is not ``0.0``), NaN and None alike."""
    if _no_value(a) or _no_value(b):
        return _no_value(a) and _no_value(b)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return float(a).hex() == float(b).hex() if numbers else a == b


def compare_curves(recorded: dict[str, Any], replayed: dict[str, Any], epochs: int) -> list[str]:
    """Where a replay's per-epoch curves (a method's ``curves.json``, :func:`bkd_core.metrics.epoch_curves`)
    differ from the recorded run's first ``epochs`` entries: the same curves (but the times,
    :data:`CURVES_VOLATILE`), each value equal bit for bit as read from the files (None and NaN alike; a
    curve shorter than ``epochs`` has no value at the missing epochs).

    Returns
    -------
    list of str
        One line per difference, earliest epoch first (``"epoch 2: loss_ce: 1.25 != 1.2500001"``), or a
        curve found in one file only; ``[]`` when the first ``epochs`` epochs are identical.
    """
    def entries(curves: dict[str, Any], key: str) -> list[Any]:
        values = curves[key] if isinstance(curves[key], list) else [curves[key]]
        return (values + [None] * epochs)[:epochs]

    found = []
    keys = sorted((set(recorded) | set(replayed)) - CURVES_VOLATILE)
    for key in keys:
        if key not in replayed:
            found.append(f"{key}: recorded, missing from the replay")
        elif key not in recorded:
            found.append(f"{key}: in the replay, not recorded")
    common = [k for k in keys if k in recorded and k in replayed]
    if "epoch" in replayed and isinstance(replayed["epoch"], list) and len(replayed["epoch"]) != epochs:
        found.append(f"epoch: the replay has {len(replayed['epoch'])} epochs, not {epochs}")
    columns = {key: (entries(recorded, key), entries(replayed, key)) for key in common}
    for i in range(epochs):
        for key, (a, b) in columns.items():
            if not _same_value(a[i], b[i]):
                found.append(f"epoch {i + 1}: {key}: {a[i]!r} != {b[i]!r}")
    return found


def replay_settings(out: str | os.PathLike, run: str, *, epochs: int,
                    methods: list[str] | tuple[str, ...] | None = None) -> dict[str, Any]:
    """What a replay of run ``out/run``'s first ``epochs`` epochs needs, checked before anything is trained:
    :func:`recorded_run`'s settings, with ``replay_methods`` (``methods``, default: each of
    :func:`replay_methods` the run trained), ``curves`` (each method's recorded ``curves.json``),
    ``threads`` (the run's recorded torch threads, not bounded by the cores: float sums depend on them),
    ``cpu`` (this machine's CPU model) and ``recorded_code_hash``.

    Raises
    ------
    FileNotFoundError
        ``out/run`` holds no finished run.
    ValueError
        the run was made on another CPU model (or records none) or on a GPU, ``epochs`` is below 1 or
        beyond the epochs a method recorded, a method cannot be replayed or was not trained by the run,
        or a method recorded no ``curves.json`` (one sentence each).
    """
    folder = BatchFolder(out)
    settings = recorded_run(out, run)  # a finished run with a valid, unedited configuration
    metrics = folder.run(run)
    rerun_whole = f"rerun the whole run instead (python -m bkd_core check {out} {run})"
    recorded_cpu, here = _cpu(metrics), cpu_model()
    if not recorded_cpu:
        raise ValueError(f"{folder.metrics_path(run)} records no CPU model, and a replay is compared bit for bit, "
                         f"which holds on the CPU model that made the run only: {rerun_whole}")
    if recorded_cpu != here:
        raise ValueError(f"{run} was made on the CPU model {recorded_cpu!r} and this machine's is "
                         f"{here or 'unknown'!r}: a replay is compared bit for bit, which holds on the same CPU model "
                         "only; replay it on a "
                         f"machine with that CPU, or {rerun_whole}, compared within tolerance")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"--replay-epochs must be a whole number of epochs >= 1, got {epochs!r}")
    replayable = replay_methods()
    chosen = list(dict.fromkeys(methods)) if methods else [m for m in replayable if m in settings["methods"]]
    others = [m for m in chosen if m not in replayable]
    if others:
        raise ValueError(f"{', '.join(others)} cannot be replayed: a replay trains {' and '.join(replayable)} "
                         "again, one run of the training loop each (confident learning's fold runs are not "
                         "replayed); choose --methods among those")
    if not chosen:
        raise ValueError(f"{run} trained none of {', '.join(replayable)}, the methods a replay can replay: "
                         f"{rerun_whole}")
    curves = {}
    for method in chosen:
        if method not in settings["methods"]:
            raise ValueError(f"{run} did not train {method} (it trained {', '.join(settings['methods'])}): choose "
                             "--methods among those")
        path = folder.run_dir(run) / method / METHOD_CURVES
        if not lexists(path):
            raise ValueError(f"{path} is missing: the run's {method} recorded no per-epoch curves to compare a "
                             f"replay with (it was made by older code, or the file was not kept); {rerun_whole}")
        recorded = read_run_json(path)  # as written, values compared as read (the safe reader)
        if not isinstance(recorded, dict):
            raise ValueError(f"{path} holds a {type(recorded).__name__}, not a run's per-epoch curves: restore it "
                             f"from the batch's copy (e.g. git checkout), or {rerun_whole}")
        done = len(recorded["epoch"]) if isinstance(recorded.get("epoch"), list) else 0
        if epochs > done:
            raise ValueError(f"--replay-epochs {epochs} is more than the {done} epochs {path} records: choose 1 to "
                             f"{done}" if done else f"{path} records no epoch: {rerun_whole}")
        device = str(metrics["methods"][method].get("device", ""))
        if not device.startswith("cpu"):
            raise ValueError(f"{run}'s {method} was trained on {device or 'an unrecorded device'}: a replay is "
                             f"compared bit for bit, which it can be on the CPU only; {rerun_whole}")
        curves[method] = recorded
    return {**settings, "replay_methods": chosen, "curves": curves, "cpu": here,
            "recorded_code_hash": metrics.get("code_hash"),
            "threads": recorded_threads(metrics, {} if "threads" in metrics else folder.options(),
                                        at_most_cores=False)}


def replay_run(out: str | os.PathLike, run: str, *, epochs: int, methods: list[str] | tuple[str, ...] | None = None,
               data_dir: str | None = None, progress: bool = True, loader: Loader | None = None,
               settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Replay the first ``epochs`` epochs of a finished run of a batch with the current code, compare their
    per-epoch curves with the recorded ones, and record the check.

    Each method of :func:`replay_settings` (default: BKD and cross-entropy, those the run trained) is trained
    again with the run's recorded configuration, seed and torch threads, on the CPU, with
    ``stop_after_epochs=epochs``, into a temporary folder (deleted afterwards; nothing in the recorded run's
    folder is written); its ``curves.json`` is compared with the recorded one's first ``epochs`` entries
    (:func:`compare_curves`). The check is appended to the batch folder's record
    (:meth:`BatchFolder.add_code_check`) with the verdict :data:`REPLAYED` when nothing differs, else
    :data:`DIFFERS`. A replay shows that the current code computes those epochs of that run as the recorded
    code did; it says nothing of the later epochs, the detection or the methods not replayed, and it never
    makes a run identical.

    Parameters
    ----------
    loader : callable, optional
        What loads the data (:func:`bkd_core.batch.runner.run_one`); default :func:`bkd_core.data.load_cifar_n`.
    settings : dict, optional
        :func:`replay_settings` of this run and ``epochs``, when checked already (:func:`replay_runs`).

    Returns
    -------
    dict[str, Any]
        The recorded check: ``run``, ``kind`` (:data:`REPLAY`), ``recorded_code_hash``, ``code_hash`` (this
        code's), ``identical`` (always False: a replay is not an identical rerun), ``verdict``,
        ``replayed_epochs``, ``methods``, ``cpu``, ``compared`` (the files), ``differences`` (at most 20
        lines, earliest epoch first), ``threads``, ``device``, ``machine``, ``checked_at``.

    Raises
    ------
    FileNotFoundError, ValueError
        as :func:`replay_settings`.
    """
    import shutil
    import tempfile

    import torch

    from ..detectors import METHODS
    from ..provenance import code_hash
    from ..train import with_config_features

    settings = settings or replay_settings(out, run, epochs=epochs, methods=methods)
    chosen, threads = settings["replay_methods"], settings["threads"]
    config = run_config(settings["profile"], settings["seed"], settings["overrides"], "cpu")
    config = config.replace(stop_after_epochs=epochs)
    scratch = Path(tempfile.mkdtemp(prefix="bkd-replay-"))
    before = torch.get_num_threads()
    differences: list[str] = []
    try:
        torch.set_num_threads(threads)
        data = (loader or load_cifar_n)(settings["dataset"], settings["split"], data_dir, download=False)
        data = with_config_features(data, config, progress=progress)
        for method in chosen:
            METHODS[method].train(data, config, scratch / method, folds=settings["folds"], progress=progress)
            replayed = read_run_json(scratch / method / METHOD_CURVES)
            differences += [f"{method}/{METHOD_CURVES}: {line}"
                            for line in compare_curves(settings["curves"][method], replayed, epochs)]
    finally:
        torch.set_num_threads(before)
        shutil.rmtree(scratch, ignore_errors=True)
    check = {"run": run, "kind": REPLAY, "recorded_code_hash": settings["recorded_code_hash"],
             "code_hash": code_hash(), "identical": False, "verdict": DIFFERS if differences else REPLAYED,
             "replayed_epochs": epochs, "methods": chosen, "cpu": settings["cpu"],
             "compared": [f"{m}/{METHOD_CURVES}" for m in chosen], "differences": differences[:20],
             "threads": threads, "device": "cpu",
             **_machine_and_time()}
    BatchFolder(out).add_code_check(check)
    return check


def replay_runs(out: str | os.PathLike, runs: list[str] | None = None, *, epochs: int,
                methods: list[str] | tuple[str, ...] | None = None, data_dir: str | None = None,
                threads: int | None = None, progress: bool = True,
                loader: Loader | None = None) -> list[dict[str, Any]]:
    """:func:`replay_run` for each run of ``runs`` (default: every finished run of ``out``), after checking
    every run first (:func:`replay_settings`): nothing is trained or recorded when any run is refused.
    ``threads``: refused unless it is the threads each run was made with (a replay uses those).

    Raises
    ------
    FileNotFoundError
        ``out`` holds no finished run, or a run of ``runs`` is not one.
    ValueError
        as :func:`replay_settings`, or ``threads`` differs from a run's recorded threads.
    """
    if not runs:
        runs = require_batch_folder(out, "OUT").run_names()
    planned = {run: replay_settings(out, run, epochs=epochs, methods=methods) for run in runs}
    for run, settings in planned.items():
        if threads is not None and threads != settings["threads"]:
            raise ValueError(f"--threads {threads}: {run} was made with {settings['threads']} torch threads, and a "
                             "replay uses them (float sums depend on them); drop --threads")
    return [replay_run(out, run, epochs=epochs, data_dir=data_dir, progress=progress, loader=loader,
                       settings=settings) for run, settings in planned.items()]
