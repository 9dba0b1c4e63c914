#!/usr/bin/env bash
# Bounded loopback soak of squat-server (docs/reliability.md): builds squat-soak and the
# server in an existing build directory, then runs the soak against the tiny checkpoint.
#
#   tests/soak/run_soak.sh [DURATION_S] [extra squat-soak flags...]     (default 90 s measured)
#
# Environment: SQUAT_SOAK_BUILD_DIR (default build/release), SQUAT_SOAK_JOBS (default 2).
set -euo pipefail
cd "$(dirname "$0")/../.."

duration="${1:-90}"
shift || true
build_dir="${SQUAT_SOAK_BUILD_DIR:-build/release}"
jobs="${SQUAT_SOAK_JOBS:-2}"

[ -f "$build_dir/CMakeCache.txt" ] || cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build_dir" --target squat-soak squat-server squat-make-checkpoint -j"$jobs"

model="$build_dir/soak_model"
[ -f "$model/config.json" ] || "$build_dir/tools/squat-make-checkpoint" --preset tiny --seed 11 --out "$model" >/dev/null

"$build_dir/tests/squat-soak" --server-bin "$build_dir/server/squat-server" --model "$model" \
  --duration-s "$duration" --json "$build_dir/soak_report.json" "$@"
