#!/usr/bin/env bash
# The GPU benchmarks of issue 6 in one device call (docs/benchmarks.md, "GPU (issue 6)"), from the
# repository root:
#   bash tools/bench/gpu_bench.sh OUTDIR [stage ...]     # on the GPU machine (sources .device/env.sh)
#   bash tools/bench/gpu_bench.sh --cpu OUTDIR [stage ...]  # dry run here: tiny shapes, CPU, -j2
# Stages, in order (default: all): build checkpoints hf tp7b dec8b e2e (SQUAT_BENCH_TP_FORMATS
# narrows tp7b's format list, e.g. "squat-2 fp16"). The summary is always written. Stages have their own time budgets under one global deadline (SQUAT_BENCH_DEADLINE_S,
# 560 s on the GPU): a stage that no longer fits is skipped and recorded, a failed stage is
# recorded and the rest still run. OUTDIR ends with few files: summary.md, summary.json,
# bench.log, build.log, raw.tar.gz (every tool's JSON, the server log and the exact commands).
set -u

mode=gpu
if [ "${1:-}" = "--cpu" ]; then mode=cpu; shift; fi
out=${1:?usage: gpu_bench.sh [--cpu] OUTDIR [stage ...]}
shift
stages=${*:-build checkpoints hf tp7b dec8b e2e}
mkdir -p "$out"
out=$(cd "$out" && pwd)
repo=$(pwd)
T0=$(date +%s)

if [ "$mode" = gpu ]; then
  if [ -z "${TORCH_CMAKE_PREFIX:-}" ] && [ -f .device/env.sh ]; then source .device/env.sh; fi
  build=${SQUAT_BENCH_BUILD:-build-gpu}
  jobs=${SQUAT_BENCH_JOBS:-16}
  deadline=${SQUAT_BENCH_DEADLINE_S:-560}
  device=cuda
else
  build=${SQUAT_BENCH_BUILD:-build/bench}
  jobs=${SQUAT_BENCH_JOBS:-2}
  deadline=${SQUAT_BENCH_DEADLINE_S:-900}
  device=cpu
fi
work=${SQUAT_BENCH_WORK:-$build/bench_work}
rm -rf "$work" && mkdir -p "$work"
log=$out/bench.log
: > "$log"
: > "$work/stages.jsonl"
: > "$work/commands.txt"
bin=$build

