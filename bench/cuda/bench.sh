#!/usr/bin/env bash
# On the GPU machine, from the repository root with publish/cuda.tar.xz carried: Granary's CUDA decode/prefill
# benchmark, then Hugging Face transformers on the same shapes in the same run.
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/cuda/env.sh
[ -d publish/cuda ] || tar -C publish -xJf publish/cuda.tar.xz
out=${OUT:-/tmp}
publish/cuda/Granary.Bench cuda "$@" 2>&1 | tee "$out/granary-cuda-bench.txt"
PYTHONUNBUFFERED=1 python3 bench/cuda/transformers_peer.py 2>&1 | tee "$out/transformers-peer.txt"
