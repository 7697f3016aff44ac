#!/usr/bin/env bash
# Issue 9's multi-GPU run: one process per GPU, collectives over NCCL (NVLink multicast off). On a machine with
# several GPUs, from the repository root with publish/cuda.tar.xz carried (bench/cuda/publish.sh makes it here):
#
#   bench/multigpu/run.sh                      # every stage, then the table
#   bench/multigpu/run.sh tests cli granary    # some stages: tests, cli, granary, lora, single, transformers, table
#
# tests:        the CUDA test suite, including NCCL groups of 2 and 4 ranks and tensor-parallel reference models
#               against transformers' logits (tests/Granary.Cuda.Tests)
# cli:          `granary launch -n N -- granary generate --backend cuda` on reference models: tokens vs 1 GPU
# granary:      8B-shaped tensor-parallel decode (`Granary.Bench cuda-tp`) on 1, 2, 4 GPUs
# lora:         data-parallel LoRA: `granary launch -n 2 -- granary lora --backend cuda --batch-size B` against one GPU
#               with 2B (and the CPU with 2B for LORA_CPU_STEPS steps) on the same data: losses, adapters, it/s
#               (LORA_BATCH: B, default 4; LORA_STEPS: default 6; LORA_CPU_STEPS: default 2)
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

run_lora() {
  : > "$results/lora.txt"
  command -v granary > /dev/null || { echo "no granary CLI in publish/cuda"; return; }
  local work=/tmp/granary-lora per_rank=${LORA_BATCH:-4} steps=${LORA_STEPS:-6} cpu_steps=${LORA_CPU_STEPS:-2} cores
  cores=$(nproc)
  rm -rf "$work" && mkdir -p "$work/data"
  python3 - "$work/data/train.jsonl" <<'PY'
import json, random, sys
random.seed(0)
words = "the harvest of field came in early late dry wet grain barley wheat oats rye granary store mill baker bread flour sack cart road market town river".split()
with open(sys.argv[1], "w") as f:
    for i in range(64):
        f.write(json.dumps({"text": " ".join(random.choice(words) for _ in range(random.randint(20, 90)))}) + "\n")
PY
  # lora NAME ITERS BATCH BACKEND THREADS [LAUNCHER...]: the built-in model (12 layers, hidden 768, ~77M parameters),
  # adapters of rank 8 on every projection of every layer.
  lora() {
    local name=$1 iters=$2 batch=$3 backend=$4 threads=$5
    shift 5
    GRANARY_CACHE=$work/cache timeout 400 "$@" granary lora --backend "$backend" --threads "$threads" --data "$work/data" --train \
      --iters "$iters" --batch-size "$batch" --steps-per-report 1 --save-every "$iters" --num-layers 12 --rank 8 --learning-rate 1e-4 \
      --max-seq-length 128 --seed 0 --adapter-path "$work/$name" > "$results/lora-$name.txt" 2>&1 \
      || { echo "lora run $name failed:"; tail -5 "$results/lora-$name.txt"; }
  }
  # One GPU first: it writes the built-in model into the cache that the launched ranks then read. Ranks sharing the
  # host split its cores for their host-side work.
  lora cuda-1 "$steps" $((2 * per_rank)) cuda "$cores"
  if [ "$gpus" -ge 2 ]; then
    lora cuda-2 "$steps" "$per_rank" cuda $((cores / 2)) granary launch -n 2 --timeout-ms 120000 --
  else
    echo "lora: one GPU here, no data-parallel run"
  fi
  lora cpu "$cpu_steps" $((2 * per_rank)) cpu "$cores"
  python3 - "$results" "$work" "$per_rank" <<'PY' | tee "$results/lora.txt"
import json, math, pathlib, re, struct, sys
from array import array
results, work, per_rank = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
def adapters(name):
    path = work / name / "adapters.safetensors"
    if not path.exists():
        return None
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    tensors = {}
    for key, info in header.items():
        if key != "__metadata__":
            start, end = info["data_offsets"]
            tensors[key] = array("f", data[8 + size + start:8 + size + end])
    return tensors
def relative(a, b):
    worst = 0.0
    for key in b:
        difference = sum((x - y) ** 2 for x, y in zip(a[key], b[key]))
        norm = sum(y * y for y in b[key])
        worst = max(worst, math.sqrt(difference / max(norm, 1e-30)))
    return worst
runs = {"cuda-1": (1, 2 * per_rank), "cuda-2": (2, per_rank), "cpu": (0, 2 * per_rank)}
reference = adapters("cuda-1")
losses_1 = None
for name, (gpus, batch) in runs.items():
    log = results / f"lora-{name}.txt"
    if not log.exists():
        continue
    text = log.read_text()
    losses = [float(v) for v in re.findall(r"Iter \d+: Train loss ([0-9.]+)", text)]
    speeds = [float(v) for v in re.findall(r"It/sec ([0-9.]+)", text)]
    tokens = [float(v) for v in re.findall(r"Tokens/sec ([0-9.]+)", text)]
    if not losses:
        print(f"lora-result run={name} gpus={gpus} batch_per_rank={batch} losses=FAILED")
        continue
    if name == "cuda-1":
        losses_1 = losses
    # Step 1 also uploads the frozen weights and compiles: the speed is that of the later steps.
    later = lambda values: sum(values[1:]) / max(1, len(values) - 1) if len(values) > 1 else values[0]
    delta = max(abs(a - b) for a, b in zip(losses, losses_1)) if losses_1 and name != "cuda-1" else 0.0
    own = adapters(name)
    # Adapters are compared where a run trained as many steps as the reference (the CPU's LORA_CPU_STEPS may be fewer).
    error = relative(own, reference) if own and reference and name != "cuda-1" and len(losses) == len(losses_1) else None
    print(f"lora-result run={name} gpus={gpus} batch_per_rank={batch} steps={len(losses)} losses={','.join(f'{l:.3f}' for l in losses)} "
          f"it_per_s={later(speeds):.3f} tokens_per_s={later(tokens):.1f} max_loss_delta={delta:.3f} adapters_error={'n/a' if error is None else f'{error:.2e}'}")
PY
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
lora = rows("lora.txt", "lora-result")
if lora:
    print("\nData-parallel LoRA (`granary lora --backend cuda`), built-in model (12 layers, hidden 768), rank 8 on every projection,")
    print("64 records cut to 128 tokens, AdamW lr 1e-4; losses as printed (3 decimals); vs the 1-GPU run of the same global batch")
    print(f"{'run':<8} {'GPUs':>4} {'batch/rank':>10} {'steps':>5}  {'train loss per step':<40} {'it/s':>6} {'tok/s':>7} {'max |dloss|':>11} {'adapters rel.':>13}")
    for r in lora:
        if r["losses"] == "FAILED":
            print(f"{r['run']:<8} {r['gpus']:>4} {r['batch_per_rank']:>10}  FAILED")
            continue
        print(f"{r['run']:<8} {r['gpus']:>4} {r['batch_per_rank']:>10} {r['steps']:>5}  {r['losses']:<40} {float(r['it_per_s']):>6.3f} {float(r['tokens_per_s']):>7.1f} "
              f"{'(reference)' if r['run'] == 'cuda-1' else r['max_loss_delta']:>11} {r['adapters_error'] if r['run'] != 'cuda-1' else '':>13}")
    print("(cuda-2: `granary launch -n 2`, one rank per GPU, gradients summed over NCCL; it/s and tok/s: mean of the steps after")
    print(" the first, which uploads the frozen weights; adapters rel.: worst relative L2 difference of a saved adapter tensor")
    print(" from the 1-GPU run's, where a run trains as many steps; the CPU row trains LORA_CPU_STEPS)")
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

for stage in ${*:-tests cli granary lora transformers table}; do
  echo "== $stage"
  case $stage in
    tests) run_tests ;;
    cli) run_cli ;;
    granary) run_granary ;;
    lora) run_lora ;;
    single) run_single ;;
    transformers) run_transformers ;;
    table) print_table | tee "$results/table.txt" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
if [ -n "${OUT:-}" ]; then
  for file in tests cli granary granary-log lora lora-cuda-1 lora-cuda-2 lora-cpu single transformers table; do
    [ -f "$results/$file.txt" ] && cp "$results/$file.txt" "$OUT"/
  done
fi
exit 0
