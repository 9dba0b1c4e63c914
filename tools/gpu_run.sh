#!/usr/bin/env bash
# One device call (../shared/device/README.md): build with the CUDA LibTorch, run the GPU tests
# (ctest label gpu, plus the CUDA cases of the unit suites), then the GPU benchmark stages, all
# under one deadline. From the repository root, with .device/ carried:
#   bash tools/gpu_run.sh OUTDIR [bench stage ...]      (stages of tools/bench/gpu_bench.sh;
#                                                        none: tests only; "-": no tests)
# Environment: SQUAT_RUN_DEADLINE_S (560), SQUAT_TEST_BUDGET_S (200: the tests' share).
# OUTDIR gets build.log, tests.log, tests.xml-less summaries, and the bench's files under bench/.
set -u
out=${1:?usage: gpu_run.sh OUTDIR [stage ...]}
shift
mkdir -p "$out"
T0=$(date +%s)
deadline=${SQUAT_RUN_DEADLINE_S:-560}
test_budget=${SQUAT_TEST_BUDGET_S:-200}
left() { echo $(( deadline - ($(date +%s) - T0) )); }
say() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$out/run.log"; }
skip_tests=false
if [ "${1:-}" = "-" ]; then skip_tests=true; shift; fi
stages=$*

source .device/env.sh
build=build-gpu
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$out/run.log" 2>&1
git log --oneline -1 >> "$out/run.log" 2>&1
say "configure"
cmake -S . -B $build -DCMAKE_BUILD_TYPE=Release -DSQUAT_BUILD_TESTS=ON > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
targets="squat-make-checkpoint squat-throughput squat-server squat-bench squat-cli"
$skip_tests || targets="$targets kernels_gpu_test gpu_decode_test gpu_engine_test squat_state_gpu_test kv_cache_test step_runner_test"
say "build $targets"
cmake --build $build -j16 --target $targets >> "$out/build.log" 2>&1 || { grep -E "error|FAILED" "$out/build.log" | head -40; exit 1; }
say "built"

if ! $skip_tests; then
  # The tests' fixtures: the tiny checkpoint (and the shared test data the CUDA cases do not need).
  $build/tools/squat-make-checkpoint --preset tiny --seed 7 --out $build/test_models/tiny-llama > /dev/null 2>&1
  run_test() {  # run_test LIMIT BINARY [gtest args]
    local limit=$1 bin=$2 rc=0; shift 2
    say "test $bin $* (<= ${limit}s)"
    timeout -k 5 "$limit" "$build/tests/$bin" "$@" >> "$out/tests.log" 2>&1 || rc=$?
    grep -E "^\[  (PASSED|FAILED)  \]|^\[  SKIPPED \] [0-9]+ test" "$out/tests.log" | tail -2 | sed 's/^/    /' | tee -a "$out/run.log"
    say "  $bin rc $rc"
  }
  t_end=$(( $(date +%s) + test_budget ))
  share() { local s=$(( t_end - $(date +%s) )); [ $s -gt "$1" ] && s=$1; [ $s -lt 10 ] && s=10; echo $s; }
  run_test "$(share 30)" kernels_gpu_test --gtest_filter='-*Timing*'
  run_test "$(share 90)" gpu_decode_test --gtest_filter='-*Timing*'
  run_test "$(share 40)" kv_cache_test --gtest_filter='*cuda*:*Cuda*'
  run_test "$(share 40)" gpu_engine_test
  run_test "$(share 30)" kernels_gpu_test --gtest_filter='*Timing*'
  run_test "$(share 30)" gpu_decode_test --gtest_filter='*Timing*'
fi

if [ -n "$stages" ]; then
  remaining=$(( $(left) - 10 ))
  say "bench stages: $stages (deadline ${remaining}s)"
  SQUAT_BENCH_BUILD=$build SQUAT_BENCH_DEADLINE_S=$remaining bash tools/bench/gpu_bench.sh "$out/bench" $stages \
    >> "$out/run.log" 2>&1
fi
say "done"
