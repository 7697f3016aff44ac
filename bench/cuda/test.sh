#!/usr/bin/env bash
# On the GPU machine, from the repository root with publish/cuda.tar.xz carried: every CUDA test (kernels vs the CPU
# backend, reference models vs transformers, graphs, NCCL). GRANARY_REQUIRE_GPU=1 makes a missing GPU a failure.
set -uo pipefail
cd "$(dirname "$0")/../.."
source bench/cuda/env.sh
[ -d publish/cuda ] || tar -C publish -xJf publish/cuda.tar.xz
GRANARY_REQUIRE_GPU=1 publish/cuda/Granary.Cuda.Tests "$@"
