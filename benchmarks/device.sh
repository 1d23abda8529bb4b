#!/usr/bin/env bash
# The command to give a lent GPU machine (see benchmarks/device.py's docstring):
#
#     bash benchmarks/device.sh [benchmarks.device's options]
#
# Nothing can be installed there (no network), so it runs this checkout from PYTHONPATH with
# the machine's python3 (JAX with CUDA), and .device/site after it: evosax and dotmap, which
# the image lacks, staged here beforehand by
#     .venv/bin/python -m benchmarks.device --stage-deps .device/site
# and carried (carry: [".device"]). Writes into $OUT, the folder that comes back from the
# machine (else benchmarks/results), with the whole log in device-log.txt there (else in /tmp).
set -o pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .device/site ]; then
    PYTHONPATH="$PYTHONPATH:$PWD/.device/site"
else
    echo "no .device/site: evosax will be skipped (stage it with --stage-deps and carry .device)"
fi
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
# JAX must see the GPU: a CPU fallback would spend the lease measuring the wrong machine
"$py" -c 'import sys, jax; d = jax.devices()[0]; print("jax", jax.__version__, d.platform, d.device_kind); sys.exit(d.platform == "cpu")' ||
    { echo "JAX sees no GPU with $py; nothing run"; exit 1; }
# the script keeps to --budget-s (default 420 s); the timeout is the net under it, below the
# device tool's 600 s, and the files are rewritten after every case, so a cut run keeps its rows
timeout -k 10 "${DEVICE_TIMEOUT_S:-560}" "$py" -m benchmarks.device --out-dir "$out" "$@" 2>&1 |
    tee "${OUT:-/tmp}/device-log.txt"
