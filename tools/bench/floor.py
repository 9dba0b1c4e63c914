#!/usr/bin/env python3
"""Decode-step floor: a step cannot beat max(bytes read / HBM bandwidth, FLOPs / peak FLOP rate).

bytes = the weights a step reads (every linear layer, norms, lm_head; the embedding only for the
batch's rows) + for each sequence its KV cache: quantized tokens x the format's bytes per token
(codes + metadata, from the engine's description) + the full-precision residual window.
flops = 2 x linear parameters x batch + attention 4 x layers x heads x head_dim x context x batch.

Two modes (standard library only):
  # the floor of one shape
  floor.py --config DIR/config.json --bandwidth 3.0e12 --peak-flops 7.0e14 \\
           --kv-bytes-per-token 98304 --batch 64 --context 8192
  # measured steps of squat-throughput runs against their floors (bandwidth and FLOP rate
  # from hf_generate_bench.py --measure-bandwidth, or given)
  floor.py --hardware hf.json --throughput fp16_8k.json squat2_8k.json --json floor.json --markdown floor.md
"""
import argparse
import json
import math
import os
import sys

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


def model_shape(config):
    h = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or h // heads
    layers = config["num_hidden_layers"]
    inter = config["intermediate_size"]
    vocab = config["vocab_size"]
    per_layer_linear = h * heads * head_dim + 2 * h * kv_heads * head_dim + heads * head_dim * h + 3 * h * inter
    linear = layers * per_layer_linear + vocab * h  # lm_head (the embedding itself when tied)
    return {
        "hidden": h, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "layers": layers,
        "vocab": vocab, "linear_params": linear, "norm_params": layers * 2 * h + h,
        "dtype_bytes": DTYPE_BYTES.get(config.get("torch_dtype", "float16"), 2),
    }


def step_floor(shape, batch, context, kv_bytes_per_token, bandwidth, peak_flops, residual_tokens=0,
               residual_bytes_per_token=0.0, dtype_bytes=None):
    """Floor of one decode step of `batch` sequences of `context` tokens each (seconds and parts)."""
    dtype_bytes = dtype_bytes or shape["dtype_bytes"]
    weight_bytes = (shape["linear_params"] + shape["norm_params"] + batch * shape["hidden"]) * dtype_bytes
    residual = min(residual_tokens, context)
    kv_bytes = batch * ((context - residual) * kv_bytes_per_token + residual * residual_bytes_per_token)
    flops = 2 * shape["linear_params"] * batch + 4 * shape["layers"] * shape["heads"] * shape["head_dim"] * context * batch
    memory_s = (weight_bytes + kv_bytes) / bandwidth
    compute_s = flops / peak_flops
    return {
        "batch": batch, "context": context, "weight_bytes": weight_bytes, "kv_bytes": kv_bytes, "flops": flops,
        "memory_s": memory_s, "compute_s": compute_s, "floor_s": max(memory_s, compute_s),
        "bound": "memory" if memory_s >= compute_s else "compute",
    }


def load_hardware(args):
    bandwidth, peak, source = args.bandwidth, args.peak_flops, "flags"
    if args.hardware:
        with open(args.hardware) as f:
            measured = json.load(f).get("bandwidth") or {}
        bandwidth = bandwidth or measured.get("bandwidth_bytes_per_s")
        peak = peak or measured.get("fp16_gemm_flops_per_s")
        source = args.hardware
    if not bandwidth or not peak:
        sys.exit("floor.py: need --bandwidth and --peak-flops (or --hardware with a bandwidth measurement)")
    return bandwidth, peak, source


def measured_step(point):
    """The step time a squat-throughput point quotes (seconds) and the context it was at."""
    for key in ("steady_decode", "window_decode"):
        part = point.get(key) or {}
        if part.get("mean_step_ms"):
            return part["mean_step_ms"] / 1e3, part.get("mean_context") or None, key
    if point.get("tail_step_ms"):
        return point["tail_step_ms"] / 1e3, None, "tail"
    return None, None, None


