#!/usr/bin/env bash
# Verification on the GPU machine (see ../shared/device/README.md): builds with the CUDA
# LibTorch, runs the test suite, and compares the C++ runtime's logits with HF transformers
# and its tokenizer with HF tokenizers. Usage (from the repo root, after
# `bash ../shared/device/prepare.sh` here, with the real tokenizer.json files copied to
# .gpu_in/{llama2,llama3}.json and ../shared/squat_testdata to .gpu_in/squat_testdata):
#   bash tools/gpu_check.sh OUTDIR
set -euo pipefail
out=${1:?output dir}
mkdir -p "$out"
source .device/env.sh
build=build-gpu
cmake -S . -B $build -DCMAKE_BUILD_TYPE=Release > "$out/configure.log" 2>&1 || { tail -50 "$out/configure.log"; exit 1; }
cmake --build $build -j16 > "$out/build.log" 2>&1 || { grep -E "error|FAILED" "$out/build.log" | head -40; exit 1; }
echo "build ok"

# Tests read ../shared/squat_testdata, which does not travel with the working tree.
if [ ! -f ../shared/squat_testdata/q_32x128_f32le.bin ]; then
  mkdir -p ../shared && cp -r .gpu_in/squat_testdata ../shared/
fi
# The tokenizer fixture fetches from npm, which this machine cannot reach: pre-place the files.
for n in llama2 llama3; do
  mkdir -p $build/test_tokenizers/$n && cp .gpu_in/$n.json $build/test_tokenizers/$n/tokenizer.json
done
(cd $build && ctest -j8 --output-on-failure > "$out/ctest.log" 2>&1) || true
tail -15 "$out/ctest.log"

# Logits vs HF transformers in float32, on CPU and CUDA, for several checkpoint shapes.
gen=$build/tools/squat-make-checkpoint
models=$build/gpu_models
rm -rf $models && mkdir -p $models
$gen --preset tiny --seed 11 --init-std 0.2 --out $models/tiny > /dev/null
$gen --preset tiny-qwen2 --seed 12 --init-std 0.2 --out $models/tiny-qwen2 > /dev/null
$gen --preset tiny --seed 13 --init-std 0.2 --rope-scaling-llama3 --max-position-embeddings 4096 \
     --num-kv-heads 1 --dtype bfloat16 --shards 2 --out $models/tiny-llama3-bf16 > /dev/null
$gen --preset tiny --seed 14 --hidden-size 1024 --num-heads 8 --num-kv-heads 2 --head-dim 128 \
     --intermediate-size 2816 --num-layers 4 --vocab-size 32000 --dtype float16 --out $models/mid-f16 > /dev/null
python3 tools/hf_compare.py --dump-bin $build/tools/squat-dump-logits \
  --model $models/tiny --model $models/tiny-qwen2 --model $models/tiny-llama3-bf16 --model $models/mid-f16 \
  --devices cpu,cuda --cpp-dtypes float32 --out "$out/hf_compare.json" 2>&1 | tee "$out/hf_compare.log" | tail -40

# End to end on CUDA: the real server and client, greedy, compared with the CPU server.
e2e=$build/e2e && mkdir -p $e2e
for dev in cpu cuda; do
  port=$([ $dev = cpu ] && echo 50071 || echo 50072)
  $build/server/squat-server --model $models/tiny --device $dev --address 127.0.0.1:$port > "$e2e/server_$dev.log" 2>&1 &
  pid=$!
  for i in $(seq 1 60); do $build/client/squat-cli health --address 127.0.0.1:$port 2>/dev/null | grep -q '^SERVING' && break; sleep 1; done
  for method in fp16 kivi squat squat-post; do
    $build/client/squat-cli generate "The quick brown fox jumps over the lazy dog and keeps running far away" \
       --max-tokens 48 --temperature 0 --ignore-eos --kv-method $method \
       --address 127.0.0.1:$port --json > "$e2e/generate_${dev}_$method.json"
  done
  $build/client/squat-cli info --address 127.0.0.1:$port --json > "$e2e/info_$dev.json"
  kill -TERM $pid; wait $pid && echo "server on $dev exited 0 after SIGTERM"
done
python3 - "$e2e" <<'PY'
import json, sys
for method in ["fp16", "kivi", "squat", "squat-post"]:
    ids = [json.load(open(f"{sys.argv[1]}/generate_{dev}_{method}.json")).get("token_ids") for dev in ("cpu", "cuda")]
    print(f"{method:10s} greedy cpu == cuda: {ids[0] == ids[1]}  cpu {ids[0][:12]}...  cuda {ids[1][:12]}...")
PY
