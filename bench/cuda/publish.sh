#!/usr/bin/env bash
# Builds (here, with the .NET SDK) the GPU test runner and the benchmark into one self-contained folder and packs it
# as publish/cuda.tar.xz (about 25 MiB) for a GPU machine without .NET: carry that one file.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf publish/cuda publish/cuda.tar.xz
for project in tests/Granary.Cuda.Tests bench/Granary.Bench; do
  dotnet publish "$project" -c Release -r linux-x64 --self-contained -p:InvariantGlobalization=true -p:DebugType=none \
    --artifacts-path "${ARTIFACTS:-/tmp/art-cuda-publish}" -o publish/cuda -nologo -v quiet
done
tar -C publish -cJf publish/cuda.tar.xz cuda
ls -la publish/cuda.tar.xz
