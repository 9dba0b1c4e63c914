#!/usr/bin/env bash
# Checks the Helm chart deploy/helm/squat-serve:
#  1. `helm lint --strict` and `helm template` with the default values and every
#     ci/*-values.yaml (KEDA, hostPath, TLS + auth, HPA, Prometheus operator objects, ...);
#  2. every rendered object validates against the Kubernetes / Prometheus operator / KEDA
#     schemas, unknown fields included (validate_k8s.cjs);
#  3. the real squat-server accepts every rendered flag file (`--flagfile=F --version` parses
#     all flags, then exits), and every flag that values.schema.json allows is defined in server/;
#  4. values the chart must refuse are refused (schema and template guards).
#   check_helm.sh TOOLS_DIR SQUAT_SERVER_BIN
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 TOOLS_DIR SQUAT_SERVER_BIN" >&2
  exit 2
fi
tools=$(cd "$1" && pwd)
server_bin=$2
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
chart=$root/deploy/helm/squat-serve
helm=$tools/bin/helm
export NODE_PATH=$tools/node_modules

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# helm writes caches and config under these; keep them out of $HOME.
export HELM_CACHE_HOME=$work/helm-cache HELM_CONFIG_HOME=$work/helm-config HELM_DATA_HOME=$work/helm-data

failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# The dashboard and rules reach the chart through symbolic links, never through copies.
for link in files/squat-serve.json files/squat-serve.rules.yaml; do
  [[ -L $chart/$link && -f $chart/$link ]] || fail "$chart/$link must be a symbolic link to an existing file"
done

# helm reports each followed link on stderr; keep stderr for failures only.
run_helm() {  # name args...
  local name=$1; shift
  if ! "$helm" "$@" > "$work/$name.out" 2> "$work/$name.err"; then
    cat "$work/$name.out" "$work/$name.err" >&2
    return 1
  fi
}

value_sets=(default)
for values in "$chart"/ci/*-values.yaml; do value_sets+=("$values"); done

for values in "${value_sets[@]}"; do
  name=$(basename "$values" .yaml)
  args=()
  [[ $values == default ]] || args=(-f "$values")
  echo "== $name"
  run_helm "lint-$name" lint --strict "$chart" "${args[@]}" || { fail "helm lint ($name)"; continue; }
  grep -E '^\[(WARNING|ERROR)\]' "$work/lint-$name.out" && fail "helm lint reported problems ($name)"
  run_helm "render-$name" template squat "$chart" --namespace inference "${args[@]}" \
    || { fail "helm template ($name)"; continue; }
  rendered=$work/render-$name.out
  node "$here/validate_k8s.cjs" "$rendered" || fail "rendered objects are invalid ($name)"

  node "$here/extract_flagfile.cjs" "$rendered" "$work/$name.flags" || { fail "no flag file ($name)"; continue; }
  if "$server_bin" --flagfile="$work/$name.flags" --version > "$work/$name.version" 2>&1; then
    echo "squat-server accepts the $(grep -c '^--' "$work/$name.flags") flags of $name"
  else
    cat "$work/$name.version" >&2
    fail "squat-server rejects the flag file rendered with $name:"
    cat "$work/$name.flags" >&2
  fi
done

# The server check above must be able to fail: a flag file with an unknown flag is rejected.
printf -- '--kv_format=squat\n--no_such_flag_for_check_helm=1\n' > "$work/bogus.flags"
if "$server_bin" --flagfile="$work/bogus.flags" --version > /dev/null 2>&1; then
  fail "squat-server --flagfile=... --version accepted an unknown flag: the flag check proves nothing"
fi

# Every flag that the schema lets a user set must be defined by the server.
schema_flags=$(node -e '
  const schema = require(process.argv[1]);
  console.log(Object.keys(schema.properties.serverFlags.properties).join("\n"));' "$chart/values.schema.json")
defined_flags=$(grep -hoE 'ABSL_FLAG\([^,]+, *[a-z0-9_]+' "$root"/server/*.cpp | sed -E 's/.*, *//' | sort -u)
for flag in $schema_flags; do
  grep -qx "$flag" <<< "$defined_flags" || fail "values.schema.json allows serverFlags.$flag, which server/ does not define"
done
echo "values.schema.json: $(wc -w <<< "$schema_flags") server flags, all defined in server/"

# Values that must be refused, each with the reason it must give.
expect_refusal() {  # reason-pattern helm-set-args...
  local pattern=$1; shift
  if "$helm" template squat "$chart" "$@" > /dev/null 2> "$work/refusal.err"; then
    fail "helm template accepted $*"
  elif ! grep -qE "$pattern" "$work/refusal.err"; then
    cat "$work/refusal.err" >&2
    fail "helm template refused $* for another reason than /$pattern/"
  else
    echo "refused as expected: $*"
  fi
}
expect_refusal 'kv_k_bits' --set serverFlags.kv_k_bits=3
expect_refusal 'kv_formt' --set serverFlags.kv_formt=kivi
expect_refusal 'mode' --set autoscaling.enabled=true --set autoscaling.mode=vpa
expect_refusal 'auth.enabled needs tls.enabled' --set auth.enabled=true --set auth.secretName=t
expect_refusal 'tls.enabled needs tls.secretName' --set tls.enabled=true
expect_refusal 'terminationGracePeriodSeconds' --set server.terminationGracePeriodSeconds=30
expect_refusal 'liveness' --set server.drainTimeoutSeconds=120 --set server.terminationGracePeriodSeconds=200
expect_refusal 'minReplicas' --set autoscaling.enabled=true --set autoscaling.minReplicas=5

if [[ $failures -gt 0 ]]; then
  echo "check_helm: $failures failure(s)" >&2
  exit 1
fi
echo "check_helm: chart OK (${#value_sets[@]} value sets)"
