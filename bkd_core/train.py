"""Training: Blind Knowledge Distillation (``train_bkd``) and a plain cross-entropy baseline (``train_ce``).

BKD in ten lines (one step: :func:`bkd_core.method.bkd_step`; no peak: :func:`~bkd_core.method.tipping_point`)::

    for epoch in range(epochs):                     # teacher T, blind student S, one SGD over both
        for x, y in shuffled batches:
            zT, zS = T(x), S(x)
            ce = CE(zT, y) if phase 1 else soft_CE(zT, robust_targets(y, softmax(zS), alpha[group]))
            loss = ce + sum_{c != y} (zT[c] - zS[c])^2 / (B*C - 1)     # the blind compensation loss
            SGD step on loss; stat += max(softmax(zS))                 # the student's confidence
        score = agreement(T(x), S(x))[y] for every sample (training pass, and in eval mode until the tip)
        if phase 1 and tipping_point(stat per epoch) (first strict peak, or the no-peak fallback):
            groups = Otsu split of the tipping epoch's training-pass scores -> G1..G4; phase 2 starts
    label issues = G4 of the Otsu split of the tipping epoch's eval-mode scores (below-threshold: G3 + G4)

Both run on one device-resident pipeline (``bkd_core.augment``), checkpoint with atomic writes (every
``checkpoint_every`` epochs, also every ``checkpoint_seconds``, and at the end), and resume from
``run_dir``: the run re-trains from its last checkpoint, recomputing the epoch files written after it.

Which guarantee holds where:
- on the CPU, a run interrupted and resumed ends with the same results as an uninterrupted one, and
  two runs with the same seed agree exactly (same machine and torch build);
- on CUDA, the same holds only with ``deterministic=True`` (deterministic cuDNN and algorithms, no
  ``cudnn.benchmark``); with the default ``deterministic=False`` cuDNN picks its fastest, not
  bit-reproducible kernels, so a resumed or repeated run agrees in distribution, not bit for bit.
- Precision (``precision``, :meth:`BKDConfig.resolved_precision`, recorded in ``metrics.json``): fp32 on
  the CPU (bf16 autocast under ``"native"`` on CPUs with bf16 units); bf16 autocast on GPUs with bf16,
  fp16 autocast with a gradient scaler (its state checkpointed) on those without. The classifier head
  and the losses stay float32.

One loop for every method: :meth:`Trainer.train_epoch` cuts the shuffled training rows into batches and
calls the method's :meth:`~Trainer.train_step` on each (``BKDTrainer``: teacher, blind student, the two
losses; ``CETrainer``: one network, cross-entropy); :meth:`Trainer.run` wraps the epochs with evaluation,
the epoch files, checkpoints and the outputs. ``benchmarks/bench_epoch.py`` times that same
``train_epoch``.

A run directory holds:
- ``config.json``: the configuration and the data identity;
- ``checkpoint.pt``: the latest epoch's state (weights, optimizer, RNG, history); model weights,
  never to be committed;
- ``epochs/epoch_XXX.npz``: per-sample scores of each epoch (float16);
- ``metrics.json`` and ``scores.npz`` once the run has finished, with ``curves.json`` (the per-epoch curves:
  losses, the student's confidence, accuracies, how much of the mislabelled and of the clean training images
  the network fits, the agreement score's ROC-AUC) and, once a tipping point was found, ``tipping_scores.npz``
  (its agreement scores in float16): small files a batch commits so that figures need no retraining.

A loss or logit that is not finite stops the run within the batch (:meth:`Trainer.require_finite`) with one
sentence; nothing of the diverged epoch is written.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .augment import (
    NORMALIZATION,
    OFFICIAL_AUGMENT,
    Normalizer,
    augment_batch,
    ordered_batches,
    shuffled_batches,
    to_device_images,
)
from .config import BKDConfig, stored_fingerprint
from .data import NoisyCIFAR, train_val_split
from .errors import DamagedFileError, DivergedError
from .method import agreement_probability, bkd_step, detect, group_alpha, tipping_point
from .metrics import detection_metrics, detector_summary, epoch_curves, run_header
from .models import build_networks, build_optimizer
from .rundir import CHECKPOINT, RunDir  # noqa: F401  (CHECKPOINT: the file name, for callers)


@dataclass
class RunResult:
    """What a finished run returns (and writes to ``run_dir``).

    ``label_issues`` bool [N] (the samples the method reports: BKD's group G4, the official output),
    ``label_quality`` float [N] (lower = more likely mislabelled), ``ranked_indices`` int64 [N] (rows, most
    suspicious first), ``estimated_noise_rate`` and ``indices`` int64 [N] (each row's position in the
    50,000-image training set) follow cleanlab's conventions, with the names every result of ``bkd_core`` uses.
    """

    run_dir: Path
    config: BKDConfig
    metrics: dict[str, Any]
    label_issues: np.ndarray
    label_quality: np.ndarray
    ranked_indices: np.ndarray
    indices: np.ndarray
    history: dict[str, np.ndarray]  # per-epoch scalars [E] and per-sample arrays [E, n]
    arrays: dict[str, np.ndarray] = field(repr=False, default_factory=dict)  # everything in scores.npz
    networks: dict[str, nn.Module] = field(repr=False, default_factory=dict)

    @property
    def tipping_epoch(self) -> int | None:
        return self.metrics.get("tipping_epoch")

    @property
    def estimated_noise_rate(self) -> float | None:
        """The run's estimate of the fraction of wrong labels (``metrics["estimated_noise_rate"]``)."""
        return self.metrics.get("estimated_noise_rate")

    @classmethod
    def load(cls, rundir: RunDir, config: BKDConfig, networks: dict[str, nn.Module] | None = None) -> "RunResult":
        """The result of the finished run in ``rundir`` from its ``metrics.json`` and ``scores.npz``
        (``history`` from the arrays named ``history_*``).

        Raises
        ------
        DamagedFileError
            an output file is damaged (:meth:`RunDir.load_outputs`).
        """
        metrics, arrays = rundir.load_outputs()
        return cls(run_dir=rundir.path, config=config, metrics=metrics, label_issues=arrays["label_issues"],
                   label_quality=arrays["label_quality"], ranked_indices=arrays["ranked_indices"],
                   indices=arrays["indices"],
                   history={k[len("history_"):]: v for k, v in arrays.items() if k.startswith("history_")},
                   arrays=arrays, networks=networks or {})


@dataclass
class PreparedData:
    """A run's data on its device: the (subset of the) training set, its train/val split, the test set."""

    data: NoisyCIFAR
    train_idx: np.ndarray  # rows of ``data`` used for training
    val_idx: np.ndarray  # rows held out (noisy validation)
    images: torch.Tensor  # uint8 [N, 3, 32, 32], or float32 feature vectors [N, D] (config.features)
    labels: torch.Tensor  # int64 [N], given (noisy) labels
    test_images: torch.Tensor
    test_labels: torch.Tensor


def training_subset(data: NoisyCIFAR, config: BKDConfig) -> NoisyCIFAR:
    """The ``config.train_size`` random training images of ``data`` (seeded by ``config.seed``).

    Raises
    ------
    ValueError
        ``train_size`` is larger than the training set.
    """
    if config.train_size is not None and config.train_size > len(data):
        raise ValueError(f"train_size={config.train_size:,} is larger than the {len(data):,} training images of "
                         f"{data.dataset}/{data.split}; use at most {len(data):,}, or None for all of them")
    return data.subset(config.train_size, seed=config.seed)


def with_config_features(data: NoisyCIFAR, config: BKDConfig, *, progress: bool = True) -> NoisyCIFAR:
    """``data`` with the feature vectors ``config.features`` names attached (computed once, cached);
    ``data`` unchanged for a configuration that trains on images."""
    if config.features is None:
        return data
    from .features import with_features

    return with_features(data, config.features, progress=progress)


def prepare_data(data: NoisyCIFAR, config: BKDConfig, device: torch.device) -> PreparedData:
    """Take the configured subset (seeded by ``config.seed``), split it and move it to ``device``.

    With ``config.features`` the network inputs are the float32 feature vectors [N, D] of the images
    (attached here if ``data`` does not hold them yet); otherwise the uint8 images [N, 3, 32, 32].
    """
    data = training_subset(with_config_features(data, config), config)
    train_idx, val_idx = train_val_split(len(data.train_labels), config.val_ratio, config.seed)
    test_rows = np.arange(len(data.test_labels))
    if config.test_size is not None and config.test_size > len(test_rows):
        raise ValueError(f"test_size={config.test_size:,} is larger than the {len(test_rows):,} test images of "
                         f"{data.dataset}; use at most {len(test_rows):,}, or None for all of them")
    if config.test_size is not None and config.test_size < len(test_rows):
        test_rows = np.sort(np.random.default_rng(config.seed).permutation(len(test_rows))[:config.test_size])
    if config.features:
        images = torch.from_numpy(np.ascontiguousarray(data.train_features, dtype=np.float32)).to(device)
        test_images = torch.from_numpy(np.ascontiguousarray(data.test_features[test_rows], dtype=np.float32)).to(device)
    else:
        images, test_images = (to_device_images(data.train_images, device),
                               to_device_images(data.test_images[test_rows], device))
    return PreparedData(
        data=data,
        train_idx=train_idx,
        val_idx=val_idx,
        images=images,
        labels=torch.from_numpy(data.train_labels.astype(np.int64)).to(device),
        test_images=test_images,
        test_labels=torch.from_numpy(data.test_labels[test_rows].astype(np.int64)).to(device),
    )


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _versions() -> dict[str, str]:
    import torchvision

    return {"bkd_core": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def set_determinism(config: BKDConfig, device: torch.device) -> None:
    """On CUDA, the process-wide switches of ``config.deterministic``: deterministic cuBLAS, cuDNN and
    algorithms, or cuDNN's fastest kernels (``cudnn.benchmark``). Nothing to set on the CPU."""
    if device.type != "cuda":
        return
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    torch.backends.cudnn.deterministic = config.deterministic
    torch.backends.cudnn.benchmark = not config.deterministic
    torch.use_deterministic_algorithms(config.deterministic, warn_only=True)


#: training images the whitening filters of a ``whitened_cnn`` are computed from (the first ones of the run's
#: training rows; label-free)
WHITENING_IMAGES = 5000


@dataclass
class EpochOutput:
    """What :meth:`Trainer.train_epoch` returns: per-sample values of the training pass ({key: float
    [n_train]}, on the device) and the epoch's scalars ({key: 0-d tensor}, on the device)."""

    per_sample: dict[str, torch.Tensor]
    scalars: dict[str, torch.Tensor]


class Trainer:
    """Shared machinery: set-up, the epoch loop with checkpoint/resume, evaluation, outputs."""

    kind = "base"
    network_names: tuple[str, ...] = ()

    def __init__(self, data: NoisyCIFAR, config: BKDConfig, run_dir: str | Path, progress: bool) -> None:
        self.config = config
        self.rundir = RunDir(run_dir)
        self.loaded_weights = False  # networks hold trained (or resumed) weights
        self.progress = progress
        self.device = config.resolved_device()
        self.prep = prepare_data(data, config, self.device)
        self.num_classes = data.num_classes
        self.n_train = len(self.prep.train_idx)
        self.train_rows = torch.from_numpy(self.prep.train_idx).to(self.device)
        self.val_rows = torch.from_numpy(self.prep.val_idx).to(self.device)
        self.train_labels = self.prep.labels[self.train_rows]
        self.augment_spec = OFFICIAL_AUGMENT.get(data.dataset, OFFICIAL_AUGMENT["cifar10"])
        set_determinism(config, self.device)
        self.channels_last = config.channels_last and config.features is None
        # autocast: bf16 where the GPU has bf16 units, fp16 with a gradient scaler where not (Colab's T4),
        # fp32 on the CPU
        self.precision = config.resolved_precision(self.device)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        if config.features:  # feature vectors are standardized already
            self.normalize = self.normalize_val = _identity
        else:
            mean, std = NORMALIZATION[data.dataset]
            val_mean, val_std = NORMALIZATION["cifar10" if config.val_normalization == "cifar10" else data.dataset]
            self.normalize = Normalizer(mean, std, self.device, self.channels_last)
            self.normalize_val = Normalizer(val_mean, val_std, self.device, self.channels_last)
        in_features = self.prep.images.shape[1] if config.features else None
        whitening = (self.normalize(self.prep.images[self.train_rows[:WHITENING_IMAGES]])
                     if config.model == "whitened_cnn" else None)
        self.networks = build_networks(config, self.network_names, self.num_classes, self.device,
                                       in_features=in_features, whitening_images=whitening)
        self.forward = {name: (torch.compile(net) if config.compile else net) for name, net in self.networks.items()}
        self.optimizer, self.scheduler = build_optimizer(config, self.networks.values(), self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.history: dict[str, list[float]] = {}
        # divergence guard (watch / require_finite): a host sync every batch on the CPU, every 50 on CUDA
        self.finite_every = 50 if self.device.type == "cuda" else 1
        self.nonfinite: torch.Tensor | None = None
        self.watched: tuple[str, ...] = ()
        self.epoch = 0  # number of finished epochs
        self.checkpoint_epoch = 0  # number of finished epochs in the last checkpoint written or loaded
        self.last_checkpoint_time = time.monotonic()
        self.elapsed = 0.0
        self.started = self.epoch_started = time.perf_counter()  # config.deadline_s counts from here
        # why training ends after the last epoch started (None: it goes on), set by decide_stop once per epoch
        self.stop_reason: str | None = None

    # -- the epoch loop -------------------------------------------------------------------------
    def train_epoch(self, rows: int | None = None) -> EpochOutput:
        """Train one epoch: the training rows in a random order, cut into batches, one
        :meth:`train_step` each. Per-sample values and sums stay on the device (no host sync).

        Parameters
        ----------
        rows : int | None
            train on the first ``rows`` training rows only (a benchmark's warm-up); default all.

        Returns
        -------
        EpochOutput
            The epoch's per-sample values (each float [rows], in training-row order) and its scalars.
        """
        n = self.n_train if rows is None else rows
        per_sample = {key: torch.zeros(n, device=self.device) for key in self.per_sample_keys}
        sums = torch.zeros(len(self.sum_keys), device=self.device)
        self.begin_epoch()
        batches = list(self.training_batches(n))
        for i, (pos, step) in enumerate(batches):
            values, batch_sums = self.train_step(pos, step=step)
            for key, value in values.items():
                per_sample[key][pos] = value
            sums += batch_sums
            if (i + 1) % self.finite_every == 0 or i + 1 == len(batches):
                self.require_finite(i + 1, len(batches))
        return EpochOutput(per_sample, self.epoch_scalars(dict(zip(self.sum_keys, (sums / n).unbind()))))

    # -- hooks for subclasses -------------------------------------------------------------------
    #: names of the per-sample values :meth:`train_step` returns, and of the sums it adds up
    per_sample_keys: tuple[str, ...] = ()
    sum_keys: tuple[str, ...] = ()

    def begin_epoch(self) -> None:
        """Per-epoch set-up before the first batch (BKD: the phase-2 weights of the groups)."""

    def train_step(self, pos: torch.Tensor, *, step: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One batch: the training rows at positions ``pos`` (int64 [B]) through the networks, the loss, and
        (``step``) the SGD step. Returns the per-sample values ({key: float [B]}, :attr:`per_sample_keys`) and
        the batch's sums (float [len(sum_keys)]: per-sample quantities summed over the batch)."""
        raise NotImplementedError

    def epoch_scalars(self, means: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The epoch's scalars (0-d tensors) from the means over the epoch of the :attr:`sum_keys`."""
        return means

    def after_epoch(self, per_sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Epoch-end work (tipping point, eval pass); returns extra per-sample arrays to store."""
        return {}

    def detection_final(self) -> bool:
        """Is the run's detection final (BKD: tipping point found, groups set)? Never for a method without one."""
        return False

    def decide_stop(self) -> str | None:
        """Decide, and keep in :attr:`stop_reason`, why training ends after the epoch in progress (or, between
        epochs, the last one): ``"detection"`` (``stop_after_detection`` and :meth:`detection_final`),
        ``"epochs"`` (it is the last of ``config.epochs``), ``"stop_after_epochs"`` (it is the last of
        ``config.stop_after_epochs``, a replay of the run's first epochs), ``"deadline"`` (one more epoch, as
        long as the longest of the last three, would end more than ``config.deadline_s`` seconds after this
        trainer started), or None: training goes on. Called once per epoch, after its :meth:`after_epoch`, and once
        before the first epoch of a run (fresh or resumed)."""
        self.stop_reason = self._why_stop()
        return self.stop_reason

    def _why_stop(self) -> str | None:
        cfg = self.config
        started = len(self.history.get("lr", []))  # epochs started (lr is recorded first in each)
        if started == 0:
            return None
        if cfg.stop_after_detection and self.detection_final():
            return "detection"
        if started >= cfg.epochs:
            return "epochs"
        if cfg.stop_after_epochs is not None and started >= cfg.stop_after_epochs:
            return "stop_after_epochs"
        if cfg.deadline_s is not None:
            now = time.perf_counter()
            times = [t for t in self.history.get("epoch_time", [])[-3:] if np.isfinite(t)]
            estimate = max([*times, now - self.epoch_started if started > self.epoch else 0.0])
            if now + 1.2 * estimate > self.started + cfg.deadline_s:
                return "deadline"
        return None

    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores of normalized images [B, 3, H, W] -> [B, C]; argmax is the prediction."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def final_outputs(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Return (metrics, arrays for scores.npz) of the finished run."""
        raise NotImplementedError

    # -- shared pieces ---------------------------------------------------------------------------
    def watch(self, **tensors: torch.Tensor) -> None:
        """Note whether any of these tensors of a training step (the networks' logits, the loss) holds an
        infinite or NaN value; :meth:`require_finite` stops the run on it. No host sync here."""
        flags = torch.stack([~torch.isfinite(t.detach()).all() for t in tensors.values()])
        self.nonfinite = flags if self.nonfinite is None else self.nonfinite | flags
        self.watched = tuple(tensors)

    def require_finite(self, batch: int, batches: int) -> None:
        """Stop a diverging run at once: raise :class:`DivergedError` if a watched tensor of the batches since
        the last call was not finite (a host sync: every batch on the CPU, every :attr:`finite_every` on CUDA).

        Nothing of the epoch is saved, so the run directory keeps the last finite epoch's checkpoint.
        """
        if self.nonfinite is None or not bool(self.nonfinite.any()):
            return
        names = [name for name, bad in zip(self.watched, self.nonfinite.tolist()) if bad]
        what = " and ".join(f"the {n}'s logits" if n in self.network_names else f"the {n}" for n in names)
        self.nonfinite = None
        raise self.diverged(f"training diverged in epoch {self.epoch + 1}, within batches "
                            f"{max(batch - self.finite_every + 1, 1)}-{batch} of {batches}: {what} became "
                            "infinite or NaN")

    def diverged(self, what: str) -> DivergedError:
        """The one sentence of a diverged run: what diverged, what to try, what is kept."""
        cfg = self.config
        return DivergedError(
            f"{what}. The likely cause is a learning rate too high for this model "
            f"(lr={cfg.lr:g}, batch_size={cfg.batch_size}); train with a lower lr (e.g. --set lr={cfg.lr / 2:g}) "
            f"into another run directory. No result was written: "
            + (f"{self.rundir.path} keeps the checkpoint of epoch {self.checkpoint_epoch} (a finite one)"
               if self.checkpoint_epoch else "nothing of this run was saved"))

    def autocast(self) -> Any:
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                              enabled=self.autocast_dtype is not None)

    def training_batches(self, rows: int | None = None) -> Iterator[tuple[torch.Tensor, bool]]:
        """One epoch's ``(positions, step)`` pairs: a random permutation of the training rows (the first
        ``rows`` of them; default all) cut into batches.

        ``step`` is False only for the last, partial batch with ``drop_last=True``: that batch gets
        no optimizer step, but its rows are still scored (:meth:`scoring_only`), so every row has its
        per-sample scores every epoch.
        """
        size = self.config.batch_size
        for pos in shuffled_batches(self.n_train if rows is None else rows, size, self.generator, self.device):
            yield pos, not (self.config.drop_last and len(pos) < size)

    @contextlib.contextmanager
    def scoring_only(self) -> Iterator[dict[str, nn.Module]]:
        """Networks for a forward pass that scores rows as a training step does (train mode, batch
        statistics) but changes nothing: no gradient, BatchNorm running statistics restored. It yields
        the networks not compiled, so the compiled ones keep one (static) batch shape."""
        saved = [(buf, buf.clone()) for net in self.networks.values() for buf in net.buffers()]
        try:
            with torch.no_grad():
                yield self.networks
        finally:
            with torch.no_grad():
                for buf, value in saved:
                    buf.copy_(value)

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """Backward and SGD step, through the gradient scaler (a pass-through unless precision is fp16)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def step_networks(self, step: bool) -> Any:
        """Context for one batch: the (compiled) networks of a training step, or :meth:`scoring_only`'s."""
        return contextlib.nullcontext(self.forward) if step else self.scoring_only()

    def batch_inputs(self, rows: torch.Tensor, *, augment: bool, normalizer: Normalizer | None = None) -> torch.Tensor:
        """Network inputs of training rows: normalized (optionally augmented) images, or feature vectors."""
        images = self.prep.images[rows]
        if augment:
            images = augment_batch(images, self.augment_spec, self.generator)
        return (normalizer or self.normalize)(images)

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, normalizer: Normalizer | None = None) -> float:
        """Accuracy (%) of the prediction on uint8 ``images`` [N, 3, H, W] against ``labels`` [N]."""
        for net in self.networks.values():
            net.eval()
        correct = torch.zeros((), device=self.device)
        for rows in ordered_batches(len(labels), self.config.eval_batch_size, self.device):
            with self.autocast():
                scores = self.predict_logits((normalizer or self.normalize)(images[rows]))
            correct += (scores.argmax(1) == labels[rows]).sum()
        return 100.0 * float(correct) / max(1, len(labels))

    @torch.no_grad()
    def predict_rows(self, rows: torch.Tensor, *, augment: bool) -> torch.Tensor:
        """float32 class probabilities [len(rows), C] of training rows (eval mode)."""
        for net in self.networks.values():
            net.eval()
        out = []
        for chunk in rows.split(self.config.eval_batch_size):
            with self.autocast():
                logits = self.predict_logits(self.batch_inputs(chunk, augment=augment))
            out.append(logits.float())
        return torch.cat(out)

    def record(self, key: str, value: float) -> None:
        self.history.setdefault(key, [float("nan")] * self.epoch)
        values = self.history[key]
        values.extend([float("nan")] * (self.epoch + 1 - len(values)))
        values[self.epoch] = value

    def load_epoch(self, epoch: int) -> dict[str, np.ndarray]:
        return self.rundir.load_epoch(epoch)

    def run_identity(self) -> dict[str, Any]:
        data = self.prep.data
        return {"kind": self.kind, "dataset": data.dataset, "split": data.split, "num_samples": len(data.train_labels),
                "num_train": self.n_train, "num_val": len(self.prep.val_idx), "num_test": len(self.prep.test_labels),
                "fingerprint": self.config.fingerprint(self.kind),
                **({"features": data.feature_key} if self.config.features else {})}

    def save_checkpoint(self) -> None:
        state = {
            "identity": self.run_identity(),
            "epoch": self.epoch,
            "elapsed": self.elapsed,
            "networks": {name: net.state_dict() for name, net in self.networks.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "scaler": self.scaler.state_dict(),  # plain numbers ({} when disabled)
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
            "extra": self.extra_state(),
        }
        self.rundir.save_checkpoint(state)
        self.checkpoint_epoch = self.epoch
        self.last_checkpoint_time = time.monotonic()

    def checkpoint_due(self) -> bool:
        """After an epoch: is a checkpoint due (every ``checkpoint_every`` epochs, after
        ``checkpoint_seconds``, and at the end)?"""
        cfg = self.config
        return (self.epoch >= cfg.epochs or self.stop_reason is not None or self.epoch % cfg.checkpoint_every == 0
                or (cfg.checkpoint_seconds is not None
                    and time.monotonic() - self.last_checkpoint_time >= cfg.checkpoint_seconds))

    def try_resume(self) -> bool:
        """Load the run directory's checkpoint, if there is one (read with ``weights_only=True``, so a
        tampered file cannot run code). Tensors are loaded on the CPU and moved where they belong: a
        generator's state must stay a CPU byte tensor, also for a CUDA generator."""
        state = self.rundir.load_checkpoint(self.run_identity())
        if state is None:
            return False
        try:
            for name, net in self.networks.items():
                net.load_state_dict(state["networks"][name])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.generator.set_state(state["generator"].cpu())
            if self.scaler.is_enabled() and state.get("scaler"):  # {} from an fp32/bf16 run or an older checkpoint
                self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"].cpu())
            self.history = state["history"]
            self.epoch = state["epoch"]
            self.elapsed = state["elapsed"]
            self.checkpoint_epoch = self.epoch
            self.load_extra_state(state["extra"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            path = self.rundir.path / CHECKPOINT
            raise DamagedFileError(f"checkpoint {path} does not fit this run's networks ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0][:200]}). Delete it to restart this run from its "
                                   f"first epoch (rm {path})") from exc
        self.loaded_weights = True
        return True

    def run(self) -> RunResult:
        identity = self.run_identity()
        with self.rundir.writing(identity, self.config.to_dict(), fingerprint=stored_fingerprint(self.kind)):
            resumed = self.try_resume()
            self.decide_stop()
            if self.rundir.finished() and (not resumed or self.epoch >= self.config.epochs
                                           or self.stop_reason is not None):
                try:
                    return self.load_result()
                except DamagedFileError:
                    if not resumed:
                        raise
                    # the final epoch's checkpoint and epoch files are there: recompute the outputs
            self.rundir.require_writable()
            if resumed:
                self.rundir.check_epochs(self.epoch)  # a damaged epoch file is found now, not at the end
                # epochs trained after the last checkpoint are trained again: their files must not stay
                self.rundir.remove_epochs_from(self.epoch)
            self.rundir.write_config(identity, self.config.to_dict())
            return self._train_and_finish()

    def _train_and_finish(self) -> RunResult:
        desc = f"{self.kind} {self.prep.data.dataset}/{self.prep.data.split}"
        bar = tqdm(total=self.config.epochs, initial=self.epoch, desc=desc, unit="epoch", disable=not self.progress,
                   dynamic_ncols=True)
        while self.epoch < self.config.epochs and self.stop_reason is None:
            start = self.epoch_started = time.perf_counter()
            for net in self.networks.values():
                net.train()
            self.record("lr", self.optimizer.param_groups[0]["lr"])
            out = self.train_epoch()
            self.scheduler.step()
            per_sample = {k: v.float().cpu().numpy() for k, v in out.per_sample.items()}
            for key, value in out.scalars.items():
                self.record(key, float(value))
            self.check_finite(per_sample)
            per_sample.update(self.after_epoch(per_sample))
            # the last epoch is evaluated, except where the run stops after its first epochs (a replay): those
            # epochs stay exactly as the full run computes them
            last = self.decide_stop() not in (None, "stop_after_epochs")
            if self.epoch % self.config.val_every == 0 or last:
                self.record("val_acc", self.evaluate(self.prep.images[self.val_rows] if len(self.val_rows)
                                                     else self.prep.images[self.train_rows],
                                                     self.prep.labels[self.val_rows] if len(self.val_rows)
                                                     else self.train_labels, self.normalize_val))
            if self.epoch % self.config.test_every == 0 or last:
                self.record("test_acc", self.evaluate(self.prep.test_images, self.prep.test_labels))
            self.rundir.save_epoch(self.epoch, {k: v.astype(np.float16) for k, v in per_sample.items()})
            self.elapsed += time.perf_counter() - start
            self.record("epoch_time", time.perf_counter() - start)
            self.epoch += 1
            if self.checkpoint_due():
                self.save_checkpoint()
            bar.update(1)
            bar.set_postfix({k: f"{self.history[k][-1]:.3g}" for k in ("loss", "test_acc") if k in self.history})
        bar.close()
        self.loaded_weights = True
        return self.finish()

    def check_finite(self, per_sample: dict[str, np.ndarray]) -> None:
        """Stop a diverging run: raise :class:`DivergedError` if this epoch's loss or scores are not finite.

        The epoch's results are not saved, so the run directory keeps the last finite epoch's checkpoint.
        """
        bad = [k for k in ("loss", "loss_ce", "loss_compensation") if k in self.history
               and not np.isfinite(self.history[k][self.epoch])]
        bad += [k for k, v in per_sample.items() if not np.isfinite(v).all()]
        if bad:
            values = ", ".join(f"{k}={self.history[k][self.epoch]:.3g}" for k in bad if k in self.history)
            raise self.diverged(f"training diverged in epoch {self.epoch + 1}: {', '.join(bad)} not finite"
                                f"{f' ({values})' if values else ''}")

    def stacked_history(self, epochs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Scalar history as float arrays [E] and per-sample history (``epochs``, each epoch's arrays) as
        float16 arrays [E, n]."""
        arrays: dict[str, np.ndarray] = {f"history_{k}": np.asarray(v, dtype=np.float64)
                                         for k, v in self.history.items()}
        keys = sorted({k for e in epochs for k in e})
        for key in keys:
            size = next(len(e[key]) for e in epochs if key in e)
            arrays[f"history_{key}"] = np.stack([e.get(key, np.full(size, np.nan, np.float16)) for e in epochs])
        return arrays

    def finish(self) -> RunResult:
        outputs, arrays = self.final_outputs()
        data = self.prep.data
        metrics = {**run_header(self.kind, data, self.config), **outputs}
        metrics.update({
            "num_train": self.n_train,
            "num_val": len(self.prep.val_idx),
            "num_test": len(self.prep.test_labels),
            "epochs": self.epoch,
            "test_acc": self.history["test_acc"][-1],
            "best_test_acc": float(np.nanmax(self.history["test_acc"])),
            "val_acc": self.history["val_acc"][-1],
            "best_val_acc": float(np.nanmax(self.history["val_acc"])),
            "wall_time_s": round(self.elapsed, 2),
            "stopped_by": self.stop_reason or "epochs",
            "device": _device_name(self.device),
            "precision": self.precision,
            "versions": _versions(),
            "command": " ".join(sys.argv),
        })
        quality = arrays["label_quality"]
        arrays.update({
            "ranked_indices": np.argsort(quality, kind="stable").astype(np.int64),
            "indices": data.indices.astype(np.int64),
            "given_labels": data.train_labels.astype(np.int64),
            "clean_labels": data.clean_labels.astype(np.int64),
            "train_rows": self.prep.train_idx.astype(np.int64),
            "val_rows": self.prep.val_idx.astype(np.int64),
        })
        epochs = [self.load_epoch(e) for e in range(self.epoch)]
        arrays.update(self.stacked_history(epochs))
        curves = epoch_curves(self.history, epochs, data.is_noisy, self.prep.train_idx)
        tipping = None
        if metrics.get("tipping_epoch") is not None:  # the detection's scores, for a histogram without retraining
            tipping = {"agreement": quality.astype(np.float16), "is_noisy": np.packbits(data.is_noisy),
                       "num_samples": np.int64(len(quality))}
        self.rundir.save_outputs(metrics, arrays, curves=curves, tipping_scores=tipping)
        return self.load_result()

    def load_result(self) -> RunResult:
        """The finished run's outputs; ``networks`` holds the trained networks when the checkpoint was
        loaded (it is empty for a finished run whose ``checkpoint.pt`` was deleted)."""
        return RunResult.load(self.rundir, self.config, self.networks if self.loaded_weights else None)


class BKDTrainer(Trainer):
    kind = "bkd"
    network_names = ("teacher", "student")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tipping_epoch: int | None = None
        self.tipping_found_at: int | None = None
        self.tipping_rule: str | None = None  # "peak": the official rule fired; "fallback": config.tipping_fallback
        self.train_groups: torch.Tensor | None = None  # int64 [n_train] in 1..4 once phase 2 starts
        self.alpha: torch.Tensor | None = None  # float [n_train]: each row's robust-target weight in phase 2

    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        # log of the normalized agreement distribution: argmax = official prediction
        return agreement_probability(self.forward["teacher"](images).float(),
                                     self.forward["student"](images).float()).log()

    per_sample_keys = ("train_agreement", "train_teacher_p", "train_student_p", "train_teacher_fits")
    sum_keys = ("loss_ce", "loss_compensation", "mean_max_student")

    def begin_epoch(self) -> None:
        groups = self.train_groups
        self.alpha = None if groups is None else group_alpha(groups, self.config.alphas).to(self.device)

    def train_step(self, pos: torch.Tensor, *, step: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One BKD batch: teacher and blind student forward, :func:`~bkd_core.method.bkd_step` (phase 2 with the
        rows' group weights), one SGD step over both networks. Per sample: the agreement probability of the given
        label, each network's probability of it, and whether the teacher predicts it (memorization of a wrong
        label shows there); sums: cross-entropy, compensation loss, the student's top
        probability."""
        cfg = self.config
        x = self.batch_inputs(self.train_rows[pos], augment=cfg.augment)
        with self.step_networks(step) as nets:
            with self.autocast():
                z_t, z_s = nets["teacher"](x), nets["student"](x)
            out = bkd_step(z_t.float(), z_s.float(), self.train_labels[pos],
                           alpha=None if self.alpha is None else self.alpha[pos], detach_teacher=cfg.detach_teacher,
                           reduction=cfg.loss_reduction, detach_robust_target=cfg.detach_robust_target,
                           student_sees_label=cfg.student_sees_label)
        self.watch(teacher=z_t, student=z_s, loss=out.loss)
        if step:
            self.optimizer_step(out.loss)
        n = len(pos)
        sums = torch.stack([out.cross_entropy.detach() * n, out.compensation.detach() * n,
                            out.student_confidence.sum()])
        return {"train_agreement": out.agreement, "train_teacher_p": out.teacher_p,
                "train_student_p": out.student_p,
                "train_teacher_fits": (z_t.detach().argmax(1) == self.train_labels[pos]).float()}, sums

    def epoch_scalars(self, means: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**means, "loss": means["loss_ce"] + means["loss_compensation"],
                "phase": torch.tensor(1.0 if self.alpha is None else 2.0)}

    def eval_agreement(self) -> np.ndarray:
        """Agreement score of the given label for every row of the subset (eval mode) -> float [N]."""
        rows = torch.arange(len(self.prep.labels), device=self.device)
        log_agree = self.predict_rows(rows, augment=self.config.score_views == "augmented" and self.config.augment)
        return log_agree.exp()[rows, self.prep.labels].cpu().numpy()

    def after_epoch(self, per_sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.tipping_epoch is not None:
            return {}
        cfg = self.config
        point = tipping_point(self.history["mean_max_student"], window=cfg.tipping_window,
                              fallback=cfg.tipping_fallback, final=self.epoch + 1 >= cfg.epochs)
        if point is None:
            return {"eval_agreement": self.eval_agreement()}
        tip = point.epoch
        self.tipping_epoch, self.tipping_found_at, self.tipping_rule = tip, self.epoch, point.rule
        scores = (self.load_epoch(tip)["train_agreement"].astype(np.float64) if tip < self.epoch
                  else per_sample["train_agreement"])
        # phase 2's groups: the same split and groups as the detection, on the training pass's scores
        groups = detect(scores, bins=cfg.otsu_bins, criterion=cfg.otsu_criterion).groups
        self.train_groups = torch.from_numpy(groups).to(self.device)
        # the tipping epoch is this one (tipping_window=1 with the fallback): its eval-pass scores are
        # needed for the detection and were not computed yet
        return {"eval_agreement": self.eval_agreement()} if tip == self.epoch else {}

    def detection_final(self) -> bool:
        return self.tipping_epoch is not None

    def extra_state(self) -> dict[str, Any]:
        return {"tipping_epoch": self.tipping_epoch, "tipping_found_at": self.tipping_found_at,
                "tipping_rule": self.tipping_rule,
                "train_groups": None if self.train_groups is None else self.train_groups.cpu()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.tipping_epoch = state["tipping_epoch"]
        self.tipping_found_at = state["tipping_found_at"]
        self.tipping_rule = state["tipping_rule"]
        groups = state["train_groups"]
        self.train_groups = None if groups is None else groups.to(self.device)

    def final_outputs(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        cfg = self.config
        is_noisy = self.prep.data.is_noisy
        n = len(is_noisy)
        rows = torch.arange(n, device=self.device)
        predicted = self.predict_rows(rows, augment=False).argmax(1).cpu().numpy()
        metrics: dict[str, Any] = {"tipping_epoch": self.tipping_epoch, "tipping_found_at_epoch": self.tipping_found_at,
                                   "tipping_rule": self.tipping_rule}
        arrays: dict[str, np.ndarray] = {"predicted_labels": predicted.astype(np.int64)}
        if self.tipping_epoch is not None:
            scores = self.load_epoch(self.tipping_epoch)["eval_agreement"].astype(np.float64)
            detection = detect(scores, bins=cfg.otsu_bins, criterion=cfg.otsu_criterion, noisy_groups=cfg.noisy_groups)
            split, groups, label_issues = detection.split, detection.groups, detection.label_issues
            metrics.update({
                "threshold": split.threshold, "lower_mean": split.lower_mean, "upper_mean": split.upper_mean,
                "lower_std": split.lower_std, "upper_std": split.upper_std,
                "estimated_noise_rate": detection.estimated_noise_rate,
                "group_fractions": {f"G{g}": float((groups == g).mean()) for g in (1, 2, 3, 4)},
                **detection_metrics(detection.below_threshold, is_noisy, prefix="below_threshold"),
            })
            arrays.update({"groups": groups.astype(np.int64), "train_groups": self.train_groups.cpu().numpy()})
        else:
            last = max(e for e in range(self.epoch) if "eval_agreement" in self.load_epoch(e))
            scores = self.load_epoch(last)["eval_agreement"].astype(np.float64)
            label_issues = np.zeros(n, dtype=bool)
            metrics.update({"threshold": None, "estimated_noise_rate": None,
                            "note": "no tipping point was found: phase 2 never started and nothing is flagged"})
        metrics.update(detector_summary(label_issues, is_noisy))
        arrays.update({"label_issues": label_issues, "label_quality": scores.astype(np.float32)})
        return metrics, arrays


class CETrainer(Trainer):
    kind = "ce"
    network_names = ("model",)

    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward["model"](images).float()

    per_sample_keys = ("train_p_label", "train_predicts_label")
    sum_keys = ("loss",)

    def train_step(self, pos: torch.Tensor, *, step: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One cross-entropy batch on the given labels. Per sample: the probability of the given label and
        whether it is the prediction; sum: the loss."""
        x = self.batch_inputs(self.train_rows[pos], augment=self.config.augment)
        y = self.train_labels[pos]
        with self.step_networks(step) as nets:
            with self.autocast():
                logits = nets["model"](x)
            logits = logits.float()
            loss = F.cross_entropy(logits, y)
        self.watch(model=logits, loss=loss)
        if step:
            self.optimizer_step(loss)
        with torch.no_grad():
            rows = torch.arange(len(y), device=self.device)
            values = {"train_p_label": logits.softmax(1)[rows, y],
                      "train_predicts_label": (logits.argmax(1) == y).float()}
            return values, (loss.detach() * len(y)).reshape(1)

    def final_outputs(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        is_noisy = self.prep.data.is_noisy
        rows = torch.arange(len(is_noisy), device=self.device)
        probs = self.predict_rows(rows, augment=False).softmax(1)
        predicted = probs.argmax(1).cpu().numpy()
        quality = probs[rows, self.prep.labels].cpu().numpy()
        label_issues = predicted != self.prep.data.train_labels
        return detector_summary(label_issues, is_noisy), {"label_issues": label_issues,
                                                          "label_quality": quality.astype(np.float32),
                                                          "predicted_labels": predicted.astype(np.int64)}


def train_bkd(data: NoisyCIFAR, config: BKDConfig, run_dir: str | Path, *, progress: bool = True) -> RunResult:
    """Train BKD (teacher + blind student) on ``data`` with ``config``; write and return the results.

    Rerunning with the same ``run_dir`` resumes from its checkpoint (or returns the finished run).
    """
    return BKDTrainer(data, config, run_dir, progress).run()


def train_ce(data: NoisyCIFAR, config: BKDConfig, run_dir: str | Path, *, progress: bool = True) -> RunResult:
    """Train the plain cross-entropy baseline (one network, same pipeline and budget as ``train_bkd``).

    Its detector flags samples whose final prediction differs from the given label.
    """
    return CETrainer(data, config, run_dir, progress).run()
