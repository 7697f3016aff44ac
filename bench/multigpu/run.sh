#!/usr/bin/env bash
# Issue 9's multi-GPU run: one process per GPU, collectives over NCCL (NVLink multicast off). On a machine with
# several GPUs, from the repository root with publish/cuda.tar.xz carried (bench/cuda/publish.sh makes it here):
#
#   bench/multigpu/run.sh                      # every stage, then the table
#   bench/multigpu/run.sh tests cli granary    # some stages: tests, cli, granary, single, transformers, table
#
# tests:        the CUDA test suite, including NCCL groups of 2 and 4 ranks and tensor-parallel reference models
#               against transformers' logits (tests/Granary.Cuda.Tests)
# cli:          `granary launch -n N -- granary generate --backend cuda` on reference models: tokens vs 1 GPU
# granary:      8B-shaped tensor-parallel decode (`Granary.Bench cuda-tp`) on 1, 2, 4 GPUs
# single:       the one-GPU CUDA benchmark table (bench/cuda), one-op-per-call and fused steps side by side
# transformers: the same shape with transformers' tp_plan="auto" under torchrun
# Results gather in $RESULTS (kept between calls on one machine) and are copied to $OUT when it is set.
set -uo pipefail
cd "$(dirname "$0")/../.."
source bench/cuda/env.sh
export NCCL_NVLS_ENABLE=0
[ -d publish/cuda ] || tar -C publish -xJf publish/cuda.tar.xz
export PATH="$PWD/publish/cuda:$PATH"
results=${RESULTS:-/tmp/granary-multigpu}
mkdir -p "$results"
gpus=$(nvidia-smi -L | wc -l)
counts=$(for n in 1 2 4; do [ "$n" -le "$gpus" ] && echo "$n"; done)
checkpoint=${CHECKPOINT:-/tmp/qwen3-8b-random}

# Ranks 0..n-1 of "$@" on this machine, as `granary launch -n` starts them (without needing the CLI).
launch() {
  local n=$1 port=$((29600 + RANDOM % 2000)) rank status=0
  shift
  local pids=()
  for ((rank = 0; rank < n; rank++)); do
    GRANARY_RANK=$rank GRANARY_WORLD_SIZE=$n GRANARY_COORDINATOR=127.0.0.1:$port "$@" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  return $status
}

run_tests() {
  GRANARY_REQUIRE_GPU=1 timeout 300 publish/cuda/Granary.Cuda.Tests -parallel none > "$results/tests.txt" 2>&1
  grep -E "\[FAIL\]|Total:" "$results/tests.txt" | tail -20
}

run_cli() {
  : > "$results/cli.txt"
  command -v granary > /dev/null || { echo "no granary CLI in publish/cuda"; return; }
  for model in qwen3_bf16 qwen3_moe llama; do
    dir=tests/reference/models/$model
    ids=$(python3 -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['prompt_ids'])))" "$dir/reference.json")
    for n in $counts; do
      command=(granary generate --model "$dir" --backend cuda --prompt-ids "$ids" --temperature 0 --max-tokens 20 --no-eos --json)
      [ "$n" -gt 1 ] && command=(granary launch -n "$n" -- "${command[@]}")
      tokens=$(timeout 120 "${command[@]}" 2>"$results/cli-$model-$n.err" | grep -o '{"tokens".*' | tail -1 | python3 -c "import json,sys; print(','.join(map(str, json.load(sys.stdin)['tokens'])))" 2>/dev/null)
      echo "cli-result model=$model ranks=$n tokens=${tokens:-FAILED}" | tee -a "$results/cli.txt"
    done
  done
}

run_granary() {
  : > "$results/granary.txt"
  for n in $counts; do
    command=(Granary.Bench cuda-tp --models qwen3-8b --batches 1 --prompt 512 --steps 64)
    timeout 180 bash -c "$(declare -f launch); launch $n ${command[*]}" 2>&1 | tee -a "$results/granary-log.txt" | grep -o "tp-result.*" | tee -a "$results/granary.txt"
  done
}

run_single() {
  timeout 240 Granary.Bench cuda --models qwen3-0.6b,qwen3-8b --batches 1,8 --prompt 512 --steps 64 > "$results/single.txt" 2>&1
  sed -n '/^model /,$p' "$results/single.txt"
}

