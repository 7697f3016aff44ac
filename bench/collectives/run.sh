#!/usr/bin/env bash
# All-sum benchmark: Granary's transports beside Open MPI's MPI_Allreduce (TCP and shared memory) and raw loopback TCP.
# The MPI columns need `apt-get install -y openmpi-bin libopenmpi-dev`; without them they are skipped.
# Extra arguments go to the benchmark, e.g. --max-bytes 64M --ranks 2,3 --transports ring,shm --min-seconds 0.5
set -euo pipefail
cd "$(dirname "$0")/../.."
exec dotnet run -c Release --project bench/Granary.Bench -- collectives "$@"
