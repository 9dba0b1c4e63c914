#!/usr/bin/env python3
"""Encodes tests/data/tokenizer_strings.json with Hugging Face `tokenizers` (the reference
implementation) and writes the expected ids the C++ tokenizer tests compare against.

Run where `tokenizers` is installed (the GPU machine):
  python3 tools/hf_tokenizer_reference.py --tokenizer DIR/llama2/tokenizer.json --name llama2 \
      --out tests/data/tokenizer_expected_llama2.json
"""
import argparse
import json

from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--strings", default="tests/data/tokenizer_strings.json")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    tok = Tokenizer.from_file(args.tokenizer)
    with open(args.strings, encoding="utf-8") as f:
        strings = json.load(f)
    cases = []
    for text in strings:
        ids = tok.encode(text, add_special_tokens=True).ids
        cases.append({
            "text": text,
            "ids": ids,
            "ids_no_special": tok.encode(text, add_special_tokens=False).ids,
            "decoded": tok.decode(ids, skip_special_tokens=True),
        })
    import tokenizers
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"tokenizer": args.name, "reference": f"tokenizers {tokenizers.__version__}",
                   "cases": cases}, f, ensure_ascii=False, indent=0)
        f.write("\n")
    print(f"{args.name}: {len(cases)} cases -> {args.out}")


if __name__ == "__main__":
    main()
