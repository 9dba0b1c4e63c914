#!/usr/bin/env bash
# Sanitizer CI jobs (docs/reliability.md). Each builds, in its own build directory with g++,
# only the test binaries it runs plus the binaries those tests start, then runs them:
#
#   tools/sanitizer_check.sh asan   # ASan + UBSan (+ LeakSanitizer): unit and integration tests
#   tools/sanitizer_check.sh tsan   # ThreadSanitizer: engine / scheduler and server tests
#
# Every sanitizer report (from a test or from a squat-server it started) is written under
# $BUILD_DIR/sanitizer-reports/; the job fails if a test fails or any report exists.
# Environment: SQUAT_SANITIZER_BUILD_DIR (default build/<mode>), SQUAT_SANITIZER_JOBS (2),
# SQUAT_SANITIZER_TESTS (space-separated subset of the mode's test binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

mode="${1:-}"
supp="$root/tools/sanitizer_suppressions"
case "$mode" in
  asan)
    compile_flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
    link_flags="-fsanitize=address,undefined"
    default_tests="tokenizer_test model_config_test safetensors_test sampler_test checkpoint_generator_test
      squat_math_test kv_cache_test step_runner_test sequence_test engine_test scheduler_test server_e2e_test
      server_bad_checkpoint_test server_tls_test"
    ;;
  tsan)
    compile_flags="-fsanitize=thread -fno-omit-frame-pointer"
    link_flags="-fsanitize=thread"
    default_tests="engine_test scheduler_test server_e2e_test server_tls_test load_test"
    ;;
  *)
    echo "usage: tools/sanitizer_check.sh asan|tsan" >&2
    exit 2
    ;;
esac
tests="${SQUAT_SANITIZER_TESTS:-$default_tests}"
build_dir="$root/${SQUAT_SANITIZER_BUILD_DIR:-build/$mode}"
jobs="${SQUAT_SANITIZER_JOBS:-2}"

# -O1 keeps the instrumented tests fast enough; no NDEBUG, so assertions stay on.
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_CXX_FLAGS="$compile_flags" \
    -DCMAKE_EXE_LINKER_FLAGS="$link_flags" -DCMAKE_SHARED_LINKER_FLAGS="$link_flags" >/dev/null
fi
start=$(date +%s)
# shellcheck disable=SC2086  # word splitting of the target list is intended
cmake --build "$build_dir" --target $tests squat-server squat-cli squat-bench squat-make-checkpoint -j"$jobs"
echo "sanitizer_check $mode: built in $(( $(date +%s) - start ))s"

reports="$build_dir/sanitizer-reports"
rm -rf "$reports"
mkdir -p "$reports"
# Reports go to files so that those of server child processes are caught too.
export ASAN_OPTIONS="log_path=$reports/asan:detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=0"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="log_path=$reports/ubsan:print_stacktrace=1:halt_on_error=1"
# ignore_noninstrumented_modules: Debian's gRPC, abseil, OpenSSL, protobuf and LibTorch are not
# built with -fsanitize=thread, so TSan cannot see the synchronisation inside them and would
# report their internal hand-offs (malloc in one gRPC thread, use in another) as races. With
# it, intercepted calls (malloc, memcpy, ...) made from those libraries are not checked;
# every access made by our own code still is.
export TSAN_OPTIONS="log_path=$reports/tsan:halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1:suppressions=$supp/tsan.supp"
# One OpenMP / OpenBLAS thread: LibTorch's uninstrumented pools would only add noise to TSan,
# and the CI machine has 2 cores anyway.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

ctest --test-dir "$build_dir" -R '^(make_tiny_checkpoint|fetch_test_tokenizers)$' --output-on-failure >/dev/null

failed=()
for t in $tests; do
  t_start=$(date +%s)
  if "$build_dir/tests/$t" --gtest_brief=1 >"$reports/$t.log" 2>&1; then
    echo "sanitizer_check $mode: $t passed ($(( $(date +%s) - t_start ))s)"
  else
    echo "sanitizer_check $mode: $t FAILED ($(( $(date +%s) - t_start ))s)" >&2
    tail -n 40 "$reports/$t.log" >&2
    failed+=("$t")
  fi
done

found=$(find "$reports" -name 'asan.*' -o -name 'ubsan.*' -o -name 'tsan.*' | sort)
if [ -n "$found" ]; then
  echo "sanitizer_check $mode: sanitizer reports:" >&2
  for f in $found; do
    echo "---- $f" >&2
    head -n 60 "$f" >&2
  done
  failed+=("reports")
fi
echo "sanitizer_check $mode: total $(( $(date +%s) - start ))s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "sanitizer_check $mode: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "sanitizer_check $mode: passed"
