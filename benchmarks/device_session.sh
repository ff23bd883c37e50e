#!/usr/bin/env bash
# One GPU session as two commands: bash benchmarks/device_session.sh 1, then bash benchmarks/device_session.sh 2
# (benchmarks/DEVICE.md: staging the data, the two calls, unpacking what comes back). Each call ends by its own
# deadline and writes its files under $OUT (a new temporary folder when OUT is unset) after every step:
# session<N>.log, session<N>.json, and gpu_check.json (call 1) or paper-<split>.tar.gz (call 2).
# BKD_DEVICE_DRY_RUN=1 runs the same steps on a CPU at tiny sizes. Python: $PYTHON, else python3.
set -uo pipefail
call="${1:-}"
if [[ "$call" != 1 && "$call" != 2 ]]; then
    echo "usage: bash benchmarks/device_session.sh 1|2 (the first or the second device call)" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cd "$root"
if [[ -z "${OUT:-}" ]]; then
    OUT="$(mktemp -d -t bkd-device-out.XXXXXX)"
    echo "OUT is unset: writing to $OUT"
fi
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
"${PYTHON:-python3}" "$here/device_session.py" "call$call" 2>&1 | tee -a "$OUT/session$call.log"
status=${PIPESTATUS[0]}
echo "device session call $call: exit $status, files in $OUT:"
ls -l "$OUT"
exit "$status"
