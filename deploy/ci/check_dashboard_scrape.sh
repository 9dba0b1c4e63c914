#!/usr/bin/env bash
# The dashboard and the alert rules against the real server: starts squat-server with
# --metrics-port on a small checkpoint, sends a few requests (two KV formats, one refused
# request so that the error counter has a series), scrapes /metrics and fails unless every
# metric that deploy/grafana/squat-serve.json and deploy/prometheus/squat-serve.rules.yaml
# select is exported (check_metric_names.cjs). Then SIGTERM must drain and exit 0.
#   check_dashboard_scrape.sh TOOLS_DIR SQUAT_SERVER_BIN SQUAT_CLI_BIN MODEL_DIR
set -euo pipefail

if [[ $# -ne 4 ]]; then
  echo "usage: $0 TOOLS_DIR SQUAT_SERVER_BIN SQUAT_CLI_BIN MODEL_DIR" >&2
  exit 2
fi
tools=$(cd "$1" && pwd)
server_bin=$2
cli_bin=$3
model_dir=$4
here=$(cd "$(dirname "$0")" && pwd)
deploy=$(cd "$here/.." && pwd)
export NODE_PATH=$tools/node_modules

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

die() {
  echo "FAIL: $*" >&2
  echo "--- server log" >&2
  tail -n 40 "$work/server.log" >&2 || true
  exit 1
}

# Two free loopback ports (the kernel picks them; released just before the server binds them).
read -r grpc_port metrics_port < <(node -e '
  const net = require("net");
  const pick = () => new Promise((ok) => { const s = net.createServer().listen(0, "127.0.0.1", () => {
    const p = s.address().port; s.close(() => ok(p)); }); });
  Promise.all([pick(), pick()]).then((p) => console.log(p.join(" ")));')
address=127.0.0.1:$grpc_port

"$server_bin" --model "$model_dir" --address "$address" --metrics-port "$metrics_port" \
  --metrics-address 127.0.0.1 --kv-pool-mib 64 --drain-timeout-s 10 > "$work/server.log" 2>&1 &
server_pid=$!

for _ in $(seq 1 120); do
  kill -0 "$server_pid" 2>/dev/null || die "squat-server exited during start-up"
  [[ $("$cli_bin" health --address "$address" --timeout-s 2 2>/dev/null || true) == SERVING ]] && break
  sleep 0.5
done
[[ $("$cli_bin" health --address "$address" --timeout-s 2 2>/dev/null || true) == SERVING ]] \
  || die "squat-server did not report SERVING within 60 s"

# Fresh prompts each run; two KV formats so that per-format series exist for both.
words=(river stone lamp orbit maple quiet signal harbor copper field)
prompt() { local p=""; for _ in 1 2 3 4 5 6; do p+="${words[RANDOM % ${#words[@]}]} "; done; echo "$p"; }
"$cli_bin" generate "$(prompt)" --address "$address" --max-tokens 8 --seed "$RANDOM" > "$work/generate.out" 2>&1 \
  || die "generate failed"
"$cli_bin" stream "$(prompt)" --address "$address" --max-tokens 8 --seed "$RANDOM" --kv-method fp16 \
  > "$work/stream.out" 2>&1 || die "stream with --kv-method fp16 failed"
# 3-bit keys do not exist: INVALID_ARGUMENT, counted in squat_request_errors_total{code}.
if "$cli_bin" generate "$(prompt)" --address "$address" --max-tokens 4 --kv-method kivi --k-bits 3 \
     > "$work/refused.out" 2>&1; then
  die "a request with 3-bit keys was accepted"
fi

node -e '
  fetch(process.argv[1]).then(async (r) => {
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    require("fs").writeFileSync(process.argv[2], await r.text());
  }).catch((e) => { console.error(`GET ${process.argv[1]}: ${e.message}`); process.exit(1); });' \
  "http://127.0.0.1:$metrics_port/metrics" "$work/scrape.txt" || die "cannot scrape /metrics"
echo "scraped $(grep -cv '^#' "$work/scrape.txt") samples from http://127.0.0.1:$metrics_port/metrics"

status=0
node "$here/check_metric_names.cjs" --scrape "$work/scrape.txt" \
  --dashboard "$deploy/grafana/squat-serve.json" --rules "$deploy/prometheus/squat-serve.rules.yaml" || status=$?

kill -TERM "$server_pid"
server_exit=0
wait "$server_pid" || server_exit=$?
server_pid=""
[[ $server_exit -eq 0 ]] || die "squat-server exited with $server_exit after SIGTERM (expected a clean drain)"
grep -q 'drained' "$work/server.log" || die "no drain message after SIGTERM"
if [[ $status -ne 0 ]]; then
  echo "--- scrape" >&2
  grep -v '^#' "$work/scrape.txt" | sed -E 's/\{.*//; s/ .*//' | sort -u >&2
  exit "$status"
fi
echo "check_dashboard_scrape: every metric of the dashboard and the rules is exported by squat-server"
