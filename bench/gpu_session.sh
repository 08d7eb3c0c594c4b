#!/usr/bin/env bash
# The whole GPU benchmark as one command for an offline GPU box: a machine with a CUDA GPU and
# torch, but no network, no enwik8 and none of the project's other dependencies (x-transformers,
# adam-atan2-pytorch, torchao and what they pull in: einx, loguru, torch-einops-utils, frozendict).
#
# Before, on a machine with network, in the checkout (.device/ is git-ignored), fetch the wheels:
#     python3 -m pip download --no-deps -d .device/wheels x-transformers==2.26.4 adam-atan2-pytorch==0.4.1 \
#         torchao==0.18.0 einx loguru torch-einops-utils frozendict   # add --python-version/--platform for the box
# then bring the checkout with that folder to the GPU box (BENCH_WHEELS=<folder> points at another one)
# and run `bash bench/gpu_session.sh` there under a 600 s limit. Nothing is installed from an
# index: the wheels go into /tmp/site with --no-index --no-deps, and PYTHONPATH=<checkout>:/tmp/site
# makes `import prepare` and `import labbook` find this checkout. It then runs bench/bench.py under
# a 450 s timeout, so the whole call stays within 8 minutes: by default the sections a first look at
# a card needs (ceilings, the default model's throughput, the default model capped to 8 and 12 GB
# with its fitted micro-batch, peak memory and tokens/s, the re-score tolerance, the evaluation's
# time, FP8); any arguments replace them (e.g. `--quality`, or
# `--sections optimizer,fp8 --optimizer-variants eager,newton_schulz,step`).
# The JSON and the log go to $OUT when the machine provides it, else to bench/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
checkout="$(pwd)"

wheels="${BENCH_WHEELS:-.device/wheels}"
if ! compgen -G "$wheels/*.whl" >/dev/null; then
    echo "no wheels in $wheels: download them there on a machine with network (see the top of $0), or set BENCH_WHEELS" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --target /tmp/site "$wheels"/*.whl || exit 2
export PYTHONPATH="$checkout:/tmp/site"

dest="${OUT:-bench/results}"
mkdir -p "$dest"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, x_transformers, torchao, prepare, labbook; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '| prepare', prepare.__file__)" || exit 2

args=("$@")
if [ ${#args[@]} -eq 0 ]; then
    args=(--sections ceilings,throughput,memcap,tolerance,eval,fp8)
fi
export PYTHONUNBUFFERED=1
timeout --kill-after=10 450 python3 bench/bench.py --out "$dest/bench-$(date +%F).json" "${args[@]}" 2>&1 | tee "$dest/bench.log"
status=${PIPESTATUS[0]}
if [ "$status" -eq 124 ]; then
    echo "bench stopped at its 450 s limit: $dest/bench-$(date +%F).json holds every section that finished"
fi
exit "$status"
