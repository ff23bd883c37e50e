"""Command line: ``python -m bkd_core {train,train-ce,reproduce,results,check,data} ...``."""

from __future__ import annotations

import argparse
import ast
import errno
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import BKD_ONLY_FIELDS, PROFILES, BKDConfig, parse_assignments, resolve
from .data import CIFAR10_SPLITS, CIFAR100_SPLITS, DATASETS, ensure_data, load_cifar_n
from .errors import BKDError
from .detectors import METHODS

SUMMARY_KEYS = ("dataset", "split", "num_samples", "epochs", "wall_time_s", "device", "tipping_epoch", "threshold",
                "estimated_noise_rate", "true_noise_rate", "detection_precision", "detection_recall", "detection_f1",
                "flag_all_f1", "test_acc", "best_val_acc")


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["epochs=5", "model_widths=(16,32,64)"]`` -> ``{"epochs": 5, "model_widths": (16, 32, 64)}``
    (:func:`bkd_core.config.parse_assignments`; a bad assignment exits with its sentence)."""
    try:
        return parse_assignments(pairs)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def build_config(args: argparse.Namespace, kind: str = "bkd") -> BKDConfig:
    overrides = parse_overrides(args.set)
    unused = sorted(set(overrides) & BKD_ONLY_FIELDS) if kind != "bkd" else []
    if unused:
        raise SystemExit(f"error: --set {', '.join(unused)}: only BKD uses "
                         f"{'this field' if len(unused) == 1 else 'these fields'}, "
                         "so it has no effect on a cross-entropy run; drop it, or train BKD with 'train'")
    for name in ("seed", "epochs", "train_size", "device"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    try:
        return resolve(args.profile, overrides)
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"error: {exc}") from exc


#: What each profile trains and what it costs (--profile's help).
PROFILE_HELP = ("features (default): all 50,000 images as label-free feature vectors with MLPs, minutes on a CPU; "
                "cnn: an airbench-class CNN on all 50,000 images' pixels, CPU hours, GPU minutes (2-5 min an epoch "
                "on one CPU thread: a 40-epoch BKD run about 2 h 15 min, cross-entropy 70 min, in fp32; bf16 "
                "autocast, its default on CPUs with AVX512-BF16 or AMX, is 1.6x faster; --set precision=fp32 "
                "for fp32 there); paper: the official settings (two PreResNet18, 300 "
                "epochs), for a GPU")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    splits = ", ".join([*CIFAR10_SPLITS, *CIFAR100_SPLITS])
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    p.add_argument("--split", default="worst", help=f"CIFAR-N label set: {splits} (label-file keys work too)")
    p.add_argument("--profile", default="features", choices=sorted(PROFILES), help=PROFILE_HELP)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    p.add_argument("--train-size", dest="train_size", type=int, default=None, help="random training subset size")
    p.add_argument("--device", default=None, help="auto (default: CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any BKDConfig field, e.g. --set otsu_criterion=classic (repeatable)")
    p.add_argument("--data-dir", default=None, help="data folder (default: $BKD_DATA_DIR, else a user cache folder)")
    p.add_argument("--download", action="store_true", help="download missing CIFAR images and CIFAR-N labels")
    p.add_argument("--out", required=True, help="run directory; rerunning with the same one resumes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _train(args: argparse.Namespace, kind: str) -> int:
    from .train import train_bkd, train_ce

    config = build_config(args, kind)
    data = load_cifar_n(args.dataset, args.split, args.data_dir, download=args.download)
    trainer = train_bkd if kind == "bkd" else train_ce
    result = trainer(data, config, args.out, progress=not args.no_progress)
    summary = {k: result.metrics[k] for k in SUMMARY_KEYS if k in result.metrics}
    print(json.dumps(summary, indent=2))
    print(f"wrote {result.run_dir}/metrics.json, scores.npz, config.json")
    return 0


def _add_reproduce_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="features", choices=sorted(PROFILES), help=PROFILE_HELP)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--splits", nargs="+", default=["all"],
                   help="all, cifar10, cifar100, or split names (worst aggre ... noisy100)")
    p.add_argument("--methods", nargs="+", default=None, choices=list(METHODS),
                   help="detectors to run (default: every one the profile can run; knn needs the features profile)")
    p.add_argument("--folds", type=int, default=3,
                   help="cross-validation folds of confident learning (cleanlab's own default is 5)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a BKDConfig field (repeatable)")
    p.add_argument("--out", required=True,
                   help="batch folder; rerunning with the same one skips finished runs and resumes the rest")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (local pool, or the Slurm array's parallelism)")
    p.add_argument("--executor", default="local", choices=["local", "slurm", "submitit-local"],
                   help="local: a process pool on this machine; slurm: submitit's Slurm executor; "
                        "submitit-local: submitit's local executor (for testing the cluster path)")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="submitit parameter, e.g. slurm_partition=gpu, gpus_per_node=1, timeout_min=600 (repeatable)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores // jobs locally)")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None, help="data folder (default: $BKD_DATA_DIR, else a user cache folder)")
    p.add_argument("--download", action="store_true", help="download missing data inside each run")
    p.add_argument("--no-progress", action="store_true")


def _reproduce(args: argparse.Namespace) -> int:
    from .batch import SUMMARY, BatchOptions, format_outcomes, plan, run_batch

    overrides = parse_overrides(args.set)
    for name, value, least in (("--jobs", args.jobs, 1), ("--threads", args.threads, 1), ("--folds", args.folds, 2)):
        if value is not None and value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    for field, flag in (("seed", "--seeds"), ("device", "--device")):
        if field in overrides:
            raise ValueError(f"--set {field}=...: a batch sets each run's {field} itself; use {flag} instead")
    submitit_parameters = parse_overrides_raw(args.slurm)
    try:
        for seed in args.seeds:  # fail now, not inside every run (after its feature extraction)
            resolve(args.profile, {**overrides, "seed": seed})
        specs = plan(args.splits, args.seeds)
        options = BatchOptions(out=args.out, profile=args.profile, overrides=overrides,
                               methods=tuple(args.methods) if args.methods else None,
                               folds=args.folds, data_dir=args.data_dir, download=args.download, device=args.device,
                               threads=args.threads)
    except TypeError as exc:
        raise ValueError(str(exc)) from exc
    outcomes = run_batch(specs, options, jobs=args.jobs, executor=args.executor,
                         submitit_parameters=submitit_parameters, progress=not args.no_progress)
    print(format_outcomes(outcomes))
    print(f"wrote {Path(options.out) / SUMMARY} and the results table beside it")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def _results(out: str) -> int:
    from .batch import BatchFolder
    from .book.results import code_version_text, code_versions, collect_stages, markdown_results

    folder = BatchFolder(out)
    table = collect_stages(out)  # finished runs, and the finished methods of runs still training
    if not len(table):
        absent = "" if Path(out).is_dir() else " (the folder does not exist)"
        raise FileNotFoundError(f"no finished run or method in {out}{absent}; write one with: python -m bkd_core "
                                f"reproduce --profile PROFILE --out {out}")
    text = markdown_results(table)  # refuses a seed held twice before printing anything
    for problem in folder.problems():
        print(f"warning: {problem}", file=sys.stderr)
    partial = sorted(set(table["run"]) - set(folder.run_names()))
    if partial:
        print(f"warning: {len(partial)} run(s) have not finished every method yet ({', '.join(partial)}): the table "
              "shows their finished methods, without the ranking ROC-AUC, which a run computes at its end",
              file=sys.stderr)
    print(text)
    print("\n" + code_version_text(code_versions(out)))  # which code made the runs, and what checked them
    return 0


def _check(args: argparse.Namespace) -> int:
    from .batch import CODE_CHECKS, IDENTICAL, check_reruns, check_run

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.replay_epochs is not None:
        return _replay(args)
    if args.methods is not None:
        raise ValueError("--methods chooses the methods a replay trains again: give it with --replay-epochs K")
    if args.reference is not None and args.rerun is None:
        raise ValueError("--reference OLDER_OUT needs --rerun OTHER_OUT: the runs of OTHER_OUT are compared with "
                         "those of OLDER_OUT")
    if args.rerun is None and not args.runs:
        raise ValueError("name the run to rerun (e.g. cifar10-worst-seed0), or pass --rerun OTHER_OUT to compare "
                         "the runs of a batch already rerun into OTHER_OUT")
    if args.rerun is not None:
        checks = check_reruns(args.out, args.rerun, runs=args.runs, reference=args.reference, threads=args.threads)
    else:
        checks = [check_run(args.out, run, data_dir=args.data_dir, threads=args.threads, progress=not args.no_progress)
                  for run in args.runs]
    for check in checks:
        change = f"code {check['recorded_code_hash']} -> {check['code_hash']}"
        base = "the reference rerun" if check.get("side_by_side") else "the recorded run"
        if check["verdict"] == IDENTICAL:
            print(f"{check['run']}: identical to {base} ({change})")
        else:
            print(f"{check['run']}: {check['verdict']} against {base} ({change}):\n  "
                  + "\n  ".join(check["differences"]))
    identical = sum(c["verdict"] == IDENTICAL for c in checks)
    others = {v: sum(c["verdict"] == v for c in checks) for v in {c["verdict"] for c in checks} - {IDENTICAL}}
    rest = "".join(f", {n} {verdict}" for verdict, n in sorted(others.items()))
    print(f"{identical} of {len(checks)} identical{rest}; recorded in {Path(args.out) / CODE_CHECKS}")
    return 0 if checks and identical == len(checks) else 1


def _replay(args: argparse.Namespace) -> int:
    """``check OUT --replay-epochs K [RUN ...] [--methods ...]``: :func:`bkd_core.batch.check.replay_runs`."""
    from .batch import CODE_CHECKS
    from .batch.check import REPLAYED, replay_runs

    for flag, value in (("--rerun", args.rerun), ("--reference", args.reference)):
        if value is not None:
            raise ValueError(f"--replay-epochs trains the first epochs of OUT's runs again here: drop {flag}")
    checks = replay_runs(args.out, args.runs, epochs=args.replay_epochs, methods=args.methods,
                         data_dir=args.data_dir, threads=args.threads, progress=not args.no_progress)
    for check in checks:
        change = f"code {check['recorded_code_hash']} -> {check['code_hash']}"
        what = f"the first {check['replayed_epochs']} epochs of {', '.join(check['methods'])}"
        if check["verdict"] == REPLAYED:
            print(f"{check['run']}: {what} identical to the recorded run, bit for bit, on this CPU model ({change}; "
                  "a replay, not a full rerun)")
        else:
            print(f"{check['run']}: {what} differ from the recorded run ({change}):\n  "
                  + "\n  ".join(check["differences"]))
    same = sum(c["verdict"] == REPLAYED for c in checks)
    print(f"{same} of {len(checks)} replayed identically over their first {args.replay_epochs} epochs; recorded in "
          f"{Path(args.out) / CODE_CHECKS}")
    return 0 if checks and same == len(checks) else 1


def parse_overrides_raw(pairs: Sequence[str]) -> dict[str, Any]:
    """``["slurm_partition=gpu", "timeout_min=600"]`` -> ``{"slurm_partition": "gpu", "timeout_min": 600}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--slurm expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


