#!/usr/bin/env python
"""Where a dip of phase 2 comes from: the batch and the training image behind one epoch's loss spike.

Trains BKD with the ``features`` profile (``--split``, ``--seed``) up to ``--epoch`` (from 1) and one more, logging
every batch's loss and gradient norm (both networks) from two epochs before it; keeps the state at the start of
``--epoch``; then prints:

- the training image whose teacher and student logits differ most at that moment (its index, given and clean
  label, feature-vector length against the median, and the next largest difference);
- per logged epoch, the batch with the largest loss and gradient norm, whether it holds that image, and the
  medians over the epoch's batches;
- the same epochs trained again from the kept state with only that image left out of ``--epoch``: loss and test
  accuracy per epoch, beside the run's own.

With the defaults (``worst``, seed 0, epoch 26) it measures the dip the robust-training chapter explains. The
trainer is used as it is, subclassed here to log and to leave one image out. About 30 epochs of the profile on one
thread (15-30 min on 2 cores).

Usage::

    BKD_DATA_DIR=... .venv/bin/python benchmarks/phase2_spike.py [--split worst] [--seed 0] [--epoch 26] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bkd_core.config import resolve  # noqa: E402
from bkd_core.data import load_cifar_n  # noqa: E402
from bkd_core.train import BKDTrainer  # noqa: E402


def trainer_class(first_logged: int, keep_at: int | None, snapshot: Path | None, leave_out: int | None,
                  log: list[dict]) -> type:
    """A :class:`BKDTrainer` that logs every batch from epoch index ``first_logged`` on, copies its run folder to
    ``snapshot`` once ``keep_at`` epochs are done, and leaves training image ``leave_out`` out of epoch index
    ``keep_at``."""

    class Logged(BKDTrainer):
        def begin_epoch(self) -> None:
            super().begin_epoch()
            self.batch_index = 0

        def training_batches(self, rows=None):
            for pos, step in super().training_batches(rows):
                if leave_out is not None and self.epoch == keep_at:
                    pos = pos[self.train_rows[pos] != leave_out]
                yield pos, step

        def train_step(self, pos, *, step=True):
            self.batch_rows = self.train_rows[pos].tolist()
            return super().train_step(pos, step=step)

        def optimizer_step(self, loss: torch.Tensor) -> None:
            super().optimizer_step(loss)
            if self.epoch >= first_logged:
                grads = [p.grad.float() for net in self.networks.values() for p in net.parameters()
                         if p.grad is not None]
                log.append({"epoch": self.epoch, "batch": self.batch_index, "loss": float(loss.detach()),
                            "grad": float(torch.sqrt(sum((g ** 2).sum() for g in grads))), "rows": self.batch_rows})
            self.batch_index += 1

        def save_checkpoint(self) -> None:
            super().save_checkpoint()
            if snapshot is not None and self.epoch == keep_at:
                shutil.copytree(self.rundir.path, snapshot)

    return Logged


def logit_gaps(trainer: BKDTrainer) -> tuple[np.ndarray, np.ndarray]:
    """Per training row: the largest |z_T - z_S| over the classes, and the row's image index."""
    with torch.no_grad():
        for net in trainer.networks.values():
            net.eval()
        x = trainer.batch_inputs(trainer.train_rows, augment=False)
        gap = (trainer.networks["teacher"](x) - trainer.networks["student"](x)).abs().max(1).values
    return gap.numpy(), trainer.train_rows.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="worst")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epoch", type=int, default=26, help="the epoch of the spike, counted from 1")
    parser.add_argument("--out", type=Path, default=None, help="a new folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="phase2_spike-"))
    spike = args.epoch - 1  # 0-based
    data = load_cifar_n("cifar10", args.split)
    config = resolve("features", {"seed": args.seed, "epochs": args.epoch + 1})

    log: list[dict] = []
    snapshot = out / "kept"
    run = trainer_class(spike - 2, spike, snapshot, None, log)(data, config, out / "run", progress=False)
    result = run.run()

    # the image behind the spike, at the start of the spike's epoch
    kept = trainer_class(spike, None, None, None, [])(data, config, snapshot, progress=False)
    with kept.rundir.writing(kept.run_identity(), config.to_dict()):
        kept.try_resume()
    gaps, rows = logit_gaps(kept)
    order = np.argsort(gaps)[::-1]
    image = int(rows[order[0]])
    lengths = kept.prep.images.double().norm(dim=1).cpu().numpy()  # the feature vectors of all training images
    print(f"{args.split} seed {args.seed}, start of epoch {args.epoch}: training image {image} (given label "
          f"{int(data.train_labels[image])}, clean label {int(data.clean_labels[image])}) has the largest logit gap "
          f"|z_T - z_S| = {gaps[order[0]]:.1f} (next largest {gaps[order[1]]:.1f}); its feature vector is "
          f"{lengths[image]:.1f} long, {lengths[image] / np.median(lengths):.1f} times the median "
          f"{np.median(lengths):.1f} (the longest: image {int(np.argmax(lengths))})")
    for epoch in sorted({r["epoch"] for r in log}):
        batches = [r for r in log if r["epoch"] == epoch]
        loss, grad = np.array([r["loss"] for r in batches]), np.array([r["grad"] for r in batches])
        worst = int(np.argmax(grad))
        print(f"epoch {epoch + 1}: largest gradient norm {grad[worst]:.1f} in batch {worst + 1} "
              f"(loss {loss[worst]:.2f}, "
              f"{'holds' if image in batches[worst]['rows'] else 'does not hold'} image {image}); medians over "
              f"{len(batches)} batches: loss {np.median(loss):.2f}, gradient norm {np.median(grad):.2f}")

    # the same epochs from the kept state, with the image left out of the spike's epoch
    shutil.copytree(snapshot, out / "left_out")
    again = trainer_class(spike, spike, None, image, [])(data, config, out / "left_out", progress=False).run()
    for name, res in (("the run", result), (f"image {image} left out of epoch {args.epoch}", again)):
        epochs = range(spike - 1, len(res.history["loss"]))
        print(f"{name}: " + "; ".join(f"epoch {e + 1} loss {res.history['loss'][e]:.2f}, test "
                                      f"{res.history['test_acc'][e]:.2f}%" for e in epochs))
    print(f"runs in {out}")


if __name__ == "__main__":
    main()
