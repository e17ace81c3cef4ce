#!/bin/bash
# Run bench/gpu_check.py on the GPU host (torch there, no Ray, no network), from any folder:
#   bash bench/gpu_check.sh [gpu_check.py options]      # JSON: bench/results/gpu_check.json
# Ray comes from the offline bundle .whl/ in the project root, installed to /tmp/site only when ray is
# missing. Build the bundle beforehand, on a machine with PyPI, from the project root:
#   bash ../shared/tools/device-wheels.sh
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl pydicom==3.0.2
# (the GPU image has torch, opencv, scipy, safetensors, pyarrow and pillow but no pydicom), then carry .whl.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! python3 -c 'import ray, pydicom' 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "gpu_check.sh: ray or pydicom missing and no .whl/ bundle (see this script's header)" >&2
        exit 2
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
exec python3 bench/gpu_check.py "$@"
