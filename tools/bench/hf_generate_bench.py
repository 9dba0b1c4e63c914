#!/usr/bin/env python3
"""The HF transformers baseline of the GPU benchmarks (docs/benchmarks.md, "GPU (issue 6)").

Loads a checkpoint directory with transformers (fp16, sdpa attention) and times
model.generate(min_new_tokens = max_new_tokens = --gen-tokens, do_sample=False) on seeded random
prompts of --prompt-tokens tokens at each batch size of --batches. Per batch: wall time,
throughput as (prompt + generated) x batch / time (the convention of the shared README's
baseline) and generated tokens / s, and torch.cuda.max_memory_allocated. An out-of-memory batch
is reported as such and ends the sweep.

--measure-bandwidth also measures, on the same GPU, device-to-device copy bandwidth (bytes read
+ written / time) and a read-only reduction's bandwidth over a large buffer, and the fp16 GEMM
rate of a large matmul: the inputs of the decode-step floor (tools/bench/floor.py).

Without torch (the CI and dev machines) it writes {"skipped": ...} and exits 0.

  python3 tools/bench/hf_generate_bench.py --model DIR --batches 192,256 --measure-bandwidth --json hf.json
"""
import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint directory (config.json + safetensors); omit to only measure bandwidth")
    p.add_argument("--batches", default="192,256", help="batch sizes, comma list, run in order (default 192,256)")
    p.add_argument("--prompt-tokens", type=int, default=160)
    p.add_argument("--gen-tokens", type=int, default=338)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="cuda", help="cuda (default), or cpu for a smoke test")
    p.add_argument("--attn", default="sdpa", help="attn_implementation (default sdpa)")
    p.add_argument("--measure-bandwidth", action="store_true", help="measure HBM bandwidth and fp16 GEMM rate")
    p.add_argument("--bandwidth-gib", type=float, default=4.0, help="buffer size of the bandwidth probe (GiB)")
    p.add_argument("--gemm-size", type=int, default=8192, help="n of the n x n x n fp16 GEMM probe")
    p.add_argument("--stop-file", help="once this file exists, no further batch starts (the first always runs)")
    p.add_argument("--deadline-s", type=float, default=0,
                   help="seconds from start; a batch predicted to end later is skipped (0: none)")
    p.add_argument("--json", help="write results here (rewritten after every batch)")
    return p.parse_args(argv)


def write_json(path, data):
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def log(msg):
    print(f"hf_generate_bench: {msg}", file=sys.stderr, flush=True)


