#!/usr/bin/python3
"""Checks a trained model directory against squat-serve's own C++ runtime (CPU): starts
squat-server on it, then compares with what transformers / HF tokenizers produced on the GPU
machine (training_report.json): token ids of every sample prompt and held-out snippet, and the
greedy continuation of every sample prompt with the fp16 KV cache and with the server's
default (2-bit SQuat). Standard library only.

  tools/train_tiny/check_runtime.py --model models/tiny-english --build build/release \
      [--report models/tiny-english/training_report.json] [--out check.json]
"""
import argparse
import json
import pathlib
import socket
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(build, address, *args):
    result = subprocess.run([str(build / "client/squat-cli"), "--address", address, "--json", *args],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=pathlib.Path)
    ap.add_argument("--build", required=True, type=pathlib.Path)
    ap.add_argument("--report", type=pathlib.Path, help="default: MODEL/training_report.json")
    ap.add_argument("--out", type=pathlib.Path)
    args = ap.parse_args()
    report = json.loads((args.report or args.model / "training_report.json").read_text(encoding="utf-8"))
    evaluation = report["evaluation"]

    address = f"127.0.0.1:{free_port()}"
    server = subprocess.Popen([str(args.build / "server/squat-server"), "--model", str(args.model),
                               "--address", address], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(120):
            try:
                if subprocess.run([str(args.build / "client/squat-cli"), "--address", address, "health"],
                                  capture_output=True, text=True).stdout.strip() == "SERVING":
                    break
            except OSError:
                pass
            if server.poll() is not None:
                sys.exit(f"squat-server exited: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
        else:
            sys.exit("squat-server did not become SERVING in 60 s")

        tokenizer_checks = []
        for case in [{"text": s["prompt"], "ids": s["prompt_ids"]} for s in evaluation["samples"]] + \
                evaluation.get("tokenizer_cases", []):
            ours = cli(args.build, address, "tokenize", case["text"])["token_ids"]
            tokenizer_checks.append({"text": case["text"][:60], "tokens": len(case["ids"]),
                                     "same_ids": ours == case["ids"]})

        generation_checks = []
        for sample in evaluation["samples"]:
            reference = sample["greedy_ids"]
            entry = {"prompt": sample["prompt"], "reference_tokens": len(reference)}
            for label, extra in (("fp16", ["--kv-method", "fp16"]), ("squat_default", [])):
                result = cli(args.build, address, "generate", sample["prompt"], "--max-tokens",
                             str(len(reference)), "--temperature", "0", *extra)
                ids = [int(i) for i in result.get("token_ids", [])]
                entry[f"{label}_matching_prefix"] = common_prefix(ids, reference)
                entry[f"{label}_text"] = result.get("text", "")
            generation_checks.append(entry)
    finally:
        server.terminate()
        server.wait(timeout=30)

    summary = {"tokenizer": tokenizer_checks, "greedy": generation_checks,
               "reference_scorer": evaluation.get("scorer")}
    for t in tokenizer_checks:
        print(f"tokenizer {'same' if t['same_ids'] else 'DIFFERENT'} ids ({t['tokens']} tokens): {t['text']!r}")
    for g in generation_checks:
        print(f"greedy {g['prompt']!r}: fp16 KV matches {g['fp16_matching_prefix']}/{g['reference_tokens']}, "
              f"squat 2-bit KV matches {g['squat_default_matching_prefix']}/{g['reference_tokens']}")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if not all(t["same_ids"] for t in tokenizer_checks):
        sys.exit(1)


if __name__ == "__main__":
    main()
