#!/usr/bin/env bash
# Builds the tiny model's training corpus from Debian text packages (a manual step before
# retraining; `make run` and `make test` never run it). Debian bookworm, network to the
# Debian archive, python3 and perl (pod2text) from the base system.
#
#   tools/train_tiny/prepare_corpus.sh [OUT_DIR] [WORK_DIR]
#
# OUT_DIR (default .gpu_in/corpus) receives train.jsonl.xz, heldout.jsonl.xz, stats.json and
# manifest.tsv (package, version, .deb SHA-256). The packages are downloaded and unpacked
# under WORK_DIR (default /tmp/squat-corpus-debs) rather than installed: nothing on the
# system changes, and dict-* packages pull in no dictd daemon.
set -euo pipefail

out_dir=${1:-.gpu_in/corpus}
work_dir=${2:-/tmp/squat-corpus-debs}
here=$(cd "$(dirname "$0")" && pwd)

packages=(
  bible-kjv-text bible-kjv   # KJV text, and the reader program that decodes its data file
  fortunes fortunes-min
  dict-devil dict-gcide
  jargon-text gnu-standards
  debian-handbook debian-reference-en
  perl-doc python3.11-doc linux-doc-6.1
)

mkdir -p "$work_dir/debs" "$work_dir/root" "$out_dir"
if [[ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ]]; then
  apt-get update
fi
(cd "$work_dir/debs" && apt-get download "${packages[@]}")

printf 'package\tversion\tsha256\n' > "$out_dir/manifest.tsv"
for name in "${packages[@]}"; do
  deb=$(ls "$work_dir/debs/${name}"_*.deb | head -n 1)
  rm -rf "$work_dir/root/$name"
  dpkg-deb -x "$deb" "$work_dir/root/$name"
  printf '%s\t%s\t%s\n' "$name" "$(dpkg-deb -f "$deb" Version)" "$(sha256sum "$deb" | cut -d' ' -f1)" \
    >> "$out_dir/manifest.tsv"
done

# The KJV ships in the reader's own compressed format; its reader prints it, one verse a line.
"$work_dir/root/bible-kjv/usr/bin/bible" -p "$work_dir/root/bible-kjv-text/usr/lib" -l100000 \
  "Gen1:1-Rev22:21" < /dev/null > "$work_dir/kjv.txt"

/usr/bin/python3 "$here/extract_corpus.py" --root "$work_dir/root" --bible-text "$work_dir/kjv.txt" \
  --out "$out_dir"
ls -l "$out_dir"
