"""What importing ``bkd_core`` does to the process: it sets a default for OpenMP's idle threads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = "import bkd_core, os; print(os.environ.get('OMP_WAIT_POLICY'))"


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_import_sets_omp_wait_policy_unless_the_user_did(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_the_public_verbs_are_exported_and_import_bkd_core_stays_light():
    script = ("import sys, bkd_core; light = 'torch' not in sys.modules; "
              "from bkd_core import find_label_issues, knn_label_issues, load_cifar_n, ensure_data, resolve, "
              "train_bkd, train_ce, BKDError; "
              "from bkd_core.label_issues import find_label_issues as f; "
              "print(light, find_label_issues is f, sorted(set(bkd_core.__all__) - set(dir(bkd_core))))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "[]"]
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run([sys.executable, "-c", "import bkd_core; bkd_core.no_such_verb"], capture_output=True,
                       check=True)
