"""A reproduction batch (``python -m bkd_core reproduce``): its folder, its runner, and checks of its runs.

- :mod:`~bkd_core.batch.folder`: :class:`BatchFolder`, the one place that knows a batch folder's files and
  their schema (runs and each method's stage of them, summary, results table, code checks, problems), reading and
  writing them; :func:`read_method_stage` reads one method's folder (:class:`MethodStage`).
- :mod:`~bkd_core.batch.files`: the one reader of a batch folder's files (regular files only, capped in size).
- :mod:`~bkd_core.batch.samples`: a run's per-sample table and the highlights the results chapter shows.
- :mod:`~bkd_core.batch.runner`: plan, execute (a process pool or submitit), resume; one run is
  :func:`run_one`, executed in the run notebook ``templates/reproduce_run.ipynb``.
- :mod:`~bkd_core.batch.check`: rerun a run with the current code, compare, record a verdict
  (``python -m bkd_core check``).

The batch is not training code: it runs the training code (:mod:`bkd_core.detectors`) and records what it
gives. It needs the book's packages (pandas, papermill; ``pip install .[book]``).
"""

from .check import (DIFFERS, IDENTICAL, TOLERANCES, WITHIN_TOLERANCE, check_reruns, check_run, compare_runs,
                    record_check, recorded_run, run_verdicts)
from .files import open_run_file, read_run_csv, read_run_json
from .folder import CODE_CHECKS, METRICS, RESULTS, SUMMARY, BatchFolder, MethodStage, read_method_stage
from .runner import (BatchOptions, RunOutcome, RunSpec, format_outcomes, parse_splits, plan, run_batch,
                     run_config, run_one)

__all__ = [
    "BatchFolder", "MethodStage", "read_method_stage", "METRICS", "SUMMARY", "RESULTS", "CODE_CHECKS",
    "open_run_file", "read_run_json", "read_run_csv",
    "BatchOptions", "RunOutcome", "RunSpec", "plan", "parse_splits", "run_batch", "run_one", "run_config",
    "format_outcomes",
    "check_run", "check_reruns", "record_check", "recorded_run", "compare_runs", "run_verdicts",
    "IDENTICAL", "WITHIN_TOLERANCE", "DIFFERS", "TOLERANCES",
]
