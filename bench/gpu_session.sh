#!/usr/bin/env bash
# The whole GPU benchmark as one command for an offline GPU box: a machine with a CUDA GPU and
# torch, but no network, no enwik8 and none of the project's other dependencies (x-transformers,
# adam-atan2-pytorch, torchao and what they pull in: einx, einops, loguru, torch-einops-utils,
# frozendict, packaging).
#
# Before, on a machine with network, in the checkout (.device/ is git-ignored), fetch the wheels:
#     python3 -m pip download --no-deps -d .device/wheels x-transformers==2.26.4 adam-atan2-pytorch==0.4.1 \
#         torchao==0.18.0 einx einops loguru torch-einops-utils frozendict packaging   # add --python-version/--platform for the box
# then bring the checkout with that folder to the GPU box (BENCH_WHEELS=<folder> points at another one)
# and run `bash bench/gpu_session.sh` there under a 600 s limit. Nothing is installed from an
# index: the wheels go into /tmp/site with --no-index --no-deps, and PYTHONPATH=<checkout>:/tmp/site
# makes `import prepare` and `import labbook` find this checkout. The harness starts its own processes
# (supervisor, sandboxed trainer, sealed scorer) with `python -I -S`, which ignores PYTHONPATH: each
# is handed the first process's sys.path instead, so /tmp/site reaches them all
# (tests/test_library_layouts.py runs this layout on a CPU).
#
# With no arguments it runs the GPU session's plan (bench/bench.py's DEFAULT_PLAN, ordered by value:
# default-model throughput, the micro-batch truth table, launch, recompiles, the sealed scorer, the
# re-score tolerance, FP8 at dim 1024), after checking that its estimates fit in 400 s; sections that
# would pass the budget at run time are skipped. `bash bench/gpu_session.sh --plan` prints that plan
# and changes nothing (it needs no GPU, but a python3 that imports torch and the wheels' libraries).
# Any other arguments replace the plan (e.g. `--sections hosttime,eval` or `--quality`).
# The JSON (rewritten as each section ends) and the log go to $OUT when the machine provides it,
# else to bench/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
checkout="$(pwd)"
export PYTHONPATH="$checkout:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
budget=400

if [ "${1:-}" = "--plan" ]; then
    exec python3 bench/bench.py --plan --budget "$budget" "${@:2}"
fi

wheels="${BENCH_WHEELS:-.device/wheels}"
if ! compgen -G "$wheels/*.whl" >/dev/null; then
    echo "no wheels in $wheels: download them there on a machine with network (see the top of $0), or set BENCH_WHEELS" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --target /tmp/site "$wheels"/*.whl || exit 2

dest="${OUT:-bench/results}"
mkdir -p "$dest"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, x_transformers, torchao, prepare, labbook; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '| prepare', prepare.__file__)" || exit 2

args=("$@")
if [ ${#args[@]} -eq 0 ]; then
    python3 bench/bench.py --plan --budget "$budget" || { echo "the plan's estimates pass $budget s: shorten it" >&2; exit 2; }
    args=(--budget "$budget")
fi
export PYTHONUNBUFFERED=1
export PYTORCH_ALLOC_CONF="${PYTORCH_ALLOC_CONF:-expandable_segments:True}"  # what a real run uses (prepare.ALLOC_CONF)
timeout --kill-after=10 450 python3 bench/bench.py --out "$dest/bench-$(date +%F).json" "${args[@]}" 2>&1 | tee "$dest/bench.log"
status=${PIPESTATUS[0]}
if [ "$status" -eq 124 ]; then
    echo "bench stopped at its 450 s limit: $dest/bench-$(date +%F).json holds every section that finished"
fi
exit "$status"
