#!/usr/bin/env bash
# Builds (here, with the .NET SDK) the GPU test runner, the benchmark and the `granary` CLI (for `granary launch` on
# several GPUs, see bench/multigpu) into one self-contained folder and packs it as publish/cuda.tar.xz for a GPU
# machine without .NET: carry that one file. The CLI is optional: where it does not build, the others still ship.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf publish/cuda publish/cuda.tar.xz
publish() {
  dotnet publish "$1" -c Release -r linux-x64 --self-contained -p:InvariantGlobalization=true -p:DebugType=none \
    --artifacts-path "${ARTIFACTS:-/tmp/art-cuda-publish}" -o publish/cuda -nologo -v quiet
}
publish tests/Granary.Cuda.Tests
publish bench/Granary.Bench
publish client/Granary.Cli || echo "publish.sh: the granary CLI did not build; publishing without it" >&2
# Left out: the test SDK's code-coverage tooling and the resource satellites of other cultures, which nothing here
# loads (and which would push the carried tree over the device tool's 64 MiB).
XZ_OPT=-T2 tar -C publish -cJf publish/cuda.tar.xz \
  --exclude=cuda/CodeCoverage --exclude=cuda/macos --exclude=cuda/alpine --exclude=cuda/ubuntu \
  --exclude=cuda/x86 --exclude=cuda/x64 --exclude=cuda/arm64 --exclude='cuda/??' --exclude='cuda/??-*' cuda
ls -la publish/cuda.tar.xz