# --------------------------------------------------------------------------------------------
# `data`: the data the book reads, downloaded when missing (the first step of `make book`)
# --------------------------------------------------------------------------------------------


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", action="append", default=None, choices=list(DATASETS),
                   help="a dataset to get, images and CIFAR-N labels (repeatable); default: what the book reads, "
                        "the CIFAR-10 images with the CIFAR-10N labels and the CIFAR-100N labels")
    p.add_argument("--data-dir", default=None, help="data folder (default: $BKD_DATA_DIR, else a user cache folder)")


def _data(args: argparse.Namespace) -> int:
    if args.dataset:
        data_dir = ensure_data(args.data_dir, images=tuple(dict.fromkeys(args.dataset)), labels=())
    else:
        data_dir = ensure_data(args.data_dir)
    print(f"data ready in {data_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bkd_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_bkd = sub.add_parser("train", help="train BKD on a CIFAR-N split")
    _add_train_args(p_bkd)
    p_ce = sub.add_parser("train-ce", help="train the cross-entropy baseline with the same budget")
    _add_train_args(p_ce)
    p_rep = sub.add_parser("reproduce",
                           help="every CIFAR-N split and seed: BKD, CE and cleanlab, one papermill run each")
    _add_reproduce_args(p_rep)
    p_res = sub.add_parser("results", help="the results table of a reproduction batch (Markdown, one column per split)")
    p_res.add_argument("out", help="batch folder written by reproduce --out")
    p_chk = sub.add_parser("check", help="rerun one finished run of a batch with the current code and record "
                                         "whether it came out identical (code_checks.json)")
    p_chk.add_argument("out", help="batch folder written by reproduce --out")
    p_chk.add_argument("runs", nargs="*", metavar="RUN",
                       help="run folder names in it, e.g. cifar10-worst-seed0, not paths "
                            "(with --rerun: default all in both)")
    p_chk.add_argument("--rerun", default=None, metavar="OTHER_OUT",
                       help="compare with the runs of the batch rerun into OTHER_OUT (reproduce with the same "
                            "options) instead of training them again here")
    p_chk.add_argument("--reference", default=None, metavar="OLDER_OUT",
                       help="with --rerun: compare OTHER_OUT's runs with OLDER_OUT's, the same batch rerun on this "
                            "machine by older code, instead of with OUT's (floats differ between CPUs in their last "
                            "digits; two code versions on one machine compare exactly)")
    p_chk.add_argument("--replay-epochs", dest="replay_epochs", type=int, default=None, metavar="K",
                       help="instead of rerunning whole runs (default: every finished run), train their first K "
                            "epochs again on this CPU model and compare the per-epoch curves bit for bit (a "
                            "replay: it shows those K epochs are computed as before, nothing more)")
    p_chk.add_argument("--methods", nargs="+", default=None, choices=list(METHODS),
                       help="with --replay-epochs: the methods to replay (default: bkd and ce, those the run "
                            "trained; cleanlab's fold runs are not replayed)")
    p_chk.add_argument("--threads", type=int, default=None,
                       help="torch threads (default: the batch's threads per run; float sums depend on it)")
    p_chk.add_argument("--data-dir", default=None,
                       help="data folder (default: $BKD_DATA_DIR, else a user cache folder)")
    p_chk.add_argument("--no-progress", action="store_true")
    _add_data_args(sub.add_parser("data", help="check the data the book reads (or --dataset's); download what is "
                                               "missing"))
    args = parser.parse_args(argv)
    try:
        _refuse_empty_paths(args)
        if args.command == "data":
            return _data(args)
        if args.command == "reproduce":
            return _reproduce(args)
        if args.command == "results":
            return _results(args.out)
        if args.command == "check":
            return _check(args)
        return _train(args, "bkd" if args.command == "train" else "ce")
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last finished epoch", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output stopped early (``results OUT | head``): not an error
        _silence_stdout()
        return 0
    except SystemExit as exc:  # parse_overrides and build_config refuse input this way
        if not isinstance(exc.code, str):
            raise
        message = exc.code if exc.code.startswith("error: ") else f"error: {exc.code}"
        print(" ".join(message.split()), file=sys.stderr)
        return 2
    except (BKDError, ValueError, OSError) as exc:
        print(f"error: {describe_error(exc)}", file=sys.stderr)
        return 2


def _refuse_empty_paths(args: argparse.Namespace) -> None:
    """An empty folder argument (often an unset shell variable) would mean the working directory: refuse it."""
    flags = {"out": "--out" if args.command in ("train", "train-ce", "reproduce") else "OUT (the batch folder)",
             "rerun": "--rerun", "reference": "--reference", "data_dir": "--data-dir"}
    for name, flag in flags.items():
        if getattr(args, name, None) == "":
            raise ValueError(f"{flag} is empty; give a folder path (is a shell variable unset?)")


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not fail on the closed pipe again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor (a stream in tests): nothing to flush
        pass


def describe_error(exc: BaseException) -> str:
    """One line for a user: what went wrong, where, and (for a failing file operation) what to do."""
    if isinstance(exc, OSError) and not isinstance(exc, BKDError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        hint = {errno.ENOSPC: "free some space and rerun the same command: a run resumes from its last checkpoint",
                errno.EDQUOT: "free some space and rerun the same command: a run resumes from its last checkpoint",
                errno.EACCES: "choose a folder you can write to (or fix its permissions)",
                errno.EPERM: "choose a folder you can write to (or fix its permissions)",
                errno.EROFS: "choose a folder on a writable file system",
                errno.EEXIST: "a file is in the way: choose another path, or move that file",
                errno.ENOTDIR: "a file is in the way: choose another path, or move that file",
                errno.EISDIR: "a folder is where a file was expected: choose another path"}.get(exc.errno, "")
        return f"{exc.strerror}{where}{'; ' + hint if hint else ''}"
    return " ".join(str(exc).split()) if str(exc).strip() else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
