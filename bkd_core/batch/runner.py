"""The batch runner: every CIFAR-N split and seed, one papermill-executed run notebook each.

Each (dataset, split, seed) is a *run*: the notebook ``templates/reproduce_run.ipynb`` executed
with papermill into ``OUT/{dataset}-{split}-seed{seed}/run.ipynb``. It calls :func:`run_one`, which
trains BKD, the cross-entropy baseline and cleanlab's confident learning (same data, same budget)
into ``bkd/``, ``ce/`` and ``cleanlab/`` beside it and writes the run's ``metrics.json`` and
``samples.csv``. Runs are resumable (finished ones are skipped, interrupted ones resume from their
checkpoints); a failing run does not stop the others; the batch ends with ``OUT/summary.json``,
``OUT/results.csv`` and a non-zero exit status if any run failed.

Runs execute in a local process pool (``executor="local"``, ``jobs`` at once) or through submitit
(``"slurm"`` for a cluster; ``"submitit-local"`` is submitit's own local executor, used by the tests).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import platform
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence, get_args

from ..data import CIFAR10_SPLITS, CIFAR100_SPLITS, canonical_split, load_cifar_n, missing_data
from ..detectors import METHODS as METHOD_REGISTRY
from ..detectors import methods_for
from ..errors import RunDirError
from ..rundir import RunDir, folder_lock
from .files import read_run_json
from .folder import ERROR, METHOD_METRICS, NOTEBOOK, BatchFolder, run_name
from .samples import ranking_aucs, samples_table

if TYPE_CHECKING:
    from ..config import BKDConfig
    from ..data import NoisyCIFAR

#: What loads a run's data: ``loader(dataset, split, data_dir, download=...)`` (:func:`bkd_core.data.load_cifar_n`).
Loader = Callable[..., "NoisyCIFAR"]

TEMPLATE = Path(__file__).resolve().parent / "templates" / "reproduce_run.ipynb"
METHODS = tuple(METHOD_REGISTRY)  # every detector's name (bkd_core.detectors)
ALL_SPLITS: tuple[tuple[str, str], ...] = (*(("cifar10", s) for s in CIFAR10_SPLITS),
                                           *(("cifar100", s) for s in CIFAR100_SPLITS))
#: Command-line options of each run's Jupyter kernel: its own log shows errors only, not the warning every
#: local kernel logs at start ("Kernel is running over TCP without encryption": its ports listen on this
#: machine's loopback interface and every message is signed with the connection file's key).
KERNEL_ARGUMENTS = ("--IPKernelApp.log_level=ERROR",)
Executor = Literal["local", "slurm", "submitit-local"]
Status = Literal["done", "finished-before", "skipped", "failed", "pending"]
STATUSES: tuple[str, ...] = get_args(Status)  # what summary.json counts


@dataclass(frozen=True)
class RunSpec:
    """One run of the batch: a CIFAR-N split and a seed."""

    dataset: str
    split: str
    seed: int

    @property
    def name(self) -> str:
        return run_name(self.dataset, self.split, self.seed)


@dataclass
class BatchOptions:
    """Settings shared by every run of a batch (what the run notebook receives as parameters)."""

    out: str
    profile: str = "features"
    overrides: dict[str, Any] = field(default_factory=dict)  # BKDConfig fields, as --set
    methods: tuple[str, ...] | None = None  # None: every method the profile can run (methods.methods_for)
    folds: int = 3
    data_dir: str | None = None
    download: bool = False
    device: str = "auto"
    threads: int | None = None  # torch intra-op threads per run; None: cores // jobs
    template: str = str(TEMPLATE)

    def __post_init__(self) -> None:
        if self.methods is None:
            self.methods = methods_for(run_config(self.profile, 0, self.overrides))
        self.methods = tuple(self.methods)
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {list(self.methods)}")
        unusable = sorted(set(self.methods) - set(methods_for(run_config(self.profile, 0, self.overrides))))
        if unusable:
            raise ValueError(f"{', '.join(unusable)} needs feature vectors, which profile {self.profile!r} does not "
                             "use: choose --profile features, or drop it from --methods")
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2 (cleanlab's cross-validation), got {self.folds}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 (torch threads per run) or None, got {self.threads}")
        # runs execute with their own folder as working directory: make every path absolute
        self.out = str(Path(self.out).resolve())
        data_dir = self.data_dir or os.environ.get("BKD_DATA_DIR")
        self.data_dir = str(Path(data_dir).expanduser().resolve()) if data_dir else None


@dataclass
class RunOutcome:
    """What became of one run: ``status`` is done, skipped (finished before, or no data) or failed;
    pending while the batch that runs it is still going (or was interrupted before it finished)."""

    name: str
    status: Status
    seconds: float = 0.0
    reason: str = ""


# -- planning ------------------------------------------------------------------------------------

def parse_splits(names: Sequence[str]) -> list[tuple[str, str]]:
    """``["all"]``, ``["cifar10"]``, ``["worst", "noisy100"]``... -> ``[(dataset, split), ...]``.

    Raises
    ------
    ValueError
        a name that is neither ``all``, a dataset, nor a split of one (lists them).
    """
    out: list[tuple[str, str]] = []
    for name in names:
        if name == "all":
            picked = list(ALL_SPLITS)
        elif name in ("cifar10", "cifar100"):
            picked = [p for p in ALL_SPLITS if p[0] == name]
        else:
            picked = []
            for dataset in ("cifar10", "cifar100"):
                try:
                    picked = [(dataset, canonical_split(dataset, name))]
                    break
                except ValueError:
                    continue
            if not picked:
                valid = ", ".join(["all", "cifar10", "cifar100", *CIFAR10_SPLITS, *CIFAR100_SPLITS])
                raise ValueError(f"unknown split {name!r}; choose from {valid}")
        out.extend(p for p in picked if p not in out)
    return out


def plan(splits: Sequence[str], seeds: Sequence[int]) -> list[RunSpec]:
    """Every (dataset, split, seed) of the batch, split-major (all seeds of a split together), each once."""
    if not seeds:
        raise ValueError("give at least one seed")
    seeds = list(dict.fromkeys(int(seed) for seed in seeds))  # a seed given twice runs once
    return [RunSpec(d, s, seed) for d, s in parse_splits(splits) for seed in seeds]


def is_finished(run_dir: Path, methods: Sequence[str]) -> bool:
    """True when the batch run in ``run_dir`` finished every method of ``methods`` (:meth:`BatchFolder.is_finished`)."""
    return BatchFolder(run_dir.parent).is_finished(run_dir.name, methods)


def _saved_epochs(run_dir: Path) -> int:
    """How many epochs a (running) training run has saved: its ``epochs/*.npz`` files."""
    return len(list(run_dir.glob("epochs/*.npz")))


def run_progress(run_dir: Path, epochs: int | None = None) -> str:
    """A short "how far" of a running run, from the epoch files on disk: ``"bkd 12/20"``."""
    parts = []
    of = f"/{epochs}" if epochs else ""
    for stage in METHODS:
        stage_dir = run_dir / stage
        if not stage_dir.is_dir():
            continue
        if (stage_dir / METHOD_METRICS).is_file():
            parts.append(f"{stage} done")
            continue
        folds = sorted(stage_dir.glob("fold_*"))
        if folds:
            done = sum((f / METHOD_METRICS).is_file() for f in folds)
            parts.append(f"{stage} fold {done + 1 if done < len(folds) else done} ep {_saved_epochs(folds[-1])}{of}")
        else:
            parts.append(f"{stage} ep {_saved_epochs(stage_dir)}{of}")
    return ", ".join(parts) or "starting"


def _stage_weight(stage: str, folds: int) -> float:
    """Network-epochs over the whole subset per epoch of ``stage``: BKD trains a teacher and a student,
    cross-entropy one network; each of confident learning's ``folds`` networks sees ``(folds - 1) / folds``."""
    return METHOD_REGISTRY[stage].networks(folds)


def run_work(run_dir: Path, epochs: int, methods: Sequence[str] = METHODS, folds: int = 3) -> tuple[float, float]:
    """``(done, total)`` training work of a run, in network-epochs over its subset, from the files on
    disk: a finished method counts in full, a running one by its saved epochs (``epochs`` per network).
    The batch's time-left estimate is built on it."""
    done = total = 0.0
    for stage in methods:
        stage_dir = run_dir / stage
        weight = _stage_weight(stage, folds)
        units = [stage_dir / f"fold_{k}" for k in range(folds)] if stage == "cleanlab" else [stage_dir]
        finished = (stage_dir / METHOD_METRICS).is_file()
        for unit_dir in units:
            total += weight * epochs
            if finished or (unit_dir / METHOD_METRICS).is_file():
                done += weight * epochs
            else:
                done += weight * min(epochs, _saved_epochs(unit_dir))
    return done, total


class TimeLeft:
    """Time left of a batch, from the rate of work done since it started (:func:`run_work` over its
    runs): ``str()`` is ``"~42 min left"`` (``"<1 min left"``), or ``""`` before any work is done or without
    an epoch count."""

    def __init__(self, run_dirs: Sequence[Path], epochs: int | None, methods: Sequence[str], folds: int) -> None:
        self.run_dirs, self.epochs, self.methods, self.folds = list(run_dirs), epochs, tuple(methods), folds
        self.start = time.perf_counter()
        self.done_at_start = self._work()[0]  # resumed runs bring work done before this batch

    def _work(self) -> tuple[float, float]:
        if not self.epochs:
            return 0.0, 0.0
        pairs = [run_work(d, self.epochs, self.methods, self.folds) for d in self.run_dirs]
        return sum(p[0] for p in pairs), sum(p[1] for p in pairs)

    def minutes(self) -> float | None:
        """Estimated minutes left, or None before any work is done."""
        done, total = self._work()
        rate = (done - self.done_at_start) / max(time.perf_counter() - self.start, 1e-9)
        return (total - done) / rate / 60 if rate > 0 else None

    def __str__(self) -> str:
        left = self.minutes()
        return "" if left is None else "<1 min left" if left < 1 else f"~{left:.0f} min left"


# -- one run (called inside the run notebook) ---------------------------------------------------

def run_config(profile: str, seed: int, overrides: dict[str, Any] | None = None, device: str = "auto") -> "BKDConfig":
    """The configuration one run of a batch trains with: ``profile`` with ``overrides`` and the run's seed."""
    from ..config import resolve

    return resolve(profile, {**(overrides or {}), "seed": int(seed), "device": device})


def run_one(dataset: str, split: str, seed: int, out_dir: str | os.PathLike, *, profile: str = "features",
            overrides: dict[str, Any] | None = None, methods: Sequence[str] | None = None, folds: int = 3,
            data_dir: str | None = None, download: bool = False, device: str = "auto",
            threads: int | None = None, progress: bool = True, exit_with_parent: bool = False,
            loader: Loader = load_cifar_n) -> dict[str, Any]:
    """Train ``methods`` on one split and seed into ``out_dir``; write and return its ``metrics.json``.

    ``out_dir/bkd``, ``out_dir/ce`` and ``out_dir/cleanlab`` are ordinary run directories (resumable).
    ``out_dir/metrics.json`` holds each method's metrics under ``"methods"`` (with its ``ranking_auc``);
    ``out_dir/samples.csv.gz`` one row per training sample of the subset (:func:`samples_table`; not
    committed: 50,000 rows are about 0.8 MB) and ``out_dir/highlights.csv`` the few rows of it the
    results chapter shows (:func:`bkd_core.batch.samples.write_tables`). ``exit_with_parent``: end this process
    when the process that started it dies (the batch's run notebooks set it, see :func:`exit_when_parent_dies`).
    ``loader``: what loads the data (``loader(dataset, split, data_dir, download=...)``; tests pass a stand-in).
    The run records the torch threads it used (``threads``) and the machine (:func:`machine`): float sums
    depend on both, and ``check`` reruns a run with its threads.
    """
    import torch

    from ..provenance import code_hash
    from ..train import with_config_features

    if exit_with_parent:
        exit_when_parent_dies()
    if threads:
        torch.set_num_threads(int(threads))
    out_dir = Path(out_dir)
    config = run_config(profile, seed, overrides, device)
    data = loader(dataset, split, data_dir, download=download)
    methods = methods_for(config) if methods is None else methods
    data = with_config_features(data, config, progress=progress)  # once for every method of the run
    results = {}
    for method in methods:
        if method not in METHOD_REGISTRY:
            raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
        results[method] = METHOD_REGISTRY[method].train(data, config, out_dir / method, folds=folds, progress=progress)
    samples = samples_table(data.subset(config.train_size, seed=config.seed), results)
    aucs = ranking_aucs(samples)
    summary = {"dataset": data.dataset, "split": data.split, "seed": int(seed), "profile": profile,
               "fingerprint": config.fingerprint(), "code_hash": code_hash(), "config": config.to_dict(),
               "folds": folds, "threads": torch.get_num_threads(), "machine": machine(),
               "wall_time_s": round(sum(r.metrics["wall_time_s"] for r in results.values()), 2),
               "methods": {m: {**r.metrics, "ranking_auc": aucs[m]} for m, r in results.items()}}
    BatchFolder(out_dir.parent).write_run(out_dir.name, summary, samples)
    return summary


def machine() -> dict[str, Any]:
    """This machine as a run records it: ``{"arch": "x86_64", "cpu": <CPU model or "">, "cores": N}`` (float
    results can differ between CPU models in their last digits)."""
    return {"arch": platform.machine(), "cpu": cpu_model(), "cores": os.cpu_count() or 1}


def cpu_model() -> str:
    """The CPU model from ``/proc/cpuinfo`` (``"Intel(R) Xeon(R) Processor"``), or ``""`` where it is not known."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return " ".join(line.partition(":")[2].split())
    except OSError:
        pass
    return ""


def exit_when_parent_dies(interval: float = 0.5) -> None:
    """End this process (``os._exit``) as soon as its parent process dies, checked every ``interval`` s.

    The batch's pool workers and the Jupyter kernels they start call this, so that killing
    ``reproduce`` (even with SIGKILL) stops its runs too: a worker whose batch died exits, then the
    kernel whose worker died exits. Without it they train on, and a rerun would put a second writer
    on their run folders (which the run folders' locks refuse, but only after the fact).
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(70)

    threading.Thread(target=watch, name="bkd-exit-with-parent", daemon=True).start()


# -- executing runs ------------------------------------------------------------------------------

def _settled(spec: RunSpec, options: BatchOptions) -> RunOutcome | None:
    """The outcome of a run that needs no execution (finished before, or its data is missing)."""
    run_dir = Path(options.out) / spec.name
    if is_finished(run_dir, options.methods):
        stale = _other_config(run_dir, spec, options)
        return RunOutcome(spec.name, "failed", reason=stale) if stale else RunOutcome(spec.name, "finished-before")
    reason = None if options.download else missing_data(spec.dataset, options.data_dir)
    return RunOutcome(spec.name, "skipped", reason=reason) if reason else None


def _other_config(run_dir: Path, spec: RunSpec, options: BatchOptions) -> str:
    """Why a finished run does not belong to this batch (it was trained with another configuration), or ``""``."""
    try:
        expected = run_config(options.profile, spec.seed, options.overrides).fingerprint()
    except (ValueError, TypeError):
        return ""  # an invalid --set fails, with its own message, when the run executes
    try:  # the finished run's own file (BatchFolder.is_finished read it): its fingerprint, if it records one
        run = read_run_json(BatchFolder(run_dir.parent).metrics_path(run_dir.name))
    except (FileNotFoundError, ValueError):
        return ""
    found = run.get("fingerprint") if isinstance(run, dict) else None
    if found in (None, expected):
        return ""
    return (f"finished earlier with another configuration (fingerprint {found}; this batch's is {expected}): "
            f"the profile or --set changed since. Use another --out, or delete {run_dir} to rerun it")


def execute_run(spec: RunSpec, options: BatchOptions) -> RunOutcome:
    """Execute one run's notebook with papermill (or skip it); never raises for a failing run."""
    import papermill

    run_dir = Path(options.out) / spec.name
    settled = _settled(spec, options)
    if settled:
        return settled
    start = time.perf_counter()
    parameters = {"dataset": spec.dataset, "split": spec.split, "seed": spec.seed, "out_dir": str(run_dir),
                  "profile": options.profile, "overrides": _plain(options.overrides), "methods": list(options.methods),
                  "folds": options.folds, "data_dir": options.data_dir, "download": options.download,
                  "device": options.device, "threads": options.threads, "exit_with_parent": True}
    try:
        with RunDir(run_dir).lock():  # one writer per run folder: a second batch on the same --out is refused
            papermill.execute_notebook(options.template, str(run_dir / NOTEBOOK), parameters=parameters,
                                       progress_bar=False, kernel_name="python3", cwd=str(run_dir),
                                       extra_arguments=list(KERNEL_ARGUMENTS))
    except RunDirError as exc:
        return RunOutcome(spec.name, "failed", time.perf_counter() - start, str(exc))
    except Exception as exc:  # a failing run must not stop the batch: record it and go on
        message = str(exc).strip().splitlines()
        detail = next((line for line in reversed(message) if line.strip()), type(exc).__name__)
        (run_dir / ERROR).write_text(f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}")
        return RunOutcome(spec.name, "failed", time.perf_counter() - start,
                          f"{detail[:300]} (see {run_dir / NOTEBOOK} and {ERROR})")
    (run_dir / ERROR).unlink(missing_ok=True)
    return RunOutcome(spec.name, "done", time.perf_counter() - start)


def _plain(value: Any) -> Any:
    """Tuples as lists, so papermill writes them into the notebook as literals it can read back."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _execute_with_env(spec: RunSpec, options: BatchOptions) -> RunOutcome:
    # the kernel papermill starts inherits this environment: one thread pool per run, sized to its share
    if options.threads:
        os.environ["OMP_NUM_THREADS"] = str(options.threads)
    return execute_run(spec, options)


def run_batch(specs: Sequence[RunSpec], options: BatchOptions, *, jobs: int = 1, executor: Executor = "local",
              submitit_parameters: dict[str, Any] | None = None, progress: bool = True) -> list[RunOutcome]:
    """Execute every run of ``specs``; write ``summary.json`` and ``results.csv`` into ``options.out``.

    ``jobs`` runs go at once (local pool) or as the Slurm array's parallelism. Finished runs are
    skipped (one finished with another configuration is reported as failed, not reused), runs whose
    data is missing are reported as skipped with the reason. One batch at a time writes into a folder
    (``options.out/.lock``, :func:`bkd_core.rundir.folder_lock`).

    Raises
    ------
    RunDirError
        another batch is running into ``options.out``, or the folder cannot be written.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, busy="is running a batch into") as held:
        if not held:
            raise RunDirError(f"batch folder {out} is not writable; choose another --out, or fix its permissions")
        return _run_batch_locked(specs, options, jobs, executor, submitit_parameters, progress)


def _run_batch_locked(specs: Sequence[RunSpec], options: BatchOptions, jobs: int, executor: Executor,
                      submitit_parameters: dict[str, Any] | None, progress: bool) -> list[RunOutcome]:
    """:func:`run_batch` while it holds the batch folder's lock."""
    from tqdm.auto import tqdm

    out = Path(options.out)
    if options.threads is None and executor == "local":
        options.threads = max(1, (os.cpu_count() or 1) // jobs)
    epochs = _profile_epochs(options)
    outcomes: dict[str, RunOutcome] = {}
    todo = []
    for spec in specs:  # settle the finished and the impossible runs at once, in this process
        settled = _settled(spec, options)
        if settled:
            outcomes[spec.name] = settled
        else:
            todo.append(spec)
    bar = tqdm(total=len(todo), desc="reproduce", unit="run", disable=not progress, dynamic_ncols=True)
    for name, outcome in outcomes.items():
        bar.write(f"{name}: {outcome.status}{f' ({outcome.reason})' if outcome.reason else ''}")

    def write_summary() -> None:  # after every run, so an interrupted batch leaves a true summary.json
        write_batch_summary(out, [outcomes.get(s.name) or RunOutcome(s.name, "pending") for s in specs], options)

    def report(outcome: RunOutcome) -> None:
        outcomes[outcome.name] = outcome
        bar.update(1)
        bar.write(f"{outcome.name}: {outcome.status} in {outcome.seconds / 60:.1f} min"
                  f"{f' ({outcome.reason})' if outcome.reason else ''}")
        write_summary()

    write_summary()
    time_left = TimeLeft([out / s.name for s in todo], epochs, options.methods, options.folds)
    if todo and executor == "local":
        context = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=exit_when_parent_dies) as pool:
            futures = {pool.submit(_execute_with_env, spec, options): spec for spec in todo}
            pending = set(futures)
            while pending:
                finished, pending = cf.wait(pending, timeout=15, return_when=cf.FIRST_COMPLETED)
                for future in finished:
                    spec = futures[future]
                    try:
                        report(future.result())
                    except Exception as exc:  # the worker process itself died
                        report(RunOutcome(spec.name, "failed", reason=f"{type(exc).__name__}: {exc}"))
                # the pool hands one run more than ``jobs`` to its queue early (and marks it running):
                # in submission order, the first ``jobs`` running futures are the ones executing
                running = [spec for f, spec in futures.items() if f in pending and f.running()][:jobs]
                bar.set_postfix_str(_postfix(out, running, epochs, time_left))
    elif todo:
        _run_submitit(todo, options, jobs, executor, submitit_parameters or {}, report, bar, epochs, time_left)
    bar.close()
    return [outcomes[s.name] for s in specs]


def _profile_epochs(options: BatchOptions) -> int | None:
    from ..config import resolve

    try:
        return resolve(options.profile, options.overrides).epochs
    except (ValueError, TypeError):
        return None


def _postfix(out: Path, running: Sequence[RunSpec], epochs: int | None, time_left: TimeLeft) -> str:
    """The progress bar's postfix: how far each running run is, then the batch's time left."""
    parts = [f"{s.name}: {run_progress(out / s.name, epochs)}" for s in running]
    if left := str(time_left):
        parts.append(left)
    return "; ".join(parts)


def _run_submitit(todo: Sequence[RunSpec], options: BatchOptions, jobs: int, executor: str,
                  parameters: dict[str, Any], report: Any, bar: Any, epochs: int | None, time_left: TimeLeft) -> None:
    import submitit

    folder = Path(options.out) / "submitit" / "%j"
    ex = submitit.AutoExecutor(folder=folder, cluster="local" if executor == "submitit-local" else "slurm")
    ex.update_parameters(**{"timeout_min": 24 * 60, "slurm_array_parallelism": jobs, "name": "bkd-reproduce",
                            **parameters})
    submitted = ex.map_array(_execute_with_env, list(todo), [options] * len(todo))
    pending = dict(zip(submitted, todo))
    while pending:
        for job, spec in list(pending.items()):
            if job.done():
                del pending[job]
                try:
                    report(job.result())
                except Exception as exc:  # the job itself failed (killed, out of time, ...)
                    report(RunOutcome(spec.name, "failed",
                                      reason=f"submitit job {job.job_id}: {str(exc).strip()[-300:]}"))
        bar.set_postfix_str(_postfix(Path(options.out), list(pending.values())[:jobs], epochs, time_left))
        if pending:
            time.sleep(5)


def write_batch_summary(out: Path, outcomes: Sequence[RunOutcome], options: BatchOptions) -> None:
    """The batch folder's summary and results table (:meth:`BatchFolder.write_summary`) for ``outcomes``."""
    BatchFolder(out).write_summary(outcomes, {k: v for k, v in asdict(options).items() if k != "template"},
                                   STATUSES)


def format_outcomes(outcomes: Sequence[RunOutcome]) -> str:
    """A plain-text summary table of the batch, one line per run."""
    lines = [f"{'run':32s} {'status':16s} {'minutes':>8s}  reason"]
    for o in outcomes:
        lines.append(f"{o.name:32s} {o.status:16s} {o.seconds / 60:8.1f}  {o.reason}")
    counts = {s: sum(o.status == s for o in outcomes) for s in STATUSES if s != "pending"}
    lines.append(", ".join(f"{v} {k}" for k, v in counts.items()))
    return "\n".join(lines)
