#!/usr/bin/env bash
# Checks the Dockerfile without a Docker engine:
#  1. lint: dockerfile-utils (the parser and validator behind VS Code's Dockerfile support:
#     instructions, flags, ports, stage references) and dockerfilelint (best practices);
#  2. consistency with the CMake build: the targets it builds and copies exist, the option
#     it turns off exists, and it installs every library package that tools/install_deps.sh
#     installs for the build (test-only ones and Debian's CPU LibTorch aside);
#  3. consistency with the server and the Helm chart: exposed ports, user id, model volume.
#   check_dockerfile.sh TOOLS_DIR
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 TOOLS_DIR" >&2
  exit 2
fi
tools=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
dockerfile=$root/Dockerfile
values=$root/deploy/helm/squat-serve/values.yaml
export NODE_PATH=$tools/node_modules

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# 1. Lint.
node "$tools/node_modules/dockerfile-utils/bin/dockerfile-utils" lint "$dockerfile" || fail "dockerfile-utils lint"
# dockerfilelint 1.8.0 matches HEALTHCHECK options with /--\w+/, which cuts --start-period to
# --start and calls it invalid; it sees the file without that one (valid, see above) option.
sed -E 's/ --start-period=[0-9]+[a-z]+//' "$dockerfile" > "$work/Dockerfile"
node "$tools/node_modules/dockerfilelint/bin/dockerfilelint" "$work/Dockerfile" || fail "dockerfilelint"

# Instruction lines with their continuations joined.
joined=$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$dockerfile" | grep -vE '^\s*#')
build_stage=$(awk '/^FROM /{stage++} stage == 1' <<< "$joined")
runtime_stage=$(awk '/^FROM /{stage++} stage == 2' <<< "$joined")
[[ $(grep -c '^FROM ' <<< "$joined") -eq 2 ]] || fail "expected two stages (build, runtime)"
grep -qE '^FROM nvidia/cuda:\S+-devel-' <<< "$build_stage" || fail "the build stage must start from an NVIDIA CUDA devel image"
grep -qE '^FROM nvidia/cuda:\S+-runtime-' <<< "$runtime_stage" || fail "the runtime stage must start from an NVIDIA CUDA runtime image"

# 2. The CMake build.
executables=$(grep -rhoE 'add_executable\(\s*[A-Za-z0-9_-]+' --include=CMakeLists.txt \
  "$root"/server "$root"/client "$root"/tools "$root"/runtime 2>/dev/null | sed -E 's/add_executable\(\s*//' | sort -u)
targets=$(grep -oE -- '--target( [A-Za-z0-9_-]+)+' <<< "$build_stage" | sed 's/--target//' | tr ' ' '\n' | grep . || true)
[[ -n $targets ]] || fail "the build stage builds no --target"
for target in $targets; do
  grep -qx "$target" <<< "$executables" || fail "--target $target is not an add_executable of the CMake build"
  grep -qE "build/[a-z]+/$target( |$)" <<< "$build_stage" || fail "target $target is built but never copied"
done
grep -qE -- '-DSQUAT_BUILD_TESTS=OFF' <<< "$build_stage" || fail "the build stage must pass -DSQUAT_BUILD_TESTS=OFF"
grep -qE '^option\(SQUAT_BUILD_TESTS ' "$root/CMakeLists.txt" || fail "CMakeLists.txt has no option SQUAT_BUILD_TESTS"
grep -qE -- '-DCMAKE_PREFIX_PATH=/opt/libtorch' <<< "$build_stage" || fail "the build must find LibTorch in /opt/libtorch"

# Library packages of install_deps.sh (the -dev ones and the code generators), minus those
# only tests use (the sanitizer runtime of the fuzz jobs among them) and Debian's CPU LibTorch
# (the image uses LibTorch with CUDA).
deps_packages=$(sed -n '/^packages=(/,/^)/p' "$root/tools/install_deps.sh" | sed 's/#.*//' | tr ' ' '\n' \
  | grep -E -- '(-dev|^protobuf-compiler(-grpc)?)$' \
  | grep -vxE 'libtorch-dev|libgtest-dev|libgmock-dev|libbenchmark-dev|libclang-rt-[0-9]+-dev' || true)
[[ -n $deps_packages ]] || fail "no library packages found in tools/install_deps.sh"
apt_line=$(grep -E 'apt-get install' <<< "$build_stage" || true)
for package in $deps_packages; do
  grep -qE "(^| )$(sed 's/[+]/\\+/g' <<< "$package")( |$)" <<< "$apt_line" \
    || fail "tools/install_deps.sh installs $package for the build; the Dockerfile's build stage does not"
done

# 3. The server and the chart.
chart_value() {  # dotted.path in values.yaml
  node -e '
    const v = require("yaml").parse(require("fs").readFileSync(process.argv[1], "utf8"));
    console.log(process.argv[2].split(".").reduce((o, k) => o[k], v));' "$values" "$1"
}
exposed=$(grep -E '^EXPOSE ' <<< "$runtime_stage" | sed 's/^EXPOSE //' | tr ' ' '\n' | sort -n | tr '\n' ' ')
server_metrics_default=$(grep -A1 -E 'ABSL_FLAG\(int32_t, *metrics_port' "$root"/server/*.cpp | grep -oE 'metrics_port, *[0-9]+' | grep -oE '[0-9]+$' || true)
for port in "$(chart_value server.grpcPort)" "$(chart_value server.metricsPort)" "$server_metrics_default"; do
  [[ -n $port ]] || { fail "could not read a port"; continue; }
  [[ " $exposed" == *" $port "* ]] || fail "port $port (chart default or server default) is not EXPOSEd (EXPOSE $exposed)"
done
uid=$(chart_value podSecurityContext.runAsUser)
grep -qE "^USER $uid(:|$)" <<< "$runtime_stage" || fail "USER must be the chart's runAsUser $uid"
grep -qE -- "--uid $uid " <<< "$runtime_stage" || fail "the image must create the user with uid $uid"
grep -qE '^VOLUME \["/models"\]' <<< "$runtime_stage" || fail 'VOLUME ["/models"] (the chart mounts the model there)'
grep -qE '^HEALTHCHECK .*squat-cli health' <<< "$runtime_stage" || fail "HEALTHCHECK must use squat-cli health (grpc.health.v1)"
grep -qE '^ENTRYPOINT \["/opt/squat-serve/bin/squat-server"\]' <<< "$runtime_stage" \
  || fail "ENTRYPOINT must exec squat-server directly (exec form: it receives SIGTERM)"
grep -qE '^STOPSIGNAL SIGTERM' <<< "$runtime_stage" || fail "STOPSIGNAL SIGTERM (the server drains on it)"

if [[ $failures -gt 0 ]]; then
  echo "check_dockerfile: $failures failure(s)" >&2
  exit 1
fi
echo "check_dockerfile: Dockerfile OK (targets: $(tr '\n' ' ' <<< "$targets"); EXPOSE $exposed; uid $uid)"
