#!/usr/bin/env python3
"""Checks the C++ Llama runtime against Hugging Face transformers on the same checkpoint.

For each model directory and each prompt length, seeded random token ids go through
  * transformers' LlamaForCausalLM / Qwen2ForCausalLM in float32 with eager attention, and
  * squat-dump-logits (full prompt and --incremental, on each requested device),
and the max abs difference of log_softmax(logits) is reported per case. Exits 1 when a float32
case exceeds --tolerance (half-precision runs are reported, and checked only with
--half-tolerance).

  python3 tools/hf_compare.py --dump-bin build/tools/squat-dump-logits \
      --model DIR [--model DIR2 ...] [--lengths 1,7,33,100] [--devices cpu,cuda] --out r.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="HF checkpoint dir (repeatable)")
    p.add_argument("--dump-bin", required=True, help="path to squat-dump-logits")
    p.add_argument("--lengths", default="1,7,33,100", help="prompt lengths, comma-separated")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--devices", default=None,
                   help="C++ devices, comma-separated (default: cpu, plus cuda when available)")
    p.add_argument("--cpp-dtypes", default="float32",
                   help="C++ compute dtypes, comma-separated; half types run on CUDA only")
    p.add_argument("--hf-device", default="cpu", help="device for the transformers reference")
    p.add_argument("--tolerance", type=float, default=1e-3, help="float32 pass threshold")
    p.add_argument("--half-tolerance", type=float, default=None,
                   help="threshold for float16/bfloat16 runs (default: report only)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args()


def load_hf_model(model_dir, device):
    import transformers

    with open(os.path.join(model_dir, "config.json")) as f:
        model_type = json.load(f).get("model_type", "llama")
    cls = {"qwen2": transformers.Qwen2ForCausalLM, "mistral": transformers.MistralForCausalLM}.get(
        model_type, transformers.LlamaForCausalLM)
    kwargs = dict(attn_implementation="eager", output_loading_info=True)
    # transformers 5.x spells it dtype=; 4.x only knows torch_dtype=.
    try:
        model, info = cls.from_pretrained(model_dir, dtype=torch.float32, **kwargs)
    except TypeError:
        model, info = cls.from_pretrained(model_dir, torch_dtype=torch.float32, **kwargs)
    model = model.float().to(device).eval()
    missing = [k for k in info.get("missing_keys", []) if not (k == "lm_head.weight" and
                                                              model.config.tie_word_embeddings)]
    if missing:
        raise RuntimeError(f"{model_dir}: transformers initialised missing weights {missing}")
    return model


def hf_logits(model, ids, device):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long, device=device), use_cache=False)
    return out.logits[0].double().cpu()


def cpp_logits(dump_bin, model_dir, ids, device, dtype, incremental, workdir):
    out = os.path.join(workdir, "logits.bin")
    cmd = [dump_bin, "--model", model_dir, "--tokens", ",".join(map(str, ids)),
           "--device", device, "--dtype", dtype, "--out", out]
    if incremental:
        cmd.append("--incremental")
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({run.returncode}): {run.stderr.strip()}")
    with open(out + ".json") as f:
        shape = json.load(f)["shape"]
    data = np.fromfile(out, dtype="<f4")
    if data.size != shape[0] * shape[1]:
        raise RuntimeError(f"logits file holds {data.size} floats, sidecar says {shape}")
    return torch.from_numpy(data.reshape(shape).astype(np.float64))


def max_log_softmax_diff(a, b):
    if a.shape != b.shape:
        return float("inf")
    return (torch.log_softmax(a, -1) - torch.log_softmax(b, -1)).abs().max().item()


def main():
    args = parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # a float32 reference must really be float32
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    dtypes = args.cpp_dtypes.split(",")
    lengths = [int(x) for x in args.lengths.split(",")]
    cases, failed = [], False
    with tempfile.TemporaryDirectory() as workdir:
        for model_dir in args.model:
            with open(os.path.join(model_dir, "config.json")) as f:
                config = json.load(f)
            model = load_hf_model(model_dir, args.hf_device)
            vocab = config["vocab_size"]
            max_len = config.get("max_position_embeddings", max(lengths))
            for length in sorted({min(n, max_len) for n in lengths}):
                rng = np.random.default_rng([args.seed, length])
                ids = rng.integers(0, vocab, size=length).tolist()
                reference = hf_logits(model, ids, args.hf_device)
                for device in devices:
                    for dtype in dtypes:
                        half = dtype != "float32"
                        if half and not device.startswith("cuda"):
                            continue
                        for incremental in (False, True):
                            case = dict(model=model_dir, model_type=config.get("model_type"), length=length,
                                        mode="incremental" if incremental else "full",
                                        device=device, dtype=dtype)
                            try:
                                ours = cpp_logits(args.dump_bin, model_dir, ids, device, dtype, incremental, workdir)
                                diff = max_log_softmax_diff(ours, reference)
                                case["max_abs_diff_log_softmax"] = diff
                                limit = args.half_tolerance if half else args.tolerance
                                case["checked"] = limit is not None
                                case["passed"] = limit is None or diff <= limit
                            except RuntimeError as e:
                                case.update(error=str(e), checked=True, passed=False)
                            failed |= not case["passed"]
                            cases.append(case)
                            shown = case.get("max_abs_diff_log_softmax", float("nan"))
                            status = "ok" if case["passed"] else "FAIL"
                            if not case["checked"]:
                                status = "info"
                            print(f"{status:4} {os.path.basename(model_dir.rstrip('/')):>16} len={length:<4} "
                                  f"{case['mode']:<11} {device:<6} {dtype:<8} max|dlogsoftmax|={shown:.3e}"
                                  + (f"  {case['error']}" if "error" in case else ""), flush=True)
    result = dict(tolerance=args.tolerance, half_tolerance=args.half_tolerance, passed=not failed,
                  torch=torch.__version__, transformers=__import__("transformers").__version__, cases=cases)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    print("PASSED" if not failed else "FAILED", f"({len(cases)} cases)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
