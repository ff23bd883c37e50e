#!/usr/bin/env bash
# One command for the first device: bash benchmarks/gpu_check.sh [--out report.json] [--budget 480] [--device cpu]
# Runs benchmarks/gpu_check.py on the first GPU (CUDA_VISIBLE_DEVICES defaults to 0), or on the CPU
# when there is none, and writes one JSON report (see the docstring of gpu_check.py and docs/gpu.md).
# Python: $PYTHON if set, else the repository's .venv, else python3.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x "$root/.venv/bin/python" ]]; then
    py="$root/.venv/bin/python"
else
    py="python3"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" "$here/gpu_check.py" "$@"
