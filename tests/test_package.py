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