elapsed() { echo $(( $(date +%s) - T0 )); }
say() { echo "[$(elapsed)s] $*" | tee -a "$log" >&2; }
remaining() { echo $((deadline - $(elapsed))); }
wanted() { case " $stages " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
# record STAGE STATUS SECONDS NOTE -> one JSON line (the note must not contain double quotes)
record() { printf '{"stage": "%s", "status": "%s", "seconds": %s, "note": "%s"}\n' "$1" "$2" "$3" "${4//\"/\'}" >> "$work/stages.jsonl"; say "stage $1: $2 ($3 s) $4"; }
# run TIMEOUT_S LOGFILE CMD... : logs the command, bounds it in time; returns its status (124: timed
# out). The pid goes to $work/pids so that the exit trap can end what is still running.
run() {
  local limit=$1 logfile=$2 pid rc; shift 2
  echo "$*" >> "$work/commands.txt"
  say "run (<= ${limit}s): $*"
  timeout -k 10 "$limit" "$@" >> "$logfile" 2>&1 &
  pid=$!
  echo $pid >> "$work/pids"
  echo $pid > "$work/pid_$(basename "$logfile" .log)"
  wait $pid; rc=$?
  if [ $rc != 0 ]; then
    say "exit status $rc; last lines of $(basename "$logfile"):"
    tail -12 "$logfile" | sed 's/^/    /' | tee -a "$log" >&2
  fi
  return $rc
}
# budget NOMINAL: what a stage may use now (keeps 20 s for the summary)
budget() { local left=$(( $(remaining) - 20 )); [ "$1" -lt "$left" ] && echo "$1" || echo "$left"; }

# Ends what this script started and is still running (timeout passes the signal to its command).
stop_started() {
  [ -f "$work/pids" ] && while read -r pid; do kill "$pid" 2>/dev/null; done < "$work/pids"
  [ -n "${prep_pid:-}" ] && kill "$prep_pid" 2>/dev/null
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null
  return 0
}
cleanup() { stop_started; }
trap cleanup EXIT

say "mode $mode, stages: $stages, deadline ${deadline}s, build dir $build"
{
  echo "== machine"; nproc; free -g | head -2; df -h . /dev/shm 2>/dev/null | tail -n +1
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' 2>&1 | tail -1
  git log --oneline -1; git status --short | head -20
} >> "$log" 2>&1

# ---- shapes and lists per mode
if [ "$mode" = gpu ]; then
  preset7=llama2-7b; preset8=llama31-8b; extra7=(); extra8=()
  tp_prompt=160; tp_gen=338
  hf_batches=192,256
  # Ours at the paper's setting: the format list is in priority order (the headline first).
  # A small first batch calibrates the time prediction; "max" is what the pool holds (or, with
  # --fill-budget, the largest batch predicted to fit the format's budget).
  tp_formats=${SQUAT_BENCH_TP_FORMATS:-"squat-2 fp16 kivi-2"}
  declare -A tp_batches=([squat-2]=32,256,max [fp16]=32,128,max [kivi-2]=64,max)
  declare -A tp_max_seqs=([squat-2]=1024 [fp16]=256 [kivi-2]=1024)
  declare -A tp_budget=([squat-2]=45 [fp16]=40 [kivi-2]=30)
  # One prompt per step, prefilled whole (causal flash attention; no chunk of a 32k prompt
  # attends through a mask), so a step takes up to 32768 prompt rows + the decoding rows.
  dec_formats="fp16 squat-2 kivi-2"
  dec_prompts=8192,32768; dec_batches=4,max; dec_gen=16; dec_window=24; dec_max_seqs=256
  dec_chunk=32768; dec_step_tokens=33792
  declare -A dec_budget=([fp16]=45 [squat-2]=50 [kivi-2]=35)
  e2e_formats="squat-2 fp16"; e2e_rate=8; e2e_requests=120; e2e_prompt=160; e2e_gen=338
  hf_deadline=200  # seconds from the start: HF must leave the GPU to the stages after the build
  nominal_bandwidth=(); models=/dev/shm/squat_bench
  # Both checkpoints (12.6 + 15 GiB) in RAM when /dev/shm has room, else on disk.
  shm_free=$(df -k --output=avail /dev/shm 2>/dev/null | tail -1 || echo 0)
  [ "${shm_free:-0}" -lt $((36 * 1024 * 1024)) ] && models=$build/bench_models
else
  preset7=tiny; preset8=tiny; extra7=(--seed 7); extra8=(--seed 8 --max-position-embeddings 4096)
  tp_prompt=32; tp_gen=8
  hf_batches=2,4
  tp_formats="squat-2 fp16 kivi-2"
  declare -A tp_batches=([squat-2]=1,2 [fp16]=1,2 [kivi-2]=2)
  declare -A tp_max_seqs=([squat-2]=64 [fp16]=64 [kivi-2]=64)
  declare -A tp_budget=([squat-2]=60 [fp16]=60 [kivi-2]=60)
  dec_formats="fp16 squat-2"
  dec_prompts=256,512; dec_batches=1,2; dec_gen=4; dec_window=4; dec_max_seqs=64
  dec_chunk=512; dec_step_tokens=640
  declare -A dec_budget=([fp16]=60 [squat-2]=60)
  e2e_formats="squat-2 fp16"; e2e_rate=20; e2e_requests=16; e2e_prompt=32; e2e_gen=16
  hf_deadline=600
  # No GPU here: a nominal bandwidth / FLOP rate only exercises floor.py.
  nominal_bandwidth=(--bandwidth 2e10 --peak-flops 1e11); models=$work/models
fi
m7=$models/m7; m8=$models/m8
mkdir -p "$models"

# Pool sizing: the engine's own --gpu-memory-utilization where it has one, else a byte budget of
# 0.9 x the card - weights - 6 GiB of activation workspace (GPU) or 256 MiB (CPU).
pool_flags() {  # pool_flags TOOL MODEL_DIR -> flags on stdout
  local tool=$1 model=$2
  if [ "$mode" = cpu ]; then echo "--kv-pool-mib 256"; return; fi
  if [ "$tool" = throughput ] && "$bin/tools/bench/squat-throughput" --capabilities 2>/dev/null | grep -q '"gpu_memory_utilization":true'; then
    echo "--gpu-memory-utilization 0.9"; return
  fi
  if [ "$tool" = server ] && "$bin/server/squat-server" --help 2>&1 | grep -q 'gpu_memory_utilization'; then
    echo "--gpu-memory-utilization 0.9"; return
  fi
  local total
  total=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits -i 0 | head -1)
  python3 - "$model/config.json" "$total" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
h, L, I, V = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
heads, kv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
d = c.get("head_dim") or h // heads
params = L * (h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * I + 2 * h) + V * h * (1 if c.get("tie_word_embeddings") else 2) + h
print(f"--kv-pool-mib {int(0.9 * float(sys.argv[2]) - params * 2 / 2**20 - 6144)}")
PY
}

