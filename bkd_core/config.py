"""Hyperparameters of a BKD or cross-entropy run, and the named profiles ``paper``, ``cnn`` and ``features``."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import math
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping

import torch


@dataclass
class BKDConfig:
    """Every setting of a run. Defaults are the official code's (``blind_knowledge_dist_training.py``), except
    ``val_normalization="own"``: CIFAR-100 validation images get CIFAR-100 constants (quirk 7 fixed).

    Switches for the official code's quirks (numbered as in the book's chapter 08) that are cheap to switch:
    ``detach_teacher`` (quirk 1), ``detach_robust_target`` (2), ``loss_reduction`` (3),
    ``score_views`` (4), ``tipping_fallback`` (5), ``val_normalization`` (7),
    ``noisy_groups`` (10), ``otsu_criterion`` (11). ``student_sees_label`` is an ablation, not a quirk:
    True turns the blind student into a plain distilled one.
    """

    # model and optimisation
    model: Literal["preresnet18", "whitened_cnn", "small_cnn", "mlp"] = "preresnet18"
    # whitened_cnn and small_cnn: their 3 channel widths; mlp: its hidden widths
    model_widths: tuple[int, ...] = (32, 64, 128)
    # train on label-free feature vectors (bkd_core.features), with model "mlp"
    features: Literal["patches"] | None = None
    epochs: int = 300
    batch_size: int = 128
    # drop each epoch's last partial training batch (static shapes for compile); official: keep it
    drop_last: bool = False
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_step: int | None = 150  # StepLR step in epochs; None keeps the learning rate constant
    lr_gamma: float = 0.1
    # data
    train_size: int | None = None  # random subset of the 50,000 training images; None = all
    val_ratio: float = 0.1
    test_size: int | None = None  # evaluate on a fixed random subset of the test set; None = all 10,000
    augment: bool = True
    # method
    alphas: tuple[float, float, float, float] = (0.30, 0.45, 0.55, 0.70)
    tipping_window: int = 2
    tipping_fallback: int | None = None  # if set, an epoch used when no tipping point is found by epoch fallback+2
    otsu_bins: int = 1000
    otsu_criterion: Literal["bkd", "classic"] = "bkd"
    noisy_groups: tuple[int, ...] = (4,)
    # end the run once its detection is final (tipping point found, groups set), before phase 2
    stop_after_detection: bool = False
    detach_teacher: bool = False
    detach_robust_target: bool = False
    loss_reduction: Literal["official", "mean"] = "official"
    score_views: Literal["augmented", "clean"] = "augmented"
    val_normalization: Literal["own", "cifar10"] = "own"
    # an ablation, not BKD: the student also sees the teacher's logit of the given label (plain distillation)
    student_sees_label: bool = False
    # evaluation
    val_every: int = 10
    test_every: int = 10
    eval_batch_size: int = 512
    # execution
    seed: int = 0
    device: str = "auto"
    channels_last: bool = True  # faster on CUDA and on this CPU (about 1.3x for the small CNN)
    precision: Literal["auto", "native", "fp32", "bf16", "fp16"] = "auto"  # autocast dtype (resolved_precision)
    # older switch, kept so stored configs load: with precision="auto", True means bf16, False fp32
    bf16: bool | None = None
    compile: bool = False
    deterministic: bool = False  # CUDA: deterministic cuDNN and algorithms (exact resume), no cudnn.benchmark
    checkpoint_every: int = 1  # write checkpoint.pt every k epochs (and at the end)
    checkpoint_seconds: float | None = None  # ... and also whenever this many seconds passed since the last one
    # end a run before an epoch that would not finish within this many seconds of its start (rerun to go on)
    deadline_s: float | None = None
    # end the run after this many epochs, each computed as in the full run (a replay of a recorded run's first
    # epochs, ``check --replay-epochs``); a rerun without it goes on
    stop_after_epochs: int | None = None
    profile: str = "custom"

    def __post_init__(self) -> None:
        if isinstance(self.noisy_groups, int) and not isinstance(self.noisy_groups, bool):
            self.noisy_groups = (self.noisy_groups,)
        for f in dataclasses.fields(self):
            setattr(self, f.name, _checked(f.name, getattr(self, f.name), _HINTS[f.name]))
        checks = [
            (self.model not in ("small_cnn", "whitened_cnn") or len(self.model_widths) == 3,
             f"model_widths of {self.model} must be three ints, got {self.model_widths}"),
            (all(w >= 1 for w in self.model_widths), f"model_widths must be positive, got {self.model_widths}"),
            ((self.model == "mlp") == (self.features is not None),
             f"model 'mlp' trains on feature vectors and the CNNs on images: set features with model 'mlp' only "
             f"(got model={self.model!r}, features={self.features!r})"),
            (self.features is None or not self.augment,
             "augment must be False with features (they are computed once, unaugmented)"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}"),
            (self.otsu_bins >= 5, f"otsu_bins must be >= 5, got {self.otsu_bins}"),
            (self.lr_step is None or self.lr_step >= 1, f"lr_step must be None or >= 1, got {self.lr_step}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0.0 <= self.val_ratio < 1.0, f"val_ratio must be in [0, 1), got {self.val_ratio}"),
            (self.test_size is None or self.test_size >= 1, f"test_size must be >= 1 or None, got {self.test_size}"),
            (self.train_size is None or self.train_size >= 2,
             f"train_size must be >= 2 or None, got {self.train_size}"),
            (len(self.alphas) == 4 and all(0 <= a <= 1 for a in self.alphas),
             f"alphas must be four values in [0, 1], got {self.alphas}"),
            (set(self.noisy_groups) <= {1, 2, 3, 4} and self.noisy_groups,
             f"noisy_groups must be a non-empty subset of 1..4, got {self.noisy_groups}"),
            (self.tipping_window >= 1, f"tipping_window must be >= 1, got {self.tipping_window}"),
            (self.val_every >= 1 and self.test_every >= 1, "val_every and test_every must be >= 1"),
            (self.momentum >= 0 and self.weight_decay >= 0 and self.lr_gamma > 0,
             f"momentum and weight_decay must be >= 0 and lr_gamma > 0, "
             f"got {self.momentum}, {self.weight_decay}, {self.lr_gamma}"),
            (self.tipping_fallback is None or self.tipping_fallback >= 0,
             f"tipping_fallback must be None or >= 0, got {self.tipping_fallback}"),
            (self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
            (self.checkpoint_seconds is None or self.checkpoint_seconds > 0,
             f"checkpoint_seconds must be None or > 0, got {self.checkpoint_seconds}"),
            (self.deadline_s is None or self.deadline_s > 0, f"deadline_s must be None or > 0, got {self.deadline_s}"),
            (self.stop_after_epochs is None or self.stop_after_epochs >= 1,
             f"stop_after_epochs must be None or >= 1, got {self.stop_after_epochs}"),
            (self.bf16 is None or self.precision == "auto" or (self.precision == "bf16") == self.bf16,
             f"precision={self.precision!r} contradicts bf16={self.bf16}; set only precision (bf16=None)"),
            (_valid_device(self.device), f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"),
            (0 <= self.seed < 2**63, f"seed must lie in [0, 2**63) (it seeds 64-bit generators), got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid BKDConfig: {message}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BKDConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        data = without_retired(data)
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown BKDConfig field(s) {unknown}; valid fields: {sorted(names)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "BKDConfig":
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown BKDConfig field(s) {unknown}; valid fields: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    def fingerprint(self, method: str = "bkd") -> str:
        """Short hash of every setting that changes what ``method`` computes: not device or speed switches
        (:data:`NOT_FINGERPRINTED`), and for a method other than ``"bkd"`` not :data:`BKD_ONLY_FIELDS` either
        (so ``--set otsu_criterion=classic`` does not retrain the cross-entropy baseline).

        A field added after runs were recorded (:data:`LATER_FIELDS`) enters the hash only when it differs
        from its default, and a removed one (:data:`RETIRED_FIELDS`) with the one value it ever had, so those
        runs keep their fingerprints.
        """
        data = self.to_dict()
        for key in (*NOT_FINGERPRINTED, *(BKD_ONLY_FIELDS if method != "bkd" else ())):
            data.pop(key, None)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for key in LATER_FIELDS:
            if key in data and data[key] == defaults[key]:
                data.pop(key)
        data.update(RETIRED_FIELDS)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    def resolved_precision(self, device: torch.device | str | None = None) -> Literal["fp32", "bf16", "fp16"]:
        """The autocast precision on ``device`` (default: :meth:`resolved_device`).

        ``precision="auto"``: bf16 on a CUDA device with bf16 units (Ampere and later), fp16 with a
        gradient scaler on a CUDA device without them (Turing, e.g. Colab's T4), fp32 on the CPU. The
        older ``bf16`` switch still decides under ``"auto"`` when it is set (True: bf16, False: fp32).
        ``precision="native"`` (the ``cnn`` profile's): as ``"auto"`` on CUDA; on the CPU, bf16 where the
        CPU computes it natively (:func:`cpu_has_native_bf16`: AVX512-BF16 or AMX), fp32 elsewhere.
        Whatever the precision, the classifier head computes its logits in float32
        (:func:`bkd_core.models.fp32_head`) and the losses are computed from them in float32.
        """
        if self.precision not in ("auto", "native"):
            return self.precision
        if self.bf16 is not None:
            return "bf16" if self.bf16 else "fp32"
        device = torch.device(device) if device is not None else self.resolved_device()
        if device.type != "cuda":
            return "bf16" if self.precision == "native" and cpu_has_native_bf16() else "fp32"
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"

    def resolved_device(self) -> torch.device:
        """``device`` with ``"auto"`` resolved: CUDA when present, else the CPU.

        Raises
        ------
        ValueError
            a CUDA device was asked for that this machine does not have.
        """
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise ValueError(f"device={self.device!r} was asked for, "
                                 "but torch finds no CUDA device on this machine "
                                 "(torch.cuda.is_available() is False); use device 'auto' or 'cpu'")
            if device.index is not None and device.index >= count:
                raise ValueError(f"device={self.device!r} was asked for, but this machine has {count} CUDA device(s) "
                                 f"(cuda:0 to cuda:{count - 1})")
        return device


#: oneDNN instruction-set caps (``ONEDNN_MAX_CPU_ISA``) under which it still computes bf16 natively.
BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_AMX", "AVX10_1_512", "ALL", "DEFAULT")


def cpu_has_native_bf16(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 matrix products natively, so that bf16 autocast is faster than fp32.

    True when ``cpuinfo``'s flags hold ``avx512_bf16`` or ``amx_bf16`` and oneDNN is not capped below them
    (``ONEDNN_MAX_CPU_ISA``, if set, names one of :data:`BF16_ISAS` or a later one). False where ``cpuinfo``
    cannot be read (macOS, Windows): there ``precision="native"`` computes in fp32.
    """
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if cap and not cap.startswith(BF16_ISAS):
        return False
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if line.startswith("flags"):
                    return bool({"avx512_bf16", "amx_bf16"} & set(line.partition(":")[2].split()))
    except OSError:
        pass
    return False


def _valid_device(name: str) -> bool:
    if name == "auto":
        return True
    try:
        return torch.device(name).type in ("cpu", "cuda")
    except (RuntimeError, ValueError):
        return False


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "None"
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        kind = {int: "integers", float: "numbers"}.get(args[0], "values")
        return f"a sequence of {kind}" if args[-1] is Ellipsis else f"a sequence of {len(args)} {kind}"
    return {int: "an integer", float: "a finite number", bool: "True or False", str: "a string"}.get(hint, str(hint))


def _checked(name: str, value: Any, hint: Any) -> Any:
    """``value`` as field ``name`` of type ``hint`` wants it (ints as floats, sequences as tuples), or a
    ``ValueError`` that names the field, the value and the type: the one check of every field's type,
    derived from the annotations (``Literal`` choices included)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _checked(name, value, option)
            except ValueError:
                continue
    elif origin is Literal:
        if isinstance(value, str) and value in args:
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            element = args[0]
            converted = tuple(_checked(name, v, element) for v in value)
            if args[-1] is Ellipsis or len(converted) == len(args):
                return converted
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ValueError(f"invalid BKDConfig: {name} must be {_type_name(hint)}, got {value!r}")


_HINTS = typing.get_type_hints(BKDConfig)

#: Execution and speed switches: they do not change what a run computes, so they are not in its fingerprint.
#: (``deterministic`` and the checkpoint frequency: a run resumed from any checkpoint ends as an uninterrupted one.)
#: (``deadline_s`` and ``stop_after_epochs`` only end a run between epochs, which its metrics record as
#: ``stopped_by``; a rerun without them goes on.)
NOT_FINGERPRINTED = ("device", "channels_last", "bf16", "precision", "compile", "deterministic", "checkpoint_every",
                     "checkpoint_seconds", "deadline_s", "stop_after_epochs", "eval_batch_size", "profile")
#: Fields added after the committed runs were recorded: hashed only when set to a non-default value.
LATER_FIELDS: tuple[str, ...] = ("features", "drop_last", "stop_after_detection", "student_sees_label")

#: Fields removed after runs were recorded, with the value every recorded run has: a stored configuration
#: may still hold them (:meth:`BKDConfig.from_dict` drops them), and fingerprints hash them as they were.
#: ``extra`` was a free-form dict that no code read.
RETIRED_FIELDS: dict[str, Any] = {"extra": {}}


def without_retired(config: dict[str, Any]) -> dict[str, Any]:
    """A stored configuration dict without the :data:`RETIRED_FIELDS` it holds at the one value they had, and
    without the :data:`LATER_FIELDS` it holds at their defaults (a configuration recorded before they existed
    and one recorded after compare equal)."""
    defaults = {f.name: f.default for f in dataclasses.fields(BKDConfig)}
    return {k: v for k, v in config.items() if not (k in RETIRED_FIELDS and v == RETIRED_FIELDS[k])
            and not (k in LATER_FIELDS and v == defaults[k])}

#: Fields only BKD uses: the other methods ignore them, and they stay out of those methods' fingerprints.
BKD_ONLY_FIELDS = frozenset({"alphas", "tipping_window", "tipping_fallback", "otsu_bins", "otsu_criterion",
                             "noisy_groups", "detach_teacher", "detach_robust_target", "loss_reduction",
                             "score_views", "stop_after_detection", "student_sees_label"})

def stored_fingerprint(method: str) -> Callable[[dict[str, Any]], str]:
    """The fingerprint ``method`` gives a configuration stored as a dict (a run's ``config.json``): the
    check :meth:`bkd_core.rundir.RunDir.writing` makes that the file was not edited."""
    return lambda config: BKDConfig.from_dict(config).fingerprint(method)


#: The official settings (``blind_knowledge_dist_training.py``): two PreResNet18, 300 epochs, full data. For a GPU.
#: Its evaluation batch of 1,000 divides the 50,000 training images, the 5,000 validation and the 10,000
#: test images, so a compiled network sees one evaluation shape (``drop_last=True`` does the same for
#: training, at the price of a departure from the official code: appendix, chapter 8).
PAPER = BKDConfig(profile="paper", eval_batch_size=1000)

#: Full scale on a CPU: all 50,000 training images (10% noisy validation, as the official code) as label-free
#: feature vectors (``bkd_core.features``, computed once and cached), two MLPs with one hidden layer of 1,024
#: units, the official optimiser and batch size, 30 epochs at a constant learning rate (long enough for the
#: cross-entropy baseline to memorize), every training image scored each phase-1 epoch. The tipping point comes
#: from the official peak rule alone (no fallback), and the robust target is the official, undetached one: one
#: wide hidden layer keeps the pair improving in phase 2, where two layers of 512 let the student copy the
#: teacher's memorized labels and a detached target made the pair collapse (``docs/profiles.md``).
FEATURES = BKDConfig(
    profile="features",
    model="mlp",
    model_widths=(1024,),
    features="patches",
    epochs=30,
    batch_size=128,
    augment=False,
    lr_step=None,
    val_every=1,
    test_every=1,
    eval_batch_size=2000,
)

#: All 50,000 images' pixels on a CPU (CPU hours, GPU minutes): the official protocol (10% noisy validation, flip +
#: crop, SGD lr 0.02 / momentum 0.9 / weight decay 5e-4, batch 128, the official peak rule alone, the official
#: undetached robust target, every training image scored each phase-1 epoch) with an airbench-class network
#: (:class:`bkd_core.models.WhitenedCNN`, 32/64/128 channels) instead of PreResNet18, and a shorter budget:
#: 40 epochs, the learning rate a tenth from epoch 31 on (the official StepLR at three quarters of the run
#: instead of half of it). It computes in bf16 autocast on CPUs that have bf16 units (``precision="native"``;
#: fp32 on other CPUs, ``--set precision=fp32`` everywhere). ``docs/profiles.md`` has the measurements behind
#: each choice.
CNN = BKDConfig(
    profile="cnn",
    model="whitened_cnn",
    model_widths=(32, 64, 128),
    epochs=40,
    batch_size=128,
    lr_step=30,
    val_every=1,
    test_every=1,
    eval_batch_size=500,
    precision="native",
)

PROFILES: dict[str, BKDConfig] = {"paper": PAPER, "cnn": CNN, "features": FEATURES}

#: Profiles no longer offered: name -> what replaced it (a run recorded with one is still read, not retrained).
RETIRED_PROFILES: dict[str, str] = {
    "cpu": "the small CNN on a 5,000-image subset was retired: train on all 50,000 images with features (CPU "
           "minutes) or cnn (pixels: CPU hours, GPU minutes)",
}


def get_profile(name: str, **overrides: Any) -> BKDConfig:
    """A named profile (one of :data:`PROFILES`) with ``overrides`` applied."""
    return resolve(name, overrides)


def resolve(profile: str, overrides: Mapping[str, Any] | Iterable[str] | None = None) -> BKDConfig:
    """The one way from a profile and overrides to a configuration.

    Parameters
    ----------
    profile : str
        A name of :data:`PROFILES`.
    overrides : mapping or iterable of str, optional
        ``{field: value}`` (lists are accepted for tuples), or ``FIELD=VALUE`` assignments as the command
        line's ``--set`` takes them (:func:`parse_assignments`).

    Returns
    -------
    BKDConfig
        The profile with the overrides applied, every field checked.

    Raises
    ------
    ValueError
        An unknown profile or field, or a value of the wrong type (one sentence naming it).
    """
    if profile in RETIRED_PROFILES:
        raise ValueError(f"profile {profile!r}: {RETIRED_PROFILES[profile]}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if overrides is None:
        changes: dict[str, Any] = {}
    elif isinstance(overrides, Mapping):
        changes = dict(overrides)
    else:
        changes = parse_assignments(overrides)
    return PROFILES[profile].replace(**changes)


_WORDS = {"none": None, "null": None, "true": True, "false": False}


def parse_assignments(pairs: Iterable[str], fields: type = BKDConfig, *, option: str = "--set") -> dict[str, Any]:
    """``FIELD=VALUE`` assignments -> ``{field: value}``, each value typed by the field's annotation in the
    dataclass ``fields`` (the one parser of every ``--set``).

    ``none``/``null``, ``true``/``false`` (any case) are None and the booleans; a field that takes a string
    keeps the text as it is (``device=cuda:1``; quotes are taken off); other values are Python literals (``epochs=40``,
    ``model_widths=(64,128,128)`` or ``model_widths=64,128,128``).

    Raises
    ------
    ValueError
        An assignment without ``=``, an unknown field, or a value that is not a literal of the field's type.
    """
    hints = typing.get_type_hints(fields)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = str(pair).partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or key not in hints:
            raise ValueError(f"{option} expects FIELD=VALUE with FIELD one of {sorted(hints)}; got {pair!r}")
        hint = hints[key]
        if raw.lower() in _WORDS:
            out[key] = _WORDS[raw.lower()]
        elif _takes_text(hint):
            quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\""
            out[key] = ast.literal_eval(raw) if quoted else raw
        else:
            try:
                out[key] = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                raise ValueError(f"{option} {key}={raw}: {key} must be {_type_name(hint)}, got {raw!r}") from None
    return out


def _takes_text(hint: Any) -> bool:
    """Does a field of this annotation take text (a string or one of a ``Literal``'s strings)?"""
    if hint is str:
        return True
    if typing.get_origin(hint) is Literal:
        return all(isinstance(a, str) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_takes_text(a) for a in typing.get_args(hint))
    return False
