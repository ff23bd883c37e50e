"""Tests of bkd_core.config: the official defaults, validation, round trips, fingerprints, profiles."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from bkd_core import config as config_module
from bkd_core.config import CNN, FEATURES, PAPER, PROFILES, BKDConfig, get_profile, parse_assignments, resolve


#: The settings of the retired ``cpu`` profile (a small CNN on 5,000 images): runs recorded with it stay readable.
RETIRED_CPU = BKDConfig(profile="cpu", model="small_cnn", model_widths=(16, 32, 64), epochs=24, batch_size=32,
                        train_size=5000, test_size=1000, augment=False, lr_step=None, tipping_fallback=16,
                        detach_robust_target=True, val_every=1, test_every=1, eval_batch_size=128)


def test_defaults_are_the_official_settings():
    c = BKDConfig()
    # the official code's settings (blind_knowledge_dist_training.py)
    assert c.model == "preresnet18"
    assert (c.lr, c.momentum, c.weight_decay) == (0.02, 0.9, 5e-4)
    assert (c.lr_step, c.lr_gamma) == (150, 0.1)
    assert (c.epochs, c.batch_size) == (300, 128)
    assert c.val_ratio == 0.1
    assert c.alphas == (0.30, 0.45, 0.55, 0.70)
    assert c.tipping_window == 2
    assert c.otsu_bins == 1000 and c.otsu_criterion == "bkd"
    assert c.noisy_groups == (4,)
    assert c.train_size is None and c.test_size is None and c.augment is True
    # the official code's quirks are on by default (the book's chapter 08)
    assert c.detach_teacher is False and c.detach_robust_target is False
    assert c.loss_reduction == "official" and c.score_views == "augmented"
    assert c.tipping_fallback is None


def test_paper_profile_is_the_defaults():
    assert PAPER.profile == "paper"
    # but for its evaluation batch, which divides the training, validation and test set sizes (one shape to compile)
    assert PAPER.replace(profile="custom", eval_batch_size=BKDConfig().eval_batch_size) == BKDConfig()
    assert all(size % PAPER.eval_batch_size == 0 for size in (50_000, 5_000, 10_000))
    assert PROFILES == {"paper": PAPER, "cnn": CNN, "features": FEATURES}


def test_sequences_are_normalised_to_tuples():
    c = BKDConfig(model_widths=[8, 16, 32], alphas=[0, 1, 0.5, 0.5], noisy_groups=[3, 4])
    assert c.model_widths == (8, 16, 32) and type(c.model_widths) is tuple
    assert c.alphas == (0.0, 1.0, 0.5, 0.5) and all(type(a) is float for a in c.alphas)
    assert c.noisy_groups == (3, 4) and type(c.noisy_groups) is tuple


INVALID = [
    ("epochs", 0),
    ("epochs", -3),
    ("batch_size", 0),
    ("lr", 0.0),
    ("lr", -0.1),
    ("val_ratio", 1.0),
    ("val_ratio", -0.1),
    ("test_size", 0),
    ("train_size", 1),
    ("train_size", 0),
    ("alphas", (0.3, 0.45, 0.55)),
    ("alphas", (0.3, 0.45, 0.55, 0.7, 0.9)),
    ("alphas", (0.3, 0.45, 0.55, 1.7)),
    ("alphas", (-0.1, 0.45, 0.55, 0.7)),
    ("noisy_groups", ()),
    ("noisy_groups", (5,)),
    ("noisy_groups", (0, 4)),
    ("tipping_window", 0),
    ("model", "resnet50"),
    ("otsu_criterion", "otsu"),
    ("loss_reduction", "sum"),
    ("score_views", "test"),
    ("val_normalization", "cifar100"),
    ("val_every", 0),
    ("test_every", 0),
]


@pytest.mark.parametrize("field, value", INVALID, ids=[f"{f}={v!r}" for f, v in INVALID])
def test_invalid_values_raise_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        BKDConfig(**{field: value})
    # also through replace() and get_profile(), which the CLI uses
    with pytest.raises(ValueError, match=field):
        FEATURES.replace(**{field: value})
    with pytest.raises(ValueError, match=field):
        get_profile("paper", **{field: value})


@pytest.mark.parametrize("field, value", [("val_ratio", 0.0), ("train_size", 2), ("test_size", 1), ("epochs", 1),
                                          ("noisy_groups", (1, 2, 3, 4)), ("alphas", (0, 0, 1, 1))])
def test_boundary_values_are_accepted(field, value):
    assert getattr(BKDConfig(**{field: value}), field) == value


UNCHECKED = [
    pytest.param("eval_batch_size", 0, id="eval_batch_size=0"),  # ordered_batches(..., 0) fails mid-run
    pytest.param("otsu_bins", 2, id="otsu_bins=2"),  # the split loop needs bins 2..bins-3
    pytest.param("model_widths", (32, 64), id="model_widths-len2"),  # only SmallCNN notices, at train time
    pytest.param("lr_step", 0, id="lr_step=0"),  # train.py turns 0 into "constant lr" silently
    pytest.param("detach_teacher", "false", id="detach_teacher='false'"),  # truthy string = switched ON
]


@pytest.mark.parametrize("field, value", UNCHECKED)
def test_unchecked_invalid_values_raise_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        BKDConfig(model="small_cnn", **{field: value})


def test_scalar_noisy_groups_is_accepted_or_named():
    try:
        c = BKDConfig(noisy_groups=4)
    except ValueError as exc:
        assert "noisy_groups" in str(exc)
    else:
        assert c.noisy_groups == (4,)


@pytest.mark.parametrize("config", [
    BKDConfig(),
    FEATURES,
    PAPER,
    BKDConfig(model="small_cnn", model_widths=(4, 8, 16), tipping_fallback=7, noisy_groups=(3, 4),
              lr_step=None, train_size=100, test_size=50, seed=3, bf16=False),
], ids=["default", "features", "paper", "custom"])
def test_to_dict_from_dict_round_trip(config):
    d = config.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(BKDConfig)}
    assert BKDConfig.from_dict(d) == config
    # through JSON (tuples become lists) as config.json is read back on resume
    again = BKDConfig.from_dict(json.loads(json.dumps(d)))
    assert again == config
    assert type(again.alphas) is tuple and type(again.model_widths) is tuple and type(again.noisy_groups) is tuple
    assert again.fingerprint() == config.fingerprint()


def test_to_dict_is_a_copy():
    c = BKDConfig(alphas=(0.1, 0.2, 0.3, 0.4))
    d = c.to_dict()
    d["epochs"] = 1
    d["alphas"] = (0.5,) * 4
    assert c.alphas == (0.1, 0.2, 0.3, 0.4) and c.epochs == 300


def test_from_dict_rejects_unknown_fields_listing_valid_ones():
    d = BKDConfig().to_dict()
    d["learning_rate"] = 0.1
    d["zzz"] = 1
    with pytest.raises(ValueError) as exc:
        BKDConfig.from_dict(d)
    message = str(exc.value)
    assert "learning_rate" in message and "zzz" in message
    for name in ("lr", "epochs", "noisy_groups", "otsu_criterion"):
        assert repr(name) in message


def test_from_dict_partial_uses_defaults():
    c = BKDConfig.from_dict({"epochs": 5, "seed": 2})
    assert c == BKDConfig(epochs=5, seed=2)


def test_fingerprint_ignores_device_and_speed_switches():
    base = BKDConfig()
    fp = base.fingerprint()
    assert len(fp) == 12 and all(ch in "0123456789abcdef" for ch in fp)
    assert BKDConfig().fingerprint() == fp  # deterministic
    for change in ({"device": "cpu"}, {"device": "cuda:1"}, {"channels_last": False}, {"bf16": True},
                   {"bf16": False}, {"compile": True}, {"precision": "fp16"}, {"precision": "bf16"},
                   {"precision": "fp32"}, {"deterministic": True}, {"checkpoint_every": 5},
                   {"checkpoint_seconds": 600.0}, {"eval_batch_size": 64}, {"profile": "paper"}):
        assert base.replace(**change).fingerprint() == fp, change


@pytest.mark.parametrize("change", [
    {"seed": 1}, {"epochs": 299}, {"lr": 0.01}, {"batch_size": 64}, {"train_size": 1000}, {"test_size": 100},
    {"val_ratio": 0.0}, {"alphas": (0.3, 0.45, 0.55, 0.71)}, {"noisy_groups": (3, 4)}, {"otsu_criterion": "classic"},
    {"detach_teacher": True}, {"detach_robust_target": True}, {"loss_reduction": "mean"}, {"score_views": "clean"},
    {"augment": False}, {"model": "small_cnn"}, {"lr_step": None}, {"tipping_fallback": 10}, {"otsu_bins": 500},
    {"momentum": 0.0}, {"weight_decay": 0.0}, {"drop_last": True}, {"student_sees_label": True},
], ids=lambda c: ",".join(c))
def test_fingerprint_changes_with_result_changing_settings(change):
    assert BKDConfig().replace(**change).fingerprint() != BKDConfig().fingerprint()


def test_fingerprints_of_recorded_profiles_are_unchanged():
    # drop_last came later (LATER_FIELDS): at its default it leaves the recorded fingerprints as they were
    assert BKDConfig().fingerprint() == PAPER.fingerprint() == "d5a23ef7e167"
    # the recorded batches' seed-0 runs: reproductions/features and reproductions/cnn
    assert FEATURES.fingerprint() == "0e023d845ae3" and CNN.fingerprint() == "de6c0a286d13"
    assert RETIRED_CPU.fingerprint() == "68ee947f4026"  # a run of the retired cpu profile keeps its fingerprint


def test_precision_resolution():
    assert BKDConfig(device="cpu").resolved_precision() == "fp32"  # CPU runs compute as before
    assert BKDConfig(precision="auto").resolved_precision("cpu") == "fp32"
    for p in ("fp32", "bf16", "fp16"):
        assert BKDConfig(precision=p).resolved_precision("cpu") == p
    assert BKDConfig(bf16=True).resolved_precision("cpu") == "bf16"  # the older switch still decides under auto
    assert BKDConfig(bf16=False).resolved_precision("cuda") == "fp32"
    assert BKDConfig(precision="bf16", bf16=True).resolved_precision("cpu") == "bf16"
    with pytest.raises(ValueError, match="precision='fp16' contradicts bf16=True"):
        BKDConfig(precision="fp16", bf16=True)
    with pytest.raises(ValueError, match="precision must be"):
        BKDConfig(precision="half")


def test_native_precision_is_bf16_on_cpus_with_bf16_units_only(monkeypatch):
    for native, on_cpu in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(config_module, "cpu_has_native_bf16", lambda native=native: native)
        assert BKDConfig(precision="native").resolved_precision("cpu") == on_cpu
        assert BKDConfig(precision="auto").resolved_precision("cpu") == "fp32"  # recorded runs keep their fp32
        assert CNN.resolved_precision("cpu") == on_cpu and FEATURES.resolved_precision("cpu") == "fp32"
        assert BKDConfig(precision="native", bf16=False).resolved_precision("cpu") == "fp32"


def test_cpu_has_native_bf16_reads_the_flags(tmp_path, monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    info = tmp_path / "cpuinfo"
    for flags, native in (("fpu avx2 avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True),
                          ("fpu avx2 avx512f avx512bw", False), ("fpu avx512_bf16x", False)):
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
        assert config_module.cpu_has_native_bf16(info) is native, flags
    assert config_module.cpu_has_native_bf16(tmp_path / "none") is False  # no /proc (macOS, Windows): fp32
    info.write_text("flags\t\t: avx512_bf16\n")
    for cap, native in (("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True),
                        ("AVX512_CORE_AMX", True), ("DEFAULT", True)):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)  # oneDNN capped below bf16 computes it slowly
        assert config_module.cpu_has_native_bf16(info) is native, cap


@pytest.mark.parametrize("bad", [{"checkpoint_every": 0}, {"checkpoint_seconds": 0.0}, {"checkpoint_seconds": -1}])
def test_checkpoint_frequency_is_checked(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        BKDConfig(**bad)


def test_get_profile_and_overrides():
    c = get_profile("features", seed=3, epochs=2, device="cpu")
    assert (c.seed, c.epochs, c.device, c.profile) == (3, 2, "cpu", "features")
    assert c.model == FEATURES.model and c.features == FEATURES.features
    assert FEATURES.seed == 0 and FEATURES.epochs != 2  # the profile itself is not mutated
    assert get_profile("paper") == PAPER
    assert get_profile("features") == FEATURES and get_profile("features") is not FEATURES


def test_get_profile_unknown_name_lists_profiles():
    with pytest.raises(ValueError) as exc:
        get_profile("gpu")
    message = str(exc.value)
    assert "'gpu'" in message and all(name in message for name in ("paper", "cnn", "features"))


def test_the_retired_cpu_profile_says_what_replaced_it():
    with pytest.raises(ValueError) as exc:
        get_profile("cpu")
    message = str(exc.value)
    assert "'cpu'" in message and "retired" in message and "features" in message and "cnn" in message


def test_get_profile_unknown_override_field_raises():
    with pytest.raises((TypeError, ValueError), match="learning_rate"):
        get_profile("features", learning_rate=0.1)


def test_resolved_device():
    assert BKDConfig(device="cpu").resolved_device() == torch.device("cpu")
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert BKDConfig(device="auto").resolved_device() == expected


def test_only_the_fields_a_method_uses_enter_its_fingerprint():
    from bkd_core.config import BKD_ONLY_FIELDS

    base = FEATURES
    for change in ({"otsu_criterion": "classic"}, {"alphas": (0.1, 0.2, 0.3, 0.4)}, {"tipping_fallback": 3},
                   {"detach_robust_target": True}, {"noisy_groups": (3, 4)}, {"student_sees_label": True}):
        assert set(change) <= BKD_ONLY_FIELDS
        assert base.replace(**change).fingerprint() != base.fingerprint(), change  # BKD: another run
        for method in ("ce", "cleanlab", "knn"):  # the baselines: the same run, not retrained
            assert base.replace(**change).fingerprint(method) == base.fingerprint(method), (method, change)
    assert base.replace(lr=0.01).fingerprint("ce") != base.fingerprint("ce")
    assert base.fingerprint("ce") != base.fingerprint()


def test_a_retired_field_at_its_old_value_loads_and_keeps_the_fingerprint():
    from bkd_core.config import stored_fingerprint

    stored = {**RETIRED_CPU.to_dict(), "extra": {}}  # a config.json written while BKDConfig had ``extra``
    assert BKDConfig.from_dict(stored) == RETIRED_CPU
    assert stored_fingerprint("bkd")(stored) == RETIRED_CPU.fingerprint() == "68ee947f4026"
    with pytest.raises(ValueError, match=r"unknown BKDConfig field\(s\) \['extra'\]"):
        BKDConfig.from_dict({**stored, "extra": {"note": 1}})


def test_cnn_profile_is_the_official_protocol_with_another_network():
    assert CNN.model == "whitened_cnn" and len(CNN.model_widths) == 3
    official = BKDConfig()
    same = ("batch_size", "lr", "momentum", "weight_decay", "val_ratio", "augment", "alphas", "tipping_window",
            "tipping_fallback", "detach_teacher", "detach_robust_target", "loss_reduction", "score_views",
            "train_size", "test_size", "noisy_groups", "otsu_criterion", "otsu_bins")
    assert {f: getattr(CNN, f) for f in same} == {f: getattr(official, f) for f in same}
    assert (CNN.epochs, CNN.lr_step, CNN.lr_gamma) == (40, 30, 0.1)  # the official step, at 3/4 of the run


def test_parse_assignments_types_values_by_the_fields():
    parsed = parse_assignments(["epochs=5", "model_widths=64,128,128", "device=cuda:1", "tipping_fallback=None",
                                "model=whitened_cnn", "augment=FALSE", "lr=2e-2", "alphas=[0.3, 0.4, 0.5, 0.6]"])
    assert parsed == {"epochs": 5, "model_widths": (64, 128, 128), "device": "cuda:1", "tipping_fallback": None,
                      "model": "whitened_cnn", "augment": False, "lr": 0.02, "alphas": [0.3, 0.4, 0.5, 0.6]}
    assert resolve("cnn", parsed | {"device": "cpu"}).alphas == (0.3, 0.4, 0.5, 0.6)
    assert resolve("features", ["epochs=3"]) == FEATURES.replace(epochs=3)
    assert resolve("paper") == PAPER and get_profile("cnn", epochs=2) == resolve("cnn", {"epochs": 2})


@pytest.mark.parametrize("pair, words", [
    ("epochs=abc", "epochs must be an integer"),
    ("epochs", "FIELD=VALUE"),
    ("not_a_field=1", "FIELD=VALUE with FIELD one of"),
    ("model_widths=(1,", "model_widths must be a sequence of integers"),
])
def test_parse_assignments_names_what_is_wrong(pair, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        parse_assignments([pair])


def test_resolve_rejects_unknown_profiles_and_bad_values():
    with pytest.raises(ValueError, match="unknown profile 'gpu'; choose one of paper, cnn"):
        resolve("gpu")
    with pytest.raises(ValueError, match="epochs must be an integer"):
        resolve("cnn", ["epochs=2.5"])
