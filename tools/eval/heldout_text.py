#!/usr/bin/env python3
"""Writes the held-out split of tools/train_tiny's corpus as one text file for squat-eval.

  python3 tools/eval/heldout_text.py .gpu_in/corpus/heldout.jsonl.xz /tmp/heldout.txt

Documents are joined as the training stream joined them: <|begin_of_text|> text <|end_of_text|>
(squat-eval's tokenizer matches the special tokens in the text). --plain joins them with blank
lines instead, for models that do not know those tokens.
"""
import argparse
import json
import lzma

ap = argparse.ArgumentParser()
ap.add_argument("heldout", help="heldout.jsonl.xz from tools/train_tiny/prepare_corpus.sh")
ap.add_argument("out")
ap.add_argument("--plain", action="store_true")
args = ap.parse_args()
with lzma.open(args.heldout, "rt", encoding="utf-8") as f:
    docs = [json.loads(line)["text"] for line in f if line.strip()]
if args.plain:
    text = "\n\n".join(docs)
else:
    text = "".join(f"<|begin_of_text|>{d}<|end_of_text|>" for d in docs)
with open(args.out, "w", encoding="utf-8") as f:
    f.write(text)
print(f"{len(docs)} documents, {len(text)} characters -> {args.out}")
