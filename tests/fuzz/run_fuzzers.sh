#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) in their own build directory, replays the
# committed seed corpus and regression inputs, then fuzzes each target for a bounded time.
# Exits 1 if any input crashes; the crashing input is kept under $BUILD_DIR/fuzz-artifacts/.
#
#   tests/fuzz/run_fuzzers.sh [SECONDS_PER_TARGET]      (default 20)
#
# Environment: SQUAT_FUZZ_BUILD_DIR (default build/fuzz), SQUAT_FUZZ_TARGETS (space-separated
# subset), SQUAT_FUZZ_JOBS (build parallelism, default 2).
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds="${1:-20}"
build_dir="${SQUAT_FUZZ_BUILD_DIR:-build/fuzz}"
jobs="${SQUAT_FUZZ_JOBS:-2}"
all_targets="fuzz_tokenizer_encode fuzz_tokenizer_decode fuzz_tokenizer_json fuzz_safetensors fuzz_model_config fuzz_request_validation"
targets="${SQUAT_FUZZ_TARGETS:-$all_targets}"
fuzz_dir="tests/fuzz"

if ! command -v clang++ >/dev/null; then
  echo "run_fuzzers: clang++ not found (tools/install_deps.sh installs clang and libclang-rt-14-dev)" >&2
  exit 1
fi

if [ ! -f "$build_dir/build.ninja" ] && [ ! -f "$build_dir/Makefile" ]; then
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  CC=clang CXX=clang++ cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSQUAT_BUILD_FUZZERS=ON >/dev/null
fi
build_start=$(date +%s)
cmake --build "$build_dir" --target squat_fuzzers -j"$jobs"
echo "run_fuzzers: built in $(( $(date +%s) - build_start ))s"

artifacts="$build_dir/fuzz-artifacts"
mkdir -p "$artifacts"
failed=()
summary=()
for target in $targets; do
  binary="$build_dir/tests/fuzz/$target"
  [ -x "$binary" ] || { echo "run_fuzzers: no $binary" >&2; exit 1; }
  # Known inputs first: the seeds and every input that once crashed.
  known=()
  for dir in "$fuzz_dir/corpus/$target" "$fuzz_dir/regressions/$target"; do
    [ -d "$dir" ] && while IFS= read -r -d '' f; do known+=("$f"); done < <(find "$dir" -type f -print0)
  done
  if [ ${#known[@]} -gt 0 ] && ! "$binary" -runs=1 "${known[@]}" >"$artifacts/$target.replay.log" 2>&1; then
    echo "run_fuzzers: $target fails on a committed input; see $artifacts/$target.replay.log" >&2
    tail -n 30 "$artifacts/$target.replay.log" >&2
    failed+=("$target (replay)")
    continue
  fi
  # New inputs go to a scratch corpus in the build directory, never into the repository.
  scratch="$build_dir/fuzz-corpus/$target"
  mkdir -p "$scratch"
  dict=()
  case "$target" in
    fuzz_tokenizer_json | fuzz_safetensors | fuzz_model_config) dict=(-dict="$fuzz_dir/json.dict") ;;
  esac
  log="$artifacts/$target.log"
  if "$binary" "$scratch" "$fuzz_dir/corpus/$target" "${dict[@]}" -max_total_time="$seconds" -timeout=10 \
      -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 -artifact_prefix="$artifacts/$target-" \
      >"$log" 2>&1; then
    runs=$(grep -Eo 'Done [0-9]+ runs' "$log" | grep -Eo '[0-9]+' || echo "?")
    summary+=("$target: $runs runs in ${seconds}s, no crash")
  else
    echo "run_fuzzers: $target crashed; input under $artifacts/$target-*" >&2
    grep -E 'ERROR|SUMMARY|check failed|runtime error' "$log" | head -n 10 >&2 || true
    failed+=("$target")
  fi
done

printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "run_fuzzers: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "run_fuzzers: all targets passed"
