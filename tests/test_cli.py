"""Tests of bkd_core.cli: --set parsing, config building, errors, help, ``python -m bkd_core``."""

from __future__ import annotations

import argparse
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import bkd_core.cli as cli
from bkd_core.cli import build_config, main, parse_overrides
from bkd_core.config import FEATURES, PAPER
from bkd_core.data import DataError

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- --set parsing


def test_parse_overrides_literals_and_bare_strings():
    out = parse_overrides([
        "epochs=5",
        "lr=0.01",
        "model_widths=(16,32,64)",
        "noisy_groups=3,4",
        "alphas=[0.1, 0.2, 0.3, 0.4]",
        "lr_step=None",
        "augment=False",
        "otsu_criterion=classic",  # bare string
        "device=cuda:1",  # not a Python literal either
        "profile='quoted=1'",  # only the first '=' separates
    ])
    assert out == {
        "epochs": 5,
        "lr": 0.01,
        "model_widths": (16, 32, 64),
        "noisy_groups": (3, 4),
        "alphas": [0.1, 0.2, 0.3, 0.4],
        "lr_step": None,
        "augment": False,
        "otsu_criterion": "classic",
        "device": "cuda:1",
        "profile": "quoted=1",
    }
    assert type(out["epochs"]) is int and type(out["lr"]) is float
    assert parse_overrides([]) == {}
    assert parse_overrides(["seed=1", "seed=2"]) == {"seed": 2}  # the last one wins


@pytest.mark.parametrize("pair", ["learning_rate=0.1", "epochs", "=5", "Epochs=5"])
def test_parse_overrides_unknown_field_exits_with_message(pair):
    with pytest.raises(SystemExit) as exc:
        parse_overrides(["epochs=3", pair])
    message = str(exc.value.code)
    assert repr(pair) in message
    assert "FIELD=VALUE" in message and "'epochs'" in message and "'otsu_criterion'" in message


@pytest.mark.parametrize("raw, expected", [("false", False), ("true", True), ("none", None)])
def test_parse_overrides_lowercase_bools_and_none(raw, expected):
    assert parse_overrides([f"augment={raw}"])["augment"] is expected


# ----------------------------------------------------------------------------- build_config


def _namespace(**kw) -> argparse.Namespace:
    base = dict(profile="features", seed=None, epochs=None, train_size=None, device=None, set=[])
    base.update(kw)
    return argparse.Namespace(**base)


def test_build_config_applies_profile_flags_and_set():
    c = build_config(_namespace())
    assert c == FEATURES
    c = build_config(_namespace(profile="paper", seed=4, epochs=3, train_size=500, device="cpu",
                                set=["lr=0.5", "otsu_criterion=classic", "epochs=9"]))
    assert (c.profile, c.model) == ("paper", PAPER.model)
    assert (c.seed, c.train_size, c.device, c.lr, c.otsu_criterion) == (4, 500, "cpu", 0.5, "classic")
    assert c.epochs == 3  # the explicit --epochs flag wins over --set epochs=9
    # seed 0 is a value, not "unset"
    assert build_config(_namespace(seed=0, set=["seed=5"])).seed == 0


@pytest.mark.parametrize("pairs, fragment", [(["epochs=0"], "epochs"), (["noisy_groups=(7,)"], "noisy_groups"),
                                             (["model=vgg"], "model")])
def test_build_config_invalid_value_exits_with_message(pairs, fragment):
    with pytest.raises(SystemExit) as exc:
        build_config(_namespace(set=pairs))
    message = str(exc.value.code)
    assert message.startswith("error:") and fragment in message


# ----------------------------------------------------------------------------- main


