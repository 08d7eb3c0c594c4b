#!/usr/bin/env bash
# The whole GPU benchmark as one command for a lent GPU machine (no network, no enwik8, and none
# of x-transformers, adam-atan2-pytorch, torchao, einx, loguru, torch-einops-utils, frozendict).
#
# Before, on the development machine, in the checkout (.device/ is git-ignored):
#     mkdir -p .device/wheels && cp /work/shared/device-wheels/*.whl .device/wheels/
# Then run `bash bench/gpu_session.sh` there with `.device` carried and a 600 s limit. It installs
# the wheels into /tmp/site, then runs `bench/bench.py --quality` under a 530 s timeout; any
# arguments replace `--quality` (e.g. `--sections optimizer,fp8 --optimizer-variants eager,newton_schulz,step`).
# The JSON and the log go to $OUT when the machine provides it (they come back), else bench/results/.
set -uo pipefail
cd "$(dirname "$0")/.."

wheels=.device/wheels
if ! compgen -G "$wheels/*.whl" >/dev/null; then
    echo "no wheels in $wheels: copy /work/shared/device-wheels/*.whl there and carry .device" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --target /tmp/site "$wheels"/*.whl && export PYTHONPATH=/tmp/site || exit 2

dest="${OUT:-bench/results}"
mkdir -p "$dest"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, x_transformers, torchao; print('torch', torch.__version__, '| cuda', torch.cuda.is_available())" || exit 2

args=("$@")
if [ ${#args[@]} -eq 0 ]; then
    args=(--quality)
fi
export PYTHONUNBUFFERED=1
timeout --kill-after=10 530 python3 bench/bench.py --out "$dest/bench-$(date +%F).json" "${args[@]}" 2>&1 | tee "$dest/bench.log"
status=${PIPESTATUS[0]}
if [ "$status" -eq 124 ]; then
    echo "bench stopped at its 530 s limit: $dest/bench-$(date +%F).json holds every section that finished"
fi
exit "$status"