run_transformers() {
  : > "$results/transformers.txt"
  if [ ! -f "$checkpoint/config.json" ]; then
    PYTHONUNBUFFERED=1 timeout 240 python3 bench/multigpu/transformers_tp.py save "$checkpoint" > "$results/transformers-log.txt" 2>&1 || { echo "checkpoint failed"; tail -5 "$results/transformers-log.txt"; return; }
  fi
  for n in $counts; do
    PYTHONUNBUFFERED=1 timeout 240 torchrun --standalone --nproc-per-node "$n" bench/multigpu/transformers_tp.py run "$checkpoint" >> "$results/transformers-log.txt" 2>&1
    grep -o "hf-result ranks=$n .*" "$results/transformers-log.txt" | tail -1 | tee -a "$results/transformers.txt"
    grep -q "hf-result ranks=$n " "$results/transformers.txt" || { echo "transformers on $n GPUs failed:"; grep -E "Error|error" "$results/transformers-log.txt" | tail -3; }
  done
}

print_table() {
  python3 - "$results" <<'PY'
import pathlib, re, sys
results = pathlib.Path(sys.argv[1])
def rows(name, tag):
    path = results / name
    return [dict(re.findall(r"(\w+)=(\S+)", line)) for line in path.read_text().splitlines() if line.startswith(tag)] if path.exists() else []
tests = results / "tests.txt"
if tests.exists():
    summary = [re.sub(r"\x1b\[[0-9;]*m", "", l).strip() for l in tests.read_text().splitlines() if "Total:" in l]
    print("CUDA tests:", summary[-1] if summary else "no summary (see tests.txt)")
cli = rows("cli.txt", "cli-result")
if cli:
    print("\n`granary launch -n N -- granary generate --backend cuda`, 20 greedy tokens vs 1 GPU")
    print(f"{'model':<12} {'GPUs':>4}  same tokens as 1 GPU")
    ones = {r["model"]: r["tokens"] for r in cli if r["ranks"] == "1"}
    for r in cli:
        same = "FAILED" if "FAILED" in r["tokens"] else "(reference)" if r["ranks"] == "1" else "yes" if r["tokens"] == ones.get(r["model"]) else "NO"
        print(f"{r['model']:<12} {r['ranks']:>4}  {same}")
granary = {r["ranks"]: r for r in rows("granary.txt", "tp-result")}
hf = {r["ranks"]: r for r in rows("transformers.txt", "hf-result")}
if granary:
    base = {k: float(granary["1"][k]) for k in ("graph", "fused")} if "1" in granary else {}
    print("\nTensor-parallel decode, Qwen3-8B shape, bf16 weights generated on the GPUs, batch 1, 512-token context (tokens/s)")
    print(f"{'GPUs':>4} {'GB/rank':>8} {'roofline':>9} {'eager':>8} {'graph':>8} {'%ideal':>7} {'fused':>8} {'%ideal':>7} {'NCCL ms/step':>13} {'transformers':>13}")
    for n in sorted(granary, key=int):
        r = granary[n]
        share = lambda k: f"{float(r[k]) / (base[k] * int(n)):>7.0%}" if k in base else f"{'n/a':>7}"
        print(f"{n:>4} {float(r['weight_gb_per_rank']):>8.2f} {float(r['roofline']):>9.0f} {float(r['eager']):>8.1f} {float(r['graph']):>8.1f} {share('graph')} "
              f"{float(r['fused']):>8.1f} {share('fused')} {float(r['collectives_ms']):>13.3f} {hf.get(n, {}).get('decode', 'n/a'):>13}")
    print("(roofline: one rank's weight bytes per step over its measured copy bandwidth; eager/graph: the one-op-per-call step of")
    print(" Granary.Models' layer; fused: the step with the CUDA backend's decode fusions, one graph replayed at every position;")
    print(" %ideal: over N x the 1-GPU figure; NCCL ms/step: the step's 72 all-sums of the hidden state and the logits all-gather")
    print(" alone, replayed as a CUDA graph; transformers: tp_plan=\"auto\" under torchrun, plain on 1 GPU, greedy generate)")
PY
}

for stage in ${*:-tests cli granary transformers table}; do
  echo "== $stage"
  case $stage in
    tests) run_tests ;;
    cli) run_cli ;;
    granary) run_granary ;;
    single) run_single ;;
    transformers) run_transformers ;;
    table) print_table | tee "$results/table.txt" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
if [ -n "${OUT:-}" ]; then
  for file in tests cli granary granary-log single transformers table; do
    [ -f "$results/$file.txt" ] && cp "$results/$file.txt" "$OUT"/
  done
fi
exit 0