# ---- build
stage_build() {
  local t=$(elapsed) rc=0
  if [ "$mode" = gpu ] || [ ! -f "$build/CMakeCache.txt" ]; then
    run "$(budget 120)" "$out/build.log" cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DSQUAT_BUILD_TESTS=OFF || rc=$?
  fi
  [ $rc = 0 ] && { run "$(budget 120)" "$out/build.log" cmake --build "$build" --target squat-make-checkpoint -j"$jobs" || rc=$?; }
  if [ $rc != 0 ]; then
    grep -E 'error|Error|FAILED' "$out/build.log" | head -30 >> "$log"
    record build failed $(( $(elapsed) - t )) "configure or squat-make-checkpoint failed (rc $rc); see build.log"
    return 1
  fi
  # The checkpoints (and then HF, which needs only the 7B one) start now, beside the build.
  wanted checkpoints && start_background_prep
  run "$(budget 330)" "$out/build.log" nice -n 5 cmake --build "$build" \
      --target squat-throughput squat-server squat-bench squat-cli -j"$jobs" || rc=$?
  touch "$work/build_done"
  if [ $rc != 0 ]; then
    grep -E 'error|FAILED' "$out/build.log" | head -40 >> "$log"
    record build failed $(( $(elapsed) - t )) "build failed (rc $rc); see build.log"
    return 1
  fi
  record build ok $(( $(elapsed) - t )) "targets squat-throughput squat-server squat-bench squat-cli squat-make-checkpoint, -j$jobs"
}

# make_checkpoint NAME PRESET DIR EXTRA...: random fp16 weights of the real shape (all cores,
# niced under the build). A complete directory from an earlier call on this machine is reused.
make_checkpoint() {
  local name=$1 preset=$2 dir=$3 t0 rc=0 reused=false; shift 3
  t0=$(date +%s%N)
  if [ -f "$dir/.complete" ] && [ "$(cat "$dir/.complete")" = "$preset $*" ]; then
    reused=true
  else
    rm -f "$dir/.complete"
    run 240 "$work/checkpoints.log" nice -n 19 "$bin/tools/squat-make-checkpoint" --preset "$preset" --out "$dir" "$@" || rc=$?
    [ $rc = 0 ] && echo "$preset $*" > "$dir/.complete"
  fi
  local ms=$(( ($(date +%s%N) - t0) / 1000000 )) bytes
  bytes=$(du -sb "$dir" 2>/dev/null | cut -f1)
  echo "{\"name\": \"$name\", \"preset\": \"$preset\", \"rc\": $rc, \"seconds\": $((ms / 1000)).$(printf %03d $((ms % 1000))), \"bytes\": ${bytes:-0}, \"reused\": $reused, \"threads\": $(nproc)}" > "$work/checkpoint_$name.json"
  say "checkpoint $name ($preset): rc $rc in ${ms} ms, ${bytes:-0} bytes, reused $reused"
  return $rc
}

run_hf() {
  local end=$hf_deadline
  [ $end -gt $(( deadline - 60 )) ] && end=$(( deadline - 60 ))
  local limit=$(( end - $(elapsed) ))
  [ $limit -lt 30 ] && limit=30
  local model_args=(--model "$m7")
  [ -f "$m7/config.json" ] || model_args=()
  run "$limit" "$work/hf.log" python3 tools/bench/hf_generate_bench.py "${model_args[@]}" --device "$device" \
      --batches "$hf_batches" --prompt-tokens "$tp_prompt" --gen-tokens "$tp_gen" --measure-bandwidth \
      --stop-file "$work/build_done" --deadline-s $(( limit - 5 )) --json "$work/hf.json"
  echo $? > "$work/hf.rc"
}

# Background: 7B checkpoint, then HF on it beside the 8B checkpoint (niced: the build comes first).
start_background_prep() {
  (
    make_checkpoint m7 "$preset7" "$m7" "${extra7[@]}"; echo $? > "$work/m7.rc"
    if wanted hf; then run_hf & fi
    make_checkpoint m8 "$preset8" "$m8" "${extra8[@]}"; echo $? > "$work/m8.rc"
    wait
  ) &
  prep_pid=$!
}