@pytest.fixture
def no_data_env(monkeypatch, tmp_path):
    monkeypatch.delenv("BKD_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path


@pytest.mark.parametrize("command", ["train", "train-ce"])
def test_main_missing_data_exits_2_and_says_where_it_looked(no_data_env, capsys, command):
    data_dir = no_data_env / "empty-data"
    out_dir = no_data_env / "run"
    code = main([command, "--dataset", "cifar10", "--split", "worst", "--data-dir", str(data_dir),
                 "--out", str(out_dir), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:")
    assert str(data_dir) in err
    assert "CIFAR-10_human.pt" in err and "cifar10.npz" in err
    assert "download" in err and "BKD_DATA_DIR" in err  # how to get the data
    assert not out_dir.exists()  # nothing written for a run that never started


def test_main_without_data_dir_uses_bkd_data_dir_then_cache(no_data_env, capsys, monkeypatch):
    args = ["train", "--out", str(no_data_env / "run"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(no_data_env / "xdg-cache" / "bkd_core" / "data") in err
    monkeypatch.setenv("BKD_DATA_DIR", str(no_data_env / "from-env"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(no_data_env / "from-env") in err and "BKD_DATA_DIR" in err


def test_main_unknown_split_exits_2_listing_splits(no_data_env, capsys):
    code = main(["train", "--split", "worstest", "--data-dir", str(no_data_env), "--out", str(no_data_env / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert "worstest" in err and "aggre" in err and "worst" in err


def test_main_bad_set_exits_2_with_message(no_data_env, capsys):
    assert main(["train", "--out", str(no_data_env / "r"), "--set", "bogus=1"]) == 2  # like every input error
    err = capsys.readouterr().err
    assert err.startswith("error: --set expects FIELD=VALUE") and "'bogus=1'" in err


@pytest.mark.parametrize("argv", [["train"], ["train", "--out", "x", "--dataset", "mnist"],
                                  ["train", "--out", "x", "--profile", "gpu"],
                                  ["train", "--out", "x", "--profile", "cpu"], ["train", "--out", "x", "--seed", "a"],
                                  [], ["fit"]])
def test_main_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_main_data_command(monkeypatch, capsys, tmp_path):
    calls = []

    def fake_ensure_data(root, *, images=("cifar10",), labels=("cifar100",)):
        calls.append((root, tuple(images), tuple(labels)))
        return tmp_path

    monkeypatch.setattr(cli, "ensure_data", fake_ensure_data)
    assert main(["data", "--dataset", "cifar100", "--data-dir", str(tmp_path)]) == 0
    assert main(["data"]) == 0
    assert calls == [(str(tmp_path), ("cifar100",), ()), (None, ("cifar10",), ("cifar100",))]
    assert str(tmp_path) in capsys.readouterr().out

    def failing_ensure_data(root, **kwargs):
        raise DataError(f"could not download into {root}")

    monkeypatch.setattr(cli, "ensure_data", failing_ensure_data)
    assert main(["data", "--data-dir", str(tmp_path)]) == 2
    assert f"could not download into {tmp_path}" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one data command
        main(["download", "--dataset", "cifar10"])


def test_help_exits_0_and_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "train-ce", "data"):
        assert command in out


@pytest.mark.parametrize("command", ["train", "train-ce"])
def test_train_help_mentions_profiles_splits_and_options(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--profile" in out and "{cnn,features,paper}" in out and "official settings" in out and "airbench" in out
    # the default profile and what each one costs
    assert "features (default)" in out and "minutes on a CPU" in out and "CPU hours, GPU minutes" in out
    assert "for a GPU" in out
    for split in ("aggre", "rand1", "worst", "noisy100"):
        assert split in out
    for option in ("--set", "--data-dir", "--download", "--out", "--seed", "--epochs", "--device"):
        assert option in out


def _env_without_data() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BKD_DATA_DIR"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_python_m_bkd_core_help_subprocess():
    proc = subprocess.run([sys.executable, "-m", "bkd_core", "--help"], capture_output=True, text=True,
                          env=_env_without_data(), cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: python -m bkd_core" in proc.stdout and "train-ce" in proc.stdout


def test_module_entry_point_passes_exit_code(no_data_env, monkeypatch, capsys):
    """``python -m bkd_core`` (bkd_core/__main__.py) exits with main()'s return code (in-process)."""
    monkeypatch.setattr(sys, "argv", ["bkd_core", "train", "--data-dir", str(no_data_env / "none"),
                                      "--out", str(no_data_env / "run"), "--no-progress"])
    monkeypatch.delitem(sys.modules, "bkd_core.__main__", raising=False)
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("bkd_core", run_name="__main__", alter_sys=False)
    assert exc.value.code == 2
    assert str(no_data_env / "none") in capsys.readouterr().err
