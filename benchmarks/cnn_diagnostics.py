#!/usr/bin/env python
"""When does the `cnn` profile's teacher start to memorize, and what does the student curve do then?

Reads BKD runs trained with phase 1 kept going past the tipping rule (``--set tipping_window=100``: the official
rule needs 100 smaller epochs on each side, so it never fires and every epoch scores every image), finished or
still training (the epoch files and the checkpoint's history), and prints per epoch: the student's mean max
probability (the tipping statistic), clean-label test accuracy, the share of mislabelled and of correctly labelled
training images whose given label the teacher predicts (memorization shows in the first), and the ROC-AUC of the
eval-mode agreement score (mislabelled vs clean). Then, for the official rule (the profile's window,
``bkd_core.book.cnn.WINDOW``) applied to the curve: where it fires, how far the curve falls in the
``bkd_core.book.cnn.FALL_EPOCHS`` epochs after the peak, and the detection at that epoch
(Otsu split, G4 and below-threshold F1, noise estimate), which is what a run of the profile detects (its phase 1
is the same up to the moment the rule fires).

Usage::

    .venv/bin/python benchmarks/cnn_diagnostics.py RUN_DIR [RUN_DIR ...] [--json OUT.json]

It needs the data (``BKD_DATA_DIR``) for the clean labels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bkd_core.book import cnn  # noqa: E402
from bkd_core.data import load_cifar_n  # noqa: E402
from bkd_core.method import detect, find_tipping_point  # noqa: E402
from bkd_core.metrics import detection_scores, epoch_curves, flag_all_f1  # noqa: E402
from bkd_core.rundir import RunDir, safe_torch_load  # noqa: E402
from bkd_core.train import training_subset  # noqa: E402
from bkd_core.config import BKDConfig  # noqa: E402
from bkd_core.data import train_val_split  # noqa: E402


def diagnose(run: Path) -> dict:
    rundir = RunDir(run)
    stored = json.loads((run / "config.json").read_text())
    config = BKDConfig.from_dict(stored["config"])
    identity = stored["identity"]
    data = training_subset(load_cifar_n(identity["dataset"], identity["split"]), config)
    train_idx, _ = train_val_split(len(data.train_labels), config.val_ratio, config.seed)
    state = safe_torch_load(run / "checkpoint.pt", what="checkpoint", fix="")
    history = {k: list(v) for k, v in state["history"].items()}
    done = int(state["epoch"])
    epochs = [rundir.load_epoch(e) for e in range(done)]
    curves = epoch_curves(history, epochs, data.is_noisy, train_idx)
    stat = curves["mean_max_student"]
    tip = find_tipping_point(stat, cnn.WINDOW)
    out = {"run": run.name, "split": identity["split"], "augment": config.augment,
           "widths": list(config.model_widths), "weight_decay": config.weight_decay, "epochs": done,
           "epoch_time_s": float(np.median(history["epoch_time"])), "curves": curves, "tipping_epoch": tip}
    if tip is not None:
        scores = epochs[tip]["eval_agreement"].astype(np.float64)
        det = detect(scores, bins=config.otsu_bins, criterion=config.otsu_criterion)
        after = [v for v in stat[tip + 1: tip + 1 + cnn.FALL_EPOCHS] if v is not None]
        out.update({
            "found_at_epoch": tip + cnn.WINDOW,
            "fall_within_5": float(stat[tip] - min(after)) if after else None,
            "estimated_noise_rate": float(det.below_threshold.mean()),
            "true_noise_rate": float(data.is_noisy.mean()),
            "g4_f1": detection_scores(det.label_issues, data.is_noisy)["f1"],
            "below_threshold_f1": detection_scores(det.below_threshold, data.is_noisy)["f1"],
            "flag_all_f1": flag_all_f1(float(data.is_noisy.mean())),
            "auc_at_tip": curves["agreement_auc"][tip],
            "test_acc_at_tip": curves["test_acc"][tip],
        })
    aucs = [a if a is not None else -1 for a in curves["agreement_auc"]]
    out["best_auc_epoch"] = int(np.argmax(aucs))
    out["best_auc"] = max(aucs)
    return out


def table(d: dict) -> str:
    c = d["curves"]
    rows = ["| epoch | student mean max prob | test acc. (%) | teacher fits mislabelled (%) | teacher fits clean (%) "
            "| agreement ROC-AUC |", "| --- | --- | --- | --- | --- | --- |"]
    for i, e in enumerate(c["epoch"]):
        mark = " (peak)" if d["tipping_epoch"] == i else ""
        rows.append(f"| {int(e)}{mark} | {c['mean_max_student'][i]:.4f} | {c['test_acc'][i]:.1f} | "
                    f"{100 * c['fit_mislabelled'][i]:.1f} | {100 * c['fit_clean'][i]:.1f} | "
                    f"{c['agreement_auc'][i]:.3f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = []
    for run in args.runs:
        d = diagnose(run)
        results.append(d)
        print(f"\n## {d['run']} ({d['split']}, augment={d['augment']}, widths={d['widths']}, "
              f"wd={d['weight_decay']}, {d['epochs']} epochs, median {d['epoch_time_s']:.0f} s an epoch)\n")
        print(table(d))
        summary = {k: v for k, v in d.items() if k != "curves"}
        print("\n" + json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