# wait_for FILE SECONDS: until FILE exists (a background step finished)
wait_for() {
  local file=$1 limit=$2 waited=0
  while [ ! -f "$file" ] && [ $waited -lt "$limit" ]; do sleep 1; waited=$((waited + 1)); done
  [ -f "$file" ]
}

stage_checkpoints() {  # when the build stage did not start them
  [ -n "${prep_pid:-}" ] && return 0
  start_background_prep
}

stage_hf_wait() {
  local t=$(elapsed)
  [ -n "${prep_pid:-}" ] || start_background_prep
  if ! wait_for "$work/hf.rc" $(( $(remaining) - 60 )); then
    [ -f "$work/pid_hf" ] && kill "$(cat "$work/pid_hf")" 2>/dev/null  # the GPU is needed now
    record hf timeout $(( $(elapsed) - t )) "HF did not finish in time"
    return 1
  fi
  local status=ok note
  note=$(python3 -c "
import json; d = json.load(open('$work/hf.json'))
print(d.get('skipped') or d.get('error') or ', '.join(f\"{p['batch']}: {p['status']}\" for p in d['points']))" 2>/dev/null)
  [ "$(cat "$work/hf.rc")" = 0 ] || status=failed
  record hf "$status" $(( $(elapsed) - t )) "waited; ${note:-no JSON}"
}

# ---- (a) ours at the paper's throughput setting
stage_tp7b() {
  [ -n "${prep_pid:-}" ] || start_background_prep
  wait_for "$work/m7.rc" 120 && [ "$(cat "$work/m7.rc")" = 0 ] || { record tp7b failed 0 "no 7B checkpoint"; return 1; }
  local pool; pool=$(pool_flags throughput "$m7")
  for fmt in $tp_formats; do
    local b; b=$(budget "${tp_budget[$fmt]}")
    if [ "$b" -lt 20 ]; then record "tp7b_$fmt" skipped 0 "no time left"; continue; fi
    local t1=$(elapsed) rc=0
    run $((b + 30)) "$work/tp7b.log" "$bin/tools/bench/squat-throughput" --model "$m7" --device "$device" \
        --format "$fmt" $pool --batches "${tp_batches[$fmt]}" --prompt-tokens "$tp_prompt" --gen-tokens "$tp_gen" \
        --max-num-batched-tokens 8192 --max-num-seqs "${tp_max_seqs[$fmt]}" --budget-s "$b" --fill-budget --seed 1 --label "tp7b $fmt" \
        --json "$work/tp7b_$fmt.json" || rc=$?
    record "tp7b_$fmt" $([ $rc = 0 ] && echo ok || echo failed) $(( $(elapsed) - t1 )) "rc $rc, budget ${b}s"
  done
}

# ---- (b) decode step time vs floor at 8k / 32k, (c) capacity at 32k
stage_dec8b() {
  [ -n "${prep_pid:-}" ] || start_background_prep
  wait_for "$work/m8.rc" 180 && [ "$(cat "$work/m8.rc")" = 0 ] || { record dec8b failed 0 "no 8B checkpoint"; return 1; }
  local pool; pool=$(pool_flags throughput "$m8")
  for fmt in $dec_formats; do
    local b; b=$(budget "${dec_budget[$fmt]}")
    if [ "$b" -lt 20 ]; then record "dec8b_$fmt" skipped 0 "no time left"; continue; fi
    local t1=$(elapsed) rc=0
    run $((b + 30)) "$work/dec8b.log" "$bin/tools/bench/squat-throughput" --model "$m8" --device "$device" \
        --format "$fmt" $pool --batches "$dec_batches" --prompt-tokens "$dec_prompts" --gen-tokens "$dec_gen" \
        --steady-window "$dec_window" --max-prefill-chunk "$dec_chunk" --max-num-batched-tokens "$dec_step_tokens" \
        --max-num-seqs "$dec_max_seqs" \
        --capacity-contexts "${dec_prompts##*,}" --budget-s "$b" --fill-budget --seed 1 --label "dec8b $fmt" \
        --json "$work/dec8b_$fmt.json" || rc=$?
    record "dec8b_$fmt" $([ $rc = 0 ] && echo ok || echo failed) $(( $(elapsed) - t1 )) "rc $rc, budget ${b}s"
  done
}

# ---- (d) end to end through gRPC at a fixed request rate
stage_e2e() {
  local t=$(elapsed)
  [ -n "${prep_pid:-}" ] || start_background_prep
  wait_for "$work/m7.rc" 60 && [ "$(cat "$work/m7.rc")" = 0 ] || { record e2e failed 0 "no 7B checkpoint"; return 1; }
  local b; b=$(budget 80)
  if [ "$b" -lt 40 ]; then record e2e skipped 0 "no time left"; return 0; fi
  local port=50777 pool metrics=()
  pool=$(pool_flags server "$m7")
  "$bin/server/squat-server" --help 2>&1 | grep -q metrics_port && metrics=(--metrics-port 0)
  echo "$bin/server/squat-server --model $m7 --device $device --address 127.0.0.1:$port --kv-format squat --kv-k-bits 2 --kv-v-bits 2 $pool --max-num-seqs 512 --max-waiting 1024 --max-num-batched-tokens 8192 ${metrics[*]}" >> "$work/commands.txt"
  "$bin/server/squat-server" --model "$m7" --device "$device" --address 127.0.0.1:$port --kv-format squat \
      --kv-k-bits 2 --kv-v-bits 2 $pool --max-num-seqs 512 --max-waiting 1024 --max-num-batched-tokens 8192 \
      "${metrics[@]}" > "$work/server.log" 2>&1 &
  server_pid=$!
  # Loading the model must leave time for at least one squat-bench run.
  local waited=0 patience=$(( b - 25 ))
  [ $patience -gt 120 ] && patience=120
  until "$bin/client/squat-cli" health --address 127.0.0.1:$port 2>/dev/null | grep -q '^SERVING'; do
    sleep 1; waited=$((waited + 1))
    if [ $waited -ge $patience ] || ! kill -0 $server_pid 2>/dev/null; then
      tail -20 "$work/server.log" >> "$log"
      record e2e failed $(( $(elapsed) - t )) "server not serving after ${waited}s"
      kill $server_pid 2>/dev/null; server_pid=
      return 1
    fi
  done
  say "server serving after ${waited}s"
  for fmt in $e2e_formats; do
    local per; per=$(budget 40)
    if [ "$per" -lt 20 ]; then record "e2e_$fmt" skipped 0 "no time left"; continue; fi
    local method=${fmt%-*} bits=()
    [ "$fmt" = fp16 ] && method=fp16 || bits=(--k-bits "${fmt##*-}" --v-bits "${fmt##*-}")
    local t1=$(elapsed) rc=0
    run "$per" "$work/e2e.log" "$bin/client/squat-bench" --address 127.0.0.1:$port --rate "$e2e_rate" \
        --requests "$e2e_requests" --concurrency 256 --prompt-tokens "$e2e_prompt" --max-tokens "$e2e_gen" \
        --temperature 0 --kv-method "$method" "${bits[@]}" --seed 1 --allow-errors --quiet --timeout-s $((per - 5)) \
        --json "$work/e2e_$fmt.json" || rc=$?
    record "e2e_$fmt" $([ $rc = 0 ] && echo ok || echo failed) $(( $(elapsed) - t1 )) "rc $rc, rate $e2e_rate/s, $e2e_requests requests"
  done
  kill -TERM $server_pid 2>/dev/null
  wait $server_pid 2>/dev/null
  server_pid=
  record e2e ok $(( $(elapsed) - t )) "server stopped"
}

for s in build checkpoints hf tp7b dec8b e2e; do
  wanted $s || continue
  if [ "$(remaining)" -lt 40 ] && [ $s != build ]; then record $s skipped 0 "global deadline near"; continue; fi
  case $s in
    build) stage_build || { say "build failed: the stages that need binaries are skipped"; stages="hf"; } ;;
    checkpoints) stage_checkpoints ;;
    hf) stage_hf_wait ;;
    tp7b) stage_tp7b ;;
    dec8b) stage_dec8b ;;
    e2e) stage_e2e ;;
  esac
done
# HF or a checkpoint may still run if they were not waited for.
stop_started

say "summary"
python3 tools/bench/summarize.py --work "$work" --out "$out" --mode "$mode" "${nominal_bandwidth[@]}" >> "$log" 2>&1 \
  || say "summarize.py failed"
tar -czf "$out/raw.tar.gz" -C "$work" --exclude=./models . 2>/dev/null
say "done in $(elapsed)s: $(ls "$out" | tr '\n' ' ')"