def compare_runs(paths, bandwidth, peak, residual_tokens, config_override):
    rows = []
    for path in paths:
        with open(path) as f:
            run = json.load(f)
        if "points" not in run or "kv_formats" not in run:
            rows.append({"file": path, "error": run.get("error", "no points")})
            continue
        config_path = config_override or os.path.join(run["options"]["model"], "config.json")
        with open(config_path) as f:
            shape = model_shape(json.load(f))
        dtype_bytes = DTYPE_BYTES.get(run["model"].get("dtype"), shape["dtype_bytes"])
        formats = {f["format"]: f for f in run["kv_formats"]}
        fmt = formats.get(run.get("format")) or next((f for f in run["kv_formats"] if f["is_default"]), None)
        full = formats.get("fp16")
        quantized = fmt["method"] != "fp16"
        for point in run["points"]:
            if point.get("status") not in ("ok", "preemption_heavy"):
                continue
            step, context, source = measured_step(point)
            if step is None:
                continue
            context = context or point["prompt_tokens"] + point["gen_tokens"] / 2
            floor = step_floor(shape, point["batch"], context, fmt["bytes_per_token"], bandwidth, peak,
                               residual_tokens if quantized else 0, full["bytes_per_token"] if full else 0,
                               dtype_bytes)
            floor.update(file=path, format=run.get("format"), prompt_tokens=point["prompt_tokens"],
                         measured_step_s=step, step_source=source, ratio=step / floor["floor_s"],
                         preemptions=point.get("preemptions", 0))
            rows.append(floor)
    return rows


def markdown(rows, bandwidth, peak, source):
    lines = [f"Bandwidth {bandwidth / 1e12:.2f} TB/s, fp16 peak {peak / 1e12:.0f} TFLOP/s ({source}).", "",
             "| format | prompt | batch | context | measured step ms | floor ms | step / floor | bound |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['file']}: {r['error']} | | | | | | | |")
            continue
        lines.append(f"| {r['format']} | {r['prompt_tokens']} | {r['batch']} | {r['context']:.0f} | "
                     f"{r['measured_step_s'] * 1e3:.2f} | {r['floor_s'] * 1e3:.2f} | {r['ratio']:.2f} | {r['bound']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hardware", help="hf_generate_bench.py JSON with a 'bandwidth' measurement")
    p.add_argument("--bandwidth", type=float, help="HBM bytes/s (overrides --hardware)")
    p.add_argument("--peak-flops", type=float, help="fp16 FLOP/s (overrides --hardware)")
    p.add_argument("--throughput", nargs="*", default=[], help="squat-throughput JSON files")
    p.add_argument("--config", help="config.json (default: the model dir named in each throughput JSON)")
    p.add_argument("--residual-tokens", type=int, default=32, help="full-precision residual window R of quantized formats")
    p.add_argument("--residual-bytes-per-token", type=float, default=0,
                   help="single mode: bytes per residual token (the fp16 format's bytes per token)")
    p.add_argument("--kv-bytes-per-token", type=float, help="single mode: the format's bytes per token")
    p.add_argument("--batch", type=int, help="single mode")
    p.add_argument("--context", type=float, help="single mode: tokens per sequence")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--markdown", help="write a markdown table here")
    args = p.parse_args(argv)
    bandwidth, peak, source = load_hardware(args)

    if args.batch is not None:
        if not args.config or args.kv_bytes_per_token is None or args.context is None:
            sys.exit("floor.py: single mode needs --config, --kv-bytes-per-token, --batch and --context")
        with open(args.config) as f:
            shape = model_shape(json.load(f))
        residual = args.residual_tokens if args.residual_bytes_per_token > 0 else 0
        rows = [step_floor(shape, args.batch, args.context, args.kv_bytes_per_token, bandwidth, peak, residual,
                           args.residual_bytes_per_token)]
        print(json.dumps(rows[0], indent=2))
    else:
        rows = compare_runs(args.throughput, bandwidth, peak, args.residual_tokens, args.config)
        text = markdown(rows, bandwidth, peak, source)
        sys.stdout.write(text)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bandwidth_bytes_per_s": bandwidth, "peak_flops_per_s": peak, "source": source, "rows": rows},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
