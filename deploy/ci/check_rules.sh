#!/usr/bin/env bash
# Checks deploy/prometheus: `promtool check rules` (syntax, PromQL), `promtool test rules`
# (the unit tests), and that every alert has at least one test case that expects it to fire.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
rules_dir=$(cd "$here/../prometheus" && pwd)
command -v promtool >/dev/null || {
  echo "check_rules: promtool is missing (Debian package prometheus; tools/install_deps.sh)" >&2
  exit 1
}

promtool check rules "$rules_dir/squat-serve.rules.yaml"
(cd "$rules_dir" && promtool test rules squat-serve.rules.test.yaml)

# promtool does not require a test per rule; a rule nobody tests could never be seen to fire.
untested=0
for alert in $(sed -nE 's/^ *- alert: *([A-Za-z0-9_]+).*/\1/p' "$rules_dir/squat-serve.rules.yaml"); do
  # A test block for the alert whose exp_alerts list is not empty.
  if ! awk -v name="$alert" '
      $0 ~ "alertname: *" name "$" {inside = 1; next}
      inside && /alertname:/ {inside = 0}
      inside && /exp_labels:/ {found = 1}
      END {exit !found}' "$rules_dir/squat-serve.rules.test.yaml"; then
    echo "FAIL: no test case expects alert $alert to fire" >&2
    untested=$((untested + 1))
  fi
done
[[ $untested -eq 0 ]] || exit 1
echo "check_rules: every alert has a firing test case"