def time_cuda(torch, fn, repeats):
    """Best time of `repeats` calls, with CUDA events (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return best


def measure_bandwidth(torch, gib, gemm_n):
    nbytes = int(gib * 2**30) // 4096 * 4096
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    dst.copy_(src)
    copy_s = time_cuda(torch, lambda: dst.copy_(src), 10)
    halves = src.view(torch.float16)
    halves.sum(dtype=torch.float32)
    read_s = time_cuda(torch, lambda: halves.sum(dtype=torch.float32), 10)
    del src, dst, halves
    a = torch.randn(gemm_n, gemm_n, dtype=torch.float16, device="cuda")
    b = torch.randn(gemm_n, gemm_n, dtype=torch.float16, device="cuda")
    c = torch.empty_like(a)
    iters = 20

    def gemms():
        for _ in range(iters):
            torch.mm(a, b, out=c)

    gemms()
    gemm_s = time_cuda(torch, gemms, 3)
    del a, b, c
    torch.cuda.empty_cache()
    result = {
        "buffer_bytes": nbytes,
        "copy_bytes_per_s": 2 * nbytes / copy_s,  # read + written
        "read_bytes_per_s": nbytes / read_s,      # a reduction reads each byte once
        "gemm_n": gemm_n,
        "fp16_gemm_flops_per_s": 2 * gemm_n**3 * iters / gemm_s,
    }
    result["bandwidth_bytes_per_s"] = max(result["copy_bytes_per_s"], result["read_bytes_per_s"])
    log(f"copy {result['copy_bytes_per_s'] / 1e12:.2f} TB/s, read {result['read_bytes_per_s'] / 1e12:.2f} TB/s, "
        f"fp16 GEMM {result['fp16_gemm_flops_per_s'] / 1e12:.0f} TFLOP/s")
    return result


def load_model(torch, model_dir, device, attn):
    import transformers
    kwargs = dict(attn_implementation=attn)
    attempts = [dict(dtype=torch.float16, device_map=device), dict(dtype=torch.float16),
                dict(torch_dtype=torch.float16)]  # 5.x spells it dtype=, 4.x torch_dtype=
    last = None
    for extra in attempts:
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, **kwargs, **extra)
            break
        except Exception as e:  # noqa: BLE001 - e.g. device_map without accelerate: try the next way
            last = e
            log(f"from_pretrained({', '.join(extra)}) failed: {type(e).__name__}: {e}")
    else:
        raise last
    return model.to(device).eval()


def random_prompts(torch, batch, length, vocab, eos_ids, seed):
    g = torch.Generator().manual_seed(seed * 1000003 + batch)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    for eos in eos_ids:  # EOS never in a prompt, as in squat-throughput
        ids[ids == eos] = (eos + 1) % vocab
    return ids


def generate_once(torch, model, ids, gen_tokens, pad_id):
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), min_new_tokens=gen_tokens,
                          max_new_tokens=gen_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                          pad_token_id=pad_id)


def is_oom(torch, error):
    oom_type = getattr(torch.cuda, "OutOfMemoryError", ())
    return (oom_type and isinstance(error, oom_type)) or "out of memory" in str(error).lower()


def run_sweep(torch, args, out):
    t0 = time.time()
    model = load_model(torch, args.model, args.device, args.attn)
    out["load_s"] = time.time() - t0
    config = model.config
    vocab = config.vocab_size
    eos = config.eos_token_id
    eos_ids = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
    pad_id = eos_ids[0] if eos_ids else 0
    out["model"] = {"dir": args.model, "num_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
                    "vocab_size": vocab, "dtype": str(next(model.parameters()).dtype)}
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    peak_allocated = torch.cuda.max_memory_allocated if cuda else (lambda: None)
    peak_reserved = torch.cuda.max_memory_reserved if cuda else (lambda: None)
    with torch.inference_mode():
        generate_once(torch, model, random_prompts(torch, 1, 16, vocab, eos_ids, args.seed).to(args.device), 4, pad_id)
    sync()
    write_json(args.json, out)

    previous = None  # (batch, seconds)
    for i, batch in enumerate(int(b) for b in args.batches.split(",") if b.strip()):
        point = {"batch": batch, "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens}
        if i > 0 and args.stop_file and os.path.exists(args.stop_file):
            point.update(status="skipped", message="stop file present (the rest of the run needs the GPU)")
            out["points"].append(point)
            break
        if args.deadline_s > 0 and previous is not None:
            predicted = previous[1] * batch / previous[0]
            left = args.deadline_s - (time.time() - out["_start"])
            if predicted > left:
                point.update(status="skipped", message=f"predicted {predicted:.0f} s, {left:.0f} s left")
                out["points"].append(point)
                break
        ids = random_prompts(torch, batch, args.prompt_tokens, vocab, eos_ids, args.seed).to(args.device)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        sync()
        start = time.time()
        try:
            with torch.inference_mode():
                result = generate_once(torch, model, ids, args.gen_tokens, pad_id)
            sync()
        except Exception as e:  # noqa: BLE001 - OOM is a result here, anything else too
            seconds = time.time() - start
            oom = is_oom(torch, e)
            point.update(status="oom" if oom else "error", message=(str(e).splitlines() or [""])[0][:300],
                         wall_s=seconds, max_memory_allocated_bytes=peak_allocated())
            out["points"].append(point)
            log(f"batch {batch}: {point['status']}: {point['message']}")
            del ids
            if cuda:
                torch.cuda.empty_cache()
            write_json(args.json, out)
            break
        seconds = time.time() - start
        generated = result.shape[1] - args.prompt_tokens
        point.update(
            status="ok" if generated == args.gen_tokens else "error",
            message="" if generated == args.gen_tokens else f"generated {generated} tokens",
            wall_s=seconds,
            throughput_tok_s=(args.prompt_tokens + generated) * batch / seconds,
            gen_throughput_tok_s=generated * batch / seconds,
            max_memory_allocated_bytes=peak_allocated(),
            max_memory_reserved_bytes=peak_reserved())
        out["points"].append(point)
        write_json(args.json, out)
        peak = point["max_memory_allocated_bytes"]
        log(f"batch {batch}: {seconds:.1f} s, {point['throughput_tok_s']:.0f} tok/s "
            f"({point['gen_throughput_tok_s']:.0f} generated/s)" + (f", peak {peak / 2**30:.1f} GiB" if peak else ""))
        del ids, result
        previous = (batch, seconds)


def main(argv=None):
    args = parse_args(argv)
    out = {"tool": "hf_generate_bench", "options": vars(args), "points": [], "_start": time.time()}
    try:
        import torch
    except ImportError:
        out["skipped"] = "torch is not installed"
        out.pop("_start")
        write_json(args.json, out)
        log(out["skipped"])
        return 0
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        out["skipped"] = "no CUDA device"
        out.pop("_start")
        write_json(args.json, out)
        log(out["skipped"])
        return 0
    try:
        import transformers
        out["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    except ImportError:
        out["versions"] = {"torch": torch.__version__}
        if args.model:
            args.model = None
            out["skipped"] = "transformers is not installed: no HF sweep"
    out["gpu"] = torch.cuda.get_device_name(0) if cuda else None
    status = 0
    try:
        if args.measure_bandwidth and cuda:
            out["bandwidth"] = measure_bandwidth(torch, args.bandwidth_gib, args.gemm_size)
            write_json(args.json, out)
        if args.model:
            run_sweep(torch, args, out)
    except Exception as e:  # noqa: BLE001 - recorded for the summary
        out["error"] = f"{type(e).__name__}: {e}"
        log(out["error"])
        status = 1
    out["total_s"] = time.time() - out.pop("_start")
    write_json(args.json, out)
    return status


if __name__ == "__main__":
    sys.exit(main())
